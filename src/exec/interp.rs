//! The interpreter: runs a planned graph on concrete inputs.
//!
//! A [`Plan`] is made once per concrete function: the execution order (canonical
//! order of the live graph), each step's operands and consumers, how many uses each
//! value has, the compiled program of each `fused` step, a cost estimate per step, the
//! memory plan ([`plan_memory`](super::plan_memory)) and a [`BufferPool`].
//!
//! Running:
//! - **Buffers.** Kernels draw their outputs and scratch from the plan's pool
//!   ([`crate::exec::buffers`]). In order, a value goes back to the pool as soon as its
//!   last consumer has run, so later steps reuse it; in a parallel run, dead values go
//!   back when the run ends (the order of steps, and so how many buffers of a size are
//!   live at once, varies from run to run, and this keeps the demand of every run the
//!   same). A variable's old value goes back when the run replaces it. From the second
//!   call on, a run allocates no tensor buffer except for the values that escape
//!   (outputs). In order, the values live in plain cells of the run state (no lock or
//!   atomic operation per step); as a dataflow graph, behind locks and atomic counts.
//!   A constant stays bound in the kept run state from one run to the next (no copy
//!   of its array per run: a constant is never released or overwritten), and each
//!   output leaves its slot by moving out, not by a copy.
//!   `fused` steps also overwrite a dying operand in place where the memory plan says
//!   so; in a parallel run only where every other reader of that operand is an ancestor
//!   of the step, so that no run's buffer demand depends on timing.
//! - **Schedule.** A plan with a big matmul or convolution, called from outside the
//!   rayon pool, runs on one of its workers ([`ON_WORKERS_MIN_MACS`]); any other runs
//!   on the calling thread. Sources (inputs, constants, variable reads) are bound first,
//!   on the running thread. Then, for a graph with enough work and more than one rayon thread,
//!   the steps run as a dataflow graph on rayon: each step has an atomic count of
//!   operands still to compute; the thread that finishes a step continues with one of
//!   the consumers it made ready and spawns the others. Small graphs (below
//!   [`INTER_OP_MIN_WORK`]) run their steps in order on the running thread, where any
//!   task overhead would cost more than it buys. Either way, big kernels split their
//!   own loops across the pool. A plan that is one op on the call's inputs (a compiled
//!   function of one op) runs without a run state at all: its operands are the caller's
//!   arrays and its value goes straight to the caller (`Direct`).
//! - **Determinism.** Every kernel's bits are independent of the thread count and of
//!   which buffer it writes into, and each value is computed exactly once from the same
//!   operands, so the schedule never changes a result.
//! - **Variables.** Variables are read, all at one instant, before any step runs and
//!   written, all at one instant, after every step has run, so a step never observes a
//!   half-updated variable. The write happens only if no variable the run read has been
//!   written since (by a concurrent run or an eager update); otherwise the run starts
//!   over on the new values, so concurrent runs act as if run one at a time (see
//!   [`crate::Variable`]).
//! - **Collectives.** An `all_reduce` step only hands its operand to the communication
//!   thread ([`crate::comm::start_all_reduce`]) and the steps that read its value wait for
//!   it, so the reduction runs while the rest of the backward pass computes. Every rank
//!   must start the same collectives in the same order, whatever the schedule: in order,
//!   the plan puts each collective right after its last operand and every step that
//!   waits for one (directly or through others) after everything that does not
//!   (`issue_collectives_early`), so they start as early and are waited for as late as the
//!   graph allows; as a dataflow graph, each collective also counts the one before it in
//!   plan order among its dependencies, so they start in plan order on every rank.
//!   Starting is cheap, so the chain delays nothing else. A plan with collectives must
//!   not run concurrently on one rank (two runs would interleave their collectives).

use super::codegen::Codegen;
use super::control::RegionPlan;
use super::fused::{self, Dest, OutBuf};
use super::group::{self, Groups};
use super::plan_memory::{plan_memory, MemoryPlan};
use crate::comm::{self, Pending};
use crate::error::{Error, Result};
use crate::exec::buffers::{with_pool, BufferPool};
use crate::ir::{Graph, Node, NodeId};
use crate::ops::Op;
use crate::tensor::dtype::same_shape;
use crate::tensor::{type_str, variable, DType, Data, Tensor, Variable};
use smallvec::SmallVec;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU8, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

/// Estimated work (about one unit per element touched or multiply-add) above which a
/// graph runs its steps as a parallel dataflow graph; below it, in order on the
/// running thread.
pub const INTER_OP_MIN_WORK: u64 = 1 << 28;

/// A plan with a matmul or convolution of at least this many multiply-adds (the size
/// from which `gemm` splits a product across the pool) runs on a worker thread of the
/// rayon pool when called from outside it. Its parallel kernels fork and join many
/// times per call (a product's blocks, a convolution's chunks); from outside the pool
/// each join puts the calling thread to sleep and wakes it again, which on the 2-core
/// Zen 5 VM made the LSTM step's two big products ≈4x slower than on one thread.
/// Measured there, calls from the main thread, same minute: W6 (LSTM) 11.6 → 9.7 ms,
/// W2 (CNN) 3.18 → 2.59 ms, W3 8.3 → 8.0 ms. Plans without such a product stay on the
/// caller: W1 (largest product 3.2M) ran 115 µs there and 131-151 µs on a worker (the
/// idle worker's spinning slows the one computing).
pub const ON_WORKERS_MIN_MACS: u64 = crate::exec::kernels::gemm::PAR_GEMM_MIN as u64;

/// How a [`Plan`] schedules its steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Parallel dataflow when the graph's work reaches [`INTER_OP_MIN_WORK`] and the
    /// rayon pool has more than one thread; else in order (the default).
    Auto,
    /// Always in order on the running thread (kernels may still split big loops).
    Sequential,
    /// Always as a dataflow graph on the rayon pool.
    Parallel,
}

/// Counters of one run (for tests, benchmarks and profiles).
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    /// Kernels executed.
    pub steps: usize,
    /// Tensor buffers allocated because the pool had no spare one of that size (all of
    /// them on a first call; in steady state, only the values that escape the run).
    pub fresh_buffers: usize,
    /// Whether the steps ran as a parallel dataflow graph.
    pub parallel: bool,
    /// Set before the run to collect [`RunStats::profile`].
    pub collect_profile: bool,
    /// With `collect_profile`: wall time per op name, summed over steps (the run is
    /// forced sequential so the times add up to the run's).
    pub profile: Vec<(&'static str, Duration)>,
    /// With `collect_profile`: one entry per kernel step of the run, in run order.
    pub steps_profile: Vec<StepTime>,
    /// With `collect_profile`: wall time per op name of the steps inside loop and
    /// `cond` bodies, summed over steps and iterations (nested bodies included). That
    /// time is also part of the control-flow step's own entry in `profile`.
    pub loop_profile: Vec<(&'static str, Duration)>,
}

/// The time of one kernel step, for [`RunStats::steps_profile`].
#[derive(Clone, Debug)]
pub struct StepTime {
    /// The op's text name.
    pub op: &'static str,
    /// The result type, e.g. `f32[64,10]`.
    pub ty: String,
    /// Multiply-adds of a `matmul` or convolution step (0 for other ops), so
    /// `2 * macs / time` is its FLOP rate.
    pub macs: u64,
    /// Wall time of the step.
    pub time: Duration,
}

struct Step {
    node: NodeId,
    op: Op,
    operands: SmallVec<[usize; 4]>,
    /// Distinct operand steps.
    inputs: SmallVec<[usize; 4]>,
    /// Distinct steps that consume this one.
    consumers: SmallVec<[usize; 4]>,
    /// Consumers plus one if the value must outlive the run (output, assigned value);
    /// [`PINNED`] for a constant.
    uses: u32,
    /// Estimated work of this step.
    work: u64,
    /// For a collective: the collective after it in plan order, which the dataflow
    /// schedule starts only after this one (so all ranks start them in one order).
    next_collective: Option<usize>,
    /// Whether a collective comes before this one in plan order (one more dependency).
    after_collective: bool,
    /// For a `fused` step the memory plan computes in place: whether every other
    /// consumer of the overwritten operand is an ancestor of this step, so that in a
    /// dataflow run they have all run before it, whatever the interleaving. Only then
    /// does a parallel run overwrite in place: otherwise whether it could would depend
    /// on timing, and so would the number of buffers a run draws from the pool.
    in_place_any_order: bool,
    /// For a collective: whether the next step in plan order reads it (or none
    /// follows), so that nothing could run while it communicates. It then runs
    /// blocking, on the calling thread when nothing else is queued, and skips the
    /// hand-over to the communication thread and back.
    nothing_to_overlap: bool,
}

/// The use count of a constant: more than any run counts down, so a constant's slot
/// is never released or overwritten in place, and keeps its value from one run to the
/// next.
const PINNED: u32 = u32::MAX / 2;

/// The per-run state, kept between runs so a steady-state run allocates none of it.
struct RunState {
    /// The slots of a dataflow run, shared by its tasks.
    shared: SharedSlots,
    /// The slots of an in-order run: this thread's alone.
    own: OwnSlots,
}

/// A dataflow run's values: locks and atomic counts, as its tasks run on any thread.
struct SharedSlots {
    vals: Vec<RwLock<Option<Data>>>,
    pending: Vec<AtomicU32>,
    uses: Vec<AtomicU32>,
    failed: AtomicBool,
    error: Mutex<Option<Error>>,
    /// Values released during the run, returned to the pool when it ends.
    retired: Mutex<Vec<Data>>,
    /// Collectives started but not yet waited for, by step.
    comm: Vec<Mutex<Option<Pending>>>,
}

/// An in-order run's values: plain cells, no atomic operation or lock per step (the run
/// and everything it calls stays on one thread; kernels see only their operands).
struct OwnSlots {
    vals: Vec<RefCell<Option<Data>>>,
    uses: Vec<Cell<u32>>,
    comm: Vec<RefCell<Option<Pending>>>,
    /// Where this run writes the values of some steps (by step): the rows of a scan's
    /// stacked results (see [`Plan::run_into`]). Empty outside such runs.
    dests: RefCell<SmallVec<[(usize, Dest); 8]>>,
}

/// How a step reaches the values of its run ([`SharedSlots`] or [`OwnSlots`]); one
/// `exec` serves both.
trait Slots {
    /// A borrowed value slot.
    type Ref<'a>: Deref<Target = Option<Data>>
    where
        Self: 'a;
    /// Whether this is a dataflow run (released values wait for its end, see the
    /// module documentation; in-place writes need `Step::in_place_any_order`).
    const PARALLEL: bool;
    fn get(&self, i: usize) -> Self::Ref<'_>;
    fn set(&self, i: usize, v: Data);
    fn take(&self, i: usize) -> Option<Data>;
    /// Uses of value `i` still to come.
    fn uses(&self, i: usize) -> u32;
    /// Counts one use of value `i` as done; whether it was the last.
    fn used(&self, i: usize) -> bool;
    /// A value whose last use is done.
    fn release(&self, d: Data, pool: &BufferPool);
    fn put_pending(&self, i: usize, p: Pending);
    /// If the collective of step `i` is still pending: waits for it with `wait` and
    /// stores its value, and returns true. In a dataflow run the pending slot stays
    /// locked until the value is stored, so another reader of it waits for the value
    /// instead of finding neither.
    fn finish_pending(&self, i: usize, wait: impl FnOnce(Pending) -> Result<Data>) -> Result<bool>;
    /// Runs the plan's kernel steps on these slots: as a dataflow graph on the rayon
    /// pool ([`SharedSlots`]) or in plan order on this thread ([`OwnSlots`]).
    fn run_steps(&self, plan: &Plan, stats: &mut RunStats) -> Result<()>;
    /// Where step `i`'s value is to be written, if this run was given a place for it
    /// (an in-order run only, see [`Plan::run_into`]).
    fn dest(&self, i: usize) -> Option<Dest>;
}

impl Slots for SharedSlots {
    type Ref<'a> = RwLockReadGuard<'a, Option<Data>>;
    const PARALLEL: bool = true;
    fn get(&self, i: usize) -> Self::Ref<'_> {
        read(&self.vals[i])
    }
    fn set(&self, i: usize, v: Data) {
        *write(&self.vals[i]) = Some(v);
    }
    fn take(&self, i: usize) -> Option<Data> {
        write(&self.vals[i]).take()
    }
    fn uses(&self, i: usize) -> u32 {
        self.uses[i].load(Ordering::Acquire)
    }
    fn used(&self, i: usize) -> bool {
        self.uses[i].fetch_sub(1, Ordering::AcqRel) == 1
    }
    fn release(&self, d: Data, _: &BufferPool) {
        lock(&self.retired).push(d);
    }
    fn put_pending(&self, i: usize, p: Pending) {
        *lock(&self.comm[i]) = Some(p);
    }
    fn finish_pending(&self, i: usize, wait: impl FnOnce(Pending) -> Result<Data>) -> Result<bool> {
        let mut slot = lock(&self.comm[i]);
        let Some(p) = slot.take() else {
            return Ok(false);
        };
        self.set(i, wait(p)?);
        Ok(true)
    }
    fn run_steps(&self, plan: &Plan, stats: &mut RunStats) -> Result<()> {
        plan.run_dataflow(self, stats)
    }
    fn dest(&self, _: usize) -> Option<Dest> {
        None
    }
}

impl Slots for OwnSlots {
    type Ref<'a> = std::cell::Ref<'a, Option<Data>>;
    const PARALLEL: bool = false;
    fn get(&self, i: usize) -> Self::Ref<'_> {
        self.vals[i].borrow()
    }
    fn set(&self, i: usize, v: Data) {
        *self.vals[i].borrow_mut() = Some(v);
    }
    fn take(&self, i: usize) -> Option<Data> {
        self.vals[i].borrow_mut().take()
    }
    fn uses(&self, i: usize) -> u32 {
        self.uses[i].get()
    }
    fn used(&self, i: usize) -> bool {
        let u = self.uses[i].get();
        self.uses[i].set(u.saturating_sub(1));
        u == 1
    }
    fn release(&self, d: Data, pool: &BufferPool) {
        pool.recycle(d);
    }
    fn put_pending(&self, i: usize, p: Pending) {
        *self.comm[i].borrow_mut() = Some(p);
    }
    fn finish_pending(&self, i: usize, wait: impl FnOnce(Pending) -> Result<Data>) -> Result<bool> {
        let Some(p) = self.comm[i].borrow_mut().take() else {
            return Ok(false);
        };
        self.set(i, wait(p)?);
        Ok(true)
    }
    fn run_steps(&self, plan: &Plan, stats: &mut RunStats) -> Result<()> {
        plan.run_in_order(self, stats)
    }
    fn dest(&self, i: usize) -> Option<Dest> {
        let dests = self.dests.borrow();
        (dests.iter()).find_map(|(s, d)| (*s == i).then(|| d.clone()))
    }
}

/// At most one run state, handed between runs with one atomic swap (see `Plan::spare`).
#[derive(Default)]
struct StateSlot(AtomicPtr<RunState>);

// A state moves between the threads that run a plan: it must be `Send` (as it must be
// for the `Mutex<Vec<Box<RunState>>>` beside it, which the compiler checks).
const _: fn() = || {
    fn send<T: Send>() {}
    send::<RunState>();
};

impl StateSlot {
    /// The state kept, if any.
    fn take(&self) -> Option<Box<RunState>> {
        let p = self.0.swap(std::ptr::null_mut(), Ordering::Acquire);
        // SAFETY: a non-null pointer came from `Box::into_raw` in `put`, and the swap
        // took it out of the slot, so no other caller can get it
        (!p.is_null()).then(|| unsafe { Box::from_raw(p) })
    }

    /// Keeps `st`, handing back the state it displaces (a concurrent run's).
    fn put(&self, st: Box<RunState>) -> Option<Box<RunState>> {
        let p = self.0.swap(Box::into_raw(st), Ordering::AcqRel);
        // SAFETY: as in `take`
        (!p.is_null()).then(|| unsafe { Box::from_raw(p) })
    }
}

impl Drop for StateSlot {
    fn drop(&mut self) {
        drop(self.take());
    }
}

/// An execution plan for one graph.
pub struct Plan {
    graph: Graph,
    steps: Vec<Step>,
    /// The output steps, each with whether it moves out of its slot (its last
    /// occurrence among the outputs, and not a constant, which stays bound) or is
    /// copied.
    outputs: Vec<(usize, bool)>,
    assigns: Vec<(u32, usize)>,
    memory: MemoryPlan,
    /// The compiled program of each `fused` step (boxed: a `Program` is large, and
    /// most steps have none).
    programs: Vec<Option<Box<fused::Program>>>,
    /// Elementwise steps an in-order run runs as one loop (see [`group`]).
    groups: Groups,
    /// The source steps (inputs, constants, variable reads), bound before the kernels run.
    sources: Vec<usize>,
    /// The collective steps, in plan order.
    collectives: Vec<usize>,
    /// The planned bodies of each control-flow step.
    regions: Vec<Option<Box<RegionPlan>>>,
    /// For each control-flow step, its `get` steps: `(result index, step)`; the
    /// control-flow step stores its results straight into their slots.
    gets: Vec<SmallVec<[(u32, usize); 4]>>,
    total_bytes: usize,
    work: u64,
    schedule: AtomicU8,
    pool: BufferPool,
    /// Run states kept for reuse (boxed: a run moves only a pointer in and out, not the
    /// state's 240 bytes twice, 6% of a one-step run): one in `spare`, taken and put
    /// back with one atomic swap each (runs one at a time, the usual case, never lock),
    /// the others of concurrent runs in `states`.
    spare: StateSlot,
    #[allow(clippy::vec_box)]
    states: Mutex<Vec<Box<RunState>>>,
    /// Whether a run called from outside the rayon pool moves to one of its workers
    /// (a product of at least [`ON_WORKERS_MIN_MACS`] multiply-adds).
    on_workers: bool,
    /// Whether a step forks a product across threads (at least
    /// [`SPLIT_GEMM_MIN`](crate::exec::kernels::gemm::SPLIT_GEMM_MIN) multiply-adds).
    forks_products: bool,
    /// Set for a plan of one kernel step on the call's inputs (see [`Direct`]).
    direct: Option<Direct>,
}

/// A plan that is one kernel step reading only the call's inputs, its value the one
/// output, with no variables: a compiled function of one op. It runs without a run
/// state ([`Plan::run_direct`]): its operands are the caller's arrays, its value goes
/// straight to the caller. The steps of a run state (binding the inputs into slots,
/// counting uses, releasing, handing the state back) cost as much as the op itself
/// on small tensors: a compiled one-op 4 KiB all-reduce on 2 ranks paid 0.3 µs per call
/// over a plain `MPI_Allreduce` loop (3.0-3.2 µs), the run state a third of it.
struct Direct {
    /// The kernel step.
    step: usize,
    /// The input each operand of the step is, in operand order.
    args: SmallVec<[usize; 4]>,
}

impl Direct {
    /// The direct form of a plan with these steps and outputs, if it has one: no
    /// variables, one output, and a single kernel step ([`Op::is_kernel`], outside any
    /// step group) whose operands are inputs.
    fn of(g: &Graph, steps: &[Step], outputs: &[(usize, bool)], groups: &Groups) -> Option<Direct> {
        if !g.vars.is_empty() || !g.assigns.is_empty() {
            return None;
        }
        let &[(step, _)] = outputs else {
            return None;
        };
        let s = &steps[step];
        let alone =
            (steps.iter().enumerate()).all(|(i, t)| i == step || matches!(t.op, Op::Input(_)));
        if !s.op.is_kernel() || !alone || groups.of_step[step].is_some() {
            return None;
        }
        let args = (s.operands.iter())
            .map(|&o| match steps[o].op {
                Op::Input(k) => Some(k as usize),
                _ => None,
            })
            .collect::<Option<_>>()?;
        Some(Direct { step, args })
    }
}

/// Adds `d` to `name`'s entry of a profile.
pub(crate) fn add_time(
    profile: &mut Vec<(&'static str, Duration)>,
    name: &'static str,
    d: Duration,
) {
    match profile.iter_mut().find(|(n, _)| *n == name) {
        Some((_, acc)) => *acc += d,
        None => profile.push((name, d)),
    }
}

/// The scheduler's cost estimate of node `n` ([`Op::work`]), with a fused node's matmul
/// prologue counted as the matmul it is ([`Op::work`] sees a fused node's operands and
/// result only). Without it a plan whose products all carry an epilogue looked small:
/// W3's step (1.2G multiply-adds) was estimated at 8.7M and ran in order, where as a
/// dataflow graph its small steps overlap its products (the Xeon VM, 2 threads, W3's
/// step in 21 alternated pairs: faster in 19, by 1-4%).
fn work_of(g: &Graph, n: NodeId) -> u64 {
    let operands = g.operands(n);
    let x: SmallVec<[&[usize]; 4]> = operands.iter().map(|&o| &g.node(o).shape[..]).collect();
    let node = g.node(n);
    let prologue = match node.op {
        Op::Fused(_) => macs_of(g, n),
        _ => 0,
    };
    node.op.work(&x, &node.shape) + prologue
}

/// Multiply-adds of a matmul or convolution node, or of a fused node's matmul prologue
/// ([`Op::macs`]; 0 for any other op).
fn macs_of(g: &Graph, n: NodeId) -> u64 {
    let operands = g.operands(n);
    let x: SmallVec<[&[usize]; 4]> = operands.iter().map(|&o| &g.node(o).shape[..]).collect();
    let node = g.node(n);
    match node.op {
        // the prologue is `matmul $0, $1` of the result's shape
        Op::Fused(f) => g.fused[f as usize].matmul().map_or(0, |(ta, tb)| {
            Op::MatMul { ta, tb }.macs(&x[..2], &node.shape)
        }),
        op => op.macs(&x, &node.shape),
    }
}

impl Plan {
    /// Plans `graph` (which must verify and have concrete shapes).
    ///
    /// # Errors
    /// A graph with symbolic dimensions (`f32[b,784]`): bind them first
    /// ([`crate::passes::specialize`]; a shape-polymorphic [`crate::function`] does it
    /// per call).
    pub fn new(graph: Graph) -> Result<Plan> {
        let order = issue_collectives_early(&graph, graph.canonical_order());
        if let Some(&n) = order.iter().find(|&&n| {
            let node = graph.node(n);
            crate::tensor::dim::any_sym(&node.shape)
                || matches!(node.op, Op::DimValue { dim: d, .. } if crate::tensor::dim::is_sym(d))
        }) {
            let node = graph.node(n);
            return Err(Error::Graph(format!(
                "node {} ({}: {}) has a symbolic dimension: a plan needs concrete shapes \
                 (bind the symbols with passes::specialize)",
                n.index(),
                node.op.name(),
                type_str(node.dtype, &node.shape)
            )));
        }
        let pos: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        let mut steps: Vec<Step> = Vec::with_capacity(order.len());
        for &n in &order {
            let operands: SmallVec<[usize; 4]> = graph.operands(n).iter().map(|o| pos[o]).collect();
            let mut inputs = operands.clone();
            inputs.sort_unstable();
            inputs.dedup();
            steps.push(Step {
                node: n,
                op: graph.node(n).op,
                operands,
                inputs,
                consumers: SmallVec::new(),
                uses: 0,
                work: work_of(&graph, n),
                next_collective: None,
                after_collective: false,
                in_place_any_order: false,
                nothing_to_overlap: false,
            });
        }
        let collectives: Vec<usize> = (0..steps.len())
            .filter(|&i| steps[i].op.is_collective())
            .collect();
        for &c in &collectives {
            let next = (c + 1..steps.len())
                .find(|&j| !matches!(steps[j].op, Op::Input(_) | Op::Const | Op::ReadVar(_)));
            steps[c].nothing_to_overlap = next.is_none_or(|j| steps[j].inputs.contains(&c));
        }
        for w in collectives.windows(2) {
            steps[w[0]].next_collective = Some(w[1]);
            steps[w[1]].after_collective = true;
        }
        for i in 0..steps.len() {
            for k in 0..steps[i].inputs.len() {
                let o = steps[i].inputs[k];
                steps[o].consumers.push(i);
                steps[o].uses += 1;
            }
        }
        let outputs: Vec<usize> = graph.outputs.iter().map(|o| pos[o]).collect();
        let assigns: Vec<(u32, usize)> = graph
            .assigns
            .iter()
            .map(|a| match graph.node(*a).op {
                Op::Assign(v) => (v, pos[a]),
                _ => unreachable!("assigns hold assign nodes"),
            })
            .collect();
        for &o in outputs.iter().chain(assigns.iter().map(|(_, p)| p)) {
            steps[o].uses += 1;
        }
        for s in steps.iter_mut().filter(|s| matches!(s.op, Op::Const)) {
            s.uses = PINNED;
        }
        let outputs: Vec<(usize, bool)> = (outputs.iter().enumerate())
            .map(|(k, &o)| {
                let last = !outputs[k + 1..].contains(&o);
                (o, last && !matches!(steps[o].op, Op::Const))
            })
            .collect();
        let total_bytes = order
            .iter()
            .map(|&n| graph.node(n).shape.iter().product::<usize>() * graph.node(n).dtype.size())
            .sum();
        let memory = plan_memory(&graph, &order);
        for i in 0..steps.len() {
            if let Some(k) = memory.in_place[i] {
                let o = steps[i].operands[k];
                let others: SmallVec<[usize; 4]> = (steps[o].consumers.iter().copied())
                    .filter(|&c| c != i)
                    .collect();
                steps[i].in_place_any_order = descends_from_all(&steps, i, &others);
            }
        }
        let programs: Vec<Option<Box<fused::Program>>> = order
            .iter()
            .map(|&n| match graph.node(n).op {
                Op::Fused(f) => {
                    let ops = graph.operands(n);
                    let types: Vec<(DType, &[usize])> = ops
                        .iter()
                        .map(|&o| (graph.node(o).dtype, &graph.node(o).shape[..]))
                        .collect();
                    Some(Box::new(fused::Program::new(
                        &graph.fused[f as usize],
                        &types,
                        &graph.node(n).shape,
                    )))
                }
                _ => None,
            })
            .collect();
        let views: Vec<group::StepView> = (steps.iter())
            .map(|s| group::StepView {
                node: s.node,
                operands: &s.operands,
                source: is_source(s),
            })
            .collect();
        let groups = group::plan_groups(&graph, &views);
        let grouped = groups.groups.iter().map(|g| &g.program);
        fused::reserve_registers(programs.iter().flatten().map(|p| &**p).chain(grouped));
        let regions = order
            .iter()
            .map(|&n| match graph.node(n).op {
                Op::Cond(r) | Op::While(r) | Op::Scan(r) => graph
                    .regions
                    .get(r as usize)
                    .ok_or_else(|| Error::Graph(format!("no region {r}")))
                    .and_then(RegionPlan::new)
                    .map(|p| Some(Box::new(p))),
                _ => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        let gets = steps
            .iter()
            .map(|s| {
                s.consumers
                    .iter()
                    .filter_map(|&c| match steps[c].op {
                        Op::Get(k) => Some((k, c)),
                        _ => None,
                    })
                    .collect()
            })
            .collect();
        let work = steps.iter().map(|s| s.work).sum();
        let sources = (0..steps.len()).filter(|&i| is_source(&steps[i])).collect();
        let on_workers = (steps.iter()).any(|s| macs_of(&graph, s.node) >= ON_WORKERS_MIN_MACS);
        let split = crate::exec::kernels::gemm::SPLIT_GEMM_MIN as u64;
        let forks_products = (steps.iter()).any(|s| macs_of(&graph, s.node) >= split);
        let direct = Direct::of(&graph, &steps, &outputs, &groups);
        Ok(Plan {
            graph,
            steps,
            outputs,
            assigns,
            memory,
            programs,
            groups,
            sources,
            collectives,
            regions,
            gets,
            total_bytes,
            work,
            schedule: AtomicU8::new(0),
            pool: BufferPool::new(),
            spare: StateSlot::default(),
            states: Mutex::new(Vec::new()),
            on_workers,
            forks_products,
            direct,
        })
    }

    /// The planned graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Planned peak bytes of a run: inputs, constants and variables plus every buffer
    /// slot of the memory plan (reused after last use, in place where possible).
    pub fn peak_bytes(&self) -> usize {
        self.memory.peak_bytes()
    }

    /// The memory plan (slots, in-place steps), indexed by step.
    pub fn memory(&self) -> &MemoryPlan {
        &self.memory
    }

    /// Bytes of all values if none were ever released.
    pub fn total_bytes(&self) -> usize {
        self.total_bytes
    }

    /// Estimated work of one run (about one unit per element touched or multiply-add).
    pub fn work(&self) -> u64 {
        self.work
    }

    /// The buffer pool (spare buffers kept between runs).
    pub fn pool(&self) -> &BufferPool {
        &self.pool
    }

    /// Buffers allocated since the plan was made because a pool had none of the size
    /// asked for: this plan's pool and those of its control-flow bodies (each body plan
    /// has its own), so a test can tell that loop iterations draw every buffer from a
    /// pool in steady state.
    pub fn pool_misses(&self) -> usize {
        self.pool.misses()
            + (self.regions.iter().flatten())
                .map(|r| r.pool_misses())
                .sum::<usize>()
    }

    /// How steps are scheduled.
    pub fn schedule(&self) -> Schedule {
        match self.schedule.load(Ordering::Relaxed) {
            1 => Schedule::Sequential,
            2 => Schedule::Parallel,
            _ => Schedule::Auto,
        }
    }

    /// Sets how steps are scheduled (results are bit-identical either way).
    pub fn set_schedule(&self, s: Schedule) {
        let v = match s {
            Schedule::Auto => 0,
            Schedule::Sequential => 1,
            Schedule::Parallel => 2,
        };
        self.schedule.store(v, Ordering::Relaxed);
    }

    /// Sets whether fused steps run generated code (results are bit-identical either
    /// way; see [`crate::exec::codegen`]). [`Codegen::Force`] waits until
    /// every fused step's kernel is compiled.
    pub fn set_codegen(&self, mode: Codegen) {
        for p in self.all_programs() {
            p.set_codegen(mode);
        }
    }

    /// The compiled loops: each `fused` step's, then each step group's.
    fn all_programs(&self) -> impl Iterator<Item = &fused::Program> + Clone {
        let grouped = self.groups.groups.iter().map(|g| &g.program);
        self.programs.iter().flatten().map(|p| &**p).chain(grouped)
    }

    /// The step groups an in-order run of this plan and of its bodies runs, each as
    /// one loop with several outputs (see the README's "How a compiled step runs"): the
    /// number of steps of each, this plan's first, then its bodies' in plan order.
    pub fn step_groups(&self) -> Vec<usize> {
        let here = self.groups.groups.iter().map(|g| g.members.len());
        let bodies = self.regions.iter().flatten().flat_map(|r| r.step_groups());
        here.chain(bodies).collect()
    }

    /// In [`Codegen::Auto`](crate::exec::codegen::Codegen), starts compiling the
    /// generated code of every fused step now, in the background, whatever its loop's
    /// length (auto mode alone leaves loops below `codegen::AUTO_MIN_ELEMS` to the
    /// interpreter): for a plan that runs many times per call, such as a loop body.
    pub fn request_generated_code(&self) {
        for p in self.all_programs() {
            p.request_code();
        }
    }

    /// `(running generated code now, all)` fused loops: the `fused` steps', then the
    /// step groups'.
    pub fn generated_steps(&self) -> (usize, usize) {
        let all = self.all_programs();
        let generated = all.clone().filter(|p| p.uses_generated_code()).count();
        (generated, all.count())
    }

    fn parallel(&self) -> bool {
        match self.schedule() {
            Schedule::Sequential => false,
            Schedule::Parallel => true,
            Schedule::Auto => self.work >= INTER_OP_MIN_WORK && rayon::current_num_threads() > 1,
        }
    }

    /// Whether a step of this plan (not of its regions) forks a product across
    /// threads.
    pub(crate) fn forks_products(&self) -> bool {
        self.forks_products
    }

    /// How many `scan` steps of this plan (and of its bodies) run as two scans over the
    /// halves of the batch at once when the pool has more than one thread: their bodies
    /// keep batch rows apart and their products fork (see the README's "How a compiled
    /// step runs").
    pub fn row_split_scans(&self) -> usize {
        self.regions
            .iter()
            .flatten()
            .map(|r| r.row_split_scans())
            .sum()
    }

    /// How many `scan` steps of this plan (and of its bodies) are accumulation loops,
    /// `c ← c + a·b` and nothing else, which the GEMM runs in place, by column halves
    /// on two workers when the pool has more (see the README's "How a compiled step
    /// runs").
    pub fn accumulation_loops(&self) -> usize {
        self.regions
            .iter()
            .flatten()
            .map(|r| r.accumulation_loops())
            .sum()
    }

    /// How many rows of `scan` stacked results this plan's loops (and their bodies')
    /// have copied into place since the plan was made: a step's value computed
    /// elsewhere, then copied. Most are written in place instead (a step group's
    /// members, a `concat`, a carry saved for the next step: see `exec::control`), so a
    /// test can tell that they are.
    pub fn stacked_row_copies(&self) -> usize {
        (self.regions.iter().flatten())
            .map(|r| r.stacked_row_copies())
            .sum()
    }

    /// Runs the plan. Inputs must match the graph's signature.
    pub fn run(&self, inputs: &[&Data], stats: &mut RunStats) -> Result<Vec<Data>> {
        self.run_into(inputs, &[], stats)
    }

    /// [`Plan::run`], writing output `k`'s value to `d` for each `(k, d)` of `dests`
    /// where the step computing it can (a step group's member, in an in-order run);
    /// that output is then `d`'s view. The others are computed as by `run`. Each
    /// destination's memory must be left alone by everything else during the run.
    pub(crate) fn run_into(
        &self,
        inputs: &[&Data],
        dests: &[(usize, Dest)],
        stats: &mut RunStats,
    ) -> Result<Vec<Data>> {
        let mut out = Vec::with_capacity(self.outputs.len());
        self.run_to(inputs, dests, stats, &mut |d| out.push(d))?;
        Ok(out)
    }

    /// [`Plan::run_into`], handing the output values to `sink` in order, once the run
    /// has succeeded: a compiled call turns them into its result tensors as they come,
    /// with no list of values in between.
    pub(crate) fn run_to(
        &self,
        inputs: &[&Data],
        dests: &[(usize, Dest)],
        stats: &mut RunStats,
        sink: &mut (dyn FnMut(Data) + Send),
    ) -> Result<()> {
        if self.on_workers && rayon::current_thread_index().is_none() {
            // see `ON_WORKERS_MIN_MACS`: the whole run moves to a worker of the pool
            // and keeps the other workers awake for its forks (see `exec::kernels::awake`)
            return rayon::scope(|_| {
                crate::exec::kernels::awake::with_workers_awake(|| {
                    self.run_here(inputs, dests, stats, sink)
                })
            });
        }
        self.run_here(inputs, dests, stats, sink)
    }

    /// [`Plan::run_to`] on the calling thread.
    fn run_here(
        &self,
        inputs: &[&Data],
        dests: &[(usize, Dest)],
        stats: &mut RunStats,
        sink: &mut (dyn FnMut(Data) + Send),
    ) -> Result<()> {
        let g = &self.graph;
        if inputs.len() != g.inputs.len() {
            return Err(Error::Function(format!(
                "expects {} inputs, got {}",
                g.inputs.len(),
                inputs.len()
            )));
        }
        let misses = self.pool.misses();
        if let Some(d) = &self.direct {
            if dests.is_empty()
                && !stats.collect_profile
                && !crate::debugging::check_numerics_enabled()
            {
                let result = with_pool(&self.pool, || self.run_direct(d, inputs));
                stats.fresh_buffers += self.pool.misses() - misses;
                stats.parallel = false;
                stats.steps += 1;
                sink(result?);
                return Ok(());
            }
        }
        let result = loop {
            let mut st = self.take_state();
            let result = with_pool(&self.pool, || {
                self.run_with(&mut st, inputs, dests, stats, &mut *sink)
            });
            self.put_state(st, stats.parallel);
            match result {
                Ok(false) => continue, // a variable it read changed meanwhile: run again
                Ok(true) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        stats.fresh_buffers += self.pool.misses() - misses;
        result
    }

    fn take_state(&self) -> Box<RunState> {
        let cached =
            (self.spare.take()).or_else(|| self.states.lock().ok().and_then(|mut s| s.pop()));
        let n = self.steps.len();
        cached.unwrap_or_else(|| {
            Box::new(RunState {
                shared: SharedSlots {
                    vals: (0..n).map(|_| RwLock::new(None)).collect(),
                    pending: (0..n).map(|_| AtomicU32::new(0)).collect(),
                    uses: (0..n).map(|_| AtomicU32::new(0)).collect(),
                    failed: AtomicBool::new(false),
                    error: Mutex::new(None),
                    retired: Mutex::new(Vec::new()),
                    comm: (0..n).map(|_| Mutex::new(None)).collect(),
                },
                own: OwnSlots {
                    vals: (0..n).map(|_| RefCell::new(None)).collect(),
                    uses: (0..n).map(|_| Cell::new(0)).collect(),
                    comm: (0..n).map(|_| RefCell::new(None)).collect(),
                    dests: RefCell::new(SmallVec::new()),
                },
            })
        })
    }

    /// Clears a run's state (its values go back to the pool) and keeps it for reuse:
    /// the half its run used, the dataflow slots if `parallel` (see
    /// [`RunStats::parallel`]), else the in-order ones; the other half is clear from its
    /// last use. The state is this thread's alone now: no locking. A failed run may
    /// leave collectives unread; they finish on their own.
    fn put_state(&self, mut st: Box<RunState>, parallel: bool) {
        if parallel {
            let shared = &mut st.shared;
            let left = (shared.vals.iter_mut().zip(&self.steps))
                .filter(|(_, s)| s.uses != PINNED)
                .filter_map(|(v, _)| slot_mut(v).take());
            let retired = shared.retired.get_mut();
            for d in left.chain(retired.unwrap_or_else(|e| e.into_inner()).drain(..)) {
                self.pool.recycle(d);
            }
            for p in &mut shared.comm {
                drop(p.get_mut().unwrap_or_else(|e| e.into_inner()).take());
            }
            *shared.error.get_mut().unwrap_or_else(|e| e.into_inner()) = None;
        } else {
            let own = &mut st.own;
            let left = (own.vals.iter_mut().zip(&self.steps))
                .filter(|(_, s)| s.uses != PINNED)
                .filter_map(|(v, _)| v.get_mut().take());
            for d in left {
                self.pool.recycle(d);
            }
            for p in &mut own.comm {
                drop(p.get_mut().take());
            }
        }
        if let Some(displaced) = self.spare.put(st) {
            lock(&self.states).push(displaced);
        }
    }

    /// One run, its outputs handed to `sink`; `false` (and no outputs) if a variable it
    /// read was written before it could commit.
    fn run_with(
        &self,
        st: &mut RunState,
        inputs: &[&Data],
        dests: &[(usize, Dest)],
        stats: &mut RunStats,
        sink: &mut dyn FnMut(Data),
    ) -> Result<bool> {
        let checked = crate::debugging::check_numerics_enabled(); // report the first, in order
        let parallel = self.parallel() && !stats.collect_profile && !checked;
        stats.parallel = parallel;
        if parallel {
            let sh = &mut st.shared;
            for (i, s) in self.steps.iter().enumerate() {
                let deps = s.inputs.len() + s.after_collective as usize;
                *sh.pending[i].get_mut() = deps as u32;
                *sh.uses[i].get_mut() = s.uses;
            }
            *sh.failed.get_mut() = false;
            self.run_on(&st.shared, inputs, stats, sink)
        } else {
            for (u, s) in st.own.uses.iter().zip(&self.steps) {
                u.set(s.uses);
            }
            if dests.is_empty() {
                return self.run_on(&st.own, inputs, stats, sink);
            }
            // by step: the first output a step computes gets its destination
            let own = st.own.dests.get_mut();
            for (k, d) in dests {
                if let Some(&(o, _)) = self.outputs.get(*k) {
                    if !own.iter().any(|(s, _)| *s == o) {
                        own.push((o, d.clone()));
                    }
                }
            }
            let out = self.run_on(&st.own, inputs, stats, sink);
            st.own.dests.get_mut().clear();
            out
        }
    }

    /// The value of a [`Direct`] plan's step on `inputs` (profiling and numerics checks
    /// take the run with a state).
    fn run_direct(&self, d: &Direct, inputs: &[&Data]) -> Result<Data> {
        let g = &self.graph;
        for s in self.sources.iter().map(|&i| &self.steps[i]) {
            if let Op::Input(k) = s.op {
                check_input(k as usize, inputs[k as usize], g.node(s.node))?;
            }
        }
        let s = &self.steps[d.step];
        let node = g.node(s.node);
        let args: SmallVec<[&Data; 4]> = d.args.iter().map(|&k| inputs[k]).collect();
        match s.op {
            Op::AllReduce(r) => all_reduce_now(s, node, args[0], r),
            _ => kernel(s, node, &args),
        }
    }

    /// [`Plan::run_with`] on the slots of its schedule.
    fn run_on<S: Slots>(
        &self,
        st: &S,
        inputs: &[&Data],
        stats: &mut RunStats,
        sink: &mut dyn FnMut(Data),
    ) -> Result<bool> {
        let g = &self.graph;
        let handles = || g.vars.iter().map(|v| v.handle.as_ref());
        let mut vars = match g.vars.is_empty() {
            true => SmallVec::new(),
            false => variable::read_all(handles()),
        };
        // Sources first, on this thread.
        for &i in &self.sources {
            let s = &self.steps[i];
            let node = g.node(s.node);
            let v = match s.op {
                Op::Input(k) => {
                    let d = inputs[k as usize];
                    check_input(k as usize, d, node)?;
                    d.clone()
                }
                // bound by an earlier run of this state
                Op::Const if st.get(i).is_some() => continue,
                Op::Const => node.value.clone().expect("verified const"),
                Op::ReadVar(v) => {
                    let (value, _) = vars[v as usize].as_ref().ok_or_else(|| {
                        Error::Graph(format!(
                            "variable `{}` has no live handle (parsed graph)",
                            g.vars[v as usize].name
                        ))
                    })?;
                    value.data()?.clone()
                }
                _ => unreachable!("sources are inputs, constants and variable reads"),
            };
            st.set(i, v);
        }
        if g.vars.is_empty() {
            // nothing to read or commit: no bookkeeping of versions and writes
            self.run_kernels(st, stats)?;
        } else {
            // keep only the versions, so old values can be recycled when replaced
            let versions: SmallVec<[(&Variable, u64); 8]> = handles()
                .zip(vars.iter_mut())
                .filter_map(|(h, v)| Some((h?, v.take()?.1)))
                .collect();
            self.run_kernels(st, stats)?;
            let mut writes: SmallVec<[(&Variable, Tensor); 8]> = self
                .assigns
                .iter()
                .filter_map(|&(v, p)| {
                    let var = g.vars[v as usize].handle.as_ref()?;
                    let d = st.get(p).clone().expect("assign computed");
                    Some((var, Tensor::from_data(d)))
                })
                .collect();
            if !writes.is_empty() && !variable::commit(&versions, &mut writes) {
                return Ok(false);
            }
            for (_, old) in writes {
                if let Some(old) = old.into_unshared_data() {
                    self.pool.recycle(old);
                }
            }
        }
        for &(o, moves) in &self.outputs {
            let v = match moves {
                true => st.take(o),
                false => st.get(o).clone(),
            };
            sink(v.expect("output computed"));
        }
        Ok(true)
    }

    /// The kernel steps (after the sources are bound), then the collectives whose values
    /// leave the run (outputs, assignments).
    fn run_kernels<S: Slots>(&self, st: &S, stats: &mut RunStats) -> Result<()> {
        st.run_steps(self, stats)?;
        for &i in &self.collectives {
            self.finish_collective(i, st, false)?;
        }
        Ok(())
    }

    /// Runs every kernel step in plan order on this thread.
    fn run_in_order(&self, st: &OwnSlots, stats: &mut RunStats) -> Result<()> {
        let g = &self.graph;
        for (i, s) in self.steps.iter().enumerate() {
            if is_source(s) {
                continue;
            }
            let t = stats.collect_profile.then(Instant::now);
            let bodies = stats.collect_profile && self.regions[i].is_some();
            let outer = bodies.then(|| super::control::profile_bodies(Some(Vec::new())));
            let done = self.exec(i, st);
            if let Some(outer) = outer {
                let inner = super::control::profile_bodies(outer).unwrap_or_default();
                for (name, d) in inner {
                    add_time(&mut stats.loop_profile, name, d);
                }
            }
            stats.steps += done? as usize;
            if let Some(t) = t {
                let name = s.op.name();
                let d = t.elapsed();
                add_time(&mut stats.profile, name, d);
                let node = g.node(s.node);
                stats.steps_profile.push(StepTime {
                    op: name,
                    ty: type_str(node.dtype, &node.shape),
                    macs: macs_of(g, s.node),
                    time: d,
                });
            }
        }
        Ok(())
    }

    /// Runs the kernel steps as a dataflow graph on the rayon pool.
    fn run_dataflow(&self, st: &SharedSlots, stats: &mut RunStats) -> Result<()> {
        let kernels = &AtomicU32::new(0);
        rayon::in_place_scope(|scope| {
            for (i, s) in self.steps.iter().enumerate() {
                if is_source(s) {
                    for &c in &s.consumers {
                        if st.pending[c].fetch_sub(1, Ordering::AcqRel) == 1 {
                            scope.spawn(move |scope| self.task(scope, c, st, kernels));
                        }
                    }
                } else if s.inputs.is_empty() {
                    scope.spawn(move |scope| self.task(scope, i, st, kernels));
                }
            }
        });
        stats.steps += kernels.load(Ordering::Relaxed) as usize;
        match lock(&st.error).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Runs step `i` as a rayon task, then continues with one consumer it made ready
    /// and spawns the others.
    fn task<'s>(
        &'s self,
        scope: &rayon::Scope<'s>,
        mut i: usize,
        st: &'s SharedSlots,
        kernels: &'s AtomicU32,
    ) {
        loop {
            if st.failed.load(Ordering::Acquire) {
                return;
            }
            match with_pool(&self.pool, || self.exec(i, st)) {
                Ok(k) => {
                    kernels.fetch_add(k as u32, Ordering::Relaxed);
                }
                Err(e) => {
                    let mut slot = lock(&st.error);
                    if slot.is_none() {
                        *slot = Some(e);
                    }
                    st.failed.store(true, Ordering::Release);
                    return;
                }
            }
            let mut next = None;
            let chained = self.steps[i].next_collective;
            for &c in self.steps[i].consumers.iter().chain(chained.iter()) {
                if st.pending[c].fetch_sub(1, Ordering::AcqRel) == 1 {
                    match next {
                        None => next = Some(c),
                        Some(_) => scope.spawn(move |scope| self.task(scope, c, st, kernels)),
                    }
                }
            }
            match next {
                Some(c) => i = c,
                None => return,
            }
        }
    }

    /// Computes step `i` from its operands, stores it, and releases operands whose last
    /// consumer it was. Returns whether a kernel ran.
    fn exec<S: Slots>(&self, i: usize, st: &S) -> Result<bool> {
        if !S::PARALLEL {
            if let Some(g) = self.groups.of_step[i] {
                let g = &self.groups.groups[g as usize];
                // the group ran at its seed's place
                return match g.members[0] == i {
                    true => self.exec_group(g, st),
                    false => Ok(false),
                };
            }
        }
        let s = &self.steps[i];
        let node = self.graph.node(s.node);
        for &o in &s.inputs {
            if self.steps[o].op.is_collective() {
                self.finish_collective(o, st, true)?;
            }
        }
        let (v, kernel) = match s.op {
            Op::Cond(_) | Op::While(_) | Op::Scan(_) => {
                let guards = read_inputs(s, st);
                let args: SmallVec<[&Data; 4]> =
                    s.operands.iter().map(|&o| operand(s, &guards, o)).collect();
                let region = self.regions[i].as_ref().expect("planned with the step");
                let results = region.run(&args)?;
                for &(k, g) in &self.gets[i] {
                    let r = results.get(k as usize).cloned().ok_or_else(|| {
                        Error::Graph(format!("{} has no result {k}", s.op.name()))
                    })?;
                    st.set(g, r);
                }
                // results no `get` reads go back to the pool they were taken from (the
                // ones handed out are shared now, and stay with their readers)
                for r in results {
                    self.pool.recycle(r);
                }
                // the tuple itself holds nothing
                (
                    Data::I64(ndarray::ArrayD::zeros(ndarray::IxDyn(&[0])).into_shared()),
                    true,
                )
            }
            Op::Get(_) => {
                let v = st.take(i).ok_or_else(|| {
                    Error::Graph("get: its control-flow op stored no result".into())
                })?;
                (v, false)
            }
            Op::AllReduce(r) => {
                let guards = read_inputs(s, st);
                let x = operand(s, &guards, s.operands[0]);
                if s.nothing_to_overlap {
                    // run it now, blocking: its value is there before the next step
                    // (a consumer's `finish_collective` finds nothing pending)
                    let v = all_reduce_now(s, node, x, r)?;
                    drop(guards);
                    st.set(i, v);
                } else {
                    // start it; the value arrives while later steps run
                    let p = comm::start_all_reduce(x, r);
                    drop(guards);
                    st.put_pending(i, p);
                }
                self.release_operands(s, st);
                return Ok(true);
            }
            Op::Assign(_) => (
                st.get(s.operands[0]).clone().expect("operand computed"),
                false,
            ),
            Op::Fused(_) => {
                // Overwrite the operand the memory plan names when this step is its
                // last consumer (and it appears once among the operands).
                let mut out = OutBuf::Fresh;
                let planned =
                    self.memory.in_place[i].filter(|_| !S::PARALLEL || s.in_place_any_order);
                if let Some(k) = planned {
                    let o = s.operands[k];
                    let once = s.operands.iter().filter(|&&p| p == o).count() == 1;
                    if once && st.uses(o) == 1 {
                        if let Some(d) = st.take(o) {
                            out = OutBuf::Operand(k, d);
                        }
                    }
                }
                let taken = match out {
                    OutBuf::Operand(k, _) => Some(k),
                    _ => None,
                };
                let guards = read_inputs(s, st);
                let args: SmallVec<[Option<&Data>; 4]> = s
                    .operands
                    .iter()
                    .enumerate()
                    .map(|(k, &o)| (taken != Some(k)).then(|| operand(s, &guards, o)))
                    .collect();
                let program = self.programs[i].as_ref().expect("compiled at plan time");
                (program.run(&args, out), true)
            }
            op => {
                let guards = read_inputs(s, st);
                let args: SmallVec<[&Data; 4]> =
                    s.operands.iter().map(|&o| operand(s, &guards, o)).collect();
                // a `concat` that is a scan's stacked row: written in place (see
                // `Plan::run_into`)
                let in_place = match op {
                    Op::Concat { axis } => st
                        .dest(i)
                        .filter(|d| d.fits(node.dtype, &node.shape))
                        .and_then(|d| {
                            super::control::concat_into(&args, axis as usize, &node.shape, &d)
                        }),
                    _ => None,
                };
                let v = match in_place {
                    Some(v) => v,
                    None => kernel(s, node, &args)?,
                };
                (v, true)
            }
        };
        self.check_finite(i, &v)?;
        st.set(i, v);
        self.release_operands(s, st);
        Ok(kernel)
    }

    /// Runs step group `g` (in order, at its seed's place): one loop computes every
    /// member's value.
    fn exec_group<S: Slots>(&self, g: &group::Group, st: &S) -> Result<bool> {
        let guards: SmallVec<[S::Ref<'_>; 8]> = g.params.iter().map(|&p| st.get(p)).collect();
        let args: SmallVec<[Option<&Data>; 8]> = (guards.iter())
            .map(|r| {
                Some(
                    r.as_ref()
                        .expect("a group's operands are computed before it"),
                )
            })
            .collect();
        let dests: SmallVec<[Option<Dest>; 8]> = g.members.iter().map(|&m| st.dest(m)).collect();
        let outs = g.program.run_all(&args, &dests);
        drop(args);
        drop(guards);
        // the further outputs are the members' values but the last's, then the result
        for (&m, v) in g.members.iter().zip(outs) {
            self.check_finite(m, &v)?;
            st.set(m, v);
        }
        for &m in &g.members {
            self.release_operands(&self.steps[m], st);
        }
        Ok(true)
    }

    /// With `check_numerics` on, an error naming step `i`'s op, type and source line if
    /// its value `v` holds a NaN or an infinity.
    fn check_finite(&self, i: usize, v: &Data) -> Result<()> {
        if crate::debugging::check_numerics_enabled() {
            if let Some((k, x)) = v.first_non_finite() {
                let node = self.graph.node(self.steps[i].node);
                let ty = type_str(node.dtype, &node.shape);
                return Err(Error::non_finite(
                    self.steps[i].op.name(),
                    k,
                    x,
                    ty,
                    node.loc,
                ));
            }
        }
        Ok(())
    }

    /// Waits for collective step `o` if it is still running and stores its value.
    /// `needed`: a consumer is about to read it (so it must be there).
    fn finish_collective<S: Slots>(&self, o: usize, st: &S, needed: bool) -> Result<()> {
        let finished = st.finish_pending(o, |p| {
            p.wait().map_err(|msg| {
                let node = self.graph.node(self.steps[o].node);
                Error::op_in_graph(self.steps[o].op.name(), msg, node.loc)
            })
        })?;
        if !finished && needed && st.get(o).is_none() {
            return Err(Error::Graph(
                "all_reduce: the collective failed in another step of this run".into(),
            ));
        }
        Ok(())
    }

    /// Releases the operands of step `s` whose last consumer it was.
    fn release_operands<S: Slots>(&self, s: &Step, st: &S) {
        for &o in &s.inputs {
            if st.used(o) {
                match st.take(o) {
                    // the caller's argument: its buffer is the caller's, never the pool's
                    Some(d) if matches!(self.steps[o].op, Op::Input(_)) => drop(d),
                    Some(d) => st.release(d, &self.pool),
                    None => {}
                }
            }
        }
    }
}

/// Step `s`'s op evaluated on `args` (an [`Op::is_kernel`] op other than a collective).
fn kernel(s: &Step, node: &Node, args: &[&Data]) -> Result<Data> {
    (s.op.eval(args, &node.shape)).map_err(|msg| Error::op_in_graph(s.op.name(), msg, node.loc))
}

/// All-reduce step `s` of `x`, blocking.
fn all_reduce_now(s: &Step, node: &Node, x: &Data, r: comm::ReduceOp) -> Result<Data> {
    comm::all_reduce(x, r).map_err(|msg| Error::op_in_graph(s.op.name(), msg, node.loc))
}

/// An error unless input `k` of a call, `d`, has the type of its input node.
fn check_input(k: usize, d: &Data, node: &Node) -> Result<()> {
    if d.dtype() != node.dtype || !same_shape(d.dims(), &node.shape) {
        return Err(Error::Function(format!(
            "input {k} is {}, the graph expects {}",
            type_str(d.dtype(), &d.shape()),
            type_str(node.dtype, &node.shape)
        )));
    }
    Ok(())
}

/// Whether a step is bound before the kernels run (input, constant, variable read).
fn is_source(s: &Step) -> bool {
    matches!(s.op, Op::Input(_) | Op::Const | Op::ReadVar(_))
}

/// Borrows of step `s`'s distinct operands (in `s.inputs` order). A slot is only
/// written by its producer (before any reader runs) and by whoever takes it at its
/// last use, which no reader can be waiting for, so holding these never blocks a
/// writer.
fn read_inputs<'a, S: Slots>(s: &Step, st: &'a S) -> SmallVec<[S::Ref<'a>; 4]> {
    s.inputs.iter().map(|&o| st.get(o)).collect()
}

/// Whether step `i` depends (through its operands, transitively) on every step in
/// `ancestors`. Steps are in topological order, so the search never looks below the
/// smallest of them.
fn descends_from_all(steps: &[Step], i: usize, ancestors: &[usize]) -> bool {
    let Some(&lo) = ancestors.iter().min() else {
        return true;
    };
    let mut seen = vec![false; i + 1 - lo];
    let mut stack = vec![i];
    while let Some(j) = stack.pop() {
        for &o in steps[j].inputs.iter().filter(|&&o| o >= lo) {
            if !std::mem::replace(&mut seen[o - lo], true) {
                stack.push(o);
            }
        }
    }
    ancestors.iter().all(|&a| seen[a - lo])
}

/// Reorders a topological `order` so collectives start as early and are waited for as
/// late as possible: every node that does not wait for a collective (directly or
/// through its operands) keeps its relative order, each such collective moves right
/// after its last operand, and the nodes that wait come last, in their relative order.
/// The result is still topological and depends only on the graph, so every rank gets
/// the same one. A graph without collectives keeps `order`.
fn issue_collectives_early(g: &Graph, order: Vec<NodeId>) -> Vec<NodeId> {
    if !order.iter().any(|&n| g.node(n).op.is_collective()) {
        return order;
    }
    let pos: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let mut waits = vec![false; order.len()];
    let mut early: Vec<(usize, bool, usize)> = Vec::new();
    for (i, &n) in order.iter().enumerate() {
        let operands = g.operands(n);
        waits[i] = operands
            .iter()
            .any(|o| waits[pos[o]] || g.node(*o).op.is_collective());
        if !waits[i] {
            early.push(match g.node(n).op.is_collective() {
                true => (operands.iter().map(|o| pos[o]).max().unwrap_or(0), true, i),
                false => (i, false, i),
            });
        }
    }
    early.sort_unstable();
    let late = (0..order.len()).filter(|&i| waits[i]);
    early
        .iter()
        .map(|&(_, _, i)| i)
        .chain(late)
        .map(|i| order[i])
        .collect()
}

/// Operand `o` of step `s`, from the borrows of [`read_inputs`] (an operand taken
/// for in-place use is never looked up).
fn operand<'a, G: Deref<Target = Option<Data>>>(s: &Step, guards: &'a [G], o: usize) -> &'a Data {
    // `inputs` is sorted
    let k = s.inputs.binary_search(&o).expect("operand is an input");
    guards[k].as_ref().expect("operand computed")
}

/// A value slot of a run's state that this thread alone holds (no locking).
fn slot_mut(m: &mut RwLock<Option<Data>>) -> &mut Option<Data> {
    m.get_mut().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

/// Locks a value slot (a poisoned lock only means another step panicked; the slot
/// itself is still a plain `Option`).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs of one plan from several threads at once: each takes a run state (the one in
    /// `spare`, else one of `states`, else a new one) and puts it back (displacing
    /// another into `states`); every run computes its own inputs' values, and afterwards
    /// the slot holds one state and `states` the rest, none lost or shared.
    #[test]
    fn concurrent_runs_of_one_plan_each_get_their_own_state() {
        let g = crate::ir::parse(
            "graph(%0: f32[4]) {
  %1 = exp %0 : f32[4]
  %2 = add %1, %0 : f32[4]
  return %2
}",
        )
        .unwrap();
        let plan = Plan::new(g).unwrap();
        let expect = |k: usize| -> Vec<f32> {
            (0..4)
                .map(|i| (k + i) as f32 * 0.125)
                .map(|x| crate::exec::kernels::fastmath::exp(x) + x)
                .collect()
        };
        std::thread::scope(|s| {
            for t in 0..4 {
                let plan = &plan;
                s.spawn(move || {
                    for r in 0..200 {
                        let k = (t * 200 + r) % 8;
                        let x: Vec<f32> = (0..4).map(|i| (k + i) as f32 * 0.125).collect();
                        let x = Data::F32(
                            ndarray::ArrayD::from_shape_vec(vec![4], x)
                                .unwrap()
                                .into_shared(),
                        );
                        let out = plan.run(&[&x], &mut RunStats::default()).unwrap();
                        assert_eq!(
                            out[0].to_f64_vec(),
                            expect(k).iter().map(|&v| v as f64).collect::<Vec<_>>()
                        );
                    }
                });
            }
        });
        let kept = plan.spare.take().is_some() as usize + lock(&plan.states).len();
        assert!(
            (1..=4).contains(&kept),
            "{kept} states kept after 4 concurrent callers"
        );
    }

    /// `%3 = exp %2` reads `%2` too, so `%4` may overwrite `%2` in place only where
    /// `%3` has run first: in order always, in a dataflow run only when `%4` depends on
    /// `%3` (the second graph), never by luck of timing.
    #[test]
    fn parallel_runs_overwrite_in_place_only_after_every_other_reader() {
        let text = |last: &str| {
            format!(
                "graph(%0: f32[8]) {{
  %1 = neg %0 : f32[8]
  %2 = exp %1 : f32[8]
  %3 = exp %2 : f32[8]
  %4 = fused {last} : f32[8]
    #0 = neg $0 : f32[8]
  %5 = add %3, %4 : f32[8]
  return %5
}}"
            )
        };
        let free = Plan::new(crate::ir::parse(&text("%2")).unwrap()).unwrap();
        let fused = |p: &Plan| p.steps.iter().position(|s| matches!(s.op, Op::Fused(_)));
        let i = fused(&free).unwrap();
        assert!(free.memory.in_place[i].is_some(), "{:?}", free.memory);
        assert!(!free.steps[i].in_place_any_order);
        // `%4` now reads `%2` through `%3`'s result as well: `%3` is its ancestor
        let chained = text("%2, %3").replace("#0 = neg $0", "#0 = add $0, $1");
        let after = Plan::new(crate::ir::parse(&chained).unwrap()).unwrap();
        let i = fused(&after).unwrap();
        assert!(after.memory.in_place[i].is_some(), "{:?}", after.memory);
        assert!(after.steps[i].in_place_any_order);
    }

    /// A fused product with an epilogue counts as the product it is in the plan's work,
    /// so that a step of such products (W3's) is scheduled as the big graph it is.
    #[test]
    fn a_fused_product_counts_its_multiply_adds_in_the_plans_work() {
        let text = "graph(%0: f32[256,1024], %1: f32[1024,1024], %2: f32[1024]) {
  %3 = const 0.0 : f32[]
  %4 = fused %0, %1, %2, %3 : f32[256,1024]
    #0 = matmul $0, $1 : f32[256,1024]
    #1 = add #0, $2 : f32[256,1024]
    #2 = maximum #1, $3 : f32[256,1024]
  return %4
}";
        let plan = Plan::new(crate::ir::parse(text).unwrap()).unwrap();
        let macs = 256 * 1024 * 1024;
        assert!(plan.work() >= macs, "{}", plan.work());
        assert!(plan.work() >= INTER_OP_MIN_WORK, "{}", plan.work());
        // the same product unfused counts the same multiply-adds
        let unfused = "graph(%0: f32[256,1024], %1: f32[1024,1024]) {
  %2 = matmul %0, %1 : f32[256,1024]
  return %2
}";
        let plan = Plan::new(crate::ir::parse(unfused).unwrap()).unwrap();
        assert!(plan.work() >= macs, "{}", plan.work());
    }

    /// A plan of one op on its inputs runs without a run state, with the bits of a run
    /// with one (profiling takes that path), its operands in operand order, and checks
    /// its inputs' types; any more (a second step, a constant, a variable, a second
    /// output) plans a run state.
    #[test]
    fn a_plan_of_one_op_on_its_inputs_runs_without_a_run_state() {
        let text = "graph(%0: f32[4], %1: f32[4]) {
  %2 = sub %1, %0 : f32[4]
  return %2
}";
        let plan = Plan::new(crate::ir::parse(text).unwrap()).unwrap();
        assert_eq!(plan.direct.as_ref().map(|d| &d.args[..]), Some(&[1, 0][..]));
        let data = |v: [f32; 4]| Data::F32(ndarray::arr1(&v).into_dyn().into_shared());
        let (a, b) = (data([1.0, 2.0, 3.0, 4.0]), data([0.5, 0.25, 8.0, -1.0]));
        let mut stats = RunStats::default();
        let direct = plan.run(&[&a, &b], &mut stats).unwrap();
        assert_eq!(direct[0].to_f64_vec(), [-0.5, -1.75, 5.0, -5.0]);
        assert_eq!((stats.steps, stats.parallel), (1, false));
        assert!(
            plan.spare.take().is_none(),
            "the direct run took a run state"
        );
        let mut profiled = RunStats {
            collect_profile: true,
            ..RunStats::default()
        };
        let with_state = plan.run(&[&a, &b], &mut profiled).unwrap();
        assert_eq!(with_state, direct);
        assert_eq!(profiled.profile.len(), 1);
        assert!(plan.spare.take().is_some());
        let short = Data::F32(ndarray::arr1(&[1.0f32; 3]).into_dyn().into_shared());
        let e = plan.run(&[&a, &short], &mut stats).unwrap_err().to_string();
        assert!(
            e.contains("input 1 is f32[3], the graph expects f32[4]"),
            "{e}"
        );
        for not_direct in [
            "graph(%0: f32[4]) {\n  %1 = exp %0 : f32[4]\n  %2 = add %1, %0 : f32[4]\n  return %2\n}",
            "graph(%0: f32[4]) {\n  %1 = const 2.0 : f32[]\n  %2 = mul %0, %1 : f32[4]\n  return %2\n}",
            "graph(%0: f32[4]) {\n  %1 = exp %0 : f32[4]\n  return %1, %1\n}",
            "graph(%0: f32[4]) {\n  return %0\n}",
        ] {
            let plan = Plan::new(crate::ir::parse(not_direct).unwrap()).unwrap();
            assert!(plan.direct.is_none(), "{not_direct}");
        }
    }
}
