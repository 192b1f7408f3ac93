//! Elementwise and reduction kernels against naive references: odd sizes (not multiples
//! of the SIMD width), every broadcasting fast path, and sizes above the parallel
//! threshold; bit-identical results for 1, 2 and 4 threads.

use ndarray::{ArrayD, IxDyn};
use tapeflow::exec::testing::{ew, reduce};
use tapeflow::tensor::Arr;

fn arr(shape: &[usize], seed: u64) -> Arr<f32> {
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect();
    ArrayD::from_shape_vec(IxDyn(shape), v)
        .unwrap()
        .into_shared()
}

/// out[i] = f(a[bcast i], b[bcast i]) by explicit index arithmetic.
fn naive_zip(a: &Arr<f32>, b: &Arr<f32>, shape: &[usize], f: impl Fn(f32, f32) -> f32) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let idx = |arr: &Arr<f32>, mut flat: usize| {
        let r = shape.len();
        let s = arr.shape();
        let mut off = 0;
        let mut stride = 1;
        for d in (0..r).rev() {
            let i = flat % shape[d];
            flat /= shape[d];
            let k = d as isize - (r - s.len()) as isize;
            if k >= 0 {
                let k = k as usize;
                let ii = if s[k] == 1 { 0 } else { i };
                off += ii * stride;
                stride *= s[k];
            }
        }
        arr.as_slice().unwrap()[off]
    };
    (0..n).map(|i| f(idx(a, i), idx(b, i))).collect()
}

#[test]
fn zip_matches_naive_on_every_broadcast_path() {
    let cases: &[(&[usize], &[usize], &[usize])] = &[
        (&[7, 13], &[7, 13], &[7, 13]),         // same shape
        (&[7, 13], &[], &[7, 13]),              // scalar right
        (&[], &[5, 3], &[5, 3]),                // scalar left
        (&[9, 17], &[17], &[9, 17]),            // row right
        (&[1, 17], &[9, 17], &[9, 17]),         // row left
        (&[3, 5, 7], &[5, 1], &[3, 5, 7]),      // general
        (&[301, 257], &[257], &[301, 257]),     // parallel row path
        (&[70001], &[70001], &[70001]),         // parallel same-shape path
        (&[70001], &[1], &[70001]),             // parallel scalar path
        (&[9, 17], &[9, 1], &[9, 17]),          // column right
        (&[4, 1, 1], &[4, 3, 5], &[4, 3, 5]),   // column left, two trailing axes
        (&[64, 1], &[10], &[64, 10]),           // outer product (one-hot)
        (&[5, 1], &[1, 7], &[5, 7]),            // outer product, padded row
        (&[3001, 1], &[3001, 37], &[3001, 37]), // parallel column path
    ];
    for (k, (sa, sb, out)) in cases.iter().enumerate() {
        let (a, b) = (arr(sa, k as u64), arr(sb, 100 + k as u64));
        let f = |x: f32, y: f32| x * y - x / (y.abs() + 1.0);
        let got = ew::zip(&a, &b, out, f);
        assert_eq!(got.shape(), *out);
        assert_eq!(
            got.as_slice().unwrap(),
            naive_zip(&a, &b, out, f).as_slice(),
            "case {k}"
        );
    }
}

#[test]
fn map_matches_naive() {
    for n in [0usize, 1, 7, 8, 9, 31, 70001] {
        let a = arr(&[n], n as u64);
        let got = ew::map(&a, |x| x.exp() - x);
        let want: Vec<f32> = a.iter().map(|&x| x.exp() - x).collect();
        assert_eq!(got.as_slice().unwrap(), want.as_slice(), "n = {n}");
    }
}

#[test]
fn reductions_match_naive() {
    let a = arr(&[5, 7, 9], 3);
    for axes in [vec![0], vec![1], vec![2], vec![0, 2], vec![0, 1, 2]] {
        let got = reduce::sum(&a, &axes, false);
        let mut want = ArrayD::<f64>::zeros(IxDyn(got.shape()));
        for ((i, j, k), &v) in a
            .clone()
            .into_dimensionality::<ndarray::Ix3>()
            .unwrap()
            .indexed_iter()
        {
            let key: Vec<usize> = [i, j, k]
                .iter()
                .enumerate()
                .filter(|(d, _)| !axes.contains(d))
                .map(|(_, &x)| x)
                .collect();
            want[IxDyn(&key)] += v as f64;
        }
        for (g, w) in got.iter().zip(want.iter()) {
            assert!((*g as f64 - w).abs() < 1e-4, "axes {axes:?}: {g} vs {w}");
        }
        let m = reduce::max(&a, &axes, true);
        assert_eq!(m.ndim(), 3);
    }
    let v: Vec<f32> = (0..1001).map(|i| (i % 13) as f32 - 6.0).collect();
    let exact: f32 = v.iter().sum();
    assert_eq!(reduce::sum_slice(&v), exact);
    let am = reduce::argmax(&arr(&[4, 11], 9), 1);
    let src = arr(&[4, 11], 9);
    for r in 0..4 {
        let row: Vec<f32> = (0..11).map(|c| src[[r, c]]).collect();
        let best = (0..11).fold(0, |b, c| if row[c] > row[b] { c } else { b });
        assert_eq!(am[[r]], best as i64);
    }
}

#[test]
fn kernels_are_bit_identical_for_any_thread_count() {
    let a = arr(&[513, 257], 1);
    let b = arr(&[257], 2);
    let run = || {
        let z = ew::zip(&a, &b, &[513, 257], |x, y| (x * y).sin());
        let s = reduce::sum(&z, &[0, 1], false);
        let r = reduce::sum(&z, &[0], false);
        (
            z.as_slice().unwrap().to_vec(),
            s.iter().copied().collect::<Vec<_>>(),
            r.iter().copied().collect::<Vec<_>>(),
        )
    };
    let results: Vec<_> = [1, 2, 4]
        .iter()
        .map(|&t| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap()
                .install(run)
        })
        .collect();
    assert!(results.windows(2).all(|w| w[0] == w[1]));
}

/// Every elementwise op's scalar function gives the same bits in each instruction-set
/// copy of a loop the CPU runs (baseline, AVX2, AVX-512), in f32 and f64, on ordinary
/// and special values.
#[test]
fn elementwise_ops_give_the_same_bits_in_every_instruction_set() {
    use tapeflow::exec::testing::ew::{vectorized_for, Isa};
    use tapeflow::ops::elementwise::{BINARY_OPS, UNARY_OPS};
    use tapeflow::tensor::Float;
    fn check<T: Float>(name: &str, xs: &[T], ys: &[T]) {
        // every NaN counts as equal to every NaN (payloads are not specified)
        let bits = |v: Vec<T>| -> Vec<u64> {
            v.iter()
                .map(|&x| Float::to_f64(x))
                .map(|x| if x.is_nan() { 1 } else { x.to_bits() })
                .collect()
        };
        let run = |isa: Isa| {
            let unary = UNARY_OPS.map(|u| {
                bits(vectorized_for(
                    isa,
                    #[inline(always)]
                    || xs.iter().map(|&x| u.f(x)).collect(),
                ))
            });
            let binary = BINARY_OPS.map(|b| {
                bits(vectorized_for(
                    isa,
                    #[inline(always)]
                    || xs.iter().zip(ys).map(|(&x, &y)| b.f(x, y)).collect(),
                ))
            });
            (unary, binary)
        };
        let want = run(Isa::Baseline);
        for isa in Isa::available() {
            assert!(
                run(isa) == want,
                "{name}: {isa:?} differs from the baseline"
            );
        }
    }
    let special = [0.0, -0.0, 1.0, -1.0, 0.5, 3.0, 1e-40, 1e30, -88.0, 100.0];
    let mut r = arr(&[20_000], 9)
        .iter()
        .map(|&v| v as f64 * 30.0)
        .collect::<Vec<_>>();
    r.extend(special);
    r.extend([f64::INFINITY, f64::NEG_INFINITY, f64::NAN]);
    let s: Vec<f64> = r.iter().rev().copied().collect();
    let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    check("f32", &f32s(&r), &f32s(&s));
    check("f64", &r, &s);
}

#[test]
fn broadcast_to_matches_ndarray_on_row_column_and_general_paths() {
    use tapeflow::ops::Op;
    use tapeflow::tensor::Data;
    let cases: &[(&[usize], &[usize])] = &[
        (&[17], &[9, 17]),        // row
        (&[1, 17], &[3, 9, 17]),  // row with a leading 1
        (&[9, 1], &[9, 17]),      // column
        (&[4, 1, 1], &[4, 3, 5]), // column over two axes
        (&[1], &[6, 7]),          // scalar-like
        (&[3, 1, 5], &[3, 4, 5]), // general
        (&[], &[2, 3]),           // rank 0
    ];
    for (k, (from, to)) in cases.iter().enumerate() {
        let a = arr(from, k as u64);
        let got = Op::BroadcastTo.eval(&[&Data::F32(a.clone())], to).unwrap();
        let want = a.broadcast(IxDyn(to)).unwrap().to_owned();
        match got {
            Data::F32(g) => assert_eq!(g, want.into_shared(), "{from:?} -> {to:?}"),
            _ => panic!("dtype changed"),
        }
    }
}
