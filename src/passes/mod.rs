//! Graph optimization passes and the pipeline that runs them.
//!
//! Each pass is a function `&mut Graph -> Result<()>` in its own file, named by what it
//! does. The pipeline is a flat list, [`PIPELINE`]; [`PassConfig`] turns any pass off by
//! name. Its first [`CLEANUP_PASSES`] entries (folding, CSE, simplification, dead-node
//! elimination) feed each other — a fold exposes an identity, an identity exposes a
//! duplicate — so they repeat as a group until a round leaves the graph's text
//! unchanged, at most [`CLEANUP_ROUNDS`] times; the rest run once. After every pass the
//! verifier runs in tests and debug builds. Every pass is idempotent, and so is the
//! pipeline.
//!
//! Memory planning ([`crate::exec::plan_memory`]) is not a graph rewrite: `exec::Plan` runs it on the
//! final graph's execution order.

mod cse;
mod dce;
mod fold_constants;
mod fold_transposes;
mod fuse;
mod rewrite;
mod simplify;

pub use cse::eliminate_common_subexpressions;
pub use dce::eliminate_dead_nodes;
pub use fold_constants::{fold_constants, FOLD_MAX_ELEMS};
pub use fold_transposes::fold_transposes_into_matmul;
pub use fuse::{fuse_elementwise, fuse_elementwise_min};
pub use simplify::{simplify, simplify_counting, RuleFn, MAX_SWEEPS, RULES};

use crate::error::Result;
use crate::ir::{print, verify, Graph};
use std::time::{Duration, Instant};

/// A pass: rewrites the graph in place.
pub type PassFn = fn(&mut Graph) -> Result<()>;

/// The pipeline, in order: (name, pass).
pub const PIPELINE: &[(&str, PassFn)] = &[
    ("fold_constants", fold_constants),
    (
        "eliminate_common_subexpressions",
        eliminate_common_subexpressions,
    ),
    ("simplify", simplify),
    ("eliminate_dead_nodes", eliminate_dead_nodes),
    ("fold_transposes_into_matmul", fold_transposes_into_matmul),
    ("fuse_elementwise", fuse_elementwise),
];

/// How many passes at the head of [`PIPELINE`] repeat as a group.
pub const CLEANUP_PASSES: usize = 4;

/// Most rounds of the cleanup group.
pub const CLEANUP_ROUNDS: usize = 4;

/// Which passes run.
#[derive(Clone, Debug, Default)]
pub struct PassConfig {
    /// Names of passes to skip.
    pub disabled: Vec<String>,
    /// Skip every pass.
    pub none: bool,
    /// Fuse only regions whose longest loop has at least this many elements (0: all).
    pub min_fused_elems: usize,
}

/// The fusion threshold of [`PassConfig::tuned`]: below it, the separate vectorized
/// kernels beat the fused kernel on the 2-core reference machine (the MLP 784-64-64-10
/// step at batch 64 ran ≈600 µs fused vs ≈300 µs unfused; a 1e6-element second
/// derivative ran ≈19 ms fused vs ≈35 ms unfused).
pub const TUNED_MIN_FUSED_ELEMS: usize = 1 << 18;

impl PassConfig {
    /// No optimization at all.
    pub fn unoptimized() -> PassConfig {
        PassConfig {
            none: true,
            ..PassConfig::default()
        }
    }

    /// What [`crate::function`] uses: every pass, with fusion limited to loops long
    /// enough for it to pay ([`TUNED_MIN_FUSED_ELEMS`]). `PassConfig::default()` fuses
    /// every region (what the filetests and property tests pin).
    pub fn tuned() -> PassConfig {
        PassConfig {
            min_fused_elems: TUNED_MIN_FUSED_ELEMS,
            ..PassConfig::default()
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
            "{:<32} {:>6} -> {:<6} nodes  {:>8.3} ms",
            self.name,
            self.before,
            self.after,
            self.time.as_secs_f64() * 1e3
        )
    }
}

/// Runs one pass, timing it and verifying its result in debug builds.
pub fn run_pass(
    g: &mut Graph,
    name: &'static str,
    pass: impl Fn(&mut Graph) -> Result<()>,
    stats: &mut Vec<PassStat>,
) -> Result<()> {
    let before = g.live_len();
    let t = Instant::now();
    pass(g)?;
    let time = t.elapsed();
    if cfg!(debug_assertions) {
        verify(g).map_err(|e| crate::error::Error::Graph(format!("after pass {name}: {e}")))?;
    }
    stats.push(PassStat {
        name,
        before,
        after: g.live_len(),
        time,
    });
    Ok(())
}

/// Runs the enabled passes of the pipeline on a copy of `g`.
pub fn run_pipeline(g: &Graph, config: &PassConfig) -> Result<(Graph, Vec<PassStat>)> {
    let mut g = g.clone();
    let mut stats = Vec::new();
    let (cleanup, rest) = PIPELINE.split_at(CLEANUP_PASSES);
    for _ in 0..CLEANUP_ROUNDS {
        let before = print(&g, false);
        for &(name, pass) in cleanup {
            if config.enabled(name) {
                run_pass(&mut g, name, pass, &mut stats)?;
            }
        }
        if print(&g, false) == before {
            break;
        }
    }
    for &(name, pass) in rest {
        if !config.enabled(name) {
            continue;
        }
        if name == "fuse_elementwise" && config.min_fused_elems > 0 {
            // the one pass with a setting: the same pass with its size threshold
            let min = config.min_fused_elems;
            run_pass(
                &mut g,
                name,
                move |g| fuse_elementwise_min(g, min),
                &mut stats,
            )?;
        } else {
            run_pass(&mut g, name, pass, &mut stats)?;
        }
    }
    Ok((g, stats))
}
