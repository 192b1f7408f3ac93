//! Constructors: scalars, vectors, from buffers and ndarrays, filled, seeded random, ranges.

use super::dispatch::{fail, location};
use super::{check_shape, numel, DType, Data, Tensor};
use crate::error::{Error, Result};
use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Element types a tensor can be built from: `f32`, `f64`, `i64`.
pub trait Element: Copy + 'static {
    /// Wraps an array.
    fn into_data(a: ArrayD<Self>) -> Data;
}

impl Element for f32 {
    fn into_data(a: ArrayD<f32>) -> Data {
        Data::F32(a.into_shared())
    }
}
impl Element for f64 {
    fn into_data(a: ArrayD<f64>) -> Data {
        Data::F64(a.into_shared())
    }
}
impl Element for i64 {
    fn into_data(a: ArrayD<i64>) -> Data {
        Data::I64(a.into_shared())
    }
}

/// Rejects a constructor's shape over [`super::MAX_ELEMENTS`] or with a symbolic
/// dimension like an op's shape error:
/// a panic eagerly, a failed tensor (the trace's first error) inside [`crate::function`].
#[track_caller]
fn too_big(name: &'static str, shape: &[usize], dtype: DType) -> Option<Tensor> {
    let msg = if super::dim::any_sym(shape) {
        format!(
            "a constant needs a concrete shape, got {} (make it from a traced tensor \
             instead: `x.zeros_like()`, `broadcast_to(x.shape())`)",
            super::shape_str(shape)
        )
    } else {
        check_shape(shape).err()?
    };
    let loc = location(std::panic::Location::caller());
    let trace = fail(name, msg, loc).expect("fail panics when not tracing");
    Some(Tensor::poisoned(trace, dtype, shape.into(), loc))
}

impl Tensor {
    /// An f32 scalar. `Tensor::scalar(3.0)`.
    ///
    /// # Example
    /// ```
    /// use tapeflow::{DType, Tensor};
    /// let x = Tensor::scalar(3.0);
    /// assert_eq!((x.dtype(), x.shape()), (DType::F32, &[][..]));
    /// assert_eq!(x.to_scalar().unwrap(), 3.0);
    /// ```
    #[track_caller]
    pub fn scalar(v: f32) -> Tensor {
        Tensor::from_data(Data::full(DType::F32, &[], v as f64))
    }

    /// A scalar of any dtype.
    #[track_caller]
    pub fn scalar_of(dtype: DType, v: f64) -> Tensor {
        Tensor::from_data(Data::full(dtype, &[], v))
    }

    /// A 1-D tensor copied from a slice. `Tensor::vec(&[1.0f32, 2.0])`.
    ///
    /// # Example
    /// ```
    /// use tapeflow::{DType, Tensor};
    /// let x = Tensor::vec(&[1.0f64, 2.0, 3.0]);
    /// assert_eq!((x.dtype(), x.shape()), (DType::F64, &[3][..]));
    /// assert_eq!(Tensor::vec(&[4i64, 5]).to_vec_i64().unwrap(), [4, 5]);
    /// ```
    #[track_caller]
    pub fn vec<T: Element>(v: &[T]) -> Tensor {
        Tensor::from_data(T::into_data(
            ArrayD::from_shape_vec(IxDyn(&[v.len()]), v.to_vec()).expect("1-D"),
        ))
    }

    /// A tensor from row-major elements and a shape.
    ///
    /// Returns `Err` when the element count does not match the shape.
    ///
    /// # Example
    /// ```
    /// use tapeflow::Tensor;
    /// let m = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]).unwrap();
    /// assert_eq!(m.shape(), [2, 3]);
    /// assert!(Tensor::from_vec(vec![1.0f32, 2.0], &[3]).is_err()); // 2 elements, 3 slots
    /// ```
    #[track_caller]
    pub fn from_vec<T: Element>(v: Vec<T>, shape: &[usize]) -> Result<Tensor> {
        let n = v.len();
        let a = ArrayD::from_shape_vec(IxDyn(shape), v).map_err(|_| {
            Error::Invalid(format!(
                "from_vec: {n} elements do not fill shape {shape:?} ({} elements)",
                numel(shape)
            ))
        })?;
        Ok(Tensor::from_data(T::into_data(a)))
    }

    /// A tensor from an ndarray (copied into standard layout if needed).
    #[track_caller]
    pub fn from_array<T: Element>(a: ArrayD<T>) -> Tensor {
        Tensor::from_data(T::into_data(a))
    }

    /// Zeros of a shape (f32).
    ///
    /// # Example
    /// ```
    /// use tapeflow::Tensor;
    /// let z = Tensor::zeros(&[2, 2]);
    /// assert_eq!(z.to_vec_f32().unwrap(), [0.0; 4]);
    /// assert_eq!(Tensor::ones(&[3]).to_vec_f32().unwrap(), [1.0; 3]);
    /// ```
    ///
    /// # Panics
    /// If the shape has more than [`crate::tensor::MAX_ELEMENTS`] elements (inside
    /// [`crate::function`] the call returns that as an `Err`); the same holds for every
    /// constructor that takes a shape or a length.
    #[track_caller]
    pub fn zeros(shape: &[usize]) -> Tensor {
        if let Some(bad) = too_big("zeros", shape, DType::F32) {
            return bad;
        }
        Tensor::from_data(Data::zeros(DType::F32, shape))
    }

    /// Ones of a shape (f32).
    #[track_caller]
    pub fn ones(shape: &[usize]) -> Tensor {
        if let Some(bad) = too_big("ones", shape, DType::F32) {
            return bad;
        }
        Tensor::from_data(Data::full(DType::F32, shape, 1.0))
    }

    /// A shape filled with `v` in `dtype`.
    ///
    /// # Example
    /// ```
    /// use tapeflow::{DType, Tensor};
    /// let t = Tensor::full(&[2], 7.0, DType::I64);
    /// assert_eq!((t.dtype(), t.to_vec_i64().unwrap()), (DType::I64, vec![7, 7]));
    /// ```
    #[track_caller]
    pub fn full(shape: &[usize], v: f64, dtype: DType) -> Tensor {
        if let Some(bad) = too_big("full", shape, dtype) {
            return bad;
        }
        Tensor::from_data(Data::full(dtype, shape, v))
    }

    /// `start, start+1, ..., end-1` in `dtype`.
    ///
    /// # Example
    /// ```
    /// use tapeflow::{DType, Tensor};
    /// let r = Tensor::arange(2, 6, DType::F32);
    /// assert_eq!(r.to_vec_f32().unwrap(), [2.0, 3.0, 4.0, 5.0]);
    /// ```
    #[track_caller]
    pub fn arange(start: i64, end: i64, dtype: DType) -> Tensor {
        let len = usize::try_from(end.max(start).abs_diff(start)).unwrap_or(usize::MAX);
        if let Some(bad) = too_big("arange", &[len], dtype) {
            return bad;
        }
        let v: Vec<f64> = (start..end.max(start)).map(|i| i as f64).collect();
        let n = v.len();
        let d = Data::F64(
            ArrayD::from_shape_vec(IxDyn(&[n]), v)
                .expect("1-D")
                .into_shared(),
        );
        Tensor::from_data(crate::ops::shape::cast(&d, dtype))
    }

    /// Normal samples with a seed (same seed, same values, on every platform).
    #[track_caller]
    pub fn random_normal(shape: &[usize], mean: f64, std: f64, seed: u64, dtype: DType) -> Tensor {
        if let Some(bad) = too_big("random_normal", shape, dtype) {
            return bad;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = numel(shape);
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            // Box–Muller: two uniforms give two independent normals
            let u1: f64 = 1.0 - rng.gen::<f64>();
            let u2: f64 = rng.gen::<f64>();
            let r = (-2.0 * u1.ln()).sqrt();
            let t = 2.0 * std::f64::consts::PI * u2;
            v.push(mean + std * r * t.cos());
            v.push(mean + std * r * t.sin());
        }
        v.truncate(n);
        Tensor::from_f64s(v, shape, dtype)
    }

    /// Uniform samples in `[low, high)` with a seed.
    #[track_caller]
    pub fn random_uniform(shape: &[usize], low: f64, high: f64, seed: u64, dtype: DType) -> Tensor {
        if let Some(bad) = too_big("random_uniform", shape, dtype) {
            return bad;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let v: Vec<f64> = (0..numel(shape))
            .map(|_| low + (high - low) * rng.gen::<f64>())
            .collect();
        Tensor::from_f64s(v, shape, dtype)
    }

    #[track_caller]
    fn from_f64s(v: Vec<f64>, shape: &[usize], dtype: DType) -> Tensor {
        let d = Data::F64(
            ArrayD::from_shape_vec(IxDyn(shape), v)
                .expect("shape")
                .into_shared(),
        );
        Tensor::from_data(crate::ops::shape::cast(&d, dtype))
    }
}
