//! Metrics (`keras.metrics`): `Mean`, `SparseCategoricalAccuracy`, `CategoricalAccuracy`.
//!
//! Metrics accumulate eagerly, over many batches, in plain `f64` totals behind a mutex
//! (`update` takes `&self`, so a metric can be shared). They read concrete tensors —
//! typically the loss and predictions a compiled `train_step` returned — and give an
//! `Err` for symbolic ones: inside a traced function, return the values instead and
//! update the metric after the call, as the MNIST example does.

use crate::{Error, Result, Tensor};
use std::sync::Mutex;

/// A metric of `(y_true, y_pred)` that `Model::compile` can track.
pub trait Metric: Send + Sync {
    /// The name used in logs and in the history (`accuracy`, `sparse_categorical_accuracy`, ...).
    fn name(&self) -> &str;

    /// Accumulates one batch.
    fn update(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<()>;

    /// The value over everything accumulated since the last reset (0 before any update).
    fn result(&self) -> f64;

    /// Forgets everything accumulated.
    fn reset_state(&self);
}

#[derive(Default)]
struct Totals {
    total: f64,
    count: f64,
}

impl Totals {
    fn ratio(&self) -> f64 {
        if self.count == 0.0 {
            0.0
        } else {
            self.total / self.count
        }
    }
}

/// The running (weighted) mean of values (`keras.metrics.Mean`).
///
/// ```
/// use tapeflow::nn::Mean;
/// use tapeflow::Tensor;
/// let m = Mean::new("train_loss");
/// m.update(&Tensor::scalar(1.0)).unwrap();
/// m.update(&Tensor::vec(&[2.0f32, 3.0])).unwrap();
/// assert_eq!(m.result(), 2.0);
/// m.reset_state();
/// assert_eq!(m.result(), 0.0);
/// ```
pub struct Mean {
    name: String,
    state: Mutex<Totals>,
}

impl Mean {
    /// An empty mean.
    pub fn new(name: impl Into<String>) -> Mean {
        Mean {
            name: name.into(),
            state: Mutex::new(Totals::default()),
        }
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds every element of `values` with weight 1.
    pub fn update(&self, values: &Tensor) -> Result<()> {
        let v = values.to_vec_f64()?;
        let mut s = self.state.lock().expect("metric lock");
        s.total += v.iter().sum::<f64>();
        s.count += v.len() as f64;
        Ok(())
    }

    /// Adds every element of `values` with weight `weight` (e.g. a batch mean weighted by the batch size).
    pub fn update_weighted(&self, values: &Tensor, weight: f64) -> Result<()> {
        let v = values.to_vec_f64()?;
        let mut s = self.state.lock().expect("metric lock");
        s.total += v.iter().sum::<f64>() * weight;
        s.count += v.len() as f64 * weight;
        Ok(())
    }

    /// The mean so far (0 before any update).
    pub fn result(&self) -> f64 {
        self.state.lock().expect("metric lock").ratio()
    }

    /// Forgets everything.
    pub fn reset_state(&self) {
        *self.state.lock().expect("metric lock") = Totals::default();
    }
}

/// Index of the largest value of each row of `[rows, classes]` data (first on ties).
fn row_argmax(pred: &[f64], classes: usize) -> impl Iterator<Item = usize> + '_ {
    pred.chunks(classes).map(|row| {
        let mut best = 0;
        for (j, v) in row.iter().enumerate() {
            if *v > row[best] {
                best = j;
            }
        }
        best
    })
}

fn pred_rows(metric: &str, y_pred: &Tensor) -> Result<(Vec<f64>, usize)> {
    let classes = match y_pred.shape().last() {
        Some(&c) if c > 0 && y_pred.rank() >= 1 => c,
        _ => {
            return Err(Error::Invalid(format!(
                "{metric}: predictions need a class axis, got shape {:?}",
                y_pred.shape()
            )))
        }
    };
    Ok((y_pred.to_vec_f64()?, classes))
}

/// How often the argmax of the predictions equals the integer label
/// (`keras.metrics.SparseCategoricalAccuracy`).
///
/// ```
/// use tapeflow::nn::{Metric, SparseCategoricalAccuracy};
/// use tapeflow::Tensor;
/// let acc = SparseCategoricalAccuracy::new();
/// let pred = Tensor::from_vec(vec![0.1f32, 0.9, 0.8, 0.2], &[2, 2]).unwrap();
/// acc.update(&Tensor::vec(&[1i64, 1]), &pred).unwrap();
/// assert_eq!(acc.result(), 0.5);
/// ```
pub struct SparseCategoricalAccuracy {
    name: String,
    state: Mutex<Totals>,
}

impl SparseCategoricalAccuracy {
    /// Named `sparse_categorical_accuracy`.
    pub fn new() -> SparseCategoricalAccuracy {
        SparseCategoricalAccuracy::named("sparse_categorical_accuracy")
    }

    /// With a chosen name (e.g. `accuracy`, `train_accuracy`).
    pub fn named(name: impl Into<String>) -> SparseCategoricalAccuracy {
        SparseCategoricalAccuracy {
            name: name.into(),
            state: Mutex::new(Totals::default()),
        }
    }
}

impl Default for SparseCategoricalAccuracy {
    fn default() -> Self {
        SparseCategoricalAccuracy::new()
    }
}

impl Metric for SparseCategoricalAccuracy {
    fn name(&self) -> &str {
        &self.name
    }

    fn update(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<()> {
        let (pred, classes) = pred_rows("SparseCategoricalAccuracy", y_pred)?;
        let labels = y_true.to_vec_f64()?;
        let rows = pred.len() / classes;
        if labels.len() != rows {
            return Err(Error::Invalid(format!(
                "SparseCategoricalAccuracy: {} labels for {rows} predictions of shape {:?}",
                labels.len(),
                y_pred.shape()
            )));
        }
        let correct = row_argmax(&pred, classes)
            .zip(&labels)
            .filter(|(p, l)| *p as f64 == **l)
            .count();
        let mut s = self.state.lock().expect("metric lock");
        s.total += correct as f64;
        s.count += rows as f64;
        Ok(())
    }

    fn result(&self) -> f64 {
        self.state.lock().expect("metric lock").ratio()
    }

    fn reset_state(&self) {
        *self.state.lock().expect("metric lock") = Totals::default();
    }
}

/// How often the argmax of the predictions equals the argmax of one-hot targets
/// (`keras.metrics.CategoricalAccuracy`).
pub struct CategoricalAccuracy {
    name: String,
    state: Mutex<Totals>,
}

impl CategoricalAccuracy {
    /// Named `categorical_accuracy`.
    pub fn new() -> CategoricalAccuracy {
        CategoricalAccuracy::named("categorical_accuracy")
    }

    /// With a chosen name.
    pub fn named(name: impl Into<String>) -> CategoricalAccuracy {
        CategoricalAccuracy {
            name: name.into(),
            state: Mutex::new(Totals::default()),
        }
    }
}

impl Default for CategoricalAccuracy {
    fn default() -> Self {
        CategoricalAccuracy::new()
    }
}

impl Metric for CategoricalAccuracy {
    fn name(&self) -> &str {
        &self.name
    }

    fn update(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<()> {
        if y_true.shape() != y_pred.shape() {
            return Err(Error::Invalid(format!(
                "CategoricalAccuracy: targets of shape {:?} do not match predictions of shape {:?}",
                y_true.shape(),
                y_pred.shape()
            )));
        }
        let (pred, classes) = pred_rows("CategoricalAccuracy", y_pred)?;
        let truth = y_true.to_vec_f64()?;
        let rows = pred.len() / classes;
        let correct = row_argmax(&pred, classes)
            .zip(row_argmax(&truth, classes))
            .filter(|(p, t)| p == t)
            .count();
        let mut s = self.state.lock().expect("metric lock");
        s.total += correct as f64;
        s.count += rows as f64;
        Ok(())
    }

    fn result(&self) -> f64 {
        self.state.lock().expect("metric lock").ratio()
    }

    fn reset_state(&self) {
        *self.state.lock().expect("metric lock") = Totals::default();
    }
}
