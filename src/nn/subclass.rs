//! Subclassed models (`class MyModel(keras.Model)` with layers made in `__init__` and a
//! `call(self, x)`): a user struct with one method, [`Module::call`], turned into a
//! [`Model`](super::Model) by [`Model::from_module`](super::Model::from_module).
//!
//! Keras finds a subclassed model's layers and variables by tracking its attributes;
//! Rust has no reflection, so tapeflow watches the model's first successful call
//! instead (which is also when the layers build their variables):
//! - every built-in layer called during it reports itself (name, class, variables,
//!   output shape), and so does every `Model` called inside it (a `Sequential` block is
//!   one row, as in Keras' summary);
//! - a [`GradientTape`] around the call catches every trainable variable read, so the
//!   variables of your own `Layer` implementations and raw `Variable` fields are found
//!   too (their non-trainable variables are not: read them through a built-in layer or
//!   a `Model`, or keep them out of checkpoints knowingly).
//!
//! The model's variables are those, in first-use order: the stable order of
//! `trainable_variables()`, checkpoints and `summary()`. Layers the first call does not
//! reach (a branch not taken) are not part of the model. The record is per thread: the
//! first call must not hand its layer calls to other threads.

use super::layers::Layer;
use crate::{GradientTape, Result, Tensor, Variable};
use std::any::Any;
use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// The forward pass of a subclassed model (Keras' `Model.call`).
///
/// Hold the layers in the struct, create them in its constructor (unbuilt: they build
/// on the first call), and compose them in `call` with ordinary tensor code. Wrap it
/// with [`Model::from_module`](super::Model::from_module) to get `compile`/`fit`,
/// `summary`, checkpoints and `trainable_variables`.
///
/// ```
/// use tapeflow::nn::{Activation, Dense, Layer, Model, Module};
/// use tapeflow::{Result, Tensor};
///
/// struct MyModel {
///     d1: Dense,
///     d2: Dense,
/// }
///
/// impl Module for MyModel {
///     fn call(&self, x: &Tensor, training: bool) -> Result<Tensor> {
///         let x = self.d1.call(x, training)?;
///         self.d2.call(&x, training)
///     }
/// }
///
/// let model = Model::from_module(MyModel {
///     d1: Dense::new(8).activation(Activation::Relu),
///     d2: Dense::new(2),
/// });
/// assert!(model.trainable_variables().is_empty()); // built on the first call
/// let y = model.call(&Tensor::ones(&[4, 3]), false).unwrap();
/// assert_eq!(y.shape(), &[4, 2]);
/// assert_eq!(model.trainable_variables().len(), 4);
/// assert!(model.name().starts_with("my_model"));
/// assert!(model.summary_string().unwrap().contains("Total params: 50"));
/// ```
pub trait Module: Send + Sync + 'static {
    /// The forward computation on a batch (`training` switches dropout and the like);
    /// runs eagerly and inside a traced function alike.
    fn call(&self, x: &Tensor, training: bool) -> Result<Tensor>;
}

/// One layer (or nested model) as a subclassed model's first call saw it.
#[derive(Clone)]
pub(crate) struct LayerRecord {
    pub(crate) name: String,
    pub(crate) class_name: String,
    pub(crate) variables: Vec<Variable>,
    /// The layer's parameter count (`Layer::count_params`).
    pub(crate) params: usize,
    /// The per-sample output shape; `None` when the layer was called with several.
    pub(crate) output_shape: Option<Vec<usize>>,
}

impl LayerRecord {
    pub(crate) fn of_layer(layer: &dyn Layer, y: &Tensor) -> LayerRecord {
        LayerRecord {
            name: layer.name().to_string(),
            class_name: layer.class_name().to_string(),
            variables: layer.variables(),
            params: layer.count_params(),
            output_shape: y.shape().get(1..).map(|s| s.to_vec()),
        }
    }
}

thread_local! {
    /// The open records, innermost last; `None` is a muted scope (inside a nested model).
    static SCOPES: RefCell<Vec<Option<Vec<LayerRecord>>>> = const { RefCell::new(Vec::new()) };
}

/// Whether a first call is being recorded here (and not muted).
pub(crate) fn is_recording() -> bool {
    SCOPES.with(|s| matches!(s.borrow().last(), Some(Some(_))))
}

/// Adds a layer call to the innermost open record, if any: a layer called twice keeps
/// one row, its output shape `None` if the two shapes differ.
pub(crate) fn record(make: impl FnOnce() -> LayerRecord) {
    SCOPES.with(|s| {
        if let Some(Some(rows)) = s.borrow_mut().last_mut() {
            let r = make();
            match rows.iter_mut().find(|row| row.name == r.name) {
                Some(row) if row.output_shape != r.output_shape => row.output_shape = None,
                Some(_) => {}
                None => rows.push(r),
            }
        }
    });
}

/// Reports a built-in layer's call (a no-op unless a first call is recorded).
pub(crate) fn note_layer_call(layer: &dyn Layer, y: Tensor) -> Result<Tensor> {
    if is_recording() {
        record(|| LayerRecord::of_layer(layer, &y));
    }
    Ok(y)
}

/// Runs `f` inside a new scope (`Some`: recording, `None`: muted) and returns its rows.
pub(crate) fn scoped<R>(
    scope: Option<Vec<LayerRecord>>,
    f: impl FnOnce() -> R,
) -> (R, Vec<LayerRecord>) {
    struct Pop(bool);
    impl Drop for Pop {
        fn drop(&mut self) {
            // on unwinding the scope still closes; its rows are dropped
            if self.0 {
                SCOPES.with(|s| s.borrow_mut().pop());
            }
        }
    }
    SCOPES.with(|s| s.borrow_mut().push(scope));
    let mut pop = Pop(true);
    let r = f();
    pop.0 = false;
    let rows = SCOPES.with(|s| s.borrow_mut().pop()).flatten();
    (r, rows.unwrap_or_default())
}

/// What the first call found: the rows of `summary()` and the model's variables.
struct Recorded {
    layers: Vec<LayerRecord>,
    variables: Vec<Variable>,
}

/// A module inside a `Model`: the user's struct and what its first call recorded.
pub(crate) struct ModuleState {
    module: Arc<dyn Module>,
    any: Arc<dyn Any + Send + Sync>,
    /// The struct's type name (`MyModel`), shown by `summary()` for a nested model.
    pub(crate) class_name: String,
    recorded: Mutex<Option<Recorded>>,
}

impl ModuleState {
    pub(crate) fn new<M: Module>(module: M) -> ModuleState {
        let module = Arc::new(module);
        ModuleState {
            module: module.clone(),
            any: module,
            class_name: type_name_of::<M>(),
            recorded: Mutex::new(None),
        }
    }

    /// The user's struct, if it is an `M`.
    pub(crate) fn downcast<M: Module>(&self) -> Option<&M> {
        self.any.downcast_ref::<M>()
    }

    pub(crate) fn is_built(&self) -> bool {
        self.recorded.lock().expect("model lock").is_some()
    }

    /// Runs the module; the first successful call also records its layers and variables.
    pub(crate) fn call(&self, x: &Tensor, training: bool) -> Result<Tensor> {
        if self.is_built() {
            return self.module.call(x, training);
        }
        let tape = GradientTape::new();
        let (y, layers) = scoped(Some(Vec::new()), || {
            tape.record(|| self.module.call(x, training))
        });
        let y = y?;
        let mut seen = HashSet::new();
        let variables: Vec<Variable> = layers
            .iter()
            .flat_map(|l| l.variables.iter().cloned())
            .chain(tape.watched_variables())
            .filter(|v| seen.insert(v.id()))
            .collect();
        let mut recorded = self.recorded.lock().expect("model lock");
        if recorded.is_none() {
            *recorded = Some(Recorded { layers, variables });
        }
        Ok(y)
    }

    /// All variables (empty before the first call).
    pub(crate) fn variables(&self) -> Vec<Variable> {
        self.recorded
            .lock()
            .expect("model lock")
            .as_ref()
            .map(|r| r.variables.clone())
            .unwrap_or_default()
    }

    /// The layers of the first call, plus one row per variable no layer reported
    /// (`None` before the first call).
    pub(crate) fn layer_records(&self) -> Option<Vec<LayerRecord>> {
        let recorded = self.recorded.lock().expect("model lock");
        let r = recorded.as_ref()?;
        let mut rows = r.layers.clone();
        let owned: HashSet<u64> = rows
            .iter()
            .flat_map(|l| l.variables.iter().map(|v| v.id()))
            .collect();
        for v in r.variables.iter().filter(|v| !owned.contains(&v.id())) {
            rows.push(LayerRecord {
                name: v.name().to_string(),
                class_name: "Variable".into(),
                variables: vec![v.clone()],
                params: v.shape().iter().product(),
                output_shape: None,
            });
        }
        Some(rows)
    }
}

/// `MyModel` for `crate::path::MyModel<T>`.
fn type_name_of<M>() -> String {
    let full = std::any::type_name::<M>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base).to_string()
}

/// Keras' default model name for a class: `MyModel` → `my_model`, `CNNModel` → `cnn_model`.
pub(crate) fn snake_case(class: &str) -> String {
    let chars: Vec<char> = class.chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() && i > 0 {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            if prev.is_lowercase() || prev.is_ascii_digit() || (prev.is_uppercase() && next_lower) {
                out.push('_');
            }
        }
        out.extend(c.to_lowercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::snake_case;

    #[test]
    fn class_names_become_keras_model_names() {
        assert_eq!(snake_case("MyModel"), "my_model");
        assert_eq!(snake_case("CNNModel"), "cnn_model");
        assert_eq!(snake_case("MLP"), "mlp");
        assert_eq!(snake_case("Net2Layer"), "net2_layer");
    }
}
