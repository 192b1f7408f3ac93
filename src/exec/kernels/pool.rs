//! Max pooling (temporary direct version).
use super::conv::Padding;
use crate::tensor::Float;

/// Geometry of one pooling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Pool2dGeom {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Pool2dGeom {
    /// Geometry from shapes.
    pub fn new(
        x: &[usize],
        k: (usize, usize),
        s: (usize, usize),
        p: Padding,
    ) -> Result<Pool2dGeom, String> {
        if x.len() != 4 {
            return Err(format!("input {x:?} is not NHWC"));
        }
        let g = super::conv::Conv2dGeom::new(x, &[k.0, k.1, x[3], 1], s, p)?;
        Ok(Pool2dGeom {
            n: x[0],
            h: x[1],
            w: x[2],
            c: x[3],
            kh: k.0,
            kw: k.1,
            sh: s.0,
            sw: s.1,
            pad_top: g.pad_top,
            pad_left: g.pad_left,
            oh: g.oh,
            ow: g.ow,
        })
    }
    /// `[n, oh, ow, c]`
    pub fn out_shape(&self) -> [usize; 4] {
        [self.n, self.oh, self.ow, self.c]
    }
}

fn argmaxes<T: Float>(x: &[T], g: &Pool2dGeom) -> Vec<usize> {
    let mut out = Vec::with_capacity(g.n * g.oh * g.ow * g.c);
    for b in 0..g.n {
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                for ch in 0..g.c {
                    let mut best: Option<usize> = None;
                    for ky in 0..g.kh {
                        for kx in 0..g.kw {
                            let iy = (oy * g.sh + ky) as isize - g.pad_top as isize;
                            let ix = (ox * g.sw + kx) as isize - g.pad_left as isize;
                            if iy < 0 || ix < 0 || iy as usize >= g.h || ix as usize >= g.w {
                                continue;
                            }
                            let i = ((b * g.h + iy as usize) * g.w + ix as usize) * g.c + ch;
                            best = match best {
                                None => Some(i),
                                Some(j) if x[j].is_nan() => Some(j),
                                Some(j) => {
                                    if x[i] > x[j] || x[i].is_nan() {
                                        Some(i)
                                    } else {
                                        Some(j)
                                    }
                                }
                            };
                        }
                    }
                    out.push(best.expect("window not empty"));
                }
            }
        }
    }
    out
}
/// Forward.
pub fn max_pool2d<T: Float>(x: &[T], g: &Pool2dGeom) -> Vec<T> {
    argmaxes(x, g).into_iter().map(|i| x[i]).collect()
}
/// Backward.
pub fn max_pool2d_backprop<T: Float>(x: &[T], gy: &[T], g: &Pool2dGeom) -> Vec<T> {
    let mut gx = vec![T::zero(); x.len()];
    for (o, i) in argmaxes(x, g).into_iter().enumerate() {
        gx[i] = gx[i] + gy[o];
    }
    gx
}
/// Gather at argmax.
pub fn max_pool2d_gather<T: Float>(x: &[T], gx: &[T], g: &Pool2dGeom) -> Vec<T> {
    argmaxes(x, g).into_iter().map(|i| gx[i]).collect()
}
