//! Exported compiled functions (`tf.saved_model`, `jax.export`): a
//! [`ConcreteFunction`] written to a directory that [`load_function`] runs in another
//! process, without the closure that was traced.
//!
//! The format is described on [`LoadedFunction`].

use super::function::ConcreteFunction;
use super::program::Program;
use super::signature::{self, Signature};
use crate::error::{Error, Result};
use crate::ir::{self, Graph};
use crate::passes::PassConfig;
use crate::tensor::{type_str, DType, Data, Shape, Tensor, Variable};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use smallvec::SmallVec;
use std::collections::HashMap;
use std::io::Write;
use std::panic::Location;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The version of the export format this tapeflow writes and reads.
pub const EXPORT_FORMAT_VERSION: u32 = 1;

const FORMAT: &str = "tapeflow-function";
const MANIFEST: &str = "manifest.txt";
const GRAPH: &str = "graph.ir";
const TRACED: &str = "traced.ir";
const CONSTANTS: &str = "constants.safetensors";
const VARIABLES: &str = "variables.safetensors";

/// Metadata keys of `variables.safetensors`: the variables in graph order, and the
/// names of those that are not trainable (newline-separated).
const ORDER_KEY: &str = "tapeflow.order";
const NON_TRAINABLE_KEY: &str = "tapeflow.non_trainable";

/// Numbers the temporary directories of this process's exports (with the pid: unique).
static EXPORT_COUNTER: AtomicU64 = AtomicU64::new(0);

/// An error about the export at `dir` (a corrupt or mismatched file).
fn bad(dir: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Data(format!("exported function {}: {msg}", dir.display()))
}

fn sig_str(sig: &[(DType, Shape)]) -> String {
    sig.iter()
        .map(|(d, s)| type_str(*d, s))
        .collect::<Vec<_>>()
        .join(", ")
}

fn output_types(g: &Graph) -> Signature {
    g.outputs
        .iter()
        .map(|&o| (g.node(o).dtype, g.node(o).shape.clone()))
        .collect()
}

// ---------------------------------------------------------------------------------------
// safetensors

fn to_st_dtype(d: DType) -> Dtype {
    match d {
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
        DType::I64 => Dtype::I64,
    }
}

fn from_st_dtype(d: Dtype) -> Option<DType> {
    match d {
        Dtype::F32 => Some(DType::F32),
        Dtype::F64 => Some(DType::F64),
        Dtype::I64 => Some(DType::I64),
        _ => None,
    }
}

/// A safetensors file of named buffers with string metadata.
fn serialize(
    tensors: &[(String, Data)],
    meta: HashMap<String, String>,
) -> std::result::Result<Vec<u8>, String> {
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, d)| d.to_le_bytes()).collect();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, d), b)| {
            TensorView::new(to_st_dtype(d.dtype()), d.shape().to_vec(), b)
                .map(|v| (name.clone(), v))
                .map_err(|e| format!("`{name}`: {e}"))
        })
        .collect::<std::result::Result<_, _>>()?;
    let meta = (!meta.is_empty()).then_some(meta);
    safetensors::serialize(views, &meta).map_err(|e| e.to_string())
}

/// The buffers of a safetensors file by name, and its metadata.
type Buffers = (HashMap<String, Data>, HashMap<String, String>);

/// Reads a safetensors file written by [`serialize`].
fn deserialize(dir: &Path, file: &str) -> Result<Buffers> {
    let path = dir.join(file);
    let bytes = std::fs::read(&path).map_err(|e| bad(dir, format!("{file}: {e}")))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(dir, format!("{file} is not a valid safetensors file: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(dir, format!("{file} has a bad header: {e}")))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let dtype = from_st_dtype(view.dtype()).ok_or_else(|| {
            bad(
                dir,
                format!(
                    "{file}: `{name}` has the unsupported dtype {:?}",
                    view.dtype()
                ),
            )
        })?;
        let data = Data::from_le_bytes(dtype, view.shape(), view.data())
            .map_err(|e| bad(dir, format!("{file}: `{name}`: {e}")))?;
        out.insert(name, data);
    }
    Ok((out, header.metadata().clone().unwrap_or_default()))
}

// ---------------------------------------------------------------------------------------
// manifest

/// What `manifest.txt` says.
struct Manifest {
    symbolic: bool,
    inputs: Signature,
    outputs: Signature,
    /// The pipeline of each instance (symbolic programs).
    config: PassConfig,
}

fn manifest_text(m: &Manifest) -> String {
    let mut s = format!(
        "# an exported tapeflow function: load it with tapeflow::load_function\n\
         format: {FORMAT}\nversion: {EXPORT_FORMAT_VERSION}\nprogram: {}\n",
        if m.symbolic { "symbolic" } else { "concrete" }
    );
    for (d, sh) in &m.inputs {
        s.push_str(&format!("input: {}\n", type_str(*d, sh)));
    }
    for (d, sh) in &m.outputs {
        s.push_str(&format!("output: {}\n", type_str(*d, sh)));
    }
    if m.symbolic {
        let c = &m.config;
        s.push_str(&format!(
            "passes: {}\n",
            if c.none { "none" } else { "pipeline" }
        ));
        s.push_str(&format!("min_fused_elems: {}\n", c.min_fused_elems));
        for d in &c.disabled {
            s.push_str(&format!("disabled_pass: {d}\n"));
        }
    }
    s
}

fn parse_manifest(dir: &Path, text: &str) -> Result<Manifest> {
    let entries: Vec<(usize, &str, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(i, l)| {
            l.split_once(':')
                .map(|(k, v)| (i + 1, k.trim(), v.trim()))
                .ok_or_else(|| {
                    bad(
                        dir,
                        format!("{MANIFEST} line {}: `{l}` is not `key: value`", i + 1),
                    )
                })
        })
        .collect::<Result<_>>()?;
    let one = |key: &str| -> Result<&str> {
        let mut found = entries.iter().filter(|(_, k, _)| *k == key);
        match (found.next(), found.next()) {
            (Some(&(_, _, v)), None) => Ok(v),
            (None, _) => Err(bad(dir, format!("{MANIFEST} has no `{key}:` line"))),
            (Some(_), Some(&(n, _, _))) => Err(bad(
                dir,
                format!("{MANIFEST} line {n}: a second `{key}:` line"),
            )),
        }
    };
    let format = one("format")?;
    if format != FORMAT {
        return Err(bad(
            dir,
            format!(
                "{MANIFEST} says `format: {format}`, not a tapeflow function export (`{FORMAT}`)"
            ),
        ));
    }
    let version = one("version")?;
    match version.parse::<u32>() {
        Ok(EXPORT_FORMAT_VERSION) => {}
        Ok(v) => {
            return Err(bad(
                dir,
                format!(
                    "format version {v} is not supported: this tapeflow reads version \
                     {EXPORT_FORMAT_VERSION}; export the function again with this version"
                ),
            ))
        }
        Err(_) => {
            return Err(bad(
                dir,
                format!("{MANIFEST}: the format version `{version}` is not a number"),
            ))
        }
    }
    let symbolic = match one("program")? {
        "concrete" => false,
        "symbolic" => true,
        other => {
            return Err(bad(
                dir,
                format!("{MANIFEST}: unknown program kind `{other}` (concrete or symbolic)"),
            ))
        }
    };
    let mut m = Manifest {
        symbolic,
        inputs: Vec::new(),
        outputs: Vec::new(),
        config: PassConfig::default(),
    };
    for &(n, key, value) in &entries {
        let ty =
            || ir::parse_type(value).map_err(|e| bad(dir, format!("{MANIFEST} line {n}: {e}")));
        match key {
            "format" | "version" | "program" => {}
            "input" => m.inputs.push(ty()?),
            "output" => m.outputs.push(ty()?),
            "passes" if symbolic => match value {
                "none" => m.config.none = true,
                "pipeline" => m.config.none = false,
                _ => {
                    return Err(bad(
                        dir,
                        format!("{MANIFEST} line {n}: `passes: {value}` (pipeline or none)"),
                    ))
                }
            },
            "min_fused_elems" if symbolic => {
                m.config.min_fused_elems = value.parse().map_err(|_| {
                    bad(
                        dir,
                        format!("{MANIFEST} line {n}: `{value}` is not a number"),
                    )
                })?
            }
            "disabled_pass" if symbolic => m.config.disabled.push(value.to_string()),
            _ => {
                return Err(bad(
                    dir,
                    format!("{MANIFEST} line {n}: unknown entry `{key}`"),
                ))
            }
        }
    }
    Ok(m)
}

// ---------------------------------------------------------------------------------------
// export

/// The text of `g` with its external constants, checked to read back to the same text.
fn printed(g: &Graph, file: &str) -> Result<(String, Vec<Data>, Graph)> {
    let (text, constants) = ir::print_with_constants(g);
    let back = ir::parse_with_constants(&text, &constants)
        .ok()
        .filter(|b| ir::print_with_constants(b).0 == text)
        .ok_or_else(|| {
            Error::Function(format!(
                "export: the {file} text of this graph does not read back to the same graph \
                 (a variable name with brackets, `;` or a line break? The variables: {})",
                g.vars
                    .iter()
                    .map(|v| format!("{:?}", v.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
    Ok((text, constants, back))
}

/// Writes `c` to `dir` (see the module docs).
pub(super) fn write(c: &ConcreteFunction, dir: &Path) -> Result<()> {
    let (sig, traced, program) = c.parts();
    let optimized = program.graph();
    let (graph_text, graph_consts, graph_back) = printed(optimized, GRAPH)?;
    let traced_part = match program.is_symbolic() {
        true => Some(printed(traced, TRACED)?),
        false => None,
    };
    // the variables the texts use, in the order the graph first used them
    let source = if program.is_symbolic() {
        traced
    } else {
        optimized
    };
    let used = |name: &str| {
        graph_back.vars.iter().any(|v| v.name == name)
            || traced_part
                .as_ref()
                .is_some_and(|(_, _, t)| t.vars.iter().any(|v| v.name == name))
    };
    let mut vars: Vec<(&str, &Variable)> = Vec::new();
    for v in source.vars.iter().chain(&optimized.vars) {
        if !used(&v.name) || vars.iter().any(|(n, _)| *n == v.name) {
            continue;
        }
        let handle = v.handle.as_ref().ok_or_else(|| {
            Error::Function(format!(
                "export: variable `{}` has no live value (a graph parsed from text)",
                v.name
            ))
        })?;
        if v.name == "__metadata__" || v.name.contains('\n') {
            return Err(Error::Function(format!(
                "export: variable name {:?} cannot be a safetensors key; rename the variable",
                v.name
            )));
        }
        vars.push((&v.name, handle));
    }
    let values = crate::tensor::variable::read_all(vars.iter().map(|(_, v)| Some(*v)));
    let mut tensors = Vec::with_capacity(vars.len());
    for ((name, _), value) in vars.iter().zip(values) {
        let (t, _) = value.expect("every variable has a handle");
        tensors.push((name.to_string(), t.data()?.clone()));
    }
    let order: Vec<&str> = vars.iter().map(|(n, _)| *n).collect();
    let frozen: Vec<&str> = vars
        .iter()
        .filter(|(_, v)| !v.trainable())
        .map(|(n, _)| *n)
        .collect();
    let mut meta = HashMap::from([(ORDER_KEY.to_string(), order.join("\n"))]);
    if !frozen.is_empty() {
        meta.insert(NON_TRAINABLE_KEY.to_string(), frozen.join("\n"));
    }
    let variables = serialize(&tensors, meta)
        .map_err(|e| Error::Function(format!("export: {VARIABLES}: {e}")))?;
    let mut constants: Vec<(String, Data)> = graph_consts
        .into_iter()
        .enumerate()
        .map(|(k, d)| (format!("graph/{k}"), d))
        .collect();
    if let Some((_, tc, _)) = &traced_part {
        constants.extend(
            tc.iter()
                .enumerate()
                .map(|(k, d)| (format!("traced/{k}"), d.clone())),
        );
    }
    let constants = serialize(&constants, HashMap::new())
        .map_err(|e| Error::Function(format!("export: {CONSTANTS}: {e}")))?;
    let manifest = manifest_text(&Manifest {
        symbolic: program.is_symbolic(),
        inputs: sig.clone(),
        outputs: output_types(optimized),
        config: program.config().cloned().unwrap_or_default(),
    });
    let mut files: Vec<(&str, Vec<u8>)> = vec![
        (MANIFEST, manifest.into_bytes()),
        (GRAPH, graph_text.into_bytes()),
        (CONSTANTS, constants),
        (VARIABLES, variables),
    ];
    if let Some((text, _, _)) = traced_part {
        files.push((TRACED, text.into_bytes()));
    }
    install(dir, &files)
}

/// Best effort: makes renames in `dir` durable (not every platform opens a directory).
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Whether `dir` may be replaced: an empty directory or an earlier export.
fn replaceable(dir: &Path) -> bool {
    let empty = std::fs::read_dir(dir).is_ok_and(|mut e| e.next().is_none());
    let export = std::fs::read_to_string(dir.join(MANIFEST))
        .is_ok_and(|m| m.lines().any(|l| l.trim() == format!("format: {FORMAT}")));
    empty || export
}

/// Writes the files to a temporary directory next to `dir` and renames it into place.
fn install(dir: &Path, files: &[(&str, Vec<u8>)]) -> Result<()> {
    let name = dir
        .file_name()
        .ok_or_else(|| {
            Error::Function(format!("export: {} is not a directory path", dir.display()))
        })?
        .to_string_lossy()
        .into_owned();
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let exists = dir.exists();
    if exists && (!dir.is_dir() || !replaceable(dir)) {
        return Err(Error::Function(format!(
            "export: {} exists and is not an earlier export (nor empty); it is left as it is",
            dir.display()
        )));
    }
    let unique = || {
        format!(
            "{}-{}",
            std::process::id(),
            EXPORT_COUNTER.fetch_add(1, Ordering::Relaxed)
        )
    };
    let tmp = parent.join(format!(".{name}.tmp-{}", unique()));
    let write = || -> std::io::Result<()> {
        std::fs::create_dir(&tmp)?;
        for (file, bytes) in files {
            let mut f = std::fs::File::create(tmp.join(file))?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        sync_dir(&tmp);
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(Error::io(&tmp, e));
    }
    let fail = |e: std::io::Error| {
        let _ = std::fs::remove_dir_all(&tmp);
        Error::io(dir, e)
    };
    if exists {
        let old = parent.join(format!(".{name}.old-{}", unique()));
        std::fs::rename(dir, &old).map_err(fail)?;
        if let Err(e) = std::fs::rename(&tmp, dir) {
            let _ = std::fs::rename(&old, dir); // put the earlier export back
            return Err(fail(e));
        }
        // best effort: the new export is in place either way
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(&tmp, dir).map_err(fail)?;
    }
    sync_dir(&parent);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// load

/// A compiled function loaded from an export ([`load_function`]): it runs the exported
/// graph with its own variables, without the closure that was traced.
///
/// Its assignments update its own [`LoadedFunction::variables`], so an exported train
/// step keeps training. With symbolic dimensions in its signature it runs at every
/// binding (batch size), each specialized and optimized on its first call exactly as the
/// exported function did, and kept ([`crate::trace::DEFAULT_INSTANCES`] bindings).
/// Calls from many threads behave as a [`crate::Function`]'s do.
///
/// # The export format
/// An export ([`ConcreteFunction::export`]) is a directory of four files (five for a
/// symbolic signature):
///
/// | file | holds |
/// | --- | --- |
/// | `manifest.txt` | `format: tapeflow-function`, `version:` ([`EXPORT_FORMAT_VERSION`]), `program: concrete` or `symbolic`, one `input:` and one `output:` line per argument and result (`f32[b,784]`: symbols by name), and for a symbolic program the pass pipeline each batch size runs |
/// | `graph.ir` | the optimized graph in canonical text IR ([`crate::ir::print_with_constants`]): what runs for a concrete signature |
/// | `traced.ir` | for a symbolic signature only: the graph as traced, which each binding of the symbols specializes and optimizes, exactly as the exported function does (so every batch size gets the bits it got there) |
/// | `constants.safetensors` | the constants whose text would not read back bit for bit (more than [`crate::ir::MAX_CONST_ELEMS`] elements, ...): `graph/k` and `traced/k` are the IR's `@k` |
/// | `variables.safetensors` | the current values of the variables the graphs read or assign, keyed by their names in the IR |
///
/// Writing is atomic: the files go to a fresh temporary directory next to the target
/// (`.<name>.tmp-<pid>-<n>`), each flushed to disk, and the directory is renamed into
/// place (its parent is created if needed). An earlier export at the target is
/// replaced as a whole (renamed aside, then removed); a reader in between the two renames
/// finds no export (an `Err`), never a mix of two. A directory that is neither empty nor
/// an export is never replaced. A process that dies mid-export leaves its temporary
/// directory behind (nothing else); remove it by hand. The variable values are read at
/// one instant, so an export taken while another thread trains is one step's state.
///
/// Loading checks everything before it runs anything: the format and version, that the
/// IR parses and verifies, that the manifest's signature is the graph's, and that the
/// variables file holds exactly the graph's variables with their dtypes and shapes. Each
/// problem is an `Err` naming the file and what is wrong.
pub struct LoadedFunction {
    dir: PathBuf,
    signature: Signature,
    /// What symbolic instances specialize (the traced graph; `None` for a concrete program).
    traced: Option<Graph>,
    program: Program,
    variables: Vec<Variable>,
}

impl std::fmt::Debug for LoadedFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "LoadedFunction({}: {})",
            self.dir.display(),
            sig_str(&self.signature)
        )
    }
}

/// The graph text of `file` with its constants `prefix/k`, parsed and verified.
fn load_graph(
    dir: &Path,
    file: &str,
    constants: &mut HashMap<String, Data>,
    prefix: &str,
) -> Result<Graph> {
    let text =
        std::fs::read_to_string(dir.join(file)).map_err(|e| bad(dir, format!("{file}: {e}")))?;
    let mut table = Vec::new();
    while let Some(d) = constants.remove(&format!("{prefix}/{}", table.len())) {
        table.push(d);
    }
    let g =
        ir::parse_with_constants(&text, &table).map_err(|e| bad(dir, format!("{file}: {e}")))?;
    ir::verify(&g).map_err(|e| bad(dir, format!("{file}: {e}")))?;
    Ok(g)
}

/// Loads a function written by [`ConcreteFunction::export`]: parses its graph, creates
/// its variables from the saved values and plans it. The result runs in any process,
/// without the closure that was traced.
///
/// ```
/// use tapeflow::{function, load_function, Tensor, Variable};
/// let w = Variable::named("w", Tensor::vec(&[1.0f32, 2.0]));
/// let w2 = w.clone();
/// let f = function(move |x: &Tensor| {
///     w2.assign_add(x);
///     Ok(w2.read().sum_all())
/// });
/// let x = Tensor::vec(&[0.5f32, 0.5]);
/// let dir = std::env::temp_dir().join(format!("tapeflow-doc-export-{}", std::process::id()));
/// f.concrete(&[&x])?.export(&dir)?;
/// let g = load_function(&dir)?;
/// let y = g.call(&[x.clone()])?; // the loaded function's own `w` becomes [1.5, 2.5]
/// assert_eq!(y[0].to_vec_f32()?, [4.0]);
/// assert_eq!(g.variables()[0].value().to_vec_f32()?, [1.5, 2.5]);
/// assert_eq!(w.value().to_vec_f32()?, [1.0, 2.0]); // the original is untouched
/// assert!(g.call(&[Tensor::vec(&[1.0f32])]).is_err()); // does not fit f32[2]
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), tapeflow::Error>(())
/// ```
///
/// # Errors
/// A missing or unreadable file; a manifest of another format or version; IR text that
/// does not parse or verify; a signature that is not the graph's; a variables file
/// without one of the graph's variables, with one it does not use, or with one of
/// another dtype or shape; a corrupt safetensors file. Each names the file and the
/// problem.
pub fn load_function(dir: impl AsRef<Path>) -> Result<LoadedFunction> {
    let dir = dir.as_ref();
    let manifest = std::fs::read_to_string(dir.join(MANIFEST))
        .map_err(|e| bad(dir, format!("{MANIFEST}: {e}")))?;
    let m = parse_manifest(dir, &manifest)?;
    let (mut constants, _) = deserialize(dir, CONSTANTS)?;
    let mut graph = load_graph(dir, GRAPH, &mut constants, "graph")?;
    let mut traced = match m.symbolic {
        true => Some(load_graph(dir, TRACED, &mut constants, "traced")?),
        false => None,
    };
    if let Some(k) = constants.keys().next() {
        return Err(bad(
            dir,
            format!("{CONSTANTS} holds `{k}`, which no graph text refers to"),
        ));
    }
    // the manifest's signature is each graph's
    for (file, g) in std::iter::once((GRAPH, &graph)).chain(traced.iter().map(|t| (TRACED, t))) {
        let inputs: Signature = g
            .inputs
            .iter()
            .map(|&i| (g.node(i).dtype, g.node(i).shape.clone()))
            .collect();
        if inputs != m.inputs {
            return Err(bad(
                dir,
                format!(
                    "{MANIFEST} declares the inputs ({}) but {file} takes ({})",
                    sig_str(&m.inputs),
                    sig_str(&inputs)
                ),
            ));
        }
    }
    if output_types(&graph) != m.outputs {
        return Err(bad(
            dir,
            format!(
                "{MANIFEST} declares the outputs ({}) but {GRAPH} returns ({})",
                sig_str(&m.outputs),
                sig_str(&output_types(&graph))
            ),
        ));
    }
    if m.symbolic != signature::is_symbolic(&m.inputs) {
        return Err(bad(
            dir,
            format!(
                "{MANIFEST}: a {} program with the signature ({})",
                if m.symbolic { "symbolic" } else { "concrete" },
                sig_str(&m.inputs)
            ),
        ));
    }
    let variables = load_variables(dir, &graph, traced.as_ref())?;
    for g in std::iter::once(&mut graph).chain(traced.iter_mut()) {
        for v in &mut g.vars {
            v.handle = variables.iter().find(|h| h.name() == v.name).cloned();
        }
    }
    let program = Program::new(graph, m.config, m.symbolic)?;
    Ok(LoadedFunction {
        dir: dir.to_path_buf(),
        signature: m.inputs,
        traced,
        program,
        variables,
    })
}

/// The variables of the graphs, from `variables.safetensors`: exactly those, with their
/// dtypes and shapes, in the saved order.
fn load_variables(dir: &Path, graph: &Graph, traced: Option<&Graph>) -> Result<Vec<Variable>> {
    let (mut values, meta) = deserialize(dir, VARIABLES)?;
    let mut wanted: Vec<&ir::GraphVar> = Vec::new();
    for v in traced.iter().flat_map(|t| &t.vars).chain(&graph.vars) {
        match wanted.iter().find(|w| w.name == v.name) {
            Some(w) if w.dtype != v.dtype || w.shape != v.shape => {
                return Err(bad(
                    dir,
                    format!(
                        "variable `{}` is {} in {TRACED} but {} in {GRAPH}",
                        v.name,
                        type_str(w.dtype, &w.shape),
                        type_str(v.dtype, &v.shape)
                    ),
                ))
            }
            Some(_) => {}
            None => wanted.push(v),
        }
    }
    let missing: Vec<String> = wanted
        .iter()
        .filter(|v| !values.contains_key(&v.name))
        .map(|v| format!("`{}` ({})", v.name, type_str(v.dtype, &v.shape)))
        .collect();
    if !missing.is_empty() {
        return Err(bad(
            dir,
            format!(
                "{VARIABLES} has no value for the variable {} that the graph uses",
                missing.join(", ")
            ),
        ));
    }
    let mut extra: Vec<&String> = values
        .keys()
        .filter(|k| !wanted.iter().any(|v| v.name == **k))
        .collect();
    if !extra.is_empty() {
        extra.sort();
        return Err(bad(
            dir,
            format!(
                "{VARIABLES} holds {}, which the graph does not use",
                extra
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let lines = |key: &str| -> Vec<String> {
        meta.get(key)
            .map(|s| {
                s.split('\n')
                    .filter(|n| !n.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    // the saved order when it names exactly these variables, else graph order
    let mut order = lines(ORDER_KEY);
    let mut sorted: Vec<&str> = order.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let mut names: Vec<&str> = wanted.iter().map(|v| v.name.as_str()).collect();
    names.sort_unstable();
    if sorted != names {
        order = wanted.iter().map(|v| v.name.clone()).collect();
    }
    let frozen = lines(NON_TRAINABLE_KEY);
    let mut out = Vec::with_capacity(order.len());
    for name in order {
        let v = wanted
            .iter()
            .find(|v| v.name == name)
            .expect("the order names the graph's variables");
        let d = values.remove(&name).expect("checked above");
        if d.dtype() != v.dtype || d.shape() != v.shape {
            return Err(bad(
                dir,
                format!(
                    "variable `{name}` is {} in {VARIABLES} but {} in the graph",
                    type_str(d.dtype(), &d.shape()),
                    type_str(v.dtype, &v.shape)
                ),
            ));
        }
        let value = Tensor::from_data(d);
        out.push(if frozen.contains(&name) {
            Variable::non_trainable(name, value)
        } else {
            Variable::named(name, value)
        });
    }
    Ok(out)
}

impl LoadedFunction {
    /// Runs on concrete arguments (one tensor per input of the signature); updates the
    /// function's own variables. The results record the caller's line as their source
    /// location.
    ///
    /// # Errors
    /// Arguments that do not fit the signature (the count, a dtype, a rank, a fixed
    /// dimension, or two values of one symbol), named by argument and dimension; a
    /// symbolic tensor; an error of the run itself.
    #[track_caller]
    pub fn call(&self, args: &[Tensor]) -> Result<Vec<Tensor>> {
        let loc = Location::caller();
        let types: Signature = args
            .iter()
            .map(|a| (a.dtype(), Shape::from_slice(a.shape())))
            .collect();
        signature::bind(&self.signature, &types).map_err(|e| {
            Error::Function(format!(
                "exported function {}: the call ({}) does not fit the signature ({}): {e} (at {loc})",
                self.dir.display(),
                sig_str(&types),
                sig_str(&self.signature)
            ))
        })?;
        let source = self.traced.as_ref().unwrap_or(self.program.graph());
        let args: SmallVec<[&Tensor; 4]> = args.iter().collect();
        Ok(self
            .program
            .run(&self.signature, source, &args, loc)?
            .into_vec())
    }

    /// The function's variables (created from the export's values), in the order the
    /// traced graph first used them. Assignments of [`LoadedFunction::call`] update them.
    pub fn variables(&self) -> &[Variable] {
        &self.variables
    }

    /// The input signature (symbolic dimensions by name, as exported).
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Whether the signature has symbolic dimensions (one graph serves many shapes).
    pub fn is_symbolic(&self) -> bool {
        self.program.is_symbolic()
    }

    /// The optimized graph, as exported (for a symbolic signature, the optimized
    /// symbolic graph; each binding runs the traced graph specialized and optimized).
    pub fn graph(&self) -> &Graph {
        self.program.graph()
    }

    /// Canonical text IR of the optimized graph.
    pub fn text(&self) -> String {
        ir::print(self.graph(), false)
    }

    /// How many bindings (batch sizes) of a symbolic signature have a compiled instance
    /// now (1 for a concrete signature).
    pub fn instance_count(&self) -> usize {
        self.program.instance_count()
    }

    /// The plan that runs arguments of these types (for a symbolic signature: the
    /// instance of their binding, made now if it is new).
    ///
    /// # Errors
    /// Types that do not fit the signature.
    #[track_caller]
    pub fn plan_for(&self, args: &[&Tensor]) -> Result<std::sync::Arc<crate::exec::Plan>> {
        let types: Signature = args
            .iter()
            .map(|a| (a.dtype(), Shape::from_slice(a.shape())))
            .collect();
        if let Err(e) = signature::bind(&self.signature, &types) {
            return Err(Error::Function(format!(
                "exported function {}: {e}",
                self.dir.display()
            )));
        }
        let source = self.traced.as_ref().unwrap_or(self.program.graph());
        self.program
            .plan_for_types(&self.signature, source, &types, Location::caller())
    }
}
