//! Initializers: the starting values of layer variables (Keras' `keras.initializers`).
//!
//! Every random initializer is seeded, so a model's initial weights are reproducible:
//! an explicit seed wins, otherwise the seed is derived from the global seed
//! ([`set_seed`](super::set_seed)) and the variable's name. Fans follow Keras: a kernel
//! `[in, out]` has fan-in `in` and fan-out `out`; a convolution kernel `[kh, kw, cin, cout]`
//! has fan-in `kh·kw·cin` and fan-out `kh·kw·cout`.

use crate::{DType, Tensor};

/// How to fill a new variable.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Initializer {
    /// All zeros (Keras' default bias initializer).
    Zeros,
    /// All ones.
    Ones,
    /// Every element `c`.
    Constant(f64),
    /// `U(-l, l)` with `l = √(6 / (fan_in + fan_out))` (Keras' default kernel initializer).
    GlorotUniform {
        /// Explicit seed; `None` derives one from the variable name.
        seed: Option<u64>,
    },
    /// Normal truncated at two standard deviations, `σ = √(2 / (fan_in + fan_out)) / 0.8796`.
    GlorotNormal {
        /// Explicit seed; `None` derives one from the variable name.
        seed: Option<u64>,
    },
    /// `U(-l, l)` with `l = √(6 / fan_in)`.
    HeUniform {
        /// Explicit seed; `None` derives one from the variable name.
        seed: Option<u64>,
    },
    /// Normal truncated at two standard deviations, `σ = √(2 / fan_in) / 0.8796`.
    HeNormal {
        /// Explicit seed; `None` derives one from the variable name.
        seed: Option<u64>,
    },
    /// `N(mean, stddev²)`.
    RandomNormal {
        /// Mean.
        mean: f64,
        /// Standard deviation.
        stddev: f64,
        /// Explicit seed; `None` derives one from the variable name.
        seed: Option<u64>,
    },
    /// A random orthogonal matrix times `gain` (Keras' `Orthogonal`, the default
    /// recurrent-kernel initializer): the variable is viewed as a matrix of
    /// `shape[..-1].product()` rows and `shape[-1]` columns; its rows (if fewer) or
    /// columns (otherwise) are orthonormal. Made by a QR factorization (modified
    /// Gram–Schmidt in f64) of a standard normal matrix, with the signs that make `R`'s
    /// diagonal positive, as Keras does.
    Orthogonal {
        /// Scale of the result (Keras' `gain`, default 1).
        gain: f64,
        /// Explicit seed; `None` derives one from the variable name.
        seed: Option<u64>,
    },
    /// `U(min, max)`.
    RandomUniform {
        /// Lower bound.
        min: f64,
        /// Upper bound (exclusive).
        max: f64,
        /// Explicit seed; `None` derives one from the variable name.
        seed: Option<u64>,
    },
}

/// Keras' correction so that a normal truncated at ±2σ has the requested variance.
const TRUNCATED_STD: f64 = 0.879_625_661_034_239_8;

impl Initializer {
    /// Glorot-uniform with a name-derived seed.
    pub const GLOROT_UNIFORM: Initializer = Initializer::GlorotUniform { seed: None };

    /// Orthogonal with gain 1 and a name-derived seed (Keras' recurrent-kernel default).
    pub const ORTHOGONAL: Initializer = Initializer::Orthogonal {
        gain: 1.0,
        seed: None,
    };

    /// `(fan_in, fan_out)` of a variable shape, as Keras computes them.
    pub fn fans(shape: &[usize]) -> (usize, usize) {
        match shape.len() {
            0 => (1, 1),
            1 => (shape[0], shape[0]),
            2 => (shape[0], shape[1]),
            r => {
                let receptive: usize = shape[..r - 2].iter().product();
                (shape[r - 2] * receptive, shape[r - 1] * receptive)
            }
        }
    }

    /// A concrete tensor of `shape` and `dtype`; `name` seeds it when no seed is given.
    ///
    /// ```
    /// use tapeflow::nn::Initializer;
    /// use tapeflow::DType;
    /// let k = Initializer::GlorotUniform { seed: Some(1) }.init(&[784, 64], DType::F32, "k");
    /// let limit = (6.0f64 / (784.0 + 64.0)).sqrt();
    /// assert!(k.to_vec_f64().unwrap().iter().all(|v| v.abs() <= limit));
    /// ```
    pub fn init(&self, shape: &[usize], dtype: DType, name: &str) -> Tensor {
        let (fan_in, fan_out) = Initializer::fans(shape);
        let seed_of = |s: &Option<u64>| s.unwrap_or_else(|| super::naming::derived_seed(name));
        match self {
            Initializer::Zeros => Tensor::full(shape, 0.0, dtype),
            Initializer::Ones => Tensor::full(shape, 1.0, dtype),
            Initializer::Constant(c) => Tensor::full(shape, *c, dtype),
            Initializer::GlorotUniform { seed } => {
                let l = (6.0 / (fan_in + fan_out).max(1) as f64).sqrt();
                Tensor::random_uniform(shape, -l, l, seed_of(seed), dtype)
            }
            Initializer::HeUniform { seed } => {
                let l = (6.0 / fan_in.max(1) as f64).sqrt();
                Tensor::random_uniform(shape, -l, l, seed_of(seed), dtype)
            }
            Initializer::GlorotNormal { seed } => {
                let s = (2.0 / (fan_in + fan_out).max(1) as f64).sqrt() / TRUNCATED_STD;
                truncated_normal(shape, s, seed_of(seed), dtype)
            }
            Initializer::HeNormal { seed } => {
                let s = (2.0 / fan_in.max(1) as f64).sqrt() / TRUNCATED_STD;
                truncated_normal(shape, s, seed_of(seed), dtype)
            }
            Initializer::RandomNormal { mean, stddev, seed } => {
                Tensor::random_normal(shape, *mean, *stddev, seed_of(seed), dtype)
            }
            Initializer::RandomUniform { min, max, seed } => {
                Tensor::random_uniform(shape, *min, *max, seed_of(seed), dtype)
            }
            Initializer::Orthogonal { gain, seed } => {
                orthogonal(shape, *gain, seed_of(seed), dtype)
            }
        }
    }
}

/// `N(0, stddev²)` samples outside ±2·stddev redrawn (by rejection, in seeded rounds).
fn truncated_normal(shape: &[usize], stddev: f64, seed: u64, dtype: DType) -> Tensor {
    let n: usize = shape.iter().product();
    let mut kept: Vec<f64> = Vec::with_capacity(n);
    let mut round = 0u64;
    while kept.len() < n {
        let want = (n - kept.len()) * 2 + 16;
        let draw = Tensor::random_normal(
            &[want],
            0.0,
            1.0,
            super::naming::splitmix(seed ^ round),
            DType::F64,
        );
        let values = draw.to_vec_f64().expect("random_normal is concrete");
        kept.extend(
            values
                .into_iter()
                .filter(|v| v.abs() <= 2.0)
                .take(n - kept.len()),
        );
        round += 1;
    }
    let scaled: Vec<f64> = kept.into_iter().map(|v| v * stddev).collect();
    cast_concrete(
        Tensor::from_vec(scaled, shape).expect("n elements fill the shape"),
        dtype,
    )
}

/// Keras' orthogonal initializer (see [`Initializer::Orthogonal`]).
fn orthogonal(shape: &[usize], gain: f64, seed: u64, dtype: DType) -> Tensor {
    let cols = shape.last().copied().unwrap_or(1);
    let rows: usize = shape[..shape.len().saturating_sub(1)].iter().product();
    // factor a tall matrix (m ≥ n) column by column; a wide result is its transpose
    let (m, n) = (rows.max(cols), rows.min(cols));
    let a = Tensor::random_normal(&[m * n], 0.0, 1.0, seed, DType::F64)
        .to_vec_f64()
        .expect("random_normal is concrete");
    // q holds n orthonormal columns of length m, column-major
    let mut q: Vec<f64> = Vec::with_capacity(m * n);
    for j in 0..n {
        let mut v: Vec<f64> = (0..m).map(|i| a[i * n + j]).collect();
        for k in 0..j {
            let qk = &q[k * m..(k + 1) * m];
            let dot: f64 = qk.iter().zip(&v).map(|(x, y)| x * y).sum();
            v.iter_mut().zip(qk).for_each(|(vi, qi)| *vi -= dot * qi);
        }
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        // a normal matrix is of full rank with probability one
        let inv = if norm > 0.0 { 1.0 / norm } else { 0.0 };
        q.extend(v.into_iter().map(|x| x * inv));
    }
    // element (r, c) of the rows × cols result
    let value = |r: usize, c: usize| {
        if rows >= cols {
            q[c * m + r] // tall: column c of q
        } else {
            q[r * m + c] // wide: row r is column r of q
        }
    };
    let out: Vec<f64> = (0..rows * cols)
        .map(|i| gain * value(i / cols, i % cols))
        .collect();
    cast_concrete(
        Tensor::from_vec(out, shape).expect("rows·cols elements fill the shape"),
        dtype,
    )
}

/// Converts a concrete tensor's dtype without an op, so the result stays concrete even
/// while a trace is active (initial values must be concrete).
pub(crate) fn cast_concrete(t: Tensor, dtype: DType) -> Tensor {
    let shape = t.shape().to_vec();
    let v = t.to_vec_f64().expect("initial values are concrete");
    match dtype {
        DType::F64 => t,
        DType::F32 => {
            Tensor::from_vec(v.into_iter().map(|x| x as f32).collect(), &shape).expect("shape")
        }
        DType::I64 => {
            Tensor::from_vec(v.into_iter().map(|x| x as i64).collect(), &shape).expect("shape")
        }
    }
}
