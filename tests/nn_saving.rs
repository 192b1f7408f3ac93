//! Whole-model saving: `model.save` → `load_model` → continued training reproduces an
//! uninterrupted run bit for bit; a loaded model predicts what the original predicts;
//! the config is readable; corrupt or mismatched files are errors.

mod common;

use common::TempDir;
use sha2::{Digest, Sha256};
use std::path::Path;
use tapeflow::nn::{
    input_named, load_model, Activation, Adam, AdamW, Conv2D, Dense, Dropout, ExponentialDecay,
    FitOptions, Flatten, History, Layer, LearningRateScheduler, MaxPooling2D, Model, RMSprop,
    Sequential, SparseCategoricalCrossentropy, SGD,
};
use tapeflow::{DType, Result, Tensor, Variable};

fn bits(h: &History, key: &str) -> Vec<u64> {
    h[key].iter().map(|v| v.to_bits()).collect()
}

fn weight_bits(m: &Model) -> Vec<Vec<u64>> {
    m.get_weights()
        .iter()
        .map(|w| {
            w.cast(DType::F64)
                .to_vec_f64()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        })
        .collect()
}

fn classification_data() -> (Tensor, Tensor, Tensor, Tensor) {
    let x = Tensor::random_normal(&[48, 6], 0.0, 1.0, 11, DType::F32);
    let y = Tensor::random_uniform(&[48], 0.0, 3.0, 12, DType::F64).cast(DType::I64);
    (
        x.slice_axis(0, 0, 40),
        y.slice_axis(0, 0, 40),
        x.slice_axis(0, 40, 48),
        y.slice_axis(0, 40, 48),
    )
}

fn mlp() -> Model {
    Sequential::new()
        .add(Dense::new(16).activation(Activation::Relu))
        .add(Dropout::new(0.25).seed(3))
        .add(Dense::new(3))
        .input_shape(&[6])
        .into()
}

/// Trains `epochs` uninterrupted, and `half` + save + load_model + the rest, from the
/// same initial weights; every history value and the final weights must be equal bits.
fn check_resume(build: fn() -> Model, compile: Compile, lr_callback: bool, tag: &str) {
    let dir = TempDir::new(tag);
    let (x, y, xv, yv) = classification_data();
    let (epochs, half) = (6, 3);
    let opts = |epochs: usize, initial: usize| {
        let o = FitOptions::new(epochs, 16)
            .shuffle(true, 5)
            .validation_data(&xv, &yv)
            .verbose(0)
            .initial_epoch(initial);
        if lr_callback {
            o.callback(LearningRateScheduler::new(|epoch, lr| {
                if epoch % 2 == 1 {
                    lr * 0.5
                } else {
                    lr
                }
            }))
        } else {
            o
        }
    };

    let a = build();
    let b = build();
    b.set_weights(&a.get_weights()).unwrap();
    compile(&a).unwrap();
    compile(&b).unwrap();

    let full = a.fit(&x, &y, opts(epochs, 0)).unwrap();
    let first = b.fit(&x, &y, opts(half, 0)).unwrap();
    b.save(dir.path("model")).unwrap();
    let c = load_model(dir.path("model")).unwrap();
    let rest = c.fit(&x, &y, opts(epochs, half)).unwrap();

    for key in full.keys() {
        let all = bits(&full, key);
        assert_eq!(
            bits(&first, key),
            all[..half],
            "{tag}: `{key}` before the save"
        );
        assert_eq!(
            bits(&rest, key),
            all[half..],
            "{tag}: `{key}` after load_model"
        );
    }
    assert!(full.contains_key("val_accuracy"));
    assert_eq!(weight_bits(&c), weight_bits(&a), "{tag}: final weights");
    // the loaded optimizer carries on from the saved step count
    let (oa, oc) = (a.optimizer().unwrap(), c.optimizer().unwrap());
    assert_eq!(
        oc.iterations().value().to_vec_i64().unwrap(),
        oa.iterations().value().to_vec_i64().unwrap()
    );
    assert_eq!(oc.current_learning_rate(), oa.current_learning_rate());
}

/// Compiles a model (the same way for both runs).
type Compile = fn(&Model) -> Result<()>;

fn compile_adam(m: &Model) -> Result<()> {
    m.compile(
        SparseCategoricalCrossentropy::from_logits(true),
        Adam::default(),
        &["accuracy"],
    )
}

#[test]
fn save_load_and_continue_reproduces_an_uninterrupted_run_bit_for_bit() {
    check_resume(mlp, compile_adam, false, "resume_adam");
}

#[test]
fn resume_keeps_momentum_and_a_changed_learning_rate() {
    fn functional() -> Model {
        let inputs = input_named(&[6], "features");
        let x = Dense::new(8)
            .activation(Activation::Tanh)
            .apply(&inputs)
            .unwrap();
        // one name in both runs: the same name-derived seed, saved as the seed in use
        let x = Dropout::new(0.1).named("drop").apply(&x).unwrap();
        let out = Dense::new(3).apply(&x).unwrap();
        Model::new(&inputs, &out).unwrap()
    }
    fn sgd(m: &Model) -> Result<()> {
        m.compile(
            SparseCategoricalCrossentropy::from_logits(true),
            SGD::new(0.1).momentum(0.9).nesterov(true),
            &["accuracy"],
        )
    }
    fn rmsprop(m: &Model) -> Result<()> {
        m.compile(
            SparseCategoricalCrossentropy::from_logits(true),
            RMSprop::new(0.01).momentum(0.5).centered(true),
            &["accuracy"],
        )
    }
    check_resume(functional, sgd, true, "resume_sgd");
    check_resume(mlp, rmsprop, true, "resume_rmsprop");
}

fn cnn() -> Model {
    let inputs = input_named(&[6, 6, 1], "image");
    let x = Conv2D::new(4, 3)
        .padding(tapeflow::Padding::Same)
        .activation(Activation::Relu)
        .apply(&inputs)
        .unwrap();
    let x = MaxPooling2D::new((2, 2)).apply(&x).unwrap();
    let x = Flatten::new().apply(&x).unwrap();
    let x = Dropout::new(0.5).apply(&x).unwrap();
    let out = Dense::new(3)
        .activation(Activation::Softmax)
        .named("probs")
        .apply(&x)
        .unwrap();
    Model::new_named(&inputs, &out, "small_cnn").unwrap()
}

#[test]
fn a_loaded_model_predicts_without_the_code_that_built_it() {
    let dir = TempDir::new("predict");
    let model = cnn();
    let x = Tensor::random_normal(&[5, 6, 6, 1], 0.0, 1.0, 4, DType::F32);
    let want = model.predict(&x, 2).unwrap().to_vec_f32().unwrap();
    model.save(dir.path("cnn")).unwrap();
    let loaded = load_model(dir.path("cnn")).unwrap();
    assert_eq!(loaded.predict(&x, 2).unwrap().to_vec_f32().unwrap(), want);
    assert_eq!(loaded.name(), "small_cnn");
    assert!(loaded.optimizer().is_none(), "it was not compiled");
    assert_eq!(
        loaded.summary_string().unwrap(),
        model.summary_string().unwrap()
    );

    // the architecture is readable JSON in config.json
    let config = std::fs::read_to_string(dir.path("cnn").join("config.json")).unwrap();
    for needle in [
        "\"format\": \"tapeflow.model\"",
        "\"class_name\": \"Functional\"",
        "\"input_name\": \"image\"",
        "\"input_shape\": [\n",
        "\"class_name\": \"Conv2D\"",
        "\"filters\": 4",
        "\"kernel_size\": [\n",
        "\"padding\": \"same\"",
        "\"pool_size\": [\n",
        "\"class_name\": \"Flatten\"",
        "\"rate\": 0.5",
        "\"activation\": \"softmax\"",
        "\"name\": \"probs\"",
        "\"units\": 3",
        "\"compile\": null",
    ] {
        assert!(config.contains(needle), "no {needle:?} in\n{config}");
    }
    let mut files: Vec<String> = std::fs::read_dir(dir.path("cnn"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["config.json", "model.weights.safetensors"]);
}

#[test]
fn optimizer_settings_survive_the_round_trip() {
    let dir = TempDir::new("opt_config");
    let opts: Vec<Compile> = vec![
        |m| {
            m.compile(
                SparseCategoricalCrossentropy::from_logits(true),
                AdamW::new(0.003).weight_decay(0.01).beta_1(0.8),
                &["accuracy"],
            )
        },
        |m| {
            m.compile(
                tapeflow::nn::CategoricalCrossentropy::from_logits(true).label_smoothing(0.1),
                SGD::new(ExponentialDecay::new(0.1, 7, 0.9).staircase(true)),
                &[],
            )
        },
        |m| {
            m.compile(
                tapeflow::nn::MeanSquaredError,
                RMSprop::new(tapeflow::nn::CosineDecay::new(0.01, 100).alpha(0.1)),
                &[],
            )
        },
    ];
    for (i, compile) in opts.iter().enumerate() {
        let model = mlp();
        compile(&model).unwrap();
        let path = dir.path(&format!("m{i}"));
        model.save(&path).unwrap();
        let loaded = load_model(&path).unwrap();
        let (o, l) = (model.optimizer().unwrap(), loaded.optimizer().unwrap());
        assert_eq!(l.get_config(), o.get_config(), "optimizer {i}");
        assert_eq!(l.name(), o.name());
        let config = std::fs::read_to_string(path.join("config.json")).unwrap();
        let again = std::fs::read_to_string({
            loaded.save(dir.path("again")).unwrap();
            dir.path("again").join("config.json")
        })
        .unwrap();
        // the same config, except for the weights' checksums
        let strip = |s: &str| {
            s.lines()
                .filter(|l| !l.contains(".safetensors\""))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(strip(&again), strip(&config), "model {i}");
    }
}

#[test]
fn saving_replaces_a_previous_save_and_nothing_else() {
    let dir = TempDir::new("replace");
    let model = mlp();
    let path = dir.path("m");
    model.save(&path).unwrap();
    model
        .set_weights(
            &model
                .get_weights()
                .iter()
                .map(|w| w.zeros_like())
                .collect::<Vec<_>>(),
        )
        .unwrap();
    model.save(&path).unwrap();
    assert_eq!(dir.files(), ["m"], "no temporary or old directories left");
    let loaded = load_model(&path).unwrap();
    assert_eq!(weight_bits(&loaded), weight_bits(&model));

    // a directory that is not a saved model is never replaced
    let other = dir.path("photos");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("cat.jpg"), b"meow").unwrap();
    let e = model.save(&other).unwrap_err().to_string();
    assert!(e.contains("is not a saved tapeflow model"), "{e}");
    assert_eq!(std::fs::read(other.join("cat.jpg")).unwrap(), b"meow");
    std::fs::write(dir.path("file"), b"x").unwrap();
    assert!(model.save(dir.path("file")).is_err());
}

#[test]
fn models_that_cannot_be_rebuilt_are_save_errors() {
    /// A user layer without a config.
    struct Twice;
    impl Layer for Twice {
        fn name(&self) -> &str {
            "twice"
        }
        fn class_name(&self) -> &'static str {
            "Twice"
        }
        fn build(&self, _s: &[usize]) -> Result<()> {
            Ok(())
        }
        fn compute_output_shape(&self, s: &[usize]) -> Result<Vec<usize>> {
            Ok(s.to_vec())
        }
        fn call(&self, x: &Tensor, _t: bool) -> Result<Tensor> {
            Ok(x * 2.0)
        }
        fn variables(&self) -> Vec<Variable> {
            Vec::new()
        }
    }
    let dir = TempDir::new("unsaveable");
    let model = Sequential::new()
        .add(Dense::new(2))
        .add(Twice)
        .input_shape(&[3]);
    let e = model.save(dir.path("m")).unwrap_err().to_string();
    assert!(
        e.contains("layer `twice` (class Twice) has no config"),
        "{e}"
    );
    let empty = Sequential::new().input_shape(&[3]);
    let e = empty.save(dir.path("m")).unwrap_err().to_string();
    assert!(e.contains("is not a stack of layers"), "{e}");
    let unbuilt = Sequential::new().add(Dense::new(2));
    let e = unbuilt.save(dir.path("m")).unwrap_err().to_string();
    assert!(e.contains("is not built"), "{e}");
    assert!(dir.files().is_empty(), "{:?}", dir.files());
}

/// Saves a compiled model and returns the directory.
fn saved(dir: &TempDir, name: &str) -> std::path::PathBuf {
    let model = mlp();
    compile_adam(&model).unwrap();
    let path = dir.path(name);
    model.save(&path).unwrap();
    path
}

fn edit_config(path: &Path, f: impl Fn(&str) -> String) {
    let c = path.join("config.json");
    let text = std::fs::read_to_string(&c).unwrap();
    std::fs::write(&c, f(&text)).unwrap();
}

fn load_err(path: &Path) -> String {
    match load_model(path) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn corrupt_or_mismatched_files_are_errors() {
    let dir = TempDir::new("corrupt");

    let p = saved(&dir, "garbage");
    edit_config(&p, |_| "{ not json".into());
    assert!(load_err(&p).contains("not valid JSON"));

    let p = saved(&dir, "version");
    edit_config(&p, |s| s.replace("\"version\": 1", "\"version\": 2"));
    assert!(load_err(&p).contains("format version 2 is not supported"));

    let p = saved(&dir, "format");
    edit_config(&p, |s| s.replace("tapeflow.model", "keras"));
    assert!(load_err(&p).contains("`format` is `keras`"));

    // one flipped byte in the weights
    let p = saved(&dir, "flipped");
    let w = p.join("model.weights.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&w, &bytes).unwrap();
    let e = load_err(&p);
    assert!(
        e.contains("does not match") && e.contains("model.weights.safetensors"),
        "{e}"
    );

    // weights from another save
    let other = saved(&dir, "other");
    let p = saved(&dir, "mixed");
    std::fs::copy(
        other.join("optimizer.safetensors"),
        p.join("optimizer.safetensors"),
    )
    .unwrap();
    assert!(load_err(&p).contains("belongs to another save"));

    let p = saved(&dir, "missing");
    std::fs::remove_file(p.join("optimizer.safetensors")).unwrap();
    assert!(load_err(&p).contains("optimizer.safetensors"));

    // a truncated weights file with a matching checksum: the safetensors reader refuses it
    let p = saved(&dir, "truncated");
    let w = p.join("model.weights.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    let cut = &bytes[..bytes.len() / 2];
    std::fs::write(&w, cut).unwrap();
    let old: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let new: String = Sha256::digest(cut)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    edit_config(&p, |s| s.replace(&old, &new));
    assert!(load_err(&p).contains("not a valid safetensors file"));

    // an architecture that does not fit the weights
    let p = saved(&dir, "units");
    edit_config(&p, |s| s.replacen("\"units\": 16", "\"units\": 17", 1));
    let e = load_err(&p);
    assert!(
        e.contains("f32[6,16] in the checkpoint but f32[6,17] in the model"),
        "{e}"
    );

    // a missing field and an unknown class are named
    let p = saved(&dir, "field");
    edit_config(&p, |s| s.replacen("\"units\": 16,", "", 1));
    let e = load_err(&p);
    assert!(e.contains("`units` is missing"), "{e}");
    let p = saved(&dir, "class");
    edit_config(&p, |s| s.replacen("\"Dropout\"", "\"GaussianNoise\"", 1));
    assert!(load_err(&p).contains("unknown layer class `GaussianNoise`"));
    let p = saved(&dir, "activation");
    edit_config(&p, |s| s.replacen("\"relu\"", "\"gelu\"", 1));
    assert!(load_err(&p).contains("`activation` must be one of"));

    assert!(load_err(&dir.path("nowhere")).contains("config.json"));
}
