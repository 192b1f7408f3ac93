//! [`History`]: the per-epoch loss and metric values `fit` returns (Keras'
//! `history.history`), and [`History::plot`], which draws them as an SVG.
//!
//! A history is a map from names to one value per epoch that keeps the order in which
//! names first appeared (`loss`, metrics, `val_loss`, `val_<metric>`, then what callbacks
//! add, such as `learning_rate`), so printing and plotting are deterministic.
//!
//! Plotting lives behind the cargo feature `plot` (on by default, through `plotters`'
//! SVG backend): one panel per quantity, the training curve and its `val_` curve
//! together. Without the feature [`History::plot`] returns an `Err` saying so.

use crate::{Error, Result};
use std::path::Path;

/// One panel of [`History::plot`]: the quantity, its training and validation values.
#[cfg(feature = "plot")]
type Panel<'a> = (&'a str, Option<&'a [f64]>, Option<&'a [f64]>);

/// Per-epoch values of the loss and metrics (`History.history`), in insertion order.
///
/// ```
/// use tapeflow::nn::History;
/// let mut h = History::default();
/// h.append("loss", 0.9);
/// h.append("loss", 0.5);
/// h.append("val_loss", 0.7);
/// assert_eq!(h.get("loss"), Some(&[0.9, 0.5][..]));
/// assert_eq!(h["val_loss"], [0.7]);
/// assert_eq!(h.keys().collect::<Vec<_>>(), ["loss", "val_loss"]);
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    /// `(name, one value per epoch)`: `loss`, metrics, then `val_loss`, `val_<metric>`.
    pub history: Vec<(String, Vec<f64>)>,
}

impl History {
    /// The values of `name` per epoch (`history.history["loss"]`).
    pub fn get(&self, name: &str) -> Option<&[f64]> {
        self.history
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Whether `name` was recorded.
    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The names, in the order they first appeared.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.history.iter().map(|(n, _)| n.as_str())
    }

    /// `(name, values)` pairs, in the order the names first appeared.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[f64])> {
        self.history.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// Number of names.
    pub fn len(&self) -> usize {
        self.history.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.history.is_empty()
    }

    /// Appends one epoch's value of `name` (for custom training loops).
    pub fn append(&mut self, name: &str, v: f64) {
        match self.history.iter_mut().find(|(n, _)| n == name) {
            Some((_, vals)) => vals.push(v),
            None => self.history.push((name.to_string(), vec![v])),
        }
    }

    /// Writes the curves as an SVG image at `path`: a panel per quantity (`loss`,
    /// `accuracy`, ...) with its training curve and, when recorded, its `val_` curve,
    /// against the epoch (1-based).
    ///
    /// Returns `Err` when nothing was recorded, on an I/O or drawing failure, or when
    /// tapeflow was built without the `plot` feature.
    pub fn plot(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        if self.is_empty() {
            return Err(Error::Invalid(format!(
                "History::plot({}): the history is empty",
                path.display()
            )));
        }
        draw(self, path)
    }

    /// The panels to draw: `(quantity, training values, validation values)`; a `val_`
    /// series without its training series gets a panel of its own.
    #[cfg(feature = "plot")]
    fn panels(&self) -> Vec<Panel<'_>> {
        let mut out = Vec::new();
        for (name, values) in self.iter() {
            match name.strip_prefix("val_") {
                Some(base) if self.contains_key(base) => {}
                Some(base) => out.push((base, None, Some(values))),
                None => out.push((name, Some(values), self.get(&format!("val_{name}")))),
            }
        }
        out
    }
}

impl std::ops::Index<&str> for History {
    type Output = [f64];

    /// `history["loss"]`.
    ///
    /// # Panics
    /// If `name` was not recorded (Python's `KeyError`); use [`History::get`] to check.
    fn index(&self, name: &str) -> &[f64] {
        match self.get(name) {
            Some(v) => v,
            None => panic!(
                "History has no `{name}` (it has: {})",
                self.keys().collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

impl<'a> IntoIterator for &'a History {
    type Item = &'a (String, Vec<f64>);
    type IntoIter = std::slice::Iter<'a, (String, Vec<f64>)>;
    fn into_iter(self) -> Self::IntoIter {
        self.history.iter()
    }
}

#[cfg(not(feature = "plot"))]
fn draw(_h: &History, path: &Path) -> Result<()> {
    Err(Error::Invalid(format!(
        "History::plot({}): tapeflow was built without the `plot` feature (enable it in Cargo.toml: features = [\"plot\"])",
        path.display()
    )))
}

#[cfg(feature = "plot")]
fn draw(h: &History, path: &Path) -> Result<()> {
    use plotters::prelude::*;

    type DrawResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

    fn panel(
        area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
        name: &str,
        train: Option<&[f64]>,
        val: Option<&[f64]>,
    ) -> DrawResult<()> {
        let all = || train.into_iter().chain(val).flatten().copied();
        let finite = || all().filter(|v| v.is_finite());
        let lo = finite().fold(f64::INFINITY, f64::min);
        let hi = finite().fold(f64::NEG_INFINITY, f64::max);
        let (lo, hi) = if lo <= hi { (lo, hi) } else { (0.0, 1.0) };
        let pad = ((hi - lo) * 0.1).max(1e-3);
        let n = train.map_or(0, |t| t.len()).max(val.map_or(0, |v| v.len())) as f64;
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{name} per epoch"), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0.5..n + 0.5, (lo - pad)..(hi + pad))?;
        chart.configure_mesh().x_desc("epoch").y_desc(name).draw()?;
        let points = |v: &[f64]| -> Vec<(f64, f64)> {
            v.iter()
                .enumerate()
                .filter(|(_, y)| y.is_finite())
                .map(|(i, y)| ((i + 1) as f64, *y))
                .collect()
        };
        let series = [
            (train, name.to_string(), BLUE),
            (val, format!("val_{name}"), RED),
        ];
        for (values, label, color) in series {
            if let Some(v) = values {
                chart
                    .draw_series(LineSeries::new(points(v), &color))?
                    .label(label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    }

    let panels = h.panels();
    let width = 480u32;
    let draw_all = || -> DrawResult<()> {
        let cols = u32::try_from(panels.len()).unwrap_or(u32::MAX);
        let root = SVGBackend::new(path, (width.saturating_mul(cols), 400)).into_drawing_area();
        root.fill(&WHITE)?;
        let areas = root.split_evenly((1, panels.len()));
        for ((name, train, val), area) in panels.iter().zip(&areas) {
            panel(area, name, *train, *val)?;
        }
        root.present()?;
        Ok(())
    };
    draw_all().map_err(|e| Error::Io {
        path: path.display().to_string(),
        msg: format!("History::plot: {e}"),
    })
}
