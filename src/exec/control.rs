//! Running control-flow steps: each region body is planned once, with the plan of its
//! enclosing graph, and that [`Plan`] (its steps, memory plan and buffer pool) is
//! reused by every iteration and every run. Carries pass from one iteration to the
//! next as buffers; a carry the next iteration no longer holds goes back to the
//! body's pool, so a loop in steady state draws its kernels' outputs from the pool.
//! A scan reads each step's row of its inputs in place (a view of the stacked input;
//! copied only where the row is not contiguous), and its stacked outputs are written
//! row by row (one block copy each) into buffers taken once per run and never zeroed
//! (every step writes its row). A loop whose body forks products
//! keeps the pool's other workers awake while it runs (`kernels::awake`).

use super::buffers::{self, BufferPool};
use super::interp::{add_time, Plan, RunStats};
use super::kernels::awake::with_workers_awake;
use super::kernels::ew;
use crate::error::{Error, Result};
use crate::ir::{Graph, Region, RegionKind};
use crate::tensor::{type_str, Arr, DType, Data};
use ndarray::Axis;
use std::cell::RefCell;
use std::time::Duration;

thread_local! {
    /// While a profiled run executes a control-flow step on this thread: the time per
    /// op name of the steps inside its bodies so far (see [`profile_bodies`]).
    static BODY_PROFILE: RefCell<Option<Vec<(&'static str, Duration)>>> =
        const { RefCell::new(None) };
}

/// Installs `acc` as this thread's body profile and returns the one it replaces: a
/// profiled run installs an empty one around each control-flow step and takes it back
/// after; [`RegionPlan::run`] profiles its bodies while one is installed and adds their
/// times to it (a nested loop's own times included).
pub(crate) fn profile_bodies(
    acc: Option<Vec<(&'static str, Duration)>>,
) -> Option<Vec<(&'static str, Duration)>> {
    BODY_PROFILE.with(|p| p.replace(acc))
}

/// The plans of one control-flow step's bodies.
pub(crate) struct RegionPlan {
    kind: RegionKind,
    carries: usize,
    xs: usize,
    results: Vec<(crate::tensor::DType, crate::tensor::Shape)>,
    bodies: Vec<Plan>,
    /// A loop whose body forks products: the other workers stay awake through it
    /// ([`with_workers_awake`]).
    awake: bool,
}

impl RegionPlan {
    /// Plans every body of `region`.
    pub(crate) fn new(region: &Region) -> Result<RegionPlan> {
        let bodies = region
            .bodies
            .iter()
            .map(|g: &Graph| Plan::new(g.clone()))
            .collect::<Result<Vec<_>>>()?;
        let awake = region.kind != RegionKind::Cond && bodies.iter().any(Plan::forks_products);
        Ok(RegionPlan {
            awake,
            kind: region.kind,
            carries: region.carries,
            xs: region.xs,
            results: region.results.clone(),
            bodies,
        })
    }

    /// Runs the op on its operands; returns its results in `get` order.
    pub(crate) fn run(&self, args: &[&Data]) -> Result<Vec<Data>> {
        let mut stats = RunStats {
            collect_profile: BODY_PROFILE.with(|p| p.borrow().is_some()),
            ..RunStats::default()
        };
        let out = self.run_with(args, &mut stats);
        if stats.collect_profile {
            BODY_PROFILE.with(|p| {
                if let Some(acc) = p.borrow_mut().as_mut() {
                    for (name, d) in stats.profile.into_iter().chain(stats.loop_profile) {
                        add_time(acc, name, d);
                    }
                }
            });
        }
        out
    }

    fn run_with(&self, args: &[&Data], stats: &mut RunStats) -> Result<Vec<Data>> {
        match self.kind {
            RegionKind::Cond => {
                let branch = if truth(args[0])? { 0 } else { 1 };
                let out = self.bodies[branch].run(&args[1..], stats)?;
                Ok(adopt(&self.bodies[branch], out))
            }
            RegionKind::While => self.awake(|| self.run_while(args, stats)),
            RegionKind::Scan { reverse } => self.awake(|| self.run_scan(reverse, args, stats)),
        }
    }

    /// Runs the loop `f`, keeping the pool's workers awake when the body forks.
    fn awake<R>(&self, f: impl FnOnce() -> R) -> R {
        match self.awake {
            true => with_workers_awake(f),
            false => f(),
        }
    }

    fn run_while(&self, args: &[&Data], stats: &mut RunStats) -> Result<Vec<Data>> {
        let nc = self.carries;
        let (cond, body) = (&self.bodies[0], &self.bodies[1]);
        let mut carry: Vec<Data> = args[..nc].iter().map(|&d| d.clone()).collect();
        let caps = &args[nc..];
        let mut trips: i64 = 0;
        loop {
            let ins = inputs(&carry, &[], caps);
            let c = cond.run(&ins, stats)?;
            if !truth(&c[0])? {
                break;
            }
            let next = body.run(&ins, stats)?;
            recycle(body, std::mem::replace(&mut carry, next));
            trips += 1;
        }
        let mut carry = adopt(body, carry);
        let mut count = buffers::take::<i64>(1);
        count.push(trips);
        carry.push(Data::I64(ew::wrap(&[], count)));
        Ok(carry)
    }

    fn run_scan(&self, reverse: bool, args: &[&Data], stats: &mut RunStats) -> Result<Vec<Data>> {
        let (nc, nx) = (self.carries, self.xs);
        let body = &self.bodies[0];
        let n = args[nc].shape()[0];
        let mut carry: Vec<Data> = args[..nc].iter().map(|&d| d.clone()).collect();
        let xs = &args[nc..nc + nx];
        let caps = &args[nc + nx..];
        let mut stacked: Vec<Data> = self.results[nc..]
            .iter()
            .map(|(d, s)| stacked_buffer(*d, s))
            .collect();
        for k in 0..n {
            let t = if reverse { n - 1 - k } else { k };
            let x_t: Vec<Data> = xs.iter().map(|x| row(body.pool(), x, t)).collect();
            let ins = inputs(&carry, &x_t, caps);
            let mut outs = body.run(&ins, stats)?;
            drop(ins);
            let ys = outs.split_off(nc);
            for (dst, y) in stacked.iter_mut().zip(&ys) {
                set_row(dst, t, y)?;
            }
            recycle(body, std::mem::replace(&mut carry, outs));
            recycle(body, x_t);
            recycle(body, ys);
        }
        let mut carry = adopt(body, carry);
        carry.extend(stacked);
        Ok(carry)
    }
}

fn inputs<'a>(a: &'a [Data], b: &'a [Data], c: &[&'a Data]) -> Vec<&'a Data> {
    a.iter().chain(b).chain(c.iter().copied()).collect()
}

/// The results a body hands to the enclosing plan, copied into buffers of the installed
/// (enclosing) pool, with the body's own buffers going back to the body's pool. The
/// enclosing plan recycles what it is given into its pool; handing it the body's
/// buffers instead would move a few buffers per run from one pool to the other, and
/// both would allocate forever.
fn adopt(body: &Plan, out: Vec<Data>) -> Vec<Data> {
    let copies = out
        .iter()
        .map(|d| crate::map_data!(d, a => ew::materialize(a.view())))
        .collect();
    recycle(body, out);
    copies
}

/// Gives buffers nobody else holds back to the body's pool.
fn recycle(body: &Plan, old: Vec<Data>) {
    for d in old {
        body.pool().recycle(d);
    }
}

/// The truth value of a one-element predicate (nonzero is true).
fn truth(d: &Data) -> Result<bool> {
    if d.len() != 1 {
        return Err(Error::Graph(format!(
            "a control-flow predicate has {} elements, not 1",
            d.len()
        )));
    }
    Ok(match d {
        Data::F32(a) => a.iter().all(|&v| v != 0.0),
        Data::F64(a) => a.iter().all(|&v| v != 0.0),
        Data::I64(a) => a.iter().all(|&v| v != 0),
    })
}

/// Row `t` of the leading axis: a view sharing `d`'s buffer where the row is contiguous
/// (no copy; kernels only read it, and the pool drops it, as it does any shared
/// buffer), else its own buffer taken from `pool` (the body's, which gets it back after
/// the step: a buffer allocated outside the pool and recycled into it would grow the
/// pool by one buffer per step, without bound).
fn row(pool: &BufferPool, d: &Data, t: usize) -> Data {
    crate::map_data!(d, a => {
        let mut r = a.clone();
        r.index_axis_inplace(Axis(0), t);
        if r.is_standard_layout() {
            r
        } else {
            buffers::with_pool(pool, || ew::materialize(r.view()))
        }
    })
}

/// A stacked result's buffer from the installed pool (the enclosing plan's, which
/// recycles the stacked results when they die: allocated elsewhere, they would pile up
/// in it run by run), with unspecified contents: every step writes its row.
fn stacked_buffer(dtype: DType, shape: &[usize]) -> Data {
    let n = shape.iter().product();
    match dtype {
        DType::F32 => Data::F32(ew::wrap(shape, buffers::overwritable(n))),
        DType::F64 => Data::F64(ew::wrap(shape, buffers::overwritable(n))),
        DType::I64 => Data::I64(ew::wrap(shape, buffers::overwritable(n))),
    }
}

/// Writes `src` into row `t` of `dst`: one block copy when both are contiguous (the
/// stacked buffer always is; a step's output nearly always).
fn set_row(dst: &mut Data, t: usize, src: &Data) -> Result<()> {
    fn put<T: Copy>(a: &mut Arr<T>, t: usize, b: &Arr<T>) {
        let len = b.len();
        match (a.as_slice_mut(), b.as_slice()) {
            (Some(dst), Some(src)) => dst[t * len..][..len].copy_from_slice(src),
            _ => a.index_axis_mut(Axis(0), t).assign(b),
        }
    }
    match (dst, src) {
        (Data::F32(a), Data::F32(b)) if a.shape()[1..] == *b.shape() => put(a, t, b),
        (Data::F64(a), Data::F64(b)) if a.shape()[1..] == *b.shape() => put(a, t, b),
        (Data::I64(a), Data::I64(b)) if a.shape()[1..] == *b.shape() => put(a, t, b),
        (dst, src) => {
            return Err(Error::Graph(format!(
                "scan: a step's output {} does not fit its stacked result {}",
                type_str(src.dtype(), &src.shape()),
                type_str(dst.dtype(), &dst.shape())
            )))
        }
    }
    Ok(())
}
