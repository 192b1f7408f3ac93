//! Long graphs: every graph walk (trace, tape, grad, verify, passes, printer, parser,
//! plan, run) is iterative, so a chain of 10^5 ops compiles and runs on a thread with a
//! small stack.

use tapeflow::ir::{parse, print, verify, Graph};
use tapeflow::passes::PassConfig;
use tapeflow::{function_with, GradientTape, Tensor};

/// The stack of the threads below: small enough that a recursion once per node of a
/// 10^5-node path overflows it.
const SMALL_STACK: usize = 2 << 20;

/// Runs `f` on a thread with a [`SMALL_STACK`] stack (a stack overflow aborts the
/// test process, which fails the test).
fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(SMALL_STACK)
        .spawn(f)
        .expect("spawns")
        .join()
        .expect("the thread finished");
}

/// `n` alternating `sin`/`cos`: nothing for the passes to collapse.
fn chain(x: &Tensor, n: usize) -> Tensor {
    let mut y = x.clone();
    for i in 0..n {
        y = if i % 2 == 0 { y.sin() } else { y.cos() };
    }
    y
}

fn input() -> Tensor {
    Tensor::from_vec(vec![0.5f32, 1.0, -1.5, 2.0], &[4]).expect("4 values")
}

/// The value and gradient of the chain, recorded on a tape (eagerly or traced).
fn value_and_grad(x: &Tensor, n: usize) -> tapeflow::Result<(Tensor, Tensor)> {
    let tape = GradientTape::new();
    let y = tape.record(|| {
        tape.watch(x);
        chain(x, n)
    });
    let g = tape.gradient(&y, x)?;
    Ok((y, g))
}

/// 2·10^5 ops (7·10^5 nodes with the backward pass), the size the hardening issue asks
/// for: a recursion once per node of a path needs far more than the 2 MiB stack.
#[test]
fn a_traced_chain_of_200k_ops_differentiates_optimizes_prints_and_runs_on_a_small_stack() {
    const N: usize = 200_000;
    on_small_stack(|| {
        let x = input();
        // every pass, fusion of all sizes included
        let f = function_with(
            move |x: &Tensor| value_and_grad(x, N),
            PassConfig::default(),
        );
        let c = f.concrete(&[&x]).expect("compiles");
        assert!(c.traced_graph().len() > 3 * N, "forward and backward nodes");
        let text = c.text();
        assert!(
            text.lines().count() > 2 * N,
            "fused nodes print their bodies"
        );
        let traced = print(c.traced_graph(), true);
        assert!(traced.lines().count() > 3 * N);
        let (y, g) = f.call(&x).expect("runs");
        // the compiled graph computes what eager ops compute, bit for bit
        let (ey, eg) = value_and_grad(&x, N).expect("eager gradient");
        assert_eq!(y.to_vec_f32().unwrap(), ey.to_vec_f32().unwrap());
        assert_eq!(g.to_vec_f32().unwrap(), eg.to_vec_f32().unwrap());
        assert!(g.to_vec_f32().unwrap().iter().all(|v| v.is_finite()));
    });
}

#[test]
fn an_eager_taped_chain_of_200k_ops_differentiates_on_a_small_stack() {
    const N: usize = 200_000;
    on_small_stack(|| {
        let x = input();
        let (y, g) = value_and_grad(&x, N).expect("gradient");
        // the chain's derivative by the chain rule, one factor per op, in f32 as the ops do
        let mut want = Vec::new();
        for &x0 in &x.to_vec_f32().unwrap() {
            let mut v = Tensor::scalar(x0);
            let mut d = Tensor::scalar(1.0);
            for i in 0..64 {
                let dv = if i % 2 == 0 { v.cos() } else { -v.sin() };
                d = &d * &dv;
                v = if i % 2 == 0 { v.sin() } else { v.cos() };
            }
            want.push(d.to_scalar().unwrap());
        }
        assert_eq!(y.shape(), &[4]);
        // 200k factors of magnitude < 1: the gradient underflows to (signed) zero, and
        // the first 64 factors already bound it
        for (gi, wi) in g.to_vec_f32().unwrap().iter().zip(&want) {
            assert!(gi.abs() as f64 <= wi.abs() + 1e-6, "{gi} vs {wi}");
        }
    });
}

/// The text of a chain of `n` ops on one input, one op per line.
fn chain_text(n: usize) -> String {
    let mut s = String::from("graph(%0: f32[4]) {\n");
    for i in 1..=n {
        let op = if i % 2 == 0 { "cos" } else { "sin" };
        s.push_str(&format!("  %{i} = {op} %{} : f32[4]\n", i - 1));
    }
    s.push_str(&format!("  return %{n}\n}}\n"));
    s
}

#[test]
fn parsing_verifying_and_printing_a_100k_line_chain_works_on_a_small_stack() {
    const N: usize = 100_000;
    on_small_stack(|| {
        let text = chain_text(N);
        let g = parse(&text).expect("parses");
        assert_eq!(g.len(), N + 1);
        verify(&g).expect("verifies");
        assert_eq!(print(&g, false), text, "print(parse(s)) == s");
        assert_eq!(tapeflow::ir::to_dot(&g).lines().count(), 2 * N + 6);
    });
}

#[test]
fn the_verifier_finds_a_cycle_through_a_long_chain() {
    on_small_stack(|| {
        let mut g: Graph = parse(&chain_text(100_000)).expect("parses");
        let ids = g.node_ids();
        // the first sin now reads the last node: a cycle of 100k nodes
        g.set_operand(ids[1], 0, ids[ids.len() - 1]);
        let err = verify(&g).expect_err("a cycle").to_string();
        assert!(err.contains("cycle"), "{err}");
    });
}

/// `simplify` on a chain of 100k `add`s, each read once by the next: the rules that walk
/// a tree of adds (`add_of_disjoint_pads`) walk it without recursion.
#[test]
fn simplifying_a_100k_add_chain_works_on_a_small_stack() {
    const N: usize = 100_000;
    on_small_stack(|| {
        let mut text = String::from("graph(%0: f32[4], %1: f32[4]) {\n");
        for i in 2..N + 2 {
            text.push_str(&format!("  %{i} = add %{}, %1 : f32[4]\n", i - 1));
        }
        text.push_str(&format!("  return %{}\n}}\n", N + 1));
        let mut g = parse(&text).expect("parses");
        tapeflow::passes::simplify(&mut g).expect("simplifies");
        verify(&g).expect("verifies");
    });
}
