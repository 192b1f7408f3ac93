//! Counter-based random numbers made of tensor ops, for dropout masks.
//!
//! A traced function turns a concrete random tensor into a graph constant, so a mask
//! drawn with `Tensor::random_uniform` at trace time would be the same on every step of
//! a compiled `train_step`. Instead the mask is a hash of (element index, seed, counter)
//! computed with i64 graph ops, where the counter is a Variable bumped on every call:
//! eager and compiled runs draw the same masks, and every step draws a new one.
//!
//! The hash uses only wrapping i64 `mul`/`add` (the core has no bit ops): two rounds of
//! a quadratic map `h ← h·(h·c + d) + k`, whose high bits depend on all input bits,
//! then the top 53 bits become a float in `[0, 1)` through an i64 → f64 cast.

use crate::{DType, Dim, Tensor};

const GOLDEN: i64 = 0x9e37_79b9_7f4a_7c15_u64 as i64;
const C1: i64 = 0xbf58_476d_1ce4_e5b9_u64 as i64;
const D1: i64 = 0x94d0_49bb_1331_11eb_u64 as i64;
const C2: i64 = 0x2545_f491_4f6c_dd1d;
const D2: i64 = 0x6a09_e667_f3bc_c909;

fn lit(v: i64) -> Tensor {
    Tensor::from_vec(vec![v], &[]).expect("scalar")
}

/// Uniform samples in `[0, 1)` (f64) of `shape`, a pure function of `seed`, the i64
/// scalar `counter` and the element index.
///
/// # Panics
/// Never for the shape of a tensor (checked against `MAX_ELEMENTS` when it was made).
pub(crate) fn uniform(shape: &[usize], seed: u64, counter: &Tensor) -> Tensor {
    // a symbolic batch gives a symbolic count: its indices are a `range` op
    let n = shape
        .iter()
        .fold(Dim::from(1), |n, &d| n * Dim::from_raw(d));
    let idx = Tensor::range(n.raw(), DType::I64).reshape(shape);
    // key = counter·golden + seed: a different stream per call and per seed
    let key = counter * &lit(GOLDEN) + lit(seed as i64);
    let h = &idx * &lit(GOLDEN) + &key;
    let h = &h * &(&h * &lit(C1) + lit(D1)) + &key;
    let h = &h * &(&h * &lit(C2) + lit(D2)) + &idx;
    // i64 in [-2⁶³, 2⁶³) → [0, 1); the cast keeps the high bits
    let u = h.cast(DType::F64) * (0.5f64 / 9_223_372_036_854_775_808.0) + 0.5f64;
    u.minimum(&Tensor::scalar_of(DType::F64, 1.0 - f64::EPSILON / 2.0))
}
