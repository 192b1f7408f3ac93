//! Element types and shapes.

use smallvec::SmallVec;
use std::fmt;

/// The element type of a tensor.
///
/// `F32` is the default for floats; `F64` serves gradient checks and science; `I64`
/// holds labels and indices (and the 0/1 masks that comparisons of integers produce).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// 32-bit float (the default).
    F32,
    /// 64-bit float.
    F64,
    /// 64-bit signed integer (labels, indices).
    I64,
}

impl DType {
    /// Text name used by the IR: `f32`, `f64`, `i64`.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::I64 => "i64",
        }
    }

    /// Parses a text name back.
    pub fn from_name(s: &str) -> Option<DType> {
        match s {
            "f32" => Some(DType::F32),
            "f64" => Some(DType::F64),
            "i64" => Some(DType::I64),
            _ => None,
        }
    }

    /// Every dtype, in the order of [`DType::index`].
    pub const ALL: [DType; 3] = [DType::F32, DType::F64, DType::I64];

    /// The dtype's position in [`DType::ALL`] (0, 1, 2): for tables kept per dtype and
    /// for packing a dtype into a number.
    pub const fn index(self) -> usize {
        match self {
            DType::F32 => 0,
            DType::F64 => 1,
            DType::I64 => 2,
        }
    }

    /// Whether this is a floating-point dtype (differentiable).
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64)
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 | DType::I64 => 8,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A tensor shape: the length of each axis. Scalars have an empty shape.
pub type Shape = SmallVec<[usize; 4]>;

/// The most elements a tensor may have: `u32::MAX` (4,294,967,295; 16 GiB of f32).
///
/// Every shape that reaches a graph or a kernel is checked against it ([`check_shape`]):
/// op results at trace time, the types of parsed IR text, every node in the verifier,
/// and the shapes given to the constructors. Below the limit, element counts, byte
/// sizes and the `u32` offsets of `slice`/`pad`/`scatter_add` attributes never
/// overflow; a shape above it is an `Err` inside [`crate::function`] and a panic
/// eagerly, with the op's name. (On targets with less than 64-bit `usize` the limit
/// is `isize::MAX / 8` so that byte sizes still fit.)
pub const MAX_ELEMENTS: usize = if usize::BITS >= 64 {
    u32::MAX as usize
} else {
    isize::MAX as usize / 8
};

/// Whether two shapes are equal: `a == b`, compared in line. Slices of `usize` compare
/// with a call to `memcmp`, which costs more than the comparison itself for the few
/// lengths of a shape; this runs on every call of a compiled function.
#[inline]
pub(crate) fn same_shape(a: &[usize], b: &[usize]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// Number of elements of a shape (saturating at `usize::MAX`).
///
/// Shapes of tensors and graph nodes are checked against [`MAX_ELEMENTS`] when they are
/// made, so this product is exact for them; use [`check_shape`] for a shape that
/// comes from elsewhere.
///
/// A symbolic shape's count is the symbolic product (see [`super::dim`]): equal
/// counts are equal numbers, and a symbolic count is larger than every constant one.
pub fn numel(shape: &[usize]) -> usize {
    if super::dim::any_sym(shape) {
        return super::dim::product(shape).unwrap_or(usize::MAX);
    }
    if shape.contains(&0) {
        return 0;
    }
    shape.iter().fold(1usize, |n, &d| n.saturating_mul(d))
}

/// The number of elements of `shape`, or a message when it exceeds [`MAX_ELEMENTS`].
///
/// Zero-length axes do not hide others: `[0, 2^40]` is rejected like `[2^40]`, so
/// every axis length and every product of them stays within the limit.
///
/// For a symbolic shape, the constant entries are checked as above, every symbolic
/// entry must be a known expression, and the result is the symbolic product.
pub fn check_shape(shape: &[usize]) -> Result<usize, String> {
    if super::dim::any_sym(shape) {
        let consts: Shape = shape
            .iter()
            .copied()
            .filter(|&d| !super::dim::is_sym(d))
            .collect();
        check_shape(&consts).map_err(|_| {
            format!(
                "shape {} has more than MAX_ELEMENTS = {MAX_ELEMENTS} elements",
                shape_str(shape)
            )
        })?;
        return super::dim::product(shape);
    }
    let mut n = 1usize;
    let mut empty = false;
    for &d in shape {
        empty |= d == 0;
        n = match n.checked_mul(d.max(1)) {
            Some(n) if n <= MAX_ELEMENTS => n,
            _ => {
                return Err(format!(
                    "shape {shape:?} has more than MAX_ELEMENTS = {MAX_ELEMENTS} elements"
                ))
            }
        };
    }
    Ok(if empty { 0 } else { n })
}

/// Formats `dtype[d0,d1,...]`, the form used by the IR and error messages.
pub fn type_str(dtype: DType, shape: &[usize]) -> String {
    format!("{}{}", dtype, shape_str(shape))
}

/// Formats `[d0,d1,...]`, with symbolic dimensions by name (`[b,784]`).
pub fn shape_str(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(|&d| super::dim::show(d)).collect();
    format!("[{}]", dims.join(","))
}

/// NumPy broadcasting of two shapes, or `None` when they are incompatible.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Option<Shape> {
    let n = a.len().max(b.len());
    let mut out = Shape::with_capacity(n);
    for i in 0..n {
        let da = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let db = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        out.push(match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `DType::ALL` lists each dtype at its `index`, so a dtype packed as its index (the
    /// MPI watchdog's record, the fused kernels' per-dtype registers) comes back as itself.
    #[test]
    fn every_dtype_sits_at_its_index() {
        for (i, d) in DType::ALL.into_iter().enumerate() {
            assert_eq!(d.index(), i, "{d}");
            assert_eq!(DType::ALL[d.index()], d);
        }
        let names: Vec<&str> = DType::ALL.iter().map(|d| d.name()).collect();
        assert_eq!(names, ["f32", "f64", "i64"]);
    }
}
