//! The one error type of tapeflow.
//!
//! Every message names what went wrong in the user's terms: the op, the shapes and
//! dtypes involved, and the user's source line (captured with `#[track_caller]`).
//! Run-time and I/O paths return `Result<_, Error>`; eager operator misuse panics with
//! the same message (see the crate docs, "Errors and panics").

use std::panic::Location;

/// A source location recorded from `#[track_caller]`, printed as `file:line:col`.
pub type Loc = &'static Location<'static>;

/// Everything that can go wrong in tapeflow.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// An op got operands whose shapes or dtypes do not fit its rule.
    #[error("{op}: {msg} (at {loc})")]
    Op {
        /// The op's text name, e.g. `matmul`.
        op: &'static str,
        /// What is wrong, naming the shapes/dtypes.
        msg: String,
        /// The user's source line.
        loc: String,
    },
    /// A symbolic tensor (a node of a graph being traced) was asked for its value,
    /// or used outside the trace it belongs to.
    #[error("symbolic tensor: {0}")]
    Symbolic(String),
    /// Misuse of a gradient tape (second call on a non-persistent tape, nothing connected, ...).
    #[error("gradient tape: {0}")]
    Tape(String),
    /// A traced function was called with arguments that do not fit it.
    #[error("function: {0}")]
    Function(String),
    /// A graph failed verification or could not be parsed / run.
    #[error("graph: {0}")]
    Graph(String),
    /// A data file (MNIST IDX, checkpoint) is missing, truncated or corrupt.
    #[error("data: {0}")]
    Data(String),
    /// A checkpoint does not match the variables it is loaded into.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// Bad arguments to a layer, model, optimizer or dataset.
    #[error("{0}")]
    Invalid(String),
    /// A distributed (MPI) setup or collective failed: not started by `mpirun`, built
    /// without the `mpi` feature, a broadcast root that is not a rank, ...
    #[error("distributed: {0}")]
    Distributed(String),
    /// An op produced a NaN or an infinity while numerics checks were on
    /// ([`crate::debugging::enable_check_numerics`]).
    #[error(
        "check_numerics: {op} produced {value} at element {index} of its {ty} result (at {loc})"
    )]
    NonFinite {
        /// The op's text name, e.g. `log`.
        op: &'static str,
        /// The first non-finite value (`NaN`, `inf` or `-inf`).
        value: String,
        /// Its index in the result, in row-major order.
        index: usize,
        /// The result's type, e.g. `f32[2,3]`.
        ty: String,
        /// The user's source line of the op (`graph` if unknown).
        loc: String,
    },
    /// An operating-system I/O error, with the path involved.
    #[error("io: {path}: {msg}")]
    Io {
        /// The file involved.
        path: String,
        /// The OS message.
        msg: String,
    },
}

impl Error {
    /// An op error at the given location.
    pub fn op(op: &'static str, msg: impl Into<String>, loc: Loc) -> Error {
        Error::Op {
            op,
            msg: msg.into(),
            loc: format!("{}:{}", loc.file(), loc.line()),
        }
    }

    /// An op error in a graph node: at the node's recorded source line, or `graph` for
    /// a node without one (a parsed or optimizer-made node).
    pub(crate) fn op_in_graph(op: &'static str, msg: impl Into<String>, loc: Option<Loc>) -> Error {
        Error::Op {
            op,
            msg: msg.into(),
            loc: loc_text(loc),
        }
    }

    /// A non-finite `value` at `index` of an op's result of type `ty`.
    pub(crate) fn non_finite(
        op: &'static str,
        index: usize,
        value: f64,
        ty: String,
        loc: Option<Loc>,
    ) -> Error {
        Error::NonFinite {
            op,
            value: format!("{value}"),
            index,
            ty,
            loc: loc_text(loc),
        }
    }

    /// An I/O error for `path`.
    pub fn io(path: impl AsRef<std::path::Path>, e: std::io::Error) -> Error {
        Error::Io {
            path: path.as_ref().display().to_string(),
            msg: e.to_string(),
        }
    }
}

/// `Result` with tapeflow's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A node's source line as `file:line`, or `graph` for a node without one.
fn loc_text(loc: Option<Loc>) -> String {
    loc.map_or_else(|| "graph".into(), |l| format!("{}:{}", l.file(), l.line()))
}
