//! [`Progbar`]: Keras' progress bar for training loops, the one `fit` draws, usable from
//! custom loops.
//!
//! While an epoch runs, an indicatif bar on stderr shows `step/steps`, the elapsed time
//! and the latest values (drawn only when stderr is a terminal, and only at verbosity
//! 1). When the epoch ends, one line goes to stdout at verbosity 1 and 2:
//!
//! ```text
//! Epoch 3/10 - 1.2s - loss: 0.2314 - accuracy: 0.9312 - val_loss: 0.2567
//! ```
//!
//! Values are shown as given (Keras' `stateful_metrics`): pass running means, such as
//! a [`Mean`](super::Mean)'s `result()`.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::time::Instant;

/// `name: value` pairs joined by ` - `, values with 4 decimals (`loss: 0.2314 - acc: 0.9`).
pub(crate) fn logs_line<'a>(logs: impl IntoIterator<Item = (&'a str, f64)>) -> String {
    logs.into_iter()
        .map(|(k, v)| format!("{k}: {v:.4}"))
        .collect::<Vec<_>>()
        .join(" - ")
}

/// The end-of-epoch line of `fit` and [`Progbar::finish`]:
/// `Epoch 3/10 - 1.2s - loss: 0.2314 - accuracy: 0.9312` (`epoch` is 0-based, as the
/// callbacks see it; the line counts from 1).
///
/// ```
/// use tapeflow::nn::epoch_line;
/// let line = epoch_line(2, 10, 1.23, &[("loss", 0.23141), ("accuracy", 0.93119)]);
/// assert_eq!(line, "Epoch 3/10 - 1.2s - loss: 0.2314 - accuracy: 0.9312");
/// ```
pub fn epoch_line(epoch: usize, epochs: usize, seconds: f64, logs: &[(&str, f64)]) -> String {
    let mut line = format!("Epoch {}/{epochs} - {seconds:.1}s", epoch + 1);
    if !logs.is_empty() {
        line.push_str(" - ");
        line.push_str(&logs_line(logs.iter().copied()));
    }
    line
}

/// A progress bar for one epoch of a training loop (`keras.utils.Progbar`).
///
/// ```
/// use tapeflow::nn::Progbar;
/// let steps = 3;
/// for epoch in 0..2 {
///     let mut bar = Progbar::new(Some(steps)).epoch(epoch, 2).verbose(0);
///     for step in 0..steps {
///         // ... one train step ...
///         bar.update(step + 1, &[("loss", 0.5)]);
///     }
///     let line = bar.finish(&[("loss", 0.5), ("accuracy", 0.75)]);
///     assert!(line.starts_with(&format!("Epoch {}/2 - ", epoch + 1)));
///     assert!(line.ends_with("s - loss: 0.5000 - accuracy: 0.7500"));
/// }
/// ```
pub struct Progbar {
    epoch: usize,
    epochs: usize,
    verbose: u8,
    started: Option<Instant>,
    target: Option<usize>,
    bar: Option<ProgressBar>,
}

impl Progbar {
    /// A bar for `target` steps (`None` when unknown), verbosity 1, epoch 1 of 1.
    pub fn new(target: Option<usize>) -> Progbar {
        Progbar {
            epoch: 0,
            epochs: 1,
            verbose: 1,
            started: None,
            target,
            bar: None,
        }
    }

    /// Which epoch this is (0-based) out of `epochs`, for the `Epoch e/E` header and line.
    pub fn epoch(mut self, epoch: usize, epochs: usize) -> Progbar {
        self.epoch = epoch;
        self.epochs = epochs;
        self
    }

    /// 0 silent, 1 bar and end-of-epoch line (default), 2 the line only.
    pub fn verbose(mut self, v: u8) -> Progbar {
        self.verbose = v;
        self
    }

    /// Starts the clock and, at verbosity 1, shows the `Epoch e/E` header above the bar
    /// (the first [`Progbar::update`] does this if not called).
    pub fn start(&mut self) {
        if self.started.is_some() {
            return;
        }
        self.started = Some(Instant::now());
        if self.verbose == 1 {
            let b = ProgressBar::with_draw_target(
                self.target.map(|t| t as u64),
                ProgressDrawTarget::stderr(),
            );
            if let Ok(style) =
                ProgressStyle::with_template("{pos}/{len} [{bar:30}] {elapsed_precise} {msg}")
            {
                b.set_style(style.progress_chars("=> "));
            }
            b.println(format!("Epoch {}/{}", self.epoch + 1, self.epochs));
            self.bar = Some(b);
        }
    }

    /// Moves the bar to step `current` (1-based: the number of steps done) and shows
    /// `values`.
    pub fn update(&mut self, current: usize, values: &[(&str, f64)]) {
        self.start();
        if let Some(b) = &self.bar {
            b.set_position(current as u64);
            b.set_message(logs_line(values.iter().copied()));
        }
    }

    /// Ends the epoch: clears the bar, prints the [`epoch_line`] at verbosity > 0 and
    /// returns it.
    pub fn finish(&mut self, logs: &[(&str, f64)]) -> String {
        self.start();
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        let secs = self.started.map_or(0.0, |t| t.elapsed().as_secs_f64());
        let line = epoch_line(self.epoch, self.epochs, secs, logs);
        if self.verbose > 0 {
            println!("{line}");
        }
        line
    }
}
