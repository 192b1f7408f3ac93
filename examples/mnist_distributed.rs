//! MNIST data-parallel over MPI ranks: the `mnist` example's MLP 784-64-64-10, trained
//! the Horovod way.
//!
//! ```text
//! OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
//!   mpirun -np 2 --oversubscribe cargo run --release --features mpi --example mnist_distributed
//! ```
//!
//! (The two variables only matter when running as root; `--oversubscribe` lets 2 ranks
//! run on fewer than 2 free cores. `-- --epochs 2` for a shorter run.)
//!
//! What Horovod's `tensorflow2_mnist.py` does, in tapeflow: `hvd.init()`
//! ([`distributed::init`]), each rank reads its shard of every epoch's shuffle
//! ([`Dataset::shard`]), a [`DistributedGradientTape`] averages the gradients over the
//! ranks inside the compiled `train_step` (the all-reduces are graph ops, packed into
//! one bucket here and started as soon as the gradients are ready), the learning rate is
//! scaled by the number of ranks, `broadcast_variables` makes every rank start from rank
//! 0's weights, and only rank 0 prints. The test accuracy is each rank's accuracy on its
//! half of the test set, averaged over the ranks. Ends with `test_accuracy = 0.9xxx`.

use std::time::Instant;
use tapeflow::data::Dataset;
use tapeflow::distributed::{self, DistributedGradientTape};
use tapeflow::nn::{
    input_named, Activation, Adam, Dense, Layer, Loss, Mean, Metric, Model, Optimizer,
    SparseCategoricalAccuracy, SparseCategoricalCrossentropy,
};
use tapeflow::{function_with_signature, DType, Dim, Result, Tensor, TensorSpec};

fn build_model() -> Result<Model> {
    let inputs = input_named(&[784], "digits");
    let x = Dense::new(64).activation(Activation::Relu).apply(&inputs)?;
    let x = Dense::new(64).activation(Activation::Relu).apply(&x)?;
    let outputs = Dense::new(10).named("predictions").apply(&x)?;
    Model::new(&inputs, &outputs)
}

fn epochs_from_args() -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--epochs")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

fn main() -> Result<()> {
    let start = Instant::now();
    let _mpi = distributed::init()?; // hvd.init(); MPI shuts down when it is dropped
    let (ranks, rank) = (distributed::size(), distributed::rank());
    let lead = rank == 0;
    let epochs = epochs_from_args();

    let ((x_train, y_train), (x_test, y_test)) = tapeflow::datasets::mnist::load_data()?;
    let (x_train, x_test) = (x_train / 255.0, x_test / 255.0);
    let x_train = x_train.reshape(&[x_train.shape()[0], 784]);
    let x_test = x_test.reshape(&[x_test.shape()[0], 784]);
    // every rank shuffles with one seed (one permutation per epoch) and takes its shard
    let train_ds = Dataset::from_tensor_slices((x_train, y_train))?
        .shuffle(60000, 42)
        .shard(ranks, rank)
        .batch(32)
        .prefetch(4);
    let test_ds = Dataset::from_tensor_slices((x_test, y_test))?
        .shard(ranks, rank)
        .batch(500);
    if lead {
        println!("ranks = {ranks}");
        println!(
            "each rank: {} train batches of 32 per epoch, {} test batches",
            train_ds.cardinality().unwrap_or(0),
            test_ds.cardinality().unwrap_or(0)
        );
    }

    let model = build_model()?;
    // hvd.broadcast_variables(model.variables, root_rank=0)
    distributed::broadcast_variables(&model.variables(), 0)?;
    let loss_object = SparseCategoricalCrossentropy::from_logits(true);
    // Horovod's recipe: the global batch grows with the ranks, so does the learning rate
    let optimizer = Adam::new(1e-3 * ranks as f64);

    let batch = Dim::sym("batch");
    let signature = [
        TensorSpec::with_dims(&[batch, 784.into()], DType::F32),
        TensorSpec::with_dims(&[batch], DType::I64),
    ];
    let (m, opt) = (model.clone(), optimizer.clone());
    let train_step = function_with_signature(
        move |images: &Tensor, labels: &Tensor| {
            let tape = DistributedGradientTape::new();
            let (loss, predictions) = tape.record(|| -> Result<(Tensor, Tensor)> {
                let predictions = m.call(images, true)?;
                Ok((loss_object.call(labels, &predictions)?, predictions))
            })?;
            let vars = m.trainable_variables();
            let gradients = tape.gradient(&loss, &vars)?; // averaged over the ranks
            opt.apply_gradients(&gradients, &vars)?;
            Ok((loss, predictions))
        },
        &signature,
    );
    let test_model = model.clone();
    let test_step = function_with_signature(
        move |images: &Tensor, labels: &Tensor| {
            let predictions = test_model.call(images, false)?;
            Ok((loss_object.call(labels, &predictions)?, predictions))
        },
        &signature,
    );

    let train_loss = Mean::new("train_loss");
    let train_accuracy = SparseCategoricalAccuracy::named("train_accuracy");
    let test_accuracy = SparseCategoricalAccuracy::named("test_accuracy");
    let mut accuracy = 0.0;
    for epoch in 0..epochs {
        let t = Instant::now();
        train_loss.reset_state();
        train_accuracy.reset_state();
        test_accuracy.reset_state();
        let mut steps = 0usize;
        for (images, labels) in &train_ds {
            let (loss, predictions) = train_step.call(&images, &labels)?;
            train_loss.update(&loss)?;
            train_accuracy.update(&labels, &predictions)?;
            steps += 1;
        }
        let step_ms = t.elapsed().as_secs_f64() * 1e3 / steps.max(1) as f64;
        for (images, labels) in &test_ds {
            let (_, predictions) = test_step.call(&images, &labels)?;
            test_accuracy.update(&labels, &predictions)?;
        }
        // the shards are equally large: the mean of the ranks' accuracies is the accuracy
        let logs = Tensor::from_vec(
            vec![
                train_loss.result(),
                train_accuracy.result(),
                test_accuracy.result(),
            ],
            &[3],
        )?;
        let avg = distributed::average(&logs)?.to_vec_f64()?;
        accuracy = avg[2];
        if lead {
            println!(
                "Epoch {}, Loss: {:.4}, Accuracy: {:.2}, Test Accuracy: {:.2}  ({steps} steps per rank, {step_ms:.2} ms/step, {:.1}s)",
                epoch + 1,
                avg[0],
                avg[1] * 100.0,
                avg[2] * 100.0,
                t.elapsed().as_secs_f64()
            );
        }
    }
    if lead {
        let (images, labels) = train_ds.iter().next().expect("a batch");
        let text = train_step.concrete(&[&images, &labels])?.text();
        println!(
            "compiled train_step: {} all_reduce op(s) for {} gradients (tensor fusion)",
            text.matches("all_reduce[op=mean]").count(),
            model.trainable_variables().len()
        );
        println!("total time {:.1}s", start.elapsed().as_secs_f64());
        println!("test_accuracy = {accuracy:.4}");
    }
    Ok(())
}
