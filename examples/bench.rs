//! Eager vs compiled, same code: the benchmark report.
//!
//! `cargo run --release --example bench` prints a markdown table; `-- --json` prints the
//! same as one JSON array (`-- --quick` for a short run; `-- --profile` adds, per workload,
//! the compiled step's time per op kind (also inside loop bodies) and the GFLOP/s of
//! every matmul and convolution outside them;
//! `-- --profile --only w6` profiles one workload; `-- --only w6` alone times one).
//! Compiled steps run their fused loops as generated code where a C compiler is there;
//! the same plan is timed again with the fused-loop interpreter (`fused_interp_us`), and
//! `codegen_ms` is how long the compiled step waited for the C compiler after its plan
//! was made. Each workload is one training
//! (or derivative) step written once as a closure, run eagerly op by op and compiled
//! with `function`. The workloads live in `benches/workloads/mod.rs`, shared with the
//! criterion benches:
//!
//! - W1 mlp_small: MLP 784-64-64-10, batch 64, SparseCategoricalCrossentropy(from_logits), SGD 1e-3
//! - W2 cnn: Conv2D(32,3,relu) → MaxPool2 → Conv2D(64,3,relu) → MaxPool2 → Conv2D(64,3,relu)
//!   → Flatten → Dense(64,relu) → Dense(10), batch 32, 28x28x1, Adam 1e-3
//! - W3 mlp_large: MLP 784-1024-1024-10, batch 256, SGD (GFLOP/s reported)
//! - W4 linreg: y = a·X + b on 1000 points, sum of squares, assign_sub gradient descent
//! - W5 second_order: grad(sum(grad(f)))(x), f(x) = sum(sin(x)·e^(−x²)), x of 1e6 elements
//! - W6 lstm: the `mnist_lstm` model, LSTM(128) → Dense(10) over 28 steps of 28 pixels,
//!   batch 64, Adam 1e-3; the recurrence is one `scan` op in the compiled graph
//!
//! The row `w1 symbolic` runs W1 through one shape-polymorphic trace (`f32[b,784]`,
//! `i64[b]`, bound to 64 per call); its compile time is the symbolic trace plus the
//! instance for b = 64, and the line under the table gives its compiled time as a
//! ratio of W1's.

#[path = "../benches/workloads/mod.rs"]
mod workloads;

use std::time::{Duration, Instant};
use tapeflow::exec::codegen::Codegen;
use tapeflow::exec::RunStats;
use tapeflow::trace::ConcreteFunction;
use tapeflow::{function, function_with_signature, Dim, Result, Tensor, TensorSpec};

struct Row {
    workload: &'static str,
    eager_us: f64,
    compiled_us: f64,
    compile_ms: f64,
    gflops: Option<f64>,
    /// Compiled, with the fused loops in the interpreter instead of generated code
    /// (`None` without fused steps or without a C compiler).
    fused_interp_us: Option<f64>,
    /// Waiting for the C compiler after the plan was made (0 from the disk cache).
    codegen_ms: f64,
}

/// Median seconds per call of `f`, over calls until `budget` is spent.
fn time(budget: Duration, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?; // warm-up
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed() < budget || samples.len() < 3 {
        let t = Instant::now();
        f()?;
        samples.push(t.elapsed().as_secs_f64());
        if samples.len() >= 2000 {
            break;
        }
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    Ok(samples[samples.len() / 2])
}

/// The signature of `w`'s arguments with their first axis the symbol `b`.
fn batch_signature(w: &workloads::Workload) -> Vec<TensorSpec> {
    [&w.x, &w.y]
        .iter()
        .map(|t: &&Tensor| {
            let dims: Vec<Dim> = std::iter::once(Dim::sym("b"))
                .chain(t.shape()[1..].iter().map(|&n| Dim::from(n)))
                .collect();
            TensorSpec::with_dims(&dims, t.dtype())
        })
        .collect()
}

/// Times one workload eagerly and compiled, and its compile; `symbolic` compiles it
/// with a symbolic batch (see the module docs).
fn bench(w: &workloads::Workload, budget: Duration, symbolic: bool) -> Result<Row> {
    let step = w.closure();
    let (x, y) = (&w.x, &w.y);
    let eager = time(budget, || step(x, y).map(|_| ()))?;
    let compiled_fn = if symbolic {
        function_with_signature(w.closure(), &batch_signature(w))
    } else {
        function(w.closure())
    };
    // compile = trace + differentiate + optimize + plan (no run); symbolic: the
    // symbolic trace and the instance for this batch size
    let t = Instant::now();
    let c: std::sync::Arc<ConcreteFunction> = compiled_fn.concrete(&[x, y])?;
    c.plan_for(&[x, y])?;
    let compile_ms = t.elapsed().as_secs_f64() * 1e3;
    // fused loops as generated code (waiting for the C compiler, which started in the
    // background when the plan was made), then the same plan with the interpreter
    let t = Instant::now();
    c.plan().set_codegen(Codegen::Force);
    let codegen_ms = t.elapsed().as_secs_f64() * 1e3;
    let generated = c.plan().generated_steps().0 > 0;
    let compiled = time(budget, || compiled_fn.call(x, y).map(|_| ()))?;
    c.plan().set_codegen(Codegen::Off);
    let fused_interp = match generated {
        true => Some(time(budget, || compiled_fn.call(x, y).map(|_| ()))?),
        false => None,
    };
    Ok(Row {
        workload: if symbolic { "w1 symbolic" } else { w.name },
        eager_us: eager * 1e6,
        compiled_us: compiled * 1e6,
        compile_ms,
        gflops: w.flops.map(|f| f / compiled / 1e9),
        fused_interp_us: fused_interp.map(|t| t * 1e6),
        codegen_ms,
    })
}

/// Prints where one compiled step of `w` spends its time: per op kind, and each
/// matmul/convolution with its FLOP rate (median of several profiled runs).
fn profile(w: &workloads::Workload, runs: usize) -> Result<()> {
    let f = function(w.closure());
    let cf = f.concrete(&[&w.x, &w.y])?;
    cf.plan().set_codegen(Codegen::Force); // profile what `bench` times
    let inputs = [w.x.data()?, w.y.data()?];
    let mut all: Vec<RunStats> = Vec::new();
    for i in 0..runs + 2 {
        let mut stats = RunStats {
            collect_profile: true,
            ..RunStats::default()
        };
        cf.plan().run(&inputs, &mut stats)?;
        if i >= 2 {
            all.push(stats); // the first two runs warm the pool and caches
        }
    }
    let total = |s: &RunStats| s.profile.iter().map(|(_, d)| d.as_secs_f64()).sum::<f64>();
    all.sort_by(|a, b| total(a).total_cmp(&total(b)));
    let median = &all[all.len() / 2];
    let step_us = total(median) * 1e6;
    println!(
        "\n### {} (profiled step {step_us:.1} µs, run in order)\n",
        w.name
    );
    // time per op kind, longest first, as a share of the step
    let table = |head: &str, times: &[(&str, std::time::Duration)]| {
        let mut kinds = times.to_vec();
        kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
        println!("| {head} | µs | share of the step |");
        println!("| --- | ---: | ---: |");
        for (op, d) in &kinds {
            let us = d.as_secs_f64() * 1e6;
            println!("| {op} | {us:.1} | {:.0}% |", 100.0 * us / step_us);
        }
    };
    table("op", &median.profile);
    if !median.loop_profile.is_empty() {
        // the same inside loop bodies (part of the loops' time above)
        println!();
        table("op inside loops", &median.loop_profile);
    }
    // the products and convolutions, and the loops (whose bodies' steps are not listed)
    let loops = ["scan", "while", "cond"];
    let gemms: Vec<_> = (median.steps_profile.iter())
        .filter(|s| s.macs > 0 || loops.contains(&s.op))
        .collect();
    if !gemms.is_empty() {
        println!("\n| step | result | µs | GFLOP/s |");
        println!("| --- | --- | ---: | ---: |");
        for s in gemms {
            let t = s.time.as_secs_f64();
            let gflops = match s.macs {
                0 => "–".to_string(),
                macs => format!("{:.1}", 2.0 * macs as f64 / t / 1e9),
            };
            println!("| {} | {} | {:.1} | {gflops} |", s.op, s.ty, t * 1e6);
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let json = std::env::args().any(|a| a == "--json");
    let quick = std::env::args().any(|a| a == "--quick");
    // `--only w6` limits the report to the workloads whose name starts with it
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    if std::env::args().any(|a| a == "--profile") {
        let all = workloads::all();
        let picked = all
            .iter()
            .filter(|w| only.as_ref().is_none_or(|p| w.name.starts_with(p.as_str())));
        for w in picked {
            profile(w, if quick { 3 } else { 15 })?;
        }
        return Ok(());
    }
    let budget = Duration::from_millis(if quick { 200 } else { 3000 });
    let all = workloads::all();
    let picked = |name: &str| only.as_ref().is_none_or(|p| name.starts_with(p.as_str()));
    let mut rows = all
        .iter()
        .filter(|w| picked(w.name))
        .map(|w| bench(w, budget, false))
        .collect::<Result<Vec<_>>>()?;
    // the symbolic trace of W1, against the concrete one
    let symbolic_ratio = if picked(all[0].name) {
        rows.push(bench(&all[0], budget, true)?);
        Some(rows[rows.len() - 1].compiled_us / rows[0].compiled_us)
    } else {
        None
    };

    let threads = rayon::current_num_threads();
    if json {
        let items: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{{\"workload\":\"{}\",\"eager_us\":{:.1},\"compiled_us\":{:.1},\"compile_ms\":{:.2},\"gflops\":{},\"threads\":{},\"fused_interp_us\":{},\"codegen_ms\":{:.1}}}",
                    r.workload,
                    r.eager_us,
                    r.compiled_us,
                    r.compile_ms,
                    r.gflops.map(|g| format!("{g:.1}")).unwrap_or_else(|| "null".into()),
                    threads,
                    r.fused_interp_us.map(|t| format!("{t:.1}")).unwrap_or_else(|| "null".into()),
                    r.codegen_ms
                )
            })
            .collect();
        println!("[{}]", items.join(","));
    } else {
        println!("| workload | eager µs/step | compiled µs/step | speedup | compile ms | GFLOP/s | threads | fused loops interpreted µs/step | C compile wait ms |");
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        for r in &rows {
            println!(
                "| {} | {:.1} | {:.1} | {:.2}x | {:.2} | {} | {} | {} | {:.1} |",
                r.workload,
                r.eager_us,
                r.compiled_us,
                r.eager_us / r.compiled_us,
                r.compile_ms,
                r.gflops
                    .map(|g| format!("{g:.1}"))
                    .unwrap_or_else(|| "–".into()),
                threads,
                r.fused_interp_us
                    .map(|t| format!("{t:.1}"))
                    .unwrap_or_else(|| "–".into()),
                r.codegen_ms
            );
        }
        if let Some(ratio) = symbolic_ratio {
            println!(
                "\nw1 symbolic / w1 compiled µs/step: {ratio:.3} (one trace for every batch size vs a trace for batch 64)"
            );
        }
    }
    Ok(())
}
