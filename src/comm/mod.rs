//! The communicator: collectives on [`Data`] across the processes of an MPI job.
//!
//! This is the low layer the collective ops' kernels (`ops::collective`) and the
//! Horovod-style API ([`crate::distributed`]) call. It owns the world: this process's
//! rank, the number of processes, and the one thread that talks to MPI.
//!
//! - **A world of one until [`init`].** Without the cargo feature `mpi`, or before
//!   `init`, the world is this process alone: an all-reduce returns its operand (the sum
//!   and the mean over one rank are the operand itself), a broadcast from rank 0 too, a
//!   barrier returns at once — as Horovod does with size 1. IR text with `all_reduce`
//!   therefore parses and runs in every build.
//! - **One communication thread.** With the feature, `init` starts a thread that
//!   initializes MPI (`MPI_THREAD_SERIALIZED`) and then runs the collectives it is
//!   handed, one at a time, in the order they were handed over (a FIFO queue). A
//!   blocking call ([`all_reduce`], [`broadcast`], [`barrier`]) made while nothing is
//!   queued runs on the caller's thread instead, under the same lock (it would have
//!   been next anyway), saving two thread wake-ups per small message. Every rank hands over the same collectives in the same order —
//!   the interpreter issues a plan's collectives in a fixed plan order — so the ranks'
//!   collectives always match. [`start_all_reduce`] only queues the work and returns a
//!   [`Pending`]; the caller goes on computing (the rest of the backward pass) while the
//!   communication thread runs `MPI_Allreduce`, and waits only where it needs the
//!   result. [`set_overlap`]`(false)` makes every collective complete before `start`
//!   returns (for measuring what the overlap buys).
//! - **Never a hang.** Each collective runs under a watchdog: when one has waited longer
//!   than the timeout (`TAPEFLOW_MPI_TIMEOUT` seconds, default
//!   [`DEFAULT_TIMEOUT_SECS`]; 0 waits forever) for the other ranks, the process prints
//!   which collective and why to stderr and exits with status 1, and `mpirun` ends the
//!   job (the watchdog polls every 0.1 s and times a collective from when it first sees
//!   it, so it fires within 0.2 s past the limit; starting and ending a collective costs
//!   no clock read). A rank that exits, is killed or panics is noticed by `mpirun` directly; one
//!   that returns an `Err` from `main` drops its session, whose shutdown barrier then
//!   times out the same way.
//! - **Result buffers.** An all-reduce receives into the buffer of one of the last
//!   results its caller has dropped, when one has the shape (else a new one): the same
//!   few addresses every step, as a loop into one buffer has, which MPI's registration
//!   cache for large messages needs. A plan step whose value the very next step reads
//!   runs its all-reduce blocking (inline when nothing is queued): there is nothing to
//!   overlap it with.
//! - **Reduction.** `MPI_Allreduce` with `MPI_SUM`; the mean divides the sum by the size.
//!   Every rank receives the same bits (OpenMPI's algorithms combine the same partial
//!   sums on every rank, and IEEE addition commutes); `tests/distributed.rs` checks it.

#[cfg(feature = "mpi")]
mod mpi;

use crate::error::{Error, Result};
use crate::tensor::data::Data;
#[cfg(feature = "mpi")]
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicBool, Ordering};

/// The watchdog's default limit, in seconds, on how long a collective may wait for the
/// other ranks (override with the environment variable `TAPEFLOW_MPI_TIMEOUT`).
pub const DEFAULT_TIMEOUT_SECS: f64 = 20.0;

/// How an all-reduce combines the ranks' values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReduceOp {
    /// The elementwise sum over ranks.
    Sum,
    /// The elementwise mean over ranks (the sum divided by the number of ranks).
    Mean,
}

impl ReduceOp {
    /// The text name (`sum`, `mean`), as in the IR attribute `op=`.
    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Mean => "mean",
        }
    }

    /// Reads a name written by [`ReduceOp::name`].
    pub fn parse(s: &str) -> Option<ReduceOp> {
        match s {
            "sum" => Some(ReduceOp::Sum),
            "mean" => Some(ReduceOp::Mean),
            _ => None,
        }
    }
}

/// Whether [`init`] has set up an MPI world (false in a build without the `mpi` feature).
pub fn is_initialized() -> bool {
    #[cfg(feature = "mpi")]
    {
        mpi::world().is_some()
    }
    #[cfg(not(feature = "mpi"))]
    {
        false
    }
}

/// This process's rank, `0..size()` (0 in a world of one).
pub fn rank() -> usize {
    #[cfg(feature = "mpi")]
    if let Some(w) = mpi::world() {
        return w.rank;
    }
    0
}

/// The number of processes (1 in a world of one).
pub fn size() -> usize {
    #[cfg(feature = "mpi")]
    if let Some(w) = mpi::world() {
        return w.size;
    }
    1
}

/// Starts MPI on the communication thread.
///
/// # Errors
/// Without the `mpi` feature; when the process was not started by `mpirun` (none of
/// `OMPI_COMM_WORLD_SIZE`, `PMI_SIZE`, `PMIX_RANK` is set); when MPI was initialized
/// already or fails to start; or when `TAPEFLOW_MPI_TIMEOUT` or
/// `TAPEFLOW_MPI_INLINE_BYTES` is not a number.
pub fn init() -> Result<()> {
    #[cfg(feature = "mpi")]
    {
        if let Ok(s) = std::env::var("TAPEFLOW_MPI_INLINE_BYTES") {
            let n = s.trim().parse::<usize>().map_err(|_| {
                Error::Distributed(format!(
                    "init: TAPEFLOW_MPI_INLINE_BYTES={s:?} is not a number of bytes"
                ))
            })?;
            INLINE.store(n, Ordering::Relaxed);
        }
        mpi::init()
    }
    #[cfg(not(feature = "mpi"))]
    {
        Err(Error::Distributed(
            "init: tapeflow was built without the `mpi` feature (build with `--features mpi` \
             and start the program with mpirun)"
                .into(),
        ))
    }
}

/// Waits for every rank at a barrier on a separate communicator, then finalizes MPI and
/// stops the communication thread (nothing in a world of one). Later collectives run
/// over a world of one again.
///
/// # Errors
/// If the communication thread has died.
pub fn shutdown() -> Result<()> {
    #[cfg(feature = "mpi")]
    if mpi::world().is_some() {
        return mpi::shutdown();
    }
    Ok(())
}

/// Ends this process at once with status 1 after printing `why` (so `mpirun` ends the
/// whole job), without waiting for the other ranks. Used when a rank panics.
pub fn abort(why: &str) -> ! {
    eprintln!(
        "tapeflow distributed: rank {} of {}: {why}; ending this process so that mpirun ends the job",
        rank(),
        size()
    );
    exit_now(1)
}

/// Exits without running `atexit` handlers (MPI's could wait for the other ranks).
pub(crate) fn exit_now(code: i32) -> ! {
    #[cfg(unix)]
    {
        // SAFETY: `_exit` ends the process; it has no preconditions.
        unsafe { libc::_exit(code) }
    }
    #[cfg(not(unix))]
    {
        let _ = code;
        std::process::abort()
    }
}

static NO_OVERLAP: AtomicBool = AtomicBool::new(false);

/// Whether [`start_all_reduce`] returns before the collective has finished (the default,
/// `true`): the caller computes on while the communication thread reduces. With `false`
/// every collective completes inside `start`.
pub fn set_overlap(on: bool) {
    NO_OVERLAP.store(!on, Ordering::Relaxed);
}

/// See [`set_overlap`].
pub fn overlap() -> bool {
    !NO_OVERLAP.load(Ordering::Relaxed)
}

/// A collective handed to the communication thread; [`Pending::wait`] gives its result.
#[must_use = "a pending collective runs anyway; wait for it to get its result"]
pub struct Pending(PendingInner);

enum PendingInner {
    Ready(std::result::Result<Data, String>),
    #[cfg(feature = "mpi")]
    Queued(std::sync::Arc<mpi::Reply>),
}

impl Pending {
    /// Blocks until the collective has finished on this rank.
    ///
    /// # Errors
    /// The collective's failure (a dtype MPI cannot reduce, a message over `i32::MAX`
    /// elements, the communication thread gone), as a message.
    pub fn wait(self) -> std::result::Result<Data, String> {
        match self.0 {
            PendingInner::Ready(r) => r,
            #[cfg(feature = "mpi")]
            PendingInner::Queued(reply) => reply.wait(),
        }
    }
}

/// All-reduces of at most this many bytes started with nothing queued run at once on
/// the starting thread ([`start_all_reduce`]): they take microseconds, less than handing
/// them to the communication thread and waking it, so there is nothing to overlap.
/// `TAPEFLOW_MPI_INLINE_BYTES` (read by [`init`]) overrides it; 0 hands every started
/// all-reduce to the communication thread.
pub const INLINE_BYTES: usize = 64 << 10;

#[cfg(feature = "mpi")]
static INLINE: AtomicUsize = AtomicUsize::new(INLINE_BYTES);

/// Queues an all-reduce of `x` over all ranks and returns at once (see [`set_overlap`]);
/// one of at most [`INLINE_BYTES`] runs at once instead when nothing is queued. In a
/// world of one the result is `x`.
pub fn start_all_reduce(x: &Data, op: ReduceOp) -> Pending {
    #[cfg(feature = "mpi")]
    if let Some(w) = mpi::world() {
        if x.nbytes() <= INLINE.load(Ordering::Relaxed) {
            if let Some(r) = w.run_now(mpi::Call::AllReduce(x, op)) {
                return Pending(PendingInner::Ready(r));
            }
        }
        let reply = w.submit(mpi::Kind::AllReduce(x.clone(), op));
        if !overlap() {
            return Pending(PendingInner::Ready(reply.wait()));
        }
        return Pending(PendingInner::Queued(reply));
    }
    let _ = op;
    Pending(PendingInner::Ready(Ok(x.clone())))
}

/// An all-reduce of `x` over all ranks, waiting for the result (on this thread when no
/// other collective is queued, which saves the hand-over for small messages).
///
/// # Errors
/// See [`Pending::wait`].
pub fn all_reduce(x: &Data, op: ReduceOp) -> std::result::Result<Data, String> {
    #[cfg(feature = "mpi")]
    if let Some(w) = mpi::world() {
        if let Some(r) = w.run_now(mpi::Call::AllReduce(x, op)) {
            return r;
        }
        return w.submit(mpi::Kind::AllReduce(x.clone(), op)).wait();
    }
    start_all_reduce(x, op).wait()
}

/// Rank `root`'s `x` on every rank.
///
/// # Errors
/// A `root` that is not a rank, or the failures of [`Pending::wait`].
pub fn broadcast(x: &Data, root: usize) -> Result<Data> {
    if root >= size() {
        return Err(Error::Distributed(format!(
            "broadcast: root {root} is not a rank (size {})",
            size()
        )));
    }
    #[cfg(feature = "mpi")]
    if let Some(w) = mpi::world() {
        return match w.run_now(mpi::Call::Broadcast(x, root)) {
            Some(r) => r,
            None => w.submit(mpi::Kind::Broadcast(x.clone(), root)).wait(),
        }
        .map_err(|e| Error::Distributed(format!("broadcast from rank {root}: {e}")));
    }
    Ok(x.clone())
}

/// Seconds for `iterations` plain `MPI_Allreduce` sums of the f32 `x`, back to back
/// into one buffer, the one the op's next all-reduce of `x` would receive into (so the
/// two are compared on the same memory): the baseline the collective op is measured
/// against (`examples/bench_distributed`). With `here`, on the calling thread (where the op
/// and a compiled function run their all-reduces when nothing is queued: what a plain
/// MPI program does), else on the communication thread. Every rank must call it with
/// the same size, count and `here`. Not part of the API.
///
/// # Errors
/// In a world of one, for data that is not f32, or if the communication thread died.
#[doc(hidden)]
pub fn plain_all_reduce_seconds(x: &Data, iterations: usize, here: bool) -> Result<f64> {
    #[cfg(feature = "mpi")]
    if let Some(w) = mpi::world() {
        let inline = here.then(|| w.run_now(mpi::Call::PlainLoop(x, iterations)));
        let secs = match inline.flatten() {
            Some(r) => r,
            None => w.submit(mpi::Kind::PlainLoop(x.clone(), iterations)).wait(),
        }
        .map_err(|e| Error::Distributed(format!("plain all-reduce loop: {e}")))?;
        return Ok(secs.to_f64_vec()[0]);
    }
    let _ = (x, iterations, here);
    Err(Error::Distributed(
        "plain all-reduce loop: MPI is not running (distributed::init)".into(),
    ))
}

/// Waits until every rank has reached the barrier.
///
/// # Errors
/// If the communication thread has died.
pub fn barrier() -> Result<()> {
    #[cfg(feature = "mpi")]
    if let Some(w) = mpi::world() {
        return match w.run_now(mpi::Call::Barrier) {
            Some(r) => r,
            None => w.submit(mpi::Kind::Barrier).wait(),
        }
        .map(|_| ())
        .map_err(|e| Error::Distributed(format!("barrier: {e}")));
    }
    Ok(())
}
