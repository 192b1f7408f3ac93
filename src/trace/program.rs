//! What runs a traced graph: one plan for a concrete signature, or for a symbolic one the
//! optimized symbolic graph and a cache of per-binding instances. Shared by
//! [`ConcreteFunction`](super::ConcreteFunction) and
//! [`LoadedFunction`](super::LoadedFunction), so an exported function specializes each
//! batch size exactly as the function it was exported from.

use super::function::Results;
use super::signature::{self, Signature};
use crate::error::{Error, Result};
use crate::exec::{Plan, RunStats};
use crate::ir::Graph;
use crate::passes::PassConfig;
use crate::tensor::{Data, Tensor};
use smallvec::SmallVec;
use std::panic::Location;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How many bound instances (batch sizes) a symbolic concrete function keeps.
pub const DEFAULT_INSTANCES: usize = 16;

/// The compiled form of a graph for one signature.
pub(crate) enum Program {
    /// A concrete signature: the optimized graph's plan.
    Concrete(Arc<Plan>),
    /// A symbolic signature: one instance per binding of its symbols.
    Symbolic(Box<Symbolic>),
}

pub(crate) struct Symbolic {
    /// The optimized symbolic graph (what `text` shows).
    optimized: Graph,
    /// The pipeline each instance runs.
    config: PassConfig,
    instances: Mutex<Instances>,
}

/// One bound instance: the binding (symbol id, value), its plan, its compile time.
type Instance = (Vec<(u32, usize)>, Arc<Plan>, Duration);

#[derive(Default)]
struct Instances {
    /// Most recently used last.
    list: Vec<Instance>,
    /// The argument types of the latest call that found or made an instance, and that
    /// instance's plan: a call with the same types runs it without binding the
    /// signature again (see [`Program::run`]).
    last: Option<(Signature, Arc<Plan>)>,
}

/// Locks a mutex whose data stays consistent even if a holder panicked.
pub(crate) fn lock_any<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Symbolic {
    /// The plan of the latest call's instance if `datas` have that call's types (a
    /// binding is a function of the types, so theirs is the same).
    fn repeat(&self, datas: &[&Data]) -> Option<Arc<Plan>> {
        let inst = lock_any(&self.instances);
        let (types, plan) = inst.last.as_ref()?;
        let same = types.len() == datas.len()
            && (types.iter().zip(datas)).all(|((d, s), x)| *d == x.dtype() && s[..] == *x.dims());
        same.then(|| plan.clone())
    }
}

impl Program {
    /// The program of an optimized graph: its plan when `symbolic` is false, else an empty
    /// instance cache whose instances run `config`.
    pub(crate) fn new(optimized: Graph, config: PassConfig, symbolic: bool) -> Result<Program> {
        Ok(if symbolic {
            Program::Symbolic(Box::new(Symbolic {
                optimized,
                config,
                instances: Mutex::new(Instances::default()),
            }))
        } else {
            Program::Concrete(Arc::new(Plan::new(optimized)?))
        })
    }

    /// Whether one graph serves many shapes.
    pub(crate) fn is_symbolic(&self) -> bool {
        matches!(self, Program::Symbolic(_))
    }

    /// The optimized graph (symbolic for a symbolic program).
    pub(crate) fn graph(&self) -> &Graph {
        match self {
            Program::Concrete(p) => p.graph(),
            Program::Symbolic(s) => &s.optimized,
        }
    }

    /// The pipeline each instance runs (`None` for a concrete program).
    pub(crate) fn config(&self) -> Option<&PassConfig> {
        match self {
            Program::Concrete(_) => None,
            Program::Symbolic(s) => Some(&s.config),
        }
    }

    /// The plan (for a symbolic program, that of the most recently used binding).
    pub(crate) fn last_plan(&self) -> Option<Arc<Plan>> {
        match self {
            Program::Concrete(p) => Some(p.clone()),
            Program::Symbolic(s) => lock_any(&s.instances)
                .list
                .last()
                .map(|(_, p, _)| p.clone()),
        }
    }

    /// How many bindings have an instance now (1 for a concrete program).
    pub(crate) fn instance_count(&self) -> usize {
        match self {
            Program::Concrete(_) => 1,
            Program::Symbolic(s) => lock_any(&s.instances).list.len(),
        }
    }

    /// Binding (`b=32`) and compile time of each instance, least recently used first.
    pub(crate) fn instance_compile_times(&self) -> Vec<(String, Duration)> {
        match self {
            Program::Concrete(_) => Vec::new(),
            Program::Symbolic(s) => lock_any(&s.instances)
                .list
                .iter()
                .map(|(b, _, t)| (crate::passes::show_bindings(b), *t))
                .collect(),
        }
    }

    /// The plan that runs arguments of these types. For a symbolic program: the instance
    /// of their binding of `signature`'s symbols, made now from `source` (the traced graph)
    /// if it is new: specialized ([`crate::passes::specialize`]), optimized and planned.
    pub(crate) fn plan_for_types(
        &self,
        signature: &Signature,
        source: &Graph,
        types: &Signature,
        loc: &'static Location<'static>,
    ) -> Result<Arc<Plan>> {
        let sym = match self {
            Program::Concrete(p) => return Ok(p.clone()),
            Program::Symbolic(s) => s,
        };
        let (config, instances) = (&sym.config, &sym.instances);
        let binding = signature::bind(signature, types)
            .map_err(|e| Error::Function(format!("{e} (at {loc})")))?;
        {
            let mut inst = lock_any(instances);
            if let Some(i) = inst.list.iter().position(|(b, _, _)| *b == binding) {
                let e = inst.list.remove(i);
                let plan = e.1.clone();
                inst.list.push(e);
                inst.last = Some((types.clone(), plan.clone()));
                return Ok(plan);
            }
        }
        // compiled outside the lock: other bindings keep running meanwhile
        let start = Instant::now();
        let g = crate::passes::specialize(source, &binding)?;
        let (optimized, _) = crate::passes::run_pipeline(&g, config)?;
        let plan = Arc::new(Plan::new(optimized)?);
        let took = start.elapsed();
        let mut inst = lock_any(instances);
        if let Some((_, p, _)) = inst.list.iter().find(|(b, _, _)| *b == binding) {
            return Ok(p.clone()); // another thread made it first
        }
        inst.list.push((binding, plan.clone(), took));
        if inst.list.len() > DEFAULT_INSTANCES {
            inst.list.remove(0);
        }
        inst.last = Some((types.clone(), plan.clone()));
        Ok(plan)
    }

    /// Runs on concrete arguments (see [`Program::plan_for_types`]); the results record
    /// `loc` as their source location.
    pub(crate) fn run(
        &self,
        signature: &Signature,
        source: &Graph,
        args: &[&Tensor],
        loc: &'static Location<'static>,
    ) -> Result<Results> {
        // a loop, not a `collect` of `Result`s: a per-call cost of small compiled functions
        let mut datas: SmallVec<[&Data; 4]> = SmallVec::with_capacity(args.len());
        for a in args {
            datas.push(a.data()?);
        }
        let instance;
        let plan: &Plan = match self {
            // a concrete plan checks its inputs itself: no types to collect per call
            Program::Concrete(p) => p,
            Program::Symbolic(s) => {
                instance = match s.repeat(&datas) {
                    // the types of the latest call: its instance, without binding again
                    Some(plan) => plan,
                    None => {
                        let types: Signature =
                            datas.iter().map(|d| (d.dtype(), d.shape())).collect();
                        self.plan_for_types(signature, source, &types, loc)?
                    }
                };
                &instance
            }
        };
        let mut out = Results::new();
        let mut sink = |d| out.push(Tensor::from_data_at(d, loc));
        plan.run_to(&datas, &[], &mut RunStats::default(), &mut sink)?;
        Ok(out)
    }
}
