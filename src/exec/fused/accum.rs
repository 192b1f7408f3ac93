//! Accumulation: a fused sum's elements added as they are produced, in exactly the
//! order of `reduce::sum`.

use super::run::{Tile, Val};
use crate::exec::kernels::ew::vectorized_wide;
use crate::tensor::{DType, Float};
use smallvec::SmallVec;

/// Accumulates a stream of summed elements in the order of `reduce::sum`.
pub(super) enum Accum<T> {
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
                // a local copy stays in one vector register (the lanes in place are
                // loaded and stored back per chunk, one by one)
                let mut lanes = *acc;
                vectorized_wide(
                    #[inline(always)]
                    || {
                        for c in vals[i..i + chunks].chunks_exact(8) {
                            for j in 0..8 {
                                lanes[j] = lanes[j] + c[j];
                            }
                        }
                    },
                );
                *acc = lanes;
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

/// An accumulator of the sum's dtype.
pub(super) enum AnyAccum {
    F32(Accum<f32>),
    F64(Accum<f64>),
}

pub(super) fn new_accum(d: DType, full: bool, lane: usize, red: &[usize]) -> AnyAccum {
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
    pub(super) fn push(&mut self, vals: Val, n: usize, out: &mut Tile, done: &mut usize) {
        match (self, vals, out) {
            (AnyAccum::F32(a), Val::F32(v), Tile::F32(o)) => a.push(&v[..n], o, done),
            (AnyAccum::F64(a), Val::F64(v), Tile::F64(o)) => a.push(&v[..n], o, done),
            _ => unreachable!("the summed value has the sum's dtype"),
        }
    }

    pub(super) fn total_into(&self, out: &mut Tile) {
        match (self, out) {
            (AnyAccum::F32(a), Tile::F32(o)) => o[0] = a.total(),
            (AnyAccum::F64(a), Tile::F64(o)) => o[0] = a.total(),
            _ => unreachable!("the sum's register has its dtype"),
        }
    }
}
