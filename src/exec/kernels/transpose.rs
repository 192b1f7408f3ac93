//! Matrix transpose: the one copy that turns a row-major `[rows, cols]` matrix into its
//! row-major transpose, for every kernel that needs one (the GEMM's copy of a transposed
//! operand whose rows alias in L1, and the `transpose` op's two-axis case).
//!
//! Tiles of 16x16 elements transposed in registers, for 4-byte elements on x86-64: with
//! AVX-512, each tile as sixteen 64-byte rows (every cache line of both matrices
//! touched once, as a whole); with AVX2, as four 8x8 blocks. The edges, and elements of
//! other sizes, one at a time in strips of 8 source rows. Large matrices are cut into
//! bands of destination rows, one rayon task each ([`transpose`]), unless the caller
//! already runs in parallel parts ([`transpose_here`]: a GEMM half copying its own
//! columns). A copy moves bits only, so every path and thread count gives the same
//! result.
//!
//! Measured on the 2-core Zen 4 VM against the two strip-walking copies this replaced
//! (GEMM's and the `transpose` op's): the LSTM's recurrent weight, 128x512 f32
//! (transposed once per W6 step, outside its backward loop), 25.7 → 8.1 µs on one core;
//! W3's 1024x1024 (copied for `dh·W₂ᵀ`; rows 4 KiB apart in both matrices, so L1 set
//! conflicts bound it) 614–682 → 514 µs on one thread, 603 → 310 µs on two. On the
//! 2-core Intel Xeon VM (AVX-512), the same 1024x1024: 8x8 blocks 740 µs on one thread,
//! 385 µs on two; 16x16 AVX-512 tiles 536 and 264 µs (a 4 MiB copy: 286 and 122 µs).

/// Destination elements per parallel task (whole destination rows, at least 16).
const TASK: usize = 1 << 16;

/// Source rows an element-by-element strip walks at once, so that both the rows it
/// reads and the rows it writes stay in L1.
const STRIP: usize = 8;

/// `dst = srcᵀ`: `src` is `[rows, cols]` and `dst` `[cols, rows]`, both row-major.
///
/// # Panics
/// If `src` or `dst` does not hold `rows * cols` elements.
pub(crate) fn transpose<T: Copy + Send + Sync>(src: &[T], dst: &mut [T], rows: usize, cols: usize) {
    transpose_with(src, dst, rows, cols, Tiles::Avx512);
}

/// [`transpose`] on the calling thread only (for a kernel that already runs its parts
/// in parallel, each on one thread); the same bits.
///
/// # Panics
/// If `src` or `dst` does not hold `rows * cols` elements.
pub(crate) fn transpose_here<T: Copy>(src: &[T], dst: &mut [T], rows: usize, cols: usize) {
    if check_lengths(src, dst, rows, cols) == 0 {
        return;
    }
    band(
        src,
        dst,
        rows,
        cols,
        0,
        Tiles::Avx512.min(tiles_available::<T>()),
    );
}

/// Panics unless `src` and `dst` both hold `rows * cols` elements; returns that count.
fn check_lengths<T>(src: &[T], dst: &[T], rows: usize, cols: usize) -> usize {
    let n = rows * cols;
    assert!(
        src.len() == n && dst.len() == n,
        "transpose: {} and {} elements for a {rows}x{cols} matrix",
        src.len(),
        dst.len()
    );
    n
}

/// How the 16x16 tiles are transposed, narrowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Tiles {
    /// No tiles: strips of elements only.
    Strips,
    /// Four 8x8 blocks in AVX registers.
    Avx,
    /// Sixteen rows in AVX-512 registers.
    Avx512,
}

/// [`transpose`] with tiles no wider than `widest` (narrower where the CPU or `T` do
/// not allow them).
fn transpose_with<T: Copy + Send + Sync>(
    src: &[T],
    dst: &mut [T],
    rows: usize,
    cols: usize,
    widest: Tiles,
) {
    use rayon::prelude::*;
    let tiles = widest.min(tiles_available::<T>());
    let n = check_lengths(src, dst, rows, cols);
    if n == 0 {
        return;
    }
    if n <= TASK {
        band(src, dst, rows, cols, 0, tiles);
        return;
    }
    let band_rows = (TASK / rows).next_multiple_of(16);
    dst.par_chunks_mut(band_rows * rows)
        .enumerate()
        .for_each(|(t, out)| band(src, out, rows, cols, t * band_rows, tiles));
}

/// The widest tiles that can copy elements of type `T` on this CPU (the kernels' one
/// CPU check, [`Isa::detect`](super::ew::Isa::detect): its AVX2 implies the AVX the
/// 8x8 blocks use, its AVX-512 the AVX-512 F the 16-row tiles use).
fn tiles_available<T>() -> Tiles {
    #[cfg(target_arch = "x86_64")]
    {
        use super::ew::Isa;
        match (std::mem::size_of::<T>(), Isa::detect()) {
            (4, Isa::Avx512) => Tiles::Avx512,
            (4, Isa::Avx2) => Tiles::Avx,
            _ => Tiles::Strips,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Tiles::Strips
    }
}

/// Destination rows `c0..c0 + out.len() / rows` (source columns) of the transpose;
/// `tiles` no wider than [`tiles_available`] allows.
fn band<T: Copy>(src: &[T], out: &mut [T], rows: usize, cols: usize, c0: usize, tiles: Tiles) {
    let width = out.len() / rows;
    let (tiled_rows, tiled_cols) = match tiles {
        Tiles::Strips => (0, 0),
        _ => (rows / 16 * 16, width / 16 * 16),
    };
    #[cfg(target_arch = "x86_64")]
    if tiled_rows > 0 && tiled_cols > 0 {
        let (src, out) = (src.as_ptr().cast::<f32>(), out.as_mut_ptr().cast::<f32>());
        let at = Tiling {
            rows,
            cols,
            c0,
            tiled: (tiled_rows, tiled_cols),
        };
        // SAFETY: `tiles` is only `Avx512` or `Avx` when the CPU has those instructions
        // and `T` is 4 bytes (see `tiles_available`); the tiles lie inside both
        // matrices (checked lengths, whole tiles of the first `tiled_rows` rows and
        // `tiled_cols` columns).
        unsafe {
            match tiles {
                Tiles::Avx512 => avx512::tiles(src, out, at),
                _ => avx::tiles(src, out, at),
            }
        };
    }
    // the rows below the tiles, across the band; then the columns right of the tiles
    strips(src, out, rows, cols, c0, tiled_rows..rows, 0..width);
    strips(src, out, rows, cols, c0, 0..tiled_rows, tiled_cols..width);
}

/// Where a band's register tiles lie: the matrix is `[rows, cols]`, the band's first
/// column `c0`, and its tiles cover source rows `0..tiled.0` and band columns
/// `0..tiled.1`.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Tiling {
    rows: usize,
    cols: usize,
    c0: usize,
    tiled: (usize, usize),
}

#[cfg(target_arch = "x86_64")]
impl Tiling {
    /// Calls `tile(from, to)` for each 16x16 tile, with the offsets of its first element
    /// in the source and in the band. Inlined into each instruction set's walker, so
    /// its tile copy inlines too.
    #[inline(always)]
    fn each(self, mut tile: impl FnMut(usize, usize)) {
        for i in (0..self.tiled.0).step_by(16) {
            for j in (0..self.tiled.1).step_by(16) {
                tile(i * self.cols + self.c0 + j, j * self.rows + i);
            }
        }
    }
}

/// Element by element: source rows `i` × band columns `j` (relative to `c0`).
fn strips<T: Copy>(
    src: &[T],
    out: &mut [T],
    rows: usize,
    cols: usize,
    c0: usize,
    i: std::ops::Range<usize>,
    j: std::ops::Range<usize>,
) {
    for i0 in i.clone().step_by(STRIP) {
        let i1 = (i0 + STRIP).min(i.end);
        for jj in j.clone() {
            let row = &mut out[jj * rows..(jj + 1) * rows];
            for ii in i0..i1 {
                row[ii] = src[ii * cols + c0 + jj];
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    /// The band's 16x16 tiles (`at`), each as four 8x8 blocks.
    ///
    /// # Safety
    /// The CPU has AVX; `src` holds `rows * cols` elements and `out` the band's
    /// `rows` elements per column, with every tile inside both.
    #[target_feature(enable = "avx")]
    pub(super) unsafe fn tiles(src: *const f32, out: *mut f32, at: super::Tiling) {
        let (rows, cols) = (at.rows, at.cols);
        at.each(|from, to| {
            for (di, dj) in [(0, 0), (0, 8), (8, 0), (8, 8)] {
                // SAFETY: inside the tile (see the function's contract)
                unsafe {
                    block(
                        src.add(from + di * cols + dj),
                        cols,
                        out.add(to + dj * rows + di),
                        rows,
                    )
                };
            }
        });
    }

    /// `out[c][r] = src[r][c]` for an 8x8 block: rows of `src` are `src_stride`
    /// elements apart, rows of `out` `out_stride`. Shuffles move bits, so any 4-byte
    /// values pass unchanged.
    #[target_feature(enable = "avx")]
    unsafe fn block(src: *const f32, src_stride: usize, out: *mut f32, out_stride: usize) {
        // SAFETY: 8 rows of 8 elements readable at `src`, writable at `out` (caller)
        unsafe {
            let r = |k: usize| _mm256_loadu_ps(src.add(k * src_stride));
            let (r0, r1, r2, r3) = (r(0), r(1), r(2), r(3));
            let (r4, r5, r6, r7) = (r(4), r(5), r(6), r(7));
            // pairs of rows interleaved, then pairs of pairs: each 128-bit half holds
            // one 4x4 block's columns
            let t0 = _mm256_unpacklo_ps(r0, r1);
            let t1 = _mm256_unpackhi_ps(r0, r1);
            let t2 = _mm256_unpacklo_ps(r2, r3);
            let t3 = _mm256_unpackhi_ps(r2, r3);
            let t4 = _mm256_unpacklo_ps(r4, r5);
            let t5 = _mm256_unpackhi_ps(r4, r5);
            let t6 = _mm256_unpacklo_ps(r6, r7);
            let t7 = _mm256_unpackhi_ps(r6, r7);
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            // low halves give output rows 0-3, high halves rows 4-7
            let w = |k: usize, v: __m256| _mm256_storeu_ps(out.add(k * out_stride), v);
            w(0, _mm256_permute2f128_ps::<0x20>(u0, u4));
            w(1, _mm256_permute2f128_ps::<0x20>(u1, u5));
            w(2, _mm256_permute2f128_ps::<0x20>(u2, u6));
            w(3, _mm256_permute2f128_ps::<0x20>(u3, u7));
            w(4, _mm256_permute2f128_ps::<0x31>(u0, u4));
            w(5, _mm256_permute2f128_ps::<0x31>(u1, u5));
            w(6, _mm256_permute2f128_ps::<0x31>(u2, u6));
            w(7, _mm256_permute2f128_ps::<0x31>(u3, u7));
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// The band's 16x16 tiles (`at`), each read as sixteen 64-byte rows and written as
    /// sixteen.
    ///
    /// # Safety
    /// The CPU has AVX-512 F; `src` holds `rows * cols` elements and `out` the band's
    /// `rows` elements per column, with every tile inside both.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tiles(src: *const f32, out: *mut f32, at: super::Tiling) {
        // SAFETY: inside the tile (see the function's contract)
        at.each(|from, to| unsafe { tile(src.add(from), at.cols, out.add(to), at.rows) });
    }

    /// `out[c][r] = src[r][c]` for a 16x16 tile: rows of `src` are `src_stride`
    /// elements apart, rows of `out` `out_stride`. Shuffles move bits, so any 4-byte
    /// values pass unchanged.
    #[target_feature(enable = "avx512f")]
    unsafe fn tile(src: *const f32, src_stride: usize, out: *mut f32, out_stride: usize) {
        // SAFETY: 16 rows of 16 elements readable at `src`, writable at `out` (caller)
        unsafe {
            let r: [__m512; 16] = std::array::from_fn(|k| _mm512_loadu_ps(src.add(k * src_stride)));
            // rows interleaved in pairs: t[2p] and t[2p+1] hold rows 2p, 2p+1 element
            // by element
            let t: [__m512; 16] = std::array::from_fn(|k| match k % 2 {
                0 => _mm512_unpacklo_ps(r[k], r[k + 1]),
                _ => _mm512_unpackhi_ps(r[k - 1], r[k]),
            });
            // pairs of pairs: in each 128-bit lane L, u[4q + c] holds rows 4q..4q+3 of
            // column 4L + c
            let pd = _mm512_castps_pd;
            let u: [__m512; 16] = std::array::from_fn(|k| {
                let (q, c) = (k / 4, k % 4);
                let (a, b) = (t[4 * q + c / 2], t[4 * q + 2 + c / 2]);
                _mm512_castpd_ps(match c % 2 {
                    0 => _mm512_unpacklo_pd(pd(a), pd(b)),
                    _ => _mm512_unpackhi_pd(pd(a), pd(b)),
                })
            });
            // lanes gathered across the four groups of rows: output row 4L + c takes
            // lane L of u[c], u[4 + c], u[8 + c], u[12 + c]
            for c in 0..4 {
                let (a, b, e, f) = (u[c], u[4 + c], u[8 + c], u[12 + c]);
                let ab_even = _mm512_shuffle_f32x4::<0x88>(a, b); // a0 a2 b0 b2
                let ab_odd = _mm512_shuffle_f32x4::<0xDD>(a, b); // a1 a3 b1 b3
                let ef_even = _mm512_shuffle_f32x4::<0x88>(e, f);
                let ef_odd = _mm512_shuffle_f32x4::<0xDD>(e, f);
                let w = |row: usize, v: __m512| _mm512_storeu_ps(out.add(row * out_stride), v);
                w(c, _mm512_shuffle_f32x4::<0x88>(ab_even, ef_even));
                w(8 + c, _mm512_shuffle_f32x4::<0xDD>(ab_even, ef_even));
                w(4 + c, _mm512_shuffle_f32x4::<0x88>(ab_odd, ef_odd));
                w(12 + c, _mm512_shuffle_f32x4::<0xDD>(ab_odd, ef_odd));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive<T: Copy>(src: &[T], rows: usize, cols: usize) -> Vec<T> {
        (0..cols)
            .flat_map(|j| (0..rows).map(move |i| src[i * cols + j]))
            .collect()
    }

    /// Every shape around the tile and strip sizes, and bands cut for threads (a
    /// matrix over `TASK` elements with a last band narrower than the others), on both
    /// paths; 4-byte values include NaN payloads and -0, which must pass bit for bit.
    #[test]
    fn transposes_match_the_definition_on_every_path() {
        let mut shapes: Vec<(usize, usize)> = Vec::new();
        for r in [1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 48] {
            for c in [1, 3, 8, 16, 17, 40] {
                shapes.push((r, c));
            }
        }
        shapes.extend([(300, 257), (128, 512), (1024, 70)]);
        for (rows, cols) in shapes {
            let src: Vec<u32> = (0..rows * cols)
                .map(|i| (i as u32).wrapping_mul(2654435761) ^ 0x7fc0_0001)
                .collect();
            let want = naive(&src, rows, cols);
            for tiles in [Tiles::Strips, Tiles::Avx, Tiles::Avx512] {
                let mut dst = vec![0u32; rows * cols];
                transpose_with(&src, &mut dst, rows, cols, tiles);
                assert_eq!(dst, want, "{rows}x{cols}, {tiles:?}");
            }
            let wide: Vec<f64> = src.iter().map(|&v| v as f64 - 1e9).collect();
            let mut dst = vec![0.0; rows * cols];
            transpose(&wide, &mut dst, rows, cols);
            assert_eq!(dst, naive(&wide, rows, cols), "f64 {rows}x{cols}");
        }
    }
}
