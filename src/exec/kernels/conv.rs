//! Direct 2-D convolution (temporary; replaced by the im2col + GEMM kernels).
use crate::tensor::Float;

/// Padding mode, TensorFlow semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Padding {
    /// No padding.
    Valid,
    /// Output = ceil(input / stride).
    Same,
}

/// Geometry of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Conv2dGeom {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub cin: usize,
    pub kh: usize,
    pub kw: usize,
    pub cout: usize,
    pub sh: usize,
    pub sw: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Conv2dGeom {
    /// Geometry from shapes.
    pub fn new(
        x: &[usize],
        w: &[usize],
        stride: (usize, usize),
        padding: Padding,
    ) -> Result<Conv2dGeom, String> {
        if x.len() != 4 || w.len() != 4 || x[3] != w[2] || stride.0 == 0 || stride.1 == 0 {
            return Err(format!("input {x:?} and filter {w:?} do not fit"));
        }
        let (oh, pt) = out_len(x[1], w[0], stride.0, padding)?;
        let (ow, pl) = out_len(x[2], w[1], stride.1, padding)?;
        Ok(Conv2dGeom {
            n: x[0],
            h: x[1],
            w: x[2],
            cin: x[3],
            kh: w[0],
            kw: w[1],
            cout: w[3],
            sh: stride.0,
            sw: stride.1,
            pad_top: pt,
            pad_left: pl,
            oh,
            ow,
        })
    }
    /// `[n, oh, ow, cout]`
    pub fn out_shape(&self) -> [usize; 4] {
        [self.n, self.oh, self.ow, self.cout]
    }
}

fn out_len(h: usize, k: usize, s: usize, p: Padding) -> Result<(usize, usize), String> {
    match p {
        Padding::Valid => {
            if k > h {
                return Err(format!("kernel {k} larger than input {h}"));
            }
            Ok(((h - k) / s + 1, 0))
        }
        Padding::Same => {
            let o = h.div_ceil(s);
            let total = ((o - 1) * s + k).saturating_sub(h);
            Ok((o, total / 2))
        }
    }
}

fn each<T: Float>(g: &Conv2dGeom, mut f: impl FnMut(usize, usize, usize)) {
    let _ = T::zero();
    for b in 0..g.n {
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                for ky in 0..g.kh {
                    for kx in 0..g.kw {
                        let iy = (oy * g.sh + ky) as isize - g.pad_top as isize;
                        let ix = (ox * g.sw + kx) as isize - g.pad_left as isize;
                        if iy < 0 || ix < 0 || iy as usize >= g.h || ix as usize >= g.w {
                            continue;
                        }
                        let xo = ((b * g.h + iy as usize) * g.w + ix as usize) * g.cin;
                        let yo = ((b * g.oh + oy) * g.ow + ox) * g.cout;
                        let wo = (ky * g.kw + kx) * g.cin * g.cout;
                        f(xo, yo, wo);
                    }
                }
            }
        }
    }
}

/// Forward convolution.
pub fn conv2d<T: Float>(x: &[T], w: &[T], g: &Conv2dGeom) -> Vec<T> {
    let mut y = vec![T::zero(); g.n * g.oh * g.ow * g.cout];
    each::<T>(g, |xo, yo, wo| {
        for ci in 0..g.cin {
            for co in 0..g.cout {
                y[yo + co] = y[yo + co] + x[xo + ci] * w[wo + ci * g.cout + co];
            }
        }
    });
    y
}
/// Gradient w.r.t. the input.
pub fn conv2d_backprop_input<T: Float>(gy: &[T], w: &[T], g: &Conv2dGeom) -> Vec<T> {
    let mut gx = vec![T::zero(); g.n * g.h * g.w * g.cin];
    each::<T>(g, |xo, yo, wo| {
        for ci in 0..g.cin {
            for co in 0..g.cout {
                gx[xo + ci] = gx[xo + ci] + gy[yo + co] * w[wo + ci * g.cout + co];
            }
        }
    });
    gx
}
/// Gradient w.r.t. the filter.
pub fn conv2d_backprop_filter<T: Float>(x: &[T], gy: &[T], g: &Conv2dGeom) -> Vec<T> {
    let mut gw = vec![T::zero(); g.kh * g.kw * g.cin * g.cout];
    each::<T>(g, |xo, yo, wo| {
        for ci in 0..g.cin {
            for co in 0..g.cout {
                gw[wo + ci * g.cout + co] = gw[wo + ci * g.cout + co] + x[xo + ci] * gy[yo + co];
            }
        }
    });
    gw
}
