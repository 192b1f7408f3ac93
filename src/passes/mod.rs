//! Graph optimization passes and the pipeline that runs them.
//!
//! Each pass is a function `&mut Graph -> Result<bool>` in its own file, named by what
//! it does; it returns whether it changed the graph. The pipeline is a flat list,
//! [`PIPELINE`], of passes that also see the [`PassConfig`]; the config turns any pass
//! off by name. Its first [`CLEANUP_PASSES`] entries (folding, CSE, simplification,
//! dead-node elimination) feed each other — a fold exposes an identity, an identity
//! exposes a duplicate — so they repeat as a group until a round changes nothing, at
//! most [`CLEANUP_ROUNDS`] times; the rest run once. After every pass the
//! verifier runs in tests and debug builds. Every pass is idempotent, and so is the
//! pipeline.
//!
//! Memory planning ([`MemoryPlan`](crate::exec::MemoryPlan)) is not a graph rewrite:
//! `exec::Plan` makes it for the final graph's execution order.

mod bucket_all_reduces;
mod cse;
mod dce;
mod fold_constants;
mod fold_transposes;
mod fuse;
mod regions;
mod rewrite;
mod simplify;
mod specialize;

pub use bucket_all_reduces::{bucket_all_reduces, DEFAULT_BUCKET_BYTES};
pub use cse::eliminate_common_subexpressions;
pub use dce::eliminate_dead_nodes;
pub use fold_constants::{fold_constants, FOLD_MAX_ELEMS};
pub use fold_transposes::fold_transposes_into_matmul;
pub use fuse::{
    fuse_elementwise, fuse_elementwise_min, MATMUL_REGION_MIN_ELEMS, SMALL_REGION_ELEMS,
};
pub use regions::{optimize_regions, ACCUMULATOR_MIN_MACS, PRETRANSPOSE_MIN_SIDE};
pub use simplify::{simplify, simplify_counting, RuleFn, MAX_SWEEPS, RULES};
pub use specialize::{bind_shape, show_bindings, specialize, Bindings};

use crate::error::Result;
use crate::ir::{verify, Graph};
use std::time::{Duration, Instant};

/// A pipeline pass: rewrites the graph in place under the pipeline's configuration and
/// returns whether it changed anything.
pub type PassFn = fn(&mut Graph, &PassConfig) -> Result<bool>;

/// The pipeline, in order: (name, pass).
pub const PIPELINE: &[(&str, PassFn)] = &[
    ("fold_constants", |g, _| fold_constants(g)),
    ("eliminate_common_subexpressions", |g, _| {
        eliminate_common_subexpressions(g)
    }),
    ("simplify", |g, _| simplify(g)),
    ("eliminate_dead_nodes", |g, _| eliminate_dead_nodes(g)),
    // inside bodies, and across their boundary: constant conds, unused results,
    // loop-invariant hoisting, then this whole pipeline on every body
    ("optimize_regions", optimize_regions),
    // tensor fusion of small all-reduces (Horovod's fusion buffer), with its bucket size
    ("bucket_all_reduces", |g, c| {
        bucket_all_reduces(g, c.bucket_bytes())
    }),
    ("fold_transposes_into_matmul", |g, _| {
        fold_transposes_into_matmul(g)
    }),
    // the one pass with a setting: its size threshold (0 fuses every region)
    ("fuse_elementwise", |g, c| {
        fuse_elementwise_min(g, c.min_fused_elems)
    }),
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
    /// Fuse only regions whose longest loop has at least this many elements (and
    /// [`MATMUL_REGION_MIN_ELEMS`] with a matmul prologue), or at most
    /// [`SMALL_REGION_ELEMS`] (0: all).
    pub min_fused_elems: usize,
    /// The byte size of the buckets `bucket_all_reduces` packs small all-reduces into
    /// (`None`: [`DEFAULT_BUCKET_BYTES`]).
    pub all_reduce_bucket_bytes: Option<usize>,
}

/// The fusion threshold of [`PassConfig::tuned`]: the smallest loop the generated code
/// of `exec::codegen` takes by default (its `AUTO_MIN_ELEMS`; `tests/codegen.rs` checks
/// that the two agree).
/// Measured on the 2-core Zen 5 machine with a C compiler present: a bias + relu and an
/// Adam-like chain over `[32,11,11,64]` ran 358 µs as separate kernels and 121 µs fused,
/// over `[128,512]` 330 and 93 µs; over `[3,3,32,64]` (18K elements, then below the
/// generated code) 23 µs separate and 49 µs in the fused-loop interpreter. The tutorial CNN's step
/// (W2) ran ≈8% faster than with the earlier threshold of 2¹⁸ (which dated from a slower
/// fused-loop interpreter). Lowered from 2¹⁵ to 2¹³ with the generated code's threshold:
/// the LSTM step's per-step `[64,128]` gate chains (forward and backward, 28 steps) then
/// fuse into generated loops, W6 8.19 → 7.79 ms (medians of 4 alternated rounds, every
/// round faster); W1, W2 and W3 unchanged within the machine's noise.
pub const TUNED_MIN_FUSED_ELEMS: usize = 1 << 13;

impl PassConfig {
    /// No optimization at all.
    pub fn unoptimized() -> PassConfig {
        PassConfig {
            none: true,
            ..PassConfig::default()
        }
    }

    /// What [`crate::function`] uses: every pass, with fusion limited to loops long
    /// enough for it to pay ([`TUNED_MIN_FUSED_ELEMS`]) or so short that kernel
    /// overhead dominates ([`SMALL_REGION_ELEMS`]). `PassConfig::default()` fuses
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

    /// The bucket size of `bucket_all_reduces` (see [`PassConfig::all_reduce_bucket_bytes`]).
    pub fn bucket_bytes(&self) -> usize {
        self.all_reduce_bucket_bytes.unwrap_or(DEFAULT_BUCKET_BYTES)
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
    /// Whether the pass changed the graph.
    pub changed: bool,
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

/// Runs one pass, timing it and verifying its result in debug builds; returns whether
/// it changed the graph.
pub fn run_pass(
    g: &mut Graph,
    name: &'static str,
    pass: impl Fn(&mut Graph) -> Result<bool>,
    stats: &mut Vec<PassStat>,
) -> Result<bool> {
    let before = g.live_len();
    let t = Instant::now();
    let changed = pass(g)?;
    let time = t.elapsed();
    if cfg!(debug_assertions) {
        verify(g).map_err(|e| crate::error::Error::Graph(format!("after pass {name}: {e}")))?;
    }
    stats.push(PassStat {
        name,
        before,
        after: g.live_len(),
        time,
        changed,
    });
    Ok(changed)
}

/// Runs the enabled passes of the pipeline on a copy of `g`.
pub fn run_pipeline(g: &Graph, config: &PassConfig) -> Result<(Graph, Vec<PassStat>)> {
    let mut g = g.clone();
    let mut stats = Vec::new();
    let (cleanup, rest) = PIPELINE.split_at(CLEANUP_PASSES);
    for _ in 0..CLEANUP_ROUNDS {
        let mut changed = false;
        for &(name, pass) in cleanup {
            if config.enabled(name) {
                changed |= run_pass(&mut g, name, |g| pass(g, config), &mut stats)?;
            }
        }
        if !changed {
            break;
        }
    }
    for &(name, pass) in rest {
        if config.enabled(name) {
            run_pass(&mut g, name, |g| pass(g, config), &mut stats)?;
        }
    }
    Ok((g, stats))
}
