//! Grad filetests: IR text in, derivative graph out (STYLE.md 9).
//!
//! Each `tests/grad_filetests/*.ir` file starts with `; test grad wrt=%0,%1 order=N`
//! and `; run: %0=... %1=...` lines, read by the shared filetest harness
//! (`tests/harness`, also used by the pass filetests). This test applies `grad_graph`
//! N times, snapshots the derivative graph's text, and for every run line checks each gradient element
//! against central finite differences of the order N−1 graph, so a snapshot diff shows
//! what changed and the run lines prove the numbers are still right.

mod harness;

use std::fmt::Write;
use tapeflow::autodiff::grad_graph;
use tapeflow::exec::Plan;
use tapeflow::ir::{print, verify, Graph};
use tapeflow::{Data, Tensor};

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
    let files = harness::files("grad_filetests");
    assert!(files.len() >= 6);
    for path in files {
        let t = harness::load(&path);
        assert_eq!(t.kind, "grad", "{}", path.display());
        let wrt: Vec<usize> = (t.arg("wrt").split(','))
            .map(|s| s.trim_start_matches('%').parse().unwrap())
            .collect();
        let order: usize = t.arg("order").parse().unwrap();
        let g = t.graph();
        let lower = grad_graph(&g, &wrt, order - 1).unwrap();
        let d = grad_graph(&g, &wrt, order).unwrap();
        verify(&d).unwrap();
        let mut out = print(&d, false);
        let runs: Vec<Vec<Vec<f64>>> = (t.inputs(&g).iter())
            .map(|run| run.iter().map(Data::to_f64_vec).collect())
            .collect();
        for values in &runs {
            let args = tensors(&g, values);
            let got = run(&d, &args);
            let _ = writeln!(out, "; run: {values:?} -> {got:?}");
            // finite differences of Σ(lower outputs) along each input element
            for (k, &w) in wrt.iter().enumerate() {
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
