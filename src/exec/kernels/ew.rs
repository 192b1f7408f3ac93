//! Elementwise loops: map, broadcasting zip, select.
//!
//! Contiguous same-shape operands take a flat slice loop (which the compiler
//! vectorizes); anything else goes through ndarray's broadcasting `Zip`. Results are
//! always in standard layout. Each element is computed independently, so splitting the
//! loop across threads never changes a bit.

use crate::tensor::{Arr, Data};
use ndarray::{ArrayD, IxDyn, Zip};
use rayon::prelude::*;

/// Elements per parallel chunk; loops shorter than two chunks run on the calling thread.
pub const PAR_CHUNK: usize = 1 << 15;

/// Applies `f` to a flat output in parallel chunks (or inline when small).
pub fn fill_par<O: Send>(out: &mut [O], f: impl Fn(usize, &mut [O]) + Sync) {
    if out.len() < 2 * PAR_CHUNK {
        f(0, out);
    } else {
        out.par_chunks_mut(PAR_CHUNK)
            .enumerate()
            .for_each(|(i, c)| f(i * PAR_CHUNK, c));
    }
}

fn collect<O: Copy + Default + Send>(
    shape: &[usize],
    n: usize,
    f: impl Fn(usize) -> O + Sync,
) -> Arr<O> {
    let mut v = vec![O::default(); n];
    fill_par(&mut v, |off, c| {
        for (j, o) in c.iter_mut().enumerate() {
            *o = f(off + j);
        }
    });
    ArrayD::from_shape_vec(IxDyn(shape), v)
        .expect("length matches shape")
        .into_shared()
}

/// `f(x)` for every element.
pub fn map<T: Copy + Default + Send + Sync, O: Copy + Default + Send + Sync>(
    a: &Arr<T>,
    f: impl Fn(T) -> O + Sync,
) -> Arr<O> {
    match a.as_slice() {
        Some(s) => collect(a.shape(), s.len(), |i| f(s[i])),
        None => a.map(|&x| f(x)).into_shared(),
    }
}

/// `f(a, b)` with NumPy broadcasting to `shape`.
pub fn zip<A, B, O>(a: &Arr<A>, b: &Arr<B>, shape: &[usize], f: impl Fn(A, B) -> O + Sync) -> Arr<O>
where
    A: Copy + Send + Sync,
    B: Copy + Send + Sync,
    O: Copy + Default + Send + Sync,
{
    let n: usize = shape.iter().product();
    match (a.as_slice(), b.as_slice()) {
        (Some(x), Some(y)) if x.len() == n && y.len() == n => collect(shape, n, |i| f(x[i], y[i])),
        (Some(x), Some(y)) if x.len() == 1 && y.len() == n => collect(shape, n, |i| f(x[0], y[i])),
        (Some(x), Some(y)) if x.len() == n && y.len() == 1 => collect(shape, n, |i| f(x[i], y[0])),
        _ => {
            let sh = IxDyn(shape);
            let av = a.broadcast(sh.clone()).expect("infer checked broadcasting");
            let bv = b.broadcast(sh).expect("infer checked broadcasting");
            Zip::from(&av)
                .and(&bv)
                .map_collect(|&x, &y| f(x, y))
                .into_shared()
        }
    }
}

/// The mask operand of `select` as booleans broadcast to `shape`.
pub fn mask_of(m: &Data, shape: &[usize]) -> Arr<bool> {
    let b: Arr<bool> = match m {
        Data::F32(a) => map(a, |v| v != 0.0),
        Data::F64(a) => map(a, |v| v != 0.0),
        Data::I64(a) => map(a, |v| v != 0),
    };
    if b.shape() == shape {
        b
    } else {
        b.broadcast(IxDyn(shape))
            .expect("infer checked broadcasting")
            .to_owned()
            .into_shared()
    }
}

/// `mask ? a : b` elementwise, broadcasting `a` and `b` to `shape`.
pub fn select<T: Copy + Default + Send + Sync>(
    mask: &Arr<bool>,
    a: &Arr<T>,
    b: &Arr<T>,
    shape: &[usize],
) -> Arr<T> {
    let ab = zip(a, b, shape, |x, y| (x, y));
    zip(mask, &ab, shape, |m, (x, y)| if m { x } else { y })
}
