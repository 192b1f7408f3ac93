//! Generated code for fused loops computes the interpreter's bits: every elementwise op,
//! compare, select and cast, over f32, f64 and i64, on special values (NaN, ±inf, ±0,
//! subnormals, huge values) and random ones, at odd lengths and through every
//! broadcast pattern; W5's second derivative; every thread count; in-place steps.
//!
//! Each case builds a plan from text IR, runs it with the interpreter
//! ([`Codegen::Off`]) and with generated code ([`Codegen::Force`], which waits for the
//! compiler), checks that the generated kernels really ran, and compares bits.
//! Without a C compiler these tests say so and pass, unless `TAPEFLOW_REQUIRE_CC` is
//! set (CI sets it: its image has gcc).

use ndarray::{ArrayD, IxDyn};
use tapeflow::exec::codegen::{self, Codegen};
use tapeflow::exec::{Plan, RunStats};
use tapeflow::ir::parse;
use tapeflow::{function, DType, Data, Tensor};

/// Whether generated code can be tested here (see the module docs).
fn compiler() -> bool {
    if codegen::compiler_available() {
        return true;
    }
    assert!(
        std::env::var_os("TAPEFLOW_REQUIRE_CC").is_none(),
        "TAPEFLOW_REQUIRE_CC is set but no C compiler runs"
    );
    eprintln!("no C compiler: generated code is not tested here");
    false
}

/// A deterministic stream of u64s.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let x = self.0;
        (x ^ (x >> 29)).wrapping_mul(0xBF58476D1CE4E5B9) ^ (x >> 32)
    }
}

/// f64 values: the specials first, then a mix of random bit patterns (every magnitude,
/// NaN payloads included), ordinary values in [-10, 10], huge and tiny ones.
fn values(n: usize, seed: u64) -> Vec<f64> {
    let specials = [
        0.0,
        -0.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        1.0,
        -1.0,
        f64::MAX,
        -f64::MAX,
        f64::MIN_POSITIVE,
        5e-324,
        -5e-324,
        1e30,
        -1e30,
        88.72283,
        89.5,
        -103.97,
        -104.5,
        1e-8,
        0.0625,
        9.3e18,
        -9.3e18,
        16777217.0,
        -3.4e38,
    ];
    let mut rng = Rng(seed);
    let mut v: Vec<f64> = specials.iter().copied().cycle().take(n.min(24)).collect();
    while v.len() < n {
        let r = rng.next();
        v.push(match r % 5 {
            0 => f64::from_bits(rng.next()),
            1 => f32::from_bits(rng.next() as u32) as f64,
            2 => (rng.next() >> 11) as f64 / (1u64 << 53) as f64 * 20.0 - 10.0,
            3 => ((rng.next() >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 1e12,
            _ => ((rng.next() % 21) as f64 - 10.0) * 0.5,
        });
    }
    v
}

/// A buffer of `shape` and `dtype` filled from [`values`].
fn data(dtype: DType, shape: &[usize], seed: u64) -> Data {
    let n: usize = shape.iter().product();
    let v = values(n, seed);
    match dtype {
        DType::F32 | DType::F64 => floats(dtype, shape, v),
        DType::I64 => {
            // small values (so products and sums both wrap and don't), and extremes
            let mut rng = Rng(seed ^ 0x5555);
            let ints = (0..n).map(|i| match (i, rng.next() % 4) {
                (0, _) => i64::MAX,
                (1, _) => i64::MIN,
                (2, _) => 0,
                (_, 0) => rng.next() as i64,
                _ => (rng.next() % 7) as i64 - 3,
            });
            Data::I64(
                ArrayD::from_shape_vec(IxDyn(shape), ints.collect())
                    .unwrap()
                    .into_shared(),
            )
        }
    }
}

/// Stands for every NaN in [`bits`]: IEEE 754 leaves the sign and payload of a NaN
/// result unspecified, and compilers use that (both rustc and gcc commute `a + b` and
/// `a * b`, and with two NaN operands the hardware returns the first), so a NaN
/// element is compared as "NaN" and every other element bit for bit.
const NAN: u64 = u64::MAX;

/// Every element's bits, each NaN as [`NAN`].
fn bits(d: &Data) -> Vec<u64> {
    match d {
        Data::F32(a) => (a.iter())
            .map(|x| if x.is_nan() { NAN } else { x.to_bits() as u64 })
            .collect(),
        Data::F64(a) => (a.iter())
            .map(|x| if x.is_nan() { NAN } else { x.to_bits() })
            .collect(),
        Data::I64(a) => a.iter().map(|&x| x as u64).collect(),
    }
}

/// Runs the graph `text` on `inputs` with the interpreter and with generated code and
/// compares the outputs bit for bit; returns the generated run's outputs.
fn same_bits(text: &str, inputs: &[Data]) -> Vec<Data> {
    let plan = Plan::new(parse(text).unwrap()).unwrap();
    let refs: Vec<&Data> = inputs.iter().collect();
    plan.set_codegen(Codegen::Off);
    assert_eq!(plan.generated_steps().0, 0);
    let want = plan.run(&refs, &mut RunStats::default()).unwrap();
    plan.set_codegen(Codegen::Force);
    let (generated, fused) = plan.generated_steps();
    assert!(fused > 0, "no fused step in\n{text}");
    assert_eq!(
        generated, fused,
        "not every fused step was generated in\n{text}"
    );
    let got = plan.run(&refs, &mut RunStats::default()).unwrap();
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!((g.dtype(), g.shape()), (w.dtype(), w.shape()));
        let (gb, wb) = (bits(g), bits(w));
        if let Some(i) = (0..gb.len()).find(|&i| gb[i] != wb[i]) {
            let at: Vec<String> = inputs.iter().map(|x| element(x, i)).collect();
            panic!(
                "output {k} element {i}: generated {:#x}, interpreter {:#x} (inputs at the same flat index: {at:?}) in\n{text}",
                gb[i], wb[i]
            );
        }
    }
    got
}

fn element(d: &Data, i: usize) -> String {
    match d {
        Data::F32(a) => a.iter().nth(i).map(|x| format!("{x:e}")),
        Data::F64(a) => a.iter().nth(i).map(|x| format!("{x:e}")),
        Data::I64(a) => a.iter().nth(i).map(|x| format!("{x}")),
    }
    .unwrap_or_else(|| "(broadcast)".into())
}

fn ty(d: DType, shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(|n| n.to_string()).collect();
    format!("{}[{}]", d.name(), dims.join(","))
}

const ODD: usize = 1031;

#[test]
fn every_unary_op_matches_the_interpreter() {
    if !compiler() {
        return;
    }
    let ops = [
        "neg", "exp", "log", "sin", "cos", "tanh", "sqrt", "abs", "sign", "sigmoid",
    ];
    for d in [DType::F32, DType::F64] {
        let t = ty(d, &[ODD]);
        // one graph, one fused node per op
        let mut text = format!("graph(%0: {t}) {{\n");
        for (k, op) in ops.iter().enumerate() {
            text += &format!("  %{} = fused %0 : {t}\n    #0 = {op} $0 : {t}\n", k + 1);
        }
        let outs: Vec<String> = (1..=ops.len()).map(|k| format!("%{k}")).collect();
        text += &format!("  return {}\n}}", outs.join(", "));
        same_bits(&text, &[data(d, &[ODD], 1)]);
    }
}

#[test]
fn sin_cos_exp_over_every_f32_magnitude() {
    if !compiler() {
        return;
    }
    // every 4099th bit pattern: all exponents, both signs, NaNs and infinities
    let v: Vec<f32> = (0..=u32::MAX / 4099)
        .map(|i| f32::from_bits(i * 4099))
        .collect();
    let n = v.len();
    let x = Data::F32(
        ArrayD::from_shape_vec(IxDyn(&[n]), v)
            .unwrap()
            .into_shared(),
    );
    let t = ty(DType::F32, &[n]);
    let text = format!(
        "graph(%0: {t}) {{
  %1 = fused %0 : {t}
    #0 = sin $0 : {t}
    #1 = cos $0 : {t}
    #2 = exp $0 : {t}
    #3 = log $0 : {t}
    #4 = tanh $0 : {t}
    #5 = mul #0, #1 : {t}
    #6 = add #2, #3 : {t}
    #7 = sub #6, #4 : {t}
    #8 = add #5, #7 : {t}
  return %1
}}"
    );
    same_bits(&text, &[x]);
}

/// The operand shapes of each broadcast pattern, with the loop's shape.
const BROADCASTS: [(&[usize], &[usize], &[usize]); 7] = [
    (&[ODD], &[ODD], &[ODD]),                   // same shape
    (&[37, 29], &[], &[37, 29]),                // scalar right
    (&[], &[37, 29], &[37, 29]),                // scalar left
    (&[37, 29], &[29], &[37, 29]),              // row
    (&[37, 1], &[37, 29], &[37, 29]),           // column
    (&[3, 1, 5, 7], &[4, 1, 7], &[3, 4, 5, 7]), // both broadcast, rank 4
    (&[1, 1], &[1], &[1, 1]),                   // one element
];

#[test]
fn every_binary_op_and_comparison_on_every_broadcast_pattern() {
    if !compiler() {
        return;
    }
    let float = [
        "add",
        "sub",
        "mul",
        "div",
        "pow",
        "maximum",
        "minimum",
        "greater",
        "greater_equal",
        "less",
        "less_equal",
        "equal",
        "not_equal",
    ];
    let int = [
        "add",
        "sub",
        "mul",
        "maximum",
        "minimum",
        "greater",
        "greater_equal",
        "less",
        "less_equal",
        "equal",
        "not_equal",
    ];
    for d in [DType::F32, DType::F64, DType::I64] {
        let all: &[&str] = if d == DType::I64 { &int } else { &float };
        for (i, (a, b, out)) in BROADCASTS.iter().enumerate() {
            // every op on equal shapes and on the rank-4 pattern; the loads of the other
            // patterns do not depend on the op (fewer kernels keep the test quick)
            let ops = if i == 0 || i == 5 { all } else { &all[1..=1] };
            let (ta, tb, to) = (ty(d, a), ty(d, b), ty(d, out));
            let mut text = format!("graph(%0: {ta}, %1: {tb}) {{\n");
            for (k, op) in ops.iter().enumerate() {
                text += &format!(
                    "  %{} = fused %0, %1 : {to}\n    #0 = {op} $0, $1 : {to}\n",
                    k + 2
                );
            }
            let outs: Vec<String> = (2..ops.len() + 2).map(|k| format!("%{k}")).collect();
            text += &format!("  return {}\n}}", outs.join(", "));
            same_bits(
                &text,
                &[data(d, a, 10 + i as u64), data(d, b, 20 + i as u64)],
            );
        }
    }
}

#[test]
fn select_on_masks_of_every_dtype_and_every_cast() {
    if !compiler() {
        return;
    }
    let all = [DType::F32, DType::F64, DType::I64];
    for m in all {
        for d in all {
            let (tm, td, tr) = (ty(m, &[ODD]), ty(d, &[ODD]), ty(d, &[5, ODD]));
            let text = format!(
                "graph(%0: {tm}, %1: {td}, %2: {}) {{
  %3 = fused %0, %1, %2 : {tr}
    #0 = select $0, $1, $2 : {tr}
  return %3
}}",
                ty(d, &[5, 1])
            );
            same_bits(
                &text,
                &[data(m, &[ODD], 3), data(d, &[ODD], 4), data(d, &[5, 1], 5)],
            );
        }
    }
    // casts to floats fuse (a cast to i64 is an opaque op)
    for from in all {
        let mut text = format!("graph(%0: {}) {{\n", ty(from, &[ODD]));
        let to: Vec<DType> = [DType::F32, DType::F64]
            .into_iter()
            .filter(|&t| t != from)
            .collect();
        for (k, t) in to.iter().enumerate() {
            let tt = ty(*t, &[ODD]);
            text += &format!(
                "  %{} = fused %0 : {tt}\n    #0 = cast[to={}] $0 : {tt}\n",
                k + 1,
                t.name()
            );
        }
        let outs: Vec<String> = (1..=to.len()).map(|k| format!("%{k}")).collect();
        text += &format!("  return {}\n}}", outs.join(", "));
        same_bits(&text, &[data(from, &[ODD], 6)]);
    }
}

#[test]
fn mixed_dtypes_reshape_and_broadcast_instructions() {
    if !compiler() {
        return;
    }
    let text = "graph(%0: f32[6,35], %1: f64[210], %2: f32[35]) {
  %3 = fused %0, %1, %2 : f64[6,35]
    #0 = reshape $1 : f64[6,35]
    #1 = exp $2 : f32[35]
    #2 = broadcast #1 : f32[6,35]
    #3 = mul $0, #2 : f32[6,35]
    #4 = cast[to=f64] #3 : f64[6,35]
    #5 = greater #4, #0 : f64[6,35]
    #6 = sin #0 : f64[6,35]
    #7 = select #5, #4, #6 : f64[6,35]
    #8 = sigmoid #7 : f64[6,35]
  return %3
}";
    same_bits(
        text,
        &[
            data(DType::F32, &[6, 35], 7),
            data(DType::F64, &[210], 8),
            data(DType::F32, &[35], 9),
        ],
    );
}

/// A buffer of ordinary values (of every sign and of magnitudes 1e-3 to 1e3): their
/// sums are finite, so the order of the additions shows in the bits.
fn ordinary(dtype: DType, shape: &[usize], seed: u64) -> Data {
    let n: usize = shape.iter().product();
    let mut rng = Rng(seed);
    let v: Vec<f64> = (0..n)
        .map(|_| {
            let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
            let e = (rng.next() % 7) as i32 - 3;
            (u - 0.5) * 10f64.powi(e)
        })
        .collect();
    floats(dtype, shape, v)
}

/// A buffer of `shape` holding `v` as f32 or f64.
fn floats(dtype: DType, shape: &[usize], v: Vec<f64>) -> Data {
    let s = IxDyn(shape);
    match dtype {
        DType::F32 => Data::F32(
            ArrayD::from_shape_vec(s, v.iter().map(|&x| x as f32).collect())
                .unwrap()
                .into_shared(),
        ),
        DType::F64 => Data::F64(ArrayD::from_shape_vec(s, v).unwrap().into_shared()),
        DType::I64 => unreachable!("floats only"),
    }
}

fn axes(rank: usize) -> String {
    let a: Vec<String> = (0..rank).map(|d| d.to_string()).collect();
    format!("[{}]", a.join(","))
}

/// A fused full sum is generated: its elements add in `reduce::sum`'s order (8 lanes
/// over whole chunks of 8, a fixed tree, then the rest in order), whatever the length
/// (empty, under a chunk, a block of the generated loop and more, odd remainders), the
/// broadcasts in the summed loop and the instructions after the sum; and it has the
/// bits of the unfused `sum` kernel.
#[test]
fn full_sums_add_in_the_order_of_reduce_sum() {
    if !compiler() {
        return;
    }
    for d in [DType::F32, DType::F64] {
        for n in [0, 1, 7, 8, 9, 1000, 1024, 1031, 3077] {
            let t = ty(d, &[n]);
            let s = ty(d, &[]);
            // sum(x²)·c - b, as W4's fused loss and update steps
            let fused = format!(
                "graph(%0: {t}, %1: {s}, %2: {s}) {{
  %3 = fused %0, %1, %2 : {s}
    #0 = mul $0, $0 : {t}
    #1 = sum[axes=[0]] #0 : {s}
    #2 = mul #1, $1 : {s}
    #3 = sub $2, #2 : {s}
  %4 = fused %0 : {s}
    #0 = sum[axes=[0]] $0 : {s}
  return %3, %4
}}"
            );
            let unfused = format!(
                "graph(%0: {t}, %1: {s}, %2: {s}) {{
  %3 = mul %0, %0 : {t}
  %4 = sum[axes=[0]] %3 : {s}
  %5 = mul %4, %1 : {s}
  %6 = sub %2, %5 : {s}
  %7 = sum[axes=[0]] %0 : {s}
  return %6, %7
}}"
            );
            let inputs = [
                ordinary(d, &[n], 20 + n as u64),
                ordinary(d, &[], 1),
                ordinary(d, &[], 2),
            ];
            let got = same_bits(&fused, &inputs);
            let plan = Plan::new(parse(&unfused).unwrap()).unwrap();
            let refs: Vec<&Data> = inputs.iter().collect();
            let want = plan.run(&refs, &mut RunStats::default()).unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(
                    bits(g),
                    bits(w),
                    "{d:?}[{n}]: fused and generated vs unfused"
                );
            }
        }
    }
    // broadcasts and a reshape in the summed loop, over a rank-3 space
    let text = format!(
        "graph(%0: f32[5,37,29], %1: f32[29], %2: f32[37,1], %3: f32[], %4: f64[5365]) {{
  %5 = fused %0, %1, %2, %3, %4 : f64[]
    #0 = add $0, $1 : f32[5,37,29]
    #1 = mul #0, $2 : f32[5,37,29]
    #2 = tanh #1 : f32[5,37,29]
    #3 = sub #2, $3 : f32[5,37,29]
    #4 = cast[to=f64] #3 : f64[5,37,29]
    #5 = reshape $4 : f64[5,37,29]
    #6 = mul #4, #5 : f64[5,37,29]
    #7 = sum[axes={}] #6 : f64[]
    #8 = cast[to=f32] #7 : f32[]
    #9 = mul #8, $3 : f32[]
    #10 = cast[to=f64] #9 : f64[]
  return %5
}}",
        axes(3)
    );
    same_bits(
        &text,
        &[
            ordinary(DType::F32, &[5, 37, 29], 3),
            ordinary(DType::F32, &[29], 4),
            ordinary(DType::F32, &[37, 1], 5),
            ordinary(DType::F32, &[], 6),
            ordinary(DType::F64, &[5365], 7),
        ],
    );
}

/// Slices read in place (the loads start at the slice's first element and step with
/// the operand's strides), along every axis, broadcast into the loop, in an elementwise
/// loop and in a summed one: the generated code has the interpreter's bits, and those of
/// the same graph unfused (slices copied out first).
#[test]
fn slice_loads_read_where_the_slice_lies() {
    if !compiler() {
        return;
    }
    for d in [DType::F32, DType::F64] {
        let (x, y, z) = (ty(d, &[5, 7, 116]), ty(d, &[5, 7, 29]), ty(d, &[8, 7, 29]));
        let (g, b, r, s) = (
            ty(d, &[5, 7, 29]),
            ty(d, &[5, 1, 29]),
            ty(d, &[5, 4, 116]),
            ty(d, &[]),
        );
        let fused = format!(
            "graph(%0: {x}, %1: {y}, %2: {z}) {{
  %3 = fused %0, %1, %2 : {g}
    #0 = slice[axis=2, start=29, end=58] $0 : {g}
    #1 = sigmoid #0 : {g}
    #2 = slice[axis=2, start=87, end=116] $0 : {g}
    #3 = tanh #2 : {g}
    #4 = mul #1, #3 : {g}
    #5 = slice[axis=1, start=2, end=3] $1 : {b}
    #6 = broadcast #5 : {g}
    #7 = add #4, #6 : {g}
    #8 = slice[axis=0, start=3, end=8] $2 : {g}
    #9 = sub #7, #8 : {g}
  %4 = fused %0 : {s}
    #0 = slice[axis=1, start=3, end=7] $0 : {r}
    #1 = mul #0, #0 : {r}
    #2 = sum[axes=[0,1,2]] #1 : {s}
  return %3, %4
}}"
        );
        let unfused = format!(
            "graph(%0: {x}, %1: {y}, %2: {z}) {{
  %3 = slice[axis=2, start=29, end=58] %0 : {g}
  %4 = sigmoid %3 : {g}
  %5 = slice[axis=2, start=87, end=116] %0 : {g}
  %6 = tanh %5 : {g}
  %7 = mul %4, %6 : {g}
  %8 = slice[axis=1, start=2, end=3] %1 : {b}
  %9 = broadcast %8 : {g}
  %10 = add %7, %9 : {g}
  %11 = slice[axis=0, start=3, end=8] %2 : {g}
  %12 = sub %10, %11 : {g}
  %13 = slice[axis=1, start=3, end=7] %0 : {r}
  %14 = mul %13, %13 : {r}
  %15 = sum[axes=[0,1,2]] %14 : {s}
  return %12, %15
}}"
        );
        let inputs = [
            ordinary(d, &[5, 7, 116], 31),
            ordinary(d, &[5, 7, 29], 32),
            ordinary(d, &[8, 7, 29], 33),
        ];
        let got = same_bits(&fused, &inputs);
        let plan = Plan::new(parse(&unfused).unwrap()).unwrap();
        let refs: Vec<&Data> = inputs.iter().collect();
        let want = plan.run(&refs, &mut RunStats::default()).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(bits(g), bits(w), "{d:?}: fused vs unfused");
        }
    }
}

/// A fused sum over some axes is generated too: each output's lane is folded from +0
/// one reduced axis at a time, the innermost first (`reduce::sum`'s order), over every
/// pattern of kept and reduced axes (a softmax's row sums, column sums, reduced axes of
/// length 1, kept axes between reduced ones), with instructions after the sum reading
/// params broadcast to the result, through a reshape and through a slice. Bits: the
/// interpreter's and the unfused graph's. A lane longer than one block stays with the
/// interpreter.
#[test]
fn partial_sums_fold_each_lane_in_the_order_of_reduce_sum() {
    if !compiler() {
        return;
    }
    let cases: [(&[usize], &[usize]); 6] = [
        (&[64, 10], &[1]),
        (&[64, 10], &[0]),
        (&[5, 7, 9], &[0, 2]),
        (&[5, 7, 9], &[1, 2]),
        (&[5, 1, 7], &[1, 2]),
        (&[3, 4, 5, 6], &[1, 3]),
    ];
    for d in [DType::F32, DType::F64] {
        for (seed, (it, red)) in cases.into_iter().enumerate() {
            let out: Vec<usize> = (0..it.len())
                .filter(|a| !red.contains(a))
                .map(|a| it[a])
                .collect();
            let n_out: usize = out.iter().product();
            let mut longer = out.clone();
            longer[0] += 3;
            let (x, o, flat, l) = (ty(d, it), ty(d, &out), ty(d, &[n_out]), ty(d, &longer));
            let axes: Vec<String> = red.iter().map(|a| a.to_string()).collect();
            let axes = axes.join(",");
            let end = out[0] + 2;
            let fused = format!(
                "graph(%0: {x}, %1: {x}, %2: {o}, %3: {flat}, %4: {l}) {{
  %5 = fused %0, %1, %2, %3, %4 : {o}
    #0 = sub $0, $1 : {x}
    #1 = mul #0, #0 : {x}
    #2 = sum[axes=[{axes}]] #1 : {o}
    #3 = mul #2, $2 : {o}
    #4 = reshape $3 : {o}
    #5 = add #3, #4 : {o}
    #6 = slice[axis=0, start=2, end={end}] $4 : {o}
    #7 = sub #5, #6 : {o}
  return %5
}}"
            );
            let unfused = format!(
                "graph(%0: {x}, %1: {x}, %2: {o}, %3: {flat}, %4: {l}) {{
  %5 = sub %0, %1 : {x}
  %6 = mul %5, %5 : {x}
  %7 = sum[axes=[{axes}]] %6 : {o}
  %8 = mul %7, %2 : {o}
  %9 = reshape %3 : {o}
  %10 = add %8, %9 : {o}
  %11 = slice[axis=0, start=2, end={end}] %4 : {o}
  %12 = sub %10, %11 : {o}
  return %12
}}"
            );
            let seed = 40 + 5 * seed as u64;
            let inputs = [
                ordinary(d, it, seed),
                ordinary(d, it, seed + 1),
                ordinary(d, &out, seed + 2),
                ordinary(d, &[n_out], seed + 3),
                ordinary(d, &longer, seed + 4),
            ];
            let got = same_bits(&fused, &inputs);
            let plan = Plan::new(parse(&unfused).unwrap()).unwrap();
            let refs: Vec<&Data> = inputs.iter().collect();
            let want = plan.run(&refs, &mut RunStats::default()).unwrap();
            assert_eq!(bits(&got[0]), bits(&want[0]), "{d:?} {it:?} over {red:?}");
        }
    }
    let long = "graph(%0: f32[4,1100]) {
  %1 = fused %0 : f32[4]
    #0 = mul $0, $0 : f32[4,1100]
    #1 = sum[axes=[1]] #0 : f32[4]
  return %1
}";
    let plan = Plan::new(parse(long).unwrap()).unwrap();
    plan.set_codegen(Codegen::Force);
    assert_eq!(plan.generated_steps(), (0, 1));
}

/// A matmul prologue's epilogue (bias, ReLU, a scaled residual) is generated: the
/// product is computed into the output buffer first, and the loop reads each element
/// there before writing it. Plain and transposed operands, f32 and f64; bits of the
/// interpreter and of the unfused graph.
#[test]
fn matmul_epilogues_read_the_product_in_the_output_buffer() {
    if !compiler() {
        return;
    }
    for d in [DType::F32, DType::F64] {
        for (ta, tb) in [(false, false), (true, false), (false, true)] {
            let (m, k, n) = (37, 53, 29);
            let a_shape: &[usize] = if ta { &[k, m] } else { &[m, k] };
            let b_shape: &[usize] = if tb { &[n, k] } else { &[k, n] };
            let (a, b, o, bias) = (ty(d, a_shape), ty(d, b_shape), ty(d, &[m, n]), ty(d, &[n]));
            let s = ty(d, &[]);
            let attrs = match (ta, tb) {
                (false, false) => String::new(),
                (true, false) => "[ta=true]".into(),
                _ => "[tb=true]".into(),
            };
            let fused = format!(
                "graph(%0: {a}, %1: {b}, %2: {bias}, %3: {o}, %4: {s}) {{
  %5 = fused %0, %1, %2, %3, %4 : {o}
    #0 = matmul{attrs} $0, $1 : {o}
    #1 = add #0, $2 : {o}
    #2 = maximum #1, $4 : {o}
    #3 = mul $3, $4 : {o}
    #4 = sub #2, #3 : {o}
  return %5
}}"
            );
            let unfused = format!(
                "graph(%0: {a}, %1: {b}, %2: {bias}, %3: {o}, %4: {s}) {{
  %5 = matmul{attrs} %0, %1 : {o}
  %6 = add %5, %2 : {o}
  %7 = maximum %6, %4 : {o}
  %8 = mul %3, %4 : {o}
  %9 = sub %7, %8 : {o}
  return %9
}}"
            );
            let inputs = [
                ordinary(d, a_shape, 60),
                ordinary(d, b_shape, 61),
                ordinary(d, &[n], 62),
                ordinary(d, &[m, n], 63),
                ordinary(d, &[], 64),
            ];
            let got = same_bits(&fused, &inputs);
            let plan = Plan::new(parse(&unfused).unwrap()).unwrap();
            let refs: Vec<&Data> = inputs.iter().collect();
            let want = plan.run(&refs, &mut RunStats::default()).unwrap();
            assert_eq!(bits(&got[0]), bits(&want[0]), "{d:?} ta={ta} tb={tb}");
        }
    }
}

/// W5's second derivative, d²/dx² Σ sin(x)·e^(−x²), as the optimizer fuses it.
fn w5_text(d: DType, n: usize) -> String {
    let t = ty(d, &[n]);
    format!(
        "graph(%0: {t}) {{
  %1 = fused %0 : {t}
    #0 = sin $0 : {t}
    #1 = mul $0, $0 : {t}
    #2 = neg #1 : {t}
    #3 = exp #2 : {t}
    #4 = mul #0, #3 : {t}
    #5 = neg #4 : {t}
    #6 = sub #5, #4 : {t}
    #7 = sub #6, #4 : {t}
    #8 = add $0, $0 : {t}
    #9 = neg #8 : {t}
    #10 = mul #9, #0 : {t}
    #11 = cos $0 : {t}
    #12 = add #10, #11 : {t}
    #13 = mul #12, #3 : {t}
    #14 = neg #13 : {t}
    #15 = mul #14, $0 : {t}
    #16 = add #7, #15 : {t}
    #17 = add #16, #15 : {t}
    #18 = mul #9, #3 : {t}
    #19 = mul #18, #11 : {t}
    #20 = add #17, #19 : {t}
  return %1
}}"
    )
}

#[test]
fn w5_fused_loop_is_bit_identical_in_f32_and_f64() {
    if !compiler() {
        return;
    }
    for d in [DType::F32, DType::F64] {
        same_bits(&w5_text(d, 100_003), &[data(d, &[100_003], 11)]);
    }
}

/// W5 itself, traced, differentiated twice, optimized and compiled by `function`.
fn w5(x: &Tensor, _: &Tensor) -> tapeflow::Result<Tensor> {
    let outer = tapeflow::GradientTape::new();
    let g = outer.record(|| {
        outer.watch(x);
        let inner = tapeflow::GradientTape::new();
        let y = inner.record(|| {
            inner.watch(x);
            (x.sin() * (-(x * x)).exp()).sum_all()
        });
        inner.gradient(&y, x).map(|g| g.sum_all())
    })?;
    outer.gradient(&g, x)
}

fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

#[test]
fn w5_compiled_is_bit_identical_with_generated_code_on_1_2_4_threads() {
    if !compiler() {
        return;
    }
    let x = Tensor::random_uniform(&[300_001], -3.0, 3.0, 5, DType::F32);
    let y = Tensor::scalar(0.0);
    let f = function(w5);
    let c = f.concrete(&[&x, &y]).unwrap();
    c.plan().set_codegen(Codegen::Off);
    let want = bits(f.call(&x, &y).unwrap().data().unwrap());
    c.plan().set_codegen(Codegen::Force);
    assert_eq!(c.plan().generated_steps(), (1, 1), "{}", c.text());
    for threads in [1, 2, 4] {
        let got = in_pool(threads, || f.call(&x, &y).unwrap());
        assert!(bits(got.data().unwrap()) == want, "{threads} threads");
    }
}

#[test]
fn an_in_place_fused_step_reads_and_writes_the_same_buffer() {
    if !compiler() {
        return;
    }
    // the fused step overwrites the transpose it reads (see tests/passes_memory.rs)
    let text = "graph(%0: f32[300,300]) {
  %1 = transpose[perm=[1,0]] %0 : f32[300,300]
  %2 = fused %1, %0 : f32[300,300]
    #0 = tanh $0 : f32[300,300]
    #1 = add #0, $1 : f32[300,300]
    #2 = mul #1, $0 : f32[300,300]
  return %2
}";
    let plan = Plan::new(parse(text).unwrap()).unwrap();
    assert_eq!(plan.memory().in_place_steps(), 1);
    let x = data(DType::F32, &[300, 300], 12);
    same_bits(text, &[x]);
}

#[test]
fn auto_mode_swaps_in_generated_code_without_changing_a_bit() {
    if !compiler() {
        return;
    }
    // a region no other test compiles, so its kernel starts from scratch here
    let n = codegen::AUTO_MIN_ELEMS + 17;
    let t = ty(DType::F32, &[n]);
    let text = format!(
        "graph(%0: {t}) {{
  %1 = fused %0 : {t}
    #0 = tanh $0 : {t}
    #1 = sigmoid #0 : {t}
    #2 = mul #1, $0 : {t}
  return %1
}}"
    );
    let plan = Plan::new(parse(&text).unwrap()).unwrap();
    let x = data(DType::F32, &[n], 13);
    plan.set_codegen(Codegen::Off);
    let want = bits(&plan.run(&[&x], &mut RunStats::default()).unwrap()[0]);
    plan.set_codegen(Codegen::Auto);
    // runs return the same bits before and after the background compile lands
    run_until_generated(&plan, &x, &want);
    // below the size threshold, auto mode leaves a region to the interpreter
    let small = "graph(%0: f32[100]) {
  %1 = fused %0 : f32[100]
    #0 = tanh $0 : f32[100]
  return %1
}";
    let plan = Plan::new(parse(small).unwrap()).unwrap();
    plan.set_codegen(Codegen::Auto);
    assert_eq!(plan.generated_steps(), (0, 1));
    // unless asked for (as a half-batch loop body is): then it compiles all the same
    plan.request_generated_code();
    let start = std::time::Instant::now();
    while plan.generated_steps().0 == 0 {
        assert!(
            start.elapsed().as_secs() < 120,
            "the requested kernel did not compile in 2 minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// A loop shorter than the size threshold runs in the interpreter until it is hot
/// (`HOT_ELEMS` of its elements over its calls), then compiles in the background and
/// runs generated code, with the same bits.
#[test]
fn auto_mode_compiles_a_short_loop_once_it_is_hot() {
    if !compiler() {
        return;
    }
    let n = 4096 - 3;
    let t = ty(DType::F32, &[n]);
    let text = format!(
        "graph(%0: {t}) {{
  %1 = fused %0 : {t}
    #0 = sigmoid $0 : {t}
    #1 = tanh #0 : {t}
    #2 = add #1, $0 : {t}
  return %1
}}"
    );
    let plan = Plan::new(parse(&text).unwrap()).unwrap();
    let x = data(DType::F32, &[n], 14);
    plan.set_codegen(Codegen::Off);
    let want = bits(&plan.run(&[&x], &mut RunStats::default()).unwrap()[0]);
    plan.set_codegen(Codegen::Auto);
    let cold = (codegen::HOT_ELEMS / n as u64) as usize;
    for _ in 0..cold {
        assert_eq!(plan.generated_steps(), (0, 1), "compiled before it was hot");
        let got = plan.run(&[&x], &mut RunStats::default()).unwrap();
        assert!(bits(&got[0]) == want);
    }
    // the next run makes it hot; from then on it compiles in the background
    run_until_generated(&plan, &x, &want);
}

/// Runs the one-step `plan` on `x` until its step runs generated code (at most 2
/// minutes), checking that every run gives the bits `want`.
fn run_until_generated(plan: &Plan, x: &Data, want: &[u64]) {
    let start = std::time::Instant::now();
    loop {
        let generated = plan.generated_steps().0 == 1;
        let got = plan.run(&[x], &mut RunStats::default()).unwrap();
        assert!(bits(&got[0]) == want);
        if generated {
            return;
        }
        assert!(
            start.elapsed().as_secs() < 120,
            "the kernel did not compile in 2 minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// `function`'s pipeline fuses exactly the loops long enough for generated code (the
/// threshold lives in `passes`, which may not import `exec`).
#[test]
fn the_tuned_fusion_threshold_is_the_generated_code_threshold() {
    assert_eq!(
        tapeflow::passes::TUNED_MIN_FUSED_ELEMS,
        tapeflow::exec::codegen::AUTO_MIN_ELEMS
    );
}
