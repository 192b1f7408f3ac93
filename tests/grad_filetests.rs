//! Grad filetests: IR text in, derivative graph out (STYLE.md 9).
//!
//! Each `tests/grad_filetests/*.ir` file starts with `; test grad wrt=%0,%1 order=N`
//! and `; run: %0=... %1=...` lines. The harness applies `grad_graph` N times, snapshots
//! the derivative graph's text, and for every run line checks each gradient element
//! against central finite differences of the order N−1 graph, so a snapshot diff shows
//! what changed and the run lines prove the numbers are still right.

use std::fmt::Write;
use tapeflow::autodiff::grad_graph;
use tapeflow::exec::Plan;
use tapeflow::ir::{parse, print, verify, Graph};
use tapeflow::{Data, Tensor};

struct Case {
    wrt: Vec<usize>,
    order: usize,
    runs: Vec<Vec<Vec<f64>>>,
}

fn header(text: &str) -> Case {
    let mut case = Case {
        wrt: Vec::new(),
        order: 1,
        runs: Vec::new(),
    };
    for line in text.lines().filter_map(|l| l.strip_prefix("; ")) {
        if let Some(rest) = line.strip_prefix("test grad ") {
            for kv in rest.split_whitespace() {
                match kv.split_once('=') {
                    Some(("wrt", v)) => {
                        case.wrt = v
                            .split(',')
                            .map(|s| s.trim_start_matches('%').parse().unwrap())
                            .collect()
                    }
                    Some(("order", v)) => case.order = v.parse().unwrap(),
                    _ => panic!("bad header item {kv}"),
                }
            }
        } else if let Some(rest) = line.strip_prefix("run: ") {
            let mut args = Vec::new();
            for (i, part) in rest.split('%').skip(1).enumerate() {
                let (k, v) = part.split_once('=').unwrap();
                assert_eq!(k.parse::<usize>().unwrap(), i, "run arguments in order");
                let v = v.trim().trim_start_matches('[').trim_end_matches(']');
                args.push(
                    v.split(',')
                        .map(|x| x.trim().parse::<f64>().unwrap())
                        .collect(),
                );
            }
            case.runs.push(args);
        }
    }
    case
}

fn run(g: &Graph, args: &[Tensor]) -> Vec<Vec<f64>> {
    let plan = Plan::new(g.clone()).unwrap();
    let datas: Vec<&Data> = args.iter().map(|a| a.data().unwrap()).collect();
    plan.run(&datas, &mut Default::default())
        .unwrap()
        .into_iter()
        .map(|d| d.to_f64_vec())
        .collect()
}

fn tensors(g: &Graph, values: &[Vec<f64>]) -> Vec<Tensor> {
    g.inputs
        .iter()
        .zip(values)
        .map(|(&i, v)| Tensor::from_vec(v.clone(), &g.node(i).shape).unwrap())
        .collect()
}

#[test]
fn grad_filetests() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grad_filetests");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 6);
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let case = header(&text);
        let g = parse(&text).unwrap();
        let lower = grad_graph(&g, &case.wrt, case.order - 1).unwrap();
        let d = grad_graph(&g, &case.wrt, case.order).unwrap();
        verify(&d).unwrap();
        let mut out = print(&d, false);
        for values in &case.runs {
            let args = tensors(&g, values);
            let got = run(&d, &args);
            let _ = writeln!(out, "; run: {values:?} -> {got:?}");
            // finite differences of Σ(lower outputs) along each input element
            for (k, &w) in case.wrt.iter().enumerate() {
                for e in 0..values[w].len() {
                    let at = |h: f64| {
                        let mut v = values.clone();
                        v[w][e] += h;
                        run(&lower, &tensors(&g, &v)).iter().flatten().sum::<f64>()
                    };
                    let eps = 1e-6;
                    let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
                    let symbolic = got[k][e];
                    assert!(
                        (numeric - symbolic).abs() <= 1e-5 * (1.0 + symbolic.abs()),
                        "{}: d/d%{w}[{e}]: symbolic {symbolic} vs numeric {numeric}",
                        path.display()
                    );
                }
            }
        }
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        let mut s = insta::Settings::clone_current();
        s.set_snapshot_path("../snapshots");
        s.set_prepend_module_to_snapshot(false);
        s.bind(|| insta::assert_snapshot!(format!("grad_{name}"), out));
    }
}
