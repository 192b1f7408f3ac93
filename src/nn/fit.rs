//! `compile` / `fit` / `evaluate` / `predict` (Keras' built-in training loop).
//!
//! `compile` stores the loss, optimizer and metrics. `fit` runs the same train step
//! users write by hand — forward under a `GradientTape`, gradients of the loss,
//! `apply_gradients` — compiled once with [`function_with_signature`] over a symbolic
//! batch axis (one trace serves every batch size, the last partial batch included) or
//! run eagerly when asked.
//! Metrics are updated eagerly from the values the step returns.
//!
//! Each epoch draws a [`Progbar`] and runs the [callbacks](super::callbacks) given in
//! [`FitOptions`]; what they put in the epoch's logs lands in the [`History`].
//!
//! The step closures capture the model's layers, not the model, so the compiled steps
//! cached in the model do not keep themselves alive through a reference cycle.

use super::callbacks::{run_all, Callback, Control, Logs, SharedCallback};
use super::history::History;
use super::losses::Loss;
use super::metrics::{metric_by_name, Mean, Metric};
use super::model::{Model, Net};
use super::optimizers::Optimizer;
use super::progbar::Progbar;
use crate::data::Dataset;
use crate::{function_with_signature, Dim, Error, GradientTape, Result, Tensor, TensorSpec};
use std::sync::{Arc, Mutex};

type Step2 = Box<dyn Fn(&Tensor, &Tensor) -> Result<(Tensor, Tensor)> + Send + Sync>;
type Step1 = Box<dyn Fn(&Tensor) -> Result<Tensor> + Send + Sync>;
/// The loss, optimizer and metrics given to `compile`.
type Parts = (Arc<dyn Loss>, Arc<dyn Optimizer>, Vec<Arc<dyn Metric>>);

/// What `compile` stored, plus the steps built from it on first use.
pub(crate) struct Compiled {
    loss: Arc<dyn Loss>,
    optimizer: Arc<dyn Optimizer>,
    metrics: Vec<Arc<dyn Metric>>,
    /// The train step, for its key and whether it averages gradients over ranks.
    train: Option<((StepKey, bool), Arc<Step2>)>,
    test: Option<(StepKey, Arc<Step2>)>,
    predict: Option<(StepKey, Arc<Step1>)>,
}

/// What a built step is for: eager or compiled, and the per-sample types it was
/// compiled for (a compiled step takes batches of any size of these).
type StepKey = (bool, Vec<TensorSpec>);

/// The key of a step over batches of `ts` (their first axis is the batch).
fn step_key(eager: bool, ts: &[&Tensor]) -> StepKey {
    (eager, batch_specs(ts))
}

/// The input signature of a step over batches of `ts`: the batch axis is the symbol
/// `batch`, the rest keeps the per-sample shape. One trace serves every batch size,
/// the last partial batch included.
fn batch_specs(ts: &[&Tensor]) -> Vec<TensorSpec> {
    let batch = Dim::sym("batch");
    ts.iter()
        .map(|t| {
            let dims: Vec<Dim> = std::iter::once(batch)
                .chain(t.shape().iter().skip(1).map(|&n| Dim::from(n)))
                .collect();
            TensorSpec::with_dims(&dims, t.dtype())
        })
        .collect()
}

/// Options of [`Model::fit`] (Keras' keyword arguments).
#[derive(Clone)]
pub struct FitOptions {
    /// Passes over the data (default 1).
    pub epochs: usize,
    /// Samples per step (default 32).
    pub batch_size: usize,
    /// Data evaluated after each epoch (`val_loss`, `val_<metric>` in the history).
    pub validation_data: Option<(Tensor, Tensor)>,
    /// Reshuffle the training data each epoch (default true).
    pub shuffle: bool,
    /// Seed of the shuffling (default 0).
    pub seed: u64,
    /// 0 silent, 1 progress bar + a line per epoch (default), 2 a line per epoch.
    pub verbose: u8,
    /// Run the train step eagerly instead of compiling it (default false).
    pub run_eagerly: bool,
    /// The epoch to start at (0-based, default 0), to resume a run: `fit` trains epochs
    /// `initial_epoch..epochs`, and a shuffled run sees the batch order the uninterrupted
    /// run would have seen in those epochs.
    pub initial_epoch: usize,
    /// Callbacks, run in order (see [`callbacks`](super::callbacks)).
    pub callbacks: Vec<SharedCallback>,
    /// Data-parallel training over the ranks of an MPI job (default false; see
    /// [`FitOptions::distributed`](method@FitOptions::distributed)).
    pub distributed: bool,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            epochs: 1,
            batch_size: 32,
            validation_data: None,
            shuffle: true,
            seed: 0,
            verbose: 1,
            run_eagerly: false,
            initial_epoch: 0,
            callbacks: Vec::new(),
            distributed: false,
        }
    }
}

impl FitOptions {
    /// `epochs` passes in batches of `batch_size`, other options at their defaults.
    pub fn new(epochs: usize, batch_size: usize) -> FitOptions {
        FitOptions {
            epochs,
            batch_size,
            ..FitOptions::default()
        }
    }

    /// Evaluates on `(x, y)` after each epoch.
    pub fn validation_data(mut self, x: &Tensor, y: &Tensor) -> FitOptions {
        self.validation_data = Some((x.clone(), y.clone()));
        self
    }

    /// Sets the verbosity (0, 1, 2).
    pub fn verbose(mut self, v: u8) -> FitOptions {
        self.verbose = v;
        self
    }

    /// Runs eagerly (no `function`) when true.
    pub fn run_eagerly(mut self, on: bool) -> FitOptions {
        self.run_eagerly = on;
        self
    }

    /// Whether and with which seed to shuffle.
    pub fn shuffle(mut self, on: bool, seed: u64) -> FitOptions {
        self.shuffle = on;
        self.seed = seed;
        self
    }

    /// Trains data-parallel over the ranks of an MPI job (after
    /// [`crate::distributed::init`]; Horovod's recipe): the variables start as rank 0's
    /// ([`crate::distributed::broadcast_variables`]), each rank trains on its shard of
    /// every epoch's shuffle ([`Dataset::shard`]; `batch_size` is per rank, so a step
    /// sees `batch_size × size` samples), gradients are averaged over the ranks inside
    /// the compiled step, the epoch's logs (loss, metrics, validation) are averaged over
    /// the ranks before the callbacks see them and a stop asked for by a callback on any
    /// rank stops every rank (so all ranks always run the same steps), only rank 0 prints
    /// and only rank 0 writes `ModelCheckpoint` and `CSVLogger` files. In a world of one
    /// it trains as without it.
    pub fn distributed(mut self, on: bool) -> FitOptions {
        self.distributed = on;
        self
    }

    /// Starts at epoch `epoch` (0-based; Keras' `initial_epoch`), to resume a run.
    pub fn initial_epoch(mut self, epoch: usize) -> FitOptions {
        self.initial_epoch = epoch;
        self
    }

    /// Adds a callback (`callbacks=[...]`); use [`FitOptions::callback_shared`] to keep
    /// a handle on it.
    pub fn callback(self, cb: impl Callback + 'static) -> FitOptions {
        self.callback_shared(Arc::new(Mutex::new(cb)))
    }

    /// Adds a callback shared with the caller, who can read its state after `fit`
    /// (`Arc<Mutex<EarlyStopping>>` converts to a [`SharedCallback`]).
    pub fn callback_shared(mut self, cb: SharedCallback) -> FitOptions {
        self.callbacks.push(cb);
        self
    }
}

fn train_step(
    net: Arc<Net>,
    loss: Arc<dyn Loss>,
    opt: Arc<dyn Optimizer>,
    distributed: bool,
) -> impl Fn(&Tensor, &Tensor) -> Result<(Tensor, Tensor)> {
    move |x: &Tensor, y: &Tensor| {
        let tape = GradientTape::new();
        let (l, pred) = tape.record(|| -> Result<(Tensor, Tensor)> {
            let pred = net.forward(x, true)?;
            Ok((loss.call(y, &pred)?, pred))
        })?;
        let vars = net.trainable_variables();
        let mut grads = tape.gradient(&l, &vars)?;
        if distributed {
            grads = crate::distributed::all_reduce_gradients(&grads);
        }
        opt.apply_gradients(&grads, &vars)?;
        Ok((l, pred))
    }
}

fn test_step(
    net: Arc<Net>,
    loss: Arc<dyn Loss>,
) -> impl Fn(&Tensor, &Tensor) -> Result<(Tensor, Tensor)> {
    move |x: &Tensor, y: &Tensor| {
        let pred = net.forward(x, false)?;
        Ok((loss.call(y, &pred)?, pred))
    }
}

/// Whether `asked` holds on any rank (so all ranks stop at the same step).
fn any_rank(asked: bool) -> Result<bool> {
    let v = crate::distributed::average(&Tensor::scalar(asked as u8 as f32))?;
    Ok(v.to_scalar()? > 0.0)
}

/// The logs averaged over the ranks (every rank has the same keys, in the same order).
fn average_logs(logs: &Logs) -> Result<Logs> {
    let values: Vec<f64> = logs.iter().map(|(_, v)| v).collect();
    let avg = crate::distributed::average(&Tensor::from_vec(values.clone(), &[values.len()])?)?;
    let mut out = Logs::new();
    for ((k, _), v) in logs.iter().zip(avg.to_vec_f64()?) {
        out.insert(k, v);
    }
    Ok(out)
}

impl Model {
    /// Configures training (`model.compile`): a loss, an optimizer (keep a clone to
    /// checkpoint it) and metrics by name as Keras resolves them (see [`metric_by_name`]:
    /// `"accuracy"` chosen from the loss, `"mae"`, `"mse"`, ...). An `Err` naming an
    /// unknown metric.
    pub fn compile(
        &self,
        loss: impl Loss + 'static,
        optimizer: impl Optimizer + 'static,
        metrics: &[&str],
    ) -> Result<()> {
        let ms = metrics
            .iter()
            .map(|m| metric_by_name(m, loss.name()))
            .collect::<Result<Vec<_>>>()
            .map_err(|e| Error::Invalid(format!("compile: {e}")))?;
        self.compile_with_metrics(loss, optimizer, ms);
        Ok(())
    }

    /// [`Model::compile`] with metric objects.
    pub fn compile_with_metrics(
        &self,
        loss: impl Loss + 'static,
        optimizer: impl Optimizer + 'static,
        metrics: Vec<Arc<dyn Metric>>,
    ) {
        *self.compiled.lock().expect("model lock") = Some(Compiled {
            loss: Arc::new(loss),
            optimizer: Arc::new(optimizer),
            metrics,
            train: None,
            test: None,
            predict: None,
        });
    }

    pub(crate) fn compiled_parts(&self) -> Result<Parts> {
        let c = self.compiled.lock().expect("model lock");
        let c = c.as_ref().ok_or_else(|| {
            Error::Invalid(format!("model `{}` must be compiled (model.compile(loss, optimizer, metrics)) before fit/evaluate", self.name()))
        })?;
        Ok((c.loss.clone(), c.optimizer.clone(), c.metrics.clone()))
    }

    /// The compiled (or eager) train step, built once and cached.
    fn train_fn(&self, eager: bool, dist: bool, x: &Tensor, y: &Tensor) -> Result<Arc<Step2>> {
        let (loss, opt, _) = self.compiled_parts()?;
        let mut c = self.compiled.lock().expect("model lock");
        let c = c.as_mut().expect("checked above");
        let key = (step_key(eager, &[x, y]), dist);
        if let Some((k, f)) = &c.train {
            if *k == key {
                return Ok(f.clone());
            }
        }
        let step = train_step(self.net.clone(), loss, opt, dist);
        let f: Step2 = if eager {
            Box::new(step)
        } else {
            let compiled = function_with_signature(step, &key.0 .1);
            Box::new(move |x: &Tensor, y: &Tensor| compiled.call(x, y))
        };
        let f = Arc::new(f);
        c.train = Some((key, f.clone()));
        Ok(f)
    }

    fn test_fn(&self, eager: bool, x: &Tensor, y: &Tensor) -> Result<Arc<Step2>> {
        let (loss, _, _) = self.compiled_parts()?;
        let mut c = self.compiled.lock().expect("model lock");
        let c = c.as_mut().expect("checked above");
        let key = step_key(eager, &[x, y]);
        if let Some((k, f)) = &c.test {
            if *k == key {
                return Ok(f.clone());
            }
        }
        let step = test_step(self.net.clone(), loss);
        let f: Step2 = if eager {
            Box::new(step)
        } else {
            let compiled = function_with_signature(step, &key.1);
            Box::new(move |x: &Tensor, y: &Tensor| compiled.call(x, y))
        };
        let f = Arc::new(f);
        c.test = Some((key, f.clone()));
        Ok(f)
    }

    /// Trains for `opts.epochs` passes over `(x, y)` (`model.fit`), returning the history.
    ///
    /// Shows a [`Progbar`] per epoch (the bar only when stderr is a terminal) and a line
    /// per epoch unless `verbose` is 0; runs the callbacks of `opts` (see
    /// [`callbacks`](super::callbacks)), which may stop training early.
    pub fn fit(&self, x: &Tensor, y: &Tensor, opts: FitOptions) -> Result<History> {
        let (_, _, metrics) = self.compiled_parts()?;
        for (name, t) in [("x", x), ("y", y)] {
            if t.shape().is_empty() {
                return Err(Error::Invalid(format!(
                    "fit: {name} is a scalar; it needs a first axis of samples (got shape [])"
                )));
            }
        }
        if x.shape().first() != y.shape().first() {
            return Err(Error::Invalid(format!(
                "fit: x has {:?} samples but y has {:?}",
                x.shape().first(),
                y.shape().first()
            )));
        }
        if opts.batch_size == 0 {
            return Err(Error::Invalid("fit: batch_size must be positive".into()));
        }
        let n = x.shape()[0];
        let dist = opts.distributed;
        let (ranks, me) = (crate::distributed::size(), crate::distributed::rank());
        if dist {
            crate::distributed::broadcast_variables(&self.variables(), 0)?;
        }
        let verbose = if dist && me != 0 { 0 } else { opts.verbose };
        let ds = Dataset::from_tensor_slices((x.clone(), y.clone()))?;
        let ds = if opts.shuffle {
            ds.shuffle(n, opts.seed)
        } else {
            ds
        };
        let ds = if dist { ds.shard(ranks, me) } else { ds };
        let ds = ds.batch(opts.batch_size);
        if opts.shuffle {
            // the shuffle of epoch k depends on how many epochs started before it:
            // starting (and dropping) the skipped ones gives a resumed run their orders
            for _ in 0..opts.initial_epoch.min(opts.epochs) {
                drop(ds.iter());
            }
        }
        let step = self.train_fn(opts.run_eagerly, dist, x, y)?;
        let cbs = &opts.callbacks;
        let loss_tracker = Mean::new("loss");
        let running_logs = || -> Logs {
            std::iter::once(("loss".to_string(), loss_tracker.result()))
                .chain(metrics.iter().map(|m| (m.name().to_string(), m.result())))
                .collect()
        };
        let mut history = History::default();
        let mut last_logs = Logs::new();
        run_all(cbs, |c| c.on_train_begin(self).map(|_| Control::Continue))?;
        for epoch in opts.initial_epoch..opts.epochs {
            loss_tracker.reset_state();
            for m in &metrics {
                m.reset_state();
            }
            run_all(cbs, |c| {
                c.on_epoch_begin(self, epoch).map(|_| Control::Continue)
            })?;
            let mut bar = Progbar::new(ds.cardinality())
                .epoch(epoch, opts.epochs)
                .verbose(verbose);
            bar.start();
            let mut stop = false;
            let watch_batches = verbose == 1 || !cbs.is_empty();
            for (i, (xb, yb)) in ds.iter().enumerate() {
                run_all(cbs, |c| {
                    c.on_train_batch_begin(self, i).map(|_| Control::Continue)
                })?;
                let (l, pred) = step(&xb, &yb)?;
                loss_tracker.update_weighted(&l, xb.shape()[0] as f64)?;
                for m in &metrics {
                    m.update(&yb, &pred)?;
                }
                if watch_batches {
                    let logs = running_logs();
                    bar.update(i + 1, &logs.pairs());
                    let mut asked =
                        run_all(cbs, |c| c.on_train_batch_end(self, i, &logs))? == Control::Stop;
                    if dist && !cbs.is_empty() {
                        asked = any_rank(asked)?;
                    }
                    if asked {
                        stop = true;
                        break;
                    }
                }
            }
            let mut logs = running_logs();
            if let Some((xv, yv)) = &opts.validation_data {
                for (k, v) in self.evaluate_with(xv, yv, opts.batch_size, opts.run_eagerly)? {
                    logs.insert(&format!("val_{k}"), v);
                }
            }
            if dist {
                logs = average_logs(&logs)?;
            }
            let mut asked =
                run_all(cbs, |c| c.on_epoch_end(self, epoch, &mut logs))? == Control::Stop;
            if dist {
                asked = any_rank(asked)?;
            }
            if asked {
                stop = true;
            }
            for (k, v) in logs.iter() {
                history.append(k, v);
            }
            bar.finish(&logs.pairs());
            last_logs = logs;
            if stop {
                break;
            }
        }
        run_all(cbs, |c| {
            c.on_train_end(self, &last_logs).map(|_| Control::Continue)
        })?;
        Ok(history)
    }

    /// The loss and metrics on `(x, y)` in batches (`model.evaluate`): `[("loss", ..),
    /// (metric, ..), ...]`. Metrics are reset first.
    pub fn evaluate(
        &self,
        x: &Tensor,
        y: &Tensor,
        batch_size: usize,
    ) -> Result<Vec<(String, f64)>> {
        self.evaluate_with(x, y, batch_size, false)
    }

    fn evaluate_with(
        &self,
        x: &Tensor,
        y: &Tensor,
        batch_size: usize,
        eager: bool,
    ) -> Result<Vec<(String, f64)>> {
        let (_, _, metrics) = self.compiled_parts()?;
        let step = self.test_fn(eager, x, y)?;
        let ds = Dataset::from_tensor_slices((x.clone(), y.clone()))?.batch(batch_size.max(1));
        let loss_tracker = Mean::new("loss");
        for m in &metrics {
            m.reset_state();
        }
        for (xb, yb) in &ds {
            let (l, pred) = step(&xb, &yb)?;
            loss_tracker.update_weighted(&l, xb.shape()[0] as f64)?;
            for m in &metrics {
                m.update(&yb, &pred)?;
            }
        }
        let mut logs = vec![("loss".to_string(), loss_tracker.result())];
        logs.extend(metrics.iter().map(|m| (m.name().to_string(), m.result())));
        Ok(logs)
    }

    /// The model's outputs on `x`, computed in compiled batches (`model.predict`). Does
    /// not need `compile`.
    pub fn predict(&self, x: &Tensor, batch_size: usize) -> Result<Tensor> {
        let f = {
            let mut guard = self.compiled.lock().expect("model lock");
            let key = step_key(false, &[x]);
            match guard
                .as_mut()
                .and_then(|c| c.predict.clone())
                .filter(|(k, _)| *k == key)
            {
                Some((_, f)) => f,
                None => {
                    let net = self.net.clone();
                    let compiled =
                        function_with_signature(move |x: &Tensor| net.forward(x, false), &key.1);
                    let f: Arc<Step1> = Arc::new(Box::new(move |x: &Tensor| compiled.call(x)));
                    if let Some(c) = guard.as_mut() {
                        c.predict = Some((key, f.clone()));
                    }
                    f
                }
            }
        };
        let ds = Dataset::from_tensor_slices(x.clone())?.batch(batch_size.max(1));
        let outs: Vec<Tensor> = ds.iter().map(|xb| f(&xb)).collect::<Result<_>>()?;
        if outs.is_empty() {
            return Err(Error::Invalid("predict: no samples".into()));
        }
        let refs: Vec<&Tensor> = outs.iter().collect();
        Ok(if refs.len() == 1 {
            outs[0].clone()
        } else {
            Tensor::concat(&refs, 0)
        })
    }

    /// The optimizer given to `compile`, if compiled (to checkpoint its state).
    pub fn optimizer(&self) -> Option<Arc<dyn Optimizer>> {
        self.compiled
            .lock()
            .expect("model lock")
            .as_ref()
            .map(|c| c.optimizer.clone())
    }
}
