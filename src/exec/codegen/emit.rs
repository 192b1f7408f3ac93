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
    /// Further outputs of a step group (see [`lower`]): each of the output's type, its
    /// buffer passed after the params (`in[params.len() + k]`).
    pub extra_outs: usize,
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
    /// The letter of the loads' C names (`a` in a row loop, `b` after a sum).
    prefix: char,
}

impl<'p> Loads<'p> {
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
        format!("{}{l}", self.prefix)
    }

    fn new(
        e: &'p FusedExpr,
        params: &'p [(DType, &'p [usize])],
        shape: &'p [usize],
        prefix: char,
    ) -> Self {
        Loads {
            e,
            params,
            shape,
            loads: Vec::new(),
            prefix,
        }
    }
}

/// The C statements of instructions `range` of `e` (`v{k}` instruction k's value), a
/// param's value named by `param(p, view)` (`view`: the reshape or slice instruction
/// reading it).
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
/// (each load's `strides`), which stores each element's values, `(dst, value)` of
/// `stores`, at `{dst}[t]`, `t` its position in the row being written (`i` is declared
/// and set by the caller).
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
    stores: &[(String, String)],
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
    for (dst, value) in stores {
        writeln!(w, "            {dst}[t] = {value};").expect("to a String");
    }
    w.push_str("        }\n        i += n;\n    }\n");
}

/// The loop's dims and each load's strides along them (see [`coalesce`]).
fn loop_axes(shape: &[usize], loads: &[Load]) -> (SmallVec<[usize; 6]>, Vec<SmallVec<[usize; 6]>>) {
    let full: Vec<SmallVec<[usize; 6]>> = loads.iter().map(|l| l.strides.clone()).collect();
    coalesce(shape, &full)
}

/// Elements a full sum adds per block (the block's values are computed into a stack
/// buffer by the vectorized row loop, then added to the 8 lanes, as the interpreter's
/// tiles are), and the longest lane of a partial sum that is generated.
const SUM_BLOCK: usize = 1024;

/// Lowers `e` (for operands of `params` types; `shape` is the fused node's) to C, or
/// says why it stays with the interpreter: a sum over some axes whose lanes are empty or
/// longer than [`SUM_BLOCK`], an empty loop, or an op the emitter does not know. Of a
/// matmul prologue only the epilogue is generated: it reads the product from the output
/// buffer, where the interpreter has put it.
///
/// `extra`: instructions whose values are further outputs, of the result's exact type,
/// each stored in the same loop (a step group, see `exec::group`); only for an
/// elementwise region without a matmul.
pub(super) fn lower(
    e: &FusedExpr,
    params: &[(DType, &[usize])],
    shape: &[usize],
    extra: &[usize],
) -> Result<Lowered, String> {
    let n_out = numel(shape);
    if n_out == 0 {
        return Err("an empty loop".into());
    }
    let (code, elems) = match e.sum_index() {
        None => (elementwise(e, params, shape, extra)?, n_out),
        Some(_) if !extra.is_empty() => return Err("a sum with further outputs".into()),
        Some(s) => sum_region(e, s, params, shape)?,
    };
    let out_dtype = e.result().dtype;
    let mut w = String::new();
    header(&mut w);
    w.push_str(&code);
    Ok(Lowered {
        source: w,
        params: params.iter().map(|(d, sh)| (*d, numel(sh))).collect(),
        out: (out_dtype, n_out),
        extra_outs: extra.len(),
        elems,
    })
}

/// The body of `tf_kernel` for an elementwise region: output elements `start..end`.
fn elementwise(
    e: &FusedExpr,
    params: &[(DType, &[usize])],
    shape: &[usize],
    extra: &[usize],
) -> Result<String, String> {
    let out = e.result();
    if !extra.is_empty() && e.matmul().is_some() {
        return Err("a matmul prologue with further outputs".into());
    }
    if let Some(&k) =
        (extra.iter()).find(|&&k| (e.insts[k].dtype, &e.insts[k].shape[..]) != (out.dtype, shape))
    {
        return Err(format!("further output #{k} is not of the result's type"));
    }
    let mut loads = Loads::new(e, params, shape, 'a');
    // a matmul prologue's product is already in the output buffer (the interpreter runs
    // the product first): its value at an element is read there, just before the element
    // is written, as an operand overwritten in place is
    let first = usize::from(e.matmul().is_some());
    let mut body = String::new();
    if first == 1 {
        let t = c_type(e.insts[0].dtype);
        writeln!(body, "            const {t} v0 = (out + i)[t];").expect("to a String");
    }
    body += &statements(e, first..e.insts.len(), params, |p, view| loads.of(p, view))?;
    let loads = loads.loads;
    let (dims, strides) = loop_axes(shape, &loads);
    let mut w = String::new();
    signature(
        &mut w,
        params,
        loads.iter().map(|l| l.param),
        e.result().dtype,
    );
    let t = c_type(out.dtype);
    let mut stores = vec![("(out + i)".to_string(), format!("v{}", e.insts.len() - 1))];
    for (x, &k) in extra.iter().enumerate() {
        writeln!(w, "    {t} *out{x} = ({t} *)in[{}];", params.len() + x).expect("to a String");
        stores.push((format!("(out{x} + i)"), format!("v{k}")));
    }
    w.push_str("    tf_i64 i = start;\n");
    row_loop(&mut w, &dims, &strides, &loads, &body, "end", &stores);
    w.push_str("}\n");
    Ok(w)
}

/// The body of `tf_kernel` for a region with a sum (instruction `s`; `shape` is the
/// result's): its output elements `start..end`, and the length of its summed loop.
///
/// The summed elements of each output are added in exactly `reduce::sum`'s order. A sum
/// over every axis (one output): 8 lanes over the whole chunks of 8 (lane `l` takes the
/// elements `≡ l` mod 8), a fixed tree of the lanes, then the remaining elements in
/// order; its elements are computed a block of [`SUM_BLOCK`] at a time. A sum over some
/// axes: the summed loop runs over the kept axes, then the reduced ones (as the
/// interpreter's), each output's lane of at most [`SUM_BLOCK`] elements is computed into
/// a buffer and folded from +0 one reduced axis at a time, the innermost first. The
/// instructions after the sum run once per output, their params read at its index.
fn sum_region(
    e: &FusedExpr,
    s: usize,
    params: &[(DType, &[usize])],
    shape: &[usize],
) -> Result<(String, usize), String> {
    let Op::Sum { axes, .. } = e.insts[s].op else {
        unreachable!("sum_index points at a sum")
    };
    let it: Shape = match e.insts[s].args[0] {
        Arg::Param(p) => Shape::from_slice(params[p as usize].1),
        Arg::Inst(j) => e.insts[j as usize].shape.clone(),
    };
    let (kept, red): (Vec<usize>, Vec<usize>) = (0..it.len()).partition(|&d| !axes.contains(d));
    let lane: usize = red.iter().map(|&d| it[d]).product();
    let full = kept.is_empty();
    if red.is_empty() {
        return Err("a sum over no axes".into());
    }
    if !full && !(1..=SUM_BLOCK).contains(&lane) {
        return Err("a partial sum of an empty lane or one longer than a block".into());
    }
    let mut loads = Loads::new(e, params, &it, 'a');
    let body = statements(e, 0..s, params, |p, view| loads.of(p, view))?;
    let src = match e.insts[s].args[0] {
        Arg::Param(p) => loads.of(p as usize, None),
        Arg::Inst(j) => format!("v{j}"),
    };
    let loads = loads.loads;
    let mut after_loads = Loads::new(e, params, shape, 'b');
    let after = statements(e, s + 1..e.insts.len(), params, |p, view| {
        after_loads.of(p, view)
    })?;
    let after_loads = after_loads.loads;
    // the summed loop: kept axes, then reduced ones (each output's lane is contiguous)
    let order: Vec<usize> = kept.iter().chain(&red).copied().collect();
    let lens: Vec<usize> = order.iter().map(|&d| it[d]).collect();
    let in_order: Vec<SmallVec<[usize; 6]>> = (loads.iter())
        .map(|l| order.iter().map(|&d| l.strides[d]).collect())
        .collect();
    let (dims, strides) = coalesce(&lens, &in_order);
    let t = c_type(e.insts[s].dtype);
    let mut w = String::new();
    let used = (loads.iter().chain(&after_loads)).map(|l| l.param);
    signature(&mut w, params, used, e.result().dtype);
    let mut rows = String::new();
    if lane > 0 {
        let first = if full { "blk" } else { "o * LANE" };
        row_loop(
            &mut rows,
            &dims,
            &strides,
            &loads,
            &body,
            "stop",
            &[(format!("(buf + (i - {first}))"), src.clone())],
        );
    }
    let indent = |w: &mut String, rows: &str| {
        for line in rows.lines() {
            writeln!(w, "    {line}").expect("to a String");
        }
    };
    writeln!(w, "#define LANE {lane}LL").expect("to a String");
    if full {
        let whole = lane - lane % 8;
        writeln!(
            w,
            "    if (start >= end) return;\n    \
             const tf_i64 o = 0;\n    \
             {t} acc[8] = {{0, 0, 0, 0, 0, 0, 0, 0}};\n    \
             {t} buf[{SUM_BLOCK}];\n    \
             tf_i64 m = 0, c = 0; /* the last block's length and its part in whole chunks of 8 */\n    \
             for (tf_i64 blk = 0; blk < LANE; blk += {SUM_BLOCK}LL) {{\n        \
             tf_i64 stop = blk + {SUM_BLOCK}LL < LANE ? blk + {SUM_BLOCK}LL : LANE;\n        \
             tf_i64 i = blk;"
        )
        .expect("to a String");
        indent(&mut w, &rows);
        writeln!(
            w,
            "        m = stop - blk;\n        \
             c = (stop < {whole}LL ? stop : {whole}LL) - blk;\n        \
             for (tf_i64 k = 0; k < c; k += 8)\n            \
             for (int l = 0; l < 8; l++) acc[l] = acc[l] + buf[k + l];\n    }}\n    \
             {t} v{s} = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));\n    \
             for (tf_i64 k = c; k < m; k++) v{s} = v{s} + buf[k];"
        )
        .expect("to a String");
        after_part(&mut w, shape, &after_loads, &after);
        writeln!(w, "    out[0] = v{};\n}}", e.insts.len() - 1).expect("to a String");
    } else {
        writeln!(
            w,
            "    {t} buf[LANE];\n    \
             for (tf_i64 o = start; o < end; o++) {{\n        \
             tf_i64 stop = (o + 1) * LANE;\n        \
             tf_i64 i = o * LANE;"
        )
        .expect("to a String");
        indent(&mut w, &rows);
        // one fold per reduced axis from +0, the innermost first (`reduce::sum`)
        let red_dims: Vec<usize> = red.iter().map(|&d| it[d]).collect();
        let k = red_dims.len();
        let pad = |l: usize| " ".repeat(8 + 4 * l);
        writeln!(w, "        tf_i64 r = 0;\n        {t} s0 = 0;").expect("to a String");
        for (l, d) in red_dims.iter().enumerate() {
            if l > 0 {
                writeln!(w, "{}{t} s{l} = 0;", pad(l)).expect("to a String");
            }
            writeln!(
                w,
                "{}for (tf_i64 i{l} = 0; i{l} < {d}LL; i{l}++) {{",
                pad(l)
            )
            .expect("to a String");
        }
        writeln!(w, "{}s{last} = s{last} + buf[r++];", pad(k), last = k - 1).expect("to a String");
        for l in (0..k).rev() {
            writeln!(w, "{}}}", pad(l)).expect("to a String");
            if l > 0 {
                writeln!(w, "{}s{} = s{} + s{l};", pad(l), l - 1, l - 1).expect("to a String");
            }
        }
        writeln!(w, "        {t} v{s} = s0;").expect("to a String");
        let mut tail = String::new();
        after_part(&mut tail, shape, &after_loads, &after);
        indent(&mut w, &tail);
        writeln!(w, "        out[o] = v{};\n    }}\n}}", e.insts.len() - 1).expect("to a String");
    }
    writeln!(w, "#undef LANE").expect("to a String");
    Ok((w, numel(&it)))
}

/// The instructions after a sum for output `o`: each load's element at `o` (its offsets
/// along the result's axes, from `o` by divisions), then the statements.
fn after_part(w: &mut String, shape: &[usize], loads: &[Load], after: &str) {
    for (l, ld) in loads.iter().enumerate() {
        writeln!(w, "    tf_i64 ob{l} = {}LL;", ld.offset).expect("to a String");
    }
    if !loads.is_empty() && shape.iter().any(|&n| n > 1) {
        w.push_str("    {\n        tf_i64 rem = o;\n");
        for d in (0..shape.len()).rev() {
            if shape[d] == 1 {
                continue;
            }
            writeln!(
                w,
                "        tf_i64 x{d} = rem % {n}LL;\n        rem /= {n}LL;",
                n = shape[d]
            )
            .expect("to a String");
            for (l, ld) in loads.iter().enumerate() {
                if ld.strides[d] != 0 {
                    writeln!(w, "        ob{l} += x{d} * {}LL;", ld.strides[d])
                        .expect("to a String");
                }
            }
        }
        w.push_str("    }\n");
    }
    for (l, ld) in loads.iter().enumerate() {
        let t = c_type(ld.dtype);
        writeln!(w, "    const {t} b{l} = p{}[ob{l}];", ld.param).expect("to a String");
    }
    // the statements are written for the body of a row loop: one level less here
    for line in after.lines() {
        writeln!(w, "    {}", line.trim_start()).expect("to a String");
    }
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
    // the f64 constant of std that fastmath uses (`ln`), printed exactly (shortest round
    // trip)
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
