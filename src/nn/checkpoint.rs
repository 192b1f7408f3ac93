//! Checkpoints: variables (model weights, optimizer slots, step counters) saved to and
//! restored from a [safetensors](https://github.com/huggingface/safetensors) file.
//!
//! - Keys are variable names (`dense_1/kernel`, `adam/dense_1/kernel/m`); the file's
//!   metadata also records the saved order (`tapeflow.order`).
//! - Saving is atomic: the bytes go to a temporary file in the same directory
//!   (`.<name>.tmp-<pid>-<n>`, unique per call, so threads and processes saving to one
//!   path never share one), which is flushed to disk and then renamed over the target.
//!   A crash mid-write leaves the previous checkpoint intact; readers see the old or the
//!   new file, never a mix. A temporary file left by a process that died mid-save is
//!   removed by the next save to the same path (on Linux, where a dead process can be
//!   recognized through `/proc`; elsewhere such files stay until removed by hand).
//! - Names are keys: `__metadata__` is reserved by the format and names containing a
//!   newline cannot be recorded in the saved order, so saving such a variable is an `Err`.
//! - Loading validates everything before assigning anything: a missing variable or a
//!   dtype/shape mismatch is an `Err` naming the variable, and the model is unchanged.
//!   Variables are matched by name. Only if *no* name matches (a second model built in
//!   the same process is `dense_3/...` instead of `dense/...`) are they matched by
//!   position, when the counts agree, still checking every dtype and shape. Some names
//!   matching and others not is an `Err` listing the missing ones.
//! - Round trips are bit-exact: raw little-endian f32/f64/i64 bytes.

use super::model::Model;
use super::optimizers::Optimizer;
use crate::{DType, Data, Dim, Error, Result, Tensor, Variable};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const ORDER_KEY: &str = "tapeflow.order";

/// The header key safetensors reserves for metadata: no tensor can have this name.
const RESERVED_NAME: &str = "__metadata__";

/// Numbers the temporary files of this process's saves (with the pid: unique per call).
static SAVE_COUNTER: AtomicU64 = AtomicU64::new(0);

fn err(path: &Path, msg: String) -> Error {
    Error::Checkpoint(format!("{}: {msg}", path.display()))
}

fn type_str(dtype: DType, shape: &[usize]) -> String {
    let dims: Vec<String> = shape
        .iter()
        .map(|&d| Dim::from_raw(d).to_string())
        .collect();
    format!("{dtype}[{}]", dims.join(","))
}

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

/// Saves the current values of `vars` to `path` (atomically; see the module docs).
///
/// Returns `Err` for two variables with one name or an I/O failure.
pub fn save_variables(path: impl AsRef<Path>, vars: &[Variable]) -> Result<()> {
    let path = path.as_ref();
    let mut seen = HashSet::new();
    for v in vars {
        if v.name() == RESERVED_NAME || v.name().contains('\n') {
            return Err(err(
                path,
                format!(
                    "variable name {:?} cannot be saved: `{RESERVED_NAME}` is reserved by \
                     the safetensors format and names may not contain a newline; rename the variable",
                    v.name()
                ),
            ));
        }
        if !seen.insert(v.name()) {
            return Err(err(
                path,
                format!(
                    "two variables are named `{}`; checkpoint keys must be unique",
                    v.name()
                ),
            ));
        }
    }
    let data: Vec<(String, DType, Vec<usize>, Vec<u8>)> = vars
        .iter()
        .map(|v| {
            Ok((
                v.name().to_string(),
                v.dtype(),
                v.shape().to_vec(),
                v.value().data()?.to_le_bytes(),
            ))
        })
        .collect::<Result<_>>()?;
    let views: Vec<(String, TensorView<'_>)> = data
        .iter()
        .map(|(n, d, s, b)| {
            TensorView::new(to_st_dtype(*d), s.clone(), b)
                .map(|view| (n.clone(), view))
                .map_err(|e| err(path, format!("variable `{n}`: {e}")))
        })
        .collect::<Result<_>>()?;
    let order: Vec<&str> = vars.iter().map(|v| v.name()).collect();
    let meta = Some(HashMap::from([(ORDER_KEY.to_string(), order.join("\n"))]));
    let bytes =
        safetensors::serialize(views, &meta).map_err(|e| err(path, format!("serialize: {e}")))?;

    let file_name = path
        .file_name()
        .ok_or_else(|| err(path, "not a file path".into()))?;
    let prefix = format!(".{}.tmp-", file_name.to_string_lossy());
    remove_stale_temps(path, &prefix);
    let tmp = path.with_file_name(format!(
        "{prefix}{}-{}",
        std::process::id(),
        SAVE_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })?;
    // make the rename itself durable (best effort: not every platform can open a directory)
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Removes `<prefix><pid>-<n>` files next to `path` whose process has died (Linux only:
/// elsewhere there is no cheap portable liveness check, and nothing is removed).
fn remove_stale_temps(path: &Path, prefix: &str) {
    if !cfg!(target_os = "linux") {
        return;
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists() {
            // best effort: another save may have removed it first
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Loads values saved by [`save_variables`] into `vars` (see the module docs for the
/// matching rules). Nothing is assigned unless every variable matches.
pub fn load_variables(path: impl AsRef<Path>, vars: &[Variable]) -> Result<()> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| err(path, format!("not a valid safetensors file: {e}")))?;
    let (_, meta) =
        SafeTensors::read_metadata(&bytes).map_err(|e| err(path, format!("bad header: {e}")))?;
    let names: HashSet<String> = st.names().into_iter().cloned().collect();
    let order: Vec<String> = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(ORDER_KEY))
        .map(|s| {
            s.split('\n')
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();

    let matched = vars.iter().filter(|v| names.contains(v.name())).count();
    let keys: Vec<String> = if matched == vars.len() {
        vars.iter().map(|v| v.name().to_string()).collect()
    } else if matched == 0 && order.len() == vars.len() && order.iter().all(|n| names.contains(n)) {
        order.clone()
    } else {
        let missing: Vec<String> = vars
            .iter()
            .filter(|v| !names.contains(v.name()))
            .map(|v| format!("`{}`", v.name()))
            .collect();
        let mut held: Vec<&String> = names.iter().collect();
        held.sort();
        let shown: Vec<&str> = held.iter().take(8).map(|s| s.as_str()).collect();
        let why = if matched > 0 {
            format!("{matched} names match, so they are not matched by position")
        } else {
            "and they cannot be matched by position".to_string()
        };
        return Err(err(
            path,
            format!(
                "has no variable {} ({} requested, {} saved: {}{}), {why}",
                missing.join(", "),
                vars.len(),
                names.len(),
                shown.join(", "),
                if held.len() > 8 { ", ..." } else { "" }
            ),
        ));
    };

    let mut values = Vec::with_capacity(vars.len());
    for (v, key) in vars.iter().zip(&keys) {
        let view = st
            .tensor(key)
            .map_err(|e| err(path, format!("variable `{key}`: {e}")))?;
        let dtype = from_st_dtype(view.dtype()).ok_or_else(|| {
            err(
                path,
                format!("variable `{key}` has unsupported dtype {:?}", view.dtype()),
            )
        })?;
        let shape = view.shape().to_vec();
        if dtype != v.dtype() || shape != v.shape() {
            let which = if key == v.name() {
                format!("`{key}`")
            } else {
                format!("`{key}` (for `{}`)", v.name())
            };
            return Err(err(
                path,
                format!(
                    "variable {which} is {} in the checkpoint but {} in the model",
                    type_str(dtype, &shape),
                    type_str(v.dtype(), v.shape())
                ),
            ));
        }
        values.push(Tensor::from_data(
            Data::from_le_bytes(dtype, &shape, view.data()).map_err(|e| err(path, e))?,
        ));
    }
    for (v, t) in vars.iter().zip(&values) {
        v.assign(t);
    }
    Ok(())
}

impl Model {
    /// Saves all model variables to a safetensors file (`model.save_weights`).
    ///
    /// Returns `Err` if the model is not built yet or on I/O failure.
    pub fn save_weights(&self, path: impl AsRef<Path>) -> Result<()> {
        save_variables(path, &self.built_variables()?)
    }

    /// Loads variables saved by [`Model::save_weights`] (`model.load_weights`); an `Err`
    /// naming the variable if the checkpoint belongs to a model of another shape.
    pub fn load_weights(&self, path: impl AsRef<Path>) -> Result<()> {
        load_variables(path, &self.built_variables()?)
    }

    fn built_variables(&self) -> Result<Vec<Variable>> {
        if self.input_shape().is_none() {
            return Err(Error::Checkpoint(format!(
                "model `{}` is not built: give it an input shape or call it once before saving or loading",
                self.name()
            )));
        }
        Ok(self.variables())
    }
}

/// A model together with its optimizer's state (`tf.train.Checkpoint(model=, optimizer=)`).
///
/// ```no_run
/// use tapeflow::nn::{Adam, Checkpoint, Dense, Sequential};
/// let model = Sequential::new().add(Dense::new(1)).input_shape(&[3]);
/// let opt = Adam::default();
/// let ckpt = Checkpoint::new(&model).optimizer(&opt);
/// ckpt.save("model.safetensors").unwrap();
/// ckpt.restore("model.safetensors").unwrap();
/// ```
pub struct Checkpoint {
    model: Model,
    optimizer: Option<Arc<dyn Optimizer>>,
}

impl Checkpoint {
    /// A checkpoint of `model`'s variables.
    pub fn new(model: &Model) -> Checkpoint {
        Checkpoint {
            model: model.clone(),
            optimizer: None,
        }
    }

    /// Also saves and restores the optimizer's step counter and slots.
    pub fn optimizer(mut self, opt: &(impl Optimizer + Clone + 'static)) -> Checkpoint {
        self.optimizer = Some(Arc::new(opt.clone()));
        self
    }

    /// Like [`Checkpoint::optimizer`] for a shared optimizer (e.g. [`Model::optimizer`]).
    pub fn shared_optimizer(mut self, opt: Arc<dyn Optimizer>) -> Checkpoint {
        self.optimizer = Some(opt);
        self
    }

    /// Model variables, then optimizer state (slots created now if they do not exist
    /// yet, so a checkpoint taken before training restores into a trained optimizer).
    fn variables(&self) -> Result<Vec<Variable>> {
        let mut vars = self.model.built_variables()?;
        if let Some(opt) = &self.optimizer {
            opt.build(&self.model.trainable_variables());
            vars.extend(opt.variables());
        }
        Ok(vars)
    }

    /// Saves atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        save_variables(path, &self.variables()?)
    }

    /// Restores everything or nothing.
    pub fn restore(&self, path: impl AsRef<Path>) -> Result<()> {
        load_variables(path, &self.variables()?)
    }
}
