//! `Embedding`: integer ids to dense vectors (Keras' `keras.layers.Embedding`).

use super::initializers::Initializer;
use super::layers::{bad_input, shape_str, Layer, LayerName};
use super::subclass::note_layer_call;
use crate::{DType, Result, Tensor, Variable};
use serde_json::{json, Value};
use std::sync::OnceLock;

/// Looks up one row of a `[input_dim, output_dim]` table per integer id: ids of shape
/// `[batch, ...]` (i64) give `[batch, ..., output_dim]`.
///
/// The table starts `U(-0.05, 0.05)` (Keras' default `uniform`). An id outside
/// `0..input_dim` is an `Err` naming the id and the table size: from `call` on concrete
/// ids, and from the compiled function's `call` when the lookup runs inside one.
/// Its gradient is a `scatter_add` into the table's rows, so repeated ids accumulate.
///
/// ```
/// use tapeflow::nn::{Embedding, Initializer, Layer};
/// use tapeflow::Tensor;
/// let e = Embedding::new(10, 3).embeddings_initializer(Initializer::Constant(0.5));
/// let y = e.call(&Tensor::from_vec(vec![1i64, 2, 9, 0], &[2, 2]).unwrap(), false).unwrap();
/// assert_eq!(y.shape(), &[2, 2, 3]);
/// assert_eq!(e.count_params(), 30);
/// ```
pub struct Embedding {
    input_dim: usize,
    output_dim: usize,
    initializer: Initializer,
    dtype: DType,
    name: LayerName,
    table: OnceLock<Variable>,
}

impl Embedding {
    /// A table of `input_dim` ids (the vocabulary size) to vectors of `output_dim`, f32.
    pub fn new(input_dim: usize, output_dim: usize) -> Embedding {
        Embedding {
            input_dim,
            output_dim,
            initializer: Initializer::RandomUniform {
                min: -0.05,
                max: 0.05,
                seed: None,
            },
            dtype: DType::F32,
            name: LayerName::new("embedding"),
            table: OnceLock::new(),
        }
    }

    /// The table's initializer (default `U(-0.05, 0.05)`).
    pub fn embeddings_initializer(mut self, i: Initializer) -> Embedding {
        self.initializer = i;
        self
    }

    /// The table's dtype (default f32).
    pub fn dtype(mut self, d: DType) -> Embedding {
        self.dtype = d;
        self
    }

    /// An explicit name instead of the next `embedding_N`.
    pub fn named(self, name: impl Into<String>) -> Embedding {
        self.name.set(name.into());
        self
    }

    /// The `[input_dim, output_dim]` table (`None` before the layer is built).
    pub fn embeddings(&self) -> Option<Variable> {
        self.table.get().cloned()
    }

    fn check_dims(&self) -> Result<()> {
        if self.input_dim == 0 || self.output_dim == 0 {
            return Err(bad_input(
                "Embedding",
                self.name(),
                format!(
                    "input_dim and output_dim must be positive, got {} and {}",
                    self.input_dim, self.output_dim
                ),
            ));
        }
        Ok(())
    }
}

impl Layer for Embedding {
    fn name(&self) -> &str {
        self.name.get()
    }

    fn class_name(&self) -> &'static str {
        "Embedding"
    }

    fn get_config(&self) -> Option<Value> {
        Some(json!({
            "name": self.name(),
            "input_dim": self.input_dim,
            "output_dim": self.output_dim,
            "dtype": self.dtype.name(),
        }))
    }

    fn build(&self, _input_shape: &[usize]) -> Result<()> {
        self.check_dims()?;
        self.table.get_or_init(|| {
            let name = format!("{}/embeddings", self.name());
            let shape = [self.input_dim, self.output_dim];
            Variable::named(&name, self.initializer.init(&shape, self.dtype, &name))
        });
        Ok(())
    }

    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        self.check_dims()?;
        let mut s = input_shape.to_vec();
        s.push(self.output_dim);
        Ok(s)
    }

    fn call(&self, x: &Tensor, _training: bool) -> Result<Tensor> {
        if x.dtype() != DType::I64 || x.rank() == 0 {
            return Err(bad_input(
                "Embedding",
                self.name(),
                format!(
                    "expects a batch of i64 ids (rank ≥ 1), got {}",
                    shape_str(x.dtype(), x.shape())
                ),
            ));
        }
        if let Ok(ids) = x.to_vec_i64() {
            if let Some(bad) = ids.iter().find(|&&i| i < 0 || i as usize >= self.input_dim) {
                return Err(bad_input(
                    "Embedding",
                    self.name(),
                    format!("id {bad} is outside the table's 0..{}", self.input_dim),
                ));
            }
        }
        self.build(&x.shape()[1..])?;
        let table = self.table.get().expect("built above").read();
        note_layer_call(self, table.gather(x, 0))
    }

    fn variables(&self) -> Vec<Variable> {
        self.table.get().cloned().into_iter().collect()
    }
}
