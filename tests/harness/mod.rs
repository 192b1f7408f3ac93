//! The one filetest harness (STYLE.md 9), shared by the pass, grad and verify filetests.
//!
//! A filetest is an IR file whose leading comment lines say what to do with it:
//!
//! ```text
//! ; test simplify                     (or `; test grad wrt=%0,%1 order=2`, `; test verify`)
//! ; run: %0=[1, -0.0, nan] %1=2
//! ; bind: b=3
//! ; error: second assign to variable 0
//! graph(%0: f32[3], %1: f32[]) { ... }
//! ```
//!
//! `; test` names the kind and may carry `key=value` arguments. Each `; run:` line gives
//! the graph's inputs by position (`%0=`, `%1=`, ... in order): a flat list filling the
//! input's shape in row-major order, or one value for all elements (`nan`, `inf`,
//! `-0.0` allowed), read as the input's dtype. A graph with symbolic dimensions
//! (`f32[b,4]`) runs with the values of its `; bind:` line: it is specialized to them
//! ([`tapeflow::passes::specialize`]) first. `; error:` lines are the messages a
//! `verify` file expects. This module reads all of it, once, for every kind.

#![allow(dead_code)] // each test binary uses part of it

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tapeflow::exec::{Plan, RunStats};
use tapeflow::ir::{parse, Graph};
use tapeflow::tensor::{dim, Dim};
use tapeflow::{DType, Data};

/// A filetest's header and text.
pub struct FileTest {
    /// Where it was read from (for messages).
    pub path: PathBuf,
    /// The word after `; test`.
    pub kind: String,
    /// The `key=value` arguments after the kind.
    pub args: BTreeMap<String, String>,
    /// Each `; run:` line's value texts, in input order.
    pub runs: Vec<Vec<String>>,
    /// The `; error:` lines.
    pub errors: Vec<String>,
    /// The `; bind:` values of symbols, for graphs with symbolic dimensions.
    pub binds: Vec<(String, usize)>,
    /// The whole file.
    pub text: String,
}

impl FileTest {
    /// The graph of the file (panics naming the file when it does not parse).
    pub fn graph(&self) -> Graph {
        parse(&self.text).unwrap_or_else(|e| panic!("{}: {e}", self.path.display()))
    }

    /// `g` with the symbols of the `; bind:` line bound (`g` itself when it has none).
    pub fn bound(&self, g: &Graph) -> Graph {
        if self.binds.is_empty() {
            return g.clone();
        }
        let b: Vec<(u32, usize)> = self
            .binds
            .iter()
            .map(|(k, v)| (dim::as_symbol(Dim::sym(k).raw()).expect("a symbol"), *v))
            .collect();
        tapeflow::passes::specialize(g, &b)
            .unwrap_or_else(|e| panic!("{}: binding {:?}: {e}", self.path.display(), self.binds))
    }

    /// The run lines' inputs, typed by `g`'s inputs.
    pub fn inputs(&self, g: &Graph) -> Vec<Vec<Data>> {
        self.runs
            .iter()
            .map(|run| {
                assert_eq!(
                    run.len(),
                    g.inputs.len(),
                    "{}: a run line gives every input",
                    self.path.display()
                );
                run.iter()
                    .zip(&g.inputs)
                    .map(|(v, &i)| parse_values(v, g.node(i).dtype, &g.node(i).shape))
                    .collect()
            })
            .collect()
    }

    /// A required `key=value` argument of the `; test` line.
    pub fn arg(&self, key: &str) -> &str {
        self.args.get(key).map_or_else(
            || {
                panic!(
                    "{}: `; test {}` needs `{key}=`",
                    self.path.display(),
                    self.kind
                )
            },
            String::as_str,
        )
    }
}

/// Reads a filetest's header.
pub fn load(path: &Path) -> FileTest {
    let text = std::fs::read_to_string(path).unwrap();
    let mut t = FileTest {
        path: path.to_path_buf(),
        kind: String::new(),
        args: BTreeMap::new(),
        runs: Vec::new(),
        errors: Vec::new(),
        binds: Vec::new(),
        text: String::new(),
    };
    for line in text.lines().filter_map(|l| l.strip_prefix(';')) {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("test ") {
            let mut words = rest.split_whitespace();
            t.kind = words.next().unwrap_or_default().to_string();
            for kv in words {
                let (k, v) = kv
                    .split_once('=')
                    .unwrap_or_else(|| panic!("{}: bad `; test` item `{kv}`", path.display()));
                t.args.insert(k.to_string(), v.to_string());
            }
        } else if let Some(rest) = line.strip_prefix("run:") {
            let items = run_items(rest);
            for (i, (k, _)) in items.iter().enumerate() {
                assert_eq!(
                    *k,
                    i,
                    "{}: run values are given in input order",
                    path.display()
                );
            }
            t.runs.push(items.into_iter().map(|(_, v)| v).collect());
        } else if let Some(rest) = line.strip_prefix("bind:") {
            for kv in rest.split_whitespace() {
                let (k, v) = kv
                    .split_once('=')
                    .unwrap_or_else(|| panic!("{}: bad `; bind:` item `{kv}`", path.display()));
                let v = v.parse().expect("a length");
                t.binds.push((k.to_string(), v));
            }
        } else if let Some(rest) = line.strip_prefix("error:") {
            t.errors.push(rest.trim().to_string());
        }
    }
    assert!(!t.kind.is_empty(), "{}: no `; test` header", path.display());
    t.text = text;
    t
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

/// A run value (`[1, 2, nan]`, or one value for every element) as `dtype[shape]`.
pub fn parse_values(text: &str, dtype: DType, shape: &[usize]) -> Data {
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
    match dtype {
        DType::F64 => Data::F64(a.into_shared()),
        DType::F32 => Data::F32(a.mapv(|v| v as f32).into_shared()),
        DType::I64 => Data::I64(a.mapv(|v| v as i64).into_shared()),
    }
}

/// Plans and runs `g` on `inputs`.
pub fn run(g: &Graph, inputs: &[Data]) -> Vec<Data> {
    let plan = Plan::new(g.clone()).unwrap();
    let refs: Vec<&Data> = inputs.iter().collect();
    plan.run(&refs, &mut RunStats::default()).unwrap()
}

/// Bitwise equality, except that every NaN equals every NaN.
pub fn same_bits(a: &Data, b: &Data) -> bool {
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

/// Every `.ir` file under `tests/<dir>`, sorted.
pub fn files(dir: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
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
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests")
            .join(dir),
        &mut out,
    );
    out.sort();
    out
}
