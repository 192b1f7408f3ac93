//! Constructors: scalars, vectors, from buffers and ndarrays, filled, seeded random, ranges.

use super::dispatch::{fail, location};
use super::{check_shape, numel, DType, Data, Tensor};
use crate::error::{Error, Result};
use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Element types a tensor can be built from: `f32`, `f64`, `i64`, and `i32` (stored as
/// `i64`, the one integer dtype).
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
impl Element for i32 {
    fn into_data(a: ArrayD<i32>) -> Data {
        Data::I64(a.mapv(i64::from).into_shared())
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

/// `Tensor::from(3.0f32)`, `Tensor::from(2i64)`, ...: a scalar of the number's dtype
/// (`i32` gives an `i64` scalar).
impl<T: Element> From<T> for Tensor {
    #[track_caller]
    fn from(v: T) -> Tensor {
        Tensor::from_array(ndarray::arr0(v).into_dyn())
    }
}

/// `Tensor::from(vec![1i64, 2])`: a 1-D tensor of the elements' dtype.
impl<T: Element> From<Vec<T>> for Tensor {
    #[track_caller]
    fn from(v: Vec<T>) -> Tensor {
        let n = v.len();
        Tensor::from_array(ArrayD::from_shape_vec(IxDyn(&[n]), v).expect("1-D"))
    }
}

/// `Tensor::from(&[1.0f32, 2.0][..])`: a 1-D tensor copied from a slice.
impl<T: Element> From<&[T]> for Tensor {
    #[track_caller]
    fn from(v: &[T]) -> Tensor {
        Tensor::vec(v)
    }
}

/// `Tensor::from([1.0f32, 2.0])`: a 1-D tensor.
impl<T: Element, const N: usize> From<[T; N]> for Tensor {
    #[track_caller]
    fn from(v: [T; N]) -> Tensor {
        Tensor::vec(&v)
    }
}

/// `Tensor::from([[1.0f32, 2.0], [3.0, 4.0]])`: a 2-D tensor of `R` rows of `C`.
impl<T: Element, const R: usize, const C: usize> From<[[T; C]; R]> for Tensor {
    #[track_caller]
    fn from(v: [[T; C]; R]) -> Tensor {
        let flat: Vec<T> = v.iter().flatten().copied().collect();
        Tensor::from_array(ArrayD::from_shape_vec(IxDyn(&[R, C]), flat).expect("R x C"))
    }
}

/// One number written in a [`tensor!`](crate::tensor!) literal, with what its source
/// text says about its dtype. Built by the macro; not meant to be written by hand.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lit {
    /// An integer (`i32` or `i64`).
    Int(i64),
    /// An `f32`, or an unsuffixed float literal (`1.5`, `-2.0`, `1e-3`, `1.0 / 3.0`),
    /// which becomes `f32` as Python floats do in `tf.constant`.
    F32(f64),
    /// A value typed `f64` (a `f64` suffix or an `f64` expression).
    F64(f64),
}

/// Numbers that [`Lit::new`] accepts: `f32`, `f64`, `i32`, `i64`.
pub trait LitValue: Copy {
    /// The number as a [`Lit`], given its source text.
    fn lit(self, text: &str) -> Lit;
}

impl LitValue for f32 {
    fn lit(self, _: &str) -> Lit {
        Lit::F32(self as f64)
    }
}
impl LitValue for f64 {
    fn lit(self, text: &str) -> Lit {
        if is_unsuffixed_float_text(text) {
            Lit::F32(self)
        } else {
            Lit::F64(self)
        }
    }
}
impl LitValue for i32 {
    fn lit(self, _: &str) -> Lit {
        Lit::Int(self as i64)
    }
}
impl LitValue for i64 {
    fn lit(self, _: &str) -> Lit {
        Lit::Int(self)
    }
}

/// Whether `text` is made only of unsuffixed number literals and arithmetic
/// (`1.5`, `-2.0`, `1e-3`, `(1.0 / 3.0)`): Rust types such an expression `f64` only
/// because nothing said otherwise, so [`tensor!`](crate::tensor!) treats it as f32.
fn is_unsuffixed_float_text(text: &str) -> bool {
    let b = text.as_bytes();
    let ok = b.iter().enumerate().all(|(i, &c)| match c {
        b'0'..=b'9' | b'.' | b'+' | b'-' | b'*' | b'/' | b'(' | b')' | b'_' | b' ' => true,
        // an exponent: right after a digit or a decimal point
        b'e' | b'E' => i > 0 && (b[i - 1].is_ascii_digit() || b[i - 1] == b'.'),
        _ => false,
    });
    ok && b.iter().any(u8::is_ascii_digit)
}

impl Lit {
    /// Reads one element of a [`tensor!`](crate::tensor!) literal.
    pub fn new<T: LitValue>(v: T, text: &str) -> Lit {
        v.lit(text)
    }
}

/// A nested list of [`Lit`]s as written in a [`tensor!`](crate::tensor!) literal.
#[derive(Debug, Clone, PartialEq)]
pub enum Nested {
    /// One number.
    Leaf(Lit),
    /// A bracketed list.
    List(Vec<Nested>),
}

impl Nested {
    /// Collects the numbers row-major and checks that the lists are rectangular; sets
    /// `shape` from the first path down.
    fn flatten(&self, depth: usize, shape: &mut Vec<usize>, out: &mut Vec<Lit>) -> Result<()> {
        match self {
            Nested::Leaf(l) if depth == shape.len() => {
                out.push(*l);
                Ok(())
            }
            Nested::List(items) if depth < shape.len() || out.is_empty() => {
                if depth == shape.len() {
                    shape.push(items.len());
                }
                if items.len() != shape[depth] {
                    return Err(Error::Invalid(format!(
                        "tensor!: a list at depth {depth} has {} elements, another {} \
                         (the lists must form a rectangular array)",
                        items.len(),
                        shape[depth]
                    )));
                }
                items
                    .iter()
                    .try_for_each(|i| i.flatten(depth + 1, shape, out))
            }
            _ => Err(Error::Invalid(format!(
                "tensor!: a number and a list are mixed at depth {depth} (the lists must \
                 form a rectangular array)"
            ))),
        }
    }

    /// The tensor the literal describes: i64 if every number is an integer; else f64 if
    /// any number is typed `f64`; else f32 (as `tf.constant` turns Python floats into
    /// float32). An empty literal is an empty f32 vector.
    ///
    /// Returns `Err` when the lists are not rectangular.
    #[track_caller]
    pub fn to_tensor(&self) -> Result<Tensor> {
        let (mut shape, mut lits) = (Vec::new(), Vec::new());
        self.flatten(0, &mut shape, &mut lits)?;
        let float = |l: &Lit| match *l {
            Lit::Int(v) => v as f64,
            Lit::F32(v) | Lit::F64(v) => v,
        };
        if !lits.is_empty() && lits.iter().all(|l| matches!(l, Lit::Int(_))) {
            let v: Vec<i64> = lits
                .iter()
                .map(|l| match *l {
                    Lit::Int(v) => v,
                    _ => unreachable!("all integers"),
                })
                .collect();
            Tensor::from_vec(v, &shape)
        } else if lits.iter().any(|l| matches!(l, Lit::F64(_))) {
            Tensor::from_vec(lits.iter().map(float).collect::<Vec<f64>>(), &shape)
        } else {
            Tensor::from_vec(
                lits.iter().map(|l| float(l) as f32).collect::<Vec<f32>>(),
                &shape,
            )
        }
    }
}

/// A tensor from a literal, with the dtype inferred as `tf.constant` infers it:
/// `tensor![1.0, 2.0]` is f32 (Python floats become float32), `tensor![1, 2]` is i64,
/// a mix of integers and floats is a float tensor, and any `f64`-typed element
/// (`1.0f64`, a `f64` variable) makes it f64. Nested brackets give more axes:
/// `tensor![[1.0, 2.0], [3.0, 4.0]]` is `f32[2,2]`. For a scalar use
/// [`Tensor::from`] (`Tensor::from(3.0f32)`).
///
/// # Example
/// ```
/// use tapeflow::{tensor, DType};
/// let x = tensor![1.0, 2.0, 3.0];
/// assert_eq!((x.dtype(), x.shape()), (DType::F32, &[3][..]));
/// assert_eq!(tensor![1, 2].dtype(), DType::I64);
/// assert_eq!(tensor![1.0f64, 2.0].dtype(), DType::F64);
/// let m = tensor![[1, 2, 3], [4, 5, 6]];
/// assert_eq!((m.shape(), m.to_vec_i64().unwrap()), (&[2, 3][..], vec![1, 2, 3, 4, 5, 6]));
/// ```
///
/// # Panics
/// If nested lists are not rectangular (`tensor![[1, 2], [3]]`).
#[macro_export]
macro_rules! tensor {
    ($($body:tt)*) => {
        match $crate::__tensor_nested!([$($body)*]).to_tensor() {
            ::std::result::Result::Ok(t) => t,
            ::std::result::Result::Err(e) => ::std::panic!("{}", e),
        }
    };
}

/// The [`Nested`] form of a bracketed `tensor!` literal.
#[macro_export]
#[doc(hidden)]
macro_rules! __tensor_nested {
    ([$([$($inner:tt)*]),+ $(,)?]) => {
        $crate::tensor::Nested::List(::std::vec![$($crate::__tensor_nested!([$($inner)*])),+])
    };
    ([$($x:expr),* $(,)?]) => {
        $crate::tensor::Nested::List(::std::vec![$(
            $crate::tensor::Nested::Leaf($crate::tensor::Lit::new($x, ::std::stringify!($x)))
        ),*])
    };
}
