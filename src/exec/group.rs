//! Step groups: elementwise steps of one type that a plan runs as one loop with several
//! outputs (multi-output fusion, decided at plan time).
//!
//! The fusion pass makes each `fused` node one loop with one result: a value that is
//! read outside its region (an LSTM cell's gates, `c` and `h`, all saved for the
//! backward loop) ends a region, so a cell is several loops over the same `[batch,
//! units]` elements, each reading its operands again and writing its result. A plan
//! groups such steps instead: from a *seed* (an elementwise step: a `fused` node
//! without sum or matmul, or a single elementwise op), it takes every later step of the
//! seed's exact dtype and shape whose operands are all computed before the seed, are
//! members already or are sources (inputs, constants, variable reads: bound before any
//! step runs), up to [`WINDOW`] steps on and [`MAX_MEMBERS`] members. The members'
//! expressions are concatenated into one [`FusedExpr`] (a member's operand that another
//! member computes becomes that member's instruction, read from its register), compiled
//! into one [`fused::Program`] whose further outputs are the other members' values.
//!
//! **When.** Only an in-order run uses groups: the whole group runs at the seed's place
//! (its operands are ready then, by construction) and the other members' places are
//! skipped. A dataflow run runs the members one by one, as before, since its tasks
//! start each member when that member's own operands are ready.
//!
//! **Bits.** Every value is computed by the same instructions from the same operands as
//! in the member's own loop, so each output has the bits the member alone would give.
//! A group never overwrites an operand in place: its outputs are fresh buffers.
//!
//! **Not grouped:** a step whose reshape or slice would read another member's value
//! (a view of a param only), sums and matmul prologues (their loops differ), steps of
//! another dtype or shape, and steps reading a collective (the run waits for those per
//! step).

use super::fused;
use crate::ir::{Arg, FusedExpr, Graph, Inst, NodeId};
use crate::ops::{FusionClass, Op};
use crate::tensor::{numel, DType};
use smallvec::SmallVec;
use std::collections::HashMap;

/// How many steps after its seed a group looks for members.
pub const WINDOW: usize = 48;

/// The most members of one group.
pub const MAX_MEMBERS: usize = 8;

/// Elementwise steps run as one loop (see the module docs).
pub(crate) struct Group {
    /// The member steps in plan order; the first (the seed) is where the group runs.
    pub members: SmallVec<[usize; 8]>,
    /// The steps whose values are the program's params, in param order.
    pub params: SmallVec<[usize; 8]>,
    /// The loop: its further outputs are the members' values but the last's, in plan
    /// order, and its result is the last member's.
    pub program: fused::Program,
}

/// The groups of a plan and, for each step, the group it belongs to.
pub(crate) struct Groups {
    pub groups: Vec<Group>,
    pub of_step: Vec<Option<u32>>,
}

/// A step as grouping sees it: its node, its operands' steps, and whether it is a
/// source (input, constant, variable read: bound before any step runs).
pub(crate) struct StepView<'a> {
    pub node: NodeId,
    pub operands: &'a [usize],
    pub source: bool,
}

/// The expression of an eligible step (see the module docs), over its operands.
fn expr_of(g: &Graph, n: NodeId) -> Option<FusedExpr> {
    let node = g.node(n);
    match node.op {
        Op::Fused(f) => {
            let e = &g.fused[f as usize];
            (e.sum_index().is_none() && e.matmul().is_none()).then(|| e.clone())
        }
        op if op.fusion_class() == FusionClass::Elementwise => {
            let k = g.operands(n).len() as u32;
            Some(FusedExpr {
                insts: vec![Inst {
                    op,
                    args: (0..k).map(Arg::Param).collect(),
                    dtype: node.dtype,
                    shape: node.shape.clone(),
                }],
            })
        }
        _ => None,
    }
}

/// Groups the steps of a plan (`steps` in plan order).
pub(crate) fn plan_groups(g: &Graph, steps: &[StepView]) -> Groups {
    let n = steps.len();
    let mut of_step: Vec<Option<u32>> = vec![None; n];
    let mut groups = Vec::new();
    let reads_collective =
        |i: usize| (steps[i].operands.iter()).any(|&o| g.node(steps[o].node).op.is_collective());
    let exprs: Vec<Option<FusedExpr>> = (0..n)
        .map(|i| {
            let node = g.node(steps[i].node);
            (numel(&node.shape) > 0 && !reads_collective(i))
                .then(|| expr_of(g, steps[i].node))
                .flatten()
        })
        .collect();
    for seed in 0..n {
        if of_step[seed].is_some() || exprs[seed].is_none() {
            continue;
        }
        let key = |i: usize| {
            let node = g.node(steps[i].node);
            (node.dtype, &node.shape[..])
        };
        let want = key(seed);
        let mut members: SmallVec<[usize; 8]> = SmallVec::from_elem(seed, 1);
        for t in seed + 1..n.min(seed + 1 + WINDOW) {
            if members.len() == MAX_MEMBERS {
                break;
            }
            let Some(e) = &exprs[t] else { continue };
            if of_step[t].is_some() || key(t) != want {
                continue;
            }
            let ops = steps[t].operands;
            let ready = |o: &usize| *o < seed || members.contains(o) || steps[*o].source;
            let views_member = e.insts.iter().any(|inst| {
                matches!(inst.op, Op::Reshape | Op::Slice { .. })
                    && inst
                        .args
                        .iter()
                        .any(|a| matches!(*a, Arg::Param(p) if members.contains(&ops[p as usize])))
            });
            if ops.iter().all(ready) && !views_member {
                members.push(t);
            }
        }
        if members.len() < 2 {
            continue;
        }
        let (dtype, shape) = want;
        if let Some(group) = build(g, steps, &exprs, members, dtype, shape) {
            let id = groups.len() as u32;
            for &m in &group.members {
                of_step[m] = Some(id);
            }
            groups.push(group);
        }
    }
    Groups { groups, of_step }
}

/// Concatenates the members' expressions into one and compiles it; `None` if the
/// result does not check (then the members run one by one).
fn build(
    g: &Graph,
    steps: &[StepView],
    exprs: &[Option<FusedExpr>],
    members: SmallVec<[usize; 8]>,
    dtype: DType,
    shape: &[usize],
) -> Option<Group> {
    let mut params: SmallVec<[usize; 8]> = SmallVec::new();
    let mut insts: Vec<Inst> = Vec::new();
    let mut result_of: HashMap<usize, u32> = HashMap::new();
    for &m in &members {
        let e = exprs[m].as_ref()?;
        let ops = steps[m].operands;
        let base = insts.len() as u32;
        for inst in &e.insts {
            let mut inst = inst.clone();
            for a in inst.args.iter_mut() {
                *a = match *a {
                    Arg::Inst(j) => Arg::Inst(base + j),
                    Arg::Param(p) => {
                        let o = ops[p as usize];
                        match result_of.get(&o) {
                            Some(&r) => Arg::Inst(r),
                            None => Arg::Param(match params.iter().position(|&q| q == o) {
                                Some(q) => q as u32,
                                None => {
                                    params.push(o);
                                    params.len() as u32 - 1
                                }
                            }),
                        }
                    }
                };
            }
            insts.push(inst);
        }
        result_of.insert(m, insts.len() as u32 - 1);
    }
    let e = FusedExpr { insts };
    let types: Vec<(DType, &[usize])> = (params.iter())
        .map(|&p| {
            let node = g.node(steps[p].node);
            (node.dtype, &node.shape[..])
        })
        .collect();
    match e.infer(&types) {
        Ok((d, s)) if d == dtype && s[..] == *shape => {}
        _ => return None,
    }
    let extra: Vec<usize> = (members[..members.len() - 1].iter())
        .map(|m| result_of[m] as usize)
        .collect();
    let program = fused::Program::with_outputs(&e, &types, shape, &extra);
    Some(Group {
        members,
        params,
        program,
    })
}

#[cfg(test)]
mod tests {
    use crate::exec::codegen::Codegen;
    use crate::exec::{Plan, RunStats, Schedule};
    use crate::ir::parse;
    use crate::tensor::{DType, Data};

    /// An LSTM-like cell: two gates read slices of one product, their product and its
    /// tanh, a negation, all saved; a matmul and a row sum of another shape between.
    const CELL: &str = "graph(%0: f32[6,40], %1: f32[6,10]) {
  %2 = fused %0, %1 : f32[6,10]
    #0 = slice[axis=1, start=0, end=10] $0 : f32[6,10]
    #1 = add #0, $1 : f32[6,10]
    #2 = sigmoid #1 : f32[6,10]
  %3 = fused %0, %1 : f32[6,10]
    #0 = slice[axis=1, start=10, end=20] $0 : f32[6,10]
    #1 = add #0, $1 : f32[6,10]
    #2 = tanh #1 : f32[6,10]
  %4 = mul %2, %3 : f32[6,10]
  %5 = tanh %4 : f32[6,10]
  %6 = matmul[tb=true] %5, %1 : f32[6,6]
  %7 = neg %2 : f32[6,10]
  %8 = sum[axes=[1], keep=true] %5 : f32[6,1]
  %9 = mul %5, %8 : f32[6,10]
  return %4, %5, %6, %7, %3, %9
}";

    fn bits(out: &[Data]) -> Vec<Vec<u64>> {
        let t = |d: &Data| crate::Tensor::from_data(d.clone()).to_vec_f64().unwrap();
        out.iter()
            .map(|d| t(d).iter().map(|v| v.to_bits()).collect())
            .collect()
    }

    fn run(plan: &Plan, schedule: Schedule, codegen: Codegen) -> (Vec<Vec<u64>>, RunStats) {
        let data = |shape: &[usize], seed: u64| {
            let t = crate::Tensor::random_uniform(shape, -2.0, 2.0, seed, DType::F32);
            t.data().unwrap().clone()
        };
        let args = [data(&[6, 40], 1), data(&[6, 10], 2)];
        let refs: Vec<&Data> = args.iter().collect();
        plan.set_schedule(schedule);
        plan.set_codegen(codegen);
        let mut stats = RunStats::default();
        let out = plan.run(&refs, &mut stats).unwrap();
        (bits(&out), stats)
    }

    /// The cell's five same-typed steps run as one loop in order; the step reading the
    /// row sum (computed after the seed, outside the group) runs alone. The outputs
    /// have the bits of the members run one by one (the dataflow schedule), with the
    /// interpreter and with generated code.
    #[test]
    fn a_cell_runs_as_one_loop_with_the_bits_of_its_steps() {
        let plan = Plan::new(parse(CELL).unwrap()).unwrap();
        assert_eq!(plan.step_groups(), [5]);
        let (one_by_one, par) = run(&plan, Schedule::Parallel, Codegen::Off);
        assert!(par.parallel);
        let (grouped, seq) = run(&plan, Schedule::Sequential, Codegen::Off);
        assert!(!seq.parallel);
        assert_eq!(grouped, one_by_one);
        // the group is one kernel where the dataflow run has five
        assert_eq!(par.steps - seq.steps, 4);
        let (generated, _) = run(&plan, Schedule::Sequential, Codegen::Force);
        assert_eq!(generated, one_by_one);
        if crate::exec::codegen::compiler_available() {
            let (running, all) = plan.generated_steps();
            assert_eq!(
                running, all,
                "every loop, the group's too, runs generated code"
            );
        }
    }

    /// A step that reads a value computed after the seed by a step outside the group
    /// cannot join it: the group runs at the seed's place, before that value exists.
    #[test]
    fn a_step_waiting_for_a_later_value_stays_out() {
        let text = "graph(%0: f32[4,8]) {
  %1 = exp %0 : f32[4,8]
  %2 = sum[axes=[1], keep=true] %1 : f32[4,1]
  %3 = div %1, %2 : f32[4,8]
  %4 = neg %3 : f32[4,8]
  return %1, %4
}";
        let plan = Plan::new(parse(text).unwrap()).unwrap();
        // %1 has no later member (%3 waits for the sum); %3 and %4 form a group
        assert_eq!(plan.step_groups(), [2]);
    }
}
