//! `Dataset` pipelines and tensor-level MNIST through the public API: deterministic
//! shuffling that covers every element once per epoch, batching, repeat, map, prefetch,
//! and the errors of bad inputs and damaged MNIST files.

use std::path::PathBuf;
use tapeflow::data::idx::{default_mnist_dir, load_mnist_raw};
use tapeflow::data::Dataset;
use tapeflow::{DType, Tensor};

fn ids(n: usize) -> (Tensor, Tensor) {
    let x = Tensor::from_vec((0..n * 2).map(|v| v as f32).collect(), &[n, 2]).unwrap();
    let y = Tensor::from_vec((0..n as i64).collect(), &[n]).unwrap();
    (x, y)
}

/// The label order of one epoch (labels are the element ids), checking rows stay paired.
fn epoch(ds: &Dataset<(Tensor, Tensor)>) -> Vec<i64> {
    let mut out = Vec::new();
    for (x, y) in ds {
        let xv = x.to_vec_f32().unwrap();
        let yv = y.to_vec_i64().unwrap();
        for (row, id) in xv.chunks(2).zip(&yv) {
            assert_eq!(
                row,
                [(*id * 2) as f32, (*id * 2 + 1) as f32],
                "x and y rows stay together"
            );
        }
        out.extend(yv);
    }
    out
}

#[test]
fn shuffle_covers_every_element_once_per_epoch_for_any_buffer() {
    let n = 103;
    for buffer in [1, 2, 10, 64, 103, 500] {
        let ds = Dataset::from_tensor_slices(ids(n))
            .unwrap()
            .shuffle(buffer, 5)
            .batch(10);
        for _ in 0..3 {
            let mut order = epoch(&ds);
            assert_eq!(order.len(), n);
            order.sort();
            assert_eq!(order, (0..n as i64).collect::<Vec<_>>(), "buffer {buffer}");
        }
    }
    // buffer 1 keeps the order
    let ds = Dataset::from_tensor_slices(ids(n))
        .unwrap()
        .shuffle(1, 5)
        .batch(10);
    assert_eq!(epoch(&ds), (0..n as i64).collect::<Vec<_>>());
}

#[test]
fn shuffle_is_deterministic_per_seed_and_reshuffles_each_epoch() {
    let make = |seed| {
        Dataset::from_tensor_slices(ids(50))
            .unwrap()
            .shuffle(50, seed)
            .batch(7)
    };
    let (a, b, c) = (make(1), make(1), make(2));
    let a1 = epoch(&a);
    let a2 = epoch(&a);
    assert_eq!(a1, epoch(&b), "same seed, same first epoch");
    assert_eq!(a2, epoch(&b), "same seed, same second epoch");
    assert_ne!(a1, a2, "a new order each epoch");
    assert_ne!(a1, epoch(&c), "another seed, another order");
    assert_ne!(a1, (0..50).collect::<Vec<_>>());
}

#[test]
fn batch_keeps_or_drops_the_remainder() {
    let ds = Dataset::from_tensor_slices(ids(10)).unwrap();
    let sizes: Vec<usize> = ds
        .clone()
        .batch(4)
        .iter()
        .map(|(x, _)| x.shape()[0])
        .collect();
    assert_eq!(sizes, [4, 4, 2]);
    assert_eq!(ds.clone().batch(4).cardinality(), Some(3));
    let sizes: Vec<usize> = ds
        .clone()
        .batch_drop_remainder(4)
        .iter()
        .map(|(x, _)| x.shape()[0])
        .collect();
    assert_eq!(sizes, [4, 4]);
    assert_eq!(ds.clone().batch_drop_remainder(4).cardinality(), Some(2));
    let (x, y) = ds.batch(3).iter().next().unwrap();
    assert_eq!((x.shape(), y.shape()), (&[3usize, 2][..], &[3usize][..]));
    assert_eq!(y.to_vec_i64().unwrap(), vec![0, 1, 2]);
}

#[test]
fn unbatched_elements_are_single_rows() {
    let (x, _) = ids(3);
    let rows: Vec<Vec<f32>> = Dataset::from_tensor_slices(x)
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r.shape(), &[2]);
            r.to_vec_f32().unwrap()
        })
        .collect();
    assert_eq!(rows, vec![vec![0.0, 1.0], vec![2.0, 3.0], vec![4.0, 5.0]]);
}

#[test]
fn repeat_reshuffles_each_round_and_take_stops_infinite_streams() {
    let ds = Dataset::from_tensor_slices(ids(6))
        .unwrap()
        .shuffle(6, 3)
        .repeat_n(3)
        .batch(6);
    assert_eq!(ds.cardinality(), Some(3));
    let rounds: Vec<Vec<i64>> = ds.iter().map(|(_, y)| y.to_vec_i64().unwrap()).collect();
    assert_eq!(rounds.len(), 3);
    for r in &rounds {
        let mut s = r.clone();
        s.sort();
        assert_eq!(s, (0..6).collect::<Vec<_>>());
    }
    assert!(rounds[0] != rounds[1] || rounds[1] != rounds[2]);
    let inf = Dataset::from_tensor_slices(ids(4))
        .unwrap()
        .repeat()
        .batch(3)
        .take(5);
    assert_eq!(inf.cardinality(), Some(5));
    let all: Vec<i64> = inf
        .iter()
        .flat_map(|(_, y)| y.to_vec_i64().unwrap())
        .collect();
    assert_eq!(all, [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2]);
    assert_eq!(
        Dataset::from_tensor_slices(ids(4))
            .unwrap()
            .repeat()
            .cardinality(),
        None
    );
    // an empty repeated dataset ends instead of spinning
    let empty = Dataset::from_tensor_slices(ids(2))
        .unwrap()
        .batch_drop_remainder(5)
        .repeat();
    assert_eq!(empty.iter().count(), 0);
}

#[test]
fn map_works_on_elements_and_on_batches() {
    let per_element = Dataset::from_tensor_slices(ids(5))
        .unwrap()
        .map(|(x, y): (Tensor, Tensor)| (x * 2.0f32, y))
        .batch(2);
    let first = per_element.iter().next().unwrap();
    assert_eq!(first.0.to_vec_f32().unwrap(), vec![0.0, 2.0, 4.0, 6.0]);
    assert_eq!(first.1.to_vec_i64().unwrap(), vec![0, 1]);
    let per_batch = Dataset::from_tensor_slices(ids(5))
        .unwrap()
        .batch(2)
        .map(|(x, y): (Tensor, Tensor)| x.sum(&[1], false) + y.cast(DType::F32));
    let sums: Vec<f32> = per_batch
        .iter()
        .flat_map(|t| t.to_vec_f32().unwrap())
        .collect();
    assert_eq!(sums, vec![1.0, 6.0, 11.0, 16.0, 21.0]);
}

#[test]
fn prefetch_yields_the_same_stream_and_stops_cleanly() {
    let plain = Dataset::from_tensor_slices(ids(40))
        .unwrap()
        .shuffle(40, 9)
        .batch(6);
    let fetched = Dataset::from_tensor_slices(ids(40))
        .unwrap()
        .shuffle(40, 9)
        .batch(6)
        .prefetch(2);
    for _ in 0..2 {
        assert_eq!(epoch(&plain), epoch(&fetched));
    }
    // dropping an epoch early does not hang the background thread
    let mut it = fetched.iter();
    assert!(it.next().is_some());
    drop(it);
    assert_eq!(epoch(&fetched).len(), 40);
}

#[test]
#[should_panic(expected = "boom in map")]
fn a_panic_in_a_prefetched_map_reaches_the_consumer() {
    let ds = Dataset::from_tensor_slices(ids(4))
        .unwrap()
        .map(|(x, y): (Tensor, Tensor)| {
            if y.to_vec_i64().unwrap()[0] == 2 {
                panic!("boom in map");
            }
            (x, y)
        })
        .prefetch(1);
    for _ in &ds {}
}

#[test]
fn from_tensor_slices_rejects_mismatched_inputs() {
    let e = Dataset::from_tensor_slices((Tensor::zeros(&[3, 2]), Tensor::zeros(&[4])))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("3 and 4 rows"), "{e}");
    let e = Dataset::from_tensor_slices(Tensor::scalar(1.0))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("scalar"), "{e}");
}

#[test]
fn mnist_load_data_gives_the_idx_bytes_and_integer_labels_like_keras() {
    let ((x_train, y_train), (x_test, y_test)) = tapeflow::datasets::mnist::load_data().unwrap();
    assert_eq!(
        (x_train.shape(), x_train.dtype()),
        (&[60000usize, 28, 28][..], DType::F32)
    );
    assert_eq!(
        (y_train.shape(), y_train.dtype()),
        (&[60000usize][..], DType::I64)
    );
    assert_eq!(x_test.shape(), &[10000, 28, 28]);
    assert_eq!(y_test.shape(), &[10000]);
    // every value is the IDX byte itself (Keras' uint8 pixels 0..=255), not byte / 255
    let raw = load_mnist_raw(&default_mnist_dir()).unwrap();
    for (t, idx) in [
        (&x_train, &raw.train_images),
        (&x_test, &raw.test_images),
        (&y_train, &raw.train_labels),
        (&y_test, &raw.test_labels),
    ] {
        let want: Vec<f64> = idx.data.iter().map(|&b| f64::from(b)).collect();
        assert!(
            t.to_vec_f64().unwrap() == want,
            "values differ from the IDX bytes"
        );
    }
    let px = x_test.to_vec_f32().unwrap();
    assert!(px.contains(&255.0) && px.contains(&0.0));
    // the tutorials' `x_test / 255.0` then gives [0, 1] with full ink at exactly 1
    let scaled = (x_test / 255.0).to_vec_f32().unwrap();
    assert!(scaled.iter().all(|v| (0.0..=1.0).contains(v)) && scaled.contains(&1.0));
    // the first test digit is a 7, the first training digit a 5 (as everyone knows)
    assert_eq!(y_test.to_vec_i64().unwrap()[0], 7);
    assert_eq!(y_train.to_vec_i64().unwrap()[0], 5);
}

#[test]
fn a_truncated_mnist_file_is_an_error_naming_it() {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("tapeflow-data-mnist-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ] {
        let bytes = std::fs::read(default_mnist_dir().join(f)).unwrap();
        let keep = if f.starts_with("t10k-labels") {
            bytes.len() / 2
        } else {
            bytes.len()
        };
        std::fs::write(dir.join(f), &bytes[..keep]).unwrap();
    }
    let e = tapeflow::datasets::mnist::load_data_from(&dir)
        .expect_err("truncated file")
        .to_string();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(e.contains("t10k-labels-idx1-ubyte.gz"), "{e}");
}
