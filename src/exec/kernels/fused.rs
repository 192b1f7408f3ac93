//! The fused kernel and the expression it runs.
//!
//! A [`FusedExpr`] is a small straight-line program made by the fusion pass: instructions
//! in topological order over the fused node's operands (`$i`, its *params*) and earlier
//! instructions (`#k`); the last instruction is the result. Instructions are elementwise
//! ops (unary, binary, compare, select, float casts), `broadcast`, and `reshape` of a
//! param (which reads the param's buffer with the new shape), plus two optional parts:
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
//! The kernel makes one loop over the result's elements (with, for a sum, an inner loop
//! over each element's reduced elements) and evaluates the whole expression per element
//! in registers: no tensor-sized intermediate buffer exists. Every instruction calls its
//! op's own scalar function ([`Unary::f`](crate::ops::Unary::f),
//! [`Binary::f`](crate::ops::Binary::f), [`Compare::f`](crate::ops::Compare::f), the same
//! `as` conversions as `cast`), in the same order as the unfused graph, so results are
//! bit-identical to it. The sum adds in exactly the order of
//! [`reduce::sum`](super::reduce::sum): a fixed 8-lane tree for a full reduction, one
//! sequential fold per reduced axis (innermost first) otherwise. Output elements are
//! independent, so splitting the loop across threads never changes a bit.

use super::ew::fill_par;
use crate::ops::{FusionClass, Op};
use crate::tensor::{broadcast_shapes, numel, type_str, Arr, DType, Data, Shape};
use ndarray::IxDyn;
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

/// A fused region as a straight-line program; see the [module docs](self).
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
        self.insts.last().expect("a fused expression has instructions")
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
        self.insts.iter().position(|i| matches!(i.op, Op::Sum { .. }))
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
                        let (d, s) = params.get(p as usize).ok_or_else(|| here(format!("${p} is not an operand")))?;
                        used[p as usize] = true;
                        (*d, Shape::from_slice(s))
                    }
                    // values after the sum live in the result's index space, values before it in the summed one
                    Arg::Inst(j) if s.is_some_and(|s| k > s && (j as usize) < s) => {
                        return Err(here(format!("#{j} is computed before the sum and cannot be read after it")))
                    }
                    Arg::Inst(j) if (j as usize) < k => types[j as usize].clone(),
                    Arg::Inst(j) => return Err(here(format!("#{j} is not an earlier instruction"))),
                });
            }
            let arg_types: SmallVec<[(DType, &[usize]); 3]> = owned.iter().map(|(d, s)| (*d, &s[..])).collect();
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
                Op::Reshape => {
                    if !matches!(inst.args[..], [Arg::Param(_)]) {
                        return Err(here("a reshape must read an operand (`reshape $n`)".into()));
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
        if self.matmul().is_some() && (s.is_some() || self.insts[0].shape != r.shape || self.insts[0].dtype != r.dtype) {
            return Err("a matmul prologue needs an elementwise result of its own type and no sum".into());
        }
        if s.is_some_and(|s| numel(&self.insts[s].shape) != numel(result)) {
            return Err("the sum's result must not be broadcast (one sum per result element)".into());
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
                return Err(format!("#{k} {} does not broadcast to its loop's shape {space:?}", type_str(inst.dtype, &inst.shape)));
            }
        }
        Ok(types.pop().expect("n > 0"))
    }

    /// Whether the result may be written over param `p` (of type `param`) while it is
    /// read: true when the param is read only at the index being written (it has the
    /// result's exact type, is not broadcast or reshaped) and there is no matmul or sum.
    pub fn can_overwrite(&self, p: usize, param: (DType, &[usize])) -> bool {
        let r = self.result();
        let reshaped = self.insts.iter().any(|i| i.op == Op::Reshape && i.args[..] == [Arg::Param(p as u32)]);
        self.matmul().is_none() && self.sum_index().is_none() && !reshaped && param.0 == r.dtype && param.1 == &r.shape[..]
    }
}

/// Where the kernel writes its result.
pub enum OutBuf {
    /// A new buffer.
    Fresh,
    /// A dead buffer whose allocation may be reused (ignored unless uniquely owned and of
    /// the result's dtype).
    Spare(Data),
    /// Param `k`'s value, dying here: the result overwrites it in place when it is
    /// uniquely owned (the caller passes `None` for that param); else it is only read.
    Operand(usize, Data),
}

/// Runs the expression on its params (`None` only for the param given as
/// [`OutBuf::Operand`]); `shape` is the fused node's shape.
pub fn eval(e: &FusedExpr, x: &[Option<&Data>], shape: &[usize], out: OutBuf) -> Data {
    match e.result().dtype {
        DType::F32 => run::<f32>(e, x, shape, out),
        DType::F64 => run::<f64>(e, x, shape, out),
        DType::I64 => run::<i64>(e, x, shape, out),
    }
}

/// A scalar register.
#[derive(Clone, Copy, Debug)]
enum Scalar {
    F32(f32),
    F64(f64),
    I64(i64),
}

/// An element type of a result buffer.
trait Elem: Copy + Default + Send + Sync + 'static {
    fn get(s: Scalar) -> Self;
    fn put(self) -> Scalar;
    /// The buffer's elements, if `d` holds this type and owns them alone.
    fn take_vec(d: Data) -> Result<Vec<Self>, Data>;
    fn wrap(a: Arr<Self>) -> Data;
}

macro_rules! elem {
    ($t:ty, $v:ident) => {
        impl Elem for $t {
            #[inline(always)]
            fn get(s: Scalar) -> $t {
                match s {
                    Scalar::$v(x) => x,
                    _ => unreachable!("infer checks the result dtype"),
                }
            }
            #[inline(always)]
            fn put(self) -> Scalar {
                Scalar::$v(self)
            }
            fn take_vec(d: Data) -> Result<Vec<$t>, Data> {
                match d {
                    Data::$v(a) if a.is_standard_layout() => match a.try_into_owned_nocopy() {
                        Ok(owned) => {
                            let n = owned.len();
                            let (mut v, off) = owned.into_raw_vec_and_offset();
                            v.drain(..off.unwrap_or(0));
                            v.truncate(n);
                            Ok(v)
                        }
                        Err(shared) => Err(Data::$v(shared)),
                    },
                    other => Err(other),
                }
            }
            fn wrap(a: Arr<$t>) -> Data {
                Data::$v(a)
            }
        }
    };
}
elem!(f32, F32);
elem!(f64, F64);
elem!(i64, I64);

/// A param as the loop reads it.
#[derive(Clone, Copy)]
enum Src<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
    I64(&'a [i64]),
    /// The value at the current position of the output buffer (matmul result or a param overwritten in place).
    Out,
}

impl<'a> Src<'a> {
    fn of(d: &'a Data) -> Src<'a> {
        match d {
            Data::F32(a) => Src::F32(a.as_slice().expect("kernel results are in standard layout")),
            Data::F64(a) => Src::F64(a.as_slice().expect("kernel results are in standard layout")),
            Data::I64(a) => Src::I64(a.as_slice().expect("kernel results are in standard layout")),
        }
    }

    #[inline(always)]
    fn read(self, off: usize, cur: Scalar) -> Scalar {
        match self {
            Src::F32(s) => Scalar::F32(s[off]),
            Src::F64(s) => Scalar::F64(s[off]),
            Src::I64(s) => Scalar::I64(s[off]),
            Src::Out => cur,
        }
    }
}

/// `op(args)` on scalars, with the op's own scalar function.
#[inline(always)]
fn apply(op: Op, a: &[Scalar]) -> Scalar {
    use Scalar::*;
    match op {
        Op::Unary(u) => match a[0] {
            F32(x) => F32(u.f(x)),
            F64(x) => F64(u.f(x)),
            I64(_) => unreachable!("infer rejects integer operands of unary ops"),
        },
        Op::Binary(b) => match (a[0], a[1]) {
            (F32(x), F32(y)) => F32(b.f(x, y)),
            (F64(x), F64(y)) => F64(b.f(x, y)),
            (I64(x), I64(y)) => I64(b.fi().expect("infer rejects integer operands")(x, y)),
            _ => unreachable!("infer checks binary dtypes"),
        },
        Op::Compare(c) => match (a[0], a[1]) {
            (F32(x), F32(y)) => F32(if c.f(x, y) { 1.0 } else { 0.0 }),
            (F64(x), F64(y)) => F64(if c.f(x, y) { 1.0 } else { 0.0 }),
            (I64(x), I64(y)) => I64(c.f(x, y) as i64),
            _ => unreachable!("infer checks compare dtypes"),
        },
        Op::Select => {
            let m = match a[0] {
                F32(v) => v != 0.0,
                F64(v) => v != 0.0,
                I64(v) => v != 0,
            };
            if m {
                a[1]
            } else {
                a[2]
            }
        }
        // the conversions of `ops::shape::cast`
        Op::Cast(to) => match (a[0], to) {
            (F32(v), DType::F64) => F64(v as f64),
            (F32(v), DType::I64) => I64(v as i64),
            (F64(v), DType::F32) => F32(v as f32),
            (F64(v), DType::I64) => I64(v as i64),
            (I64(v), DType::F32) => F32(v as f32),
            (I64(v), DType::F64) => F64(v as f64),
            (s, _) => s,
        },
        Op::BroadcastTo => a[0],
        _ => unreachable!("infer admits only elementwise ops inside the loop"),
    }
}

/// The loop: a multi-index over `dims` (row-major) and each param's offset at it.
struct Cursor<'s> {
    dims: &'s [usize],
    /// `strides[p][d]`: how far param `p`'s offset moves per step along loop axis `d`.
    strides: &'s [SmallVec<[usize; 6]>],
    idx: SmallVec<[usize; 6]>,
    offs: SmallVec<[usize; 8]>,
}

impl<'s> Cursor<'s> {
    /// A cursor at flat position `start`.
    fn new(dims: &'s [usize], strides: &'s [SmallVec<[usize; 6]>], start: usize) -> Cursor<'s> {
        let mut idx: SmallVec<[usize; 6]> = SmallVec::from_elem(0, dims.len());
        let mut rest = start;
        for d in (0..dims.len()).rev() {
            if dims[d] > 0 {
                idx[d] = rest % dims[d];
                rest /= dims[d];
            }
        }
        let offs = strides.iter().map(|st| idx.iter().zip(st).map(|(i, s)| i * s).sum()).collect();
        Cursor { dims, strides, idx, offs }
    }

    #[inline(always)]
    fn advance(&mut self) {
        for d in (0..self.dims.len()).rev() {
            self.idx[d] += 1;
            for (o, st) in self.offs.iter_mut().zip(self.strides) {
                *o += st[d];
            }
            if self.idx[d] < self.dims[d] {
                return;
            }
            for (o, st) in self.offs.iter_mut().zip(self.strides) {
                *o -= st[d] * self.dims[d];
            }
            self.idx[d] = 0;
        }
    }
}

/// An operand of a compiled step: a load (by index in its loop's loads) or a register.
#[derive(Clone, Copy)]
enum Operand {
    Load(usize),
    Reg(usize),
}

/// One instruction, compiled: its op and where its arguments come from.
struct Step {
    op: Op,
    args: SmallVec<[Operand; 3]>,
}

/// The reads of one loop (the summed index space, or the result's): where each load
/// reads and its shape (its strides follow from the shape and the loop's shape).
#[derive(Default)]
struct Loads<'a> {
    srcs: SmallVec<[Src<'a>; 8]>,
    shapes: SmallVec<[Shape; 8]>,
    /// (param, reshape instruction) of each load, to share loads of the same view.
    keys: SmallVec<[(usize, Option<usize>); 8]>,
}

impl<'a> Loads<'a> {
    fn get(&mut self, key: (usize, Option<usize>), src: Src<'a>, shape: &[usize]) -> usize {
        if let Some(i) = self.keys.iter().position(|k| *k == key) {
            return i;
        }
        self.keys.push(key);
        self.srcs.push(src);
        self.shapes.push(Shape::from_slice(shape));
        self.srcs.len() - 1
    }

    /// Per-load strides along the loop axes `order` of `loop_shape` (0 where a load
    /// broadcasts or reads the output buffer).
    fn strides(&self, loop_shape: &[usize], order: &[usize]) -> Vec<SmallVec<[usize; 6]>> {
        self.shapes
            .iter()
            .zip(&self.srcs)
            .map(|(s, src)| match src {
                Src::Out => SmallVec::from_elem(0, order.len()),
                _ => {
                    let bs = broadcast_strides(s, loop_shape);
                    order.iter().map(|&d| bs[d]).collect()
                }
            })
            .collect()
    }
}

/// Evaluates `steps[range]` at one point of a loop; `cur` is the output buffer's value there.
#[inline(always)]
fn eval_steps(steps: &[Step], range: std::ops::Range<usize>, loads: &Loads, offs: &[usize], cur: Scalar, regs: &mut [Scalar]) {
    let mut args: SmallVec<[Scalar; 3]> = SmallVec::new();
    for k in range {
        let st = &steps[k];
        args.clear();
        for a in &st.args {
            args.push(match *a {
                Operand::Load(l) => loads.srcs[l].read(offs[l], cur),
                Operand::Reg(j) => regs[j],
            });
        }
        regs[k] = match st.op {
            Op::MatMul { .. } => cur, // computed into the output buffer before the loop
            Op::Reshape => args[0],   // a load with the reshaped strides
            Op::Sum { .. } => args[0], // one element of the sum; the loop accumulates it
            op => apply(op, &args),
        };
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

/// Strides of a `shape` buffer along each axis of `it` (right-aligned broadcasting: 0 on
/// broadcast axes).
fn broadcast_strides(shape: &[usize], it: &[usize]) -> SmallVec<[usize; 6]> {
    let cs = contiguous(shape);
    let lead = it.len() - shape.len();
    (0..it.len())
        .map(|d| if d < lead || shape[d - lead] == 1 { 0 } else { cs[d - lead] })
        .collect()
}

fn zero(d: DType) -> Scalar {
    match d {
        DType::F32 => Scalar::F32(0.0),
        DType::F64 => Scalar::F64(0.0),
        DType::I64 => unreachable!("infer checks that sums are of floats"),
    }
}

fn run<O: Elem>(e: &FusedExpr, x: &[Option<&Data>], shape: &[usize], out: OutBuf) -> Data {
    let n_out = numel(shape);
    let mut buf: Option<Vec<O>> = None;
    let mut held: Option<Data> = None; // an operand we were handed but could not overwrite
    let mut from_out: Option<usize> = None;
    if let Some((ta, tb)) = e.matmul() {
        let (a, b) = (x[0].expect("matmul operands are given"), x[1].expect("matmul operands are given"));
        let m = Op::MatMul { ta, tb }.eval(&[a, b], shape).expect("matmul cannot fail at run time");
        buf = Some(O::take_vec(m).unwrap_or_else(|_| unreachable!("a fresh matmul result is owned")));
    } else {
        match out {
            OutBuf::Fresh => {}
            OutBuf::Spare(d) => {
                buf = O::take_vec(d).ok().map(|mut v| {
                    v.clear();
                    v.resize(n_out, O::default());
                    v
                })
            }
            OutBuf::Operand(k, d) => match O::take_vec(d) {
                Ok(v) if v.len() == n_out => {
                    buf = Some(v);
                    from_out = Some(k);
                }
                Ok(_) => unreachable!("the planner overwrites only operands of the result's type"),
                Err(d) => held = Some(d),
            },
        }
    }
    let mut buf = buf.unwrap_or_else(|| vec![O::default(); n_out]);
    let param = |p: usize| -> (Src, Shape) {
        match (x[p], from_out) {
            (_, Some(k)) if k == p => (Src::Out, Shape::from_slice(shape)),
            (Some(d), _) => (Src::of(d), d.shape()),
            (None, _) => {
                let d = held.as_ref().expect("the caller's operand is held");
                (Src::of(d), d.shape())
            }
        }
    };
    // compile: each argument becomes a load of the loop it is read in, or a register
    let s = e.sum_index();
    let (mut inner, mut outer) = (Loads::default(), Loads::default());
    let mut steps: Vec<Step> = Vec::with_capacity(e.insts.len());
    for (k, inst) in e.insts.iter().enumerate() {
        let loads = if s.is_some_and(|s| k <= s) { &mut inner } else { &mut outer };
        let args = match (inst.op, &inst.args[..]) {
            (Op::MatMul { .. }, _) => SmallVec::new(),
            (Op::Reshape, [Arg::Param(p)]) => {
                let (src, _) = param(*p as usize);
                SmallVec::from_elem(Operand::Load(loads.get((*p as usize, Some(k)), src, &inst.shape)), 1)
            }
            _ => inst
                .args
                .iter()
                .map(|a| match *a {
                    Arg::Param(p) => {
                        let (src, sh) = param(p as usize);
                        Operand::Load(loads.get((p as usize, None), src, &sh))
                    }
                    Arg::Inst(j) => Operand::Reg(j as usize),
                })
                .collect(),
        };
        steps.push(Step { op: inst.op, args });
    }
    let nregs = steps.len();
    let result = match s {
        None => {
            let all: Vec<usize> = (0..shape.len()).collect();
            let strides = outer.strides(shape, &all);
            fill_par(&mut buf, |off, chunk| {
                let mut c = Cursor::new(shape, &strides, off);
                let mut regs = vec![Scalar::I64(0); nregs];
                for o in chunk.iter_mut() {
                    eval_steps(&steps, 0..nregs, &outer, &c.offs, o.put(), &mut regs);
                    *o = O::get(regs[nregs - 1]);
                    c.advance();
                }
            });
            buf
        }
        Some(s) => {
            let Op::Sum { axes, .. } = e.insts[s].op else { unreachable!("sum_index points at a sum") };
            let it: Shape = match e.insts[s].args[0] {
                Arg::Param(p) => param(p as usize).1,
                Arg::Inst(j) => e.insts[j as usize].shape.clone(),
            };
            let z = zero(e.insts[s].dtype);
            // inner loop order: kept axes, then reduced axes (each output's lane is contiguous)
            let kept: Vec<usize> = (0..it.len()).filter(|&d| !axes.contains(d)).collect();
            let red: Vec<usize> = (0..it.len()).filter(|&d| axes.contains(d)).collect();
            let order: Vec<usize> = kept.iter().chain(&red).copied().collect();
            let dims: Vec<usize> = order.iter().map(|&d| it[d]).collect();
            let red_dims: Vec<usize> = red.iter().map(|&d| it[d]).collect();
            let lane: usize = red_dims.iter().product();
            let (istrides, ostrides) = (inner.strides(&it, &order), outer.strides(shape, &(0..shape.len()).collect::<Vec<_>>()));
            // one element of the summed value, at the inner cursor
            let element = |c: &Cursor, regs: &mut [Scalar]| {
                eval_steps(&steps, 0..s + 1, &inner, &c.offs, Scalar::I64(0), regs);
                regs[s]
            };
            if red.len() == it.len() {
                // full reduction: `reduce::sum` takes the 8-lane path
                let mut c = Cursor::new(&dims, &istrides, 0);
                let mut regs = vec![Scalar::I64(0); nregs];
                let mut acc = Lanes8::new(lane, z);
                for _ in 0..lane {
                    acc.push(element(&c, &mut regs));
                    c.advance();
                }
                regs[s] = acc.finish();
                let oc = Cursor::new(shape, &ostrides, 0);
                eval_steps(&steps, s + 1..nregs, &outer, &oc.offs, Scalar::I64(0), &mut regs);
                buf = vec![O::get(regs[nregs - 1]); n_out];
            } else {
                fill_par(&mut buf, |off, chunk| {
                    let mut c = Cursor::new(&dims, &istrides, off * lane);
                    let mut oc = Cursor::new(shape, &ostrides, off);
                    let mut regs = vec![Scalar::I64(0); nregs];
                    for o in chunk.iter_mut() {
                        let v = fold_axes(&red_dims, z, &mut || {
                            let v = element(&c, &mut regs);
                            c.advance();
                            v
                        });
                        regs[s] = v;
                        eval_steps(&steps, s + 1..nregs, &outer, &oc.offs, Scalar::I64(0), &mut regs);
                        *o = O::get(regs[nregs - 1]);
                        oc.advance();
                    }
                });
            }
            buf
        }
    };
    O::wrap(Arr::from_shape_vec(IxDyn(shape), result).expect("length matches shape"))
}

fn add(a: Scalar, b: Scalar) -> Scalar {
    match (a, b) {
        (Scalar::F32(x), Scalar::F32(y)) => Scalar::F32(x + y),
        (Scalar::F64(x), Scalar::F64(y)) => Scalar::F64(x + y),
        _ => unreachable!("infer checks that sums are of floats"),
    }
}

/// The order of `reduce::reduce` for partial sums: the last reduced axis folds first,
/// each fold sequential from zero. `next` yields the lane's elements in row-major order
/// over the reduced axes.
fn fold_axes(dims: &[usize], zero: Scalar, next: &mut dyn FnMut() -> Scalar) -> Scalar {
    let Some((&n, rest)) = dims.split_first() else {
        return next();
    };
    let mut acc = zero;
    for _ in 0..n {
        acc = add(acc, fold_axes(rest, zero, next));
    }
    acc
}

/// The order of `reduce::sum_slice`: 8 accumulators over whole chunks of 8, a fixed
/// tree, then the remainder in order.
struct Lanes8 {
    acc: [Scalar; 8],
    full: usize,
    seen: usize,
    total: Option<Scalar>,
}

impl Lanes8 {
    fn new(n: usize, zero: Scalar) -> Self {
        Lanes8 { acc: [zero; 8], full: n - n % 8, seen: 0, total: None }
    }

    fn tree(&self) -> Scalar {
        let a = &self.acc;
        add(add(add(a[0], a[1]), add(a[2], a[3])), add(add(a[4], a[5]), add(a[6], a[7])))
    }

    fn push(&mut self, v: Scalar) {
        if self.seen < self.full {
            let l = self.seen % 8;
            self.acc[l] = add(self.acc[l], v);
        } else {
            let t = self.total.unwrap_or_else(|| self.tree());
            self.total = Some(add(t, v));
        }
        self.seen += 1;
    }

    fn finish(self) -> Scalar {
        self.total.unwrap_or_else(|| self.tree())
    }
}
