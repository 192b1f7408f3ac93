//! Bounded fuzzing (issue 10, "How it is checked"): seeded, with a fixed case budget, so
//! it runs in seconds in CI and a failure reproduces exactly.
//!
//! 1. `ir_texts_never_panic`: the filetests and snapshot texts, mutated (numbers swapped
//!    for absurd ones, op and dtype names swapped, lines dropped, duplicated or swapped,
//!    characters inserted or deleted), go through `parse` → `verify` → the optimization
//!    pipeline → `Plan::new` → run. Every step may return `Err`; none may panic. Every
//!    `while` is capped at `MAX_TRIPS` steps before running (`bound_loops`), so a
//!    mutated loop bound cannot hang the test.
//! 2. `random_programs_agree_eagerly_and_compiled`: random op sequences with random
//!    attributes, absurd ones included (huge, negative, out-of-range axes, strides,
//!    offsets and shapes), run inside `function` and eagerly. Inside `function` nothing
//!    panics; the compiled call fails exactly when the eager run panics, with the same
//!    message; and when both succeed the results are bit-identical.
//!
//! A failing case is printed with its input (text or program) and the message.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use tapeflow::exec::{Plan, RunStats};
use tapeflow::ir::{parse, verify, Graph, Node, NodeId};
use tapeflow::ops::{Binary, Compare, Op};
use tapeflow::passes::{run_pipeline, PassConfig};
use tapeflow::tensor::Shape;
use tapeflow::{function, DType, Data, Error, GradientTape, Padding, Tensor};

/// The number of cases and the seed: `TAPEFLOW_FUZZ_CASES` and `TAPEFLOW_FUZZ_SEED`
/// override the CI defaults for a longer local run.
fn budget(default_cases: usize, default_seed: u64) -> (usize, u64) {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    (
        env("TAPEFLOW_FUZZ_CASES").map_or(default_cases, |n| n as usize),
        env("TAPEFLOW_FUZZ_SEED").unwrap_or(default_seed),
    )
}

/// Largest tensor (elements) a case may make: bigger cases are skipped before anything
/// that large is allocated, so the fuzzer stays fast and never runs out of memory.
const MAX_RUN_ELEMS: usize = 1 << 14;

thread_local! {
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic into `Err(message)` (not printed).
fn no_panic<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    QUIET.with(|q| q.set(true));
    let r = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    r.map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "<non-string panic>".into())
    })
}

/// Silences the panic printer inside [`no_panic`], where the fuzzer provokes and
/// catches panics; other panics (a failed assertion) print as usual.
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                default(info)
            }
        }));
    });
}

// ---------------------------------------------------------------------------------------
// 1. IR texts

/// The seed texts: every filetest and every snapshot's graph text.
fn corpus() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    let mut dirs = vec![root.join("tests"), root.join("snapshots")];
    while let Some(d) = dirs.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if matches!(p.extension().and_then(|e| e.to_str()), Some("ir" | "snap")) {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut texts: Vec<String> = files
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|t| match t.strip_prefix("---") {
            // an insta snapshot: the graph follows the second `---`
            Some(rest) => rest.split_once("\n---\n").map_or(t.clone(), |x| x.1.into()),
            None => t,
        })
        .filter(|t| t.contains("graph("))
        .collect();
    texts.dedup();
    texts
}

const NUMBERS: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "7",
    "15",
    "16",
    "17",
    "255",
    "256",
    "257",
    "65535",
    "65536",
    "4294967295",
    "4294967296",
    "8589934592",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "-1",
    "-5",
    "nan",
    "inf",
    "-0.0",
    "1e308",
];

const WORDS: &[&str] = &[
    "f32", "f64", "i64", "f16", "true", "false", "valid", "same", "[]", "[0]", "[1,0]", "[0,0]",
    "%0", "%1", "%2", "%99", "$0", "$1", "#0", "#1", "#9", "fused", "const", "input",
];

fn mutate(text: &str, rng: &mut ChaCha8Rng, ops: &[&'static str]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for _ in 0..rng.gen_range(1..=3) {
        if lines.is_empty() {
            break;
        }
        let i = rng.gen_range(0..lines.len());
        match rng.gen_range(0..9) {
            // a number becomes an interesting one
            0..=2 => {
                let l = &lines[i];
                let starts: Vec<usize> = l
                    .char_indices()
                    .filter(|&(k, c)| {
                        c.is_ascii_digit()
                            && (k == 0 || !l.as_bytes()[k - 1].is_ascii_alphanumeric())
                    })
                    .map(|(k, _)| k)
                    .collect();
                if let Some(&s) = starts.choose(rng) {
                    let e = l[s..]
                        .find(|c: char| !c.is_ascii_digit() && c != '.')
                        .map_or(l.len(), |e| s + e);
                    let n = NUMBERS.choose(rng).unwrap();
                    lines[i] = format!("{}{n}{}", &l[..s], &l[e..]);
                }
            }
            // an op name becomes another op's
            3 => {
                let l = &lines[i];
                if let Some(eq) = l.find(" = ") {
                    let rest = &l[eq + 3..];
                    let end = rest.find(['[', ' ']).unwrap_or(rest.len());
                    let op = ops.choose(rng).unwrap();
                    lines[i] = format!("{}{op}{}", &l[..eq + 3], &rest[end..]);
                }
            }
            4 => {
                lines.remove(i);
            }
            5 => {
                let l = lines[i].clone();
                lines.insert(rng.gen_range(0..=lines.len()), l);
            }
            6 => {
                let j = rng.gen_range(0..lines.len());
                lines.swap(i, j);
            }
            // a token is replaced by a word
            7 => {
                let toks: Vec<&str> = lines[i].split(' ').collect();
                if !toks.is_empty() {
                    let k = rng.gen_range(0..toks.len());
                    let mut t: Vec<String> = toks.iter().map(|s| s.to_string()).collect();
                    t[k] = WORDS.choose(rng).unwrap().to_string();
                    lines[i] = t.join(" ");
                }
            }
            // a character is inserted or deleted
            _ => {
                let l = &mut lines[i];
                if l.is_empty() {
                    continue;
                }
                let chars: Vec<char> = l.chars().collect();
                let k = rng.gen_range(0..chars.len());
                let mut c = chars.clone();
                if rng.gen_bool(0.5) {
                    c.remove(k);
                } else {
                    c.insert(k, *b"[]%,=:#$ 019-x".choose(rng).unwrap() as char);
                }
                *l = c.into_iter().collect();
            }
        }
    }
    lines.join("\n")
}

/// A deterministic value for an input: small integers cycling through signs (and NaN
/// for floats), so that runs exercise both branches of comparisons.
fn input_data(dtype: DType, shape: &[usize], salt: usize) -> Data {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|i| match (i + salt) % 7 {
            6 if dtype.is_float() => f64::NAN,
            k => k as f64 - 2.5 * dtype.is_float() as u8 as f64,
        })
        .collect();
    let t = Tensor::from_vec(v, shape).expect("sized").cast(dtype);
    t.data().expect("concrete").clone()
}

/// Whether every value of `g`, inside its control-flow bodies too, is small.
fn all_small(g: &Graph) -> bool {
    g.node_ids()
        .into_iter()
        .all(|n| g.node(n).shape.iter().product::<usize>() <= MAX_RUN_ELEMS)
        && g.regions.iter().all(|r| r.bodies.iter().all(all_small))
}

/// Most steps a `while` of a fuzzed graph runs (see [`bound_loops`]).
const MAX_TRIPS: i64 = 40;

/// A scalar constant node.
fn constant(g: &mut Graph, t: Tensor) -> NodeId {
    let mut node = Node::new(Op::Const, t.dtype(), Shape::new());
    node.value = Some(t.data().expect("concrete").clone());
    g.add(node, &[])
}

/// Adds an `i64[]` input to `g` at position `at`, renumbering the inputs after it.
fn insert_input(g: &mut Graph, at: usize) -> NodeId {
    let k = g.add(Node::new(Op::Input(0), DType::I64, Shape::new()), &[]);
    g.inputs.insert(at, k);
    for (i, &n) in g.inputs.clone().iter().enumerate() {
        g.node_mut(n).op = Op::Input(i as u32);
    }
    k
}

/// Caps every `while` of `g` (and of its bodies) at [`MAX_TRIPS`] steps: a mutated
/// bound makes a loop run as long as it says (2^63 steps), which is no finding, and
/// the interpreter has no step limit. Each loop gets a counter `k` as an extra carry
/// (after its own; its trip count result moves up by one), its body returns `k + 1`,
/// and its condition becomes `(cond != 0) · (k < MAX_TRIPS)`, so a loop that stops by
/// itself within the cap runs exactly as before. Applied alike to the unoptimized and
/// the optimized graph, which must still agree bit for bit. Returns `false` when a
/// region serves two nodes (then the graph is not run).
fn bound_loops(g: &mut Graph) -> bool {
    for r in &mut g.regions {
        for b in &mut r.bodies {
            if !bound_loops(b) {
                return false;
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    for n in g.canonical_order() {
        let Op::While(r) = g.node(n).op else {
            continue;
        };
        if !seen.insert(r) {
            return false;
        }
        let nc = g.regions[r as usize].carries;
        let zero = constant(g, Tensor::from(0i64));
        let mut operands = g.operands(n).to_vec();
        operands.insert(nc, zero);
        g.set_operands(n, &operands);
        for u in g.users(n) {
            if let Op::Get(i) = g.node(u).op {
                if i as usize >= nc {
                    g.node_mut(u).op = Op::Get(i + 1);
                }
            }
        }
        let region = &mut g.regions[r as usize];
        region.carries += 1;
        region.results.insert(nc, (DType::I64, Shape::new()));
        let scalar = |op: Op, d: DType| Node::new(op, d, Shape::new());
        // condition: (cond != 0) · (k < MAX_TRIPS)
        let c = &mut region.bodies[0];
        let k = insert_input(c, nc);
        let out = c.outputs[0];
        let d = c.node(out).dtype;
        let mut flag = out;
        if !c.node(out).shape.is_empty() {
            flag = c.add(scalar(Op::Reshape, d), &[flag]);
        }
        let z = constant(c, Tensor::from(0.0f64).cast(d));
        flag = c.add(scalar(Op::Compare(Compare::Ne), d), &[flag, z]);
        if d != DType::I64 {
            flag = c.add(scalar(Op::Cast(DType::I64), DType::I64), &[flag]);
        }
        let cap = constant(c, Tensor::from(MAX_TRIPS));
        let under = c.add(scalar(Op::Compare(Compare::Lt), DType::I64), &[k, cap]);
        c.outputs[0] = c.add(scalar(Op::Binary(Binary::Mul), DType::I64), &[flag, under]);
        // body: k + 1
        let b = &mut region.bodies[1];
        let k = insert_input(b, nc);
        let one = constant(b, Tensor::from(1i64));
        let next = b.add(scalar(Op::Binary(Binary::Add), DType::I64), &[k, one]);
        b.outputs.insert(nc, next);
    }
    true
}

/// Runs a verified graph on deterministic inputs, if every value is small, with every
/// `while` capped at [`MAX_TRIPS`] steps.
///
/// # Panics
/// If capping the loops made a graph the verifier rejects (a bug of this test).
fn run_graph(mut g: Graph) -> Result<Option<Vec<Data>>, Error> {
    if !all_small(&g) || !bound_loops(&mut g) {
        return Ok(None);
    }
    if let Err(e) = verify(&g) {
        panic!("bound_loops made an invalid graph: {e}\n{g}");
    }
    let inputs: Vec<Data> = g
        .inputs
        .iter()
        .enumerate()
        .map(|(i, &n)| input_data(g.node(n).dtype, &g.node(n).shape, i))
        .collect();
    let plan = Plan::new(g)?;
    let refs: Vec<&Data> = inputs.iter().collect();
    Ok(Some(plan.run(&refs, &mut RunStats::default())?))
}

/// `g` with every symbol of its shapes bound to `v`.
fn bind_all(g: &Graph, v: usize) -> Result<Graph, Error> {
    let mut syms: Vec<u32> = g
        .node_ids()
        .into_iter()
        .flat_map(|n| g.node(n).shape.to_vec())
        .flat_map(tapeflow::tensor::dim::symbols)
        .collect();
    syms.sort_unstable();
    syms.dedup();
    let b: Vec<(u32, usize)> = syms.into_iter().map(|s| (s, v)).collect();
    tapeflow::passes::specialize(g, &b)
}

/// parse → verify → pipeline → verify → plan → run, before and after optimization;
/// `Err`s end the case early. `Ok(Some(why))` when the two runs disagree.
fn ir_case(text: &str) -> Result<Option<String>, Error> {
    let g = parse(text)?;
    verify(&g)?;
    let (opt, _) = run_pipeline(&g, &PassConfig::tuned())?;
    verify(&opt)?;
    // symbolic lengths (`f32[b,4]`) run bound to 2, unoptimized and optimized alike
    let (g, opt) = (bind_all(&g, 2)?, bind_all(&opt, 2)?);
    let (before, after) = (run_graph(g)?, run_graph(opt)?);
    if let (Some(b), Some(a)) = (before, after) {
        let bits = |d: &[Data]| {
            d.iter()
                .map(|d| bits(&Tensor::from_data(d.clone())))
                .collect::<Vec<_>>()
        };
        if bits(&b) != bits(&a) {
            return Ok(Some(format!("unoptimized {b:?}\noptimized {a:?}")));
        }
    }
    Ok(None)
}

#[test]
fn ir_texts_never_panic() {
    quiet_panics();
    let seeds = corpus();
    assert!(seeds.len() >= 20, "found only {} seed texts", seeds.len());
    let ops = tapeflow::ops::all_op_names();
    let (cases, seed) = budget(4000, 0x1e_7e57);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut failures = Vec::new();
    let (mut parsed, mut ran, mut ran_while) = (0, 0, 0);
    for case in 0..cases {
        let seed = &seeds[case % seeds.len()];
        let text = if case < seeds.len() {
            seed.clone()
        } else {
            mutate(seed, &mut rng, &ops)
        };
        match no_panic(|| ir_case(&text)) {
            Ok(Ok(Some(why))) => {
                failures.push(format!("case {case}: results differ on\n{text}\n{why}"))
            }
            Ok(r) => {
                parsed += parse(&text).is_ok() as usize;
                ran += r.is_ok() as usize;
                ran_while += (r.is_ok() && text.contains("= while[")) as usize;
            }
            Err(msg) => failures.push(format!("case {case}: panic `{msg}` on\n{text}\n")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} texts panicked or ran differently optimized (seed {seed}); the first:\n{}",
        failures.len(),
        failures[..failures.len().min(3)].join("\n")
    );
    // the mutations keep enough texts valid to reach the later stages
    assert!(
        parsed > cases / 8 && ran > cases / 12,
        "parsed {parsed}, ran {ran}"
    );
    // loops with a run-time trip count are among them, capped by `bound_loops` (3 of
    // the seeds hold a `while`; 11 of the 4000 default cases get through every stage)
    assert!(
        ran_while > cases / 800,
        "only {ran_while} texts with a `while` went through every stage"
    );
}

#[test]
fn a_mutated_while_bound_is_capped_not_run_to_the_end() {
    // while_hoist.ir runs 3 steps; with a bound of 2^63-1 it would never end: capped at
    // MAX_TRIPS it computes what a bound of MAX_TRIPS computes, bit for bit
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/filetests/regions/while_hoist.ir"),
    )
    .unwrap();
    assert!(text.contains("const 3 : i64[]"));
    let with = |bound: &str| {
        let g = parse(&text.replace("const 3 : i64[]", &format!("const {bound} : i64[]"))).unwrap();
        run_graph(g).unwrap().expect("small")
    };
    let bits = |d: &[Data]| {
        d.iter()
            .map(|d| bits(&Tensor::from_data(d.clone())))
            .collect::<Vec<_>>()
    };
    let capped = with("9223372036854775807");
    assert_eq!(bits(&capped), bits(&with(&MAX_TRIPS.to_string())));
    assert_ne!(bits(&capped), bits(&with("3")));
}

// ---------------------------------------------------------------------------------------
// 2. random programs, eager vs compiled

/// One step of a random program: an op, the values it reads (indices into the values
/// made so far, taken modulo their number) and its attributes, absurd ones included.
#[derive(Clone, Debug)]
enum Step {
    Unary(usize, u8),
    Binary(usize, usize, u8),
    Sum(usize, Vec<isize>, bool),
    Max(usize, Vec<isize>, bool),
    Mean(usize, Vec<isize>),
    ArgMax(usize, isize),
    Reshape(usize, Vec<usize>),
    Broadcast(usize, Vec<usize>),
    Transpose(usize, Vec<usize>),
    Concat(usize, usize, usize),
    Slice(usize, usize, usize, usize),
    Pad(usize, usize, usize, usize),
    ExpandDims(usize, isize),
    Squeeze(usize, isize),
    Gather(usize, Vec<i64>, usize),
    MatMul(usize, usize, bool, bool),
    Softmax(usize, isize),
    Cast(usize, DType),
    Conv(usize, [usize; 2], (usize, usize), bool),
    Pool(usize, (usize, usize), (usize, usize), bool),
    OneHot(usize, usize),
    ScatterAdd(usize, usize, usize),
    LogSumExp(usize, isize, bool),
    Select(usize, usize, usize),
}

const HUGE: &[usize] = &[
    16,
    17,
    255,
    256,
    257,
    65536,
    u32::MAX as usize,
    1 << 32,
    1 << 33,
    usize::MAX,
];
const HUGE_NEG: &[isize] = &[-1000, -17, -5, isize::MIN, isize::MAX, 256, 17];

fn small(rng: &mut ChaCha8Rng, hi: usize) -> usize {
    if rng.gen_bool(0.1) {
        *HUGE.choose(rng).unwrap()
    } else {
        rng.gen_range(0..=hi)
    }
}

fn axis(rng: &mut ChaCha8Rng) -> isize {
    if rng.gen_bool(0.1) {
        *HUGE_NEG.choose(rng).unwrap()
    } else {
        rng.gen_range(-4..4)
    }
}

fn shape(rng: &mut ChaCha8Rng) -> Vec<usize> {
    if rng.gen_bool(0.1) {
        return [
            vec![1 << 33, 1 << 33],
            vec![usize::MAX, 2],
            vec![0, 1 << 40],
        ]
        .choose(rng)
        .unwrap()
        .clone();
    }
    (0..rng.gen_range(0..=4))
        .map(|_| rng.gen_range(1..=4))
        .collect()
}

fn random_step(rng: &mut ChaCha8Rng) -> Step {
    let v = rng.gen_range(0..64);
    let w = rng.gen_range(0..64);
    let u = rng.gen_range(0..64);
    match rng.gen_range(0..24) {
        0 | 1 => Step::Unary(v, rng.gen_range(0..9)),
        2 | 3 => Step::Binary(v, w, rng.gen_range(0..6)),
        4 => Step::Sum(
            v,
            (0..rng.gen_range(0..3)).map(|_| axis(rng)).collect(),
            rng.gen(),
        ),
        5 => Step::Max(
            v,
            (0..rng.gen_range(0..3)).map(|_| axis(rng)).collect(),
            rng.gen(),
        ),
        6 => Step::Mean(v, (0..rng.gen_range(0..3)).map(|_| axis(rng)).collect()),
        7 => Step::ArgMax(v, axis(rng)),
        8 => Step::Reshape(v, shape(rng)),
        9 => Step::Broadcast(v, shape(rng)),
        10 => {
            let mut p: Vec<usize> = (0..rng.gen_range(0..=4)).collect();
            p.shuffle(rng);
            if rng.gen_bool(0.1) {
                p.push(small(rng, 9));
            }
            Step::Transpose(v, p)
        }
        11 => Step::Concat(v, w, small(rng, 3)),
        12 => Step::Slice(v, small(rng, 3), small(rng, 3), small(rng, 4)),
        13 => Step::Pad(v, small(rng, 3), small(rng, 2), small(rng, 2)),
        14 => {
            if rng.gen_bool(0.5) {
                Step::ExpandDims(v, axis(rng))
            } else {
                Step::Squeeze(v, axis(rng))
            }
        }
        15 => Step::Gather(
            v,
            (0..rng.gen_range(1..4))
                .map(|_| rng.gen_range(-1..5))
                .collect(),
            small(rng, 3),
        ),
        16 => Step::MatMul(v, w, rng.gen(), rng.gen()),
        17 => Step::Softmax(v, axis(rng)),
        18 => Step::Cast(
            v,
            *[DType::F32, DType::F64, DType::I64].choose(rng).unwrap(),
        ),
        // one_hot builds its `arange` constant at trace time: a valid but huge depth
        // would allocate it (as any constructor does), so only over-limit ones here
        19 => Step::OneHot(
            v,
            Some(small(rng, 4)).filter(|&d| d <= 256).unwrap_or(1 << 33),
        ),
        20 => Step::ScatterAdd(v, small(rng, 3), small(rng, 4)),
        21 => Step::LogSumExp(v, axis(rng), rng.gen()),
        22 => Step::Select(v, w, u),
        _ => {
            let (k, s) = (
                [small(rng, 3), small(rng, 3)],
                (small(rng, 2), small(rng, 2)),
            );
            if rng.gen_bool(0.5) {
                Step::Conv(v, k, s, rng.gen())
            } else {
                Step::Pool(v, (k[0], k[1]), s, rng.gen())
            }
        }
    }
}

fn padding(same: bool) -> Padding {
    if same {
        Padding::Same
    } else {
        Padding::Valid
    }
}

/// Runs `prog` on `args` (eagerly or traced, the same code). `Err` when a value would
/// be larger than [`MAX_RUN_ELEMS`] (checked before the next op allocates anything).
fn run_program(prog: &[Step], args: &[Tensor]) -> tapeflow::Result<Vec<Tensor>> {
    let mut vals: Vec<Tensor> = args.to_vec();
    for step in prog {
        let at = |i: usize| &vals[i % vals.len()];
        let y = match step {
            Step::Unary(v, u) => {
                let x = at(*v);
                match u {
                    0 => x.exp(),
                    1 => x.sin(),
                    2 => x.tanh(),
                    3 => x.abs(),
                    4 => -x,
                    5 => x.sqrt(),
                    6 => x.log(),
                    7 => x.sigmoid(),
                    _ => x.relu(),
                }
            }
            Step::Binary(a, b, o) => {
                let (a, b) = (at(*a), at(*b));
                match o {
                    0 => a + b,
                    1 => a * b,
                    2 => a - b,
                    3 => a / b,
                    4 => a.maximum(b),
                    _ => a.pow(b),
                }
            }
            Step::Sum(v, axes, keep) => at(*v).sum(axes, *keep),
            Step::Max(v, axes, keep) => at(*v).max(axes, *keep),
            Step::Mean(v, axes) => at(*v).mean(axes, false),
            Step::ArgMax(v, a) => at(*v).argmax(*a).cast(DType::F64),
            Step::Reshape(v, s) => at(*v).reshape(s),
            Step::Broadcast(v, s) => at(*v).broadcast_to(s),
            Step::Transpose(v, p) => at(*v).transpose(p),
            Step::Concat(a, b, axis) => Tensor::concat(&[at(*a), at(*b)], *axis),
            Step::Slice(v, axis, start, len) => {
                at(*v).slice_axis(*axis, *start, start.saturating_add(*len))
            }
            Step::Pad(v, axis, before, after) => at(*v).pad_axis(*axis, *before, *after),
            Step::ExpandDims(v, a) => at(*v).expand_dims(*a),
            Step::Squeeze(v, a) => at(*v).squeeze(*a),
            Step::Gather(v, idx, axis) => {
                // indices in range when the axis is, so that every failure is a
                // trace-time one (eager and compiled must then fail alike)
                let x = at(*v);
                let idx: Vec<i64> = match x.shape().get(*axis).copied().unwrap_or(1) {
                    0 => Vec::new(),
                    len => idx.iter().map(|i| i.rem_euclid(len as i64)).collect(),
                };
                x.gather(&Tensor::vec(&idx), *axis)
            }
            Step::MatMul(a, b, ta, tb) => at(*a).matmul_t(at(*b), *ta, *tb),
            Step::Softmax(v, a) => at(*v).softmax(*a),
            Step::Cast(v, d) => at(*v).cast(*d),
            Step::Conv(v, k, stride, same) => {
                let x = at(*v);
                let cin = x.shape().last().copied().unwrap_or(1).min(4);
                let filter = [k[0].min(4), k[1].min(4), cin, 2];
                let w = Tensor::random_uniform(&filter, -1.0, 1.0, 7, x.dtype());
                x.conv2d(&w, *stride, padding(*same))
            }
            Step::Pool(v, k, stride, same) => at(*v).max_pool2d(*k, *stride, padding(*same)),
            Step::OneHot(v, depth) => at(*v).one_hot(*depth, DType::F64),
            Step::ScatterAdd(v, axis, size) => {
                // one index per row along `axis`, in range of `size` where it can be
                let x = at(*v);
                let len = x.shape().get(*axis).copied().unwrap_or(1);
                let idx: Vec<i64> = match *size {
                    // no index fits: a shape mismatch (a trace-time error) unless empty
                    0 => Vec::new(),
                    n => (0..len).map(|i| (i % n.min(1 << 20)) as i64).collect(),
                };
                x.scatter_add(&Tensor::vec(&idx), *axis, *size)
            }
            Step::LogSumExp(v, a, keep) => at(*v).logsumexp(*a, *keep),
            Step::Select(m, a, b) => {
                let (m, a, b) = (at(*m), at(*a), at(*b));
                Tensor::select(&m.gt(a), a, b)
            }
        };
        if y.len() > MAX_RUN_ELEMS {
            return Err(Error::Invalid("fuzz: value too large to run".into()));
        }
        vals.push(y);
    }
    Ok(vals.split_off(args.len()))
}

/// [`run_program`], then (with `grad`) the gradient of the sum of its float results
/// with respect to the first argument, from a tape (eager or traced, the same code).
fn run_with_grad(prog: &[Step], args: &[Tensor], grad: bool) -> tapeflow::Result<Vec<Tensor>> {
    if !grad {
        return run_program(prog, args);
    }
    let tape = GradientTape::new().unconnected_zeros();
    let outs = tape.record(|| {
        tape.watch(&args[0]);
        run_program(prog, args)
    })?;
    let floats: Vec<&Tensor> = outs.iter().filter(|t| t.dtype().is_float()).collect();
    let Some(first) = floats.first() else {
        return Ok(outs);
    };
    let total = floats[1..]
        .iter()
        .fold(first.sum_all().cast(DType::F64), |acc, t| {
            acc + t.sum_all().cast(DType::F64)
        });
    let g = tape.gradient(&total, &args[0])?;
    Ok(outs.into_iter().chain([g]).collect())
}

fn random_args(rng: &mut ChaCha8Rng) -> Vec<Tensor> {
    let dtype = *[DType::F32, DType::F64].choose(rng).unwrap();
    (0..rng.gen_range(1..=2))
        .map(|i| {
            let s: Vec<usize> = (0..rng.gen_range(0..=4))
                .map(|_| rng.gen_range(1..=3))
                .collect();
            Tensor::from_data(input_data(dtype, &s, i * 3))
        })
        .collect()
}

/// Bits of a result, NaN payloads ignored (every NaN compares equal).
fn bits(t: &Tensor) -> (DType, Vec<usize>, Vec<u64>) {
    let v = match t.dtype() {
        DType::I64 => t.to_vec_i64().unwrap().iter().map(|&x| x as u64).collect(),
        _ => t
            .to_vec_f64()
            .unwrap()
            .iter()
            .map(|x| if x.is_nan() { u64::MAX } else { x.to_bits() })
            .collect(),
    };
    (t.dtype(), t.shape().to_vec(), v)
}

/// The message without the trailing ` (at file:line)`.
fn strip_loc(s: &str) -> &str {
    s.rsplit_once(" (at ").map_or(s, |x| x.0)
}

#[test]
fn random_programs_agree_eagerly_and_compiled() {
    quiet_panics();
    let (cases, seed) = budget(1500, 0xfeed_f00d);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut failures = Vec::new();
    let (mut both_ok, mut both_failed) = (0, 0);
    for case in 0..cases {
        let args = random_args(&mut rng);
        let prog: Vec<Step> = (0..rng.gen_range(1..=6))
            .map(|_| random_step(&mut rng))
            .collect();
        let p = prog.clone();
        let grad = rng.gen_bool(0.3);
        let f = function(move |xs: &[Tensor]| run_with_grad(&p, xs, grad));
        let refs: Vec<&Tensor> = args.iter().collect();
        let describe = || {
            let types: Vec<String> = args
                .iter()
                .map(|a| format!("{}{:?}", a.dtype(), a.shape()))
                .collect();
            format!("case {case}: args {types:?}, grad {grad}, program {prog:?}")
        };
        let traced = match no_panic(|| f.call_slice(&refs)) {
            Ok(r) => r,
            Err(msg) => {
                failures.push(format!("{}\n  panicked inside function: {msg}", describe()));
                continue;
            }
        };
        if let Err(Error::Invalid(m)) = &traced {
            if m.starts_with("fuzz:") {
                continue;
            }
        }
        let eager = no_panic(|| run_with_grad(&prog, &args, grad));
        match (&traced, &eager) {
            (Ok(t), Ok(Ok(e))) => {
                both_ok += 1;
                let (tb, eb): (Vec<_>, Vec<_>) =
                    (t.iter().map(bits).collect(), e.iter().map(bits).collect());
                if tb != eb {
                    failures.push(format!(
                        "{}\n  compiled and eager results differ:\n  compiled {t:?}\n  eager    {e:?}",
                        describe()
                    ));
                }
            }
            (Err(te), Err(msg)) => {
                both_failed += 1;
                if let Error::Op { .. } = te {
                    let te = te.to_string();
                    if strip_loc(&te) != strip_loc(msg) {
                        failures.push(format!(
                            "{}\n  messages differ:\n  compiled {te}\n  eager    {msg}",
                            describe()
                        ));
                    }
                }
            }
            _ => failures.push(format!(
                "{}\n  one mode failed: compiled {:?}, eager {:?}",
                describe(),
                traced.as_ref().map(|v| v.len()),
                eager.as_ref().map(|r| r.as_ref().map(|v| v.len()))
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} programs failed (seed {seed}); the first:\n{}",
        failures.len(),
        failures[..failures.len().min(4)].join("\n")
    );
    assert!(
        both_ok > cases / 6 && both_failed > cases / 12,
        "ok {both_ok}, failed {both_failed}"
    );
}
