//! Data-parallel training under `mpirun` (feature `mpi`; `harness = false`).
//!
//! `cargo test --features mpi --test distributed` runs this file's `main` as the
//! *driver*: it starts `mpirun` on this same binary (which then runs as a *worker*, one
//! per rank, because `mpirun` sets `OMPI_COMM_WORLD_SIZE`) for each scenario and checks
//! what the ranks print and how they end:
//!
//! - **1 vs 2 vs 4 ranks** (`-np 4` oversubscribed): 20 compiled SGD steps of an MLP on a
//!   global batch of 16 split over the ranks (per-rank batch 16/N) give the parameters of
//!   one process with batch 16 within [`BOUND`]; every rank ends with the same bits;
//!   once in order (the small all-reduces run inline), once with the dataflow schedule,
//!   1 KiB buckets and `TAPEFLOW_MPI_INLINE_BYTES=0` (several collectives started from
//!   rayon tasks and run by the communication thread while the others compute).
//! - **broadcast**: ranks initialized from different seeds hold the root's values
//!   after `broadcast_variables`, for root 0 and the last rank.
//! - **buffers**: eager all-reduces of one size (4 KiB and 16 MiB) receive into the
//!   buffer of a result dropped before, never into one still held.
//! - **readers**: one all-reduce read by four products at once on the dataflow
//!   schedule with two threads (300 calls): every reader waits for the value.
//! - **fit**: `FitOptions::distributed` on 2 ranks: identical parameters on both, the
//!   loss falls, one progress line per epoch (rank 0's).
//! - **faults**: rank 1 panics, returns an `Err`, calls `exit(3)` or aborts (killed by
//!   SIGABRT) while rank 0 waits in an all-reduce: the job ends with a non-zero status
//!   in under 30 s (the `Err` case through the watchdog's default 20 s).
//!
//! The worker runs with `RAYON_NUM_THREADS=1` (up to 4 ranks share 2 cores) and the
//! flags `mpirun` needs as root in CI.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tapeflow::distributed::{self, DistributedGradientTape};
use tapeflow::exec::Schedule;
use tapeflow::nn::{Dense, FitOptions, Model, Sequential, SGD};
use tapeflow::ops::ReduceOp;
use tapeflow::passes::PassConfig;
use tapeflow::{function_with, DType, Error, Result, Tensor, Variable};

/// How far the parameters of N ranks (per-rank batch 16/N) may be from one process's
/// (batch 16) after 20 steps: `|a − b| ≤ BOUND · (1 + |b|)` per element. Both compute
/// the same mean gradient in f32, summed in a different order (per-rank sums of 16/N
/// samples, then over the ranks, instead of one sum of 16): each gradient element
/// differs by a few ulps (ε = 6e-8 relative to the sum of the magnitudes), and 20
/// steps of learning rate 0.1 carry such differences on without amplifying them
/// much. The measured maximum is about 1e-7 (2 and 4 ranks); the bound leaves a
/// factor of 100.
const BOUND: f32 = 1e-5;

const STEPS: usize = 20;
const BATCH: usize = 16;

fn launched_by_mpirun() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
}

fn main() {
    if launched_by_mpirun() {
        let args: Vec<String> = std::env::args().skip(1).collect();
        if let Err(e) = worker(&args) {
            eprintln!("worker {args:?}: rank {}: {e}", distributed::rank());
            std::process::exit(1);
        }
        return;
    }
    driver();
}

// ---------------------------------------------------------------- the workers

fn worker(args: &[String]) -> Result<()> {
    let _mpi = distributed::init()?;
    match args.first().map(String::as_str) {
        Some("params") => params(args.get(1).map(String::as_str) == Some("parallel")),
        Some("broadcast") => broadcast(),
        Some("fit") => fit(),
        Some("buffers") => buffers(),
        Some("readers") => readers(),
        Some("fail") => fail(args.get(1).map(String::as_str).unwrap_or("")),
        other => Err(Error::Invalid(format!("unknown scenario {other:?}"))),
    }
}

/// Fails unless every rank holds the same bits in `vars` (each compares with rank 0's
/// values, then the mismatches are summed over the ranks).
fn check_identical(vars: &[Variable]) -> Result<()> {
    let copies: Vec<Variable> = vars
        .iter()
        .map(|v| Variable::named(format!("copy_{}", v.name()), v.value()))
        .collect();
    distributed::broadcast_variables(&copies, 0)?;
    let mut differ = 0u32;
    for (v, c) in vars.iter().zip(&copies) {
        let (a, b) = (v.value().to_vec_f32()?, c.value().to_vec_f32()?);
        differ += a
            .iter()
            .zip(&b)
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .count() as u32;
    }
    let total = Tensor::scalar(differ as f32)
        .all_reduce(ReduceOp::Sum)
        .to_scalar()?;
    if total != 0.0 {
        return Err(Error::Invalid(format!(
            "{total} parameter elements differ between the ranks"
        )));
    }
    Ok(())
}

fn print_params(vars: &[Variable]) -> Result<()> {
    if distributed::rank() == 0 {
        for v in vars {
            println!("PARAM {} {:?}", v.name(), v.value().to_vec_f32()?);
        }
    }
    Ok(())
}

/// 20 compiled SGD steps of an MLP 8-32-16-4 on global batches of 16 rows, this rank's
/// share of each.
fn params(parallel: bool) -> Result<()> {
    let (n, r) = (distributed::size(), distributed::rank());
    if !BATCH.is_multiple_of(n) {
        return Err(Error::Invalid(format!(
            "{BATCH} rows do not split over {n} ranks"
        )));
    }
    let shapes: [&[usize]; 6] = [&[8, 32], &[32], &[32, 16], &[16], &[16, 4], &[4]];
    let vars: Vec<Variable> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let init = Tensor::random_normal(s, 0.0, 0.3, i as u64, DType::F32);
            Variable::named(format!("p{i}"), init)
        })
        .collect();
    let vs = vars.clone();
    let config = match parallel {
        // several buckets, started from rayon tasks
        true => PassConfig {
            all_reduce_bucket_bytes: Some(1024),
            ..PassConfig::tuned()
        },
        false => PassConfig::tuned(),
    };
    let step = function_with(
        move |x: &Tensor, y: &Tensor| {
            let tape = DistributedGradientTape::new();
            let loss = tape.record(|| {
                let h = (&x.matmul(&vs[0].read()) + &vs[1].read()).tanh();
                let h = (&h.matmul(&vs[2].read()) + &vs[3].read()).tanh();
                let out = &h.matmul(&vs[4].read()) + &vs[5].read();
                (&out - y).square().mean_all()
            });
            let grads = tape.gradient(&loss, &vs)?;
            for (v, g) in vs.iter().zip(&grads) {
                v.assign_sub(&(g.as_ref().expect("connected") * 0.1));
            }
            Ok(loss)
        },
        config,
    );
    let x = Tensor::random_normal(&[STEPS * BATCH, 8], 0.0, 1.0, 100, DType::F32);
    let y = Tensor::random_normal(&[STEPS * BATCH, 4], 0.0, 1.0, 101, DType::F32);
    let share = BATCH / n;
    for s in 0..STEPS {
        let rows = s * BATCH + r * share..s * BATCH + (r + 1) * share;
        let (xb, yb) = (x.slice(0, rows.clone()), y.slice(0, rows));
        if s == 0 && parallel {
            let c = step.concrete(&[&xb, &yb])?;
            c.plan().set_schedule(Schedule::Parallel);
            let k = c.text().matches("all_reduce[op=mean]").count();
            if k < 2 {
                return Err(Error::Invalid(format!("expected several buckets, got {k}")));
            }
        }
        step.call(&xb, &yb)?;
    }
    check_identical(&vars)?;
    print_params(&vars)
}

fn broadcast() -> Result<()> {
    let (n, r) = (distributed::size(), distributed::rank());
    for root in [0, n - 1] {
        let init =
            |rank: usize| Tensor::random_normal(&[3, 7], 0.0, 1.0, 1000 + rank as u64, DType::F32);
        let v = Variable::named("v", init(r));
        distributed::broadcast_variables(std::slice::from_ref(&v), root)?;
        if v.value().to_vec_f32()? != init(root).to_vec_f32()? {
            return Err(Error::Invalid(format!(
                "rank {r}: not rank {root}'s values"
            )));
        }
        check_identical(&[v])?;
    }
    if r == 0 {
        println!("BROADCAST OK");
    }
    Ok(())
}

fn fit() -> Result<()> {
    let r = distributed::rank();
    let model: Model = Sequential::new()
        .add(Dense::new(16).relu())
        .add(Dense::new(3))
        .input_shape(&[5])
        .into();
    // every rank starts from different weights: fit broadcasts rank 0's
    for (k, v) in model.variables().iter().enumerate() {
        let shape = v.value().shape().to_vec();
        v.assign(&Tensor::random_normal(
            &shape,
            0.0,
            0.3,
            (10 * r + k) as u64,
            DType::F32,
        ));
    }
    model.compile(tapeflow::nn::MeanSquaredError, SGD::new(0.05), &[])?;
    let x = Tensor::random_normal(&[256, 5], 0.0, 1.0, 3, DType::F32);
    let y = x.slice(1, 0..3).tanh();
    let h = model.fit(&x, &y, FitOptions::new(3, 16).verbose(2).distributed(true))?;
    let loss = &h["loss"];
    if loss[2] >= loss[0] {
        return Err(Error::Invalid(format!("the loss does not fall: {loss:?}")));
    }
    check_identical(&model.variables())?;
    if r == 0 {
        println!("FIT OK {loss:?}");
    }
    Ok(())
}

/// Eager all-reduces of one size receive into the buffer of a result dropped before
/// (one address for every call, as a loop into one buffer has), never into one still
/// held, and large ones too (16 MiB, where a fresh buffer per call cost 4x).
fn buffers() -> Result<()> {
    let (n, r) = (distributed::size(), distributed::rank());
    for len in [1024, 4 << 20] {
        let x = Tensor::full(&[len], (r + 1) as f64, DType::F32);
        let want = (n * (n + 1) / 2) as f32;
        let address = |t: &Tensor| {
            t.data().map(|d| match d {
                tapeflow::Data::F32(a) => a.as_ptr() as usize,
                _ => 0,
            })
        };
        let first = x.all_reduce(ReduceOp::Sum);
        let held = address(&first)?;
        let mut seen = Vec::new();
        for _ in 0..4 {
            let y = x.all_reduce(ReduceOp::Sum);
            let v = y.to_vec_f32()?;
            if v.iter().any(|&e| e != want) {
                return Err(Error::Invalid(format!("rank {r}: a sum is not {want}")));
            }
            seen.push(address(&y)?);
        }
        if seen.contains(&held) {
            return Err(Error::Invalid(format!(
                "rank {r}: a held result's buffer was written again"
            )));
        }
        if seen[1..].iter().any(|&p| p != seen[1]) {
            return Err(Error::Invalid(format!(
                "rank {r}: f32[{len}] results in different buffers: {seen:?}"
            )));
        }
        if first.to_vec_f32()?.iter().any(|&e| e != want) {
            return Err(Error::Invalid(format!("rank {r}: the held result changed")));
        }
    }
    // one shape in three dtypes, in turn: each reuses results of its own dtype; the
    // mean divides the sum by the number of ranks; an i64 mean is an error (the op
    // takes floats only: i64 through `comm`)
    let sum = (n * (n + 1) / 2) as f64;
    for _ in 0..3 {
        for dtype in [DType::F32, DType::F64, DType::I64] {
            let x = Tensor::full(&[3], (r + 1) as f64, dtype);
            let reduce = |op| tapeflow::comm::all_reduce(x.data()?, op).map_err(Error::Invalid);
            let s = reduce(ReduceOp::Sum)?.to_f64_vec();
            if s != [sum; 3] {
                return Err(Error::Invalid(format!("rank {r}: {dtype:?} sum {s:?}")));
            }
            let m = reduce(ReduceOp::Mean);
            match (dtype, m) {
                (DType::I64, Err(e)) if e.to_string().contains("cast to a float first") => {}
                (DType::F32 | DType::F64, Ok(m)) if m.to_f64_vec() == [sum / n as f64; 3] => {}
                (_, m) => {
                    return Err(Error::Invalid(format!("rank {r}: {dtype:?} mean {m:?}")));
                }
            }
        }
    }
    if r == 0 {
        println!("BUFFERS OK");
    }
    Ok(())
}

/// One all-reduce read by four products at once: a compiled function on the dataflow
/// schedule with two rayon threads (the driver sets them), its all-reduce handed to the
/// communication thread (`TAPEFLOW_MPI_INLINE_BYTES=0`). Whichever reader comes first
/// waits for the result; the others must wait for it too, not find neither the running
/// collective nor its value (a race the dataflow schedule once had). 300 calls, each
/// checked against the same sum computed eagerly from `2·x` (every rank holds the same
/// `x`, so the all-reduce sum is exactly twice it).
fn readers() -> Result<()> {
    let n = distributed::size() as f32;
    let x = Tensor::random_normal(&[64, 64], 0.0, 1.0, 7, DType::F32);
    let ws: Vec<Tensor> = (0..5)
        .map(|i| Tensor::random_normal(&[64, 64], 0.0, 0.1, 10 + i, DType::F32))
        .collect();
    let wf = ws.clone();
    // `x·w4` does not wait for the all-reduce, so the plan starts it and goes on (it
    // is not run blocking, see `Step::nothing_to_overlap`)
    let f = tapeflow::function(move |x: &Tensor| {
        let s = x.all_reduce(ReduceOp::Sum);
        let p: Vec<Tensor> = wf[..4].iter().map(|w| s.matmul(w)).collect();
        Ok(&(&(&p[0] + &p[1]) + &(&p[2] + &p[3])) + &x.matmul(&wf[4]))
    });
    let c = f.concrete(&[&x])?;
    c.plan().set_schedule(Schedule::Parallel);
    let sx = &x * n;
    let p: Vec<Tensor> = ws[..4].iter().map(|w| sx.matmul(w)).collect();
    let want = &(&(&p[0] + &p[1]) + &(&p[2] + &p[3])) + &x.matmul(&ws[4]);
    let want = want.to_vec_f32()?;
    for call in 0..300 {
        let got = f.call(&x)?.to_vec_f32()?;
        for (a, b) in got.iter().zip(&want) {
            if (a - b).abs() > 1e-5 * (1.0 + b.abs()) {
                return Err(Error::Invalid(format!("call {call}: {a} vs {b}")));
            }
        }
    }
    println!("READERS OK");
    Ok(())
}

fn fail(mode: &str) -> Result<()> {
    let x = Tensor::vec(&[1.0f32, 2.0, 3.0]);
    x.all_reduce(ReduceOp::Sum).to_vec_f32()?; // everyone is up
    if distributed::rank() == 1 {
        match mode {
            "panic" => panic!("rank 1 fails on purpose"),
            "err" => return Err(Error::Invalid("rank 1 fails on purpose".into())),
            "exit" => std::process::exit(3),
            "abort" => std::process::abort(),
            _ => return Err(Error::Invalid(format!("unknown failure {mode}"))),
        }
    }
    // rank 1 never joins this one
    let got = x.all_reduce(ReduceOp::Sum).to_vec_f32()?;
    Err(Error::Invalid(format!(
        "rank {}: an all-reduce without rank 1 returned {got:?}",
        distributed::rank()
    )))
}

// ---------------------------------------------------------------- the driver

struct Run {
    ok: bool,
    code: Option<i32>,
    out: String,
    secs: f64,
}

/// Runs `mpirun -np <np> <this binary> <args>`, killing it after `limit`.
fn mpirun(np: usize, args: &[&str], limit: Duration) -> Run {
    mpirun_env(np, args, limit, &[])
}

/// [`mpirun`] with extra environment variables for the ranks.
fn mpirun_env(np: usize, args: &[&str], limit: Duration, env: &[(&str, &str)]) -> Run {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut cmd = Command::new("mpirun");
    cmd.args([
        "--oversubscribe",
        "--bind-to",
        "none",
        "-np",
        &np.to_string(),
    ])
    .arg(exe)
    .args(args)
    .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
    .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    .env("RAYON_NUM_THREADS", "1")
    .envs(env.iter().copied())
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let t = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start mpirun ({e}): install OpenMPI (`apt-get install openmpi-bin libopenmpi-dev`, see .ci/run)"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped")));
    let err = drain(Box::new(child.stderr.take().expect("piped")));
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for mpirun") {
            break s;
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "mpirun -np {np} {args:?} still ran after {limit:?} (a hang); output:\n{}\n{}",
                out.join().unwrap_or_default(),
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let secs = t.elapsed().as_secs_f64();
    let out = out.join().unwrap_or_default() + &err.join().unwrap_or_default();
    Run {
        ok: status.success(),
        code: status.code(),
        out,
        secs,
    }
}

fn params_of(run: &Run) -> Vec<(String, Vec<f32>)> {
    run.out
        .lines()
        .filter_map(|l| l.strip_prefix("PARAM "))
        .map(|l| {
            let (name, list) = l.split_once(' ').expect("PARAM name [values]");
            let values = list
                .trim_matches(|c| c == '[' || c == ']')
                .split(", ")
                .map(|v| v.parse::<f32>().expect("a float"))
                .collect();
            (name.to_string(), values)
        })
        .collect()
}

fn check(name: &str, f: impl FnOnce()) {
    let t = Instant::now();
    f();
    println!("test {name} ... ok ({:.1} s)", t.elapsed().as_secs_f64());
}

fn driver() {
    let long = Duration::from_secs(180);
    let mut reference = Vec::new();
    check("one process trains", || {
        let one = mpirun(1, &["params"], long);
        assert!(one.ok, "np 1 failed:\n{}", one.out);
        reference = params_of(&one);
        assert_eq!(reference.len(), 6, "{}", one.out);
    });
    for (np, mode) in [
        (2, "sequential"),
        (4, "sequential"),
        (2, "parallel"),
        (4, "parallel"),
    ] {
        check(&format!("{np} ranks ({mode}) match one process"), || {
            // the dataflow run hands every all-reduce to the communication thread (none
            // runs inline), so results arrive while other rayon tasks compute
            let inline = if mode == "parallel" { "0" } else { "65536" };
            let env = [("TAPEFLOW_MPI_INLINE_BYTES", inline)];
            let run = mpirun_env(np, &["params", mode], long, &env);
            assert!(run.ok, "np {np} failed:\n{}", run.out);
            let got = params_of(&run);
            assert_eq!(got.len(), reference.len(), "{}", run.out);
            let mut worst = 0f32;
            for ((name, a), (_, b)) in got.iter().zip(&reference) {
                for (x, y) in a.iter().zip(b) {
                    let d = (x - y).abs() / (1.0 + y.abs());
                    worst = worst.max(d);
                    assert!(
                        d <= BOUND,
                        "{name}: {x} vs {y} on {np} ranks ({d:e} > {BOUND:e})"
                    );
                }
            }
            println!("  {np} ranks: largest difference {worst:e} (bound {BOUND:e})");
        });
    }
    check("broadcast makes ranks identical", || {
        for np in [2, 4] {
            let run = mpirun(np, &["broadcast"], long);
            assert!(
                run.ok && run.out.contains("BROADCAST OK"),
                "np {np}:\n{}",
                run.out
            );
        }
    });
    check("all-reduce results reuse dropped buffers", || {
        let run = mpirun(2, &["buffers"], long);
        assert!(run.ok && run.out.contains("BUFFERS OK"), "{}", run.out);
    });
    check(
        "readers of one all-reduce wait for it (dataflow, 2 threads)",
        || {
            let env = [
                ("TAPEFLOW_MPI_INLINE_BYTES", "0"),
                ("RAYON_NUM_THREADS", "2"),
            ];
            let run = mpirun_env(2, &["readers"], long, &env);
            assert!(run.ok && run.out.contains("READERS OK"), "{}", run.out);
        },
    );
    check("fit(distributed) on 2 ranks", || {
        let run = mpirun(2, &["fit"], long);
        assert!(run.ok && run.out.contains("FIT OK"), "{}", run.out);
        // verbose 2 prints one line per epoch, on rank 0 only
        assert_eq!(run.out.matches("Epoch 1/3").count(), 1, "{}", run.out);
    });
    for (mode, says) in [
        ("panic", "this rank panicked"),
        // rank 0 waits in the second all-reduce, and the watchdog says which
        ("err", "(all_reduce[op=sum] of f32[3]) has waited"),
        ("exit", ""),
        ("abort", ""),
    ] {
        check(
            &format!("a rank that fails ({mode}) ends the job in < 30 s"),
            || {
                let run = mpirun(2, &["fail", mode], Duration::from_secs(60));
                assert!(!run.ok, "the job succeeded:\n{}", run.out);
                assert!(run.secs < 30.0, "took {:.1} s:\n{}", run.secs, run.out);
                assert!(run.out.contains(says), "no `{says}` in:\n{}", run.out);
                assert!(!run.out.contains("without rank 1 returned"), "{}", run.out);
                println!("  ended in {:.1} s with status {:?}", run.secs, run.code);
            },
        );
    }
}
