//! Criterion benches of the kernels the workloads spend their time in, each against
//! the implementation it replaced:
//!
//! - `gemm/<shape>`: tapeflow's GEMM (the `gemm` crate 0.19 with its AVX-512 kernels,
//!   chosen at run time, and the transposed copy of a `b` whose rows lie 4 KiB apart)
//!   against the `gemm` crate 0.18 as tapeflow called it before (AVX2 kernels on stable
//!   Rust), on the W1, W2 and W3 products, forward (`nn`) and backward (`tn`, `nt`).
//! - `conv/<layer>`: the tutorial CNN's convolutions at batch 32, forward and both
//!   backprops (im2col + GEMM), so a new convolution kernel has its baseline.
//!
//! `cargo bench --bench kernels`. The fused W5 loop (interpreter vs generated code) is
//! in `benches/fused.rs` when the codegen backend is built.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tapeflow::exec::kernels::conv::{
    conv2d, conv2d_backprop_filter, conv2d_backprop_input, Conv2dGeom,
};
use tapeflow::exec::kernels::gemm::gemm;
use tapeflow::Padding;

/// `c = op(a)·op(b)` with the `gemm` crate 0.18, the backend before this one.
#[allow(clippy::too_many_arguments)]
fn gemm_0_18(
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
) {
    let (a_rs, a_cs) = if ta { (1, m as isize) } else { (k as isize, 1) };
    let (b_rs, b_cs) = if tb { (1, k as isize) } else { (n as isize, 1) };
    let threads = if m * k * n < 1 << 23 {
        gemm_prev::Parallelism::None
    } else {
        gemm_prev::Parallelism::Rayon(rayon::current_num_threads())
    };
    // SAFETY: the slices hold m·k, k·n and m·n elements (asserted by the caller's
    // construction), so every access through these strides is in bounds; `c` is a
    // unique borrow.
    unsafe {
        gemm_prev::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            threads,
        )
    }
}

fn gemms(c: &mut Criterion) {
    // (name, m, k, n, ta, tb): the products of one training step
    let shapes = [
        ("w1_fwd_64x784x64", 64, 784, 64, false, false),
        ("w1_gw_784x64x64", 784, 64, 64, true, false),
        ("w2_dense_32x576x64", 32, 576, 64, false, false),
        ("w2_conv2_im2col_227x288x64", 227, 288, 64, false, false),
        ("w3_fwd_256x1024x1024", 256, 1024, 1024, false, false),
        ("w3_gx_256x1024x1024_nt", 256, 1024, 1024, false, true),
        ("w3_gw_1024x256x1024_tn", 1024, 256, 1024, true, false),
    ];
    let mut g = c.benchmark_group("gemm");
    g.sample_size(10);
    for (name, m, k, n, ta, tb) in shapes {
        let a = vec![0.5f32; m * k];
        let b = vec![0.25f32; k * n];
        let mut out = vec![0.0f32; m * n];
        g.bench_function(BenchmarkId::new("tapeflow", name), |bch| {
            bch.iter(|| gemm(&a, &b, &mut out, m, k, n, ta, tb))
        });
        g.bench_function(BenchmarkId::new("gemm_0_18", name), |bch| {
            bch.iter(|| gemm_0_18(&a, &b, &mut out, m, k, n, ta, tb))
        });
    }
    g.finish();
}

fn convs(c: &mut Criterion) {
    let layers = [
        ("conv1_28x28x1_32", [32, 28, 28, 1], [3, 3, 1, 32]),
        ("conv2_13x13x32_64", [32, 13, 13, 32], [3, 3, 32, 64]),
        ("conv3_5x5x64_64", [32, 5, 5, 64], [3, 3, 64, 64]),
    ];
    let mut g = c.benchmark_group("conv");
    g.sample_size(10);
    for (name, xs, ws) in layers {
        let geom = Conv2dGeom::new(&xs, &ws, (1, 1), Padding::Valid).unwrap();
        let x = vec![0.5f32; xs.iter().product()];
        let w = vec![0.25f32; ws.iter().product()];
        let gy = vec![0.125f32; geom.out_shape().iter().product()];
        g.bench_function(BenchmarkId::new("forward", name), |b| {
            b.iter(|| conv2d(&x, &w, &geom))
        });
        g.bench_function(BenchmarkId::new("backprop_input", name), |b| {
            b.iter(|| conv2d_backprop_input(&gy, &w, &geom))
        });
        g.bench_function(BenchmarkId::new("backprop_filter", name), |b| {
            b.iter(|| conv2d_backprop_filter(&x, &gy, &geom))
        });
    }
    g.finish();
}

criterion_group!(benches, gemms, convs);
criterion_main!(benches);
