//! `function`: tf.function for Rust closures.
//!
//! `function(closure)` returns a [`Function`]. Its `call` traces the closure once per
//! input signature (dtypes + shapes) into a [`Graph`], optimizes and plans it into a
//! [`ConcreteFunction`], caches it, and runs it. Later calls with the same signature
//! only run the cached plan: side effects in the closure (printing, pushing to a Vec)
//! happen at trace time only, as in TensorFlow. A call with a new signature retraces and
//! records which argument changed ([`Function::retrace_reasons`]).
//!
//! The cache:
//! - holds at most [`DEFAULT_CACHE_SIZE`] concrete functions (or the size given to
//!   [`Function::cache_size`]); beyond that the least recently used one is dropped (and
//!   traced again if its signature comes back);
//! - warns through the `log` crate when calls retrace often: when
//!   [`RETRACE_WARN_COUNT`] of the last [`RETRACE_WARN_WINDOW`] calls traced, as
//!   TensorFlow does, naming what changed (pass shapes that do not vary, or pad);
//! - is never locked while a closure is traced: calls with compiled signatures run
//!   while another thread traces a new one (a second call with the signature being
//!   traced waits for that trace instead of tracing it twice);
//! - survives a closure that panics while being traced: the panic reaches the caller,
//!   and the function stays usable (nothing is cached for that signature).

use super::context;
use super::program::Program;
use super::signature::{self, Signature, TensorSpec};
use crate::error::{Error, Result};
use crate::exec::Plan;
use crate::ir::Graph;
use crate::passes::{PassConfig, PassStat};
use crate::tensor::dtype::same_shape;
use crate::tensor::{type_str, Shape, Tensor};
use smallvec::SmallVec;
use std::marker::PhantomData;
use std::panic::Location;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// How many concrete functions a [`Function`] keeps by default (least recently used
/// ones are dropped first).
pub const DEFAULT_CACHE_SIZE: usize = 64;

/// The window of recent calls in which frequent retracing is detected.
pub const RETRACE_WARN_WINDOW: usize = 10;
// the window is kept as the low bits of a `u32` (`State::recent`)
const _: () = assert!(RETRACE_WARN_WINDOW <= 32);

/// A warning is logged when this many of the last [`RETRACE_WARN_WINDOW`] calls retraced.
pub const RETRACE_WARN_COUNT: usize = 5;

/// What a traced closure may return: one tensor, a tuple of tensors, a `Vec`, or `()`.
pub trait Outputs: Sized {
    /// The tensors, in order.
    fn flatten(self) -> Vec<Tensor>;
    /// Rebuilds the value from tensors in the same order.
    fn unflatten(v: Vec<Tensor>) -> Self;
    /// [`Outputs::unflatten`] from the small vector a compiled call returns its results
    /// in; by default through a `Vec`. The types made of a few tensors take them
    /// straight from it, so their calls allocate no list.
    fn unflatten_results(v: Results) -> Self {
        Self::unflatten(v.into_vec())
    }
}

/// The results of a compiled call, in order: inline up to four.
pub type Results = SmallVec<[Tensor; 4]>;

impl Outputs for Tensor {
    fn flatten(self) -> Vec<Tensor> {
        vec![self]
    }
    fn unflatten(mut v: Vec<Tensor>) -> Self {
        v.remove(0)
    }
    fn unflatten_results(v: Results) -> Self {
        v.into_iter()
            .next()
            .expect("a function returning a tensor has a result")
    }
}

impl Outputs for () {
    fn flatten(self) -> Vec<Tensor> {
        Vec::new()
    }
    fn unflatten(_: Vec<Tensor>) -> Self {}
    fn unflatten_results(_: Results) -> Self {}
}

impl Outputs for Vec<Tensor> {
    fn flatten(self) -> Vec<Tensor> {
        self
    }
    fn unflatten(v: Vec<Tensor>) -> Self {
        v
    }
}

impl Outputs for (Tensor, Tensor) {
    fn flatten(self) -> Vec<Tensor> {
        vec![self.0, self.1]
    }
    fn unflatten(v: Vec<Tensor>) -> Self {
        pair(v)
    }
    fn unflatten_results(v: Results) -> Self {
        pair(v)
    }
}

fn pair(v: impl IntoIterator<Item = Tensor>) -> (Tensor, Tensor) {
    let mut it = v.into_iter();
    (it.next().expect("2 outputs"), it.next().expect("2 outputs"))
}

impl Outputs for (Tensor, Tensor, Tensor) {
    fn flatten(self) -> Vec<Tensor> {
        vec![self.0, self.1, self.2]
    }
    fn unflatten(v: Vec<Tensor>) -> Self {
        triple(v)
    }
    fn unflatten_results(v: Results) -> Self {
        triple(v)
    }
}

fn triple(v: impl IntoIterator<Item = Tensor>) -> (Tensor, Tensor, Tensor) {
    let mut it = v.into_iter();
    (
        it.next().expect("3 outputs"),
        it.next().expect("3 outputs"),
        it.next().expect("3 outputs"),
    )
}

/// A closure that `function` can trace, for each arity `A = (Tensor, ...)`.
pub trait Traceable<A> {
    /// What the closure returns on success.
    type Out: Outputs;
    /// Number of tensor arguments (`usize::MAX` for a closure over a slice: any number).
    const ARITY: usize;
    /// Calls the closure with `args.len() == ARITY` tensors.
    fn invoke(&self, args: &[Tensor]) -> Result<Self::Out>;
}

macro_rules! traceable {
    ($n:expr; $($i:tt),*) => {
        impl<F, O> Traceable<($(traceable!(@t $i),)*)> for F
        where
            F: Fn($(traceable!(@r $i)),*) -> Result<O>,
            O: Outputs,
        {
            type Out = O;
            const ARITY: usize = $n;
            #[allow(unused_variables)]
            fn invoke(&self, args: &[Tensor]) -> Result<O> {
                self($(&args[$i]),*)
            }
        }
    };
    (@t $i:tt) => { Tensor };
    (@r $i:tt) => { &Tensor };
}

impl<F, O> Traceable<Vec<Tensor>> for F
where
    F: Fn(&[Tensor]) -> Result<O>,
    O: Outputs,
{
    type Out = O;
    const ARITY: usize = usize::MAX;
    fn invoke(&self, args: &[Tensor]) -> Result<O> {
        self(args)
    }
}

traceable!(0;);
traceable!(1; 0);
traceable!(2; 0, 1);
traceable!(3; 0, 1, 2);
traceable!(4; 0, 1, 2, 3);

/// One traced, optimized and planned graph for one input signature.
///
/// When the signature has symbolic dimensions (`f32[b,784]`), the graph is traced,
/// differentiated and optimized once on symbols; each binding of the symbols a call
/// brings (each batch size) gets its own *instance*: the traced graph with the symbols
/// bound ([`crate::passes::specialize`]), optimized and planned, made on the first call
/// with that binding and kept (the [`DEFAULT_INSTANCES`](super::DEFAULT_INSTANCES) most recently used), so
/// steady-state calls of every batch size allocate nothing.
///
/// [`ConcreteFunction::export`] writes it to a directory that
/// [`load_function`](crate::load_function) runs without the closure.
pub struct ConcreteFunction {
    signature: Signature,
    /// Compiled unoptimized for numerics checks ([`crate::debugging`]).
    checked: bool,
    traced: Graph,
    program: Program,
    pass_stats: Vec<PassStat>,
    compile_time: std::time::Duration,
}

impl ConcreteFunction {
    /// The input signature (with symbolic dimensions where it has them).
    pub fn signature(&self) -> &Signature {
        &self.signature
    }
    /// Whether the signature has symbolic dimensions (one graph serves many shapes).
    pub fn is_symbolic(&self) -> bool {
        self.program.is_symbolic()
    }
    /// The graph as traced (forward and backward, before optimization).
    pub fn traced_graph(&self) -> &Graph {
        &self.traced
    }
    /// The optimized graph: the one that runs, or for a symbolic signature the
    /// optimized symbolic graph that each binding specializes.
    pub fn graph(&self) -> &Graph {
        self.program.graph()
    }
    /// Canonical text IR of the optimized graph.
    pub fn text(&self) -> String {
        crate::ir::print(self.graph(), false)
    }
    /// Graphviz DOT of the optimized graph.
    pub fn dot(&self) -> String {
        crate::ir::to_dot(self.graph())
    }
    /// One line per pass: name, nodes before → after, time.
    pub fn pass_stats(&self) -> &[PassStat] {
        &self.pass_stats
    }
    /// The execution plan (order, buffer reuse, peak memory); for a symbolic signature,
    /// the plan of the most recently used binding ([`ConcreteFunction::plan_for`] picks one).
    ///
    /// # Panics
    /// For a symbolic signature that no call has bound yet.
    pub fn plan(&self) -> Arc<Plan> {
        self.program.last_plan().expect(
            "ConcreteFunction::plan: no call has bound the symbolic signature yet; use plan_for",
        )
    }
    /// The plan that runs these arguments (for a symbolic signature: the instance of their
    /// binding, made now if it is new).
    #[track_caller]
    pub fn plan_for(&self, args: &[&Tensor]) -> Result<Arc<Plan>> {
        let types: Signature = args
            .iter()
            .map(|a| (a.dtype(), Shape::from_slice(a.shape())))
            .collect();
        self.program
            .plan_for_types(&self.signature, &self.traced, &types, Location::caller())
    }
    /// How many bindings (batch sizes) of a symbolic signature have a compiled instance
    /// now (1 for a concrete signature).
    pub fn instance_count(&self) -> usize {
        self.program.instance_count()
    }
    /// Time spent tracing, differentiating, optimizing and planning (for a symbolic
    /// signature: optimizing the symbolic graph; each binding adds
    /// [`ConcreteFunction::instance_compile_times`]).
    pub fn compile_time(&self) -> std::time::Duration {
        self.compile_time
    }
    /// For a symbolic signature, the binding (`b=32`) and compile time of each instance,
    /// least recently used first.
    pub fn instance_compile_times(&self) -> Vec<(String, std::time::Duration)> {
        self.program.instance_compile_times()
    }
    /// Runs on concrete arguments; updates variables assigned by the graph. The results
    /// record the caller's line as their source location.
    #[track_caller]
    pub fn run(&self, args: &[Tensor]) -> Result<Vec<Tensor>> {
        let args: SmallVec<[&Tensor; 4]> = args.iter().collect();
        Ok(self.run_refs(&args, Location::caller())?.into_vec())
    }

    /// [`ConcreteFunction::run`] on borrowed arguments, recording `loc` in the results.
    fn run_refs(&self, args: &[&Tensor], loc: &'static Location<'static>) -> Result<Results> {
        self.program.run(&self.signature, &self.traced, args, loc)
    }

    /// Writes the function to the directory `dir` (`tf.saved_model.save`,
    /// `jax.export`): the optimized graph as canonical text IR, the current values of its
    /// variables as safetensors, its signature (symbolic dimensions by name) and a
    /// versioned manifest; for a symbolic signature also the traced graph that each
    /// batch size specializes. [`load_function`](crate::load_function) runs it in any
    /// process without the closure. The directory appears whole or not at all (written
    /// to a temporary directory, then renamed); an earlier export there is replaced.
    /// See [`crate::trace::LoadedFunction`] for the files.
    ///
    /// ```
    /// use tapeflow::trace::TensorSpec;
    /// use tapeflow::{function_with_signature, load_function, DType, Tensor};
    /// let f = function_with_signature(
    ///     |x: &Tensor| Ok(x.sum(&[1], false)),
    ///     &[TensorSpec::new(&[None, Some(2)], DType::F32)],
    /// );
    /// let dir = std::env::temp_dir().join(format!("tapeflow-doc-export-sym-{}", std::process::id()));
    /// f.concrete(&[&Tensor::ones(&[1, 2])])?.export(&dir)?;
    /// let g = load_function(&dir)?;
    /// for n in [1, 5] {
    ///     assert_eq!(g.call(&[Tensor::ones(&[n, 2])])?[0].shape(), [n]);
    /// }
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), tapeflow::Error>(())
    /// ```
    ///
    /// # Errors
    /// A variable without a live value or whose name cannot be a safetensors key, a
    /// graph whose text does not read back (a variable name with brackets or line
    /// breaks), a target that exists and is neither empty nor an earlier export, or an
    /// I/O failure.
    pub fn export(&self, dir: impl AsRef<std::path::Path>) -> Result<()> {
        super::export::write(self, dir.as_ref())
    }

    /// The pieces an export writes: signature, traced graph, program.
    pub(super) fn parts(&self) -> (&Signature, &Graph, &Program) {
        (&self.signature, &self.traced, &self.program)
    }
}

struct Entry {
    function: Arc<ConcreteFunction>,
    /// The value of `State::clock` when it was last used (for LRU eviction).
    last_used: u64,
}

struct State {
    cache: Vec<Entry>,
    capacity: usize,
    /// Signatures (and whether for numerics checks) some thread is tracing right now.
    tracing: Vec<(Signature, bool)>,
    clock: u64,
    /// The signature of the previous call (what a retrace reason compares with).
    last: Option<Signature>,
    /// The function the previous call ran, when it found one cached (with its types in
    /// `last`): a call with the same types runs it again without matching the cache.
    last_hit: Option<Arc<ConcreteFunction>>,
    traces: usize,
    reasons: Vec<String>,
    /// Whether each of the last `RETRACE_WARN_WINDOW` calls retraced (bit 0: the
    /// latest), of the `window` calls recorded since the last warning (at most the
    /// window): two integer updates a call.
    recent: u32,
    window: usize,
    /// The (argument, axis) positions the last generalization made symbolic.
    varying: Vec<(usize, usize)>,
    /// A generalized trace failed: trace concrete shapes from now on.
    generalize_failed: bool,
}

/// A traced function; see [`function`].
///
/// # Threads
/// A `Function` can be called from many threads at once (it is `Sync` when the closure
/// is). Calls with compiled signatures never wait for a trace in progress; two calls
/// with one new signature trace it once. Variable updates of concurrent calls are never
/// lost: see [`crate::Variable`]'s concurrency notes.
pub struct Function<A, F> {
    f: F,
    config: PassConfig,
    /// The declared signature ([`function_with_signature`]).
    input_signature: Option<Signature>,
    /// Generalize dimensions that change between calls (TensorFlow's `reduce_retracing`).
    reduce_retracing: bool,
    state: Mutex<State>,
    /// Signalled when a trace ends (successfully or not).
    traced: Condvar,
    _args: PhantomData<fn(A)>,
}

/// Removes a signature from `State::tracing` when its trace ends, also by a panic.
struct TracingGuard<'a> {
    state: &'a Mutex<State>,
    traced: &'a Condvar,
    key: &'a (Signature, bool),
}

impl Drop for TracingGuard<'_> {
    fn drop(&mut self) {
        let mut st = lock(self.state);
        st.tracing.retain(|k| k != self.key);
        self.traced.notify_all();
    }
}

/// Locks the state. The state is never left half-updated (no closure runs while it is
/// locked), so a poisoned lock is still consistent.
fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Wraps a closure as a traced function (`tf.function`). The closure takes `&Tensor`
/// arguments and returns `Result<O>` where `O` is a tensor, a tuple of tensors, a `Vec`
/// of tensors or `()`.
///
/// ```
/// use tapeflow::{function, Tensor, Variable};
/// let w = Variable::named("w", Tensor::scalar(2.0));
/// let w2 = w.clone();
/// let f = function(move |x: &Tensor| Ok(x * &w2.read()));
/// let y = f.call(&Tensor::vec(&[1.0f32, 3.0])).unwrap();
/// assert_eq!(y.to_vec_f32().unwrap(), vec![2.0, 6.0]);
/// assert_eq!(f.trace_count(), 1);
/// ```
pub fn function<A, F: Traceable<A>>(f: F) -> Function<A, F> {
    function_with(f, PassConfig::tuned())
}

/// [`function`] with a chosen optimization pipeline (e.g. with a pass turned off).
pub fn function_with<A, F: Traceable<A>>(f: F, config: PassConfig) -> Function<A, F> {
    Function {
        f,
        config,
        state: Mutex::new(State {
            cache: Vec::new(),
            capacity: DEFAULT_CACHE_SIZE,
            tracing: Vec::new(),
            clock: 0,
            last: None,
            last_hit: None,
            traces: 0,
            reasons: Vec::new(),
            recent: 0,
            window: 0,
            varying: Vec::new(),
            generalize_failed: false,
        }),
        input_signature: None,
        reduce_retracing: true,
        traced: Condvar::new(),
        _args: PhantomData,
    }
}

/// [`function`] with a declared input signature (`tf.function(input_signature=...)`):
/// one trace serves every call that fits it. `None` dimensions (and [`Dim::sym`]
/// symbols, which arguments can share) are symbolic: the graph is traced,
/// differentiated and optimized once on symbols, and each batch size gets the graph
/// specialized to it on its first call. A call that does not fit is an `Err` naming the
/// argument and the dimension.
///
/// ```
/// use tapeflow::trace::TensorSpec;
/// use tapeflow::{function_with_signature, DType, Tensor};
/// let f = function_with_signature(
///     |x: &Tensor| Ok(x.sum(&[1], false) / 2.0),
///     &[TensorSpec::new(&[None, Some(2)], DType::F32)],
/// );
/// for n in [1, 7, 32] {
///     let y = f.call(&Tensor::ones(&[n, 2])).unwrap();
///     assert_eq!(y.shape(), [n]);
/// }
/// assert_eq!(f.trace_count(), 1);
/// assert!(f.call(&Tensor::ones(&[3, 5])).is_err()); // dimension 1 is 5, not 2
/// ```
///
/// [`Dim::sym`]: crate::tensor::Dim::sym
pub fn function_with_signature<A, F: Traceable<A>>(f: F, specs: &[TensorSpec]) -> Function<A, F> {
    function(f).input_signature(specs)
}

impl<A, F: Traceable<A>> Function<A, F> {
    /// Declares the input signature (see [`function_with_signature`]); drops what was
    /// traced before.
    pub fn input_signature(mut self, specs: &[TensorSpec]) -> Self {
        self.input_signature = Some(signature::resolve(specs));
        let mut st = lock(&self.state);
        st.cache.clear();
        st.last_hit = None;
        drop(st);
        self
    }

    /// Whether a call whose shapes differ from the previous call's only in some lengths
    /// retraces once with those lengths symbolic and reuses that graph for every later
    /// such call (TensorFlow's `reduce_retracing`; on by default). Off, every new shape
    /// is traced for its concrete lengths.
    ///
    /// ```
    /// use tapeflow::{function, Tensor};
    /// let f = function(|x: &Tensor| Ok(x * 2.0));
    /// for n in [4, 3, 2, 1] {
    ///     f.call(&Tensor::zeros(&[n])).unwrap();
    /// }
    /// assert_eq!(f.trace_count(), 2); // f32[4], then f32[b] for all others
    /// assert!(f.retrace_reasons()[0].contains("argument 0 dimension 0 changed 4 → 3: generalized to symbol b"));
    /// let g = function(|x: &Tensor| Ok(x * 2.0)).reduce_retracing(false);
    /// for n in [4, 3, 2, 1] {
    ///     g.call(&Tensor::zeros(&[n])).unwrap();
    /// }
    /// assert_eq!(g.trace_count(), 4);
    /// ```
    pub fn reduce_retracing(mut self, on: bool) -> Self {
        self.reduce_retracing = on;
        self
    }

    /// Keeps at most `n` concrete functions (at least 1; default [`DEFAULT_CACHE_SIZE`]),
    /// dropping the least recently used ones first.
    ///
    /// ```
    /// use tapeflow::{function, Tensor};
    /// let f = function(|x: &Tensor| Ok(x * 2.0))
    ///     .reduce_retracing(false) // one concrete trace per shape
    ///     .cache_size(2);
    /// for n in 1..=5 {
    ///     f.call(&Tensor::zeros(&[n])).unwrap();
    /// }
    /// assert_eq!((f.trace_count(), f.cached_count()), (5, 2));
    /// ```
    pub fn cache_size(self, n: usize) -> Self {
        {
            let mut st = lock(&self.state);
            st.capacity = n.max(1);
            evict(&mut st);
        }
        self
    }

    /// How many concrete functions are cached now.
    pub fn cached_count(&self) -> usize {
        lock(&self.state).cache.len()
    }

    /// How many times the closure has been traced (successfully).
    pub fn trace_count(&self) -> usize {
        lock(&self.state).traces
    }

    /// Why each retrace happened (one line per retrace after the first trace).
    pub fn retrace_reasons(&self) -> Vec<String> {
        lock(&self.state).reasons.clone()
    }

    /// The concrete function for these arguments, tracing it if needed (does not run it).
    #[track_caller]
    pub fn concrete(&self, args: &[&Tensor]) -> Result<Arc<ConcreteFunction>> {
        let loc = Location::caller();
        if F::ARITY != usize::MAX && args.len() != F::ARITY {
            return Err(Error::Function(format!(
                "expects {} arguments, got {} (at {loc})",
                F::ARITY,
                args.len()
            )));
        }
        let checked = crate::debugging::check_numerics_enabled();
        {
            // the common cases allocate nothing: the types of the previous call (for a
            // symbolic trace too, without binding its signature again), or those of a
            // cached concrete trace
            let mut st = lock(&self.state);
            let repeat = st.last.as_ref().is_some_and(|l| same_types(l, args));
            let previous = st
                .last_hit
                .as_ref()
                .filter(|c| repeat && c.checked == checked);
            let hit = match previous {
                Some(c) => (st.cache.iter()).position(|e| Arc::ptr_eq(&e.function, c)),
                None if self.input_signature.is_none() => (st.cache.iter()).position(|e| {
                    e.function.checked == checked && same_types(&e.function.signature, args)
                }),
                None => None,
            };
            if let Some(i) = hit {
                st.clock += 1;
                let now = st.clock;
                st.cache[i].last_used = now;
                let c = st.cache[i].function.clone();
                if !repeat {
                    st.last = Some(st.cache[i].function.signature.clone());
                }
                if !st.last_hit.as_ref().is_some_and(|l| Arc::ptr_eq(l, &c)) {
                    st.last_hit = Some(c.clone());
                }
                record_call(&mut st, false, None);
                return Ok(c);
            }
        }
        let sig: Signature = args
            .iter()
            .map(|a| (a.dtype(), Shape::from_slice(a.shape())))
            .collect();
        if let Some(declared) = &self.input_signature {
            signature::bind(declared, &sig).map_err(|e| {
                Error::Function(format!(
                    "the call does not fit the input signature: {e} (at {loc})"
                ))
            })?;
        }
        let mut st = lock(&self.state);
        let (key, general) = loop {
            st.clock += 1;
            let now = st.clock;
            if let Some(e) = find(&mut st.cache, &sig, checked) {
                e.last_used = now;
                let c = e.function.clone();
                st.last = Some(sig);
                st.last_hit = Some(c.clone());
                record_call(&mut st, false, None);
                return Ok(c);
            }
            // what to trace: the declared signature, a generalization of the last call's
            // (reduce_retracing), or these concrete types
            let general = match &self.input_signature {
                Some(declared) => Some((declared.clone(), Vec::new(), Vec::new())),
                None if self.reduce_retracing && !st.generalize_failed && st.traces > 0 => st
                    .last
                    .as_ref()
                    .and_then(|last| signature::generalize(last, &sig, &st.varying)),
                None => None,
            };
            let key = (
                general
                    .as_ref()
                    .map_or_else(|| sig.clone(), |g| g.0.clone()),
                checked,
            );
            if !st.tracing.contains(&key) {
                break (key, general);
            }
            // another thread is tracing this signature: wait for its result
            st = self.traced.wait(st).unwrap_or_else(|e| e.into_inner());
        };
        // (argument, old type, new type) of each argument that changed since the last call
        let changed: Option<Vec<(usize, String, String)>> =
            st.last.as_ref().filter(|_| st.traces > 0).map(|last| {
                last.iter()
                    .zip(&sig)
                    .enumerate()
                    .filter(|(_, (a, b))| a != b)
                    .map(|(i, (a, b))| (i, type_str(a.0, &a.1), type_str(b.0, &b.1)))
                    .collect()
            });
        st.tracing.push(key.clone());
        st.last = Some(sig.clone());
        st.last_hit = None;
        drop(st);
        // The guard takes the signature off `tracing` (and wakes waiters) when it drops:
        // after the entry is cached, or on an error or a panic.
        let _tracing = TracingGuard {
            state: &self.state,
            traced: &self.traced,
            key: &key,
        };
        let mut words: Vec<String> = Vec::new();
        let c = match &general {
            Some((g, _, why)) if self.input_signature.is_none() => {
                // a closure that cannot run on symbols (it reads a symbolic length as a
                // number, or an op needs a concrete one) is traced for these shapes
                let traced = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.trace(g.clone(), checked, loc)
                }));
                match traced {
                    Ok(Ok(c)) => {
                        words.extend(why.iter().cloned());
                        c
                    }
                    failed => {
                        let why = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => "the closure panicked".to_string(),
                        };
                        lock(&self.state).generalize_failed = true;
                        words.push(format!(
                            "could not generalize to {} ({why}); traced for these shapes",
                            g.iter()
                                .map(|(d, s)| type_str(*d, s))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                        self.trace(sig.clone(), checked, loc)?
                    }
                }
            }
            _ => self.trace(key.0.clone(), checked, loc)?,
        };
        let c = Arc::new(c);
        let mut st = lock(&self.state);
        if c.is_symbolic() {
            if let Some((_, positions, _)) = &general {
                st.varying = positions.clone();
            }
        }
        st.traces += 1;
        st.clock += 1;
        let now = st.clock;
        st.cache.push(Entry {
            function: c.clone(),
            last_used: now,
        });
        evict(&mut st);
        let what = changed.map(|changed| {
            // the reason says "from .. to ..", the warning "→" (its message is shorter)
            let (reason, warning) = if words.is_empty() && changed.is_empty() {
                let on = if checked { "on" } else { "off" };
                let w = format!("numerics checks are {on}");
                (w.clone(), w)
            } else if words.is_empty() {
                let say = |arrow: bool| {
                    changed
                        .iter()
                        .map(|(i, a, b)| match arrow {
                            true => format!("argument {i} changed {a} → {b}"),
                            false => format!("argument {i} changed from {a} to {b}"),
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                (say(false), say(true))
            } else {
                (words.join("; "), words.join("; "))
            };
            st.reasons.push(format!("retrace at {loc}: {reason}"));
            format!("{warning} (at {loc})")
        });
        record_call(&mut st, what.is_some(), what);
        drop(st);
        Ok(c)
    }

    fn trace(
        &self,
        sig: Signature,
        checked: bool,
        loc: &'static Location<'static>,
    ) -> Result<ConcreteFunction> {
        let start = std::time::Instant::now();
        let (graph, res) = context::with_graph(Graph::new(), |_| -> Result<()> {
            let args: Vec<Tensor> = sig
                .iter()
                .enumerate()
                .map(|(i, (d, s))| context::add_input(i, *d, s, loc))
                .collect();
            let out = self.f.invoke(&args)?;
            for t in out.flatten() {
                context::add_output(&t)?;
            }
            Ok(())
        });
        res??;
        crate::ir::verify(&graph)?;
        // numerics checks run every traced op as its own step, so a report names it
        let config = if checked {
            PassConfig::unoptimized()
        } else {
            self.config.clone()
        };
        let (optimized, pass_stats) = crate::passes::run_pipeline(&graph, &config)?;
        let program = Program::new(optimized, config, signature::is_symbolic(&sig))?;
        Ok(ConcreteFunction {
            signature: sig,
            checked,
            traced: graph,
            program,
            pass_stats,
            compile_time: start.elapsed(),
        })
    }

    /// Traces (if needed) and runs on a slice of arguments.
    #[track_caller]
    pub fn call_slice(&self, args: &[&Tensor]) -> Result<F::Out> {
        if context::is_tracing() {
            // called from inside another trace: inline the closure into that graph
            let owned: Vec<Tensor> = args.iter().map(|&t| t.clone()).collect();
            return self.f.invoke(&owned);
        }
        let c = self.concrete(args)?;
        Ok(F::Out::unflatten_results(
            c.run_refs(args, Location::caller())?,
        ))
    }
}

/// Whether `args` have exactly the types of `sig`.
fn same_types(sig: &Signature, args: &[&Tensor]) -> bool {
    sig.len() == args.len()
        && (sig.iter().zip(args)).all(|((d, s), a)| *d == a.dtype() && same_shape(s, a.shape()))
}

/// The cached entry for these concrete types: one traced for exactly them, else a
/// symbolic one they bind.
fn find<'a>(cache: &'a mut [Entry], sig: &Signature, checked: bool) -> Option<&'a mut Entry> {
    let i = cache
        .iter()
        .position(|e| e.function.signature == *sig && e.function.checked == checked)
        .or_else(|| {
            cache.iter().position(|e| {
                e.function.checked == checked
                    && e.function.is_symbolic()
                    && signature::bind(&e.function.signature, sig).is_ok()
            })
        })?;
    Some(&mut cache[i])
}

/// Drops least recently used entries beyond the capacity.
fn evict(st: &mut State) {
    while st.cache.len() > st.capacity {
        let oldest = st
            .cache
            .iter()
            .enumerate()
            .min_by_key(|(_, e)| e.last_used)
            .map(|(i, _)| i)
            .expect("cache is not empty");
        let gone = st.cache.remove(oldest);
        // the previous call's function no longer stays alive for the repeat check
        if st
            .last_hit
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, &gone.function))
        {
            st.last_hit = None;
        }
    }
}

/// Records whether a call retraced and logs a warning when retraces are frequent
/// (`what`: the argument changes of this retrace and where it was called).
fn record_call(st: &mut State, retraced: bool, what: Option<String>) {
    st.recent = (st.recent << 1 | retraced as u32) & ((1 << RETRACE_WARN_WINDOW) - 1);
    st.window = (st.window + 1).min(RETRACE_WARN_WINDOW);
    if !retraced {
        return;
    }
    let n = st.recent.count_ones() as usize;
    if n >= RETRACE_WARN_COUNT {
        log::warn!(
            "{n} of the last {} calls retraced: {}; tracing is expensive: declare the \
             lengths that vary as symbols (function_with_signature), keep reduce_retracing \
             on, or pass tensors of fixed shapes",
            st.window,
            what.unwrap_or_default()
        );
        // one warning per window of frequent retracing
        (st.recent, st.window) = (0, 0);
    }
}

macro_rules! call_impl {
    ($($a:ident),*) => {
        impl<F: Traceable<($(call_impl!(@t $a),)*)>> Function<($(call_impl!(@t $a),)*), F> {
            /// Traces on the first call for this input signature, then runs the compiled graph.
            #[track_caller]
            #[allow(clippy::too_many_arguments)]
            pub fn call(&self, $($a: &Tensor),*) -> Result<F::Out> {
                self.call_slice(&[$($a),*])
            }
        }
    };
    (@t $a:ident) => { Tensor };
}

call_impl!();
call_impl!(a);
call_impl!(a, b);
call_impl!(a, b, c);
call_impl!(a, b, c, d);
