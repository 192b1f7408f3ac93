//! Convolution and pooling: `conv2d` (NHWC input, `[kh,kw,cin,cout]` filter) with its two
//! backprops, and `max_pool2d` with its gradient and the gradient's adjoint. Each family
//! member's VJP is built from the others, so the family is closed under differentiation
//! (second derivatives of a CNN work).

use super::attrs::{self, AttrMap};
use super::{arity, float_only, operand_types, same_dtype, Binary, Compare, Grads, Op, VjpArgs};
use crate::exec::kernels::conv::{self as kc, Conv2dGeom};
use crate::exec::kernels::pool::{self as kp, Pool2dGeom};
use crate::tensor::{dim, shape_str, Arr, DType, Data, Float, Shape, Tensor};
use ndarray::IxDyn;
use smallvec::smallvec;

/// How a window is placed over the input edges (TensorFlow's `padding` attribute).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Padding {
    /// No padding: only windows that fit inside the input; `out = (len - k) / s + 1`.
    Valid,
    /// Zero padding so that `out = ceil(len / s)`; the odd pixel of padding, if any,
    /// goes at the bottom/right.
    Same,
}

impl Padding {
    /// Output length and padding before the first element along one axis of length
    /// `len`, for a window of `k` and a stride `s`. `None` when a `Valid` window does
    /// not fit.
    ///
    /// # Panics
    /// If `s` is 0.
    ///
    /// # Example
    /// ```
    /// use tapeflow::Padding;
    /// assert_eq!(Padding::Valid.out_len_and_pad(28, 3, 1), Some((26, 0)));
    /// assert_eq!(Padding::Same.out_len_and_pad(5, 3, 2), Some((3, 1)));
    /// assert_eq!(Padding::Valid.out_len_and_pad(2, 3, 1), None);
    /// ```
    pub fn out_len_and_pad(self, len: usize, k: usize, s: usize) -> Option<(usize, usize)> {
        match self {
            Padding::Valid => (len >= k).then(|| ((len - k) / s + 1, 0)),
            Padding::Same => {
                let out = len.div_ceil(s);
                let pad_total = if out == 0 {
                    0
                } else {
                    ((out - 1) * s + k).saturating_sub(len)
                };
                Some((out, pad_total / 2))
            }
        }
    }
}

// The kernels take resolved geometry; building it from shapes and a `Padding` is the
// ops' shape rule, so the constructors live here.
impl Conv2dGeom {
    /// Checks that input `x_shape` `[n, h, w, cin]` and filter `w_shape`
    /// `[kh, kw, cin, cout]` fit together with the given stride `(sh, sw)` and padding.
    ///
    /// # Errors
    /// A message naming both shapes when either is not rank 4, the channel counts
    /// differ, a stride or filter size is zero, or the filter is larger than the
    /// (padded) input.
    ///
    /// # Example
    /// ```
    /// use tapeflow::exec::kernels::conv::Conv2dGeom;
    /// use tapeflow::Padding;
    /// let g = Conv2dGeom::new(&[32, 28, 28, 1], &[3, 3, 1, 32], (1, 1), Padding::Valid).unwrap();
    /// assert_eq!(g.out_shape(), [32, 26, 26, 32]);
    /// assert!(Conv2dGeom::new(&[32, 28, 28, 2], &[3, 3, 1, 32], (1, 1), Padding::Valid).is_err());
    /// ```
    pub fn new(
        x_shape: &[usize],
        w_shape: &[usize],
        stride: (usize, usize),
        padding: Padding,
    ) -> Result<Conv2dGeom, String> {
        let fail = |why: &str| {
            Err(format!(
                "conv2d: input {} [n, h, w, cin] and filter {} [kh, kw, cin, cout] \
                 (stride {stride:?}, {padding:?}): {why}",
                shape_str(x_shape),
                shape_str(w_shape)
            ))
        };
        if dim::any_sym(x_shape.get(1..).unwrap_or_default()) || dim::any_sym(w_shape) {
            return fail(SPATIAL_CONCRETE);
        }
        let (&[n, h, w, cin], &[kh, kw, wcin, cout]) = (x_shape, w_shape) else {
            return fail("both must be rank 4");
        };
        if cin != wcin {
            return fail(&format!("input has {cin} channels, filter expects {wcin}"));
        }
        let (sh, sw) = stride;
        if sh == 0 || sw == 0 {
            return fail("strides must be at least 1");
        }
        if kh == 0 || kw == 0 {
            return fail("filter height and width must be at least 1");
        }
        let (Some((oh, pad_top)), Some((ow, pad_left))) = (
            padding.out_len_and_pad(h, kh, sh),
            padding.out_len_and_pad(w, kw, sw),
        ) else {
            return fail("filter is larger than the input");
        };
        Ok(Conv2dGeom {
            n,
            h,
            w,
            cin,
            kh,
            kw,
            cout,
            sh,
            sw,
            pad_top,
            pad_left,
            oh,
            ow,
        })
    }
}

/// Why a convolution or pooling rejects a symbolic height, width or channel count.
const SPATIAL_CONCRETE: &str =
    "needs concrete heights, widths and channel counts (only the batch may be symbolic)";

impl Pool2dGeom {
    /// Checks input shape `x_shape` `[n, h, w, c]` against the window `ksize`
    /// `(kh, kw)`, stride `(sh, sw)` and padding.
    ///
    /// # Errors
    /// A message naming the shape when it is not rank 4, a window or stride size is
    /// zero, or a `Valid` window is larger than the input.
    ///
    /// # Example
    /// ```
    /// use tapeflow::exec::kernels::pool::Pool2dGeom;
    /// use tapeflow::Padding;
    /// let g = Pool2dGeom::new(&[32, 26, 26, 32], (2, 2), (2, 2), Padding::Valid).unwrap();
    /// assert_eq!(g.out_shape(), [32, 13, 13, 32]);
    /// ```
    pub fn new(
        x_shape: &[usize],
        ksize: (usize, usize),
        stride: (usize, usize),
        padding: Padding,
    ) -> Result<Pool2dGeom, String> {
        let fail = |why: &str| {
            Err(format!(
                "max_pool2d: input {} [n, h, w, c] with window {ksize:?} \
                 (stride {stride:?}, {padding:?}): {why}",
                shape_str(x_shape)
            ))
        };
        if dim::any_sym(x_shape.get(1..).unwrap_or_default()) {
            return fail(SPATIAL_CONCRETE);
        }
        let &[n, h, w, c] = x_shape else {
            return fail("input must be rank 4");
        };
        let ((kh, kw), (sh, sw)) = (ksize, stride);
        if kh == 0 || kw == 0 || sh == 0 || sw == 0 {
            return fail("window sizes and strides must be at least 1");
        }
        let (Some((oh, pad_top)), Some((ow, pad_left))) = (
            padding.out_len_and_pad(h, kh, sh),
            padding.out_len_and_pad(w, kw, sw),
        ) else {
            return fail("window is larger than the input");
        };
        Ok(Pool2dGeom {
            n,
            h,
            w,
            c,
            kh,
            kw,
            sh,
            sw,
            pad_top,
            pad_left,
            oh,
            ow,
        })
    }
}

/// Attributes of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConvAttrs {
    /// Stride (rows, cols).
    pub stride: (u8, u8),
    /// Padding mode.
    pub padding: Padding,
}

/// Attributes of a pooling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolAttrs {
    /// Window (rows, cols).
    pub ksize: (u8, u8),
    /// Stride (rows, cols).
    pub stride: (u8, u8),
    /// Padding mode.
    pub padding: Padding,
}

impl ConvAttrs {
    fn geom(&self, x: &[usize], w: &[usize]) -> Result<Conv2dGeom, String> {
        Conv2dGeom::new(
            x,
            w,
            (self.stride.0 as usize, self.stride.1 as usize),
            self.padding,
        )
    }
}

impl PoolAttrs {
    fn geom(&self, x: &[usize]) -> Result<Pool2dGeom, String> {
        Pool2dGeom::new(
            x,
            (self.ksize.0 as usize, self.ksize.1 as usize),
            (self.stride.0 as usize, self.stride.1 as usize),
            self.padding,
        )
    }
}

pub(super) fn name(op: &Op) -> &'static str {
    match op {
        Op::Conv2d(_) => "conv2d",
        Op::Conv2dBackpropInput(_) => "conv2d_backprop_input",
        Op::Conv2dBackpropFilter(_) => "conv2d_backprop_filter",
        Op::MaxPool2d(_) => "max_pool2d",
        Op::MaxPool2dGrad(_) => "max_pool2d_grad",
        Op::MaxPool2dGather(_) => "max_pool2d_gather",
        Op::MaxPool2dGradGated(_) => "max_pool2d_grad_gated",
        Op::Conv2dBiasRelu(_) => "conv2d_bias_relu",
        _ => unreachable!(),
    }
}

fn pad_name(p: Padding) -> String {
    match p {
        Padding::Valid => "valid".into(),
        Padding::Same => "same".into(),
    }
}

pub(super) fn attrs(op: &Op) -> Vec<(&'static str, String)> {
    match *op {
        Op::Conv2d(c)
        | Op::Conv2dBackpropInput(c)
        | Op::Conv2dBackpropFilter(c)
        | Op::Conv2dBiasRelu(c) => vec![
            (
                "stride",
                attrs::list(&[c.stride.0 as usize, c.stride.1 as usize]),
            ),
            ("padding", pad_name(c.padding)),
        ],
        Op::MaxPool2d(p)
        | Op::MaxPool2dGrad(p)
        | Op::MaxPool2dGather(p)
        | Op::MaxPool2dGradGated(p) => vec![
            (
                "ksize",
                attrs::list(&[p.ksize.0 as usize, p.ksize.1 as usize]),
            ),
            (
                "stride",
                attrs::list(&[p.stride.0 as usize, p.stride.1 as usize]),
            ),
            ("padding", pad_name(p.padding)),
        ],
        _ => unreachable!(),
    }
}

pub(super) fn parse(name: &str, m: &AttrMap) -> Option<Result<Op, String>> {
    let pair = |k: &str| -> Result<(u8, u8), String> {
        match attrs::parse_list(attrs::get(m, k)?)?.as_slice() {
            [a, b] => Ok((attrs::to_u8(k, *a)?, attrs::to_u8(k, *b)?)),
            v => Err(format!("`{k}` needs two values, got {v:?}")),
        }
    };
    let padding = || match attrs::get(m, "padding")? {
        "valid" => Ok(Padding::Valid),
        "same" => Ok(Padding::Same),
        p => Err(format!("unknown padding `{p}`")),
    };
    let conv = || {
        Ok(ConvAttrs {
            stride: pair("stride")?,
            padding: padding()?,
        })
    };
    let pool = || {
        Ok(PoolAttrs {
            ksize: pair("ksize")?,
            stride: pair("stride")?,
            padding: padding()?,
        })
    };
    Some(match name {
        "conv2d" => conv().map(Op::Conv2d),
        "conv2d_backprop_input" => conv().map(Op::Conv2dBackpropInput),
        "conv2d_backprop_filter" => conv().map(Op::Conv2dBackpropFilter),
        "conv2d_bias_relu" => conv().map(Op::Conv2dBiasRelu),
        "max_pool2d" => pool().map(Op::MaxPool2d),
        "max_pool2d_grad" => pool().map(Op::MaxPool2dGrad),
        "max_pool2d_gather" => pool().map(Op::MaxPool2dGather),
        "max_pool2d_grad_gated" => pool().map(Op::MaxPool2dGradGated),
        _ => return None,
    })
}

pub(super) fn infer(
    op: &Op,
    x: &[(DType, &[usize])],
    out: Option<&[usize]>,
) -> Result<(DType, Shape), String> {
    let d = same_dtype(x)?;
    float_only(d)?;
    let target = || out.ok_or_else(|| "needs a target shape".to_string());
    let check = |expect: &[usize], got: &[usize]| {
        if expect != got {
            Err(format!(
                "cotangent shape {} does not match the convolution's output {}: {}",
                shape_str(got),
                shape_str(expect),
                operand_types(x)
            ))
        } else {
            Ok(())
        }
    };
    let shape: Shape = match op {
        Op::Conv2d(c) => {
            arity(x, 2)?;
            Shape::from_slice(&c.geom(x[0].1, x[1].1)?.out_shape())
        }
        Op::Conv2dBiasRelu(c) => {
            arity(x, 4)?;
            let y = c.geom(x[0].1, x[1].1)?.out_shape();
            if x[2].1 != [y[3]] || !x[3].1.is_empty() {
                return Err(format!(
                    "needs a [cout] bias and a scalar threshold: {}",
                    operand_types(x)
                ));
            }
            Shape::from_slice(&y)
        }
        Op::Conv2dBackpropInput(c) => {
            arity(x, 2)?;
            let t = target()?;
            check(&c.geom(t, x[1].1)?.out_shape(), x[0].1)?;
            Shape::from_slice(t)
        }
        Op::Conv2dBackpropFilter(c) => {
            arity(x, 2)?;
            let t = target()?;
            check(&c.geom(x[0].1, t)?.out_shape(), x[1].1)?;
            Shape::from_slice(t)
        }
        Op::MaxPool2d(p) => {
            arity(x, 1)?;
            Shape::from_slice(&p.geom(x[0].1)?.out_shape())
        }
        Op::MaxPool2dGrad(p) => {
            arity(x, 2)?;
            check(&p.geom(x[0].1)?.out_shape(), x[1].1)?;
            Shape::from_slice(x[0].1)
        }
        Op::MaxPool2dGradGated(p) => {
            arity(x, 3)?;
            check(&p.geom(x[0].1)?.out_shape(), x[1].1)?;
            if !x[2].1.is_empty() {
                return Err(format!(
                    "the gate's threshold must be a scalar: {}",
                    operand_types(x)
                ));
            }
            Shape::from_slice(x[0].1)
        }
        Op::MaxPool2dGather(p) => {
            arity(x, 2)?;
            if x[0].1 != x[1].1 {
                return Err(format!(
                    "operands must have one shape: {}",
                    operand_types(x)
                ));
            }
            Shape::from_slice(&p.geom(x[0].1)?.out_shape())
        }
        _ => unreachable!(),
    };
    Ok((d, shape))
}

fn run<T: Float>(op: &Op, x: &[&Arr<T>], shape: &[usize]) -> Arr<T> {
    let s = |i: usize| x[i].as_slice().expect("standard layout");
    let v = match op {
        Op::Conv2d(c) => kc::conv2d(
            s(0),
            s(1),
            &c.geom(x[0].shape(), x[1].shape()).expect("checked"),
        ),
        Op::Conv2dBackpropInput(c) => {
            kc::conv2d_backprop_input(s(0), s(1), &c.geom(shape, x[1].shape()).expect("checked"))
        }
        Op::Conv2dBiasRelu(c) => {
            let t = s(3)[0];
            kc::conv2d_epilogue(
                s(0),
                s(1),
                s(2),
                &c.geom(x[0].shape(), x[1].shape()).expect("checked"),
                #[inline(always)]
                move |y, b| Binary::Maximum.f(Binary::Add.f(y, b), t),
            )
        }
        Op::Conv2dBackpropFilter(c) => {
            kc::conv2d_backprop_filter(s(0), s(1), &c.geom(x[0].shape(), shape).expect("checked"))
        }
        Op::MaxPool2d(p) => kp::max_pool2d(s(0), &p.geom(x[0].shape()).expect("checked")),
        Op::MaxPool2dGrad(p) => {
            kp::max_pool2d_backprop(s(0), s(1), &p.geom(x[0].shape()).expect("checked"))
        }
        Op::MaxPool2dGather(p) => {
            kp::max_pool2d_gather(s(0), s(1), &p.geom(x[0].shape()).expect("checked"))
        }
        Op::MaxPool2dGradGated(p) => {
            let t = s(2)[0];
            kp::max_pool2d_backprop_then(
                s(0),
                s(1),
                &p.geom(x[0].shape()).expect("checked"),
                // the gradient times `x > t` as `greater` writes it (1 or 0)
                #[inline(always)]
                move |grad, v| {
                    let open = if Compare::Gt.f(v, t) {
                        T::one()
                    } else {
                        T::zero()
                    };
                    Binary::Mul.f(grad, open)
                },
            )
        }
        _ => unreachable!(),
    };
    Arr::from_shape_vec(IxDyn(shape), v).expect("kernel output matches shape")
}

pub(super) fn eval(op: &Op, x: &[&Data], shape: &[usize]) -> Data {
    if let Some(v) = x.iter().map(|d| f32::unwrap(d)).collect::<Option<Vec<_>>>() {
        Data::F32(run(op, &v, shape))
    } else {
        let v: Vec<_> = x
            .iter()
            .map(|d| f64::unwrap(d).expect("infer checks dtypes"))
            .collect();
        Data::F64(run(op, &v, shape))
    }
}

pub(super) fn vjp(op: &Op, a: &VjpArgs, gy: &Tensor) -> Grads {
    let (p, q) = (&a.x[0], a.x.get(1));
    let want = |i: usize| a.needs.get(i).copied().unwrap_or(false);
    match *op {
        // conv is bilinear: each backprop is the adjoint of conv in one argument
        Op::Conv2d(c) => {
            let w = q.expect("two operands");
            smallvec![
                want(0).then(|| Tensor::conv2d_op(Op::Conv2dBackpropInput(c), gy, w, p.shape())),
                want(1).then(|| Tensor::conv2d_op(Op::Conv2dBackpropFilter(c), p, gy, w.shape()))
            ]
        }
        // <bi(gy, w), g> = <gy, conv(g, w)>
        Op::Conv2dBackpropInput(c) => {
            let w = q.expect("two operands");
            smallvec![
                want(0).then(|| Tensor::conv2d_op(Op::Conv2d(c), gy, w, p.shape())),
                want(1).then(|| Tensor::conv2d_op(Op::Conv2dBackpropFilter(c), gy, p, w.shape()))
            ]
        }
        // <bf(x, gy), g> = <gy, conv(x, g)>
        Op::Conv2dBackpropFilter(c) => {
            let gyf = q.expect("two operands");
            smallvec![
                want(0).then(|| Tensor::conv2d_op(Op::Conv2dBackpropInput(c), gyf, gy, p.shape())),
                want(1).then(|| Tensor::conv2d_op(Op::Conv2d(c), p, gy, gyf.shape()))
            ]
        }
        // max pooling routes the cotangent to each window's argmax; the selection itself
        // is piecewise constant in x, so x gets no second-order term
        Op::MaxPool2d(pa) => smallvec![Some(Tensor::pool_op(Op::MaxPool2dGrad(pa), p, Some(gy)))],
        Op::MaxPool2dGrad(pa) => smallvec![
            None,
            want(1).then(|| Tensor::pool_op(Op::MaxPool2dGather(pa), p, Some(gy)))
        ],
        Op::MaxPool2dGather(pa) => smallvec![
            None,
            want(1).then(|| Tensor::pool_op(Op::MaxPool2dGrad(pa), p, Some(gy)))
        ],
        Op::MaxPool2dGradGated(_) | Op::Conv2dBiasRelu(_) => panic!(
            "{} exists only in optimized graphs, which are never differentiated",
            name(op)
        ),
        _ => unreachable!(),
    }
}

/// Exact multiply-adds: each element of the output-side tensor (`y`, or `gy` of a
/// backprop) meets one filter column of `kh·kw·cin` taps; pooling has none.
pub(super) fn macs(op: &Op, x: &[&[usize]], out: &[usize]) -> u64 {
    // taps per output channel of a [kh, kw, cin, cout] filter
    let taps = |w: &[usize]| super::elems(w) / w.last().map_or(1, |&c| c.max(1) as u64);
    match op {
        Op::Conv2d(_) | Op::Conv2dBiasRelu(_) => super::elems(out) * taps(x[1]),
        Op::Conv2dBackpropInput(_) => super::elems(x[0]) * taps(x[1]),
        Op::Conv2dBackpropFilter(_) => super::elems(x[1]) * taps(out),
        _ => 0,
    }
}

/// Scheduling cost: a convolution's multiply-adds (the larger of its input and output
/// times the filter, per input channel); pooling visits each element once.
pub(super) fn work(op: &Op, x: &[&[usize]], out: &[usize]) -> u64 {
    match op {
        Op::Conv2d(_)
        | Op::Conv2dBackpropInput(_)
        | Op::Conv2dBackpropFilter(_)
        | Op::Conv2dBiasRelu(_) => {
            let w = x[1];
            let filter = super::elems(w);
            super::elems(x[0]).max(super::elems(out)) * filter / w[2].max(1) as u64
        }
        _ => super::streamed(x, out),
    }
}
