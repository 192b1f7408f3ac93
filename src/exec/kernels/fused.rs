//! The fused kernel and the expression it runs.
//!
//! A [`FusedExpr`] is a small straight-line program made by the fusion pass: instructions
//! in topological order over the fused node's operands (`$i`, its *params*) and earlier
//! instructions (`#k`); the last instruction is the result. Instructions are elementwise
//! ops (unary, binary, compare, select, float casts) and `broadcast`, plus two optional ends:
//! - a **matmul prologue**: instruction 0 is `matmul $0, $1` of the result's shape. The
//!   kernel runs the ordinary matmul kernel into the output buffer and applies the rest
//!   of the expression to it in place (bias + activation epilogues);
//! - a **sum epilogue**: the last instruction is a `sum` of the instruction before it
//!   (`sum(square(a - b))`), accumulated while the elements are produced.
//!
//! Invariants ([`FusedExpr::infer`] checks them):
//! - every value of the expression broadcasts to the *iteration shape* (the result's
//!   shape, or the summed value's shape for a sum epilogue). So every value can be
//!   evaluated at the current index of the iteration space: a param is read through
//!   strides (0 along its broadcast axes) and `broadcast` is the identity on a scalar;
//! - each instruction's declared type is what its op infers from its arguments.
//!
//! The kernel makes one loop over the iteration space and evaluates the whole expression
//! per element in registers: no tensor-sized intermediate buffer exists. Every
//! instruction calls its op's own scalar function ([`Unary::f`](crate::ops::Unary::f),
//! [`Binary::f`](crate::ops::Binary::f), [`Compare::f`](crate::ops::Compare::f), the same
//! `as` conversions as `cast`), in the same order as the unfused graph, so results are
//! bit-identical to it. The sum epilogue adds in exactly the order of
//! [`reduce::sum`](super::reduce::sum): a fixed 8-lane tree for a full reduction, one
//! sequential fold per reduced axis (innermost first) otherwise. Output elements are
//! independent, so splitting the loop across threads never changes a bit.

use super::ew::fill_par;
use crate::ops::{AxisSet, FusionClass, Op};
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

    /// `(axes, keep)` of the sum epilogue, if there is one.
    pub fn sum(&self) -> Option<(AxisSet, bool)> {
        match self.insts.last().map(|i| i.op) {
            Some(Op::Sum { axes, keep }) => Some((axes, keep)),
            _ => None,
        }
    }

    /// The shape of the loop: the result's, or the summed value's for a sum epilogue.
    pub fn iteration_shape(&self) -> &[usize] {
        match (self.sum(), self.insts.len()) {
            (Some(_), n) if n >= 2 => &self.insts[n - 2].shape,
            _ => &self.result().shape,
        }
    }

    /// Checks the expression against the fused node's operand types and returns the
    /// result type, or says what is wrong (naming the instruction).
    pub fn infer(&self, params: &[(DType, &[usize])]) -> Result<(DType, Shape), String> {
        let n = self.insts.len();
        if n == 0 {
            return Err("empty fused expression".into());
        }
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
                    if k + 1 != n || k == 0 || inst.args[..] != [Arg::Inst(k as u32 - 1)] {
                        return Err(here("a sum must be the last instruction, of the one before it".into()));
                    }
                }
                op if op.fusion_class() == FusionClass::Elementwise => {}
                _ => return Err(here("this op cannot be fused".into())),
            }
            let (d, s) = inst.op.infer(&arg_types, Some(&inst.shape)).map_err(here)?;
            if d != inst.dtype || s != inst.shape {
                return Err(here(format!(
                    "declared {} but infers {}",
                    type_str(inst.dtype, &inst.shape),
                    type_str(d, &s)
                )));
            }
            types.push((d, s));
        }
        if let Some(p) = used.iter().position(|u| !u) {
            return Err(format!("operand ${p} is not used by the expression"));
        }
        if self.matmul().is_some() && (self.sum().is_some() || self.insts[0].shape != self.result().shape) {
            return Err("a matmul prologue needs an elementwise result of its own shape".into());
        }
        let it = self.iteration_shape();
        let last = if self.sum().is_some() { n - 1 } else { n };
        for (k, inst) in self.insts[..last].iter().enumerate() {
            if broadcast_shapes(&inst.shape, it).as_deref() != Some(it) {
                return Err(format!("#{k} {} does not broadcast to the iteration shape {it:?}", type_str(inst.dtype, &inst.shape)));
            }
        }
        Ok(types.pop().expect("n > 0"))
    }

    /// Whether the result may be written over param `p` (of type `param`) while it is
    /// read: true when the param is read only at the index being written (it has the
    /// result's exact type and is not broadcast) and there is no matmul or sum end.
    pub fn can_overwrite(&self, param: (DType, &[usize])) -> bool {
        let r = self.result();
        self.matmul().is_none() && self.sum().is_none() && param.0 == r.dtype && param.1 == &r.shape[..]
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

/// What one element evaluation needs.
struct Program<'a> {
    e: &'a FusedExpr,
    srcs: SmallVec<[Src<'a>; 8]>,
    /// Instructions evaluated per element (all but a matmul prologue and a sum epilogue).
    range: std::ops::Range<usize>,
}

impl Program<'_> {
    /// Evaluates the loop body at the cursor; `cur` is the output buffer's value there.
    #[inline(always)]
    fn at(&self, offs: &[usize], cur: Scalar, regs: &mut [Scalar]) -> Scalar {
        if self.range.start == 1 {
            regs[0] = cur; // the matmul prologue's value, computed into the output buffer
        }
        let mut args: SmallVec<[Scalar; 3]> = SmallVec::new();
        for k in self.range.clone() {
            let inst = &self.e.insts[k];
            args.clear();
            for a in &inst.args {
                args.push(match *a {
                    Arg::Param(p) => self.srcs[p as usize].read(offs[p as usize], cur),
                    Arg::Inst(j) => regs[j as usize],
                });
            }
            regs[k] = apply(inst.op, &args);
        }
        regs[self.range.end - 1]
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

/// Param strides along each axis of `it` (right-aligned broadcasting: 0 on broadcast axes).
fn broadcast_strides(shape: &[usize], it: &[usize]) -> SmallVec<[usize; 6]> {
    let cs = contiguous(shape);
    let lead = it.len() - shape.len();
    (0..it.len())
        .map(|d| if d < lead || shape[d - lead] == 1 { 0 } else { cs[d - lead] })
        .collect()
}

fn run<O: Elem>(e: &FusedExpr, x: &[Option<&Data>], shape: &[usize], out: OutBuf) -> Data {
    let n_out = numel(shape);
    let mut buf: Option<Vec<O>> = None;
    let mut held: Option<Data> = None; // an operand we were handed but could not overwrite
    let mut from_out: Option<usize> = None;
    let mut mm: Option<Data> = None;
    if let Some((ta, tb)) = e.matmul() {
        let (a, b) = (x[0].expect("matmul operands are given"), x[1].expect("matmul operands are given"));
        mm = Some(Op::MatMul { ta, tb }.eval(&[a, b], shape).expect("matmul cannot fail at run time"));
    } else {
        match out {
            OutBuf::Fresh => {}
            OutBuf::Spare(d) => buf = O::take_vec(d).ok(),
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
    let mut buf = match (mm, buf) {
        (Some(m), _) => O::take_vec(m).unwrap_or_else(|_| unreachable!("a fresh matmul result is owned")),
        (None, Some(mut v)) => {
            if from_out.is_none() {
                v.clear();
                v.resize(n_out, O::default());
            }
            v
        }
        (None, None) => vec![O::default(); n_out],
    };
    let srcs: SmallVec<[Src; 8]> = (0..x.len())
        .map(|p| match (x[p], from_out) {
            _ if e.matmul().is_some() && p < 2 && !e.insts[1..].iter().any(|i| i.args.contains(&Arg::Param(p as u32))) => {
                Src::Out // consumed by the matmul only; never read in the loop
            }
            (_, Some(k)) if k == p => Src::Out,
            (Some(d), _) => Src::of(d),
            (None, _) => Src::of(held.as_ref().expect("the caller's operand is held")),
        })
        .collect();
    let it: Shape = Shape::from_slice(e.iteration_shape());
    let shapes: SmallVec<[Shape; 8]> = (0..x.len())
        .map(|p| match (x[p], from_out) {
            (_, Some(k)) if k == p => it.clone(),
            (Some(d), _) => d.shape(),
            (None, _) => held.as_ref().map(|d| d.shape()).unwrap_or_else(|| it.clone()),
        })
        .collect();
    let start = usize::from(e.matmul().is_some());
    let end = e.insts.len() - usize::from(e.sum().is_some());
    let prog = Program { e, srcs, range: start..end };
    let nregs = e.insts.len();
    // params read from the output buffer need no offset
    let strides: Vec<SmallVec<[usize; 6]>> = shapes
        .iter()
        .enumerate()
        .map(|(p, s)| match prog.srcs[p] {
            Src::Out => SmallVec::from_elem(0, it.len()),
            _ => broadcast_strides(s, &it),
        })
        .collect();
    let result = match e.sum() {
        None => {
            fill_par(&mut buf, |off, chunk| {
                let mut c = Cursor::new(&it, &strides, off);
                let mut regs = vec![Scalar::I64(0); nregs];
                for o in chunk.iter_mut() {
                    *o = O::get(prog.at(&c.offs, o.put(), &mut regs));
                    c.advance();
                }
            });
            Arr::from_shape_vec(IxDyn(shape), buf).expect("length matches shape")
        }
        Some((axes, _)) => {
            // loop order: kept axes, then reduced axes (each output's lane is contiguous)
            let kept: Vec<usize> = (0..it.len()).filter(|&d| !axes.contains(d)).collect();
            let red: Vec<usize> = (0..it.len()).filter(|&d| axes.contains(d)).collect();
            let order: Vec<usize> = kept.iter().chain(&red).copied().collect();
            let dims: Vec<usize> = order.iter().map(|&d| it[d]).collect();
            let strides: Vec<SmallVec<[usize; 6]>> =
                strides.iter().map(|bs| order.iter().map(|&d| bs[d]).collect()).collect();
            let red_dims: Vec<usize> = red.iter().map(|&d| it[d]).collect();
            let lane: usize = red_dims.iter().product();
            let zero = match O::default().put() {
                Scalar::F32(_) => Scalar::F32(0.0),
                Scalar::F64(_) => Scalar::F64(0.0),
                Scalar::I64(_) => unreachable!("infer checks that sums are of floats"),
            };
            if red.len() == it.len() {
                // full reduction: `reduce::sum` takes the 8-lane path
                let mut c = Cursor::new(&dims, &strides, 0);
                let mut regs = vec![Scalar::I64(0); nregs];
                let mut s = Lanes8::new(lane, zero);
                for _ in 0..lane {
                    s.push(prog.at(&c.offs, Scalar::I64(0), &mut regs));
                    c.advance();
                }
                buf = vec![O::get(s.finish())];
            } else {
                fill_par(&mut buf, |off, chunk| {
                    let mut c = Cursor::new(&dims, &strides, off * lane);
                    let mut regs = vec![Scalar::I64(0); nregs];
                    for o in chunk.iter_mut() {
                        *o = O::get(fold_axes(&red_dims, zero, &mut || {
                            let v = prog.at(&c.offs, Scalar::I64(0), &mut regs);
                            c.advance();
                            v
                        }));
                    }
                });
            }
            Arr::from_shape_vec(IxDyn(shape), buf).expect("length matches shape")
        }
    };
    O::wrap(result)
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
