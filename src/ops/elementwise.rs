//! Elementwise ops: unary math, broadcasting binary math, comparisons and `select`.
//!
//! Each op states its scalar function once ([`Unary::f`], [`Binary::f`], [`Compare::f`]);
//! the eager kernel, the constant folder and the fused-loop kernel all call it, so they
//! cannot disagree. Binary ops broadcast NumPy-style; the autodiff driver sums a
//! broadcast cotangent back to each operand's shape, so the rules below ignore broadcasting.

use super::{arity, float_only, operand_types, same_dtype, Grads, Op, VjpArgs};
use crate::exec::kernels::ew;
use crate::tensor::{broadcast_shapes, DType, Data, Float, Shape, Tensor};
use smallvec::smallvec;

/// Unary float ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unary {
    /// `-x`
    Neg,
    /// `eˣ`
    Exp,
    /// `ln x`
    Log,
    /// `sin x`
    Sin,
    /// `cos x`
    Cos,
    /// `tanh x`
    Tanh,
    /// `√x`
    Sqrt,
    /// `|x|`
    Abs,
    /// `sign x` (-1, 0, 1; no gradient)
    Sign,
    /// `1 / (1 + e⁻ˣ)`, computed without overflow
    Sigmoid,
}

/// All unary ops, for tables and tests.
pub const UNARY_OPS: [Unary; 10] = [
    Unary::Neg,
    Unary::Exp,
    Unary::Log,
    Unary::Sin,
    Unary::Cos,
    Unary::Tanh,
    Unary::Sqrt,
    Unary::Abs,
    Unary::Sign,
    Unary::Sigmoid,
];

impl Unary {
    /// Whether fusion may compute it again for every element of a larger (broadcast)
    /// loop instead of keeping it in its own: true for the ops that cost about one
    /// instruction per element.
    pub fn is_cheap(self) -> bool {
        match self {
            Unary::Neg | Unary::Abs | Unary::Sign => true,
            Unary::Exp
            | Unary::Log
            | Unary::Sin
            | Unary::Cos
            | Unary::Tanh
            | Unary::Sqrt
            | Unary::Sigmoid => false,
        }
    }

    /// Text name.
    pub fn name(self) -> &'static str {
        match self {
            Unary::Neg => "neg",
            Unary::Exp => "exp",
            Unary::Log => "log",
            Unary::Sin => "sin",
            Unary::Cos => "cos",
            Unary::Tanh => "tanh",
            Unary::Sqrt => "sqrt",
            Unary::Abs => "abs",
            Unary::Sign => "sign",
            Unary::Sigmoid => "sigmoid",
        }
    }

    /// The scalar function — the one definition of this op's math.
    #[inline(always)]
    pub fn f<T: Float>(self, x: T) -> T {
        match self {
            Unary::Neg => -x,
            Unary::Exp => x.kernel_exp(),
            Unary::Log => x.kernel_ln(),
            Unary::Sin => x.kernel_sin(),
            Unary::Cos => x.kernel_cos(),
            Unary::Tanh => x.kernel_tanh(),
            Unary::Sqrt => x.sqrt(),
            Unary::Abs => x.abs(),
            Unary::Sign => {
                if x > T::zero() {
                    T::one()
                } else if x < T::zero() {
                    -T::one()
                } else {
                    x // keeps ±0 and NaN
                }
            }
            Unary::Sigmoid => {
                // one exponential of a non-positive argument for both signs, and one
                // division: 1/(1 + e) for x ≥ 0, e/(1 + e) below (a vectorized loop
                // computed both quotients when the select came after the divisions)
                let e = (-x.abs()).kernel_exp();
                let num = if x >= T::zero() { T::one() } else { e };
                num / (T::one() + e)
            }
        }
    }
}

/// Binary ops with NumPy broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Binary {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a * b`
    Mul,
    /// `a / b` (a primitive: `a * (1/b)` rounds differently)
    Div,
    /// `aᵇ`
    Pow,
    /// `max(a, b)` (NaN-propagating)
    Maximum,
    /// `min(a, b)` (NaN-propagating)
    Minimum,
}

/// All binary ops, for tables and tests.
pub const BINARY_OPS: [Binary; 7] = [
    Binary::Add,
    Binary::Sub,
    Binary::Mul,
    Binary::Div,
    Binary::Pow,
    Binary::Maximum,
    Binary::Minimum,
];

impl Binary {
    /// Whether fusion may compute it again for every element of a larger loop (see
    /// [`Unary::is_cheap`]).
    pub fn is_cheap(self) -> bool {
        match self {
            Binary::Add
            | Binary::Sub
            | Binary::Mul
            | Binary::Div
            | Binary::Maximum
            | Binary::Minimum => true,
            Binary::Pow => false,
        }
    }

    /// Text name.
    pub fn name(self) -> &'static str {
        match self {
            Binary::Add => "add",
            Binary::Sub => "sub",
            Binary::Mul => "mul",
            Binary::Div => "div",
            Binary::Pow => "pow",
            Binary::Maximum => "maximum",
            Binary::Minimum => "minimum",
        }
    }

    /// The scalar function for floats.
    #[inline(always)]
    pub fn f<T: Float>(self, a: T, b: T) -> T {
        match self {
            Binary::Add => a + b,
            Binary::Sub => a - b,
            Binary::Mul => a * b,
            Binary::Div => a / b,
            Binary::Pow => a.powf(b),
            Binary::Maximum => {
                if a.is_nan() || a >= b {
                    a
                } else {
                    b
                }
            }
            Binary::Minimum => {
                if a.is_nan() || a <= b {
                    a
                } else {
                    b
                }
            }
        }
    }

    /// The scalar function for integers (wrapping); `None` for ops integers do not have.
    pub fn fi(self) -> Option<fn(i64, i64) -> i64> {
        match self {
            Binary::Add => Some(i64::wrapping_add),
            Binary::Sub => Some(i64::wrapping_sub),
            Binary::Mul => Some(i64::wrapping_mul),
            Binary::Maximum => Some(std::cmp::max),
            Binary::Minimum => Some(std::cmp::min),
            Binary::Div | Binary::Pow => None,
        }
    }
}

/// Comparisons; the result is a 0/1 mask of the operands' dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Compare {
    /// `a > b`
    Gt,
    /// `a >= b`
    Ge,
    /// `a < b`
    Lt,
    /// `a <= b`
    Le,
    /// `a == b`
    Eq,
    /// `a != b`
    Ne,
}

/// All comparisons.
pub const COMPARE_OPS: [Compare; 6] = [
    Compare::Gt,
    Compare::Ge,
    Compare::Lt,
    Compare::Le,
    Compare::Eq,
    Compare::Ne,
];

impl Compare {
    /// Text name.
    pub fn name(self) -> &'static str {
        match self {
            Compare::Gt => "greater",
            Compare::Ge => "greater_equal",
            Compare::Lt => "less",
            Compare::Le => "less_equal",
            Compare::Eq => "equal",
            Compare::Ne => "not_equal",
        }
    }

    /// The predicate.
    #[inline(always)]
    pub fn f<T: PartialOrd>(self, a: T, b: T) -> bool {
        match self {
            Compare::Gt => a > b,
            Compare::Ge => a >= b,
            Compare::Lt => a < b,
            Compare::Le => a <= b,
            Compare::Eq => a == b,
            Compare::Ne => a != b,
        }
    }
}

/// Runs `$body` with `$k` bound to `$op` as a compile-time constant, so the scalar
/// function's `match` folds away and each loop compiles to one vectorizable operation.
macro_rules! with_const {
    ($ty:ident, $op:expr, $k:ident => $body:expr, [$($v:ident),*]) => {
        match $op {
            $($ty::$v => {
                const $k: $ty = $ty::$v;
                $body
            })*
        }
    };
}

macro_rules! unary_const {
    ($op:expr, $k:ident => $body:expr) => {
        with_const!(Unary, $op, $k => $body, [Neg, Exp, Log, Sin, Cos, Tanh, Sqrt, Abs, Sign, Sigmoid])
    };
}

macro_rules! binary_const {
    ($op:expr, $k:ident => $body:expr) => {
        with_const!(Binary, $op, $k => $body, [Add, Sub, Mul, Div, Pow, Maximum, Minimum])
    };
}

macro_rules! compare_const {
    ($op:expr, $k:ident => $body:expr) => {
        with_const!(Compare, $op, $k => $body, [Gt, Ge, Lt, Le, Eq, Ne])
    };
}

pub(super) fn parse(name: &str) -> Option<Op> {
    if name == "select" {
        return Some(Op::Select);
    }
    UNARY_OPS
        .iter()
        .find(|u| u.name() == name)
        .map(|&u| Op::Unary(u))
        .or_else(|| {
            BINARY_OPS
                .iter()
                .find(|b| b.name() == name)
                .map(|&b| Op::Binary(b))
        })
        .or_else(|| {
            COMPARE_OPS
                .iter()
                .find(|c| c.name() == name)
                .map(|&c| Op::Compare(c))
        })
}

pub(super) fn infer_unary(_u: Unary, x: &[(DType, &[usize])]) -> Result<(DType, Shape), String> {
    arity(x, 1)?;
    float_only(x[0].0)?;
    Ok((x[0].0, Shape::from_slice(x[0].1)))
}

pub(super) fn infer_nary(op: &Op, x: &[(DType, &[usize])]) -> Result<(DType, Shape), String> {
    // arity first: a parsed `select` may come with no operands at all
    arity(x, if *op == Op::Select { 3 } else { 2 })?;
    let operands = if *op == Op::Select { &x[1..] } else { x };
    let dtype = same_dtype(operands)?;
    if let Op::Binary(b) = op {
        if !dtype.is_float() && b.fi().is_none() {
            return Err(format!(
                "is defined for floats only, got {}",
                operand_types(x)
            ));
        }
    }
    let mut shape = Shape::from_slice(x[0].1);
    for (_, s) in &x[1..] {
        shape = broadcast_shapes(&shape, s).ok_or_else(|| "shapes do not broadcast".to_string())?;
    }
    Ok((dtype, shape))
}

pub(super) fn eval_unary(u: Unary, x: &Data) -> Data {
    match x {
        // `k` is a function item marked `#[inline(always)]` (a closure cannot be), so
        // the whole scalar function inlines into the kernel's vectorized loop
        Data::F32(a) => unary_const!(u, OP => {
            #[inline(always)]
            fn k<T: Float>(v: T) -> T {
                OP.f(v)
            }
            Data::F32(ew::map(a, k::<f32>))
        }),
        Data::F64(a) => unary_const!(u, OP => {
            #[inline(always)]
            fn k<T: Float>(v: T) -> T {
                OP.f(v)
            }
            Data::F64(ew::map(a, k::<f64>))
        }),
        Data::I64(_) => unreachable!("infer rejects integer operands of {}", u.name()),
    }
}

pub(super) fn eval_nary(op: &Op, x: &[&Data], shape: &[usize]) -> Data {
    match (op, x) {
        (Op::Binary(b), [Data::F32(p), Data::F32(q)]) => {
            binary_const!(*b, OP => Data::F32(ew::zip(p, q, shape, |u, v| OP.f(u, v))))
        }
        (Op::Binary(b), [Data::F64(p), Data::F64(q)]) => {
            binary_const!(*b, OP => Data::F64(ew::zip(p, q, shape, |u, v| OP.f(u, v))))
        }
        (Op::Binary(b), [Data::I64(p), Data::I64(q)]) => {
            let f = b.fi().expect("infer rejects integer operands");
            Data::I64(ew::zip(p, q, shape, f))
        }
        (Op::Compare(c), [Data::F32(p), Data::F32(q)]) => {
            compare_const!(*c, OP => Data::F32(ew::zip(p, q, shape, |u, v| if OP.f(u, v) { 1.0 } else { 0.0 })))
        }
        (Op::Compare(c), [Data::F64(p), Data::F64(q)]) => {
            compare_const!(*c, OP => Data::F64(ew::zip(p, q, shape, |u, v| if OP.f(u, v) { 1.0 } else { 0.0 })))
        }
        (Op::Compare(c), [Data::I64(p), Data::I64(q)]) => {
            Data::I64(ew::zip(p, q, shape, |u, v| c.f(u, v) as i64))
        }
        (Op::Select, [m, a, b]) => {
            macro_rules! pick {
                ($mask:expr, $set:expr) => {
                    match (a, b) {
                        (Data::F32(p), Data::F32(q)) => {
                            Data::F32(ew::select($mask, $set, p, q, shape))
                        }
                        (Data::F64(p), Data::F64(q)) => {
                            Data::F64(ew::select($mask, $set, p, q, shape))
                        }
                        (Data::I64(p), Data::I64(q)) => {
                            Data::I64(ew::select($mask, $set, p, q, shape))
                        }
                        _ => unreachable!("infer checks select's dtypes"),
                    }
                };
            }
            match m {
                Data::F32(mk) => pick!(mk, |v| v != 0.0),
                Data::F64(mk) => pick!(mk, |v| v != 0.0),
                Data::I64(mk) => pick!(mk, |v| v != 0),
            }
        }
        _ => unreachable!("infer checks {}'s operands", op.name()),
    }
}

pub(super) fn vjp_unary(u: Unary, a: &VjpArgs, gy: &Tensor) -> Grads {
    let (x, y) = (&a.x[0], a.y);
    let gx = match u {
        Unary::Neg => -gy,                      // d/dx (-x) = -1
        Unary::Exp => gy * y,                   // d/dx eˣ = eˣ
        Unary::Log => gy / x,                   // d/dx ln x = 1/x
        Unary::Sin => gy * x.cos(),             // d/dx sin x = cos x
        Unary::Cos => -(gy * x.sin()),          // d/dx cos x = -sin x
        Unary::Tanh => gy * (1.0 - y * y),      // d/dx tanh x = 1 - tanh²x
        Unary::Sqrt => gy * 0.5 / y,            // d/dx √x = 1/(2√x)
        Unary::Abs => gy * x.sign(),            // d/dx |x| = sign x
        Unary::Sign => return smallvec![None],  // piecewise constant
        Unary::Sigmoid => gy * (y * (1.0 - y)), // d/dx σ(x) = σ(x)(1-σ(x))
    };
    smallvec![Some(gx)]
}

pub(super) fn vjp_nary(op: &Op, a: &VjpArgs, gy: &Tensor) -> Grads {
    let want = |i: usize| a.needs.get(i).copied().unwrap_or(false);
    match op {
        Op::Binary(b) => {
            let (p, q, y) = (&a.x[0], &a.x[1], a.y);
            let (gp, gq) = match b {
                Binary::Add => (Some(gy.clone()), Some(gy.clone())), // ∂(p+q) = (1, 1)
                Binary::Sub => (Some(gy.clone()), want(1).then(|| -gy)), // ∂(p-q) = (1, -1)
                Binary::Mul => (want(0).then(|| gy * q), want(1).then(|| gy * p)), // ∂(pq) = (q, p)
                // ∂(p/q) = (1/q, -p/q²) = (1/q, -y/q)
                Binary::Div => (want(0).then(|| gy / q), want(1).then(|| -(gy * y) / q)),
                // ∂(pᵠ) = (q·pᵠ⁻¹, pᵠ·ln p)
                Binary::Pow => (
                    want(0).then(|| gy * q * p.pow(&(q - 1.0))),
                    want(1).then(|| gy * y * p.log()),
                ),
                // the larger operand takes the gradient; ties go to q (so relu'(0) = 0).
                // p's mask reads the result: y > q exactly when p > q (NaN included), and
                // then p is needed by nothing but y, so `maximum(x + b, 0)` fuses into one
                // loop (TensorFlow's ReluGrad reads the output too)
                Binary::Maximum => (want(0).then(|| gy * y.gt(q)), want(1).then(|| gy * p.le(q))),
                Binary::Minimum => (want(0).then(|| gy * y.lt(q)), want(1).then(|| gy * p.ge(q))),
            };
            smallvec![gp, gq]
        }
        Op::Compare(_) => smallvec![None, None],
        // select(m, a, b): the cotangent flows to the chosen branch
        Op::Select => {
            let (m, zero) = (&a.x[0], gy.zeros_like());
            smallvec![
                None,
                want(1).then(|| Tensor::select(m, gy, &zero)),
                want(2).then(|| Tensor::select(m, &zero, gy))
            ]
        }
        _ => unreachable!(),
    }
}

/// Scheduling cost: one evaluation per output element (at least one visit per input).
pub(super) fn work(_op: &Op, x: &[&[usize]], out: &[usize]) -> u64 {
    super::streamed(x, out)
}

/// Whether fusion may recompute the op for every element of a larger loop.
pub(super) fn is_cheap(op: &Op) -> bool {
    match op {
        Op::Unary(u) => u.is_cheap(),
        Op::Binary(b) => b.is_cheap(),
        // one comparison or one pick per element
        Op::Compare(_) | Op::Select => true,
        _ => unreachable!("not an elementwise op"),
    }
}
