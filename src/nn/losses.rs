//! Losses (`keras.losses`): `MeanSquaredError`, `SparseCategoricalCrossentropy`,
//! `CategoricalCrossentropy`, `BinaryCrossentropy`.
//!
//! Each returns the mean of the per-sample losses over the batch (Keras'
//! `sum_over_batch_size` reduction) as a scalar of the prediction's dtype.
//!
//! Numerical stability: from logits, cross-entropies use `log_softmax` (a `logsumexp`
//! shifted by the maximum) and the binary one `max(x, 0) - x·z + log(1 + e^-|x|)`, so
//! large logits never overflow; from probabilities, predictions are clipped to
//! `[ε, 1 - ε]` (ε = 1e-7) before the logarithm, as Keras does.
//!
//! The sparse cross-entropy picks each row's target log-probability with a `gather`
//! (never one-hot × log-probabilities, where a `-inf` or huge logit of another class
//! would give `0 · -inf = NaN`); the categorical one skips the classes whose target is
//! 0 (`0 · log 0 = 0`, as in `xlogy`). So a `-inf` logit of a non-target class and
//! logits near ±`f32::MAX` give the exact loss.
//!
//! Bad labels: an eager call checks the labels and returns an `Err` naming the first
//! label that is not an integer (NaN, ±inf, 2.5) or is outside `0..classes`. Inside a
//! traced function labels have no value yet, so the labels go through a `gather` from
//! `0..classes`, with float labels that are not integers read as `-1`: a bad label
//! makes the compiled call return an `Err` (`gather: index 10 is out of range 0..10`,
//! `index -1` for a non-integer label) instead of a silently wrong loss.

use crate::{DType, Dim, Error, Result, Tensor};
use serde_json::{json, Value};

/// Clipping bound for probabilities (Keras' `epsilon()`).
pub const EPSILON: f64 = 1e-7;

/// A loss function `loss(y_true, y_pred) -> scalar`.
pub trait Loss: Send + Sync {
    /// The Keras name, e.g. `sparse_categorical_crossentropy`.
    fn name(&self) -> &str;

    /// The mean loss over the batch.
    fn call(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<Tensor>;

    /// The loss's settings for whole-model saving (Keras' `get_config`), a JSON object
    /// that with [`Loss::name`] rebuilds it (`{"from_logits": true}`). `None` (the
    /// default) means it cannot be rebuilt: `Model::save` of a model compiled with it
    /// is an `Err`.
    fn get_config(&self) -> Option<Value> {
        None
    }
}

/// `f32[b,10]`: a tensor's dtype and shape, symbolic lengths by name.
pub(crate) fn shape_str(t: &Tensor) -> String {
    let dims: Vec<String> = t
        .shape()
        .iter()
        .map(|&d| Dim::from_raw(d).to_string())
        .collect();
    format!("{}[{}]", t.dtype(), dims.join(","))
}

fn invalid(loss: &str, msg: String) -> Error {
    Error::Invalid(format!("{loss}: {msg}"))
}

fn float_pred(loss: &str, y_pred: &Tensor) -> Result<()> {
    if !y_pred.dtype().is_float() {
        return Err(invalid(
            loss,
            format!("predictions must be f32 or f64, got {}", shape_str(y_pred)),
        ));
    }
    if y_pred.rank() == 0 {
        return Err(invalid(
            loss,
            "predictions must be a batch (rank ≥ 1), got a scalar".into(),
        ));
    }
    Ok(())
}

/// `y_true` in the prediction's dtype and shape: a trailing length-1 axis is added or
/// dropped to match (`[n]` labels against `[n, 1]` predictions), other differences are errors.
pub(crate) fn match_targets(loss: &str, y_true: &Tensor, y_pred: &Tensor) -> Result<Tensor> {
    let t = y_true.cast(y_pred.dtype());
    if t.shape() == y_pred.shape() {
        return Ok(t);
    }
    if t.rank() + 1 == y_pred.rank()
        && y_pred.shape().last() == Some(&1)
        && y_pred.shape()[..t.rank()] == *t.shape()
    {
        return Ok(t.expand_dims(-1));
    }
    if t.rank() == y_pred.rank() + 1
        && t.shape().last() == Some(&1)
        && t.shape()[..y_pred.rank()] == *y_pred.shape()
    {
        return Ok(t.squeeze(-1));
    }
    Err(invalid(
        loss,
        format!(
            "targets {} do not match predictions {}",
            shape_str(y_true),
            shape_str(y_pred)
        ),
    ))
}

/// `log p` of probabilities normalized over the last axis and clipped to `[ε, 1-ε]`.
fn clipped_log_probs(p: &Tensor) -> Tensor {
    let p = p / &p.sum(&[-1], true);
    p.maximum(&p.scalar_like(EPSILON))
        .minimum(&p.scalar_like(1.0 - EPSILON))
        .log()
}

// ---------------------------------------------------------------------------------------

/// Mean of squared differences (`keras.losses.MeanSquaredError`).
///
/// ```
/// use tapeflow::nn::{Loss, MeanSquaredError};
/// use tapeflow::Tensor;
/// let l = MeanSquaredError.call(&Tensor::vec(&[1.0f32, 2.0]), &Tensor::vec(&[1.0f32, 4.0])).unwrap();
/// assert_eq!(l.to_scalar().unwrap(), 2.0);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct MeanSquaredError;

impl Loss for MeanSquaredError {
    fn name(&self) -> &str {
        "mean_squared_error"
    }

    fn get_config(&self) -> Option<Value> {
        Some(json!({}))
    }

    fn call(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<Tensor> {
        float_pred("MeanSquaredError", y_pred)?;
        let t = match_targets("MeanSquaredError", y_true, y_pred)?;
        Ok((y_pred - &t).square().mean_all())
    }
}

// ---------------------------------------------------------------------------------------

/// Cross-entropy between integer class labels and predictions over the last axis
/// (`keras.losses.SparseCategoricalCrossentropy`).
///
/// Labels may be i64 or floats holding integers (they are cast), shaped like the
/// predictions without the class axis (a trailing length-1 axis is accepted too).
///
/// ```
/// use tapeflow::nn::{Loss, SparseCategoricalCrossentropy};
/// use tapeflow::{DType, Tensor};
/// let logits = Tensor::from_vec(vec![0.0f32, 0.0], &[1, 2]).unwrap();
/// let labels = Tensor::from_vec(vec![1i64], &[1]).unwrap();
/// let l = SparseCategoricalCrossentropy::from_logits(true).call(&labels, &logits).unwrap();
/// assert!((l.to_scalar().unwrap() - 2f64.ln()).abs() < 1e-6);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct SparseCategoricalCrossentropy {
    from_logits: bool,
}

impl SparseCategoricalCrossentropy {
    /// Predictions are probabilities (`from_logits = false`, the Keras default).
    pub fn new() -> SparseCategoricalCrossentropy {
        SparseCategoricalCrossentropy { from_logits: false }
    }

    /// Chooses whether predictions are logits (`true`) or probabilities.
    pub fn from_logits(from_logits: bool) -> SparseCategoricalCrossentropy {
        SparseCategoricalCrossentropy { from_logits }
    }
}

/// Integer labels shaped `[..]` for predictions `[.., classes]`, checked to be integers
/// in range (see the module docs).
pub(crate) fn sparse_labels(loss: &str, y_true: &Tensor, y_pred: &Tensor) -> Result<Tensor> {
    let classes = *y_pred.shape().last().expect("rank ≥ 1");
    let mut labels = if !y_true.dtype().is_float() {
        y_true.clone()
    } else if y_true.is_symbolic() {
        // a non-integer label (NaN, ±inf, 2.5) becomes -1, which the range check rejects
        let cast = y_true.cast(DType::I64);
        let integral = cast.cast(y_true.dtype()).eq(y_true);
        Tensor::select(&integral, &cast, &Tensor::scalar_of(DType::I64, -1.0))
    } else {
        let values = y_true.to_vec_f64()?;
        if let Some((i, bad)) = values
            .iter()
            .enumerate()
            .find(|(_, v)| !v.is_finite() || v.fract() != 0.0)
        {
            return Err(invalid(
                loss,
                format!("label {bad} at position {i} is not an integer class index"),
            ));
        }
        y_true.cast(DType::I64)
    };
    let lead = &y_pred.shape()[..y_pred.rank() - 1];
    if labels.shape() != lead {
        if labels.rank() == y_pred.rank()
            && labels.shape().last() == Some(&1)
            && labels.shape()[..lead.len()] == *lead
        {
            labels = labels.squeeze(-1);
        } else {
            return Err(invalid(
                loss,
                format!(
                    "labels {} do not fit predictions {}: expected labels of shape {:?}",
                    shape_str(y_true),
                    shape_str(y_pred),
                    lead
                ),
            ));
        }
    }
    if labels.is_symbolic() {
        // traced: a run-time range check (gather fails on an out-of-range index)
        return Ok(Tensor::arange(0, classes as i64, DType::I64).gather(&labels, 0));
    }
    let values = labels.to_vec_i64()?;
    if let Some((i, bad)) = values
        .iter()
        .enumerate()
        .find(|(_, &v)| v < 0 || v as usize >= classes)
    {
        let raw = y_true.to_vec_f64()?[i];
        let cast = if raw == *bad as f64 {
            String::new()
        } else {
            format!(" (read as {bad})")
        };
        return Err(invalid(
            loss,
            format!("label {raw}{cast} at position {i} is outside the valid range [0, {classes}) of the predicted classes"),
        ));
    }
    Ok(labels)
}

impl Loss for SparseCategoricalCrossentropy {
    fn name(&self) -> &str {
        "sparse_categorical_crossentropy"
    }

    fn get_config(&self) -> Option<Value> {
        Some(json!({ "from_logits": self.from_logits }))
    }

    fn call(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<Tensor> {
        float_pred("SparseCategoricalCrossentropy", y_pred)?;
        let labels = sparse_labels("SparseCategoricalCrossentropy", y_true, y_pred)?;
        let classes = *y_pred.shape().last().expect("rank ≥ 1");
        let logp = if self.from_logits {
            y_pred.log_softmax(-1)
        } else {
            clipped_log_probs(y_pred)
        };
        Ok(-pick(&logp, &labels, classes).mean_all())
    }
}

/// `x[.., labels[..]]`: the entry of each row of `x` (`[.., classes]`) at its label
/// (`[..]`, in range): the row masked to that entry (a `select`, so other entries of
/// any value, even infinite, add exact zeros) and summed.
fn pick(x: &Tensor, labels: &Tensor, classes: usize) -> Tensor {
    let mask = labels.one_hot(classes, DType::I64);
    Tensor::select(&mask, x, &x.scalar_like(0.0)).sum(&[-1], false)
}

// ---------------------------------------------------------------------------------------

/// Cross-entropy between one-hot (or soft) targets and predictions over the last axis
/// (`keras.losses.CategoricalCrossentropy`).
#[derive(Clone, Copy, Debug, Default)]
pub struct CategoricalCrossentropy {
    from_logits: bool,
    label_smoothing: f64,
}

impl CategoricalCrossentropy {
    /// Predictions are probabilities (the Keras default).
    pub fn new() -> CategoricalCrossentropy {
        CategoricalCrossentropy::default()
    }

    /// Chooses whether predictions are logits.
    pub fn from_logits(from_logits: bool) -> CategoricalCrossentropy {
        CategoricalCrossentropy {
            from_logits,
            label_smoothing: 0.0,
        }
    }

    /// Mixes targets with the uniform distribution: `y·(1-s) + s/classes`.
    pub fn label_smoothing(mut self, s: f64) -> CategoricalCrossentropy {
        self.label_smoothing = s;
        self
    }
}

impl Loss for CategoricalCrossentropy {
    fn name(&self) -> &str {
        "categorical_crossentropy"
    }

    fn get_config(&self) -> Option<Value> {
        Some(json!({ "from_logits": self.from_logits, "label_smoothing": self.label_smoothing }))
    }

    fn call(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<Tensor> {
        float_pred("CategoricalCrossentropy", y_pred)?;
        let t = y_true.cast(y_pred.dtype());
        if t.shape() != y_pred.shape() {
            return Err(invalid(
                "CategoricalCrossentropy",
                format!(
                    "targets {} must have the predictions' shape {}",
                    shape_str(y_true),
                    shape_str(y_pred)
                ),
            ));
        }
        let classes = *y_pred.shape().last().expect("rank ≥ 1") as f64;
        let t = if self.label_smoothing > 0.0 {
            t * (1.0 - self.label_smoothing) + self.label_smoothing / classes
        } else {
            t
        };
        let logp = if self.from_logits {
            y_pred.log_softmax(-1)
        } else {
            clipped_log_probs(y_pred)
        };
        // 0 · log p = 0 even where log p is -inf (a -inf or huge negative logit)
        let zero = logp.scalar_like(0.0);
        let logp = Tensor::select(&t.eq(&t.scalar_like(0.0)), &zero, &logp);
        Ok(-(t * logp).sum(&[-1], false).mean_all())
    }
}

// ---------------------------------------------------------------------------------------

/// Binary cross-entropy of targets in `[0, 1]` (`keras.losses.BinaryCrossentropy`),
/// averaged over the last axis, then over the batch.
///
/// ```
/// use tapeflow::nn::{BinaryCrossentropy, Loss};
/// use tapeflow::Tensor;
/// // huge logits stay finite
/// let l = BinaryCrossentropy::from_logits(true)
///     .call(&Tensor::vec(&[0.0f32, 1.0]), &Tensor::vec(&[1000.0f32, -1000.0]))
///     .unwrap();
/// assert!((l.to_scalar().unwrap() - 1000.0).abs() < 1e-3);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct BinaryCrossentropy {
    from_logits: bool,
}

impl BinaryCrossentropy {
    /// Predictions are probabilities (the Keras default).
    pub fn new() -> BinaryCrossentropy {
        BinaryCrossentropy { from_logits: false }
    }

    /// Chooses whether predictions are logits.
    pub fn from_logits(from_logits: bool) -> BinaryCrossentropy {
        BinaryCrossentropy { from_logits }
    }
}

impl Loss for BinaryCrossentropy {
    fn name(&self) -> &str {
        "binary_crossentropy"
    }

    fn get_config(&self) -> Option<Value> {
        Some(json!({ "from_logits": self.from_logits }))
    }

    fn call(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<Tensor> {
        float_pred("BinaryCrossentropy", y_pred)?;
        let z = match_targets("BinaryCrossentropy", y_true, y_pred)?;
        let per = if self.from_logits {
            // max(x, 0) - x·z + log(1 + e^-|x|): never exponentiates a positive number
            let x = y_pred;
            x.relu() - x * &z + ((-x.abs()).exp() + 1.0f64).log()
        } else {
            let p = y_pred
                .maximum(&y_pred.scalar_like(EPSILON))
                .minimum(&y_pred.scalar_like(1.0 - EPSILON));
            -(&z * p.log() + (1.0f64 - &z) * (1.0f64 - &p).log())
        };
        Ok(per.mean_all())
    }
}
