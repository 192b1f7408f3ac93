//! Checkpoints through the public API: bit-exact round trips of weights and optimizer
//! state, training that resumes exactly, atomic replacement, and clear errors for a
//! checkpoint of another model or a damaged file.

mod common;

use common::TempDir;
use tapeflow::nn::{
    load_variables, save_variables, Activation, Adam, Checkpoint, Dense, Model, Optimizer,
    Sequential,
};
use tapeflow::{DType, GradientTape, Tensor, Variable};

fn model(hidden: usize) -> Model {
    Sequential::new()
        .add(Dense::new(hidden).activation(Activation::Relu))
        .add(Dense::new(2))
        .input_shape(&[3])
        .into()
}

fn train(model: &Model, opt: &Adam, steps: usize) {
    let x = Tensor::random_normal(&[8, 3], 0.0, 1.0, 4, DType::F32);
    let y = Tensor::random_normal(&[8, 2], 0.0, 1.0, 5, DType::F32);
    for _ in 0..steps {
        let tape = GradientTape::new();
        let loss = tape.record(|| (model.call(&x, true).unwrap() - &y).square().mean_all());
        let vars = model.trainable_variables();
        let grads = tape.gradient(&loss, &vars).unwrap();
        opt.apply_gradients(&grads, &vars).unwrap();
    }
}

fn bits(vars: &[Variable]) -> Vec<Vec<u64>> {
    vars.iter()
        .map(|v| match v.dtype() {
            DType::F32 => v
                .value()
                .to_vec_f32()
                .unwrap()
                .iter()
                .map(|x| x.to_bits() as u64)
                .collect(),
            DType::F64 => v
                .value()
                .to_vec_f64()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect(),
            DType::I64 => v
                .value()
                .to_vec_i64()
                .unwrap()
                .iter()
                .map(|x| *x as u64)
                .collect(),
        })
        .collect()
}

#[test]
fn model_and_optimizer_round_trip_bit_exactly_and_training_resumes() {
    let dir = TempDir::new("roundtrip");
    let (a, opt_a) = (model(5), Adam::new(0.01));
    train(&a, &opt_a, 3);
    let ckpt = Checkpoint::new(&a).optimizer(&opt_a);
    ckpt.save(dir.path("a.safetensors")).unwrap();

    // a second model in the same process has other names (dense_2, ...): matched by position
    let (b, opt_b) = (model(5), Adam::new(0.01));
    assert_ne!(a.variables()[0].name(), b.variables()[0].name());
    Checkpoint::new(&b)
        .optimizer(&opt_b)
        .restore(dir.path("a.safetensors"))
        .unwrap();
    assert_eq!(bits(&a.variables()), bits(&b.variables()));
    assert_eq!(bits(&opt_a.variables()), bits(&opt_b.variables()));
    assert_eq!(opt_b.iterations().value().to_vec_i64().unwrap(), vec![3]);

    // both continue identically
    train(&a, &opt_a, 2);
    train(&b, &opt_b, 2);
    assert_eq!(bits(&a.variables()), bits(&b.variables()));

    // and the same model restores its own earlier state by name
    ckpt.restore(dir.path("a.safetensors")).unwrap();
    assert_eq!(opt_a.iterations().value().to_vec_i64().unwrap(), vec![3]);
    assert_eq!(
        dir.files(),
        ["a.safetensors"],
        "no temporary file is left behind"
    );
}

#[test]
fn weights_of_every_dtype_round_trip_bit_exactly() {
    let dir = TempDir::new("dtypes");
    let vars = vec![
        Variable::named(
            "f32",
            Tensor::from_vec(vec![1.5f32, -0.0, f32::MIN_POSITIVE, 1e-45, f32::MAX], &[5]).unwrap(),
        ),
        Variable::named(
            "f64",
            Tensor::from_vec(vec![std::f64::consts::PI, -1e-300, 4.9e-324], &[3, 1]).unwrap(),
        ),
        Variable::named(
            "i64",
            Tensor::from_vec(vec![i64::MIN, -1, 0, i64::MAX], &[2, 2]).unwrap(),
        ),
        Variable::named("scalar", Tensor::scalar(7.25)),
    ];
    save_variables(dir.path("v.safetensors"), &vars).unwrap();
    let want = bits(&vars);
    for v in &vars {
        v.assign(&v.value().zeros_like());
    }
    load_variables(dir.path("v.safetensors"), &vars).unwrap();
    assert_eq!(bits(&vars), want);
}

#[test]
fn loading_a_checkpoint_of_another_model_names_the_variable_and_changes_nothing() {
    let dir = TempDir::new("mismatch");
    let small = model(4);
    small.save_weights(dir.path("small.safetensors")).unwrap();
    let big = model(6);
    let before = bits(&big.variables());
    let e = big
        .load_weights(dir.path("small.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("kernel") && e.contains("f32[3,4]") && e.contains("f32[3,6]"),
        "{e}"
    );
    assert_eq!(bits(&big.variables()), before, "nothing was assigned");

    let deeper: Model = Sequential::new()
        .add(Dense::new(4))
        .add(Dense::new(4))
        .add(Dense::new(2))
        .input_shape(&[3])
        .into();
    let e = deeper
        .load_weights(dir.path("small.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("has no variable") && e.contains("/kernel"),
        "{e}"
    );
}

#[test]
fn save_replaces_atomically_and_damaged_files_are_errors() {
    let dir = TempDir::new("atomic");
    let path = dir.path("w.safetensors");
    let m = model(3);
    m.save_weights(&path).unwrap();
    let first = std::fs::read(&path).unwrap();
    for v in m.variables() {
        v.assign(&(v.value() + 1.0f32));
    }
    m.save_weights(&path).unwrap();
    let second = std::fs::read(&path).unwrap();
    assert_ne!(first, second);
    assert_eq!(dir.files(), ["w.safetensors"]);

    // a save that fails (two variables with one name) leaves the previous file as it was
    let dup = vec![
        Variable::named("same", Tensor::scalar(1.0)),
        Variable::named("same", Tensor::scalar(2.0)),
    ];
    let e = save_variables(&path, &dup).unwrap_err().to_string();
    assert!(e.contains("same"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), second);
    // a save into a missing directory is an error naming the path
    let e = m
        .save_weights(dir.path("missing/w.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing"), "{e}");

    std::fs::write(dir.path("cut.safetensors"), &second[..second.len() / 2]).unwrap();
    let e = m
        .load_weights(dir.path("cut.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cut.safetensors"), "{e}");
    let e = m
        .load_weights(dir.path("absent.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("absent.safetensors"), "{e}");
}
