/* tapeflow generated-kernel prelude: the scalar function of every elementwise op, as
 * the interpreter computes it, for a C compiler to inline and vectorize.
 *
 * The f32 transcendentals are an operation-for-operation port of
 * `src/exec/kernels/fastmath.rs` (exp, sin, cos and tanh in f32; log in f64 with one rounding
 * to f32 at the end; selects instead of branches); the f64 ones call the C library, as Rust's `f64` methods do. Compiled
 * with -ffp-contract=off and without -ffast-math, every line below computes the bits of
 * its Rust original: the same IEEE operations on the same values in the same order
 * (Rust's `mul_add` is `__builtin_fma`/`__builtin_fmaf` here: one rounding, a vfmadd
 * under -mfma, the C library's correctly rounded fma otherwise).
 * Three selects are written otherwise than in Rust, for the same values: exp's two clamps
 * as one nested select, the reduction's two clamps as one compare of |r| (copysign of
 * the bound), and the quadrant's negation as a flip of the sign bit. gcc vectorizes
 * consecutive selects into a chain of masks that LLVM makes into min and max; these
 * forms cut W5's loop from 101 to 97 instructions per 16 elements and 8% of its time
 * on a Zen 4 core. And tanh and sigmoid call an exp without the clamp their argument
 * never reaches (the LSTM cell's forward loop: 54 -> 24 compares, 10% faster), where
 * the Rust originals keep both; tests/codegen.rs compares the bits.
 * Constants the emitter writes before this file, from the Rust ones: TF_LN_2,
 * TF_ROUND_MAGIC_F32, TF_LOG2_E_F32, TF_FRAC_2_PI_F32, TF_LN2_HI, TF_LN2_LO, TF_PIO2_1 .. TF_PIO2_4. */

#include <stdint.h>

typedef int64_t tf_i64;
typedef uint64_t tf_u64;
typedef int32_t tf_i32;
typedef uint32_t tf_u32;

#define TF_INLINE static inline __attribute__((always_inline))

#if defined(__clang__)
#define TF_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#else
#define TF_IVDEP _Pragma("GCC ivdep")
#endif

/* the C library's f64 functions and powf, declared here so that no header's vector
 * variants (only declared under -ffast-math anyway) come into play */
double exp(double);
double log(double);
double sin(double);
double cos(double);
double tanh(double);
double pow(double, double);
float powf(float, float);

/* bit casts, as Rust's to_bits/from_bits: f64 <-> u64 and f32 <-> u32 */
#define TF_BIT_CAST(NAME, FROM, TO)                                                        \
    TF_INLINE TO NAME(FROM x) {                                                            \
        TO y;                                                                              \
        __builtin_memcpy(&y, &x, sizeof y);                                                \
        return y;                                                                          \
    }
TF_BIT_CAST(tf_bits, double, tf_u64)
TF_BIT_CAST(tf_from_bits, tf_u64, double)
TF_BIT_CAST(tf_bits32, float, tf_u32)
TF_BIT_CAST(tf_from_bits32, tf_u32, float)

/* ---- fastmath.rs ---- */

#define TF_ONE_BITS 0x3FF0000000000000ULL

/* e^xc for xc already clamped to [-104, 89] (or NaN) */
TF_INLINE float tf_exp_clamped_f32(float xc) {
    float t = __builtin_fmaf(xc, TF_LOG2_E_F32, TF_ROUND_MAGIC_F32);
    float k = t - TF_ROUND_MAGIC_F32;
    tf_i32 ki = (tf_i32)(tf_bits32(t) - tf_bits32(TF_ROUND_MAGIC_F32));
    float r = __builtin_fmaf(-k, TF_LN2_LO, __builtin_fmaf(-k, TF_LN2_HI, xc));
    float p = 1.0f / 5040.0f;
    p = __builtin_fmaf(p, r, 1.0f / 720.0f);
    p = __builtin_fmaf(p, r, 1.0f / 120.0f);
    p = __builtin_fmaf(p, r, 1.0f / 24.0f);
    p = __builtin_fmaf(p, r, 1.0f / 6.0f);
    p = __builtin_fmaf(p, r, 0.5f);
    float y = __builtin_fmaf(p, r * r, r) + 1.0f;
    tf_i32 k1 = ki >> 1;
    tf_i32 k2 = ki - k1;
    float s1 = tf_from_bits32((tf_u32)(k1 + 127) << 23);
    float s2 = tf_from_bits32((tf_u32)(k2 + 127) << 23);
    return (y * s1) * s2;
}

TF_INLINE float tf_exp_f32(float x) {
    return tf_exp_clamped_f32(x > 89.0f ? 89.0f : (x < -104.0f ? -104.0f : x));
}

/* exp of an argument known to be >= 0 or NaN (tanh's 2|x|), or <= 0 or NaN (sigmoid's
 * -|x|): the other clamp never applies there, and gcc cannot see that */
TF_INLINE float tf_exp_nonneg_f32(float x) { return tf_exp_clamped_f32(x > 89.0f ? 89.0f : x); }
TF_INLINE float tf_exp_nonpos_f32(float x) {
    return tf_exp_clamped_f32(x < -104.0f ? -104.0f : x);
}

TF_INLINE float tf_log_f32(float x) {
    const tf_u64 sqrt_half_bits = 0x3FE6A09E667F3BCDULL;
    const tf_u64 mantissa = (1ULL << 52) - 1;
    tf_u64 bits = tf_bits((double)x);
    tf_u64 t = bits + (TF_ONE_BITS - sqrt_half_bits);
    double m = tf_from_bits((t & mantissa) + sqrt_half_bits);
    double k = tf_from_bits(0x4330000000000000ULL | (t >> 52)) - (4503599627370496.0 + 1023.0);
    double s = (m - 1.0) / (m + 1.0);
    double z = s * s;
    double p = 1.0 / 13.0;
    p = __builtin_fma(p, z, 1.0 / 11.0);
    p = __builtin_fma(p, z, 1.0 / 9.0);
    p = __builtin_fma(p, z, 1.0 / 7.0);
    p = __builtin_fma(p, z, 1.0 / 5.0);
    p = __builtin_fma(p, z, 1.0 / 3.0);
    double ln_m = __builtin_fma(2.0 * s, z * p, 2.0 * s);
    float y = (float)__builtin_fma(k, TF_LN_2, ln_m);
    y = x == 0.0f ? -__builtin_inff() : y;
    y = x < 0.0f ? __builtin_nanf("") : y;
    y = x == __builtin_inff() ? x : y;
    return x != x ? x : y;
}

/* sin r, cos r and the quadrant k of x = k·π/2 + r, all in f32 */
TF_INLINE void tf_sin_cos_reduced(float x, float *sin_r, float *cos_r, tf_u32 *kbits) {
    float t = __builtin_fmaf(x, TF_FRAC_2_PI_F32, TF_ROUND_MAGIC_F32);
    float k = t - TF_ROUND_MAGIC_F32;
    float r = __builtin_fmaf(-k, TF_PIO2_1, x);
    r = __builtin_fmaf(-k, TF_PIO2_2, r);
    r = __builtin_fmaf(-k, TF_PIO2_3, r);
    r = __builtin_fmaf(-k, TF_PIO2_4, r);
    r = __builtin_fabsf(r) > 0.8f ? __builtin_copysignf(0.8f, r) : r;
    float z = r * r;
    float ps = 1.0f / 362880.0f;
    ps = __builtin_fmaf(ps, z, -1.0f / 5040.0f);
    ps = __builtin_fmaf(ps, z, 1.0f / 120.0f);
    ps = __builtin_fmaf(ps, z, -1.0f / 6.0f);
    *sin_r = __builtin_copysignf(__builtin_fmaf(r, z * ps, r), r);
    float pc = -1.0f / 3628800.0f;
    pc = __builtin_fmaf(pc, z, 1.0f / 40320.0f);
    pc = __builtin_fmaf(pc, z, -1.0f / 720.0f);
    pc = __builtin_fmaf(pc, z, 1.0f / 24.0f);
    pc = __builtin_fmaf(pc, z, -0.5f);
    *cos_r = __builtin_fmaf(z, pc, 1.0f);
    *kbits = tf_bits32(t);
}

TF_INLINE float tf_quadrant(float sin_r, float cos_r, tf_u32 q) {
    float y = (q & 1) == 0 ? sin_r : cos_r;
    return tf_from_bits32(tf_bits32(y) ^ ((q & 2) << 30));
}

TF_INLINE float tf_sin_f32(float x) {
    float s, c;
    tf_u32 k;
    tf_sin_cos_reduced(x, &s, &c, &k);
    return tf_quadrant(s, c, k);
}

TF_INLINE float tf_cos_f32(float x) {
    float s, c;
    tf_u32 k;
    tf_sin_cos_reduced(x, &s, &c, &k);
    return tf_quadrant(s, c, k + 1);
}

TF_INLINE float tf_tanh_f32(float x) {
    float a = __builtin_fabsf(x);
    float e = tf_exp_nonneg_f32(2.0f * a);
    float big = 1.0f - 2.0f / (e + 1.0f);
    float z = a * a;
    float p = (float)(6404582.0 / 10854718875.0);
    p = __builtin_fmaf(p, z, (float)(-929569.0 / 638512875.0));
    p = __builtin_fmaf(p, z, (float)(21844.0 / 6081075.0));
    p = __builtin_fmaf(p, z, (float)(-1382.0 / 155925.0));
    p = __builtin_fmaf(p, z, (float)(62.0 / 2835.0));
    p = __builtin_fmaf(p, z, (float)(-17.0 / 315.0));
    p = __builtin_fmaf(p, z, (float)(2.0 / 15.0));
    p = __builtin_fmaf(p, z, (float)(-1.0 / 3.0));
    float small = __builtin_fmaf(a * z, p, a);
    float y = a < 0.6f ? small : big;
    y = __builtin_copysignf(y, x);
    return x != x ? x : y;
}

/* ---- f64: the C library, as Rust's f64 methods ---- */

TF_INLINE double tf_exp_f64(double x) { return exp(x); }
TF_INLINE double tf_exp_nonpos_f64(double x) { return exp(x); }
TF_INLINE double tf_log_f64(double x) { return log(x); }
TF_INLINE double tf_sin_f64(double x) { return sin(x); }
TF_INLINE double tf_cos_f64(double x) { return cos(x); }
TF_INLINE double tf_tanh_f64(double x) { return tanh(x); }

/* ---- ops::elementwise, per float type ---- */

#define TF_FLOAT_OPS(T, S, SQRT, FABS, POW)                                                \
    TF_INLINE T tf_neg_##S(T x) { return -x; }                                             \
    TF_INLINE T tf_sqrt_##S(T x) { return SQRT(x); }                                       \
    TF_INLINE T tf_abs_##S(T x) { return FABS(x); }                                        \
    TF_INLINE T tf_sign_##S(T x) { return x > (T)0 ? (T)1 : (x < (T)0 ? (T)-1 : x); }     \
    TF_INLINE T tf_sigmoid_##S(T x) {                                                      \
        T e = tf_exp_nonpos_##S(-FABS(x));                                                 \
        return (x >= (T)0 ? (T)1 : e) / ((T)1 + e);                                        \
    }                                                                                      \
    TF_INLINE T tf_add_##S(T a, T b) { return a + b; }                                     \
    TF_INLINE T tf_sub_##S(T a, T b) { return a - b; }                                     \
    TF_INLINE T tf_mul_##S(T a, T b) { return a * b; }                                     \
    TF_INLINE T tf_div_##S(T a, T b) { return a / b; }                                     \
    TF_INLINE T tf_pow_##S(T a, T b) { return POW(a, b); }                                 \
    TF_INLINE T tf_maximum_##S(T a, T b) { return (a != a || a >= b) ? a : b; }            \
    TF_INLINE T tf_minimum_##S(T a, T b) { return (a != a || a <= b) ? a : b; }            \
    TF_INLINE T tf_greater_##S(T a, T b) { return a > b ? (T)1 : (T)0; }                  \
    TF_INLINE T tf_greater_equal_##S(T a, T b) { return a >= b ? (T)1 : (T)0; }           \
    TF_INLINE T tf_less_##S(T a, T b) { return a < b ? (T)1 : (T)0; }                     \
    TF_INLINE T tf_less_equal_##S(T a, T b) { return a <= b ? (T)1 : (T)0; }              \
    TF_INLINE T tf_equal_##S(T a, T b) { return a == b ? (T)1 : (T)0; }                   \
    TF_INLINE T tf_not_equal_##S(T a, T b) { return a != b ? (T)1 : (T)0; }

TF_FLOAT_OPS(float, f32, __builtin_sqrtf, __builtin_fabsf, powf)
TF_FLOAT_OPS(double, f64, __builtin_sqrt, __builtin_fabs, pow)

/* ---- i64: Rust's wrapping arithmetic and comparisons ---- */

TF_INLINE tf_i64 tf_add_i64(tf_i64 a, tf_i64 b) { return (tf_i64)((tf_u64)a + (tf_u64)b); }
TF_INLINE tf_i64 tf_sub_i64(tf_i64 a, tf_i64 b) { return (tf_i64)((tf_u64)a - (tf_u64)b); }
TF_INLINE tf_i64 tf_mul_i64(tf_i64 a, tf_i64 b) { return (tf_i64)((tf_u64)a * (tf_u64)b); }
TF_INLINE tf_i64 tf_maximum_i64(tf_i64 a, tf_i64 b) { return a > b ? a : b; }
TF_INLINE tf_i64 tf_minimum_i64(tf_i64 a, tf_i64 b) { return a < b ? a : b; }
TF_INLINE tf_i64 tf_greater_i64(tf_i64 a, tf_i64 b) { return a > b; }
TF_INLINE tf_i64 tf_greater_equal_i64(tf_i64 a, tf_i64 b) { return a >= b; }
TF_INLINE tf_i64 tf_less_i64(tf_i64 a, tf_i64 b) { return a < b; }
TF_INLINE tf_i64 tf_less_equal_i64(tf_i64 a, tf_i64 b) { return a <= b; }
TF_INLINE tf_i64 tf_equal_i64(tf_i64 a, tf_i64 b) { return a == b; }
TF_INLINE tf_i64 tf_not_equal_i64(tf_i64 a, tf_i64 b) { return a != b; }

/* ---- casts to floats: Rust's `as` (round to nearest) ---- */

TF_INLINE double tf_cast_f32_f64(float x) { return (double)x; }
TF_INLINE float tf_cast_f64_f32(double x) { return (float)x; }
TF_INLINE float tf_cast_i64_f32(tf_i64 x) { return (float)x; }
TF_INLINE double tf_cast_i64_f64(tf_i64 x) { return (double)x; }
