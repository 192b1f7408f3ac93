//! Without a working C compiler, fused loops run in the interpreter and give the same
//! results: `$CC` names a compiler that does not exist, so code generation is off for
//! this whole process (this binary holds a single test, so nothing else runs first).

use tapeflow::exec::codegen::{self, Codegen};
use tapeflow::exec::{Plan, RunStats};
use tapeflow::ir::parse;
use tapeflow::{DType, Tensor};

#[test]
fn without_a_compiler_fused_loops_run_in_the_interpreter() {
    std::env::set_var("CC", "/nonexistent/tapeflow-test-cc");
    assert!(!codegen::compiler_available());
    let text = "graph(%0: f32[3,40000], %1: f32[40000]) {
  %2 = fused %0, %1 : f32[3,40000]
    #0 = sin $0 : f32[3,40000]
    #1 = mul #0, $1 : f32[3,40000]
  return %2
}";
    let plan = Plan::new(parse(text).unwrap()).unwrap();
    let x = Tensor::random_uniform(&[3, 40000], -3.0, 3.0, 1, DType::F32);
    let y = Tensor::random_uniform(&[40000], -3.0, 3.0, 2, DType::F32);
    let inputs = [x.data().unwrap(), y.data().unwrap()];
    plan.set_codegen(Codegen::Off);
    let want = plan.run(&inputs, &mut RunStats::default()).unwrap();
    // forcing generated code waits for the (failing) compile, then interprets
    plan.set_codegen(Codegen::Force);
    assert_eq!(plan.generated_steps(), (0, 1));
    let got = plan.run(&inputs, &mut RunStats::default()).unwrap();
    assert_eq!(got, want);
    let want_sin: Vec<f32> = (x.to_vec_f32().unwrap().iter())
        .zip(y.to_vec_f32().unwrap().iter().cycle())
        .map(|(&a, &b)| tapeflow::ops::Unary::Sin.f(a) * b)
        .collect();
    assert!(
        got[0]
            == tapeflow::Data::F32(
                ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[3, 40000]), want_sin)
                    .unwrap()
                    .into_shared()
            )
    );
    assert_eq!(codegen::stats().compiled, 0);
    assert!(codegen::stats().failed >= 1);
}
