//! 2-D max pooling kernels over NHWC tensors `[n, h, w, c]`: forward, backprop, and
//! the gather that is the backprop's transpose (for second derivatives).
//!
//! Owns: [`Pool2dGeom`] (the resolved geometry; `Pool2dGeom::new`, which checks the
//! shapes, lives with `Padding` in `ops::conv`), [`max_pool2d`],
//! [`max_pool2d_backprop`] (and [`max_pool2d_backprop_then`], the same with an
//! elementwise epilogue applied as it stores) and [`max_pool2d_gather`].
//!
//! Invariants:
//! - One selection rule, `Window::argmax`, serves all three kernels: the winner of a
//!   window (per channel) is its first maximal element in row-major `(ky, kx)` order,
//!   except that a NaN beats every number (the first NaN wins), so NaN propagates as in
//!   TensorFlow. Padding positions are never candidates (they act as `-inf`); with
//!   TensorFlow's `Same` rule every window holds at least one real element.
//! - So `max_pool2d_backprop(x, ·)` and `max_pool2d_gather(x, ·)` are exact transposes
//!   of each other as linear maps: `<backprop(x, gy), gx> = <gy, gather(x, gx)>`.
//! - Deterministic: forward and gather write each output once; backprop accumulates
//!   per image (windows of different images never overlap) in a fixed order, or, when
//!   the windows tile the input (stride = window, no padding), stores each pixel once
//!   (the same bits: every sum starts at +0).
//! - The loops are compiled for AVX-512/AVX2 where the CPU has them
//!   (`ew::vectorized_wide`), 16 channels at a time.

use crate::exec::buffers;
use crate::tensor::data::Float;
use rayon::prelude::*;
use smallvec::SmallVec;

/// Target number of output elements per parallel task of the forward and gather.
const TASK_ELEMS: usize = 1 << 12;
/// Channels scanned together by the window scan (one AVX-512 register of f32).
const LANES: usize = 16;

/// The checked geometry of one 2-D pooling: input `[n, h, w, c]`, window `(kh, kw)`,
/// strides, padding before the first row/column, and output `[n, oh, ow, c]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool2dGeom {
    /// Batch size.
    pub n: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Channels.
    pub c: usize,
    /// Window height.
    pub kh: usize,
    /// Window width.
    pub kw: usize,
    /// Vertical stride.
    pub sh: usize,
    /// Horizontal stride.
    pub sw: usize,
    /// Padding rows above the input (never selected).
    pub pad_top: usize,
    /// Padding columns left of the input (never selected).
    pub pad_left: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
}

impl Pool2dGeom {
    /// The output shape `[n, oh, ow, c]`.
    pub fn out_shape(&self) -> [usize; 4] {
        [self.n, self.oh, self.ow, self.c]
    }

    fn check(&self, what: &str, len: usize, shape: [usize; 4]) {
        let want: usize = shape.iter().product();
        assert_eq!(
            len, want,
            "max_pool2d: {what} has {len} elements, geometry wants {shape:?}"
        );
    }

    /// The part of the window of output coordinate `o` inside `0..len`.
    #[inline(always)]
    fn clip(o: usize, stride: usize, pad: usize, k: usize, len: usize) -> std::ops::Range<usize> {
        let start = (o * stride) as isize - pad as isize;
        let end = (start + k as isize).min(len as isize);
        start.max(0) as usize..end.max(0) as usize
    }
}

/// Max pooling: `y[b, oy, ox, ch]` is the maximum of `x` over the window of
/// `(oy, ox)`; returns `[n, oh, ow, c]`. A NaN in a window makes the output NaN.
///
/// # Panics
/// If `x.len()` does not match `g`.
///
/// # Example
/// ```
/// use tapeflow::exec::kernels::pool::{max_pool2d, Pool2dGeom};
/// use tapeflow::Padding;
/// let g = Pool2dGeom::new(&[1, 2, 4, 1], (2, 2), (2, 2), Padding::Valid).unwrap();
/// let x = [1.0, 5.0, 2.0, 0.0, 3.0, 4.0, 7.0, 6.0];
/// assert_eq!(max_pool2d(&x, &g), vec![5.0f64, 7.0]);
/// ```
pub fn max_pool2d<T: Float>(x: &[T], g: &Pool2dGeom) -> Vec<T> {
    g.check("input", x.len(), [g.n, g.h, g.w, g.c]);
    per_output_row(
        g,
        #[inline(always)]
        |b, oy, yrow, _| {
            for (ox, best) in yrow.chunks_exact_mut(g.c).enumerate() {
                Window::new(g, b, oy, ox).max(x, best);
            }
        },
    )
}

/// Gradient of [`max_pool2d`] with respect to `x`: each `gy[b, oy, ox, ch]` is added
/// to `x`'s position that won that window (see the module docs for the rule); returns
/// an `x`-shaped buffer, zero where nothing won.
///
/// # Panics
/// If a slice length does not match `g`.
pub fn max_pool2d_backprop<T: Float>(x: &[T], gy: &[T], g: &Pool2dGeom) -> Vec<T> {
    backprop::<T, fn(T, T) -> T>(x, gy, None, g)
}

/// [`max_pool2d_backprop`] with an epilogue that reads the input: each element `p` of
/// the gradient becomes `epi(p, x)` as it is stored (the caller's `epi` is the op's
/// math: a ReLU's gate, `p · (x > 0)`), the bits of `max_pool2d_backprop` followed by
/// `epi` elementwise, without writing the plain gradient out and reading it back.
/// `epi(+0, v)` must be `+0` for every `v` (as the gate's is): the pixels that no
/// window covers are stored as +0 without calling it.
///
/// # Panics
/// If a slice length does not match `g`.
pub fn max_pool2d_backprop_then<T: Float, F: Fn(T, T) -> T + Copy + Sync>(
    x: &[T],
    gy: &[T],
    g: &Pool2dGeom,
    epi: F,
) -> Vec<T> {
    backprop(x, gy, Some(epi), g)
}

fn backprop<T: Float, F: Fn(T, T) -> T + Copy + Sync>(
    x: &[T],
    gy: &[T],
    epi: Option<F>,
    g: &Pool2dGeom,
) -> Vec<T> {
    g.check("input", x.len(), [g.n, g.h, g.w, g.c]);
    g.check("output gradient", gy.len(), g.out_shape());
    let image = g.h * g.w * g.c;
    // Windows that tile the input (stride = window, no padding: `MaxPool2D(2)`) cover
    // each pixel at most once, so the backprop stores instead of adding into a zeroed
    // buffer; only the pixels past the last window are zeroed.
    let tiles = g.sh == g.kh && g.sw == g.kw && g.pad_top == 0 && g.pad_left == 0;
    let mut gx = if tiles {
        buffers::overwritable(g.n * image)
    } else {
        buffers::zeroed(g.n * image)
    };
    if gx.is_empty() {
        return gx;
    }
    if g.oh * g.ow == 0 {
        gx.fill(T::zero());
        return gx;
    }
    let out_image = g.oh * g.ow * g.c;
    gx.par_chunks_mut(image)
        .zip(gy.par_chunks(out_image))
        .enumerate()
        .for_each_init(
            // the running winners of the summing path (the tiling path keeps its own
            // in registers)
            || match tiles {
                true => (Vec::new(), Vec::new()),
                false => (vec![T::zero(); g.c], vec![0; g.c]),
            },
            |(best, pos), (b, (gxb, gyb))| {
                let xb = &x[b * image..(b + 1) * image];
                // a copy on this stack frame: its captured values stay in registers
                let epi_here = epi;
                super::ew::vectorized_wide(
                    #[inline(always)]
                    || {
                        if tiles {
                            zero_untiled(gxb, g);
                            for (o, gyp) in gyb.chunks_exact(g.c).enumerate() {
                                let win = Window::new(g, 0, o / g.ow, o % g.ow);
                                win.store_winners(xb, gyp, gxb, epi_here);
                            }
                            return;
                        }
                        for (o, gyp) in gyb.chunks_exact(g.c).enumerate() {
                            let win = Window::new(g, 0, o / g.ow, o % g.ow);
                            win.argmax(xb, best, pos);
                            // Every pixel of the window gets gy where it won and +0
                            // where not, added to the sum so far: branch-free.
                            for (p, at) in win.pixels() {
                                let gxp = &mut gxb[at..at + g.c];
                                for (acc, (&q, &v)) in gxp.iter_mut().zip(pos.iter().zip(gyp)) {
                                    *acc = *acc + if q == p { v } else { T::zero() };
                                }
                            }
                        }
                        // windows that overlap: the sums are complete only now
                        if let Some(epi) = epi_here {
                            for (acc, &v) in gxb.iter_mut().zip(xb) {
                                *acc = epi(*acc, v);
                            }
                        }
                    },
                )
            },
        );
    gx
}

/// Zeroes the pixels of one image's gradient `gxb` (`[h, w, c]`) that no window of a
/// tiling geometry covers: the rows below the last window row, and the columns right
/// of the last window column.
fn zero_untiled<T: Float>(gxb: &mut [T], g: &Pool2dGeom) {
    // (`Same` padding may add a last window row/column that hangs over the edge)
    let (row, covered_w) = (g.w * g.c, (g.ow * g.kw).min(g.w) * g.c);
    for (y, r) in gxb.chunks_exact_mut(row).enumerate() {
        if y >= g.oh * g.kh {
            r.fill(T::zero());
        } else {
            r[covered_w..].fill(T::zero());
        }
    }
}

/// The transpose of [`max_pool2d_backprop`] in its gradient argument: for each window
/// (and channel), `gx` read at the position that won it; returns `[n, oh, ow, c]`.
/// It is what the gradient of the backprop needs, so max pooling has second
/// derivatives.
///
/// # Panics
/// If a slice length does not match `g`.
pub fn max_pool2d_gather<T: Float>(x: &[T], gx: &[T], g: &Pool2dGeom) -> Vec<T> {
    g.check("input", x.len(), [g.n, g.h, g.w, g.c]);
    g.check("input gradient", gx.len(), [g.n, g.h, g.w, g.c]);
    per_output_row(
        g,
        #[inline(always)]
        |b, oy, yrow, pos| {
            for (ox, out) in yrow.chunks_exact_mut(g.c).enumerate() {
                // `out` is scratch for the winning values, then holds the gathered gx.
                let win = Window::new(g, b, oy, ox);
                win.argmax(x, out, pos);
                let pixels: SmallVec<[usize; 16]> = win.pixels().map(|(_, at)| at).collect();
                for (ch, (o, &p)) in out.iter_mut().zip(pos.iter()).enumerate() {
                    *o = gx[pixels[p as usize] + ch];
                }
            }
        },
    )
}

/// Allocates the output `[n, oh, ow, c]` and fills it by calling `fill(b, oy, row,
/// pos)` once per output row `(b, oy)` (`row` is its `ow·c` elements, `pos` scratch
/// for the `c` winning positions), in parallel over groups of rows.
fn per_output_row<T, F>(g: &Pool2dGeom, fill: F) -> Vec<T>
where
    T: Float,
    F: Fn(usize, usize, &mut [T], &mut [u32]) + Sync,
{
    let row = g.ow * g.c;
    let mut y = buffers::overwritable(g.n * g.oh * row);
    if y.is_empty() {
        return y;
    }
    let rows_per_task = (TASK_ELEMS / row).max(1);
    y.par_chunks_mut(rows_per_task * row)
        .enumerate()
        .for_each_init(
            || vec![0; g.c],
            |pos, (i, task)| {
                super::ew::vectorized_wide(
                    #[inline(always)]
                    || {
                        for (j, yrow) in task.chunks_exact_mut(row).enumerate() {
                            let t = i * rows_per_task + j;
                            fill(t / g.oh, t % g.oh, yrow, pos);
                        }
                    },
                )
            },
        );
    y
}

/// Whether `cand` replaces the current winner `best` of a window: strictly greater
/// (so ties keep the first), or the first NaN. Non-short-circuit `|`/`&` keep it
/// branch-free, so the channel loop vectorizes: which element wins is data-dependent
/// and would mispredict.
#[inline(always)]
fn wins<T: Float>(cand: T, best: T) -> bool {
    (cand > best) | (cand.is_nan() & !best.is_nan())
}

/// The real (unpadded) part of one pooling window, as flat offsets into `x`. Its
/// positions are numbered `0..rows·cols` in row-major order.
struct Window {
    /// Flat index of channel 0 of the window's first real pixel.
    base: usize,
    rows: usize,
    cols: usize,
    /// Elements between vertically adjacent pixels (`w·c`).
    row_stride: usize,
    c: usize,
}

impl Window {
    #[inline(always)]
    fn new(g: &Pool2dGeom, b: usize, oy: usize, ox: usize) -> Window {
        let rows = Pool2dGeom::clip(oy, g.sh, g.pad_top, g.kh, g.h);
        let cols = Pool2dGeom::clip(ox, g.sw, g.pad_left, g.kw, g.w);
        debug_assert!(!rows.is_empty() && !cols.is_empty(), "empty pooling window");
        Window {
            base: ((b * g.h + rows.start) * g.w + cols.start) * g.c,
            rows: rows.len(),
            cols: cols.len(),
            row_stride: g.w * g.c,
            c: g.c,
        }
    }

    /// The window's real pixels in row-major order: each one's position number and
    /// the flat index into `x` of its channel 0.
    #[inline(always)]
    fn pixels(&self) -> impl Iterator<Item = (u32, usize)> + '_ {
        (0..self.rows)
            .flat_map(move |r| (0..self.cols).map(move |col| (r, col)))
            .enumerate()
            .map(|(p, (r, col))| (p as u32, self.base + r * self.row_stride + col * self.c))
    }

    /// The winners' values alone (what [`Window::argmax`] puts in `best`), for the
    /// forward, which needs no positions.
    #[inline(always)]
    fn max<T: Float>(&self, x: &[T], best: &mut [T]) {
        let mut ch = 0;
        while ch + LANES <= self.c {
            self.max_lanes::<T, LANES>(x, ch, best);
            ch += LANES;
        }
        while ch < self.c {
            self.max_lanes::<T, 1>(x, ch, best);
            ch += 1;
        }
    }

    #[inline(always)]
    fn max_lanes<T: Float, const L: usize>(&self, x: &[T], ch0: usize, best: &mut [T]) {
        let first: &[T; L] = x[self.base + ch0..][..L].try_into().expect("L elements");
        let mut bv = *first;
        for r in 0..self.rows {
            for col in 0..self.cols {
                let at = self.base + r * self.row_stride + col * self.c + ch0;
                let px: &[T; L] = x[at..at + L].try_into().expect("L elements");
                for l in 0..L {
                    bv[l] = if wins(px[l], bv[l]) { px[l] } else { bv[l] };
                }
            }
        }
        best[ch0..ch0 + L].copy_from_slice(&bv);
    }

    /// The selection rule, per channel: `best[ch]` gets the winner's value and
    /// `arg[ch]` its position number, scanning positions in row-major order with
    /// [`wins`].
    #[inline(always)]
    fn argmax<T: Float>(&self, x: &[T], best: &mut [T], arg: &mut [u32]) {
        let mut ch = 0;
        while ch + LANES <= self.c {
            self.argmax_lanes::<T, LANES>(x, ch, best, arg);
            ch += LANES;
        }
        while ch < self.c {
            self.argmax_lanes::<T, 1>(x, ch, best, arg);
            ch += 1;
        }
    }

    /// [`Window::argmax`] for channels `ch0..ch0 + L` ([`Window::argmax_of`]).
    #[inline(always)]
    fn argmax_lanes<T: Float, const L: usize>(
        &self,
        x: &[T],
        ch0: usize,
        best: &mut [T],
        arg: &mut [u32],
    ) {
        let (bv, av) = self.argmax_of::<T, L>(x, ch0);
        best[ch0..ch0 + L].copy_from_slice(&bv);
        arg[ch0..ch0 + L].copy_from_slice(&av);
    }

    /// The winners' values and position numbers for channels `ch0..ch0 + L`, in local
    /// arrays, so that the selects compile to vector blends rather than branches
    /// around conditional stores. The scan starts from the first pixel and compares
    /// it with itself, which never wins (not even a NaN: it beats numbers only), so
    /// the loop has no first-pixel branch and vectorizes across the lanes.
    #[inline(always)]
    fn argmax_of<T: Float, const L: usize>(&self, x: &[T], ch0: usize) -> ([T; L], [u32; L]) {
        let first: &[T; L] = x[self.base + ch0..][..L].try_into().expect("L elements");
        let mut bv = *first;
        let mut av = [0u32; L];
        let mut p = 0u32;
        for r in 0..self.rows {
            for col in 0..self.cols {
                let at = self.base + r * self.row_stride + col * self.c + ch0;
                let px: &[T; L] = x[at..at + L].try_into().expect("L elements");
                for l in 0..L {
                    let w = wins(px[l], bv[l]);
                    bv[l] = if w { px[l] } else { bv[l] };
                    av[l] = if w { p } else { av[l] };
                }
                p += 1;
            }
        }
        (bv, av)
    }

    /// The backprop of one window of a tiling geometry (each pixel in one window
    /// only): every pixel of the window gets `gy` per channel where it won the window
    /// and +0 where not, through `epi` if there is one — `epi(+0 + term, x)`, the bits
    /// of a store into a zeroed buffer followed by the epilogue. [`LANES`] channels at
    /// a time: the winners stay in registers between the scan and the stores.
    #[inline(always)]
    fn store_winners<T: Float, F: Fn(T, T) -> T + Copy>(
        &self,
        x: &[T],
        gy: &[T],
        gx: &mut [T],
        epi: Option<F>,
    ) {
        let mut ch = 0;
        while ch + LANES <= self.c {
            self.store_winners_lanes::<T, F, LANES>(x, gy, gx, epi, ch);
            ch += LANES;
        }
        while ch < self.c {
            self.store_winners_lanes::<T, F, 1>(x, gy, gx, epi, ch);
            ch += 1;
        }
    }

    #[inline(always)]
    fn store_winners_lanes<T: Float, F: Fn(T, T) -> T + Copy, const L: usize>(
        &self,
        x: &[T],
        gy: &[T],
        gx: &mut [T],
        epi: Option<F>,
        ch0: usize,
    ) {
        let (_, av) = self.argmax_of::<T, L>(x, ch0);
        let gyv: [T; L] = gy[ch0..ch0 + L].try_into().expect("L elements");
        for (p, at) in self.pixels() {
            let at = at + ch0;
            // (a mask array first, then the selects: written as one `if` per lane, the
            // selects compiled to a branch per lane)
            let mut hit = [false; L];
            for l in 0..L {
                hit[l] = av[l] == p;
            }
            let mut v = [T::zero(); L];
            for l in 0..L {
                v[l] = T::zero() + if hit[l] { gyv[l] } else { T::zero() };
            }
            if let Some(epi) = epi {
                let xv: [T; L] = x[at..at + L].try_into().expect("L elements");
                for l in 0..L {
                    v[l] = epi(v[l], xv[l]);
                }
            }
            gx[at..at + L].copy_from_slice(&v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::buffers::{with_pool, BufferPool};
    use crate::tensor::Data;
    use crate::Padding;

    /// The tiling backprop stores into a buffer it does not zero first: the pixels no
    /// window covers must still come out zero when the pool hands it a dirty buffer.
    #[test]
    fn tiling_backprop_zeroes_uncovered_pixels_of_a_reused_buffer() {
        // 5x5 under 2x2 windows of stride 2: the last row and column are uncovered
        let g = Pool2dGeom::new(&[2, 5, 5, 3], (2, 2), (2, 2), Padding::Valid).unwrap();
        let x: Vec<f32> = (0..150).map(|i| ((i * 37) % 23) as f32).collect();
        let gy: Vec<f32> = (0..2 * 2 * 2 * 3).map(|i| i as f32 + 1.0).collect();
        let clean = max_pool2d_backprop(&x, &gy, &g);
        let pool = BufferPool::new();
        let dirty = ndarray::ArrayD::from_elem(vec![150], f32::NAN).into_shared();
        pool.recycle(Data::F32(dirty));
        let reused = with_pool(&pool, || max_pool2d_backprop(&x, &gy, &g));
        assert_eq!(pool.misses(), 0, "the dirty buffer was not the one reused");
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&reused), bits(&clean));
        assert_eq!(clean.iter().filter(|&&v| v != 0.0).count(), 24);
    }
}
