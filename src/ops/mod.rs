//! The op catalogue.
//!
//! [`Op`] is the closed set of primitives the compiler knows (Copy + Eq + Hash, float
//! attributes stored as bits), grouped in families, one file each. Everything about an
//! op lives in its family file, together: text name and attributes, shape/dtype rule,
//! eager kernel (shared by the interpreter and the constant folder), VJP rule (written
//! with `Tensor` ops, so it works eagerly, traced, and again on its own output for higher
//! derivatives) and fusion class. This file only routes an `Op` to its family.
//!
//! Everything else users call (`sub` of scalars, `relu`, `softmax`, `mean`, `one_hot`,
//! losses, ...) is sugar composed of these primitives in `tensor/math.rs`.

pub mod attrs;
pub mod collective;
pub mod control;
pub mod conv;
pub mod elementwise;
pub mod index;
pub mod linalg;
pub mod reduce;
pub mod shape;
pub mod source;

pub use crate::comm::ReduceOp;
pub use attrs::{AxisSet, Perm};
pub use conv::{ConvAttrs, Padding, PoolAttrs};
pub use elementwise::{Binary, Compare, Unary};

use crate::tensor::{check_shape, type_str, DType, Data, Shape, Tensor};
use smallvec::SmallVec;

/// A primitive op with its attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// Graph input number `n` (an argument of the traced function).
    Input(u32),
    /// A constant; its value is stored on the node.
    Const,
    /// Reads variable number `n` of the graph's variable table.
    ReadVar(u32),
    /// Writes its operand to variable number `n` when the graph finishes.
    Assign(u32),
    /// `f(x)` elementwise.
    Unary(Unary),
    /// `f(a, b)` elementwise with NumPy broadcasting.
    Binary(Binary),
    /// `a ? b` elementwise, producing a 0/1 mask of the operands' dtype.
    Compare(Compare),
    /// `select(mask, a, b)`: `a` where `mask != 0`, else `b` (broadcasting).
    Select,
    /// Sum over a set of axes.
    Sum {
        /// Reduced axes.
        axes: AxisSet,
        /// Keep reduced axes as length 1.
        keep: bool,
    },
    /// Maximum over a set of axes.
    Max {
        /// Reduced axes.
        axes: AxisSet,
        /// Keep reduced axes as length 1.
        keep: bool,
    },
    /// Index of the maximum along one axis (i64; first on ties; the first NaN if any).
    ArgMax {
        /// The axis.
        axis: u8,
    },
    /// Same elements, new shape (the node's shape).
    Reshape,
    /// NumPy broadcast to the node's shape.
    BroadcastTo,
    /// Permutes axes.
    Transpose(Perm),
    /// Joins operands along an axis.
    Concat {
        /// The axis.
        axis: u8,
    },
    /// `x[.., start..end, ..]` along one axis.
    Slice {
        /// The axis.
        axis: u8,
        /// First index.
        start: u32,
        /// One past the last index.
        end: u32,
    },
    /// Zero padding along one axis (the adjoint of `Slice`).
    Pad {
        /// The axis.
        axis: u8,
        /// Zeros before.
        before: u32,
        /// Zeros after.
        after: u32,
    },
    /// Converts the dtype.
    Cast(DType),
    /// Identity whose gradient is zero.
    StopGradient,
    /// The value of a dimension as a scalar of `dtype`, for quantities that depend on a
    /// shape (the count a `mean` divides by). `dim` is a shape entry: a constant, or a
    /// symbolic expression (see [`crate::tensor::dim`]) whose value exists once a
    /// compiled function binds its symbols; constant ones fold to `const`.
    DimValue {
        /// The dimension (a shape entry).
        dim: usize,
        /// The scalar's dtype.
        dtype: DType,
    },
    /// `[0, 1, ..., len-1]` in `dtype`, where `len` is a shape entry (a symbolic one
    /// makes element indices over a symbolic batch; constant ones fold to `const`).
    Range {
        /// The length (a shape entry).
        len: usize,
        /// The dtype.
        dtype: DType,
    },
    /// `x` indexed by i64 `indices` along `axis`.
    Gather {
        /// The axis.
        axis: u8,
    },
    /// Adds rows of `updates` into zeros of length `size` along `axis` at `indices` (the adjoint of `Gather`).
    ScatterAdd {
        /// The axis.
        axis: u8,
        /// Length of the result along `axis`.
        size: u32,
    },
    /// Matrix product of the last two axes (batched over leading ones), optionally transposing either operand.
    MatMul {
        /// Transpose the left operand's last two axes.
        ta: bool,
        /// Transpose the right operand's last two axes.
        tb: bool,
    },
    /// 2-D convolution, NHWC input, `[kh,kw,cin,cout]` filter.
    Conv2d(ConvAttrs),
    /// Gradient of `conv2d` w.r.t. its input: operands `(gy, w)`; the node's shape is the input's.
    Conv2dBackpropInput(ConvAttrs),
    /// Gradient of `conv2d` w.r.t. its filter: operands `(x, gy)`; the node's shape is the filter's.
    Conv2dBackpropFilter(ConvAttrs),
    /// 2-D max pooling, NHWC.
    MaxPool2d(PoolAttrs),
    /// Gradient of `max_pool2d`: operands `(x, gy)`, x-shaped result.
    MaxPool2dGrad(PoolAttrs),
    /// Picks, per pooling window, the value of `gx` at the window's argmax: operands `(x, gx)`.
    MaxPool2dGather(PoolAttrs),
    /// `max_pool2d_grad(x, gy) · (x > t)` in one kernel: operands `(x, gy, t)` with `t` a
    /// scalar, x-shaped result. Made by the simplifier from the gradient of a ReLU before
    /// a max pooling (the `mul` of the pooling's gradient by the ReLU's gate `x > 0`),
    /// bit for bit the two ops' result; optimized graphs only, never differentiated.
    MaxPool2dGradGated(PoolAttrs),
    /// `maximum(conv2d(x, w) + b, t)` in one kernel: operands `(x, w, b, t)` with `b` the
    /// `[cout]` bias and `t` a scalar (0 for a ReLU). Made by the simplifier from a
    /// convolution read only by its bias add and activation, bit for bit the three ops'
    /// result, applied to each chunk of output rows while it is in cache; optimized
    /// graphs only, never differentiated.
    Conv2dBiasRelu(ConvAttrs),
    /// A fused elementwise region: entry `n` of the graph's fused-expression table
    /// ([`crate::ir::FusedExpr`]), made by the fusion pass. Its type
    /// and kernel come from that expression, so [`Op::infer`] and [`Op::eval`] defer to
    /// the graph (verifier, parser, interpreter); optimized graphs are never differentiated.
    Fused(u32),
    /// `cond`: runs branch 0 or 1 of region `n` of the graph's region table
    /// ([`crate::ir::Region`]) on its captures; operands `(pred, captures..)`. A tuple
    /// node: its results are read by `get` nodes (see [`control`]).
    Cond(u32),
    /// `while`: region `n` holds the condition and the body; operands `(init..,
    /// captures..)`; results: the final carries, then the trip count (`i64[]`).
    While(u32),
    /// `scan`: region `n` holds the body; operands `(init.., xs.., captures..)`; results:
    /// the final carries, then the per-step outputs stacked on a new leading axis.
    Scan(u32),
    /// Result number `n` of the tuple node (control-flow op) that is its operand.
    Get(u32),
    /// The elementwise sum or mean of the operand over all ranks of the job
    /// (`ops::collective`; the operand itself in a world of one).
    AllReduce(ReduceOp),
}

/// Per-input cotangents returned by a VJP rule; `None` is a symbolic zero.
pub type Grads = SmallVec<[Option<Tensor>; 3]>;

/// What a VJP rule sees: the primal inputs and output, and which inputs need a gradient.
pub struct VjpArgs<'a> {
    /// Primal inputs.
    pub x: &'a [Tensor],
    /// Primal output.
    pub y: &'a Tensor,
    /// `needs[i]`: the gradient for input `i` is wanted (rules may skip the others).
    pub needs: &'a [bool],
}

/// How the fusion pass may group an op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FusionClass {
    /// One output element from the same-index elements of its (broadcast) inputs.
    Elementwise,
    /// A reduction, fusable as the epilogue of an elementwise region.
    Reduction,
    /// Not fusable.
    Opaque,
}

/// The family file an op's rules live in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Source,
    Elementwise,
    Reduce,
    Shape,
    Index,
    Linalg,
    Conv,
    Fused,
    Control,
    Collective,
}

impl Op {
    /// Which family file holds this op's rules (the one place ops are grouped).
    fn family(&self) -> Family {
        match self {
            Op::Input(_) | Op::Const | Op::ReadVar(_) | Op::Assign(_) => Family::Source,
            Op::Unary(_) | Op::Binary(_) | Op::Compare(_) | Op::Select => Family::Elementwise,
            Op::Sum { .. } | Op::Max { .. } | Op::ArgMax { .. } => Family::Reduce,
            Op::Reshape
            | Op::BroadcastTo
            | Op::Transpose(_)
            | Op::Concat { .. }
            | Op::Slice { .. }
            | Op::Pad { .. }
            | Op::Cast(_)
            | Op::StopGradient
            | Op::DimValue { .. }
            | Op::Range { .. } => Family::Shape,
            Op::Gather { .. } | Op::ScatterAdd { .. } => Family::Index,
            Op::MatMul { .. } => Family::Linalg,
            Op::Conv2d(_)
            | Op::Conv2dBackpropInput(_)
            | Op::Conv2dBackpropFilter(_)
            | Op::MaxPool2d(_)
            | Op::MaxPool2dGrad(_)
            | Op::MaxPool2dGather(_)
            | Op::MaxPool2dGradGated(_)
            | Op::Conv2dBiasRelu(_) => Family::Conv,
            Op::Fused(_) => Family::Fused,
            Op::Cond(_) | Op::While(_) | Op::Scan(_) | Op::Get(_) => Family::Control,
            Op::AllReduce(_) => Family::Collective,
        }
    }

    /// `(ta, tb)` of a matmul.
    fn matmul_flags(&self) -> (bool, bool) {
        match *self {
            Op::MatMul { ta, tb } => (ta, tb),
            _ => unreachable!("only called for the linalg family"),
        }
    }

    /// The op's text name, as in the IR: `add`, `matmul`, `sum`, ...
    pub fn name(&self) -> &'static str {
        match (self.family(), self) {
            (Family::Source, _) => source::name(self),
            (Family::Elementwise, Op::Unary(u)) => u.name(),
            (Family::Elementwise, Op::Binary(b)) => b.name(),
            (Family::Elementwise, Op::Compare(c)) => c.name(),
            (Family::Elementwise, _) => "select",
            (Family::Reduce, _) => reduce::name(self),
            (Family::Shape, _) => shape::name(self),
            (Family::Index, _) => index::name(self),
            (Family::Linalg, _) => "matmul",
            (Family::Conv, _) => conv::name(self),
            (Family::Fused, _) => "fused",
            (Family::Control, _) => control::name(self),
            (Family::Collective, _) => collective::name(self),
        }
    }

    /// Dtype and shape of the result, or a message saying what does not fit.
    ///
    /// `out` is the requested result shape for ops whose shape is not implied by their
    /// operands (`reshape`, `broadcast_to`, the convolution backprops); others ignore it.
    ///
    /// Every shape involved (operands, `out`, the result) must have at most
    /// [`crate::tensor::MAX_ELEMENTS`] elements, so rules may multiply dimensions freely.
    pub fn infer(
        &self,
        x: &[(DType, &[usize])],
        out: Option<&[usize]>,
    ) -> Result<(DType, Shape), String> {
        for s in x.iter().map(|(_, s)| *s).chain(out) {
            check_shape(s)?;
        }
        let (d, s) = self.infer_unchecked(x, out)?;
        check_shape(&s).map_err(|e| format!("the result {e}"))?;
        Ok((d, s))
    }

    fn infer_unchecked(
        &self,
        x: &[(DType, &[usize])],
        out: Option<&[usize]>,
    ) -> Result<(DType, Shape), String> {
        match (self.family(), self) {
            (Family::Source, _) => source::infer(self, x),
            (Family::Elementwise, Op::Unary(u)) => elementwise::infer_unary(*u, x),
            (Family::Elementwise, _) => elementwise::infer_nary(self, x),
            (Family::Reduce, _) => reduce::infer(self, x),
            (Family::Shape, _) => shape::infer(self, x, out),
            (Family::Index, _) => index::infer(self, x),
            (Family::Linalg, _) => {
                let (ta, tb) = self.matmul_flags();
                linalg::infer(ta, tb, x)
            }
            (Family::Conv, _) => conv::infer(self, x, out),
            (Family::Fused, _) => Err(
                "is typed by its fused expression (FusedExpr::infer), not by the op alone".into(),
            ),
            (Family::Control, _) => control::infer(self),
            (Family::Collective, _) => collective::infer(self, x),
        }
    }

    /// Runs the kernel on concrete inputs. `shape` is the node's (inferred) shape.
    ///
    /// Returns `Err` for run-time failures that shapes cannot rule out (an index out of range).
    ///
    /// # Panics
    /// If called on a source op (`input`, `const`, `read_var`, `assign`), which the
    /// interpreter handles itself, on a `fused` op (run with its graph's expression), or
    /// on operands that [`Op::infer`] rejects.
    pub fn eval(&self, x: &[&Data], shape: &[usize]) -> Result<Data, String> {
        Ok(match (self.family(), self) {
            (Family::Source, _) => {
                panic!("{} has no kernel: the interpreter supplies its value", self.name())
            }
            (Family::Elementwise, Op::Unary(u)) => elementwise::eval_unary(*u, x[0]),
            (Family::Elementwise, _) => elementwise::eval_nary(self, x, shape),
            (Family::Reduce, _) => reduce::eval(self, x[0]),
            (Family::Shape, Op::DimValue { dim, dtype }) => {
                return shape::eval_dim_value(*dim, *dtype)
            }
            (Family::Shape, Op::Range { len, dtype }) => return shape::eval_range(*len, *dtype),
            (Family::Shape, _) => shape::eval(self, x, shape),
            (Family::Index, _) => return index::eval(self, x, shape),
            (Family::Linalg, _) => {
                let (ta, tb) = self.matmul_flags();
                linalg::eval(ta, tb, x[0], x[1], shape)
            }
            (Family::Conv, _) => conv::eval(self, x, shape),
            (Family::Fused, _) => panic!(
                "fused has no standalone kernel: the interpreter runs it with the graph's fused expression"
            ),
            (Family::Control, _) => panic!(
                "{} has no standalone kernel: the interpreter runs its regions",
                self.name()
            ),
            (Family::Collective, _) => return collective::eval(self, x[0]),
        })
    }

    /// The VJP rule: cotangents of the inputs given the cotangent `gy` of the output.
    ///
    /// # Panics
    /// On a `fused`, `conv2d_bias_relu` or `max_pool2d_grad_gated` op: passes make them,
    /// so they exist only in optimized graphs, which are never differentiated.
    pub fn vjp(&self, a: &VjpArgs, gy: &Tensor) -> Grads {
        match (self.family(), self) {
            (Family::Source, _) => Grads::new(),
            (Family::Elementwise, Op::Unary(u)) => elementwise::vjp_unary(*u, a, gy),
            (Family::Elementwise, _) => elementwise::vjp_nary(self, a, gy),
            (Family::Reduce, _) => reduce::vjp(self, a, gy),
            (Family::Shape, _) => shape::vjp(self, a, gy),
            (Family::Index, _) => index::vjp(self, a, gy),
            (Family::Linalg, _) => {
                let (ta, tb) = self.matmul_flags();
                linalg::vjp(ta, tb, a, gy)
            }
            (Family::Conv, _) => conv::vjp(self, a, gy),
            (Family::Fused, _) => {
                panic!("fused nodes exist only in optimized graphs, which are never differentiated")
            }
            (Family::Control, _) => panic!(
                "{} is differentiated by the VJP its control-flow call records on the tape",
                self.name()
            ),
            (Family::Collective, _) => collective::vjp(self, a, gy),
        }
    }

    /// Attributes as `key=value` text, in a fixed order (empty for none).
    pub fn attrs(&self) -> Vec<(&'static str, String)> {
        match self.family() {
            Family::Source | Family::Elementwise | Family::Fused => Vec::new(),
            Family::Control => control::attrs(self),
            Family::Reduce => reduce::attrs(self),
            Family::Shape => shape::attrs(self),
            Family::Index => index::attrs(self),
            Family::Linalg => {
                let (ta, tb) = self.matmul_flags();
                linalg::attrs(ta, tb)
            }
            Family::Conv => conv::attrs(self),
            Family::Collective => collective::attrs(self),
        }
    }

    /// Reads an op back from its text name and attributes (the inverse of `name` + `attrs`).
    /// Source ops are parsed by the IR parser itself.
    pub fn parse(name: &str, attrs: &attrs::AttrMap) -> Result<Op, String> {
        if let Some(op) = elementwise::parse(name) {
            return Ok(op);
        }
        let parsers: [FamilyParser; 7] = [
            control::parse,
            collective::parse,
            reduce::parse,
            shape::parse,
            index::parse,
            linalg::parse,
            conv::parse,
        ];
        for p in parsers {
            if let Some(r) = p(name, attrs) {
                return r;
            }
        }
        Err(format!("unknown op `{name}`"))
    }

    /// How fusion may group this op.
    pub fn fusion_class(&self) -> FusionClass {
        match self {
            Op::Unary(_) | Op::Binary(_) | Op::Compare(_) | Op::Select => FusionClass::Elementwise,
            Op::Cast(to) if to.is_float() => FusionClass::Elementwise,
            // reads its operand at the broadcast index: a stride of 0, no data movement
            Op::BroadcastTo => FusionClass::Elementwise,
            Op::Sum { .. } => FusionClass::Reduction,
            _ => FusionClass::Opaque,
        }
    }

    /// Whether the fusion pass may compute this op again for every element of a larger
    /// loop (a value broadcast into a bigger consumer): true for ops that cost about one
    /// instruction per element, false for transcendental ones. Only ops of
    /// [`FusionClass::Elementwise`] are ever recomputed; the other families answer for
    /// their fusable members.
    pub fn is_cheap(&self) -> bool {
        match self.family() {
            Family::Elementwise => elementwise::is_cheap(self),
            Family::Shape => shape::is_cheap(self),
            // never recomputed: not elementwise
            Family::Source
            | Family::Reduce
            | Family::Index
            | Family::Linalg
            | Family::Conv
            | Family::Fused
            | Family::Control
            | Family::Collective => true,
        }
    }

    /// A cost estimate for the scheduler, in element operations, from the operand shapes
    /// `x` and the result shape `out`: multiply-adds for matmul and convolutions, the
    /// elements streamed for the rest, 0 for values that cost nothing to produce.
    pub fn work(&self, x: &[&[usize]], out: &[usize]) -> u64 {
        match self.family() {
            Family::Source => source::work(self, x, out),
            Family::Elementwise => elementwise::work(self, x, out),
            Family::Reduce => reduce::work(self, x, out),
            Family::Shape => shape::work(self, x, out),
            Family::Index => index::work(self, x, out),
            Family::Linalg => linalg::work(self.matmul_flags().0, x, out),
            Family::Conv => conv::work(self, x, out),
            // one loop over its elements, reading each operand
            Family::Fused => streamed(x, out),
            // the operands streamed once; the regions' own steps are planned separately
            Family::Control => x.iter().map(|s| elems(s)).sum(),
            Family::Collective => collective::work(self, x, out),
        }
    }

    /// Multiply-adds of a matmul or convolution from the operand shapes `x` and the
    /// result shape `out` (0 for every other op), so profiles can report FLOP rates.
    pub fn macs(&self, x: &[&[usize]], out: &[usize]) -> u64 {
        match self.family() {
            Family::Linalg => linalg::work(self.matmul_flags().0, x, out),
            Family::Conv => conv::macs(self, x, out),
            Family::Source
            | Family::Elementwise
            | Family::Reduce
            | Family::Shape
            | Family::Index
            | Family::Fused
            | Family::Control
            | Family::Collective => 0,
        }
    }

    /// Whether `op(a, b) == op(b, a)` bit for bit (CSE sorts such operands).
    ///
    /// Not `maximum`/`minimum`: on equal operands they return the first, so
    /// `maximum(0.0, -0.0)` is `0.0` but `maximum(-0.0, 0.0)` is `-0.0`.
    pub fn is_commutative(&self) -> bool {
        matches!(
            self,
            Op::Binary(Binary::Add | Binary::Mul) | Op::Compare(Compare::Eq | Compare::Ne)
        )
    }

    /// Whether the result shape must be given to [`Op::infer`] (it is the node's shape).
    pub fn needs_out_shape(&self) -> bool {
        matches!(
            self,
            Op::Reshape
                | Op::BroadcastTo
                | Op::Conv2dBackpropInput(_)
                | Op::Conv2dBackpropFilter(_)
        )
    }

    /// Whether the op's value is computed from its operands' values alone: not a source
    /// (input, constant, variable read or assignment), a fused loop (a compiled program)
    /// or control flow (regions to run). An interpreter runs such an op by its
    /// [`Op::eval`], an all-reduce by its collective.
    pub fn is_kernel(&self) -> bool {
        !matches!(
            self.family(),
            Family::Source | Family::Fused | Family::Control
        )
    }

    /// Whether the op is a collective ([`Op::AllReduce`]): its value depends on the other
    /// ranks, so it is never constant-folded, and every rank must run it in the same order.
    pub fn is_collective(&self) -> bool {
        self.family() == Family::Collective
    }

    /// A control-flow op (`cond`, `while`, `scan`) of the same kind running region `r`
    /// of its graph's region table instead; any other op as it is.
    pub fn with_region(self, r: u32) -> Op {
        match self {
            Op::Cond(_) => Op::Cond(r),
            Op::While(_) => Op::While(r),
            Op::Scan(_) => Op::Scan(r),
            op => op,
        }
    }

    /// Whether the op has a gradient path at all (false for masks, argmax, casts to int, stop_gradient).
    pub fn is_differentiable(&self) -> bool {
        !matches!(
            self,
            Op::Compare(_)
                | Op::ArgMax { .. }
                | Op::StopGradient
                | Op::Input(_)
                | Op::Const
                | Op::ReadVar(_)
                | Op::DimValue { .. }
                | Op::Range { .. }
        ) && !matches!(self, Op::Unary(Unary::Sign))
    }
}

/// Elements of a shape, as a cost.
fn elems(s: &[usize]) -> u64 {
    s.iter().product::<usize>() as u64
}

/// The cost of an op that streams its elements: the larger of its result and its first
/// operand.
fn streamed(x: &[&[usize]], out: &[usize]) -> u64 {
    elems(out).max(x.first().map_or(0, |s| elems(s)))
}

/// A family's text parser: `None` when the name is not one of its ops.
type FamilyParser = fn(&str, &attrs::AttrMap) -> Option<Result<Op, String>>;

/// Formats operand types for error messages: `f32[2,3], f32[4]`.
pub fn operand_types(x: &[(DType, &[usize])]) -> String {
    x.iter()
        .map(|(d, s)| type_str(*d, s))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks that all operands share one dtype and returns it.
pub(crate) fn same_dtype(x: &[(DType, &[usize])]) -> Result<DType, String> {
    let d = x[0].0;
    if x.iter().any(|(e, _)| *e != d) {
        return Err(format!(
            "operands must have one dtype, got {}",
            operand_types(x)
        ));
    }
    Ok(d)
}

/// Checks the number of operands.
pub(crate) fn arity(x: &[(DType, &[usize])], n: usize) -> Result<(), String> {
    if x.len() != n {
        return Err(format!("expects {n} operands, got {}", x.len()));
    }
    Ok(())
}

/// Checks that an operand is floating point.
pub(crate) fn float_only(d: DType) -> Result<(), String> {
    if !d.is_float() {
        return Err(format!("expects f32 or f64 operands, got {d} (cast first)"));
    }
    Ok(())
}

/// Declares the op list: one line per op, `pattern => example`. The patterns also form
/// an exhaustive `match` over [`Op`] (no wildcard), so a new op — a new `Op` variant, or
/// a new [`Unary`], [`Binary`] or [`Compare`] — does not compile until it has its line
/// here. `internal` lists the ops that passes make and users never write (no gradient,
/// no gradient-check row), which [`all_ops`] leaves out.
macro_rules! op_list {
    (ops { $($p:pat => $e:expr,)* } internal { $($ip:pat,)* }) => {
        /// The op list: one op of each text name (attributes at simple values), in a fixed
        /// order. Meta-tests iterate over it: every op needs a gradient-check row or a
        /// documented reason to have none. Adding an op is its family file plus one line
        /// of this list.
        pub fn all_ops() -> Vec<Op> {
            vec![$($e),*]
        }

        /// Compiles only while every op has its line in the list.
        const _EVERY_OP_IS_LISTED: fn(Op) = |op| match op {
            $($p => {})*
            $($ip => {})*
        };
    };
}

#[rustfmt::skip]
op_list! {
    ops {
        Op::Input(_) => Op::Input(0),
        Op::Const => Op::Const,
        Op::ReadVar(_) => Op::ReadVar(0),
        Op::Assign(_) => Op::Assign(0),
        Op::Select => Op::Select,
        Op::Unary(Unary::Neg) => Op::Unary(Unary::Neg),
        Op::Unary(Unary::Exp) => Op::Unary(Unary::Exp),
        Op::Unary(Unary::Log) => Op::Unary(Unary::Log),
        Op::Unary(Unary::Sin) => Op::Unary(Unary::Sin),
        Op::Unary(Unary::Cos) => Op::Unary(Unary::Cos),
        Op::Unary(Unary::Tanh) => Op::Unary(Unary::Tanh),
        Op::Unary(Unary::Sqrt) => Op::Unary(Unary::Sqrt),
        Op::Unary(Unary::Abs) => Op::Unary(Unary::Abs),
        Op::Unary(Unary::Sign) => Op::Unary(Unary::Sign),
        Op::Unary(Unary::Sigmoid) => Op::Unary(Unary::Sigmoid),
        Op::Binary(Binary::Add) => Op::Binary(Binary::Add),
        Op::Binary(Binary::Sub) => Op::Binary(Binary::Sub),
        Op::Binary(Binary::Mul) => Op::Binary(Binary::Mul),
        Op::Binary(Binary::Div) => Op::Binary(Binary::Div),
        Op::Binary(Binary::Pow) => Op::Binary(Binary::Pow),
        Op::Binary(Binary::Maximum) => Op::Binary(Binary::Maximum),
        Op::Binary(Binary::Minimum) => Op::Binary(Binary::Minimum),
        Op::Compare(Compare::Gt) => Op::Compare(Compare::Gt),
        Op::Compare(Compare::Ge) => Op::Compare(Compare::Ge),
        Op::Compare(Compare::Lt) => Op::Compare(Compare::Lt),
        Op::Compare(Compare::Le) => Op::Compare(Compare::Le),
        Op::Compare(Compare::Eq) => Op::Compare(Compare::Eq),
        Op::Compare(Compare::Ne) => Op::Compare(Compare::Ne),
        Op::Sum { .. } => Op::Sum { axes: AxisSet::of(&[0]), keep: false },
        Op::Max { .. } => Op::Max { axes: AxisSet::of(&[0]), keep: false },
        Op::ArgMax { .. } => Op::ArgMax { axis: 0 },
        Op::Reshape => Op::Reshape,
        Op::BroadcastTo => Op::BroadcastTo,
        Op::Transpose(_) => Op::Transpose(Perm::new(&[1, 0]).expect("a permutation")),
        Op::Concat { .. } => Op::Concat { axis: 0 },
        Op::Slice { .. } => Op::Slice { axis: 0, start: 0, end: 1 },
        Op::Pad { .. } => Op::Pad { axis: 0, before: 1, after: 1 },
        Op::Cast(_) => Op::Cast(DType::F64),
        Op::StopGradient => Op::StopGradient,
        Op::DimValue { .. } => Op::DimValue { dim: 3, dtype: DType::F32 },
        Op::Range { .. } => Op::Range { len: 3, dtype: DType::I64 },
        Op::Gather { .. } => Op::Gather { axis: 0 },
        Op::ScatterAdd { .. } => Op::ScatterAdd { axis: 0, size: 1 },
        Op::MatMul { .. } => Op::MatMul { ta: false, tb: false },
        Op::Conv2d(_) => Op::Conv2d(ConvAttrs { stride: (1, 1), padding: Padding::Valid }),
        Op::Conv2dBackpropInput(_) => Op::Conv2dBackpropInput(ConvAttrs { stride: (1, 1), padding: Padding::Valid }),
        Op::Conv2dBackpropFilter(_) => Op::Conv2dBackpropFilter(ConvAttrs { stride: (1, 1), padding: Padding::Valid }),
        Op::MaxPool2d(_) => Op::MaxPool2d(PoolAttrs { ksize: (2, 2), stride: (2, 2), padding: Padding::Valid }),
        Op::MaxPool2dGrad(_) => Op::MaxPool2dGrad(PoolAttrs { ksize: (2, 2), stride: (2, 2), padding: Padding::Valid }),
        Op::MaxPool2dGather(_) => Op::MaxPool2dGather(PoolAttrs { ksize: (2, 2), stride: (2, 2), padding: Padding::Valid }),
        Op::AllReduce(_) => Op::AllReduce(ReduceOp::Sum),
    }
    internal {
        Op::Fused(_),
        // made by the simplifier (rules `pool_grad_gate`, `conv_bias_relu`)
        Op::MaxPool2dGradGated(_),
        Op::Conv2dBiasRelu(_),
        // made by `crate::control`; their VJPs are tape closures written with the
        // control-flow API, checked by the gradient rows of tests/control.rs
        Op::Cond(_),
        Op::While(_),
        Op::Scan(_),
        Op::Get(_),
    }
}

/// The text names of [`all_ops`], in its order.
pub fn all_op_names() -> Vec<&'static str> {
    all_ops().iter().map(Op::name).collect()
}
