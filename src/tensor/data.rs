//! `Data`: the concrete buffer behind a tensor, one ndarray per dtype.

use super::dtype::{DType, Shape};
use crate::exec::kernels::fastmath;
use ndarray::{ArcArray, ArrayD, IxDyn};

/// Shared, copy-on-write n-dimensional array: the storage of every concrete tensor.
pub type Arr<T> = ArcArray<T, IxDyn>;

/// Floating-point element types the kernels are generic over (`f32`, `f64`).
pub trait Float:
    num_traits::Float
    + num_traits::FromPrimitive
    + ndarray::ScalarOperand
    + ndarray::LinalgScalar
    + std::fmt::Debug
    + std::fmt::Display
    + std::iter::Sum
    + Send
    + Sync
    + Default
    + crate::exec::buffers::Pooled
    + 'static
{
    /// The dtype tag of this element type.
    const DTYPE: DType;
    /// Wraps an array of this element type.
    fn wrap(a: ArrayD<Self>) -> Data;
    /// Borrows the array of this element type, if `d` holds one.
    fn unwrap(d: &Data) -> Option<&Arr<Self>>;
    /// Converts from f64 (rounding for f32).
    fn from_f64(x: f64) -> Self;
    /// Converts to f64.
    fn to_f64(self) -> f64;
    /// `eˣ` as the kernels compute it. f32: the vectorizable version in
    /// `exec::kernels::fastmath` (within 1 ulp); f64: std (libm, so f64 gradient checks keep
    /// its accuracy). The same for the other `kernel_*` functions.
    fn kernel_exp(self) -> Self;
    /// `ln x` as the kernels compute it (see [`Float::kernel_exp`]).
    fn kernel_ln(self) -> Self;
    /// `sin x` as the kernels compute it (see [`Float::kernel_exp`]; f32 is within 2 ulp
    /// for |x| ≤ 12867, less accurate beyond).
    fn kernel_sin(self) -> Self;
    /// `cos x` as the kernels compute it (see [`Float::kernel_sin`]).
    fn kernel_cos(self) -> Self;
    /// `(sin x, cos x)`: exactly the bits of [`Float::kernel_sin`] and
    /// [`Float::kernel_cos`], computed together (f32 shares one range reduction).
    fn kernel_sin_cos(self) -> (Self, Self);
    /// `tanh x` as the kernels compute it (see [`Float::kernel_exp`]).
    fn kernel_tanh(self) -> Self;
}

impl Float for f32 {
    const DTYPE: DType = DType::F32;
    fn wrap(a: ArrayD<f32>) -> Data {
        Data::F32(a.into_shared())
    }
    fn unwrap(d: &Data) -> Option<&Arr<f32>> {
        match d {
            Data::F32(a) => Some(a),
            _ => None,
        }
    }
    fn from_f64(x: f64) -> f32 {
        x as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn kernel_exp(self) -> f32 {
        fastmath::exp(self)
    }
    #[inline(always)]
    fn kernel_ln(self) -> f32 {
        fastmath::ln(self)
    }
    #[inline(always)]
    fn kernel_sin(self) -> f32 {
        fastmath::sin(self)
    }
    #[inline(always)]
    fn kernel_cos(self) -> f32 {
        fastmath::cos(self)
    }
    #[inline(always)]
    fn kernel_sin_cos(self) -> (f32, f32) {
        fastmath::sin_cos(self)
    }
    #[inline(always)]
    fn kernel_tanh(self) -> f32 {
        fastmath::tanh(self)
    }
}

impl Float for f64 {
    const DTYPE: DType = DType::F64;
    fn wrap(a: ArrayD<f64>) -> Data {
        Data::F64(a.into_shared())
    }
    fn unwrap(d: &Data) -> Option<&Arr<f64>> {
        match d {
            Data::F64(a) => Some(a),
            _ => None,
        }
    }
    fn from_f64(x: f64) -> f64 {
        x
    }
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn kernel_exp(self) -> f64 {
        self.exp()
    }
    #[inline(always)]
    fn kernel_ln(self) -> f64 {
        self.ln()
    }
    #[inline(always)]
    fn kernel_sin(self) -> f64 {
        self.sin()
    }
    #[inline(always)]
    fn kernel_cos(self) -> f64 {
        self.cos()
    }
    #[inline(always)]
    fn kernel_sin_cos(self) -> (f64, f64) {
        (self.sin(), self.cos())
    }
    #[inline(always)]
    fn kernel_tanh(self) -> f64 {
        self.tanh()
    }
}

/// A concrete n-dimensional buffer. Always in standard (row-major) layout once it
/// leaves a kernel, so kernels may take slices of it.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// f32 elements.
    F32(Arr<f32>),
    /// f64 elements.
    F64(Arr<f64>),
    /// i64 elements.
    I64(Arr<i64>),
}

/// Runs `$body` with `$a` bound to the array of whichever dtype `$d` holds.
#[macro_export]
#[doc(hidden)]
macro_rules! with_data {
    ($d:expr, $a:ident => $body:expr) => {
        match $d {
            $crate::tensor::Data::F32($a) => $body,
            $crate::tensor::Data::F64($a) => $body,
            $crate::tensor::Data::I64($a) => $body,
        }
    };
}

/// Like [`with_data!`] but re-wraps an array result in the same dtype variant.
#[macro_export]
#[doc(hidden)]
macro_rules! map_data {
    ($d:expr, $a:ident => $body:expr) => {
        match $d {
            $crate::tensor::Data::F32($a) => $crate::tensor::Data::F32($body),
            $crate::tensor::Data::F64($a) => $crate::tensor::Data::F64($body),
            $crate::tensor::Data::I64($a) => $crate::tensor::Data::I64($body),
        }
    };
}

impl Data {
    /// The dtype of the elements.
    pub fn dtype(&self) -> DType {
        match self {
            Data::F32(_) => DType::F32,
            Data::F64(_) => DType::F64,
            Data::I64(_) => DType::I64,
        }
    }

    /// The shape.
    pub fn shape(&self) -> Shape {
        with_data!(self, a => Shape::from_slice(a.shape()))
    }

    /// The shape as a borrowed slice (no copy: for comparisons on hot paths).
    pub fn dims(&self) -> &[usize] {
        with_data!(self, a => a.shape())
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        with_data!(self, a => a.len())
    }

    /// The row-major index and value of the first NaN or infinity (`None` for i64).
    pub fn first_non_finite(&self) -> Option<(usize, f64)> {
        match self {
            Data::F32(a) => a
                .iter()
                .enumerate()
                .find(|(_, v)| !v.is_finite())
                .map(|(i, &v)| (i, v as f64)),
            Data::F64(a) => a
                .iter()
                .enumerate()
                .find(|(_, v)| !v.is_finite())
                .map(|(i, &v)| (i, v)),
            Data::I64(_) => None,
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A buffer of zeros.
    pub fn zeros(dtype: DType, shape: &[usize]) -> Data {
        let s = IxDyn(shape);
        match dtype {
            DType::F32 => Data::F32(ArcArray::zeros(s)),
            DType::F64 => Data::F64(ArcArray::zeros(s)),
            DType::I64 => Data::I64(ArcArray::zeros(s)),
        }
    }

    /// A buffer filled with `v` (truncated for integers).
    pub fn full(dtype: DType, shape: &[usize], v: f64) -> Data {
        let s = IxDyn(shape);
        match dtype {
            DType::F32 => Data::F32(ArcArray::from_elem(s, v as f32)),
            DType::F64 => Data::F64(ArcArray::from_elem(s, v)),
            DType::I64 => Data::I64(ArcArray::from_elem(s, v as i64)),
        }
    }

    /// All elements converted to f64, in row-major order.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match self {
            Data::F32(a) => a.iter().map(|&x| x as f64).collect(),
            Data::F64(a) => a.iter().copied().collect(),
            Data::I64(a) => a.iter().map(|&x| x as f64).collect(),
        }
    }

    /// Makes the layout standard (row-major, contiguous) if it is not already.
    pub fn into_standard(self) -> Data {
        map_data!(self, a => if a.is_standard_layout() { a } else { a.as_standard_layout().into_owned().into_shared() })
    }

    /// The elements as little-endian bytes, in row-major order (the layout of
    /// safetensors files).
    ///
    /// ```
    /// use tapeflow::{DType, Data};
    /// let d = Data::full(DType::F32, &[2], 1.5);
    /// assert_eq!(Data::from_le_bytes(DType::F32, &[2], &d.to_le_bytes()).unwrap(), d);
    /// ```
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            Data::F32(a) => a.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Data::F64(a) => a.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Data::I64(a) => a.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// A buffer of `dtype` and `shape` from little-endian bytes in row-major order.
    ///
    /// # Errors
    /// When `bytes` does not hold exactly the shape's number of elements.
    pub fn from_le_bytes(dtype: DType, shape: &[usize], bytes: &[u8]) -> Result<Data, String> {
        let n = super::dtype::check_shape(shape)?;
        if n.checked_mul(dtype.size()) != Some(bytes.len()) {
            return Err(format!(
                "{} bytes do not hold the {n} elements of {}",
                bytes.len(),
                super::dtype::type_str(dtype, shape)
            ));
        }
        fn arr<T: Clone>(shape: &[usize], v: Vec<T>) -> ArcArray<T, IxDyn> {
            ArrayD::from_shape_vec(IxDyn(shape), v)
                .expect("length checked above")
                .into_shared()
        }
        let words = |k: usize| bytes.chunks_exact(k);
        Ok(match dtype {
            DType::F32 => Data::F32(arr(
                shape,
                words(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect(),
            )),
            DType::F64 => Data::F64(arr(
                shape,
                words(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
            )),
            DType::I64 => Data::I64(arr(
                shape,
                words(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
            )),
        })
    }

    /// Bytes held by the elements.
    pub fn nbytes(&self) -> usize {
        self.len() * self.dtype().size()
    }
}
