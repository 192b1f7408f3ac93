//! Lowering a fused expression to the C source of one loop (see the [module docs](super)).

use crate::exec::fused::{coalesce_axes, View};
use crate::ir::{Arg, FusedExpr, Inst};
use crate::ops::{Binary, Op};
use crate::tensor::{numel, DType, Shape};
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
    /// Elements the loop computes: the output's, or for a sum the summed value's.
    pub elems: usize,
}

/// One read of a param buffer: the param, the reshape instruction that views it (if
/// any), and its strides along the coalesced loop axes.
struct Load {
    param: usize,
    view: Option<usize>,
    dtype: DType,
    strides: SmallVec<[usize; 6]>,
    /// Elements of the param's buffer before the view's first one (a slice's start).
    offset: usize,
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

/// The C expression of instruction `inst` over its arguments' values and types, or
/// why the emitter cannot write it.
fn inst_expr(inst: &Inst, args: &[(String, DType)]) -> Result<String, String> {
    let d = inst.dtype;
    Ok(match inst.op {
        // identities: the value at the loop index is the argument's
        Op::BroadcastTo | Op::Reshape | Op::Slice { .. } => args[0].0.clone(),
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
    })
}

/// The loads of one loop over `shape`: each param once, each reshape or slice view
/// once, with its strides along the loop's axes and its first element's offset;
/// `a{l}` names load `l`'s value in the loop body.
struct Loads<'p> {
    e: &'p FusedExpr,
    params: &'p [(DType, &'p [usize])],
    shape: &'p [usize],
    loads: Vec<Load>,
}

impl Loads<'_> {
    /// The C name of the value of `param` (viewed by reshape or slice instruction
    /// `view`) at the loop index.
    fn of(&mut self, param: usize, view: Option<usize>) -> String {
        let l = match (self.loads.iter()).position(|l| l.param == param && l.view == view) {
            Some(l) => l,
            None => {
                let v = View::of(view.map(|k| &self.e.insts[k]), self.params[param].1);
                self.loads.push(Load {
                    param,
                    view,
                    dtype: self.params[param].0,
                    strides: v.strides_in(self.shape),
                    offset: v.offset,
                });
                self.loads.len() - 1
            }
        };
        format!("a{l}")
    }
}

/// The C statements of instructions `range` of `e` (`v{k}` instruction k's value), a
/// param's value named by `param(p, view)` (`view`: the reshape instruction reading it).
fn statements(
    e: &FusedExpr,
    range: std::ops::Range<usize>,
    params: &[(DType, &[usize])],
    mut param: impl FnMut(usize, Option<usize>) -> String,
) -> Result<String, String> {
    let mut body = String::new();
    for k in range {
        let inst = &e.insts[k];
        let mut args: SmallVec<[(String, DType); 3]> = SmallVec::new();
        for a in &inst.args {
            args.push(match *a {
                Arg::Param(p) => {
                    let view = matches!(inst.op, Op::Reshape | Op::Slice { .. }).then_some(k);
                    (param(p as usize, view), params[p as usize].0)
                }
                Arg::Inst(j) => (format!("v{j}"), e.insts[j as usize].dtype),
            });
        }
        let expr = inst_expr(inst, &args)?;
        writeln!(
            body,
            "            const {} v{k} = {expr};",
            c_type(inst.dtype)
        )
        .expect("to a String");
    }
    Ok(body)
}

/// Writes a loop over the row-major elements `i..{end}` of a coalesced loop of `dims`
/// (each load's `strides`), which stores each element's `value` at `{dst} + t`, `t` its
/// position in the row being written (`i` is declared and set by the caller).
/// An outer loop runs over the rows of the innermost axis, each row's offsets from a
/// division by constants; the inner loop's loads have constant strides (0 for a
/// broadcast value, hoisted out of the row) and it carries `#pragma GCC ivdep`.
#[allow(clippy::too_many_arguments)]
fn row_loop(
    w: &mut String,
    dims: &[usize],
    strides: &[SmallVec<[usize; 6]>],
    loads: &[Load],
    body: &str,
    end: &str,
    dst: &str,
    value: &str,
) {
    let r = dims.len();
    let last = dims[r - 1];
    writeln!(w, "    while (i < {end}) {{").expect("to a String");
    // the row of the innermost axis that holds i, and each load's offset at i
    if r == 1 {
        writeln!(w, "        tf_i64 j = i;\n        tf_i64 n = {end} - i;").expect("to a String");
    } else {
        writeln!(
            w,
            "        tf_i64 q = i / {last}LL;\n        tf_i64 j = i - q * {last}LL;\n        \
             tf_i64 n = {last}LL - j;\n        if (n > {end} - i) n = {end} - i;"
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
        writeln!(
            w,
            "        const {t} *r{l} = p{} + {}LL + o{l};",
            ld.param, ld.offset
        )
        .expect("to a String");
        // a value broadcast along the row is read once per row
        if strides[l][r - 1] == 0 {
            writeln!(w, "        const {t} a{l} = r{l}[0];").expect("to a String");
        }
    }
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
    w.push_str(body);
    writeln!(
        w,
        "            {dst}[t] = {value};\n        }}\n        i += n;\n    }}"
    )
    .expect("to a String");
}

/// The loop's dims and each load's strides along them (see [`coalesce`]).
fn loop_axes(shape: &[usize], loads: &[Load]) -> (SmallVec<[usize; 6]>, Vec<SmallVec<[usize; 6]>>) {
    let full: Vec<SmallVec<[usize; 6]>> = loads.iter().map(|l| l.strides.clone()).collect();
    coalesce(shape, &full)
}

/// Elements a full sum adds per block: the block's values are computed into a stack
/// buffer by the vectorized row loop, then added to the 8 lanes (as the interpreter's
/// tiles are).
const SUM_BLOCK: usize = 1024;

/// Lowers `e` (for operands of `params` types; `shape` is the fused node's) to C, or
/// says why it stays with the interpreter: a matmul prologue or a partial sum (not
/// generated yet), an empty loop, or an op the emitter does not know.
pub(super) fn lower(
    e: &FusedExpr,
    params: &[(DType, &[usize])],
    shape: &[usize],
) -> Result<Lowered, String> {
    if e.matmul().is_some() {
        return Err("a matmul prologue".into());
    }
    let n_out = numel(shape);
    if n_out == 0 {
        return Err("an empty loop".into());
    }
    let (code, elems) = match e.sum_index() {
        None => (elementwise(e, params, shape)?, n_out),
        Some(s) => full_sum(e, s, params)?,
    };
    let out_dtype = e.result().dtype;
    let mut w = String::new();
    header(&mut w);
    w.push_str(&code);
    Ok(Lowered {
        source: w,
        params: params.iter().map(|(d, sh)| (*d, numel(sh))).collect(),
        out: (out_dtype, n_out),
        elems,
    })
}

/// The body of `tf_kernel` for an elementwise region: output elements `start..end`.
fn elementwise(
    e: &FusedExpr,
    params: &[(DType, &[usize])],
    shape: &[usize],
) -> Result<String, String> {
    let mut loads = Loads {
        e,
        params,
        shape,
        loads: Vec::new(),
    };
    let body = statements(e, 0..e.insts.len(), params, |p, view| loads.of(p, view))?;
    let loads = loads.loads;
    let (dims, strides) = loop_axes(shape, &loads);
    let mut w = String::new();
    signature(
        &mut w,
        params,
        loads.iter().map(|l| l.param),
        e.result().dtype,
    );
    w.push_str("    tf_i64 i = start;\n");
    let result = format!("v{}", e.insts.len() - 1);
    row_loop(
        &mut w,
        &dims,
        &strides,
        &loads,
        &body,
        "end",
        "(out + i)",
        &result,
    );
    w.push_str("}\n");
    Ok(w)
}

/// The body of `tf_kernel` for a region whose sum reduces every axis (instruction `s`):
/// its one output element (`start..end` is `0..1`), and the loop's length.
///
/// The summed elements are added in exactly `reduce::sum`'s order: 8 lanes over the
/// whole chunks of 8 (lane `l` takes the elements `≡ l` mod 8), a fixed tree of the
/// lanes, then the remaining elements in order. The instructions after the sum read it
/// and params of one element.
fn full_sum(
    e: &FusedExpr,
    s: usize,
    params: &[(DType, &[usize])],
) -> Result<(String, usize), String> {
    let Op::Sum { axes, .. } = e.insts[s].op else {
        unreachable!("sum_index points at a sum")
    };
    let (src, it): (String, Shape) = match e.insts[s].args[0] {
        Arg::Param(p) => (String::new(), Shape::from_slice(params[p as usize].1)),
        Arg::Inst(j) => (format!("v{j}"), e.insts[j as usize].shape.clone()),
    };
    if (0..it.len()).any(|d| !axes.contains(d)) {
        return Err("a partial sum".into());
    }
    let lane = numel(&it);
    let mut loads = Loads {
        e,
        params,
        shape: &it,
        loads: Vec::new(),
    };
    let body = statements(e, 0..s, params, |p, view| loads.of(p, view))?;
    let src = match e.insts[s].args[0] {
        Arg::Param(p) => loads.of(p as usize, None),
        Arg::Inst(_) => src,
    };
    let loads = loads.loads;
    // after the sum, every value has one element: a param is read at [0]
    let mut read_after: Vec<usize> = Vec::new();
    let after = statements(e, s + 1..e.insts.len(), params, |p, _| {
        read_after.push(p);
        format!("b{p}")
    })?;
    let (dims, strides) = loop_axes(&it, &loads);
    let t = c_type(e.insts[s].dtype);
    let full = lane - lane % 8;
    let mut w = String::new();
    let used = loads
        .iter()
        .map(|l| l.param)
        .chain(read_after.iter().copied());
    signature(&mut w, params, used, e.result().dtype);
    writeln!(
        w,
        "    if (start >= end) return;\n    \
         {t} acc[8] = {{0, 0, 0, 0, 0, 0, 0, 0}};\n    \
         {t} buf[{SUM_BLOCK}];\n    \
         tf_i64 m = 0, c = 0; /* the last block's length and its part in whole chunks of 8 */"
    )
    .expect("to a String");
    if lane > 0 {
        writeln!(
            w,
            "    for (tf_i64 blk = 0; blk < {lane}LL; blk += {SUM_BLOCK}LL) {{\n        \
             tf_i64 stop = blk + {SUM_BLOCK}LL < {lane}LL ? blk + {SUM_BLOCK}LL : {lane}LL;\n        \
             tf_i64 i = blk;"
        )
        .expect("to a String");
        let mut rows = String::new();
        row_loop(
            &mut rows,
            &dims,
            &strides,
            &loads,
            &body,
            "stop",
            "(buf + (i - blk))",
            &src,
        );
        for line in rows.lines() {
            writeln!(w, "    {line}").expect("to a String");
        }
        writeln!(
            w,
            "        m = stop - blk;\n        \
             c = (stop < {full}LL ? stop : {full}LL) - blk;\n        \
             for (tf_i64 k = 0; k < c; k += 8)\n            \
             for (int l = 0; l < 8; l++) acc[l] = acc[l] + buf[k + l];\n    }}"
        )
        .expect("to a String");
    }
    writeln!(
        w,
        "    {t} v{s} = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));\n    \
         for (tf_i64 k = c; k < m; k++) v{s} = v{s} + buf[k];"
    )
    .expect("to a String");
    read_after.sort();
    read_after.dedup();
    for p in read_after {
        let pt = c_type(params[p].0);
        writeln!(w, "    const {pt} b{p} = p{p}[0];").expect("to a String");
    }
    w.push_str(&after);
    writeln!(w, "    out[0] = v{};\n}}", e.insts.len() - 1).expect("to a String");
    Ok((w, lane))
}

/// The opening of `tf_kernel`: the params it reads (`p{k}`) and the output (`out`).
fn signature(
    w: &mut String,
    params: &[(DType, &[usize])],
    used: impl Iterator<Item = usize>,
    out: DType,
) {
    writeln!(
        w,
        "__attribute__((visibility(\"default\")))\n\
         void {SYMBOL}(const void *const *in, void *out_, tf_i64 start, tf_i64 end) {{"
    )
    .expect("to a String");
    let mut used: Vec<usize> = used.collect();
    used.sort();
    used.dedup();
    for p in used {
        let t = c_type(params[p].0);
        writeln!(w, "    const {t} *p{p} = (const {t} *)in[{p}];").expect("to a String");
    }
    let ot = c_type(out);
    writeln!(w, "    {ot} *out = ({ot} *)out_;").expect("to a String");
}

/// The constants and the prelude every kernel starts with.
fn header(w: &mut String) {
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
}
