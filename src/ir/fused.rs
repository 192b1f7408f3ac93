//! Fused expressions: the straight-line programs inside `fused` nodes.
//!
//! A [`FusedExpr`] is a small straight-line program made by the fusion pass: instructions
//! in topological order over the fused node's operands (`$i`, its *params*) and earlier
//! instructions (`#k`); the last instruction is the result. Instructions are elementwise
//! ops (unary, binary, compare, select, float casts), `broadcast`, and `reshape` or
//! `slice` of a param (which reads the param's buffer with the new shape, or from the
//! slice's first element with the param's strides), plus two optional parts:
//! - a **matmul prologue**: instruction 0 is `matmul $0, $1` of the result's shape. The
//!   kernel runs the ordinary matmul kernel into the output buffer and applies the rest
//!   of the expression to it in place (bias + activation epilogues);
//! - one **sum**: the instructions before it compute the summed value (`square(a - b)`
//!   in `sum(square(a - b))`), accumulated while it is produced; the instructions after
//!   it are elementwise on the sum's result (`mean`'s scaling, an SGD update of a bias).
//!
//! Invariants ([`FusedExpr::infer`] checks them):
//! - every value broadcasts to the shape of its loop: the summed value's shape before the
//!   sum, the result's shape otherwise; the sum's result has as many elements as the
//!   result (one sum per result element). So every value can be evaluated at the current
//!   index of its loop: a param is read through strides (0 along its broadcast axes) and
//!   `broadcast` is the identity on a scalar; instructions after the sum read only the
//!   sum, later instructions and params;
//! - each instruction's declared type is what its op infers from its arguments.
//!
//! [`crate::exec`] compiles a fused expression for its operands' types and runs it in
//! one loop.

use crate::ops::{FusionClass, Op};
use crate::tensor::{broadcast_shapes, numel, type_str, DType, Shape};
use smallvec::SmallVec;

/// An argument of an instruction: a param (operand of the fused node) or an earlier instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Arg {
    /// Operand `n` of the fused node (`$n` in the text IR).
    Param(u32),
    /// The value of instruction `n` (`#n` in the text IR).
    Inst(u32),
}

/// One instruction of a fused expression.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Inst {
    /// The op (elementwise, `broadcast`, a leading `matmul` or a trailing `sum`).
    pub op: Op,
    /// Its arguments in slot order.
    pub args: SmallVec<[Arg; 3]>,
    /// Result dtype.
    pub dtype: DType,
    /// Result shape.
    pub shape: Shape,
}

/// A fused region as a straight-line program: instructions in topological order over
/// the fused node's operands (`$i`) and earlier instructions (`#k`), the last one the
/// result; [`FusedExpr::infer`] checks its invariants.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct FusedExpr {
    /// Instructions in evaluation order; the last is the result.
    pub insts: Vec<Inst>,
}

impl FusedExpr {
    /// The result instruction.
    ///
    /// # Panics
    /// If the expression is empty (which [`FusedExpr::infer`] rejects).
    pub fn result(&self) -> &Inst {
        self.insts
            .last()
            .expect("a fused expression has instructions")
    }

    /// `(ta, tb)` of the matmul prologue, if there is one.
    pub fn matmul(&self) -> Option<(bool, bool)> {
        match self.insts.first().map(|i| i.op) {
            Some(Op::MatMul { ta, tb }) => Some((ta, tb)),
            _ => None,
        }
    }

    /// The position of the `sum` instruction, if there is one.
    pub fn sum_index(&self) -> Option<usize> {
        self.insts
            .iter()
            .position(|i| matches!(i.op, Op::Sum { .. }))
    }

    /// Checks the expression against the fused node's operand types and returns the
    /// result type, or says what is wrong (naming the instruction).
    pub fn infer(&self, params: &[(DType, &[usize])]) -> Result<(DType, Shape), String> {
        let n = self.insts.len();
        if n == 0 {
            return Err("empty fused expression".into());
        }
        let s = self.sum_index();
        let mut used = vec![false; params.len()];
        let mut types: Vec<(DType, Shape)> = Vec::with_capacity(n);
        for (k, inst) in self.insts.iter().enumerate() {
            let here = |m: String| format!("#{k} {}: {m}", inst.op.name());
            let mut owned: SmallVec<[(DType, Shape); 3]> = SmallVec::new();
            for a in &inst.args {
                owned.push(match *a {
                    Arg::Param(p) => {
                        let (d, s) = params
                            .get(p as usize)
                            .ok_or_else(|| here(format!("${p} is not an operand")))?;
                        used[p as usize] = true;
                        (*d, Shape::from_slice(s))
                    }
                    // values after the sum live in the result's index space, values before it in the summed one
                    Arg::Inst(j) if s.is_some_and(|s| k > s && (j as usize) < s) => {
                        return Err(here(format!(
                            "#{j} is computed before the sum and cannot be read after it"
                        )))
                    }
                    Arg::Inst(j) if (j as usize) < k => types[j as usize].clone(),
                    Arg::Inst(j) => {
                        return Err(here(format!("#{j} is not an earlier instruction")))
                    }
                });
            }
            let arg_types: SmallVec<[(DType, &[usize]); 3]> =
                owned.iter().map(|(d, s)| (*d, &s[..])).collect();
            match inst.op {
                Op::MatMul { .. } => {
                    if k != 0 || inst.args[..] != [Arg::Param(0), Arg::Param(1)] {
                        return Err(here("a matmul must be instruction #0 of `$0, $1`".into()));
                    }
                }
                Op::Sum { .. } => {
                    if s != Some(k) {
                        return Err(here("only one sum may be fused".into()));
                    }
                }
                Op::Reshape | Op::Slice { .. } => {
                    if !matches!(inst.args[..], [Arg::Param(_)]) {
                        return Err(here(format!(
                            "a {} must read an operand (`{} $n`)",
                            inst.op.name(),
                            inst.op.name()
                        )));
                    }
                }
                op if op.fusion_class() == FusionClass::Elementwise => {}
                _ => return Err(here("this op cannot be fused".into())),
            }
            let (d, sh) = inst.op.infer(&arg_types, Some(&inst.shape)).map_err(here)?;
            if d != inst.dtype || sh != inst.shape {
                return Err(here(format!(
                    "declared {} but infers {}",
                    type_str(inst.dtype, &inst.shape),
                    type_str(d, &sh)
                )));
            }
            types.push((d, sh));
        }
        if let Some(p) = used.iter().position(|u| !u) {
            return Err(format!("operand ${p} is not used by the expression"));
        }
        let result = &self.result().shape;
        let r = self.result();
        if self.matmul().is_some()
            && (s.is_some() || self.insts[0].shape != r.shape || self.insts[0].dtype != r.dtype)
        {
            return Err(
                "a matmul prologue needs an elementwise result of its own type and no sum".into(),
            );
        }
        if s.is_some_and(|s| numel(&self.insts[s].shape) != numel(result)) {
            return Err(
                "the sum's result must not be broadcast (one sum per result element)".into(),
            );
        }
        let summed: Shape = match s.map(|s| self.insts[s].args[0]) {
            Some(Arg::Param(p)) => Shape::from_slice(params[p as usize].1),
            Some(Arg::Inst(j)) => types[j as usize].1.clone(),
            None => result.clone(),
        };
        for (k, inst) in self.insts.iter().enumerate() {
            let space: &[usize] = match s {
                Some(s) if k == s => continue,
                Some(s) if k < s => &summed,
                _ => result,
            };
            if broadcast_shapes(&inst.shape, space).as_deref() != Some(space) {
                return Err(format!(
                    "#{k} {} does not broadcast to its loop's shape {space:?}",
                    type_str(inst.dtype, &inst.shape)
                ));
            }
        }
        Ok(types.pop().expect("n > 0"))
    }

    /// For each param (of the given types), whether the result may be written over it
    /// while it is read: true when the param is read only at the index being written
    /// (it has the result's exact type, is not broadcast or reshaped) and there is no
    /// matmul or sum. One pass over the instructions.
    pub fn overwritable(&self, params: &[(DType, &[usize])]) -> Vec<bool> {
        let r = self.result();
        let whole = self.matmul().is_none() && self.sum_index().is_none();
        let mut ok: Vec<bool> = (params.iter())
            .map(|&(d, s)| whole && d == r.dtype && s == &r.shape[..])
            .collect();
        for i in &self.insts {
            if let (Op::Reshape | Op::Slice { .. }, [Arg::Param(p)]) = (i.op, &i.args[..]) {
                if let Some(o) = ok.get_mut(*p as usize) {
                    *o = false;
                }
            }
        }
        ok
    }
}
