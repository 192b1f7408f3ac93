//! The fused kernel: runs a [`FusedExpr`](crate::ir::FusedExpr) (made by the fusion pass) in one loop.
//!
//! In three parts: `lower` compiles an expression for its operands' types into a
//! [`Program`] (registers, loads, steps, loops; once per plan), `run` binds buffers
//! and runs it a tile at a time, and `accum` adds a fused sum's elements in the order
//! of `reduce::sum`.
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
//! `sin` and `cos` of one value are one step that calls [`Float::kernel_sin_cos`](crate::tensor::Float::kernel_sin_cos),
//! which shares the range reduction and returns exactly the bits of `kernel_sin` and
//! `kernel_cos`; and a `neg` of a binary op's value that nothing else reads runs in
//! that op's loop, `neg(op(a, b))` per element. The sum adds in exactly the order of
//! [`reduce::sum`](crate::exec::kernels::reduce::sum): a fixed 8-lane tree for a full reduction, one
//! sequential fold per reduced axis (innermost first) otherwise. Output elements are
//! independent, so splitting the loop across threads never changes a bit.

mod accum;
mod lower;
mod run;
pub(crate) use lower::{coalesce_axes, View};
pub(crate) use run::reserve_registers;

use crate::ops::Op;
use crate::tensor::{DType, Data, Shape};
use smallvec::SmallVec;
use std::collections::BTreeMap;

/// Where the kernel writes its result.
pub enum OutBuf {
    /// A new buffer.
    Fresh,
    /// Param `k`'s value, dying here: the result overwrites it in place when it is
    /// uniquely owned (the caller passes `None` for that param); else it is only read.
    Operand(usize, Data),
}

/// Memory a program writes one of its outputs into instead of a fresh buffer: the
/// output's elements, of its dtype, from `ptr` on; `view` is an array of the output's
/// type sharing that memory, handed out as the value once it is written. A scan gives
/// the rows of its stacked results this way (`exec::control`), so that a step's saved
/// values are written where the stacked result keeps them instead of being copied
/// there after the step.
#[derive(Clone)]
pub(crate) struct Dest {
    pub ptr: *mut u8,
    pub view: Data,
}

// SAFETY: a `Dest` only travels with the run it was made for (in its run state, on the
// thread running it); the memory it points to is the view's, which outlives that run.
unsafe impl Send for Dest {}
// SAFETY: a shared `Dest` is only read (cloned); the kernel it is given to writes
// through its pointer on the run's threads, which join before the run ends.
unsafe impl Sync for Dest {}

impl Dest {
    /// Whether this destination holds a `dtype` array of exactly `shape`.
    pub fn fits(&self, dtype: DType, shape: &[usize]) -> bool {
        self.view.dtype() == dtype && self.view.dims() == shape
    }
}

/// Elements evaluated together: each instruction runs over a tile of this many loop
/// elements held in a small register (reused for every tile), never over a tensor.
/// Long enough that dispatching an instruction costs little next to its loop, short
/// enough that the few registers a tile touches (4 KiB each in f32) stay in L1.
pub const TILE: usize = 1024;

/// Where a load reads, fixed when the program is compiled.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
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
    /// The load of each (param, reshape or slice instruction), to share loads of the
    /// same view.
    keys: BTreeMap<(From, Option<usize>), usize>,
    views: SmallVec<[lower::View; 8]>,
    regs: SmallVec<[usize; 8]>,
    dims: SmallVec<[usize; 6]>,
    strides: Vec<SmallVec<[usize; 6]>>,
    /// Loads read in place: a param whose buffer holds the loop's elements in loop
    /// order, so a tile's values are one run of it and need no copy.
    direct: SmallVec<[bool; 8]>,
}

/// A compiled instruction: its op, the registers of its arguments and its own register.
#[derive(Clone)]
struct Step {
    op: Op,
    args: SmallVec<[usize; 3]>,
    reg: usize,
    /// With `op` = `sin`: the register of a `cos` of the same argument, computed in this
    /// step from the same range reduction ([`Float::kernel_sin_cos`](crate::tensor::Float::kernel_sin_cos)).
    cos: Option<usize>,
    /// With a binary `op`: the step also negates its result (a folded `neg`, see
    /// [`fold_neg`]).
    neg: bool,
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
    /// The registers of further outputs (a step group's, see `exec::group`), each of
    /// the result's type, written in the same loop.
    extra: SmallVec<[usize; 4]>,
    sum: Option<SumPlan>,
    inner: Loop,
    outer: Loop,
    tile: usize,
    /// The region as generated code, run instead of the steps once compiled.
    gen: Option<super::codegen::Kernel>,
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
