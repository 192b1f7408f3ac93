//! Printing values the way TensorFlow 2 prints eager tensors: NumPy's `str()` (and,
//! for variables, `repr()`) of the values with NumPy's default print options —
//! 8 digits of precision at most, shortest round-trip digits otherwise, decimal points
//! aligned, scientific notation when the shown values span more than 1000× or reach
//! 1e8 or go below 1e-4, lines wrapped at 75 characters, and arrays of more than 1000
//! elements summarized to their first and last 3 entries per axis around `...`.
//!
//! Only the default options are implemented (no `set_printoptions`); the layout
//! follows NumPy's `_formatArray` so that what a TF user sees matches digit for digit.

use super::{DType, Data};

/// NumPy's default `precision`: at most this many digits after the point.
const PRECISION: usize = 8;
/// NumPy's default `threshold`: more elements than this are summarized.
const THRESHOLD: usize = 1000;
/// NumPy's default `edgeitems`: entries kept at each end of a summarized axis.
const EDGE_ITEMS: usize = 3;
/// NumPy's default `linewidth`.
const LINE_WIDTH: usize = 75;

/// `float32`, `float64`, `int64`: TensorFlow's dtype names.
pub(super) fn tf_dtype(d: DType) -> &'static str {
    match d {
        DType::F32 => "float32",
        DType::F64 => "float64",
        DType::I64 => "int64",
    }
}

/// `()`, `(3,)`, `(2, 2)`: a shape as TensorFlow prints it (symbolic dims as `None`).
pub(super) fn tf_shape(shape: &[usize]) -> String {
    let dims: Vec<String> = shape
        .iter()
        .map(|&d| {
            if super::dim::is_sym(d) {
                "None".to_string()
            } else {
                d.to_string()
            }
        })
        .collect();
    match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    }
}

/// NumPy's `str()` of the values: `8.0`, `[1. 2. 3.]`, `[[1 2]\n [3 4]]`.
pub(super) fn numpy_str(d: &Data) -> String {
    let shape = d.shape();
    if shape.is_empty() {
        return scalar_str(d);
    }
    array_text(d, &shape, " ", " ", LINE_WIDTH)
}

/// NumPy's `repr()` of the values (as in `numpy=` of a TF variable): `1.0` for a
/// scalar, `array([1., 2.], dtype=float32)` (the dtype left out for float64 and int64,
/// NumPy's defaults, except for empty arrays).
pub(super) fn numpy_repr(d: &Data) -> String {
    let shape = d.shape();
    if shape.is_empty() {
        return scalar_str(d);
    }
    let dtype = format!("dtype={}", tf_dtype(d.dtype()));
    if d.is_empty() {
        return if shape.len() == 1 {
            format!("array([], {dtype})")
        } else {
            format!("array([], shape={}, {dtype})", tf_shape(&shape))
        };
    }
    // NumPy's defaults (float64, int64) leave the dtype out; another dtype follows
    // after a `,`, on a new line when it would pass the line width
    if d.dtype() != DType::F32 {
        let body = array_text(d, &shape, ", ", "       ", LINE_WIDTH - 1);
        return format!("array({body})");
    }
    let text = format!(
        "array({},",
        array_text(d, &shape, ", ", "       ", LINE_WIDTH - 1)
    );
    let last_line = text.len() - text.rfind('\n').map_or(0, |i| i + 1);
    let dtype = format!("{dtype})");
    let spacer = if last_line + dtype.len() + 1 > LINE_WIDTH {
        "\n      "
    } else {
        " "
    };
    format!("{text}{spacer}{dtype}")
}

/// The str of a NumPy scalar: positional with at least one fractional digit between
/// 1e-4 and 1e16, otherwise scientific with the shortest mantissa (`1e-05`, `1.5e+20`).
fn scalar_str(d: &Data) -> String {
    let (x, f32) = match d {
        Data::I64(a) => return a.iter().next().map(|v| v.to_string()).unwrap_or_default(),
        Data::F32(a) => (a.iter().next().map(|&v| v as f64), true),
        Data::F64(a) => (a.iter().next().copied(), false),
    };
    let x = x.unwrap_or_default();
    if let Some(s) = non_finite(x) {
        return s;
    }
    let a = x.abs();
    if x == 0.0 || (1e-4..1e16).contains(&a) {
        let (int, frac) = positional(x, f32, usize::MAX);
        let frac = if frac.is_empty() { "0".into() } else { frac };
        format!("{int}.{frac}")
    } else {
        let (int, frac, exp) = scientific(x, f32);
        let dot = if frac.is_empty() { "" } else { "." };
        format!("{int}{dot}{frac}e{}", exp_text(exp, 2))
    }
}

fn non_finite(x: f64) -> Option<String> {
    if x.is_nan() {
        Some("nan".into())
    } else if x.is_infinite() {
        Some(if x < 0.0 { "-inf" } else { "inf" }.into())
    } else {
        None
    }
}

/// `+05`, `-12`, `+100`: an exponent with a sign and at least `digits` digits.
fn exp_text(exp: i32, digits: usize) -> String {
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{sign}{:0digits$}", exp.unsigned_abs())
}

/// The shortest digits that read back as `x` (in its own precision): sign, digits
/// (`"12345"`, no leading zeros) and the decimal exponent of the first digit.
fn shortest(x: f64, f32: bool) -> (bool, String, i32) {
    let s = if f32 {
        format!("{:e}", x as f32)
    } else {
        format!("{x:e}")
    };
    split_sci(&s)
}

/// Splits Rust's `{:e}` text (`-1.2345e-5`) into sign, digits and exponent.
fn split_sci(s: &str) -> (bool, String, i32) {
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (mant, exp) = s.split_once('e').unwrap_or((s, "0"));
    let digits: String = mant.chars().filter(char::is_ascii_digit).collect();
    (neg, digits, exp.parse().unwrap_or(0))
}

/// `x` positionally as (signed integer part, fractional digits), with the shortest
/// round-trip digits but at most `max_frac` of them after the point (rounded exactly
/// when cut), trailing zeros dropped.
fn positional(x: f64, f32: bool, max_frac: usize) -> (String, String) {
    let (neg, digits, exp) = shortest(x, f32);
    let needed = (digits.len() as i64 - 1 - exp as i64).max(0) as usize;
    let sign = if neg { "-" } else { "" };
    if needed > max_frac {
        let s = if f32 {
            format!("{:.max_frac$}", (x as f32).abs())
        } else {
            format!("{:.max_frac$}", x.abs())
        };
        let (int, frac) = s.split_once('.').unwrap_or((&s, ""));
        return (
            format!("{sign}{int}"),
            frac.trim_end_matches('0').to_string(),
        );
    }
    let (int, frac) = if digits == "0" {
        ("0".to_string(), String::new())
    } else if exp >= 0 {
        let e = exp as usize + 1;
        if digits.len() <= e {
            (
                format!("{digits}{}", "0".repeat(e - digits.len())),
                String::new(),
            )
        } else {
            (digits[..e].to_string(), digits[e..].to_string())
        }
    } else {
        let zeros = "0".repeat((-exp - 1) as usize);
        ("0".to_string(), format!("{zeros}{digits}"))
    };
    (
        format!("{sign}{int}"),
        frac.trim_end_matches('0').to_string(),
    )
}

/// `x` in scientific notation as (signed leading digit, fractional digits, exponent),
/// shortest round-trip digits but at most [`PRECISION`] after the point.
fn scientific(x: f64, f32: bool) -> (String, String, i32) {
    let (mut neg, mut digits, mut exp) = shortest(x, f32);
    if digits.len() > PRECISION + 1 {
        let s = if f32 {
            format!("{:.PRECISION$e}", x as f32)
        } else {
            format!("{x:.PRECISION$e}")
        };
        (neg, digits, exp) = split_sci(&s);
    }
    let digits = digits.trim_end_matches('0');
    let (first, frac) = if digits.is_empty() {
        ("0", "")
    } else {
        digits.split_at(1)
    };
    let sign = if neg { "-" } else { "" };
    (format!("{sign}{first}"), frac.to_string(), exp)
}

/// The elements row-major: integers, or floats as f64 (exact for f32, flagged so
/// that their shortest digits are those of the f32).
enum Values {
    Int(Vec<i64>),
    Float(Vec<f64>, bool),
}

impl Values {
    fn of(d: &Data) -> Values {
        match d {
            Data::I64(a) => Values::Int(a.iter().copied().collect()),
            Data::F32(_) => Values::Float(d.to_f64_vec(), true),
            Data::F64(_) => Values::Float(d.to_f64_vec(), false),
        }
    }
}

/// Formats the elements of one array alike (NumPy's `FloatingFormat` and
/// `IntegerFormat`), from the statistics of the elements that will be shown.
enum ElementFormat {
    Int {
        width: usize,
    },
    Positional {
        f32: bool,
        pad_left: usize,
        pad_right: usize,
    },
    Scientific {
        f32: bool,
        precision: usize,
        exp_digits: usize,
        pad_left: usize,
        pad_right: usize,
    },
}

impl ElementFormat {
    fn new(v: &Values, shown: &[usize]) -> ElementFormat {
        let (vals, f32): (Vec<f64>, bool) = match v {
            Values::Int(a) => {
                let width = shown
                    .iter()
                    .map(|&i| a[i].to_string().len())
                    .max()
                    .unwrap_or(0);
                return ElementFormat::Int { width };
            }
            Values::Float(a, f32) => (shown.iter().map(|&i| a[i]).collect(), *f32),
        };
        let finite: Vec<f64> = vals.iter().copied().filter(|v| v.is_finite()).collect();
        let non_zero = finite.iter().map(|v| v.abs()).filter(|&v| v != 0.0);
        let (min, max) = non_zero.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        let exp_format = max > 0.0 && (max >= 1e8 || min < 1e-4 || max / min > 1000.0);
        let (mut pad_left, pad_right, mut fmt) = if finite.is_empty() {
            (
                0,
                0,
                ElementFormat::Positional {
                    f32,
                    pad_left: 0,
                    pad_right: 0,
                },
            )
        } else if exp_format {
            let parts: Vec<_> = finite.iter().map(|&x| scientific(x, f32)).collect();
            let precision = parts.iter().map(|p| p.1.len()).max().unwrap_or(0);
            let exp_digits = parts
                .iter()
                .map(|p| p.2.unsigned_abs().to_string().len().max(2))
                .max()
                .unwrap_or(2);
            let pad_left = parts.iter().map(|p| p.0.len()).max().unwrap_or(0);
            let pad_right = exp_digits + 2 + precision;
            let fmt = ElementFormat::Scientific {
                f32,
                precision,
                exp_digits,
                pad_left,
                pad_right,
            };
            (pad_left, pad_right, fmt)
        } else {
            let parts: Vec<_> = finite
                .iter()
                .map(|&x| positional(x, f32, PRECISION))
                .collect();
            let pad_left = parts.iter().map(|p| p.0.len()).max().unwrap_or(0);
            let pad_right = parts.iter().map(|p| p.1.len()).max().unwrap_or(0);
            let fmt = ElementFormat::Positional {
                f32,
                pad_left,
                pad_right,
            };
            (pad_left, pad_right, fmt)
        };
        if finite.len() != vals.len() {
            // room for `nan`, `inf` and `-inf` right-aligned in the same width
            let neg_inf = vals.contains(&f64::NEG_INFINITY);
            let offset = pad_right + 1;
            pad_left = pad_left
                .max(3usize.saturating_sub(offset))
                .max((3 + usize::from(neg_inf)).saturating_sub(offset));
            match &mut fmt {
                ElementFormat::Positional { pad_left: p, .. }
                | ElementFormat::Scientific { pad_left: p, .. } => *p = pad_left,
                ElementFormat::Int { .. } => {}
            }
        }
        fmt
    }

    /// The element at row-major index `i`, padded to the common width.
    fn format(&self, v: &Values, i: usize) -> String {
        let x = match v {
            Values::Int(a) => {
                let width = match self {
                    ElementFormat::Int { width } => *width,
                    _ => 0,
                };
                return format!("{:>width$}", a[i]);
            }
            Values::Float(a, _) => a[i],
        };
        match *self {
            ElementFormat::Int { .. } => x.to_string(),
            ElementFormat::Positional {
                f32,
                pad_left,
                pad_right,
            } => {
                if let Some(s) = non_finite(x) {
                    return format!("{s:>w$}", w = pad_left + pad_right + 1);
                }
                let (int, frac) = positional(x, f32, PRECISION);
                format!("{int:>pad_left$}.{frac:<pad_right$}")
            }
            ElementFormat::Scientific {
                f32,
                precision,
                exp_digits,
                pad_left,
                pad_right,
            } => {
                if let Some(s) = non_finite(x) {
                    return format!("{s:>w$}", w = pad_left + pad_right + 1);
                }
                let (int, frac, exp) = scientific(x, f32);
                format!(
                    "{int:>pad_left$}.{frac:0<precision$}e{}",
                    exp_text(exp, exp_digits)
                )
            }
        }
    }
}

/// The row-major indices of the elements shown: all, or with every axis longer than
/// `2 * EDGE_ITEMS` cut to its ends when `summarize`.
fn shown_indices(shape: &[usize], summarize: bool) -> Vec<usize> {
    let mut out = vec![0usize];
    for &n in shape {
        let keep: Vec<usize> = if summarize && n > 2 * EDGE_ITEMS {
            (0..EDGE_ITEMS).chain(n - EDGE_ITEMS..n).collect()
        } else {
            (0..n).collect()
        };
        out = out
            .iter()
            .flat_map(|&base| keep.iter().map(move |&k| base * n + k))
            .collect();
    }
    out
}

/// NumPy's `array2string` of a non-scalar array: `separator` between elements,
/// `prefix` on continuation lines, lines kept within `width`.
fn array_text(d: &Data, shape: &[usize], separator: &str, prefix: &str, width: usize) -> String {
    if d.is_empty() {
        return "[]".into();
    }
    let summarize = d.len() > THRESHOLD;
    let values = Values::of(d);
    let fmt = ElementFormat::new(&values, &shown_indices(shape, summarize));
    let p = Printer {
        values,
        shape,
        fmt,
        separator,
        summarize,
    };
    p.recurse(&mut Vec::new(), prefix, width)
}

struct Printer<'a> {
    values: Values,
    shape: &'a [usize],
    fmt: ElementFormat,
    separator: &'a str,
    summarize: bool,
}

impl Printer<'_> {
    /// The row-major offset of a full index.
    fn offset(&self, index: &[usize]) -> usize {
        index
            .iter()
            .zip(self.shape)
            .fold(0, |acc, (&i, &n)| acc * n + i)
    }

    /// NumPy's `_formatArray.recurser`: the text of the sub-array at `index`, its
    /// continuation lines indented by `hanging`, within `width` columns.
    fn recurse(&self, index: &mut Vec<usize>, hanging: &str, width: usize) -> String {
        let axis = index.len();
        if axis == self.shape.len() {
            return self.fmt.format(&self.values, self.offset(index));
        }
        let next_hanging = format!("{hanging} ");
        let next_width = width.saturating_sub(1);
        let n = self.shape[axis];
        let summary = self.summarize && 2 * EDGE_ITEMS < n;
        let (leading, trailing) = if summary {
            (EDGE_ITEMS, EDGE_ITEMS)
        } else {
            (0, n)
        };
        let axes_left = self.shape.len() - axis;
        let mut child = |i: usize| {
            index.push(i);
            let s = self.recurse(index, &next_hanging, next_width);
            index.pop();
            s
        };
        let mut s = String::new();
        if axes_left == 1 {
            let elem_width = width.saturating_sub(self.separator.trim_end().len().max(1));
            let mut line = hanging.to_string();
            for i in 0..leading {
                let word = child(i);
                extend_line(&mut s, &mut line, &word, elem_width, hanging);
                line.push_str(self.separator);
            }
            if summary {
                extend_line(&mut s, &mut line, "...", elem_width, hanging);
                line.push_str(self.separator);
            }
            for i in (2..=trailing).rev() {
                let word = child(n - i);
                extend_line(&mut s, &mut line, &word, elem_width, hanging);
                line.push_str(self.separator);
            }
            let word = child(n - 1);
            extend_line(&mut s, &mut line, &word, elem_width, hanging);
            s.push_str(&line);
        } else {
            let line_sep = format!(
                "{}{}",
                self.separator.trim_end(),
                "\n".repeat(axes_left - 1)
            );
            for i in 0..leading {
                s.push_str(hanging);
                s.push_str(&child(i));
                s.push_str(&line_sep);
            }
            if summary {
                s.push_str(hanging);
                s.push_str("...");
                s.push_str(&line_sep);
            }
            for i in (2..=trailing).rev() {
                s.push_str(hanging);
                s.push_str(&child(n - i));
                s.push_str(&line_sep);
            }
            s.push_str(hanging);
            s.push_str(&child(n - 1));
        }
        format!("[{}]", &s[hanging.len()..])
    }
}

/// NumPy's `_extendLine`: appends `word` to `line`, first moving `line` into `s` and
/// starting a new one when the word would pass `width` (unless the line is empty).
fn extend_line(s: &mut String, line: &mut String, word: &str, width: usize, prefix: &str) {
    if line.len() + word.len() > width && line.len() > prefix.len() {
        s.push_str(line.trim_end());
        s.push('\n');
        *line = prefix.to_string();
    }
    line.push_str(word);
}
