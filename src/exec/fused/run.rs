//! Running a [`Program`]: loads into registers a tile at a time, the steps over each
//! tile, and the writes of the result.

use super::accum::new_accum;
use super::{Dest, From, Loop, OutBuf, Program, Step, TILE};
use crate::exec::kernels::ew::{awake_chunk, vectorized_wide, PAR_CHUNK, PAR_MIN};
use crate::ops::{Binary, Compare, Op, Unary};
use crate::tensor::{numel, Arr, DType, Data, Float};
use ndarray::IxDyn;
use rayon::prelude::*;
use smallvec::SmallVec;
use std::ffi::c_void;
use std::mem::MaybeUninit;

/// A register: one value per element of the current tile.
pub(super) enum Tile {
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
pub(super) enum Val<'a> {
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
    /// `d`'s buffer from element `offset` on (where a sliced view starts).
    fn of(d: &'a Data, offset: usize) -> Src<'a> {
        const STANDARD: &str = "kernel results are in standard layout";
        match d {
            Data::F32(a) => Src::F32(&a.as_slice().expect(STANDARD)[offset..]),
            Data::F64(a) => Src::F64(&a.as_slice().expect(STANDARD)[offset..]),
            Data::I64(a) => Src::I64(&a.as_slice().expect(STANDARD)[offset..]),
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

impl Loop {
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

/// `(sin x, cos x)` per element, with [`Float::kernel_sin_cos`](crate::tensor::Float::kernel_sin_cos).
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

/// Splits the outputs into parallel chunks when the whole loop is long (`work` loop
/// elements per output); each output is computed independently, so the split never
/// changes a bit.
///
/// While the pool's workers are kept awake ([`crate::exec::kernels::awake`], inside a loop with
/// products or a run with big ones), a fork costs about a microsecond instead of a
/// wake-up, so shorter loops split too ([`awake_chunk`]).
fn par_outputs<O: Send>(out: &mut [O], work: usize, f: impl Fn(usize, &mut [O]) + Sync) {
    let total = out.len() * work.max(1);
    let usual = (total >= PAR_MIN && out.len() >= 2).then(|| (PAR_CHUNK / work.max(1)).max(1));
    match awake_chunk(out.len(), total).or(usual) {
        Some(per) => out
            .par_chunks_mut(per)
            .enumerate()
            .for_each(|(i, c)| f(i * per, c)),
        None => f(0, out),
    }
}

/// Where a further output's elements go: its buffer's first slot, shared by the chunks
/// of one run, which write disjoint ranges of it.
#[derive(Clone, Copy)]
struct OutPtr<O>(*mut MaybeUninit<O>);

// SAFETY: the chunks of a run write disjoint ranges through it (see `Program::run_as`),
// and the buffer outlives the run's rayon work, which is joined before it returns.
unsafe impl<O: Send> Send for OutPtr<O> {}
// SAFETY: as above.
unsafe impl<O: Send> Sync for OutPtr<O> {}

/// The result buffer of a run (see [`Program::output`]).
struct Output<O> {
    /// A buffer holding values already (the matmul result, an overwritten operand).
    buf: Option<Vec<O>>,
    /// An operand we were handed but could not overwrite (shared): only read.
    held: Option<Data>,
    /// The param whose buffer `buf` is.
    from_out: Option<usize>,
}

impl Program {
    /// Runs on the operands (`None` only for the one given as [`OutBuf::Operand`]).
    pub fn run(&self, x: &[Option<&Data>], out: OutBuf) -> Data {
        let mut extra = SmallVec::new();
        self.run_into(x, out, &[], &mut extra)
    }

    /// Runs a program with further outputs (see [`Program::with_outputs`]) on its
    /// operands: each further output, then the result. Output `k` (in that order) goes
    /// to `dests[k]` where one is given that [fits](Dest::fits) it, else to a fresh
    /// buffer.
    pub fn run_all(&self, x: &[Option<&Data>], dests: &[Option<Dest>]) -> SmallVec<[Data; 8]> {
        let mut all = SmallVec::new();
        let result = self.run_into(x, OutBuf::Fresh, dests, &mut all);
        all.push(result);
        all
    }

    /// The result; the further outputs are pushed to `extra`.
    fn run_into(
        &self,
        x: &[Option<&Data>],
        out: OutBuf,
        dests: &[Option<Dest>],
        extra: &mut SmallVec<[Data; 8]>,
    ) -> Data {
        match self.dtype {
            DType::F32 => self.run_as::<f32>(x, out, dests, extra),
            DType::F64 => self.run_as::<f64>(x, out, dests, extra),
            DType::I64 => self.run_as::<i64>(x, out, dests, extra),
        }
    }

    /// Where the result goes: the matmul prologue's result, the overwritten operand's
    /// buffer, or (`buf` = `None`) a fresh one.
    fn output<O: Elem>(&self, x: &[Option<&Data>], out: OutBuf, n_out: usize) -> Output<O> {
        let mut o = Output {
            buf: None,
            held: None,
            from_out: None,
        };
        if let Some((ta, tb)) = self.matmul {
            let (a, b) = (
                x[0].expect("matmul operands are given"),
                x[1].expect("matmul operands are given"),
            );
            let m = Op::MatMul { ta, tb }
                .eval(&[a, b], &self.shape)
                .expect("matmul cannot fail at run time");
            o.buf = Some(
                O::take_vec(m).unwrap_or_else(|_| unreachable!("a fresh matmul result is owned")),
            );
        } else {
            match out {
                OutBuf::Fresh => {}
                OutBuf::Operand(k, d) => match O::take_vec(d) {
                    Ok(v) if v.len() == n_out => {
                        o.buf = Some(v);
                        o.from_out = Some(k);
                    }
                    Ok(_) => {
                        unreachable!("the planner overwrites only operands of the result's type")
                    }
                    Err(d) => o.held = Some(d),
                },
            }
        }
        o
    }

    fn run_as<O: Elem>(
        &self,
        x: &[Option<&Data>],
        out: OutBuf,
        dests: &[Option<Dest>],
        extra: &mut SmallVec<[Data; 8]>,
    ) -> Data {
        let shape = &self.shape[..];
        let n_out = numel(shape);
        // output `k`'s destination, if it is given and fits
        let dest = |k: usize| (dests.get(k)?.as_ref()).filter(|d| d.fits(self.dtype, shape));
        let Output {
            buf,
            held,
            from_out,
        } = self.output::<O>(x, out, n_out);
        // the kernel writes every element, so a fresh buffer is never zeroed first; a
        // matmul result or an overwritten operand keeps its values for `Src::Out` loads
        let prior = buf.is_some();
        let result_dest = match prior {
            true => None,
            false => dest(self.extra.len()),
        };
        let mut buf = match result_dest {
            Some(_) => None,
            None => Some(buf.unwrap_or_else(|| crate::exec::buffers::take(n_out))),
        };
        let slots: &mut [MaybeUninit<O>] = match (&mut buf, result_dest) {
            (Some(buf), _) => {
                // SAFETY: `n_out` elements fit (a taken buffer's capacity, or the length
                // of a held one); length 0 only hides the held values until the end,
                // when every element has been written.
                unsafe { buf.set_len(0) };
                &mut buf.spare_capacity_mut()[..n_out]
            }
            // SAFETY: the destination holds `n_out` elements of this type (`fits`), which
            // nothing reads or writes while the program runs (see `Dest`)
            (None, Some(d)) => unsafe {
                std::slice::from_raw_parts_mut(d.ptr.cast::<MaybeUninit<O>>(), n_out)
            },
            (None, None) => unreachable!("a buffer is taken where no destination is"),
        };
        // further outputs: their destinations, or fresh buffers, written by the same
        // chunks at the same offsets (filled in place, and only for a group: most
        // programs have none)
        let mut extra_bufs: SmallVec<[Option<Vec<O>>; 8]> = SmallVec::new();
        let mut extra_ptrs: SmallVec<[OutPtr<O>; 8]> = SmallVec::new();
        for k in 0..self.extra.len() {
            let ptr = match dest(k) {
                Some(d) => {
                    extra_bufs.push(None);
                    d.ptr.cast::<MaybeUninit<O>>()
                }
                None => {
                    let mut b = crate::exec::buffers::take(n_out);
                    // SAFETY: as for `buf`; the length is set once every element is written
                    unsafe { b.set_len(0) };
                    let p = b.spare_capacity_mut()[..n_out].as_mut_ptr();
                    extra_bufs.push(Some(b));
                    p
                }
            };
            extra_ptrs.push(OutPtr(ptr));
        }
        // Further output `k`'s elements `at..at + n`.
        let extra_seg = |k: usize, at: usize, n: usize| -> &mut [MaybeUninit<O>] {
            // SAFETY: each buffer holds `n_out` slots, and the chunks and tiles of one
            // call write disjoint ranges `at..at + n` of it (those of the result)
            unsafe { std::slice::from_raw_parts_mut(extra_ptrs[k].0.add(at), n) }
        };
        // The values of an output segment before the kernel writes it.
        let values = |seg: &[MaybeUninit<O>]| -> Option<&[O]> {
            // SAFETY: with `prior` the buffer held `n_out` values when it was handed in.
            prior.then(|| unsafe { &*(seg as *const [MaybeUninit<O>] as *const [O]) })
        };
        let bind = |lp: &Loop| -> SmallVec<[Src; 8]> {
            (lp.from.iter().zip(&lp.views))
                .map(|(f, v)| match *f {
                    From::Matmul => Src::Out,
                    From::Param(p) if from_out == Some(p) => Src::Out,
                    From::Param(p) => Src::of(
                        x[p].or(held.as_ref()).expect("every operand is given"),
                        v.offset,
                    ),
                })
                .collect()
        };
        match (&self.sum, self.gen.as_ref().and_then(|k| k.ready_to_run())) {
            // generated code, once compiled, runs the region in place of the steps: a
            // full sum's one element, else output chunks (a partial sum's outputs in
            // `reduce::sum`'s order, see `codegen`; with a matmul prologue, the product
            // is in the output buffer already and the generated epilogue reads it there)
            (sum, Some(k)) => {
                let bound = match (from_out, &held) {
                    // a fresh output: every operand is given, as the kernel reads them
                    (None, None) => k.bind(x),
                    _ => {
                        let params: SmallVec<[Option<&Data>; 8]> = (0..x.len())
                            .map(|p| {
                                (from_out != Some(p)).then(|| {
                                    x[p].or(held.as_ref()).expect("every operand is given")
                                })
                            })
                            .collect();
                        k.bind(&params)
                    }
                };
                let call = |chunk: &mut [MaybeUninit<O>], off: usize| {
                    if extra_ptrs.is_empty() {
                        return k.call(&bound, chunk, off); // no pointer list to build
                    }
                    let ptrs: SmallVec<[*mut c_void; 8]> =
                        extra_ptrs.iter().map(|p| p.0.cast()).collect();
                    // SAFETY: each further output's buffer has the result's element type
                    // and length, and the chunks write disjoint ranges of it
                    unsafe { k.call_with(&bound, chunk, off, &ptrs) }
                };
                match sum {
                    Some(sp) if sp.full => call(slots, 0),
                    _ => par_outputs(slots, sum.as_ref().map_or(1, |sp| sp.lane), |off, chunk| {
                        call(chunk, off)
                    }),
                }
            }
            (None, None) => {
                let osrcs = bind(&self.outer);
                par_outputs(slots, 1, |off, chunk| {
                    with_regs(&self.dtypes, self.tile, |regs| {
                        let mut views = no_views(regs.len());
                        let mut c = Cursor::new(&self.outer.dims, &self.outer.strides, off);
                        let mut at = off;
                        for seg in chunk.chunks_mut(self.tile) {
                            let n = seg.len();
                            self.outer
                                .fill(&osrcs, &mut c, regs, &mut views, n, values(seg));
                            eval_steps(&self.steps, regs, &views, n);
                            O::write_out(read(regs, &views, self.result_reg), seg);
                            for (k, &r) in self.extra.iter().enumerate() {
                                O::write_out(read(regs, &views, r), extra_seg(k, at, n));
                            }
                            at += n;
                        }
                    })
                })
            }
            (Some(sp), _) => {
                let (isrcs, osrcs) = (bind(&self.inner), bind(&self.outer));
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
        // (a panic propagates before this line, leaving the length 0), of the result and
        // of every further output alike; a destination's view hands out what was written.
        let done = |b: Option<Vec<O>>, d: Option<&Dest>| match (b, d) {
            (Some(mut b), _) => {
                unsafe { b.set_len(n_out) };
                O::wrap(Arr::from_shape_vec(IxDyn(shape), b).expect("length matches shape"))
            }
            (None, Some(d)) => d.view.clone(),
            (None, None) => unreachable!("an output without a buffer has a destination"),
        };
        for (k, b) in extra_bufs.into_iter().enumerate() {
            extra.push(done(b, dest(k)));
        }
        done(buf, result_dest)
    }
}

/// Views for `n` registers, all read from their tiles.
fn no_views<'a>(n: usize) -> SmallVec<[Option<Val<'a>>; 32]> {
    SmallVec::from_elem(None, n)
}

thread_local! {
    /// This thread's registers, kept between calls (a fused kernel never calls another):
    /// the array lent to the running program, and the spares of each dtype (f32, f64,
    /// i64). Programs with other dtypes or more registers take spares or add to them,
    /// so alternating programs never reallocate.
    static REGS: std::cell::RefCell<(Vec<Tile>, [Vec<Tile>; 3])> =
        const { std::cell::RefCell::new((Vec::new(), [Vec::new(), Vec::new(), Vec::new()])) };
}

/// Stocks this thread's spare registers so that programs needing at most `need[d]`
/// registers of each dtype (f32, f64, i64) never allocate one.
fn reserve_here(need: [usize; 3]) {
    REGS.with(|cell| {
        let (regs, spares) = &mut *cell.borrow_mut();
        for (k, d) in [DType::F32, DType::F64, DType::I64].into_iter().enumerate() {
            let held = regs
                .iter()
                .filter(|t| match t {
                    Tile::F32(_) => k == 0,
                    Tile::F64(_) => k == 1,
                    Tile::I64(_) => k == 2,
                    Tile::Lent => false,
                })
                .count()
                + spares[k].len();
            for _ in held..need[k] {
                spares[k].push(Tile::new(d, TILE));
            }
        }
    });
}

/// Gives the calling thread and every thread of the current rayon pool the registers
/// that `programs` need, when a plan is made: a steady-state run then allocates no
/// register on whichever thread its fused steps land (registers are thread-local).
pub(crate) fn reserve_registers<'a>(programs: impl Iterator<Item = &'a Program>) {
    let mut need = [0usize; 3];
    for p in programs {
        let mut count = [0usize; 3];
        for &d in &p.dtypes {
            count[d.index()] += 1;
        }
        for k in 0..3 {
            need[k] = need[k].max(count[k]);
        }
    }
    if need == [0; 3] {
        return;
    }
    reserve_here(need);
    rayon::broadcast(|_| reserve_here(need));
}

/// Runs `f` with registers of `dtypes`, each at least `len` long, reusing this thread's.
fn with_regs<R>(dtypes: &[DType], len: usize, f: impl FnOnce(&mut [Tile]) -> R) -> R {
    let (mut regs, mut spares) = REGS.with(|r| std::mem::take(&mut *r.borrow_mut()));
    for t in regs.drain(..) {
        match t {
            Tile::F32(_) => spares[0].push(t),
            Tile::F64(_) => spares[1].push(t),
            Tile::I64(_) => spares[2].push(t),
            Tile::Lent => {}
        }
    }
    for &d in dtypes {
        let fits = |t: &Tile| match t {
            Tile::F32(v) => v.len() >= len,
            Tile::F64(v) => v.len() >= len,
            Tile::I64(v) => v.len() >= len,
            Tile::Lent => false,
        };
        let spare = &mut spares[d.index()];
        let t = match spare.last() {
            Some(t) if fits(t) => spare.pop().expect("checked"),
            _ => Tile::new(d, len.max(TILE)),
        };
        regs.push(t);
    }
    let r = f(&mut regs);
    REGS.with(|cell| *cell.borrow_mut() = (regs, spares));
    r
}

fn zero_into(t: &mut Tile, n: usize) {
    match t {
        Tile::F32(v) => v[..n].fill(0.0),
        Tile::F64(v) => v[..n].fill(0.0),
        _ => unreachable!("infer checks that sums are of floats"),
    }
}
