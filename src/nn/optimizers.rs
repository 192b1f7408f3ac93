//! Optimizers (`keras.optimizers`): `SGD` (momentum, Nesterov), `Adam`, `RMSprop`,
//! `AdamW`, and learning-rate schedules (`ExponentialDecay`, `CosineDecay`).
//!
//! `apply_gradients(&grads, &vars)` works eagerly and inside a traced function with the
//! same code: every update is `Variable::assign` of tensor ops, which becomes an in-place
//! update of the compiled graph.
//!
//! State and its invariants:
//! - Slot variables (momenta, second moments) are created on first use, from concrete
//!   zeros, and keyed by the variable's id, so a retrace finds the slots of the first
//!   trace and never creates new ones. Creating them inside a trace is allowed (the
//!   initial value is concrete) and happens once. [`Optimizer::build`] creates them up
//!   front (checkpoint restore does).
//! - The step counter `iterations` is a non-trainable i64 variable, advanced with an
//!   assign in the same graph, so bias correction and schedules see the right step in a
//!   compiled `train_step` too. Schedules read the step *before* the update (Keras);
//!   Adam's bias correction uses `t = iterations + 1`.
//! - A constant learning rate lives in a non-trainable f64 scalar variable
//!   (`<name>/learning_rate`), read by the update graph, so
//!   [`Optimizer::set_learning_rate`] (what `LearningRateScheduler` and
//!   `ReduceLROnPlateau` call between epochs) changes the rate of an already compiled
//!   `train_step` too. It is not among [`Optimizer::variables`] (checkpoints keep their
//!   layout); whole-model saving records it in the optimizer's config.
//! - Gradients that are `None` (variables the loss does not depend on) are skipped; all
//!   `None` is an `Err`, as is a gradient whose shape differs from its variable.
//!
//! The formulas are Keras' (documented on each optimizer), so numbers match TensorFlow.

use super::naming::unique_name;
use crate::{DType, Error, Result, Tensor, Variable};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::f64::consts::PI;
use std::sync::{Arc, Mutex};

// ---------------------------------------------------------------------------------------
// learning rates

/// A learning rate that depends on the step (`keras.optimizers.schedules`).
pub trait LearningRateSchedule: Send + Sync {
    /// The learning rate after `step` updates; `step` is an f64 scalar tensor (concrete
    /// eagerly, symbolic inside a trace), so the schedule is built from tensor ops.
    fn at(&self, step: &Tensor) -> Tensor;

    /// The schedule's class and settings for whole-model saving
    /// (`{"class_name": ..., "config": {...}}`, Keras' `get_config`). `None` (the default)
    /// means it cannot be saved, and `Model::save` of a model whose optimizer uses it is
    /// an `Err`.
    fn get_config(&self) -> Option<Value> {
        None
    }
}

/// A constant learning rate or a schedule.
#[derive(Clone)]
pub enum LearningRate {
    /// The same rate at every step.
    Constant(f64),
    /// A rate computed from the step.
    Schedule(Arc<dyn LearningRateSchedule>),
}

impl LearningRate {
    /// The rate after `step` updates, as an f64 scalar tensor.
    pub fn at(&self, step: &Tensor) -> Tensor {
        match self {
            LearningRate::Constant(lr) => Tensor::scalar_of(DType::F64, *lr),
            LearningRate::Schedule(s) => s.at(step),
        }
    }
}

impl From<f64> for LearningRate {
    fn from(lr: f64) -> Self {
        LearningRate::Constant(lr)
    }
}

impl From<f32> for LearningRate {
    fn from(lr: f32) -> Self {
        LearningRate::Constant(lr as f64)
    }
}

/// `lr · rate^(step / decay_steps)`, with the exponent floored when `staircase`.
///
/// ```
/// use tapeflow::nn::{ExponentialDecay, LearningRateSchedule};
/// use tapeflow::{DType, Tensor};
/// let s = ExponentialDecay::new(0.1, 10, 0.5);
/// let lr = s.at(&Tensor::scalar_of(DType::F64, 20.0)).to_scalar().unwrap();
/// assert!((lr - 0.025).abs() < 1e-12);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct ExponentialDecay {
    /// Rate at step 0.
    pub initial_learning_rate: f64,
    /// Steps per decay period.
    pub decay_steps: u64,
    /// Factor per period.
    pub decay_rate: f64,
    /// Decay in whole periods only.
    pub staircase: bool,
}

impl ExponentialDecay {
    /// A smooth exponential decay.
    pub fn new(initial_learning_rate: f64, decay_steps: u64, decay_rate: f64) -> ExponentialDecay {
        ExponentialDecay {
            initial_learning_rate,
            decay_steps,
            decay_rate,
            staircase: false,
        }
    }

    /// Decays in whole periods.
    pub fn staircase(mut self, on: bool) -> ExponentialDecay {
        self.staircase = on;
        self
    }
}

impl LearningRateSchedule for ExponentialDecay {
    fn at(&self, step: &Tensor) -> Tensor {
        let p = step.cast(DType::F64) / self.decay_steps.max(1) as f64;
        // floor of a non-negative number: truncation through i64
        let p = if self.staircase {
            p.cast(DType::I64).cast(DType::F64)
        } else {
            p
        };
        Tensor::scalar_of(DType::F64, self.decay_rate).pow(&p) * self.initial_learning_rate
    }

    fn get_config(&self) -> Option<Value> {
        Some(json!({
            "class_name": "ExponentialDecay",
            "config": {
                "initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps,
                "decay_rate": self.decay_rate,
                "staircase": self.staircase,
            }
        }))
    }
}

impl From<ExponentialDecay> for LearningRate {
    fn from(s: ExponentialDecay) -> Self {
        LearningRate::Schedule(Arc::new(s))
    }
}

/// Cosine decay from `lr` to `alpha · lr` over `decay_steps`, then flat:
/// `lr · ((1-α) · ½(1 + cos(π · min(step, decay_steps) / decay_steps)) + α)`.
#[derive(Clone, Copy, Debug)]
pub struct CosineDecay {
    /// Rate at step 0.
    pub initial_learning_rate: f64,
    /// Steps to decay over.
    pub decay_steps: u64,
    /// Final rate as a fraction of the initial one.
    pub alpha: f64,
}

impl CosineDecay {
    /// Decays to zero over `decay_steps`.
    pub fn new(initial_learning_rate: f64, decay_steps: u64) -> CosineDecay {
        CosineDecay {
            initial_learning_rate,
            decay_steps,
            alpha: 0.0,
        }
    }

    /// The final fraction of the initial rate.
    pub fn alpha(mut self, alpha: f64) -> CosineDecay {
        self.alpha = alpha;
        self
    }
}

impl LearningRateSchedule for CosineDecay {
    fn at(&self, step: &Tensor) -> Tensor {
        let total = self.decay_steps.max(1) as f64;
        let s = step
            .cast(DType::F64)
            .minimum(&Tensor::scalar_of(DType::F64, total));
        let cosine = ((s * (PI / total)).cos() + 1.0) * 0.5;
        (cosine * (1.0 - self.alpha) + self.alpha) * self.initial_learning_rate
    }

    fn get_config(&self) -> Option<Value> {
        Some(json!({
            "class_name": "CosineDecay",
            "config": {
                "initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps,
                "alpha": self.alpha,
            }
        }))
    }
}

impl From<CosineDecay> for LearningRate {
    fn from(s: CosineDecay) -> Self {
        LearningRate::Schedule(Arc::new(s))
    }
}

// ---------------------------------------------------------------------------------------
// the optimizer trait and the shared machinery

/// Updates variables from their gradients (`keras.optimizers.Optimizer`).
pub trait Optimizer: Send + Sync {
    /// The unique name (prefix of the slot variables).
    fn name(&self) -> &str;

    /// Applies one update: `grads[i]` is the gradient of `vars[i]` (`None` skips it).
    ///
    /// Works eagerly and inside a traced function. Returns `Err` when the lengths
    /// differ, a gradient's shape or dtype does not match its variable, or every
    /// gradient is `None`.
    fn apply_gradients(&self, grads: &[Option<Tensor>], vars: &[Variable]) -> Result<()>;

    /// Creates the slot variables of `vars` now (otherwise they appear on first use).
    fn build(&self, vars: &[Variable]);

    /// The number of updates applied so far (an i64 scalar variable).
    fn iterations(&self) -> Variable;

    /// All state: `iterations`, then each variable's slots in the order they were created.
    fn variables(&self) -> Vec<Variable>;

    /// The learning rate the next update will use (from the concrete step counter).
    fn current_learning_rate(&self) -> f64;

    /// Sets a constant learning rate (Keras' `optimizer.learning_rate = lr`), seen by
    /// compiled steps from their next call. An `Err` when the rate is a schedule (as in
    /// Keras) or not finite; the default implementation is an `Err` for optimizers
    /// without a settable rate.
    fn set_learning_rate(&self, lr: f64) -> Result<()> {
        Err(Error::Invalid(format!(
            "optimizer `{}` has no settable learning rate (got {lr})",
            self.name()
        )))
    }

    /// The optimizer's class and settings for whole-model saving
    /// (`{"class_name": "Adam", "config": {"name": ..., "learning_rate": ..., ...}}`,
    /// Keras' `get_config`), with the current learning rate. `None` (the default) means
    /// it cannot be saved: `Model::save` of a model compiled with it is an `Err`.
    fn get_config(&self) -> Option<Value> {
        None
    }
}

struct SlotTable {
    index: HashMap<u64, usize>,
    slots: Vec<Vec<Variable>>,
}

/// State shared by every optimizer: name, learning rate, step counter, slots.
struct Core {
    name: String,
    lr: LearningRate,
    /// The value of a constant `lr` (see the module docs); `None` for a schedule.
    lr_var: Option<Variable>,
    iterations: Variable,
    table: Mutex<SlotTable>,
}

impl Core {
    fn new(prefix: &str, lr: LearningRate) -> Arc<Core> {
        Core::named(unique_name(prefix), lr)
    }

    fn named(name: String, lr: LearningRate) -> Arc<Core> {
        let iterations = Variable::non_trainable(
            format!("{name}/iterations"),
            Tensor::full(&[], 0.0, DType::I64),
        );
        let lr_var = match &lr {
            LearningRate::Constant(v) => Some(Variable::non_trainable(
                format!("{name}/learning_rate"),
                Tensor::scalar_of(DType::F64, *v),
            )),
            LearningRate::Schedule(_) => None,
        };
        Arc::new(Core {
            name,
            lr,
            lr_var,
            iterations,
            table: Mutex::new(SlotTable {
                index: HashMap::new(),
                slots: Vec::new(),
            }),
        })
    }

    /// The rate at `step` (an f64 scalar): the variable's value, or the schedule's.
    fn lr_at(&self, step: &Tensor) -> Tensor {
        match &self.lr_var {
            Some(v) => v.read(),
            None => self.lr.at(step),
        }
    }

    fn set_learning_rate(&self, lr: f64) -> Result<()> {
        match &self.lr_var {
            Some(_) if !lr.is_finite() => Err(Error::Invalid(format!(
                "{}: the learning rate must be finite, got {lr}",
                self.name
            ))),
            Some(v) => {
                v.assign(&Tensor::scalar_of(DType::F64, lr));
                Ok(())
            }
            None => Err(Error::Invalid(format!(
                "{}: the learning rate is a schedule and cannot be set to {lr}; give the optimizer a constant rate to change it between epochs",
                self.name
            ))),
        }
    }

    /// The saved form of the learning rate: the current constant, or the schedule's config.
    fn lr_config(&self) -> Option<Value> {
        match &self.lr {
            LearningRate::Constant(_) => Some(json!(self.current_learning_rate())),
            LearningRate::Schedule(s) => s.get_config(),
        }
    }

    /// The slots of `var`, created as concrete zeros on first request.
    fn slots(&self, var: &Variable, names: &[&str]) -> Vec<Variable> {
        let mut t = self.table.lock().expect("optimizer lock");
        if let Some(&i) = t.index.get(&var.id()) {
            return t.slots[i].clone();
        }
        let made: Vec<Variable> = names
            .iter()
            .map(|s| {
                Variable::non_trainable(
                    format!("{}/{}/{s}", self.name, var.name()),
                    Tensor::full(var.shape(), 0.0, var.dtype()),
                )
            })
            .collect();
        let i = t.slots.len();
        t.slots.push(made.clone());
        t.index.insert(var.id(), i);
        made
    }

    fn variables(&self) -> Vec<Variable> {
        let t = self.table.lock().expect("optimizer lock");
        std::iter::once(self.iterations.clone())
            .chain(t.slots.iter().flatten().cloned())
            .collect()
    }

    fn current_learning_rate(&self) -> f64 {
        let step = self.iterations.value().cast(DType::F64);
        self.lr_at(&step).to_scalar().unwrap_or(f64::NAN)
    }

    /// Validates, then runs `update(var, grad, slots, lr, coef)` for each variable with a
    /// gradient, then advances `iterations`. `lr` is the (f64 scalar) rate at the current
    /// step and `coef = prepare(lr, t)` a per-step scalar computed once for all variables
    /// (Adam's bias-corrected rate), with `t` the 1-based step number.
    fn apply(
        &self,
        grads: &[Option<Tensor>],
        vars: &[Variable],
        slot_names: &[&str],
        prepare: impl Fn(&Tensor, &Tensor) -> Tensor,
        update: impl Fn(&Variable, &Tensor, &[Variable], &Tensor, &Tensor),
    ) -> Result<()> {
        if grads.len() != vars.len() {
            return Err(Error::Invalid(format!(
                "{}: apply_gradients got {} gradients for {} variables",
                self.name,
                grads.len(),
                vars.len()
            )));
        }
        for (g, v) in grads.iter().zip(vars) {
            if let Some(g) = g {
                if g.shape() != v.shape() || g.dtype() != v.dtype() {
                    return Err(Error::Invalid(format!(
                        "{}: the gradient for variable `{}` is {}{:?}, the variable is {}{:?}",
                        self.name,
                        v.name(),
                        g.dtype(),
                        g.shape(),
                        v.dtype(),
                        v.shape()
                    )));
                }
            }
        }
        if !vars.is_empty() && grads.iter().all(|g| g.is_none()) {
            let names: Vec<&str> = vars.iter().map(|v| v.name()).collect();
            return Err(Error::Invalid(format!(
                "{}: no gradients provided for any variable ({})",
                self.name,
                names.join(", ")
            )));
        }
        let it = self.iterations.read();
        let step = it.cast(DType::F64);
        let lr = self.lr_at(&step);
        let coef = prepare(&lr, &(&step + 1.0));
        for (g, v) in grads.iter().zip(vars) {
            if let Some(g) = g {
                let slots = self.slots(v, slot_names);
                update(v, g, &slots, &lr, &coef);
            }
        }
        self.iterations
            .assign(&(&it + &Tensor::full(&[], 1.0, DType::I64)));
        Ok(())
    }

    fn build(&self, vars: &[Variable], slot_names: &[&str]) {
        for v in vars {
            self.slots(v, slot_names);
        }
    }
}

/// A scalar in `dtype`.
fn s(dtype: DType, v: f64) -> Tensor {
    Tensor::scalar_of(dtype, v)
}

macro_rules! optimizer_common {
    ($t:ty) => {
        impl Optimizer for $t {
            fn name(&self) -> &str {
                &self.core.name
            }
            fn apply_gradients(&self, grads: &[Option<Tensor>], vars: &[Variable]) -> Result<()> {
                let names = self.slot_names();
                self.core.apply(
                    grads,
                    vars,
                    &names,
                    |lr, t| self.prepare(lr, t),
                    |v, g, slots, lr, coef| self.update(v, g, slots, lr, coef),
                )
            }
            fn build(&self, vars: &[Variable]) {
                self.core.build(vars, &self.slot_names());
            }
            fn iterations(&self) -> Variable {
                self.core.iterations.clone()
            }
            fn variables(&self) -> Vec<Variable> {
                self.core.variables()
            }
            fn current_learning_rate(&self) -> f64 {
                self.core.current_learning_rate()
            }
            fn set_learning_rate(&self, lr: f64) -> Result<()> {
                self.core.set_learning_rate(lr)
            }
            fn get_config(&self) -> Option<Value> {
                let mut config = self.config();
                config.insert("name".into(), json!(self.core.name));
                config.insert("learning_rate".into(), self.core.lr_config()?);
                Some(json!({ "class_name": self.class_name(), "config": config }))
            }
        }
    };
}

// ---------------------------------------------------------------------------------------

/// Stochastic gradient descent with optional (Nesterov) momentum (`keras.optimizers.SGD`).
///
/// Without momentum: `w ← w - lr·g`. With momentum `μ` (slot `m`, starting at 0):
/// `m ← μ·m - lr·g`, then `w ← w + m`, or with Nesterov `w ← w + μ·m - lr·g`.
///
/// ```
/// use tapeflow::nn::{Optimizer, SGD};
/// use tapeflow::{Tensor, Variable};
/// let w = Variable::named("w", Tensor::scalar(1.0));
/// SGD::new(0.1).apply_gradients(&[Some(Tensor::scalar(2.0))], &[w.clone()]).unwrap();
/// assert!((w.value().to_scalar().unwrap() - 0.8).abs() < 1e-7);
/// ```
#[derive(Clone)]
pub struct SGD {
    momentum: f64,
    nesterov: bool,
    core: Arc<Core>,
}

impl SGD {
    /// Plain SGD with learning rate `lr` (a number or a schedule).
    pub fn new(lr: impl Into<LearningRate>) -> SGD {
        SGD {
            momentum: 0.0,
            nesterov: false,
            core: Core::new("SGD", lr.into()),
        }
    }

    /// Momentum `μ` (default 0).
    pub fn momentum(mut self, momentum: f64) -> SGD {
        self.momentum = momentum;
        self
    }

    /// Nesterov momentum (default off).
    pub fn nesterov(mut self, on: bool) -> SGD {
        self.nesterov = on;
        self
    }

    /// An explicit name (the prefix of its state variables) instead of the next `SGD_N`.
    /// Call it first: it starts a fresh step counter and slots.
    pub fn named(mut self, name: impl Into<String>) -> SGD {
        self.core = Core::named(name.into(), self.core.lr.clone());
        self
    }

    fn class_name(&self) -> &'static str {
        "SGD"
    }

    fn config(&self) -> serde_json::Map<String, Value> {
        let mut c = serde_json::Map::new();
        c.insert("momentum".into(), json!(self.momentum));
        c.insert("nesterov".into(), json!(self.nesterov));
        c
    }

    fn slot_names(&self) -> Vec<&'static str> {
        if self.momentum > 0.0 {
            vec!["momentum"]
        } else {
            Vec::new()
        }
    }

    fn prepare(&self, lr: &Tensor, _t: &Tensor) -> Tensor {
        lr.clone()
    }

    fn update(&self, w: &Variable, g: &Tensor, slots: &[Variable], lr: &Tensor, _coef: &Tensor) {
        let lr = lr.cast(w.dtype());
        if self.momentum > 0.0 {
            let m = &slots[0];
            let m_new = m.read() * self.momentum - g * &lr;
            m.assign(&m_new);
            if self.nesterov {
                w.assign_add(&(&m_new * self.momentum - g * &lr));
            } else {
                w.assign_add(&m_new);
            }
        } else {
            w.assign_sub(&(g * &lr));
        }
    }
}

impl Default for SGD {
    /// Learning rate 0.01, as Keras.
    fn default() -> Self {
        SGD::new(0.01)
    }
}

optimizer_common!(SGD);

// ---------------------------------------------------------------------------------------

/// Adam (`keras.optimizers.Adam`; Kingma & Ba, in the form of their Section 2 with ε̂).
///
/// With `t` the 1-based step, slots `m`, `v` starting at 0:
/// `m ← m + (g - m)(1 - β₁)`, `v ← v + (g² - v)(1 - β₂)`,
/// `α = lr·√(1 - β₂ᵗ) / (1 - β₁ᵗ)`, `w ← w - α·m / (√v + ε)`.
/// Defaults: lr 0.001, β₁ 0.9, β₂ 0.999, ε 1e-7.
#[derive(Clone)]
pub struct Adam {
    beta_1: f64,
    beta_2: f64,
    epsilon: f64,
    weight_decay: f64,
    core: Arc<Core>,
}

impl Adam {
    /// Adam with learning rate `lr` (a number or a schedule) and Keras' defaults otherwise.
    pub fn new(lr: impl Into<LearningRate>) -> Adam {
        Adam {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-7,
            weight_decay: 0.0,
            core: Core::new("adam", lr.into()),
        }
    }

    /// β₁, the first-moment decay (default 0.9).
    pub fn beta_1(mut self, b: f64) -> Adam {
        self.beta_1 = b;
        self
    }

    /// β₂, the second-moment decay (default 0.999).
    pub fn beta_2(mut self, b: f64) -> Adam {
        self.beta_2 = b;
        self
    }

    /// ε (default 1e-7).
    pub fn epsilon(mut self, e: f64) -> Adam {
        self.epsilon = e;
        self
    }

    /// An explicit name (the prefix of its state variables) instead of the next `adam_N`.
    /// Call it first: it starts a fresh step counter and slots.
    pub fn named(mut self, name: impl Into<String>) -> Adam {
        self.core = Core::named(name.into(), self.core.lr.clone());
        self
    }

    fn class_name(&self) -> &'static str {
        if self.weight_decay > 0.0 {
            "AdamW"
        } else {
            "Adam"
        }
    }

    fn config(&self) -> serde_json::Map<String, Value> {
        let mut c = serde_json::Map::new();
        c.insert("beta_1".into(), json!(self.beta_1));
        c.insert("beta_2".into(), json!(self.beta_2));
        c.insert("epsilon".into(), json!(self.epsilon));
        if self.weight_decay > 0.0 {
            c.insert("weight_decay".into(), json!(self.weight_decay));
        }
        c
    }

    fn slot_names(&self) -> Vec<&'static str> {
        vec!["m", "v"]
    }

    /// The bias-corrected rate `α = lr·√(1 - β₂ᵗ) / (1 - β₁ᵗ)`, once per step.
    fn prepare(&self, lr: &Tensor, t: &Tensor) -> Tensor {
        let b1_t = s(DType::F64, self.beta_1).pow(t);
        let b2_t = s(DType::F64, self.beta_2).pow(t);
        lr * (1.0f64 - b2_t).sqrt() / (1.0f64 - b1_t)
    }

    fn update(&self, w: &Variable, g: &Tensor, slots: &[Variable], lr: &Tensor, alpha: &Tensor) {
        let d = w.dtype();
        if self.weight_decay > 0.0 {
            // decoupled weight decay (AdamW), applied before the Adam step: w ← w - w·λ·lr
            w.assign_sub(&(w.read() * (lr * self.weight_decay).cast(d)));
        }
        let (m, v) = (&slots[0], &slots[1]);
        let alpha = alpha.cast(d);
        let m_old = m.read();
        let v_old = v.read();
        let m_new = &m_old + (g - &m_old) * (1.0 - self.beta_1);
        let v_new = &v_old + (g * g - &v_old) * (1.0 - self.beta_2);
        m.assign(&m_new);
        v.assign(&v_new);
        w.assign_sub(&(&m_new * &alpha / (v_new.sqrt() + self.epsilon)));
    }
}

impl Default for Adam {
    /// Learning rate 0.001, as Keras.
    fn default() -> Self {
        Adam::new(0.001)
    }
}

optimizer_common!(Adam);

/// Adam with decoupled weight decay (`keras.optimizers.AdamW`; Loshchilov & Hutter):
/// first `w ← w - λ·lr·w`, then the [`Adam`] step. Defaults: lr 0.001, λ 0.004.
#[derive(Clone)]
pub struct AdamW {
    adam: Adam,
}

impl AdamW {
    /// AdamW with learning rate `lr` and weight decay λ = 0.004.
    pub fn new(lr: impl Into<LearningRate>) -> AdamW {
        let mut adam = Adam::new(lr);
        adam.core = Core::new("adamw", adam.core.lr.clone());
        adam.weight_decay = 0.004;
        AdamW { adam }
    }

    /// The decay λ.
    pub fn weight_decay(mut self, wd: f64) -> AdamW {
        self.adam.weight_decay = wd;
        self
    }

    /// β₁ (default 0.9).
    pub fn beta_1(mut self, b: f64) -> AdamW {
        self.adam.beta_1 = b;
        self
    }

    /// β₂ (default 0.999).
    pub fn beta_2(mut self, b: f64) -> AdamW {
        self.adam.beta_2 = b;
        self
    }

    /// ε (default 1e-7).
    pub fn epsilon(mut self, e: f64) -> AdamW {
        self.adam.epsilon = e;
        self
    }

    /// An explicit name instead of the next `adamw_N`. Call it first: it starts a fresh
    /// step counter and slots.
    pub fn named(mut self, name: impl Into<String>) -> AdamW {
        self.adam = self.adam.named(name);
        self
    }
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW::new(0.001)
    }
}

impl Optimizer for AdamW {
    fn name(&self) -> &str {
        self.adam.name()
    }
    fn apply_gradients(&self, grads: &[Option<Tensor>], vars: &[Variable]) -> Result<()> {
        self.adam.apply_gradients(grads, vars)
    }
    fn build(&self, vars: &[Variable]) {
        self.adam.build(vars)
    }
    fn iterations(&self) -> Variable {
        self.adam.iterations()
    }
    fn variables(&self) -> Vec<Variable> {
        self.adam.variables()
    }
    fn current_learning_rate(&self) -> f64 {
        self.adam.current_learning_rate()
    }
    fn set_learning_rate(&self, lr: f64) -> Result<()> {
        self.adam.set_learning_rate(lr)
    }
    /// Saved as class `AdamW` with its `weight_decay` (as class `Adam` when λ is 0).
    fn get_config(&self) -> Option<Value> {
        self.adam.get_config()
    }
}

// ---------------------------------------------------------------------------------------

/// RMSprop (`keras.optimizers.RMSprop`).
///
/// Slot `v` (and `mg` when centered, `momentum` when μ > 0), starting at 0:
/// `v ← ρ·v + (1-ρ)·g²`; denominator `v + ε`, or `v - mg² + ε` with
/// `mg ← ρ·mg + (1-ρ)·g` when centered; `Δ = lr·g / √denominator`;
/// `w ← w - Δ`, or with momentum `m ← μ·m + Δ`, `w ← w - m`.
/// Defaults: lr 0.001, ρ 0.9, μ 0, ε 1e-7.
#[derive(Clone)]
pub struct RMSprop {
    rho: f64,
    momentum: f64,
    epsilon: f64,
    centered: bool,
    core: Arc<Core>,
}

impl RMSprop {
    /// RMSprop with learning rate `lr` and Keras' defaults otherwise.
    pub fn new(lr: impl Into<LearningRate>) -> RMSprop {
        RMSprop {
            rho: 0.9,
            momentum: 0.0,
            epsilon: 1e-7,
            centered: false,
            core: Core::new("rmsprop", lr.into()),
        }
    }

    /// ρ, the decay of the squared-gradient average (default 0.9).
    pub fn rho(mut self, rho: f64) -> RMSprop {
        self.rho = rho;
        self
    }

    /// Momentum μ (default 0).
    pub fn momentum(mut self, m: f64) -> RMSprop {
        self.momentum = m;
        self
    }

    /// ε (default 1e-7).
    pub fn epsilon(mut self, e: f64) -> RMSprop {
        self.epsilon = e;
        self
    }

    /// Normalizes by the gradient's variance instead of its second moment.
    pub fn centered(mut self, on: bool) -> RMSprop {
        self.centered = on;
        self
    }

    /// An explicit name instead of the next `rmsprop_N`. Call it first: it starts a
    /// fresh step counter and slots.
    pub fn named(mut self, name: impl Into<String>) -> RMSprop {
        self.core = Core::named(name.into(), self.core.lr.clone());
        self
    }

    fn class_name(&self) -> &'static str {
        "RMSprop"
    }

    fn config(&self) -> serde_json::Map<String, Value> {
        let mut c = serde_json::Map::new();
        c.insert("rho".into(), json!(self.rho));
        c.insert("momentum".into(), json!(self.momentum));
        c.insert("epsilon".into(), json!(self.epsilon));
        c.insert("centered".into(), json!(self.centered));
        c
    }

    fn slot_names(&self) -> Vec<&'static str> {
        let mut v = vec!["velocity"];
        if self.momentum > 0.0 {
            v.push("momentum");
        }
        if self.centered {
            v.push("average_gradient");
        }
        v
    }

    fn prepare(&self, lr: &Tensor, _t: &Tensor) -> Tensor {
        lr.clone()
    }

    fn update(&self, w: &Variable, g: &Tensor, slots: &[Variable], lr: &Tensor, _coef: &Tensor) {
        let lr = lr.cast(w.dtype());
        let vel = &slots[0];
        let v_new = vel.read() * self.rho + g * g * (1.0 - self.rho);
        vel.assign(&v_new);
        let denom = if self.centered {
            let mg = slots.last().expect("centered has an average_gradient slot");
            let mg_new = mg.read() * self.rho + g * (1.0 - self.rho);
            mg.assign(&mg_new);
            &v_new - &mg_new * &mg_new + self.epsilon
        } else {
            &v_new + self.epsilon
        };
        let inc = &lr * g / denom.sqrt();
        if self.momentum > 0.0 {
            let m = &slots[1];
            let m_new = m.read() * self.momentum + inc;
            m.assign(&m_new);
            w.assign_sub(&m_new);
        } else {
            w.assign_sub(&inc);
        }
    }
}

impl Default for RMSprop {
    fn default() -> Self {
        RMSprop::new(0.001)
    }
}

optimizer_common!(RMSprop);
