//! Symbolic dimensions: a shape entry is a constant or a polynomial in named symbols.
//!
//! Shapes stay `&[usize]` everywhere (kernels, plans, the public API). A *symbolic*
//! dimension is encoded in the same `usize`: [`SYM_SLOTS`] values near the top of `usize`
//! name interned polynomials (`b`, `b*28`, `b+c`), every value up to
//! [`crate::tensor::MAX_ELEMENTS`] is itself. So code that only moves shapes around
//! (`reshape(x.shape())`, `broadcast_to`, equality, broadcasting `b` against `1`) works
//! on symbolic shapes unchanged, and code that does arithmetic on dimensions goes through
//! this module ([`mul`], [`add`], [`div_exact`], [`product`]), which keeps polynomials in
//! a canonical form so that equal expressions are equal `usize`s.
//!
//! [`Dim`] is the typed view users see (`Dim::sym("batch")`, `Dim::from(784)`).
//! Symbols are process-global and known by name: `Dim::sym("b")` is the same symbol
//! wherever it is used; values are bound per call of a compiled function.

use smallvec::SmallVec;
use std::collections::HashMap;
use std::fmt;
use std::sync::{OnceLock, RwLock};

/// How many distinct symbolic expressions a process can hold.
pub const SYM_SLOTS: usize = 1 << 24;

/// The highest symbolic slot. The values above it (`usize::MAX` and its neighbours, the
/// usual sentinels) stay plain numbers, far over `MAX_ELEMENTS`, so they are rejected
/// as lengths rather than read as symbols.
const SYM_TOP: usize = usize::MAX - (1 << 16);

/// One dimension of a shape: a constant or a symbolic expression.
///
/// ```
/// use tapeflow::tensor::Dim;
/// let b = Dim::sym("b");
/// assert!(b.is_symbolic() && !Dim::from(784).is_symbolic());
/// assert_eq!((b * Dim::from(28)).to_string(), "b*28");
/// assert_eq!(Dim::from(784).value(), Some(784));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct Dim(usize);

impl Dim {
    /// The symbol called `name` (an identifier: a letter or `_`, then letters, digits or `_`).
    ///
    /// # Panics
    /// If `name` is not an identifier, or more than [`SYM_SLOTS`] expressions exist.
    pub fn sym(name: &str) -> Dim {
        assert!(is_ident(name), "Dim::sym: {name:?} is not an identifier");
        Dim(symbol(name))
    }
    /// The dimension a shape entry encodes.
    pub fn from_raw(raw: usize) -> Dim {
        Dim(raw)
    }
    /// The shape entry (`usize`) that encodes this dimension.
    pub fn raw(self) -> usize {
        self.0
    }
    /// Whether this dimension is symbolic.
    pub fn is_symbolic(self) -> bool {
        is_sym(self.0)
    }
    /// The constant value, or `None` for a symbolic dimension.
    pub fn value(self) -> Option<usize> {
        (!self.is_symbolic()).then_some(self.0)
    }
}

impl From<usize> for Dim {
    fn from(n: usize) -> Dim {
        Dim(n)
    }
}

impl std::ops::Mul for Dim {
    type Output = Dim;
    /// # Panics
    /// If the product of constants exceeds `MAX_ELEMENTS`.
    fn mul(self, o: Dim) -> Dim {
        Dim(mul(self.0, o.0).unwrap_or_else(|e| panic!("{e}")))
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&show(self.0))
    }
}

impl fmt::Debug for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&show(self.0))
    }
}

/// A product of symbols with exponents, sorted by symbol id.
type Mono = SmallVec<[(u32, u32); 2]>;
/// A sum of `coefficient * monomial` terms, sorted by monomial, no zero coefficients.
type Poly = Vec<(Mono, u64)>;

#[derive(Default)]
struct Interner {
    names: Vec<String>,
    by_name: HashMap<String, u32>,
    exprs: Vec<Poly>,
    by_expr: HashMap<Poly, usize>,
}

fn interner() -> &'static RwLock<Interner> {
    static I: OnceLock<RwLock<Interner>> = OnceLock::new();
    I.get_or_init(Default::default)
}

/// Whether a shape entry is symbolic.
#[inline]
pub fn is_sym(raw: usize) -> bool {
    raw <= SYM_TOP && raw > SYM_TOP - SYM_SLOTS
}

/// Whether any entry of a shape is symbolic.
#[inline]
pub fn any_sym(shape: &[usize]) -> bool {
    shape.iter().any(|&d| is_sym(d))
}

fn is_ident(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn symbol(name: &str) -> usize {
    let id = {
        let i = interner().read().unwrap_or_else(|e| e.into_inner());
        i.by_name.get(name).copied()
    };
    let id = id.unwrap_or_else(|| {
        let mut i = interner().write().unwrap_or_else(|e| e.into_inner());
        if let Some(&id) = i.by_name.get(name) {
            return id;
        }
        let id = i.names.len() as u32;
        i.names.push(name.to_string());
        i.by_name.insert(name.to_string(), id);
        id
    });
    intern(vec![(SmallVec::from_slice(&[(id, 1)]), 1)]).expect("a symbol is not a constant")
}

/// The shape entry of a canonical polynomial: its value when constant, else its slot.
fn intern(p: Poly) -> Result<usize, String> {
    match p.as_slice() {
        [] => return Ok(0),
        [(m, c)] if m.is_empty() => {
            return usize::try_from(*c)
                .ok()
                .filter(|&c| c <= super::dtype::MAX_ELEMENTS)
                .ok_or_else(|| format!("dimension {c} exceeds MAX_ELEMENTS"))
        }
        _ => {}
    }
    if let Some(&r) = interner()
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .by_expr
        .get(&p)
    {
        return Ok(r);
    }
    let mut i = interner().write().unwrap_or_else(|e| e.into_inner());
    if let Some(&r) = i.by_expr.get(&p) {
        return Ok(r);
    }
    if i.exprs.len() >= SYM_SLOTS {
        return Err(format!(
            "more than {SYM_SLOTS} symbolic dimension expressions"
        ));
    }
    let raw = SYM_TOP - i.exprs.len();
    i.exprs.push(p.clone());
    i.by_expr.insert(p, raw);
    Ok(raw)
}

fn poly(raw: usize) -> Result<Poly, String> {
    if !is_sym(raw) {
        return Ok(if raw == 0 {
            Vec::new()
        } else {
            vec![(Mono::new(), raw as u64)]
        });
    }
    interner()
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .exprs
        .get(SYM_TOP - raw)
        .cloned()
        .ok_or_else(|| format!("{raw} is not a valid dimension"))
}

fn normalize(mut terms: Vec<(Mono, u64)>) -> Result<Poly, String> {
    terms.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out: Poly = Vec::with_capacity(terms.len());
    for (m, c) in terms {
        match out.last_mut() {
            Some((lm, lc)) if *lm == m => {
                *lc = lc.checked_add(c).ok_or("dimension arithmetic overflows")?;
            }
            _ => out.push((m, c)),
        }
    }
    out.retain(|(_, c)| *c != 0);
    Ok(out)
}

fn mono_mul(a: &Mono, b: &Mono) -> Mono {
    let mut m: Mono = a.clone();
    for &(s, e) in b {
        match m.iter_mut().find(|(t, _)| *t == s) {
            Some((_, f)) => *f += e,
            None => m.push((s, e)),
        }
    }
    m.sort_unstable();
    m
}

/// `a * b`.
pub fn mul(a: usize, b: usize) -> Result<usize, String> {
    if !is_sym(a) && !is_sym(b) {
        return a
            .checked_mul(b)
            .filter(|&n| n <= super::dtype::MAX_ELEMENTS)
            .ok_or_else(|| format!("{a}*{b} exceeds MAX_ELEMENTS"));
    }
    let (pa, pb) = (poly(a)?, poly(b)?);
    let mut terms = Vec::with_capacity(pa.len() * pb.len());
    for (ma, ca) in &pa {
        for (mb, cb) in &pb {
            let c = ca
                .checked_mul(*cb)
                .ok_or("dimension arithmetic overflows")?;
            terms.push((mono_mul(ma, mb), c));
        }
    }
    intern(normalize(terms)?)
}

/// `a + b`.
pub fn add(a: usize, b: usize) -> Result<usize, String> {
    if !is_sym(a) && !is_sym(b) {
        return a
            .checked_add(b)
            .filter(|&n| n <= super::dtype::MAX_ELEMENTS)
            .ok_or_else(|| format!("{a}+{b} exceeds MAX_ELEMENTS"));
    }
    let mut terms = poly(a)?;
    terms.extend(poly(b)?);
    intern(normalize(terms)?)
}

/// `a / b` when `b` is a single term (`28`, `b`, `4*b`) dividing every term of `a`
/// exactly; `None` otherwise (including division by zero).
pub fn div_exact(a: usize, b: usize) -> Option<usize> {
    if !is_sym(a) && !is_sym(b) {
        return (b != 0 && a.is_multiple_of(b)).then(|| a / b);
    }
    let pa = poly(a).ok()?;
    let pb = poly(b).ok()?;
    let [(mb, cb)] = pb.as_slice() else {
        return None;
    };
    let mut terms = Vec::with_capacity(pa.len());
    for (ma, ca) in &pa {
        if ca % cb != 0 {
            return None;
        }
        let mut m = ma.clone();
        for &(s, e) in mb {
            let f = m.iter_mut().find(|(t, _)| *t == s)?;
            if f.1 < e {
                return None;
            }
            f.1 -= e;
        }
        m.retain(|(_, e)| *e != 0);
        terms.push((m, ca / cb));
    }
    intern(normalize(terms).ok()?).ok()
}

/// The product of a shape's entries (its element count), symbolic when any entry is.
pub fn product(shape: &[usize]) -> Result<usize, String> {
    shape.iter().try_fold(1usize, |n, &d| mul(n, d))
}

/// The symbol ids an entry mentions, sorted.
pub fn symbols(raw: usize) -> Vec<u32> {
    let mut s: Vec<u32> = poly(raw)
        .unwrap_or_default()
        .iter()
        .flat_map(|(m, _)| m.iter().map(|&(s, _)| s))
        .collect();
    s.sort_unstable();
    s.dedup();
    s
}

/// The name of symbol `id`.
pub fn symbol_name(id: u32) -> String {
    interner()
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .names
        .get(id as usize)
        .cloned()
        .unwrap_or_else(|| format!("?{id}"))
}

/// The symbol id of an entry that is a single symbol (`b`, not `b*2`).
pub fn as_symbol(raw: usize) -> Option<u32> {
    match poly(raw).ok()?.as_slice() {
        [(m, 1)] if m.len() == 1 && m[0].1 == 1 => Some(m[0].0),
        _ => None,
    }
}

/// The value of an entry with its symbols bound by `bind` (symbol id → value).
pub fn eval(raw: usize, bind: &dyn Fn(u32) -> Option<usize>) -> Result<usize, String> {
    if !is_sym(raw) {
        return Ok(raw);
    }
    let mut total: usize = 0;
    for (m, c) in poly(raw)? {
        let mut t = usize::try_from(c).map_err(|_| "dimension overflows".to_string())?;
        for (s, e) in m {
            let v = bind(s).ok_or_else(|| format!("symbol {} is not bound", symbol_name(s)))?;
            for _ in 0..e {
                t = t
                    .checked_mul(v)
                    .ok_or_else(|| format!("{} exceeds usize", show(raw)))?;
            }
        }
        total = total
            .checked_add(t)
            .ok_or_else(|| format!("{} exceeds usize", show(raw)))?;
    }
    Ok(total)
}

/// The text form of an entry: `784`, `b`, `b*28`, `b^2`, `b+c+1`.
pub fn show(raw: usize) -> String {
    if !is_sym(raw) {
        return raw.to_string();
    }
    let Ok(p) = poly(raw) else {
        return format!("?{raw}");
    };
    // constant term last, as people write `b+1`
    let mut terms: Vec<&(Mono, u64)> = p.iter().filter(|(m, _)| !m.is_empty()).collect();
    terms.extend(p.iter().filter(|(m, _)| m.is_empty()));
    let parts: Vec<String> = terms
        .iter()
        .map(|(m, c)| {
            let mut f: Vec<String> = m
                .iter()
                .map(|&(s, e)| {
                    let n = symbol_name(s);
                    if e == 1 {
                        n
                    } else {
                        format!("{n}^{e}")
                    }
                })
                .collect();
            if *c != 1 || f.is_empty() {
                f.push(c.to_string());
            }
            f.join("*")
        })
        .collect();
    parts.join("+")
}

/// Parses the text form written by [`show`] (sums of products of identifiers, `x^k`
/// powers and integers).
pub fn parse(s: &str) -> Result<usize, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty dimension".into());
    }
    let mut total = 0usize;
    for term in s.split('+') {
        let mut t = 1usize;
        for factor in term.split('*') {
            let factor = factor.trim();
            let (base, exp) = match factor.split_once('^') {
                Some((b, e)) => (
                    b.trim(),
                    e.trim()
                        .parse::<u32>()
                        .map_err(|_| format!("bad exponent in dimension {s:?}"))?,
                ),
                None => (factor, 1),
            };
            let v = if let Ok(n) = base.parse::<u64>() {
                usize::try_from(n)
                    .ok()
                    .filter(|&n| n <= super::dtype::MAX_ELEMENTS)
                    .ok_or_else(|| format!("dimension {n} exceeds MAX_ELEMENTS"))?
            } else if is_ident(base) {
                symbol(base)
            } else {
                return Err(format!("bad dimension {s:?}"));
            };
            for _ in 0..exp {
                t = mul(t, v)?;
            }
        }
        total = add(total, t)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_is_canonical() {
        let b = symbol("b");
        let c = symbol("c");
        let b28 = mul(b, 28).unwrap();
        assert_eq!(b28, mul(28, b).unwrap());
        assert_eq!(show(b28), "b*28");
        assert_eq!(div_exact(b28, 28), Some(b));
        assert_eq!(div_exact(b28, b), Some(28));
        assert_eq!(div_exact(b28, 3), None);
        assert_eq!(div_exact(b, c), None);
        let s = add(add(b, c).unwrap(), 1).unwrap();
        assert_eq!(s, add(1, add(c, b).unwrap()).unwrap());
        assert_eq!(show(s), "b+c+1");
        assert_eq!(parse("b+c+1").unwrap(), s);
        assert_eq!(parse("b*28").unwrap(), b28);
        let sq = mul(b, b).unwrap();
        assert_eq!(show(sq), "b^2");
        assert_eq!(parse("b^2").unwrap(), sq);
        assert_eq!(add(b, b).unwrap(), mul(b, 2).unwrap());
        assert_eq!(product(&[b, 28, 28]).unwrap(), mul(b, 784).unwrap());
        assert_eq!(product(&[3, 4]).unwrap(), 12);
        let bind = |s: u32| (s == as_symbol(b).unwrap()).then_some(5);
        assert_eq!(eval(b28, &bind).unwrap(), 140);
        assert!(eval(c, &bind).is_err());
        assert_eq!(mul(b, 0).unwrap(), 0);
        assert!(parse("3x").is_err() && parse("").is_err());
    }
}
