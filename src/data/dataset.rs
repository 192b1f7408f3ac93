//! `Dataset`: input pipelines in the style of `tf.data`.
//!
//! A dataset is a source (tensors sliced along their first axis) plus a list of stages
//! (`shuffle`, `batch`, `repeat`, `map`, `prefetch`, `take`). Iterating it (`for (x, y) in
//! &ds`) runs one *epoch*: a fresh pass through the stages. Rows stay indices until they
//! are needed, so shuffling moves integers and `batch` builds each batch with one `gather`
//! of rows per source tensor.
//!
//! Invariants:
//! - `shuffle(buffer, seed)` is deterministic: the order of epoch `k` depends only on
//!   `seed` and `k` (the number of epochs the stage has started before). Every element
//!   appears exactly once per epoch, whatever the buffer size (TensorFlow's buffered
//!   algorithm: fill a buffer, emit a random buffered element, refill).
//! - `prefetch(n)` runs everything upstream on a background thread that stays at most `n`
//!   items ahead (a bounded channel). A panic upstream is re-raised in the consumer.

use crate::{Error, Result, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

/// The structure of one dataset element: a tensor or a tuple of tensors.
pub trait Element: Sized + Send + 'static {
    /// The tensors, in order.
    fn into_parts(self) -> Vec<Tensor>;
    /// Rebuilds the element from tensors in the same order.
    fn from_parts(parts: Vec<Tensor>) -> Self;
}

impl Element for Tensor {
    fn into_parts(self) -> Vec<Tensor> {
        vec![self]
    }
    fn from_parts(mut parts: Vec<Tensor>) -> Self {
        parts.remove(0)
    }
}

impl Element for (Tensor, Tensor) {
    fn into_parts(self) -> Vec<Tensor> {
        vec![self.0, self.1]
    }
    fn from_parts(parts: Vec<Tensor>) -> Self {
        let mut it = parts.into_iter();
        (it.next().expect("2 parts"), it.next().expect("2 parts"))
    }
}

impl Element for (Tensor, Tensor, Tensor) {
    fn into_parts(self) -> Vec<Tensor> {
        vec![self.0, self.1, self.2]
    }
    fn from_parts(parts: Vec<Tensor>) -> Self {
        let mut it = parts.into_iter();
        (
            it.next().expect("3 parts"),
            it.next().expect("3 parts"),
            it.next().expect("3 parts"),
        )
    }
}

type MapFn = Arc<dyn Fn(Vec<Tensor>) -> Vec<Tensor> + Send + Sync>;

#[derive(Clone)]
enum Stage {
    Shuffle {
        buffer: usize,
        seed: u64,
        epochs: Arc<AtomicU64>,
    },
    Batch {
        size: usize,
        drop_remainder: bool,
    },
    Repeat {
        count: Option<usize>,
    },
    Map(MapFn),
    Prefetch(usize),
    Take(usize),
    Shard {
        num: usize,
        index: usize,
    },
}

/// One item in flight: a source row not yet materialized, or tensors.
enum Item {
    Row(usize),
    Value(Vec<Tensor>),
}

type Stream = Box<dyn Iterator<Item = Item> + Send>;

struct Pipeline {
    columns: Vec<Tensor>,
    rows: usize,
    stages: Vec<Stage>,
}

/// A `tf.data`-style pipeline yielding elements of type `E` (`Tensor` or a tuple).
///
/// ```
/// use tapeflow::data::Dataset;
/// use tapeflow::Tensor;
/// let x = Tensor::from_vec((0..10).map(|v| v as f32).collect(), &[10, 1]).unwrap();
/// let y = Tensor::from_vec((0..10i64).collect(), &[10]).unwrap();
/// let ds = Dataset::from_tensor_slices((x, y)).unwrap().shuffle(4, 7).batch(4);
/// let mut seen = Vec::new();
/// for (xb, yb) in &ds {
///     assert_eq!(xb.shape()[0], yb.shape()[0]);
///     seen.extend(yb.to_vec_i64().unwrap());
/// }
/// seen.sort();
/// assert_eq!(seen, (0..10).collect::<Vec<_>>());
/// assert_eq!(ds.cardinality(), Some(3));
/// ```
pub struct Dataset<E> {
    pipeline: Arc<Pipeline>,
    _element: PhantomData<fn() -> E>,
}

impl<E> Clone for Dataset<E> {
    fn clone(&self) -> Self {
        Dataset {
            pipeline: self.pipeline.clone(),
            _element: PhantomData,
        }
    }
}

impl<E: Element> Dataset<E> {
    /// Slices `tensors` (a tensor or a tuple) along their first axis: element `i` is the
    /// `i`-th row of each.
    ///
    /// Returns `Err` if a tensor is a scalar or symbolic, or their first axes differ.
    pub fn from_tensor_slices(tensors: E) -> Result<Dataset<E>> {
        let columns = tensors.into_parts();
        let mut rows = None;
        for (i, t) in columns.iter().enumerate() {
            if t.is_symbolic() {
                return Err(Error::Invalid(format!(
                    "Dataset::from_tensor_slices: tensor {i} is symbolic; datasets hold concrete data"
                )));
            }
            let n = *t.shape().first().ok_or_else(|| {
                Error::Invalid(format!(
                    "Dataset::from_tensor_slices: tensor {i} is a scalar; it has no rows to slice"
                ))
            })?;
            match rows {
                None => rows = Some(n),
                Some(r) if r != n => {
                    return Err(Error::Invalid(format!(
                        "Dataset::from_tensor_slices: tensors have different first axes ({r} and {n} rows); \
                         each element takes one row of every tensor"
                    )))
                }
                Some(_) => {}
            }
        }
        Ok(Dataset {
            pipeline: Arc::new(Pipeline {
                columns,
                rows: rows.unwrap_or(0),
                stages: Vec::new(),
            }),
            _element: PhantomData,
        })
    }

    fn with<E2>(&self, stage: Stage) -> Dataset<E2> {
        let mut stages = self.pipeline.stages.clone();
        stages.push(stage);
        Dataset {
            pipeline: Arc::new(Pipeline {
                columns: self.pipeline.columns.clone(),
                rows: self.pipeline.rows,
                stages,
            }),
            _element: PhantomData,
        }
    }

    /// Shuffles with a buffer of `buffer` elements (`buffer ≥` the dataset size gives a
    /// uniform permutation), deterministically for `seed`, with a new order each epoch.
    /// The buffer is allocated as it fills, so any `buffer` up to `usize::MAX` is fine:
    /// a buffer larger than the data costs only the data's size.
    pub fn shuffle(self, buffer: usize, seed: u64) -> Dataset<E> {
        self.with(Stage::Shuffle {
            buffer,
            seed,
            epochs: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Groups consecutive elements into batches of `size` (the last one may be smaller).
    ///
    /// # Panics
    /// If `size` is 0.
    pub fn batch(self, size: usize) -> Dataset<E> {
        assert!(size > 0, "Dataset::batch: the batch size must be positive");
        self.with(Stage::Batch {
            size,
            drop_remainder: false,
        })
    }

    /// Like [`Dataset::batch`] but drops a final partial batch (all batches have one shape).
    ///
    /// # Panics
    /// If `size` is 0.
    pub fn batch_drop_remainder(self, size: usize) -> Dataset<E> {
        assert!(
            size > 0,
            "Dataset::batch_drop_remainder: the batch size must be positive"
        );
        self.with(Stage::Batch {
            size,
            drop_remainder: true,
        })
    }

    /// Repeats forever (each repetition is a new epoch for stages before it).
    pub fn repeat(self) -> Dataset<E> {
        self.with(Stage::Repeat { count: None })
    }

    /// Repeats `count` times.
    pub fn repeat_n(self, count: usize) -> Dataset<E> {
        self.with(Stage::Repeat { count: Some(count) })
    }

    /// Transforms each element (or batch, after `batch`) with `f`.
    pub fn map<E2: Element>(self, f: impl Fn(E) -> E2 + Send + Sync + 'static) -> Dataset<E2> {
        let f: MapFn = Arc::new(move |parts| f(E::from_parts(parts)).into_parts());
        self.with(Stage::Map(f))
    }

    /// Prepares up to `n` items ahead on a background thread.
    pub fn prefetch(self, n: usize) -> Dataset<E> {
        self.with(Stage::Prefetch(n.max(1)))
    }

    /// Shard `index` of `num_shards` (`tf.data.Dataset.shard`, one per rank of a
    /// data-parallel job): of every `num_shards` consecutive items, the one at `index`.
    /// Unlike TensorFlow's, every shard has the same length, `len / num_shards`: a final
    /// incomplete group of items is dropped, so every rank runs the same number of
    /// steps of the same batch sizes (ranks that run different collectives would wait
    /// for each other). Shard after a `shuffle` with one seed on every rank (the same
    /// permutation, so the shards are disjoint) and before `batch`.
    ///
    /// ```
    /// use tapeflow::data::Dataset;
    /// use tapeflow::Tensor;
    /// let ds = Dataset::from_tensor_slices(Tensor::vec(&[0.0f32, 1.0, 2.0, 3.0, 4.0])).unwrap();
    /// let shard = ds.shard(2, 1);
    /// assert_eq!(shard.cardinality(), Some(2));
    /// let v: Vec<f32> = shard.iter().map(|t| t.to_scalar_f32().unwrap()).collect();
    /// assert_eq!(v, vec![1.0, 3.0]); // 4.0 is in the incomplete last group
    /// ```
    ///
    /// # Panics
    /// If `num_shards` is 0 or `index >= num_shards`.
    pub fn shard(self, num_shards: usize, index: usize) -> Dataset<E> {
        assert!(
            index < num_shards,
            "Dataset::shard: index {index} is not below num_shards {num_shards}"
        );
        self.with(Stage::Shard {
            num: num_shards,
            index,
        })
    }

    /// Only the first `n` items.
    pub fn take(self, n: usize) -> Dataset<E> {
        self.with(Stage::Take(n))
    }

    /// The number of items an epoch yields (`None` when it repeats forever).
    pub fn cardinality(&self) -> Option<usize> {
        let mut n = Some(self.pipeline.rows);
        for s in &self.pipeline.stages {
            n = match (s, n) {
                (_, None) => match s {
                    Stage::Take(k) => Some(*k),
                    _ => None,
                },
                (
                    Stage::Batch {
                        size,
                        drop_remainder: true,
                    },
                    Some(n),
                ) => Some(n / size),
                (
                    Stage::Batch {
                        size,
                        drop_remainder: false,
                    },
                    Some(n),
                ) => Some(n.div_ceil(*size)),
                (Stage::Repeat { count: None }, Some(n)) => (n == 0).then_some(0),
                (Stage::Repeat { count: Some(c) }, Some(n)) => Some(n * c),
                (Stage::Take(k), Some(n)) => Some(n.min(*k)),
                (Stage::Shard { num, .. }, Some(n)) => Some(n / num),
                (_, Some(n)) => Some(n),
            };
        }
        n
    }

    /// Starts an epoch.
    pub fn iter(&self) -> DatasetIter<E> {
        DatasetIter {
            pipeline: self.pipeline.clone(),
            stream: build(&self.pipeline, self.pipeline.stages.len()),
            _element: PhantomData,
        }
    }
}

impl<E: Element> IntoIterator for &Dataset<E> {
    type Item = E;
    type IntoIter = DatasetIter<E>;
    fn into_iter(self) -> DatasetIter<E> {
        self.iter()
    }
}

/// One epoch of a [`Dataset`].
pub struct DatasetIter<E> {
    pipeline: Arc<Pipeline>,
    stream: Stream,
    _element: PhantomData<fn() -> E>,
}

impl<E: Element> Iterator for DatasetIter<E> {
    type Item = E;
    fn next(&mut self) -> Option<E> {
        let item = self.stream.next()?;
        Some(E::from_parts(materialize(&self.pipeline, item)))
    }
}

fn index_tensor(rows: &[usize]) -> Tensor {
    Tensor::from_vec(rows.iter().map(|&r| r as i64).collect(), &[rows.len()]).expect("1-D indices")
}

/// The tensors of an item (a row is gathered from each source column).
fn materialize(p: &Pipeline, item: Item) -> Vec<Tensor> {
    match item {
        Item::Value(v) => v,
        Item::Row(r) => {
            let idx = Tensor::from_vec(vec![r as i64], &[]).expect("scalar index");
            p.columns.iter().map(|c| c.gather(&idx, 0)).collect()
        }
    }
}

/// Stacks items into one batch: rows by one gather per column, values by concatenation.
fn stack(p: &Pipeline, items: Vec<Item>) -> Vec<Tensor> {
    if items.iter().all(|i| matches!(i, Item::Row(_))) {
        let rows: Vec<usize> = items
            .iter()
            .map(|i| if let Item::Row(r) = i { *r } else { 0 })
            .collect();
        let idx = index_tensor(&rows);
        return p.columns.iter().map(|c| c.gather(&idx, 0)).collect();
    }
    let values: Vec<Vec<Tensor>> = items.into_iter().map(|i| materialize(p, i)).collect();
    (0..values[0].len())
        .map(|k| {
            let parts: Vec<Tensor> = values.iter().map(|v| v[k].expand_dims(0)).collect();
            let refs: Vec<&Tensor> = parts.iter().collect();
            Tensor::concat(&refs, 0)
        })
        .collect()
}

/// The stream of the first `upto` stages, started as a new epoch.
fn build(p: &Arc<Pipeline>, upto: usize) -> Stream {
    if upto == 0 {
        return Box::new((0..p.rows).map(Item::Row));
    }
    let upstream = || build(p, upto - 1);
    match &p.stages[upto - 1] {
        Stage::Shuffle {
            buffer,
            seed,
            epochs,
        } => {
            let epoch = epochs.fetch_add(1, Ordering::Relaxed);
            let rng = ChaCha8Rng::seed_from_u64(mix(*seed, epoch));
            let upstream = upstream();
            // The buffer grows as it fills: a `buffer` at least the data's size (even
            // `usize::MAX`) only ever holds the data, i.e. it is a full shuffle.
            let hint = upstream.size_hint().1.unwrap_or(usize::MAX);
            Box::new(Shuffle {
                upstream,
                buffer: Vec::with_capacity((*buffer).min(hint).min(SHUFFLE_PREALLOC)),
                cap: (*buffer).max(1),
                rng,
            })
        }
        Stage::Batch {
            size,
            drop_remainder,
        } => {
            let (size, drop) = (*size, *drop_remainder);
            let pipeline = p.clone();
            let mut up = upstream();
            Box::new(std::iter::from_fn(move || {
                let items: Vec<Item> = up.by_ref().take(size).collect();
                if items.is_empty() || (drop && items.len() < size) {
                    return None;
                }
                Some(Item::Value(stack(&pipeline, items)))
            }))
        }
        Stage::Repeat { count } => {
            let (pipeline, count) = (p.clone(), *count);
            let mut round = 0usize;
            let mut current: Option<Stream> = None;
            let mut yielded = false;
            Box::new(std::iter::from_fn(move || loop {
                if let Some(s) = current.as_mut() {
                    if let Some(item) = s.next() {
                        yielded = true;
                        return Some(item);
                    }
                    if !yielded {
                        return None; // an empty round would repeat forever
                    }
                }
                if count.is_some_and(|c| round >= c) {
                    return None;
                }
                current = Some(build(&pipeline, upto - 1));
                round += 1;
                yielded = false;
            }))
        }
        Stage::Map(f) => {
            let (f, pipeline) = (f.clone(), p.clone());
            Box::new(upstream().map(move |item| Item::Value(f(materialize(&pipeline, item)))))
        }
        Stage::Take(n) => Box::new(upstream().take(*n)),
        Stage::Shard { num, index } => {
            let (num, index) = (*num, *index);
            let mut up = upstream();
            // one item of each complete group of `num`; an incomplete last group ends it
            Box::new(std::iter::from_fn(move || {
                let mut pick = None;
                for k in 0..num {
                    let item = up.next()?;
                    if k == index {
                        pick = Some(item);
                    }
                }
                pick
            }))
        }
        Stage::Prefetch(n) => Box::new(Prefetch::start(upstream(), *n)),
    }
}

/// Seed of epoch `epoch` of a shuffle seeded `seed`.
fn mix(seed: u64, epoch: u64) -> u64 {
    let mut z = seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// At most this many buffer slots are allocated up front by a shuffle stage.
const SHUFFLE_PREALLOC: usize = 1 << 12;

struct Shuffle {
    upstream: Stream,
    buffer: Vec<Item>,
    cap: usize,
    rng: ChaCha8Rng,
}

impl Iterator for Shuffle {
    type Item = Item;
    fn next(&mut self) -> Option<Item> {
        while self.buffer.len() < self.cap {
            match self.upstream.next() {
                Some(item) => self.buffer.push(item),
                None => break,
            }
        }
        if self.buffer.is_empty() {
            return None;
        }
        let i = self.rng.gen_range(0..self.buffer.len());
        Some(self.buffer.swap_remove(i))
    }
}

struct Prefetch {
    rx: Option<Receiver<Item>>,
    worker: Option<JoinHandle<()>>,
}

impl Prefetch {
    fn start(mut upstream: Stream, n: usize) -> Prefetch {
        let (tx, rx) = sync_channel(n);
        let worker = std::thread::Builder::new()
            .name("tapeflow-prefetch".into())
            .spawn(move || {
                for item in upstream.by_ref() {
                    if tx.send(item).is_err() {
                        break; // the consumer stopped early
                    }
                }
            })
            .expect("spawn the prefetch thread");
        Prefetch {
            rx: Some(rx),
            worker: Some(worker),
        }
    }
}

impl Iterator for Prefetch {
    type Item = Item;
    fn next(&mut self) -> Option<Item> {
        match self.rx.as_ref()?.recv() {
            Ok(item) => Some(item),
            Err(_) => {
                self.rx = None;
                if let Some(w) = self.worker.take() {
                    if let Err(panic) = w.join() {
                        std::panic::resume_unwind(panic);
                    }
                }
                None
            }
        }
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        // closing the channel first lets a blocked producer finish
        self.rx = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}
