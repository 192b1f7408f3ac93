//! The compute kernels (`exec::kernels`) against naive reference loops written plainly
//! here, in f64 and f32, over seeded random shapes (odd sizes, strides 1 and 2, both
//! paddings); the adjoint identities between each kernel and its gradients; geometry
//! errors; and bit-for-bit determinism across rayon pool sizes.
//!
//! `cargo test --release --test kernels -- --ignored --nocapture bench` prints throughput
//! (the test profile keeps overflow checks, which slow the scalar loops).

use tapeflow::exec::kernels::conv::{
    conv2d, conv2d_backprop_filter, conv2d_backprop_input, Conv2dGeom,
};
use tapeflow::exec::kernels::gemm::gemm;
use tapeflow::exec::kernels::pool::{
    max_pool2d, max_pool2d_backprop, max_pool2d_backprop_then, max_pool2d_gather, Pool2dGeom,
};
use tapeflow::tensor::Float;
use tapeflow::Padding;

/// A tiny seeded generator (64-bit LCG, high bits out): no dependency, same stream
/// everywhere.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    /// Uniform in `lo..=hi`.
    fn int(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f64 {
        (self.next() as f64 / (1u64 << 31) as f64) * 2.0 - 1.0
    }
    fn vec<T: Float>(&mut self, len: usize) -> Vec<T> {
        (0..len).map(|_| from::<T>(self.unit())).collect()
    }
    /// Small integers, so pooling windows have many ties.
    fn ties<T: Float>(&mut self, len: usize) -> Vec<T> {
        (0..len).map(|_| from::<T>(self.int(0, 3) as f64)).collect()
    }
    fn padding(&mut self) -> Padding {
        if self.int(0, 1) == 0 {
            Padding::Valid
        } else {
            Padding::Same
        }
    }
}

// `Float` and num-traits both name these conversions; spell out ours.
fn from<T: Float>(v: f64) -> T {
    <T as Float>::from_f64(v)
}

fn to<T: Float>(v: T) -> f64 {
    <T as Float>::to_f64(v)
}

fn f64s<T: Float>(v: &[T]) -> Vec<f64> {
    v.iter().map(|&x| to(x)).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Asserts `got ≈ want` elementwise, within `tol` relative to `scale` (the size of
/// the terms that were summed).
fn assert_close(what: &str, got: &[f64], want: &[f64], scale: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for i in 0..got.len() {
        let err = (got[i] - want[i]).abs();
        assert!(
            err <= tol * (1.0 + scale[i]),
            "{what}: element {i}: got {} want {} (err {err:e})",
            got[i],
            want[i]
        );
    }
}

/// Rounding tolerance per summed term for `T`.
fn eps<T: Float>() -> f64 {
    to(T::epsilon()) * 8.0
}

// ---------------------------------------------------------------- references

/// Naive `op(a)·op(b)`, plus the sum of |terms| per element.
#[allow(clippy::too_many_arguments)]
fn ref_gemm(
    a: &[f64],
    b: &[f64],
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
) -> (Vec<f64>, Vec<f64>) {
    let mut c = vec![0.0; m * n];
    let mut s = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            for p in 0..k {
                let av = if ta { a[p * m + i] } else { a[i * k + p] };
                let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                c[i * n + j] += av * bv;
                s[i * n + j] += (av * bv).abs();
            }
        }
    }
    (c, s)
}

/// TensorFlow's output size and leading padding, written out independently.
fn tf_out_pad(len: usize, k: usize, s: usize, p: Padding) -> (usize, usize) {
    match p {
        Padding::Valid => ((len - k) / s + 1, 0),
        Padding::Same => {
            let out = len.div_ceil(s);
            let total = ((out - 1) * s + k) as isize - len as isize;
            (out, total.max(0) as usize / 2)
        }
    }
}

/// A conv problem: shapes plus the (b, oy, ox, ky, kx) → (iy, ix) map.
#[derive(Clone, Copy, Debug)]
struct Conv {
    n: usize,
    h: usize,
    w: usize,
    cin: usize,
    kh: usize,
    kw: usize,
    cout: usize,
    sh: usize,
    sw: usize,
    pad: Padding,
}

impl Conv {
    fn random(r: &mut Lcg) -> Conv {
        let (kh, kw) = (r.int(1, 3), r.int(1, 3));
        let pad = r.padding();
        let lo = |k| if pad == Padding::Valid { k } else { 1 };
        Conv {
            n: r.int(1, 3),
            h: r.int(lo(kh), 9),
            w: r.int(lo(kw), 9),
            cin: r.int(1, 5),
            kh,
            kw,
            cout: r.int(1, 5),
            sh: r.int(1, 2),
            sw: r.int(1, 2),
            pad,
        }
    }
    fn geom(&self) -> Conv2dGeom {
        Conv2dGeom::new(
            &[self.n, self.h, self.w, self.cin],
            &[self.kh, self.kw, self.cin, self.cout],
            (self.sh, self.sw),
            self.pad,
        )
        .unwrap()
    }
    fn out(&self) -> (usize, usize, usize, usize) {
        let (oh, pt) = tf_out_pad(self.h, self.kh, self.sh, self.pad);
        let (ow, pl) = tf_out_pad(self.w, self.kw, self.sw, self.pad);
        (oh, ow, pt, pl)
    }
    /// Calls `f(x index, w index, y index)` for every term of the convolution sum.
    fn for_each_term(&self, mut f: impl FnMut(usize, usize, usize)) {
        let (oh, ow, pt, pl) = self.out();
        for b in 0..self.n {
            for oy in 0..oh {
                for ox in 0..ow {
                    for ky in 0..self.kh {
                        for kx in 0..self.kw {
                            let iy = (oy * self.sh + ky) as isize - pt as isize;
                            let ix = (ox * self.sw + kx) as isize - pl as isize;
                            if iy < 0 || ix < 0 || iy >= self.h as isize || ix >= self.w as isize {
                                continue;
                            }
                            let (iy, ix) = (iy as usize, ix as usize);
                            for ci in 0..self.cin {
                                for co in 0..self.cout {
                                    let xi = ((b * self.h + iy) * self.w + ix) * self.cin + ci;
                                    let wi = ((ky * self.kw + kx) * self.cin + ci) * self.cout + co;
                                    let yi = ((b * oh + oy) * ow + ox) * self.cout + co;
                                    f(xi, wi, yi);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    fn x_len(&self) -> usize {
        self.n * self.h * self.w * self.cin
    }
    fn w_len(&self) -> usize {
        self.kh * self.kw * self.cin * self.cout
    }
    fn y_len(&self) -> usize {
        let (oh, ow, _, _) = self.out();
        self.n * oh * ow * self.cout
    }
}

/// Naive forward conv, input grad and filter grad, each with |term| sums.
type Ref = (Vec<f64>, Vec<f64>);
fn ref_conv(c: &Conv, x: &[f64], w: &[f64], gy: &[f64]) -> (Ref, Ref, Ref) {
    let mut y = (vec![0.0; c.y_len()], vec![0.0; c.y_len()]);
    let mut gx = (vec![0.0; c.x_len()], vec![0.0; c.x_len()]);
    let mut gw = (vec![0.0; c.w_len()], vec![0.0; c.w_len()]);
    c.for_each_term(|xi, wi, yi| {
        y.0[yi] += x[xi] * w[wi];
        y.1[yi] += (x[xi] * w[wi]).abs();
        gx.0[xi] += gy[yi] * w[wi];
        gx.1[xi] += (gy[yi] * w[wi]).abs();
        gw.0[wi] += x[xi] * gy[yi];
        gw.1[wi] += (x[xi] * gy[yi]).abs();
    });
    (y, gx, gw)
}

/// Naive max pooling: per (output, channel) the flat index into x of the winner:
/// the first NaN of the window if it has one, else the first element equal to the
/// window's maximum. Padding is skipped.
fn ref_pool_argmax(
    x: &[f64],
    shape: [usize; 4],
    k: (usize, usize),
    s: (usize, usize),
    pad: Padding,
) -> Vec<usize> {
    let [n, h, w, c] = shape;
    let (oh, pt) = tf_out_pad(h, k.0, s.0, pad);
    let (ow, pl) = tf_out_pad(w, k.1, s.1, pad);
    let mut arg = Vec::new();
    for b in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                for ch in 0..c {
                    let mut window = Vec::new();
                    for ky in 0..k.0 {
                        for kx in 0..k.1 {
                            let iy = (oy * s.0 + ky) as isize - pt as isize;
                            let ix = (ox * s.1 + kx) as isize - pl as isize;
                            if iy >= 0 && ix >= 0 && iy < h as isize && ix < w as isize {
                                window.push(((b * h + iy as usize) * w + ix as usize) * c + ch);
                            }
                        }
                    }
                    let max = window
                        .iter()
                        .map(|&i| x[i])
                        .fold(f64::NEG_INFINITY, f64::max);
                    let win = window
                        .iter()
                        .find(|&&i| x[i].is_nan())
                        .or_else(|| window.iter().find(|&&i| x[i] == max))
                        .expect("window has a real element");
                    arg.push(*win);
                }
            }
        }
    }
    arg
}

fn same_bits<T: Float>(a: &[T], b: &[T]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| to(*x).to_bits() == to(*y).to_bits())
}

// ---------------------------------------------------------------- gemm

fn check_gemm<T: Float>(r: &mut Lcg, m: usize, k: usize, n: usize, ta: bool, tb: bool) {
    let a: Vec<T> = r.vec(m * k);
    let b: Vec<T> = r.vec(k * n);
    let mut c = vec![T::nan(); m * n]; // overwritten, never read
    gemm(&a, &b, &mut c, m, k, n, ta, tb);
    let (want, scale) = ref_gemm(&f64s(&a), &f64s(&b), m, k, n, ta, tb);
    let what = format!("gemm {m}x{k}x{n} ta={ta} tb={tb}");
    assert_close(&what, &f64s(&c), &want, &scale, eps::<T>());
}

fn gemm_random<T: Float>(seed: u64) {
    let mut r = Lcg(seed);
    for _ in 0..40 {
        let (m, k, n) = (r.int(1, 37), r.int(1, 37), r.int(1, 37));
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            check_gemm::<T>(&mut r, m, k, n, ta, tb);
        }
    }
}

#[test]
fn gemm_matches_naive_f64() {
    gemm_random::<f64>(1);
}

#[test]
fn gemm_matches_naive_f32() {
    gemm_random::<f32>(2);
}

#[test]
fn gemm_zero_results_are_positive_zero_on_every_path() {
    // All products are -0 (0 · negative): a kernel that starts its sum from the first
    // product returns -0, one that starts from +0 returns +0. `gemm` promises +0 and
    // skips its sign pass where the backend's kernels start from +0; this covers the
    // outer-product (k ≤ 2), matrix-vector (m or n = 1), small-block and blocked paths,
    // every layout, one and two threads (the last shapes are past the threading
    // thresholds: 65x256x129 and 1x2048x1024 split into two column halves, 257x130x300
    // uses the pool).
    fn check<T: Float>(m: usize, k: usize, n: usize, ta: bool, tb: bool) {
        let a = vec![T::zero(); m * k];
        let b = vec![T::zero() - T::one(); k * n];
        let mut c = vec![T::one(); m * n];
        gemm(&a, &b, &mut c, m, k, n, ta, tb);
        let negative = c.iter().filter(|v| v.is_sign_negative()).count();
        assert_eq!(
            negative, 0,
            "gemm {m}x{k}x{n} ta={ta} tb={tb}: -0 in the result"
        );
    }
    let dims = [1, 2, 3, 5, 16, 17, 65];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    pool.install(|| {
        for &m in &dims {
            for &n in &dims {
                for k in [0, 1, 2, 3, 7, 64, 600] {
                    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                        check::<f32>(m, k, n, ta, tb);
                        check::<f64>(m, k, n, ta, tb);
                    }
                }
            }
        }
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            check::<f32>(65, 256, 129, ta, tb);
            check::<f32>(257, 130, 300, ta, tb);
            // one row, split into column halves: with tb, each half copies its columns
            // of the transposed `b` (rows 8 KiB apart) and takes the matrix-vector path
            check::<f32>(1, 2048, 1024, ta, tb);
        }
    });
}

/// A block of rows of a product has the bits of those rows of the whole product, for
/// blocks of at least 2 rows (a single row takes the backend's matrix-vector path) and
/// a `b` that is not transposed (whether a transposed `b` is copied first depends on
/// the product's size, and the copy changes the backend's path): what lets a
/// row-separable scan run as two half-batch scans (`exec/row_split.rs`).
#[test]
fn gemm_row_blocks_have_the_bits_of_the_whole_product() {
    let mut r = Lcg(23);
    let shapes = [
        (64, 128, 512),
        (64, 512, 128),
        (32, 28, 512),
        (64, 1000, 300),
        (96, 2048, 256),
        (30, 700, 70),
        // a half of at most 64 rows and columns: one block of k (a longer k is cut
        // differently there, so row-split loops take no such product)
        (128, 512, 64),
        // a whole of at most 64 rows and columns: its blocks cut a longer k alike
        (64, 784, 64),
        (48, 2000, 50),
    ];
    for (m, k, n) in shapes {
        let a: Vec<f32> = r.vec(m * k);
        let b: Vec<f32> = r.vec(k * n);
        let mut whole = vec![0f32; m * n];
        gemm(&a, &b, &mut whole, m, k, n, false, false);
        for split in [m / 2, m / 3, 17, 2] {
            let mut top = vec![0f32; split * n];
            gemm(&a[..split * k], &b, &mut top, split, k, n, false, false);
            let mut bottom = vec![0f32; (m - split) * n];
            gemm(
                &a[split * k..],
                &b,
                &mut bottom,
                m - split,
                k,
                n,
                false,
                false,
            );
            top.extend(bottom);
            assert!(
                same_bits(&top, &whole),
                "{m}x{k}x{n} split after row {split}"
            );
        }
    }
}

/// `accumulate` against its definition, a product then an element-wise add per step,
/// bit for bit: on the in-place path (one block of `k`, each part bigger than the
/// dot-product kernels take) and on the others (`k` ≤ 2 or beyond one block,
/// transposed `b`, tiny products), on 1 and 2 threads (two column halves) and from
/// outside the pool.
fn check_accumulate<T: Float>(r: &mut Lcg, m: usize, k: usize, n: usize, ta: bool, tb: bool) {
    use tapeflow::exec::kernels::gemm::accumulate;
    let steps = r.int(1, 4);
    let a: Vec<T> = r.vec(steps * m * k);
    let b: Vec<T> = r.vec(steps * k * n);
    let init: Vec<T> = r.vec(m * n);
    let (la, lb) = (m * k, k * n);
    let mut want = init.clone();
    let mut p = vec![T::zero(); m * n];
    for s in 0..steps {
        gemm(
            &a[s * la..][..la],
            &b[s * lb..][..lb],
            &mut p,
            m,
            k,
            n,
            ta,
            tb,
        );
        want.iter_mut().zip(&p).for_each(|(w, p)| *w = *w + *p);
    }
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let mut got = init.clone();
        pool.install(|| {
            accumulate(&mut got, m, k, n, ta, tb, steps, |s| {
                (&a[s * la..][..la], &b[s * lb..][..lb])
            })
        });
        assert!(
            same_bits(&got, &want),
            "accumulate {m}x{k}x{n} ta={ta} tb={tb}, {steps} steps, {threads} threads"
        );
    }
    // from outside any pool: one half on this thread, the other offered to a worker
    let mut got = init.clone();
    accumulate(&mut got, m, k, n, ta, tb, steps, |s| {
        (&a[s * la..][..la], &b[s * lb..][..lb])
    });
    assert!(
        same_bits(&got, &want),
        "accumulate {m}x{k}x{n} ta={ta} tb={tb}, {steps} steps, outside the pool"
    );
}

#[test]
fn accumulate_has_the_bits_of_each_product_added_in_turn() {
    let mut r = Lcg(11);
    // the LSTM's weight gradient, hᵀ·dz; the one-block limit and just past it; k ≤ 2;
    // a product small enough for the dot-product kernels
    let fixed = [
        (128, 64, 512, true, false),
        (128, 512, 130, false, false),
        (70, 513, 128, true, false),
        (64, 2, 256, false, false),
        (8, 20, 16, false, false),
        (64, 32, 256, false, true),
    ];
    for (m, k, n, ta, tb) in fixed {
        check_accumulate::<f32>(&mut r, m, k, n, ta, tb);
        check_accumulate::<f64>(&mut r, m, k, n, ta, tb);
    }
    for _ in 0..12 {
        let (m, k, n) = (r.int(2, 150), r.int(1, 600), r.int(2, 300));
        let (ta, tb) = (r.int(0, 1) == 1, r.int(0, 1) == 1);
        check_accumulate::<f32>(&mut r, m, k, n, ta, tb);
        check_accumulate::<f64>(&mut r, m, k, n, ta, tb);
    }
}

#[test]
fn gemm_large_products_match_naive() {
    // Past the backend's threading threshold, with ragged edge tiles, a long k (several
    // k blocks), and skinny shapes, in both precisions and all transposes.
    let mut r = Lcg(3);
    // (with tb, rows of b a multiple of 1 KiB apart are copied transposed first: k = 1024
    // and 512 in both precisions, 256 in f32; k = 768 in f32 is not)
    for (m, k, n) in [
        (301, 47, 67),
        (75, 61, 613),
        (3, 129, 1031),
        (37, 1500, 41),
        (33, 1024, 97),
        (70, 512, 40),
        (65, 256, 129),
        (7, 768, 201),
    ] {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            check_gemm::<f64>(&mut r, m, k, n, ta, tb);
            check_gemm::<f32>(&mut r, m, k, n, ta, tb);
        }
    }
}

/// A transposed `b` whose rows alias in L1 is copied transposed before the product (in
/// column halves past the splitting threshold, each half copying its own columns): the
/// result has the bits of transposing `b` first and multiplying it plain, on one and two
/// threads, inside a pool and from outside it (what transpose folding relies on: the
/// compiled `matmul[tb]` must equal the eager `transpose` then `matmul`).
fn tb_has_the_bits_of_a_transposed_copy<T: Float>(m: usize, k: usize, n: usize) {
    let mut r = Lcg(11);
    let a: Vec<T> = r.vec(m * k);
    let b: Vec<T> = r.vec(k * n); // [n, k]
    let bt: Vec<T> = (0..k * n).map(|i| b[(i % n) * k + i / n]).collect(); // [k, n]
    for ta in [false, true] {
        let mut want = vec![T::nan(); m * n];
        gemm(&a, &bt, &mut want, m, k, n, ta, false);
        let mut got = vec![T::nan(); m * n];
        gemm(&a, &b, &mut got, m, k, n, ta, true); // from outside any pool
        let what = format!("gemm {m}x{k}x{n} ta={ta} tb=true");
        assert!(same_bits(&got, &want), "{what}, outside a pool");
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut got = vec![T::nan(); m * n];
            pool.install(|| gemm(&a, &b, &mut got, m, k, n, ta, true));
            assert!(same_bits(&got, &want), "{what}, {threads} threads");
        }
    }
}

#[test]
fn gemm_aliasing_transposed_b_keeps_the_bits_of_a_transposed_copy() {
    // column halves (at least 2^21 multiply-adds and 128 columns; at 2^23 and up on two
    // threads, the pool's threading on one), a whole copy on one thread (below the
    // halves), and a product too small to copy (b read with its strides)
    tb_has_the_bits_of_a_transposed_copy::<f32>(65, 256, 129);
    tb_has_the_bits_of_a_transposed_copy::<f32>(96, 1024, 300);
    tb_has_the_bits_of_a_transposed_copy::<f64>(70, 512, 260);
    tb_has_the_bits_of_a_transposed_copy::<f64>(9, 128, 1100);
    tb_has_the_bits_of_a_transposed_copy::<f32>(20, 256, 100);
}

#[test]
fn gemm_degenerate_sizes() {
    // k = 0: the empty sum, zeros (c's NaNs are not read).
    let mut c = vec![f64::NAN; 6];
    gemm(&[], &[], &mut c, 2, 0, 3, false, false);
    assert_eq!(c, vec![0.0; 6]);
    let mut c: Vec<f32> = vec![];
    gemm(&[], &[1.0, 2.0], &mut c, 0, 1, 2, true, false);
    // 1x1x1
    let mut c = [0.0f32];
    gemm(&[3.0], &[-2.0], &mut c, 1, 1, 1, true, true);
    assert_eq!(c, [-6.0]);
}

#[test]
#[should_panic(expected = "gemm: b has 5 elements")]
fn gemm_rejects_wrong_lengths() {
    let mut c = [0.0f64; 4];
    gemm(&[0.0; 4], &[0.0; 5], &mut c, 2, 2, 2, false, false);
}

// ---------------------------------------------------------------- conv

fn check_conv<T: Float>(r: &mut Lcg, c: &Conv) {
    let g = c.geom();
    let (oh, ow, pt, pl) = c.out();
    assert_eq!(
        (g.oh, g.ow, g.pad_top, g.pad_left),
        (oh, ow, pt, pl),
        "{c:?}"
    );
    assert_eq!(g.out_shape(), [c.n, oh, ow, c.cout]);
    let x: Vec<T> = r.vec(c.x_len());
    let w: Vec<T> = r.vec(c.w_len());
    let gy: Vec<T> = r.vec(c.y_len());
    let (y, gx, gw) = ref_conv(c, &f64s(&x), &f64s(&w), &f64s(&gy));
    let tol = eps::<T>();
    let what = format!("{c:?}");
    assert_close(
        &format!("conv2d {what}"),
        &f64s(&conv2d(&x, &w, &g)),
        &y.0,
        &y.1,
        tol,
    );
    let got = conv2d_backprop_input(&gy, &w, &g);
    assert_close(
        &format!("backprop_input {what}"),
        &f64s(&got),
        &gx.0,
        &gx.1,
        tol,
    );
    let got = conv2d_backprop_filter(&x, &gy, &g);
    assert_close(
        &format!("backprop_filter {what}"),
        &f64s(&got),
        &gw.0,
        &gw.1,
        tol,
    );
}

fn conv_random<T: Float>(seed: u64) {
    let mut r = Lcg(seed);
    for _ in 0..150 {
        let c = Conv::random(&mut r);
        check_conv::<T>(&mut r, &c);
    }
}

#[test]
fn conv_matches_naive_f64() {
    conv_random::<f64>(10);
}

#[test]
fn conv_matches_naive_f32() {
    conv_random::<f32>(11);
}

#[test]
fn conv_special_cases_match_naive() {
    use Padding::{Same, Valid};
    let mut r = Lcg(12);
    #[rustfmt::skip]
    let cases = [
        // [n, h, w, cin], [kh, kw, cout], stride, padding
        ([2, 7, 5, 3], [1, 1, 4], (1, 1), Valid), // 1x1 stride 1: no im2col
        ([2, 7, 5, 3], [1, 1, 4], (1, 1), Same),  // the same, spelled Same
        ([2, 7, 5, 3], [1, 1, 4], (2, 2), Valid), // 1x1 stride 2 skips pixels
        ([2, 7, 5, 3], [3, 3, 4], (3, 2), Valid), // stride = kernel, and < kernel
        ([2, 2, 1, 3], [3, 2, 4], (1, 1), Same),  // kernel larger than the input
        ([2, 3, 3, 3], [3, 3, 4], (1, 1), Valid), // one output pixel
        // K = 3*3*16 = 144: chunks of 455 rows, one image per input-grad task
        ([3, 19, 21, 16], [3, 3, 5], (1, 1), Same),
        ([3, 19, 21, 16], [2, 3, 3], (2, 1), Valid),
        // an image spanning several input-grad chunks (625 pixels)
        ([2, 25, 25, 16], [3, 3, 2], (1, 1), Same),
        // 65 chunks of 2048 rows: the filter grad sums two chunks per group
        ([3, 212, 212, 1], [3, 3, 2], (1, 1), Valid),
        // the MNIST CNN's second conv, batch 2
        ([2, 13, 13, 32], [3, 3, 64], (1, 1), Valid),
    ];
    for ([n, h, w, cin], [kh, kw, cout], (sh, sw), pad) in cases {
        let c = Conv {
            n,
            h,
            w,
            cin,
            kh,
            kw,
            cout,
            sh,
            sw,
            pad,
        };
        check_conv::<f64>(&mut r, &c);
        check_conv::<f32>(&mut r, &c);
    }
}

#[test]
fn conv_adjoint_identities() {
    // <conv2d(x, w), gy> = <x, backprop_input(gy, w)> = <w, backprop_filter(x, gy)>
    let mut r = Lcg(13);
    for _ in 0..60 {
        let c = Conv::random(&mut r);
        let g = c.geom();
        let x: Vec<f64> = r.vec(c.x_len());
        let w: Vec<f64> = r.vec(c.w_len());
        let gy: Vec<f64> = r.vec(c.y_len());
        let a = dot(&conv2d(&x, &w, &g), &gy);
        let b = dot(&x, &conv2d_backprop_input(&gy, &w, &g));
        let d = dot(&w, &conv2d_backprop_filter(&x, &gy, &g));
        let tol = 1e-12 * (1.0 + a.abs()) * c.w_len() as f64;
        assert!(
            (a - b).abs() <= tol && (a - d).abs() <= tol,
            "{c:?}: {a} {b} {d}"
        );
    }
}

#[test]
fn conv_geometry_follows_tensorflow() {
    let g = Conv2dGeom::new(&[32, 28, 28, 1], &[3, 3, 1, 32], (1, 1), Padding::Valid).unwrap();
    assert_eq!(g.out_shape(), [32, 26, 26, 32]);
    // Same, stride 2, even input: pad_total = (4-1)*2 + 3 - 8 = 1, all of it bottom/right.
    let g = Conv2dGeom::new(&[1, 8, 8, 2], &[3, 3, 2, 4], (2, 2), Padding::Same).unwrap();
    assert_eq!((g.oh, g.ow, g.pad_top, g.pad_left), (4, 4, 0, 0));
    // Same, stride 1, 5x5 kernel: pad 2 on each side.
    let g = Conv2dGeom::new(&[1, 6, 7, 1], &[5, 5, 1, 1], (1, 1), Padding::Same).unwrap();
    assert_eq!((g.oh, g.ow, g.pad_top, g.pad_left), (6, 7, 2, 2));
    // Same with the kernel larger than the input is fine (padding covers it).
    let g = Conv2dGeom::new(&[1, 1, 2, 1], &[3, 3, 1, 1], (1, 1), Padding::Same).unwrap();
    assert_eq!((g.oh, g.ow, g.pad_top, g.pad_left), (1, 2, 1, 1));
}

#[test]
fn conv_geometry_errors_name_both_shapes() {
    use Padding::{Same, Valid};
    let expect_err = |x: &[usize], w: &[usize], stride, pad, why: &str| {
        let e = Conv2dGeom::new(x, w, stride, pad).unwrap_err();
        assert!(e.contains(&tapeflow::tensor::shape_str(x)), "{e}");
        assert!(e.contains(&tapeflow::tensor::shape_str(w)), "{e}");
        assert!(e.contains(why), "{e}");
    };
    expect_err(&[28, 28, 1], &[3, 3, 1, 8], (1, 1), Valid, "rank 4");
    expect_err(&[1, 28, 28, 1], &[3, 3, 1], (1, 1), Same, "rank 4");
    expect_err(&[1, 28, 28, 3], &[3, 3, 2, 8], (1, 1), Valid, "3 channels");
    expect_err(
        &[1, 2, 28, 1],
        &[3, 3, 1, 8],
        (1, 1),
        Valid,
        "larger than the input",
    );
    expect_err(&[1, 28, 28, 1], &[3, 3, 1, 8], (0, 1), Same, "strides");
    expect_err(&[1, 28, 28, 1], &[0, 3, 1, 8], (1, 1), Same, "at least 1");
}

#[test]
fn empty_shapes_give_empty_or_zero_results() {
    // An empty batch: empty outputs, zero filter gradient.
    let g = Conv2dGeom::new(&[0, 5, 5, 2], &[3, 3, 2, 4], (1, 1), Padding::Same).unwrap();
    assert_eq!(g.out_shape(), [0, 5, 5, 4]);
    assert!(conv2d::<f32>(&[], &[1.0; 72], &g).is_empty());
    assert!(conv2d_backprop_input::<f32>(&[], &[1.0; 72], &g).is_empty());
    assert_eq!(conv2d_backprop_filter::<f32>(&[], &[], &g), vec![0.0; 72]);
    // No input channels: the empty sum, zeros.
    let g = Conv2dGeom::new(&[1, 4, 4, 0], &[3, 3, 0, 2], (1, 1), Padding::Valid).unwrap();
    assert_eq!(conv2d::<f64>(&[], &[], &g), vec![0.0; 8]);
    assert!(conv2d_backprop_input::<f64>(&[1.0; 8], &[], &g).is_empty());
    let g = Pool2dGeom::new(&[0, 4, 4, 3], (2, 2), (2, 2), Padding::Valid).unwrap();
    assert!(max_pool2d::<f32>(&[], &g).is_empty());
    assert!(max_pool2d_backprop::<f32>(&[], &[], &g).is_empty());
    assert!(max_pool2d_gather::<f32>(&[], &[], &g).is_empty());
}

#[test]
#[should_panic(expected = "conv2d: filter has 8 elements")]
fn conv_rejects_wrong_lengths() {
    let g = Conv2dGeom::new(&[1, 3, 3, 1], &[3, 3, 1, 1], (1, 1), Padding::Valid).unwrap();
    conv2d(&[0.0f32; 9], &[0.0; 8], &g);
}

// ---------------------------------------------------------------- pool

#[derive(Clone, Copy, Debug)]
struct Pool {
    shape: [usize; 4],
    k: (usize, usize),
    s: (usize, usize),
    pad: Padding,
}

impl Pool {
    const fn new(shape: [usize; 4], k: (usize, usize), s: (usize, usize), pad: Padding) -> Pool {
        Pool { shape, k, s, pad }
    }
    fn random(r: &mut Lcg) -> Pool {
        let k = (r.int(1, 3), r.int(1, 3));
        let pad = r.padding();
        let lo = |k| if pad == Padding::Valid { k } else { 1 };
        Pool {
            shape: [
                r.int(1, 3),
                r.int(lo(k.0), 9),
                r.int(lo(k.1), 9),
                r.int(1, 5),
            ],
            k,
            s: (r.int(1, 3), r.int(1, 3)),
            pad,
        }
    }
    fn geom(&self) -> Pool2dGeom {
        Pool2dGeom::new(&self.shape, self.k, self.s, self.pad).unwrap()
    }
}

fn check_pool<T: Float>(p: &Pool, x: &[T], r: &mut Lcg) {
    let g = p.geom();
    let [n, h, w, c] = p.shape;
    let (oh, pt) = tf_out_pad(h, p.k.0, p.s.0, p.pad);
    let (ow, pl) = tf_out_pad(w, p.k.1, p.s.1, p.pad);
    assert_eq!((g.oh, g.ow, g.pad_top, g.pad_left), (oh, ow, pt, pl));
    assert_eq!(g.out_shape(), [n, oh, ow, c]);
    let arg = ref_pool_argmax(&f64s(x), p.shape, p.k, p.s, p.pad);
    // forward: exactly the winner's value (NaN included)
    let y = max_pool2d(x, &g);
    let want: Vec<T> = arg.iter().map(|&i| x[i]).collect();
    assert!(same_bits(&y, &want), "max_pool2d {p:?}: {y:?} vs {want:?}");
    // backprop: gy routed to the winner, summed where windows overlap
    let gy: Vec<T> = r.vec(y.len());
    let mut want = vec![0.0; x.len()];
    for (&i, &v) in arg.iter().zip(&gy) {
        want[i] += to(v);
    }
    let got = f64s(&max_pool2d_backprop(x, &gy, &g));
    let scale = vec![4.0 * (p.k.0 * p.k.1) as f64; want.len()];
    assert_close(
        &format!("max_pool2d_backprop {p:?}"),
        &got,
        &want,
        &scale,
        eps::<T>(),
    );
    // gather: gx read at the winner
    let gx: Vec<T> = r.vec(x.len());
    let want: Vec<T> = arg.iter().map(|&i| gx[i]).collect();
    assert!(
        same_bits(&max_pool2d_gather(x, &gx, &g), &want),
        "max_pool2d_gather {p:?}"
    );
}

/// Pooling geometries with channel counts across the 16-channel runs and their tails;
/// windows that tile the input exactly (the tutorial CNN's pools), leave a last
/// row/column uncovered, hang over the edge under Same padding, leave gaps (stride >
/// window) or overlap (stride < window).
const POOL_CASES: [Pool; 7] = [
    Pool::new([2, 26, 26, 32], (2, 2), (2, 2), Padding::Valid),
    Pool::new([2, 11, 11, 64], (2, 2), (2, 2), Padding::Valid),
    Pool::new([2, 5, 7, 37], (2, 2), (2, 2), Padding::Same),
    Pool::new([1, 6, 6, 19], (3, 3), (3, 3), Padding::Valid),
    Pool::new([2, 7, 7, 20], (2, 2), (3, 3), Padding::Valid),
    Pool::new([1, 9, 8, 17], (3, 2), (1, 2), Padding::Same),
    Pool::new([2, 6, 6, 3], (3, 3), (1, 1), Padding::Valid),
];

#[test]
fn pool_wide_channels_and_tiling_windows_match_naive() {
    let mut r = Lcg(21);
    for p in POOL_CASES {
        let len = p.shape.iter().product();
        let x: Vec<f32> = r.ties(len);
        check_pool(&p, &x, &mut r);
        let x: Vec<f64> = r.vec(len);
        check_pool(&p, &x, &mut r);
    }
}

/// The backprop with an epilogue (a ReLU's gate, as `max_pool2d_grad_gated` runs it)
/// has the bits of the plain backprop followed by the epilogue, on tiling windows
/// (stored once per pixel, 16 channels at a time, then the channel tail) and on
/// overlapping or gapped ones (summed, then gated).
#[test]
fn pool_backprop_with_epilogue_is_backprop_then_epilogue() {
    let mut r = Lcg(23);
    let gate = |p: f32, v: f32| p * if v > 0.25 { 1.0 } else { 0.0 };
    for p in POOL_CASES {
        let g = p.geom();
        let x: Vec<f32> = r.vec(p.shape.iter().product());
        let gy: Vec<f32> = r.vec(g.out_shape().iter().product());
        let plain = max_pool2d_backprop(&x, &gy, &g);
        let want: Vec<f32> = plain.iter().zip(&x).map(|(&p, &v)| gate(p, v)).collect();
        let got = max_pool2d_backprop_then(&x, &gy, &g, gate);
        assert!(same_bits(&got, &want), "{p:?}");
        assert!(got.iter().any(|&v| v != 0.0) && got.contains(&0.0));
    }
}

fn pool_random<T: Float>(seed: u64) {
    let mut r = Lcg(seed);
    for i in 0..200 {
        let p = Pool::random(&mut r);
        let len = p.shape.iter().product();
        // Alternate continuous values and heavily tied small integers.
        let x: Vec<T> = if i % 2 == 0 { r.vec(len) } else { r.ties(len) };
        check_pool(&p, &x, &mut r);
    }
}

#[test]
fn pool_matches_naive_f64() {
    pool_random::<f64>(20);
}

#[test]
fn pool_matches_naive_f32() {
    pool_random::<f32>(21);
}

#[test]
fn pool_ties_go_to_the_first_maximum_in_row_major_order() {
    let g = Pool2dGeom::new(&[1, 2, 2, 1], (2, 2), (1, 1), Padding::Valid).unwrap();
    let x = [1.0, 3.0, 3.0, 3.0];
    assert_eq!(
        max_pool2d_backprop(&x, &[1.0f64], &g),
        vec![0.0, 1.0, 0.0, 0.0]
    );
    assert_eq!(
        max_pool2d_gather(&x, &[10.0, 20.0, 30.0, 40.0], &g),
        vec![20.0]
    );
}

#[test]
fn pool_nan_wins_and_propagates() {
    let mut r = Lcg(22);
    for i in 0..100 {
        let p = Pool::random(&mut r);
        let len = p.shape.iter().product();
        let mut x: Vec<f64> = r.ties(len);
        for _ in 0..=i % 4 {
            let at = r.int(0, len - 1);
            x[at] = f64::NAN;
        }
        check_pool(&p, &x, &mut r);
        let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        check_pool(&p, &x32, &mut r);
    }
    // Two NaNs in one window: the first one gets the gradient.
    let g = Pool2dGeom::new(&[1, 1, 3, 1], (1, 3), (1, 1), Padding::Valid).unwrap();
    let x = [2.0, f64::NAN, f64::NAN];
    assert!(max_pool2d(&x, &g)[0].is_nan());
    assert_eq!(max_pool2d_backprop(&x, &[1.0], &g), vec![0.0, 1.0, 0.0]);
}

#[test]
fn pool_padding_never_wins() {
    // All-negative input with Same padding: a zero pad would win if it were a candidate.
    let g = Pool2dGeom::new(&[1, 3, 3, 1], (3, 3), (2, 2), Padding::Same).unwrap();
    assert_eq!((g.oh, g.ow, g.pad_top, g.pad_left), (2, 2, 1, 1));
    let x: Vec<f64> = (1..=9).map(|v| -(v as f64)).collect();
    assert_eq!(max_pool2d(&x, &g), vec![-1.0, -2.0, -4.0, -5.0]);
}

#[test]
fn pool_adjoint_identity() {
    // <max_pool2d_backprop(x, gy), gx> = <gy, max_pool2d_gather(x, gx)>
    let mut r = Lcg(23);
    for i in 0..100 {
        let p = Pool::random(&mut r);
        let g = p.geom();
        let len = p.shape.iter().product();
        let x: Vec<f64> = if i % 2 == 0 { r.vec(len) } else { r.ties(len) };
        let gy: Vec<f64> = r.vec(g.out_shape().iter().product());
        let gx: Vec<f64> = r.vec(len);
        let a = dot(&max_pool2d_backprop(&x, &gy, &g), &gx);
        let b = dot(&gy, &max_pool2d_gather(&x, &gx, &g));
        assert!(
            (a - b).abs() <= 1e-12 * (1.0 + a.abs()) * len as f64,
            "{p:?}: {a} {b}"
        );
    }
}

#[test]
fn pool_geometry_errors_name_the_shape() {
    use Padding::{Same, Valid};
    let expect_err = |x: &[usize], ksize, stride, pad, why: &str| {
        let e = Pool2dGeom::new(x, ksize, stride, pad).unwrap_err();
        assert!(
            e.contains(&tapeflow::tensor::shape_str(x)) && e.contains(why),
            "{e}"
        );
    };
    expect_err(&[4, 4, 1], (2, 2), (2, 2), Valid, "rank 4");
    expect_err(&[1, 4, 4, 1], (0, 2), (2, 2), Valid, "at least 1");
    expect_err(&[1, 4, 4, 1], (2, 2), (2, 0), Same, "at least 1");
    expect_err(
        &[1, 4, 1, 1],
        (2, 2),
        (2, 2),
        Valid,
        "larger than the input",
    );
}

// ---------------------------------------------------------------- determinism

/// Runs `f` on rayon pools of 1, 2 and 4 threads and asserts identical bits.
fn assert_pool_independent<T: Float>(what: &str, f: impl Fn() -> Vec<T> + Sync) {
    let runs: Vec<Vec<T>> = [1, 2, 4]
        .iter()
        .map(|&k| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(k)
                .build()
                .unwrap();
            pool.install(&f)
        })
        .collect();
    for run in &runs[1..] {
        assert!(
            same_bits(&runs[0], run),
            "{what}: bits differ across pool sizes"
        );
    }
}

#[test]
fn kernels_are_bitwise_deterministic_across_thread_counts() {
    let mut r = Lcg(30);
    for (m, k, n) in [
        (517, 301, 263),
        (64, 784, 64),
        (97, 1000, 1100),
        (64, 1024, 1100),
    ] {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let a: Vec<f32> = r.vec(m * k);
            let b: Vec<f32> = r.vec(k * n);
            assert_pool_independent("gemm", || {
                let mut c = vec![0.0; m * n];
                gemm(&a, &b, &mut c, m, k, n, ta, tb);
                c
            });
        }
    }
    // The MNIST CNN's conv layers at batch 8 (several chunks each), f32 and f64.
    let layers = [
        ([8, 28, 28, 1], [3, 3, 1, 32]),
        ([8, 13, 13, 32], [3, 3, 32, 64]),
        ([8, 5, 5, 64], [3, 3, 64, 64]),
        ([8, 9, 9, 16], [1, 1, 16, 8]),
        ([3, 212, 212, 1], [3, 3, 1, 2]),
    ];
    for (xs, ws) in layers {
        let g = Conv2dGeom::new(&xs, &ws, (1, 1), Padding::Valid).unwrap();
        let x: Vec<f32> = r.vec(xs.iter().product());
        let w: Vec<f32> = r.vec(ws.iter().product());
        let gy: Vec<f32> = r.vec(g.out_shape().iter().product());
        assert_pool_independent("conv2d", || conv2d(&x, &w, &g));
        assert_pool_independent("backprop_input", || conv2d_backprop_input(&gy, &w, &g));
        assert_pool_independent("backprop_filter", || conv2d_backprop_filter(&x, &gy, &g));
        let x64 = f64s(&x);
        let gy64 = f64s(&gy);
        assert_pool_independent("backprop_filter f64", || {
            conv2d_backprop_filter(&x64, &gy64, &g)
        });
    }
    let g = Pool2dGeom::new(&[8, 26, 26, 32], (2, 2), (2, 2), Padding::Valid).unwrap();
    let x: Vec<f32> = r.ties(8 * 26 * 26 * 32);
    let gy: Vec<f32> = r.vec(g.out_shape().iter().product());
    assert_pool_independent("max_pool2d", || max_pool2d(&x, &g));
    assert_pool_independent("max_pool2d_backprop", || max_pool2d_backprop(&x, &gy, &g));
}

// ---------------------------------------------------------------- throughput

/// Best-of wall time of `f`, in seconds.
fn best_time(mut f: impl FnMut()) -> f64 {
    f();
    let start = std::time::Instant::now();
    let mut best = f64::INFINITY;
    let mut runs = 0;
    while runs < 3 || (runs < 100 && start.elapsed().as_secs_f64() < 0.5) {
        let t = std::time::Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        runs += 1;
    }
    best
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn bench_kernels() {
    let mut r = Lcg(40);
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        println!("--- {threads} thread(s), f32, GFLOP/s");
        #[rustfmt::skip]
        let shapes = [
            (64, 784, 64, false, false), (256, 784, 1024, false, false),
            (784, 256, 1024, true, false), (256, 1024, 784, false, true),
            (256, 1024, 1024, false, false), (1024, 256, 1024, true, false),
            (256, 1024, 1024, false, true), (1024, 256, 1024, false, false),
        ];
        for (m, k, n, ta, tb) in shapes {
            let a: Vec<f32> = r.vec(m * k);
            let b: Vec<f32> = r.vec(k * n);
            let mut c = vec![0.0; m * n];
            let t = pool.install(|| best_time(|| gemm(&a, &b, &mut c, m, k, n, ta, tb)));
            let gflops = 2.0 * (m * k * n) as f64 / t / 1e9;
            println!("gemm {m}x{k}x{n} ta={ta} tb={tb}: {gflops:.1}");
        }
        println!("--- {threads} thread(s), f32, MNIST CNN convs at batch 32, ms (GFLOP/s)");
        let layers = [
            ([32, 28, 28, 1], [3, 3, 1, 32]),
            ([32, 13, 13, 32], [3, 3, 32, 64]),
            ([32, 5, 5, 64], [3, 3, 64, 64]),
        ];
        for (xs, ws) in layers {
            let g = Conv2dGeom::new(&xs, &ws, (1, 1), Padding::Valid).unwrap();
            let x: Vec<f32> = r.vec(xs.iter().product());
            let w: Vec<f32> = r.vec(ws.iter().product());
            let gy: Vec<f32> = r.vec(g.out_shape().iter().product());
            let flops =
                2.0 * (g.out_shape().iter().product::<usize>() * ws[0] * ws[1] * ws[2]) as f64;
            let report = |name: &str, t: f64| {
                println!(
                    "{name} {xs:?}*{ws:?}: {:.3} ms ({:.1})",
                    t * 1e3,
                    flops / t / 1e9
                )
            };
            report(
                "conv2d",
                pool.install(|| best_time(|| drop(conv2d(&x, &w, &g)))),
            );
            report(
                "backprop_input",
                pool.install(|| best_time(|| drop(conv2d_backprop_input(&gy, &w, &g)))),
            );
            report(
                "backprop_filter",
                pool.install(|| best_time(|| drop(conv2d_backprop_filter(&x, &gy, &g)))),
            );
        }
        let g = Pool2dGeom::new(&[32, 26, 26, 32], (2, 2), (2, 2), Padding::Valid).unwrap();
        let x: Vec<f32> = r.vec(32 * 26 * 26 * 32);
        let gy: Vec<f32> = r.vec(g.out_shape().iter().product());
        let t = pool.install(|| best_time(|| drop(max_pool2d(&x, &g))));
        println!("max_pool2d [32,26,26,32] 2x2/2: {:.3} ms", t * 1e3);
        let t = pool.install(|| best_time(|| drop(max_pool2d_backprop(&x, &gy, &g))));
        println!("max_pool2d_backprop: {:.3} ms", t * 1e3);
    }
}
