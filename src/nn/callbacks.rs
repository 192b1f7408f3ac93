//! Callbacks (`keras.callbacks`): code `fit` runs at the start and end of training, of
//! each epoch and of each batch — [`EarlyStopping`], [`ModelCheckpoint`],
//! [`CSVLogger`], [`LearningRateScheduler`], [`ReduceLROnPlateau`], or your own
//! [`Callback`].
//!
//! How `fit` drives them (Keras' order):
//! - `on_train_begin`; then per epoch `on_epoch_begin`, per batch `on_train_batch_begin`
//!   and `on_train_batch_end` (with the running `loss` and metrics), then
//!   `on_epoch_end` with the epoch's [`Logs`] (`loss`, metrics, `val_loss`,
//!   `val_<metric>`); at last `on_train_end` with the last epoch's logs.
//! - Callbacks run in the order given. `on_epoch_end` gets the logs mutably: what a
//!   callback adds (the LR callbacks add `learning_rate`, as Keras 3 does) is seen by
//!   the callbacks after it and recorded in the [`History`](super::History).
//! - Epochs are 0-based, as in Keras (`CSVLogger`'s `epoch` column starts at 0;
//!   `ModelCheckpoint`'s `{epoch}` at 1).
//! - Stopping: a hook returns [`Control::Stop`] (Keras' `model.stop_training = True`).
//!   From `on_epoch_end` training ends after that epoch; from `on_train_batch_end` the
//!   epoch ends after that batch (its `on_epoch_end` still runs), then training ends.
//!   Every callback's hook runs even when an earlier one asked to stop.
//! - A callback's `Err` ends `fit` with that error.
//! - Callbacks are shared handles ([`SharedCallback`]): keep a clone to read their
//!   state after `fit` (`EarlyStopping::stopped_epoch`).

use super::model::Model;
use crate::{Error, Result, Tensor};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Whether training goes on after a callback hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Control {
    /// Keep training.
    #[default]
    Continue,
    /// Stop training (Keras' `model.stop_training = True`).
    Stop,
}

/// The loss and metric values a hook sees (Keras' `logs` dict), in insertion order.
///
/// ```
/// use tapeflow::nn::Logs;
/// let mut logs = Logs::new();
/// logs.insert("loss", 0.5);
/// logs.insert("val_loss", 0.7);
/// logs.insert("loss", 0.25);
/// assert_eq!(logs.get("loss"), Some(0.25));
/// assert_eq!(logs.keys().collect::<Vec<_>>(), ["loss", "val_loss"]);
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Logs {
    entries: Vec<(String, f64)>,
}

impl Logs {
    /// No values.
    pub fn new() -> Logs {
        Logs::default()
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }

    /// Sets `name` (replacing its value, or appending it).
    pub fn insert(&mut self, name: &str, v: f64) {
        match self.entries.iter_mut().find(|(n, _)| n == name) {
            Some((_, old)) => *old = v,
            None => self.entries.push((name.to_string(), v)),
        }
    }

    /// The names in insertion order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    /// `(name, value)` pairs in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), *v))
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn pairs(&self) -> Vec<(&str, f64)> {
        self.iter().collect()
    }
}

impl<S: Into<String>> FromIterator<(S, f64)> for Logs {
    fn from_iter<I: IntoIterator<Item = (S, f64)>>(iter: I) -> Logs {
        let mut logs = Logs::new();
        for (k, v) in iter {
            logs.insert(&k.into(), v);
        }
        logs
    }
}

/// Code run by `fit` during training (`keras.callbacks.Callback`). Every hook has a
/// default that does nothing; see the [module docs](self) for the order and stopping.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use tapeflow::nn::{Callback, Control, Dense, FitOptions, Logs, Model, Sequential, SGD, MeanSquaredError};
/// use tapeflow::{Result, Tensor};
///
/// /// Stops once the loss is below a threshold.
/// struct StopBelow(f64);
/// impl Callback for StopBelow {
///     fn on_epoch_end(&mut self, _m: &Model, _epoch: usize, logs: &mut Logs) -> Result<Control> {
///         Ok(if logs.get("loss").unwrap_or(f64::INFINITY) < self.0 { Control::Stop } else { Control::Continue })
///     }
/// }
///
/// let model = Sequential::new().add(Dense::new(1)).input_shape(&[2]);
/// model.compile(MeanSquaredError, SGD::new(0.1), &[]).unwrap();
/// let x = Tensor::ones(&[8, 2]);
/// let y = Tensor::zeros(&[8, 1]);
/// let opts = FitOptions::new(100, 8).verbose(0).callback(StopBelow(1e-3));
/// let history = model.fit(&x, &y, opts).unwrap();
/// assert!(history["loss"].len() < 100);
/// ```
pub trait Callback: Send {
    /// Before the first epoch.
    fn on_train_begin(&mut self, model: &Model) -> Result<()> {
        let _ = model;
        Ok(())
    }

    /// After the last epoch, with its logs (empty if no epoch ran).
    fn on_train_end(&mut self, model: &Model, logs: &Logs) -> Result<()> {
        let _ = (model, logs);
        Ok(())
    }

    /// Before epoch `epoch` (0-based).
    fn on_epoch_begin(&mut self, model: &Model, epoch: usize) -> Result<()> {
        let _ = (model, epoch);
        Ok(())
    }

    /// After epoch `epoch` (0-based, validation included); values added to `logs` are
    /// recorded in the history.
    fn on_epoch_end(&mut self, model: &Model, epoch: usize, logs: &mut Logs) -> Result<Control> {
        let _ = (model, epoch, logs);
        Ok(Control::Continue)
    }

    /// Before batch `batch` (0-based within the epoch).
    fn on_train_batch_begin(&mut self, model: &Model, batch: usize) -> Result<()> {
        let _ = (model, batch);
        Ok(())
    }

    /// After batch `batch`, with the epoch's running loss and metrics.
    fn on_train_batch_end(&mut self, model: &Model, batch: usize, logs: &Logs) -> Result<Control> {
        let _ = (model, batch, logs);
        Ok(Control::Continue)
    }
}

/// A callback shared between `fit` and its owner (who can read its state afterwards).
pub type SharedCallback = Arc<Mutex<dyn Callback>>;

/// Runs `f` on every callback in order (all of them, even after a `Stop`); `Stop` if any
/// asked for it.
pub(crate) fn run_all(
    callbacks: &[SharedCallback],
    mut f: impl FnMut(&mut dyn Callback) -> Result<Control>,
) -> Result<Control> {
    let mut control = Control::Continue;
    for cb in callbacks {
        let mut guard = cb.lock().map_err(|_| {
            Error::Invalid(
                "fit: a callback's lock is poisoned (it panicked in an earlier call)".into(),
            )
        })?;
        if f(&mut *guard)? == Control::Stop {
            control = Control::Stop;
        }
    }
    Ok(control)
}

/// Whether a monitored quantity should go down or up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// `max` for names containing `acc` or ending in `auc`, `min` otherwise (Keras).
    #[default]
    Auto,
    /// Lower is better (losses).
    Min,
    /// Higher is better (accuracies).
    Max,
}

impl Mode {
    /// Whether higher is better for `monitor`.
    fn maximizes(self, monitor: &str) -> bool {
        match self {
            Mode::Min => false,
            Mode::Max => true,
            Mode::Auto => monitor.contains("acc") || monitor.ends_with("auc"),
        }
    }
}

fn warn_missing(who: &str, monitor: &str, logs: &Logs) {
    log::warn!(
        "{who}: the monitored `{monitor}` is not in the logs (available: {}); skipping",
        logs.keys().collect::<Vec<_>>().join(", ")
    );
}

fn compiled_optimizer(who: &str, model: &Model) -> Result<Arc<dyn super::Optimizer>> {
    model.optimizer().ok_or_else(|| {
        Error::Invalid(format!(
            "{who}: model `{}` has no optimizer; compile it first",
            model.name()
        ))
    })
}

// ---------------------------------------------------------------------------------------

/// Stops training when a monitored quantity stops improving
/// (`keras.callbacks.EarlyStopping`).
///
/// After each epoch: an improvement is `current < best - min_delta` (or `>` `best +
/// min_delta` for a maximized quantity); it resets the wait. Otherwise the wait grows,
/// and when it reaches `patience` (and the epoch is not the first) training stops and,
/// with `restore_best_weights`, the weights of the best epoch are put back (those of
/// the first epoch if none improved). With a `baseline`, improvements that do not beat
/// it do not reset the wait.
pub struct EarlyStopping {
    monitor: String,
    min_delta: f64,
    patience: usize,
    mode: Mode,
    baseline: Option<f64>,
    restore_best_weights: bool,
    start_from_epoch: usize,
    verbose: u8,
    wait: usize,
    best: f64,
    best_epoch: Option<usize>,
    stopped_epoch: Option<usize>,
    best_weights: Option<Vec<Tensor>>,
}

impl EarlyStopping {
    /// Monitors `monitor` (Keras' default is `val_loss`), patience 0, `min_delta` 0.
    pub fn new(monitor: &str) -> EarlyStopping {
        EarlyStopping {
            monitor: monitor.to_string(),
            min_delta: 0.0,
            patience: 0,
            mode: Mode::Auto,
            baseline: None,
            restore_best_weights: false,
            start_from_epoch: 0,
            verbose: 0,
            wait: 0,
            best: f64::INFINITY,
            best_epoch: None,
            stopped_epoch: None,
            best_weights: None,
        }
    }

    /// The smallest change that counts as an improvement (its absolute value is used).
    pub fn min_delta(mut self, d: f64) -> EarlyStopping {
        self.min_delta = d.abs();
        self
    }

    /// Epochs without improvement before stopping.
    pub fn patience(mut self, p: usize) -> EarlyStopping {
        self.patience = p;
        self
    }

    /// Whether the quantity should go down or up (default: from its name).
    pub fn mode(mut self, m: Mode) -> EarlyStopping {
        self.mode = m;
        self
    }

    /// A value the quantity must beat for an epoch to reset the wait.
    pub fn baseline(mut self, b: f64) -> EarlyStopping {
        self.baseline = Some(b);
        self
    }

    /// Puts back the best epoch's weights when stopping.
    pub fn restore_best_weights(mut self, on: bool) -> EarlyStopping {
        self.restore_best_weights = on;
        self
    }

    /// Epochs to wait before monitoring starts.
    pub fn start_from_epoch(mut self, e: usize) -> EarlyStopping {
        self.start_from_epoch = e;
        self
    }

    /// 1 prints `Epoch N: early stopping` at the end.
    pub fn verbose(mut self, v: u8) -> EarlyStopping {
        self.verbose = v;
        self
    }

    /// The epoch (0-based) after which training stopped, if it did.
    pub fn stopped_epoch(&self) -> Option<usize> {
        self.stopped_epoch
    }

    /// The best epoch (0-based) seen, if any value was monitored.
    pub fn best_epoch(&self) -> Option<usize> {
        self.best_epoch
    }

    /// The best monitored value (±∞ before any).
    pub fn best(&self) -> f64 {
        self.best
    }

    fn improves(&self, current: f64, reference: f64) -> bool {
        if self.mode.maximizes(&self.monitor) {
            current - self.min_delta > reference
        } else {
            current + self.min_delta < reference
        }
    }
}

impl Callback for EarlyStopping {
    fn on_train_begin(&mut self, _model: &Model) -> Result<()> {
        self.wait = 0;
        self.stopped_epoch = None;
        self.best_epoch = None;
        self.best_weights = None;
        self.best = if self.mode.maximizes(&self.monitor) {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        };
        Ok(())
    }

    fn on_epoch_end(&mut self, model: &Model, epoch: usize, logs: &mut Logs) -> Result<Control> {
        let Some(current) = logs.get(&self.monitor) else {
            warn_missing("EarlyStopping", &self.monitor, logs);
            return Ok(Control::Continue);
        };
        if epoch < self.start_from_epoch {
            return Ok(Control::Continue);
        }
        if self.restore_best_weights && self.best_weights.is_none() {
            // the first epoch's weights, in case none improves
            self.best_weights = Some(model.get_weights());
        }
        self.wait += 1;
        if self.improves(current, self.best) {
            self.best = current;
            self.best_epoch = Some(epoch);
            if self.restore_best_weights {
                self.best_weights = Some(model.get_weights());
            }
            if self.baseline.is_none_or(|b| self.improves(current, b)) {
                self.wait = 0;
                return Ok(Control::Continue);
            }
        }
        if self.wait >= self.patience && epoch > 0 {
            self.stopped_epoch = Some(epoch);
            if let Some(w) = self
                .best_weights
                .as_ref()
                .filter(|_| self.restore_best_weights)
            {
                model.set_weights(w)?;
            }
            return Ok(Control::Stop);
        }
        Ok(Control::Continue)
    }

    fn on_train_end(&mut self, _model: &Model, _logs: &Logs) -> Result<()> {
        if let (Some(e), true) = (self.stopped_epoch, self.verbose > 0) {
            println!("Epoch {}: early stopping", e + 1);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------

/// Saves the model (or its weights) after epochs (`keras.callbacks.ModelCheckpoint`).
///
/// The path is formatted per epoch: `{epoch}` is the 1-based epoch (`{epoch:02}` or
/// `{epoch:02d}` zero-pads), `{name}` or `{name:.4f}` a value of the logs
/// (`"ckpt-{epoch:02d}-{val_loss:.2f}"`); `{{` and `}}` are braces. A name not in the
/// logs is an `Err`.
///
/// Whole models go through [`Model::save`] (a directory, replaced as a whole), weights
/// through [`Model::save_weights`] (one safetensors file); both write to a temporary
/// path and rename it into place, so the path always holds a complete save. With
/// `save_best_only` only epochs whose monitored value improves are saved.
pub struct ModelCheckpoint {
    filepath: String,
    monitor: String,
    mode: Mode,
    save_best_only: bool,
    save_weights_only: bool,
    verbose: u8,
    best: Option<f64>,
    initial_value_threshold: Option<f64>,
    saved: Vec<PathBuf>,
}

impl ModelCheckpoint {
    /// Saves to `filepath` after every epoch (monitor `val_loss`, used with
    /// `save_best_only`).
    pub fn new(filepath: impl Into<String>) -> ModelCheckpoint {
        ModelCheckpoint {
            filepath: filepath.into(),
            monitor: "val_loss".into(),
            mode: Mode::Auto,
            save_best_only: false,
            save_weights_only: false,
            verbose: 0,
            best: None,
            initial_value_threshold: None,
            saved: Vec::new(),
        }
    }

    /// The quantity `save_best_only` compares (default `val_loss`).
    pub fn monitor(mut self, m: &str) -> ModelCheckpoint {
        self.monitor = m.to_string();
        self
    }

    /// Whether the monitored quantity should go down or up (default: from its name).
    pub fn mode(mut self, m: Mode) -> ModelCheckpoint {
        self.mode = m;
        self
    }

    /// Saves only epochs that improve the monitored value.
    pub fn save_best_only(mut self, on: bool) -> ModelCheckpoint {
        self.save_best_only = on;
        self
    }

    /// Saves the weights only ([`Model::save_weights`]) instead of the whole model.
    pub fn save_weights_only(mut self, on: bool) -> ModelCheckpoint {
        self.save_weights_only = on;
        self
    }

    /// A value the first saved epoch must beat (with `save_best_only`).
    pub fn initial_value_threshold(mut self, v: f64) -> ModelCheckpoint {
        self.initial_value_threshold = Some(v);
        self
    }

    /// 1 prints a line per save.
    pub fn verbose(mut self, v: u8) -> ModelCheckpoint {
        self.verbose = v;
        self
    }

    /// The paths saved so far, in order.
    pub fn saved(&self) -> &[PathBuf] {
        &self.saved
    }

    /// The best monitored value saved so far.
    pub fn best(&self) -> Option<f64> {
        self.best
    }

    fn save(&mut self, model: &Model, path: PathBuf) -> Result<()> {
        if crate::distributed::rank() != 0 {
            return Ok(()); // in a distributed run, rank 0 writes the checkpoints
        }
        if self.save_weights_only {
            model.save_weights(&path)?;
        } else {
            model.save(&path)?;
        }
        self.saved.push(path);
        Ok(())
    }
}

/// `filepath` with `{epoch}` and `{log_name}` fields replaced (see [`ModelCheckpoint`]).
fn format_filepath(filepath: &str, epoch: usize, logs: &Logs) -> Result<String> {
    let bad =
        |msg: String| Error::Invalid(format!("ModelCheckpoint: filepath `{filepath}`: {msg}"));
    let mut out = String::new();
    let mut chars = filepath.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '}' => return Err(bad("a `}` without its `{` (write `}}` for a brace)".into())),
            '{' => {
                let mut field = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => field.push(c),
                        None => return Err(bad("a `{` without its `}`".into())),
                    }
                }
                let (name, spec) = field.split_once(':').unwrap_or((&field, ""));
                if name == "epoch" {
                    let digits = spec.strip_suffix('d').unwrap_or(spec);
                    let width: usize = if digits.is_empty() {
                        0
                    } else {
                        digits.parse().map_err(|_| {
                            bad(format!(
                                "bad format `{spec}` for `epoch` (use `{{epoch:02d}}`)"
                            ))
                        })?
                    };
                    out.push_str(&format!("{:0width$}", epoch + 1));
                } else {
                    let v = logs.get(name).ok_or_else(|| {
                        bad(format!(
                            "`{name}` is not in the logs (available: epoch, {})",
                            logs.keys().collect::<Vec<_>>().join(", ")
                        ))
                    })?;
                    match spec {
                        "" => out.push_str(&v.to_string()),
                        _ => {
                            let prec = spec
                                .strip_prefix('.')
                                .and_then(|p| p.strip_suffix('f'))
                                .and_then(|p| p.parse::<usize>().ok())
                                .ok_or_else(|| {
                                    bad(format!(
                                        "bad format `{spec}` for `{name}` (use `{{{name}:.4f}}`)"
                                    ))
                                })?;
                            out.push_str(&format!("{v:.prec$}"));
                        }
                    }
                }
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

impl Callback for ModelCheckpoint {
    fn on_train_begin(&mut self, _model: &Model) -> Result<()> {
        // `best` carries over to later `fit` calls with the same callback (as in Keras);
        // the first starts from `initial_value_threshold`
        if self.best.is_none() {
            self.best = self.initial_value_threshold;
        }
        Ok(())
    }

    fn on_epoch_end(&mut self, model: &Model, epoch: usize, logs: &mut Logs) -> Result<Control> {
        let path = PathBuf::from(format_filepath(&self.filepath, epoch, logs)?);
        if !self.save_best_only {
            self.save(model, path)?;
            return Ok(Control::Continue);
        }
        let Some(current) = logs.get(&self.monitor) else {
            warn_missing("ModelCheckpoint", &self.monitor, logs);
            return Ok(Control::Continue);
        };
        let better = match self.best {
            None => !current.is_nan(),
            Some(best) if self.mode.maximizes(&self.monitor) => current > best,
            Some(best) => current < best,
        };
        if better {
            if self.verbose > 0 {
                println!(
                    "Epoch {}: {} improved from {} to {current:.5}, saving model to {}",
                    epoch + 1,
                    self.monitor,
                    self.best.map_or("inf".to_string(), |b| format!("{b:.5}")),
                    path.display()
                );
            }
            self.best = Some(current);
            self.save(model, path)?;
        } else if self.verbose > 0 {
            println!(
                "Epoch {}: {} did not improve from {:.5}",
                epoch + 1,
                self.monitor,
                self.best.unwrap_or(f64::NAN)
            );
        }
        Ok(Control::Continue)
    }
}

// ---------------------------------------------------------------------------------------

/// Streams each epoch's logs to a CSV file (`keras.callbacks.CSVLogger`).
///
/// The header is `epoch` then the log names sorted, fixed at the first epoch; each row
/// is the 0-based epoch and the values (Rust's shortest round-trip form), `NA` for a name
/// missing from that epoch. Rows are flushed as they are written. With `append` the
/// file is extended and the header written only if the file was empty.
pub struct CSVLogger {
    path: PathBuf,
    separator: char,
    append: bool,
    keys: Option<Vec<String>>,
    write_header: bool,
    file: Option<BufWriter<File>>,
}

impl CSVLogger {
    /// Logs to `path` with `,` separators, replacing the file.
    pub fn new(path: impl AsRef<Path>) -> CSVLogger {
        CSVLogger {
            path: path.as_ref().to_path_buf(),
            separator: ',',
            append: false,
            keys: None,
            write_header: true,
            file: None,
        }
    }

    /// The field separator (default `,`).
    pub fn separator(mut self, sep: char) -> CSVLogger {
        self.separator = sep;
        self
    }

    /// Appends to an existing file instead of replacing it.
    pub fn append(mut self, on: bool) -> CSVLogger {
        self.append = on;
        self
    }

    /// A field, quoted when it holds the separator, a quote or a line break.
    fn field(&self, s: &str) -> String {
        if s.contains([self.separator, '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    }

    fn write_row(&mut self, fields: &[String]) -> Result<()> {
        let sep = self.separator.to_string();
        let line = fields
            .iter()
            .map(|f| self.field(f))
            .collect::<Vec<_>>()
            .join(&sep);
        let path = self.path.clone();
        let file = self.file.as_mut().ok_or_else(|| {
            Error::Invalid(format!(
                "CSVLogger({}): on_epoch_end before on_train_begin",
                path.display()
            ))
        })?;
        writeln!(file, "{line}")
            .and_then(|_| file.flush())
            .map_err(|e| Error::io(&path, e))
    }
}

impl Callback for CSVLogger {
    fn on_train_begin(&mut self, _model: &Model) -> Result<()> {
        if crate::distributed::rank() != 0 {
            self.file = None; // in a distributed run, rank 0 writes the log
            return Ok(());
        }
        let file = if self.append {
            self.write_header = std::fs::metadata(&self.path).map_or(true, |m| m.len() == 0);
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
        } else {
            self.write_header = true;
            File::create(&self.path)
        }
        .map_err(|e| Error::io(&self.path, e))?;
        self.file = Some(BufWriter::new(file));
        self.keys = None;
        Ok(())
    }

    fn on_epoch_end(&mut self, _model: &Model, epoch: usize, logs: &mut Logs) -> Result<Control> {
        if crate::distributed::rank() != 0 {
            return Ok(Control::Continue);
        }
        let keys = match &self.keys {
            Some(k) => k.clone(),
            None => {
                let mut k: Vec<String> = logs.keys().map(str::to_string).collect();
                k.sort();
                self.keys = Some(k.clone());
                if self.write_header {
                    let header: Vec<String> = std::iter::once("epoch".to_string())
                        .chain(k.iter().cloned())
                        .collect();
                    self.write_row(&header)?;
                }
                k
            }
        };
        let row: Vec<String> = std::iter::once(epoch.to_string())
            .chain(
                keys.iter()
                    .map(|k| logs.get(k).map_or("NA".to_string(), |v| v.to_string())),
            )
            .collect();
        self.write_row(&row)?;
        Ok(Control::Continue)
    }

    fn on_train_end(&mut self, _model: &Model, _logs: &Logs) -> Result<()> {
        if let Some(mut f) = self.file.take() {
            f.flush().map_err(|e| Error::io(&self.path, e))?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------

/// Sets the optimizer's learning rate before each epoch from `schedule(epoch, lr)`
/// (`keras.callbacks.LearningRateScheduler`), and records it as `learning_rate` in the
/// logs.
///
/// The optimizer needs a constant learning rate (a schedule object cannot be set: an
/// `Err`, as in Keras). A non-finite result is an `Err`.
pub struct LearningRateScheduler {
    schedule: Box<dyn FnMut(usize, f64) -> f64 + Send>,
    verbose: u8,
}

impl LearningRateScheduler {
    /// `schedule(epoch, current_lr) -> new_lr`, with a 0-based epoch.
    pub fn new(schedule: impl FnMut(usize, f64) -> f64 + Send + 'static) -> LearningRateScheduler {
        LearningRateScheduler {
            schedule: Box::new(schedule),
            verbose: 0,
        }
    }

    /// 1 prints the rate set at each epoch.
    pub fn verbose(mut self, v: u8) -> LearningRateScheduler {
        self.verbose = v;
        self
    }
}

impl Callback for LearningRateScheduler {
    fn on_epoch_begin(&mut self, model: &Model, epoch: usize) -> Result<()> {
        let opt = compiled_optimizer("LearningRateScheduler", model)?;
        let lr = (self.schedule)(epoch, opt.current_learning_rate());
        if !lr.is_finite() {
            return Err(Error::Invalid(format!(
                "LearningRateScheduler: the schedule returned {lr} for epoch {epoch}; it must be a finite number"
            )));
        }
        opt.set_learning_rate(lr)?;
        if self.verbose > 0 {
            println!(
                "Epoch {}: LearningRateScheduler setting learning rate to {lr}.",
                epoch + 1
            );
        }
        Ok(())
    }

    fn on_epoch_end(&mut self, model: &Model, _epoch: usize, logs: &mut Logs) -> Result<Control> {
        let opt = compiled_optimizer("LearningRateScheduler", model)?;
        logs.insert("learning_rate", opt.current_learning_rate());
        Ok(Control::Continue)
    }
}

// ---------------------------------------------------------------------------------------

/// Multiplies the learning rate by `factor` when a monitored quantity has stopped
/// improving for `patience` epochs (`keras.callbacks.ReduceLROnPlateau`).
///
/// After each epoch (recording the current rate as `learning_rate` in the logs): an
/// improvement is `current < best - min_delta` (`>` `best + min_delta` when maximized)
/// and resets the wait; otherwise, outside a cooldown, the wait grows and at `patience`
/// the rate becomes `max(lr · factor, min_lr)` (if it is above `min_lr`), the wait resets
/// and a cooldown of `cooldown` epochs starts. Defaults as Keras: monitor `val_loss`,
/// factor 0.1, patience 10, min_delta 1e-4, cooldown 0, min_lr 0.
pub struct ReduceLROnPlateau {
    monitor: String,
    factor: f64,
    patience: usize,
    mode: Mode,
    min_delta: f64,
    cooldown: usize,
    min_lr: f64,
    verbose: u8,
    wait: usize,
    cooldown_counter: usize,
    best: f64,
}

impl ReduceLROnPlateau {
    /// Monitors `monitor` with Keras' defaults otherwise.
    pub fn new(monitor: &str) -> ReduceLROnPlateau {
        ReduceLROnPlateau {
            monitor: monitor.to_string(),
            factor: 0.1,
            patience: 10,
            mode: Mode::Auto,
            min_delta: 1e-4,
            cooldown: 0,
            min_lr: 0.0,
            verbose: 0,
            wait: 0,
            cooldown_counter: 0,
            best: f64::INFINITY,
        }
    }

    /// The factor the rate is multiplied by (in `(0, 1)`; checked when training starts).
    pub fn factor(mut self, f: f64) -> ReduceLROnPlateau {
        self.factor = f;
        self
    }

    /// Epochs without improvement before reducing.
    pub fn patience(mut self, p: usize) -> ReduceLROnPlateau {
        self.patience = p;
        self
    }

    /// Whether the quantity should go down or up (default: from its name).
    pub fn mode(mut self, m: Mode) -> ReduceLROnPlateau {
        self.mode = m;
        self
    }

    /// The smallest change that counts as an improvement.
    pub fn min_delta(mut self, d: f64) -> ReduceLROnPlateau {
        self.min_delta = d.abs();
        self
    }

    /// Epochs to wait after a reduction before counting again.
    pub fn cooldown(mut self, c: usize) -> ReduceLROnPlateau {
        self.cooldown = c;
        self
    }

    /// The lowest rate.
    pub fn min_lr(mut self, lr: f64) -> ReduceLROnPlateau {
        self.min_lr = lr;
        self
    }

    /// 1 prints each reduction.
    pub fn verbose(mut self, v: u8) -> ReduceLROnPlateau {
        self.verbose = v;
        self
    }

    fn improves(&self, current: f64) -> bool {
        if self.mode.maximizes(&self.monitor) {
            current > self.best + self.min_delta
        } else {
            current < self.best - self.min_delta
        }
    }
}

impl Callback for ReduceLROnPlateau {
    fn on_train_begin(&mut self, _model: &Model) -> Result<()> {
        if !(self.factor > 0.0 && self.factor < 1.0) {
            return Err(Error::Invalid(format!(
                "ReduceLROnPlateau: factor must be in (0, 1), got {}",
                self.factor
            )));
        }
        self.wait = 0;
        self.cooldown_counter = 0;
        self.best = if self.mode.maximizes(&self.monitor) {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        };
        Ok(())
    }

    fn on_epoch_end(&mut self, model: &Model, epoch: usize, logs: &mut Logs) -> Result<Control> {
        let opt = compiled_optimizer("ReduceLROnPlateau", model)?;
        let lr = opt.current_learning_rate();
        logs.insert("learning_rate", lr);
        let Some(current) = logs.get(&self.monitor) else {
            warn_missing("ReduceLROnPlateau", &self.monitor, logs);
            return Ok(Control::Continue);
        };
        if self.cooldown_counter > 0 {
            self.cooldown_counter -= 1;
            self.wait = 0;
        }
        if self.improves(current) {
            self.best = current;
            self.wait = 0;
        } else if self.cooldown_counter == 0 {
            self.wait += 1;
            if self.wait >= self.patience && lr > self.min_lr {
                let new_lr = (lr * self.factor).max(self.min_lr);
                opt.set_learning_rate(new_lr)?;
                if self.verbose > 0 {
                    println!(
                        "Epoch {}: ReduceLROnPlateau reducing learning rate to {new_lr}.",
                        epoch + 1
                    );
                }
                self.cooldown_counter = self.cooldown;
                self.wait = 0;
            }
        }
        Ok(Control::Continue)
    }
}
