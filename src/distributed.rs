//! Data-parallel training over MPI, Horovod's API in Rust.
//!
//! Start the program with `mpirun -np N` (build with the cargo feature `mpi`); every
//! process (a *rank*) runs the same code on its own shard of the data, and the
//! gradients are averaged over all ranks before each update, so all ranks keep the same
//! parameters:
//!
//! ```no_run
//! use tapeflow::distributed::{self, DistributedGradientTape};
//! use tapeflow::{function, Tensor, Variable};
//! # fn main() -> tapeflow::Result<()> {
//! let _mpi = distributed::init()?; // keep it: dropping it shuts MPI down
//! let w = Variable::named("w", Tensor::random_normal(&[784, 10], 0.0, 0.1, distributed::rank() as u64, tapeflow::DType::F32));
//! distributed::broadcast_variables(&[w.clone()], 0)?; // every rank starts from rank 0's values
//! let w2 = w.clone();
//! let step = function(move |x: &Tensor, y: &Tensor| {
//!     let tape = DistributedGradientTape::new();
//!     let loss = tape.record(|| (&x.matmul(&w2.read()) - y).square().mean_all());
//!     let g = tape.gradient(&loss, &[w2.clone()])?; // averaged over the ranks
//!     w2.assign_sub(&(g[0].as_ref().unwrap() * 0.1));
//!     Ok(loss)
//! });
//! # Ok(()) }
//! ```
//!
//! - **The all-reduce is an op of the graph** (`all_reduce[op=mean]`, see
//!   [`Tensor::all_reduce`]): traced, differentiated (its gradient is an all-reduce
//!   again), optimized — `bucket_all_reduces` packs small gradients into buckets of
//!   [`crate::passes::PassConfig::all_reduce_bucket_bytes`] (Horovod's tensor fusion) —
//!   and run by the interpreter, which starts each bucket's all-reduce as soon as its
//!   gradients are computed and waits for it only where the update reads it, so the
//!   communication overlaps the rest of the backward pass ([`crate::comm`] runs MPI on
//!   one communication thread, in one order on every rank).
//! - **Without `mpirun`** (or without the feature) nothing needs to change: before
//!   [`init`] the world is one process ([`size`] 1, [`rank`] 0), and the all-reduces are
//!   the identity. With the feature, [`init`] outside `mpirun` is an `Err`.
//! - **Same result as one big batch.** N ranks with per-rank batch B/N compute the mean
//!   of N per-rank mean gradients, which is the gradient of one process with batch B
//!   up to float reassociation (each rank's sum over B/N samples, then the sum over
//!   ranks, instead of one sum over B). All ranks receive the same bits, so they stay
//!   identical. `tests/distributed.rs` runs 20 SGD steps on 1, 2 and 4 ranks and checks
//!   the parameters agree within the bound stated there.
//! - **Faults.** A rank that panics ends its process at once ([`Session`]'s drop during
//!   the panic), one that exits or is killed is noticed by `mpirun`, which ends the job;
//!   one that returns an `Err` waits in the shutdown barrier while the others wait in
//!   their next collective, and the first to pass `TAPEFLOW_MPI_TIMEOUT` seconds
//!   (default [`crate::comm::DEFAULT_TIMEOUT_SECS`]) ends the job with a message naming the
//!   collective. No rank hangs.
//! - **Keras.** [`FitOptions::distributed`](method@crate::nn::FitOptions::distributed) does all of it in `fit`: broadcast
//!   at the start, sharded data, averaged gradients and epoch logs, progress printed and
//!   checkpoints written by rank 0 only.

use crate::comm;
pub use crate::comm::ReduceOp;
use crate::{Error, GradientTape, Result, Tensor, Variable};

/// The MPI session: MPI runs while it lives. Dropping it waits for every rank at a
/// barrier and finalizes MPI; dropped during a panic, it ends the process at once with
/// status 1 (so `mpirun` ends the job instead of letting the other ranks wait).
#[must_use = "MPI shuts down when the session is dropped: bind it (`let _mpi = init()?;`)"]
pub struct Session {
    _private: (),
}

impl Drop for Session {
    fn drop(&mut self) {
        if std::thread::panicking() {
            comm::abort("this rank panicked");
        }
        if let Err(e) = comm::shutdown() {
            eprintln!("tapeflow distributed: rank {}: {e}", rank());
        }
    }
}

/// Starts MPI (`hvd.init()`) and returns the session that keeps it running.
///
/// # Errors
/// When tapeflow was built without the `mpi` feature, when the process was not started
/// by `mpirun`, when MPI is already running or fails to start, or when
/// `TAPEFLOW_MPI_TIMEOUT` is not a number of seconds.
pub fn init() -> Result<Session> {
    comm::init()?;
    Ok(Session { _private: () })
}

/// This process's rank, `0..size()` (0 before [`init`]).
pub fn rank() -> usize {
    comm::rank()
}

/// The number of ranks (1 before [`init`]).
pub fn size() -> usize {
    comm::size()
}

/// Whether [`init`] has started MPI.
pub fn is_initialized() -> bool {
    comm::is_initialized()
}

/// Waits until every rank has reached the barrier.
///
/// # Errors
/// If the communication thread has died.
pub fn barrier() -> Result<()> {
    comm::barrier()
}

/// Whether collectives overlap the computation after them (default true); see
/// [`crate::comm::set_overlap`]. Off, every all-reduce finishes before the step that
/// starts it returns (what the overlap buys is measured by `examples/bench_distributed`).
pub fn set_overlap(on: bool) {
    comm::set_overlap(on)
}

/// The gradients averaged over all ranks: `all_reduce[op=mean]` of each (Horovod's
/// `allreduce` of `tape.gradient`'s result). `None` (no gradient) stays `None`; every
/// rank must pass the same pattern of `None`s, shapes and dtypes. Works eagerly and
/// inside [`crate::function`] (where the all-reduces become graph ops that
/// `bucket_all_reduces` may pack into buckets).
pub fn all_reduce_gradients(grads: &[Option<Tensor>]) -> Vec<Option<Tensor>> {
    grads
        .iter()
        .map(|g| g.as_ref().map(|g| g.all_reduce(ReduceOp::Mean)))
        .collect()
}

/// A [`GradientTape`] whose [`gradient`](DistributedGradientTape::gradient) averages
/// the gradients over all ranks (`hvd.DistributedGradientTape`). Everything else
/// (`record`, `watch`, ...) is the tape's, through `Deref`.
pub struct DistributedGradientTape {
    tape: GradientTape,
}

impl Default for DistributedGradientTape {
    fn default() -> Self {
        Self::new()
    }
}

impl DistributedGradientTape {
    /// A new (non-persistent) tape.
    pub fn new() -> DistributedGradientTape {
        Self::wrap(GradientTape::new())
    }

    /// Wraps an existing tape (a persistent one, say).
    pub fn wrap(tape: GradientTape) -> DistributedGradientTape {
        DistributedGradientTape { tape }
    }

    /// d`target`/d`vars` on this rank, averaged over all ranks.
    ///
    /// # Errors
    /// Those of [`GradientTape::gradient`].
    pub fn gradient(&self, target: &Tensor, vars: &[Variable]) -> Result<Vec<Option<Tensor>>> {
        Ok(all_reduce_gradients(&self.tape.gradient(target, vars)?))
    }
}

impl std::ops::Deref for DistributedGradientTape {
    type Target = GradientTape;
    fn deref(&self) -> &GradientTape {
        &self.tape
    }
}

/// Sets every variable to rank `root`'s value (`hvd.broadcast_variables`), so all ranks
/// start identical however each initialized them. Every rank must pass the same
/// variables (names, shapes and dtypes) in the same order. A no-op in a world of one.
///
/// # Errors
/// A `root` that is not a rank; a variable without a value; a failed broadcast.
pub fn broadcast_variables(vars: &[Variable], root: usize) -> Result<()> {
    for v in vars {
        let value = v.value();
        let d = value
            .data()
            .map_err(|e| Error::Distributed(format!("broadcast_variables: `{}`: {e}", v.name())))?;
        let got = comm::broadcast(d, root)?;
        if size() > 1 {
            v.assign(&Tensor::from_data(got));
        }
    }
    Ok(())
}

/// The elementwise mean of `x` over all ranks, eagerly (for metrics and logs: each rank
/// computes on its shard, and every rank gets the average).
///
/// # Errors
/// If `x` is not a concrete float tensor, or the collective fails.
pub fn average(x: &Tensor) -> Result<Tensor> {
    let d = x
        .data()
        .map_err(|e| Error::Distributed(format!("average: {e}")))?;
    comm::all_reduce(d, ReduceOp::Mean)
        .map(Tensor::from_data)
        .map_err(|e| Error::Distributed(format!("average: {e}")))
}
