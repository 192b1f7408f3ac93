use std::time::Instant;
use tapeflow::exec::kernels::gemm::gemm;
fn main() {
    let (m, k, n) = (64usize, 512usize, 128usize);
    let a = vec![1.0f32; m * k];
    let b = vec![0.5f32; k * n];
    let mut c = vec![0.0f32; m * n];
    for _ in 0..3 {
        for (name, ta, tb, mm, kk, nn) in [
            ("dz.U^T tb", false, true, 64, 512, 128),
            ("dz.UT plain", false, false, 64, 512, 128),
            ("h.U plain", false, false, 64, 128, 512),
            ("h^T.dz ta", true, false, 128, 64, 512),
            ("big ta K=1792", true, false, 128, 1792, 512),
        ] {
            let a = vec![1.0f32; mm * kk];
            let b = vec![0.5f32; kk * nn];
            let mut c = vec![0.0f32; mm * nn];
            let it = 2000 / (kk / 64).max(1);
            let t = Instant::now();
            for _ in 0..it {
                gemm(&a, &b, &mut c, mm, kk, nn, ta, tb);
            }
            let s = t.elapsed().as_secs_f64() / it as f64;
            print!(
                "{name}: {:.1} us {:.0} GF/s | ",
                s * 1e6,
                2.0 * (mm * kk * nn) as f64 / s / 1e9
            );
        }
        println!();
    }
    let _ = (a, b, &mut c);
}
