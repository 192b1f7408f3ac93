//! Dense matrix multiply, the one GEMM every other kernel (matmul, conv) is built on.
//!
//! Owns: [`gemm()`], `c = op(a) · op(b)` over row-major slices with optional transposes,
//! and the crate-internal `gemm_serial` that the conv kernels call from inside their
//! own parallel loops.
//!
//! Backend: the `gemm` crate (0.19, AVX-512 kernels chosen at run time) for f32 and f64; ndarray's `general_mat_mul` keeps the
//! function total for any other [`Float`] implementation. Measured single-threaded on
//! the MLP and conv shapes tapeflow runs, `gemm` beat ndarray's `matrixmultiply`
//! backend by 10-60% on most of them (80% on a skinny `k·10` product) and was within
//! a few percent on the rest; the numbers are in the commit that chose it.
//!
//! Invariants:
//! - **Deterministic.** The result bits depend only on the inputs and the shape, never
//!   on the number of rayon threads. The `gemm` crate loops over blocks of `k` in
//!   order, with block sizes computed from `(m, n, k)` and the cache sizes alone; its
//!   threads only share out the output tiles inside one `k` block, so every element
//!   sees the same sequence of operations on 1 thread or 16 (`tests/kernels.rs`
//!   checks 1, 2 and 4). The ndarray fallback is single-threaded.
//! - `c` is overwritten, never read: stale NaNs in it cannot leak into the result.
//! - A zero result is +0 whatever the layout (as for a sum started at +0).

use crate::tensor::data::Float;
use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};
use std::any::TypeId;

/// Products with fewer multiply-adds than this run single-threaded (measured on the
/// 2-core machine: the MLP 784-64-64-10 step at batch 64, whose largest product has
/// 3.2M multiply-adds, is faster serial).
///
/// From this size up a product uses every thread of the pool: the backend's own
/// threading, except in a pool of exactly two threads, where a product of at least
/// `2 *` [`SPLIT_MIN_COLS`] columns is computed as two column halves, each on one
/// thread: the backend's threading meets its threads at every block of `k`, the halves
/// only at the end. Measured on the 2-core Intel Xeon VM (AVX-512), W3's products on
/// their own: 256x784x1024 1479–1554 → 1400–1401 µs, 256x1024x1024 1827–1853 →
/// 1748–1808, the weight gradients (`aᵀ`) 1–3% faster; the W3 step 9.46–10.07 →
/// 9.49–9.84 ms in four alternated runs (W2 and W6 unchanged within the host's swing).
/// The halves have the bits of the whole product (each has more than 64 columns, so
/// the backend cuts `k` as for the whole, see `row_blocks_keep_bits`, and a column's
/// sums do not depend on the other columns), so the bits still do not depend on the
/// thread count (`tests/kernels.rs` checks 1, 2 and 4 threads on products above this
/// size).
pub const PAR_GEMM_MIN: usize = 1 << 23;

/// Products from this many multiply-adds up to [`PAR_GEMM_MIN`], with at least
/// [`SPLIT_MIN_COLS`] output columns, are computed as two column halves (narrower ones
/// as two row halves where that changes no bit, see `row_halves`), which two
/// rayon workers take when the call comes from inside the pool; from outside it (a
/// small plan or an eager op on the caller's thread) the caller computes one half and
/// offers the other to a lingering worker (`handoff`), computing it too if no worker
/// takes it in time. The halves, and so the result bits, are the same either way. Such
/// products are too small for the backend's own threading to pay (it shares out each
/// block of `k` anew), but one fork per product does: the LSTM step's per-step
/// products (64x128x512, 64x512x128 and 128x64x512) run one after the other on
/// the critical path of its loops.
pub const SPLIT_GEMM_MIN: usize = 1 << 21;

/// The fewest output columns a product is split by ([`SPLIT_GEMM_MIN`]).
pub const SPLIT_MIN_COLS: usize = 128;

/// Whether blocks of `block_rows` rows of a product `[rows, k]·[k, n]` (`b` not
/// transposed, blocks of at least 2 rows) have the bits of those rows of the whole
/// product, as far as the sum over `k` goes. The backend cuts `k` into blocks of at
/// most 512 for products of at most 64 rows and 64 columns, and into blocks that depend
/// on `k` and the caches alone for any other (7406 of the 8192 elements of a
/// 128x784x64 product differ from its 64-row halves'). So the bits are kept for a `k`
/// of one block of the backend, when the blocks have more than 64 rows or the product
/// more than 64 columns (both the whole and the blocks are cut the second way), and
/// when the whole product has at most 64 rows and 64 columns (both are cut the first
/// way). What both row splits rely on: [`row_halves`] here and the half-batch loops of
/// `exec/row_split.rs`.
pub(crate) fn row_blocks_keep_bits(rows: usize, block_rows: usize, k: usize, n: usize) -> bool {
    k <= ONE_BLOCK_MAX_K || block_rows > 64 || n > 64 || rows <= 64
}

/// Whether a product too narrow for column halves (`n <` [`SPLIT_MIN_COLS`]) but of
/// [`SPLIT_GEMM_MIN`] multiply-adds or more is computed as two row halves instead (the
/// MLP 784-64-64-10's forward `x·W₁`, 64x784x64, and its weight gradient `xᵀ·dh`,
/// 784x64x64, which each ran on one core). Only where each half has the bits of those
/// rows of the whole product, so that the split changes no bit (the tests below pin
/// it): `b` not transposed (whether it is copied first depends on the product's size),
/// `k > 2` and `n > 1` (the backend's outer-product and matrix-vector paths start from
/// the first product), halves with more than `HORIZONTAL_MAX_ELEMS` elements (smaller
/// ones may take its dot-product kernels), and [`row_blocks_keep_bits`]. Row halves of
/// the 64x784x64 product took 28 µs each on one Zen 4 core, 32-column halves 34 µs.
fn row_halves(m: usize, k: usize, n: usize, tb: bool) -> bool {
    let half = m / 2;
    !tb && n > 1
        && n < SPLIT_MIN_COLS
        && k > 2
        && row_blocks_keep_bits(m, half, k, n)
        && half * n > HORIZONTAL_MAX_ELEMS
}

/// The first column of the right half of a product of `n >= 128` columns split by
/// columns: near the middle at a multiple of 64 columns (the backend's widest tile),
/// at least 64 on each side.
fn column_split(n: usize) -> usize {
    ((n / 2 + 32) / 64 * 64).clamp(64, n - 64)
}

/// Runs `left` and `right` on two workers when called from inside a pool of more than
/// one thread; from outside, `left` on the calling thread and `right` on a lingering
/// worker if one takes it in time (`handoff`); else one after the other (the same work
/// either way).
fn in_halves(left: impl FnOnce() + Send, right: impl FnOnce() + Send) {
    if rayon::current_thread_index().is_some() && rayon::current_num_threads() > 1 {
        rayon::join(left, right);
    } else {
        super::handoff::halves(left, right);
    }
}

/// How one product uses the threads.
#[derive(Clone, Copy)]
enum Par {
    /// On the calling thread.
    Serial,
    /// Two column halves, each on the calling thread or a worker ([`column_split`]).
    Halves,
    /// Two row halves, each on the calling thread or a worker ([`row_halves`]).
    RowHalves,
    /// The backend's own threading over the whole pool.
    Pool,
}

/// `c[m,n] = op(a) · op(b)`, overwriting `c`.
///
/// `a` is `[m,k]` row-major, or `[k,m]` when `ta` (so `op(a) = aᵀ`); `b` is `[k,n]`,
/// or `[n,k]` when `tb`. Large products use the current rayon pool; the result bits
/// do not depend on its thread count.
///
/// # Panics
/// If a slice length does not match its shape.
///
/// # Example
/// ```
/// use tapeflow::exec::kernels::gemm::gemm;
/// // [1 2; 3 4] · [5 6; 7 8]ᵀ (tb: b is given as [n,k])
/// let a = [1.0, 2.0, 3.0, 4.0];
/// let b = [5.0, 6.0, 7.0, 8.0];
/// let mut c = [0.0f64; 4];
/// gemm(&a, &b, &mut c, 2, 2, 2, false, true);
/// assert_eq!(c, [17.0, 23.0, 39.0, 53.0]);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: Float>(
    a: &[T],
    b: &[T],
    c: &mut [T],
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
) {
    multiply(a, b, c, m, k, n, ta, tb, par_for(m, k, n, tb));
}

/// How [`gemm()`] uses the threads for a product of this shape.
fn par_for(m: usize, k: usize, n: usize, tb: bool) -> Par {
    // small products run on the calling thread: waking workers costs more than it saves
    let macs = m * k * n;
    if macs >= PAR_GEMM_MIN {
        match rayon::current_num_threads() == 2 && n >= 2 * SPLIT_MIN_COLS {
            true => Par::Halves,
            false => Par::Pool,
        }
    } else if macs >= SPLIT_GEMM_MIN && n >= SPLIT_MIN_COLS {
        Par::Halves
    } else if macs >= SPLIT_GEMM_MIN && row_halves(m, k, n, tb) {
        Par::RowHalves
    } else {
        Par::Serial
    }
}

/// [`gemm()`] on the calling thread only, for kernels that already run in parallel over
/// independent pieces (the conv chunks). Same arguments, same result bits.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_serial<T: Float>(
    a: &[T],
    b: &[T],
    c: &mut [T],
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
) {
    multiply(a, b, c, m, k, n, ta, tb, Par::Serial);
}

/// The backend computes a product with `k` up to this as one block of `k`: each
/// element's sum over `k` is formed in registers from +0 and then stored, or added to
/// what `c` holds (the `gemm` crate's depth blocks are at least 512 deep, or all of `k`
/// when it is shorter). [`accumulate`] relies on it; `tests/kernels.rs` pins it.
pub const ONE_BLOCK_MAX_K: usize = 512;

/// Products with at most this many output elements may take the backend's
/// dot-product ("horizontal") kernels, which sum over `k` in another order:
/// [`accumulate`] adds in place only above it.
const HORIZONTAL_MAX_ELEMS: usize = 16 * 16;

/// `c[m,n] += op(a_i)·op(b_i)` for `i` in `0..steps`, in that order, where
/// `product(i)` gives `(a_i, b_i)` (laid out as for [`gemm()`]).
///
/// The result has the bits of `for i in 0..steps { p = gemm(a_i, b_i); c = c + p }`
/// (an element-wise IEEE add per step). Where the backend's sum over `k` is one
/// block (`k ≤` [`ONE_BLOCK_MAX_K`], `k > 2`, `b` not transposed, and each part's
/// product bigger than the dot-product kernels take) every step adds its product
/// into `c` in place, `c + (a·b)` rounded once per element, as the add would; and
/// with more than one rayon thread, two column halves of `c` run the whole loop at
/// once, one per worker (or, called from outside the pool, one on the caller and one
/// on a lingering worker, as in `in_halves`), meeting only at the end (a column's bits
/// do not depend on the other columns). Otherwise each product goes to a scratch buffer
/// first and is added after.
///
/// # Panics
/// If `c` or a product's slice does not match its shape.
#[allow(clippy::too_many_arguments)]
pub fn accumulate<'p, T: Float>(
    c: &mut [T],
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
    steps: usize,
    product: impl Fn(usize) -> (&'p [T], &'p [T]) + Sync,
) {
    assert_eq!(
        c.len(),
        m * n,
        "accumulate: c has {} elements, want {m}x{n}",
        c.len()
    );
    let check = |i: usize| {
        let (a, b) = product(i);
        assert_eq!(
            a.len(),
            m * k,
            "accumulate: a has {} elements, want {m}x{k}",
            a.len()
        );
        assert_eq!(
            b.len(),
            k * n,
            "accumulate: b has {} elements, want {k}x{n}",
            b.len()
        );
        (a, b)
    };
    let is = |t: TypeId| TypeId::of::<T>() == t;
    let backend = is(TypeId::of::<f32>()) || is(TypeId::of::<f64>());
    let halves = rayon::current_num_threads() > 1
        && n >= SPLIT_MIN_COLS
        && m * k * n * steps >= SPLIT_GEMM_MIN;
    let narrowest = if halves { 64 } else { n };
    let in_place = backend
        && !tb
        && k > 2
        && k <= ONE_BLOCK_MAX_K
        && m > 1
        && m * narrowest > HORIZONTAL_MAX_ELEMS;
    if !in_place {
        let mut p = crate::exec::buffers::overwritable::<T>(m * n);
        for i in 0..steps {
            let (a, b) = check(i);
            gemm(a, b, &mut p, m, k, n, ta, tb);
            c.iter_mut().zip(&p).for_each(|(c, p)| *c = *c + *p);
        }
        crate::exec::buffers::current().give(p);
        return;
    }
    let (a_rs, a_cs) = strides(m, k, ta);
    let (b_rs, b_cs) = strides(k, n, false);
    let c_p = Shared(c.as_mut_ptr());
    // columns j0..j1 of c, every step
    let part = |j0: usize, j1: usize| {
        for i in 0..steps {
            let (a, b) = check(i);
            // SAFETY: the lengths are checked; `c` is a unique borrow, so it aliases
            // neither input, and two parts touch disjoint columns
            unsafe {
                backend_columns(
                    (c_p.get(), n),
                    (a.as_ptr(), a_rs, a_cs),
                    (b.as_ptr(), b_rs, b_cs),
                    (m, k),
                    j0..j1,
                    true,
                    ::gemm::Parallelism::None,
                )
            };
        }
    };
    if halves {
        let mid = column_split(n);
        in_halves(|| part(0, mid), || part(mid, n));
    } else {
        part(0, n);
    }
}

/// Columns `j0..j1` of `c = op(a)·op(b)`, or with `add` of `c + op(a)·op(b)` (each
/// element's sum over `k` added to what `c` holds with one rounding, `k` being one
/// block), by the backend on `threads`. `c` is `[m, n]` row-major; `op(a)` is `[m, k]`
/// and `op(b)` `[k, n]` with the given (row, column) strides.
///
/// # Safety
/// `T` is f32 or f64 (the element types `gemm::gemm` supports); with these strides
/// every element read lies in `a`'s and `b`'s allocations and every element of columns
/// `j0..j1` of `c` in `c`'s, which aliases neither input and which no other thread
/// touches in those columns meanwhile.
#[allow(clippy::type_complexity)]
unsafe fn backend_columns<T: Float>(
    (c, n): (*mut T, usize),
    (a, a_rs, a_cs): (*const T, isize, isize),
    (b, b_rs, b_cs): (*const T, isize, isize),
    (m, k): (usize, usize),
    cols: std::ops::Range<usize>,
    add: bool,
    threads: ::gemm::Parallelism,
) {
    // alpha = 0 without `read_dst` writes c = 1·(a·b) without reading c; alpha = 1 with
    // it stores c + 1·(a·b)
    let alpha = if add { T::one() } else { T::zero() };
    crate::exec::buffers::in_backend(|| unsafe {
        ::gemm::gemm(
            m,
            cols.len(),
            k,
            c.add(cols.start),
            1,
            n as isize,
            add,
            a,
            a_cs,
            a_rs,
            b.offset(cols.start as isize * b_cs),
            b_cs,
            b_rs,
            alpha,
            T::one(),
            false,
            false,
            false,
            threads,
        );
    });
}

/// A pointer handed to the other half's thread.
#[derive(Clone, Copy)]
struct Shared<P>(P);
// SAFETY: the halves read shared inputs and write disjoint column ranges of `c`.
unsafe impl<P> Send for Shared<P> {}
unsafe impl<P> Sync for Shared<P> {}

impl<P: Copy> Shared<P> {
    /// The pointer (a method, so closures capture the whole `Shared`, not its field).
    fn get(self) -> P {
        self.0
    }
}

#[allow(clippy::too_many_arguments)]
fn multiply<T: Float>(
    a: &[T],
    b: &[T],
    c: &mut [T],
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
    par: Par,
) {
    assert_eq!(
        a.len(),
        m * k,
        "gemm: a has {} elements, want {m}x{k}",
        a.len()
    );
    assert_eq!(
        b.len(),
        k * n,
        "gemm: b has {} elements, want {k}x{n}",
        b.len()
    );
    assert_eq!(
        c.len(),
        m * n,
        "gemm: c has {} elements, want {m}x{n}",
        c.len()
    );
    let is = |t: TypeId| TypeId::of::<T>() == t;
    let backend = is(TypeId::of::<f32>()) || is(TypeId::of::<f64>());
    if tb && aliasing_stride::<T>(m, k, n) {
        // Packing `b`'s columns 4 KiB apart maps them onto one L1 set (measured on the
        // Zen 5 machine, 256x1024x1024: ≈137 GFLOP/s with tb vs ≈227 without, one
        // core; 1-2 KiB apart is nearly as bad); a transposed copy costs far less.
        if backend && swap_pays(m, k, n) {
            return swapped(a, b, c, (m, k, n), ta, par);
        }
        if backend && matches!(par, Par::Halves) {
            // SAFETY: `T` is f32 or f64 (`backend`); the lengths are checked above
            unsafe { transposed_halves(a, b, c, m, k, n, ta) };
            return positive_zeros(c, (m, k, n), backend, par);
        }
        let mut bt = crate::exec::buffers::overwritable::<T>(k * n);
        super::transpose::transpose(b, &mut bt, n, k);
        multiply(a, &bt, c, m, k, n, ta, false, par);
        crate::exec::buffers::current().give(bt);
        return;
    }
    if backend {
        let (a_rs, a_cs) = strides(m, k, ta);
        let (b_rs, b_cs) = strides(k, n, tb);
        let (a_p, b_p, c_p) = (
            Shared(a.as_ptr()),
            Shared(b.as_ptr()),
            Shared(c.as_mut_ptr()),
        );
        // columns j0..j1 of c
        let part = |j0: usize, j1: usize, threads: ::gemm::Parallelism| {
            let (a_p, b_p, c_p) = (a_p.get(), b_p.get(), c_p.get());
            // SAFETY: the lengths are checked above; `c` is a unique borrow, so it
            // aliases neither input, and two parts write disjoint columns
            unsafe {
                backend_columns(
                    (c_p, n),
                    (a_p, a_rs, a_cs),
                    (b_p, b_rs, b_cs),
                    (m, k),
                    j0..j1,
                    false,
                    threads,
                )
            };
        };
        match par {
            Par::Serial => part(0, n, ::gemm::Parallelism::None),
            Par::Pool => part(
                0,
                n,
                ::gemm::Parallelism::Rayon(rayon::current_num_threads()),
            ),
            Par::RowHalves => {
                let mid = m / 2;
                // rows i0..i1 of c from rows i0..i1 of op(a)
                let rows = |i0: usize, i1: usize| {
                    let (a_p, b_p, c_p) = (a_p.get(), b_p.get(), c_p.get());
                    // SAFETY: as for `part`; row i0 of op(a) starts i0 rows (`a_rs`) in, and
                    // the two halves write disjoint rows of `c`
                    unsafe {
                        backend_columns(
                            (c_p.add(i0 * n), n),
                            (a_p.offset(i0 as isize * a_rs), a_rs, a_cs),
                            (b_p, b_rs, b_cs),
                            (i1 - i0, k),
                            0..n,
                            false,
                            ::gemm::Parallelism::None,
                        )
                    };
                };
                in_halves(|| rows(0, mid), || rows(mid, m));
            }
            Par::Halves => {
                let mid = column_split(n);
                in_halves(
                    || part(0, mid, ::gemm::Parallelism::None),
                    || part(mid, n, ::gemm::Parallelism::None),
                );
            }
        }
    } else {
        let av = view(a, m, k, ta);
        let bv = view(b, k, n, tb);
        let mut cv = ArrayViewMut2::from_shape((m, n), c).expect("length checked");
        general_mat_mul(T::one(), &av, &bv, T::zero(), &mut cv);
    }
    positive_zeros(c, (m, k, n), backend, par);
}

/// Maps any -0 of a product's result `c` to +0 where the path that computed it may
/// leave one. Every element is a sum that starts at +0, so it is never -0 — but the
/// backend's kernels differ on this by layout (a transposed operand could give -0 where
/// the plain one gives +0; found by tests/fuzz.rs as a compiled/eager mismatch once
/// transpose folding changed the layout). Adding +0 maps -0 to +0 and leaves every
/// other value, NaN included, as it is. (A parallel product's pass is split the same
/// way: it is one pass over memory that the cores share.) The `gemm` crate's blocked
/// and small-block kernels accumulate from +0; only its outer-product path (k ≤ 2) and
/// matrix-vector paths (m or n = 1) start from the first product, so only they need
/// the pass (a read and a write of the whole result; W1's step ran ≈2% faster without
/// it, medians of 4 alternated rounds, 100.9 -> 99.4 µs). `tests/kernels.rs` checks
/// every path and layout for a -0.
fn positive_zeros<T: Float>(
    c: &mut [T],
    (m, k, n): (usize, usize, usize),
    backend: bool,
    par: Par,
) {
    if backend && k > 2 && m > 1 && n > 1 {
        return;
    }
    let positive_zero = |c: &mut [T]| c.iter_mut().for_each(|v| *v = *v + T::zero());
    if matches!(par, Par::Pool) && c.len() >= 1 << 16 {
        use rayon::prelude::*;
        c.par_chunks_mut(1 << 14).for_each(positive_zero);
    } else {
        positive_zero(c);
    }
}

/// [`multiply`] of a transposed `b` whose rows alias in L1, in column halves, by the
/// backend: each half copies its own columns of `op(b)` (rows `j0..j1` of `b`,
/// contiguous) into a transposed buffer on the thread that multiplies them, so the copy
/// is made where it is read, and the two copies run at once as the two products do.
/// The bits are those of the whole product from a whole transposed copy (a half's
/// columns of `op(b)` are the same values; a column's sums do not depend on the other
/// columns).
///
/// # Safety
/// `T` is f32 or f64 (the backend's types), and `a`, `b`, `c` hold `m·k`, `k·n` and
/// `m·n` elements.
#[allow(clippy::too_many_arguments)]
unsafe fn transposed_halves<T: Float>(
    a: &[T],
    b: &[T],
    c: &mut [T],
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
) {
    let pool = crate::exec::buffers::current();
    let mid = column_split(n);
    let mut bufs = [0..mid, mid..n].map(|cols| (pool.overwritable::<T>(k * cols.len()), cols));
    let (a_rs, a_cs) = strides(m, k, ta);
    let (a_p, c_p) = (Shared(a.as_ptr()), Shared(c.as_mut_ptr()));
    let half = |(bt, cols): &mut (Vec<T>, std::ops::Range<usize>)| {
        let w = cols.len();
        super::transpose::transpose_here(&b[cols.start * k..cols.end * k], bt, w, k);
        // SAFETY: `T` is a backend type and the lengths fit (the caller's contract);
        // as in `multiply`'s `part`: `c` is a unique borrow aliasing neither input; the
        // half writes columns `cols` of it (from its first column on, `n` apart), the
        // other half the other columns; `bt` is `[k, w]` row-major
        unsafe {
            backend_columns(
                (c_p.get().add(cols.start), n),
                (a_p.get(), a_rs, a_cs),
                (bt.as_ptr(), w as isize, 1),
                (m, k),
                0..w,
                false,
                ::gemm::Parallelism::None,
            )
        };
    };
    let [left, right] = &mut bufs;
    in_halves(|| half(left), || half(right));
    for (bt, _) in bufs {
        pool.give(bt);
    }
}

/// Whether a product with a transposed `b` whose rows alias ([`aliasing_stride`]) is
/// cheaper as `cᵀ = b·op(a)ᵀ` followed by a transpose of the result ([`swapped`]): when
/// `b` (`n·k` elements, copied transposed otherwise) is bigger than what the swapped
/// form moves instead, `a`'s copy (`m·k`, when `a` is not transposed) and the result's
/// transpose (`m·n`), and the swapped product is wide enough (`m` columns) to be split
/// across threads as the product is. W3's `dz·W₂ᵀ` (256x1024x1024, 2 threads, the Xeon
/// VM): 2155–2182 → 1857–1891 µs alone, its step 3% faster; the LSTM's 64x512x128 kept
/// its copy (swapped, it ran on one thread and its step was 2–3% slower). Both forms
/// have more than 64 rows and columns, so the backend sums each element over `k` in the
/// same depth blocks (see [`row_blocks_keep_bits`]), and a multiply-add's operands
/// commute: the bits are those of the product on a transposed copy of `b`.
fn swap_pays(m: usize, k: usize, n: usize) -> bool {
    m >= SPLIT_MIN_COLS && n * k > m * (k + n)
}

/// `c = op(a)·bᵀ` computed as its transpose `cᵀ = b·op(a)ᵀ` (`b` as stored, `[n, k]`,
/// is the left operand), into a scratch buffer, then transposed into `c` (see
/// [`swap_pays`]). The same bits as the product on a transposed copy of `b`.
fn swapped<T: Float>(
    a: &[T],
    b: &[T],
    c: &mut [T],
    (m, k, n): (usize, usize, usize),
    ta: bool,
    par: Par,
) {
    let pool = crate::exec::buffers::current();
    let mut ct = pool.overwritable::<T>(m * n);
    // op(a)ᵀ is `a` read transposed when `a` is `[m, k]`, and `a` itself when it is `[k, m]`
    let (par_t, serial) = match par {
        Par::Serial => (Par::Serial, true),
        _ => (par_for(n, k, m, !ta), false),
    };
    multiply(b, a, &mut ct, n, k, m, false, !ta, par_t);
    match serial {
        true => super::transpose::transpose_here(&ct, c, n, m),
        false => super::transpose::transpose(&ct, c, n, m),
    }
    pool.give(ct);
}

/// Whether a transposed `b` (`[n, k]`, rows `k` elements apart) has rows so far apart
/// in powers of two that the backend's packing of its columns reuses a few L1 sets
/// (rows a multiple of 1 KiB apart fall into at most 4 of the 64 sets of a 4 KiB
/// stride), in a product big enough for a copy to pay. Measured on the Zen 5 machine
/// (2 threads): the LSTM's `dz·Uᵀ`, 64x512x128 with rows 2 KiB apart, ≈120-140 µs with
/// `tb` against ≈60-70 µs copied; 64x128x512 (rows 512 B apart) is the same either way.
fn aliasing_stride<T>(m: usize, k: usize, n: usize) -> bool {
    (k * std::mem::size_of::<T>()).is_multiple_of(1024)
        && n >= 32
        && m.saturating_mul(k).saturating_mul(n) >= 1 << 20
}

/// (row stride, column stride) of `op(s)` as a `[rows, cols]` matrix, where `s` is
/// stored row-major as `[rows, cols]`, or as `[cols, rows]` when `transposed`.
fn strides(rows: usize, cols: usize, transposed: bool) -> (isize, isize) {
    if transposed {
        (1, rows as isize)
    } else {
        (cols as isize, 1)
    }
}

/// The `[rows, cols]` view of `op(s)`.
fn view<T>(s: &[T], rows: usize, cols: usize, transposed: bool) -> ArrayView2<'_, T> {
    if transposed {
        ArrayView2::from_shape((cols, rows), s)
            .expect("length checked")
            .reversed_axes()
    } else {
        ArrayView2::from_shape((rows, cols), s).expect("length checked")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1) with varied mantissas.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// The row halves have the bits of the whole product computed in one piece (so
    /// splitting changes no result), whichever layout `a` has, on one thread and on
    /// two, and from outside the pool; and `gemm` takes them exactly where `row_halves`
    /// says.
    #[test]
    fn row_halves_have_the_bits_of_the_whole_product() {
        let shapes = [
            (784, 64, 64),
            (128, 512, 10),
            (300, 33, 127),
            (300, 3, 2),
            // a k past one block, with halves of more than 64 rows or columns
            (256, 1024, 10),
            (130, 784, 64),
            (128, 600, 100),
            // a whole of at most 64 rows and columns: halves cut k alike
            (64, 784, 64),
            (64, 3000, 33),
            (40, 1000, 64),
            (64, 64, 64),
            (17, 513, 40),
        ];
        for (m, k, n) in shapes {
            assert!(row_halves(m, k, n, false), "{m}x{k}x{n}");
            for ta in [false, true] {
                let (a, b) = (values(m * k, 1), values(k * n, 2));
                let mut whole = vec![0f32; m * n];
                multiply(&a, &b, &mut whole, m, k, n, ta, false, Par::Serial);
                // from outside any pool: one half here, the other offered to a worker
                let mut outside = vec![f32::NAN; m * n];
                multiply(&a, &b, &mut outside, m, k, n, ta, false, Par::RowHalves);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&outside), bits(&whole), "{m}x{k}x{n} ta={ta} outside");
                for threads in [1, 2] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let mut halves = vec![f32::NAN; m * n];
                    pool.install(|| {
                        multiply(&a, &b, &mut halves, m, k, n, ta, false, Par::RowHalves)
                    });
                    assert_eq!(
                        bits(&halves),
                        bits(&whole),
                        "{m}x{k}x{n} ta={ta} {threads}t"
                    );
                }
            }
        }
        // never where a half could take another path than the whole
        assert!(!row_halves(784, 64, 64, true)); // a transposed b
        assert!(!row_halves(128, 784, 64, false)); // k past one block, 64x64 halves
        assert!(!row_halves(128, 784, 10, false));
        assert!(!row_halves(784, 64, 1, false)); // a matrix-vector product
        assert!(!row_halves(784, 2, 64, false)); // an outer product
        assert!(!row_halves(16, 64, 32, false)); // halves the dot-product kernels take
        assert!(!row_halves(66, 784, 64, false)); // a whole over 64 rows, halves under
        assert!(!row_halves(784, 64, 128, false)); // wide enough for column halves
    }

    /// A product with a transposed, aliasing `b` that is computed swapped (`cᵀ = b·op(a)ᵀ`
    /// and a transpose) has the bits of the product on a transposed copy of `b`, for
    /// either layout of `a`, in f32 and f64, on one thread and two, and in every way
    /// `gemm` splits it; and the swap is taken exactly where `swap_pays` says.
    #[test]
    fn swapped_products_have_the_bits_of_the_product_on_a_transposed_copy() {
        fn check<T: Float + std::fmt::Debug>(m: usize, k: usize, n: usize, conv: fn(f32) -> T) {
            assert!(
                aliasing_stride::<T>(m, k, n) && swap_pays(m, k, n),
                "{m}x{k}x{n}"
            );
            let (a, b) = (values(m * k, 3), values(k * n, 4));
            let (a, b): (Vec<T>, Vec<T>) = (
                a.into_iter().map(conv).collect(),
                b.into_iter().map(conv).collect(),
            );
            let mut bt = vec![T::zero(); k * n];
            super::super::transpose::transpose_here(&b, &mut bt, n, k);
            let bits = |v: &[T]| {
                v.iter()
                    .map(|x| x.to_f64().unwrap().to_bits())
                    .collect::<Vec<_>>()
            };
            for ta in [false, true] {
                let mut want = vec![T::zero(); m * n];
                multiply(&a, &bt, &mut want, m, k, n, ta, false, Par::Serial);
                for threads in [1, 2] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    for par in [None, Some(Par::Serial)] {
                        let mut got = vec![T::nan(); m * n];
                        pool.install(|| match par {
                            None => gemm(&a, &b, &mut got, m, k, n, ta, true),
                            Some(p) => multiply(&a, &b, &mut got, m, k, n, ta, true, p),
                        });
                        assert_eq!(
                            bits(&got),
                            bits(&want),
                            "{m}x{k}x{n} ta={ta} {threads}t {}",
                            par.is_some()
                        );
                    }
                }
            }
        }
        // W3's dz·W₂ᵀ, a k past one depth block, odd sizes
        for (m, k, n) in [(256, 1024, 1024), (128, 1024, 512), (130, 1280, 300)] {
            check::<f32>(m, k, n, |x| x);
        }
        for (m, k, n) in [(128, 512, 512), (160, 640, 400)] {
            check::<f64>(m, k, n, f64::from);
        }
        assert!(!swap_pays(1024, 1024, 256)); // a bigger than b: the copy of b is cheaper
        assert!(!swap_pays(64, 512, 128)); // the LSTM's dz·Uᵀ: swapped, too narrow to split
        assert!(!swap_pays(256, 1024, 16));
    }
}
