//! The canonical text form of a graph (what snapshots store, errors quote and the parser
//! reads back):
//!
//! ```text
//! graph(%0: f32[3]) {
//!   %1 = read_var[w] : f32[3]
//!   %2 = mul %0, %1 : f32[3]
//!   %3 = sum[axes=[0]] %2 : f32[]
//!   return %3
//! }
//! ```
//!
//! A `fused` node is followed by its expression, indented, with local numbering
//! (`$i` is the node's operand `i`, `#k` the expression's instruction `k`, the last
//! line is the result):
//!
//! ```text
//!   %4 = fused %0, %1 : f32[]
//!     #0 = sub $0, $1 : f32[3]
//!     #1 = mul #0, #0 : f32[3]
//!     #2 = sum[axes=[0]] #1 : f32[]
//! ```
//!
//! A control-flow node prints its region's attributes, its result types as a tuple,
//! and then each body as a nested block with its own arguments and numbering; `get`
//! nodes read the results:
//!
//! ```text
//!   %3 = scan[carries=1, xs=1, reverse=false, saved=false] %0, %1, %2 : (f32[2], f32[5,2])
//!     body(%0: f32[2], %1: f32[2], %2: f32[2]) {
//!       %3 = mul %0, %1 : f32[2]
//!       %4 = add %3, %2 : f32[2]
//!       return %4, %4
//!     }
//!   %4 = get[index=0] %3 : f32[2]
//! ```
//!
//! Numbers are assigned at print time in [`Graph::canonical_order`], so the text depends
//! only on the graph's structure. Dead nodes are not printed. Constants with more than
//! [`MAX_CONST_ELEMS`] elements print as `<N elements>`, which the parser rejects.
//! [`print_with_constants`] prints every constant whose text would not read back
//! bit for bit (large ones, i64 values beyond 2⁵³, NaN payloads) as a reference `@k`
//! into a table it returns instead; [`crate::ir::parse_with_constants`] reads it back.

use super::fused::{Arg, FusedExpr};
use super::graph::{Graph, NodeId};
use super::region::RegionKind;
use crate::ops::Op;
use crate::tensor::{type_str, Data};
use std::fmt::Write;

/// Largest constant printed element by element.
pub const MAX_CONST_ELEMS: usize = 64;

/// Formats a constant's value: a scalar, `[a, b, ...]`, or `<N elements>`.
pub fn const_text(d: &Data) -> String {
    if d.len() > MAX_CONST_ELEMS {
        return format!("<{} elements>", d.len());
    }
    let items: Vec<String> = match d {
        Data::F32(a) => a.iter().map(|v| format!("{v:?}")).collect(),
        Data::F64(a) => a.iter().map(|v| format!("{v:?}")).collect(),
        Data::I64(a) => a.iter().map(|v| v.to_string()).collect(),
    };
    if d.shape().is_empty() {
        items[0].clone()
    } else {
        format!("[{}]", items.join(", "))
    }
}

fn attr_text(g: &Graph, op: &Op) -> String {
    match op {
        Op::ReadVar(i) | Op::Assign(i) => format!("[{}]", g.vars[*i as usize].name),
        Op::Cond(r) | Op::While(r) | Op::Scan(r) => match g.regions.get(*r as usize) {
            Some(reg) => match reg.kind {
                RegionKind::Cond => String::new(),
                RegionKind::While => format!("[carries={}]", reg.carries),
                RegionKind::Scan { reverse } => format!(
                    "[carries={}, xs={}, reverse={reverse}, saved={}]",
                    reg.carries, reg.xs, reg.saved
                ),
            },
            None => format!("[region={r}?]"),
        },
        _ => {
            let a = op.attrs();
            if a.is_empty() {
                String::new()
            } else {
                let parts: Vec<String> = a.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("[{}]", parts.join(", "))
            }
        }
    }
}

/// The body of a fused node: one indented line per instruction, numbered `#0, #1, ...`
/// locally, reading the node's operands as `$0, $1, ...`; the last line is the result.
fn fused_text(g: &Graph, e: &FusedExpr, indent: &str) -> String {
    let mut s = String::new();
    for (k, inst) in e.insts.iter().enumerate() {
        let args: Vec<String> = inst
            .args
            .iter()
            .map(|a| match a {
                Arg::Param(p) => format!("${p}"),
                Arg::Inst(j) => format!("#{j}"),
            })
            .collect();
        let _ = writeln!(
            s,
            "{indent}    #{k} = {}{} {} : {}",
            inst.op.name(),
            attr_text(g, &inst.op),
            args.join(", "),
            type_str(inst.dtype, &inst.shape)
        );
    }
    s
}

/// The printed number of each node of `order`, indexed by node index.
fn numbering(g: &Graph, order: &[NodeId]) -> Vec<usize> {
    let mut num = vec![usize::MAX; g.capacity()];
    for (i, &n) in order.iter().enumerate() {
        num[n.index()] = i;
    }
    num
}

/// Prints the graph; with `locations`, each line ends with `; file:line` of its source.
pub fn print(g: &Graph, locations: bool) -> String {
    print_impl(g, locations, None)
}

/// Prints the graph (without locations) so that it reads back exactly: a constant whose
/// inline text would not parse back to the same bits (more than [`MAX_CONST_ELEMS`]
/// elements, an i64 beyond 2⁵³, a NaN with a payload) prints as `const @k`, and its
/// value is element `k` of the returned table. [`crate::ir::parse_with_constants`]
/// with the same table gives the graph back.
///
/// ```
/// use tapeflow::ir::{parse_with_constants, print_with_constants, Graph, Node};
/// use tapeflow::ops::Op;
/// use tapeflow::{DType, Data, Shape};
/// let mut g = Graph::new();
/// let mut c = Node::new(Op::Const, DType::F32, Shape::from_slice(&[100]));
/// c.value = Some(Data::full(DType::F32, &[100], 0.1));
/// let c = g.add(c, &[]);
/// g.outputs.push(c);
/// let (text, table) = print_with_constants(&g);
/// assert!(text.contains("const @0 : f32[100]"), "{text}");
/// let back = parse_with_constants(&text, &table).unwrap();
/// assert_eq!(back.node(back.outputs[0]).value, Some(table[0].clone()));
/// ```
pub fn print_with_constants(g: &Graph) -> (String, Vec<Data>) {
    let mut table = Vec::new();
    let text = print_impl(g, false, Some(&mut table));
    (text, table)
}

/// Whether two buffers hold the same dtype, shape and element bits.
fn same_bits(a: &Data, b: &Data) -> bool {
    if a.shape() != b.shape() {
        return false;
    }
    match (a, b) {
        (Data::F32(x), Data::F32(y)) => x
            .iter()
            .zip(y.iter())
            .all(|(p, q)| p.to_bits() == q.to_bits()),
        (Data::F64(x), Data::F64(y)) => x
            .iter()
            .zip(y.iter())
            .all(|(p, q)| p.to_bits() == q.to_bits()),
        (Data::I64(x), Data::I64(y)) => x == y,
        _ => false,
    }
}

/// Whether a constant's inline text reads back to the same bits.
fn text_round_trips(d: &Data) -> bool {
    let text = const_text(d);
    super::parse::parse_const(&text, d.dtype(), &d.shape()).is_ok_and(|back| same_bits(&back, d))
}

/// [`print`], with the constants that do not round-trip through text moved to
/// `externals` when it is given.
fn print_impl(g: &Graph, locations: bool, externals: Option<&mut Vec<Data>>) -> String {
    let mut s = String::new();
    print_graph(&mut s, g, locations, externals, "", "graph");
    s
}

/// Prints `g` into `s` as a block `{name}(args) { .. }`, every line after `indent`.
fn print_graph(
    s: &mut String,
    g: &Graph,
    locations: bool,
    mut externals: Option<&mut Vec<Data>>,
    indent: &str,
    block: &str,
) {
    let order = g.canonical_order();
    let num = numbering(g, &order);
    let name = |n: &NodeId| format!("%{}", num[n.index()]);
    let args: Vec<String> = g
        .inputs
        .iter()
        .map(|i| {
            format!(
                "{}: {}",
                name(i),
                type_str(g.node(*i).dtype, &g.node(*i).shape)
            )
        })
        .collect();
    let _ = writeln!(s, "{indent}{block}({}) {{", args.join(", "));
    for &n in order.iter().skip(g.inputs.len()) {
        let node = g.node(n);
        let operands: Vec<String> = g.operands(n).iter().map(name).collect();
        let mut line = format!(
            "{indent}  {} = {}{}",
            name(&n),
            node.op.name(),
            attr_text(g, &node.op)
        );
        if let Some(v) = &node.value {
            match externals.as_deref_mut() {
                Some(table) if !text_round_trips(v) => {
                    let _ = write!(line, " @{}", table.len());
                    table.push(v.clone());
                }
                _ => {
                    let _ = write!(line, " {}", const_text(v));
                }
            }
        }
        if !operands.is_empty() {
            let _ = write!(line, " {}", operands.join(", "));
        }
        match node.op {
            Op::Cond(r) | Op::While(r) | Op::Scan(r) if (r as usize) < g.regions.len() => {
                let tys: Vec<String> = g.regions[r as usize]
                    .results
                    .iter()
                    .map(|(d, sh)| type_str(*d, sh))
                    .collect();
                let _ = write!(line, " : ({})", tys.join(", "));
            }
            _ => {
                let _ = write!(line, " : {}", type_str(node.dtype, &node.shape));
            }
        }
        if locations {
            if let Some(l) = node.loc {
                let _ = write!(line, "  ; {}:{}", l.file(), l.line());
            }
        }
        let _ = writeln!(s, "{line}");
        match node.op {
            Op::Fused(f) => s.push_str(&fused_text(g, &g.fused[f as usize], indent)),
            Op::Cond(r) | Op::While(r) | Op::Scan(r) => {
                if let Some(reg) = g.regions.get(r as usize) {
                    let inner = format!("{indent}    ");
                    for (b, bname) in reg.bodies.iter().zip(reg.body_names()) {
                        print_graph(s, b, locations, externals.as_deref_mut(), &inner, bname);
                    }
                }
            }
            _ => {}
        }
    }
    let outs: Vec<String> = g.outputs.iter().map(name).collect();
    let _ = writeln!(s, "{indent}  return {}", outs.join(", "));
    let _ = writeln!(s, "{indent}}}");
}

impl std::fmt::Display for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&print(self, false))
    }
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&print(self, true))
    }
}

/// Graphviz DOT: one box per live node labelled `%n op : type`, edges labelled by slot
/// when an op has several operands. The bodies of a control-flow node are clusters
/// (`subgraph cluster_..`) drawn next to it, their nodes numbered in the body, with a
/// dashed edge from the node to each body's results.
pub fn to_dot(g: &Graph) -> String {
    let mut s = String::from("digraph tapeflow {\n  node [shape=box, fontname=\"monospace\"];\n");
    dot_graph(&mut s, g, "n", "  ");
    for (i, o) in g.outputs.iter().enumerate() {
        let num = numbering(g, &g.canonical_order());
        let _ = writeln!(
            s,
            "  out{i} [label=\"return {i}\", shape=oval];\n  n{} -> out{i};",
            num[o.index()]
        );
    }
    s.push_str("}\n");
    s
}

/// The nodes and edges of `g`, named `{prefix}{number}`, bodies as nested clusters.
fn dot_graph(s: &mut String, g: &Graph, prefix: &str, indent: &str) {
    let order = g.canonical_order();
    let num = numbering(g, &order);
    for &n in &order {
        let node = g.node(n);
        let mut label = format!(
            "%{} {}{} : {}",
            num[n.index()],
            node.op.name(),
            attr_text(g, &node.op),
            type_str(node.dtype, &node.shape)
        );
        if let Op::Fused(f) = node.op {
            let ops: Vec<&str> = g.fused[f as usize]
                .insts
                .iter()
                .map(|i| i.op.name())
                .collect();
            let _ = write!(label, "\\n({})", ops.join(" "));
        }
        let style = match node.op {
            Op::Input(_) | Op::ReadVar(_) => ", style=filled, fillcolor=lightblue",
            Op::Assign(_) => ", style=filled, fillcolor=lightpink",
            Op::Const => ", style=filled, fillcolor=lightgrey",
            Op::Cond(_) | Op::While(_) | Op::Scan(_) => ", style=filled, fillcolor=khaki",
            _ => "",
        };
        let me = format!("{prefix}{}", num[n.index()]);
        let _ = writeln!(
            s,
            "{indent}{me} [label=\"{}\"{}];",
            label.replace('"', "\\\""),
            style
        );
        let ops = g.operands(n);
        for (slot, o) in ops.iter().enumerate() {
            let from = format!("{prefix}{}", num[o.index()]);
            if ops.len() > 1 {
                let _ = writeln!(s, "{indent}{from} -> {me} [label=\"{slot}\"];");
            } else {
                let _ = writeln!(s, "{indent}{from} -> {me};");
            }
        }
        if let Op::Cond(r) | Op::While(r) | Op::Scan(r) = node.op {
            let Some(reg) = g.regions.get(r as usize) else {
                continue;
            };
            for (k, (b, bname)) in reg.bodies.iter().zip(reg.body_names()).enumerate() {
                let inner = format!("{me}_{k}_");
                let _ = writeln!(s, "{indent}subgraph cluster_{inner} {{");
                let _ = writeln!(s, "{indent}  label=\"{me} {bname}\"; style=dashed;");
                dot_graph(s, b, &inner, &format!("{indent}  "));
                let bnum = numbering(b, &b.canonical_order());
                for o in &b.outputs {
                    let _ = writeln!(
                        s,
                        "{indent}  {inner}{} -> {me} [style=dashed];",
                        bnum[o.index()]
                    );
                }
                let _ = writeln!(s, "{indent}}}");
            }
        }
    }
}
