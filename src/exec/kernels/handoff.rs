//! Handing half of a split product from a thread outside the rayon pool to a worker.
//!
//! A product that splits in two ([`SPLIT_GEMM_MIN`]) runs its halves with
//! `rayon::join` when it is called from inside the pool. Called from outside (a small
//! plan runs on the caller's thread, and so does every eager op), a `join` would move
//! the whole product into the pool and block the caller: two thread hand-overs per
//! product, more than the half it saves (measured on stop 29: W1 on a worker was
//! bimodal, 121–300 µs against 165–177 on the caller). Here the caller keeps its half
//! and only *offers* the other one in a one-slot mailbox; a pool worker that lingers
//! after each offer takes it if it comes in time, and the caller takes it back and
//! computes it itself if not. So a late or busy worker costs nothing but the offer,
//! and the caller never waits for a worker that has not started its half.
//!
//! The worker ([`helper`]) is an ordinary rayon job, started by the first offer when
//! none is running. It spins with the CPU's pause hint and runs any other pool job that
//! appears meanwhile (`rayon::yield_now`), and it ends once [`LINGER`] has passed
//! without an offer: back-to-back training steps find it awake, and an idle program
//! has no spinning core a millisecond after its last product (as OpenMP runtimes keep
//! their threads spinning for a while after a parallel region).
//!
//! Invariants:
//! - The halves, and so the result bits, are the same whoever computes them.
//! - An offer lives on the caller's stack; the caller returns only after taking it
//!   back or seeing the helper finish it, also when its own half panics (the guard's
//!   `Drop`), so the helper never touches a dead offer.
//!
//! [`SPLIT_GEMM_MIN`]: crate::exec::kernels::gemm::SPLIT_GEMM_MIN

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long the helper keeps looking for offers after the last one. A training loop's
/// steps come far closer together than this; a millisecond of one core is its cost
/// when the program stops multiplying.
pub(crate) const LINGER: Duration = Duration::from_millis(1);

/// Pause hints between two looks at the mailbox.
const SPINS: u32 = 16;

/// Pause hints a caller spends waiting for the helper to finish the half it took
/// before it yields its core at each further look: some tens of microseconds (a pause
/// takes 15–40 ns, by CPU), about as long as the longest half that splits this way.
const WAIT_SPINS: u32 = 1 << 12;

/// The type-erased part of an [`Offer`], which the mailbox points to.
#[repr(C)]
struct Header {
    /// Runs the offer's closure (`*const Header` is the offer's address).
    call: unsafe fn(*const Header),
    /// Set by the helper as its last access to the offer.
    done: AtomicBool,
    /// Whether the closure panicked on the helper.
    panicked: AtomicBool,
}

/// A half offered to the helper: the header first, so a pointer to it is one to the
/// whole offer.
#[repr(C)]
struct Offer<F> {
    header: Header,
    f: UnsafeCell<Option<F>>,
}

impl<F: FnOnce() + Send> Offer<F> {
    fn new(f: F) -> Self {
        Offer {
            header: Header {
                call: Self::call,
                done: AtomicBool::new(false),
                panicked: AtomicBool::new(false),
            },
            f: UnsafeCell::new(Some(f)),
        }
    }

    /// Runs the closure of the offer at `h` on the helper, then marks it done.
    ///
    /// # Safety
    /// `h` points to the header of a live `Offer<F>` that the caller took out of the
    /// mailbox (so nothing else runs or reads its closure meanwhile).
    unsafe fn call(h: *const Header) {
        // SAFETY: the header is the offer's first field (`repr(C)`), and the caller
        // owns the closure now (the contract above)
        let offer = unsafe { &*(h as *const Offer<F>) };
        let f = unsafe { (*offer.f.get()).take() };
        if let Some(f) = f {
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_ok();
            offer.header.panicked.store(!ok, Ordering::Relaxed);
        }
        // the last access: the caller may free the offer as soon as it sees this
        offer.header.done.store(true, Ordering::Release);
    }
}

/// The offer waiting for the helper, or null.
static MAILBOX: AtomicPtr<Header> = AtomicPtr::new(std::ptr::null_mut());
/// Whether a helper job is running (or about to).
static HELPER: AtomicBool = AtomicBool::new(false);
/// When the last offer was made, in nanoseconds since [`epoch`].
static LAST_OFFER: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_nanos() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// Runs `mine` on the calling thread and `offered` on a lingering pool worker if one
/// takes it in time, else on the calling thread after `mine`; returns when both have
/// run. For a thread outside the rayon pool while the global pool has at least two
/// threads; elsewhere, or while another caller's offer waits in the mailbox, both
/// just run here in turn.
///
/// # Panics
/// If either closure panics (after both have finished or been dropped).
pub(crate) fn halves(mine: impl FnOnce(), offered: impl FnOnce() + Send) {
    if rayon::current_thread_index().is_some() || rayon::current_num_threads() < 2 {
        mine();
        offered();
        return;
    }
    let offer = Offer::new(offered);
    let at = &offer.header as *const Header as *mut Header;
    if MAILBOX
        .compare_exchange(
            std::ptr::null_mut(),
            at,
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_err()
    {
        mine();
        // SAFETY: the offer never reached the mailbox: its closure is ours
        (unsafe { &mut *offer.f.get() }).take().expect("not taken")();
        return;
    }
    LAST_OFFER.store(now_nanos(), Ordering::Relaxed);
    if !HELPER.swap(true, Ordering::AcqRel) {
        rayon::spawn(helper);
    }
    let settle = Settle { offer: &offer, at };
    mine();
    let helped = settle.finish();
    if helped && offer.header.panicked.load(Ordering::Relaxed) {
        panic!("gemm: the half computed on a worker panicked");
    }
}

/// Takes the offer back or waits for the helper to finish it: at the end of
/// [`halves`], and on its unwinding if the caller's own half panics.
struct Settle<'a, F: FnOnce() + Send> {
    offer: &'a Offer<F>,
    at: *mut Header,
}

impl<F: FnOnce() + Send> Settle<'_, F> {
    /// Computes the offered half here if it is still in the mailbox; returns whether
    /// the helper computed it.
    fn finish(self) -> bool {
        let (helped, offer) = (self.retract_or_wait(), self.offer);
        std::mem::forget(self);
        if !helped {
            // SAFETY: the offer left the mailbox by our own exchange: its closure is ours
            (unsafe { &mut *offer.f.get() }).take().expect("not taken")();
        }
        helped
    }

    /// Empties the mailbox of this offer, or waits until the helper that took it has
    /// finished; returns whether the helper took it.
    fn retract_or_wait(&self) -> bool {
        if MAILBOX
            .compare_exchange(
                self.at,
                std::ptr::null_mut(),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            return false;
        }
        // The helper's half is under way and about as long as ours: spin, but give the
        // core away once that takes far longer than it should (the helper's thread was
        // preempted, say by another process on a busy machine).
        let mut spins = 0u32;
        while !self.offer.header.done.load(Ordering::Acquire) {
            if spins < WAIT_SPINS {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        true
    }
}

impl<F: FnOnce() + Send> Drop for Settle<'_, F> {
    fn drop(&mut self) {
        // only on unwinding (`finish` forgets the guard): the offer must not outlive us
        self.retract_or_wait();
    }
}

/// The lingering worker: takes offers until [`LINGER`] passes without one.
fn helper() {
    loop {
        let h = MAILBOX.swap(std::ptr::null_mut(), Ordering::AcqRel);
        if !h.is_null() {
            // SAFETY: an offer stays alive until its caller has taken it back (it
            // cannot now: we emptied the mailbox) or seen it done
            unsafe { ((*h).call)(h) };
            continue;
        }
        let idle = now_nanos().saturating_sub(LAST_OFFER.load(Ordering::Relaxed));
        if idle > LINGER.as_nanos() as u64 {
            HELPER.store(false, Ordering::Release);
            // An offer made between the look above and the store saw a running helper
            // and started none: stay if there is one and no other helper has started.
            if MAILBOX.load(Ordering::Acquire).is_null() || HELPER.swap(true, Ordering::AcqRel) {
                return;
            }
            continue;
        }
        if rayon::yield_now() != Some(rayon::Yield::Executed) {
            for _ in 0..SPINS {
                std::hint::spin_loop();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Both halves run exactly once, whoever takes the offered one, over many calls
    /// in a row (the helper lingering between them) and from several callers at once.
    #[test]
    fn both_halves_run_once_from_any_caller() {
        let runs = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for i in 0..2000 {
                        let (mut a, mut b) = (0, 0);
                        halves(|| a = i + 1, || b = i + 2);
                        assert_eq!((a, b), (i + 1, i + 2));
                        runs.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(runs.load(Ordering::Relaxed), 6000);
    }

    /// A panic in either half reaches the caller, and the offer is settled first.
    #[test]
    fn a_panicking_half_panics_the_caller() {
        for mine_panics in [true, false] {
            let r = std::panic::catch_unwind(|| {
                halves(
                    || assert!(!mine_panics, "mine"),
                    || assert!(mine_panics, "offered"),
                )
            });
            assert!(r.is_err());
        }
        // the mailbox is free again
        let mut x = 0;
        halves(|| {}, || x = 1);
        assert_eq!(x, 1);
    }
}
