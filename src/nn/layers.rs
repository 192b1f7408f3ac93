//! Layers: the [`Layer`] trait and `Dense`, `Conv2D`, `MaxPooling2D`, `Flatten`, `Dropout`.
//!
//! A layer owns its variables and computes `call(x, training)` with tensor ops, so it runs
//! eagerly and inside a traced function alike. Shapes given to [`Layer::build`] and
//! [`Layer::compute_output_shape`] are *per sample* (without the batch axis), as in
//! Keras' `input_shape`; `call` takes a batch.
//!
//! Built-in layers report each call to a subclassed model's first call, which is how
//! [`Model::from_module`](super::Model::from_module) finds them (see `subclass`).
//!
//! Invariants: a layer is built once, for one per-sample input shape; calling it later
//! with another shape is an `Err` naming the layer and both shapes. Variables are named
//! `<layer>/<variable>` and listed in a fixed order (kernel before bias).

use super::initializers::Initializer;
use super::model::SymbolicTensor;
use super::naming::unique_name;
use super::random;
use super::subclass::note_layer_call;
use crate::{DType, Dim, Error, Padding, Result, Tensor, Variable};
use serde_json::{json, Value};
use std::sync::{Mutex, OnceLock};

/// A building block of a model (`keras.layers.Layer`).
///
/// Implement it to write your own layer: create variables in `build` (from concrete
/// initial values), compute with tensor ops in `call`.
pub trait Layer: Send + Sync {
    /// The unique name (assigned on first use: `dense`, `dense_1`, ...).
    fn name(&self) -> &str;

    /// The Keras class name shown by `summary()`, e.g. `Dense`.
    fn class_name(&self) -> &'static str;

    /// Creates the variables for a per-sample input shape. Idempotent for the same
    /// shape; an `Err` for a different one.
    fn build(&self, input_shape: &[usize]) -> Result<()>;

    /// The per-sample output shape for a per-sample input shape.
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>>;

    /// The forward computation on a batch (`training` switches dropout and the like).
    fn call(&self, x: &Tensor, training: bool) -> Result<Tensor>;

    /// All variables (empty before `build`), in a stable order.
    fn variables(&self) -> Vec<Variable>;

    /// The trainable variables, in the same stable order.
    fn trainable_variables(&self) -> Vec<Variable> {
        self.variables()
            .into_iter()
            .filter(|v| v.trainable())
            .collect()
    }

    /// Number of scalars in all variables.
    fn count_params(&self) -> usize {
        self.variables()
            .iter()
            .map(|v| v.shape().iter().product::<usize>())
            .sum()
    }

    /// The layer's constructor settings for whole-model saving (Keras' `get_config`):
    /// a JSON object that, with [`Layer::class_name`], rebuilds the layer
    /// (`{"name": "dense", "units": 64, "activation": "relu", ...}`). `None` (the
    /// default) means the layer cannot be rebuilt from a config, and `Model::save` of a
    /// model holding it is an `Err` (use `save_weights`).
    fn get_config(&self) -> Option<Value> {
        None
    }

    /// Applies the layer to a functional model's symbolic tensor (`Dense(64)(x)` in
    /// Keras): builds it for `x`'s shape and returns the symbolic output.
    fn apply(self, x: &SymbolicTensor) -> Result<SymbolicTensor>
    where
        Self: Sized + 'static,
    {
        x.apply_shared(std::sync::Arc::new(self))
    }
}

/// An elementwise activation (Keras' `activation=` argument).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Activation {
    /// `x` (no activation).
    #[default]
    Linear,
    /// `max(x, 0)`.
    Relu,
    /// `1 / (1 + e⁻ˣ)`.
    Sigmoid,
    /// `tanh x`.
    Tanh,
    /// Softmax over the last axis.
    Softmax,
}

impl Activation {
    /// Applies the activation.
    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Linear => x.clone(),
            Activation::Relu => x.relu(),
            Activation::Sigmoid => x.sigmoid(),
            Activation::Tanh => x.tanh(),
            Activation::Softmax => x.softmax(-1),
        }
    }

    /// The Keras name: `linear`, `relu`, `sigmoid`, `tanh`, `softmax`.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Linear => "linear",
            Activation::Relu => "relu",
            Activation::Sigmoid => "sigmoid",
            Activation::Tanh => "tanh",
            Activation::Softmax => "softmax",
        }
    }

    /// The activation of a Keras name (see [`Activation::name`]).
    pub fn from_name(name: &str) -> Option<Activation> {
        [
            Activation::Linear,
            Activation::Relu,
            Activation::Sigmoid,
            Activation::Tanh,
            Activation::Softmax,
        ]
        .into_iter()
        .find(|a| a.name() == name)
    }
}

/// The Keras name of a padding (`valid`, `same`).
pub(crate) fn padding_name(p: Padding) -> &'static str {
    match p {
        Padding::Valid => "valid",
        Padding::Same => "same",
    }
}

/// Lazily assigned unique layer name.
pub(super) struct LayerName {
    prefix: &'static str,
    name: OnceLock<String>,
}

impl LayerName {
    pub(super) fn new(prefix: &'static str) -> LayerName {
        LayerName {
            prefix,
            name: OnceLock::new(),
        }
    }
    pub(super) fn get(&self) -> &str {
        self.name.get_or_init(|| unique_name(self.prefix))
    }
    pub(super) fn set(&self, name: String) {
        // a name can only be chosen before the layer has one
        let _ = self.name.set(name);
    }
}

pub(super) fn shape_str(dtype: DType, shape: &[usize]) -> String {
    let dims: Vec<String> = shape
        .iter()
        .map(|&d| Dim::from_raw(d).to_string())
        .collect();
    format!("{dtype}[{}]", dims.join(","))
}

/// The error for a layer given an input it cannot take.
pub(super) fn bad_input(class: &str, name: &str, msg: String) -> Error {
    Error::Invalid(format!("{class} layer `{name}`: {msg}"))
}

/// Checks that `x` is a batch (rank ≥ `min_rank`) of the layer's dtype.
pub(super) fn check_batch(
    class: &str,
    name: &str,
    x: &Tensor,
    dtype: DType,
    min_rank: usize,
) -> Result<()> {
    if x.rank() < min_rank {
        return Err(bad_input(
            class,
            name,
            format!(
                "expected a batch of rank ≥ {min_rank} (batch axis first), got {}",
                shape_str(x.dtype(), x.shape())
            ),
        ));
    }
    if x.dtype() != dtype {
        return Err(bad_input(
            class,
            name,
            format!(
                "input dtype {} does not match the layer's {dtype} (input {})",
                x.dtype(),
                shape_str(x.dtype(), x.shape())
            ),
        ));
    }
    Ok(())
}

/// The per-sample shape a layer was built for, with a clear error on a mismatch.
/// A layer's `name/kernel` of `kernel_shape` and, with `use_bias`, its `name/bias` sized
/// by the kernel's last axis (Dense and Conv2D build their weights the same way).
fn kernel_and_bias(
    name: &str,
    kernel_shape: &[usize],
    use_bias: bool,
    (kernel_init, bias_init): (&Initializer, &Initializer),
    dtype: DType,
) -> (Variable, Option<Variable>) {
    let kname = format!("{name}/kernel");
    let kernel = Variable::named(&kname, kernel_init.init(kernel_shape, dtype, &kname));
    let units = kernel_shape[kernel_shape.len() - 1];
    let bias = use_bias.then(|| {
        let bname = format!("{name}/bias");
        Variable::named(&bname, bias_init.init(&[units], dtype, &bname))
    });
    (kernel, bias)
}

pub(super) fn check_built_shape(
    class: &str,
    name: &str,
    built: &[usize],
    input_shape: &[usize],
) -> Result<()> {
    if built != input_shape {
        return Err(bad_input(
            class,
            name,
            format!("was built for inputs of per-sample shape {built:?}, got per-sample shape {input_shape:?}"),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------

struct DenseVars {
    input_shape: Vec<usize>,
    kernel: Variable,
    bias: Option<Variable>,
}

/// A fully connected layer: `activation(x · kernel + bias)` on the last axis.
///
/// The kernel `[in, units]` starts glorot-uniform, the bias `[units]` at zero.
///
/// ```
/// use tapeflow::nn::{Dense, Initializer, Layer};
/// use tapeflow::Tensor;
/// let d = Dense::new(2).kernel_initializer(Initializer::Ones).named("d");
/// let y = d.call(&Tensor::from_vec(vec![1.0f32, 2.0, 3.0], &[1, 3]).unwrap(), false).unwrap();
/// assert_eq!(y.to_vec_f32().unwrap(), vec![6.0, 6.0]);
/// assert_eq!(d.variables()[0].name(), "d/kernel");
/// ```
pub struct Dense {
    units: usize,
    activation: Activation,
    use_bias: bool,
    kernel_initializer: Initializer,
    bias_initializer: Initializer,
    dtype: DType,
    name: LayerName,
    vars: Mutex<Option<DenseVars>>,
}

impl Dense {
    /// A dense layer with `units` outputs, no activation, f32 weights.
    ///
    /// `units` must be positive: `Dense::new(0)` is an `Err` from the first `build`,
    /// `call` or `compute_output_shape`.
    pub fn new(units: usize) -> Dense {
        Dense {
            units,
            activation: Activation::Linear,
            use_bias: true,
            kernel_initializer: Initializer::GLOROT_UNIFORM,
            bias_initializer: Initializer::Zeros,
            dtype: DType::F32,
            name: LayerName::new("dense"),
            vars: Mutex::new(None),
        }
    }

    /// Sets the activation.
    pub fn activation(mut self, a: Activation) -> Dense {
        self.activation = a;
        self
    }

    /// Shorthand for `.activation(Activation::Relu)`.
    pub fn relu(self) -> Dense {
        self.activation(Activation::Relu)
    }

    /// Whether to add a bias (default true).
    pub fn use_bias(mut self, on: bool) -> Dense {
        self.use_bias = on;
        self
    }

    /// The kernel initializer (default glorot-uniform).
    pub fn kernel_initializer(mut self, i: Initializer) -> Dense {
        self.kernel_initializer = i;
        self
    }

    /// The bias initializer (default zeros).
    pub fn bias_initializer(mut self, i: Initializer) -> Dense {
        self.bias_initializer = i;
        self
    }

    /// The weights' dtype (default f32; f64 for gradient checks).
    pub fn dtype(mut self, d: DType) -> Dense {
        self.dtype = d;
        self
    }

    /// An explicit name instead of the next `dense_N`.
    pub fn named(self, name: impl Into<String>) -> Dense {
        self.name.set(name.into());
        self
    }

    /// `units` must be positive (Keras rejects `Dense(0)` too); checked when the layer
    /// is first built or asked for its output shape.
    fn check_units(&self) -> Result<()> {
        if self.units == 0 {
            return Err(bad_input(
                "Dense",
                self.name(),
                "units must be a positive integer, got 0".into(),
            ));
        }
        Ok(())
    }

    /// The kernel variable (`None` before the layer is built).
    pub fn kernel(&self) -> Option<Variable> {
        self.vars
            .lock()
            .expect("layer lock")
            .as_ref()
            .map(|v| v.kernel.clone())
    }

    /// The bias variable (`None` before the layer is built or without a bias).
    pub fn bias(&self) -> Option<Variable> {
        self.vars
            .lock()
            .expect("layer lock")
            .as_ref()
            .and_then(|v| v.bias.clone())
    }
}

impl Layer for Dense {
    fn name(&self) -> &str {
        self.name.get()
    }

    fn class_name(&self) -> &'static str {
        "Dense"
    }

    fn get_config(&self) -> Option<Value> {
        Some(json!({
            "name": self.name(),
            "units": self.units,
            "activation": self.activation.name(),
            "use_bias": self.use_bias,
            "dtype": self.dtype.name(),
        }))
    }

    fn build(&self, input_shape: &[usize]) -> Result<()> {
        let name = self.name.get().to_string();
        self.check_units()?;
        let mut vars = self.vars.lock().expect("layer lock");
        if let Some(v) = vars.as_ref() {
            // only the feature axis is fixed: a dense layer maps the last axis of any rank
            return check_built_shape(
                "Dense",
                &name,
                &v.input_shape[v.input_shape.len() - 1..],
                &input_shape[input_shape.len().saturating_sub(1)..],
            );
        }
        let features = *input_shape.last().ok_or_else(|| {
            bad_input(
                "Dense",
                &name,
                "needs inputs with at least one feature axis, got per-sample shape []".into(),
            )
        })?;
        let (kernel, bias) = kernel_and_bias(
            &name,
            &[features, self.units],
            self.use_bias,
            (&self.kernel_initializer, &self.bias_initializer),
            self.dtype,
        );
        *vars = Some(DenseVars {
            input_shape: input_shape.to_vec(),
            kernel,
            bias,
        });
        Ok(())
    }

    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        self.check_units()?;
        let mut s = input_shape.to_vec();
        match s.last_mut() {
            Some(last) => *last = self.units,
            None => {
                return Err(bad_input(
                    "Dense",
                    self.name(),
                    "needs at least one feature axis".into(),
                ))
            }
        }
        Ok(s)
    }

    fn call(&self, x: &Tensor, _training: bool) -> Result<Tensor> {
        let name = self.name.get();
        check_batch("Dense", name, x, self.dtype, 2)?;
        {
            let vars = self.vars.lock().expect("layer lock");
            if let Some(v) = vars.as_ref() {
                let want = *v.input_shape.last().expect("built with a feature axis");
                let got = *x.shape().last().expect("rank ≥ 2");
                if want != got {
                    return Err(bad_input(
                        "Dense",
                        name,
                        format!(
                            "expected inputs with {want} features on the last axis (it was built for per-sample shape {:?}), got {}",
                            v.input_shape,
                            shape_str(x.dtype(), x.shape())
                        ),
                    ));
                }
            }
        }
        self.build(&x.shape()[1..])?;
        let (kernel, bias) = {
            let vars = self.vars.lock().expect("layer lock");
            let v = vars.as_ref().expect("built above");
            (v.kernel.clone(), v.bias.clone())
        };
        let k = kernel.read();
        let y = if x.rank() == 2 {
            x.matmul(&k)
        } else {
            // apply to the last axis of any rank: fold the leading axes into rows
            let lead = &x.shape()[..x.rank() - 1];
            // symbolic lengths multiply symbolically (`b*7`)
            let rows = lead
                .iter()
                .fold(Dim::from(1), |n, &d| n * Dim::from_raw(d))
                .raw();
            let mut out = lead.to_vec();
            out.push(self.units);
            x.reshape(&[rows, x.shape()[x.rank() - 1]])
                .matmul(&k)
                .reshape(&out)
        };
        let y = match bias {
            Some(b) => y + b.read(),
            None => y,
        };
        note_layer_call(self, self.activation.apply(&y))
    }

    fn variables(&self) -> Vec<Variable> {
        match self.vars.lock().expect("layer lock").as_ref() {
            Some(v) => std::iter::once(v.kernel.clone())
                .chain(v.bias.clone())
                .collect(),
            None => Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------

/// Output length of a window sweep along one axis (TensorFlow's rule).
fn window_out(len: usize, k: usize, s: usize, padding: Padding) -> Option<usize> {
    match padding {
        Padding::Valid => (k <= len).then(|| (len - k) / s + 1),
        Padding::Same => Some(len.div_ceil(s)),
    }
}

/// Per-sample output shape `[oh, ow, c]` of a 2-D window op on `[h, w, _]`.
fn window_shape(
    class: &str,
    name: &str,
    input_shape: &[usize],
    k: (usize, usize),
    s: (usize, usize),
    padding: Padding,
    channels: usize,
) -> Result<Vec<usize>> {
    if input_shape.len() != 3 {
        return Err(bad_input(
            class,
            name,
            format!(
                "expects NHWC inputs (per-sample [h, w, c]), got per-sample shape {input_shape:?}"
            ),
        ));
    }
    let oh = window_out(input_shape[0], k.0, s.0, padding);
    let ow = window_out(input_shape[1], k.1, s.1, padding);
    match (oh, ow) {
        (Some(oh), Some(ow)) if oh > 0 && ow > 0 => Ok(vec![oh, ow, channels]),
        _ => Err(bad_input(
            class,
            name,
            format!("window {k:?} does not fit per-sample input {input_shape:?} with {padding:?} padding"),
        )),
    }
}

struct ConvVars {
    input_shape: Vec<usize>,
    kernel: Variable,
    bias: Option<Variable>,
}

/// A 2-D convolution on NHWC batches: kernel `[kh, kw, cin, filters]`, bias `[filters]`.
///
/// ```
/// use tapeflow::nn::{Activation, Conv2D, Layer};
/// use tapeflow::Tensor;
/// let c = Conv2D::new(32, 3).activation(Activation::Relu);
/// assert_eq!(c.compute_output_shape(&[28, 28, 1]).unwrap(), vec![26, 26, 32]);
/// let y = c.call(&Tensor::ones(&[2, 28, 28, 1]), false).unwrap();
/// assert_eq!(y.shape(), &[2, 26, 26, 32]);
/// ```
pub struct Conv2D {
    filters: usize,
    kernel_size: (usize, usize),
    strides: (usize, usize),
    padding: Padding,
    activation: Activation,
    use_bias: bool,
    kernel_initializer: Initializer,
    bias_initializer: Initializer,
    dtype: DType,
    name: LayerName,
    vars: Mutex<Option<ConvVars>>,
}

impl Conv2D {
    /// `filters` output channels with a square `kernel_size` window, stride 1, valid padding.
    pub fn new(filters: usize, kernel_size: usize) -> Conv2D {
        Conv2D {
            filters,
            kernel_size: (kernel_size, kernel_size),
            strides: (1, 1),
            padding: Padding::Valid,
            activation: Activation::Linear,
            use_bias: true,
            kernel_initializer: Initializer::GLOROT_UNIFORM,
            bias_initializer: Initializer::Zeros,
            dtype: DType::F32,
            name: LayerName::new("conv2d"),
            vars: Mutex::new(None),
        }
    }

    /// A non-square window `(kh, kw)`.
    pub fn kernel_size(mut self, k: (usize, usize)) -> Conv2D {
        self.kernel_size = k;
        self
    }

    /// Strides `(sh, sw)` (default `(1, 1)`).
    pub fn strides(mut self, s: (usize, usize)) -> Conv2D {
        self.strides = s;
        self
    }

    /// Padding (default valid).
    pub fn padding(mut self, p: Padding) -> Conv2D {
        self.padding = p;
        self
    }

    /// Sets the activation.
    pub fn activation(mut self, a: Activation) -> Conv2D {
        self.activation = a;
        self
    }

    /// Whether to add a bias (default true).
    pub fn use_bias(mut self, on: bool) -> Conv2D {
        self.use_bias = on;
        self
    }

    /// The kernel initializer (default glorot-uniform).
    pub fn kernel_initializer(mut self, i: Initializer) -> Conv2D {
        self.kernel_initializer = i;
        self
    }

    /// The bias initializer (default zeros).
    pub fn bias_initializer(mut self, i: Initializer) -> Conv2D {
        self.bias_initializer = i;
        self
    }

    /// The weights' dtype (default f32).
    pub fn dtype(mut self, d: DType) -> Conv2D {
        self.dtype = d;
        self
    }

    /// An explicit name instead of the next `conv2d_N`.
    pub fn named(self, name: impl Into<String>) -> Conv2D {
        self.name.set(name.into());
        self
    }
}

impl Layer for Conv2D {
    fn name(&self) -> &str {
        self.name.get()
    }

    fn class_name(&self) -> &'static str {
        "Conv2D"
    }

    fn get_config(&self) -> Option<Value> {
        Some(json!({
            "name": self.name(),
            "filters": self.filters,
            "kernel_size": [self.kernel_size.0, self.kernel_size.1],
            "strides": [self.strides.0, self.strides.1],
            "padding": padding_name(self.padding),
            "activation": self.activation.name(),
            "use_bias": self.use_bias,
            "dtype": self.dtype.name(),
        }))
    }

    fn build(&self, input_shape: &[usize]) -> Result<()> {
        let name = self.name.get().to_string();
        // validates the geometry too
        self.compute_output_shape(input_shape)?;
        let mut vars = self.vars.lock().expect("layer lock");
        if let Some(v) = vars.as_ref() {
            return check_built_shape("Conv2D", &name, &v.input_shape, input_shape);
        }
        let cin = input_shape[2];
        let (kh, kw) = self.kernel_size;
        let (kernel, bias) = kernel_and_bias(
            &name,
            &[kh, kw, cin, self.filters],
            self.use_bias,
            (&self.kernel_initializer, &self.bias_initializer),
            self.dtype,
        );
        *vars = Some(ConvVars {
            input_shape: input_shape.to_vec(),
            kernel,
            bias,
        });
        Ok(())
    }

    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        if self.strides.0 == 0
            || self.strides.1 == 0
            || self.kernel_size.0 == 0
            || self.kernel_size.1 == 0
        {
            return Err(bad_input(
                "Conv2D",
                self.name(),
                "kernel size and strides must be positive".into(),
            ));
        }
        window_shape(
            "Conv2D",
            self.name(),
            input_shape,
            self.kernel_size,
            self.strides,
            self.padding,
            self.filters,
        )
    }

    fn call(&self, x: &Tensor, _training: bool) -> Result<Tensor> {
        let name = self.name.get();
        check_batch("Conv2D", name, x, self.dtype, 4)?;
        if x.rank() != 4 {
            return Err(bad_input(
                "Conv2D",
                name,
                format!(
                    "expects NHWC batches of rank 4, got {}",
                    shape_str(x.dtype(), x.shape())
                ),
            ));
        }
        self.build(&x.shape()[1..])?;
        let (kernel, bias) = {
            let vars = self.vars.lock().expect("layer lock");
            let v = vars.as_ref().expect("built above");
            (v.kernel.clone(), v.bias.clone())
        };
        let y = x.conv2d(&kernel.read(), self.strides, self.padding);
        let y = match bias {
            Some(b) => y + b.read(),
            None => y,
        };
        note_layer_call(self, self.activation.apply(&y))
    }

    fn variables(&self) -> Vec<Variable> {
        match self.vars.lock().expect("layer lock").as_ref() {
            Some(v) => std::iter::once(v.kernel.clone())
                .chain(v.bias.clone())
                .collect(),
            None => Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------

/// 2-D max pooling on NHWC batches (strides default to the pool size, valid padding).
///
/// ```
/// use tapeflow::nn::{Layer, MaxPooling2D};
/// use tapeflow::Tensor;
/// let x = Tensor::from_vec((0..16).map(|v| v as f32).collect(), &[1, 4, 4, 1]).unwrap();
/// let y = MaxPooling2D::new((2, 2)).call(&x, false).unwrap();
/// assert_eq!(y.to_vec_f32().unwrap(), vec![5.0, 7.0, 13.0, 15.0]);
/// ```
pub struct MaxPooling2D {
    pool_size: (usize, usize),
    strides: Option<(usize, usize)>,
    padding: Padding,
    name: LayerName,
}

impl MaxPooling2D {
    /// Pools `pool_size` windows.
    pub fn new(pool_size: (usize, usize)) -> MaxPooling2D {
        MaxPooling2D {
            pool_size,
            strides: None,
            padding: Padding::Valid,
            name: LayerName::new("max_pooling2d"),
        }
    }

    /// Strides (default: the pool size).
    pub fn strides(mut self, s: (usize, usize)) -> MaxPooling2D {
        self.strides = Some(s);
        self
    }

    /// Padding (default valid).
    pub fn padding(mut self, p: Padding) -> MaxPooling2D {
        self.padding = p;
        self
    }

    /// An explicit name.
    pub fn named(self, name: impl Into<String>) -> MaxPooling2D {
        self.name.set(name.into());
        self
    }

    fn stride(&self) -> (usize, usize) {
        self.strides.unwrap_or(self.pool_size)
    }
}

impl Layer for MaxPooling2D {
    fn name(&self) -> &str {
        self.name.get()
    }

    fn class_name(&self) -> &'static str {
        "MaxPooling2D"
    }

    fn get_config(&self) -> Option<Value> {
        let s = self.stride();
        Some(json!({
            "name": self.name(),
            "pool_size": [self.pool_size.0, self.pool_size.1],
            "strides": [s.0, s.1],
            "padding": padding_name(self.padding),
        }))
    }

    fn build(&self, input_shape: &[usize]) -> Result<()> {
        self.compute_output_shape(input_shape).map(|_| ())
    }

    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        let s = self.stride();
        if s.0 == 0 || s.1 == 0 || self.pool_size.0 == 0 || self.pool_size.1 == 0 {
            return Err(bad_input(
                "MaxPooling2D",
                self.name(),
                "pool size and strides must be positive".into(),
            ));
        }
        let c = input_shape.get(2).copied().unwrap_or(0);
        window_shape(
            "MaxPooling2D",
            self.name(),
            input_shape,
            self.pool_size,
            s,
            self.padding,
            c,
        )
    }

    fn call(&self, x: &Tensor, _training: bool) -> Result<Tensor> {
        if x.rank() != 4 {
            return Err(bad_input(
                "MaxPooling2D",
                self.name(),
                format!(
                    "expects NHWC batches of rank 4, got {}",
                    shape_str(x.dtype(), x.shape())
                ),
            ));
        }
        self.compute_output_shape(&x.shape()[1..])?;
        note_layer_call(
            self,
            x.max_pool2d(self.pool_size, self.stride(), self.padding),
        )
    }

    fn variables(&self) -> Vec<Variable> {
        Vec::new()
    }
}

// ---------------------------------------------------------------------------------------

/// Flattens each sample to one axis: `[n, d1, d2, ...] → [n, d1·d2·...]`.
pub struct Flatten {
    name: LayerName,
}

impl Flatten {
    /// A flatten layer.
    pub fn new() -> Flatten {
        Flatten {
            name: LayerName::new("flatten"),
        }
    }

    /// An explicit name.
    pub fn named(self, name: impl Into<String>) -> Flatten {
        self.name.set(name.into());
        self
    }
}

impl Default for Flatten {
    fn default() -> Self {
        Flatten::new()
    }
}

impl Layer for Flatten {
    fn name(&self) -> &str {
        self.name.get()
    }

    fn class_name(&self) -> &'static str {
        "Flatten"
    }

    fn get_config(&self) -> Option<Value> {
        Some(json!({ "name": self.name() }))
    }

    fn build(&self, _input_shape: &[usize]) -> Result<()> {
        Ok(())
    }

    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        Ok(vec![input_shape.iter().product()])
    }

    fn call(&self, x: &Tensor, _training: bool) -> Result<Tensor> {
        if x.rank() == 0 {
            return Err(bad_input(
                "Flatten",
                self.name(),
                "expects a batch (rank ≥ 1), got a scalar".into(),
            ));
        }
        note_layer_call(self, x.flatten_batch())
    }

    fn variables(&self) -> Vec<Variable> {
        Vec::new()
    }
}

// ---------------------------------------------------------------------------------------

/// Randomly zeroes a fraction `rate` of the inputs while training and scales the rest by
/// `1 / (1 - rate)`; the identity at inference.
///
/// Masks are a seeded function of a call counter (a non-trainable i64 variable
/// `<name>/seed_generator_state` bumped on each training call), so eager and compiled
/// training draw the same masks and each step a new one.
///
/// ```
/// use tapeflow::nn::{Dropout, Layer};
/// use tapeflow::Tensor;
/// let d = Dropout::new(0.5).seed(7);
/// let x = Tensor::ones(&[4, 1000]);
/// assert_eq!(d.call(&x, false).unwrap().to_vec_f32().unwrap(), x.to_vec_f32().unwrap());
/// let y = d.call(&x, true).unwrap().to_vec_f32().unwrap();
/// let zeros = y.iter().filter(|v| **v == 0.0).count() as f64 / y.len() as f64;
/// assert!((zeros - 0.5).abs() < 0.05);
/// assert!(y.iter().all(|v| *v == 0.0 || *v == 2.0));
/// ```
pub struct Dropout {
    rate: f64,
    seed: Option<u64>,
    name: LayerName,
    counter: OnceLock<Variable>,
}

impl Dropout {
    /// Drops a fraction `rate` (in `[0, 1)`) of the inputs while training.
    pub fn new(rate: f64) -> Dropout {
        Dropout {
            rate,
            seed: None,
            name: LayerName::new("dropout"),
            counter: OnceLock::new(),
        }
    }

    /// An explicit seed (default: derived from the global seed and the layer name).
    pub fn seed(mut self, seed: u64) -> Dropout {
        self.seed = Some(seed);
        self
    }

    /// An explicit name.
    pub fn named(self, name: impl Into<String>) -> Dropout {
        self.name.set(name.into());
        self
    }

    fn counter(&self) -> &Variable {
        self.counter.get_or_init(|| {
            Variable::non_trainable(
                format!("{}/seed_generator_state", self.name.get()),
                Tensor::full(&[], 0.0, DType::I64),
            )
        })
    }
}

impl Layer for Dropout {
    fn name(&self) -> &str {
        self.name.get()
    }

    fn class_name(&self) -> &'static str {
        "Dropout"
    }

    /// The seed saved is the one in use (derived from the name and the global seed when
    /// none was given), so a loaded model draws the same masks.
    fn get_config(&self) -> Option<Value> {
        let seed = self
            .seed
            .unwrap_or_else(|| super::naming::derived_seed(self.name()));
        Some(json!({ "name": self.name(), "rate": self.rate, "seed": seed }))
    }

    fn build(&self, _input_shape: &[usize]) -> Result<()> {
        if !(0.0..1.0).contains(&self.rate) {
            return Err(bad_input(
                "Dropout",
                self.name(),
                format!("rate must be in [0, 1), got {}", self.rate),
            ));
        }
        self.counter();
        Ok(())
    }

    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        Ok(input_shape.to_vec())
    }

    fn call(&self, x: &Tensor, training: bool) -> Result<Tensor> {
        self.build(&[])?;
        if !training || self.rate == 0.0 {
            return note_layer_call(self, x.clone());
        }
        if !x.dtype().is_float() {
            return Err(bad_input(
                "Dropout",
                self.name(),
                format!(
                    "expects float inputs, got {}",
                    shape_str(x.dtype(), x.shape())
                ),
            ));
        }
        let counter = self.counter();
        let c = counter.read();
        counter.assign(&(&c + &Tensor::full(&[], 1.0, DType::I64)));
        let seed = self
            .seed
            .unwrap_or_else(|| super::naming::derived_seed(self.name()));
        let u = random::uniform(x.shape(), seed, &c);
        let keep = u
            .ge(&Tensor::scalar_of(DType::F64, self.rate))
            .cast(x.dtype());
        note_layer_call(self, x * &keep * (1.0 / (1.0 - self.rate)))
    }

    fn variables(&self) -> Vec<Variable> {
        vec![self.counter().clone()]
    }

    /// The call counter is random-number state, not a parameter (Keras shows 0).
    fn count_params(&self) -> usize {
        0
    }
}
