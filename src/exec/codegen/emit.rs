//! Lowering a fused expression to the C source of one loop (see the [module docs](super)).

use crate::exec::fused::{broadcast_strides, coalesce_axes};
use crate::ir::{Arg, FusedExpr};
use crate::ops::{Binary, Op};
use crate::tensor::{numel, DType};
use smallvec::SmallVec;
use std::fmt::Write;

/// The C scalar function prelude (a port of `exec::kernels::fastmath` and the ops' scalar math).
const PRELUDE: &str = include_str!("prelude.c");

/// The name of the generated function in every shared object.
pub(super) const SYMBOL: &str = "tf_kernel";

/// A fused loop lowered to C: the source and the buffers the generated function reads
/// and writes, which [`super::Kernel::bind`] checks before every call.
#[derive(Debug)]
pub(super) struct Lowered {
    pub source: String,
    /// dtype and element count of each param's buffer.
    pub params: Vec<(DType, usize)>,
    /// dtype and element count of the output.
    pub out: (DType, usize),
}

/// One read of a param buffer: the param, the reshape instruction that views it (if
/// any), and its strides along the coalesced loop axes.
struct Load {
    param: usize,
    view: Option<usize>,
    dtype: DType,
    strides: SmallVec<[usize; 6]>,
}

fn c_type(d: DType) -> &'static str {
    match d {
        DType::F32 => "float",
        DType::F64 => "double",
        DType::I64 => "tf_i64",
    }
}

fn suffix(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::F64 => "f64",
        DType::I64 => "i64",
    }
}

/// The prelude's name of a binary op: its text name, `None` where integers lack it (as
/// [`Binary::fi`]). (The prelude names every op `tf_<text name>_<type>`, so a new op
/// without a C function fails to compile and runs in the interpreter.)
fn binary_name(b: Binary, d: DType) -> Option<&'static str> {
    (d != DType::I64 || b.fi().is_some()).then_some(b.name())
}

/// Drops length-1 axes and merges adjacent axes that every load (and the contiguous
/// output) steps through as one; returns the loop's dims and each load's strides.
/// A loop of one element keeps one axis of length 1.
fn coalesce(
    shape: &[usize],
    full: &[SmallVec<[usize; 6]>],
) -> (SmallVec<[usize; 6]>, Vec<SmallVec<[usize; 6]>>) {
    let (mut dims, mut strides) = coalesce_axes(shape.iter().copied(), full);
    if dims.is_empty() {
        dims.push(1);
        for st in &mut strides {
            st.push(0);
        }
    }
    (dims, strides)
}

/// Lowers `e` (for operands of `params` types; `shape` is the fused node's) to C, or
/// says why it stays with the interpreter: a matmul prologue or a sum (not generated
/// yet), an empty loop, or an op the emitter does not know.
pub(super) fn lower(
    e: &FusedExpr,
    params: &[(DType, &[usize])],
    shape: &[usize],
) -> Result<Lowered, String> {
    if e.matmul().is_some() {
        return Err("a matmul prologue".into());
    }
    if e.sum_index().is_some() {
        return Err("a sum".into());
    }
    let n_out = numel(shape);
    if n_out == 0 {
        return Err("an empty loop".into());
    }
    let out_dtype = e.result().dtype;
    // the loads: each param once, each reshape view once
    let mut loads: Vec<Load> = Vec::new();
    let mut load_of = |param: usize, view: Option<usize>, view_shape: &[usize]| -> usize {
        if let Some(l) = loads
            .iter()
            .position(|l| l.param == param && l.view == view)
        {
            return l;
        }
        loads.push(Load {
            param,
            view,
            dtype: params[param].0,
            strides: broadcast_strides(view_shape, shape),
        });
        loads.len() - 1
    };
    // the body: one C statement per instruction, `v{k}` its value, `a{l}` load l's
    let mut body = String::new();
    for (k, inst) in e.insts.iter().enumerate() {
        let mut args: SmallVec<[(String, DType); 3]> = SmallVec::new();
        for a in &inst.args {
            args.push(match *a {
                Arg::Param(p) if inst.op == Op::Reshape => {
                    let l = load_of(p as usize, Some(k), &inst.shape);
                    (format!("a{l}"), params[p as usize].0)
                }
                Arg::Param(p) => {
                    let (d, s) = params[p as usize];
                    (format!("a{}", load_of(p as usize, None, s)), d)
                }
                Arg::Inst(j) => (format!("v{j}"), e.insts[j as usize].dtype),
            });
        }
        let d = inst.dtype;
        let expr = match inst.op {
            // identities: the value at the loop index is the argument's
            Op::BroadcastTo | Op::Reshape => args[0].0.clone(),
            Op::Cast(to) if to == args[0].1 => args[0].0.clone(),
            // not fusable today; C's conversion would not saturate as Rust's `as` does
            Op::Cast(DType::I64) => return Err("a cast to an integer".into()),
            Op::Cast(to) => format!(
                "tf_cast_{}_{}({})",
                suffix(args[0].1),
                suffix(to),
                args[0].0
            ),
            Op::Unary(u) if d != DType::I64 => {
                format!("tf_{}_{}({})", u.name(), suffix(d), args[0].0)
            }
            Op::Binary(b) => match binary_name(b, d) {
                Some(name) => format!("tf_{name}_{}({}, {})", suffix(d), args[0].0, args[1].0),
                None => return Err(format!("integer {}", b.name())),
            },
            Op::Compare(c) => format!(
                "tf_{}_{}({}, {})",
                c.name(),
                suffix(args[0].1),
                args[0].0,
                args[1].0
            ),
            Op::Select => format!("({} != 0 ? {} : {})", args[0].0, args[1].0, args[2].0),
            op => return Err(format!("`{}` in the loop", op.name())),
        };
        writeln!(body, "            const {} v{k} = {expr};", c_type(d)).expect("to a String");
    }
    let result = e.insts.len() - 1;

    let full: Vec<SmallVec<[usize; 6]>> = loads.iter().map(|l| l.strides.clone()).collect();
    let (dims, strides) = coalesce(shape, &full);
    let r = dims.len();
    let last = dims[r - 1];

    let mut s = String::new();
    let w = &mut s;
    // the f64 constants of std that fastmath uses, printed exactly (shortest round trip)
    writeln!(w, "#define TF_LOG2_E {:e}", std::f64::consts::LOG2_E).expect("to a String");
    writeln!(w, "#define TF_LN_2 {:e}", std::f64::consts::LN_2).expect("to a String");
    // and its f32 constants, as float literals (shortest round trip, then `f`)
    use crate::exec::kernels::fastmath as fm;
    for (name, v) in [
        ("TF_ROUND_MAGIC_F32", fm::ROUND_MAGIC_F32),
        ("TF_LOG2_E_F32", std::f32::consts::LOG2_E),
        ("TF_FRAC_2_PI_F32", std::f32::consts::FRAC_2_PI),
        ("TF_LN2_HI", fm::LN2_HI),
        ("TF_LN2_LO", fm::LN2_LO),
        ("TF_PIO2_1", fm::PIO2_1),
        ("TF_PIO2_2", fm::PIO2_2),
        ("TF_PIO2_3", fm::PIO2_3),
        ("TF_PIO2_4", fm::PIO2_4),
    ] {
        writeln!(w, "#define {name} {v:e}f").expect("to a String");
    }
    w.push_str(PRELUDE);
    w.push('\n');
    writeln!(
        w,
        "__attribute__((visibility(\"default\")))\n\
         void {SYMBOL}(const void *const *in, void *out_, tf_i64 start, tf_i64 end) {{"
    )
    .expect("to a String");
    let mut used_params: Vec<usize> = loads.iter().map(|l| l.param).collect();
    used_params.sort();
    used_params.dedup();
    for &p in &used_params {
        let t = c_type(params[p].0);
        writeln!(w, "    const {t} *p{p} = (const {t} *)in[{p}];").expect("to a String");
    }
    let ot = c_type(out_dtype);
    writeln!(w, "    {ot} *out = ({ot} *)out_;").expect("to a String");
    w.push_str("    tf_i64 i = start;\n    while (i < end) {\n");
    // the row of the innermost axis that holds i, and each load's offset at i
    if r == 1 {
        w.push_str("        tf_i64 j = i;\n        tf_i64 n = end - i;\n");
    } else {
        writeln!(
            w,
            "        tf_i64 q = i / {last}LL;\n        tf_i64 j = i - q * {last}LL;\n        \
             tf_i64 n = {last}LL - j;\n        if (n > end - i) n = end - i;"
        )
        .expect("to a String");
    }
    for (l, st) in strides.iter().enumerate() {
        writeln!(w, "        tf_i64 o{l} = j * {}LL;", st[r - 1]).expect("to a String");
    }
    for d in (0..r - 1).rev() {
        writeln!(
            w,
            "        {{\n            tf_i64 x = q % {n}LL;\n            q /= {n}LL;",
            n = dims[d]
        )
        .expect("to a String");
        for (l, st) in strides.iter().enumerate() {
            if st[d] != 0 {
                writeln!(w, "            o{l} += x * {}LL;", st[d]).expect("to a String");
            }
        }
        w.push_str("        }\n");
    }
    for (l, ld) in loads.iter().enumerate() {
        let t = c_type(ld.dtype);
        writeln!(w, "        const {t} *r{l} = p{} + o{l};", ld.param).expect("to a String");
        // a value broadcast along the row is read once per row
        if strides[l][r - 1] == 0 {
            writeln!(w, "        const {t} a{l} = r{l}[0];").expect("to a String");
        }
    }
    writeln!(w, "        {ot} *o = out + i;").expect("to a String");
    w.push_str("        TF_IVDEP\n        for (tf_i64 t = 0; t < n; t++) {\n");
    for (l, ld) in loads.iter().enumerate() {
        let t = c_type(ld.dtype);
        match strides[l][r - 1] {
            0 => {}
            1 => writeln!(w, "            const {t} a{l} = r{l}[t];").expect("to a String"),
            st => {
                writeln!(w, "            const {t} a{l} = r{l}[t * {st}LL];").expect("to a String")
            }
        }
    }
    w.push_str(&body);
    writeln!(
        w,
        "            o[t] = v{result};\n        }}\n        i += n;\n    }}\n}}"
    )
    .expect("to a String");
    Ok(Lowered {
        source: s,
        params: params.iter().map(|(d, sh)| (*d, numel(sh))).collect(),
        out: (out_dtype, n_out),
    })
}
