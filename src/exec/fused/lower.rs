//! Lowering: a [`FusedExpr`] compiled for its operands' types into a [`Program`].

use super::{From, Loop, Program, Step, SumPlan, TILE};
use crate::exec::codegen;
use crate::ir::{Arg, FusedExpr, Inst};
use crate::ops::{Op, Unary};
use crate::tensor::{numel, DType, Shape};
use smallvec::SmallVec;
use std::collections::{HashMap, VecDeque};

impl Loop {
    /// The register of a load, adding it if new.
    fn load(
        &mut self,
        from: From,
        key: Option<usize>,
        view: View,
        dtype: DType,
        dtypes: &mut Vec<DType>,
    ) -> usize {
        if let Some(&i) = self.keys.get(&(from, key)) {
            return self.regs[i];
        }
        self.keys.insert((from, key), self.from.len());
        self.from.push(from);
        self.views.push(view);
        dtypes.push(dtype);
        self.regs.push(dtypes.len() - 1);
        dtypes.len() - 1
    }

    /// Fixes the loop: axes `order` of `loop_shape`, without length-1 axes, and adjacent
    /// axes merged where every load steps through them as one (the element order is
    /// unchanged, so runs along the innermost axis get as long as possible).
    fn plan(&mut self, loop_shape: &[usize], order: &[usize]) {
        let full: Vec<SmallVec<[usize; 6]>> = self
            .views
            .iter()
            .zip(&self.from)
            .map(|(v, f)| match f {
                From::Matmul => SmallVec::from_elem(0, order.len()),
                From::Param(_) => {
                    let bs = v.strides_in(loop_shape);
                    order.iter().map(|&d| bs[d]).collect()
                }
            })
            .collect();
        let (dims, strides) = coalesce_axes(order.iter().map(|&d| loop_shape[d]), &full);
        let dense = contiguous(&dims);
        self.direct = (self.from.iter().zip(&strides))
            .map(|(f, st)| matches!(f, From::Param(_)) && *st == dense)
            .collect();
        self.dims = dims;
        self.strides = strides;
    }
}

/// Merges each `sin` with a `cos` of the same argument into one step (at the first of
/// the two: both read only that argument). [`Float::kernel_sin_cos`](crate::tensor::Float::kernel_sin_cos) returns exactly
/// the bits of `kernel_sin` and `kernel_cos`, so only the time changes.
fn pair_sin_cos(steps: Vec<Step>) -> Vec<Step> {
    let (sin, cos) = (Op::Unary(Unary::Sin), Op::Unary(Unary::Cos));
    let mut merged = vec![false; steps.len()];
    // the sins and the cosines of each argument, in order (a lookup table only: its
    // iteration order never decides anything)
    let mut of_arg: HashMap<(Op, &[usize]), VecDeque<usize>> = HashMap::new();
    for (j, st) in steps.iter().enumerate() {
        if st.op == sin || st.op == cos {
            of_arg
                .entry((st.op, &st.args[..]))
                .or_default()
                .push_back(j);
        }
    }
    let mut out = Vec::with_capacity(steps.len());
    for i in 0..steps.len() {
        if merged[i] {
            continue;
        }
        let mut st = steps[i].clone();
        if st.op == sin || st.op == cos {
            let other = if st.op == sin { cos } else { sin };
            // the first unmerged twin after i (twins before i are merged already: each
            // took the first unmerged partner after it, which i would have been)
            let twin = of_arg.get_mut(&(other, &steps[i].args[..])).and_then(|q| {
                while q.front().is_some_and(|&j| j <= i || merged[j]) {
                    q.pop_front();
                }
                q.pop_front()
            });
            if let Some(j) = twin {
                merged[j] = true;
                let (s, c) = if st.op == sin {
                    (st.reg, steps[j].reg)
                } else {
                    (steps[j].reg, st.reg)
                };
                (st.op, st.reg, st.cos) = (sin, s, Some(c));
            }
        }
        out.push(st);
    }
    out
}

/// Folds each `neg` of a binary step's value that nothing else reads (`keep` are the
/// registers read outside the steps) into that step, which then computes
/// `neg(op(a, b))` per element: the same two scalar functions in the same order, in one
/// pass over the tile instead of two. Gradients are full of these (`-(a·b)`).
fn fold_neg(mut steps: Vec<Step>, keep: &[usize]) -> Vec<Step> {
    // registers are written once here: `producer` finds a register's step, `readers`
    // counts the reads of each register by the steps still in the list
    let regs = (steps.iter())
        .flat_map(|s| s.args.iter().chain(&s.cos).chain([&s.reg]))
        .chain(keep)
        .max()
        .map_or(0, |&r| r + 1);
    let mut producer = vec![None; regs];
    let mut readers = vec![0usize; regs];
    let mut kept = vec![false; regs];
    for &k in keep {
        kept[k] = true;
    }
    for (i, s) in steps.iter().enumerate() {
        producer[s.reg] = Some(i);
        for &a in &s.args {
            readers[a] += 1;
        }
    }
    let mut removed = vec![false; steps.len()];
    for j in 0..steps.len() {
        if steps[j].op != Op::Unary(Unary::Neg) {
            continue;
        }
        let r = steps[j].args[0];
        let binary = producer[r].filter(|&i| {
            let s = &steps[i];
            i < j && s.reg == r && s.cos.is_none() && !s.neg && matches!(s.op, Op::Binary(_))
        });
        if let Some(i) = binary.filter(|_| readers[r] == 1 && !kept[r]) {
            // none is read before the neg writes it
            (steps[i].reg, steps[i].neg) = (steps[j].reg, true);
            producer[steps[j].reg] = Some(i);
            readers[r] -= 1;
            removed[j] = true;
        }
    }
    let mut removed = removed.into_iter();
    steps.retain(|_| !removed.next().expect("one flag per step"));
    steps
}

/// Lets steps share registers: a step's result goes to a register of its dtype whose
/// value no later step reads, so a tile touches few registers and they stay in L1.
/// `keep` are the registers read outside the steps (loads, the summed value, the sum,
/// the result); they are never shared. A step never gets a register it reads, and
/// registers freed in the summed loop are not reused after the sum (each part of
/// `steps`, split at `split`, shares among itself).
fn share_registers(steps: &mut [Step], split: usize, dtypes: &[DType], keep: &[usize]) {
    let outs = |st: &Step| -> SmallVec<[usize; 2]> { st.cos.into_iter().chain([st.reg]).collect() };
    let mut kept = vec![false; dtypes.len()];
    for &k in keep {
        kept[k] = true;
    }
    let (before, after) = steps.split_at_mut(split);
    for part in [before, after] {
        let mut last_read: Vec<Option<usize>> = vec![None; dtypes.len()];
        for (i, st) in part.iter().enumerate() {
            for &a in &st.args {
                last_read[a] = Some(i);
            }
        }
        // register numbers are those of `Program::new`; `name` maps them to shared ones
        let mut name: Vec<usize> = (0..dtypes.len()).collect();
        let mut free: Vec<usize> = Vec::new();
        let mut is_free = vec![false; dtypes.len()];
        for (i, st) in part.iter_mut().enumerate() {
            let (reads, writes) = (st.args.clone(), outs(st));
            for &o in writes.iter().filter(|&&o| !kept[o]) {
                if let Some(f) = free.iter().position(|&f| dtypes[f] == dtypes[o]) {
                    name[o] = free.swap_remove(f);
                    is_free[name[o]] = false;
                }
            }
            for a in st.args.iter_mut() {
                *a = name[*a];
            }
            (st.reg, st.cos) = (name[st.reg], st.cos.map(|c| name[c]));
            // free what this step read for the last time, and results nobody reads
            for r in reads.into_iter().chain(writes) {
                let dead = last_read[r].is_none_or(|l| l == i);
                if dead && !kept[r] && !is_free[name[r]] {
                    is_free[name[r]] = true;
                    free.push(name[r]);
                }
            }
        }
    }
}

/// Contiguous strides of `shape`.
fn contiguous(shape: &[usize]) -> SmallVec<[usize; 6]> {
    let mut st: SmallVec<[usize; 6]> = SmallVec::from_elem(0, shape.len());
    let mut acc = 1;
    for d in (0..shape.len()).rev() {
        st[d] = acc;
        acc *= shape[d];
    }
    st
}

/// Drops length-1 axes and merges adjacent axes that every load steps through as one.
/// `lens` are the loop's axis lengths in loop order and `full[l]` load `l`'s stride
/// along each of them; returns the kept dims and each load's strides along them (the
/// element order is unchanged). Shared with the code generator.
pub(crate) fn coalesce_axes(
    lens: impl Iterator<Item = usize>,
    full: &[SmallVec<[usize; 6]>],
) -> (SmallVec<[usize; 6]>, Vec<SmallVec<[usize; 6]>>) {
    let mut dims: SmallVec<[usize; 6]> = SmallVec::new();
    let mut strides: Vec<SmallVec<[usize; 6]>> = vec![SmallVec::new(); full.len()];
    for (i, n) in lens.enumerate() {
        if n == 1 {
            continue;
        }
        let merge = !dims.is_empty()
            && full
                .iter()
                .zip(&strides)
                .all(|(f, st)| st[st.len() - 1] == f[i] * n);
        if merge {
            *dims.last_mut().expect("not empty") *= n;
            for (st, f) in strides.iter_mut().zip(full) {
                *st.last_mut().expect("not empty") = f[i];
            }
        } else {
            dims.push(n);
            for (st, f) in strides.iter_mut().zip(full) {
                st.push(f[i]);
            }
        }
    }
    (dims, strides)
}

/// How a load reads its param's (contiguous, row-major) buffer (shared with the code
/// generator, which lays out the same loads): the shape it sees, the
/// buffer strides of that shape's axes, and the offset of its first element. A param
/// read as it is, or through a `reshape`, is its buffer in order; a `slice` along axis
/// `a` keeps the param's strides and starts `start` rows along `a` in.
#[derive(Clone, Debug)]
pub(crate) struct View {
    shape: Shape,
    strides: SmallVec<[usize; 6]>,
    /// Elements of the buffer before the view's first one.
    pub offset: usize,
}

impl View {
    /// A buffer of `shape` read in order.
    pub(crate) fn whole(shape: &[usize]) -> View {
        View {
            shape: Shape::from_slice(shape),
            strides: contiguous(shape),
            offset: 0,
        }
    }

    /// The view of a param of `param_shape` that instruction `inst` reads (`None`: the
    /// param itself; else a `reshape` or `slice` of it).
    pub(crate) fn of(inst: Option<&Inst>, param_shape: &[usize]) -> View {
        match inst.map(|i| (i.op, &i.shape)) {
            None => View::whole(param_shape),
            Some((Op::Slice { axis, start, .. }, shape)) => {
                let strides = contiguous(param_shape);
                View {
                    offset: start as usize * strides[axis as usize],
                    shape: shape.clone(),
                    strides,
                }
            }
            Some((_, shape)) => View::whole(shape),
        }
    }

    /// Strides along each axis of the loop `it` (right-aligned broadcasting: 0 on the
    /// axes the view lacks or has of length 1).
    pub(crate) fn strides_in(&self, it: &[usize]) -> SmallVec<[usize; 6]> {
        let lead = it.len() - self.shape.len();
        (0..it.len())
            .map(|d| {
                if d < lead || self.shape[d - lead] == 1 {
                    0
                } else {
                    self.strides[d - lead]
                }
            })
            .collect()
    }
}

/// The registers and steps of an expression, before the loops are planned.
struct Registers {
    inner: Loop,
    outer: Loop,
    dtypes: Vec<DType>,
    /// The register of each instruction's value.
    reg_of: Vec<usize>,
    steps: Vec<Step>,
    /// Steps before this index run in the summed loop.
    split: usize,
    /// The register of the summed value.
    sum_src: usize,
}

/// Gives every value a register: the loads (of the summed loop up to the sum, of the
/// result's loop after it), then one per instruction; identities (broadcast, reshape
/// views, the matmul's output, casts to the same dtype) reuse their source's register.
/// Each computing instruction becomes a step.
fn assign_registers(e: &FusedExpr, params: &[(DType, &[usize])], dtype: DType) -> Registers {
    let s = e.sum_index();
    let (mut inner, mut outer) = (Loop::default(), Loop::default());
    let mut dtypes: Vec<DType> = Vec::new();
    let mut reg_of: Vec<usize> = Vec::with_capacity(e.insts.len());
    let mut steps: Vec<Step> = Vec::new();
    let (mut split, mut sum_src) = (0, 0);
    for (k, inst) in e.insts.iter().enumerate() {
        let lp = if s.is_some_and(|s| k <= s) {
            &mut inner
        } else {
            &mut outer
        };
        let args: SmallVec<[usize; 3]> = match (inst.op, &inst.args[..]) {
            (Op::MatMul { .. }, _) => SmallVec::from_elem(
                lp.load(
                    From::Matmul,
                    None,
                    View::whole(&inst.shape),
                    dtype,
                    &mut dtypes,
                ),
                1,
            ),
            (Op::Reshape | Op::Slice { .. }, [Arg::Param(p)]) => {
                let (d, sh) = params[*p as usize];
                SmallVec::from_elem(
                    lp.load(
                        From::Param(*p as usize),
                        Some(k),
                        View::of(Some(inst), sh),
                        d,
                        &mut dtypes,
                    ),
                    1,
                )
            }
            _ => inst
                .args
                .iter()
                .map(|a| match *a {
                    Arg::Param(p) => {
                        let (d, sh) = params[p as usize];
                        lp.load(
                            From::Param(p as usize),
                            None,
                            View::whole(sh),
                            d,
                            &mut dtypes,
                        )
                    }
                    Arg::Inst(j) => reg_of[j as usize],
                })
                .collect(),
        };
        let reg = match inst.op {
            Op::MatMul { .. } | Op::BroadcastTo | Op::Reshape | Op::Slice { .. } => args[0],
            Op::Cast(to) if to == dtypes[args[0]] => args[0],
            Op::Sum { .. } => {
                split = steps.len();
                sum_src = args[0];
                dtypes.push(inst.dtype);
                dtypes.len() - 1
            }
            op => {
                dtypes.push(inst.dtype);
                steps.push(Step {
                    op,
                    args,
                    reg: dtypes.len() - 1,
                    cos: None,
                    neg: false,
                });
                dtypes.len() - 1
            }
        };
        reg_of.push(reg);
    }
    Registers {
        inner,
        outer,
        dtypes,
        reg_of,
        steps,
        split,
        sum_src,
    }
}

/// The sum at instruction `s` over the summed space `it`: plans the summed loop (kept
/// axes, then reduced axes, so each output's lane is contiguous) and says how the
/// elements add up; `reg` is the sum's register, `src` the summed value's.
fn plan_sum(
    e: &FusedExpr,
    s: usize,
    it: &[usize],
    inner: &mut Loop,
    reg: usize,
    src: usize,
) -> SumPlan {
    let Op::Sum { axes, .. } = e.insts[s].op else {
        unreachable!("sum_index points at a sum")
    };
    // the summed loop: kept axes, then reduced axes (each output's lane is contiguous)
    let kept = (0..it.len()).filter(|&d| !axes.contains(d));
    let red: Vec<usize> = (0..it.len()).filter(|&d| axes.contains(d)).collect();
    let order: Vec<usize> = kept.chain(red.iter().copied()).collect();
    inner.plan(it, &order);
    let red_dims: SmallVec<[usize; 6]> = red.iter().map(|&d| it[d]).collect();
    SumPlan {
        reg,
        src,
        dtype: e.insts[s].dtype,
        full: red.len() == it.len(),
        lane: red_dims.iter().product(),
        red_dims,
    }
}

impl Program {
    /// Compiles `e` for operands of `params` types; `shape` is the fused node's shape.
    ///
    /// # Panics
    /// If `e` does not infer for these operands (the verifier checks it).
    pub fn new(e: &FusedExpr, params: &[(DType, &[usize])], shape: &[usize]) -> Program {
        Program::with_outputs(e, params, shape, &[])
    }

    /// [`Program::new`] with further outputs: the values of instructions `extra`, each
    /// of the result's exact type, written in the same loop ([`Program::run_all`]).
    ///
    /// # Panics
    /// As [`Program::new`]; and if `e` has a sum or a matmul while `extra` is not empty,
    /// or an `extra` instruction is not of the result's type.
    pub fn with_outputs(
        e: &FusedExpr,
        params: &[(DType, &[usize])],
        shape: &[usize],
        extra_insts: &[usize],
    ) -> Program {
        let (dtype, _) = e.infer(params).expect("a verified fused expression");
        assert!(
            extra_insts.is_empty() || (e.sum_index().is_none() && e.matmul().is_none()),
            "only an elementwise region has further outputs"
        );
        assert!(
            (extra_insts.iter())
                .all(|&k| e.insts[k].dtype == dtype && e.insts[k].shape[..] == *shape),
            "further outputs have the result's type"
        );
        let s = e.sum_index();
        let it: Shape = match s.map(|s| e.insts[s].args[0]) {
            Some(Arg::Param(p)) => Shape::from_slice(params[p as usize].1),
            Some(Arg::Inst(j)) => e.insts[j as usize].shape.clone(),
            None => Shape::from_slice(shape),
        };
        let Registers {
            mut inner,
            mut outer,
            dtypes,
            reg_of,
            mut steps,
            split,
            sum_src,
        } = assign_registers(e, params, dtype);
        let all: Vec<usize> = (0..shape.len()).collect();
        outer.plan(shape, &all);
        let sum = s.map(|s| plan_sum(e, s, &it, &mut inner, reg_of[s], sum_src));
        let tile = TILE.min(numel(shape).max(numel(&it))).max(1);
        let split = if sum.is_some() { split } else { steps.len() };
        let result_reg = reg_of[e.insts.len() - 1];
        let extra: SmallVec<[usize; 4]> = extra_insts.iter().map(|&k| reg_of[k]).collect();
        let mut keep: Vec<usize> = inner.regs.iter().chain(&outer.regs).copied().collect();
        keep.push(result_reg);
        keep.extend(&extra);
        if let Some(sp) = &sum {
            keep.extend([sp.reg, sp.src]);
        }
        // sin and cos of one value in one step, negations into binary steps; separately
        // in each loop
        let after = fold_neg(pair_sin_cos(steps.split_off(split)), &keep);
        let mut steps = fold_neg(pair_sin_cos(steps), &keep);
        let split = steps.len();
        steps.extend(after);
        share_registers(&mut steps, split, &dtypes, &keep);
        let mut p = Program {
            dtype,
            shape: Shape::from_slice(shape),
            matmul: e.matmul(),
            dtypes,
            steps,
            split,
            result_reg,
            sum,
            inner,
            outer,
            tile,
            gen: codegen::Kernel::new(e, params, shape, extra_insts),
            extra,
        };
        p.drop_unused_registers();
        p
    }

    /// Sets whether this program runs generated code (see [`codegen`]); with
    /// [`Codegen::Force`](codegen::Codegen::Force), waits for its compilation.
    pub fn set_codegen(&self, mode: codegen::Codegen) {
        if let Some(k) = &self.gen {
            k.set_mode(mode);
        }
    }

    /// Starts compiling this region's generated code in the background now, whatever
    /// its length, unless generated code is off (see [`codegen::Kernel::request`]).
    pub fn request_code(&self) {
        if let Some(k) = &self.gen {
            k.request();
        }
    }

    /// Whether a run now executes generated code rather than the interpreter.
    pub fn uses_generated_code(&self) -> bool {
        self.gen.as_ref().is_some_and(|k| k.ready().is_some())
    }

    /// Numbers the registers still in use after [`share_registers`] densely, so that
    /// each thread allocates only those.
    fn drop_unused_registers(&mut self) {
        let mut used = vec![false; self.dtypes.len()];
        let loads = self.inner.regs.iter().chain(&self.outer.regs);
        let sum = self.sum.iter().flat_map(|sp| [sp.reg, sp.src]);
        let steps = (self.steps.iter()).flat_map(|s| s.args.iter().chain(&s.cos).chain([&s.reg]));
        for r in loads
            .chain(steps)
            .copied()
            .chain(sum)
            .chain([self.result_reg])
            .chain(self.extra.iter().copied())
        {
            used[r] = true;
        }
        let mut new = vec![0; used.len()];
        let mut dtypes = Vec::new();
        for (r, _) in used.iter().enumerate().filter(|(_, &u)| u) {
            new[r] = dtypes.len();
            dtypes.push(self.dtypes[r]);
        }
        self.dtypes = dtypes;
        for r in self.inner.regs.iter_mut().chain(&mut self.outer.regs) {
            *r = new[*r];
        }
        for s in &mut self.steps {
            for r in s.args.iter_mut().chain(&mut s.cos).chain([&mut s.reg]) {
                *r = new[*r];
            }
        }
        if let Some(sp) = &mut self.sum {
            (sp.reg, sp.src) = (new[sp.reg], new[sp.src]);
        }
        self.result_reg = new[self.result_reg];
        for r in &mut self.extra {
            *r = new[*r];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Binary;

    /// W5's second derivative, d²/dx² sum(sin(x)·e^(−x²)), as the optimizer fuses it.
    const W5: &str = "graph(%0: f32[5000]) {
  %1 = fused %0 : f32[5000]
    #0 = sin $0 : f32[5000]
    #1 = mul $0, $0 : f32[5000]
    #2 = neg #1 : f32[5000]
    #3 = exp #2 : f32[5000]
    #4 = mul #0, #3 : f32[5000]
    #5 = neg #4 : f32[5000]
    #6 = sub #5, #4 : f32[5000]
    #7 = sub #6, #4 : f32[5000]
    #8 = add $0, $0 : f32[5000]
    #9 = neg #8 : f32[5000]
    #10 = mul #9, #0 : f32[5000]
    #11 = cos $0 : f32[5000]
    #12 = add #10, #11 : f32[5000]
    #13 = mul #12, #3 : f32[5000]
    #14 = neg #13 : f32[5000]
    #15 = mul #14, $0 : f32[5000]
    #16 = add #7, #15 : f32[5000]
    #17 = add #16, #15 : f32[5000]
    #18 = mul #9, #3 : f32[5000]
    #19 = mul #18, #11 : f32[5000]
    #20 = add #17, #19 : f32[5000]
  return %1
}";

    fn w5() -> Program {
        let g = crate::ir::parse(W5).unwrap();
        Program::new(&g.fused[0], &[(DType::F32, &[5000])], &[5000])
    }

    #[test]
    fn sin_and_cos_of_one_value_are_one_step() {
        let p = w5();
        let both: Vec<&Step> = p.steps.iter().filter(|s| s.cos.is_some()).collect();
        assert_eq!(both.len(), 1, "{:?}", p.steps);
        assert_eq!(both[0].op, Op::Unary(Unary::Sin));
        assert!(p
            .steps
            .iter()
            .all(|s| !matches!(s.op, Op::Unary(Unary::Cos))));
    }

    #[test]
    fn negations_of_binary_values_read_once_fold_into_their_step() {
        let p = w5();
        // #2 = neg #1, #9 = neg #8, #14 = neg #13 fold; #5 = neg #4 does not (#4 is
        // also read by #6 and #7)
        let negs: Vec<Op> = p.steps.iter().filter(|s| s.neg).map(|s| s.op).collect();
        assert_eq!(
            negs,
            [Binary::Mul, Binary::Add, Binary::Mul].map(Op::Binary),
            "{:?}",
            p.steps
        );
        let left = p.steps.iter().filter(|s| s.op == Op::Unary(Unary::Neg));
        assert_eq!(left.count(), 1, "{:?}", p.steps);
        // 21 instructions: sin and cos in one step, three negations folded
        assert_eq!(p.steps.len(), 17, "{:?}", p.steps);
    }

    #[test]
    fn steps_share_registers_but_never_write_what_they_read() {
        let p = w5();
        let mut used: Vec<usize> = p.outer.regs.to_vec();
        for s in &p.steps {
            assert!(!s.args.contains(&s.reg) && s.cos.is_none_or(|c| !s.args.contains(&c)));
            used.extend(s.cos.into_iter().chain([s.reg]));
        }
        used.sort();
        used.dedup();
        // the load, the result and at most 6 live values at a time, instead of 21
        assert!(used.len() <= 8, "{} registers: {:?}", used.len(), p.steps);
        assert_eq!(
            used,
            (0..p.dtypes.len()).collect::<Vec<_>>(),
            "unused registers"
        );
    }

    #[test]
    fn a_param_in_loop_order_is_read_in_place() {
        let p = w5();
        assert_eq!(&p.outer.direct[..], &[true]);
        // a broadcast row is copied
        let g = crate::ir::parse(
            "graph(%0: f32[3,4], %1: f32[4]) {
  %2 = fused %0, %1 : f32[3,4]
    #0 = add $0, $1 : f32[3,4]
  return %2
}",
        )
        .unwrap();
        let p = Program::new(
            &g.fused[0],
            &[(DType::F32, &[3, 4]), (DType::F32, &[4])],
            &[3, 4],
        );
        assert_eq!(&p.outer.direct[..], &[true, false]);
    }
}
