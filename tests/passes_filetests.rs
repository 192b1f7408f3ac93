//! IR filetests for the optimization passes (STYLE.md 9): text in, text out.
//!
//! Each `tests/filetests/<kind>/<name>.ir` file starts with a header naming what runs:
//!
//! ```text
//! ; test simplify
//! ; run: %0=[1, -0.0, nan] %1=2
//! graph(%0: f32[3], %1: f32[]) { ... }
//! ```
//!
//! `; test` is one of `fold_constants`, `cse`, `simplify`, `dce`, `transpose_fold`,
//! `fuse`, `bucket_all_reduces` (64-byte buckets), `pipeline` (the whole default pipeline) or `verify`; headers and `; run:`
//! lines (and `; bind:` values for symbolic dimensions) are read by the shared harness (`tests/harness`, also used by the grad
//! filetests). For a pass, this file parses and verifies the graph, runs the pass,
//! verifies again, checks that the pass reports a change exactly when the text or the
//! node count changed (also when run again), that it is idempotent and that the result's
//! text round-trips through the parser, runs the interpreter on every run line before
//! and after and asserts bit-identical outputs (NaN equals NaN), and snapshots the text
//! after (followed by the run results) in `snapshots/`. A `verify` file must parse and
//! be rejected by the verifier with each message of its `; error:` lines.

mod harness;

use harness::{load, run, same_bits};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use tapeflow::ir::{parse, print, verify, Graph};
use tapeflow::passes::{self, PassConfig, PIPELINE, RULES};
use tapeflow::Data;

/// `; test` header names and the pipeline pass each one runs.
const KINDS: &[(&str, &str)] = &[
    ("fold_constants", "fold_constants"),
    ("cse", "eliminate_common_subexpressions"),
    ("simplify", "simplify"),
    ("dce", "eliminate_dead_nodes"),
    ("transpose_fold", "fold_transposes_into_matmul"),
    ("fuse", "fuse_elementwise"),
    ("regions", "optimize_regions"),
    ("bucket_all_reduces", "bucket_all_reduces"),
    ("pipeline", "pipeline"),
];

/// Runs the file's pass: the graph after it, whether the pass says it changed the
/// graph, and for `simplify` the rules that fired.
fn apply(kind: &str, g: &Graph) -> (Graph, bool, BTreeMap<&'static str, usize>) {
    let mut g = g.clone();
    let mut fired = BTreeMap::new();
    let changed = match kind {
        "fold_constants" => passes::fold_constants(&mut g).unwrap(),
        "cse" => passes::eliminate_common_subexpressions(&mut g).unwrap(),
        "simplify" => {
            fired = passes::simplify_counting(&mut g).unwrap();
            !fired.is_empty()
        }
        "dce" => passes::eliminate_dead_nodes(&mut g).unwrap(),
        "transpose_fold" => passes::fold_transposes_into_matmul(&mut g).unwrap(),
        "fuse" => passes::fuse_elementwise(&mut g).unwrap(),
        "regions" => passes::optimize_regions(&mut g, &PassConfig::default()).unwrap(),
        // a small bucket, so one file shows packing, the limit and the groups
        "bucket_all_reduces" => passes::bucket_all_reduces(&mut g, 64).unwrap(),
        "pipeline" => {
            let (after, stats) = passes::run_pipeline(&g, &PassConfig::default()).unwrap();
            g = after;
            stats.iter().any(|s| s.changed)
        }
        other => panic!("unknown `; test {other}`"),
    };
    (g, changed, fired)
}

fn value_text(d: &Data) -> String {
    tapeflow::ir::const_text(d)
}

/// Checks one file and returns its snapshot text: the graph after the pass, then
/// comment lines (what ran, node counts, rules fired, run results), so the snapshot
/// still parses as IR.
fn check(path: &Path) -> String {
    let t = load(path);
    let graph = t.graph();
    verify(&graph).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (after, changed, fired) = apply(&t.kind, &graph);
    verify(&after).unwrap_or_else(|e| panic!("{}: after {}: {e}", path.display(), t.kind));
    let text = print(&after, false);
    // dead nodes do not print: a removal shows in the node count
    assert_eq!(
        changed,
        text != print(&graph, false) || after.len() != graph.len(),
        "{}: `{}` says changed = {changed}, but the graph says otherwise",
        path.display(),
        t.kind
    );
    let (again, changed_again, _) = apply(&t.kind, &after);
    assert_eq!(
        print(&again, false),
        text,
        "{}: `{}` is not idempotent",
        path.display(),
        t.kind
    );
    assert_eq!(
        changed_again,
        again.len() != after.len(),
        "{}: `{}` run again says changed = {changed_again}, but the graph says otherwise",
        path.display(),
        t.kind
    );
    let reparsed = parse(&text)
        .unwrap_or_else(|e| panic!("{}: the result does not parse: {e}", path.display()));
    assert_eq!(
        print(&reparsed, false),
        text,
        "{}: the result's text does not round-trip",
        path.display()
    );
    let mut snap = format!("; test {}\n", t.kind);
    snap += &format!(
        "; live nodes {} -> {}, all nodes {} -> {}\n",
        graph.live_len(),
        after.live_len(),
        graph.len(),
        after.len()
    );
    if t.kind == "simplify" {
        let names: Vec<String> = fired.iter().map(|(k, v)| format!("{k} x{v}")).collect();
        snap += &format!(
            "; fired: {}\n",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
    }
    let (bound_graph, bound_after) = (t.bound(&graph), t.bound(&after));
    for inputs in &t.inputs(&bound_graph) {
        let (want, got) = (run(&bound_graph, inputs), run(&bound_after, inputs));
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            assert!(
                same_bits(w, g),
                "{}: output {i} differs after {}: {} vs {}",
                path.display(),
                t.kind,
                value_text(w),
                value_text(g)
            );
        }
        let shown: Vec<String> = got.iter().map(value_text).collect();
        snap += &format!("; run -> {}\n", shown.join("; "));
    }
    text + &snap
}

/// A `; test verify` file: it parses, and the verifier rejects it with every message of
/// its `; error:` lines (so a verifier that accepts everything fails here).
fn check_verify(path: &Path) {
    let t = load(path);
    assert!(
        !t.errors.is_empty(),
        "{}: no `; error:` line",
        path.display()
    );
    let e = verify(&t.graph())
        .expect_err(&format!("{}: the verifier accepts it", path.display()))
        .to_string();
    for want in &t.errors {
        assert!(
            e.contains(want.as_str()),
            "{}: the verifier's message lacks `{want}`: {e}",
            path.display()
        );
    }
}

#[test]
fn filetests() {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("../snapshots");
    settings.set_prepend_module_to_snapshot(true);
    settings.bind(|| {
        insta::glob!("filetests/**/*.ir", |path| {
            if load(path).kind == "verify" {
                check_verify(path);
            } else {
                insta::assert_snapshot!(check(path));
            }
        });
    });
}

/// Every pass of the pipeline and every simplification rule has a filetest, and every
/// rule actually fires in one.
#[test]
fn every_pass_and_rule_has_a_filetest() {
    let all = harness::files("filetests");
    let kinds: BTreeSet<String> = all.iter().map(|p| load(p).kind).collect();
    assert!(kinds.contains("verify"), "no `; test verify` filetest");
    for (name, _) in PIPELINE {
        let header = KINDS.iter().find(|(_, pass)| pass == name).map(|(h, _)| *h);
        let header =
            header.unwrap_or_else(|| panic!("pipeline pass `{name}` has no `; test` kind"));
        assert!(
            kinds.contains(header),
            "pipeline pass `{name}` has no filetest (`; test {header}`)"
        );
    }
    assert!(
        kinds.contains("pipeline"),
        "the whole pipeline has no filetest"
    );
    let mut fired: BTreeSet<&str> = BTreeSet::new();
    for p in &all {
        let t = load(p);
        if t.kind == "simplify" {
            fired.extend(apply("simplify", &t.graph()).2.keys());
        }
    }
    let missing: Vec<&str> = RULES
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !fired.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "simplify rules without a filetest in which they fire: {missing:?}"
    );
}
