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
//! over each element's reduced elements); no tensor-sized intermediate buffer exists.
//! The loop advances a [`TILE`] of consecutive elements at a time: each instruction
//! runs over the tile in a register of `TILE` values, so its inner loop is a tight,
//! vectorizable loop over one op. Registers are reused for every tile and shared by
//! instructions whose values are no longer read, so a tile touches a few of them, which
//! stay in L1; a param whose buffer holds the loop's elements in loop order is read where
//! it lies instead of being copied to a register.
//! Every element is still computed by the same scalar functions in the same order:
//! each instruction calls its op's own scalar function ([`Unary::f`](crate::ops::Unary::f),
//! [`Binary::f`](crate::ops::Binary::f), [`Compare::f`](crate::ops::Compare::f), the same
//! `as` conversions as `cast`), as the unfused kernels do, so results are
//! bit-identical to the unfused graph. Two kinds of instructions share a loop:
//! `sin` and `cos` of one value are one step that calls [`Float::kernel_sin_cos`],
//! which shares the range reduction and returns exactly the bits of `kernel_sin` and
//! `kernel_cos`; and a `neg` of a binary op's value that nothing else reads runs in
//! that op's loop, `neg(op(a, b))` per element. The sum adds in exactly the order of
//! [`reduce::sum`](super::reduce::sum): a fixed 8-lane tree for a full reduction, one
//! sequential fold per reduced axis (innermost first) otherwise. Output elements are
//! independent, so splitting the loop across threads never changes a bit.

use super::codegen;
use super::ew::{vectorized_wide, PAR_CHUNK, PAR_MIN};
use crate::ops::{Binary, Compare, FusionClass, Op, Unary};
use crate::tensor::{broadcast_shapes, numel, type_str, Arr, DType, Data, Float, Shape};
use ndarray::IxDyn;
use rayon::prelude::*;
use smallvec::SmallVec;
use std::mem::MaybeUninit;

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

    /// Whether the result may be written over param `p` (of type `param`) while it is
    /// read: true when the param is read only at the index being written (it has the
    /// result's exact type, is not broadcast or reshaped) and there is no matmul or sum.
    pub fn can_overwrite(&self, p: usize, param: (DType, &[usize])) -> bool {
        let r = self.result();
        let reshaped = self
            .insts
            .iter()
            .any(|i| i.op == Op::Reshape && i.args[..] == [Arg::Param(p as u32)]);
        self.matmul().is_none()
            && self.sum_index().is_none()
            && !reshaped
            && param.0 == r.dtype
            && param.1 == &r.shape[..]
    }
}

/// Where the kernel writes its result.
pub enum OutBuf {
    /// A new buffer.
    Fresh,
    /// Param `k`'s value, dying here: the result overwrites it in place when it is
    /// uniquely owned (the caller passes `None` for that param); else it is only read.
    Operand(usize, Data),
}

/// Runs the expression on its params (`None` only for the param given as
/// [`OutBuf::Operand`]); `shape` is the fused node's shape. Compiles the expression for
/// these operands each call; a [`Program`] compiles once.
pub fn eval(e: &FusedExpr, x: &[Option<&Data>], shape: &[usize], out: OutBuf) -> Data {
    let held = match &out {
        OutBuf::Operand(k, d) => Some((*k, d)),
        _ => None,
    };
    let types: Vec<(DType, Shape)> = x
        .iter()
        .enumerate()
        .map(|(p, d)| {
            let d = d
                .or(held.filter(|(k, _)| *k == p).map(|(_, d)| d))
                .expect("every operand is given");
            (d.dtype(), d.shape())
        })
        .collect();
    let types: Vec<(DType, &[usize])> = types.iter().map(|(d, s)| (*d, &s[..])).collect();
    Program::new(e, &types, shape).run(x, out)
}

/// Elements evaluated together: each instruction runs over a tile of this many loop
/// elements held in a small register (reused for every tile), never over a tensor.
/// Long enough that dispatching an instruction costs little next to its loop, short
/// enough that the few registers a tile touches (4 KiB each in f32) stay in L1.
pub const TILE: usize = 1024;

/// A register: one value per element of the current tile.
enum Tile {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
    /// A register lent out while its instruction is computed.
    Lent,
}

impl Tile {
    /// A register of `len` (at most [`TILE`]) elements.
    fn new(d: DType, len: usize) -> Tile {
        match d {
            DType::F32 => Tile::F32(vec![0.0; len]),
            DType::F64 => Tile::F64(vec![0.0; len]),
            DType::I64 => Tile::I64(vec![0; len]),
        }
    }
}

/// A register's values as they are read: its tile, or where a direct load's values lie.
#[derive(Clone, Copy)]
enum Val<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
    I64(&'a [i64]),
}

/// For each register, the run of a param's buffer it stands for in the current tile
/// when its load is direct (see [`Loop::plan`]); `None` for registers read from tiles.
type Views<'a> = [Option<Val<'a>>];

/// The values of register `r`.
fn read<'a>(regs: &'a [Tile], views: &Views<'a>, r: usize) -> Val<'a> {
    views[r].unwrap_or_else(|| match &regs[r] {
        Tile::F32(v) => Val::F32(v),
        Tile::F64(v) => Val::F64(v),
        Tile::I64(v) => Val::I64(v),
        Tile::Lent => unreachable!("a step never reads the register it writes"),
    })
}

/// An element type of a result buffer.
trait Elem: crate::exec::buffers::Pooled {
    /// The buffer's elements, if `d` holds this type and owns them alone.
    fn take_vec(d: Data) -> Result<Vec<Self>, Data>;
    fn wrap(a: Arr<Self>) -> Data;
    /// `t[at..] = src`.
    fn to_tile(src: &[Self], t: &mut Tile, at: usize);
    /// Writes the first `dst.len()` values of `v` to `dst`.
    fn write_out(v: Val, dst: &mut [MaybeUninit<Self>]);
}

macro_rules! elem {
    ($t:ty, $v:ident) => {
        impl Elem for $t {
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
            fn to_tile(src: &[$t], t: &mut Tile, at: usize) {
                match t {
                    Tile::$v(v) => v[at..at + src.len()].copy_from_slice(src),
                    _ => unreachable!("the output buffer's register has its dtype"),
                }
            }
            fn write_out(v: Val, dst: &mut [MaybeUninit<$t>]) {
                match v {
                    Val::$v(v) => {
                        for (d, &x) in dst.iter_mut().zip(v) {
                            d.write(x);
                        }
                    }
                    _ => unreachable!("infer checks the result dtype"),
                }
            }
        }
    };
}
elem!(f32, F32);
elem!(f64, F64);
elem!(i64, I64);

/// Where a load reads.
#[derive(Clone, Copy)]
enum Src<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
    I64(&'a [i64]),
    /// The output buffer at the current position (a matmul result or a param overwritten in place).
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
}

/// Copies `n` elements from `s` starting at `base` with stride `st` into `t[at..]`.
fn gather<T: Copy>(s: &[T], base: usize, st: usize, t: &mut [T], at: usize, n: usize) {
    let t = &mut t[at..at + n];
    match st {
        0 => t.fill(s[base]),
        1 => t.copy_from_slice(&s[base..base + n]),
        _ => {
            for (i, o) in t.iter_mut().enumerate() {
                *o = s[base + i * st];
            }
        }
    }
}

/// The loop over one index space: a row-major multi-index over `dims` and each load's
/// offset at it.
struct Cursor<'s> {
    dims: SmallVec<[usize; 6]>,
    /// `strides[l][d]`: how far load `l`'s offset moves per step along loop axis `d`.
    strides: &'s [SmallVec<[usize; 6]>],
    idx: SmallVec<[usize; 6]>,
    offs: SmallVec<[usize; 8]>,
}

impl<'s> Cursor<'s> {
    /// A cursor at flat position `start` (a rank-0 loop is one element).
    fn new(dims: &[usize], strides: &'s [SmallVec<[usize; 6]>], start: usize) -> Cursor<'s> {
        let dims: SmallVec<[usize; 6]> = if dims.is_empty() {
            SmallVec::from_elem(1, 1)
        } else {
            SmallVec::from_slice(dims)
        };
        let mut idx: SmallVec<[usize; 6]> = SmallVec::from_elem(0, dims.len());
        let mut rest = start;
        for d in (0..dims.len()).rev() {
            if dims[d] > 0 {
                idx[d] = rest % dims[d];
                rest /= dims[d];
            }
        }
        let offs = strides
            .iter()
            .map(|st| idx.iter().zip(st).map(|(i, s)| i * s).sum())
            .collect();
        Cursor {
            dims,
            strides,
            idx,
            offs,
        }
    }

    fn stride(&self, l: usize) -> usize {
        self.strides[l].last().copied().unwrap_or(0)
    }

    /// Elements left in the current innermost row.
    fn row_left(&self) -> usize {
        self.dims[self.dims.len() - 1] - self.idx[self.dims.len() - 1]
    }

    /// Moves `n` (at most [`Cursor::row_left`]) elements along the innermost axis, carrying at a row's end.
    fn advance(&mut self, n: usize) {
        let last = self.dims.len() - 1;
        self.idx[last] += n;
        for (l, o) in self.offs.iter_mut().enumerate() {
            *o += self.strides[l].last().copied().unwrap_or(0) * n;
        }
        if self.idx[last] < self.dims[last] {
            return;
        }
        for d in (0..=last).rev() {
            if d < last {
                self.idx[d] += 1;
                for (l, o) in self.offs.iter_mut().enumerate() {
                    *o += self.strides[l].get(d).copied().unwrap_or(0);
                }
            }
            if self.idx[d] < self.dims[d] {
                return;
            }
            for (l, o) in self.offs.iter_mut().enumerate() {
                *o -= self.strides[l].get(d).copied().unwrap_or(0) * self.dims[d];
            }
            self.idx[d] = 0;
        }
    }
}

/// Where a load reads, fixed when the program is compiled.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum From {
    /// A param: its own buffer, or the output buffer when it is overwritten in place.
    Param(usize),
    /// The matmul prologue's result, in the output buffer.
    Matmul,
}

/// The reads of one loop (over the summed value, or over the result): each load's
/// source, register and strides along the loop's (coalesced) axes.
#[derive(Default, Debug)]
struct Loop {
    from: SmallVec<[From; 8]>,
    /// (param, reshape instruction) of each load, to share loads of the same view.
    keys: SmallVec<[(From, Option<usize>); 8]>,
    shapes: SmallVec<[Shape; 8]>,
    regs: SmallVec<[usize; 8]>,
    dims: SmallVec<[usize; 6]>,
    strides: Vec<SmallVec<[usize; 6]>>,
    /// Loads read in place: a param whose buffer holds the loop's elements in loop
    /// order, so a tile's values are one run of it and need no copy.
    direct: SmallVec<[bool; 8]>,
}

impl Loop {
    /// The register of a load, adding it if new.
    fn load(
        &mut self,
        from: From,
        view: Option<usize>,
        shape: &[usize],
        dtype: DType,
        dtypes: &mut Vec<DType>,
    ) -> usize {
        if let Some(i) = self.keys.iter().position(|&k| k == (from, view)) {
            return self.regs[i];
        }
        self.keys.push((from, view));
        self.from.push(from);
        self.shapes.push(Shape::from_slice(shape));
        dtypes.push(dtype);
        self.regs.push(dtypes.len() - 1);
        dtypes.len() - 1
    }

    /// Fixes the loop: axes `order` of `loop_shape`, without length-1 axes, and adjacent
    /// axes merged where every load steps through them as one (the element order is
    /// unchanged, so runs along the innermost axis get as long as possible).
    fn plan(&mut self, loop_shape: &[usize], order: &[usize]) {
        let full: Vec<SmallVec<[usize; 6]>> = self
            .shapes
            .iter()
            .zip(&self.from)
            .map(|(s, f)| match f {
                From::Matmul => SmallVec::from_elem(0, order.len()),
                From::Param(_) => {
                    let bs = broadcast_strides(s, loop_shape);
                    order.iter().map(|&d| bs[d]).collect()
                }
            })
            .collect();
        let mut dims: SmallVec<[usize; 6]> = SmallVec::new();
        let mut strides: Vec<SmallVec<[usize; 6]>> = vec![SmallVec::new(); full.len()];
        for (i, &d) in order.iter().enumerate() {
            let n = loop_shape[d];
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
                for (st, f) in strides.iter_mut().zip(&full) {
                    *st.last_mut().expect("not empty") = f[i];
                }
            } else {
                dims.push(n);
                for (st, f) in strides.iter_mut().zip(&full) {
                    st.push(f[i]);
                }
            }
        }
        let dense = contiguous(&dims);
        self.direct = (self.from.iter().zip(&strides))
            .map(|(f, st)| matches!(f, From::Param(_)) && *st == dense)
            .collect();
        self.dims = dims;
        self.strides = strides;
    }

    /// Loads the next `n` loop elements (into the registers, or as views of a direct
    /// load's run) and moves the cursor on; `out` is the output buffer's matching
    /// segment (for [`Src::Out`] loads).
    fn fill<'s, O: Elem>(
        &self,
        srcs: &[Src<'s>],
        c: &mut Cursor,
        regs: &mut [Tile],
        views: &mut Views<'s>,
        n: usize,
        out: Option<&[O]>,
    ) {
        // a param overwritten in place is copied: its buffer is being written
        let direct = |l: usize| self.direct[l] && !matches!(srcs[l], Src::Out);
        for (l, src) in srcs.iter().enumerate() {
            if direct(l) {
                let at = c.offs[l];
                views[self.regs[l]] = Some(match *src {
                    Src::F32(s) => Val::F32(&s[at..at + n]),
                    Src::F64(s) => Val::F64(&s[at..at + n]),
                    Src::I64(s) => Val::I64(&s[at..at + n]),
                    Src::Out => unreachable!("direct loads read params"),
                });
            }
        }
        let mut at = 0;
        while at < n {
            let run = c.row_left().min(n - at);
            for (l, src) in srcs.iter().enumerate() {
                let (base, st) = (c.offs[l], c.stride(l));
                if direct(l) {
                    continue;
                }
                match (src, &mut regs[self.regs[l]]) {
                    (Src::F32(s), Tile::F32(t)) => gather(s, base, st, t, at, run),
                    (Src::F64(s), Tile::F64(t)) => gather(s, base, st, t, at, run),
                    (Src::I64(s), Tile::I64(t)) => gather(s, base, st, t, at, run),
                    (Src::Out, t) => O::to_tile(
                        &out.expect("output loads read the output buffer")[at..at + run],
                        t,
                        at,
                    ),
                    _ => unreachable!("a load's register has its source's dtype"),
                }
            }
            c.advance(run);
            at += run;
        }
    }
}

/// A compiled instruction: its op, the registers of its arguments and its own register.
#[derive(Clone)]
struct Step {
    op: Op,
    args: SmallVec<[usize; 3]>,
    reg: usize,
    /// With `op` = `sin`: the register of a `cos` of the same argument, computed in this
    /// step from the same range reduction ([`Float::kernel_sin_cos`]).
    cos: Option<usize>,
    /// With a binary `op`: the step also negates its result (a folded `neg`, see
    /// [`fold_neg`]).
    neg: bool,
}

/// Merges each `sin` with a `cos` of the same argument into one step (at the first of
/// the two: both read only that argument). [`Float::kernel_sin_cos`] returns exactly
/// the bits of `kernel_sin` and `kernel_cos`, so only the time changes.
fn pair_sin_cos(steps: Vec<Step>) -> Vec<Step> {
    let (sin, cos) = (Op::Unary(Unary::Sin), Op::Unary(Unary::Cos));
    let mut merged = vec![false; steps.len()];
    let mut out = Vec::with_capacity(steps.len());
    for i in 0..steps.len() {
        if merged[i] {
            continue;
        }
        let mut st = steps[i].clone();
        if st.op == sin || st.op == cos {
            let other = if st.op == sin { cos } else { sin };
            let twin = (i + 1..steps.len())
                .find(|&j| !merged[j] && steps[j].op == other && steps[j].args == st.args);
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
    let mut j = 0;
    while j < steps.len() {
        let r = steps[j].args[0];
        let readers: usize = (steps.iter())
            .map(|s| s.args.iter().filter(|&&a| a == r).count())
            .sum();
        let binary = (steps[..j].iter())
            .position(|s| s.reg == r && s.cos.is_none() && !s.neg && matches!(s.op, Op::Binary(_)));
        let is_neg = steps[j].op == Op::Unary(Unary::Neg);
        match binary {
            Some(i) if is_neg && readers == 1 && !keep.contains(&r) => {
                // registers are written once here, so none is read before the neg writes it
                (steps[i].reg, steps[i].neg) = (steps[j].reg, true);
                steps.remove(j);
            }
            _ => j += 1,
        }
    }
    steps
}

/// Runs `$body` with `$k` a compile-time constant equal to `$op`, so the scalar
/// function's own `match` folds away and the loop over a tile is one vectorizable
/// operation (the device `ops::elementwise`'s kernels use). The match is exhaustive: a
/// new op is a compile error here, never a silent fallback.
macro_rules! specialize {
    (Unary, $op:expr, $k:ident => $body:expr) => {
        specialize!(@ Unary, $op, $k => $body, [Neg, Exp, Log, Sin, Cos, Tanh, Sqrt, Abs, Sign, Sigmoid])
    };
    (Binary, $op:expr, $k:ident => $body:expr) => {
        specialize!(@ Binary, $op, $k => $body, [Add, Sub, Mul, Div, Pow, Maximum, Minimum])
    };
    (Compare, $op:expr, $k:ident => $body:expr) => {
        specialize!(@ Compare, $op, $k => $body, [Gt, Ge, Lt, Le, Eq, Ne])
    };
    (@ $ty:ident, $op:expr, $k:ident => $body:expr, [$($v:ident),*]) => {
        match $op {
            $($ty::$v => {
                const $k: $ty = $ty::$v;
                $body
            })*
        }
    };
}

fn map1<A: Copy, O>(x: &[A], o: &mut [O], f: impl Fn(A) -> O) {
    vectorized_wide(
        #[inline(always)]
        || {
            for (o, &x) in o.iter_mut().zip(x) {
                *o = f(x);
            }
        },
    )
}

fn map2<A: Copy, B: Copy, O>(x: &[A], y: &[B], o: &mut [O], f: impl Fn(A, B) -> O) {
    vectorized_wide(
        #[inline(always)]
        || {
            for ((o, &x), &y) in o.iter_mut().zip(x).zip(y) {
                *o = f(x, y);
            }
        },
    )
}

/// `mask != 0 ? x : y` per element (the mask test of `ew::select`).
fn select_into<M: Copy + PartialEq + Default, T: Copy>(m: &[M], x: &[T], y: &[T], o: &mut [T]) {
    vectorized_wide(
        #[inline(always)]
        || {
            for (((o, &m), &x), &y) in o.iter_mut().zip(m).zip(x).zip(y) {
                *o = if m != M::default() { x } else { y };
            }
        },
    )
}

/// `(sin x, cos x)` per element, with [`Float::kernel_sin_cos`].
fn sin_cos_into<T: Float>(x: &[T], s: &mut [T], c: &mut [T]) {
    vectorized_wide(
        #[inline(always)]
        || {
            for ((s, c), &x) in s.iter_mut().zip(c.iter_mut()).zip(x) {
                (*s, *c) = x.kernel_sin_cos();
            }
        },
    )
}

/// `b` per element, then `neg` when one was folded into the step.
fn binary_into<T: Float>(b: Binary, neg: bool, x: &[T], y: &[T], o: &mut [T]) {
    if neg {
        specialize!(Binary, b, K => map2(x, y, o, #[inline(always)] |p, q| Unary::Neg.f(K.f(p, q))))
    } else {
        specialize!(Binary, b, K => map2(x, y, o, #[inline(always)] |p, q| K.f(p, q)))
    }
}

/// `op` of the registers `args` over their first `n` elements into `o`, with the op's
/// own scalar function per element (for a binary op, then `neg` if `neg`).
fn compute(
    op: Op,
    neg: bool,
    args: &[usize],
    regs: &[Tile],
    views: &Views,
    o: &mut Tile,
    n: usize,
) {
    use {Tile as T, Val as V};
    let a = |i: usize| read(regs, views, args[i]);
    match op {
        Op::Unary(u) => match (a(0), o) {
            (V::F32(x), T::F32(o)) => {
                specialize!(Unary, u, K => map1(&x[..n], &mut o[..n], #[inline(always)] |v| K.f(v)))
            }
            (V::F64(x), T::F64(o)) => {
                specialize!(Unary, u, K => map1(&x[..n], &mut o[..n], #[inline(always)] |v| K.f(v)))
            }
            _ => unreachable!("infer checks unary dtypes"),
        },
        Op::Binary(b) => match (a(0), a(1), o) {
            (V::F32(x), V::F32(y), T::F32(o)) => binary_into(b, neg, &x[..n], &y[..n], &mut o[..n]),
            (V::F64(x), V::F64(y), T::F64(o)) => binary_into(b, neg, &x[..n], &y[..n], &mut o[..n]),
            (V::I64(x), V::I64(y), T::I64(o)) => map2(
                &x[..n],
                &y[..n],
                &mut o[..n],
                b.fi().expect("infer rejects integer operands"),
            ),
            _ => unreachable!("infer checks binary dtypes"),
        },
        Op::Compare(c) => match (a(0), a(1), o) {
            (V::F32(x), V::F32(y), T::F32(o)) => {
                specialize!(Compare, c, K => map2(&x[..n], &y[..n], &mut o[..n], |p, q| {
                    if K.f(p, q) { 1.0 } else { 0.0 }
                }))
            }
            (V::F64(x), V::F64(y), T::F64(o)) => {
                specialize!(Compare, c, K => map2(&x[..n], &y[..n], &mut o[..n], |p, q| {
                    if K.f(p, q) { 1.0 } else { 0.0 }
                }))
            }
            (V::I64(x), V::I64(y), T::I64(o)) => {
                specialize!(Compare, c, K => map2(&x[..n], &y[..n], &mut o[..n], |p, q| K.f(p, q) as i64))
            }
            _ => unreachable!("infer checks compare dtypes"),
        },
        Op::Select => {
            macro_rules! pick {
                ($m:expr) => {
                    match (a(1), a(2), o) {
                        (V::F32(x), V::F32(y), T::F32(o)) => {
                            select_into(&$m[..n], &x[..n], &y[..n], &mut o[..n])
                        }
                        (V::F64(x), V::F64(y), T::F64(o)) => {
                            select_into(&$m[..n], &x[..n], &y[..n], &mut o[..n])
                        }
                        (V::I64(x), V::I64(y), T::I64(o)) => {
                            select_into(&$m[..n], &x[..n], &y[..n], &mut o[..n])
                        }
                        _ => unreachable!("infer checks select dtypes"),
                    }
                };
            }
            match a(0) {
                V::F32(m) => pick!(m),
                V::F64(m) => pick!(m),
                V::I64(m) => pick!(m),
            }
        }
        // the conversions of `ops::shape::cast`
        Op::Cast(_) => match (a(0), o) {
            (V::F32(x), T::F64(o)) => map1(&x[..n], &mut o[..n], |v| v as f64),
            (V::F32(x), T::I64(o)) => map1(&x[..n], &mut o[..n], |v| v as i64),
            (V::F64(x), T::F32(o)) => map1(&x[..n], &mut o[..n], |v| v as f32),
            (V::F64(x), T::I64(o)) => map1(&x[..n], &mut o[..n], |v| v as i64),
            (V::I64(x), T::F32(o)) => map1(&x[..n], &mut o[..n], |v| v as f32),
            (V::I64(x), T::F64(o)) => map1(&x[..n], &mut o[..n], |v| v as f64),
            _ => unreachable!("a cast to its own dtype reuses its operand's register"),
        },
        _ => unreachable!("infer admits only elementwise ops inside the loop"),
    }
}

/// Runs `steps` over the first `n` elements of the registers.
fn eval_steps(steps: &[Step], regs: &mut [Tile], views: &Views, n: usize) {
    for st in steps {
        // a step never writes a register it reads (see `share_registers`)
        let mut o = std::mem::replace(&mut regs[st.reg], Tile::Lent);
        match st.cos {
            None => compute(st.op, st.neg, &st.args, regs, views, &mut o, n),
            Some(c) => {
                let mut oc = std::mem::replace(&mut regs[c], Tile::Lent);
                match (read(regs, views, st.args[0]), &mut o, &mut oc) {
                    (Val::F32(x), Tile::F32(s), Tile::F32(c)) => {
                        sin_cos_into(&x[..n], &mut s[..n], &mut c[..n])
                    }
                    (Val::F64(x), Tile::F64(s), Tile::F64(c)) => {
                        sin_cos_into(&x[..n], &mut s[..n], &mut c[..n])
                    }
                    _ => unreachable!("infer checks unary dtypes"),
                }
                regs[c] = oc;
            }
        }
        regs[st.reg] = o;
    }
}

/// Lets steps share registers: a step's result goes to a register of its dtype whose
/// value no later step reads, so a tile touches few registers and they stay in L1.
/// `keep` are the registers read outside the steps (loads, the summed value, the sum,
/// the result); they are never shared. A step never gets a register it reads, and
/// registers freed in the summed loop are not reused after the sum (each part of
/// `steps`, split at `split`, shares among itself).
fn share_registers(steps: &mut [Step], split: usize, dtypes: &[DType], keep: &[usize]) {
    let outs = |st: &Step| -> SmallVec<[usize; 2]> { st.cos.into_iter().chain([st.reg]).collect() };
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
        for (i, st) in part.iter_mut().enumerate() {
            let (reads, writes) = (st.args.clone(), outs(st));
            for &o in writes.iter().filter(|o| !keep.contains(o)) {
                if let Some(f) = free.iter().position(|&f| dtypes[f] == dtypes[o]) {
                    name[o] = free.swap_remove(f);
                }
            }
            for a in st.args.iter_mut() {
                *a = name[*a];
            }
            (st.reg, st.cos) = (name[st.reg], st.cos.map(|c| name[c]));
            // free what this step read for the last time, and results nobody reads
            for r in reads.into_iter().chain(writes) {
                let dead = last_read[r].is_none_or(|l| l == i);
                if dead && !keep.contains(&r) && !free.contains(&name[r]) {
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

/// Strides of a `shape` buffer along each axis of `it` (right-aligned broadcasting: 0 on
/// broadcast axes).
fn broadcast_strides(shape: &[usize], it: &[usize]) -> SmallVec<[usize; 6]> {
    let cs = contiguous(shape);
    let lead = it.len() - shape.len();
    (0..it.len())
        .map(|d| {
            if d < lead || shape[d - lead] == 1 {
                0
            } else {
                cs[d - lead]
            }
        })
        .collect()
}

/// Accumulates a stream of summed elements in the order of `reduce::sum`.
enum Accum<T> {
    /// A full reduction: `reduce::sum_slice`'s 8 accumulators over whole chunks of 8, a
    /// fixed tree, then the remainder in order.
    Lanes {
        acc: [T; 8],
        full: usize,
        seen: usize,
        total: Option<T>,
    },
    /// A partial reduction: one sequential fold from zero per reduced axis, the innermost
    /// first (`reduce::reduce`); `acc[l]` is the running sum at reduced axis `l`.
    Nested {
        dims: SmallVec<[usize; 6]>,
        idx: SmallVec<[usize; 6]>,
        acc: SmallVec<[T; 6]>,
    },
}

impl<T: Float> Accum<T> {
    /// Adds `vals` in order; each finished sum is written to `out[*done]`.
    fn push(&mut self, vals: &[T], out: &mut [T], done: &mut usize) {
        match self {
            Accum::Lanes {
                acc,
                full,
                seen,
                total,
            } => {
                let mut i = 0;
                // up to a chunk boundary, then whole chunks of 8 (lane j takes element j)
                while i < vals.len() && *seen < *full && *seen % 8 != 0 {
                    acc[*seen % 8] = acc[*seen % 8] + vals[i];
                    (i, *seen) = (i + 1, *seen + 1);
                }
                let chunks = (vals.len() - i).min(*full - *seen) / 8 * 8;
                vectorized_wide(
                    #[inline(always)]
                    || {
                        for c in vals[i..i + chunks].chunks_exact(8) {
                            for j in 0..8 {
                                acc[j] = acc[j] + c[j];
                            }
                        }
                    },
                );
                (i, *seen) = (i + chunks, *seen + chunks);
                while i < vals.len() && *seen < *full {
                    acc[*seen % 8] = acc[*seen % 8] + vals[i];
                    (i, *seen) = (i + 1, *seen + 1);
                }
                // the remainder after the tree, in order
                for &v in &vals[i..] {
                    let t = total.unwrap_or_else(|| tree(acc));
                    *total = Some(t + v);
                    *seen += 1;
                }
            }
            Accum::Nested { dims, idx, acc } => {
                let k = dims.len();
                if k == 0 {
                    // no reduced axis: the kernel returns the value itself
                    out[*done..*done + vals.len()].copy_from_slice(vals);
                    *done += vals.len();
                    return;
                }
                let mut i = 0;
                while i < vals.len() {
                    // a run along the innermost reduced axis, added in order
                    let run = (dims[k - 1] - idx[k - 1]).min(vals.len() - i);
                    let mut a = acc[k - 1];
                    for &v in &vals[i..i + run] {
                        a = a + v;
                    }
                    acc[k - 1] = a;
                    i += run;
                    idx[k - 1] += run;
                    // carry finished axes outward
                    let mut l = k - 1;
                    while idx[l] == dims[l] {
                        idx[l] = 0;
                        if l == 0 {
                            out[*done] = acc[0];
                            *done += 1;
                            acc[0] = T::zero();
                            break;
                        }
                        acc[l - 1] = acc[l - 1] + acc[l];
                        acc[l] = T::zero();
                        l -= 1;
                        idx[l] += 1;
                    }
                }
            }
        }
    }

    /// The full reduction's result.
    fn total(&self) -> T {
        match self {
            Accum::Lanes { acc, total, .. } => total.unwrap_or_else(|| tree(acc)),
            Accum::Nested { .. } => unreachable!("partial sums are written as they finish"),
        }
    }
}

fn tree<T: Float>(a: &[T; 8]) -> T {
    ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))
}

/// Splits the outputs into parallel chunks when the whole loop is long (`work` loop
/// elements per output); each output is computed independently, so the split never
/// changes a bit.
fn par_outputs<O: Send>(out: &mut [O], work: usize, f: impl Fn(usize, &mut [O]) + Sync) {
    let per = (PAR_CHUNK / work.max(1)).max(1);
    if out.len() * work.max(1) < PAR_MIN || out.len() < 2 {
        f(0, out);
    } else {
        out.par_chunks_mut(per)
            .enumerate()
            .for_each(|(i, c)| f(i * per, c));
    }
}

/// The sum of a program: where its elements come from and how they add up.
#[derive(Debug)]
struct SumPlan {
    /// The register the sums are written to (read by the instructions after the sum).
    reg: usize,
    /// The register of the summed element.
    src: usize,
    dtype: DType,
    /// All axes reduced: `reduce::sum`'s 8-lane order.
    full: bool,
    /// Reduced elements per sum.
    lane: usize,
    red_dims: SmallVec<[usize; 6]>,
}

/// A fused expression compiled for its operands' types (once per plan): registers,
/// loads, steps and loops. [`Program::run`] binds buffers and runs it.
#[derive(Debug)]
pub struct Program {
    dtype: DType,
    shape: Shape,
    matmul: Option<(bool, bool)>,
    dtypes: Vec<DType>,
    steps: Vec<Step>,
    /// Steps before this index run in the summed loop.
    split: usize,
    result_reg: usize,
    sum: Option<SumPlan>,
    inner: Loop,
    outer: Loop,
    tile: usize,
    /// The region as generated code, run instead of the steps once compiled.
    gen: Option<codegen::Kernel>,
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let neg = if self.neg { "neg " } else { "" };
        write!(f, "r{} = {neg}{}{:?}", self.reg, self.op.name(), self.args)?;
        match self.cos {
            Some(c) => write!(f, ", r{c} = cos{:?}", self.args),
            None => Ok(()),
        }
    }
}

impl Program {
    /// Compiles `e` for operands of `params` types; `shape` is the fused node's shape.
    ///
    /// # Panics
    /// If `e` does not infer for these operands (the verifier checks it).
    pub fn new(e: &FusedExpr, params: &[(DType, &[usize])], shape: &[usize]) -> Program {
        let (dtype, _) = e.infer(params).expect("a verified fused expression");
        let s = e.sum_index();
        let it: Shape = match s.map(|s| e.insts[s].args[0]) {
            Some(Arg::Param(p)) => Shape::from_slice(params[p as usize].1),
            Some(Arg::Inst(j)) => e.insts[j as usize].shape.clone(),
            None => Shape::from_slice(shape),
        };
        // registers: the loads, then one per instruction; identities (broadcast, reshape
        // views, the matmul's output, casts to the same dtype) reuse their source's register
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
                    lp.load(From::Matmul, None, &inst.shape, dtype, &mut dtypes),
                    1,
                ),
                (Op::Reshape, [Arg::Param(p)]) => {
                    let d = params[*p as usize].0;
                    SmallVec::from_elem(
                        lp.load(
                            From::Param(*p as usize),
                            Some(k),
                            &inst.shape,
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
                            lp.load(From::Param(p as usize), None, sh, d, &mut dtypes)
                        }
                        Arg::Inst(j) => reg_of[j as usize],
                    })
                    .collect(),
            };
            let reg = match inst.op {
                Op::MatMul { .. } | Op::BroadcastTo | Op::Reshape => args[0],
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
        let all: Vec<usize> = (0..shape.len()).collect();
        outer.plan(shape, &all);
        let sum = s.map(|s| {
            let Op::Sum { axes, .. } = e.insts[s].op else {
                unreachable!("sum_index points at a sum")
            };
            // the summed loop: kept axes, then reduced axes (each output's lane is contiguous)
            let kept = (0..it.len()).filter(|&d| !axes.contains(d));
            let red: Vec<usize> = (0..it.len()).filter(|&d| axes.contains(d)).collect();
            let order: Vec<usize> = kept.chain(red.iter().copied()).collect();
            inner.plan(&it, &order);
            let red_dims: SmallVec<[usize; 6]> = red.iter().map(|&d| it[d]).collect();
            SumPlan {
                reg: reg_of[s],
                src: sum_src,
                dtype: e.insts[s].dtype,
                full: red.len() == it.len(),
                lane: red_dims.iter().product(),
                red_dims,
            }
        });
        let tile = TILE.min(numel(shape).max(numel(&it))).max(1);
        let split = if sum.is_some() { split } else { steps.len() };
        let result_reg = reg_of[e.insts.len() - 1];
        let mut keep: Vec<usize> = inner.regs.iter().chain(&outer.regs).copied().collect();
        keep.push(result_reg);
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
            gen: codegen::Kernel::new(e, params, shape),
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
    }

    /// Runs on the operands (`None` only for the one given as [`OutBuf::Operand`]).
    pub fn run(&self, x: &[Option<&Data>], out: OutBuf) -> Data {
        match self.dtype {
            DType::F32 => self.run_as::<f32>(x, out),
            DType::F64 => self.run_as::<f64>(x, out),
            DType::I64 => self.run_as::<i64>(x, out),
        }
    }

    fn run_as<O: Elem>(&self, x: &[Option<&Data>], out: OutBuf) -> Data {
        let shape = &self.shape[..];
        let n_out = numel(shape);
        let mut buf: Option<Vec<O>> = None;
        let mut held: Option<Data> = None; // an operand we were handed but could not overwrite
        let mut from_out: Option<usize> = None;
        if let Some((ta, tb)) = self.matmul {
            let (a, b) = (
                x[0].expect("matmul operands are given"),
                x[1].expect("matmul operands are given"),
            );
            let m = Op::MatMul { ta, tb }
                .eval(&[a, b], shape)
                .expect("matmul cannot fail at run time");
            buf = Some(
                O::take_vec(m).unwrap_or_else(|_| unreachable!("a fresh matmul result is owned")),
            );
        } else {
            match out {
                OutBuf::Fresh => {}
                OutBuf::Operand(k, d) => match O::take_vec(d) {
                    Ok(v) if v.len() == n_out => {
                        buf = Some(v);
                        from_out = Some(k);
                    }
                    Ok(_) => {
                        unreachable!("the planner overwrites only operands of the result's type")
                    }
                    Err(d) => held = Some(d),
                },
            }
        }
        // the kernel writes every element, so a fresh buffer is never zeroed first; a
        // matmul result or an overwritten operand keeps its values for `Src::Out` loads
        let prior = buf.is_some();
        let mut buf = buf.unwrap_or_else(|| crate::exec::buffers::take(n_out));
        // SAFETY: `n_out` elements fit (a taken buffer's capacity, or the length of a
        // held one); length 0 only hides the held values until the end, when every
        // element has been written.
        unsafe { buf.set_len(0) };
        let slots = &mut buf.spare_capacity_mut()[..n_out];
        // The values of an output segment before the kernel writes it.
        let values = |seg: &[MaybeUninit<O>]| -> Option<&[O]> {
            // SAFETY: with `prior` the buffer held `n_out` values when it was handed in.
            prior.then(|| unsafe { &*(seg as *const [MaybeUninit<O>] as *const [O]) })
        };
        let bind = |lp: &Loop| -> SmallVec<[Src; 8]> {
            lp.from
                .iter()
                .map(|f| match *f {
                    From::Matmul => Src::Out,
                    From::Param(p) if from_out == Some(p) => Src::Out,
                    From::Param(p) => {
                        Src::of(x[p].or(held.as_ref()).expect("every operand is given"))
                    }
                })
                .collect()
        };
        let (isrcs, osrcs) = (bind(&self.inner), bind(&self.outer));
        // generated code, once compiled, runs an elementwise region in place of the steps
        match (&self.sum, self.gen.as_ref().and_then(|k| k.ready())) {
            (None, Some(k)) => {
                let params: SmallVec<[Option<&Data>; 8]> = (0..x.len())
                    .map(|p| {
                        (from_out != Some(p))
                            .then(|| x[p].or(held.as_ref()).expect("every operand is given"))
                    })
                    .collect();
                let bound = k.bind(&params);
                par_outputs(slots, 1, |off, chunk| k.call(&bound, chunk, off));
            }
            (None, None) => par_outputs(slots, 1, |off, chunk| {
                with_regs(&self.dtypes, self.tile, |regs| {
                    let mut views = no_views(regs.len());
                    let mut c = Cursor::new(&self.outer.dims, &self.outer.strides, off);
                    for seg in chunk.chunks_mut(self.tile) {
                        let n = seg.len();
                        self.outer
                            .fill(&osrcs, &mut c, regs, &mut views, n, values(seg));
                        eval_steps(&self.steps, regs, &views, n);
                        O::write_out(read(regs, &views, self.result_reg), seg);
                    }
                })
            }),
            (Some(sp), _) => {
                let (before, after) = self.steps.split_at(self.split);
                let work = |chunk: &mut [MaybeUninit<O>], off: usize| {
                    with_regs(&self.dtypes, self.tile, |regs| {
                        let mut views = no_views(regs.len());
                        let mut ci =
                            Cursor::new(&self.inner.dims, &self.inner.strides, off * sp.lane);
                        let mut co = Cursor::new(&self.outer.dims, &self.outer.strides, off);
                        let mut acc = new_accum(sp.dtype, sp.full, sp.lane, &sp.red_dims);
                        for seg in chunk.chunks_mut(self.tile) {
                            let m = seg.len();
                            let mut done = 0;
                            if sp.lane == 0 {
                                zero_into(&mut regs[sp.reg], m); // an empty reduction is +0
                                done = m;
                            }
                            let mut left = if sp.full { sp.lane } else { m * sp.lane };
                            while left > 0 {
                                let n = left.min(self.tile);
                                self.inner
                                    .fill::<O>(&isrcs, &mut ci, regs, &mut views, n, None);
                                eval_steps(before, regs, &views, n);
                                let mut sums = std::mem::replace(&mut regs[sp.reg], Tile::Lent);
                                let vals = read(regs, &views, sp.src);
                                acc.push(vals, n, &mut sums, &mut done);
                                regs[sp.reg] = sums;
                                left -= n;
                            }
                            if sp.full {
                                acc.total_into(&mut regs[sp.reg]);
                            }
                            self.outer
                                .fill(&osrcs, &mut co, regs, &mut views, m, values(seg));
                            eval_steps(after, regs, &views, m);
                            O::write_out(read(regs, &views, self.result_reg), seg);
                        }
                    })
                };
                if sp.full {
                    work(slots, 0);
                } else {
                    par_outputs(slots, sp.lane, |off, chunk| work(chunk, off));
                }
            }
        }
        // SAFETY: the chunks cover the `n_out` slots and each tile wrote its whole segment
        // (a panic propagates before this line, leaving the length 0).
        unsafe { buf.set_len(n_out) };
        O::wrap(Arr::from_shape_vec(IxDyn(shape), buf).expect("length matches shape"))
    }
}

/// Views for `n` registers, all read from their tiles.
fn no_views<'a>(n: usize) -> SmallVec<[Option<Val<'a>>; 32]> {
    SmallVec::from_elem(None, n)
}

thread_local! {
    /// Registers kept between calls on this thread (a fused kernel never calls another).
    static REGS: std::cell::RefCell<Vec<Tile>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with registers of `dtypes`, each at least `len` long, reusing this thread's.
fn with_regs<R>(dtypes: &[DType], len: usize, f: impl FnOnce(&mut [Tile]) -> R) -> R {
    let mut regs = REGS.with(|r| std::mem::take(&mut *r.borrow_mut()));
    regs.truncate(dtypes.len());
    for (i, &d) in dtypes.iter().enumerate() {
        let fits = match regs.get(i) {
            Some(Tile::F32(v)) => d == DType::F32 && v.len() >= len,
            Some(Tile::F64(v)) => d == DType::F64 && v.len() >= len,
            Some(Tile::I64(v)) => d == DType::I64 && v.len() >= len,
            _ => false,
        };
        if !fits {
            let t = Tile::new(d, len);
            if i < regs.len() {
                regs[i] = t;
            } else {
                regs.push(t);
            }
        }
    }
    let r = f(&mut regs);
    REGS.with(|cell| *cell.borrow_mut() = regs);
    r
}

fn zero_into(t: &mut Tile, n: usize) {
    match t {
        Tile::F32(v) => v[..n].fill(0.0),
        Tile::F64(v) => v[..n].fill(0.0),
        _ => unreachable!("infer checks that sums are of floats"),
    }
}

/// An accumulator of the sum's dtype.
enum AnyAccum {
    F32(Accum<f32>),
    F64(Accum<f64>),
}

fn new_accum(d: DType, full: bool, lane: usize, red: &[usize]) -> AnyAccum {
    fn make<T: Float>(full: bool, lane: usize, red: &[usize]) -> Accum<T> {
        if full {
            Accum::Lanes {
                acc: [T::zero(); 8],
                full: lane - lane % 8,
                seen: 0,
                total: None,
            }
        } else {
            Accum::Nested {
                dims: SmallVec::from_slice(red),
                idx: SmallVec::from_elem(0, red.len()),
                acc: SmallVec::from_elem(T::zero(), red.len()),
            }
        }
    }
    match d {
        DType::F32 => AnyAccum::F32(make(full, lane, red)),
        DType::F64 => AnyAccum::F64(make(full, lane, red)),
        DType::I64 => unreachable!("infer checks that sums are of floats"),
    }
}

impl AnyAccum {
    fn push(&mut self, vals: Val, n: usize, out: &mut Tile, done: &mut usize) {
        match (self, vals, out) {
            (AnyAccum::F32(a), Val::F32(v), Tile::F32(o)) => a.push(&v[..n], o, done),
            (AnyAccum::F64(a), Val::F64(v), Tile::F64(o)) => a.push(&v[..n], o, done),
            _ => unreachable!("the summed value has the sum's dtype"),
        }
    }

    fn total_into(&self, out: &mut Tile) {
        match (self, out) {
            (AnyAccum::F32(a), Tile::F32(o)) => o[0] = a.total(),
            (AnyAccum::F64(a), Tile::F64(o)) => o[0] = a.total(),
            _ => unreachable!("the sum's register has its dtype"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
