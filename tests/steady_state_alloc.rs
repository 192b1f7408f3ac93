//! Steady-state compiled calls allocate no tensor buffers: a counting global allocator
//! sees no allocation of 2 KiB or more from the fourth call on of compiled
//! MLP and CNN train steps (every intermediate buffer, im2col scratch and old variable
//! value is recycled through the plan's buffer pool; what is left is bookkeeping of a
//! few dozen bytes), under both schedules; likewise a second derivative whose fused loop
//! runs generated code. Not counted: the `gemm` crate's own
//! per-call packing scratch, which tapeflow cannot hand a buffer to
//! (`in_backend_call`).
//!
//! The same holds for an LSTM train step, whose recurrence is a `scan` (and its
//! gradient a reverse `scan`) run by per-body plans, also where both loops run as two
//! half-batch loops at once.
//!
//! The same holds for one symbolic train step (`f32[b,784]`) called at two batch sizes
//! in turn: each binding keeps its own plan.
//!
//! A small compiled call allocates its result tensors and nothing else.
//!
//! This binary holds a single test so no other test allocates while it counts.

mod common;

use common::{conv_train_step, fake_batch, Mlp};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tapeflow::exec::codegen::Codegen;
use tapeflow::exec::in_backend_call;
use tapeflow::exec::kernels::gemm::gemm;
use tapeflow::exec::{RunStats, Schedule};
use tapeflow::trace::ConcreteFunction;
use tapeflow::{function, Tensor};

/// Allocations at least this big count as buffers. (Below it: bookkeeping such as
/// rayon's 1.5 KiB injector-queue blocks when work enters the pool from outside. The
/// pool's own `fresh_buffers` counter covers the small tensor buffers.)
const BIG: usize = 2048;

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static BIG_ALLOCS: AtomicUsize = AtomicUsize::new(0);
static BIG_BYTES: AtomicUsize = AtomicUsize::new(0);
/// Allocations of any size while `COUNTING` is set.
static ALL_ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let counting = COUNTING.load(Ordering::Relaxed);
        if counting {
            ALL_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        if l.size() >= BIG && counting && !in_backend_call() {
            BIG_ALLOCS.fetch_add(1, Ordering::Relaxed);
            BIG_BYTES.fetch_add(l.size(), Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if new >= BIG && COUNTING.load(Ordering::Relaxed) && !in_backend_call() {
            BIG_ALLOCS.fetch_add(1, Ordering::Relaxed);
            BIG_BYTES.fetch_add(new, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Big allocations, fresh buffers of the plan's pool, and pool misses of the plan and
/// all its body plans ([`Plan::pool_misses`](tapeflow::exec::Plan::pool_misses)), over
/// 3 steady-state runs (after 3 warm-up runs) of `c`'s plan.
fn steady_state(
    c: &ConcreteFunction,
    inputs: &[&Tensor],
    schedule: Schedule,
) -> (usize, usize, usize, usize) {
    let plan = c.plan();
    plan.set_schedule(schedule);
    let data: Vec<_> = inputs.iter().map(|t| t.data().unwrap()).collect();
    // The gemm crate keeps a packing slab per thread, made on the thread's first GEMM;
    // make it on every worker now, whichever of them the warm-up runs happen to use.
    rayon::broadcast(|_| {
        let (a, mut c) = (vec![1.0f32; 256 * 256], vec![0.0f32; 256 * 256]);
        gemm(&a, &a, &mut c, 256, 256, 256, false, false);
    });
    for _ in 0..3 {
        plan.run(&data, &mut RunStats::default()).unwrap();
    }
    BIG_ALLOCS.store(0, Ordering::SeqCst);
    BIG_BYTES.store(0, Ordering::SeqCst);
    let mut stats = RunStats::default();
    let misses = plan.pool_misses();
    COUNTING.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        let out = plan.run(&data, &mut stats).unwrap();
        drop(out);
    }
    COUNTING.store(false, Ordering::SeqCst);
    (
        BIG_ALLOCS.load(Ordering::SeqCst),
        BIG_BYTES.load(Ordering::SeqCst),
        stats.fresh_buffers,
        plan.pool_misses() - misses,
    )
}

fn mlp_step() -> (std::sync::Arc<ConcreteFunction>, Vec<Tensor>) {
    let mlp = Mlp::new(3);
    let (x, y) = fake_batch(256, 4);
    let step = function(move |x: &Tensor, y: &Tensor| mlp.train_step(x, y, 0.01));
    (step.concrete(&[&x, &y]).unwrap(), vec![x, y])
}

/// A train step whose input gradient `dy·W₂ᵀ` multiplies by a transposed weight whose
/// rows are 1 KiB apart (`W₂` is `[512, 256]`): the GEMM copies it transposed first, in
/// column halves on two threads, each half into a buffer of its own from the pool.
fn transposed_weight_step() -> (std::sync::Arc<ConcreteFunction>, Vec<Tensor>) {
    let w = |name: &str, shape: &[usize], seed: u64| {
        tapeflow::Variable::named(
            name,
            Tensor::random_uniform(shape, -0.05, 0.05, seed, tapeflow::DType::F32),
        )
    };
    let (w1, w2) = (w("w1", &[256, 512], 3), w("w2", &[512, 256], 4));
    let x = Tensor::random_uniform(&[128, 256], 0.0, 1.0, 5, tapeflow::DType::F32);
    let step = function(move |x: &Tensor| {
        let tape = tapeflow::GradientTape::new();
        let vars = [w1.clone(), w2.clone()];
        let loss = tape.record(|| {
            let h = x.matmul(&w1.read()).relu();
            (h.matmul(&w2.read()) * 0.01).tanh().sum(&[0, 1], false)
        });
        let grads = tape.gradient(&loss, &vars)?;
        for (v, g) in vars.iter().zip(grads) {
            v.assign_sub(&(g.expect("connected") * 0.1));
        }
        Ok(loss)
    });
    (step.concrete(&[&x]).unwrap(), vec![x])
}

fn cnn_step() -> (std::sync::Arc<ConcreteFunction>, Vec<Tensor>) {
    let (step, x, _) = conv_train_step();
    (step.concrete(&[&x]).unwrap(), vec![x])
}

/// A second derivative whose fused elementwise loop runs as generated code (where a C
/// compiler is there; compiled before counting starts), stored in a variable so that
/// only a scalar escapes.
fn generated_step() -> (std::sync::Arc<ConcreteFunction>, Vec<Tensor>) {
    let x = Tensor::random_uniform(&[300_000], -3.0, 3.0, 5, tapeflow::DType::F32);
    let v = tapeflow::Variable::named("d2", x.clone());
    let step = function(move |x: &Tensor| {
        let outer = tapeflow::GradientTape::new();
        let g = outer.record(|| {
            outer.watch(x);
            let inner = tapeflow::GradientTape::new();
            let y = inner.record(|| {
                inner.watch(x);
                (x.sin() * (-(x * x)).exp()).sum_all()
            });
            inner.gradient(&y, x).map(|g| g.sum_all())
        })?;
        v.assign(&outer.gradient(&g, x)?);
        Ok(x.sum_all())
    });
    let c = step.concrete(&[&x]).unwrap();
    c.plan().set_codegen(Codegen::Force);
    if tapeflow::exec::codegen::compiler_available() {
        assert_eq!(c.plan().generated_steps(), (1, 1), "{}", c.text());
    }
    (c, vec![x])
}

/// An LSTM train step: a forward `scan` and its reverse `scan`, whose bodies run from
/// their own pools iteration after iteration.
fn lstm_step() -> (std::sync::Arc<ConcreteFunction>, Vec<Tensor>) {
    let s = common::lstm_train_step();
    (s.step.concrete(&[&s.x, &s.y]).unwrap(), vec![s.x, s.y])
}

/// A bigger LSTM train step whose forward and reverse loops run as two half-batch loops
/// at once, both halves drawing from the half-batch body's one pool.
fn lstm_row_split_step() -> (std::sync::Arc<ConcreteFunction>, Vec<Tensor>) {
    let s = common::lstm_train_step_sized(128, 64, 4);
    let c = s.step.concrete(&[&s.x, &s.y]).unwrap();
    assert_eq!(c.plan().row_split_scans(), 2, "{}", c.text());
    (c, vec![s.x, s.y])
}

#[test]
fn steady_state_calls_allocate_no_buffers() {
    let cases = [
        ("mlp", mlp_step()),
        ("transposed weight", transposed_weight_step()),
        ("cnn", cnn_step()),
        ("generated", generated_step()),
        ("lstm", lstm_step()),
        ("lstm row split", lstm_row_split_step()),
    ];
    for (name, (c, inputs)) in cases {
        let refs: Vec<&Tensor> = inputs.iter().collect();
        let total = c.plan().total_bytes();
        for schedule in [Schedule::Sequential, Schedule::Parallel] {
            let (allocs, bytes, fresh, _) = steady_state(&c, &refs, schedule);
            assert_eq!(
                (allocs, bytes),
                (0, 0),
                "{name} {schedule:?}: {allocs} allocations of ≥{BIG} B ({bytes} B) in 3 steady-state runs (all values: {total} B)"
            );
            // Only the loss (a scalar output) leaves the pool each run.
            assert_eq!(fresh, 3, "{name} {schedule:?}: fresh pool buffers");
        }
    }
    symbolic_steps_at_alternating_batch_sizes_allocate_no_buffers();
    while_loop_iterations_allocate_no_buffers();
    small_calls_allocate_only_their_results();
}

/// A compiled call of a small function, on the in-order schedule, allocates its
/// results and nothing else: per result tensor its shared header, its array's shared
/// header and its buffer (which leaves the plan's pool with it); no list of values or
/// tensors on the way out (for one to four results), no run state, no argument list.
fn small_calls_allocate_only_their_results() {
    let x = Tensor::random_uniform(&[16], -1.0, 1.0, 11, tapeflow::DType::F32);
    let one = function(|x: &Tensor| Ok(x.exp()));
    let two = function(|x: &Tensor| Ok((x.exp(), x.tanh())));
    one.concrete(&[&x])
        .unwrap()
        .plan()
        .set_schedule(Schedule::Sequential);
    two.concrete(&[&x])
        .unwrap()
        .plan()
        .set_schedule(Schedule::Sequential);
    let per_call = |call: &dyn Fn()| {
        for _ in 0..10 {
            call();
        }
        ALL_ALLOCS.store(0, Ordering::SeqCst);
        COUNTING.store(true, Ordering::SeqCst);
        for _ in 0..100 {
            call();
        }
        COUNTING.store(false, Ordering::SeqCst);
        ALL_ALLOCS.load(Ordering::SeqCst) as f64 / 100.0
    };
    let one_result = per_call(&|| drop(one.call(&x).unwrap()));
    let two_results = per_call(&|| drop(two.call(&x).unwrap()));
    assert_eq!(
        (one_result, two_results),
        (3.0, 6.0),
        "allocations per compiled call of one and of two results"
    );
}

/// `while` loops of 200 iterations over an f32 carry: a `fori_loop` (one op in the
/// graph, its counter tested without the condition's plan) and a `while_loop` whose
/// trip count is an argument (its condition's plan runs every iteration). From the
/// second call on, neither the condition's nor the body's plan draws a buffer their
/// pools do not have, iteration after iteration (`Plan::pool_misses` counts every body's
/// pool; the predicate's one-element buffer is below `BIG`, so only that count sees it).
fn while_loop_iterations_allocate_no_buffers() {
    let x = Tensor::random_uniform(&[1024], -1.0, 1.0, 9, tapeflow::DType::F32);
    let n = Tensor::from(200i64);
    let fori = function(|x: &Tensor, _n: &Tensor| {
        let body = |_: &Tensor, v: &[Tensor]| Ok(vec![&v[0] * 0.5 + 1.0]);
        let out = tapeflow::fori_loop(0, 200, body, std::slice::from_ref(x))?;
        Ok(out[0].sum_all())
    });
    let general = function(|x: &Tensor, n: &Tensor| {
        let out = tapeflow::while_loop(
            |v| Ok(v[0].lt(n)),
            |v| Ok(vec![&v[0] + 1i64, &v[1] * 0.5 + 1.0]),
            &[Tensor::from(0i64), x.clone()],
        )?;
        Ok(out[1].sum_all())
    });
    let loops = [
        ("fori_loop", fori.concrete(&[&x, &n]).unwrap()),
        ("while_loop", general.concrete(&[&x, &n]).unwrap()),
    ];
    for (name, c) in loops {
        assert!(c.text().contains("while["), "{}", c.text());
        for schedule in [Schedule::Sequential, Schedule::Parallel] {
            let (allocs, bytes, _, misses) = steady_state(&c, &[&x, &n], schedule);
            // the loop's sum (a scalar output) leaves the outer pool once per run
            assert_eq!(
                (allocs, bytes, misses),
                (0, 0, 3),
                "{name} {schedule:?}: big allocations and bytes, and pool misses in 3 runs of 200 iterations"
            );
        }
    }
}

/// One symbolic MLP train step (`f32[b,784]`) called through `ConcreteFunction::run` at
/// batch sizes 256 and 100 in turn: each binding has its own plan, made on its first
/// call, and from then on neither allocates.
fn symbolic_steps_at_alternating_batch_sizes_allocate_no_buffers() {
    let mlp = Mlp::new(3);
    let b = tapeflow::Dim::sym("b");
    let step = tapeflow::function_with_signature(
        move |x: &Tensor, y: &Tensor| mlp.train_step(x, y, 0.01),
        &[
            tapeflow::TensorSpec::with_dims(&[b, 784.into()], tapeflow::DType::F32),
            tapeflow::TensorSpec::with_dims(&[b], tapeflow::DType::I64),
        ],
    );
    let batches: Vec<Vec<Tensor>> = [256, 100]
        .iter()
        .map(|&n| {
            let (x, y) = fake_batch(n, n as u64);
            vec![x, y]
        })
        .collect();
    let c = step.concrete(&[&batches[0][0], &batches[0][1]]).unwrap();
    rayon::broadcast(|_| {
        let (a, mut c) = (vec![1.0f32; 256 * 256], vec![0.0f32; 256 * 256]);
        gemm(&a, &a, &mut c, 256, 256, 256, false, false);
    });
    for schedule in [Schedule::Sequential, Schedule::Parallel] {
        for args in &batches {
            let refs: Vec<&Tensor> = args.iter().collect();
            c.plan_for(&refs).unwrap().set_schedule(schedule);
        }
        for _ in 0..3 {
            for args in &batches {
                c.run(args).unwrap();
            }
        }
        BIG_ALLOCS.store(0, Ordering::SeqCst);
        BIG_BYTES.store(0, Ordering::SeqCst);
        COUNTING.store(true, Ordering::SeqCst);
        for _ in 0..3 {
            for args in &batches {
                drop(c.run(args).unwrap());
            }
        }
        COUNTING.store(false, Ordering::SeqCst);
        let (allocs, bytes) = (
            BIG_ALLOCS.load(Ordering::SeqCst),
            BIG_BYTES.load(Ordering::SeqCst),
        );
        assert_eq!(
            (allocs, bytes),
            (0, 0),
            "symbolic mlp {schedule:?}: {allocs} allocations of ≥{BIG} B ({bytes} B) in 6 steady-state runs at batch 256 and 100"
        );
    }
    assert_eq!((step.trace_count(), c.instance_count()), (1, 2));
}
