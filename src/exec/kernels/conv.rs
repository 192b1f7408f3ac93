//! 2-D convolution kernels: NHWC input `[n, h, w, cin]`, filter `[kh, kw, cin, cout]`
//! (TensorFlow's layouts), output `[n, oh, ow, cout]`; forward and both backprops.
//!
//! Owns: [`Conv2dGeom`] (the resolved geometry; `Conv2dGeom::new`, which checks the
//! shapes and applies the padding rule, lives with `Padding` in `ops::conv`), [`conv2d`],
//! [`conv2d_backprop_input`] and [`conv2d_backprop_filter`].
//!
//! Algorithm: im2col + GEMM. Output row `r = (b, oy, ox)` of the im2col matrix `col`
//! holds the receptive field of that output pixel in filter order `(ky, kx, ci)`, zeros
//! where it hangs over the padding, so with `K = kh·kw·cin`:
//! - forward: `y[rows, cout] = col[rows, K] · w[K, cout]` (the filter is already `[K, cout]`);
//! - input grad: `dcol = gy · wᵀ`, then col2im scatter-adds `dcol` back onto `gx`;
//! - filter grad: `gw[K, cout] = colᵀ · gy`.
//!
//! A 1×1, stride-1, unpadded conv skips im2col (`col` is `x` itself).
//!
//! Invariants:
//! - Memory stays bounded: `col` (and the input grad's `dcol`) is built per chunk of
//!   output rows, about `COL_CHUNK_ELEMS` elements per worker (twice that in the
//!   filter grad), never for the whole batch; the filter grad keeps at most
//!   `MAX_PARTIALS` partial sums, within about `PARTIALS_ELEMS` elements (or a single
//!   one, when the filter alone is larger).
//! - Deterministic: chunk and task boundaries depend only on the geometry, never on
//!   the thread count, and so does every choice between the serial and the parallel
//!   GEMM. Forward chunks are independent; input-grad tasks own whole images (their
//!   `gx` regions are disjoint) and scatter-add in row order; the filter grad sums
//!   its chunks' products in order within fixed groups, then the groups in order.

use super::gemm::{gemm, gemm_serial};
use crate::exec::buffers::{self, Scratch};
use crate::tensor::data::Float;
use rayon::prelude::*;

/// Target size, in elements, of one chunk's im2col buffer (256 KiB of f32).
const COL_CHUNK_ELEMS: usize = 1 << 16;
/// Fewest output rows per chunk, so small-`K` convs still give GEMM some height.
const MIN_CHUNK_ROWS: usize = 64;
/// Most output rows per chunk, so large batches still split across threads.
const MAX_CHUNK_ROWS: usize = 2048;
/// Below this many chunks, [`Conv2dGeom::rows_per_chunk`] evens them out.
const EVEN_CHUNKS: usize = 8;
/// Budget, in elements, for the filter grad's per-group partial sums (8 MiB of f32).
const PARTIALS_ELEMS: usize = 1 << 21;
/// Most groups the filter grad splits its reduction into.
const MAX_PARTIALS: usize = 64;

/// The checked geometry of one 2-D convolution: input `[n, h, w, cin]`, filter
/// `[kh, kw, cin, cout]`, strides, padding before the first row/column, and the output
/// size `[n, oh, ow, cout]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dGeom {
    /// Batch size.
    pub n: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Input channels.
    pub cin: usize,
    /// Filter height.
    pub kh: usize,
    /// Filter width.
    pub kw: usize,
    /// Output channels.
    pub cout: usize,
    /// Vertical stride.
    pub sh: usize,
    /// Horizontal stride.
    pub sw: usize,
    /// Zero rows above the input (the rest of the vertical padding is below).
    pub pad_top: usize,
    /// Zero columns left of the input (the rest of the horizontal padding is right).
    pub pad_left: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
}

impl Conv2dGeom {
    /// The output shape `[n, oh, ow, cout]`.
    pub fn out_shape(&self) -> [usize; 4] {
        [self.n, self.oh, self.ow, self.cout]
    }

    /// Output pixels over the batch: the rows of the im2col matrix.
    fn rows(&self) -> usize {
        self.n * self.oh * self.ow
    }

    /// Length of one receptive field: the columns of the im2col matrix.
    fn k(&self) -> usize {
        self.kh * self.kw * self.cin
    }

    /// Whether the im2col matrix is `x` itself.
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.sh == 1 && self.sw == 1
    }

    /// Output rows per chunk of the forward and the input grad: depends on the
    /// geometry only (determinism); about [`COL_CHUNK_ELEMS`] elements of `col` each
    /// ([`Conv2dGeom::rows_per_chunk`]).
    fn chunk_rows(&self) -> usize {
        self.rows_per_chunk(COL_CHUNK_ELEMS, MAX_CHUNK_ROWS)
    }

    /// Output rows per chunk of the filter grad, twice the others: there the chunk's
    /// rows are the product's reduction, and a longer one runs the GEMM faster (the
    /// tutorial CNN's three filter grads on the 2-core Zen 4 VM, alternated in one
    /// process: 173 → 163, 949 → 906 and 203 → 158 µs).
    fn filter_chunk_rows(&self) -> usize {
        self.rows_per_chunk(2 * COL_CHUNK_ELEMS, 2 * MAX_CHUNK_ROWS)
    }

    /// About `elems / K` rows per chunk (within [`MIN_CHUNK_ROWS`]`..=max_rows`); but
    /// a product that makes 2 to [`EVEN_CHUNKS`] chunks is cut into an even number of
    /// equal ones instead (while they keep [`MIN_CHUNK_ROWS`]), so that two threads
    /// share it evenly: the tutorial CNN's third layer (288 rows of K = 576) made
    /// three chunks of the forward, which two threads ran as two rounds, and a filter
    /// grad of 227 and 61 rows.
    fn rows_per_chunk(&self, elems: usize, max_rows: usize) -> usize {
        let rows = self.rows();
        let chunk = (elems / self.k().max(1)).clamp(MIN_CHUNK_ROWS, max_rows);
        let chunks = rows.div_ceil(chunk);
        if !(2..EVEN_CHUNKS).contains(&chunks) {
            return chunk;
        }
        let even = rows.div_ceil(chunks.next_multiple_of(2));
        match even >= MIN_CHUNK_ROWS {
            true => even,
            false => chunk,
        }
    }

    fn check(&self, what: &str, len: usize, shape: [usize; 4]) {
        let want: usize = shape.iter().product();
        assert_eq!(
            len, want,
            "conv2d: {what} has {len} elements, geometry wants {shape:?}"
        );
    }
}

/// Forward convolution `y = x ⋆ w`: `x` `[n, h, w, cin]`, `w` `[kh, kw, cin, cout]`,
/// returns `y` `[n, oh, ow, cout]` (cross-correlation, as in TensorFlow).
///
/// # Panics
/// If a slice length does not match `g`.
///
/// # Example
/// ```
/// use tapeflow::exec::kernels::conv::{conv2d, Conv2dGeom};
/// use tapeflow::Padding;
/// // A 3x3 image, a 2x2 box filter, stride 1, no padding.
/// let g = Conv2dGeom::new(&[1, 3, 3, 1], &[2, 2, 1, 1], (1, 1), Padding::Valid).unwrap();
/// let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0];
/// assert_eq!(conv2d(&x, &[1.0f32; 4], &g), vec![12.0, 16.0, 24.0, 28.0]);
/// ```
pub fn conv2d<T: Float>(x: &[T], w: &[T], g: &Conv2dGeom) -> Vec<T> {
    conv2d_then(x, w, g, |_| {})
}

/// [`conv2d`] with a per-channel epilogue: each output element `y` of channel `c`
/// becomes `act(y, b[c])` (`b` is `[cout]`; the caller's `act` is the op's math, e.g. a
/// bias and ReLU, `maximum(y + b, 0)`), applied to each chunk of output rows as soon as
/// the chunk is computed, while it is in cache: the bits of `conv2d` followed by `act`
/// elementwise, without a second pass over the output.
///
/// # Panics
/// If a slice length does not match `g`, or `b` is not `cout` long.
pub fn conv2d_epilogue<T: Float, F: Fn(T, T) -> T + Copy + Sync>(
    x: &[T],
    w: &[T],
    b: &[T],
    g: &Conv2dGeom,
    act: F,
) -> Vec<T> {
    assert_eq!(
        b.len(),
        g.cout,
        "conv2d: the epilogue has {} values, not cout = {}",
        b.len(),
        g.cout
    );
    conv2d_then(x, w, g, |yc| {
        // a copy on this stack frame: its captured values stay in registers
        let act_here = act;
        super::ew::vectorized_wide(
            #[inline(always)]
            || {
                for row in yc.chunks_exact_mut(b.len().max(1)) {
                    epilogue_row(row, b, act_here);
                }
            },
        )
    })
}

/// `act(y, b[c])` over one output row.
#[inline(always)]
fn epilogue_row<T: Float, F: Fn(T, T) -> T>(row: &mut [T], b: &[T], act: F) {
    for (v, &bc) in row.iter_mut().zip(b) {
        *v = act(*v, bc);
    }
}

/// [`conv2d`] with `then` run on each chunk of whole output rows right after it is
/// computed (on the thread that computed it).
fn conv2d_then<T: Float>(
    x: &[T],
    w: &[T],
    g: &Conv2dGeom,
    then: impl Fn(&mut [T]) + Sync,
) -> Vec<T> {
    g.check("input", x.len(), [g.n, g.h, g.w, g.cin]);
    g.check("filter", w.len(), [g.kh, g.kw, g.cin, g.cout]);
    let (rows, k, cout) = (g.rows(), g.k(), g.cout);
    let mut y = buffers::overwritable(rows * cout);
    if y.is_empty() || k == 0 {
        y.fill(T::zero()); // an empty sum
        then(&mut y);
        return y;
    }
    if g.is_pointwise() {
        gemm(x, w, &mut y, rows, k, cout, false, false);
        then(&mut y);
        return y;
    }
    let chunk = g.chunk_rows();
    if k <= SMALL_K {
        y.par_chunks_mut(chunk * cout)
            .enumerate()
            .for_each(|(i, yc)| {
                small_k_conv(x, g, w, i * chunk, yc);
                then(yc);
            });
        return y;
    }
    let multiply = piece_gemm(rows.div_ceil(chunk));
    let pool = buffers::current();
    y.par_chunks_mut(chunk * cout).enumerate().for_each_init(
        || Scratch::new(pool),
        |col, (i, yc)| {
            let nr = yc.len() / cout;
            let col = col.overwritable(nr * k);
            im2col(x, g, i * chunk, col);
            multiply(col, w, yc, nr, k, cout, false, false);
            then(yc);
        },
    );
    y
}

/// Receptive fields of at most this many elements (a 3x3 filter over one or a few
/// channels) multiply in [`small_k_conv`] instead of the GEMM, whose packing costs
/// more than such short sums. Measured on the 2-core Zen 5 machine (2 threads): the
/// tutorial CNN's first layer (`[32,28,28,1]`, 3x3, 32 filters, K = 9) 269 → 192 µs,
/// of which the products were then about a third (the rest was im2col; the fields are
/// now gathered a few rows at a time instead, see [`small_k_conv`]).
const SMALL_K: usize = 16;

/// Output rows `r0..` of the convolution (as many as `y` holds) for a receptive field
/// of at most [`SMALL_K`] elements: `y[r, :] = field(r) · w`, each output summing its
/// `k` products from +0 in order with fused multiply-adds. [`ROWS`] rows and 16
/// outputs at a time, in registers, so independent sums hide the multiply-add latency.
/// [`ROWS`] consecutive pixels of an output row whose windows lie inside the image
/// read their fields straight from `x`; others (at the edges, over padding) are
/// gathered into a buffer on the stack ([`gather_field`]). There is no im2col matrix:
/// the same products as im2col and a product, in the same order, so the same bits.
/// (Every instruction-set copy rounds alike: a fused multiply-add is exact before its
/// one rounding, in hardware and in `mul_add`'s software fallback.)
fn small_k_conv<T: Float>(x: &[T], g: &Conv2dGeom, w: &[T], r0: usize, y: &mut [T]) {
    let (k, n) = (g.k(), g.cout);
    let offsets = field_offsets(g);
    let offsets = &offsets[..k];
    // from one pixel's window to the next one's along an output row
    let step = g.sw * g.cin;
    super::ew::vectorized_wide(
        #[inline(always)]
        || {
            let rows = y.len() / n.max(1);
            let mut pixels = output_pixels(g, r0);
            let mut fields = [T::zero(); ROWS * SMALL_K];
            let mut r = 0;
            while r < rows {
                let y = &mut y[r * n..];
                let pixel = pixels.next().expect("endless");
                if r + ROWS <= rows {
                    if let Some(at) = windows_inside(g, pixel, ROWS) {
                        // the fields straight from `x`: no copy
                        let field = |i: usize, j: usize| x[at + i * step + offsets[j]];
                        rows_product::<T, ROWS>(field, w, y, k, n);
                        for _ in 1..ROWS {
                            pixels.next();
                        }
                        r += ROWS;
                        continue;
                    }
                }
                let here = if r + ROWS <= rows { ROWS } else { 1 };
                gather_field(x, g, offsets, pixel, &mut fields[..k]);
                for field in fields.chunks_exact_mut(k).take(here).skip(1) {
                    gather_field(x, g, offsets, pixels.next().expect("endless"), field);
                }
                let field = |i: usize, j: usize| fields[i * k + j];
                match here {
                    ROWS => rows_product::<T, ROWS>(field, w, y, k, n),
                    _ => rows_product::<T, 1>(field, w, y, k, n),
                }
                r += here;
            }
        },
    );
}

/// Where each element `(ky, kx, ci)` of a receptive field of at most [`SMALL_K`]
/// elements lies in `x` relative to its window's first element (the first `k` entries).
fn field_offsets(g: &Conv2dGeom) -> [usize; SMALL_K] {
    let mut offsets = [0usize; SMALL_K];
    for (j, o) in offsets[..g.k()].iter_mut().enumerate() {
        let (ky, kx, ci) = (j / (g.kw * g.cin), j / g.cin % g.kw, j % g.cin);
        *o = (ky * g.w + kx) * g.cin + ci;
    }
    offsets
}

/// Copies the receptive field of output pixel `pixel` into `field` (`k` elements, in
/// filter order): from `offsets` ([`field_offsets`]) for a window inside the image,
/// through [`walk_into`] (zeros for padding) for one over its edge — the values
/// [`im2col`] puts in that pixel's row.
#[inline(always)]
fn gather_field<T: Float>(
    x: &[T],
    g: &Conv2dGeom,
    offsets: &[usize],
    pixel: (usize, usize, usize),
    field: &mut [T],
) {
    match windows_inside(g, pixel, 1) {
        Some(at) => {
            for (f, &o) in field.iter_mut().zip(offsets) {
                *f = x[at + o];
            }
        }
        None => walk_into(x, g, pixel, field),
    }
}

/// For the windows of `count` consecutive output pixels of one output row, starting at
/// `pixel`: the flat index into `x` of the first window's first element, if every one
/// of them lies inside the image (no padding).
#[inline(always)]
fn windows_inside(
    g: &Conv2dGeom,
    (b, oy, ox): (usize, usize, usize),
    count: usize,
) -> Option<usize> {
    let (y0, x0) = (
        window_start(oy, g.sh, g.pad_top),
        window_start(ox, g.sw, g.pad_left),
    );
    let last = x0 + ((count - 1) * g.sw) as isize;
    let inside = ox + count <= g.ow
        && y0 >= 0
        && x0 >= 0
        && y0 as usize + g.kh <= g.h
        && last as usize + g.kw <= g.w;
    inside.then(|| ((b * g.h + y0 as usize) * g.w + x0 as usize) * g.cin)
}

/// Rows of [`small_k_conv`] at a time. Eight ran the tutorial CNN's first layer
/// (`[32,28,28,1]`, 3x3, 32 filters) 15% slower on one Zen 4 core: 472 against 411 µs.
const ROWS: usize = 4;

/// [`small_k_conv`]'s product for `R` rows: `y[i, :] = field(i, ·) · w` for `i < R`,
/// where `field(i, j)` is element `j` of row `i`'s receptive field (read from the
/// gathered copy or straight from `x`: the same values, so the same bits).
#[inline(always)]
fn rows_product<T: Float, const R: usize>(
    field: impl Fn(usize, usize) -> T,
    w: &[T],
    y: &mut [T],
    k: usize,
    n: usize,
) {
    const BLOCK: usize = 16;
    let full = n / BLOCK * BLOCK;
    for c0 in (0..full).step_by(BLOCK) {
        let mut acc = [[T::zero(); BLOCK]; R];
        for j in 0..k {
            let wj: &[T; BLOCK] =
                (w[j * n + c0..j * n + c0 + BLOCK].try_into()).expect("BLOCK elements");
            for (i, acc) in acc.iter_mut().enumerate() {
                let a = field(i, j);
                for l in 0..BLOCK {
                    acc[l] = a.mul_add(wj[l], acc[l]);
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            y[i * n + c0..i * n + c0 + BLOCK].copy_from_slice(acc);
        }
    }
    for i in 0..R {
        for c in full..n {
            let mut acc = T::zero();
            for j in 0..k {
                acc = field(i, j).mul_add(w[j * n + c], acc);
            }
            y[i * n + c] = acc;
        }
    }
}

/// Gradient of [`conv2d`] with respect to its input: given `gy` `[n, oh, ow, cout]`
/// and `w`, returns `gx` `[n, h, w, cin]` (TensorFlow's `Conv2DBackpropInput`).
///
/// # Panics
/// If a slice length does not match `g`.
pub fn conv2d_backprop_input<T: Float>(gy: &[T], w: &[T], g: &Conv2dGeom) -> Vec<T> {
    g.check("output gradient", gy.len(), g.out_shape());
    g.check("filter", w.len(), [g.kh, g.kw, g.cin, g.cout]);
    let (k, cout) = (g.k(), g.cout);
    let image = g.h * g.w * g.cin;
    let mut gx = buffers::zeroed(g.n * image);
    if gx.is_empty() || g.rows() == 0 || cout == 0 {
        return gx;
    }
    if g.is_pointwise() {
        // gx = gy · wᵀ with w read as [cin, cout].
        gemm(gy, w, &mut gx, g.rows(), cout, k, false, true);
        return gx;
    }
    // Tasks own whole images, so their gx regions are disjoint; inside a task, dcol
    // is built a chunk of rows at a time and scatter-added in row order.
    let (chunk, pixels) = (g.chunk_rows(), g.oh * g.ow);
    let images = (chunk / pixels).max(1);
    let multiply = piece_gemm(g.n.div_ceil(images));
    let pool = buffers::current();
    gx.par_chunks_mut(images * image).enumerate().for_each_init(
        || Scratch::new(pool),
        |dcol, (i, gxc)| {
            let first = i * images * pixels;
            let task_rows = gxc.len() / image * pixels;
            for r in (0..task_rows).step_by(chunk) {
                let nr = chunk.min(task_rows - r);
                let dcol = dcol.overwritable(nr * k);
                let gyc = &gy[(first + r) * cout..(first + r + nr) * cout];
                multiply(gyc, w, dcol, nr, cout, k, false, true);
                col2im(dcol, g, r, gxc);
            }
        },
    );
    gx
}

/// Gradient of [`conv2d`] with respect to its filter: given `x` and `gy`
/// `[n, oh, ow, cout]`, returns `gw` `[kh, kw, cin, cout]` (TensorFlow's
/// `Conv2DBackpropFilter`).
///
/// # Panics
/// If a slice length does not match `g`.
pub fn conv2d_backprop_filter<T: Float>(x: &[T], gy: &[T], g: &Conv2dGeom) -> Vec<T> {
    g.check("input", x.len(), [g.n, g.h, g.w, g.cin]);
    g.check("output gradient", gy.len(), g.out_shape());
    let (rows, k, cout) = (g.rows(), g.k(), g.cout);
    let mut gw = buffers::zeroed(k * cout);
    if gw.is_empty() || rows == 0 {
        return gw;
    }
    if g.is_pointwise() {
        // gw = xᵀ · gy: one GEMM; its parallel split never cuts the reduction over rows.
        gemm(x, gy, &mut gw, k, rows, cout, true, false);
        return gw;
    }
    // Chunks are dealt out in contiguous runs to a bounded number of groups; each
    // group sums its chunks' colᵀ·gy in order, then the groups are summed in order.
    let chunk = g.filter_chunk_rows();
    let chunks = rows.div_ceil(chunk);
    let groups = (PARTIALS_ELEMS / (k * cout))
        .clamp(1, MAX_PARTIALS)
        .min(chunks);
    let per_group = chunks.div_ceil(groups);
    let groups = chunks.div_ceil(per_group);
    let multiply = piece_gemm(groups);
    let pool = buffers::current();
    // One buffer holds every group's sum, taken before the groups run: per-group takes
    // of the scratch's length would use up the spares a scratch miss stocks for the
    // tasks that rayon happens to run at once, and a later run could then miss.
    let mut partials = buffers::zeroed::<T>(groups * k * cout);
    partials.par_chunks_mut(k * cout).enumerate().for_each_init(
        || (Scratch::new(pool), Scratch::new(pool)),
        |(col, part), (grp, sum)| {
            let part = part.overwritable(k * cout);
            for r0 in (grp * per_group * chunk..rows)
                .step_by(chunk)
                .take(per_group)
            {
                let nr = chunk.min(rows - r0);
                let col = col.overwritable(nr * k);
                im2col(x, g, r0, col);
                let gyc = &gy[r0 * cout..(r0 + nr) * cout];
                multiply(col, gyc, part, k, nr, cout, true, false);
                add_into(sum, part);
            }
        },
    );
    // Fixed left-to-right order over groups: the same bits for any pool.
    for sum in partials.chunks_exact(k * cout) {
        add_into(&mut gw, sum);
    }
    pool.give(partials);
    gw
}

/// The GEMM for one of `pieces` pieces of a kernel that runs its pieces in parallel:
/// serial when the pieces already share out the pool, parallel when there is only
/// one. The choice depends on the shape alone, so it never changes the result bits.
#[allow(clippy::type_complexity)]
fn piece_gemm<T: Float>(
    pieces: usize,
) -> fn(&[T], &[T], &mut [T], usize, usize, usize, bool, bool) {
    if pieces > 1 {
        gemm_serial
    } else {
        gemm
    }
}

/// Where the window of output coordinate `o` starts along an axis, in unpadded input
/// coordinates (negative inside the leading padding).
fn window_start(o: usize, stride: usize, pad: usize) -> isize {
    (o * stride) as isize - pad as isize
}

/// The output pixels `(b, oy, ox)` of consecutive im2col rows, from row `r0` on.
/// Counts up instead of dividing per row: three divisions per row cost as much as
/// the copy for small filters.
fn output_pixels(g: &Conv2dGeom, r0: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    let (oh, ow) = (g.oh, g.ow);
    let mut at = (r0 / (oh * ow), r0 / ow % oh, r0 % ow);
    std::iter::from_fn(move || {
        let here = at;
        at.2 += 1;
        if at.2 == ow {
            at = (at.0, at.1 + 1, 0);
            if at.1 == oh {
                at = (at.0 + 1, 0, 0);
            }
        }
        Some(here)
    })
}

/// Calls `f(field_part, x_offset)` for each filter row `ky` and, when the window
/// hangs over the left/right padding, each pixel `kx` of a receptive field:
/// `field_part` is the part of the field (row of `col`) it covers and `x_offset` the
/// flat index into `x` of the matching input, or `None` for padding. One walk shared
/// by [`im2col`] and [`col2im`] so the two stay exact adjoints.
fn walk_field<F>(g: &Conv2dGeom, (b, oy, ox): (usize, usize, usize), mut f: F)
where
    F: FnMut(std::ops::Range<usize>, Option<usize>),
{
    let (cin, kw) = (g.cin, g.kw);
    let span = kw * cin; // one filter row: kw pixels of cin channels, contiguous in x
    let x0 = window_start(ox, g.sw, g.pad_left);
    let y0 = window_start(oy, g.sh, g.pad_top);
    let inside = x0 >= 0 && x0 as usize + kw <= g.w;
    for ky in 0..g.kh {
        let part = ky * span..(ky + 1) * span;
        let iy = y0 + ky as isize;
        if iy < 0 || iy >= g.h as isize {
            f(part, None);
            continue;
        }
        let row = (b * g.h + iy as usize) * g.w;
        if inside {
            f(part, Some((row + x0 as usize) * cin));
            continue;
        }
        for kx in 0..kw {
            let px = part.start + kx * cin..part.start + (kx + 1) * cin;
            let ix = x0 + kx as isize;
            let inside_x = ix >= 0 && ix < g.w as isize;
            f(px, inside_x.then(|| (row + ix as usize) * cin));
        }
    }
}

/// Fills `col` (`col.len() / K` rows) with the receptive fields of the output rows
/// starting at `r0`; padding positions get zero.
fn im2col<T: Float>(x: &[T], g: &Conv2dGeom, r0: usize, col: &mut [T]) {
    if g.k() <= SMALL_K {
        // a few elements per field: fixed offsets beat a walk per filter row
        let offsets = field_offsets(g);
        let offsets = &offsets[..g.k()];
        for (pixel, field) in output_pixels(g, r0).zip(col.chunks_exact_mut(g.k())) {
            gather_field(x, g, offsets, pixel, field);
        }
        return;
    }
    for (pixel, field) in output_pixels(g, r0).zip(col.chunks_exact_mut(g.k())) {
        walk_into(x, g, pixel, field);
    }
}

/// Copies the receptive field of output pixel `pixel` into `field` (`k` elements, in
/// filter order) along [`walk_field`]: a filter row at a time, zeros for padding.
fn walk_into<T: Float>(x: &[T], g: &Conv2dGeom, pixel: (usize, usize, usize), field: &mut [T]) {
    walk_field(g, pixel, |part, at| {
        let dst = &mut field[part];
        match at {
            Some(at) => copy_short(dst, &x[at..at + dst.len()]),
            None => dst.fill(T::zero()),
        }
    });
}

/// `dst.copy_from_slice(src)`, with the lengths of a small filter's rows (a 3x3
/// filter over one channel copies 3 elements a row) copied as fixed-size arrays:
/// `copy_from_slice` calls `memcpy` for every row, which cost more than the rest of
/// the tutorial CNN's first-layer im2col together.
#[inline(always)]
fn copy_short<T: Copy>(dst: &mut [T], src: &[T]) {
    macro_rules! fixed {
        ($($n:literal)*) => {
            match dst.len() {
                $($n => {
                    let d: &mut [T; $n] = dst.try_into().expect("length matched");
                    *d = src.try_into().expect("length matched");
                })*
                _ => dst.copy_from_slice(src),
            }
        };
    }
    fixed!(1 2 3 4 5 6 7 8)
}

/// The adjoint of [`im2col`]: adds each receptive field of `dcol` (rows `r0..` of
/// the im2col matrix of the images that `gx` holds) back onto the input pixels it was
/// read from. Padding positions are dropped. Fixed order.
fn col2im<T: Float>(dcol: &[T], g: &Conv2dGeom, r0: usize, gx: &mut [T]) {
    for (pixel, field) in output_pixels(g, r0).zip(dcol.chunks_exact(g.k())) {
        walk_field(g, pixel, |part, at| {
            if let Some(at) = at {
                let len = part.len();
                add_into(&mut gx[at..at + len], &field[part]);
            }
        });
    }
}

fn add_into<T: Float>(acc: &mut [T], v: &[T]) {
    for (a, &b) in acc.iter_mut().zip(v) {
        *a = *a + b;
    }
}
