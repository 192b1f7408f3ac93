//! Whole-model saving: [`Model::save`] and [`load_model`] (Keras' `model.save` /
//! `keras.models.load_model`) for `Sequential` and functional models.
//!
//! A saved model is a directory:
//! - `config.json`: readable JSON — the format name and version, the architecture
//!   (`Sequential` or `Functional`, the name, input shape and each layer's class and
//!   [`get_config`](super::Layer::get_config): units, activation, filters, kernel size,
//!   pool size, rate, names), the compile settings (the loss, the optimizer's class and
//!   hyperparameters with its current learning rate, the metric names) and the SHA-256
//!   of each weights file;
//! - `model.weights.safetensors`: every model variable, by name
//!   ([`save_variables`](super::save_variables));
//! - `optimizer.safetensors` (when compiled): the optimizer's step counter and slots
//!   (Adam's moments, momenta).
//!
//! So [`load_model`] rebuilds the model without the code that built it, restores the
//! weights, and recompiles with an optimizer in the saved state: training continued
//! after a save and load gives bit for bit the numbers of a run that never stopped
//! (with [`FitOptions::initial_epoch`](super::FitOptions::initial_epoch) for the batch
//! order of a shuffled run). Dropout layers save the seed in use and their call counter,
//! so they draw the same masks.
//!
//! Invariants and failure modes:
//! - Saving is all or nothing: the files are written into a fresh temporary directory
//!   next to the target, which then replaces the target by two renames (the old
//!   directory is moved aside, the new one moved in, the old one deleted). Readers see
//!   the old complete save or the new one, never a mix; a crash between the renames
//!   leaves no target but the old save intact under `.<name>.old-*`. An existing target
//!   that is not a saved model is never replaced (an `Err`). Concurrent saves to one
//!   path are not supported.
//! - Loading checks everything before returning: the format and version, every config
//!   field (an `Err` naming the field), the weights files' SHA-256 against the config
//!   (a corrupt file, or files from two different saves, is an `Err`), and every
//!   variable's dtype and shape.
//! - Only layers, losses, optimizers and schedules with a config can be saved (the
//!   built-in ones); others make `save` an `Err` (use `save_weights` for such models).
//!   Initializers are not saved (the weights are). Metrics are saved by name and
//!   resolved by `compile` on load: a metric object whose name `compile` does not know
//!   makes `load_model` an `Err`.

use super::checkpoint::{load_variables, save_variables};
use super::embedding::Embedding;
use super::layers::{Conv2D, Dense, Dropout, Flatten, Layer, MaxPooling2D};
use super::losses::{
    BinaryCrossentropy, CategoricalCrossentropy, MeanSquaredError, SparseCategoricalCrossentropy,
};
use super::model::{input_named, Model, Sequential};
use super::optimizers::{
    Adam, AdamW, CosineDecay, ExponentialDecay, LearningRate, Optimizer, RMSprop, SGD,
};
use super::recurrent::{Cell, Recurrent, SimpleRNN, GRU, LSTM};
use super::Activation;
use crate::{DType, Error, Padding, Result};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The `format` field of `config.json`.
const FORMAT: &str = "tapeflow.model";
/// The `version` field of `config.json` this code writes and reads.
const VERSION: u64 = 1;
const CONFIG_FILE: &str = "config.json";
const WEIGHTS_FILE: &str = "model.weights.safetensors";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Numbers the temporary directories of this process's saves.
static SAVE_COUNTER: AtomicU64 = AtomicU64::new(0);

fn err(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Data(format!("{}: {msg}", path.display()))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---------------------------------------------------------------------------------------
// saving

impl Model {
    /// The architecture as pretty JSON (Keras' `model.to_json()`): the class
    /// (`Sequential` or `Functional`), name, input shape and each layer's class and
    /// config. [`model_from_json`] rebuilds the model from it (with fresh weights).
    ///
    /// Returns `Err` if the model is not built or a layer has no config.
    ///
    /// ```
    /// use tapeflow::nn::{model_from_json, Activation, Dense, Sequential};
    /// let model = Sequential::named("mlp")
    ///     .add(Dense::new(4).activation(Activation::Relu).named("hidden"))
    ///     .add(Dense::new(1).named("out"))
    ///     .input_shape(&[3]);
    /// let json = model.to_json().unwrap();
    /// assert!(json.contains("\"units\": 4") && json.contains("\"activation\": \"relu\""));
    /// let copy = model_from_json(&json).unwrap();
    /// assert_eq!(copy.to_json().unwrap(), json);
    /// ```
    pub fn to_json(&self) -> Result<String> {
        Ok(pretty(&self.architecture()?))
    }

    /// `{"class_name": "Sequential" | "Functional", "config": {...}}`.
    fn architecture(&self) -> Result<Value> {
        let input_shape = self.input_shape().ok_or_else(|| {
            Error::Invalid(format!(
                "model `{}` is not built: give it an input shape or call it once before saving",
                self.name()
            ))
        })?;
        self.build(&input_shape)?;
        // Only a chain of layers can be rebuilt: a model without layers, or with
        // variables no layer owns (a subclassed model computes in its own code), cannot.
        let owned: HashSet<u64> = self
            .layers()
            .iter()
            .flat_map(|l| l.variables())
            .map(|v| v.id())
            .collect();
        if self.layers().is_empty() || self.variables().iter().any(|v| !owned.contains(&v.id())) {
            return Err(Error::Invalid(format!(
                "model `{}` is not a stack of layers (no layers, or variables no layer owns, as in a subclassed model); whole-model saving rebuilds Sequential and functional models only: save its weights with save_weights and rebuild it with its code",
                self.name()
            )));
        }
        let mut layers = Vec::new();
        for l in self.layers() {
            let config = l.get_config().ok_or_else(|| {
                Error::Invalid(format!(
                    "model `{}`: layer `{}` (class {}) has no config, so the model cannot be saved whole; save its weights with save_weights instead",
                    self.name(),
                    l.name(),
                    l.class_name()
                ))
            })?;
            layers.push(json!({ "class_name": l.class_name(), "config": config }));
        }
        let mut config = Map::new();
        config.insert("name".into(), json!(self.name()));
        config.insert("input_shape".into(), json!(input_shape));
        if self.net.functional {
            config.insert("input_name".into(), json!(self.net.input_name));
        }
        config.insert("layers".into(), Value::Array(layers));
        let class = if self.net.functional {
            "Functional"
        } else {
            "Sequential"
        };
        Ok(json!({ "class_name": class, "config": config }))
    }

    /// The compile settings, if compiled: loss, optimizer, metric names.
    fn compile_config(&self) -> Result<Option<(Value, Arc<dyn Optimizer>)>> {
        if self.optimizer().is_none() {
            return Ok(None);
        }
        let (loss, opt, metrics) = self.compiled_parts()?;
        let cannot = |what: String| {
            Error::Invalid(format!(
                "model `{}`: {what} has no config, so the model cannot be saved whole; save its weights with save_weights (and the optimizer with Checkpoint) instead",
                self.name()
            ))
        };
        let loss_config = loss
            .get_config()
            .ok_or_else(|| cannot(format!("the loss `{}`", loss.name())))?;
        let opt_config = opt
            .get_config()
            .ok_or_else(|| cannot(format!("the optimizer `{}`", opt.name())))?;
        let names: Vec<&str> = metrics.iter().map(|m| m.name()).collect();
        Ok(Some((
            json!({
                "loss": { "name": loss.name(), "config": loss_config },
                "optimizer": opt_config,
                "metrics": names,
            }),
            opt,
        )))
    }

    /// Saves the whole model to the directory `path` (`model.save`): architecture,
    /// weights and, when compiled, the loss, optimizer state and metrics: a directory of
    /// `config.json`, `model.weights.safetensors` and `optimizer.safetensors`, written to
    /// a temporary directory first and then put in place.
    ///
    /// Returns `Err` if the model is not built, a layer, the loss or the optimizer has
    /// no config, `path` exists and is not a saved model, or on I/O failure.
    ///
    /// ```
    /// use tapeflow::nn::{load_model, Adam, Dense, MeanSquaredError, Sequential};
    /// use tapeflow::Tensor;
    /// let model = Sequential::new().add(Dense::new(2)).input_shape(&[3]);
    /// model.compile(MeanSquaredError, Adam::default(), &[]).unwrap();
    /// let dir = std::env::temp_dir().join(format!("tapeflow-doc-save-{}", std::process::id()));
    /// model.save(&dir).unwrap();
    /// let loaded = load_model(&dir).unwrap();
    /// let x = Tensor::ones(&[4, 3]);
    /// assert_eq!(
    ///     loaded.predict(&x, 4).unwrap().to_vec_f32().unwrap(),
    ///     model.predict(&x, 4).unwrap().to_vec_f32().unwrap()
    /// );
    /// std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let architecture = self.architecture()?;
        let compile = self.compile_config()?;
        check_replaceable(path)?;

        let name = path
            .file_name()
            .ok_or_else(|| err(path, "not a directory path"))?
            .to_string_lossy()
            .into_owned();
        let sibling = |kind: &str| {
            path.with_file_name(format!(
                ".{name}.{kind}-{}-{}",
                std::process::id(),
                SAVE_COUNTER.fetch_add(1, Ordering::Relaxed)
            ))
        };
        let tmp = sibling("tmp");
        std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let written = (|| -> Result<()> {
            let mut files = Map::new();
            save_variables(tmp.join(WEIGHTS_FILE), &self.variables())?;
            files.insert(
                WEIGHTS_FILE.into(),
                json!(hash_file(&tmp.join(WEIGHTS_FILE))?),
            );
            let compile = match compile {
                Some((config, opt)) => {
                    opt.build(&self.trainable_variables());
                    save_variables(tmp.join(OPTIMIZER_FILE), &opt.variables())?;
                    files.insert(
                        OPTIMIZER_FILE.into(),
                        json!(hash_file(&tmp.join(OPTIMIZER_FILE))?),
                    );
                    config
                }
                None => Value::Null,
            };
            let config = json!({
                "format": FORMAT,
                "version": VERSION,
                "model": architecture,
                "compile": compile,
                "files": files,
            });
            write_synced(&tmp.join(CONFIG_FILE), pretty(&config).as_bytes())
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        swap_into_place(&tmp, path, &sibling("old"))
    }
}

fn pretty(v: &Value) -> String {
    // serializing a `Value` cannot fail (its keys are strings)
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

fn hash_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(sha256_hex(&bytes))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

/// `Ok` if `path` does not exist or is a directory holding a saved model.
fn check_replaceable(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let is_model = path.is_dir()
        && std::fs::read_to_string(path.join(CONFIG_FILE))
            .ok()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .is_some_and(|v| v["format"] == FORMAT);
    if is_model {
        Ok(())
    } else {
        Err(err(
            path,
            "exists and is not a saved tapeflow model; refusing to replace it (choose another path or remove it)",
        ))
    }
}

/// Moves the finished directory `tmp` to `path`, replacing a previous save there.
fn swap_into_place(tmp: &Path, path: &Path, old: &Path) -> Result<()> {
    let had_old = path.exists();
    if had_old {
        if let Err(e) = std::fs::rename(path, old) {
            let _ = std::fs::remove_dir_all(tmp);
            return Err(Error::io(path, e));
        }
    }
    if let Err(e) = std::fs::rename(tmp, path) {
        if had_old {
            let _ = std::fs::rename(old, path);
        }
        let _ = std::fs::remove_dir_all(tmp);
        return Err(Error::io(path, e));
    }
    if had_old {
        let _ = std::fs::remove_dir_all(old);
    }
    // make the renames durable (best effort: not every platform can open a directory)
    let parent: PathBuf = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if let Ok(d) = std::fs::File::open(parent) {
        let _ = d.sync_all();
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// loading

/// Reads typed fields of one JSON object, with errors naming the field.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    what: String,
}

impl<'a> Fields<'a> {
    fn of(v: &'a Value, what: impl Into<String>) -> Result<Fields<'a>> {
        let what = what.into();
        match v.as_object() {
            Some(obj) => Ok(Fields { obj, what }),
            None => Err(Error::Data(format!(
                "{what}: expected a JSON object, got {v}"
            ))),
        }
    }

    fn bad(&self, key: &str, want: &str) -> Error {
        match self.obj.get(key) {
            Some(v) => Error::Data(format!("{}: `{key}` must be {want}, got {v}", self.what)),
            None => Error::Data(format!(
                "{}: `{key}` is missing ({want} expected)",
                self.what
            )),
        }
    }

    fn value(&self, key: &str) -> Result<&'a Value> {
        self.obj.get(key).ok_or_else(|| self.bad(key, "present"))
    }

    fn str(&self, key: &str) -> Result<&'a str> {
        self.obj
            .get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| self.bad(key, "a string"))
    }

    fn f64(&self, key: &str) -> Result<f64> {
        self.obj
            .get(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| self.bad(key, "a number"))
    }

    fn u64(&self, key: &str) -> Result<u64> {
        self.obj
            .get(key)
            .and_then(Value::as_u64)
            .ok_or_else(|| self.bad(key, "a non-negative integer"))
    }

    fn usize(&self, key: &str) -> Result<usize> {
        usize::try_from(self.u64(key)?).map_err(|_| self.bad(key, "an integer that fits usize"))
    }

    fn bool(&self, key: &str) -> Result<bool> {
        self.obj
            .get(key)
            .and_then(Value::as_bool)
            .ok_or_else(|| self.bad(key, "true or false"))
    }

    fn shape(&self, key: &str) -> Result<Vec<usize>> {
        let want = "an array of non-negative integers";
        let arr = self
            .obj
            .get(key)
            .and_then(Value::as_array)
            .ok_or_else(|| self.bad(key, want))?;
        arr.iter()
            .map(|d| {
                d.as_u64()
                    .and_then(|d| usize::try_from(d).ok())
                    .ok_or_else(|| self.bad(key, want))
            })
            .collect()
    }

    fn pair(&self, key: &str) -> Result<(usize, usize)> {
        match self.shape(key)?[..] {
            [a, b] => Ok((a, b)),
            _ => Err(self.bad(key, "an array of two integers")),
        }
    }

    fn activation(&self) -> Result<Activation> {
        self.activation_of("activation")
    }

    fn activation_of(&self, key: &str) -> Result<Activation> {
        Activation::from_name(self.str(key)?)
            .ok_or_else(|| self.bad(key, "one of linear, relu, sigmoid, tanh, softmax"))
    }

    fn dtype(&self) -> Result<DType> {
        DType::from_name(self.str("dtype")?)
            .filter(|d| d.is_float())
            .ok_or_else(|| self.bad("dtype", "f32 or f64"))
    }

    fn padding(&self) -> Result<Padding> {
        match self.str("padding")? {
            "valid" => Ok(Padding::Valid),
            "same" => Ok(Padding::Same),
            _ => Err(self.bad("padding", "valid or same")),
        }
    }
}

/// The settings every recurrent layer shares, read from its config.
fn recurrent_from_config<C: Cell>(l: Recurrent<C>, c: &Fields) -> Result<Recurrent<C>> {
    let ract = c.activation_of("recurrent_activation")?;
    Ok(l.activation(c.activation()?)
        .recurrent_activation(ract)
        .use_bias(c.bool("use_bias")?)
        .return_sequences(c.bool("return_sequences")?)
        .return_state(c.bool("return_state")?)
        .go_backwards(c.bool("go_backwards")?)
        .dtype(c.dtype()?))
}

/// A layer from its class and config.
fn layer_from_config(class: &str, c: &Fields) -> Result<Arc<dyn Layer>> {
    let name = c.str("name")?.to_string();
    Ok(match class {
        "Dense" => Arc::new(
            Dense::new(c.usize("units")?)
                .activation(c.activation()?)
                .use_bias(c.bool("use_bias")?)
                .dtype(c.dtype()?)
                .named(name),
        ),
        "Conv2D" => Arc::new(
            Conv2D::new(c.usize("filters")?, 1)
                .kernel_size(c.pair("kernel_size")?)
                .strides(c.pair("strides")?)
                .padding(c.padding()?)
                .activation(c.activation()?)
                .use_bias(c.bool("use_bias")?)
                .dtype(c.dtype()?)
                .named(name),
        ),
        "MaxPooling2D" => Arc::new(
            MaxPooling2D::new(c.pair("pool_size")?)
                .strides(c.pair("strides")?)
                .padding(c.padding()?)
                .named(name),
        ),
        "Flatten" => Arc::new(Flatten::new().named(name)),
        "SimpleRNN" => Arc::new(recurrent_from_config(SimpleRNN::new(c.usize("units")?), c)?.named(name)),
        "LSTM" => Arc::new(
            recurrent_from_config(LSTM::new(c.usize("units")?), c)?
                .unit_forget_bias(c.bool("unit_forget_bias")?)
                .named(name),
        ),
        "GRU" => Arc::new(
            recurrent_from_config(GRU::new(c.usize("units")?), c)?
                .reset_after(c.bool("reset_after")?)
                .named(name),
        ),
        "Embedding" => Arc::new(
            Embedding::new(c.usize("input_dim")?, c.usize("output_dim")?)
                .dtype(c.dtype()?)
                .named(name),
        ),
        "Dropout" => Arc::new(
            Dropout::new(c.f64("rate")?)
                .seed(c.u64("seed")?)
                .named(name),
        ),
        other => {
            return Err(Error::Data(format!(
                "{}: unknown layer class `{other}` (known: Dense, Conv2D, MaxPooling2D, Flatten, Dropout, SimpleRNN, LSTM, GRU, Embedding)",
                c.what
            )))
        }
    })
}

/// The model of an architecture object (`{"class_name", "config"}`), built, with fresh
/// weights.
fn model_from_value(v: &Value) -> Result<Model> {
    let top = Fields::of(v, "model")?;
    let class = top.str("class_name")?;
    let c = Fields::of(top.value("config")?, "model config")?;
    let name = c.str("name")?;
    let input_shape = c.shape("input_shape")?;
    let layer_values = c
        .value("layers")?
        .as_array()
        .ok_or_else(|| c.bad("layers", "an array"))?;
    let mut layers = Vec::new();
    for (i, l) in layer_values.iter().enumerate() {
        let lf = Fields::of(l, format!("layer {i}"))?;
        let lclass = lf.str("class_name")?;
        let lc = Fields::of(lf.value("config")?, format!("layer {i} ({lclass}) config"))?;
        layers.push(layer_from_config(lclass, &lc)?);
    }
    let model: Model = match class {
        "Sequential" => {
            let mut s = Sequential::named(name);
            for l in layers {
                s = s.add_shared(l);
            }
            s.into()
        }
        "Functional" => {
            let inputs = input_named(&input_shape, c.str("input_name")?);
            let mut x = inputs.clone();
            for l in layers {
                x = x.apply_shared(l)?;
            }
            Model::new_named(&inputs, &x, name)?
        }
        other => {
            return Err(Error::Data(format!(
                "model: unknown class `{other}` (known: Sequential, Functional)"
            )))
        }
    };
    model.build(&input_shape)?;
    Ok(model)
}

/// A model from [`Model::to_json`]'s text, built, with freshly initialized weights
/// (Keras' `model_from_json`). An `Err` names the first bad field.
pub fn model_from_json(json: &str) -> Result<Model> {
    let v: Value = serde_json::from_str(json)
        .map_err(|e| Error::Data(format!("model_from_json: not valid JSON: {e}")))?;
    model_from_value(&v)
}

fn learning_rate(v: &Value) -> Result<LearningRate> {
    if let Some(lr) = v.as_f64() {
        return Ok(LearningRate::Constant(lr));
    }
    let s = Fields::of(v, "optimizer learning_rate")?;
    let c = Fields::of(s.value("config")?, "learning-rate schedule config")?;
    Ok(match s.str("class_name")? {
        "ExponentialDecay" => ExponentialDecay::new(
            c.f64("initial_learning_rate")?,
            c.u64("decay_steps")?,
            c.f64("decay_rate")?,
        )
        .staircase(c.bool("staircase")?)
        .into(),
        "CosineDecay" => CosineDecay::new(c.f64("initial_learning_rate")?, c.u64("decay_steps")?)
            .alpha(c.f64("alpha")?)
            .into(),
        other => {
            return Err(Error::Data(format!(
                "optimizer learning_rate: unknown schedule class `{other}` (known: ExponentialDecay, CosineDecay)"
            )))
        }
    })
}

/// Compiles `model` with the saved loss, a fresh optimizer of the saved class,
/// hyperparameters, name and learning rate, and the saved metric names.
fn compile_from_config(model: &Model, compile: &Value) -> Result<()> {
    let cf = Fields::of(compile, "compile")?;
    let metric_values = cf
        .value("metrics")?
        .as_array()
        .ok_or_else(|| cf.bad("metrics", "an array of names"))?;
    let metrics: Vec<&str> = metric_values
        .iter()
        .map(|m| {
            m.as_str()
                .ok_or_else(|| cf.bad("metrics", "an array of names"))
        })
        .collect::<Result<_>>()?;
    let loss = Fields::of(cf.value("loss")?, "compile loss")?;
    let of = Fields::of(cf.value("optimizer")?, "compile optimizer")?;
    let o = Fields::of(of.value("config")?, "optimizer config")?;
    let lr = learning_rate(o.value("learning_rate")?)?;
    let name = o.str("name")?;
    match of.str("class_name")? {
        "SGD" => compile_with(
            model,
            &loss,
            SGD::new(lr)
                .named(name)
                .momentum(o.f64("momentum")?)
                .nesterov(o.bool("nesterov")?),
            &metrics,
        ),
        "Adam" => compile_with(
            model,
            &loss,
            Adam::new(lr)
                .named(name)
                .beta_1(o.f64("beta_1")?)
                .beta_2(o.f64("beta_2")?)
                .epsilon(o.f64("epsilon")?),
            &metrics,
        ),
        "AdamW" => compile_with(
            model,
            &loss,
            AdamW::new(lr)
                .named(name)
                .weight_decay(o.f64("weight_decay")?)
                .beta_1(o.f64("beta_1")?)
                .beta_2(o.f64("beta_2")?)
                .epsilon(o.f64("epsilon")?),
            &metrics,
        ),
        "RMSprop" => compile_with(
            model,
            &loss,
            RMSprop::new(lr)
                .named(name)
                .rho(o.f64("rho")?)
                .momentum(o.f64("momentum")?)
                .epsilon(o.f64("epsilon")?)
                .centered(o.bool("centered")?),
            &metrics,
        ),
        other => Err(Error::Data(format!(
            "compile optimizer: unknown class `{other}` (known: SGD, Adam, AdamW, RMSprop)"
        ))),
    }
}

fn compile_with(
    model: &Model,
    loss: &Fields,
    opt: impl Optimizer + 'static,
    metrics: &[&str],
) -> Result<()> {
    let c = Fields::of(loss.value("config")?, "loss config")?;
    match loss.str("name")? {
        "mean_squared_error" => model.compile(MeanSquaredError, opt, metrics),
        "sparse_categorical_crossentropy" => model.compile(
            SparseCategoricalCrossentropy::from_logits(c.bool("from_logits")?),
            opt,
            metrics,
        ),
        "categorical_crossentropy" => model.compile(
            CategoricalCrossentropy::from_logits(c.bool("from_logits")?)
                .label_smoothing(c.f64("label_smoothing")?),
            opt,
            metrics,
        ),
        "binary_crossentropy" => model.compile(
            BinaryCrossentropy::from_logits(c.bool("from_logits")?),
            opt,
            metrics,
        ),
        other => Err(Error::Data(format!(
            "compile loss: unknown loss `{other}` (known: mean_squared_error, sparse_categorical_crossentropy, categorical_crossentropy, binary_crossentropy)"
        ))),
    }
}

/// Loads a model saved by [`Model::save`] (`keras.models.load_model`): rebuilds the
/// architecture from `config.json`, restores the weights and, if it was compiled,
/// compiles it again with the optimizer state restored, ready to `predict`, `evaluate`
/// or continue `fit` where the saved run stopped.
///
/// Returns `Err` (naming the file and field) for a missing or corrupt file, an unknown
/// format version, layer, loss or optimizer, weights files that do not match the
/// config's checksums, or variables whose dtype or shape do not match the architecture.
pub fn load_model(path: impl AsRef<Path>) -> Result<Model> {
    let path = path.as_ref();
    let config_path = path.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let config: Value = serde_json::from_str(&text)
        .map_err(|e| err(&config_path, format!("not valid JSON: {e}")))?;
    let top = Fields::of(&config, config_path.display().to_string())?;
    let format = top.str("format")?;
    if format != FORMAT {
        return Err(err(
            &config_path,
            format!("`format` is `{format}`, expected `{FORMAT}`"),
        ));
    }
    let version = top.u64("version")?;
    if version != VERSION {
        return Err(err(
            &config_path,
            format!(
                "format version {version} is not supported (this tapeflow reads version {VERSION})"
            ),
        ));
    }
    let files = Fields::of(top.value("files")?, "config.json files")?;
    let compile = top.value("compile")?;
    let mut wanted = vec![WEIGHTS_FILE];
    if !compile.is_null() {
        wanted.push(OPTIMIZER_FILE);
    }
    for f in &wanted {
        let expected = files.str(f)?;
        let actual = hash_file(&path.join(f))?;
        if actual != expected {
            return Err(err(
                &path.join(f),
                format!("SHA-256 {actual} does not match {expected} recorded in config.json: the file is corrupt or belongs to another save"),
            ));
        }
    }
    let model = model_from_value(top.value("model")?)?;
    load_variables(path.join(WEIGHTS_FILE), &model.variables())?;
    if !compile.is_null() {
        compile_from_config(&model, compile)?;
        let opt = model
            .optimizer()
            .ok_or_else(|| Error::Invalid("load_model: compile left no optimizer".into()))?;
        opt.build(&model.trainable_variables());
        load_variables(path.join(OPTIMIZER_FILE), &opt.variables())?;
    }
    Ok(model)
}
