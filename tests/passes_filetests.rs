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
//! `fuse` or `pipeline` (the whole default pipeline). Each `; run:` line gives the
//! inputs by position (a flat list filling the input's shape in row-major order, or one
//! value for all elements; `nan`, `inf`, `-0.0` allowed). The harness parses and verifies
//! the graph, runs the pass, verifies again, checks the pass is idempotent and that the
//! result's text round-trips through the parser, runs the interpreter on every run
//! line before and after and asserts bit-identical outputs (NaN equals NaN), and
//! snapshots the text after (followed by the run results) in `snapshots/`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use tapeflow::exec::{Plan, RunStats};
use tapeflow::ir::{parse, print, verify, Graph};
use tapeflow::passes::{self, PassConfig, PIPELINE, RULES};
use tapeflow::{DType, Data};

/// `; test` header names and the pipeline pass each one runs.
const KINDS: &[(&str, &str)] = &[
    ("fold_constants", "fold_constants"),
    ("cse", "eliminate_common_subexpressions"),
    ("simplify", "simplify"),
    ("dce", "eliminate_dead_nodes"),
    ("transpose_fold", "fold_transposes_into_matmul"),
    ("fuse", "fuse_elementwise"),
    ("pipeline", "pipeline"),
];

struct FileTest {
    kind: String,
    runs: Vec<Vec<Data>>,
    graph: Graph,
}

fn parse_values(text: &str, dtype: DType, shape: &[usize]) -> Data {
    let items: Vec<&str> = match text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        Some(inner) => inner
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect(),
        None => vec![text.trim()],
    };
    let n: usize = shape.iter().product();
    let vals: Vec<f64> = items
        .iter()
        .map(|t| {
            t.parse::<f64>()
                .unwrap_or_else(|e| panic!("bad value `{t}`: {e}"))
        })
        .collect();
    let vals = if vals.len() == 1 {
        vec![vals[0]; n]
    } else {
        vals
    };
    assert_eq!(
        vals.len(),
        n,
        "run value `{text}` does not fill shape {shape:?}"
    );
    let a = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(shape), vals).unwrap();
    let d = Data::F64(a.into_shared());
    match dtype {
        DType::F64 => d,
        DType::F32 => Data::F32(match d {
            Data::F64(a) => a.mapv(|v| v as f32).into_shared(),
            _ => unreachable!(),
        }),
        DType::I64 => Data::I64(match d {
            Data::F64(a) => a.mapv(|v| v as i64).into_shared(),
            _ => unreachable!(),
        }),
    }
}

/// Splits `%0=[1, 2] %1=3` into (input index, value text).
fn run_items(line: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut rest = line.trim();
    while let Some(r) = rest.strip_prefix('%') {
        let (num, r) = r.split_once('=').expect("`%n=value`");
        let r = r.trim_start();
        let end = if r.starts_with('[') {
            r.find(']').expect("closing `]`") + 1
        } else {
            r.find(' ').unwrap_or(r.len())
        };
        out.push((
            num.trim().parse().expect("input number"),
            r[..end].to_string(),
        ));
        rest = r[end..].trim_start();
    }
    assert!(rest.is_empty(), "cannot read run line at `{rest}`");
    out
}

fn load(path: &Path) -> FileTest {
    let text = std::fs::read_to_string(path).unwrap();
    let kind = text
        .lines()
        .find_map(|l| l.strip_prefix("; test "))
        .unwrap_or_else(|| panic!("{}: no `; test` header", path.display()))
        .trim()
        .to_string();
    let graph = parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    verify(&graph).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let runs = text
        .lines()
        .filter_map(|l| l.strip_prefix("; run:"))
        .map(|l| {
            let items = run_items(l);
            assert_eq!(
                items.len(),
                graph.inputs.len(),
                "a run line gives every input"
            );
            items
                .iter()
                .enumerate()
                .map(|(i, (k, v))| {
                    assert_eq!(*k, i, "run values are given in input order");
                    let n = graph.node(graph.inputs[i]);
                    parse_values(v, n.dtype, &n.shape)
                })
                .collect()
        })
        .collect();
    FileTest { kind, runs, graph }
}

/// Runs the file's pass; for `simplify`, also returns the rules that fired.
fn apply(kind: &str, g: &Graph) -> (Graph, BTreeMap<&'static str, usize>) {
    let mut g = g.clone();
    let mut fired = BTreeMap::new();
    match kind {
        "fold_constants" => passes::fold_constants(&mut g).unwrap(),
        "cse" => passes::eliminate_common_subexpressions(&mut g).unwrap(),
        "simplify" => fired = passes::simplify_counting(&mut g).unwrap(),
        "dce" => passes::eliminate_dead_nodes(&mut g).unwrap(),
        "transpose_fold" => passes::fold_transposes_into_matmul(&mut g).unwrap(),
        "fuse" => passes::fuse_elementwise(&mut g).unwrap(),
        "pipeline" => g = passes::run_pipeline(&g, &PassConfig::default()).unwrap().0,
        other => panic!("unknown `; test {other}`"),
    }
    (g, fired)
}

/// Bitwise equality, except that every NaN equals every NaN.
fn same_bits(a: &Data, b: &Data) -> bool {
    if a.dtype() != b.dtype() || a.shape() != b.shape() {
        return false;
    }
    match (a, b) {
        (Data::F32(x), Data::F32(y)) => x
            .iter()
            .zip(y.iter())
            .all(|(p, q)| p.to_bits() == q.to_bits() || (p.is_nan() && q.is_nan())),
        (Data::F64(x), Data::F64(y)) => x
            .iter()
            .zip(y.iter())
            .all(|(p, q)| p.to_bits() == q.to_bits() || (p.is_nan() && q.is_nan())),
        (Data::I64(x), Data::I64(y)) => x == y,
        _ => false,
    }
}

fn run(g: &Graph, inputs: &[Data]) -> Vec<Data> {
    let plan = Plan::new(g.clone()).unwrap();
    let refs: Vec<&Data> = inputs.iter().collect();
    plan.run(&refs, &mut RunStats::default()).unwrap()
}

fn value_text(d: &Data) -> String {
    tapeflow::ir::const_text(d)
}

/// Checks one file and returns its snapshot text: the graph after the pass, then
/// comment lines (what ran, node counts, rules fired, run results), so the snapshot
/// still parses as IR.
fn check(path: &Path) -> String {
    let t = load(path);
    let (after, fired) = apply(&t.kind, &t.graph);
    verify(&after).unwrap_or_else(|e| panic!("{}: after {}: {e}", path.display(), t.kind));
    let text = print(&after, false);
    let (again, _) = apply(&t.kind, &after);
    assert_eq!(
        print(&again, false),
        text,
        "{}: `{}` is not idempotent",
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
        t.graph.live_len(),
        after.live_len(),
        t.graph.len(),
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
    for inputs in &t.runs {
        let (want, got) = (run(&t.graph, inputs), run(&after, inputs));
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

#[test]
fn filetests() {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("../snapshots");
    settings.set_prepend_module_to_snapshot(true);
    settings.bind(|| {
        insta::glob!("filetests/**/*.ir", |path| {
            insta::assert_snapshot!(check(path));
        });
    });
}

fn files() -> Vec<std::path::PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "ir") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/filetests"),
        &mut out,
    );
    out.sort();
    out
}

/// Every pass of the pipeline and every simplification rule has a filetest, and every
/// rule actually fires in one.
#[test]
fn every_pass_and_rule_has_a_filetest() {
    let all = files();
    let kinds: BTreeSet<String> = all.iter().map(|p| load(p).kind).collect();
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
            fired.extend(apply("simplify", &t.graph).1.keys());
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
