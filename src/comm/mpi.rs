//! The MPI world (feature `mpi`): the communication thread, its FIFO queue of
//! collectives, and the watchdog that ends a rank whose collective waits too long.
//!
//! Invariants: the communication thread initialized MPI (`MPI_THREAD_SERIALIZED`) and
//! runs the queued collectives one at a time in queue order, each while holding the
//! world's `turn` lock; a caller that waits for a blocking collective anyway
//! ([`World::run_now`]: eager all-reduces, broadcasts, barriers) runs it on its own
//! thread under the same lock, but only when nothing is queued or running, so it could
//! not have been queued behind anything: a rank's collectives still reach MPI one at a
//! time, in the order its threads started them. Running it inline saves two thread
//! wake-ups, which dominate small messages.

use super::{exit_now, ReduceOp, DEFAULT_TIMEOUT_SECS};
use crate::error::{Error, Result};
use crate::tensor::data::Arr;
use crate::tensor::data::Data;
use crate::tensor::dtype::{same_shape, type_str, DType, Shape};
use ::mpi::collective::SystemOperation;
use ::mpi::datatype::Equivalence;
use ::mpi::topology::SimpleCommunicator;
use ::mpi::traits::*;
use ::mpi::Threading;
use ndarray::{ArrayD, IxDyn};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The initialized world.
pub(super) struct World {
    pub(super) rank: usize,
    pub(super) size: usize,
    tx: Mutex<mpsc::Sender<Job>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    watch: Arc<Watch>,
    /// Held while a collective runs (on the communication thread or inline).
    turn: Arc<Mutex<Turn>>,
    /// Jobs queued or running on the communication thread.
    queued: Arc<AtomicU64>,
    /// Whether MPI allows calls from other threads than the communication thread.
    serialized: bool,
}

/// What the collective running holds, under the world's `turn` lock.
struct Turn {
    /// Collectives this process has run: numbers them for the watchdog's message.
    count: u64,
    /// The last results this process's all-reduces returned. The next all-reduce of a
    /// shape receives into one its caller has dropped since: no allocation per call, and
    /// the same addresses every step, which MPI's registration cache for large messages
    /// recognizes (a fresh buffer per call made 16 MiB all-reduces four times slower
    /// than a loop into one buffer). A result still held by its caller is never touched;
    /// what this holds beyond that is at most [`RECENT_RESULTS`] dropped results.
    recent: Vec<Data>,
}

impl Turn {
    /// The next collective's number.
    fn next(&mut self) -> u64 {
        self.count += 1;
        self.count - 1
    }
}

/// The world, set once by [`init`]: MPI starts at most once in a process.
static WORLD: OnceLock<World> = OnceLock::new();

/// Whether the world is up: [`init`] has run and [`shutdown`] has not.
static UP: AtomicBool = AtomicBool::new(false);

/// Held by [`init`] and [`shutdown`], so two threads never start or stop MPI at once.
static STARTING: Mutex<()> = Mutex::new(());

/// The world, if [`init`] has run (and [`shutdown`] has not). Costs one atomic load.
pub(super) fn world() -> Option<&'static World> {
    UP.load(Ordering::Acquire).then(|| WORLD.get()).flatten()
}

/// A collective to run on the calling thread ([`World::run_now`]), borrowing its data.
pub(super) enum Call<'a> {
    AllReduce(&'a Data, ReduceOp),
    Broadcast(&'a Data, usize),
    Barrier,
    /// The benchmark's baseline loop ([`super::plain_all_reduce_seconds`]).
    PlainLoop(&'a Data, usize),
}

/// What the communication thread is asked to do.
pub(super) enum Kind {
    AllReduce(Data, ReduceOp),
    Broadcast(Data, usize),
    Barrier,
    Shutdown,
    /// `n` plain `MPI_Allreduce` sums of the data into one preallocated buffer, timed
    /// (the baseline of `examples/bench_distributed`).
    PlainLoop(Data, usize),
}

struct Job {
    kind: Kind,
    reply: Arc<Reply>,
}

/// Where the communication thread leaves a collective's result.
pub(super) struct Reply {
    done: AtomicBool,
    value: Mutex<Option<std::result::Result<Data, String>>>,
    cv: Condvar,
}

impl Reply {
    fn new() -> Arc<Reply> {
        Arc::new(Reply {
            done: AtomicBool::new(false),
            value: Mutex::new(None),
            cv: Condvar::new(),
        })
    }

    fn set(&self, r: std::result::Result<Data, String>) {
        *self.value.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
        self.done.store(true, Ordering::Release);
        self.cv.notify_all();
    }

    /// Waits for the result (spinning briefly first: small collectives finish in
    /// microseconds, sooner than a sleeping thread wakes up).
    pub(super) fn wait(&self) -> std::result::Result<Data, String> {
        let spin = Instant::now();
        while !self.done.load(Ordering::Acquire) && spin.elapsed() < Duration::from_micros(50) {
            std::hint::spin_loop();
        }
        let mut v = self.value.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(r) = v.take() {
                return r;
            }
            v = self.cv.wait(v).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// The watchdog's view of the collective in progress. Starting one costs a few plain
/// (relaxed) atomic stores and one release store, ending one a release store: no lock,
/// no allocation and no clock read (the watchdog times a collective from when it first
/// sees it running).
struct Watch {
    /// One more than the number of the collective running or last run (0: none yet).
    started: AtomicU64,
    /// What the collective numbered by `started` is, packed ([`Packed`]): written before
    /// `started`, read by the watchdog only.
    what: [AtomicU64; PACKED_WORDS],
    /// One more than the number of the last collective that finished (0: none yet).
    finished: AtomicU64,
    timeout: Option<Duration>,
    stop: AtomicBool,
}

impl Watch {
    fn new(timeout: Option<Duration>) -> Watch {
        Watch {
            started: AtomicU64::new(0),
            what: Default::default(),
            finished: AtomicU64::new(0),
            timeout,
            stop: AtomicBool::new(false),
        }
    }

    /// Collective `seq` starts (only recorded when there is a watchdog).
    fn begin(&self, seq: u64, what: impl FnOnce() -> Packed) {
        if self.timeout.is_some() {
            for (w, v) in self.what.iter().zip(what().0) {
                w.store(v, Ordering::Relaxed);
            }
            self.started.store(seq + 1, Ordering::Release);
        }
    }

    /// Collective `seq` has finished.
    fn end(&self, seq: u64) {
        self.finished.store(seq + 1, Ordering::Release);
    }

    /// The collective running now, if any: its number and what it is. `None` too when
    /// another collective started while this looked (the next look sees that one).
    fn running(&self) -> Option<(u64, String)> {
        let started = self.started.load(Ordering::Acquire);
        if started == 0 || self.finished.load(Ordering::Acquire) == started {
            return None;
        }
        let words = std::array::from_fn(|i| self.what[i].load(Ordering::Relaxed));
        std::sync::atomic::fence(Ordering::Acquire);
        (self.started.load(Ordering::Relaxed) == started)
            .then(|| (started - 1, Packed(words).to_string()))
    }
}

impl World {
    /// Queues a collective; the communication thread runs it after every one queued before.
    pub(super) fn submit(&self, kind: Kind) -> Arc<Reply> {
        let reply = Reply::new();
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        self.queued.fetch_add(1, Ordering::AcqRel);
        let job = Job {
            kind,
            reply: reply.clone(),
        };
        if tx.send(job).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            reply.set(Err(
                "the communication thread has stopped (after shutdown, or it failed)".into(),
            ));
        }
        reply
    }
}

impl World {
    /// Runs a blocking collective on this thread if nothing is queued (see the module
    /// header); `None` if it must be queued instead.
    pub(super) fn run_now(&self, call: Call<'_>) -> Option<std::result::Result<Data, String>> {
        if !self.serialized {
            return None;
        }
        let mut turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        if self.queued.load(Ordering::Acquire) != 0 {
            return None;
        }
        let world = SimpleCommunicator::world();
        let seq = turn.next();
        self.watch.begin(seq, || Packed::of_call(&call));
        let r = match call {
            Call::AllReduce(d, op) => all_reduce(&world, d, op, self.size, &mut turn.recent),
            Call::Broadcast(d, root) => broadcast(&world, d, root),
            Call::Barrier => {
                world.barrier();
                Ok(Data::zeros(DType::F32, &[]))
            }
            Call::PlainLoop(d, n) => plain_loop(&world, d, n, &mut turn.recent),
        };
        self.watch.end(seq);
        Some(r)
    }
}

fn timeout_from_env() -> Result<Option<Duration>> {
    let secs = match std::env::var("TAPEFLOW_MPI_TIMEOUT") {
        Err(_) => DEFAULT_TIMEOUT_SECS,
        Ok(s) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|t| t.is_finite() && *t >= 0.0)
            .ok_or_else(|| {
                Error::Distributed(format!(
                    "init: TAPEFLOW_MPI_TIMEOUT={s:?} is not a number of seconds (0 waits forever)"
                ))
            })?,
    };
    Ok((secs > 0.0).then(|| Duration::from_secs_f64(secs)))
}

pub(super) fn init() -> Result<()> {
    let _starting = STARTING.lock().unwrap_or_else(|e| e.into_inner());
    if UP.load(Ordering::Acquire) {
        return Err(Error::Distributed("init: called twice".into()));
    }
    if WORLD.get().is_some() {
        return Err(Error::Distributed(
            "init: MPI was shut down in this process and cannot start again (MPI starts \
             at most once per process)"
                .into(),
        ));
    }
    let launched = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    if !launched {
        return Err(Error::Distributed(
            "init: this process was not started by mpirun (none of OMPI_COMM_WORLD_SIZE, \
             PMI_SIZE, PMIX_RANK is set); run it as `mpirun -np 2 <program>`"
                .into(),
        ));
    }
    let watch = Arc::new(Watch::new(timeout_from_env()?));
    let (tx, rx) = mpsc::channel::<Job>();
    let (ready_tx, ready_rx) = mpsc::channel();
    let turn = Arc::new(Mutex::new(Turn {
        count: 0,
        recent: Vec::new(),
    }));
    let queued = Arc::new(AtomicU64::new(0));
    let (w, t, q) = (watch.clone(), turn.clone(), queued.clone());
    let thread = std::thread::Builder::new()
        .name("tapeflow-comm".into())
        .spawn(move || communicate(rx, ready_tx, w, t, q))
        .map_err(|e| {
            Error::Distributed(format!("init: cannot start the communication thread: {e}"))
        })?;
    let (rank, size, serialized) = match ready_rx.recv() {
        Ok(Ok(rs)) => rs,
        Ok(Err(e)) => return Err(Error::Distributed(format!("init: {e}"))),
        Err(_) => {
            return Err(Error::Distributed(
                "init: the communication thread died while starting MPI".into(),
            ))
        }
    };
    if let Some(limit) = watch.timeout {
        let w = watch.clone();
        std::thread::Builder::new()
            .name("tapeflow-comm-watchdog".into())
            .spawn(move || watchdog(&w, limit, rank, size))
            .map_err(|e| Error::Distributed(format!("init: cannot start the watchdog: {e}")))?;
    }
    let world = World {
        rank,
        size,
        tx: Mutex::new(tx),
        thread: Mutex::new(Some(thread)),
        watch,
        turn,
        queued,
        serialized,
    };
    if WORLD.set(world).is_err() {
        unreachable!("the world is set only here, under `STARTING`, when it is unset");
    }
    UP.store(true, Ordering::Release);
    Ok(())
}

pub(super) fn shutdown() -> Result<()> {
    let _starting = STARTING.lock().unwrap_or_else(|e| e.into_inner());
    let Some(w) = world() else { return Ok(()) };
    let r = w.submit(Kind::Shutdown).wait();
    if let Some(t) = w.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = t.join();
    }
    w.watch.stop.store(true, Ordering::Relaxed);
    UP.store(false, Ordering::Release);
    r.map(|_| ())
        .map_err(|e| Error::Distributed(format!("shutdown: {e}")))
}

/// Ends the process when the collective in progress has waited longer than `limit`
/// (timed from when this thread first saw it running, so it fires within one polling
/// period past the limit).
fn watchdog(w: &Watch, limit: Duration, rank: usize, size: usize) {
    let mut seen: Option<(u64, Instant)> = None;
    while !w.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        let Some((seq, what)) = w.running() else {
            seen = None;
            continue;
        };
        let since = match seen {
            Some((s, t)) if s == seq => t,
            _ => {
                seen = Some((seq, Instant::now()));
                continue;
            }
        };
        if since.elapsed() > limit {
            eprintln!(
                "tapeflow distributed: rank {rank} of {size}: collective #{seq} ({what}) has \
                 waited {:.1} s for the other ranks (limit TAPEFLOW_MPI_TIMEOUT={} s): \
                 another rank failed, stopped or runs different collectives; ending this \
                 process so that mpirun ends the job",
                since.elapsed().as_secs_f64(),
                limit.as_secs_f64()
            );
            exit_now(1);
        }
    }
}

/// Lengths of a collective's shape the watchdog's message shows (more as `…`).
const DIMS_KEPT: usize = 4;

/// Words of a [`Packed`] description.
const PACKED_WORDS: usize = 2 + DIMS_KEPT;

/// What a collective is, for the watchdog's message, as a few numbers (formatted only
/// when the watchdog fires, off the path of every collective): the kind, the dtype and
/// the rank of the shape; the kind's parameter (the reduce op, the root, the count);
/// the first [`DIMS_KEPT`] lengths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Packed([u64; PACKED_WORDS]);

const ALL_REDUCE: u64 = 0;
const BROADCAST: u64 = 1;
const BARRIER: u64 = 2;
const PLAIN_LOOP: u64 = 3;
const SHUTDOWN: u64 = 4;

impl Packed {
    fn new(kind: u64, param: usize, data: Option<&Data>) -> Packed {
        let mut w = [0; PACKED_WORDS];
        w[1] = param as u64;
        if let Some(d) = data {
            let dims = d.dims();
            w[0] = (d.dtype().index() as u64) << 8 | (dims.len() as u64) << 16;
            for (k, &n) in dims.iter().take(DIMS_KEPT).enumerate() {
                w[2 + k] = n as u64;
            }
        }
        w[0] |= kind;
        Packed(w)
    }

    fn of_call(call: &Call<'_>) -> Packed {
        match *call {
            Call::AllReduce(d, op) => {
                let op = match op {
                    ReduceOp::Sum => 0,
                    ReduceOp::Mean => 1,
                };
                Packed::new(ALL_REDUCE, op, Some(d))
            }
            Call::Broadcast(d, root) => Packed::new(BROADCAST, root, Some(d)),
            Call::Barrier => Packed::new(BARRIER, 0, None),
            Call::PlainLoop(d, n) => Packed::new(PLAIN_LOOP, n, Some(d)),
        }
    }

    fn of_job(kind: &Kind) -> Packed {
        match kind {
            Kind::AllReduce(d, op) => Packed::of_call(&Call::AllReduce(d, *op)),
            Kind::Broadcast(d, root) => Packed::of_call(&Call::Broadcast(d, *root)),
            Kind::Barrier => Packed::new(BARRIER, 0, None),
            Kind::PlainLoop(d, n) => Packed::of_call(&Call::PlainLoop(d, *n)),
            Kind::Shutdown => Packed::new(SHUTDOWN, 0, None),
        }
    }

    /// The data's type as `f32[2,3]` (`f32[2,3,4,5,…]` beyond [`DIMS_KEPT`] lengths).
    fn data_type(&self) -> String {
        let w = &self.0;
        let dtype = DType::ALL[((w[0] >> 8) & 0xff) as usize];
        let rank = (w[0] >> 16) as usize;
        let dims: Shape = (0..rank.min(DIMS_KEPT))
            .map(|k| w[2 + k] as usize)
            .collect();
        let text = type_str(dtype, &dims);
        match rank > DIMS_KEPT {
            true => format!("{},…]", text.trim_end_matches(']')),
            false => text,
        }
    }
}

impl std::fmt::Display for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let param = self.0[1];
        match self.0[0] & 0xff {
            ALL_REDUCE => {
                let op = match param {
                    0 => ReduceOp::Sum,
                    _ => ReduceOp::Mean,
                };
                write!(f, "all_reduce[op={}] of {}", op.name(), self.data_type())
            }
            BROADCAST => write!(f, "broadcast from rank {param} of {}", self.data_type()),
            BARRIER => write!(f, "barrier"),
            PLAIN_LOOP => write!(
                f,
                "{param} plain MPI_Allreduce calls on {}",
                self.data_type()
            ),
            _ => write!(f, "shutdown barrier"),
        }
    }
}

/// The communication thread: starts MPI, then runs queued collectives in order.
fn communicate(
    rx: mpsc::Receiver<Job>,
    ready: mpsc::Sender<std::result::Result<(usize, usize, bool), String>>,
    watch: Arc<Watch>,
    turn: Arc<Mutex<Turn>>,
    queued: Arc<AtomicU64>,
) {
    let Some((universe, level)) = ::mpi::initialize_with_threading(Threading::Serialized) else {
        let _ = ready.send(Err("MPI is initialized already or failed to start".into()));
        return;
    };
    if level == Threading::Single {
        let _ = ready.send(Err(
            "the MPI library offers only MPI_THREAD_SINGLE; tapeflow needs MPI_THREAD_FUNNELED (or more)"
                .into(),
        ));
        return;
    }
    let world = universe.world();
    // the shutdown barrier's own communicator: it never matches a collective of `world`
    let spare = world.duplicate();
    let size = world.size() as usize;
    // with FUNNELED only, every collective runs on this thread (no `run_now`)
    let serialized = matches!(level, Threading::Serialized | Threading::Multiple);
    let _ = ready.send(Ok((world.rank() as usize, size, serialized)));
    while let Ok(job) = rx.recv() {
        let mut turn = turn.lock().unwrap_or_else(|e| e.into_inner());
        let seq = turn.next();
        watch.begin(seq, || Packed::of_job(&job.kind));
        let (r, last) = match job.kind {
            Kind::AllReduce(d, op) => (all_reduce(&world, &d, op, size, &mut turn.recent), false),
            Kind::Broadcast(d, root) => (broadcast(&world, &d, root), false),
            Kind::PlainLoop(d, n) => (plain_loop(&world, &d, n, &mut turn.recent), false),
            Kind::Barrier => {
                world.barrier();
                (
                    Ok(Data::zeros(crate::tensor::dtype::DType::F32, &[])),
                    false,
                )
            }
            Kind::Shutdown => {
                spare.barrier();
                (Ok(Data::zeros(crate::tensor::dtype::DType::F32, &[])), true)
            }
        };
        queued.fetch_sub(1, Ordering::AcqRel);
        if !last {
            watch.end(seq);
            drop(turn);
            job.reply.set(r);
            continue;
        }
        // finalize (still under the watchdog), then answer `shutdown`
        drop(spare);
        drop(world);
        drop(universe);
        watch.end(seq);
        job.reply.set(r);
        return;
    }
}

fn count(n: usize) -> std::result::Result<(), String> {
    if i32::try_from(n).is_err() {
        return Err(format!(
            "{n} elements exceed MPI's message limit of i32::MAX elements"
        ));
    }
    Ok(())
}

fn contiguous<T: Clone>(a: &Arr<T>) -> std::borrow::Cow<'_, [T]> {
    match a.as_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(a.iter().cloned().collect()),
    }
}

/// Most dropped results [`Turn::recent`] holds on to.
const RECENT_RESULTS: usize = 8;

/// Where an all-reduce of `d` writes its result: the index in `recent` of an earlier
/// result of `d`'s type that its caller has dropped (reused as it is: no allocation),
/// else of a new one, which forgets another beyond [`RECENT_RESULTS`] (the first, one
/// of the older ones). Every array in `recent` was made here, contiguous in standard
/// layout, and a unique one is no longer seen by anyone else, so it still is.
fn result_slot(recent: &mut Vec<Data>, d: &Data) -> usize {
    let free = recent.iter().position(|r| {
        r.dtype() == d.dtype()
            && same_shape(r.dims(), d.dims())
            && crate::with_data!(r, a => a.is_unique())
    });
    free.unwrap_or_else(|| {
        if recent.len() == RECENT_RESULTS {
            recent.swap_remove(0);
        }
        recent.push(Data::zeros(d.dtype(), d.dims()));
        recent.len() - 1
    })
}

/// The `len` elements of `r`, a result array [`result_slot`] chose, to overwrite.
fn slot_elements<T>(r: &mut Arr<T>, len: usize) -> &mut [T] {
    debug_assert!(r.is_unique() && r.is_standard_layout() && r.len() == len);
    // Pairs with the release by which the last other handle of `r` was dropped (before
    // `result_slot` saw it unique): that handle's reads happen before these writes.
    std::sync::atomic::fence(Ordering::Acquire);
    // SAFETY: `result_slot` chose `r`: made by `Data::zeros` (contiguous, in standard
    // layout, `len` elements, the number of its operand's), never handed out mutably,
    // and no other handle of its buffer is left (the strong count of its `Arc` is 1 and
    // ndarray makes no weak ones), so nothing else reads or writes these elements while
    // `recent`, under the `turn` lock, holds it and `r` is borrowed. (`as_slice_mut`
    // would prove the same again with an atomic read-modify-write, a cost of every
    // small collective.)
    unsafe { std::slice::from_raw_parts_mut(r.as_ptr() as *mut T, len) }
}

/// Sums `a` over the ranks into `r` (of `a`'s shape, unique, standard layout), then
/// divides by `mean` if given.
fn sum_into<T, C>(
    comm: &C,
    a: &Arr<T>,
    r: &mut Arr<T>,
    mean: Option<T>,
) -> std::result::Result<(), String>
where
    T: Equivalence + Copy + std::ops::Div<Output = T>,
    C: CommunicatorCollectives,
{
    let send = contiguous(a);
    count(send.len())?;
    let out = slot_elements(r, send.len());
    comm.all_reduce_into(&send[..], out, SystemOperation::sum());
    if let Some(n) = mean {
        for v in out {
            *v = *v / n;
        }
    }
    Ok(())
}

/// The all-reduce of `d` over the ranks, written into a result kept in `recent` (see
/// [`Turn::recent`]); the caller gets a handle of it.
fn all_reduce<C: CommunicatorCollectives>(
    comm: &C,
    d: &Data,
    op: ReduceOp,
    size: usize,
    recent: &mut Vec<Data>,
) -> std::result::Result<Data, String> {
    let mean = op == ReduceOp::Mean;
    if mean && d.dtype() == DType::I64 {
        return Err("the mean of i64 values is not an i64: cast to a float first".into());
    }
    let i = result_slot(recent, d);
    match (d, &mut recent[i]) {
        (Data::F32(a), Data::F32(r)) => sum_into(comm, a, r, mean.then_some(size as f32)),
        (Data::F64(a), Data::F64(r)) => sum_into(comm, a, r, mean.then_some(size as f64)),
        (Data::I64(a), Data::I64(r)) => sum_into(comm, a, r, None),
        _ => unreachable!("a result slot has its operand's dtype"),
    }?;
    Ok(recent[i].clone())
}

/// Seconds for `n` back-to-back `MPI_Allreduce` sums of `d` (f32) into one buffer: the
/// one an all-reduce of `d` would write into now ([`result_slot`]), so that the
/// baseline and the op it is compared with receive into the same memory. (Into a
/// buffer of its own, the baseline's place in physical memory against the op's moved
/// the 2-rank ratio at 64-256 KiB by up to ±10% from one process to the next, in every
/// round alike.)
fn plain_loop<C: CommunicatorCollectives>(
    comm: &C,
    d: &Data,
    n: usize,
    recent: &mut Vec<Data>,
) -> std::result::Result<Data, String> {
    let Data::F32(a) = d else {
        return Err("the plain loop takes f32 data".into());
    };
    let send = contiguous(a);
    count(send.len())?;
    let i = result_slot(recent, d);
    let Data::F32(r) = &mut recent[i] else {
        unreachable!("a result slot has its operand's dtype");
    };
    let recv = slot_elements(r, send.len());
    let t = Instant::now();
    for _ in 0..n {
        comm.all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum());
    }
    let secs = t.elapsed().as_secs_f64();
    Ok(Data::F64(ndarray::arr0(secs).into_dyn().into_shared()))
}

fn bcast<T, C>(comm: &C, a: &Arr<T>, root: usize) -> std::result::Result<ArrayD<T>, String>
where
    T: Equivalence + Copy,
    C: Communicator,
{
    count(a.len())?;
    let mut buf = contiguous(a).into_owned();
    comm.process_at_rank(root as i32)
        .broadcast_into(&mut buf[..]);
    ArrayD::from_shape_vec(IxDyn(a.shape()), buf).map_err(|e| e.to_string())
}

fn broadcast<C: Communicator>(
    comm: &C,
    d: &Data,
    root: usize,
) -> std::result::Result<Data, String> {
    Ok(match d {
        Data::F32(a) => Data::F32(bcast(comm, a, root)?.into_shared()),
        Data::F64(a) => Data::F64(bcast(comm, a, root)?.into_shared()),
        Data::I64(a) => Data::I64(bcast(comm, a, root)?.into_shared()),
    })
}
