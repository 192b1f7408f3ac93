//! f32 `exp`, `ln`, `sin`, `cos` and `tanh` as straight-line code the compiler vectorizes.
//!
//! std's f32 transcendental functions are calls into the system libm, so a kernel loop
//! that uses them runs one element at a time. These versions have no calls, no tables
//! and no data-dependent branches — every special case is a select on values, which
//! becomes a blend — so they inline into the loops of [`crate::exec::kernels::ew`] and
//! the fused-loop kernel and vectorize there.
//!
//! Two working precisions:
//! - **`exp`, `sin`, `cos` and `tanh` work in f32**, 16 lanes per AVX-512 register.
//!   `exp`, `sin` and `cos` use Cody–Waite range reduction (the reduction constant split
//!   into parts whose products with `k` are exact) and Taylor polynomials; `tanh` is
//!   its Taylor series near 0 and `1 − 2/(e^{2|x|} + 1)` beyond. `exp` and `tanh` are
//!   within 1 ulp of the correctly rounded result everywhere; `sin` and `cos` within 2
//!   ulp for |x| ≤ 12867. They carry the fused loops of transcendental-heavy programs
//!   (W5's second derivative of sin·e^(−x²): 2x faster than the same code in f64) and
//!   the cells of recurrent layers (`sigmoid` is built on `exp`; `tanh` over an LSTM
//!   cell's 64×128 values ran 2.2–2.9x slower on AVX2 when it worked in f64).
//! - **`ln` widens to f64**, works there and rounds to f32 once: the f64 intermediate
//!   carries about 40 more bits than the answer needs, so it is within 1 ulp and mostly
//!   correctly rounded; working in f64 also makes f32 subnormals normal.
//!
//! Invariants: only IEEE operations that round once and the same on every ISA — the
//! basic ones (+ − × ÷, conversions, bit moves, `copysign`) and fused multiply-add,
//! written out as `mul_add` (one rounding of the exact `a·b + c`) for every Horner step
//! and Cody–Waite reduction step. Rust never contracts `a*b+c` on its own, so a kernel's
//! AVX-512, AVX2 and baseline copies compute the same bits. The AVX-512 and AVX2 copies
//! run `mul_add` as one `vfmadd` instruction (the dispatch requires FMA with AVX2);
//! the baseline copy calls the C library's `fmaf`/`fma`, which is correctly rounded
//! everywhere and slow only on CPUs without FMA. FMA makes W5's generated loop 17 of
//! 135 instructions shorter and 9% faster than separate multiplies and adds.
//! Every function is `#[inline(always)]` so that it is compiled inside the caller's
//! feature-enabled loop.
//!
//! Polynomials are Taylor series, not minimax fits: every coefficient is a fraction a
//! reader can check (rounded to the working precision), at the cost of a term or two.
//!
//! Generated fused loops carry an operation-for-operation C port of these functions
//! (`exec/codegen/prelude.c`; three of its selects are written in another form that
//! gcc vectorizes better, and tanh and sigmoid skip the `exp` clamp their argument
//! cannot reach, for the same values): change both together;
//! `tests/codegen.rs` compares their bits.

use std::f64::consts::LN_2;

/// The biased exponent bits of 1.0.
const ONE_BITS: u64 = 0x3FF0_0000_0000_0000;

/// 1.5·2²³: adding and subtracting it rounds an f32 of magnitude below 2²² to the
/// nearest integer, and the low mantissa bits of the sum are that integer in two's
/// complement (offset by 2²²).
pub(crate) const ROUND_MAGIC_F32: f32 = 12582912.0;

/// ln 2 in two parts: `LN2_HI` has 9 significant bits, so `k·LN2_HI` is exact for the
/// `|k| ≤ 151` that [`exp`] meets; `LN2_LO` is the f32 nearest the rest.
pub(crate) const LN2_HI: f32 = 355.0 / 512.0; // 0.693359375
pub(crate) const LN2_LO: f32 = -2.1219444e-4;

/// `eˣ` for f32, within 1 ulp of the correctly rounded result for every input.
///
/// Works in f32 throughout (16 lanes per AVX-512 register): x = k·ln2 + r with
/// |r| ≤ ln2/2 (Cody–Waite, two parts), eʳ by its Taylor series through r⁷
/// (truncation < 6e-9 relative), then scaled by 2ᵏ in two exact steps so that
/// subnormal results are rounded once. `exp(-inf) = 0`, `exp(inf) = inf`, NaN gives
/// NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // e⁸⁹ overflows f32 and e⁻¹⁰⁴ is below half the least subnormal; NaN passes
    // through both clamps (and every operation below)
    let xc = if x > 89.0 { 89.0 } else { x };
    let xc = if xc < -104.0 { -104.0 } else { xc };
    let t = xc.mul_add(std::f32::consts::LOG2_E, ROUND_MAGIC_F32);
    let k = t - ROUND_MAGIC_F32;
    let ki = t.to_bits().wrapping_sub(ROUND_MAGIC_F32.to_bits()) as i32;
    // x − k·LN2_HI is exact (Sterbenz), so r carries one rounding, of the small LN2_LO term
    let r = (-k).mul_add(LN2_LO, (-k).mul_add(LN2_HI, xc));
    let mut p: f32 = 1.0 / 5040.0;
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5] {
        p = p.mul_add(r, c);
    }
    let y = p.mul_add(r * r, r) + 1.0;
    // k in [-150, 128]: 2^(k/2) and 2^(k − k/2) are normal, y·2^(k/2) is exact, and the
    // second product rounds once (into the subnormals where the result is that small)
    let k1 = ki >> 1;
    let k2 = ki - k1;
    let s1 = f32::from_bits(((k1 + 127) as u32) << 23);
    let s2 = f32::from_bits(((k2 + 127) as u32) << 23);
    (y * s1) * s2
}

/// `ln x` for f32, within 1 ulp of the correctly rounded result for every input.
///
/// Exact at 1; subnormal inputs are handled like normal ones. `ln(±0) = -inf`,
/// `ln(inf) = inf`, negative inputs and NaN give NaN.
#[inline(always)]
pub fn ln(x: f32) -> f32 {
    const SQRT_HALF_BITS: u64 = 0x3FE6_A09E_667F_3BCD;
    const MANTISSA: u64 = (1 << 52) - 1;
    // every positive f32 is a normal f64
    let bits = (x as f64).to_bits();
    // x = 2ᵏ·m with m in [√½, √2): measuring the bits from √½ puts k in the exponent
    // field (biased by 1023) and m − √½ in the mantissa field
    let t = bits.wrapping_add(ONE_BITS.wrapping_sub(SQRT_HALF_BITS));
    let m = f64::from_bits((t & MANTISSA) + SQRT_HALF_BITS);
    // 2⁵² + (k + 1023), exactly
    let k = f64::from_bits(0x4330_0000_0000_0000 | (t >> 52)) - (4503599627370496.0 + 1023.0);
    // ln m = 2·atanh s = 2(s + s³/3 + s⁵/5 + …), s = (m−1)/(m+1), |s| ≤ 0.172;
    // terms through s¹³ leave < 2e-12 relative
    let s = (m - 1.0) / (m + 1.0);
    let z = s * s;
    let mut p: f64 = 1.0 / 13.0;
    for c in [1.0 / 11.0, 1.0 / 9.0, 1.0 / 7.0, 1.0 / 5.0, 1.0 / 3.0] {
        p = p.mul_add(z, c);
    }
    let ln_m = (2.0 * s).mul_add(z * p, 2.0 * s);
    let y = k.mul_add(LN_2, ln_m) as f32;
    let y = if x == 0.0 { f32::NEG_INFINITY } else { y };
    let y = if x < 0.0 { f32::NAN } else { y };
    let y = if x == f32::INFINITY { x } else { y };
    if x.is_nan() {
        x
    } else {
        y
    }
}

/// π/2 in four parts, each truncated (so every part is positive, and `k·P` is +0 for
/// k = 0: x = −0 reduces to −0). `PIO2_1` has 8 significant bits and `PIO2_2`,
/// `PIO2_3` 11, so `k·PIO2_1..3` are exact f32 products for `|k| < 2¹³`; `PIO2_4`
/// carries the next 24 bits. Together they hold π/2 to about 2⁻⁶³.
pub(crate) const PIO2_1: f32 = 1.5703125;
pub(crate) const PIO2_2: f32 = 4.837_513e-4;
pub(crate) const PIO2_3: f32 = 7.549_533_6e-8;
pub(crate) const PIO2_4: f32 = 2.563_344e-12;

/// x = k·π/2 + r, |r| ≤ π/4: `(sin r, cos r, k)` with `k` as the low bits of a u32.
/// Both polynomials are evaluated for every x, so one reduction serves `sin` and `cos`.
#[inline(always)]
fn sin_cos_reduced(x: f32) -> (f32, f32, u32) {
    let t = x.mul_add(std::f32::consts::FRAC_2_PI, ROUND_MAGIC_F32);
    let k = t - ROUND_MAGIC_F32;
    // Each step rounds once, to its own result's precision: r is accurate to a few ulp
    // of r while the products are exact (|k| < 2¹³; the last one inside its FMA).
    let r = (-k).mul_add(PIO2_1, x);
    let r = (-k).mul_add(PIO2_2, r);
    let r = (-k).mul_add(PIO2_3, r);
    let r = (-k).mul_add(PIO2_4, r);
    // Beyond the exact range the reduction loses accuracy, and from |x| ≈ 6.6e6 (the
    // rounding of k) it is meaningless; keep r where the polynomials stay in [-1, 1].
    // NaN (also from ±inf: inf − inf) passes through.
    let r = if r > 0.8 { 0.8 } else { r };
    let r = if r < -0.8 { -0.8 } else { r };
    let z = r * r;
    // Taylor series through r⁹ and r¹⁰: truncation < 3e-9 relative on |r| ≤ 0.8
    let mut ps: f32 = 1.0 / 362880.0;
    for c in [-1.0 / 5040.0, 1.0 / 120.0, -1.0 / 6.0] {
        ps = ps.mul_add(z, c);
    }
    // sin r has the sign of r on |r| ≤ 0.8; copysign keeps sin(−0) = −0
    let sin_r = r.mul_add(z * ps, r).copysign(r);
    let mut pc: f32 = -1.0 / 3628800.0;
    for c in [1.0 / 40320.0, -1.0 / 720.0, 1.0 / 24.0, -0.5] {
        pc = pc.mul_add(z, c);
    }
    let cos_r = z.mul_add(pc, 1.0);
    (sin_r, cos_r, t.to_bits())
}

/// sin(r + q·π/2) from [`sin_cos_reduced`]'s `sin r` and `cos r`: sin r, cos r, −sin r,
/// −cos r for q mod 4 = 0, 1, 2, 3. `sin x` is quadrant k, `cos x` = sin(x + π/2) is
/// quadrant k + 1.
#[inline(always)]
fn quadrant(sin_r: f32, cos_r: f32, q: u32) -> f32 {
    let y = if q & 1 == 0 { sin_r } else { cos_r };
    if q & 2 == 0 {
        y
    } else {
        -y
    }
}

/// `sin x` for f32.
///
/// Works in f32 throughout. Within 2 ulp of the correctly rounded result for
/// |x| ≤ 12867 (where the reduction's products are exact). Beyond, the reduction's rounding
/// dominates: the result is the sine of a value within about 2⁻²³·|x| of x (an ulp or
/// so of x itself), and from about 6.6e6 it is an arbitrary value in [-1, 1]. Keeps
/// the sign of zero; `sin(±inf)` and `sin(NaN)` are NaN.
#[inline(always)]
pub fn sin(x: f32) -> f32 {
    let (s, c, k) = sin_cos_reduced(x);
    quadrant(s, c, k)
}

/// `cos x` for f32; accuracy as for [`sin`]. `cos(±inf)` and `cos(NaN)` are NaN.
#[inline(always)]
pub fn cos(x: f32) -> f32 {
    let (s, c, k) = sin_cos_reduced(x);
    quadrant(s, c, k.wrapping_add(1))
}

/// `(sin x, cos x)` with one shared range reduction: exactly the bits of [`sin`] and
/// [`cos`] (the same operations on the same values), for about the cost of one of them.
#[inline(always)]
pub fn sin_cos(x: f32) -> (f32, f32) {
    let (s, c, k) = sin_cos_reduced(x);
    (quadrant(s, c, k), quadrant(s, c, k.wrapping_add(1)))
}

/// Where [`tanh`] switches from its series to `1 − 2/(e^{2|x|} + 1)`.
const TANH_SERIES_MAX: f32 = 0.6;

/// The series of tanh x = x + x·Σₖ cₖ·x²ᵏ, k = 1..8, highest power first: the
/// coefficients of x³ … x¹⁷, each the f32 nearest the exact fraction.
const TANH_SERIES: [f32; 8] = [
    (6404582.0 / 10854718875.0_f64) as f32,
    (-929569.0 / 638512875.0_f64) as f32,
    (21844.0 / 6081075.0_f64) as f32,
    (-1382.0 / 155925.0_f64) as f32,
    (62.0 / 2835.0_f64) as f32,
    (-17.0 / 315.0_f64) as f32,
    (2.0 / 15.0_f64) as f32,
    (-1.0 / 3.0_f64) as f32,
];

/// `tanh x` for f32, within 1 ulp of the correctly rounded result for every input
/// (checked exhaustively over all finite f32 values; the tests sweep them densely).
///
/// Works in f32 throughout, on a = |x|, the sign copied back at the end (odd, keeps the
/// sign of zero): for a ≥ [`TANH_SERIES_MAX`], `1 − 2/(e + 1)` with e = [`exp`]`(2a)`;
/// there tanh ≥ 0.537, so the subtraction loses nothing and 2/(e + 1) ≤ 0.46 carries
/// exp's error into the result at most halved. Below, the Taylor series through x¹⁷
/// (truncation below 2⁻²⁶ relative at 0.6), which is exact for subnormals. Saturates to
/// ±1 from |x| ≈ 9 (and for ±inf, where e = inf); NaN stays NaN.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let a = x.abs();
    let e = exp(2.0 * a);
    let big = 1.0 - 2.0 / (e + 1.0);
    let z = a * a;
    let mut p = TANH_SERIES[0];
    for &c in &TANH_SERIES[1..] {
        p = p.mul_add(z, c);
    }
    let small = (a * z).mul_add(p, a);
    let y = if a < TANH_SERIES_MAX { small } else { big };
    if x.is_nan() {
        x
    } else {
        y.copysign(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::kernels::ew::{vectorized, vectorized_for, Isa};
    use rand::{Rng, SeedableRng};

    /// The largest `|x|` for which [`sin`] and [`cos`] are documented to be within 2 ulp:
    /// the reduction's products are exact up to here (`|k| < 2¹³`).
    const SIN_COS_MAX_ACCURATE: f32 = 12867.0;

    /// Position of `x` on the line of f32 values (±0 both at 0), so that adjacent
    /// floats differ by 1.
    fn ordinal(x: f32) -> i64 {
        let b = x.to_bits();
        let mag = (b & 0x7FFF_FFFF) as i64;
        if b >> 31 == 1 {
            -mag
        } else {
            mag
        }
    }

    /// Distance in ulps between `got` and `want`; 0 when both are NaN, huge when one is.
    fn ulps(got: f32, want: f32) -> i64 {
        match (got.is_nan(), want.is_nan()) {
            (true, true) => 0,
            (false, false) => (ordinal(got) - ordinal(want)).abs(),
            _ => i64::MAX,
        }
    }

    type F32Fn = fn(f32) -> f32;

    /// The functions under test, each with its reference: f64 std rounded to f32.
    fn cases() -> [(&'static str, F32Fn, F32Fn); 5] {
        [
            ("exp", exp, |x| (x as f64).exp() as f32),
            ("ln", ln, |x| (x as f64).ln() as f32),
            ("sin", sin, |x| (x as f64).sin() as f32),
            ("cos", cos, |x| (x as f64).cos() as f32),
            ("tanh", tanh, |x| (x as f64).tanh() as f32),
        ]
    }

    /// Every 97th f32 bit pattern whose magnitude is at most `max` (NaN excluded), plus
    /// seeded random values: 200 000 random bit patterns in that range and 200 000
    /// uniform in [-min(max, 100), min(max, 100)].
    fn sweep(max: f32) -> Vec<f32> {
        let mut v: Vec<f32> = (0..=u32::MAX / 97)
            .map(|i| f32::from_bits(i * 97))
            .filter(|x| x.abs() <= max)
            .collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let bits = (0..).map(|_| f32::from_bits(rng.gen()));
        v.extend(bits.filter(|x| x.abs() <= max).take(200_000));
        let r = max.min(100.0);
        v.extend((0..200_000).map(|_| rng.gen_range(-r..=r)));
        v
    }

    /// The largest ulp error of `f` against `reference` over `xs`, with its argument.
    fn max_ulps(f: F32Fn, reference: F32Fn, xs: &[f32]) -> (i64, f32) {
        let got: Vec<f32> = vectorized(|| xs.iter().map(|&x| f(x)).collect());
        xs.iter()
            .zip(&got)
            .map(|(&x, &y)| (ulps(y, reference(x)), x))
            .max_by_key(|&(u, _)| u)
            .unwrap()
    }

    #[test]
    fn within_documented_ulps_over_dense_sweeps() {
        let ranges = [
            ("exp", f32::INFINITY, 1),
            ("ln", f32::INFINITY, 1),
            ("sin", SIN_COS_MAX_ACCURATE, 2),
            ("cos", SIN_COS_MAX_ACCURATE, 2),
            ("tanh", f32::INFINITY, 1),
        ];
        for ((name, f, reference), (_, max, bound)) in cases().into_iter().zip(ranges) {
            let (worst, at) = max_ulps(f, reference, &sweep(max));
            eprintln!("{name}: max {worst} ulp (at {at:e})");
            assert!(worst <= bound, "{name}({at:e}) is {worst} ulps off");
        }
    }

    #[test]
    fn exp_special_values() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-0.0), 1.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(f32::NEG_INFINITY).to_bits(), 0);
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(1.0), std::f32::consts::E);
        // overflow boundary: ln(f32::MAX) = 88.7228391
        assert_eq!(exp(88.72283), (88.72283f32 as f64).exp() as f32);
        assert_eq!(exp(88.72284), f32::INFINITY);
        assert_eq!(exp(89.0), f32::INFINITY);
        assert_eq!(exp(1e30), f32::INFINITY);
        // normal/subnormal boundary and underflow
        let tiny = -87.33655f32; // ≈ ln(f32::MIN_POSITIVE)
        assert!(ulps(exp(tiny), (tiny as f64).exp() as f32) <= 1);
        assert!(exp(-90.0) > 0.0 && exp(-90.0) < f32::MIN_POSITIVE);
        let least = f32::from_bits(1); // 2⁻¹⁴⁹ = e^-103.2789
        assert_eq!(exp(-103.27893), least);
        assert_eq!(exp(-103.9), least); // still above half the least subnormal
        assert_eq!(exp(-104.0).to_bits(), 0);
        assert_eq!(exp(-1e30).to_bits(), 0);
        for x in [-103.97, -100.0, -95.5, -88.0, -87.3, 80.0, 88.5] {
            assert!(ulps(exp(x), (x as f64).exp() as f32) <= 1, "exp({x})");
        }
    }

    #[test]
    fn ln_special_values() {
        assert_eq!(ln(1.0).to_bits(), 0);
        assert_eq!(ln(0.0), f32::NEG_INFINITY);
        assert_eq!(ln(-0.0), f32::NEG_INFINITY);
        assert_eq!(ln(f32::INFINITY), f32::INFINITY);
        assert!(ln(f32::NEG_INFINITY).is_nan());
        assert!(ln(-1.0).is_nan());
        assert!(ln(-f32::MIN_POSITIVE).is_nan());
        assert!(ln(-f32::from_bits(1)).is_nan());
        assert!(ln(f32::NAN).is_nan());
        assert_eq!(ln(std::f32::consts::E), 0.99999994); // the f32 e is below e
        for x in [
            f32::from_bits(1),
            f32::from_bits(0x7F_FFFF), // largest subnormal
            f32::MIN_POSITIVE,
            f32::MAX,
            0.5,
            2.0,
            1.0 + f32::EPSILON,
            1.0 - f32::EPSILON / 2.0,
            std::f32::consts::FRAC_1_SQRT_2,
            std::f32::consts::SQRT_2,
        ] {
            assert!(ulps(ln(x), (x as f64).ln() as f32) <= 1, "ln({x:e})");
        }
    }

    #[test]
    fn sin_cos_special_values() {
        assert_eq!(sin(0.0).to_bits(), 0.0f32.to_bits());
        assert_eq!(sin(-0.0).to_bits(), (-0.0f32).to_bits());
        assert_eq!(cos(0.0), 1.0);
        assert_eq!(cos(-0.0), 1.0);
        let sub = f32::from_bits(5);
        assert_eq!(sin(sub), sub);
        assert_eq!(sin(-sub), -sub);
        for f in [sin, cos] {
            assert!(f(f32::INFINITY).is_nan());
            assert!(f(f32::NEG_INFINITY).is_nan());
            assert!(f(f32::NAN).is_nan());
        }
        // the f32 nearest multiples of π/2, where one of them nearly cancels
        for k in (-8191..=8191).chain([123_456, 1_000_001, -54_321_987, 80_000_000]) {
            let x = (k as f64 * std::f64::consts::FRAC_PI_2) as f32;
            if x.abs() > SIN_COS_MAX_ACCURATE {
                continue;
            }
            assert!(ulps(sin(x), (x as f64).sin() as f32) <= 2, "sin({x:e})");
            assert!(ulps(cos(x), (x as f64).cos() as f32) <= 2, "cos({x:e})");
        }
        // large arguments up to where k is still rounded to the nearest integer: the
        // sine of a value within about 2⁻²³·|x| of x
        for x in [2e4f32, 1e5, 3.3e6, 6.5e6] {
            for x in [x, -x] {
                let bound = (x.abs() as f64) * 2f64.powi(-22) + 2f64.powi(-22);
                let e_sin = (sin(x) as f64 - (x as f64).sin()).abs();
                let e_cos = (cos(x) as f64 - (x as f64).cos()).abs();
                assert!(
                    e_sin <= bound && e_cos <= bound,
                    "{x:e}: {e_sin:e} {e_cos:e}"
                );
            }
        }
        // beyond it: still values of sin and cos
        for x in [1e7f32, 1e9, 1e15, 1e20, 1e38, f32::MAX, -f32::MAX] {
            for y in [sin(x), cos(x)] {
                assert!((-1.0..=1.0).contains(&y), "{y} at {x:e}");
            }
        }
    }

    /// Zeros, infinities, NaN, the extremes and the smallest subnormal.
    const SPECIALS: [f32; 8] = [
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MAX,
        -f32::MAX,
        f32::from_bits(1),
    ];

    #[test]
    fn sin_cos_gives_the_bits_of_sin_and_cos() {
        let mut xs = sweep(f32::INFINITY);
        xs.extend(SPECIALS);
        xs.push(1e20);
        xs.extend((-1000..=1000).map(|k| (k as f64 * std::f64::consts::FRAC_PI_4) as f32));
        // in the vectorized loops the kernels run, and one element at a time
        let fast: Vec<(u32, u32, u32, u32)> = vectorized(|| {
            xs.iter()
                .map(|&x| {
                    let (s, c) = sin_cos(x);
                    (s.to_bits(), c.to_bits(), sin(x).to_bits(), cos(x).to_bits())
                })
                .collect()
        });
        for (&x, &(s, c, sin_x, cos_x)) in xs.iter().zip(&fast) {
            assert_eq!((s, c), (sin_x, cos_x), "sin_cos({x:e})");
        }
        let slow: Vec<u32> = scalar_loop(|x| sin_cos(x).0, &xs);
        let slow_c: Vec<u32> = scalar_loop(|x| sin_cos(x).1, &xs);
        for ((&x, &(s, c, _, _)), (&ss, &sc)) in xs.iter().zip(&fast).zip(slow.iter().zip(&slow_c))
        {
            assert_eq!((s, c), (ss, sc), "sin_cos({x:e}) scalar");
        }
    }

    #[test]
    fn tanh_special_values() {
        assert_eq!(tanh(0.0).to_bits(), 0.0f32.to_bits());
        assert_eq!(tanh(-0.0).to_bits(), (-0.0f32).to_bits());
        let sub = f32::from_bits(3);
        assert_eq!(tanh(sub), sub);
        assert_eq!(tanh(-sub), -sub);
        assert_eq!(tanh(f32::INFINITY), 1.0);
        assert_eq!(tanh(f32::NEG_INFINITY), -1.0);
        assert_eq!(tanh(10.0), 1.0);
        assert_eq!(tanh(-1e30), -1.0);
        assert!(tanh(f32::NAN).is_nan());
        // both sides of the switch between the series and the exp form
        let below = f32::from_bits(TANH_SERIES_MAX.to_bits() - 1);
        let above = f32::from_bits(TANH_SERIES_MAX.to_bits() + 1);
        for x in [below, TANH_SERIES_MAX, above, 1e-3, 0.0625, 0.5, 9.0, 9.1] {
            for x in [x, -x] {
                assert!(ulps(tanh(x), (x as f64).tanh() as f32) <= 1, "tanh({x})");
            }
        }
    }

    #[test]
    fn reduction_constants_have_the_stated_widths() {
        // PIO2_1: 8 significant bits, the low 23 − 7 mantissa bits are zero; PIO2_2 and
        // PIO2_3: 11, the low 13 are zero; so k·PIO2_1..3 are exact for |k| < 2¹³
        assert_eq!(PIO2_1.to_bits() & ((1 << 16) - 1), 0);
        assert_eq!(PIO2_2.to_bits() & ((1 << 13) - 1), 0);
        assert_eq!(PIO2_3.to_bits() & ((1 << 13) - 1), 0);
        for p in [PIO2_1, PIO2_2, PIO2_3, PIO2_4] {
            assert!(p > 0.0);
        }
        // each part truncates the rest of π/2, so the sum is just below it
        let sum = [PIO2_1, PIO2_2, PIO2_3, PIO2_4]
            .map(f64::from)
            .iter()
            .sum::<f64>();
        assert!((std::f64::consts::FRAC_PI_2 - sum).abs() < 2e-16, "{sum}");
        assert!(SIN_COS_MAX_ACCURATE as f64 <= 8191.5 * std::f64::consts::FRAC_PI_2);
        // LN2_HI: 9 significant bits (|k| ≤ 151 has 8); LN2_HI + LN2_LO is ln 2 in f32s
        assert_eq!(LN2_HI.to_bits() & ((1 << 15) - 1), 0);
        let ln2 = LN2_HI as f64 + LN2_LO as f64;
        assert!((ln2 - std::f64::consts::LN_2).abs() < 1e-11, "{ln2}");
    }

    /// Each element through an opaque barrier, so the loop stays scalar, compiled for
    /// the baseline target.
    #[inline(never)]
    fn scalar_loop(f: impl Fn(f32) -> f32, xs: &[f32]) -> Vec<u32> {
        xs.iter()
            .map(|&x| std::hint::black_box(f(std::hint::black_box(x))).to_bits())
            .collect()
    }

    /// `f` (a function item, so it inlines) over `xs` in each copy of a loop the CPU runs
    /// (AVX-512, AVX2, baseline) and in a scalar baseline loop.
    fn assert_same_bits(name: &str, f: impl Fn(f32) -> f32 + Copy, xs: &[f32]) {
        let slow = scalar_loop(f, xs);
        for isa in Isa::available() {
            let fast: Vec<u32> = vectorized_for(
                isa,
                #[inline(always)]
                || xs.iter().map(|&x| f(x).to_bits()).collect(),
            );
            for ((x, a), b) in xs.iter().zip(&fast).zip(&slow) {
                assert_eq!(a, b, "{name}({x:e}): {isa:?} {a:#x}, scalar {b:#x}");
            }
        }
    }

    #[test]
    fn vectorized_and_scalar_calls_give_identical_bits() {
        let mut xs = sweep(1e4);
        xs.truncate(300_000);
        xs.extend(SPECIALS);
        xs.extend([-88.8, -103.99, 1e20]);
        assert_same_bits("exp", exp, &xs);
        assert_same_bits("ln", ln, &xs);
        assert_same_bits("sin", sin, &xs);
        assert_same_bits("cos", cos, &xs);
        assert_same_bits("tanh", tanh, &xs);
        assert_same_bits("sin_cos.0", |x| sin_cos(x).0, &xs);
        assert_same_bits("sin_cos.1", |x| sin_cos(x).1, &xs);
    }
}
