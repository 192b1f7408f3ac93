//! Graph optimization passes and the pipeline that runs them.
//!
//! Each pass is a function `&mut Graph -> Result<()>` in its own file, named by what it
//! does. The pipeline is a flat list; [`PassConfig`] turns any pass off by name. After
//! every pass, the verifier runs in tests and debug builds.

mod dce;

pub use dce::eliminate_dead_nodes;

use crate::error::Result;
use crate::ir::{verify, Graph};
use std::time::{Duration, Instant};

/// A pass: rewrites the graph in place.
pub type PassFn = fn(&mut Graph) -> Result<()>;

/// The pipeline, in order: (name, pass).
pub const PIPELINE: &[(&str, PassFn)] = &[("eliminate_dead_nodes", eliminate_dead_nodes)];

/// Which passes run.
#[derive(Clone, Debug, Default)]
pub struct PassConfig {
    /// Names of passes to skip.
    pub disabled: Vec<String>,
    /// Skip every pass.
    pub none: bool,
}

impl PassConfig {
    /// No optimization at all.
    pub fn unoptimized() -> PassConfig {
        PassConfig {
            disabled: Vec::new(),
            none: true,
        }
    }

    /// The default pipeline without the named pass.
    pub fn without(mut self, pass: &str) -> PassConfig {
        self.disabled.push(pass.to_string());
        self
    }

    fn enabled(&self, name: &str) -> bool {
        !self.none && !self.disabled.iter().any(|d| d == name)
    }
}

/// What one pass did.
#[derive(Clone, Debug)]
pub struct PassStat {
    /// The pass.
    pub name: &'static str,
    /// Live nodes before.
    pub before: usize,
    /// Live nodes after.
    pub after: usize,
    /// Wall time.
    pub time: Duration,
}

impl std::fmt::Display for PassStat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<24} {:>6} -> {:<6} nodes  {:>8.3} ms",
            self.name,
            self.before,
            self.after,
            self.time.as_secs_f64() * 1e3
        )
    }
}

/// Runs the enabled passes of the pipeline on a copy of `g`.
pub fn run_pipeline(g: &Graph, config: &PassConfig) -> Result<(Graph, Vec<PassStat>)> {
    let mut g = g.clone();
    let mut stats = Vec::new();
    for &(name, pass) in PIPELINE {
        if !config.enabled(name) {
            continue;
        }
        let before = g.live_len();
        let t = Instant::now();
        pass(&mut g)?;
        let time = t.elapsed();
        if cfg!(debug_assertions) {
            verify(&g).map_err(|e| crate::Error::Graph(format!("after pass {name}: {e}")))?;
        }
        stats.push(PassStat {
            name,
            before,
            after: g.live_len(),
            time,
        });
    }
    Ok((g, stats))
}
