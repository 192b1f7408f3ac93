//! Callbacks, History and Progbar through `fit`: each callback's behaviour on scripted
//! monitored values (a script callback placed first overwrites the logs, so the epoch a
//! callback acts at is known in advance), the files they write, and History's map
//! access and SVG plot.

mod common;

use common::TempDir;
use std::sync::{Arc, Mutex};
use tapeflow::nn::{
    epoch_line, load_model, Adam, CSVLogger, Callback, Control, Dense, EarlyStopping,
    ExponentialDecay, FitOptions, History, LearningRateScheduler, Logs, MeanSquaredError, Mode,
    Model, ModelCheckpoint, Optimizer, Progbar, ReduceLROnPlateau, Sequential, SGD,
};
use tapeflow::{DType, Result, Tensor};

/// Overwrites `key` in each epoch's logs with `values[epoch]` and records the weights
/// after each epoch.
struct Script {
    key: &'static str,
    values: Vec<f64>,
    weights: Vec<Vec<Vec<f64>>>,
}

impl Script {
    fn new(key: &'static str, values: &[f64]) -> Arc<Mutex<Script>> {
        Arc::new(Mutex::new(Script {
            key,
            values: values.to_vec(),
            weights: Vec::new(),
        }))
    }
}

fn weights_of(model: &Model) -> Vec<Vec<f64>> {
    model
        .get_weights()
        .iter()
        .map(|w| w.cast(DType::F64).to_vec_f64().unwrap())
        .collect()
}

impl Callback for Script {
    fn on_epoch_end(&mut self, model: &Model, epoch: usize, logs: &mut Logs) -> Result<Control> {
        logs.insert(self.key, self.values[epoch]);
        self.weights.push(weights_of(model));
        Ok(Control::Continue)
    }
}

/// A small regression problem and a compiled one-layer model.
fn setup(opt: impl Optimizer + 'static) -> (Model, Tensor, Tensor) {
    let x = Tensor::random_normal(&[16, 3], 0.0, 1.0, 1, DType::F32);
    let y = Tensor::random_normal(&[16, 1], 0.0, 1.0, 2, DType::F32);
    let model: Model = Sequential::new()
        .add(Dense::new(1))
        .input_shape(&[3])
        .into();
    model.compile(MeanSquaredError, opt, &[]).unwrap();
    (model, x, y)
}

fn opts(epochs: usize) -> FitOptions {
    FitOptions::new(epochs, 8).verbose(0).shuffle(false, 0)
}

#[test]
fn early_stopping_stops_after_patience_epochs_without_improvement() {
    let (model, x, y) = setup(SGD::new(0.05));
    // best at epoch 1; epochs 2 and 3 do not improve: patience 2 stops after epoch 3
    let script = Script::new("val_loss", &[1.0, 0.8, 0.9, 0.85, 0.1, 0.1, 0.1, 0.1]);
    let es = Arc::new(Mutex::new(EarlyStopping::new("val_loss").patience(2)));
    let h = model
        .fit(
            &x,
            &y,
            opts(8)
                .callback_shared(script.clone())
                .callback_shared(es.clone()),
        )
        .unwrap();
    assert_eq!(h["val_loss"], [1.0, 0.8, 0.9, 0.85]);
    assert_eq!(h["loss"].len(), 4);
    let es = es.lock().unwrap();
    assert_eq!(es.stopped_epoch(), Some(3));
    assert_eq!(es.best_epoch(), Some(1));
    assert_eq!(es.best(), 0.8);
}

#[test]
fn early_stopping_min_delta_and_max_mode() {
    // min_delta 0.1: 0.95 is not an improvement on 1.0, so patience 1 stops at epoch 1
    let (model, x, y) = setup(SGD::new(0.05));
    let script = Script::new("val_loss", &[1.0, 0.95, 0.5, 0.4]);
    let h = model
        .fit(
            &x,
            &y,
            opts(4)
                .callback_shared(script)
                .callback(EarlyStopping::new("val_loss").patience(1).min_delta(0.1)),
        )
        .unwrap();
    assert_eq!(h["val_loss"], [1.0, 0.95]);

    // `accuracy` is maximized in auto mode: 0.6 does not beat 0.6
    let (model, x, y) = setup(SGD::new(0.05));
    let script = Script::new("val_accuracy", &[0.5, 0.6, 0.6, 0.9]);
    let h = model
        .fit(
            &x,
            &y,
            opts(4)
                .callback_shared(script)
                .callback(EarlyStopping::new("val_accuracy").patience(1)),
        )
        .unwrap();
    assert_eq!(h["val_accuracy"], [0.5, 0.6, 0.6]);

    // the same values minimized (explicit mode) stop at once after epoch 1
    let (model, x, y) = setup(SGD::new(0.05));
    let script = Script::new("val_accuracy", &[0.5, 0.6, 0.6, 0.9]);
    let h = model
        .fit(
            &x,
            &y,
            opts(4).callback_shared(script).callback(
                EarlyStopping::new("val_accuracy")
                    .patience(1)
                    .mode(Mode::Min),
            ),
        )
        .unwrap();
    assert_eq!(h["val_accuracy"], [0.5, 0.6]);
}

#[test]
fn early_stopping_restores_the_best_weights() {
    let (model, x, y) = setup(SGD::new(0.05));
    let script = Script::new("val_loss", &[1.0, 0.5, 0.9, 0.9, 0.9]);
    model
        .fit(
            &x,
            &y,
            opts(5).callback_shared(script.clone()).callback(
                EarlyStopping::new("val_loss")
                    .patience(2)
                    .restore_best_weights(true),
            ),
        )
        .unwrap();
    let s = script.lock().unwrap();
    assert_eq!(s.weights.len(), 4, "stopped after epoch 3");
    assert_ne!(s.weights[1], s.weights[3], "training changed the weights");
    assert_eq!(
        weights_of(&model),
        s.weights[1],
        "epoch 1's weights are back"
    );
}

#[test]
fn a_stop_from_a_batch_ends_the_epoch_and_training() {
    struct StopAtBatch(usize, Vec<usize>);
    impl Callback for StopAtBatch {
        fn on_train_batch_end(&mut self, _m: &Model, batch: usize, logs: &Logs) -> Result<Control> {
            assert!(logs.get("loss").is_some());
            Ok(if batch == self.0 {
                Control::Stop
            } else {
                Control::Continue
            })
        }
        fn on_epoch_end(&mut self, _m: &Model, epoch: usize, _l: &mut Logs) -> Result<Control> {
            self.1.push(epoch);
            Ok(Control::Continue)
        }
    }
    let (model, x, y) = setup(SGD::new(0.05));
    let cb = Arc::new(Mutex::new(StopAtBatch(0, Vec::new())));
    let h = model
        .fit(&x, &y, opts(5).callback_shared(cb.clone()))
        .unwrap();
    assert_eq!(h["loss"].len(), 1);
    assert_eq!(
        cb.lock().unwrap().1,
        [0],
        "on_epoch_end still ran for the stopped epoch"
    );
}

#[test]
fn model_checkpoint_keeps_the_best_model_and_replaces_it_whole() {
    let dir = TempDir::new("ckpt_best");
    let (model, x, y) = setup(Adam::new(0.01));
    let script = Script::new("val_loss", &[1.0, 0.5, 0.7, 0.4, 0.6]);
    let best = dir.path("best");
    let ckpt = Arc::new(Mutex::new(
        ModelCheckpoint::new(best.to_str().unwrap()).save_best_only(true),
    ));
    model
        .fit(
            &x,
            &y,
            opts(5)
                .callback_shared(script.clone())
                .callback_shared(ckpt.clone()),
        )
        .unwrap();
    assert_eq!(
        ckpt.lock().unwrap().saved().len(),
        3,
        "epochs 0, 1 and 3 improve"
    );
    assert_eq!(ckpt.lock().unwrap().best(), Some(0.4));
    // only the final directory is left: no temporary or old copies
    assert_eq!(dir.files(), ["best"]);
    let loaded = load_model(&best).unwrap();
    assert_eq!(weights_of(&loaded), script.lock().unwrap().weights[3]);
}

#[test]
fn model_checkpoint_formats_the_path_per_epoch() {
    let dir = TempDir::new("ckpt_format");
    let (model, x, y) = setup(SGD::new(0.05));
    let script = Script::new("val_loss", &[0.5, 0.25, 0.125]);
    let pattern = dir.path("w-{epoch:02d}-{val_loss:.2f}.safetensors");
    model
        .fit(
            &x,
            &y,
            opts(3)
                .callback_shared(script.clone())
                .callback(ModelCheckpoint::new(pattern.to_str().unwrap()).save_weights_only(true)),
        )
        .unwrap();
    assert_eq!(
        dir.files(),
        [
            "w-01-0.50.safetensors",
            "w-02-0.25.safetensors",
            "w-03-0.12.safetensors"
        ]
    );
    // the file of epoch 2 (1-based) holds that epoch's weights
    model
        .load_weights(dir.path("w-02-0.25.safetensors"))
        .unwrap();
    assert_eq!(weights_of(&model), script.lock().unwrap().weights[1]);

    // a field that is not in the logs is an error naming it
    let bad = dir.path("w-{val_acc:.2f}");
    let e = model
        .fit(
            &x,
            &y,
            opts(1).callback(ModelCheckpoint::new(bad.to_str().unwrap())),
        )
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("`val_acc` is not in the logs"), "{e}");
}

#[test]
fn csv_logger_writes_keras_columns() {
    let dir = TempDir::new("csv");
    let (model, x, y) = setup(SGD::new(0.05));
    let path = dir.path("log.csv");
    let (xv, yv) = (x.slice_axis(0, 0, 4), y.slice_axis(0, 0, 4));
    let h = model
        .fit(
            &x,
            &y,
            opts(3)
                .validation_data(&xv, &yv)
                .callback(LearningRateScheduler::new(|_, lr| lr))
                .callback(CSVLogger::new(&path)),
        )
        .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "epoch,learning_rate,loss,val_loss");
    assert_eq!(lines.len(), 4);
    for (e, line) in lines[1..].iter().enumerate() {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f[0], e.to_string());
        // values round-trip exactly
        assert_eq!(f[1].parse::<f64>().unwrap(), h["learning_rate"][e]);
        assert_eq!(f[2].parse::<f64>().unwrap(), h["loss"][e]);
        assert_eq!(f[3].parse::<f64>().unwrap(), h["val_loss"][e]);
    }

    // append: no second header; a new file gets one
    model
        .fit(&x, &y, opts(2).callback(CSVLogger::new(&path).append(true)))
        .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6);
    assert_eq!(lines.iter().filter(|l| l.starts_with("epoch")).count(), 1);
    assert!(lines[4].starts_with("0,") && lines[5].starts_with("1,"));
    let path2 = dir.path("semi.csv");
    model
        .fit(
            &x,
            &y,
            opts(1).callback(CSVLogger::new(&path2).separator(';')),
        )
        .unwrap();
    let text = std::fs::read_to_string(&path2).unwrap();
    assert!(text.starts_with("epoch;loss\n0;"), "{text}");
}

#[test]
fn learning_rate_scheduler_sets_the_rate_of_the_compiled_step() {
    let (model, x, y) = setup(SGD::new(0.1));
    let h = model
        .fit(
            &x,
            &y,
            opts(4).callback(LearningRateScheduler::new(|epoch, lr| {
                if epoch < 2 {
                    lr
                } else {
                    lr * 0.5
                }
            })),
        )
        .unwrap();
    assert_eq!(h["learning_rate"], [0.1, 0.1, 0.05, 0.025]);
    assert_eq!(model.optimizer().unwrap().current_learning_rate(), 0.025);

    // a rate of 0 from epoch 1 on freezes the weights: the compiled step reads the rate
    let (model, x, y) = setup(SGD::new(0.1));
    let script = Script::new("unused", &[0.0; 3]);
    model
        .fit(
            &x,
            &y,
            opts(3)
                .callback(LearningRateScheduler::new(|epoch, lr| {
                    if epoch >= 1 {
                        0.0
                    } else {
                        lr
                    }
                }))
                .callback_shared(script.clone()),
        )
        .unwrap();
    let w = &script.lock().unwrap().weights;
    assert_eq!(w[1], w[0]);
    assert_eq!(w[2], w[0]);

    // an optimizer whose rate is a schedule cannot be set (as in Keras)
    let (model, x, y) = setup(SGD::new(ExponentialDecay::new(0.1, 10, 0.5)));
    let e = model
        .fit(
            &x,
            &y,
            opts(1).callback(LearningRateScheduler::new(|_, lr| lr)),
        )
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("schedule"), "{e}");
}

#[test]
fn reduce_lr_on_plateau_reduces_after_patience_down_to_min_lr() {
    let (model, x, y) = setup(SGD::new(0.1));
    let script = Script::new("val_loss", &[1.0; 9]);
    let h = model
        .fit(
            &x,
            &y,
            opts(9).callback_shared(script).callback(
                ReduceLROnPlateau::new("val_loss")
                    .factor(0.5)
                    .patience(2)
                    .min_lr(0.02),
            ),
        )
        .unwrap();
    // the logged rate is the one the epoch trained with
    assert_eq!(
        h["learning_rate"],
        [0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.02, 0.02]
    );

    // improvements reset the wait; a cooldown delays counting
    let (model, x, y) = setup(SGD::new(0.1));
    let script = Script::new("val_loss", &[1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5]);
    let h = model
        .fit(
            &x,
            &y,
            opts(7).callback_shared(script).callback(
                ReduceLROnPlateau::new("val_loss")
                    .factor(0.5)
                    .patience(1)
                    .cooldown(2),
            ),
        )
        .unwrap();
    // (Keras' counting) e1: wait 1 → 0.05, cooldown 2; e2: cooldown 1, improves;
    // e3: cooldown 0, wait 1 → 0.025, cooldown 2; e4: cooldown 1, no count;
    // e5: cooldown 0, wait 1 → 0.0125
    assert_eq!(
        h["learning_rate"],
        [0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.0125]
    );

    let (model, x, y) = setup(SGD::new(0.1));
    let e = model
        .fit(
            &x,
            &y,
            opts(1).callback(ReduceLROnPlateau::new("loss").factor(1.5)),
        )
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("factor must be in (0, 1), got 1.5"), "{e}");
}

#[test]
fn history_is_a_map_of_per_epoch_values() {
    let (model, x, y) = setup(SGD::new(0.05));
    let (xv, yv) = (x.slice_axis(0, 0, 4), y.slice_axis(0, 0, 4));
    let h = model
        .fit(&x, &y, opts(3).validation_data(&xv, &yv))
        .unwrap();
    assert_eq!(h.keys().collect::<Vec<_>>(), ["loss", "val_loss"]);
    assert_eq!(h.get("loss").unwrap().len(), 3);
    assert_eq!(h.get("accuracy"), None);
    assert!(h.contains_key("val_loss"));
    let names: Vec<&str> = h.iter().map(|(k, _)| k).collect();
    assert_eq!(names, ["loss", "val_loss"]);
    assert!(h["loss"][2] < h["loss"][0], "{:?}", &h["loss"]);
    assert_eq!(h.len(), 2);

    // resumed runs count epochs from initial_epoch
    let h2 = model.fit(&x, &y, opts(5).initial_epoch(3)).unwrap();
    assert_eq!(h2["loss"].len(), 2);
}

#[test]
#[should_panic(expected = "History has no `acc` (it has: loss)")]
fn history_index_of_a_missing_name_panics_with_the_names() {
    let mut h = History::default();
    h.append("loss", 1.0);
    let _ = &h["acc"];
}

#[cfg(feature = "plot")]
#[test]
fn history_plot_writes_an_svg_with_every_series() {
    let dir = TempDir::new("plot");
    let mut h = History::default();
    for (l, a) in [(0.9, 0.5), (0.5, 0.7), (0.3, 0.8)] {
        h.append("loss", l);
        h.append("accuracy", a);
        h.append("val_loss", l + 0.1);
        h.append("val_accuracy", a - 0.1);
    }
    let path = dir.path("curves.svg");
    h.plot(&path).unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
    for label in [
        "loss per epoch",
        "accuracy per epoch",
        "\nval_loss\n",
        "\nval_accuracy\n",
    ] {
        assert!(svg.contains(label), "no {label:?} in the SVG");
    }
    // a curve of 3 points per series: train in blue, validation in red, in both panels
    let curves: Vec<&str> = svg
        .lines()
        .filter(|l| l.starts_with("<polyline") && l.matches(',').count() == 3)
        .collect();
    assert_eq!(curves.len(), 4, "{curves:?}");
    assert_eq!(curves.iter().filter(|l| l.contains("#0000FF")).count(), 2);
    assert_eq!(curves.iter().filter(|l| l.contains("#FF0000")).count(), 2);

    assert!(History::default().plot(dir.path("empty.svg")).is_err());
}

#[cfg(not(feature = "plot"))]
#[test]
fn history_plot_without_the_feature_is_an_error() {
    let mut h = History::default();
    h.append("loss", 1.0);
    let e = h.plot("never.svg").unwrap_err().to_string();
    assert!(e.contains("without the `plot` feature"), "{e}");
}

#[test]
fn progbar_prints_fits_epoch_line() {
    assert_eq!(
        epoch_line(0, 5, 2.04, &[("loss", 0.123456), ("val_loss", 1.0)]),
        "Epoch 1/5 - 2.0s - loss: 0.1235 - val_loss: 1.0000"
    );
    let mut bar = Progbar::new(Some(4)).epoch(2, 3).verbose(0);
    for i in 0..4 {
        bar.update(i + 1, &[("loss", 0.5)]);
    }
    let line = bar.finish(&[("loss", 0.25), ("accuracy", 0.5)]);
    let (head, tail) = line.split_once("s - ").unwrap();
    assert!(head.starts_with("Epoch 3/3 - "), "{line}");
    assert!(
        head["Epoch 3/3 - ".len()..].parse::<f64>().is_ok(),
        "{line}"
    );
    assert_eq!(tail, "loss: 0.2500 - accuracy: 0.5000");
    // unknown length and no values
    let line = Progbar::new(None).verbose(0).finish(&[]);
    assert!(
        line.starts_with("Epoch 1/1 - ") && line.ends_with('s'),
        "{line}"
    );
}
