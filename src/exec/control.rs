//! Running control-flow steps: each region body is planned once, with the plan of its
//! enclosing graph, and that [`Plan`] (its steps, memory plan and buffer pool) is
//! reused by every iteration and every run. Carries pass from one iteration to the
//! next as buffers; a carry the next iteration no longer holds goes back to the
//! body's pool, so a loop in steady state draws its kernels' outputs from the pool.
//! A scan reads each step's row of its inputs in place (a view of the stacked input;
//! copied only where the row is not contiguous), and its stacked outputs are written
//! row by row into buffers taken once per run and never zeroed (every step writes its
//! row): a value a step group computes is written straight into its row (and a carry
//! into the row that saves it for the next step, see [`Part::dest`]), any other is
//! copied there after the step (one block copy). A loop whose body forks products
//! keeps the pool's other workers awake while it runs (`kernels::awake`).

use super::accumulate::{self, Accumulation};
use super::buffers::{self, BufferPool};
use super::fused::Dest;
use super::interp::{add_time, Plan, RunStats};
use super::kernels::awake::with_workers_awake;
use super::kernels::ew;
use super::row_split;
use crate::error::{Error, Result};
use crate::ir::{Graph, Region, RegionKind};
use crate::ops::{Compare, Op};
use crate::tensor::{type_str, Arr, DType, Data};
use ndarray::Axis;
use smallvec::SmallVec;
use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// Such a scan whose body is row-separable ([`row_split`]): the body planned for
    /// half the batch, once per half, and the batch. It runs as two scans over the two
    /// halves at once. Each half has its own plan, and so its own buffer pool: a half's
    /// buffer demand is then the same every run, however the two interleave (with one
    /// pool, a worker that runs the other half while it waits inside its own would now
    /// and then need more buffers than ever before).
    halves: Option<([Plan; 2], usize)>,
    /// A scan that only adds products to its carries ([`accumulate`]): run by the GEMM
    /// in place, without the body's plan (which a profiled run, and one that checks
    /// numerics op by op, take instead).
    accumulation: Option<Accumulation>,
    /// A scan whose body also returns its carries, stacked as its last results (the
    /// per-step carries reverse mode reads).
    saved: bool,
    /// Rows of stacked results copied into place so far ([`Plan::stacked_row_copies`]).
    row_copies: AtomicUsize,
    /// A `while` whose condition is `operand k < c` for a scalar `i64` operand and a
    /// constant `c` (the counter of a [`crate::control::fori_loop`]): `(k, c)`. The
    /// loop tests it directly instead of running the condition's plan each iteration.
    counter_bound: Option<(usize, i64)>,
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
        let halves = match region.kind {
            RegionKind::Scan { .. } if awake => {
                row_split::half_batch(&region.bodies[0], region.carries + region.xs).and_then(
                    |(g, rows)| {
                        let top = Plan::new(g.clone()).ok()?;
                        let bottom = Plan::new(g).ok()?;
                        // their regions were fused for the whole batch's length, and run
                        // every step: generated code pays below AUTO_MIN_ELEMS too (the
                        // two plans share each kernel)
                        top.request_generated_code();
                        bottom.request_generated_code();
                        Some(([top, bottom], rows))
                    },
                )
            }
            _ => None,
        };
        let counter_bound = match region.kind {
            RegionKind::While => counter_bound(&region.bodies[0]),
            _ => None,
        };
        Ok(RegionPlan {
            saved: region.saved && matches!(region.kind, RegionKind::Scan { .. }),
            row_copies: AtomicUsize::new(0),
            counter_bound,
            awake,
            halves,
            accumulation: accumulate::find(region),
            kind: region.kind,
            carries: region.carries,
            xs: region.xs,
            results: region.results.clone(),
            bodies,
        })
    }

    /// This step (when it runs as two half-batch scans) and the steps of its bodies
    /// that do ([`Plan::row_split_scans`]).
    pub(crate) fn row_split_scans(&self) -> usize {
        self.halves.is_some() as usize
            + self.bodies.iter().map(Plan::row_split_scans).sum::<usize>()
    }

    /// Pool misses of its bodies' plans ([`Plan::pool_misses`]), the half-batch plans
    /// included.
    pub(crate) fn pool_misses(&self) -> usize {
        let halves = self.halves.iter().flat_map(|(h, _)| h.iter());
        self.bodies
            .iter()
            .chain(halves)
            .map(Plan::pool_misses)
            .sum()
    }

    /// Stacked rows this step and its bodies' steps copied ([`Plan::stacked_row_copies`]).
    pub(crate) fn stacked_row_copies(&self) -> usize {
        let halves = self.halves.iter().flat_map(|(h, _)| h.iter());
        self.row_copies.load(Ordering::Relaxed)
            + (self.bodies.iter().chain(halves))
                .map(Plan::stacked_row_copies)
                .sum::<usize>()
    }

    /// The step groups of its bodies' plans ([`Plan::step_groups`]).
    pub(crate) fn step_groups(&self) -> Vec<usize> {
        self.bodies.iter().flat_map(Plan::step_groups).collect()
    }

    /// This step (when it is an accumulation loop) and the steps of its bodies that are
    /// ([`Plan::accumulation_loops`]).
    pub(crate) fn accumulation_loops(&self) -> usize {
        self.accumulation.is_some() as usize
            + self
                .bodies
                .iter()
                .map(Plan::accumulation_loops)
                .sum::<usize>()
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
            RegionKind::Scan { reverse } => match (&self.halves, &self.accumulation) {
                // profiled and numerics-checked runs look at every op of the body
                (_, Some(acc))
                    if !stats.collect_profile && !crate::debugging::check_numerics_enabled() =>
                {
                    acc.run(args)
                }
                (Some((halves, rows)), _)
                    if rayon::current_num_threads() > 1 && !stats.collect_profile =>
                {
                    self.run_scan_halves(halves, *rows, reverse, args)
                }
                _ => self.awake(|| self.run_scan(reverse, args, stats)),
            },
        }
    }

    /// A row-separable scan as two scans over the halves of the batch, one per worker
    /// (the halves give the bits of the whole batch: see [`row_split`]). Each writes
    /// its rows of the stacked results in place; the final carries are joined after.
    /// (Never profiled: a profiled run takes the whole-batch path, whose steps it times.)
    fn run_scan_halves(
        &self,
        halves: &[Plan; 2],
        rows: usize,
        reverse: bool,
        args: &[&Data],
    ) -> Result<Vec<Data>> {
        let mut stacked: Vec<Data> = self.results[self.carries..]
            .iter()
            .map(|(d, s)| stacked_buffer(*d, s))
            .collect();
        let h = rows / 2;
        let (top, bottom): (Vec<Part>, Vec<Part>) = stacked
            .iter_mut()
            .map(|d| {
                let [t, b] = Part::split(d, [Some(0..h), Some(h..rows)]);
                (t, b)
            })
            .unzip();
        let (mut s0, mut s1) = (RunStats::default(), RunStats::default());
        let [p0, p1] = halves;
        let (c0, c1) = rayon::join(
            || self.steps(p0, Some(0..h), reverse, args, &top, &mut s0),
            || self.steps(p1, Some(h..rows), reverse, args, &bottom, &mut s1),
        );
        drop((top, bottom));
        let (c0, c1) = (c0?, c1?);
        let mut carry: Vec<Data> = c0
            .iter()
            .zip(&c1)
            .map(|(a, b)| join_rows(a, b))
            .collect::<Result<_>>()?;
        recycle(p0, c0);
        recycle(p1, c1);
        carry.extend(stacked);
        Ok(carry)
    }

    /// The scan's steps with `body` over batch rows `rows` of the carries and scanned
    /// operands (all rows with `None`), writing step `t`'s stacked outputs into block
    /// `t` of `out` (this part of each stacked result); returns the final carries
    /// (buffers of `body`'s pool).
    fn steps(
        &self,
        body: &Plan,
        rows: Option<std::ops::Range<usize>>,
        reverse: bool,
        args: &[&Data],
        out: &[Part],
        stats: &mut RunStats,
    ) -> Result<Vec<Data>> {
        let (nc, nx) = (self.carries, self.xs);
        let n = args[nc].shape()[0];
        let mut carry: Vec<Data> = args[..nc]
            .iter()
            .map(|d| match &rows {
                Some(r) => row_block(body.pool(), d, None, Some(r.clone())),
                None => (*d).clone(),
            })
            .collect();
        let xs = &args[nc..nc + nx];
        let caps = &args[nc + nx..];
        for k in 0..n {
            let t = if reverse { n - 1 - k } else { k };
            let x_t: Vec<Data> = xs
                .iter()
                .map(|x| row_block(body.pool(), x, Some(t), rows.clone()))
                .collect();
            let ins = inputs(&carry, &x_t, caps);
            // the stacked outputs' rows of this step and, when the carries are saved,
            // the carries' rows of the next step, for the body to write in place
            let saved = if self.saved { nc } else { 0 };
            let (stacked_ys, saved_carries) = out.split_at(out.len() - saved);
            let mut dests: SmallVec<[(usize, Dest); 8]> = (stacked_ys.iter().enumerate())
                .filter_map(|(j, p)| Some((nc + j, p.dest(t)?)))
                .collect();
            if saved > 0 && k + 1 < n {
                let next = if reverse { t - 1 } else { t + 1 };
                let carries = saved_carries.iter().enumerate();
                dests.extend(carries.filter_map(|(i, p)| Some((i, p.dest(next)?))));
            }
            let mut outs = body.run_into(&ins, &dests, stats)?;
            drop((ins, dests));
            let ys = outs.split_off(nc);
            let mut copies = 0;
            for (p, y) in out.iter().zip(&ys) {
                copies += p.put(t, y)? as usize;
            }
            if copies > 0 {
                self.row_copies.fetch_add(copies, Ordering::Relaxed);
            }
            recycle(body, std::mem::replace(&mut carry, outs));
            recycle(body, x_t);
            recycle(body, ys);
        }
        Ok(carry)
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
            let go = match self.counter_bound {
                Some((k, bound)) => scalar_i64(ins[k]) < bound,
                None => {
                    let c = cond.run(&ins, stats)?;
                    let go = truth(&c[0])?;
                    // the predicate's buffer goes back to the pool it came from
                    // (dropped, the pool would draw a fresh one every iteration)
                    recycle(cond, c);
                    go
                }
            };
            if !go {
                break;
            }
            let next = body.run(&ins, stats)?;
            drop(ins);
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
        let body = &self.bodies[0];
        let mut stacked: Vec<Data> = self.results[self.carries..]
            .iter()
            .map(|(d, s)| stacked_buffer(*d, s))
            .collect();
        let parts: Vec<Part> = (stacked.iter_mut())
            .map(|d| {
                let [p] = Part::split(d, [None]);
                p
            })
            .collect();
        let carry = self.steps(body, None, reverse, args, &parts, stats)?;
        drop(parts);
        let mut carry = adopt(body, carry);
        carry.extend(stacked);
        Ok(carry)
    }
}

/// A body's operands: carries, then this step's rows, then captured values (on the stack
/// for up to 8).
fn inputs<'a>(a: &'a [Data], b: &'a [Data], c: &[&'a Data]) -> SmallVec<[&'a Data; 8]> {
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

/// `(k, c)` if the condition graph `cond` is `less(input k, const c)` with both scalar
/// `i64` (the counter test `fori_loop` makes): the same comparison as the `less`
/// kernel's, without running a plan.
fn counter_bound(cond: &Graph) -> Option<(usize, i64)> {
    let &[out] = &cond.outputs[..] else {
        return None;
    };
    if !matches!(cond.node(out).op, Op::Compare(Compare::Lt)) {
        return None;
    }
    let ops = cond.operands(out);
    let &[a, b] = &ops[..] else {
        return None;
    };
    let is_scalar_i64 = |n| cond.node(n).dtype == DType::I64 && cond.node(n).shape.is_empty();
    let (Op::Input(k), Op::Const) = (cond.node(a).op, cond.node(b).op) else {
        return None;
    };
    let Some(Data::I64(c)) = &cond.node(b).value else {
        return None;
    };
    let c = *c.first()?;
    (is_scalar_i64(a) && is_scalar_i64(b)).then_some((k as usize, c))
}

/// The value of a scalar `i64` (a loop counter [`counter_bound`] found).
fn scalar_i64(d: &Data) -> i64 {
    match d {
        Data::I64(a) => *a.first().expect("a scalar counter"),
        _ => unreachable!("counter_bound checked the dtype"),
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

/// Row `t` of `d`'s leading axis (when given), then rows `rows` of what is left (when
/// given): a view sharing `d`'s buffer where it is contiguous (no copy; kernels only read
/// it, and the pool drops it, as it does any shared buffer), else its own buffer taken
/// from `pool` (the body's, which gets it back after the step: a buffer allocated outside
/// the pool and recycled into it would grow the pool by one buffer per step, without
/// bound).
fn row_block(
    pool: &BufferPool,
    d: &Data,
    t: Option<usize>,
    rows: Option<std::ops::Range<usize>>,
) -> Data {
    crate::map_data!(row_view(d, t, rows), r => {
        if r.is_standard_layout() {
            r
        } else {
            buffers::with_pool(pool, || ew::materialize(r.view()))
        }
    })
}

/// Row `t` of `d`'s leading axis (when given), then rows `rows` of what is left (when
/// given): a view sharing `d`'s buffer.
fn row_view(d: &Data, t: Option<usize>, rows: Option<std::ops::Range<usize>>) -> Data {
    crate::map_data!(d, a => {
        let mut r = a.clone();
        if let Some(t) = t {
            r.index_axis_inplace(Axis(0), t);
        }
        if let Some(rows) = rows {
            r.slice_axis_inplace(Axis(0), ndarray::Slice::from(rows));
        }
        r
    })
}

/// One part of a stacked result `[steps, rows, ..]` (contiguous, rows a multiple of
/// `parts`): for each step, the part's block of rows, written by one loop alone (the
/// whole row for a scan over all rows, a half's rows for a row-split scan). Block `t`
/// of part `p` is the `(t * parts + p)`-th run of `block` elements.
struct Part {
    /// The stacked result: a handle on its buffer, for the views of its blocks.
    all: Data,
    /// Its first element.
    base: *mut u8,
    /// Elements per block.
    block: usize,
    part: usize,
    parts: usize,
    /// The part's rows of a step (all of them with `None`).
    rows: Option<std::ops::Range<usize>>,
}

// SAFETY: each part is written by the one loop that owns it (see `RegionPlan::steps`),
// and the parts of one stacked result are disjoint blocks of its buffer, which outlives
// them (the caller holds it, and drops the parts before handing it out).
unsafe impl Send for Part {}
// SAFETY: as above; a shared `Part` is only read (its views are cloned handles).
unsafe impl Sync for Part {}

impl Part {
    /// The `P` parts of the stacked buffer `d` (unshared and contiguous: a fresh
    /// [`stacked_buffer`]), part `p` made of rows `rows[p]` of each step.
    fn split<const P: usize>(d: &mut Data, rows: [Option<std::ops::Range<usize>>; P]) -> [Part; P] {
        fn base<T: Clone>(a: &mut Arr<T>) -> *mut u8 {
            let all = a.as_slice_mut().expect("a stacked buffer is contiguous");
            all.as_mut_ptr().cast()
        }
        // the pointer first, while `d` is unshared: the parts' handles share it after
        let base = crate::with_data!(d, a => base(a));
        let steps = d.dims()[0];
        let block = d.len() / (P * steps).max(1);
        let mut rows = rows.into_iter();
        std::array::from_fn(|part| Part {
            all: d.clone(),
            base,
            block,
            part,
            parts: P,
            rows: rows.next().flatten(),
        })
    }

    /// The first byte of block `t`.
    fn at(&self, t: usize) -> *mut u8 {
        let off = (t * self.parts + self.part) * self.block * self.all.dtype().size();
        // SAFETY: block `t` lies inside the buffer (`t` < steps)
        unsafe { self.base.add(off) }
    }

    /// Block `t` as a destination a step writes in place ([`Plan::run_into`]): its
    /// memory, and a view of the stacked result over it. `None` for empty blocks.
    fn dest(&self, t: usize) -> Option<Dest> {
        if self.block == 0 {
            return None;
        }
        let view = row_view(&self.all, Some(t), self.rows.clone());
        Some(Dest {
            ptr: self.at(t),
            view,
        })
    }

    /// Writes a step's output `y` (the part's rows) as block `t`, unless the step
    /// wrote it there itself ([`Part::dest`]); whether it copied.
    fn put(&self, t: usize, y: &Data) -> Result<bool> {
        fn copy<T: Copy>(dst: *mut u8, n: usize, y: &Arr<T>) -> bool {
            if y.as_ptr().cast::<u8>() == dst.cast_const() {
                return false; // the step wrote it in place: `y` is a view of the block
            }
            // SAFETY: block `t` holds `n` elements of `T`, written by this part's loop
            // alone, and `y` starts elsewhere: its own buffer, or a block of another
            // stacked result (a carry the step wrote in place), never overlapping it
            let dst = unsafe { std::slice::from_raw_parts_mut(dst.cast::<T>(), n) };
            match y.as_slice() {
                Some(s) => dst.copy_from_slice(s),
                None => dst.iter_mut().zip(y.iter()).for_each(|(d, v)| *d = *v),
            }
            true
        }
        let fits = y.len() == self.block && y.dtype() == self.all.dtype();
        if !fits {
            return Err(Error::Graph(format!(
                "scan: a step's output {} does not fit its stacked result",
                type_str(y.dtype(), &y.shape())
            )));
        }
        let dst = self.at(t);
        Ok(crate::with_data!(y, a => copy(dst, self.block, a)))
    }
}

/// `concat` along `axis` of `x` (the step's result `shape`) written into `dest` (a
/// stacked row, see [`Part::dest`], that fits the result); returns its view, or `None`
/// if an operand's dtype differs from the result's.
pub(crate) fn concat_into(x: &[&Data], axis: usize, shape: &[usize], dest: &Dest) -> Option<Data> {
    fn write<T: buffers::Pooled>(x: &[&Data], axis: usize, shape: &[usize], dest: &Dest) -> bool {
        let Some(parts) = x.iter().map(|d| T::array_of(d)).collect::<Option<Vec<_>>>() else {
            return false;
        };
        let n = dest.view.len();
        // SAFETY: the destination holds `n` elements of the result's type (the caller
        // checked that it fits), which nothing else reads or writes during the step
        let out = unsafe { std::slice::from_raw_parts_mut(dest.ptr.cast::<T>(), n) };
        let mut at = 0;
        crate::ops::shape::concat_runs(&parts, axis, shape, |run| {
            out[at..at + run.len()].clone_from_slice(run);
            at += run.len();
        });
        at == n
    }
    let done = match dest.view.dtype() {
        DType::F32 => write::<f32>(x, axis, shape, dest),
        DType::F64 => write::<f64>(x, axis, shape, dest),
        DType::I64 => write::<i64>(x, axis, shape, dest),
    };
    done.then(|| dest.view.clone())
}

/// `a`'s rows followed by `b`'s (the two halves of a carry), in a buffer of the
/// installed pool.
fn join_rows(a: &Data, b: &Data) -> Result<Data> {
    fn join<T: buffers::Pooled>(a: &Arr<T>, b: &Arr<T>) -> Arr<T> {
        let mut out = buffers::take(a.len() + b.len());
        match (a.as_slice(), b.as_slice()) {
            (Some(x), Some(y)) => {
                out.extend_from_slice(x);
                out.extend_from_slice(y);
            }
            _ => out.extend(a.iter().chain(b.iter()).copied()),
        }
        let mut shape = a.shape().to_vec();
        shape[0] += b.shape()[0];
        ew::wrap(&shape, out)
    }
    Ok(match (a, b) {
        (Data::F32(a), Data::F32(b)) => Data::F32(join(a, b)),
        (Data::F64(a), Data::F64(b)) => Data::F64(join(a, b)),
        (Data::I64(a), Data::I64(b)) => Data::I64(join(a, b)),
        _ => {
            return Err(Error::Graph(format!(
                "scan: the halves' carries differ: {} and {}",
                type_str(a.dtype(), &a.shape()),
                type_str(b.dtype(), &b.shape())
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond_graph(body: &str) -> Graph {
        crate::ir::parse(&format!(
            "graph(%0: i64[], %1: f32[4], %2: i64[]) {{\n{body}\n}}"
        ))
        .unwrap()
    }

    /// `fori_loop`'s condition (the counter against a constant) is tested without its
    /// plan; any other condition runs its plan.
    #[test]
    fn only_a_counter_against_a_constant_skips_the_condition_plan() {
        let counter = "  %3 = const 500 : i64[]\n  %4 = less %0, %3 : i64[]\n  return %4";
        assert_eq!(counter_bound(&cond_graph(counter)), Some((0, 500)));
        for other in [
            // against a captured (run-time) bound
            "  %3 = less %0, %2 : i64[]\n  return %3",
            // another comparison
            "  %3 = const 500 : i64[]\n  %4 = less_equal %0, %3 : i64[]\n  return %4",
            // the constant first
            "  %3 = const 500 : i64[]\n  %4 = less %3, %0 : i64[]\n  return %4",
        ] {
            assert_eq!(counter_bound(&cond_graph(other)), None, "{other}");
        }
    }
}
