//! Keeping the rayon pool's other workers awake through a stretch of small forks.
//!
//! A loop body whose products split in two ([`SPLIT_GEMM_MIN`]) forks once per
//! product, with tens of microseconds of elementwise work between forks. That is long
//! enough for an idle rayon worker to go to sleep, and waking it again took longer on
//! the 2-core Zen 5 VM than the half product it was woken for (64x128x512: 86 µs on
//! one core, 45 µs split back to back, ≈100 µs on average split with 30 µs of other
//! work between the products). A plan with big products (run on a worker, see
//! `ON_WORKERS_MIN_MACS`) forks in every such product and convolution, with gaps of
//! the same kind between them. [`with_workers_awake`] parks one job on each other
//! worker for the duration of the loop or the run: it takes any job that appears in
//! the pool (the other half of a split product) as soon as it appears, and spins with
//! the CPU's pause hint in between. Measured on the 2-core VM, alternated binaries:
//! W6 (LSTM) min of 100 steps 14.5 -> 11-12 ms with the loops kept awake (and their
//! products split); the CNN step (W2) min of 150 steps 4.7-5.2 -> 4.4-4.9 ms with the
//! whole run kept awake. The cost is a core spinning while such a run lasts.
//!
//! [`SPLIT_GEMM_MIN`]: crate::exec::kernels::gemm::SPLIT_GEMM_MIN

use rayon::Yield;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

/// Pause hints between two looks for work: a look touches the other workers' queues
/// (shared cache lines the working thread pushes to), so a waiting job looks about
/// once per few hundred nanoseconds rather than back to back.
const IDLE_SPINS: u32 = 16;

thread_local! {
    /// Whether this thread is inside [`with_workers_awake`].
    static AWAKE: Cell<bool> = const { Cell::new(false) };
}

/// Clears [`AWAKE`] when the call ends, also by unwinding.
struct Reset;

impl Drop for Reset {
    fn drop(&mut self) {
        AWAKE.with(|a| a.set(false));
    }
}

/// Whether this thread runs inside [`with_workers_awake`] with other workers waiting
/// (so a fork is cheap).
pub(crate) fn workers_awake() -> bool {
    AWAKE.with(Cell::get)
}

/// Runs `f` on the calling thread while the pool's other workers wait for work
/// without sleeping; only from inside the pool with at least two threads (else `f`
/// just runs).
///
/// A waiting job that ends up on the thread that started it returns at once: it can
/// never hold up `f`, whatever order the pool runs jobs in.
pub(crate) fn with_workers_awake<R>(f: impl FnOnce() -> R) -> R {
    let Some(me) = rayon::current_thread_index() else {
        return f();
    };
    let threads = rayon::current_num_threads();
    if threads < 2 || AWAKE.with(Cell::get) {
        return f(); // a loop inside a run that already keeps them awake
    }
    AWAKE.with(|a| a.set(true));
    let _reset = Reset;
    let done = AtomicBool::new(false);
    let done = &done;
    rayon::in_place_scope(|s| {
        for _ in 1..threads {
            s.spawn(move |_| {
                if rayon::current_thread_index() == Some(me) {
                    return;
                }
                while !done.load(Ordering::Acquire) {
                    if rayon::yield_now() != Some(Yield::Executed) {
                        for _ in 0..IDLE_SPINS {
                            std::hint::spin_loop();
                        }
                    }
                }
            });
        }
        let r = f();
        done.store(true, Ordering::Release);
        r
    })
}
