//! The user-facing math on `Tensor`: primitives (thin calls into the op catalogue) and
//! sugar composed of them (`sub` by a scalar, `relu`, `square`, `mean`, `softmax`,
//! `one_hot`, ...). Sugar gets gradients, folding and fusion for free.
//!
//! Numbers work on either side of `+ - * /` and take the tensor's dtype, as Python
//! numbers do in TensorFlow: `&x * 2.0`, `2.0f32 * &x`, `&x - 1`, `3i64 + &t`,
//! `lr * &g` with `lr: f32` or `f64`. On the right `f32`, `f64`, `i32` and `i64` work;
//! on the left `f32`, `f64` and `i64` (an unsuffixed integer literal on the left is an
//! `i64`).
//!
//! One limit of Rust's inference: an unsuffixed float literal on the left, with a
//! method called directly on the parenthesized result, is ambiguous (`(1.0 - &p).log()`
//! does not compile: Rust cannot tell whether `1.0` is an `f32` or an `f64` before it
//! resolves the method). Write the literal with a suffix (`(1.0f32 - &p).log()`), as an
//! integer (`(1 - &p).log()`, it takes the tensor's float dtype), or give the result a
//! type first (`let q: Tensor = 1.0 - &p;`). Used as an operand (`&y * (1.0 - &p)`),
//! returned, or passed where a `Tensor` is expected, it needs nothing.
//!
//! # Panics
//! Every method here panics eagerly when its operands do not fit the op's rule (shapes
//! that do not broadcast, a wrong dtype, an axis out of range, an attribute too large
//! for its field, a result over [`super::MAX_ELEMENTS`] elements), with a message naming
//! the op, the operand types or the value, and the caller's source line. Inside a traced function the
//! same mistake does not panic: the function's `call` returns it as an `Err`.

use super::dispatch::{apply, fail, location};
use super::{DType, Tensor};
use crate::ops::attrs::{to_u32, to_u8};
use crate::ops::{
    AxisSet, Binary, Compare, ConvAttrs, Op, Padding, Perm, PoolAttrs, ReduceOp, Unary,
};
use std::ops::{
    Add, Bound, Div, Mul, Neg, Range, RangeFrom, RangeFull, RangeInclusive, RangeTo,
    RangeToInclusive, Sub,
};
use std::panic::Location;

/// A possibly negative axis as an index `0..rank` (negative counts from the end), or a
/// message naming it. Axes at or past `rank` are left for the op's shape rule to reject.
fn norm_axis(axis: isize, rank: usize) -> Result<usize, String> {
    if axis >= 0 {
        return Ok(axis as usize);
    }
    rank.checked_sub(axis.unsigned_abs())
        .ok_or_else(|| format!("axis {axis} is out of range for rank {rank}"))
}

/// Normalizes a list of axes (see [`norm_axis`]).
fn norm_axes(axes: &[isize], rank: usize) -> Result<Vec<usize>, String> {
    axes.iter().map(|&a| norm_axis(a, rank)).collect()
}

/// Applies an op whose attributes were checked when `op` was built: a bad attribute is
/// reported like a shape error (a panic eagerly, the first error of the trace inside
/// [`crate::function`]) naming `name`, the value and the caller's line.
#[track_caller]
fn apply_checked(
    name: &'static str,
    op: Result<Op, String>,
    inputs: &[&Tensor],
    out: Option<&[usize]>,
) -> Tensor {
    match op {
        Ok(op) => apply(op, inputs, out),
        Err(msg) => {
            let loc = location(Location::caller());
            let trace = fail(name, msg, loc).expect("fail panics when not tracing");
            let (dtype, shape) = inputs
                .first()
                .map(|t| (t.dtype(), t.0.shape.clone()))
                .unwrap_or((DType::F32, Default::default()));
            Tensor::poisoned(trace, dtype, shape, loc)
        }
    }
}

macro_rules! unary_methods {
    ($($(#[$m:meta])* $name:ident => $u:ident;)*) => {$(
        $(#[$m])*
        #[track_caller]
        pub fn $name(&self) -> Tensor {
            apply(Op::Unary(Unary::$u), &[self], None)
        }
    )*};
}

macro_rules! compare_methods {
    ($($(#[$m:meta])* $name:ident => $c:ident;)*) => {$(
        $(#[$m])*
        #[track_caller]
        pub fn $name(&self, other: &Tensor) -> Tensor {
            apply(Op::Compare(Compare::$c), &[self, other], None)
        }
    )*};
}

impl Tensor {
    unary_methods! {
        /// `eˣ` elementwise.
        exp => Exp;
        /// Natural logarithm elementwise.
        log => Log;
        /// `sin x` elementwise.
        sin => Sin;
        /// `cos x` elementwise.
        cos => Cos;
        /// `tanh x` elementwise.
        tanh => Tanh;
        /// `√x` elementwise.
        sqrt => Sqrt;
        /// `|x|` elementwise.
        abs => Abs;
        /// `-1, 0, 1` by sign (no gradient).
        sign => Sign;
        /// `1/(1+e⁻ˣ)` elementwise, stable for large |x|.
        sigmoid => Sigmoid;
    }

    compare_methods! {
        /// `self > other` as a 0/1 mask (operands' dtype; broadcasting).
        gt => Gt;
        /// `self >= other` as a 0/1 mask.
        ge => Ge;
        /// `self < other` as a 0/1 mask.
        lt => Lt;
        /// `self <= other` as a 0/1 mask.
        le => Le;
        /// `self == other` as a 0/1 mask.
        eq => Eq;
        /// `self != other` as a 0/1 mask.
        ne => Ne;
    }

    /// A scalar of this tensor's dtype (how `x * 2.0` turns `2.0` into a tensor).
    ///
    /// # Example
    /// ```
    /// use tapeflow::Tensor;
    /// // `+ - * /` broadcast NumPy-style, and scalars take the tensor's dtype
    /// let a = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
    /// let b = Tensor::vec(&[10.0f32, 20.0]); // a row, broadcast over a's rows
    /// assert_eq!((&a + &b).to_vec_f32().unwrap(), [11.0, 22.0, 13.0, 24.0]);
    /// assert_eq!((&a * 2.0).to_vec_f32().unwrap(), [2.0, 4.0, 6.0, 8.0]);
    /// assert_eq!((1.0f32 - &a).to_vec_f32().unwrap(), [0.0, -1.0, -2.0, -3.0]);
    /// assert_eq!((1 - &a).to_vec_f32().unwrap(), [0.0, -1.0, -2.0, -3.0]); // an f32 result
    /// let b: Tensor = 1.0 - &a; // typed binding: an unsuffixed float literal is fine
    /// assert_eq!(b.to_vec_f32().unwrap(), [0.0, -1.0, -2.0, -3.0]);
    /// assert_eq!((&a / &a.scalar_like(4.0)).to_vec_f32().unwrap(), [0.25, 0.5, 0.75, 1.0]);
    /// ```
    #[track_caller]
    pub fn scalar_like(&self, v: f64) -> Tensor {
        Tensor::scalar_of(self.dtype(), v)
    }

    /// Zeros of this tensor's dtype and shape.
    #[track_caller]
    pub fn zeros_like(&self) -> Tensor {
        self.scalar_like(0.0).broadcast_to(self.shape())
    }

    /// Ones of this tensor's dtype and shape.
    #[track_caller]
    pub fn ones_like(&self) -> Tensor {
        self.scalar_like(1.0).broadcast_to(self.shape())
    }

    #[track_caller]
    fn binary(&self, b: Binary, other: &Tensor) -> Tensor {
        apply(Op::Binary(b), &[self, other], None)
    }

    /// `selfᵉ` elementwise (broadcasting).
    #[track_caller]
    pub fn pow(&self, e: &Tensor) -> Tensor {
        self.binary(Binary::Pow, e)
    }

    /// `selfᵉ` with a scalar exponent.
    ///
    /// # Example
    /// ```
    /// use tapeflow::Tensor;
    /// let x = Tensor::vec(&[2.0f64, 3.0]);
    /// assert_eq!(x.powf(3.0).to_vec_f64().unwrap(), [8.0, 27.0]);
    /// assert_eq!(x.square().to_vec_f64().unwrap(), [4.0, 9.0]);
    /// ```
    #[track_caller]
    pub fn powf(&self, e: f64) -> Tensor {
        self.pow(&self.scalar_like(e))
    }

    /// `self²`.
    #[track_caller]
    pub fn square(&self) -> Tensor {
        self * self
    }

    /// Elementwise maximum (broadcasting).
    ///
    /// # Example
    /// ```
    /// use tapeflow::Tensor;
    /// let a = Tensor::vec(&[1.0f32, 5.0, -2.0]);
    /// assert_eq!(a.maximum(&Tensor::scalar(0.0)).to_vec_f32().unwrap(), [1.0, 5.0, 0.0]);
    /// assert_eq!(a.relu().to_vec_f32().unwrap(), [1.0, 5.0, 0.0]);
    /// ```
    #[track_caller]
    pub fn maximum(&self, other: &Tensor) -> Tensor {
        self.binary(Binary::Maximum, other)
    }

    /// Elementwise minimum (broadcasting).
    #[track_caller]
    pub fn minimum(&self, other: &Tensor) -> Tensor {
        self.binary(Binary::Minimum, other)
    }

    /// `max(x, 0)`.
    #[track_caller]
    pub fn relu(&self) -> Tensor {
        self.maximum(&self.scalar_like(0.0))
    }

    /// `mask ? a : b` elementwise (`mask != 0`), broadcasting all three.
    #[track_caller]
    pub fn select(mask: &Tensor, a: &Tensor, b: &Tensor) -> Tensor {
        apply(Op::Select, &[mask, a, b], None)
    }

    /// Sum over `axes` (negative axes count from the end); `keep` keeps them as length 1.
    ///
    /// # Example
    /// ```
    /// use tapeflow::Tensor;
    /// let m = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]).unwrap();
    /// assert_eq!(m.sum(&[0], false).to_vec_f32().unwrap(), [5.0, 7.0, 9.0]);
    /// let rows = m.sum(&[-1], true); // the last axis, kept as length 1
    /// assert_eq!((rows.shape(), rows.to_vec_f32().unwrap()), (&[2, 1][..], vec![6.0, 15.0]));
    /// assert_eq!(m.sum_all().to_scalar().unwrap(), 21.0);
    /// ```
    #[track_caller]
    pub fn sum(&self, axes: &[isize], keep: bool) -> Tensor {
        let op = norm_axes(axes, self.rank())
            .and_then(|a| AxisSet::try_of(&a))
            .map(|axes| Op::Sum { axes, keep });
        apply_checked("sum", op, &[self], None)
    }

    /// Sum over axes given as `usize`.
    #[track_caller]
    pub fn sum_axes(&self, axes: &[usize], keep: bool) -> Tensor {
        let op = AxisSet::try_of(axes).map(|axes| Op::Sum { axes, keep });
        apply_checked("sum", op, &[self], None)
    }

    /// Sum of all elements (a scalar).
    #[track_caller]
    pub fn sum_all(&self) -> Tensor {
        self.sum_axes(&(0..self.rank()).collect::<Vec<_>>(), false)
    }

    /// Mean over `axes`.
    ///
    /// # Example
    /// ```
    /// use tapeflow::Tensor;
    /// let m = Tensor::from_vec(vec![1.0f64, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
    /// assert_eq!(m.mean(&[1], false).to_vec_f64().unwrap(), [1.5, 3.5]);
    /// assert_eq!(m.mean_all().to_scalar().unwrap(), 2.5);
    /// ```
    #[track_caller]
    pub fn mean(&self, axes: &[isize], keep: bool) -> Tensor {
        let axes = match norm_axes(axes, self.rank()) {
            Ok(a) => a,
            Err(e) => return apply_checked("sum", Err(e), &[self], None),
        };
        let dims: Vec<usize> = axes
            .iter()
            .map(|&a| self.shape().get(a).copied().unwrap_or(1))
            .collect();
        self.sum_axes(&axes, keep) / &self.count_of(&dims)
    }

    /// Mean of all elements.
    #[track_caller]
    pub fn mean_all(&self) -> Tensor {
        self.sum_all() / &self.count_of(self.shape())
    }

    /// The number of elements of a block of `dims` (at least 1) as a scalar of this
    /// tensor's dtype: a constant, or a `dim_value` of a symbolic count that the
    /// compiled function binds when it runs.
    #[track_caller]
    pub(crate) fn count_of(&self, dims: &[usize]) -> Tensor {
        match super::dim::product(dims) {
            Ok(n) if super::dim::is_sym(n) => Tensor::dim_value(n, self.dtype()),
            Ok(n) => self.scalar_like(n.max(1) as f64),
            Err(e) => apply_checked("dim_value", Err(e), &[self], None),
        }
    }

    /// `[0, 1, ..., len-1]` in `dtype`, where `len` is a shape entry: a constant (the
    /// same as [`Tensor::arange`]`(0, len)`), or inside a shape-polymorphic
    /// [`crate::function`] a symbolic length, bound per call.
    ///
    /// ```
    /// use tapeflow::{DType, Tensor};
    /// assert_eq!(Tensor::range(3, DType::I64).to_vec_i64().unwrap(), [0, 1, 2]);
    /// ```
    #[track_caller]
    pub fn range(len: usize, dtype: DType) -> Tensor {
        if !super::dim::is_sym(len) {
            return Tensor::arange(0, len.min(i64::MAX as usize) as i64, dtype);
        }
        apply(Op::Range { len, dtype }, &[], None)
    }

    /// The value of a shape entry (a constant or a symbolic dimension, see
    /// [`super::dim`]) as a scalar of `dtype`. Inside a shape-polymorphic
    /// [`crate::function`] a symbolic entry becomes a `dim_value` node, bound per call.
    ///
    /// ```
    /// use tapeflow::{DType, Tensor};
    /// let x = Tensor::zeros(&[6, 2]);
    /// assert_eq!(Tensor::dim_value(x.shape()[0], DType::F32).to_scalar().unwrap(), 6.0);
    /// ```
    #[track_caller]
    pub fn dim_value(dim: usize, dtype: DType) -> Tensor {
        if !super::dim::is_sym(dim) {
            return Tensor::scalar_of(dtype, dim as f64);
        }
        apply(Op::DimValue { dim, dtype }, &[], None)
    }

    /// Maximum over `axes`.
    ///
    /// # Example
    /// ```
    /// use tapeflow::Tensor;
    /// let m = Tensor::from_vec(vec![1.0f32, 9.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]).unwrap();
    /// assert_eq!(m.max(&[1], false).to_vec_f32().unwrap(), [9.0, 6.0]);
    /// assert_eq!(m.min(&[0], false).to_vec_f32().unwrap(), [1.0, 5.0, 3.0]);
    /// assert_eq!(m.argmax(1).to_vec_i64().unwrap(), [1, 2]);
    /// ```
    #[track_caller]
    pub fn max(&self, axes: &[isize], keep: bool) -> Tensor {
        let op = norm_axes(axes, self.rank())
            .and_then(|a| AxisSet::try_of(&a))
            .map(|axes| Op::Max { axes, keep });
        apply_checked("max", op, &[self], None)
    }

    /// Minimum over `axes` (`-max(-x)`).
    #[track_caller]
    pub fn min(&self, axes: &[isize], keep: bool) -> Tensor {
        -(-self).max(axes, keep)
    }

    /// Index of the maximum along `axis` (i64, first on ties; negative counts from the end).
    ///
    /// A NaN counts as the maximum: a lane containing NaN gives the index of its first
    /// NaN, matching [`Tensor::max`], which returns NaN there (NumPy's and JAX's rule;
    /// TensorFlow leaves NaN unspecified). Eager and compiled results agree.
    #[track_caller]
    pub fn argmax(&self, axis: isize) -> Tensor {
        let op = norm_axis(axis, self.rank())
            .and_then(|a| to_u8("axis", a))
            .map(|axis| Op::ArgMax { axis });
        apply_checked("argmax", op, &[self], None)
    }

    /// Same elements in a new shape.
    ///
    /// # Example
    /// ```
    /// use tapeflow::{DType, Tensor};
    /// let x = Tensor::arange(0, 6, DType::F32).reshape(&[2, 3]);
    /// assert_eq!(x.shape(), [2, 3]);
    /// assert_eq!(x.reshape(&[3, 2]).to_vec_f32().unwrap(), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    /// ```
    #[track_caller]
    pub fn reshape(&self, shape: &[usize]) -> Tensor {
        if shape == self.shape() {
            return self.clone();
        }
        apply(Op::Reshape, &[self], Some(shape))
    }

    /// NumPy-broadcasts to `shape`.
    ///
    /// # Example
    /// ```
    /// use tapeflow::Tensor;
    /// let row = Tensor::vec(&[1.0f32, 2.0]);
    /// assert_eq!(row.broadcast_to(&[2, 2]).to_vec_f32().unwrap(), [1.0, 2.0, 1.0, 2.0]);
    /// ```
    #[track_caller]
    pub fn broadcast_to(&self, shape: &[usize]) -> Tensor {
        if shape == self.shape() {
            return self.clone();
        }
        apply(Op::BroadcastTo, &[self], Some(shape))
    }

    /// Sums a broadcast tensor back to `shape` (the adjoint of `broadcast_to`).
    #[track_caller]
    pub fn sum_to(&self, shape: &[usize]) -> Tensor {
        if shape == self.shape() {
            return self.clone();
        }
        let lead = self.rank().saturating_sub(shape.len());
        let axes: Vec<usize> = (0..self.rank())
            .filter(|&i| i < lead || (shape[i - lead] == 1 && self.shape()[i] != 1))
            .collect();
        self.sum_axes(&axes, true).reshape(shape)
    }

    /// Permutes axes: output axis `i` is input axis `perm[i]`.
    ///
    /// # Example
    /// ```
    /// use tapeflow::{DType, Tensor};
    /// let x = Tensor::arange(0, 6, DType::F32).reshape(&[2, 3]);
    /// let t = x.transpose(&[1, 0]);
    /// assert_eq!((t.shape(), t.to_vec_f32().unwrap()), (&[3, 2][..], vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]));
    /// ```
    #[track_caller]
    pub fn transpose(&self, perm: &[usize]) -> Tensor {
        let op = Perm::new(perm)
            .map(Op::Transpose)
            .ok_or_else(|| format!("{perm:?} is not a permutation of ≤ 8 axes"));
        apply_checked("transpose", op, &[self], None)
    }

    /// Swaps the last two axes.
    #[track_caller]
    pub fn t(&self) -> Tensor {
        let r = self.rank();
        let mut p: Vec<usize> = (0..r).collect();
        if r >= 2 {
            p.swap(r - 1, r - 2);
        }
        self.transpose(&p)
    }

    /// Joins tensors along `axis`.
    ///
    /// # Example
    /// ```
    /// use tapeflow::Tensor;
    /// let a = Tensor::from_vec(vec![1.0f32, 2.0], &[1, 2]).unwrap();
    /// let b = Tensor::from_vec(vec![3.0f32, 4.0, 5.0, 6.0], &[2, 2]).unwrap();
    /// let c = Tensor::concat(&[&a, &b], 0);
    /// assert_eq!((c.shape(), c.to_vec_f32().unwrap()), (&[3, 2][..], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
    /// ```
    #[track_caller]
    pub fn concat(parts: &[&Tensor], axis: usize) -> Tensor {
        let op = to_u8("axis", axis).map(|axis| Op::Concat { axis });
        apply_checked("concat", op, parts, None)
    }

    /// `self[.., start..end, ..]` along `axis`.
    ///
    /// # Example
    /// ```
    /// use tapeflow::{DType, Tensor};
    /// let x = Tensor::arange(0, 6, DType::F32).reshape(&[2, 3]);
    /// let s = x.slice_axis(1, 1, 3); // columns 1 and 2
    /// assert_eq!((s.shape(), s.to_vec_f32().unwrap()), (&[2, 2][..], vec![1.0, 2.0, 4.0, 5.0]));
    /// ```
    #[track_caller]
    pub fn slice_axis(&self, axis: usize, start: usize, end: usize) -> Tensor {
        let op = (|| {
            Ok(Op::Slice {
                axis: to_u8("axis", axis)?,
                start: to_u32("start", start)?,
                end: to_u32("end", end)?,
            })
        })();
        apply_checked("slice", op, &[self], None)
    }

    /// `self[.., range, ..]` along `axis`, with Python's negative indices: `x.slice(0,
    /// -10000..)` is `x[-10000:]`, `x.slice(-1, ..-1)` is `x[..., :-1]`, `x.slice(1, 2..=4)`
    /// is `x[:, 2:5]`. Negative axes and bounds count from the end.
    ///
    /// Unlike Python, bounds are not clamped: a bound outside `-len..=len` or a start
    /// after the end is an error naming the axis, its length and the bound (a panic
    /// eagerly, an `Err` from the traced function's `call`). On an axis of symbolic
    /// length (see [`crate::tensor::dim`]) the bounds must be non-negative and the end
    /// given.
    ///
    /// # Example
    /// ```
    /// use tapeflow::{DType, Tensor};
    /// let x = Tensor::arange(0, 10, DType::I64);
    /// assert_eq!(x.slice(0, -3..).to_vec_i64().unwrap(), [7, 8, 9]);
    /// assert_eq!(x.slice(0, 2..-6).to_vec_i64().unwrap(), [2, 3]);
    /// assert_eq!(x.slice(0, ..=1).to_vec_i64().unwrap(), [0, 1]);
    /// let m = Tensor::arange(0, 6, DType::F32).reshape(&[2, 3]);
    /// assert_eq!(m.slice(-1, -1..).to_vec_f32().unwrap(), [2.0, 5.0]); // last column
    /// ```
    ///
    /// # Panics
    /// Eagerly, on the errors above.
    #[track_caller]
    pub fn slice(&self, axis: isize, range: impl SliceRange) -> Tensor {
        let op = slice_bounds(self.shape(), axis, range.bounds()).and_then(|(a, start, end)| {
            Ok(Op::Slice {
                axis: to_u8("axis", a)?,
                start: to_u32("start", start)?,
                end: to_u32("end", end)?,
            })
        });
        apply_checked("slice", op, &[self], None)
    }

    /// Zero-pads `axis` with `before` and `after` elements.
    #[track_caller]
    pub fn pad_axis(&self, axis: usize, before: usize, after: usize) -> Tensor {
        let op = (|| {
            Ok(Op::Pad {
                axis: to_u8("axis", axis)?,
                before: to_u32("before", before)?,
                after: to_u32("after", after)?,
            })
        })();
        apply_checked("pad", op, &[self], None)
    }

    /// Inserts a length-1 axis at `axis` (negative counts from the end of the result).
    #[track_caller]
    pub fn expand_dims(&self, axis: isize) -> Tensor {
        let rank = self.rank();
        match norm_axis(axis, rank + 1) {
            Ok(a) if a <= rank => {
                let mut s = self.shape().to_vec();
                s.insert(a, 1);
                self.reshape(&s)
            }
            _ => apply_checked(
                "reshape",
                Err(format!(
                    "expand_dims: axis {axis} is out of range for a result of rank {}",
                    rank + 1
                )),
                &[self],
                None,
            ),
        }
    }

    /// Removes a length-1 axis (negative counts from the end).
    ///
    /// An axis that is out of range or does not have length 1 is an error (as in TF).
    #[track_caller]
    pub fn squeeze(&self, axis: isize) -> Tensor {
        let rank = self.rank();
        let a = norm_axis(axis, rank).and_then(|a| match self.shape().get(a) {
            Some(1) => Ok(a),
            Some(&n) => Err(format!(
                "squeeze: axis {axis} has length {n}, not 1 (shape {:?})",
                self.shape()
            )),
            None => Err(format!(
                "squeeze: axis {axis} is out of range for rank {rank}"
            )),
        });
        match a {
            Ok(a) => {
                let mut s = self.shape().to_vec();
                s.remove(a);
                self.reshape(&s)
            }
            Err(e) => apply_checked("reshape", Err(e), &[self], None),
        }
    }

    /// Keeps the first axis and flattens the rest (`[n, ...] -> [n, prod]`).
    #[track_caller]
    pub fn flatten_batch(&self) -> Tensor {
        let n = self.shape().first().copied().unwrap_or(1);
        match super::dim::product(self.shape().get(1..).unwrap_or_default()) {
            Ok(rest) => self.reshape(&[n, rest]),
            Err(e) => apply_checked("reshape", Err(e), &[self], None),
        }
    }

    /// Converts the dtype (floats to i64 truncate; the gradient path is cut at integers).
    #[track_caller]
    pub fn cast(&self, dtype: DType) -> Tensor {
        if dtype == self.dtype() {
            return self.clone();
        }
        apply(Op::Cast(dtype), &[self], None)
    }

    /// The elementwise sum or mean of this tensor over all ranks of the MPI job (the op
    /// `all_reduce`, see [`crate::distributed`]); every rank must call it, in the same
    /// order. In a world of one (no `mpi` feature, or before
    /// [`crate::distributed::init`]) it is the tensor itself. Its gradient is the
    /// all-reduce of the cotangent with the same `op`.
    ///
    /// ```
    /// use tapeflow::{ops::ReduceOp, Tensor};
    /// let g = Tensor::vec(&[1.0f32, 2.0]);
    /// assert_eq!(g.all_reduce(ReduceOp::Mean).to_vec_f32().unwrap(), vec![1.0, 2.0]); // one rank
    /// ```
    #[track_caller]
    pub fn all_reduce(&self, op: ReduceOp) -> Tensor {
        apply(Op::AllReduce(op), &[self], None)
    }

    /// The same values with a zero gradient.
    #[track_caller]
    pub fn stop_gradient(&self) -> Tensor {
        apply(Op::StopGradient, &[self], None)
    }

    /// Picks entries along `axis` by i64 `indices`.
    #[track_caller]
    pub fn gather(&self, indices: &Tensor, axis: usize) -> Tensor {
        let op = to_u8("axis", axis).map(|axis| Op::Gather { axis });
        apply_checked("gather", op, &[self, indices], None)
    }

    /// Adds `self`'s entries into zeros of length `size` along `axis` at `indices`.
    #[track_caller]
    pub fn scatter_add(&self, indices: &Tensor, axis: usize, size: usize) -> Tensor {
        let op = (|| {
            Ok(Op::ScatterAdd {
                axis: to_u8("axis", axis)?,
                size: to_u32("size", size)?,
            })
        })();
        apply_checked("scatter_add", op, &[self, indices], None)
    }

    /// One-hot rows of length `depth` in `dtype` for integer labels (`[..] -> [.., depth]`).
    /// Labels outside `0..depth` give all-zero rows (as in TensorFlow).
    #[track_caller]
    pub fn one_hot(&self, depth: usize, dtype: DType) -> Tensor {
        if let Err(e) = super::check_shape(&[depth]) {
            return apply_checked("one_hot", Err(format!("depth {depth}: {e}")), &[self], None);
        }
        let labels = self.cast(DType::I64).expand_dims(-1);
        labels
            .eq(&Tensor::arange(0, depth as i64, DType::I64))
            .cast(dtype)
    }

    /// Matrix product of the last two axes (batched over leading ones).
    ///
    /// # Example
    /// ```
    /// use tapeflow::Tensor;
    /// let a = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
    /// let b = Tensor::from_vec(vec![5.0f32, 6.0, 7.0, 8.0], &[2, 2]).unwrap();
    /// assert_eq!(a.matmul(&b).to_vec_f32().unwrap(), [19.0, 22.0, 43.0, 50.0]);
    /// // a batch of 3 products of [2, 2] by [2, 1]
    /// let batch = Tensor::ones(&[3, 2, 2]).matmul(&Tensor::ones(&[3, 2, 1]));
    /// assert_eq!(batch.shape(), [3, 2, 1]);
    /// ```
    #[track_caller]
    pub fn matmul(&self, other: &Tensor) -> Tensor {
        self.matmul_t(other, false, false)
    }

    /// Matrix product with either operand transposed in its last two axes.
    ///
    /// # Example
    /// ```
    /// use tapeflow::Tensor;
    /// let a = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
    /// // aᵀ·a without materializing the transpose
    /// assert_eq!(a.matmul_t(&a, true, false).to_vec_f32().unwrap(), [10.0, 14.0, 14.0, 20.0]);
    /// ```
    #[track_caller]
    pub fn matmul_t(&self, other: &Tensor, ta: bool, tb: bool) -> Tensor {
        apply(Op::MatMul { ta, tb }, &[self, other], None)
    }

    /// 2-D convolution of an NHWC input with a `[kh,kw,cin,cout]` filter.
    #[track_caller]
    pub fn conv2d(&self, filter: &Tensor, stride: (usize, usize), padding: Padding) -> Tensor {
        let op = (|| {
            Ok(Op::Conv2d(ConvAttrs {
                stride: (to_u8("stride", stride.0)?, to_u8("stride", stride.1)?),
                padding,
            }))
        })();
        apply_checked("conv2d", op, &[self, filter], None)
    }

    /// 2-D max pooling of an NHWC input.
    #[track_caller]
    pub fn max_pool2d(
        &self,
        ksize: (usize, usize),
        stride: (usize, usize),
        padding: Padding,
    ) -> Tensor {
        let op = (|| {
            Ok(Op::MaxPool2d(PoolAttrs {
                ksize: (to_u8("ksize", ksize.0)?, to_u8("ksize", ksize.1)?),
                stride: (to_u8("stride", stride.0)?, to_u8("stride", stride.1)?),
                padding,
            }))
        })();
        apply_checked("max_pool2d", op, &[self], None)
    }

    #[track_caller]
    pub(crate) fn conv2d_op(op: Op, a: &Tensor, b: &Tensor, out: &[usize]) -> Tensor {
        let out = if matches!(op, Op::Conv2d(_)) {
            None
        } else {
            Some(out)
        };
        apply(op, &[a, b], out)
    }

    #[track_caller]
    pub(crate) fn pool_op(op: Op, x: &Tensor, g: Option<&Tensor>) -> Tensor {
        match g {
            Some(g) => apply(op, &[x, g], None),
            None => apply(op, &[x], None),
        }
    }

    /// `log Σ exp(x)` over `axis`, shifted by the maximum for stability.
    #[track_caller]
    pub fn logsumexp(&self, axis: isize, keep: bool) -> Tensor {
        let m = self.max(&[axis], true).stop_gradient();
        let s = (self - &m).exp().sum(&[axis], true).log() + m;
        if keep {
            s
        } else {
            s.squeeze(axis)
        }
    }

    /// `log softmax(x)` over `axis`, numerically stable.
    #[track_caller]
    pub fn log_softmax(&self, axis: isize) -> Tensor {
        self - &self.logsumexp(axis, true)
    }

    /// `softmax(x)` over `axis`, numerically stable.
    #[track_caller]
    pub fn softmax(&self, axis: isize) -> Tensor {
        let z = self - &self.max(&[axis], true).stop_gradient();
        let e = z.exp();
        &e / &e.sum(&[axis], true)
    }
}

macro_rules! binop {
    ($tr:ident, $m:ident, $op:expr) => {
        impl $tr<&Tensor> for &Tensor {
            type Output = Tensor;
            #[track_caller]
            fn $m(self, rhs: &Tensor) -> Tensor {
                apply(Op::Binary($op), &[self, rhs], None)
            }
        }
        impl $tr<Tensor> for Tensor {
            type Output = Tensor;
            #[track_caller]
            fn $m(self, rhs: Tensor) -> Tensor {
                (&self).$m(&rhs)
            }
        }
        impl $tr<&Tensor> for Tensor {
            type Output = Tensor;
            #[track_caller]
            fn $m(self, rhs: &Tensor) -> Tensor {
                (&self).$m(rhs)
            }
        }
        impl $tr<Tensor> for &Tensor {
            type Output = Tensor;
            #[track_caller]
            fn $m(self, rhs: Tensor) -> Tensor {
                self.$m(&rhs)
            }
        }
        impl<S: Scalar> $tr<S> for &Tensor {
            type Output = Tensor;
            #[track_caller]
            fn $m(self, rhs: S) -> Tensor {
                self.$m(&rhs.scalar_for(stringify!($m), self))
            }
        }
        impl<S: Scalar> $tr<S> for Tensor {
            type Output = Tensor;
            #[track_caller]
            fn $m(self, rhs: S) -> Tensor {
                (&self).$m(rhs)
            }
        }
        binop!(@left $tr, $m, f32, f64, i64);
    };
    (@left $tr:ident, $m:ident, $($s:ty),*) => {$(
        impl $tr<&Tensor> for $s {
            type Output = Tensor;
            #[track_caller]
            fn $m(self, rhs: &Tensor) -> Tensor {
                self.scalar_for(stringify!($m), rhs).$m(rhs)
            }
        }
        impl $tr<Tensor> for $s {
            type Output = Tensor;
            #[track_caller]
            fn $m(self, rhs: Tensor) -> Tensor {
                self.$m(&rhs)
            }
        }
    )*};
}

/// Plain numbers usable with a tensor in `+ - * /`: `f32`, `f64`, `i32`, `i64`.
///
/// The number becomes a scalar of the tensor's dtype (as TensorFlow converts Python
/// numbers). A float with a fractional part cannot become an `i64` scalar: that is an
/// error naming the op (a panic eagerly, an `Err` from the traced function's `call`),
/// as in TF, instead of a silent truncation.
pub trait Scalar: Copy {
    /// The value as f64 (for messages and float dtypes).
    fn to_f64(self) -> f64;

    /// The value as an exact `i64`, or `None` when it has a fractional part or does
    /// not fit.
    fn to_i64(self) -> Option<i64>;

    /// A scalar tensor of `t`'s dtype holding this value, for the op `op` (made at the
    /// caller's line; a fractional number for an `i64` tensor fails like an op).
    #[track_caller]
    fn scalar_for(self, op: &'static str, t: &Tensor) -> Tensor {
        match t.dtype() {
            DType::I64 => match self.to_i64() {
                Some(v) => {
                    Tensor::from_data(super::Data::I64(ndarray::arr0(v).into_dyn().into_shared()))
                }
                None => {
                    let loc = location(Location::caller());
                    let msg = format!(
                        "the number {} is not an integer, so it cannot take the dtype i64 of \
                         the tensor it meets (cast the tensor to a float dtype first)",
                        self.to_f64()
                    );
                    let trace = fail(op, msg, loc).expect("fail panics when not tracing");
                    Tensor::poisoned(trace, DType::I64, Default::default(), loc)
                }
            },
            d => Tensor::scalar_of(d, self.to_f64()),
        }
    }
}

impl Scalar for f32 {
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn to_i64(self) -> Option<i64> {
        (self as f64).to_i64()
    }
}

impl Scalar for f64 {
    fn to_f64(self) -> f64 {
        self
    }
    fn to_i64(self) -> Option<i64> {
        // 2^63 is exact in f64; every float in [-2^63, 2^63) with no fraction fits
        const TWO_63: f64 = 9_223_372_036_854_775_808.0;
        let fits = self.fract() == 0.0 && (-TWO_63..TWO_63).contains(&self);
        fits.then_some(self as i64)
    }
}

impl Scalar for i32 {
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn to_i64(self) -> Option<i64> {
        Some(self as i64)
    }
}

impl Scalar for i64 {
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn to_i64(self) -> Option<i64> {
        Some(self)
    }
}

binop!(Add, add, Binary::Add);
binop!(Sub, sub, Binary::Sub);
binop!(Mul, mul, Binary::Mul);
binop!(Div, div, Binary::Div);

impl Neg for &Tensor {
    type Output = Tensor;
    #[track_caller]
    fn neg(self) -> Tensor {
        apply(Op::Unary(Unary::Neg), &[self], None)
    }
}

impl Neg for Tensor {
    type Output = Tensor;
    #[track_caller]
    fn neg(self) -> Tensor {
        -&self
    }
}

/// Bounds for [`Tensor::slice`]: Rust ranges (`a..b`, `a..`, `..b`, `..`, `a..=b`,
/// `..=b`) of `isize`, `i32`, `i64` or `usize`. Negative bounds count from the end.
pub trait SliceRange {
    /// The start and end bounds as given (not yet normalized).
    fn bounds(&self) -> (Bound<i64>, Bound<i64>);
}

macro_rules! slice_ranges {
    ($($t:ty),*) => {$(
        impl SliceRange for Range<$t> {
            fn bounds(&self) -> (Bound<i64>, Bound<i64>) {
                (Bound::Included(self.start as i64), Bound::Excluded(self.end as i64))
            }
        }
        impl SliceRange for RangeFrom<$t> {
            fn bounds(&self) -> (Bound<i64>, Bound<i64>) {
                (Bound::Included(self.start as i64), Bound::Unbounded)
            }
        }
        impl SliceRange for RangeTo<$t> {
            fn bounds(&self) -> (Bound<i64>, Bound<i64>) {
                (Bound::Unbounded, Bound::Excluded(self.end as i64))
            }
        }
        impl SliceRange for RangeInclusive<$t> {
            fn bounds(&self) -> (Bound<i64>, Bound<i64>) {
                (Bound::Included(*self.start() as i64), Bound::Included(*self.end() as i64))
            }
        }
        impl SliceRange for RangeToInclusive<$t> {
            fn bounds(&self) -> (Bound<i64>, Bound<i64>) {
                (Bound::Unbounded, Bound::Included(self.end as i64))
            }
        }
    )*};
}

slice_ranges!(isize, i32, i64, usize);

impl SliceRange for RangeFull {
    fn bounds(&self) -> (Bound<i64>, Bound<i64>) {
        (Bound::Unbounded, Bound::Unbounded)
    }
}

/// The axis and the `start..end` of a slice of `shape`, with negative axes and bounds
/// resolved, or a message naming the bad value.
fn slice_bounds(
    shape: &[usize],
    axis: isize,
    (start, end): (Bound<i64>, Bound<i64>),
) -> Result<(usize, usize, usize), String> {
    let rank = shape.len();
    let a = norm_axis(axis, rank)?;
    let &len = shape
        .get(a)
        .ok_or_else(|| format!("axis {axis} is out of range for rank {rank}"))?;
    if super::dim::is_sym(len) {
        let fixed = |b: Bound<i64>, what: &str| match b {
            Bound::Included(i) if i >= 0 => Ok(i as usize),
            Bound::Excluded(i) if i >= 0 => Ok(i as usize),
            _ => Err(format!(
                "axis {axis} has the symbolic length {}: the {what} of the slice must be \
                 given and non-negative",
                super::dim::show(len)
            )),
        };
        let s = match start {
            Bound::Unbounded => 0,
            b => fixed(b, "start")?,
        };
        let e = fixed(end, "end")? + usize::from(matches!(end, Bound::Included(_)));
        return Ok((a, s, e));
    }
    let n = len as i64;
    let out_of_range = |i: i64| {
        format!("index {i} is out of range for axis {axis} of length {len} (valid: -{len}..={len})")
    };
    // a bound in -len..=len, as an offset from the start
    let resolve = |i: i64| match i {
        i if (0..=n).contains(&i) => Ok(i),
        i if (-n..0).contains(&i) => Ok(i + n),
        i => Err(out_of_range(i)),
    };
    let s = match start {
        Bound::Unbounded => 0,
        Bound::Included(i) | Bound::Excluded(i) => resolve(i)?,
    };
    let e = match end {
        Bound::Unbounded => n,
        Bound::Excluded(i) => resolve(i)?,
        // an inclusive end names an element: it must be one
        Bound::Included(i) => match resolve(i)? {
            r if r < n => r + 1,
            _ => return Err(out_of_range(i)),
        },
    };
    if s > e {
        return Err(format!(
            "the slice starts at {s} after its end {e} on axis {axis} of length {len}"
        ));
    }
    Ok((a, s as usize, e as usize))
}
