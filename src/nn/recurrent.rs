//! Recurrent layers: [`SimpleRNN`], [`LSTM`] and [`GRU`] (Keras' `keras.layers`), one
//! generic [`Recurrent`] layer over a cell kind.
//!
//! The recurrence is a [`scan`](crate::scan) over the time axis, so inside
//! [`function`](crate::function) it stays one loop op in the IR (28 steps are not
//! unrolled into 28 copies of the cell) and its gradient is a reverse scan; eagerly it
//! runs step by step and a [`GradientTape`](crate::GradientTape) records it.
//!
//! Layout and defaults follow Keras, so weights carry over:
//! - `kernel [features, g·units]` (glorot-uniform), `recurrent_kernel [units, g·units]`
//!   (orthogonal), `bias [g·units]` (zeros), with the gates side by side in Keras' order:
//!   LSTM `i, f, c, o` (g = 4; `unit_forget_bias` starts the forget gate's bias at 1),
//!   GRU `z, r, h` (g = 3; with `reset_after` — the default — the bias is `[2, 3·units]`,
//!   input and recurrent biases), SimpleRNN one gate (g = 1);
//! - `activation` tanh, `recurrent_activation` sigmoid;
//! - inputs `[batch, timesteps, features]`; the output is the last step's `[batch, units]`,
//!   or every step's `[batch, timesteps, units]` with `return_sequences`.
//!
//! The input projection `x·kernel + bias` of all steps is one matrix product before the
//! loop (as cuDNN and Keras' fused kernels do); only `h·recurrent_kernel` and the gates
//! run per step.

use super::initializers::Initializer;
use super::layers::{bad_input, check_batch, check_built_shape, shape_str, Activation};
use super::layers::{Layer, LayerName};
use super::subclass::note_layer_call;
use crate::{scan, DType, Dim, Result, Tensor, Variable};
use serde_json::{json, Value};
use std::marker::PhantomData;
use std::sync::Mutex;

/// What distinguishes SimpleRNN, LSTM and GRU: the gate count, the state count and one
/// time step. Sealed: the three kinds are [`SimpleRnnCell`], [`LstmCell`] and [`GruCell`].
pub trait Cell: sealed::Sealed + Send + Sync + 'static {
    /// The Keras class name (`LSTM`).
    const CLASS: &'static str;
    /// The name prefix of new layers (`lstm`).
    const PREFIX: &'static str;
    /// Gates side by side in the kernels (LSTM 4, GRU 3, SimpleRNN 1).
    const GATES: usize;
    /// Carried states (LSTM `h, c`; the others `h`).
    const STATES: usize;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::SimpleRnnCell {}
    impl Sealed for super::LstmCell {}
    impl Sealed for super::GruCell {}
}

/// The cell of [`SimpleRNN`]: `h' = tanh(x·W + h·U + b)`.
pub struct SimpleRnnCell;
/// The cell of [`LSTM`] (gates `i, f, c, o`).
pub struct LstmCell;
/// The cell of [`GRU`] (gates `z, r, h`).
pub struct GruCell;

impl Cell for SimpleRnnCell {
    const CLASS: &'static str = "SimpleRNN";
    const PREFIX: &'static str = "simple_rnn";
    const GATES: usize = 1;
    const STATES: usize = 1;
}
impl Cell for LstmCell {
    const CLASS: &'static str = "LSTM";
    const PREFIX: &'static str = "lstm";
    const GATES: usize = 4;
    const STATES: usize = 2;
}
impl Cell for GruCell {
    const CLASS: &'static str = "GRU";
    const PREFIX: &'static str = "gru";
    const GATES: usize = 3;
    const STATES: usize = 1;
}

/// Keras' `SimpleRNN(units)`: a fully connected recurrence `h' = tanh(x·W + h·U + b)`.
///
/// ```
/// use tapeflow::nn::{Layer, SimpleRNN};
/// use tapeflow::Tensor;
/// let rnn = SimpleRNN::new(4).return_sequences(true);
/// let y = rnn.call(&Tensor::ones(&[2, 5, 3]), false).unwrap();
/// assert_eq!(y.shape(), &[2, 5, 4]);
/// assert_eq!(rnn.count_params(), 3 * 4 + 4 * 4 + 4);
/// ```
pub type SimpleRNN = Recurrent<SimpleRnnCell>;

/// Keras' `LSTM(units)`.
///
/// ```
/// use tapeflow::nn::{Layer, LSTM};
/// use tapeflow::Tensor;
/// let lstm = LSTM::new(8);
/// let y = lstm.call(&Tensor::ones(&[2, 5, 3]), false).unwrap();
/// assert_eq!(y.shape(), &[2, 8]);
/// assert_eq!(lstm.count_params(), 4 * (8 * (3 + 8) + 8));
/// ```
pub type LSTM = Recurrent<LstmCell>;

/// Keras' `GRU(units)` (`reset_after=True` by default, as in Keras 2.x and later).
///
/// ```
/// use tapeflow::nn::{Layer, GRU};
/// use tapeflow::Tensor;
/// let gru = GRU::new(8);
/// let y = gru.call(&Tensor::ones(&[2, 5, 3]), false).unwrap();
/// assert_eq!(y.shape(), &[2, 8]);
/// assert_eq!(gru.count_params(), 3 * 8 * (3 + 8) + 2 * 3 * 8);
/// ```
pub type GRU = Recurrent<GruCell>;

struct RecurrentVars {
    input_shape: Vec<usize>,
    kernel: Variable,
    recurrent: Variable,
    bias: Option<Variable>,
}

/// A recurrent layer over the time axis of `[batch, timesteps, features]` inputs; the
/// cell kind `C` makes it a [`SimpleRNN`], [`LSTM`] or [`GRU`] (use those names).
pub struct Recurrent<C: Cell> {
    units: usize,
    activation: Activation,
    recurrent_activation: Activation,
    use_bias: bool,
    kernel_initializer: Initializer,
    recurrent_initializer: Initializer,
    bias_initializer: Initializer,
    unit_forget_bias: bool,
    reset_after: bool,
    return_sequences: bool,
    return_state: bool,
    go_backwards: bool,
    dtype: DType,
    name: LayerName,
    vars: Mutex<Option<RecurrentVars>>,
    cell: PhantomData<C>,
}

impl<C: Cell> Recurrent<C> {
    /// A layer with `units` outputs and Keras' defaults (see the module docs).
    pub fn new(units: usize) -> Recurrent<C> {
        Recurrent {
            units,
            activation: Activation::Tanh,
            recurrent_activation: Activation::Sigmoid,
            use_bias: true,
            kernel_initializer: Initializer::GLOROT_UNIFORM,
            recurrent_initializer: Initializer::ORTHOGONAL,
            bias_initializer: Initializer::Zeros,
            unit_forget_bias: true,
            reset_after: true,
            return_sequences: false,
            return_state: false,
            go_backwards: false,
            dtype: DType::F32,
            name: LayerName::new(C::PREFIX),
            vars: Mutex::new(None),
            cell: PhantomData,
        }
    }

    /// Output every step's `[batch, timesteps, units]` instead of the last step's.
    pub fn return_sequences(mut self, on: bool) -> Self {
        self.return_sequences = on;
        self
    }

    /// Make [`Recurrent::call_with_states`] return the final states after the output
    /// (Keras' `return_state=True`; [`Layer::call`] always returns the output alone).
    pub fn return_state(mut self, on: bool) -> Self {
        self.return_state = on;
        self
    }

    /// Process the sequence from the last step to the first; with `return_sequences`
    /// the output is in processing order (reversed), as in Keras.
    pub fn go_backwards(mut self, on: bool) -> Self {
        self.go_backwards = on;
        self
    }

    /// The output activation (default tanh).
    pub fn activation(mut self, a: Activation) -> Self {
        self.activation = a;
        self
    }

    /// The gates' activation (default sigmoid; LSTM and GRU only).
    pub fn recurrent_activation(mut self, a: Activation) -> Self {
        self.recurrent_activation = a;
        self
    }

    /// Whether to add biases (default true).
    pub fn use_bias(mut self, on: bool) -> Self {
        self.use_bias = on;
        self
    }

    /// The input kernel's initializer (default glorot-uniform).
    pub fn kernel_initializer(mut self, i: Initializer) -> Self {
        self.kernel_initializer = i;
        self
    }

    /// The recurrent kernel's initializer (default orthogonal).
    pub fn recurrent_initializer(mut self, i: Initializer) -> Self {
        self.recurrent_initializer = i;
        self
    }

    /// The bias initializer (default zeros).
    pub fn bias_initializer(mut self, i: Initializer) -> Self {
        self.bias_initializer = i;
        self
    }

    /// The weights' dtype (default f32; f64 for gradient checks).
    pub fn dtype(mut self, d: DType) -> Self {
        self.dtype = d;
        self
    }

    /// An explicit name instead of the next `lstm_N` (or `gru_N`, `simple_rnn_N`).
    pub fn named(self, name: impl Into<String>) -> Self {
        self.name.set(name.into());
        self
    }

    /// `(kernel, recurrent_kernel, bias)` (`None` before the layer is built).
    pub fn weights(&self) -> Option<(Variable, Variable, Option<Variable>)> {
        let vars = self.vars.lock().expect("layer lock");
        vars.as_ref()
            .map(|v| (v.kernel.clone(), v.recurrent.clone(), v.bias.clone()))
    }

    fn check_units(&self) -> Result<()> {
        if self.units == 0 {
            return Err(bad_input(
                C::CLASS,
                self.name(),
                "units must be a positive integer, got 0".into(),
            ));
        }
        Ok(())
    }

    /// The bias shape: `[2, 3·units]` for a GRU with `reset_after`, else `[g·units]`.
    fn bias_shape(&self) -> Vec<usize> {
        let width = C::GATES * self.units;
        if C::GATES == 3 && self.reset_after {
            vec![2, width]
        } else {
            vec![width]
        }
    }

    fn initial_bias(&self, name: &str) -> Tensor {
        let shape = self.bias_shape();
        let b = self.bias_initializer.init(&shape, self.dtype, name);
        if C::GATES != 4 || !self.unit_forget_bias {
            return b;
        }
        // Keras' unit_forget_bias: the forget gate (second block) starts at 1
        let u = self.units;
        let mut v = b.to_vec_f64().expect("initial values are concrete");
        v[u..2 * u].iter_mut().for_each(|x| *x = 1.0);
        let t = Tensor::from_vec(v, &shape).expect("same length");
        super::initializers::cast_concrete(t, self.dtype)
    }

    /// The layer's settings for saving; the cell-specific ones only where they apply.
    fn config(&self) -> Value {
        let mut c = json!({
            "name": self.name(),
            "units": self.units,
            "activation": self.activation.name(),
            "recurrent_activation": self.recurrent_activation.name(),
            "use_bias": self.use_bias,
            "return_sequences": self.return_sequences,
            "return_state": self.return_state,
            "go_backwards": self.go_backwards,
            "dtype": self.dtype.name(),
        });
        if C::GATES == 4 {
            c["unit_forget_bias"] = json!(self.unit_forget_bias);
        }
        if C::GATES == 3 {
            c["reset_after"] = json!(self.reset_after);
        }
        c
    }

    /// Runs the layer and returns the output followed, with
    /// [`return_state`](Recurrent::return_state), by the final states (`h` — and `c` for
    /// an LSTM — each `[batch, units]`), as Keras' layer call does.
    ///
    /// `initial_state` gives the starting states (`[batch, units]` each: one for
    /// SimpleRNN and GRU, `[h, c]` for LSTM); `None` starts from zeros.
    pub fn call_with_states(
        &self,
        x: &Tensor,
        initial_state: Option<&[Tensor]>,
    ) -> Result<Vec<Tensor>> {
        let name = self.name.get().to_string();
        check_batch(C::CLASS, &name, x, self.dtype, 3)?;
        if x.rank() != 3 {
            return Err(bad_input(
                C::CLASS,
                &name,
                format!(
                    "expects inputs [batch, timesteps, features], got {}",
                    shape_str(x.dtype(), x.shape())
                ),
            ));
        }
        self.build(&x.shape()[1..])?;
        let (kernel, recurrent, bias) = self.weights().expect("built above");
        let batch = x.shape()[0];
        let states = self.initial_states(&name, batch, initial_state)?;

        // time-major, reversed for go_backwards, then one input projection for all steps
        let mut xt = x.transpose(&[1, 0, 2]);
        if self.go_backwards {
            xt = reverse_time(&xt);
        }
        let (xp, step_bias) = self.project(&xt, &kernel.read(), bias.map(|b| b.read()));
        let u = recurrent.read();
        let keep = self.return_sequences;
        let (last, ys) = scan(
            |carry, xs| {
                let next = self.step(&xs[0], carry, &u, step_bias.as_ref());
                let ys = if keep { vec![next[0].clone()] } else { vec![] };
                Ok((next, ys))
            },
            &states,
            &[xp],
        )?;
        let output = if keep {
            ys[0].transpose(&[1, 0, 2])
        } else {
            last[0].clone()
        };
        let output = note_layer_call(self, output)?;
        let mut out = vec![output];
        if self.return_state {
            out.extend(last);
        }
        Ok(out)
    }

    /// The states a sequence starts from: the caller's, checked, or zeros.
    fn initial_states(
        &self,
        name: &str,
        batch: usize,
        given: Option<&[Tensor]>,
    ) -> Result<Vec<Tensor>> {
        let want = [batch, self.units];
        match given {
            None => {
                // a broadcast zero works for a symbolic batch, where a constant cannot
                let zero = Tensor::scalar_of(self.dtype, 0.0).broadcast_to(&want);
                Ok(vec![zero; C::STATES])
            }
            Some(s) => {
                let fits = s.len() == C::STATES
                    && s.iter()
                        .all(|t| t.shape() == want && t.dtype() == self.dtype);
                if !fits {
                    let got: Vec<String> =
                        s.iter().map(|t| shape_str(t.dtype(), t.shape())).collect();
                    return Err(bad_input(
                        C::CLASS,
                        name,
                        format!(
                            "initial_state must be {} tensor(s) {}, got [{}]",
                            C::STATES,
                            shape_str(self.dtype, &want),
                            got.join(", ")
                        ),
                    ));
                }
                Ok(s.to_vec())
            }
        }
    }

    /// `x·kernel (+ input bias)` for every step at once: `[T, batch, g·units]`, and the
    /// bias added inside each step (a GRU's recurrent bias with `reset_after`).
    fn project(
        &self,
        xt: &Tensor,
        kernel: &Tensor,
        bias: Option<Tensor>,
    ) -> (Tensor, Option<Tensor>) {
        let (steps, batch, features) = (xt.shape()[0], xt.shape()[1], xt.shape()[2]);
        let rows = (Dim::from_raw(steps) * Dim::from_raw(batch)).raw();
        let width = C::GATES * self.units;
        let mut xp = xt.reshape(&[rows, features]).matmul(kernel);
        let mut step_bias = None;
        if let Some(b) = bias {
            if b.rank() == 2 {
                // GRU reset_after: row 0 is the input bias, row 1 the recurrent one
                xp = &xp + &b.slice_axis(0, 0, 1).reshape(&[width]);
                step_bias = Some(b.slice_axis(0, 1, 2).reshape(&[width]));
            } else {
                xp = &xp + &b;
            }
        }
        (xp.reshape(&[steps, batch, width]), step_bias)
    }

    /// One time step: the projected input `xp` `[batch, g·units]` and the carried
    /// states give the new states (`h` first).
    fn step(
        &self,
        xp: &Tensor,
        carry: &[Tensor],
        u: &Tensor,
        rbias: Option<&Tensor>,
    ) -> Vec<Tensor> {
        let n = self.units;
        let gate = |t: &Tensor, k: usize| t.slice_axis(1, k * n, (k + 1) * n);
        let (act, ract) = (self.activation, self.recurrent_activation);
        let h = &carry[0];
        match C::GATES {
            1 => vec![act.apply(&(xp + &h.matmul(u)))],
            4 => {
                let z = xp + &h.matmul(u);
                let i = ract.apply(&gate(&z, 0));
                let f = ract.apply(&gate(&z, 1));
                let g = act.apply(&gate(&z, 2));
                let o = ract.apply(&gate(&z, 3));
                let c = &(&f * &carry[1]) + &(&i * &g);
                let h = &o * &act.apply(&c);
                vec![h, c]
            }
            _ => {
                let (z, hh) = if self.reset_after {
                    let mut hu = h.matmul(u);
                    if let Some(b) = rbias {
                        hu = &hu + b;
                    }
                    let z = ract.apply(&(&gate(xp, 0) + &gate(&hu, 0)));
                    let r = ract.apply(&(&gate(xp, 1) + &gate(&hu, 1)));
                    let hh = act.apply(&(&gate(xp, 2) + &(&r * &gate(&hu, 2))));
                    (z, hh)
                } else {
                    let uzr = u.slice_axis(1, 0, 2 * n);
                    let uh = u.slice_axis(1, 2 * n, 3 * n);
                    let hzr = h.matmul(&uzr);
                    let z = ract.apply(&(&gate(xp, 0) + &gate(&hzr, 0)));
                    let r = ract.apply(&(&gate(xp, 1) + &gate(&hzr, 1)));
                    let hh = act.apply(&(&gate(xp, 2) + &(&r * h).matmul(&uh)));
                    (z, hh)
                };
                // h' = z·h + (1 − z)·hh
                vec![&(&z * h) + &(&(1.0f64 - &z) * &hh)]
            }
        }
    }
}

impl Recurrent<LstmCell> {
    /// Start the forget gate's bias at 1 (default true, as in Keras).
    pub fn unit_forget_bias(mut self, on: bool) -> Self {
        self.unit_forget_bias = on;
        self
    }
}

impl Recurrent<GruCell> {
    /// Apply the reset gate after the recurrent product (default true: Keras 2.x and
    /// cuDNN's layout, with separate input and recurrent biases); false is the original
    /// GRU (`r` applied to `h` before the product, one bias).
    pub fn reset_after(mut self, on: bool) -> Self {
        self.reset_after = on;
        self
    }
}

/// Reverses the leading (time) axis: `x[T-1], ..., x[0]`, for a symbolic `T` too.
fn reverse_time(x: &Tensor) -> Tensor {
    let steps = x.shape()[0];
    let idx = Tensor::range(steps, DType::I64);
    let last = &Tensor::dim_value(steps, DType::I64) - 1;
    x.gather(&(&last - &idx), 0)
}

impl<C: Cell> Layer for Recurrent<C> {
    fn name(&self) -> &str {
        self.name.get()
    }

    fn class_name(&self) -> &'static str {
        C::CLASS
    }

    fn get_config(&self) -> Option<Value> {
        Some(self.config())
    }

    fn build(&self, input_shape: &[usize]) -> Result<()> {
        let name = self.name.get().to_string();
        self.check_units()?;
        if input_shape.len() != 2 {
            return Err(bad_input(
                C::CLASS,
                &name,
                format!("expects per-sample inputs [timesteps, features], got {input_shape:?}"),
            ));
        }
        let mut vars = self.vars.lock().expect("layer lock");
        if let Some(v) = vars.as_ref() {
            // the features are fixed; the number of steps may change between calls
            return check_built_shape(C::CLASS, &name, &v.input_shape[1..], &input_shape[1..]);
        }
        let width = C::GATES * self.units;
        let var = |what: &str, shape: &[usize], init: &Initializer| {
            let vname = format!("{name}/{what}");
            Variable::named(&vname, init.init(shape, self.dtype, &vname))
        };
        let kernel = var("kernel", &[input_shape[1], width], &self.kernel_initializer);
        let recurrent = var(
            "recurrent_kernel",
            &[self.units, width],
            &self.recurrent_initializer,
        );
        let bias = self.use_bias.then(|| {
            let bname = format!("{name}/bias");
            Variable::named(&bname, self.initial_bias(&bname))
        });
        *vars = Some(RecurrentVars {
            input_shape: input_shape.to_vec(),
            kernel,
            recurrent,
            bias,
        });
        Ok(())
    }

    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        self.check_units()?;
        match input_shape {
            [steps, _] if self.return_sequences => Ok(vec![*steps, self.units]),
            [_, _] => Ok(vec![self.units]),
            _ => Err(bad_input(
                C::CLASS,
                self.name(),
                format!("expects per-sample inputs [timesteps, features], got {input_shape:?}"),
            )),
        }
    }

    fn call(&self, x: &Tensor, _training: bool) -> Result<Tensor> {
        let mut out = self.call_with_states(x, None)?;
        Ok(out.swap_remove(0))
    }

    fn variables(&self) -> Vec<Variable> {
        match self.weights() {
            Some((k, r, b)) => [Some(k), Some(r), b].into_iter().flatten().collect(),
            None => Vec::new(),
        }
    }
}
