//! A fast end-to-end run on real MNIST: a few hundred training images, a few epochs of
//! the tutorial's MLP with a compiled `train_step`, and accuracy on held-out test images
//! far above chance (0.1). The full ≥ 0.97 run is the `mnist` example.

use std::time::Instant;
use tapeflow::data::Dataset;
use tapeflow::nn::{
    input, Activation, Adam, Dense, FitOptions, Layer, Loss, Mean, Metric, Model, Optimizer,
    SparseCategoricalAccuracy, SparseCategoricalCrossentropy,
};
use tapeflow::{function, DType, GradientTape, Tensor};

fn first_rows(t: &Tensor, n: usize) -> Tensor {
    t.gather(&Tensor::arange(0, n as i64, DType::I64), 0)
}

fn mlp() -> Model {
    let inputs = input(&[784]);
    let x = Dense::new(64)
        .activation(Activation::Relu)
        .apply(&inputs)
        .unwrap();
    let x = Dense::new(64)
        .activation(Activation::Relu)
        .apply(&x)
        .unwrap();
    let outputs = Dense::new(10).apply(&x).unwrap();
    Model::new(&inputs, &outputs).unwrap()
}

#[test]
fn a_few_hundred_mnist_samples_train_well_above_chance() {
    let start = Instant::now();
    let ((x_train, y_train), (x_test, y_test)) = tapeflow::datasets::mnist::load_data().unwrap();
    let (x_train, x_test) = (x_train / 255.0, x_test / 255.0);
    let x_train = first_rows(&x_train, 800).reshape(&[800, 784]);
    let y_train = first_rows(&y_train, 800);
    let x_test = first_rows(&x_test, 500).reshape(&[500, 784]);
    let y_test = first_rows(&y_test, 500);

    // the custom loop of the tutorials, compiled
    let model = mlp();
    let loss_object = SparseCategoricalCrossentropy::from_logits(true);
    let optimizer = Adam::default();
    let (m, o) = (model.clone(), optimizer.clone());
    let train_step = function(move |images: &Tensor, labels: &Tensor| {
        let tape = GradientTape::new();
        let (loss, logits) = tape.record(|| -> tapeflow::Result<(Tensor, Tensor)> {
            let logits = m.call(images, true)?;
            Ok((loss_object.call(labels, &logits)?, logits))
        })?;
        let vars = m.trainable_variables();
        let grads = tape.gradient(&loss, &vars)?;
        o.apply_gradients(&grads, &vars)?;
        Ok((loss, logits))
    });
    let train_ds = Dataset::from_tensor_slices((x_train.clone(), y_train.clone()))
        .unwrap()
        .shuffle(800, 0)
        .batch(32);
    let train_loss = Mean::new("train_loss");
    let train_acc = SparseCategoricalAccuracy::new();
    let mut losses = Vec::new();
    for _epoch in 0..5 {
        train_loss.reset_state();
        train_acc.reset_state();
        for (images, labels) in &train_ds {
            let (loss, logits) = train_step.call(&images, &labels).unwrap();
            train_loss.update(&loss).unwrap();
            train_acc.update(&labels, &logits).unwrap();
        }
        losses.push(train_loss.result());
    }
    assert_eq!(
        train_step.trace_count(),
        1,
        "800 = 25 full batches: one signature"
    );
    assert!(losses[4] < losses[0] * 0.5, "{losses:?}");
    let test_acc = SparseCategoricalAccuracy::new();
    test_acc
        .update(&y_test, &model.call(&x_test, false).unwrap())
        .unwrap();
    eprintln!(
        "custom loop: losses {losses:?}, test accuracy {:.3}",
        test_acc.result()
    );
    assert!(
        test_acc.result() > 0.75,
        "custom loop: test accuracy {}",
        test_acc.result()
    );

    // model.compile + model.fit on the same data
    let model = mlp();
    model
        .compile(
            SparseCategoricalCrossentropy::from_logits(true),
            Adam::default(),
            &["accuracy"],
        )
        .unwrap();
    let h = model
        .fit(
            &x_train,
            &y_train,
            FitOptions::new(5, 32)
                .validation_data(&x_test, &y_test)
                .verbose(0),
        )
        .unwrap();
    let val = h.get("val_accuracy").unwrap();
    eprintln!(
        "fit: validation accuracy per epoch {val:?} ({:.1}s in all)",
        start.elapsed().as_secs_f64()
    );
    assert!(val[4] > 0.75, "fit: validation accuracy {val:?}");
    assert!(
        start.elapsed().as_secs_f64() < 60.0,
        "took {:?}",
        start.elapsed()
    );
}
