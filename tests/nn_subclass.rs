//! Subclassed models (`class MyModel(keras.Model)`) through the public API: a struct of
//! layers with only a `call` method, its variables found by the first call (eager or
//! traced), usable with `compile`/`fit`, `summary`, checkpoints and `function`.

mod common;

use common::TempDir;
use tapeflow::nn::{
    Activation, Adam, Dense, Dropout, FitOptions, Layer, MeanSquaredError, Model, Module,
    Optimizer, Sequential,
};
use tapeflow::{function, DType, GradientTape, Result, Tensor, Variable};

struct MyModel {
    d1: Dense,
    drop: Dropout,
    d2: Dense,
    /// A raw variable field (Keras tracks `tf.Variable` attributes too).
    scale: Variable,
}

impl MyModel {
    fn new() -> MyModel {
        MyModel {
            d1: Dense::new(8).activation(Activation::Relu).named("d1"),
            drop: Dropout::new(0.1).seed(3).named("drop"),
            d2: Dense::new(2).named("d2"),
            scale: Variable::named("scale", Tensor::ones(&[2])),
        }
    }
}

impl Module for MyModel {
    fn call(&self, x: &Tensor, training: bool) -> Result<Tensor> {
        let h = self.d1.call(x, training)?;
        let h = self.drop.call(&h, training)?;
        let y = self.d2.call(&h, training)?;
        Ok(y * self.scale.read())
    }
}

/// 3·8 + 8 + 8·2 + 2 + 2
const PARAMS: usize = 52;

fn data() -> (Tensor, Tensor) {
    let x = Tensor::random_normal(&[40, 3], 0.0, 1.0, 1, DType::F32);
    let w = Tensor::from_vec(vec![1.0f32, -1.0, 0.5, 2.0, -0.5, 1.0], &[3, 2]).unwrap();
    let y = x.matmul(&w);
    (x, y)
}

fn names(vars: &[Variable]) -> Vec<&str> {
    vars.iter().map(|v| v.name()).collect()
}

#[test]
fn the_first_call_finds_layers_and_variables_and_summary_lists_them() {
    let model = Model::from_module(MyModel::new());
    assert!(model.name().starts_with("my_model"), "{}", model.name());
    assert!(model.trainable_variables().is_empty());
    let e = model.summary_string().unwrap_err().to_string();
    assert!(e.contains("not built"), "{e}");
    let dir = TempDir::new("subclass-unbuilt");
    assert!(model.save_weights(dir.path("w.safetensors")).is_err());

    let (x, _) = data();
    let y = model.call(&x, false).unwrap();
    assert_eq!(y.shape(), &[40, 2]);
    assert_eq!(
        names(&model.variables()),
        [
            "d1/kernel",
            "d1/bias",
            "drop/seed_generator_state",
            "d2/kernel",
            "d2/bias",
            "scale"
        ]
    );
    assert_eq!(
        names(&model.trainable_variables()),
        ["d1/kernel", "d1/bias", "d2/kernel", "d2/bias", "scale"]
    );
    assert_eq!(model.count_params(), PARAMS);
    // the struct is still reachable, and it is the same layer
    let inner = model.module::<MyModel>().unwrap();
    assert_eq!(
        inner.d1.kernel().unwrap().id(),
        model.trainable_variables()[0].id()
    );
    assert!(model.module::<WithBlock>().is_none());

    let s = model.summary_string().unwrap();
    for row in [
        "d1 (Dense)",
        "(None, 8)",
        "drop (Dropout)",
        "d2 (Dense)",
        "(None, 2)",
        "scale (Variable)",
    ] {
        assert!(s.contains(row), "missing {row:?} in\n{s}");
    }
    assert!(s.contains(&format!("Total params: {PARAMS}")), "{s}");
    assert!(s.contains(&format!("Trainable params: {PARAMS}")), "{s}");
}

#[test]
fn a_subclassed_model_trains_with_compile_and_fit_and_predicts() {
    // first call inside fit's compiled, shape-polymorphic train step
    let model = Model::from_module(MyModel::new());
    model
        .compile(MeanSquaredError, Adam::new(0.02), &["mae"])
        .unwrap();
    let (x, y) = data();
    let history = model
        .fit(&x, &y, FitOptions::new(30, 16).verbose(0))
        .unwrap();
    let loss = history.get("loss").unwrap();
    assert!(loss[29] < 0.5 * loss[0], "loss {} -> {}", loss[0], loss[29]);
    assert_eq!(history.get("mae").unwrap().len(), 30);
    assert_eq!(model.trainable_variables().len(), 5);
    let pred = model.predict(&x, 16).unwrap();
    assert_eq!(pred.shape(), &[40, 2]);
}

#[test]
fn checkpoints_restore_into_a_freshly_built_instance() {
    let dir = TempDir::new("subclass-ckpt");
    let model = Model::from_module(MyModel::new());
    model
        .compile(MeanSquaredError, Adam::new(0.02), &[])
        .unwrap();
    let (x, y) = data();
    model
        .fit(&x, &y, FitOptions::new(3, 16).verbose(0))
        .unwrap();
    model.save_weights(dir.path("w.safetensors")).unwrap();

    let fresh = Model::from_module(MyModel::new());
    fresh.build(&[3]).unwrap(); // Keras: build, then load_weights
    assert_eq!(fresh.variables().len(), 6);
    let before = fresh.call(&x, false).unwrap().to_vec_f32().unwrap();
    fresh.load_weights(dir.path("w.safetensors")).unwrap();
    let want = model.call(&x, false).unwrap().to_vec_f32().unwrap();
    let got = fresh.call(&x, false).unwrap().to_vec_f32().unwrap();
    assert_eq!(got, want);
    assert_ne!(before, want);
}

#[test]
fn a_subclassed_model_runs_inside_function_and_its_first_call_may_be_traced() {
    let model = Model::from_module(MyModel::new());
    let opt = Adam::new(0.02);
    let (m, o) = (model.clone(), opt.clone());
    let train_step = function(move |x: &Tensor, y: &Tensor| {
        let tape = GradientTape::new();
        let loss =
            tape.record(|| -> Result<Tensor> { Ok((m.call(x, true)? - y).square().mean_all()) })?;
        let vars = m.trainable_variables();
        let grads = tape.gradient(&loss, &vars)?;
        o.apply_gradients(&grads, &vars)?;
        Ok(loss)
    });
    let (x, y) = data();
    let first = train_step.call(&x, &y).unwrap().to_scalar().unwrap();
    assert_eq!(model.trainable_variables().len(), 5);
    let mut last = first;
    for _ in 0..60 {
        last = train_step.call(&x, &y).unwrap().to_scalar().unwrap();
    }
    assert_eq!(train_step.trace_count(), 1);
    assert!(last < 0.5 * first, "loss {first} -> {last}");

    let m = model.clone();
    let forward = function(move |x: &Tensor| m.call(x, false));
    let compiled = forward.call(&x).unwrap().to_vec_f32().unwrap();
    let eager = model.call(&x, false).unwrap().to_vec_f32().unwrap();
    for (c, e) in compiled.iter().zip(&eager) {
        assert!((c - e).abs() <= 1e-6 * e.abs().max(1.0), "{c} vs {e}");
    }
}

struct WithBlock {
    block: Sequential,
    head: Dense,
}

impl Module for WithBlock {
    fn call(&self, x: &Tensor, training: bool) -> Result<Tensor> {
        let h = self.block.call(x, training)?;
        self.head.call(&h, training)
    }
}

#[test]
fn a_model_inside_a_subclassed_model_is_one_row_of_its_summary() {
    let model = Model::from_module_named(
        "with_block",
        WithBlock {
            block: Sequential::named("block")
                .add(Dense::new(4).named("b1"))
                .add(Dense::new(4).named("b2")),
            head: Dense::new(1).named("head"),
        },
    );
    model.build(&[3]).unwrap();
    assert_eq!(
        names(&model.variables()),
        [
            "b1/kernel",
            "b1/bias",
            "b2/kernel",
            "b2/bias",
            "head/kernel",
            "head/bias"
        ]
    );
    let s = model.summary_string().unwrap();
    assert!(s.starts_with("Model: \"with_block\""), "{s}");
    assert!(s.contains("block (Sequential)"), "{s}");
    assert!(!s.contains("b1 (Dense)"), "{s}");
    assert!(s.contains("head (Dense)"), "{s}");
    assert!(s.contains("Total params: 41"), "{s}"); // 3·4+4 + 4·4+4 + 4+1
}

/// `save` writes architectures it can rebuild; a subclassed model's is Rust code, so
/// saving it whole is an error that points at `save_weights` (as Keras restores weights
/// into a freshly built subclassed model), and nothing is written.
#[test]
fn saving_a_subclassed_model_whole_is_an_error_pointing_at_save_weights() {
    let model = Model::from_module(MyModel::new());
    model.build(&[3]).unwrap();
    let dir = TempDir::new("subclass_save");
    let e = model.save(dir.path("model")).unwrap_err().to_string();
    assert!(e.contains("save_weights"), "{e}");
    assert!(!dir.path("model").exists());
}
