//! Reads the canonical text form back into a [`Graph`] (`print(parse(s)) == s`).
//!
//! Every node line is checked with its op's shape rule, so a hand-written filetest with
//! a wrong type is an error naming the line.

use super::fused::{Arg, FusedExpr, Inst};
use super::graph::{Graph, GraphVar, Node, NodeId};
use super::region::{Region, RegionKind};
use crate::error::{Error, Result};
use crate::ops::{attrs::AttrMap, Op};
use crate::tensor::{DType, Data, Shape};
use smallvec::SmallVec;
use std::collections::HashMap;

fn err(line_no: usize, line: &str, msg: impl std::fmt::Display) -> Error {
    Error::Graph(format!(
        "parse error on line {line_no} `{}`: {msg}",
        line.trim()
    ))
}

/// Parses `f32[64,10]` or, with symbolic dimensions, `f32[b,784]`, `f32[b*28,64]`
/// (see [`crate::tensor::dim`]); a shape over [`crate::tensor::MAX_ELEMENTS`] elements is
/// an error.
pub fn parse_type(s: &str) -> std::result::Result<(DType, Shape), String> {
    let s = s.trim();
    let open = s.find('[').ok_or_else(|| format!("bad type `{s}`"))?;
    let dtype = DType::from_name(&s[..open]).ok_or_else(|| format!("unknown dtype in `{s}`"))?;
    let inner = s[open..]
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .ok_or_else(|| format!("bad type `{s}`"))?;
    let dims: Vec<usize> = if inner.trim().is_empty() {
        Vec::new()
    } else {
        inner
            .split(',')
            .map(crate::tensor::dim::parse)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| format!("{e} in `{s}`"))?
    };
    crate::tensor::check_shape(&dims)?;
    Ok((dtype, Shape::from_slice(&dims)))
}

/// Splits on commas that are not inside brackets.
fn split_top(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0i32, 0usize, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    if !s[start..].trim().is_empty() {
        out.push(s[start..].trim());
    }
    out
}

/// A constant's value from its inline text (`1.5`, `[1, 2]`).
pub(super) fn parse_const(
    text: &str,
    dtype: DType,
    shape: &[usize],
) -> std::result::Result<Data, String> {
    if text.starts_with('<') {
        return Err("large constants (`<N elements>`) are not representable in text".into());
    }
    let items: Vec<&str> = match text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        Some(inner) => inner
            .split(',')
            .map(|t| t.trim())
            .filter(|t| !t.is_empty())
            .collect(),
        None => vec![text.trim()],
    };
    let vals: Vec<f64> = items
        .iter()
        .map(|t| {
            t.parse::<f64>()
                .map_err(|e| format!("bad number `{t}`: {e}"))
        })
        .collect::<std::result::Result<_, _>>()?;
    if vals.len() != shape.iter().product::<usize>() {
        return Err(format!("{} values do not fill shape {shape:?}", vals.len()));
    }
    let a =
        ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(shape), vals).map_err(|e| e.to_string())?;
    Ok(crate::ops::shape::cast(&Data::F64(a.into_shared()), dtype))
}

/// Splits `name[attrs] rest` into its three parts (attrs without brackets, may be empty).
fn split_op(body: &str) -> std::result::Result<(&str, &str, &str), String> {
    let name_end = body.find(['[', ' ']).unwrap_or(body.len());
    let name = &body[..name_end];
    let mut rest = &body[name_end..];
    let mut attr_text = "";
    if rest.starts_with('[') {
        let mut depth = 0;
        let close = rest
            .char_indices()
            .find(|&(_, c)| {
                depth += match c {
                    '[' => 1,
                    ']' => -1,
                    _ => 0,
                };
                depth == 0
            })
            .map(|(i, _)| i)
            .ok_or("unclosed `[`")?;
        attr_text = &rest[1..close];
        rest = &rest[close + 1..];
    }
    Ok((name, attr_text, rest.trim()))
}

/// An op from its name and `key=value, ...` attribute text.
fn parse_op(name: &str, attr_text: &str) -> std::result::Result<Op, String> {
    let mut m = AttrMap::new();
    for kv in split_top(attr_text) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("bad attribute `{kv}`"))?;
        m.insert(k.trim().to_string(), v.trim().to_string());
    }
    Op::parse(name, &m)
}

/// One line `#k = op[attrs] $0, #1 : type` of a fused node's body (`k` must be `index`).
fn parse_inst(t: &str, index: usize) -> std::result::Result<Inst, String> {
    let (lhs, rhs) = t.split_once(" = ").ok_or("expected `#k = op ...`")?;
    if lhs.trim() != format!("#{index}") {
        return Err(format!("expected instruction #{index}"));
    }
    let (body, ty) = rhs.rsplit_once(" : ").ok_or("missing ` : type`")?;
    let (dtype, shape) = parse_type(ty)?;
    let (name, attr_text, rest) = split_op(body)?;
    let op = parse_op(name, attr_text)?;
    let mut args = SmallVec::new();
    for a in split_top(rest) {
        let num = |s: &str| s.parse::<u32>().map_err(|_| format!("bad argument `{a}`"));
        args.push(match (a.strip_prefix('$'), a.strip_prefix('#')) {
            (Some(p), _) => Arg::Param(num(p)?),
            (_, Some(j)) => Arg::Inst(num(j)?),
            _ => return Err(format!("argument `{a}` is neither `$n` nor `#n`")),
        });
    }
    Ok(Inst {
        op,
        args,
        dtype,
        shape,
    })
}

/// Parses a graph from its text form.
pub fn parse(text: &str) -> Result<Graph> {
    parse_with_constants(text, &[])
}

/// The constant `@k` of the table, checked against the line's declared type.
fn external_const(
    reference: &str,
    dtype: DType,
    shape: &[usize],
    table: &[Data],
) -> std::result::Result<Data, String> {
    let k: usize = reference[1..]
        .trim()
        .parse()
        .map_err(|_| format!("bad constant reference `{reference}`"))?;
    let d = table.get(k).ok_or_else(|| {
        format!(
            "constant `@{k}` is not in the constant table ({} constants)",
            table.len()
        )
    })?;
    if d.dtype() != dtype || d.shape()[..] != *shape {
        return Err(format!(
            "constant `@{k}` is {} in the table, the line declares {}",
            crate::tensor::type_str(d.dtype(), &d.shape()),
            crate::tensor::type_str(dtype, shape)
        ));
    }
    Ok(d.clone())
}

/// Parses a graph printed by [`crate::ir::print_with_constants`]: `const @k` takes
/// element `k` of `constants` (whose dtype and shape must be the line's type).
pub fn parse_with_constants(text: &str, constants: &[Data]) -> Result<Graph> {
    let kept: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with(';')
        })
        .collect();
    let mut lines: Lines = kept.into_iter().peekable();
    parse_block(&mut lines, "graph", constants)
}

/// The remaining non-comment lines, numbered.
type Lines<'a> = std::iter::Peekable<std::vec::IntoIter<(usize, &'a str)>>;

/// Parses one block `{block}(args) { ... }` (the whole graph, or a region's body).
fn parse_block(lines: &mut Lines<'_>, block: &str, constants: &[Data]) -> Result<Graph> {
    let mut g = Graph::new();
    let mut ids: HashMap<String, NodeId> = HashMap::new();
    let (n0, header) = lines
        .next()
        .ok_or_else(|| Error::Graph(format!("expected `{block}(...) {{`, found the end")))?;
    let args = header
        .trim()
        .strip_prefix(block)
        .and_then(|h| h.strip_prefix('('))
        .and_then(|h| h.strip_suffix(") {"))
        .ok_or_else(|| err(n0, header, format!("expected `{block}(...) {{`")))?;
    for (i, arg) in split_top(args).into_iter().enumerate() {
        let (name, ty) = arg
            .split_once(':')
            .ok_or_else(|| err(n0, header, "argument without type"))?;
        let (dtype, shape) = parse_type(ty).map_err(|e| err(n0, header, e))?;
        let id = g.add(Node::new(Op::Input(i as u32), dtype, shape), &[]);
        g.inputs.push(id);
        ids.insert(name.trim().to_string(), id);
    }
    let lookup = |ids: &HashMap<String, NodeId>, n: usize, line: &str, name: &str| {
        ids.get(name.trim())
            .copied()
            .ok_or_else(|| err(n, line, format!("`{}` is not defined above", name.trim())))
    };
    while let Some((n, line)) = lines.next() {
        let t = line.split("  ;").next().unwrap_or(line).trim();
        if t == "}" {
            return Ok(g);
        }
        if let Some(rest) = t.strip_prefix("return") {
            for o in split_top(rest) {
                let id = lookup(&ids, n, line, o)?;
                g.outputs.push(id);
            }
            continue;
        }
        let (lhs, rhs) = t
            .split_once(" = ")
            .ok_or_else(|| err(n, line, "expected `%n = op ...`"))?;
        let (body, ty) = rhs
            .rsplit_once(" : ")
            .ok_or_else(|| err(n, line, "missing ` : type`"))?;
        let (name, attr_text, rest) = split_op(body).map_err(|e| err(n, line, e))?;
        if matches!(name, "cond" | "while" | "scan") {
            let id = parse_region_op(
                lines,
                &mut g,
                &ids,
                constants,
                (n, line),
                (name, attr_text, rest),
                ty,
            )?;
            ids.insert(lhs.trim().to_string(), id);
            continue;
        }
        let (dtype, shape) = parse_type(ty).map_err(|e| err(n, line, e))?;
        let mut node = Node::new(Op::Const, dtype, shape.clone());
        let mut operands = Vec::new();
        match name {
            "const" | "read_var" | "assign" if crate::tensor::dim::any_sym(&shape) => {
                return Err(err(n, line, format!("`{name}` needs a concrete shape")));
            }
            "const" => {
                let value = if rest.starts_with('@') {
                    external_const(rest, dtype, &shape, constants)
                } else {
                    parse_const(rest, dtype, &shape)
                };
                node.value = Some(value.map_err(|e| err(n, line, e))?)
            }
            "read_var" | "assign" => {
                let var = GraphVar {
                    name: attr_text.to_string(),
                    dtype,
                    shape: shape.clone(),
                    handle: None,
                };
                let i = g.var_index(var);
                node.op = if name == "read_var" {
                    Op::ReadVar(i)
                } else {
                    Op::Assign(i)
                };
            }
            "fused" => {
                let mut e = FusedExpr::default();
                while let Some(&(k, inner)) = lines.peek() {
                    if !inner.trim().starts_with('#') {
                        break;
                    }
                    e.insts.push(
                        parse_inst(inner.trim(), e.insts.len()).map_err(|m| err(k, inner, m))?,
                    );
                    lines.next();
                }
                g.fused.push(e);
                node.op = Op::Fused(g.fused.len() as u32 - 1);
            }
            _ => node.op = parse_op(name, attr_text).map_err(|e| err(n, line, e))?,
        }
        if name != "const" {
            for o in split_top(rest) {
                operands.push(lookup(&ids, n, line, o)?);
            }
        }
        if !matches!(node.op, Op::Const | Op::ReadVar(_)) {
            let types: Vec<(DType, &[usize])> = operands
                .iter()
                .map(|&o| (g.node(o).dtype, &g.node(o).shape[..]))
                .collect();
            let inferred = match node.op {
                Op::Fused(f) => g.fused[f as usize].infer(&types),
                Op::Get(k) => get_type(&g, &operands, k),
                op => op.infer(&types, Some(&shape)),
            };
            let (d, s) = inferred.map_err(|e| err(n, line, e))?;
            if d != dtype || s != shape {
                return Err(err(
                    n,
                    line,
                    format!(
                        "declared type differs from the inferred {}",
                        crate::tensor::type_str(d, &s)
                    ),
                ));
            }
        }
        let is_assign = matches!(node.op, Op::Assign(_));
        let id = g.add(node, &operands);
        if is_assign {
            g.assigns.push(id);
        }
        ids.insert(lhs.trim().to_string(), id);
    }
    Err(Error::Graph(format!("`{block}` block ends without `}}`")))
}

/// The type of result `k` of the control-flow node that is a `get`'s operand.
fn get_type(g: &Graph, operands: &[NodeId], k: u32) -> std::result::Result<(DType, Shape), String> {
    let [t] = operands else {
        return Err(format!("get takes one operand, got {}", operands.len()));
    };
    match g.node(*t).op {
        Op::Cond(r) | Op::While(r) | Op::Scan(r) => g.regions[r as usize]
            .results
            .get(k as usize)
            .cloned()
            .ok_or_else(|| format!("the control-flow op has no result {k}")),
        op => Err(format!("get reads `{}`, not a control-flow op", op.name())),
    }
}

/// Parses a control-flow line `%n = scan[attrs] operands : (types)` and its body
/// blocks; adds the region and the node.
fn parse_region_op(
    lines: &mut Lines<'_>,
    g: &mut Graph,
    ids: &HashMap<String, NodeId>,
    constants: &[Data],
    (n, line): (usize, &str),
    (name, attr_text, rest): (&str, &str, &str),
    ty: &str,
) -> Result<NodeId> {
    let e = |m: String| err(n, line, m);
    let tys = ty
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| e(format!("`{name}` has a tuple type `(t, ..)`")))?;
    let results = split_top(tys)
        .into_iter()
        .map(parse_type)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(e)?;
    let mut m = AttrMap::new();
    for kv in split_top(attr_text) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| e(format!("bad attribute `{kv}`")))?;
        m.insert(k.trim().to_string(), v.trim().to_string());
    }
    let num = |k: &str| crate::ops::attrs::get_usize(&m, k).map_err(e);
    let flag = |k: &str| match m.get(k).map(String::as_str) {
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        _ => Err(e(format!("attribute `{k}` must be true or false"))),
    };
    let (kind, carries, xs, saved) = match name {
        "cond" => (RegionKind::Cond, 0, 0, false),
        "while" => (RegionKind::While, num("carries")?, 0, false),
        _ => (
            RegionKind::Scan {
                reverse: flag("reverse")?,
            },
            num("carries")?,
            num("xs")?,
            flag("saved")?,
        ),
    };
    let mut operands = Vec::new();
    for o in split_top(rest) {
        operands.push(
            ids.get(o.trim())
                .copied()
                .ok_or_else(|| e(format!("`{}` is not defined above", o.trim())))?,
        );
    }
    let mut region = Region {
        kind,
        bodies: Vec::new(),
        carries,
        xs,
        saved,
        results,
    };
    for b in region.body_names() {
        region.bodies.push(parse_block(lines, b, constants)?);
    }
    g.regions.push(region);
    let r = g.regions.len() as u32 - 1;
    let op = match kind {
        RegionKind::Cond => Op::Cond(r),
        RegionKind::While => Op::While(r),
        RegionKind::Scan { .. } => Op::Scan(r),
    };
    let (d, s) = crate::ops::control::tuple_type();
    Ok(g.add(Node::new(op, d, s), &operands))
}
