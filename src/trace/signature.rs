//! Input signatures with symbolic dimensions: [`TensorSpec`] (TensorFlow's
//! `input_signature`), binding a call's arguments to a signature, and the
//! `reduce_retracing` generalization of two signatures.

use crate::tensor::{dim, type_str, DType, Dim, Shape};

/// The input signature a concrete function was traced for: per argument, its dtype and
/// shape. Shape entries may be symbolic dimensions ([`crate::tensor::dim`]), as in
/// `f32[b,784]`.
pub type Signature = Vec<(DType, Shape)>;

/// The declared type of one argument (`tf.TensorSpec`): a dtype and, per axis, a fixed
/// length, a named symbol ([`Dim::sym`]) that arguments can share, or `None` (a fresh
/// symbol of its own).
///
/// ```
/// use tapeflow::trace::TensorSpec;
/// use tapeflow::tensor::Dim;
/// use tapeflow::DType;
/// let x = TensorSpec::new(&[None, Some(784)], DType::F32);
/// let b = Dim::sym("b");
/// let y = TensorSpec::with_dims(&[b], DType::I64); // shares `b` with other arguments
/// assert_eq!(x.to_string(), "f32[None,784]");
/// assert_eq!(y.to_string(), "i64[b]");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    dtype: DType,
    dims: Vec<Option<Dim>>,
}

impl TensorSpec {
    /// A spec with fixed lengths (`Some(n)`) and fresh symbols (`None`).
    pub fn new(dims: &[Option<usize>], dtype: DType) -> TensorSpec {
        TensorSpec {
            dtype,
            dims: dims.iter().map(|d| d.map(Dim::from)).collect(),
        }
    }

    /// A spec from dimensions: constants and named symbols (`Dim::sym("batch")`).
    pub fn with_dims(dims: &[Dim], dtype: DType) -> TensorSpec {
        TensorSpec {
            dtype,
            dims: dims.iter().map(|&d| Some(d)).collect(),
        }
    }

    /// The dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The dimensions (`None`: a fresh symbol).
    pub fn dims(&self) -> &[Option<Dim>] {
        &self.dims
    }
}

impl std::fmt::Display for TensorSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dims: Vec<String> = self
            .dims
            .iter()
            .map(|d| d.map_or("None".to_string(), |d| d.to_string()))
            .collect();
        write!(f, "{}[{}]", self.dtype, dims.join(","))
    }
}

/// The signature of `specs`: `None` at argument `i`, axis `j` becomes the symbol `_i_j`.
pub(crate) fn resolve(specs: &[TensorSpec]) -> Signature {
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let shape = s
                .dims
                .iter()
                .enumerate()
                .map(|(j, d)| d.unwrap_or_else(|| Dim::sym(&format!("_{i}_{j}"))).raw())
                .collect();
            (s.dtype, shape)
        })
        .collect()
}

/// Where a symbol got its value: (argument, axis, value).
type Source = (usize, usize, usize);

/// The values of the symbols of `sig` (in order of first appearance) that make it the
/// type of `args`, or a message naming the argument and dimension that do not fit.
pub(crate) fn bind(sig: &Signature, args: &[(DType, Shape)]) -> Result<Vec<(u32, usize)>, String> {
    if sig.len() != args.len() {
        return Err(format!(
            "the signature has {} arguments, the call {}",
            sig.len(),
            args.len()
        ));
    }
    let mut bound: Vec<(u32, Source)> = Vec::new();
    let want = |i: usize| type_str(sig[i].0, &sig[i].1);
    for (i, ((sd, ss), (ad, a))) in sig.iter().zip(args).enumerate() {
        if sd != ad || ss.len() != a.len() {
            return Err(format!(
                "argument {i} is {}, the signature expects {}",
                type_str(*ad, a),
                want(i)
            ));
        }
        for (j, (&s, &v)) in ss.iter().zip(a.iter()).enumerate() {
            if !dim::is_sym(s) {
                if s != v {
                    return Err(format!(
                        "argument {i} dimension {j} is {v}, the signature expects {s} ({} vs {})",
                        type_str(*ad, a),
                        want(i)
                    ));
                }
                continue;
            }
            let Some(sym) = dim::as_symbol(s) else {
                continue; // an expression: checked once its symbols are bound
            };
            match bound.iter().find(|(t, _)| *t == sym) {
                None => bound.push((sym, (i, j, v))),
                Some(&(_, (i0, j0, w))) if w != v => {
                    return Err(format!(
                        "argument {i} dimension {j} is {v}, but symbol {} is {w} \
                         (argument {i0} dimension {j0}); the signature is {}",
                        dim::symbol_name(sym),
                        sig.iter()
                            .map(|(d, s)| type_str(*d, s))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                }
                Some(_) => {}
            }
        }
    }
    let values: Vec<(u32, usize)> = bound.iter().map(|&(s, (_, _, v))| (s, v)).collect();
    let lookup = |s: u32| values.iter().find(|(t, _)| *t == s).map(|&(_, v)| v);
    for (i, ((_, ss), (ad, a))) in sig.iter().zip(args).enumerate() {
        for (j, (&s, &v)) in ss.iter().zip(a.iter()).enumerate() {
            if dim::is_sym(s) && dim::as_symbol(s).is_none() {
                let e = dim::eval(s, &lookup)
                    .map_err(|e| format!("argument {i} dimension {j}: {e}"))?;
                if e != v {
                    return Err(format!(
                        "argument {i} dimension {j} is {v}, the signature expects {} = {e} ({} vs {})",
                        dim::show(s),
                        type_str(*ad, a),
                        want(i)
                    ));
                }
            }
        }
    }
    Ok(values)
}

/// Whether a signature has a symbolic dimension.
pub(crate) fn is_symbolic(sig: &Signature) -> bool {
    sig.iter().any(|(_, s)| dim::any_sym(s))
}

/// A generalized signature, its symbolic (argument, axis) positions, and one reason per
/// position that changed.
pub(crate) type Generalized = (Signature, Vec<(usize, usize)>, Vec<String>);

/// TensorFlow's `reduce_retracing`: the signature that covers both `last` (the previous
/// call's concrete types) and `new`, when they differ only in lengths (same arity,
/// dtypes and ranks). Each position `(argument, axis)` whose length changed — or that is
/// in `varying`, the positions generalized before — becomes a symbol; positions with the
/// same (old, new) lengths share one, so `x: [32,784]`, `y: [32]` → `[16,784]`, `[16]`
/// gives `[b,784]`, `[b]`. Returns the signature, the symbolic positions and one reason
/// per position that changed.
pub(crate) fn generalize(
    last: &Signature,
    new: &Signature,
    varying: &[(usize, usize)],
) -> Option<Generalized> {
    let same_kind = last.len() == new.len()
        && last
            .iter()
            .zip(new)
            .all(|((d0, s0), (d1, s1))| d0 == d1 && s0.len() == s1.len());
    if !same_kind {
        return None;
    }
    let mut positions: Vec<(usize, usize)> = Vec::new();
    for (i, ((_, s0), (_, s1))) in last.iter().zip(new).enumerate() {
        for j in 0..s0.len() {
            if s0[j] != s1[j] || varying.contains(&(i, j)) {
                positions.push((i, j));
            }
        }
    }
    if positions.is_empty() {
        return None;
    }
    // one symbol per (old, new) pair of lengths
    let mut groups: Vec<((usize, usize), String)> = Vec::new();
    let mut out = new.clone();
    let mut reasons = Vec::new();
    for &(i, j) in &positions {
        let key = (last[i].1[j], new[i].1[j]);
        let name = match groups.iter().find(|(k, _)| *k == key) {
            Some((_, n)) => n.clone(),
            None => {
                let taken = |n: &str| groups.iter().any(|(_, m)| m == n);
                let name = if j == 0 && !taken("b") {
                    "b".to_string()
                } else {
                    format!("d{i}_{j}")
                };
                groups.push((key, name.clone()));
                name
            }
        };
        out[i].1[j] = Dim::sym(&name).raw();
        if key.0 != key.1 {
            reasons.push(format!(
                "argument {i} dimension {j} changed {} → {}: generalized to symbol {name}",
                key.0, key.1
            ));
        }
    }
    Some((out, positions, reasons))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(types: &[(DType, &[usize])]) -> Signature {
        types
            .iter()
            .map(|(d, s)| (*d, Shape::from_slice(s)))
            .collect()
    }

    #[test]
    fn binding_checks_constants_and_shared_symbols() {
        let b = Dim::sym("b").raw();
        let s = sig(&[(DType::F32, &[b, 784]), (DType::I64, &[b])]);
        let ok = bind(&s, &sig(&[(DType::F32, &[7, 784]), (DType::I64, &[7])])).unwrap();
        assert_eq!(ok, vec![(dim::as_symbol(b).unwrap(), 7)]);
        let e = bind(&s, &sig(&[(DType::F32, &[7, 784]), (DType::I64, &[8])])).unwrap_err();
        assert!(
            e.contains("argument 1 dimension 0 is 8, but symbol b is 7"),
            "{e}"
        );
        let e = bind(&s, &sig(&[(DType::F32, &[7, 785]), (DType::I64, &[7])])).unwrap_err();
        assert!(
            e.contains("argument 0 dimension 1 is 785, the signature expects 784"),
            "{e}"
        );
        let e = bind(&s, &sig(&[(DType::F64, &[7, 784]), (DType::I64, &[7])])).unwrap_err();
        assert!(e.contains("argument 0 is f64[7,784]"), "{e}");
    }

    #[test]
    fn generalizing_shares_symbols_between_arguments_that_changed_together() {
        let last = sig(&[(DType::F32, &[32, 784]), (DType::I64, &[32])]);
        let new = sig(&[(DType::F32, &[16, 784]), (DType::I64, &[16])]);
        let (g, pos, why) = generalize(&last, &new, &[]).unwrap();
        assert_eq!(type_str(g[0].0, &g[0].1), "f32[b,784]");
        assert_eq!(type_str(g[1].0, &g[1].1), "i64[b]");
        assert_eq!(pos, vec![(0, 0), (1, 0)]);
        assert_eq!(
            why[0],
            "argument 0 dimension 0 changed 32 → 16: generalized to symbol b"
        );
        assert!(generalize(&last, &sig(&[(DType::F32, &[16, 784])]), &[]).is_none());
    }
}
