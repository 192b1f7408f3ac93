//! Metrics through the public API: every metric gives the same value updated eagerly
//! and inside a compiled function (concrete and shape-polymorphic traces), `result` and
//! `reset_state` work from outside a compiled step, and metrics resolve by name as
//! Keras resolves them.

use std::sync::Arc;
use tapeflow::nn::metrics::MeanSquaredError as MseMetric;
use tapeflow::nn::{
    metric_by_name, BinaryAccuracy, BinaryCrossentropy, CategoricalAccuracy,
    CategoricalCrossentropy, Dense, FitOptions, Mean, MeanAbsoluteError, MeanSquaredError, Metric,
    Model, Sequential, SparseCategoricalAccuracy, SparseCategoricalCrossentropy, SGD,
};
use tapeflow::{function, DType, Tensor};

/// Batches of these sizes: the third differs, so `function` retraces it symbolically.
const SIZES: [usize; 4] = [8, 8, 5, 3];
const CLASSES: usize = 4;

fn preds(n: usize, k: usize, seed: u64) -> Tensor {
    Tensor::random_normal(&[n, k], 0.0, 1.0, seed, DType::F32)
}

fn labels(n: usize, seed: u64) -> Tensor {
    Tensor::random_uniform(&[n], 0.0, CLASSES as f64, seed, DType::F64).cast(DType::I64)
}

/// `(y_true, y_pred)` batches for one kind of metric.
fn batches(kind: &str) -> Vec<(Tensor, Tensor)> {
    SIZES
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let s = 10 * i as u64;
            match kind {
                "sparse" => (labels(n, s), preds(n, CLASSES, s + 1)),
                "categorical" => (
                    labels(n, s).one_hot(CLASSES, DType::F32),
                    preds(n, CLASSES, s + 1),
                ),
                "binary" => (
                    Tensor::random_uniform(&[n, 1], 0.0, 2.0, s, DType::F64)
                        .cast(DType::I64)
                        .cast(DType::F32),
                    Tensor::random_uniform(&[n, 1], 0.0, 1.0, s + 1, DType::F32),
                ),
                _ => (preds(n, 3, s), preds(n, 3, s + 1)),
            }
        })
        .collect()
}

/// The metric's value from host arithmetic over all batches (what it must report).
fn reference(kind: &str, data: &[(Tensor, Tensor)]) -> f64 {
    let (mut total, mut count) = (0.0, 0.0);
    for (t, p) in data {
        let t = t.to_vec_f64().unwrap();
        let p = p.to_vec_f64().unwrap();
        let argmax = |row: &[f64]| {
            (0..row.len()).fold(0, |best, j| if row[j] > row[best] { j } else { best })
        };
        match kind {
            "sparse" => {
                for (row, label) in p.chunks(CLASSES).zip(&t) {
                    total += (argmax(row) as f64 == *label) as u8 as f64;
                    count += 1.0;
                }
            }
            "categorical" => {
                for (row, truth) in p.chunks(CLASSES).zip(t.chunks(CLASSES)) {
                    total += (argmax(row) == argmax(truth)) as u8 as f64;
                    count += 1.0;
                }
            }
            "binary" => {
                for (pv, tv) in p.iter().zip(&t) {
                    total += ((*pv > 0.5) as u8 as f64 == *tv) as u8 as f64;
                    count += 1.0;
                }
            }
            "mae" | "mse" => {
                for (pv, tv) in p.iter().zip(&t) {
                    let d = (*pv as f32 as f64) - (*tv as f32 as f64);
                    total += if kind == "mae" { d.abs() } else { d * d };
                    count += 1.0;
                }
            }
            _ => unreachable!(),
        }
    }
    total / count
}

fn fresh(kind: &str) -> Arc<dyn Metric> {
    match kind {
        "sparse" => Arc::new(SparseCategoricalAccuracy::new()),
        "categorical" => Arc::new(CategoricalAccuracy::new()),
        "binary" => Arc::new(BinaryAccuracy::new()),
        "mae" => Arc::new(MeanAbsoluteError::new()),
        "mse" => Arc::new(MseMetric::new()),
        _ => unreachable!(),
    }
}

#[test]
fn every_metric_gives_the_same_value_eagerly_and_inside_a_compiled_function() {
    for kind in ["sparse", "categorical", "binary", "mae", "mse"] {
        let data = batches(kind);
        let eager = fresh(kind);
        for (t, p) in &data {
            eager.update(t, p).unwrap();
        }
        let compiled = fresh(kind);
        let m = compiled.clone();
        let step = function(move |t: &Tensor, p: &Tensor| m.update(t, p));
        for (t, p) in &data {
            step.call(t, p).unwrap();
        }
        // one concrete trace, then one shape-polymorphic trace for the other sizes
        assert_eq!(step.trace_count(), 2, "{kind}");
        let want = reference(kind, &data);
        assert!(
            (eager.result() - want).abs() < 1e-12,
            "{kind}: eager {} vs reference {want}",
            eager.result()
        );
        assert_eq!(eager.result(), compiled.result(), "{kind}");
        assert!(
            want > 0.0,
            "{kind}: a test that cannot tell counts from zero"
        );
    }
}

#[test]
fn mean_gives_the_same_value_eagerly_and_compiled_also_weighted_by_a_symbolic_batch_size() {
    let data = batches("mse");
    let (eager, eager_w) = (Mean::new("loss"), Mean::new("loss_w"));
    for (_, p) in &data {
        let loss = p.square().mean_all();
        eager.update(&loss).unwrap();
        eager_w.update_weighted(&loss, p.shape()[0] as f64).unwrap();
    }
    let (compiled, compiled_w) = (Mean::new("loss"), Mean::new("loss_w"));
    let (m, mw) = (compiled.clone(), compiled_w.clone());
    let step = function(move |p: &Tensor| {
        let loss = p.square().mean_all();
        m.update(&loss)?;
        // the batch size as a weight: a `dim_value` node once the trace is symbolic
        mw.update_with_weight(&loss, &Tensor::dim_value(p.shape()[0], DType::F64))?;
        Ok(loss)
    });
    for (_, p) in &data {
        step.call(p).unwrap();
    }
    assert_eq!(step.trace_count(), 2);
    assert_eq!(eager.result(), compiled.result());
    assert_eq!(eager_w.result(), compiled_w.result());
    // the weighted mean is the mean of all squares
    let all: Vec<f64> = data
        .iter()
        .flat_map(|(_, p)| p.to_vec_f64().unwrap())
        .collect();
    let want = all.iter().map(|v| v * v).sum::<f64>() / all.len() as f64;
    assert!(
        (compiled_w.result() - want).abs() < 1e-6,
        "{}",
        compiled_w.result()
    );
    assert_ne!(compiled.result(), compiled_w.result());
    // Mean as a Metric averages y_pred
    let as_metric: &dyn Metric = &Mean::new("m");
    as_metric
        .update(&Tensor::scalar(0.0), &Tensor::vec(&[1.0f32, 3.0]))
        .unwrap();
    assert_eq!(as_metric.result(), 2.0);
}

#[test]
fn result_and_reset_state_work_from_outside_a_compiled_step() {
    let acc = SparseCategoricalAccuracy::named("train_accuracy");
    let a = acc.clone();
    let step = function(move |y: &Tensor, p: &Tensor| a.update(y, p));
    let p = Tensor::from_vec(vec![0.1f32, 0.9, 0.8, 0.2], &[2, 2]).unwrap();
    step.call(&Tensor::vec(&[1i64, 1]), &p).unwrap();
    assert_eq!(acc.result(), 0.5);
    step.call(&Tensor::vec(&[1i64, 0]), &p).unwrap();
    assert_eq!(acc.result(), 0.75);
    acc.reset_state();
    assert_eq!(acc.result(), 0.0);
    // the compiled step keeps updating the same (reset) variables
    step.call(&Tensor::vec(&[1i64, 0]), &p).unwrap();
    assert_eq!(acc.result(), 1.0);
    let vars = acc.variables();
    let names: Vec<&str> = vars.iter().map(|v| v.name()).collect();
    assert_eq!(names, ["train_accuracy/total", "train_accuracy/count"]);
    assert!(vars
        .iter()
        .all(|v| !v.trainable() && v.dtype() == DType::F64 && v.shape().is_empty()));
    assert_eq!(vars[1].value().to_scalar().unwrap(), 2.0);
}

#[test]
fn a_metric_given_the_wrong_shapes_is_an_error_naming_it_eagerly_and_compiled() {
    let acc = SparseCategoricalAccuracy::new();
    let e = acc
        .update(&Tensor::vec(&[1i64, 0, 1]), &preds(2, 3, 0))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("SparseCategoricalAccuracy") && e.contains("i64[3]"),
        "{e}"
    );
    let a = acc.clone();
    let step = function(move |y: &Tensor, p: &Tensor| a.update(y, p));
    let e = step
        .call(&Tensor::vec(&[1i64, 0, 1]), &preds(2, 3, 0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("SparseCategoricalAccuracy"), "{e}");
    let e = CategoricalAccuracy::new()
        .update(&preds(2, 4, 0), &preds(2, 3, 0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("CategoricalAccuracy"), "{e}");
    let e = MeanAbsoluteError::new()
        .update(&preds(2, 4, 0), &preds(3, 4, 0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("MeanAbsoluteError"), "{e}");
    let e = Mean::new("m")
        .update_with_weight(&preds(2, 4, 0), &Tensor::vec(&[1.0f32, 2.0, 3.0]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("sample_weight"), "{e}");
    assert_eq!(acc.result(), 0.0, "a failed update adds nothing");
}

/// `metric_by_name(name, loss)` must behave like `want` on the `kind` batches.
fn resolves_to(name: &str, loss: &str, kind: &str) {
    let m = metric_by_name(name, loss).unwrap();
    assert_eq!(m.name(), name);
    let data = batches(kind);
    let want = fresh(kind);
    for (t, p) in &data {
        m.update(t, p).unwrap();
        want.update(t, p).unwrap();
    }
    assert_eq!(m.result(), want.result(), "{name} with {loss}");
    // and only that one: the other accuracies refuse or differ on these batches
    assert!(m.result() > 0.0);
}

#[test]
fn metrics_resolve_by_name_like_keras_with_accuracy_inferred_from_the_loss() {
    resolves_to("accuracy", "sparse_categorical_crossentropy", "sparse");
    resolves_to("acc", "sparse_categorical_crossentropy", "sparse");
    resolves_to("accuracy", "categorical_crossentropy", "categorical");
    resolves_to("accuracy", "binary_crossentropy", "binary");
    resolves_to(
        "sparse_categorical_accuracy",
        "mean_squared_error",
        "sparse",
    );
    resolves_to("categorical_accuracy", "mean_squared_error", "categorical");
    resolves_to("binary_accuracy", "mean_squared_error", "binary");
    for name in ["mae", "mean_absolute_error"] {
        resolves_to(name, "mean_squared_error", "mae");
    }
    for name in ["mse", "mean_squared_error"] {
        resolves_to(name, "binary_crossentropy", "mse");
    }
    // a binary accuracy refuses sparse labels: "accuracy" really depends on the loss
    let binary = metric_by_name("accuracy", "binary_crossentropy").unwrap();
    let (t, p) = &batches("sparse")[0];
    assert!(binary.update(t, p).is_err());

    let e = metric_by_name("f1_score", "mean_squared_error")
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("unknown metric `f1_score`") && e.contains("mae"),
        "{e}"
    );
    let e = metric_by_name("accuracy", "mean_squared_error")
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("mean_squared_error") && e.contains("accuracy"),
        "{e}"
    );
}

#[test]
fn compile_takes_metric_names_and_fit_reports_them_under_those_names() {
    let model: Model = Sequential::new()
        .add(Dense::new(3))
        .input_shape(&[4])
        .into();
    let e = model
        .compile(MeanSquaredError, SGD::new(0.1), &["mae", "precision"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("compile") && e.contains("`precision`"), "{e}");
    model
        .compile(MeanSquaredError, SGD::new(0.05), &["mae", "mse"])
        .unwrap();
    let x = preds(20, 4, 1);
    let y = preds(20, 3, 2);
    let history = model
        .fit(&x, &y, FitOptions::new(2, 8).verbose(0).shuffle(false, 0))
        .unwrap();
    let loss = history.get("loss").unwrap();
    let mse = history.get("mse").unwrap();
    assert_eq!(history.get("mae").unwrap().len(), 2);
    // the mse metric is the loss (same mean over the same epoch, f64 vs f32 sums)
    for (l, m) in loss.iter().zip(mse) {
        assert!(
            (l - m).abs() < 1e-5 * l.abs().max(1.0),
            "loss {l} vs mse {m}"
        );
    }
    let logs = model.evaluate(&x, &y, 8).unwrap();
    let names: Vec<&str> = logs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["loss", "mae", "mse"]);

    for (loss_name, metric) in [
        ("binary", "accuracy"),
        ("categorical", "accuracy"),
        ("sparse", "accuracy"),
    ] {
        let m: Model = Sequential::new()
            .add(Dense::new(1))
            .input_shape(&[2])
            .into();
        let r = match loss_name {
            "binary" => m.compile(BinaryCrossentropy::default(), SGD::new(0.1), &[metric]),
            "categorical" => {
                m.compile(CategoricalCrossentropy::default(), SGD::new(0.1), &[metric])
            }
            _ => m.compile(
                SparseCategoricalCrossentropy::default(),
                SGD::new(0.1),
                &[metric],
            ),
        };
        r.unwrap();
    }
}
