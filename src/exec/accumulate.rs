//! Accumulation loops: a scan whose body only adds a product to each carry,
//! `c ← c + op(a_t)·op(b_t)` with `a_t`, `b_t` scanned rows or captures (what loop
//! fission leaves of a recurrent layer's weight gradient, `U' ← U' + hᵀ·dz`), runs
//! without its body's plan: the GEMM adds each step's product into the carry in place
//! ([`gemm::accumulate`]), and with two or more threads the carry's two column halves
//! each run the whole loop on their own worker, meeting once at the end instead of
//! once per step.
//!
//! **Same bits.** [`gemm::accumulate`] gives the bits of the body's own ops, a product
//! then an element-wise add per step, in the scan's order (reverse scans backwards).
//! A profiled run takes the body's plan (its ops are what a profile shows), and so does
//! one under `debugging::enable_check_numerics` (it names the first op that makes a
//! NaN or an infinity).

use super::buffers;
use super::kernels::gemm;
use crate::error::{Error, Result};
use crate::ir::{Region, RegionKind};
use crate::ops::{Binary, Op};
use crate::tensor::data::Float;
use crate::tensor::{type_str, DType, Data};
use smallvec::SmallVec;

/// One carry's update: `carry ← carry + op(params[a])·op(params[b])`, with the body's
/// parameters numbered as the scan's operands (carries, scanned, captured).
#[derive(Debug, Clone, PartialEq)]
struct Term {
    a: usize,
    b: usize,
    ta: bool,
    tb: bool,
    m: usize,
    k: usize,
    n: usize,
}

/// A scan recognised as an accumulation loop ([`find`]).
#[derive(Debug)]
pub(crate) struct Accumulation {
    /// One term per carry, in carry order.
    terms: Vec<Term>,
    xs: usize,
    reverse: bool,
    dtype: DType,
}

/// The accumulation loop `region` is, if it is one: a scan with no stacked results
/// whose body's every output `i` is `add(carry i, matmul(p, q))` (either order) with
/// `p`, `q` scanned or captured parameters, 2-D, all f32 or all f64, and nothing else.
pub(crate) fn find(region: &Region) -> Option<Accumulation> {
    let RegionKind::Scan { reverse } = region.kind else {
        return None;
    };
    let (nc, nx) = (region.carries, region.xs);
    let body = region.bodies.first()?;
    if nc == 0 || nx == 0 || region.results.len() != nc || body.outputs.len() != nc {
        return None;
    }
    let param = |n| match body.node(n).op {
        Op::Input(i) => Some(i as usize),
        _ => None,
    };
    let dtype = body.node(body.outputs[0]).dtype;
    if !matches!(dtype, DType::F32 | DType::F64) {
        return None;
    }
    let mut terms = Vec::with_capacity(nc);
    for (i, &out) in body.outputs.iter().enumerate() {
        let node = body.node(out);
        if node.op != Op::Binary(Binary::Add) || node.dtype != dtype || node.shape.len() != 2 {
            return None;
        }
        let ops = body.operands(out);
        let product = match (param(ops[0]), param(ops[1])) {
            (Some(c), None) if c == i => ops[1],
            (None, Some(c)) if c == i => ops[0],
            _ => return None,
        };
        let Op::MatMul { ta, tb } = body.node(product).op else {
            return None;
        };
        let pq = body.operands(product);
        let (a, b) = (param(pq[0])?, param(pq[1])?);
        let (sa, sb) = (&body.node(pq[0]).shape, &body.node(pq[1]).shape);
        if a < nc || b < nc || sa.len() != 2 || sb.len() != 2 {
            return None;
        }
        if [pq[0], pq[1], product]
            .iter()
            .any(|&v| body.node(v).dtype != dtype)
        {
            return None;
        }
        let (m, k) = if ta { (sa[1], sa[0]) } else { (sa[0], sa[1]) };
        let n = if tb { sb[0] } else { sb[1] };
        if node.shape[..] != [m, n] {
            return None;
        }
        terms.push(Term {
            a,
            b,
            ta,
            tb,
            m,
            k,
            n,
        });
    }
    // nothing else: the parameters, one product and one add per carry
    let params = body.inputs.len();
    (body.len() == params + 2 * nc).then_some(Accumulation {
        terms,
        xs: nx,
        reverse,
        dtype,
    })
}

impl Accumulation {
    /// Runs the loop on the scan's operands; returns the final carries (buffers of the
    /// installed pool).
    pub(crate) fn run(&self, args: &[&Data]) -> Result<Vec<Data>> {
        match self.dtype {
            DType::F32 => self.run_typed::<f32>(args),
            _ => self.run_typed::<f64>(args),
        }
    }

    fn run_typed<T: Float>(&self, args: &[&Data]) -> Result<Vec<Data>> {
        let nc = self.terms.len();
        let array = |i: usize| {
            T::unwrap(args[i]).ok_or_else(|| {
                Error::Graph(format!(
                    "scan: operand {i} is {}, the accumulation loop wants {}",
                    type_str(args[i].dtype(), &args[i].shape()),
                    T::DTYPE
                ))
            })
        };
        let steps = match args.get(nc) {
            Some(x) if self.xs > 0 => x.shape()[0],
            _ => 0,
        };
        // contiguous copies of any operand the terms read that is not (rare: views are
        // standard); operands no term reads may be of any type
        let read = |i: usize| i < nc || self.terms.iter().any(|t| t.a == i || t.b == i);
        let owned: SmallVec<[Option<Vec<T>>; 8]> = (0..args.len())
            .map(|i| match read(i) {
                true => {
                    let a = array(i)?;
                    Ok(a.as_slice().is_none().then(|| a.iter().copied().collect()))
                }
                false => Ok(None),
            })
            .collect::<Result<_>>()?;
        let whole = |i: usize| -> &[T] {
            match &owned[i] {
                Some(v) => v,
                None => T::unwrap(args[i]).and_then(|a| a.as_slice()).unwrap_or(&[]),
            }
        };
        let mut out = Vec::with_capacity(nc);
        for (i, term) in self.terms.iter().enumerate() {
            let init = array(i)?;
            if init.shape() != [term.m, term.n] {
                return Err(Error::Graph(format!(
                    "scan: carry {i} is {}, its accumulation wants [{}, {}]",
                    type_str(T::DTYPE, init.shape()),
                    term.m,
                    term.n
                )));
            }
            let mut c = buffers::take::<T>(term.m * term.n);
            c.extend_from_slice(whole(i));
            // operand `p` at step `t`: its row t when scanned, all of it when captured
            let at = |p: usize, t: usize, len: usize| -> &[T] {
                let s = whole(p);
                match p < nc + self.xs {
                    true => s.get(t * len..(t + 1) * len).unwrap_or(&[]),
                    false => s,
                }
            };
            let (la, lb) = (term.m * term.k, term.k * term.n);
            let reverse = self.reverse;
            gemm::accumulate(
                &mut c,
                term.m,
                term.k,
                term.n,
                term.ta,
                term.tb,
                steps,
                |s| {
                    let t = if reverse { steps - 1 - s } else { s };
                    (at(term.a, t, la), at(term.b, t, lb))
                },
            );
            let c = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[term.m, term.n]), c);
            out.push(T::wrap(c.expect("m·n elements")));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::parse;

    /// The accumulation `find` sees in the scan of `body` (a reverse scan with one
    /// carry `f32[8,16]`, one scanned `f32[5,4,8]` and one captured `f32[4,16]`).
    fn found(body: &str, results: &str) -> Option<Accumulation> {
        let text = format!(
            "graph(%0: f32[8,16], %1: f32[5,4,8], %2: f32[4,16]) {{
  %3 = scan[carries=1, xs=1, reverse=true, saved=false] %0, %1, %2 : ({results})
    body(%0: f32[8,16], %1: f32[4,8], %2: f32[4,16]) {{
{body}
    }}
  %4 = get[index=0] %3 : f32[8,16]
  return %4
}}"
        );
        let g = parse(&text).unwrap();
        find(&g.regions[0])
    }

    #[test]
    fn a_loop_that_adds_products_to_its_carries_is_found() {
        let acc = found(
            "      %3 = matmul[ta=true] %1, %2 : f32[8,16]
      %4 = add %3, %0 : f32[8,16]
      return %4",
            "f32[8,16]",
        )
        .expect("an accumulation loop");
        let want = Term {
            a: 1,
            b: 2,
            ta: true,
            tb: false,
            m: 8,
            k: 4,
            n: 16,
        };
        assert_eq!(acc.terms, [want]);
        assert!(acc.reverse);
        assert_eq!((acc.xs, acc.dtype), (1, DType::F32));
    }

    #[test]
    fn loops_that_do_more_or_other_than_add_products_are_not() {
        let results = "f32[8,16]";
        // a product subtracted, scaled, or of the carry itself; a second op
        for body in [
            "      %3 = matmul[ta=true] %1, %2 : f32[8,16]
      %4 = sub %0, %3 : f32[8,16]
      return %4",
            "      %3 = matmul[ta=true] %1, %2 : f32[8,16]
      %4 = add %3, %3 : f32[8,16]
      return %4",
            "      %3 = tanh %1 : f32[4,8]
      %4 = matmul[ta=true] %3, %2 : f32[8,16]
      %5 = add %0, %4 : f32[8,16]
      return %5",
        ] {
            assert!(found(body, results).is_none(), "{body}");
        }
        // a stacked result besides the carry
        let ys = "      %3 = matmul[ta=true] %1, %2 : f32[8,16]
      %4 = add %0, %3 : f32[8,16]
      return %4, %3";
        assert!(found(ys, "f32[8,16], f32[5,8,16]").is_none());
    }

    /// Runs a reverse accumulation loop (with a captured i64 operand no body op reads)
    /// as the accumulation path and, with `· 1.0` after the add so that it is not one,
    /// through its body's plan: the same bits.
    #[test]
    fn the_loop_has_the_bits_of_its_body_and_ignores_unread_operands() {
        let text = |tail: &str, out: &str| {
            format!(
                "graph(%0: f32[8,16], %1: f32[5,4,8], %2: f32[4,16], %3: i64[3]) {{
  %4 = scan[carries=1, xs=1, reverse=true, saved=false] %0, %1, %2, %3 : (f32[8,16])
    body(%0: f32[8,16], %1: f32[4,8], %2: f32[4,16], %3: i64[3]) {{
      %4 = matmul[ta=true] %1, %2 : f32[8,16]
      %5 = add %0, %4 : f32[8,16]
{tail}      return {out}
    }}
  %5 = get[index=0] %4 : f32[8,16]
  return %5
}}"
            )
        };
        let plain = text("", "%5");
        let scaled = text(
            "      %6 = const 1.0 : f32[]
      %7 = mul %5, %6 : f32[8,16]
",
            "%7",
        );
        let data = |shape: &[usize], seed: u64| {
            crate::Tensor::random_uniform(shape, -1.0, 1.0, seed, DType::F32)
                .data()
                .unwrap()
                .clone()
        };
        let ids = Data::I64(ndarray::ArrayD::zeros(ndarray::IxDyn(&[3])).into_shared());
        let args = [
            data(&[8, 16], 1),
            data(&[5, 4, 8], 2),
            data(&[4, 16], 3),
            ids,
        ];
        let refs: Vec<&Data> = args.iter().collect();
        let run = |t: &str| {
            let plan = crate::exec::Plan::new(parse(t).unwrap()).unwrap();
            let out = plan.run(&refs, &mut Default::default()).unwrap();
            (
                plan.accumulation_loops(),
                crate::Tensor::from_data(out[0].clone()),
            )
        };
        let ((n1, a), (n2, b)) = (run(&plain), run(&scaled));
        assert_eq!((n1, n2), (1, 0));
        let bits = |t: &crate::Tensor| -> Vec<u32> {
            t.to_vec_f32()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        assert_eq!(bits(&a), bits(&b));
    }
}
