//! Tensors, variables, dtypes and shapes.
//!
//! A [`Tensor`] is a cheap immutable handle (`Arc`). It is either *concrete* (it owns a
//! [`Data`] buffer) or *symbolic* (it names a node of the graph being traced by
//! [`crate::function`]). Every op goes through one dispatch point
//! (`dispatch::apply`) which runs the kernel now (eager) or adds a node (traced), and
//! records the op on the active gradient tapes. User code cannot tell the modes apart,
//! except that a symbolic tensor has no value to read.
//!
//! Invariant: a tensor's `dtype` and `shape` are always known, in both modes.

mod create;
pub(crate) mod data;
pub mod dim;
pub(crate) mod dispatch;
pub(crate) mod dtype;
mod math;
mod print;
pub(crate) mod variable;

pub use create::{Element, Lit, LitValue, Nested};
pub use data::{Arr, Data, Float};
pub use dim::Dim;
pub use dtype::{
    broadcast_shapes, check_shape, numel, shape_str, type_str, DType, Shape, MAX_ELEMENTS,
};
pub use math::{Scalar, SliceRange};
pub use variable::Variable;

use crate::error::{Error, Loc, Result};
use crate::ir::NodeId;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh process-wide id for tensors, variables and traces.
pub(crate) fn fresh_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// An n-dimensional array of `f32`, `f64` or `i64`, concrete or symbolic.
///
/// Cloning is cheap (an `Arc` clone). See the [module docs](self).
#[derive(Clone)]
pub struct Tensor(pub(crate) Arc<Inner>);

pub(crate) struct Inner {
    pub(crate) id: u64,
    pub(crate) dtype: DType,
    pub(crate) shape: Shape,
    pub(crate) loc: Loc,
    pub(crate) kind: Kind,
}

pub(crate) enum Kind {
    Concrete(Data),
    /// A node of the graph built by the trace `trace`.
    Symbolic {
        trace: u64,
        node: NodeId,
    },
    /// The result of an op that failed during tracing; the trace reports the first error.
    Poisoned {
        trace: u64,
    },
}

impl Tensor {
    #[track_caller]
    pub(crate) fn from_data_at(data: Data, loc: Loc) -> Tensor {
        let data = data.into_standard();
        Tensor(Arc::new(Inner {
            id: fresh_id(),
            dtype: data.dtype(),
            shape: data.shape(),
            loc,
            kind: Kind::Concrete(data),
        }))
    }

    /// The buffer of a concrete tensor nobody else holds (for recycling).
    pub(crate) fn into_unshared_data(self) -> Option<Data> {
        match Arc::try_unwrap(self.0).ok()?.kind {
            Kind::Concrete(d) => Some(d),
            _ => None,
        }
    }

    /// Wraps a concrete buffer.
    #[track_caller]
    pub fn from_data(data: Data) -> Tensor {
        Tensor::from_data_at(data, std::panic::Location::caller())
    }

    pub(crate) fn symbolic(
        trace: u64,
        node: NodeId,
        dtype: DType,
        shape: Shape,
        loc: Loc,
    ) -> Tensor {
        Tensor(Arc::new(Inner {
            id: fresh_id(),
            dtype,
            shape,
            loc,
            kind: Kind::Symbolic { trace, node },
        }))
    }

    /// The result of a failed op. It keeps the requested shape when that shape is
    /// valid; an over-large one (the reason the op failed) becomes a scalar, so later
    /// code computing with the shape (`len`, `mean`) cannot overflow.
    pub(crate) fn poisoned(trace: u64, dtype: DType, shape: Shape, loc: Loc) -> Tensor {
        let shape = if check_shape(&shape).is_ok() {
            shape
        } else {
            Shape::new()
        };
        Tensor(Arc::new(Inner {
            id: fresh_id(),
            dtype,
            shape,
            loc,
            kind: Kind::Poisoned { trace },
        }))
    }

    /// A process-unique id of this handle (tapes key on it).
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.0.shape
    }

    /// Number of axes.
    pub fn rank(&self) -> usize {
        self.0.shape.len()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        numel(&self.0.shape)
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The source location of the op (or constructor) that made this tensor.
    pub fn location(&self) -> Loc {
        self.0.loc
    }

    /// Whether this tensor names a node of a graph being traced (it has no value yet).
    pub fn is_symbolic(&self) -> bool {
        !matches!(self.0.kind, Kind::Concrete(_))
    }

    /// The concrete buffer.
    ///
    /// Returns `Err` for a symbolic tensor: inside [`crate::function`] values exist only
    /// when the compiled graph runs; return the tensor from the closure instead.
    pub fn data(&self) -> Result<&Data> {
        match &self.0.kind {
            Kind::Concrete(d) => Ok(d),
            _ => Err(Error::Symbolic(format!(
                "the tensor {} made at {} is symbolic (inside a traced function); \
                 it has a value only when the function runs: return it from the closure",
                type_str(self.dtype(), self.shape()),
                self.0.loc
            ))),
        }
    }

    /// All elements as `f32`, row-major (converting from the tensor's dtype).
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        Ok(self
            .data()?
            .to_f64_vec()
            .into_iter()
            .map(|x| x as f32)
            .collect())
    }

    /// All elements as `f64`, row-major (converting from the tensor's dtype).
    pub fn to_vec_f64(&self) -> Result<Vec<f64>> {
        Ok(self.data()?.to_f64_vec())
    }

    /// All elements as `i64`, row-major. Floats are truncated toward zero.
    pub fn to_vec_i64(&self) -> Result<Vec<i64>> {
        Ok(match self.data()? {
            Data::I64(a) => a.iter().copied().collect(),
            d => d.to_f64_vec().into_iter().map(|x| x as i64).collect(),
        })
    }

    /// The single element of a tensor with one element, as f64 (whatever its dtype;
    /// see [`Tensor::to_scalar_f32`] to print an f32 loss as TF does: `8.134605`, not
    /// `8.134605407714844`).
    pub fn to_scalar(&self) -> Result<f64> {
        self.to_scalar_f64()
    }

    /// The one element (any shape with one element), checked.
    fn one_element<T>(&self, name: &str, get: impl FnOnce(&Data) -> T) -> Result<T> {
        let d = self.data()?;
        if d.len() != 1 {
            return Err(Error::Invalid(format!(
                "{name}: tensor {} has {} elements, not 1",
                type_str(self.dtype(), self.shape()),
                d.len()
            )));
        }
        Ok(get(d))
    }

    /// The single element as `f32` (converted from the tensor's dtype).
    ///
    /// Returns `Err` for a symbolic tensor or one without exactly one element.
    ///
    /// # Example
    /// ```
    /// use tapeflow::Tensor;
    /// let loss = Tensor::from(8.134605f32);
    /// assert_eq!(loss.to_scalar_f32().unwrap().to_string(), "8.134605");
    /// assert_eq!(Tensor::from(7i64).to_scalar_i64().unwrap(), 7);
    /// assert_eq!(Tensor::from(0.1f64).to_scalar_f64().unwrap(), 0.1);
    /// assert!(Tensor::vec(&[1.0f32, 2.0]).to_scalar_f32().is_err());
    /// ```
    pub fn to_scalar_f32(&self) -> Result<f32> {
        self.one_element("to_scalar_f32", |d| match d {
            Data::F32(a) => a.iter().copied().next().unwrap_or_default(),
            Data::F64(a) => a.iter().map(|&x| x as f32).next().unwrap_or_default(),
            Data::I64(a) => a.iter().map(|&x| x as f32).next().unwrap_or_default(),
        })
    }

    /// The single element as `f64` (converted from the tensor's dtype).
    ///
    /// Returns `Err` for a symbolic tensor or one without exactly one element.
    pub fn to_scalar_f64(&self) -> Result<f64> {
        self.one_element("to_scalar_f64", |d| {
            d.to_f64_vec().first().copied().unwrap_or_default()
        })
    }

    /// The single element as `i64` (floats are truncated toward zero, like
    /// [`Tensor::to_vec_i64`]).
    ///
    /// Returns `Err` for a symbolic tensor or one without exactly one element.
    pub fn to_scalar_i64(&self) -> Result<i64> {
        self.one_element("to_scalar_i64", |d| match d {
            Data::I64(a) => a.iter().copied().next().unwrap_or_default(),
            d => d
                .to_f64_vec()
                .first()
                .map(|&x| x as i64)
                .unwrap_or_default(),
        })
    }

    /// The elements as an f32 ndarray (converting from the tensor's dtype).
    pub fn to_ndarray_f32(&self) -> Result<ndarray::ArrayD<f32>> {
        Ok(match self.data()? {
            Data::F32(a) => a.to_owned(),
            d => ndarray::ArrayD::from_shape_vec(
                ndarray::IxDyn(self.shape()),
                d.to_f64_vec().into_iter().map(|x| x as f32).collect(),
            )
            .expect("shape matches length"),
        })
    }

    /// The elements as an f64 ndarray (converting from the tensor's dtype).
    pub fn to_ndarray_f64(&self) -> Result<ndarray::ArrayD<f64>> {
        Ok(
            ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(self.shape()), self.to_vec_f64()?)
                .expect("shape matches length"),
        )
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Tensor {
    /// Prints like a TensorFlow 2 eager tensor's `print(t)`: the values as NumPy's
    /// `str()` prints them, then the shape and dtype:
    /// `tf.Tensor([1. 2. 3.], shape=(3,), dtype=float32)`. Tensors of more than 1000
    /// elements show their first and last 3 entries per axis around `...`. A symbolic
    /// tensor prints its type and where it was made: `<symbolic f32[b,784] at
    /// src/main.rs:12:5>`.
    ///
    /// # Example
    /// ```
    /// use tapeflow::{tensor, Tensor};
    /// assert_eq!(Tensor::from(8.0f32).to_string(), "tf.Tensor(8.0, shape=(), dtype=float32)");
    /// assert_eq!(
    ///     tensor![[1.0, 2.5], [3.0, 4.0]].to_string(),
    ///     "tf.Tensor(\n[[1.  2.5]\n [3.  4. ]], shape=(2, 2), dtype=float32)"
    /// );
    /// assert_eq!(tensor![1, 20, 3].to_string(), "tf.Tensor([ 1 20  3], shape=(3,), dtype=int64)");
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ty = type_str(self.dtype(), self.shape());
        match &self.0.kind {
            Kind::Concrete(d) => {
                let text = print::numpy_str(d);
                let nl = if text.contains('\n') { "\n" } else { "" };
                write!(
                    f,
                    "tf.Tensor({nl}{text}, shape={}, dtype={})",
                    print::tf_shape(self.shape()),
                    print::tf_dtype(self.dtype())
                )
            }
            Kind::Symbolic { .. } => write!(f, "<symbolic {ty} at {}>", self.0.loc),
            Kind::Poisoned { .. } => write!(f, "<failed op {ty} at {}>", self.0.loc),
        }
    }
}
