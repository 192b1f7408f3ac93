//! Metrics (`keras.metrics`): `Mean`, `SparseCategoricalAccuracy`, `CategoricalAccuracy`,
//! `BinaryAccuracy`, `MeanAbsoluteError`, `MeanSquaredError`, and [`metric_by_name`]
//! (the strings `compile` accepts).
//!
//! A metric's state is variables, as in Keras: every metric keeps two non-trainable
//! scalars, `<name>/total` and `<name>/count`, and an update computes its batch totals
//! with tensor ops and adds them with [`Variable::assign_add`]. So the same `update`
//! works in both modes:
//! - eagerly it updates the variables now;
//! - inside a traced [`function`](crate::function) (the tutorials' `train_loss(loss)` in
//!   a `@tf.function` `train_step`) it adds `assign` nodes to the graph, and every call
//!   of the compiled step updates the metric.
//!
//! [`Metric::result`] and [`Metric::reset_state`] read and write the concrete values;
//! call them outside the compiled step (between epochs). Metrics are cheap handles:
//! a clone shares the variables, so clone one into a `function` closure and read the
//! result from the original.
//!
//! The state is `f64` where Keras uses `float32`: counts stay exact up to 2⁵³ samples
//! and the running total of a long epoch does not lose the small batch values. The
//! batch values themselves (a loss, a match count) are computed in their own dtype and
//! cast to `f64` before they are added.
//!
//! Eager updates of `total` and `count` are each atomic but not atomic together, so a
//! `result()` read while another thread updates eagerly may see one of the two; a
//! compiled step commits both at once.

use super::losses::{match_targets, shape_str};
use crate::{DType, Dim, Error, Result, Tensor, Variable};
use std::sync::Arc;

/// A metric of `(y_true, y_pred)` that `Model::compile` can track (`keras.metrics.Metric`).
pub trait Metric: Send + Sync {
    /// The name used in logs and in the history (`accuracy`, `sparse_categorical_accuracy`, ...).
    fn name(&self) -> &str;

    /// Accumulates one batch: eagerly now, inside a traced function as graph updates of
    /// the metric's variables. An `Err` names the metric and the shapes it cannot take.
    fn update(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<()>;

    /// The value over everything accumulated since the last reset (0 before any update).
    fn result(&self) -> f64;

    /// Forgets everything accumulated (sets the variables to zero).
    fn reset_state(&self);

    /// The state variables (`total`, `count`), non-trainable.
    fn variables(&self) -> Vec<Variable>;
}

/// The number of elements of a block of `shape` as an f64 scalar: a constant, or inside
/// a shape-polymorphic function a `dim_value` of the symbolic count.
fn count_of(shape: &[usize]) -> Tensor {
    let n = shape
        .iter()
        .fold(Dim::from(1), |n, &d| n * Dim::from_raw(d));
    Tensor::dim_value(n.raw(), DType::F64)
}

/// The two state variables every metric here keeps: `total / count` is the result.
#[derive(Clone)]
struct Totals {
    total: Variable,
    count: Variable,
}

impl Totals {
    fn new(name: &str) -> Totals {
        let zero = || Tensor::scalar_of(DType::F64, 0.0);
        Totals {
            total: Variable::non_trainable(format!("{name}/total"), zero()),
            count: Variable::non_trainable(format!("{name}/count"), zero()),
        }
    }

    /// Adds scalar batch totals (any dtype; cast to f64).
    fn add(&self, total: &Tensor, count: &Tensor) {
        self.total.assign_add(&total.cast(DType::F64));
        self.count.assign_add(&count.cast(DType::F64));
    }

    /// Adds the number of nonzero entries of a 0/1 `matches` mask over its element count.
    fn add_matches(&self, matches: &Tensor) {
        self.add(
            &matches.cast(DType::F64).sum_all(),
            &count_of(matches.shape()),
        );
    }

    fn ratio(&self) -> f64 {
        let value = |v: &Variable| v.value().to_scalar().unwrap_or(f64::NAN);
        let count = value(&self.count);
        if count == 0.0 {
            0.0
        } else {
            value(&self.total) / count
        }
    }

    fn reset(&self) {
        let zero = Tensor::scalar_of(DType::F64, 0.0);
        self.total.assign(&zero);
        self.count.assign(&zero);
    }

    fn variables(&self) -> Vec<Variable> {
        vec![self.total.clone(), self.count.clone()]
    }
}

/// The error for a metric given tensors it cannot take.
fn invalid(metric: &str, msg: String) -> Error {
    Error::Invalid(format!("{metric}: {msg}"))
}

/// Checks that `y_pred` has a class axis (rank ≥ 1, at least one class).
fn class_axis(metric: &str, y_pred: &Tensor) -> Result<()> {
    match y_pred.shape().last() {
        Some(&c) if c > 0 => Ok(()),
        _ => Err(invalid(
            metric,
            format!("predictions need a class axis, got {}", shape_str(y_pred)),
        )),
    }
}

/// The running (weighted) mean of values (`keras.metrics.Mean`).
///
/// As a [`Metric`] (e.g. in `compile_with_metrics`) it averages `y_pred` and ignores
/// `y_true`.
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
///
/// Inside a compiled step (the TF quickstart's `train_loss(loss)`):
///
/// ```
/// use tapeflow::nn::Mean;
/// use tapeflow::{function, Tensor};
/// let train_loss = Mean::new("train_loss");
/// let m = train_loss.clone(); // shares the variables
/// let step = function(move |x: &Tensor| {
///     let loss = x.square().mean_all();
///     m.update(&loss)?;
///     Ok(loss)
/// });
/// step.call(&Tensor::vec(&[1.0f32, 3.0])).unwrap(); // loss 5
/// step.call(&Tensor::vec(&[1.0f32, 1.0])).unwrap(); // loss 1
/// assert_eq!(train_loss.result(), 3.0);
/// ```
#[derive(Clone)]
pub struct Mean {
    name: String,
    state: Totals,
}

impl Mean {
    /// An empty mean; its variables are `<name>/total` and `<name>/count`.
    pub fn new(name: impl Into<String>) -> Mean {
        let name = name.into();
        let state = Totals::new(&name);
        Mean { name, state }
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds every element of `values` with weight 1 (`metric(values)` in Keras).
    pub fn update(&self, values: &Tensor) -> Result<()> {
        self.state.add(
            &values.cast(DType::F64).sum_all(),
            &count_of(values.shape()),
        );
        Ok(())
    }

    /// Adds every element of `values` with weight `weight` (e.g. a batch mean weighted
    /// by the batch size).
    pub fn update_weighted(&self, values: &Tensor, weight: f64) -> Result<()> {
        self.update_with_weight(values, &Tensor::scalar_of(DType::F64, weight))
    }

    /// Adds `values` weighted by `sample_weight` (Keras' `sample_weight`): a scalar, a
    /// tensor of `values`' shape, or of its leading axes (`[n]` weights for `[n, k]`
    /// values weigh each row). Adds `Σ w·v` to the total and `Σ w` (over all elements)
    /// to the count. Inside a shape-polymorphic function a symbolic batch size works as
    /// a weight: `Tensor::dim_value(x.shape()[0], DType::F64)`.
    ///
    /// ```
    /// use tapeflow::nn::Mean;
    /// use tapeflow::Tensor;
    /// let m = Mean::new("m");
    /// m.update_with_weight(&Tensor::vec(&[1.0f32, 4.0]), &Tensor::vec(&[3.0f32, 1.0])).unwrap();
    /// assert_eq!(m.result(), 7.0 / 4.0);
    /// ```
    pub fn update_with_weight(&self, values: &Tensor, sample_weight: &Tensor) -> Result<()> {
        let lead = values.shape().get(..sample_weight.rank());
        if lead != Some(sample_weight.shape()) {
            return Err(invalid(
                &format!("Mean `{}`", self.name),
                format!(
                    "sample_weight {} must be a scalar or match the leading axes of values {}",
                    shape_str(sample_weight),
                    shape_str(values)
                ),
            ));
        }
        let mut w = sample_weight.cast(DType::F64);
        while w.rank() < values.rank() {
            w = w.expand_dims(-1);
        }
        let w = w.broadcast_to(values.shape());
        let total = (&values.cast(DType::F64) * &w).sum_all();
        self.state.add(&total, &w.sum_all());
        Ok(())
    }

    /// The mean so far (0 before any update).
    pub fn result(&self) -> f64 {
        self.state.ratio()
    }

    /// Forgets everything.
    pub fn reset_state(&self) {
        self.state.reset();
    }
}

impl Metric for Mean {
    fn name(&self) -> &str {
        &self.name
    }

    fn update(&self, _y_true: &Tensor, y_pred: &Tensor) -> Result<()> {
        Mean::update(self, y_pred)
    }

    fn result(&self) -> f64 {
        self.state.ratio()
    }

    fn reset_state(&self) {
        self.state.reset();
    }

    fn variables(&self) -> Vec<Variable> {
        self.state.variables()
    }
}

/// Declares a metric type with a Keras default name, `new`, `named`, `Default`, and
/// [`Metric`], whose `update` calls the type's own `update_batch`. Extra fields (a
/// threshold) are listed with their defaults.
macro_rules! metric_type {
    ($(#[$m:meta])* $ty:ident, $default:literal $(, $field:ident: $fty:ty = $init:expr)*) => {
        $(#[$m])*
        #[derive(Clone)]
        pub struct $ty {
            name: String,
            state: Totals,
            $($field: $fty,)*
        }

        impl $ty {
            #[doc = concat!("Named `", $default, "`.")]
            pub fn new() -> $ty {
                $ty::named($default)
            }

            /// With a chosen name (e.g. `accuracy`, `train_accuracy`); the variables are
            /// `<name>/total` and `<name>/count`.
            pub fn named(name: impl Into<String>) -> $ty {
                let name = name.into();
                let state = Totals::new(&name);
                $ty { name, state $(, $field: $init)* }
            }
        }

        impl Default for $ty {
            fn default() -> Self {
                $ty::new()
            }
        }

        impl Metric for $ty {
            fn name(&self) -> &str {
                &self.name
            }

            fn update(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<()> {
                self.update_batch(y_true, y_pred)
            }

            fn result(&self) -> f64 {
                self.state.ratio()
            }

            fn reset_state(&self) {
                self.state.reset();
            }

            fn variables(&self) -> Vec<Variable> {
                self.state.variables()
            }
        }
    };
}

metric_type!(
    /// How often the argmax of the predictions equals the integer label
    /// (`keras.metrics.SparseCategoricalAccuracy`).
    ///
    /// Labels are i64 or floats holding integers, shaped like the predictions without
    /// the class axis (a trailing length-1 axis is accepted too).
    ///
    /// ```
    /// use tapeflow::nn::{Metric, SparseCategoricalAccuracy};
    /// use tapeflow::Tensor;
    /// let acc = SparseCategoricalAccuracy::new();
    /// let pred = Tensor::from_vec(vec![0.1f32, 0.9, 0.8, 0.2], &[2, 2]).unwrap();
    /// acc.update(&Tensor::vec(&[1i64, 1]), &pred).unwrap();
    /// assert_eq!(acc.result(), 0.5);
    /// ```
    SparseCategoricalAccuracy,
    "sparse_categorical_accuracy"
);

impl SparseCategoricalAccuracy {
    fn update_batch(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<()> {
        let metric = "SparseCategoricalAccuracy";
        class_axis(metric, y_pred)?;
        let lead = &y_pred.shape()[..y_pred.rank() - 1];
        let labels = if y_true.shape() == lead {
            y_true.clone()
        } else if y_true.rank() == y_pred.rank()
            && y_true.shape().last() == Some(&1)
            && y_true.shape()[..lead.len()] == *lead
        {
            y_true.squeeze(-1)
        } else {
            return Err(invalid(
                metric,
                format!(
                    "labels {} do not fit predictions {}",
                    shape_str(y_true),
                    shape_str(y_pred)
                ),
            ));
        };
        // compared in the labels' dtype: a float label 2.5 never matches
        let predicted = y_pred.argmax(-1).cast(labels.dtype());
        self.state.add_matches(&predicted.eq(&labels));
        Ok(())
    }
}

metric_type!(
    /// How often the argmax of the predictions equals the argmax of one-hot targets
    /// (`keras.metrics.CategoricalAccuracy`).
    ///
    /// ```
    /// use tapeflow::nn::{CategoricalAccuracy, Metric};
    /// use tapeflow::Tensor;
    /// let acc = CategoricalAccuracy::new();
    /// let truth = Tensor::from_vec(vec![0.0f32, 1.0, 0.0, 1.0], &[2, 2]).unwrap();
    /// let pred = Tensor::from_vec(vec![0.1f32, 0.9, 0.8, 0.2], &[2, 2]).unwrap();
    /// acc.update(&truth, &pred).unwrap();
    /// assert_eq!(acc.result(), 0.5);
    /// ```
    CategoricalAccuracy,
    "categorical_accuracy"
);

impl CategoricalAccuracy {
    fn update_batch(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<()> {
        let metric = "CategoricalAccuracy";
        class_axis(metric, y_pred)?;
        if y_true.shape() != y_pred.shape() {
            return Err(invalid(
                metric,
                format!(
                    "targets {} do not match predictions {}",
                    shape_str(y_true),
                    shape_str(y_pred)
                ),
            ));
        }
        self.state
            .add_matches(&y_pred.argmax(-1).eq(&y_true.argmax(-1)));
        Ok(())
    }
}

metric_type!(
    /// How often `y_pred > threshold` equals the 0/1 target
    /// (`keras.metrics.BinaryAccuracy`; threshold 0.5, so for logits use
    /// [`BinaryAccuracy::threshold`]`(0.0)`).
    ///
    /// Targets are shaped like the predictions (a trailing length-1 axis may be added or
    /// dropped: `[n]` targets for `[n, 1]` predictions).
    ///
    /// ```
    /// use tapeflow::nn::{BinaryAccuracy, Metric};
    /// use tapeflow::Tensor;
    /// let acc = BinaryAccuracy::new();
    /// acc.update(&Tensor::vec(&[1.0f32, 0.0, 1.0, 0.0]), &Tensor::vec(&[0.9f32, 0.2, 0.4, 0.7])).unwrap();
    /// assert_eq!(acc.result(), 0.5);
    /// ```
    BinaryAccuracy,
    "binary_accuracy",
    threshold: f64 = 0.5
);

impl BinaryAccuracy {
    /// Another decision threshold (default 0.5; 0.0 for logits).
    pub fn threshold(mut self, threshold: f64) -> BinaryAccuracy {
        self.threshold = threshold;
        self
    }

    fn update_batch(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<()> {
        let t = match_targets("BinaryAccuracy", y_true, y_pred)?;
        let predicted = y_pred.gt(&y_pred.scalar_like(self.threshold));
        self.state.add_matches(&predicted.eq(&t));
        Ok(())
    }
}

metric_type!(
    /// The mean absolute difference between targets and predictions
    /// (`keras.metrics.MeanAbsoluteError`, `"mae"`), computed in f64.
    ///
    /// ```
    /// use tapeflow::nn::{MeanAbsoluteError, Metric};
    /// use tapeflow::Tensor;
    /// let mae = MeanAbsoluteError::new();
    /// mae.update(&Tensor::vec(&[1.0f32, 2.0]), &Tensor::vec(&[2.0f32, 5.0])).unwrap();
    /// assert_eq!(mae.result(), 2.0);
    /// ```
    MeanAbsoluteError,
    "mean_absolute_error"
);

impl MeanAbsoluteError {
    fn update_batch(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<()> {
        let diff = errors("MeanAbsoluteError", y_true, y_pred)?;
        self.state
            .add(&diff.abs().sum_all(), &count_of(diff.shape()));
        Ok(())
    }
}

metric_type!(
    /// The mean squared difference between targets and predictions
    /// (`keras.metrics.MeanSquaredError`, `"mse"`), computed in f64. Named
    /// `nn::metrics::MeanSquaredError` (`nn::MeanSquaredError` is the loss).
    ///
    /// ```
    /// use tapeflow::nn::metrics::MeanSquaredError;
    /// use tapeflow::nn::Metric;
    /// use tapeflow::Tensor;
    /// let mse = MeanSquaredError::new();
    /// mse.update(&Tensor::vec(&[1.0f32, 2.0]), &Tensor::vec(&[2.0f32, 5.0])).unwrap();
    /// assert_eq!(mse.result(), 5.0);
    /// ```
    MeanSquaredError,
    "mean_squared_error"
);

impl MeanSquaredError {
    fn update_batch(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<()> {
        let diff = errors("MeanSquaredError", y_true, y_pred)?;
        self.state
            .add(&diff.square().sum_all(), &count_of(diff.shape()));
        Ok(())
    }
}

/// `y_pred - y_true` in f64, the targets aligned to the predictions' shape as the
/// losses align them.
fn errors(metric: &str, y_true: &Tensor, y_pred: &Tensor) -> Result<Tensor> {
    let t = match_targets(metric, y_true, y_pred)?;
    Ok(y_pred.cast(DType::F64) - t.cast(DType::F64))
}

/// The metric Keras' `compile(metrics=[name])` means, for a model trained with the loss
/// named `loss_name` (`keras.metrics.get` plus compile's accuracy inference):
///
/// | name | metric (named `name`) |
/// | --- | --- |
/// | `accuracy`, `acc` | from the loss: `sparse_categorical_crossentropy` → [`SparseCategoricalAccuracy`], `categorical_crossentropy` → [`CategoricalAccuracy`], `binary_crossentropy` → [`BinaryAccuracy`] |
/// | `sparse_categorical_accuracy`, `categorical_accuracy`, `binary_accuracy` | that accuracy |
/// | `mae`, `mean_absolute_error` | [`MeanAbsoluteError`] |
/// | `mse`, `mean_squared_error` | [`MeanSquaredError`] |
///
/// An `Err` for an unknown name (listing the known ones) and for `accuracy` with a loss
/// it cannot be inferred from (e.g. `mean_squared_error`).
///
/// ```
/// use tapeflow::nn::metric_by_name;
/// let m = metric_by_name("accuracy", "binary_crossentropy").unwrap();
/// assert_eq!(m.name(), "accuracy");
/// let e = metric_by_name("f1", "mean_squared_error").err().unwrap();
/// assert!(e.to_string().contains("`f1`"));
/// ```
pub fn metric_by_name(name: &str, loss_name: &str) -> Result<Arc<dyn Metric>> {
    Ok(match name {
        "accuracy" | "acc" => match loss_name {
            "sparse_categorical_crossentropy" => Arc::new(SparseCategoricalAccuracy::named(name)),
            "categorical_crossentropy" => Arc::new(CategoricalAccuracy::named(name)),
            "binary_crossentropy" => Arc::new(BinaryAccuracy::named(name)),
            other => {
                return Err(Error::Invalid(format!(
                    "metric `{name}`: cannot infer which accuracy fits the loss `{other}`; name one \
                     (`sparse_categorical_accuracy`, `categorical_accuracy`, `binary_accuracy`) \
                     or pass a metric object"
                )))
            }
        },
        "sparse_categorical_accuracy" => Arc::new(SparseCategoricalAccuracy::new()),
        "categorical_accuracy" => Arc::new(CategoricalAccuracy::new()),
        "binary_accuracy" => Arc::new(BinaryAccuracy::new()),
        "mae" | "mean_absolute_error" => Arc::new(MeanAbsoluteError::named(name)),
        "mse" | "mean_squared_error" => Arc::new(MeanSquaredError::named(name)),
        other => {
            return Err(Error::Invalid(format!(
                "unknown metric `{other}`; known names: accuracy, acc, sparse_categorical_accuracy, \
                 categorical_accuracy, binary_accuracy, mae, mean_absolute_error, mse, mean_squared_error"
            )))
        }
    })
}
