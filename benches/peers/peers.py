"""tapeflow's bench workloads W1-W6 in TensorFlow (tf.function, with and without XLA), JAX
(jax.jit) and PyTorch (eager, torch.compile).

Measures, on the CPU, the same six steps as `examples/bench.rs` (workloads in
`benches/workloads/mod.rs`), timed the way bench.rs times them: a warm-up call (three
for torch.compile), then calls until a time budget is spent (at least 3, at most 2000),
and the median per call.
Every timed call is a real step: the parameters (and optimizer state) it updates feed
the next call. f32 throughout, synthetic MNIST-shaped data from fixed seeds.

- w1_mlp_small: MLP 784-64-64-10 (ReLU), batch 64, sparse softmax cross-entropy from
  logits (mean), SGD lr 1e-3; one step = forward + backward + update.
- w2_cnn: Conv2D(32,3,relu) > MaxPool2 > Conv2D(64,3,relu) > MaxPool2 > Conv2D(64,3,relu)
  > Flatten > Dense(64,relu) > Dense(10), batch 32 of 28x28x1, Adam 1e-3 (eps 1e-7).
- w3_mlp_large: MLP 784-1024-1024-10, batch 256, SGD 1e-3 (GFLOP/s counted as bench.rs).
- w4_linreg: y = a*x + b on 1000 points, loss sum of squares, a -= 1e-4*da, b -= 1e-4*db.
- w5_second_order: grad(sum(grad(f)))(x), f(x) = sum(sin(x)*exp(-x^2)), x f32[1e6].
- w6_lstm: LSTM(128) over 28 steps of 28 features, then Dense(10), batch 64, sparse
  softmax cross-entropy from logits, Adam 1e-3 (eps 1e-7).

Where the peers differ from tapeflow's steps (none changes the work done):
- TensorFlow runs each step as the TF2 tutorials write it: a Keras model (Keras 3 on the
  TensorFlow backend), a GradientTape and `optimizer.apply_gradients` inside one
  `tf.function` (`tf_xla`: `tf.function(jit_compile=True)`); W4 with two tf.Variables and
  `assign_sub`, W5 with two nested GradientTapes, as tapeflow's tutorials do.
- torch.compile compiles the forward + loss (AOTAutograd its backward) and the optimizer
  step, as PyTorch's tutorials do; loss.backward() runs in between. Dynamo does not
  trace nn.LSTM (a graph break), so in w6 the LSTM itself runs eagerly. w4 and w5 under
  torch.compile are one functional graph each (torch.func), as in JAX.
- torch runs w2 in NCHW, its native layout (JAX and tapeflow: NHWC); the first dense
  kernel's rows are reordered so that all compute the same function.
- nn.LSTM has two biases (input and recurrent; Keras one), torch's Adam adds eps after
  the bias correction (Keras before), JAX's labels are i32 (i64 needs jax_enable_x64).
- Initial values as Keras (glorot-uniform kernels, zero biases, orthogonal recurrent
  kernel, forget-gate bias 1) from numpy with fixed seeds, the same in JAX and torch,
  so the first losses agree; tapeflow's own random values differ.

The frameworks come from PyPI, best in a virtual environment of their own (numpy is needed;
a missing framework costs its rows only: they report the import error):

    python3 -m venv ~/peers && ~/peers/bin/pip install tensorflow-cpu "jax[cpu]" torch

Run it pinned to 2 cores, right after tapeflow's bench, on the same machine:

    taskset -c 0,1 ~/peers/bin/python benches/peers/peers.py --threads 2

Numbers depend on the machine and on whatever else runs on it (torch's OpenMP threads
suffer most from a busy core; the first and last lines record the load average): read
them as ratios to tapeflow's bench run on the same machine in the same session.

Options: --only w1,w3 (workload name prefixes), --frameworks tf,tf_xla,jax,torch,torch_compile,
--budget SECONDS of timed calls per row (default 2; bench.rs uses 3), --quick (0.2 s per
row, torch.compile only for w1 unless --only names workloads: its cold compiles take
10-30 s each on 2 cores). JAX's rows run in a Python process of their own, eager
torch's in another, and each torch.compile row in a fresh one (a cold compile); no two
frameworks share thread pools, and a crash costs one row only (the rest run again in a
new process).

Output, one JSON object per line: first the machine, versions and settings; then per
workload and framework `us_per_step` (median), `calls` (timed calls), `first_call_s`
(the first call, with trace and compile), `compile_s` (jax: lower + compile without a
run; torch.compile: its warm-up calls minus as many median steps), `warmup_s`,
`out_first`/`out_last` (mean of the first and last call's result: the loss, W5 the
second derivative, as a check that the steps train), `gflops` where bench.rs counts
FLOPs (w1, w3, w6), `fallback` where w5 ran eagerly because torch.compile failed; or
`error` (or `skipped`) for that pair; last a `done` line.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback

import numpy as np

WORKLOADS = ["w1_mlp_small", "w2_cnn", "w3_mlp_large", "w4_linreg", "w5_second_order", "w6_lstm"]
FRAMEWORKS = ["tf", "tf_xla", "jax", "torch", "torch_compile"]
FRAMEWORK_NAMES = {"tf": "tf.function", "tf_xla": "tf.function(jit_compile)", "jax": "jax.jit",
                   "torch": "torch.eager", "torch_compile": "torch.compile"}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", default="", help="comma-separated workload name prefixes (w1,w3)")
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    p.add_argument("--quick", action="store_true", help="0.2 s per row, fewer torch.compile rows")
    p.add_argument("--budget", type=float, default=None, help="seconds of timed calls per row")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)  # internal: name:framework,...
    return p.parse_args()


ARGS = parse_args()
# CPU only, thread counts fixed, all before jax or torch is imported. XLA has no flag for
# its thread count: its pool follows the CPUs the process may run on, so pin the process
# with taskset.
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# torch.compile: no on-disk caches, so that every run's first call is a cold compile (as
# JAX's, whose persistent cache is off by default); TORCHINDUCTOR_FORCE_DISABLE_CACHES=0
# in the environment keeps them
os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")
XLA_THREADS = "--xla_cpu_multi_thread_eigen=true"
if XLA_THREADS not in os.environ.get("XLA_FLAGS", ""):  # a child inherits the parent's
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + XLA_THREADS).strip()

BUDGET = ARGS.budget if ARGS.budget is not None else (0.2 if ARGS.quick else 2.0)
MAX_CALLS = 2000
ROW_TIMEOUT_S = 300  # per workload x framework, compile included
QUICK_COMPILED = ["w1_mlp_small"]  # the torch.compile rows of --quick


def emit(obj):
    print(json.dumps(obj), flush=True)


# ---------------------------------------------------------------------------------------
# Shared: timing, FLOP counts, data and initial values (numpy, fixed seeds)


def time_steps(step, budget=BUDGET, warmups=1):
    """Times `step()` (which must return only when its work is done) like bench.rs:
    `warmups` untimed calls, then calls until `budget` seconds are spent (at least 3, at
    most 2000). Returns a row: the median microseconds per call (the upper median, as
    bench.rs), the number of timed calls, the first call's seconds, the seconds of every
    warm-up call, and the mean of the first and the last call's output (the loss; W5: the
    second derivative) as a check that the steps really train."""
    warm, outs = [], []
    for _ in range(warmups):
        t = time.perf_counter()
        outs.append(step())
        warm.append(time.perf_counter() - t)
    samples = []
    start = time.perf_counter()
    while time.perf_counter() - start < budget or len(samples) < 3:
        t = time.perf_counter()
        out = step()
        samples.append(time.perf_counter() - t)
        if len(samples) >= MAX_CALLS:
            break
    samples.sort()
    median = samples[len(samples) // 2]
    return dict(us_per_step=median * 1e6, calls=len(samples), first_call_s=warm[0],
                warmup_s=warm, out_first=mean_of(outs[0]), out_last=mean_of(out))


def mean_of(value):
    """The mean of a jax array, torch tensor or numpy array, as a float."""
    if hasattr(value, "detach"):
        value = value.detach().numpy()
    return float(np.mean(np.asarray(value, dtype=np.float64)))


def mlp_flops(batch, widths):
    """bench.rs: forward 2*B*sum(i*o); backward the weight gradients of every layer plus
    the input gradients of all but the first."""
    layers = [2.0 * batch * i * o for i, o in zip(widths, widths[1:])]
    fwd = sum(layers)
    return fwd + fwd + (fwd - layers[0])


def lstm_flops(b, t, f, u, classes):
    """bench.rs: forward 2*B*T*(F+U)*4U plus the dense layer, backward twice that without
    the gradient of the input."""
    inp = 2.0 * b * t * f * 4.0 * u
    fwd = inp + 2.0 * b * t * u * 4.0 * u + 2.0 * b * u * classes
    return 3.0 * fwd - inp


FLOPS = {
    "w1_mlp_small": mlp_flops(64, [784, 64, 64, 10]),
    "w3_mlp_large": mlp_flops(256, [784, 1024, 1024, 10]),
    "w6_lstm": lstm_flops(64, 28, 28, 128, 10),
}

MLP_WIDTHS = {"w1_mlp_small": [784, 64, 64, 10], "w3_mlp_large": [784, 1024, 1024, 10]}
MLP_BATCH = {"w1_mlp_small": 64, "w3_mlp_large": 256}
SEEDS = {name: i + 1 for i, name in enumerate(WORKLOADS)}  # as workloads/mod.rs


def classifier_batch(shape, seed):
    """Synthetic MNIST-shaped batch: pixels uniform in [0, 1), labels 0..9."""
    rng = np.random.default_rng(seed)
    x = rng.random(shape, dtype=np.float32)
    y = rng.integers(0, 10, size=shape[0], dtype=np.int64)
    return x, y


def linreg_data():
    rng = np.random.default_rng(SEEDS["w4_linreg"])
    x = rng.standard_normal(1000, dtype=np.float32)
    return x, (x * 3.0 + 2.0).astype(np.float32)


def second_order_data():
    rng = np.random.default_rng(SEEDS["w5_second_order"])
    return rng.uniform(-3.0, 3.0, 1_000_000).astype(np.float32)


def glorot(rng, shape, fan_in, fan_out):
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape).astype(np.float32)


def orthogonal(rng, rows, cols):
    q, r = np.linalg.qr(rng.standard_normal((max(rows, cols), min(rows, cols))))
    q = q * np.sign(np.diag(r))
    return (q if rows >= cols else q.T).astype(np.float32)


def dense_init(rng, n_in, n_out):
    """Keras Dense: kernel [in, out] glorot-uniform, bias zeros."""
    return glorot(rng, (n_in, n_out), n_in, n_out), np.zeros(n_out, np.float32)


def conv_init(rng, k, c_in, c_out):
    """Keras Conv2D: kernel [k, k, in, out] glorot-uniform, bias zeros."""
    w = glorot(rng, (k, k, c_in, c_out), k * k * c_in, k * k * c_out)
    return w, np.zeros(c_out, np.float32)


def lstm_init(rng, features, units):
    """Keras LSTM: kernel [F, 4U] glorot, recurrent kernel [U, 4U] orthogonal, bias [4U]
    zeros but the forget gate's at 1; gates i, f, c, o (torch's order i, f, g, o is the
    same)."""
    kernel = glorot(rng, (features, 4 * units), features, 4 * units)
    recurrent = orthogonal(rng, units, 4 * units)
    bias = np.zeros(4 * units, np.float32)
    bias[units : 2 * units] = 1.0
    return kernel, recurrent, bias


# CNN layers: (kernel, in channels, out channels); dense layers after the flatten.
CNN_CONVS = [(3, 1, 32), (3, 32, 64), (3, 64, 64)]
CNN_DENSE = [(3 * 3 * 64, 64), (64, 10)]


def cnn_init(rng):
    convs = [conv_init(rng, k, i, o) for k, i, o in CNN_CONVS]
    dense = [dense_init(rng, i, o) for i, o in CNN_DENSE]
    return convs, dense


# ---------------------------------------------------------------------------------------
# JAX: each step is one jax.jit function (state, x, y) -> (state', loss), compiled ahead
# of time, with the state donated so the update can happen in place.


def jax_modules():
    import jax
    import jax.numpy as jnp
    from jax import lax

    return jax, jnp, lax


def jax_xent(jax, jnp, logits, labels):
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))


def jax_sgd(jax, lr):
    def update(params, grads, state):
        return jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads), state

    return update, lambda params: ()


def jax_adam(jax, jnp, lr, b1=0.9, b2=0.999, eps=1e-7):
    """tapeflow's (Keras') Adam: alpha = lr*sqrt(1-b2^t)/(1-b1^t), m += (g-m)(1-b1),
    v += (g*g-v)(1-b2), w -= m*alpha/(sqrt(v)+eps)."""

    def init(params):
        def zeros():  # m and v in buffers of their own (both are donated)
            return jax.tree_util.tree_map(jnp.zeros_like, params)

        return (jnp.zeros((), jnp.float32), zeros(), zeros())

    def update(params, grads, state):
        t, m, v = state
        t = t + 1.0
        alpha = lr * jnp.sqrt(1.0 - b2**t) / (1.0 - b1**t)
        m = jax.tree_util.tree_map(lambda m, g: m + (g - m) * (1.0 - b1), m, grads)
        v = jax.tree_util.tree_map(lambda v, g: v + (g * g - v) * (1.0 - b2), v, grads)
        params = jax.tree_util.tree_map(
            lambda p, m, v: p - m * alpha / (jnp.sqrt(v) + eps), params, m, v
        )
        return params, (t, m, v)

    return update, init


def jax_run(name, train_step, state, x, y):
    """Compiles `train_step(state, x, y) -> (state, loss)` and times it."""
    jax, _, _ = jax_modules()
    x, y = jax.device_put(x), jax.device_put(y)
    state = jax.device_put(state)
    t = time.perf_counter()
    compiled = jax.jit(train_step, donate_argnums=(0,)).lower(state, x, y).compile()
    compile_s = time.perf_counter() - t
    box = [state]

    def step():
        box[0], loss = jax.block_until_ready(compiled(box[0], x, y))
        return loss

    return jax_row(time_steps(step), compile_s)


def jax_row(row, compile_s):
    """The first call of a jax.jit function compiles: AOT compile + first run."""
    row["first_call_s"] += compile_s
    row["compile_s"] = compile_s
    return row


def jax_classifier(name, forward, params, opt, x, y):
    jax, jnp, _ = jax_modules()
    update, init = opt

    def loss_fn(params, x, y):
        return jax_xent(jax, jnp, forward(params, x), y)

    def train_step(state, x, y):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        params, opt_state = update(params, grads, opt_state)
        return (params, opt_state), loss

    return jax_run(name, train_step, (params, init(params)), x, y.astype(np.int32))


def jax_mlp(name):
    jax, jnp, _ = jax_modules()
    rng = np.random.default_rng(100 + SEEDS[name])
    widths = MLP_WIDTHS[name]
    params = [dense_init(rng, i, o) for i, o in zip(widths, widths[1:])]
    x, y = classifier_batch((MLP_BATCH[name], 784), SEEDS[name])

    def forward(params, x):
        for i, (w, b) in enumerate(params):
            x = x @ w + b
            if i + 1 < len(params):
                x = jax.nn.relu(x)
        return x

    return jax_classifier(name, forward, params, jax_sgd(jax, 1e-3), x, y)


def jax_cnn(name):
    jax, jnp, lax = jax_modules()
    convs, dense = cnn_init(np.random.default_rng(100 + SEEDS[name]))
    x, y = classifier_batch((32, 28, 28, 1), SEEDS[name])
    dims = ("NHWC", "HWIO", "NHWC")

    def forward(params, x):
        convs, dense = params
        for i, (w, b) in enumerate(convs):
            x = jax.nn.relu(lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=dims) + b)
            if i < 2:
                x = lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        x = x.reshape(x.shape[0], -1)
        (w1, b1), (w2, b2) = dense
        return jax.nn.relu(x @ w1 + b1) @ w2 + b2

    return jax_classifier(name, forward, (convs, dense), jax_adam(jax, jnp, 1e-3), x, y)


def jax_lstm(name):
    jax, jnp, lax = jax_modules()
    rng = np.random.default_rng(100 + SEEDS[name])
    params = (lstm_init(rng, 28, 128), dense_init(rng, 128, 10))
    x, y = classifier_batch((64, 28, 28), SEEDS[name])

    def forward(params, x):
        (kernel, recurrent, bias), (w, b) = params
        batch, steps, features = x.shape
        units = recurrent.shape[0]
        # the input projection of all steps at once, then the recurrence as one scan
        xp = (jnp.swapaxes(x, 0, 1).reshape(steps * batch, features) @ kernel + bias)
        xp = xp.reshape(steps, batch, 4 * units)

        def cell(carry, xp_t):
            h, c = carry
            i, f, g, o = jnp.split(xp_t + h @ recurrent, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), None

        zeros = jnp.zeros((batch, units), x.dtype)
        (h, _), _ = lax.scan(cell, (zeros, zeros), xp)
        return h @ w + b

    return jax_classifier(name, forward, params, jax_adam(jax, jnp, 1e-3), x, y)


def jax_linreg(name):
    jax, jnp, _ = jax_modules()
    x, y = linreg_data()

    def loss_fn(ab, x, y):
        a, b = ab
        return jnp.sum(jnp.square(a * x + b - y))

    def train_step(ab, x, y):
        loss, (ga, gb) = jax.value_and_grad(loss_fn)(ab, x, y)
        return (ab[0] - 1e-4 * ga, ab[1] - 1e-4 * gb), loss

    return jax_run(name, train_step, (np.float32(0.0), np.float32(0.0)), x, y)


def jax_second_order(name):
    jax, jnp, _ = jax_modules()
    x = second_order_data()

    def f(x):
        return jnp.sum(jnp.sin(x) * jnp.exp(-(x * x)))

    def d2(x):
        return jax.grad(lambda x: jnp.sum(jax.grad(f)(x)))(x)

    # no state to carry: the derivative of the same x every call (x is not donated)
    xj = jax.device_put(x)
    t = time.perf_counter()
    compiled = jax.jit(d2).lower(xj).compile()
    compile_s = time.perf_counter() - t
    return jax_row(time_steps(lambda: compiled(xj).block_until_ready()), compile_s)


# ---------------------------------------------------------------------------------------
# TensorFlow: the TF2 tutorials' custom training loop, one tf.function per step (traced
# and compiled by its first call); `tf_xla` adds jit_compile=True.

TF_WARMUPS = 2  # the first call traces and compiles; the second runs the graph once more


def tf_modules():
    import keras
    import tensorflow as tf

    return tf, keras


def setup_tf():
    """Thread counts before TensorFlow starts its runtime (once a process)."""
    tf, _ = tf_modules()
    if not getattr(setup_tf, "done", False):
        tf.config.threading.set_intra_op_parallelism_threads(ARGS.threads)
        tf.config.threading.set_inter_op_parallelism_threads(ARGS.threads)
        setup_tf.done = True


def tf_time(step):
    """Times a tf.function step; its compile time is what the warm-up calls took beyond
    as many steady steps (the first call traces and compiles)."""
    row = time_steps(step, warmups=TF_WARMUPS)
    row["compile_s"] = max(0.0, sum(row["warmup_s"]) - TF_WARMUPS * row["us_per_step"] * 1e-6)
    return row


def tf_with_weights(model, values):
    """Sets a built Keras model's weights (in `model.get_weights()` order) from numpy."""
    model.set_weights([np.asarray(v) for v in values])
    return model


def tf_mlp_model(name):
    _, keras = tf_modules()
    rng = np.random.default_rng(100 + SEEDS[name])
    widths = MLP_WIDTHS[name]
    init = [dense_init(rng, i, o) for i, o in zip(widths, widths[1:])]
    layers = [keras.Input((widths[0],))]
    for i, (_, n_out) in enumerate(zip(widths, widths[1:])):
        layers.append(keras.layers.Dense(n_out, activation="relu" if i + 2 < len(widths) else None))
    model = tf_with_weights(keras.Sequential(layers), [t for wb in init for t in wb])
    return model, *classifier_batch((MLP_BATCH[name], 784), SEEDS[name])


def tf_cnn_model(name):
    _, keras = tf_modules()
    convs, dense = cnn_init(np.random.default_rng(100 + SEEDS[name]))
    L = keras.layers
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        L.Conv2D(32, 3, activation="relu"), L.MaxPooling2D(2),
        L.Conv2D(64, 3, activation="relu"), L.MaxPooling2D(2),
        L.Conv2D(64, 3, activation="relu"),
        L.Flatten(), L.Dense(64, activation="relu"), L.Dense(10),
    ])
    model = tf_with_weights(model, [t for wb in convs + dense for t in wb])
    return model, *classifier_batch((32, 28, 28, 1), SEEDS[name])


def tf_lstm_model(name):
    _, keras = tf_modules()
    rng = np.random.default_rng(100 + SEEDS[name])
    lstm = lstm_init(rng, 28, 128)
    dense = dense_init(rng, 128, 10)
    model = keras.Sequential([keras.Input((28, 28)), keras.layers.LSTM(128), keras.layers.Dense(10)])
    model = tf_with_weights(model, [*lstm, *dense])
    return model, *classifier_batch((64, 28, 28), SEEDS[name])


def tf_classifier(name, make_model, xla):
    tf, keras = tf_modules()
    model, x, y = make_model(name)
    x, y = tf.constant(x), tf.constant(y)
    if name in ("w2_cnn", "w6_lstm"):
        opt = keras.optimizers.Adam(1e-3, epsilon=1e-7)
    else:
        opt = keras.optimizers.SGD(1e-3)
    opt.build(model.trainable_variables)
    loss_obj = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function(jit_compile=xla)
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_obj(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return tf_time(lambda: train_step(x, y).numpy())


def tf_linreg(name, xla):
    tf, _ = tf_modules()
    x, y = (tf.constant(t) for t in linreg_data())
    a, b = tf.Variable(0.0), tf.Variable(0.0)

    @tf.function(jit_compile=xla)
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(a * x + b - y))
        ga, gb = tape.gradient(loss, [a, b])
        a.assign_sub(1e-4 * ga)
        b.assign_sub(1e-4 * gb)
        return loss

    return tf_time(lambda: train_step(x, y).numpy())


def tf_second_order(name, xla):
    tf, _ = tf_modules()
    x = tf.constant(second_order_data())

    @tf.function(jit_compile=xla)
    def d2(x):
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                y = tf.reduce_sum(tf.sin(x) * tf.exp(-(x * x)))
            s = tf.reduce_sum(inner.gradient(y, x))
        return outer.gradient(s, x)

    return tf_time(lambda: d2(x).numpy())


def tf_run(name, xla):
    models = {"w1_mlp_small": tf_mlp_model, "w2_cnn": tf_cnn_model,
              "w3_mlp_large": tf_mlp_model, "w6_lstm": tf_lstm_model}
    others = {"w4_linreg": tf_linreg, "w5_second_order": tf_second_order}
    return run_workload(name, xla, tf_classifier, models, others)


# ---------------------------------------------------------------------------------------
# PyTorch: nn.Module models with torch.optim optimizers, the usual eager loop
# (zero_grad, forward, loss, backward, step). torch.compile compiles the forward + loss
# (AOTAutograd compiles its backward too) and the optimizer step, as the PyTorch
# tutorials do; loss.backward() between them runs in the autograd engine.

TORCH_WARMUPS = 3  # torch.compile may recompile in its first calls (guards, optimizer state)


def torch_modules():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    return torch, nn, F


def torch_dense(nn, torch, w, b):
    layer = nn.Linear(w.shape[0], w.shape[1])
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(w.T.copy()))
        layer.bias.copy_(torch.from_numpy(b))
    return layer


def torch_conv(nn, torch, w, b):
    k, _, c_in, c_out = w.shape
    layer = nn.Conv2d(c_in, c_out, k)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(w.transpose(3, 2, 0, 1).copy()))  # OIHW
        layer.bias.copy_(torch.from_numpy(b))
    return layer


def torch_mlp_model(name):
    torch, nn, _ = torch_modules()
    rng = np.random.default_rng(100 + SEEDS[name])
    widths = MLP_WIDTHS[name]
    layers = []
    for i, (n_in, n_out) in enumerate(zip(widths, widths[1:])):
        layers.append(torch_dense(nn, torch, *dense_init(rng, n_in, n_out)))
        if i + 2 < len(widths):
            layers.append(nn.ReLU())
    x, y = classifier_batch((MLP_BATCH[name], 784), SEEDS[name])
    return nn.Sequential(*layers), x, y


def torch_cnn_model(name):
    torch, nn, _ = torch_modules()
    convs, dense = cnn_init(np.random.default_rng(100 + SEEDS[name]))
    c = [torch_conv(nn, torch, w, b) for w, b in convs]
    # torch flattens [C, H, W], Keras and the JAX version [H, W, C]: reorder the first
    # dense kernel's rows so that both compute the same function
    (w0, b0), rest = dense[0], dense[1:]
    w0 = w0.reshape(3, 3, 64, -1).transpose(2, 0, 1, 3).reshape(3 * 3 * 64, -1)
    d = [torch_dense(nn, torch, w, b) for w, b in [(w0, b0)] + rest]
    model = nn.Sequential(
        c[0], nn.ReLU(), nn.MaxPool2d(2),
        c[1], nn.ReLU(), nn.MaxPool2d(2),
        c[2], nn.ReLU(),
        nn.Flatten(), d[0], nn.ReLU(), d[1],
    )
    x, y = classifier_batch((32, 28, 28, 1), SEEDS[name])
    return model, np.ascontiguousarray(x.transpose(0, 3, 1, 2)), y  # NCHW, torch's layout


def torch_lstm_model(name):
    torch, nn, _ = torch_modules()
    rng = np.random.default_rng(100 + SEEDS[name])
    kernel, recurrent, bias = lstm_init(rng, 28, 128)

    class LstmClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(28, 128, batch_first=True)
            self.fc = torch_dense(nn, torch, *dense_init(rng, 128, 10))
            with torch.no_grad():
                self.lstm.weight_ih_l0.copy_(torch.from_numpy(kernel.T.copy()))
                self.lstm.weight_hh_l0.copy_(torch.from_numpy(recurrent.T.copy()))
                self.lstm.bias_ih_l0.copy_(torch.from_numpy(bias))
                self.lstm.bias_hh_l0.zero_()

        def forward(self, x):
            _, (h, _) = self.lstm(x)
            return self.fc(h[-1])

    x, y = classifier_batch((64, 28, 28), SEEDS[name])
    return LstmClassifier(), x, y


def torch_optimizer(name, params):
    torch, _, _ = torch_modules()
    if name in ("w2_cnn", "w6_lstm"):
        return torch.optim.Adam(params, lr=1e-3, eps=1e-7)
    return torch.optim.SGD(params, lr=1e-3)


def torch_classifier(name, make_model, compiled):
    torch, _, F = torch_modules()
    model, x, y = make_model(name)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch_optimizer(name, model.parameters())

    def loss_fn(x, y):
        return F.cross_entropy(model(x), y)

    opt_step = opt.step
    if compiled:
        loss_fn = torch.compile(loss_fn)
        opt_step = torch.compile(opt.step)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(x, y)
        loss.backward()
        opt_step()
        return loss

    return torch_time(step, compiled)


def torch_time(step, compiled):
    """Times a torch step; torch.compile's compile time is what its warm-up calls took
    beyond as many steady steps (it compiles lazily, in the first calls)."""
    warmups = TORCH_WARMUPS if compiled else 1
    row = time_steps(step, warmups=warmups)
    row["compile_s"] = None
    if compiled:
        row["compile_s"] = max(0.0, sum(row["warmup_s"]) - warmups * row["us_per_step"] * 1e-6)
    return row


def torch_linreg(name, compiled):
    torch, _, _ = torch_modules()
    x, y = (torch.from_numpy(t) for t in linreg_data())

    def loss_fn(a, b, x, y):
        return torch.sum(torch.square(a * x + b - y))

    if not compiled:
        # the tape way: record, differentiate, update the leaves in place
        a = torch.zeros((), requires_grad=True)
        b = torch.zeros((), requires_grad=True)

        def step():
            loss = loss_fn(a, b, x, y)
            ga, gb = torch.autograd.grad(loss, [a, b])
            with torch.no_grad():
                a.sub_(ga * 1e-4)
                b.sub_(gb * 1e-4)
            return loss

        return torch_time(step, False)

    # compiled: one functional graph (torch.func), (a, b) -> (a', b', loss), as in JAX
    grad_and_value = torch.func.grad_and_value(loss_fn, argnums=(0, 1))

    @torch.compile
    def train_step(a, b, x, y):
        (ga, gb), loss = grad_and_value(a, b, x, y)
        return a - 1e-4 * ga, b - 1e-4 * gb, loss

    state = [torch.zeros(()), torch.zeros(())]

    def step():
        state[0], state[1], loss = train_step(state[0], state[1], x, y)
        return loss

    return torch_time(step, True)


def torch_second_order(name, compiled):
    torch, _, _ = torch_modules()
    x = torch.from_numpy(second_order_data())

    def f(x):
        return torch.sum(torch.sin(x) * torch.exp(-(x * x)))

    if not compiled:
        # nested tapes: autograd with create_graph, as tapeflow's two GradientTapes
        xg = x.clone().requires_grad_(True)

        def step():
            (g,) = torch.autograd.grad(f(xg), xg, create_graph=True)
            (d2,) = torch.autograd.grad(g.sum(), xg)
            return d2

        return torch_time(step, False)

    # compiled: torch.func grad of grad, which dynamo traces into one graph; where
    # torch.compile fails, the same function eagerly, marked `fallback`
    grad_of_grad = torch.func.grad(lambda x: torch.func.grad(f)(x).sum())
    d2 = torch.compile(grad_of_grad)
    try:
        return torch_time(lambda: d2(x), True)
    except Exception as e:  # noqa: BLE001
        row = torch_time(lambda: grad_of_grad(x), False)
        row["fallback"] = f"eager torch.func (torch.compile failed: {type(e).__name__}: {e})"[:600]
        return row


# ---------------------------------------------------------------------------------------

JAX_RUNS = {
    "w1_mlp_small": jax_mlp,
    "w2_cnn": jax_cnn,
    "w3_mlp_large": jax_mlp,
    "w4_linreg": jax_linreg,
    "w5_second_order": jax_second_order,
    "w6_lstm": jax_lstm,
}


def torch_run(name, compiled):
    models = {"w1_mlp_small": torch_mlp_model, "w2_cnn": torch_cnn_model,
              "w3_mlp_large": torch_mlp_model, "w6_lstm": torch_lstm_model}
    others = {"w4_linreg": torch_linreg, "w5_second_order": torch_second_order}
    return run_workload(name, compiled, torch_classifier, models, others)


def run_workload(name, flag, classifier, models, others):
    """One workload in one framework: a classifier's train step from `models` (name ->
    model maker), else its own step from `others` (linear regression, the second
    derivative); `flag` picks the compiled variant (XLA, torch.compile)."""
    if name in models:
        return classifier(name, models[name], flag)
    return others[name](name, flag)


def run_one(name, framework):
    if framework == "jax":
        return JAX_RUNS[name](name)
    if framework in ("tf", "tf_xla"):
        return tf_run(name, xla=framework == "tf_xla")
    return torch_run(name, compiled=framework == "torch_compile")


def setup_torch():
    """Thread counts first thing after importing torch (once a process)."""
    import torch

    if not getattr(setup_torch, "done", False):
        torch.set_num_threads(ARGS.threads)
        torch.set_num_interop_threads(1)
        setup_torch.done = True


def child(pairs):
    """Runs workload:framework pairs in this process, printing a row for each."""
    for pair in pairs.split(","):
        name, framework = pair.split(":")
        row = {"workload": name, "framework": FRAMEWORK_NAMES[framework]}
        try:
            torch_like = framework in ("torch", "torch_compile")
            if torch_like:
                setup_torch()
            if framework in ("tf", "tf_xla"):
                setup_tf()
            row.update(finish(name, run_one(name, framework)))
            if torch_like:
                import torch

                row["torch_threads"] = torch.get_num_threads()
        except Exception as e:  # noqa: BLE001 -- one failure must not stop the others
            row["error"] = f"{type(e).__name__}: {e}"[:2000]
            row["where"] = traceback.format_exc(limit=-3)[-1500:]
        emit(row)


def version(package):
    try:
        from importlib.metadata import version as v

        return v(package)
    except Exception:  # noqa: BLE001 -- not installed
        return None


def machine_info():
    info = {"python": platform.python_version(), "processor": platform.processor(),
            "machine": platform.machine(), "cpu_model": None, "cpu_count": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            names = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")]
        info["cpu_model"] = names[0] if names else None
    except OSError:
        pass
    if hasattr(os, "sched_getaffinity"):
        info["cpus_allowed"] = sorted(os.sched_getaffinity(0))
    for package in ("numpy", "tensorflow", "tensorflow-cpu", "keras", "jax", "jaxlib", "torch"):
        info[package] = version(package)
    info["loadavg"] = list(os.getloadavg())
    info.update(threads=ARGS.threads, budget_s=BUDGET, xla_flags=os.environ["XLA_FLAGS"],
                inductor_caches_disabled=os.environ["TORCHINDUCTOR_FORCE_DISABLE_CACHES"])
    return info


def finish(name, row):
    """Rounds a measured row and adds GFLOP/s where bench.rs counts FLOPs."""
    row["us_per_step"] = round(row["us_per_step"], 1)
    if name in FLOPS:
        row["gflops"] = round(FLOPS[name] / (row["us_per_step"] * 1e-6) / 1e9, 2)
    for k in ("first_call_s", "compile_s"):
        if row.get(k) is not None:
            row[k] = round(row[k], 4)
    row["warmup_s"] = [round(t, 4) for t in row["warmup_s"]]
    row["threads"] = ARGS.threads
    return row


def run_child(pairs):
    """Runs (workload, framework) pairs in a fresh Python process and returns the rows it
    printed, and an error row for the pair where it crashed, hung or stopped (if any)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--threads", str(ARGS.threads),
           "--budget", str(BUDGET), "--child", ",".join(f"{n}:{f}" for n, f in pairs)]
    timeout = ROW_TIMEOUT_S * len(pairs)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        stdout, failure = p.stdout, {"error": f"exit status {p.returncode}, no result",
                                     "stderr_tail": p.stderr[-1500:]}
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        failure = {"error": f"timed out (at most {ROW_TIMEOUT_S} s a row)"}
    rows = []
    for line in stdout.splitlines():
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    rows = rows[: len(pairs)]
    if len(rows) < len(pairs):
        name, framework = pairs[len(rows)]
        rows.append({"workload": name, "framework": FRAMEWORK_NAMES[framework], **failure})
    return rows


def run_isolated(pairs):
    """Runs the pairs in child processes, one after the other; after a crash the pairs
    left run in a new process, so a crash costs one row only."""
    while pairs:
        rows = run_child(pairs)
        for row in rows:
            emit(row)
        pairs = pairs[len(rows):]


def main():
    if ARGS.child:
        child(ARGS.child)
        return
    frameworks = [f.strip() for f in ARGS.frameworks.split(",") if f.strip()]
    for f in frameworks:
        if f not in FRAMEWORKS:
            sys.exit(f"unknown framework {f!r}; choose from {','.join(FRAMEWORKS)}")
    prefixes = [p.strip() for p in ARGS.only.split(",") if p.strip()]
    names = [n for n in WORKLOADS if not prefixes or any(n.startswith(p) for p in prefixes)]
    started = time.perf_counter()
    emit(machine_info())
    for framework in frameworks:
        if framework != "torch_compile":
            # one process for all of a framework's rows (torch.compile's excepted)
            run_isolated([(name, framework) for name in names])
            continue
        for name in names:
            if ARGS.quick and name not in QUICK_COMPILED and not prefixes:
                emit({"workload": name, "framework": FRAMEWORK_NAMES[framework],
                      "skipped": "--quick compiles only " + ",".join(QUICK_COMPILED)
                      + " with torch.compile (a cold compile takes 10-30 s on 2 cores); "
                      "name the workload with --only to include it"})
            else:
                run_isolated([(name, framework)])  # a process each: a cold compile
    emit({"done": True, "total_s": round(time.perf_counter() - started, 1),
          "loadavg": list(os.getloadavg())})


if __name__ == "__main__":
    main()
