//! The disk cache of generated kernels: a kernel compiled by one process is loaded by
//! the next without running the C compiler. The test runs itself again as a child
//! process with the same `$TAPEFLOW_CACHE_DIR`; it also prints both latencies.

use std::time::Instant;
use tapeflow::exec::codegen::{self, Codegen};
use tapeflow::exec::{Plan, RunStats};
use tapeflow::ir::parse;
use tapeflow::{DType, Tensor};

/// A region of its own (no other test compiles it), so the cache starts cold.
const TEXT: &str = "graph(%0: f32[5000]) {
  %1 = fused %0 : f32[5000]
    #0 = cos $0 : f32[5000]
    #1 = tanh #0 : f32[5000]
    #2 = div #1, $0 : f32[5000]
  return %1
}";

/// Makes the plan, waits for its kernel and runs it once; the wait in ms.
fn compile_and_run() -> f64 {
    let plan = Plan::new(parse(TEXT).unwrap()).unwrap();
    let t = Instant::now();
    plan.set_codegen(Codegen::Force);
    let wait = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(plan.generated_steps(), (1, 1));
    let x = Tensor::random_uniform(&[5000], -3.0, 3.0, 1, DType::F32);
    plan.run(&[x.data().unwrap()], &mut RunStats::default())
        .unwrap();
    wait
}

#[test]
fn a_second_process_loads_the_kernel_from_the_disk_cache() {
    if std::env::var_os("TAPEFLOW_CACHE_TEST_CHILD").is_some() {
        let ms = compile_and_run();
        let s = codegen::stats();
        assert_eq!((s.compiled, s.disk_hits), (0, 1), "{s:?}");
        println!("child: kernel loaded from the disk cache in {ms:.1} ms");
        return;
    }
    let dir = std::env::temp_dir().join(format!("tapeflow-cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // before anything looks for the compiler: the cache directory is fixed then
    std::env::set_var("TAPEFLOW_CACHE_DIR", &dir);
    if !codegen::compiler_available() {
        assert!(
            std::env::var_os("TAPEFLOW_REQUIRE_CC").is_none(),
            "TAPEFLOW_REQUIRE_CC is set but no C compiler runs"
        );
        eprintln!("no C compiler: the disk cache is not tested here");
        return;
    }
    let ms = compile_and_run();
    let s = codegen::stats();
    assert_eq!((s.compiled, s.disk_hits), (1, 0), "{s:?}");
    println!("parent: kernel compiled in {ms:.1} ms (cold cache)");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files[0].ends_with(".c") && files[1].ends_with(std::env::consts::DLL_EXTENSION));
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_second_process_loads_the_kernel_from_the_disk_cache",
            "--nocapture",
        ])
        .env("TAPEFLOW_CACHE_TEST_CHILD", "1")
        .env("TAPEFLOW_CACHE_DIR", &dir)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    println!("{text}");
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(text.contains("loaded from the disk cache"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}
