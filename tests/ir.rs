//! The text IR: snapshots of traced forward and backward graphs (reviewed like code),
//! the parser round trip on every snapshot, DOT export, and parse errors.

mod common;

use common::{
    fake_batch, sin_exp_second_derivative, snapshot_body, sparse_ce_from_logits, trace, Mlp,
};
use tapeflow::ir::{parse, print, to_dot, verify};
use tapeflow::{DType, GradientTape, Padding, Tensor, Variable};

fn snap(name: &str, text: &str) {
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path("../snapshots");
    s.set_prepend_module_to_snapshot(false);
    s.bind(|| insta::assert_snapshot!(name, text));
}

fn linear_vars() -> (Variable, Variable) {
    (
        Variable::named("a", Tensor::scalar(0.5)),
        Variable::named("b", Tensor::scalar(0.1)),
    )
}

#[test]
fn forward_linear_model() {
    let (a, b) = linear_vars();
    let x = Tensor::random_normal(&[100], 0.0, 1.0, 1, DType::F32);
    let y = &x * 3.0 + 2.0;
    let c = trace(
        move |t| {
            Ok(vec![(&a.read() * &t[0] + &b.read() - &t[1])
                .square()
                .sum_all()])
        },
        &[&x, &y],
    );
    snap("forward_linear_model", &c.traced_graph().to_string());
}

#[test]
fn forward_mlp_sparse_ce() {
    let mlp = Mlp::new(0);
    let (x, y) = fake_batch(64, 1);
    let c = trace(
        move |t| Ok(vec![sparse_ce_from_logits(&t[1], &mlp.forward(&t[0]))]),
        &[&x, &y],
    );
    snap("forward_mlp_sparse_ce", &c.traced_graph().to_string());
}

#[test]
fn backward_square() {
    let x = Tensor::scalar(3.0);
    let c = trace(
        |t| {
            let tape = GradientTape::new();
            let y = tape.record(|| {
                tape.watch(&t[0]);
                &t[0] * &t[0]
            });
            Ok(vec![tape.gradient(&y, &t[0])?])
        },
        &[&x],
    );
    assert_eq!(c.run(&[x]).unwrap()[0].to_scalar().unwrap(), 6.0);
    snap("backward_square", &c.traced_graph().to_string());
}

#[test]
fn backward_nested_second_derivative_of_cube() {
    let x = Tensor::scalar(2.0);
    let c = trace(
        |t| {
            let x = &t[0];
            let outer = GradientTape::new();
            let dy = outer.record(|| {
                outer.watch(x);
                let inner = GradientTape::new();
                let y = inner.record(|| {
                    inner.watch(x);
                    x * x * x
                });
                inner.gradient(&y, x)
            })?;
            Ok(vec![outer.gradient(&dy, x)?])
        },
        &[&x],
    );
    assert_eq!(c.run(&[x]).unwrap()[0].to_scalar().unwrap(), 12.0); // 6x at 2
    snap("backward_nested_cube", &c.traced_graph().to_string());
}

#[test]
fn backward_linear_regression() {
    let (a, b) = linear_vars();
    let x = Tensor::random_normal(&[100], 0.0, 1.0, 1, DType::F32);
    let y = &x * 3.0 + 2.0;
    let c = trace(
        move |t| {
            let tape = GradientTape::new();
            let loss = tape.record(|| (&a.read() * &t[0] + &b.read() - &t[1]).square().sum_all());
            let g = tape.gradient(&loss, &[a.clone(), b.clone()])?;
            Ok(g.into_iter().map(|g| g.unwrap()).collect())
        },
        &[&x, &y],
    );
    snap("backward_linear_regression", &c.traced_graph().to_string());
}

#[test]
fn backward_mlp_train_step() {
    let mlp = Mlp::new(0);
    let (x, y) = fake_batch(64, 1);
    let c = trace(
        move |t| Ok(vec![mlp.train_step(&t[0], &t[1], 1e-3)?]),
        &[&x, &y],
    );
    snap("backward_mlp_train_step", &c.traced_graph().to_string());
}

/// The same train step traced once for a symbolic batch `b`: the backward graph is the
/// concrete one with `b` for 64, and the mean's count is a `dim_value` bound per call.
/// Also snapshots the optimized symbolic graph, and its DOT names the symbol.
#[test]
fn backward_mlp_train_step_symbolic() {
    let mlp = Mlp::new(0);
    let b = tapeflow::Dim::sym("b");
    let f = tapeflow::function_with_signature(
        move |x: &Tensor, y: &Tensor| mlp.train_step(x, y, 1e-3),
        &[
            tapeflow::TensorSpec::with_dims(&[b, 784.into()], DType::F32),
            tapeflow::TensorSpec::with_dims(&[b], DType::I64),
        ],
    );
    let (x, y) = fake_batch(64, 1);
    let c = f.concrete(&[&x, &y]).unwrap();
    let traced = c.traced_graph().to_string();
    assert!(
        traced.starts_with("graph(%0: f32[b,784], %1: i64[b])"),
        "{traced}"
    );
    assert!(traced.contains("dim_value[d=b, to=f32]"), "{traced}");
    snap("backward_mlp_train_step_symbolic", &traced);
    snap("optimized_mlp_train_step_symbolic", &c.text());
    assert!(to_dot(c.graph()).contains("f32[b,784]"));
    // the text round-trips, symbols included
    let reparsed = parse(&traced).unwrap();
    verify(&reparsed).unwrap();
    assert_eq!(print(&reparsed, false), print(c.traced_graph(), false));
}

#[test]
fn backward_conv_pool() {
    let x = Tensor::random_normal(&[2, 8, 8, 1], 0.0, 1.0, 1, DType::F32);
    let w = Variable::named(
        "conv/kernel",
        Tensor::random_normal(&[3, 3, 1, 4], 0.0, 0.1, 2, DType::F32),
    );
    let c = trace(
        move |t| {
            let tape = GradientTape::new();
            let loss = tape.record(|| {
                t[0].conv2d(&w.read(), (1, 1), Padding::Valid)
                    .relu()
                    .max_pool2d((2, 2), (2, 2), Padding::Valid)
                    .sum_all()
            });
            Ok(vec![tape.gradient(&loss, &w)?])
        },
        &[&x],
    );
    snap("backward_conv_pool", &c.traced_graph().to_string());
}

#[test]
fn backward_second_order_sin_exp() {
    let x = Tensor::random_normal(&[16], 0.0, 1.0, 1, DType::F32);
    let c = trace(|t| Ok(vec![sin_exp_second_derivative(&t[0])?]), &[&x]);
    snap(
        "backward_second_order_sin_exp",
        &c.traced_graph().to_string(),
    );
}

#[test]
fn every_snapshot_round_trips_through_the_parser() {
    let mut n = 0;
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("snap") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let body = snapshot_body(&text);
        if !body.starts_with("graph(") || body.contains(" elements>") {
            continue;
        }
        let g = parse(body).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        verify(&g).unwrap();
        // filetest snapshots append `; run:` result lines after the graph
        let graph_text: String = body
            .lines()
            .filter(|l| !l.starts_with(';'))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(print(&g, false), graph_text, "{}", path.display());
        n += 1;
    }
    assert!(n >= 8, "only {n} graph snapshots found");
}

#[test]
fn dot_export_names_every_node_and_edge() {
    let (a, b) = linear_vars();
    let x = Tensor::vec(&[1.0f32, 2.0]);
    let c = trace(
        move |t| Ok(vec![(&a.read() * &t[0] + &b.read()).sum_all()]),
        &[&x],
    );
    let g = c.traced_graph();
    let dot = to_dot(g);
    assert!(dot.starts_with("digraph tapeflow {") && dot.trim_end().ends_with('}'));
    assert_eq!(dot.matches(" [label=\"%").count(), g.live_len());
    assert!(dot.contains("read_var[a]") && dot.contains("mul") && dot.contains("return 0"));
    let edges: usize = g
        .canonical_order()
        .iter()
        .map(|&n| g.operands(n).len())
        .sum();
    assert_eq!(dot.matches(" -> n").count(), edges);
}

#[test]
fn locations_point_at_the_users_line() {
    let x = Tensor::vec(&[1.0f32, 2.0]);
    let c = trace(|t| Ok(vec![t[0].exp()]), &[&x]);
    let text = print(c.traced_graph(), true);
    assert!(
        text.lines()
            .any(|l| l.contains("exp") && l.contains("; tests/ir.rs:")),
        "{text}"
    );
}

#[test]
fn parse_errors_name_the_line() {
    let bad = "graph(%0: f32[2]) {\n  %1 = add %0, %7 : f32[2]\n  return %1\n}\n";
    let e = parse(bad).unwrap_err().to_string();
    assert!(e.contains("line 2") && e.contains("%7"), "{e}");
    let wrong_type = "graph(%0: f32[2]) {\n  %1 = exp %0 : f32[3]\n  return %1\n}\n";
    let e = parse(wrong_type).unwrap_err().to_string();
    assert!(e.contains("inferred f32[2]"), "{e}");
    let unknown = "graph(%0: f32[2]) {\n  %1 = frobnicate %0 : f32[2]\n  return %1\n}\n";
    assert!(parse(unknown)
        .unwrap_err()
        .to_string()
        .contains("unknown op `frobnicate`"));
}

#[test]
fn parsed_graph_runs() {
    let g = parse("graph(%0: f32[3]) {\n  %1 = const 2.0 : f32[]\n  %2 = mul %0, %1 : f32[3]\n  %3 = sum[axes=[0]] %2 : f32[]\n  return %3\n}\n").unwrap();
    let plan = tapeflow::exec::Plan::new(g).unwrap();
    let x = Tensor::vec(&[1.0f32, 2.0, 3.0]);
    let out = plan
        .run(&[x.data().unwrap()], &mut Default::default())
        .unwrap();
    assert_eq!(Tensor::from_data(out[0].clone()).to_scalar().unwrap(), 12.0);
}

/// Found by the IR fuzzer: a graph returning a `cond`'s tuple itself verified, and when
/// the `cond` folded (constant predicate) the output named a removed node, which a later
/// pass looked up and panicked on. A graph returns control-flow results by `get`.
#[test]
fn verifier_rejects_a_control_flow_tuple_as_a_graph_output() {
    let text = "graph(%0: f32[2]) {
  %1 = const 0 : i64[]
  %2 = cond %1, %0 : (f32[2])
    then(%0: f32[2]) {
      %1 = exp %0 : f32[2]
      return %1
    }
    else(%0: f32[2]) {
      %1 = neg %0 : f32[2]
      return %1
    }
  %3 = get[index=0] %2 : f32[2]
  return %2
}";
    let e = verify(&parse(text).unwrap()).unwrap_err().to_string();
    assert!(e.contains("output %2 is a cond's tuple"), "{e}");
    let fixed = text.replace("return %2\n}", "return %3\n}");
    verify(&parse(&fixed).unwrap()).unwrap();
}

#[test]
fn verifier_rejects_a_scan_claiming_more_carries_than_results() {
    // found by the IR fuzzer: `carries=3` with two results once made the verifier
    // slice past the result list
    let text = "graph(%0: f32[2], %1: f32[3,2], %2: f32[2]) {
  %3 = mul %2, %2 : f32[2]
  %4 = scan[carries=3, xs=1, reverse=false, saved=false] %0, %1, %2, %3 : (f32[2], f32[3,2])
    body(%0: f32[2], %1: f32[2], %2: f32[2], %3: f32[2]) {
      %4 = mul %0, %3 : f32[2]
      return %4, %4
    }
  %5 = get[index=0] %4 : f32[2]
  %6 = get[index=1] %4 : f32[3,2]
  return %5, %6
}";
    let g = parse(text).unwrap();
    let e = verify(&g).unwrap_err().to_string();
    assert!(
        e.contains("scan") && e.contains("do not fit the carries"),
        "{e}"
    );
    // and the carries plus scanned operands once overflowed
    let huge = text.replace("carries=3", &format!("carries={}", u64::MAX));
    let e = verify(&parse(&huge).unwrap()).unwrap_err().to_string();
    assert!(e.contains("has 4 operands, needs at least"), "{e}");
}

#[test]
fn a_select_without_operands_is_a_parse_error() {
    // found by the IR fuzzer: the type rule sliced the operands before counting them
    let e = parse("graph(%0: f32[2]) {\n  %1 = select : f32[]\n  return %1\n}")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("line 2") && e.contains("expects 3 operands, got 0"),
        "{e}"
    );
}
