//! Keeping the rayon pool's other workers awake through a stretch of small forks.
//!
//! A loop body whose products split in two ([`SPLIT_GEMM_MIN`]) forks once per
//! product, with tens of microseconds of elementwise work between forks. That is long
//! enough for an idle rayon worker to go to sleep, and waking it again took longer on
//! the 2-core Zen 5 VM than the half product it was woken for (64x128x512: 86 µs on
//! one core, 45 µs split back to back, ≈100 µs on average split with 30 µs of other
//! work between the products). [`with_workers_awake`] parks one job on each other
//! worker for the duration of the loop: it takes any job that appears in the pool
//! (the other half of a split product) as soon as it appears, and spins with the CPU's
//! pause hint in between.
//!
//! [`SPLIT_GEMM_MIN`]: crate::exec::kernels::gemm::SPLIT_GEMM_MIN

use rayon::Yield;
use std::sync::atomic::{AtomicBool, Ordering};

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
    if threads < 2 {
        return f();
    }
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
                        std::hint::spin_loop();
                    }
                }
            });
        }
        let r = f();
        done.store(true, Ordering::Release);
        r
    })
}
