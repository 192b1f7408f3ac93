//! Regression tests for the hardening items of issue 10 owned by tracing, nn and data:
//! failed traces, the trace cache, concurrent variable updates, checkpoints, `fit` and
//! `shuffle` misuse, and gzip bombs.

mod common;

use common::TempDir;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tapeflow::data::idx::read_idx_gz;
use tapeflow::data::Dataset;
use tapeflow::nn::{
    load_variables, save_variables, Dense, MeanSquaredError, Model, Sequential, SGD,
};
use tapeflow::trace::DEFAULT_CACHE_SIZE;
use tapeflow::{function, Error, Tensor, Variable};

// ---------------------------------------------------------------------------------------
// An allocator that records the largest allocation made by the current thread while
// `TRACK` is set on it (thread-local, so other tests running in parallel do not count).

struct Tracking;

thread_local! {
    static TRACK: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator unchanged; only records sizes.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note(l.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        note(new);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, new) }
    }
}

fn note(size: usize) {
    let _ = TRACK.try_with(|t| {
        if t.get() {
            let _ = LARGEST.try_with(|m| m.set(m.get().max(size)));
        }
    });
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// Runs `f` and returns its result with the largest single allocation it made.
fn largest_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|m| m.set(0));
    TRACK.with(|t| t.set(true));
    let r = f();
    TRACK.with(|t| t.set(false));
    (r, LARGEST.with(|m| m.get()))
}

// ---------------------------------------------------------------------------------------
// A logger that keeps warnings, to check the retrace warning.

struct Capture(Mutex<Vec<String>>);

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            self.0.lock().unwrap().push(r.args().to_string());
        }
    }
    fn flush(&self) {}
}

static LOGGER: Capture = Capture(Mutex::new(Vec::new()));

fn warnings() -> Vec<String> {
    let _ = log::set_logger(&LOGGER).map(|_| log::set_max_level(log::LevelFilter::Warn));
    LOGGER.0.lock().unwrap().clone()
}

fn scalar_of(v: &Variable) -> f32 {
    v.value().to_vec_f32().unwrap()[0]
}

// ---------------------------------------------------------------------------------------
// Item 2: a panic while tracing leaves the function usable.

#[test]
fn a_panic_while_tracing_does_not_poison_the_function() {
    let f = function(|x: &Tensor| {
        if x.shape()[0] == 3 {
            panic!("the closure panics for length 3");
        }
        Ok(x * 2.0)
    })
    .reduce_retracing(false);
    f.call(&Tensor::vec(&[1.0f32])).unwrap();
    for round in 1..=2 {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            f.call(&Tensor::zeros(&[3]))
        }));
        let msg = r.expect_err("the panic reaches the caller");
        assert_eq!(
            msg.downcast_ref::<&str>(),
            Some(&"the closure panics for length 3")
        );
        // still usable: no PoisonError anywhere
        assert_eq!(f.trace_count(), round);
        assert_eq!(f.cached_count(), round);
        let y = f.call(&Tensor::vec(&[1.0f32, 2.0])).unwrap();
        assert_eq!(y.to_vec_f32().unwrap(), [2.0, 4.0]);
    }
    assert_eq!(f.trace_count(), 2);
    // the thread's trace context was unwound too: eager ops run eagerly
    assert_eq!((Tensor::scalar(1.0f32) + 1.0).to_vec_f32().unwrap(), [2.0]);
}

// ---------------------------------------------------------------------------------------
// Item 16: a bounded trace cache, a retrace warning, and running while another traces.

#[test]
fn the_trace_cache_keeps_the_most_recently_used_signatures() {
    // (concrete traces: with `reduce_retracing` one symbolic trace would serve them all)
    let f = function(|x: &Tensor| Ok(x * 2.0))
        .reduce_retracing(false)
        .cache_size(3);
    for n in 1..=6 {
        f.call(&Tensor::zeros(&[n])).unwrap();
    }
    assert_eq!((f.trace_count(), f.cached_count()), (6, 3));
    // 4, 5, 6 are cached; using 4 makes 5 the least recently used
    f.call(&Tensor::zeros(&[4])).unwrap();
    assert_eq!(f.trace_count(), 6);
    f.call(&Tensor::zeros(&[7])).unwrap(); // evicts 5
    f.call(&Tensor::zeros(&[4])).unwrap();
    f.call(&Tensor::zeros(&[6])).unwrap();
    assert_eq!(f.trace_count(), 7);
    f.call(&Tensor::zeros(&[5])).unwrap(); // traced again
    assert_eq!((f.trace_count(), f.cached_count()), (8, 3));

    let g = function(|x: &Tensor| Ok(x.sum_all())).reduce_retracing(false);
    for n in 1..=DEFAULT_CACHE_SIZE + 6 {
        g.call(&Tensor::zeros(&[n])).unwrap();
    }
    assert_eq!(g.cached_count(), DEFAULT_CACHE_SIZE);
}

#[test]
fn frequent_retracing_logs_a_warning_naming_the_change() {
    let f = function(|x: &Tensor| Ok(x * 3.0)).reduce_retracing(false);
    f.call(&Tensor::zeros(&[32, 7])).unwrap();
    f.call(&Tensor::zeros(&[32, 7])).unwrap();
    let ours = |w: &Vec<String>| -> Vec<String> {
        w.iter().filter(|m| m.contains(",7]")).cloned().collect()
    };
    assert!(ours(&warnings()).is_empty());
    for n in 1..=4 {
        f.call(&Tensor::zeros(&[n, 7])).unwrap();
    }
    assert!(ours(&warnings()).is_empty(), "{:?}", warnings()); // 4 of the last 6
    f.call(&Tensor::zeros(&[16, 7])).unwrap(); // 5 of the last 7
    let w = ours(&warnings());
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("5 of the last 7 calls retraced: argument 0 changed f32[4,7] → f32[16,7]")
            && w[0].contains("tests/robust.rs"),
        "{}",
        w[0]
    );
}

#[test]
fn compiled_signatures_run_while_another_signature_traces() {
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (started_tx, go_rx) = (Mutex::new(started_tx), Mutex::new(go_rx));
    let released = Arc::new(AtomicUsize::new(0));
    let r2 = released.clone();
    let f = function(move |x: &Tensor| {
        if x.shape()[0] == 2 {
            started_tx.lock().unwrap().send(()).unwrap();
            // hold this trace until the other thread has run a compiled call (or give up)
            if go_rx
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(20))
                .is_ok()
            {
                r2.fetch_add(1, Ordering::SeqCst);
            }
        }
        Ok(x + 1.0)
    })
    .reduce_retracing(false);
    f.call(&Tensor::vec(&[1.0f32])).unwrap();
    std::thread::scope(|s| {
        let f = &f;
        let tracer = s.spawn(|| f.call(&Tensor::vec(&[1.0f32, 2.0])).unwrap());
        let waiter = s.spawn(move || {
            started_rx.recv().unwrap();
            // another caller of the signature being traced waits for that trace
            f.call(&Tensor::vec(&[5.0f32, 6.0])).unwrap()
        });
        // the first call's trace is in progress; a compiled signature runs meanwhile
        let y = f.call(&Tensor::vec(&[3.0f32])).unwrap();
        assert_eq!(y.to_vec_f32().unwrap(), [4.0]);
        go_tx.send(()).unwrap();
        assert_eq!(tracer.join().unwrap().to_vec_f32().unwrap(), [2.0, 3.0]);
        assert_eq!(waiter.join().unwrap().to_vec_f32().unwrap(), [6.0, 7.0]);
    });
    assert_eq!(
        released.load(Ordering::SeqCst),
        1,
        "the compiled call waited"
    );
    assert_eq!(f.trace_count(), 2, "the signature was traced once");
}

// ---------------------------------------------------------------------------------------
// Item 13: concurrent variable updates are never lost.

#[test]
fn eight_threads_incrementing_a_counter_through_one_function_lose_nothing() {
    let counter = Variable::non_trainable("robust_counter", Tensor::scalar(0.0f32));
    let c2 = counter.clone();
    let step = function(move || {
        c2.assign_add(&Tensor::scalar(1.0f32));
        Ok(c2.read())
    });
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                let mut last = 0.0;
                for _ in 0..200 {
                    let v = step.call().unwrap().to_vec_f32().unwrap()[0];
                    assert!(v > last, "a call saw an older value than its previous one");
                    last = v;
                }
            });
        }
    });
    assert_eq!(scalar_of(&counter), 1600.0);
    assert_eq!(step.trace_count(), 1);
}

#[test]
fn eager_assign_add_is_atomic() {
    let v = Variable::non_trainable("robust_eager_counter", Tensor::scalar(0.0f32));
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..200 {
                    v.assign_add(&Tensor::scalar(1.0f32));
                }
            });
        }
    });
    assert_eq!(scalar_of(&v), 1600.0);
}

#[test]
fn functions_sharing_variables_in_opposite_orders_neither_deadlock_nor_lose_updates() {
    let a = Variable::non_trainable("robust_a", Tensor::scalar(0.0f32));
    let b = Variable::non_trainable("robust_b", Tensor::scalar(0.0f32));
    let (a1, b1, a2, b2) = (a.clone(), b.clone(), a.clone(), b.clone());
    // f keeps b == a before and after each call; g moves one unit from a to b
    let f = function(move || {
        a1.assign_add(&Tensor::scalar(1.0f32));
        b1.assign_add(&Tensor::scalar(1.0f32));
        Ok(())
    });
    let g = function(move || {
        b2.assign_add(&Tensor::scalar(1.0f32));
        a2.assign_sub(&Tensor::scalar(1.0f32));
        Ok(&b2.read() - &a2.read())
    });
    std::thread::scope(|s| {
        for t in 0..6 {
            let (f, g) = (&f, &g);
            s.spawn(move || {
                for _ in 0..100 {
                    if t % 2 == 0 {
                        f.call().unwrap();
                    } else {
                        // every call sees a consistent pair: b - a grows by exactly 2 per g call
                        let d = g.call().unwrap().to_vec_f32().unwrap()[0];
                        assert!(d >= 2.0 && d % 2.0 == 0.0, "{d}");
                    }
                }
            });
        }
    });
    assert_eq!(scalar_of(&a), 300.0 - 300.0);
    assert_eq!(scalar_of(&b), 300.0 + 300.0);
}

// ---------------------------------------------------------------------------------------
// Item 5: fit on scalars.

#[test]
fn fit_on_scalar_x_or_y_is_an_err() {
    let model: Model = Sequential::named("robust_fit")
        .add(Dense::new(1).named("robust_fit_dense"))
        .input_shape(&[1])
        .into();
    model
        .compile(MeanSquaredError, SGD::new(1e-3), &[])
        .unwrap();
    let opts = || tapeflow::nn::FitOptions::new(1, 4).verbose(0);
    let s = Tensor::scalar(1.0f32);
    let x = Tensor::zeros(&[4, 1]);
    for (x, y, which) in [(&s, &s, "x"), (&s, &x, "x"), (&x, &s, "y")] {
        match model.fit(x, y, opts()) {
            Err(Error::Invalid(msg)) => {
                assert!(msg.contains(&format!("{which} is a scalar")), "{msg}")
            }
            other => panic!("expected an Err, got {:?}", other.map(|_| ())),
        }
    }
    model.fit(&x, &Tensor::zeros(&[4, 1]), opts()).unwrap();
}

// ---------------------------------------------------------------------------------------
// Item 6: a shuffle buffer larger than the data.

#[test]
fn shuffle_buffers_beyond_the_data_size_are_a_full_shuffle() {
    let x = Tensor::from_vec((0..50).map(|v| v as f32).collect(), &[50]).unwrap();
    let order = |buffer: usize| -> Vec<f32> {
        let ds = Dataset::from_tensor_slices(x.clone())
            .unwrap()
            .shuffle(buffer, 3);
        let (v, largest) =
            largest_allocation(|| ds.iter().flat_map(|t| t.to_vec_f32().unwrap()).collect());
        assert!(
            largest < 1 << 20,
            "buffer {buffer}: allocated {largest} bytes"
        );
        v
    };
    let full = order(50);
    let mut sorted = full.clone();
    sorted.sort_by(f32::total_cmp);
    assert_eq!(sorted, (0..50).map(|v| v as f32).collect::<Vec<_>>());
    assert_ne!(full, sorted);
    for buffer in [51, 1 << 40, usize::MAX] {
        assert_eq!(order(buffer), full, "buffer {buffer}");
    }
}

// ---------------------------------------------------------------------------------------
// Items 10, 11, 12: checkpoints.

fn var(name: &str, v: f32) -> Variable {
    Variable::named(name, Tensor::scalar(v))
}

#[test]
fn loading_matches_names_first_and_a_partial_match_is_an_err() {
    let dir = TempDir::new("names");
    let path = dir.path("ck.safetensors");
    save_variables(&path, &[var("a", 1.0), var("c", 3.0)]).unwrap();

    // `a` is in the file: it must not be overwritten by position with `c`
    let (b, a) = (var("b", 0.0), var("a", 0.0));
    let msg = load_variables(&path, &[b.clone(), a.clone()])
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("has no variable `b`") && msg.contains("1 names match"),
        "{msg}"
    );
    assert_eq!(
        (scalar_of(&b), scalar_of(&a)),
        (0.0, 0.0),
        "nothing assigned"
    );

    // names matching in another order load by name
    let (c, a) = (var("c", 0.0), var("a", 0.0));
    load_variables(&path, &[c.clone(), a.clone()]).unwrap();
    assert_eq!((scalar_of(&c), scalar_of(&a)), (3.0, 1.0));

    // no name matches and the counts agree: by position
    let (x, y) = (var("x", 0.0), var("y", 0.0));
    load_variables(&path, &[x.clone(), y.clone()]).unwrap();
    assert_eq!((scalar_of(&x), scalar_of(&y)), (1.0, 3.0));

    // several missing names are all listed
    let msg = load_variables(&path, &[var("a", 0.0), var("p", 0.0), var("q", 0.0)])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("has no variable `p`, `q`"), "{msg}");
}

#[test]
fn reserved_variable_names_are_rejected_at_save_time() {
    let dir = TempDir::new("reserved");
    let path = dir.path("ck.safetensors");
    for name in ["__metadata__", "two\nlines"] {
        let msg = save_variables(&path, &[var("ok", 1.0), var(name, 2.0)])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("cannot be saved") && msg.contains("rename"),
            "{msg}"
        );
        assert!(!path.exists(), "nothing written");
    }
    assert!(dir.files().is_empty(), "{:?}", dir.files());
}

#[test]
fn concurrent_saves_to_one_path_never_fail_or_tear() {
    let dir = TempDir::new("concurrent");
    let path = dir.path("ck.safetensors");
    let big =
        |v: f32| Variable::named("w", Tensor::full(&[64, 64], v as f64, tapeflow::DType::F32));
    save_variables(&path, &[big(0.0)]).unwrap();
    let failures = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..3 {
            let (path, failures) = (&path, &failures);
            s.spawn(move || {
                for i in 0..40 {
                    let v = big((t * 100 + i) as f32);
                    if let Err(e) = save_variables(path, &[v]) {
                        eprintln!("save failed: {e}");
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
        s.spawn(|| {
            let w = Variable::named("w", Tensor::zeros(&[64, 64]));
            for _ in 0..80 {
                load_variables(&path, std::slice::from_ref(&w)).unwrap();
                let v = w.value().to_vec_f32().unwrap();
                assert!(v.iter().all(|&e| e == v[0]), "a torn checkpoint was read");
            }
        });
    });
    assert_eq!(failures.load(Ordering::SeqCst), 0);
    assert_eq!(dir.files(), ["ck.safetensors"], "no temporary file is left");
}

#[cfg(target_os = "linux")]
#[test]
fn a_save_removes_temporary_files_of_dead_processes() {
    let dir = TempDir::new("stale");
    let path = dir.path("ck.safetensors");
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = dir.path(&format!(".ck.safetensors.tmp-{dead}-0"));
    std::fs::write(&stale, b"half a checkpoint").unwrap();
    let other = dir.path(".other.safetensors.tmp-1-0"); // another file's: left alone
    std::fs::write(&other, b"x").unwrap();
    save_variables(&path, &[var("a", 1.0)]).unwrap();
    assert_eq!(
        dir.files(),
        [".other.safetensors.tmp-1-0", "ck.safetensors"]
    );
}

// ---------------------------------------------------------------------------------------
// Item 14: gzip bombs.

#[test]
fn a_gzip_bomb_is_an_err_without_inflating_it() {
    let dir = TempDir::new("bomb");
    let path = dir.path("bomb.gz");
    // a 1-element IDX header, then 64 MiB of zeros (about 64 KiB compressed)
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&[0, 0, 8, 1, 0, 0, 0, 1, 42]).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..64 {
        gz.write_all(&zeros).unwrap();
    }
    let bytes = gz.finish().unwrap();
    assert!(bytes.len() < 1 << 20, "{}", bytes.len());
    std::fs::write(&path, &bytes).unwrap();

    let (r, largest) = largest_allocation(|| read_idx_gz(&path, None));
    let msg = match r {
        Err(Error::Data(msg)) => msg,
        other => panic!("expected a data error, got {other:?}"),
    };
    assert!(
        msg.contains("bomb.gz")
            && msg.contains("trailing bytes")
            && msg.contains("expected 1 bytes, found at least 2"),
        "{msg}"
    );
    // the whole file is read into memory; nothing near 64 MiB is allocated
    assert!(largest < 4 << 20, "largest allocation {largest} bytes");
}

// ---------------------------------------------------------------------------------------
// Items 8, 9: cross-entropies with extreme logits, and labels that are not integers.

/// `logsumexp(x) - x[label]` in f64.
fn ce_reference(x: &[f32], label: usize) -> f64 {
    let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let s: f64 = x.iter().map(|v| (v - m).exp()).sum();
    m + s.ln() - x[label]
}

fn close(got: f64, want: f64) -> bool {
    got == want || (got - want).abs() <= 1e-6 * want.abs().max(1.0)
}

#[test]
fn crossentropies_are_exact_for_infinite_and_huge_logits() {
    use tapeflow::nn::{CategoricalCrossentropy, Loss, SparseCategoricalCrossentropy};
    let cases: [(&[f32], usize); 6] = [
        (&[0.0, f32::NEG_INFINITY, 1.0], 0),
        (&[0.0, f32::NEG_INFINITY, 1.0], 2),
        (&[3e38, -3e38, 0.0], 0),
        (&[3e38, -3e38, 0.0], 2),
        (&[-3e38, 3e38, -3e38], 1),
        (&[1.0, 2.0, 3.0], 1),
    ];
    let sparse = SparseCategoricalCrossentropy::from_logits(true);
    let dense = CategoricalCrossentropy::from_logits(true);
    let f_sparse = function(move |y: &Tensor, x: &Tensor| sparse.call(y, x));
    let f_dense = function(move |y: &Tensor, x: &Tensor| dense.call(y, x));
    for (row, label) in cases {
        let want = ce_reference(row, label) as f32 as f64;
        assert!(want.is_finite(), "{row:?}");
        let x = Tensor::from_vec(row.to_vec(), &[1, 3]).unwrap();
        let y = Tensor::vec(&[label as i64]);
        let mut onehot = vec![0.0f32; 3];
        onehot[label] = 1.0;
        let t = Tensor::from_vec(onehot, &[1, 3]).unwrap();
        let got = [
            sparse.call(&y, &x).unwrap(),
            f_sparse.call(&y, &x).unwrap(),
            dense.call(&t, &x).unwrap(),
            f_dense.call(&t, &x).unwrap(),
        ];
        for (k, g) in got.iter().enumerate() {
            let g = g.to_scalar().unwrap();
            assert!(
                close(g, want),
                "{row:?} label {label}, way {k}: {g} vs {want}"
            );
        }
    }

    // the gradient stays finite and exact: softmax - onehot, 0 for the -inf logit
    let x = Tensor::from_vec(vec![0.0f32, f32::NEG_INFINITY, 1.0], &[1, 3]).unwrap();
    let tape = tapeflow::GradientTape::new();
    let l = tape.record(|| {
        tape.watch(&x);
        sparse.call(&Tensor::vec(&[0i64]), &x).unwrap()
    });
    let g = tape.gradient(&l, &x).unwrap().to_vec_f64().unwrap();
    let e = 1f64.exp();
    let want = [1.0 / (1.0 + e) - 1.0, 0.0, e / (1.0 + e)];
    for (g, w) in g.iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "{g} vs {w}");
    }
}

#[test]
fn labels_that_are_not_integers_are_errors_eager_and_compiled() {
    use tapeflow::nn::{Loss, SparseCategoricalCrossentropy};
    let loss = SparseCategoricalCrossentropy::from_logits(true);
    let logits = Tensor::zeros(&[3, 4]);
    for (bad, shown) in [(f32::NAN, "NaN"), (2.5, "2.5"), (f32::INFINITY, "inf")] {
        let y = Tensor::vec(&[1.0f32, bad, 0.0]);
        let e = loss.call(&y, &logits).unwrap_err().to_string();
        assert!(
            e.contains(&format!("label {shown} at position 1 is not an integer")),
            "{e}"
        );
    }
    let f = function(move |y: &Tensor, x: &Tensor| loss.call(y, x));
    let ok = f.call(&Tensor::vec(&[1.0f32, 3.0, 0.0]), &logits).unwrap();
    assert!(close(ok.to_scalar().unwrap(), 4f64.ln()));
    for bad in [f32::NAN, 2.5, f32::INFINITY, -0.5] {
        let e = f
            .call(&Tensor::vec(&[1.0f32, bad, 0.0]), &logits)
            .unwrap_err()
            .to_string();
        assert!(e.contains("gather") && e.contains("-1"), "{bad}: {e}");
    }
}
