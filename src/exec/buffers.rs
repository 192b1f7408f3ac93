//! Buffer recycling: how a planned graph runs without allocating in steady state.
//!
//! Each [`Plan`](super::Plan) owns a [`BufferPool`]. While the plan runs, the pool is
//! *installed* on the running threads ([`with_pool`]); kernels ask for their output
//! (and scratch) buffers through [`take`] / [`zeroed`] / [`Scratch`], which pop a
//! buffer of exactly that length off the installed pool, or allocate one on a miss
//! (and when no pool is installed, as in eager mode or the constant folder). When a
//! value dies, the interpreter hands it back with [`BufferPool::recycle`], which keeps
//! its allocation if the value is not shared with anyone else (a variable, the
//! caller, another live value). From the second call on, every intermediate buffer of
//! a step is a recycled one: only the values that escape (outputs, new variable
//! values) leave the pool, and a variable's previous value comes back to it when it
//! is replaced.
//!
//! The one allocation per kernel call left in steady state is outside tapeflow: the
//! `gemm` crate allocates its packing scratch on each call ([`in_backend_call`] tells
//! a counting allocator when it is looking at one).
//!
//! Buffers are matched by exact length and dtype; their contents are never read
//! before being overwritten ([`take`] returns an empty `Vec` with the capacity, and
//! [`zeroed`] fills it), so recycling never changes a result bit.

use crate::tensor::data::{Arr, Data};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Spare buffers of one element type, by length: a short list searched linearly (a
/// graph has a few dozen distinct sizes at most, and this beats hashing at that size).
#[doc(hidden)]
pub struct Shelf<T>(Mutex<Vec<(usize, Vec<Vec<T>>)>>);

impl<T> Default for Shelf<T> {
    fn default() -> Self {
        Shelf(Mutex::new(Vec::new()))
    }
}

impl<T> Shelf<T> {
    fn pop(&self, n: usize) -> Option<Vec<T>> {
        let mut m = self.0.lock().ok()?;
        m.iter_mut().find(|(len, _)| *len == n)?.1.pop()
    }

    fn push(&self, v: Vec<T>, n: usize) {
        if let Ok(mut m) = self.0.lock() {
            match m.iter_mut().find(|(len, _)| *len == n) {
                Some((_, bufs)) => bufs.push(v),
                None => m.push((n, vec![v])),
            }
        }
    }

    fn bytes(&self) -> usize {
        self.0.lock().map_or(0, |m| {
            m.iter()
                .flat_map(|(_, bufs)| bufs)
                .map(|v| v.capacity() * std::mem::size_of::<T>())
                .sum()
        })
    }
}

/// Spare buffers for one plan, plus a count of the allocations it could not avoid.
#[derive(Default)]
pub struct BufferPool {
    f32: Shelf<f32>,
    f64: Shelf<f64>,
    i64: Shelf<i64>,
    misses: AtomicUsize,
}

/// An element type the pool keeps buffers of.
pub trait Pooled: Copy + Default + Send + Sync + 'static {
    #[doc(hidden)]
    fn shelf(p: &BufferPool) -> &Shelf<Self>;
    #[doc(hidden)]
    fn array_of(d: &Data) -> Option<&Arr<Self>>;
    #[doc(hidden)]
    fn into_array(d: Data) -> Option<Arr<Self>>;
}

macro_rules! pooled {
    ($t:ty, $f:ident, $v:ident) => {
        impl Pooled for $t {
            fn shelf(p: &BufferPool) -> &Shelf<$t> {
                &p.$f
            }
            fn array_of(d: &Data) -> Option<&Arr<$t>> {
                match d {
                    Data::$v(a) => Some(a),
                    _ => None,
                }
            }
            fn into_array(d: Data) -> Option<Arr<$t>> {
                match d {
                    Data::$v(a) => Some(a),
                    _ => None,
                }
            }
        }
    };
}
pooled!(f32, f32, F32);
pooled!(f64, f64, F64);
pooled!(i64, i64, I64);

/// The `Vec` behind an array, if nothing else shares it and the array spans all of it
/// (its layout does not matter: the buffer is reused as raw storage).
fn unshared<T: Clone>(a: Arr<T>) -> Option<Vec<T>> {
    if !a.is_unique() {
        return None;
    }
    let n = a.len();
    let (v, off) = a.try_into_owned_nocopy().ok()?.into_raw_vec_and_offset();
    (off.unwrap_or(0) == 0 && v.len() == n).then_some(v)
}

impl BufferPool {
    /// An empty pool.
    pub fn new() -> BufferPool {
        BufferPool::default()
    }

    /// An empty buffer with room for `n` elements: a spare one, or on a miss a new one.
    fn pop<T: Pooled>(&self, n: usize) -> Vec<T> {
        if let Some(mut v) = T::shelf(self).pop(n) {
            v.clear();
            return v;
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        Vec::with_capacity(n)
    }

    /// A spare buffer of exactly `n` elements as it was left (its old values, or zeros
    /// where it had fewer), or zeros on a miss, after stocking `spares` more of that
    /// length.
    fn pop_filled<T: Pooled>(&self, n: usize, spares: usize) -> Vec<T> {
        match T::shelf(self).pop(n) {
            Some(mut v) => {
                v.truncate(n);
                v.resize(n, T::default());
                v
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                for _ in 0..spares {
                    self.give(Vec::<T>::with_capacity(n), n);
                }
                vec![T::default(); n]
            }
        }
    }

    fn give<T: Pooled>(&self, v: Vec<T>, n: usize) {
        if v.capacity() >= n && n > 0 {
            T::shelf(self).push(v, n);
        }
    }

    /// Keeps `d`'s allocation for reuse if `d` is its only owner; else just drops `d`.
    pub fn recycle(&self, d: Data) {
        match d {
            Data::F32(a) => self.give_arr(a),
            Data::F64(a) => self.give_arr(a),
            Data::I64(a) => self.give_arr(a),
        }
    }

    fn give_arr<T: Pooled>(&self, a: Arr<T>) {
        let n = a.len();
        if let Some(v) = unshared(a) {
            self.give(v, n);
        }
    }

    /// Buffers allocated because the pool had none of the size asked for, since the
    /// pool was made.
    pub fn misses(&self) -> usize {
        self.misses.load(Ordering::Relaxed)
    }

    /// Bytes held by spare buffers right now.
    pub fn spare_bytes(&self) -> usize {
        self.f32.bytes() + self.f64.bytes() + self.i64.bytes()
    }
}

thread_local! {
    static CURRENT: Cell<*const BufferPool> = const { Cell::new(std::ptr::null()) };
    static IN_BACKEND: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, a call into a third-party kernel that allocates its own scratch per call
/// (the `gemm` crate's packing buffers, a few KiB to about 1 MiB), marked so an
/// allocation counter can tell that scratch from tapeflow's buffers.
pub(crate) fn in_backend<R>(f: impl FnOnce() -> R) -> R {
    let was = IN_BACKEND.with(|c| c.replace(true));
    let r = f();
    IN_BACKEND.with(|c| c.set(was));
    r
}

/// Whether this thread is inside a third-party kernel call (see the module docs of
/// `exec::buffers`); meant for allocation counters in tests. Never allocates.
pub fn in_backend_call() -> bool {
    IN_BACKEND.with(|c| c.get())
}

/// The pool installed on this thread, as a handle that may cross into rayon tasks
/// spawned (and joined) inside the installing call.
///
/// Crate-private on purpose: it is a raw pointer, valid only while the [`with_pool`]
/// call that installed the pool runs. Kernels take it with [`current`] and drop it
/// before they return; nothing may store it beyond that.
#[derive(Clone, Copy)]
pub(crate) struct PoolRef(*const BufferPool);

// SAFETY: a PoolRef is only used inside `with_pool` (the type is crate-private and no
// kernel keeps one past its return), whose borrow of the pool outlives
// every task a kernel spawns (kernels join their rayon work before returning), and the
// pool itself is Sync.
unsafe impl Send for PoolRef {}
// SAFETY: as above.
unsafe impl Sync for PoolRef {}

impl PoolRef {
    fn get(&self) -> Option<&BufferPool> {
        // SAFETY: see the Send impl; null means "no pool".
        unsafe { self.0.as_ref() }
    }

    /// An empty `Vec` with room for `n` elements (from the pool if it has one).
    pub(crate) fn take<T: Pooled>(self, n: usize) -> Vec<T> {
        match self.get() {
            Some(p) => p.pop(n),
            None => Vec::with_capacity(n),
        }
    }

    /// `n` elements with unspecified values (from the pool if it has one), as
    /// [`overwritable`] but for this handle's pool.
    pub(crate) fn overwritable<T: Pooled>(self, n: usize) -> Vec<T> {
        match self.get() {
            Some(p) => p.pop_filled(n, 0),
            None => vec![T::default(); n],
        }
    }

    /// Gives a buffer of `v.len()` elements back to the pool (drops it if none).
    pub(crate) fn give<T: Pooled>(self, v: Vec<T>) {
        if let Some(p) = self.get() {
            let n = v.len();
            p.give(v, n);
        }
    }
}

/// The pool installed on this thread (a null handle when none is).
pub(crate) fn current() -> PoolRef {
    PoolRef(CURRENT.with(|c| c.get()))
}

/// Runs `f` with `pool` installed on this thread (restoring the previous one after,
/// also on panic).
pub(crate) fn with_pool<R>(pool: &BufferPool, f: impl FnOnce() -> R) -> R {
    struct Restore(*const BufferPool);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CURRENT.with(|c| c.replace(pool)));
    f()
}

/// An empty `Vec` with room for `n` elements, from the installed pool if any.
pub(crate) fn take<T: Pooled>(n: usize) -> Vec<T> {
    current().take(n)
}

/// `n` elements with unspecified values (a recycled buffer's old contents, or zeros),
/// for kernels that overwrite every element: it skips the zeroing pass of [`zeroed`].
pub(crate) fn overwritable<T: Pooled>(n: usize) -> Vec<T> {
    current().overwritable(n)
}

/// `n` copies of `T::default()` (zero), in a buffer from the installed pool if any.
pub(crate) fn zeroed<T: Pooled>(n: usize) -> Vec<T> {
    let mut v = take(n);
    v.resize(n, T::default());
    v
}

/// A scratch buffer that goes back to the pool it came from when dropped (for
/// kernels' temporaries, such as im2col columns, made on worker threads).
pub(crate) struct Scratch<T: Pooled> {
    buf: Vec<T>,
    pool: PoolRef,
}

impl<T: Pooled> Scratch<T> {
    /// A scratch buffer drawn from `pool` (pass [`current`] from the kernel's calling
    /// thread), initially empty; size it with [`Scratch::resize`].
    pub(crate) fn new(pool: PoolRef) -> Scratch<T> {
        Scratch {
            buf: Vec::new(),
            pool,
        }
    }

    /// Makes the buffer `n` elements long, with unspecified values (a recycled buffer's
    /// old contents, or zeros), for kernels that overwrite every element before they
    /// read one (im2col columns, GEMM outputs): the old buffer goes back to the pool
    /// when the length changes, and no pass zeroes the new one (the tutorial CNN's
    /// step spent ≈4% of its time zeroing its im2col chunks).
    ///
    /// How many scratch buffers of a size are in use at once depends on how rayon
    /// shares out the work (at most two per thread: a kernel holds one or two), so a
    /// miss stocks that many at once: later calls never miss however the work falls.
    pub(crate) fn overwritable(&mut self, n: usize) -> &mut Vec<T> {
        if self.buf.len() != n {
            let spares = 2 * rayon::current_num_threads() - 1;
            let fresh = match self.pool.get() {
                Some(p) => p.pop_filled(n, spares),
                None => vec![T::default(); n],
            };
            let old = std::mem::replace(&mut self.buf, fresh);
            self.pool.give(old);
        }
        &mut self.buf
    }
}

impl<T: Pooled> Drop for Scratch<T> {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn};

    fn data(v: Vec<f32>) -> Data {
        Data::F32(
            ArrayD::from_shape_vec(IxDyn(&[v.len()]), v)
                .unwrap()
                .into_shared(),
        )
    }

    #[test]
    fn recycled_buffers_are_reused_only_by_exact_length() {
        let pool = BufferPool::new();
        with_pool(&pool, || {
            let a: Vec<f32> = take(8);
            assert_eq!(pool.misses(), 1);
            let ptr = a.as_ptr();
            pool.recycle(data({
                let mut a = a;
                a.resize(8, 1.0);
                a
            }));
            let b: Vec<f32> = zeroed(8);
            assert_eq!((b.as_ptr(), pool.misses()), (ptr, 1));
            assert!(b.iter().all(|&x| x == 0.0));
            let _c: Vec<f32> = take(7);
            assert_eq!(pool.misses(), 2);
        });
    }

    #[test]
    fn shared_buffers_are_not_recycled() {
        let pool = BufferPool::new();
        let d = data(vec![1.0; 4]);
        let keep = d.clone();
        pool.recycle(d);
        assert_eq!(pool.spare_bytes(), 0);
        pool.recycle(keep);
        assert_eq!(pool.spare_bytes(), 16);
    }

    #[test]
    fn without_a_pool_take_allocates() {
        let v: Vec<f64> = zeroed(3);
        assert_eq!(v, vec![0.0; 3]);
        let mut s = Scratch::<f32>::new(current());
        assert_eq!(s.overwritable(5), &vec![0.0; 5]);
    }

    /// A scratch miss stocks spares for the other tasks that may run at once, and a
    /// reused scratch buffer keeps its length without a zeroing pass.
    #[test]
    fn scratch_buffers_are_reused_at_their_length() {
        let pool = BufferPool::new();
        with_pool(&pool, || {
            let mut a = Scratch::<f32>::new(current());
            a.overwritable(8).fill(7.0);
            assert_eq!(pool.misses(), 1);
            let mut b = Scratch::<f32>::new(current());
            assert_eq!(b.overwritable(8).len(), 8);
            drop((a, b));
            let mut c = Scratch::<f32>::new(current());
            let mut d = Scratch::<f32>::new(current());
            assert_eq!((c.overwritable(8).len(), d.overwritable(8).len()), (8, 8));
            assert_eq!(pool.misses(), 1);
            assert!(c.overwritable(4).len() == 4 && pool.misses() == 2);
        });
    }
}
