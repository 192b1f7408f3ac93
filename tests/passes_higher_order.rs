//! Higher-order derivative graphs must not blow up: the n-th derivative of
//! `sum(sin(x) * exp(-x*x))`, built with n nested `GradientTape`s inside `function`,
//! before and after optimization, for n = 1..6.
//!
//! Run with `--nocapture` to print the table (it goes into the README).

use tapeflow::ops::Op;
use tapeflow::passes::PassConfig;
use tapeflow::{function_with, DType, GradientTape, Tensor};

/// `sum(sin(x) * exp(-x²))` differentiated `n` times (a non-scalar target is summed, so
/// each level is `d/dx Σ f⁽ⁿ⁻¹⁾(x)`, i.e. the elementwise n-th derivative).
fn nth(x: &Tensor, n: usize) -> Tensor {
    if n == 0 {
        return (x.sin() * (-(x * x)).exp()).sum_all();
    }
    let tape = GradientTape::new();
    let y = tape.record(|| {
        tape.watch(x);
        nth(x, n - 1)
    });
    tape.gradient(&y, x).expect("x is watched")
}

struct Row {
    traced: usize,
    optimized: usize,
    fused_nodes: usize,
    fused_insts: usize,
}

fn row(n: usize, x: &Tensor) -> (Row, Vec<f64>) {
    let opt = function_with(move |x: &Tensor| Ok(nth(x, n)), PassConfig::default());
    let unopt = function_with(move |x: &Tensor| Ok(nth(x, n)), PassConfig::unoptimized());
    let c = opt.concrete(&[x]).unwrap();
    let g = c.graph();
    let fused: Vec<u32> = g
        .node_ids()
        .into_iter()
        .filter_map(|id| match g.node(id).op {
            Op::Fused(f) => Some(f),
            _ => None,
        })
        .collect();
    let r = Row {
        traced: c.traced_graph().live_len(),
        optimized: g.live_len(),
        fused_nodes: fused.len(),
        fused_insts: fused.iter().map(|&f| g.fused[f as usize].insts.len()).sum(),
    };
    let (a, b) = (opt.call(x).unwrap(), unopt.call(x).unwrap());
    let (a, b) = (a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
    for (p, q) in a.iter().zip(&b) {
        assert_eq!(
            p.to_bits(),
            q.to_bits(),
            "n = {n}: optimized {p} vs unoptimized {q}"
        );
    }
    (r, a)
}

#[test]
fn nth_derivative_graphs_stay_small() {
    let xs = [-1.3, -0.4, 0.0, 0.3, 0.9, 2.0];
    let x = Tensor::from_vec(xs.to_vec(), &[xs.len()]).unwrap();
    assert_eq!(x.dtype(), DType::F64);
    println!("n-th derivative of sum(sin(x)*exp(-x*x)), x: f64[6]");
    println!("| n | traced nodes | optimized nodes | of which fused | ops inside fused | optimized ops (nodes - fused + inside) |");
    println!("|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    for n in 1..=6 {
        let (r, values) = row(n, &x);
        println!(
            "| {n} | {} | {} | {} | {} | {} |",
            r.traced,
            r.optimized,
            r.fused_nodes,
            r.fused_insts,
            r.optimized - r.fused_nodes + r.fused_insts
        );
        // closed forms for the first two: f' = (cos x - 2x sin x) e^{-x²},
        // f'' = ((4x² - 3) sin x - 4x cos x) e^{-x²}
        for (i, &x) in xs.iter().enumerate() {
            let (s, c, e) = (f64::sin(x), f64::cos(x), f64::exp(-x * x));
            let want = match n {
                1 => (c - 2.0 * x * s) * e,
                2 => ((4.0 * x * x - 3.0) * s - 4.0 * x * c) * e,
                _ => continue,
            };
            assert!(
                (values[i] - want).abs() <= 1e-12 * (1.0 + want.abs()),
                "n = {n}, x = {x}: {} vs {want}",
                values[i]
            );
        }
        rows.push(r);
    }
    for (i, r) in rows.iter().enumerate() {
        let ops = r.optimized - r.fused_nodes + r.fused_insts;
        assert!(
            ops < r.traced,
            "n = {}: optimization did not shrink the graph ({} -> {ops} ops)",
            i + 1,
            r.traced
        );
    }
    // growth per derivative order stays modest after optimization (the traced graph grows faster)
    for w in rows.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let (oa, ob) = (
            a.optimized - a.fused_nodes + a.fused_insts,
            b.optimized - b.fused_nodes + b.fused_insts,
        );
        assert!(
            ob * a.traced < oa * b.traced * 2,
            "optimized growth {oa} -> {ob} vs traced {} -> {}",
            a.traced,
            b.traced
        );
    }
}

/// The traced and the optimized second-derivative graph, as snapshots.
#[test]
fn second_derivative_graphs() {
    let x = Tensor::from_vec(vec![0.5f64, 1.0], &[2]).unwrap();
    let f = tapeflow::function_with(|x: &Tensor| Ok(nth(x, 2)), PassConfig::default());
    let c = f.concrete(&[&x]).unwrap();
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("../snapshots");
    settings.bind(|| {
        insta::assert_snapshot!(
            "second_derivative_traced",
            tapeflow::ir::print(c.traced_graph(), false)
        );
        insta::assert_snapshot!("second_derivative_optimized", c.text());
    });
}
