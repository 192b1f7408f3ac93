//! Models: [`Sequential`] (a stack of layers) and the functional [`Model`]
//! (`input → layers → output`), both the same [`Model`] type underneath.
//!
//! A model is a cheap handle (`Arc`): clone it into a `function` closure and the compiled
//! step updates the same variables. It owns its layers in call order; its variables are
//! the layers' variables in that order, which is the stable order of
//! `trainable_variables()`, checkpoints and `summary()`.
//!
//! A functional model is built by applying layers to a [`SymbolicTensor`] that starts at
//! [`input`]; each application records the layer and computes the output shape (building
//! the layer, so the model has its variables as soon as it exists). With single-input
//! layers the path from the output back to the input is a chain, and that chain is the
//! model.

use super::layers::Layer;
use super::naming::unique_name;
use super::subclass::{self, LayerRecord, Module, ModuleState};
use crate::{Dim, Error, Result, Tensor, Variable};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

static NEXT_SYMBOL: AtomicU64 = AtomicU64::new(1);

/// A placeholder flowing through layers while a functional model is defined
/// (Keras' `KerasTensor`): it knows its per-sample shape and how it was made.
#[derive(Clone)]
pub struct SymbolicTensor {
    shape: Vec<usize>,
    origin: Arc<Origin>,
}

enum Origin {
    Input {
        id: u64,
        name: String,
    },
    Layer {
        layer: Arc<dyn Layer>,
        parent: SymbolicTensor,
    },
}

/// The input of a functional model: samples of `shape` (without the batch axis).
///
/// ```
/// use tapeflow::nn::{input, Activation, Dense, Layer, Model};
/// let inputs = input(&[784]);
/// let x = Dense::new(64).activation(Activation::Relu).apply(&inputs).unwrap();
/// let outputs = Dense::new(10).apply(&x).unwrap();
/// let model = Model::new(&inputs, &outputs).unwrap();
/// assert_eq!(outputs.shape(), &[10]);
/// assert_eq!(model.count_params(), 784 * 64 + 64 + 64 * 10 + 10);
/// ```
pub fn input(shape: &[usize]) -> SymbolicTensor {
    input_named(shape, &unique_name("input_layer"))
}

/// [`input`] with a name (Keras' `Input(shape, name=...)`).
pub fn input_named(shape: &[usize], name: &str) -> SymbolicTensor {
    let id = NEXT_SYMBOL.fetch_add(1, Ordering::Relaxed);
    SymbolicTensor {
        shape: shape.to_vec(),
        origin: Arc::new(Origin::Input {
            id,
            name: name.to_string(),
        }),
    }
}

impl SymbolicTensor {
    /// The per-sample shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Applies a shared layer (builds it for this shape and records it).
    pub fn apply_shared(&self, layer: Arc<dyn Layer>) -> Result<SymbolicTensor> {
        layer.build(&self.shape)?;
        let shape = layer.compute_output_shape(&self.shape)?;
        Ok(SymbolicTensor {
            shape,
            origin: Arc::new(Origin::Layer {
                layer,
                parent: self.clone(),
            }),
        })
    }
}

/// The layers and input of a model: what a compiled step closure captures (no cycle
/// back to the model's compiled state).
pub(crate) struct Net {
    pub(crate) name: String,
    pub(crate) functional: bool,
    pub(crate) input_name: Option<String>,
    pub(crate) input_shape: Mutex<Option<Vec<usize>>>,
    pub(crate) layers: RwLock<Vec<Arc<dyn Layer>>>,
    /// A subclassed model's struct: then `layers` stays empty and the module computes.
    pub(crate) module: Option<Arc<ModuleState>>,
}

fn type_str(t: &Tensor) -> String {
    let dims: Vec<String> = t
        .shape()
        .iter()
        .map(|&d| Dim::from_raw(d).to_string())
        .collect();
    format!("{}[{}]", t.dtype(), dims.join(","))
}

impl Net {
    pub(crate) fn layers(&self) -> Vec<Arc<dyn Layer>> {
        self.layers.read().expect("model lock").clone()
    }

    /// Builds every layer for the input shape (known or given), in order.
    pub(crate) fn build(&self, input_shape: &[usize]) -> Result<()> {
        if let Some(m) = &self.module {
            // Keras builds a subclassed model by calling it on a placeholder batch
            if !m.is_built() {
                let mut shape = vec![1];
                shape.extend_from_slice(input_shape);
                self.forward(&Tensor::zeros(&shape), false)?;
            }
            return Ok(());
        }
        {
            let mut known = self.input_shape.lock().expect("model lock");
            match known.as_ref() {
                Some(s) if s != input_shape => {
                    return Err(Error::Invalid(format!(
                        "model `{}` expects inputs of per-sample shape {s:?}, got per-sample shape {input_shape:?}",
                        self.name
                    )))
                }
                Some(_) => {}
                None => *known = Some(input_shape.to_vec()),
            }
        }
        let mut shape = input_shape.to_vec();
        for l in self.layers() {
            l.build(&shape)?;
            shape = l.compute_output_shape(&shape)?;
        }
        Ok(())
    }

    /// The forward pass on a batch. Called during a subclassed model's first call, the
    /// model reports itself as one layer (its own layers are not listed there).
    pub(crate) fn forward(&self, x: &Tensor, training: bool) -> Result<Tensor> {
        if !subclass::is_recording() {
            return self.forward_unrecorded(x, training);
        }
        let (y, _) = subclass::scoped(None, || self.forward_unrecorded(x, training));
        let y = y?;
        subclass::record(|| LayerRecord {
            name: self.name.clone(),
            class_name: self.class_name().to_string(),
            variables: self.variables(),
            params: self.count_params(),
            output_shape: y.shape().get(1..).map(|s| s.to_vec()),
        });
        Ok(y)
    }

    /// Keras' class name of the model: `Sequential`, `Functional` or the struct's name.
    fn class_name(&self) -> &str {
        match &self.module {
            Some(m) => &m.class_name,
            None if self.functional => "Functional",
            None => "Sequential",
        }
    }

    fn count_params(&self) -> usize {
        match &self.module {
            Some(m) => m
                .layer_records()
                .unwrap_or_default()
                .iter()
                .map(|l| l.params)
                .sum(),
            None => self.layers().iter().map(|l| l.count_params()).sum(),
        }
    }

    fn forward_unrecorded(&self, x: &Tensor, training: bool) -> Result<Tensor> {
        if x.rank() == 0 {
            return Err(Error::Invalid(format!(
                "model `{}` expects a batch (batch axis first), got a scalar",
                self.name
            )));
        }
        let known = self.input_shape.lock().expect("model lock").clone();
        match known {
            // a subclassed model's layers check their own inputs
            Some(s) if self.module.is_none() && s != x.shape()[1..] => {
                return Err(Error::Invalid(format!(
                    "model `{}` expects batches of shape [n, {}] (per-sample shape {s:?}), got {}",
                    self.name,
                    s.iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    type_str(x)
                )))
            }
            Some(_) => {}
            None if self.module.is_some() => {}
            None => self.build(&x.shape()[1..])?,
        }
        if let Some(m) = &self.module {
            let y = m.call(x, training)?;
            let mut known = self.input_shape.lock().expect("model lock");
            if known.is_none() {
                *known = Some(x.shape()[1..].to_vec());
            }
            return Ok(y);
        }
        let mut h = x.clone();
        for l in self.layers() {
            h = l.call(&h, training)?;
        }
        Ok(h)
    }

    pub(crate) fn variables(&self) -> Vec<Variable> {
        if let Some(m) = &self.module {
            return m.variables();
        }
        self.layers().iter().flat_map(|l| l.variables()).collect()
    }

    pub(crate) fn trainable_variables(&self) -> Vec<Variable> {
        if let Some(m) = &self.module {
            return m
                .variables()
                .into_iter()
                .filter(|v| v.trainable())
                .collect();
        }
        self.layers()
            .iter()
            .flat_map(|l| l.trainable_variables())
            .collect()
    }

    /// Builds from the known input shape if not built yet (errors surface on `call`).
    fn ensure_built(&self) {
        let known = self.input_shape.lock().expect("model lock").clone();
        if let Some(s) = known {
            let _ = self.build(&s);
        }
    }
}

/// A trainable model: layers applied in order (`keras.Model`).
///
/// Create one with [`Sequential`] or, for the functional style, with [`Model::new`] from
/// an [`input`] and an output. Training: [`Model::compile`] then [`Model::fit`], or your
/// own loop with `call` + `GradientTape` + an optimizer.
#[derive(Clone)]
pub struct Model {
    pub(crate) net: Arc<Net>,
    pub(crate) compiled: Arc<Mutex<Option<super::fit::Compiled>>>,
}

impl Model {
    /// A functional model from `inputs` to `outputs` (which must be computed from `inputs`).
    pub fn new(inputs: &SymbolicTensor, outputs: &SymbolicTensor) -> Result<Model> {
        Model::new_named(inputs, outputs, &unique_name("model"))
    }

    /// [`Model::new`] with a name.
    pub fn new_named(
        inputs: &SymbolicTensor,
        outputs: &SymbolicTensor,
        name: &str,
    ) -> Result<Model> {
        let (input_id, input_name) = match &*inputs.origin {
            Origin::Input { id, name } => (*id, name.clone()),
            Origin::Layer { .. } => {
                return Err(Error::Invalid(format!(
                    "Model `{name}`: `inputs` must come from nn::input(), not from a layer"
                )))
            }
        };
        let mut layers = Vec::new();
        let mut at = outputs.clone();
        loop {
            match &*at.origin {
                Origin::Layer { layer, parent } => {
                    layers.push(layer.clone());
                    at = parent.clone();
                }
                Origin::Input { id, name: other } => {
                    if *id != input_id {
                        return Err(Error::Invalid(format!(
                            "Model `{name}`: the outputs are computed from input `{other}`, not from `{input_name}`"
                        )));
                    }
                    break;
                }
            }
        }
        layers.reverse();
        Ok(Model::from_net(Net {
            name: name.to_string(),
            functional: true,
            input_name: Some(input_name),
            input_shape: Mutex::new(Some(inputs.shape.clone())),
            layers: RwLock::new(layers),
            module: None,
        }))
    }

    fn from_net(net: Net) -> Model {
        Model {
            net: Arc::new(net),
            compiled: Arc::new(Mutex::new(None)),
        }
    }

    /// The name (`sequential`, `model_1`, ...).
    pub fn name(&self) -> &str {
        &self.net.name
    }

    /// The layers in call order.
    pub fn layers(&self) -> Vec<Arc<dyn Layer>> {
        self.net.layers()
    }

    /// The per-sample input shape, once known.
    pub fn input_shape(&self) -> Option<Vec<usize>> {
        self.net.input_shape.lock().expect("model lock").clone()
    }

    /// Builds every layer for per-sample inputs of `input_shape` (otherwise the first
    /// call does). An `Err` if a layer cannot take the shape.
    pub fn build(&self, input_shape: &[usize]) -> Result<()> {
        self.net.build(input_shape)
    }

    /// Runs the model on a batch (`model(x, training=...)`), eagerly or inside a trace.
    ///
    /// Returns `Err` (naming the model or layer and the shapes) for inputs it cannot take.
    pub fn call(&self, x: &Tensor, training: bool) -> Result<Tensor> {
        self.net.forward(x, training)
    }

    /// All variables (trainable or not) in layer order.
    pub fn variables(&self) -> Vec<Variable> {
        self.net.ensure_built();
        self.net.variables()
    }

    /// The trainable variables in a stable order: layer by layer, kernel before bias
    /// (`model.trainable_variables`). Empty until the model is built.
    pub fn trainable_variables(&self) -> Vec<Variable> {
        self.net.ensure_built();
        self.net.trainable_variables()
    }

    /// The current values of all variables (`get_weights`).
    pub fn get_weights(&self) -> Vec<Tensor> {
        self.variables().iter().map(|v| v.value()).collect()
    }

    /// Replaces all variable values (`set_weights`), checking count, dtypes and shapes.
    pub fn set_weights(&self, weights: &[Tensor]) -> Result<()> {
        let vars = self.variables();
        if vars.len() != weights.len() {
            return Err(Error::Invalid(format!(
                "model `{}` has {} variables, got {} values",
                self.name(),
                vars.len(),
                weights.len()
            )));
        }
        for (v, w) in vars.iter().zip(weights) {
            if v.shape() != w.shape() || v.dtype() != w.dtype() {
                return Err(Error::Invalid(format!(
                    "variable `{}` is {}{:?}, got a value {}",
                    v.name(),
                    v.dtype(),
                    v.shape(),
                    type_str(w)
                )));
            }
        }
        for (v, w) in vars.iter().zip(weights) {
            v.assign(w);
        }
        Ok(())
    }

    /// Number of scalars in all layers' parameters.
    pub fn count_params(&self) -> usize {
        self.net.ensure_built();
        self.net.count_params()
    }

    /// The Keras-style summary table (layers, output shapes, parameter counts).
    ///
    /// Returns `Err` if the input shape is unknown (give one, call the model, or build it).
    pub fn summary_string(&self) -> Result<String> {
        let input_shape = self.input_shape().ok_or_else(|| {
            Error::Invalid(format!(
                "model `{}` is not built yet: give an input shape, call it once, or call build() before summary()",
                self.name()
            ))
        })?;
        self.net.build(&input_shape)?;
        let shape_str = |s: &[usize]| {
            let dims: Vec<String> = std::iter::once("None".to_string())
                .chain(s.iter().map(|&d| Dim::from_raw(d).to_string()))
                .collect();
            if s.is_empty() {
                "(None,)".to_string()
            } else {
                format!("({})", dims.join(", "))
            }
        };
        let width = 65;
        let cols: [usize; 3] = [29, 55, 65];
        let row = |fields: [&str; 3]| {
            let mut line = String::from(" ");
            for (i, f) in fields.iter().enumerate() {
                let end = cols[i];
                let room = end
                    .saturating_sub(line.chars().count())
                    .saturating_sub(if i < 2 { 2 } else { 0 });
                let text: String = f.chars().take(room.max(1)).collect();
                line.push_str(&text);
                while line.chars().count() < end {
                    line.push(' ');
                }
            }
            line
        };
        let mut out = String::new();
        let _ = writeln!(out, "Model: \"{}\"", self.name());
        let _ = writeln!(out, "{}", "_".repeat(width));
        let _ = writeln!(out, "{}", row(["Layer (type)", "Output Shape", "Param #"]));
        let _ = writeln!(out, "{}", "=".repeat(width));
        let mut rows: Vec<[String; 3]> = Vec::new();
        // each row's variables, and whether its non-trainable ones count as parameters
        let mut owners: Vec<(Vec<Variable>, bool)> = Vec::new();
        if let Some(m) = &self.net.module {
            // what the first call used; "multiple" for a layer called with several shapes
            for l in m.layer_records().unwrap_or_default() {
                rows.push([
                    format!("{} ({})", l.name, l.class_name),
                    l.output_shape
                        .as_deref()
                        .map_or_else(|| "multiple".to_string(), shape_str),
                    l.params.to_string(),
                ]);
                owners.push((l.variables, l.params > 0));
            }
        }
        if let (true, Some(name)) = (self.net.functional, &self.net.input_name) {
            rows.push([
                format!("{name} (InputLayer)"),
                shape_str(&input_shape),
                "0".into(),
            ]);
        }
        let mut shape = input_shape.clone();
        for l in self.layers() {
            shape = l.compute_output_shape(&shape)?;
            rows.push([
                format!("{} ({})", l.name(), l.class_name()),
                shape_str(&shape),
                l.count_params().to_string(),
            ]);
            owners.push((l.variables(), l.count_params() > 0));
        }
        let blank = " ".repeat(width);
        for (i, r) in rows.iter().enumerate() {
            let _ = writeln!(out, "{}", row([&r[0], &r[1], &r[2]]));
            if i + 1 < rows.len() {
                let _ = writeln!(out, "{blank}");
            }
        }
        let (mut trainable, mut frozen, mut bytes_t, mut bytes_f) =
            (0usize, 0usize, 0usize, 0usize);
        for (vars, counted) in owners {
            for v in vars {
                let n: usize = v.shape().iter().product();
                let b = n * v.dtype().size();
                if v.trainable() {
                    trainable += n;
                    bytes_t += b;
                } else if counted {
                    frozen += n;
                    bytes_f += b;
                }
            }
        }
        let _ = writeln!(out, "{}", "=".repeat(width));
        let _ = writeln!(
            out,
            "Total params: {} ({})",
            trainable + frozen,
            readable_bytes(bytes_t + bytes_f)
        );
        let _ = writeln!(
            out,
            "Trainable params: {} ({})",
            trainable,
            readable_bytes(bytes_t)
        );
        let _ = writeln!(
            out,
            "Non-trainable params: {} ({})",
            frozen,
            readable_bytes(bytes_f)
        );
        let _ = writeln!(out, "{}", "_".repeat(width));
        Ok(out)
    }

    /// Prints [`Model::summary_string`] to stdout.
    pub fn summary(&self) -> Result<()> {
        print!("{}", self.summary_string()?);
        Ok(())
    }
}

/// `1234 → "1.21 KB"`, as Keras prints memory sizes.
fn readable_bytes(bytes: usize) -> String {
    let units = ["Byte", "KB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.2} {}", units[u])
}

/// A linear stack of layers (`keras.Sequential`); dereferences to [`Model`].
///
/// ```
/// use tapeflow::nn::{Activation, Dense, Sequential};
/// let model = Sequential::new()
///     .add(Dense::new(64).activation(Activation::Relu))
///     .add(Dense::new(10))
///     .input_shape(&[784]);
/// assert!(model.summary_string().unwrap().contains("Total params: 50890"));
/// ```
pub struct Sequential {
    model: Model,
}

impl Sequential {
    /// An empty stack named `sequential`, `sequential_1`, ...
    pub fn new() -> Sequential {
        Sequential::named(&unique_name("sequential"))
    }

    /// An empty stack with a name.
    pub fn named(name: &str) -> Sequential {
        Sequential {
            model: Model::from_net(Net {
                name: name.to_string(),
                functional: false,
                input_name: None,
                input_shape: Mutex::new(None),
                layers: RwLock::new(Vec::new()),
                module: None,
            }),
        }
    }

    /// Appends a layer.
    #[allow(clippy::should_implement_trait)]
    pub fn add(self, layer: impl Layer + 'static) -> Sequential {
        self.add_shared(Arc::new(layer))
    }

    /// Appends a layer shared with other models.
    pub fn add_shared(self, layer: Arc<dyn Layer>) -> Sequential {
        // the name is assigned now, in model order
        let _ = layer.name();
        self.model
            .net
            .layers
            .write()
            .expect("model lock")
            .push(layer);
        self
    }

    /// Declares the per-sample input shape (Keras' `Input(shape)` as first layer); the
    /// layers are built now if they can be (otherwise the error shows on the first call).
    pub fn input_shape(self, shape: &[usize]) -> Sequential {
        *self.model.net.input_shape.lock().expect("model lock") = Some(shape.to_vec());
        self.model.net.ensure_built();
        self
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }
}

impl Default for Sequential {
    fn default() -> Self {
        Sequential::new()
    }
}

impl std::ops::Deref for Sequential {
    type Target = Model;
    fn deref(&self) -> &Model {
        &self.model
    }
}

impl From<Sequential> for Model {
    fn from(s: Sequential) -> Model {
        s.model
    }
}

/// Subclassed models (see [`Module`]).
impl Model {
    /// A subclassed model (Keras' `class MyModel(Model)`): `module.call` is the forward
    /// pass. Named after the struct the Keras way (`MyModel` → `my_model`, `my_model_1`, ...).
    ///
    /// The model is built by its first call (or [`Model::build`], which calls it on a
    /// batch of one zero f32 sample): that call finds the layers and variables (see
    /// `nn::subclass`); before it `trainable_variables()` is empty and `summary()`,
    /// `save_weights` are errors. Then `compile`/`fit`/`evaluate`/`predict`, `summary()`
    /// (the layers the first call used, with their per-sample output shapes),
    /// checkpoints and `function` work as for any model. [`Model::layers`] stays empty:
    /// the layers are the struct's fields.
    pub fn from_module<M: Module>(module: M) -> Model {
        let class = ModuleState::new(module);
        let name = unique_name(&subclass::snake_case(&class.class_name));
        Model::with_module(name, class)
    }

    /// [`Model::from_module`] with a name.
    pub fn from_module_named<M: Module>(name: &str, module: M) -> Model {
        Model::with_module(name.to_string(), ModuleState::new(module))
    }

    fn with_module(name: String, module: ModuleState) -> Model {
        Model::from_net(Net {
            name,
            functional: false,
            input_name: None,
            input_shape: Mutex::new(None),
            layers: RwLock::new(Vec::new()),
            module: Some(Arc::new(module)),
        })
    }

    /// The struct of a subclassed model, if this model is one and it is an `M` (to reach
    /// its fields: `model.module::<MyModel>().unwrap().d1.kernel()`).
    pub fn module<M: Module>(&self) -> Option<&M> {
        self.net.module.as_ref()?.downcast::<M>()
    }
}
