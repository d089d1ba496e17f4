//! Training is seeded, reproducible bit for bit, and actually learns.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use gauntlet_core::NoProgress;
use gauntlet_data::{load, Dataset, LoadOptions, Split};
use gauntlet_models::Arch;
use gauntlet_train::{train, OptimizerKind, TrainConfig};

fn data(split: Split, limit: usize) -> Dataset {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/mnist-5k");
    load(
        &path,
        &LoadOptions {
            split,
            limit: Some(limit),
            num_classes: None,
        },
    )
    .unwrap()
}

fn small_config(seed: u64) -> TrainConfig {
    TrainConfig {
        arch: Arch::Mlp,
        epochs: 2,
        batch_size: 32,
        seed,
        ..TrainConfig::default()
    }
}

#[test]
fn seeded_training_is_reproducible_bit_for_bit() {
    let (train_set, test_set) = (data(Split::Train, 600), data(Split::Test, 200));
    let (a, history_a) = train(&small_config(5), &train_set, &test_set, &NoProgress).unwrap();
    let (b, history_b) = train(&small_config(5), &train_set, &test_set, &NoProgress).unwrap();
    assert_eq!(a.to_safetensors().unwrap(), b.to_safetensors().unwrap());
    for (x, y) in history_a.iter().zip(&history_b) {
        assert_eq!(
            (x.train_loss, x.train_accuracy, x.test_accuracy),
            (y.train_loss, y.train_accuracy, y.test_accuracy)
        );
    }
    let (c, _) = train(&small_config(6), &train_set, &test_set, &NoProgress).unwrap();
    assert_ne!(
        a.to_safetensors().unwrap(),
        c.to_safetensors().unwrap(),
        "a different seed must give different weights"
    );
}

#[test]
fn training_learns_and_the_loss_falls() {
    let (train_set, test_set) = (data(Split::Train, 1000), data(Split::Test, 300));
    let config = TrainConfig {
        epochs: 3,
        ..small_config(1)
    };
    let (_, history) = train(&config, &train_set, &test_set, &NoProgress).unwrap();
    assert_eq!(history.len(), 3);
    assert!(history[2].train_loss < history[0].train_loss, "{history:?}");
    // 10 classes: chance is 10%; an MLP on 1000 digits reaches well over 80%.
    assert!(history[2].test_accuracy > 0.8, "{history:?}");
}

#[test]
fn sgd_with_momentum_also_learns() {
    let (train_set, test_set) = (data(Split::Train, 1000), data(Split::Test, 300));
    let config = TrainConfig {
        optimizer: OptimizerKind::Sgd,
        learning_rate: 0.05,
        ..small_config(2)
    };
    let (_, history) = train(&config, &train_set, &test_set, &NoProgress).unwrap();
    assert!(history[1].test_accuracy > 0.75, "{history:?}");
}

#[test]
fn bad_configuration_is_rejected_before_training() {
    let (train_set, test_set) = (data(Split::Train, 10), data(Split::Test, 10));
    for config in [
        TrainConfig {
            epochs: 0,
            ..small_config(1)
        },
        TrainConfig {
            batch_size: 0,
            ..small_config(1)
        },
        TrainConfig {
            learning_rate: -1.0,
            ..small_config(1)
        },
        TrainConfig {
            learning_rate: f64::NAN,
            ..small_config(1)
        },
        TrainConfig {
            momentum: 1.5,
            ..small_config(1)
        },
    ] {
        let err = train(&config, &train_set, &test_set, &NoProgress)
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid training configuration"), "{err}");
    }
    let err = train(
        &TrainConfig {
            arch: Arch::CifarCnn,
            ..small_config(1)
        },
        &train_set,
        &test_set,
        &NoProgress,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("[3, 32, 32]"), "{err}");
}

#[test]
fn a_learning_rate_that_explodes_is_reported_as_divergence() {
    let (train_set, test_set) = (data(Split::Train, 400), data(Split::Test, 10));
    let config = TrainConfig {
        learning_rate: 1e12,
        optimizer: OptimizerKind::Sgd,
        ..small_config(3)
    };
    let err = train(&config, &train_set, &test_set, &NoProgress)
        .unwrap_err()
        .to_string();
    assert!(err.contains("diverged"), "{err}");
}
