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
pub(crate) mod variable;

pub use data::{Arr, Data, Float};
pub use dim::Dim;
pub use dtype::{
    broadcast_shapes, check_shape, numel, shape_str, type_str, DType, Shape, MAX_ELEMENTS,
};
pub use math::Scalar;
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

    /// The single element of a tensor with one element, as f64.
    pub fn to_scalar(&self) -> Result<f64> {
        let v = self.to_vec_f64()?;
        if v.len() != 1 {
            return Err(Error::Invalid(format!(
                "to_scalar: tensor {} has {} elements, not 1",
                type_str(self.dtype(), self.shape()),
                v.len()
            )));
        }
        Ok(v[0])
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
    /// Prints like TensorFlow: `tf.Tensor(values, shape=(2, 2), dtype=float32)`, shortened
    /// to the first elements for big tensors; symbolic tensors print their type.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ty = type_str(self.dtype(), self.shape());
        match &self.0.kind {
            Kind::Concrete(d) => {
                let shown: Vec<String> = match d {
                    Data::F32(a) => a.iter().take(8).map(|x| x.to_string()).collect(),
                    Data::F64(a) => a.iter().take(8).map(|x| x.to_string()).collect(),
                    Data::I64(a) => a.iter().take(8).map(|x| x.to_string()).collect(),
                };
                let more = if d.len() > 8 { ", ..." } else { "" };
                write!(f, "Tensor({ty} [{}{more}])", shown.join(", "))
            }
            Kind::Symbolic { node, .. } => write!(f, "Tensor(symbolic {ty} node {})", node.index()),
            Kind::Poisoned { .. } => write!(f, "Tensor(failed op {ty})"),
        }
    }
}
