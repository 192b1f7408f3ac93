//! Elementwise loops: map, broadcasting zip, select.
//!
//! Fast paths, each a plain slice-iterator loop the compiler vectorizes: same-shape
//! contiguous operands, a scalar operand, and a "row" operand whose shape is a suffix
//! of the result's (a bias `[k]` added to `[n, k]`). Everything else goes through
//! ndarray's broadcasting `Zip`. Loops longer than [`PAR_MIN`] elements are split
//! across rayon threads in fixed chunks; each element is computed independently, so
//! the split never changes a bit. Results are always in standard layout, in buffers
//! from the installed [`crate::exec::buffers`] pool when there is one.

use crate::exec::buffers::{self, Pooled};
use crate::tensor::data::Arr;
use ndarray::{ArrayD, Ix2, Ix3, Ix4, IxDyn};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Loops shorter than this run on the calling thread.
pub const PAR_MIN: usize = 1 << 16;
/// Elements per parallel task.
pub const PAR_CHUNK: usize = 1 << 14;

/// The shortest loop (in elements, times the work per element) split across threads
/// while the pool's workers are kept awake ([`crate::exec::kernels::awake`]: inside a loop with
/// products, or a run with big ones), where a fork costs about a microsecond instead
/// of a wake-up; an LSTM step's gates are 8192 elements.
pub const AWAKE_PAR_MIN: usize = 1 << 13;

/// For a loop of `n` outputs and `total` work below [`PAR_MIN`]: the chunk length that
/// gives each thread one chunk when the workers are kept awake and the loop reaches
/// [`AWAKE_PAR_MIN`]; else `None` (the loop's usual rule applies). Each output is
/// computed alone, so the split never changes a bit.
pub(crate) fn awake_chunk(n: usize, total: usize) -> Option<usize> {
    let split = (AWAKE_PAR_MIN..PAR_MIN).contains(&total)
        && n >= 2
        && crate::exec::kernels::awake::workers_awake();
    split.then(|| {
        n.div_ceil(rayon::current_num_threads())
            .next_multiple_of(64)
    })
}

/// A standard-layout copy of the view `v`, in a buffer of the installed pool (one slice
/// copy when `v` is contiguous).
pub(crate) fn materialize<T: Pooled>(v: ndarray::ArrayViewD<'_, T>) -> Arr<T> {
    if let Some(t) = transposed_matrix(&v) {
        return t;
    }
    let mut out = buffers::take(v.len());
    let rank = v.ndim();
    match v.as_slice() {
        Some(s) => out.extend_from_slice(s),
        // rows along a unit-stride last axis (a permutation that keeps the last axis,
        // a slice of whole rows): one block copy per row
        None if rank >= 2 && v.strides()[rank - 1] == 1 => {
            // through a fixed-rank view where one exists: stepping a dynamic-rank index
            // costs more than copying a short row (a [28,64,28] permute: 118 µs → 11)
            let v = v.view();
            match rank {
                2 => copy_rows(v.into_dimensionality::<Ix2>().expect("rank 2"), &mut out),
                3 => copy_rows(v.into_dimensionality::<Ix3>().expect("rank 3"), &mut out),
                4 => copy_rows(v.into_dimensionality::<Ix4>().expect("rank 4"), &mut out),
                _ => copy_rows(v, &mut out),
            }
        }
        None => out.extend(v.iter().copied()),
    }
    wrap(v.shape(), out)
}

/// Appends `v`'s rows (unit stride along the last axis) to `out`, one block copy each.
fn copy_rows<T: Copy, D: ndarray::Dimension>(v: ndarray::ArrayView<'_, T, D>, out: &mut Vec<T>) {
    for row in v.rows() {
        match row.as_slice() {
            Some(r) => out.extend_from_slice(r),
            None => out.extend(row.iter().copied()),
        }
    }
}

/// `v` copied to standard layout when `v` is the transpose of a whole row-major matrix
/// (shape `[r, c]`, strides `[1, r]`).
fn transposed_matrix<T: Pooled>(v: &ndarray::ArrayViewD<'_, T>) -> Option<Arr<T>> {
    let (r, c) = match *v.shape() {
        [r, c] if r > 1 && c > 1 => (r, c),
        _ => return None,
    };
    if v.strides() != [1, r as isize] {
        return None;
    }
    let src = v.as_slice_memory_order()?; // `[c, r]`, row-major
    let mut out = buffers::overwritable::<T>(r * c);
    super::transpose::transpose(src, &mut out, c, r);
    Some(wrap(&[r, c], out))
}

/// `v` as a standard-layout array of `shape`.
pub(crate) fn wrap<O: Clone>(shape: &[usize], v: Vec<O>) -> Arr<O> {
    ArrayD::from_shape_vec(IxDyn(shape), v)
        .expect("length matches shape")
        .into_shared()
}

/// The instruction sets loops are compiled for, narrowest first. The build targets the
/// baseline; `vectorized` and `vectorized_wide` pick the widest copy the CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// The build's target (SSE2 on x86-64; the only one on other architectures).
    Baseline,
    /// AVX2 and FMA: 8 f32 or 4 f64 lanes.
    Avx2,
    /// AVX-512 F, VL, DQ and BW (with AVX2 and FMA): 16 f32 or 8 f64 lanes.
    Avx512,
}

impl Isa {
    /// The widest instruction set this CPU runs (checked once).
    pub fn detect() -> Isa {
        use std::sync::OnceLock;
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                use std::arch::is_x86_feature_detected as on;
                let has = |f: &[bool]| f.iter().all(|&b| b);
                let avx2 = has(&[on!("avx2"), on!("fma")]);
                let avx512 = has(&[
                    on!("avx512f"),
                    on!("avx512vl"),
                    on!("avx512dq"),
                    on!("avx512bw"),
                ]);
                match (avx2, avx512) {
                    (true, true) => return Isa::Avx512,
                    (true, false) => return Isa::Avx2,
                    _ => {}
                }
            }
            Isa::Baseline
        })
    }

    /// Every instruction set this CPU runs, narrowest first.
    pub fn available() -> impl Iterator<Item = Isa> {
        [Isa::Baseline, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|&i| i <= Isa::detect())
    }
}

/// Whether the CPU has AVX2 and FMA (checked once at run time).
#[cfg(target_arch = "x86_64")]
pub fn has_avx2() -> bool {
    Isa::detect() >= Isa::Avx2
}

/// Runs `f` compiled for AVX2+FMA when the CPU has them, else for the baseline target.
/// The loop inside `f` is inlined into the feature-enabled copy, so it vectorizes 8
/// f32 lanes wide. Rust never contracts `a*b+c` into an FMA on its own, and an explicit
/// `mul_add` rounds once in every copy (an instruction here, the C library's `fma`
/// in the baseline copy), so both copies compute the same bits.
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports avx2 and fma (checked just above).
        return unsafe { avx2(f) };
    }
    f()
}

/// [`vectorized`] with an AVX-512 copy as well (16 f32 lanes), for the loops measured
/// to gain from it: the fused-loop kernel's, about 20% on transcendental-heavy
/// programs. The elementwise kernels here stay on [`vectorized`] until they are checked
/// loop by loop: with a third copy LLVM compiled some of them worse (eager `relu`'s
/// scalar-operand loop 25% slower, the last-axis `max` fold 16%) and others better (the
/// first-axis `max` fold 6x faster). Callers mark `f`, and the scalar functions it
/// calls per element, `#[inline(always)]`: each is called from three copies, and LLVM
/// would otherwise keep a large one (`sin`) out of line, which leaves the loop scalar.
/// Every copy computes the same bits: IEEE basic operations, conversions and selects
/// round the same at any width.
#[inline(always)]
pub fn vectorized_wide<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: the CPU runs the instruction set it detected.
    unsafe { vectorized_unchecked(Isa::detect(), f) }
}

/// Runs `f` compiled for `isa` (for tests that compare the copies).
///
/// # Panics
/// If the CPU does not run `isa`.
#[inline(always)]
pub fn vectorized_for<R>(isa: Isa, f: impl FnOnce() -> R) -> R {
    assert!(isa <= Isa::detect(), "this CPU does not run {isa:?}");
    // SAFETY: checked just above.
    unsafe { vectorized_unchecked(isa, f) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
fn avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// # Safety
/// The CPU must run `isa`.
#[inline(always)]
unsafe fn vectorized_unchecked<R>(isa: Isa, f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: the caller's promise.
        Isa::Avx512 => return unsafe { avx512(f) },
        // SAFETY: the caller's promise.
        Isa::Avx2 => return unsafe { avx2(f) },
        Isa::Baseline => {}
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = isa; // one copy only
    f()
}

/// A Vec of `n` elements written by `fill(start, chunk)`: in one call below [`PAR_MIN`]
/// elements (one chunk per thread from [`AWAKE_PAR_MIN`] while the workers are kept
/// awake, see [`awake_chunk`]), else in parallel chunks of [`PAR_CHUNK`].
///
/// # Safety
/// `fill` must write every element of the chunk it is given (or panic): the Vec's
/// length is set to `n` afterwards, so an element it skips would be read uninitialized.
unsafe fn par_fill<O: Pooled>(
    n: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<O>]) + Sync,
) -> Vec<O> {
    let mut v = buffers::take(n);
    let out = &mut v.spare_capacity_mut()[..n];
    match awake_chunk(n, n).or((n >= PAR_MIN).then_some(PAR_CHUNK)) {
        Some(per) => out
            .par_chunks_mut(per)
            .enumerate()
            .for_each(|(i, c)| fill(i * per, c)),
        None => fill(0, out),
    }
    // SAFETY: the chunks cover 0..n and `fill` wrote each element of its chunk; if it
    // panicked, the panic propagates before this line and the Vec stays empty.
    unsafe { v.set_len(n) };
    v
}

/// `f` over a slice into a new Vec (parallel above [`PAR_MIN`]).
fn map_slice<T: Copy + Sync, O: Pooled>(x: &[T], f: impl Fn(T) -> O + Sync) -> Vec<O> {
    // SAFETY: `map_chunk` writes the whole chunk `out` from operands at least as long
    // from `s` (they have `n` elements).
    unsafe { par_fill(x.len(), |s, out| map_chunk(out, &x[s..], &f)) }
}

/// Writes `f(x[i])` into every `out[i]`, with the loop itself compiled for AVX2 where
/// the CPU has it. Unlike [`vectorized`], which relies on LLVM inlining a closure
/// holding the loop into the feature-enabled copy (it declines once the loop body is
/// large: `tanh`, `sin`), the loop here is the body of the feature-enabled function,
/// so it vectorizes whenever `f` inlines (pass an `#[inline(always)]` function item
/// for long scalar functions). Both copies compute the same bits.
#[inline(always)]
fn map_chunk<T: Copy, O, F: Fn(T) -> O>(out: &mut [MaybeUninit<O>], x: &[T], f: &F) {
    #[cfg(target_arch = "x86_64")]
    match Isa::detect() {
        // SAFETY: the CPU runs the instruction set it detected.
        Isa::Avx512 => return unsafe { map_chunk_avx512(out, x, f) },
        // SAFETY: as above.
        Isa::Avx2 => return unsafe { map_chunk_avx2(out, x, f) },
        Isa::Baseline => {}
    }
    for (o, &v) in out.iter_mut().zip(x) {
        o.write(f(v));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
fn map_chunk_avx512<T: Copy, O, F: Fn(T) -> O>(out: &mut [MaybeUninit<O>], x: &[T], f: &F) {
    for (o, &v) in out.iter_mut().zip(x) {
        o.write(f(v));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn map_chunk_avx2<T: Copy, O, F: Fn(T) -> O>(out: &mut [MaybeUninit<O>], x: &[T], f: &F) {
    for (o, &v) in out.iter_mut().zip(x) {
        o.write(f(v));
    }
}

/// `f` over two equal-length slices into a new Vec.
fn zip_slices<A: Copy + Sync, B: Copy + Sync, O: Pooled>(
    x: &[A],
    y: &[B],
    f: impl Fn(A, B) -> O + Sync,
) -> Vec<O> {
    // SAFETY: the loop zips the whole chunk `out` with operands at least as long from
    // `s` (they have `n` elements), so it writes every element.
    unsafe {
        par_fill(x.len(), |s, out| {
            vectorized(|| {
                for ((o, &a), &b) in out.iter_mut().zip(&x[s..]).zip(&y[s..]) {
                    o.write(f(a, b));
                }
            })
        })
    }
}

/// `f(x[i], row[i % row.len()])` with `x` a whole number of rows.
fn zip_rows<A: Copy + Sync, B: Copy + Sync, O: Pooled>(
    x: &[A],
    row: &[B],
    f: impl Fn(A, B) -> O + Sync,
) -> Vec<O> {
    let k = row.len();
    // the `set_len` below relies on it
    assert!(
        x.len().is_multiple_of(k.max(1)),
        "zip_rows: {} elements are not whole rows of {k}",
        x.len()
    );
    let rows = |s: usize, out: &mut [MaybeUninit<O>]| {
        vectorized(|| {
            for (or, xr) in out.chunks_exact_mut(k).zip(x[s..].chunks_exact(k)) {
                for ((o, &a), &b) in or.iter_mut().zip(xr).zip(row) {
                    o.write(f(a, b));
                }
            }
        })
    };
    let mut v = buffers::take(x.len());
    if x.len() < PAR_MIN {
        rows(0, &mut v.spare_capacity_mut()[..x.len()]);
    } else {
        let task = (PAR_CHUNK / k).max(1) * k;
        v.spare_capacity_mut()[..x.len()]
            .par_chunks_mut(task)
            .enumerate()
            .for_each(|(i, c)| rows(i * task, c));
    }
    // SAFETY: `x.len()` is a multiple of `k`, so the row chunks cover 0..x.len() and
    // each wrote every element; a panic propagates before this line.
    unsafe { v.set_len(x.len()) };
    v
}

/// Whether `small` broadcasts to `full` as a trailing row: after dropping leading 1s it
/// equals a suffix of `full`.
pub(crate) fn is_row_of(small: &[usize], full: &[usize]) -> bool {
    let s = &small[small.iter().take_while(|&&d| d == 1).count()..];
    !s.is_empty() && s.len() <= full.len() && full[full.len() - s.len()..] == *s
}

/// `f(x)` for every element.
pub fn map<T: Copy + Send + Sync, O: Pooled>(a: &Arr<T>, f: impl Fn(T) -> O + Sync) -> Arr<O> {
    match a.as_slice() {
        Some(s) => wrap(a.shape(), map_slice(s, f)),
        None => {
            // logical order, so the result is in standard layout whatever `a`'s is
            let mut out = buffers::take(a.len());
            out.extend(a.iter().map(|&x| f(x)));
            wrap(a.shape(), out)
        }
    }
}

/// `f(a, b)` with NumPy broadcasting to `shape`.
pub fn zip<A, B, O>(a: &Arr<A>, b: &Arr<B>, shape: &[usize], f: impl Fn(A, B) -> O + Sync) -> Arr<O>
where
    A: Copy + Send + Sync,
    B: Copy + Send + Sync,
    O: Pooled,
{
    let n: usize = shape.iter().product();
    if let (Some(x), Some(y)) = (a.as_slice(), b.as_slice()) {
        if x.len() == n && y.len() == n {
            return wrap(shape, zip_slices(x, y, f));
        }
        if y.len() == 1 && x.len() == n {
            let c = y[0];
            return wrap(shape, map_slice(x, |v| f(v, c)));
        }
        if x.len() == 1 && y.len() == n {
            let c = x[0];
            return wrap(shape, map_slice(y, |v| f(c, v)));
        }
        if x.len() == n && is_row_of(b.shape(), shape) {
            return wrap(shape, zip_rows(x, y, f));
        }
        if y.len() == n && is_row_of(a.shape(), shape) {
            return wrap(shape, zip_rows(y, x, |q, p| f(p, q)));
        }
        if let (true, Some(k)) = (x.len() == n, col_width(b.shape(), shape)) {
            return wrap(shape, zip_cols(x, y, k, f));
        }
        if let (true, Some(k)) = (y.len() == n, col_width(a.shape(), shape)) {
            return wrap(shape, zip_cols(y, x, k, |q, p| f(p, q)));
        }
        // an outer product: a column against a row (a one-hot's `labels == classes`)
        if col_width(a.shape(), shape) == Some(y.len()) && is_row_of(b.shape(), shape) {
            let mut out = buffers::take(n);
            vectorized(|| {
                for &p in x {
                    out.extend(y.iter().map(|&q| f(p, q)));
                }
            });
            return wrap(shape, out);
        }
    }
    let sh = IxDyn(shape);
    let av = a.broadcast(sh.clone()).expect("infer checked broadcasting");
    let bv = b.broadcast(sh).expect("infer checked broadcasting");
    let mut out = buffers::take(n);
    out.extend(av.iter().zip(bv.iter()).map(|(&x, &y)| f(x, y)));
    wrap(shape, out)
}

/// If `small` broadcasts to `full` as a column, `[d0, .., dj, 1, .., 1]` with the
/// `d`s a prefix of `full`, the number of elements each of its values spans.
pub(crate) fn col_width(small: &[usize], full: &[usize]) -> Option<usize> {
    let lead = full.len().checked_sub(small.len())?;
    let padded = std::iter::repeat_n(1, lead).chain(small.iter().copied());
    let ones = padded.clone().rev().take_while(|&d| d == 1).count();
    let kept = full.len() - ones;
    let matches = padded.take(kept).zip(&full[..kept]).all(|(s, &f)| s == f);
    let k: usize = full[kept..].iter().product();
    (matches && ones > 0 && k > 1).then_some(k)
}

/// `f(x[i], col[i / k])`: each column value spans `k` consecutive elements.
fn zip_cols<A: Copy + Sync, B: Copy + Sync, O: Pooled>(
    x: &[A],
    col: &[B],
    k: usize,
    f: impl Fn(A, B) -> O + Sync,
) -> Vec<O> {
    let task = (PAR_CHUNK / k).max(1) * k;
    let fill = |s: usize, out: &mut [MaybeUninit<O>]| {
        vectorized(|| {
            for ((oc, xc), &c) in out.chunks_mut(k).zip(x[s..].chunks(k)).zip(&col[s / k..]) {
                for (o, &a) in oc.iter_mut().zip(xc) {
                    o.write(f(a, c));
                }
            }
        })
    };
    let mut v = buffers::take(x.len());
    if x.len() < PAR_MIN {
        fill(0, &mut v.spare_capacity_mut()[..x.len()]);
    } else {
        v.spare_capacity_mut()[..x.len()]
            .par_chunks_mut(task)
            .enumerate()
            .for_each(|(i, c)| fill(i * task, c));
    }
    // SAFETY: `x.len()` is a multiple of `k` and the chunks cover 0..x.len(), each
    // element written once; a panic propagates before this line.
    unsafe { v.set_len(x.len()) };
    v
}

/// `set(mask) ? a : b` elementwise, broadcasting all three to `shape`.
pub fn select<M: Copy + Send + Sync, T: Pooled>(
    mask: &Arr<M>,
    set: impl Fn(M) -> bool + Sync,
    a: &Arr<T>,
    b: &Arr<T>,
    shape: &[usize],
) -> Arr<T> {
    let n: usize = shape.iter().product();
    if let (Some(m), Some(x), Some(y)) = (mask.as_slice(), a.as_slice(), b.as_slice()) {
        if m.len() == n && x.len() == n && y.len() == n {
            // SAFETY: the loop zips the whole chunk `out` with operands at least as long from
            // `s` (they have `n` elements), so it writes every element.
            let v = unsafe {
                par_fill(n, |s, out| {
                    vectorized(|| {
                        for (((o, &m), &x), &y) in
                            out.iter_mut().zip(&m[s..]).zip(&x[s..]).zip(&y[s..])
                        {
                            o.write(if set(m) { x } else { y });
                        }
                    })
                })
            };
            return wrap(shape, v);
        }
    }
    let sh = IxDyn(shape);
    let mv = mask
        .broadcast(sh.clone())
        .expect("infer checked broadcasting");
    let av = a.broadcast(sh.clone()).expect("infer checked broadcasting");
    let bv = b.broadcast(sh).expect("infer checked broadcasting");
    let mut out = buffers::take(n);
    out.extend(
        mv.iter()
            .zip(av.iter().zip(bv.iter()))
            .map(|(&m, (&x, &y))| if set(m) { x } else { y }),
    );
    wrap(shape, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{s, Axis};

    /// Every path of `materialize` (contiguous, unit-stride rows, a transposed matrix,
    /// anything else) gives the view's elements in logical order.
    #[test]
    fn materialize_copies_any_view_in_logical_order() {
        let a = ArrayD::from_shape_fn(IxDyn(&[5, 6, 7]), |i| {
            (i[0] * 100 + i[1] * 10 + i[2]) as f32
        });
        let m2 = ArrayD::from_shape_fn(IxDyn(&[9, 13]), |i| (i[0] * 100 + i[1]) as f64);
        let check = |v: ndarray::ArrayViewD<'_, f32>| {
            let got = materialize(v.view());
            assert_eq!(got.shape(), v.shape());
            assert!(got.is_standard_layout());
            assert_eq!(
                got.iter().copied().collect::<Vec<_>>(),
                v.iter().copied().collect::<Vec<_>>()
            );
        };
        check(a.view());
        check(a.view().permuted_axes(IxDyn(&[1, 0, 2]))); // rows kept
        check(a.view().permuted_axes(IxDyn(&[2, 0, 1]))); // last axis moved
        check(a.slice(s![.., 1..4, ..]).into_dyn()); // whole rows of a slice
        check(a.slice(s![.., .., 2..5]).into_dyn()); // partial rows

        // a transposed matrix of a slice
        check(a.index_axis(Axis(1), 3).reversed_axes());
        // unit-stride rows at every rank the fixed-rank walks cover, and beyond
        check(a.slice(s![1..4, 2, ..]).into_dyn()); // rank 2
        let b = ArrayD::from_shape_fn(IxDyn(&[2, 3, 4, 5, 6]), |i: IxDyn| {
            (0..5).fold(0.0, |acc, d| acc * 10.0 + i[d] as f32)
        });
        check(b.view().permuted_axes(IxDyn(&[3, 1, 0, 2, 4]))); // rank 5
        check(b.index_axis(Axis(2), 1).permuted_axes(IxDyn(&[2, 0, 1, 3]))); // rank 4
        let t = m2.view().reversed_axes(); // a whole transposed matrix
        let got = materialize(t.view());
        assert_eq!(got.shape(), &[13, 9]);
        assert!(got.indexed_iter().all(|(i, &v)| v == m2[[i[1], i[0]]]));
    }
}
