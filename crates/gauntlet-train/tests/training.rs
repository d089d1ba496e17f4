//! Training is seeded, reproducible bit for bit, and actually learns.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use gauntlet_core::NoProgress;
use gauntlet_data::{load, Dataset, LoadOptions, Split};
use gauntlet_models::Arch;
use gauntlet_models::Network;
use gauntlet_train::{AdversarialTraining, EpochStats, OptimizerKind, TrainConfig};

/// The last weights and the history of a run.
fn train(
    config: &TrainConfig,
    train_set: &Dataset,
    test_set: &Dataset,
    observer: &NoProgress,
) -> Result<(Network, Vec<EpochStats>), gauntlet_train::Error> {
    let outcome = gauntlet_train::train(config, train_set, test_set, observer)?;
    Ok((outcome.last, outcome.history))
}

fn data(split: Split, limit: usize) -> Dataset {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/mnist-5k");
    load(
        &path,
        &LoadOptions {
            split,
            limit: Some(limit),
            num_classes: None,
            ..Default::default()
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

/// Robust accuracy of `network` on `data` under PGD-L∞ (20 steps, random start).
fn pgd_robust_accuracy(network: &Network, data: &Dataset, epsilon: f64) -> f64 {
    use gauntlet_core::Classifier;
    let attack = gauntlet_attacks::build_attack(
        "pgd-linf",
        &serde_json::json!({"steps": 20, "step_size": {"relative": 0.125}}),
    )
    .unwrap();
    let (x, y) = data
        .batch(0..data.len(), &candle_core::Device::Cpu)
        .unwrap();
    let labels = y.to_vec1::<u32>().unwrap();
    let clean = network
        .logits(&x)
        .unwrap()
        .argmax(1)
        .unwrap()
        .to_vec1::<u32>()
        .unwrap();
    let outcome = gauntlet_attacks::run_attack(
        attack.as_ref(),
        network,
        &x,
        &gauntlet_attacks::Goal::Untargeted {
            labels: labels.clone(),
        },
        epsilon,
        &gauntlet_core::SeedStream::new(9),
    )
    .unwrap();
    let robust = (0..labels.len())
        .filter(|&i| clean[i] == labels[i] && outcome.predictions[i] == labels[i])
        .count();
    robust as f64 / labels.len() as f64
}

#[test]
fn pgd_adversarial_training_buys_robustness_and_keeps_the_best_checkpoint() {
    let (train_set, test_set) = (data(Split::Train, 1000), data(Split::Test, 200));
    let epsilon = 0.1;
    let standard = small_config(3);
    let adversarial = TrainConfig {
        epochs: 3,
        adversarial: Some(AdversarialTraining::pgd(epsilon, 5)),
        robust_eval_samples: 200,
        robust_eval_steps: 10,
        ..small_config(3)
    };
    let (plain, _) = train(&standard, &train_set, &test_set, &NoProgress).unwrap();
    let outcome = gauntlet_train::train(&adversarial, &train_set, &test_set, &NoProgress).unwrap();
    assert_eq!(outcome.history.len(), 3);
    for epoch in &outcome.history {
        let robust = epoch.robust_accuracy.expect("robust accuracy every epoch");
        assert!((0.0..=epoch.test_accuracy).contains(&robust), "{epoch:?}");
        assert_eq!(epoch.epsilon, Some(epsilon));
    }
    assert!(outcome.warnings.is_empty(), "{:?}", outcome.warnings);
    let best = outcome.best.as_ref().expect("a best checkpoint");
    let best_recorded = outcome
        .history
        .iter()
        .filter_map(|e| e.robust_accuracy)
        .fold(0.0, f64::max);
    assert_eq!(best.robust_accuracy, best_recorded);
    assert_eq!(
        outcome.history[best.epoch - 1].robust_accuracy,
        Some(best.robust_accuracy)
    );
    // The point of it all: an independent PGD-20 finds the adversarially trained
    // MLP much harder to fool than the standard one.
    let robust_plain = pgd_robust_accuracy(&plain, &test_set, epsilon);
    let robust_adversarial = pgd_robust_accuracy(&outcome.last, &test_set, epsilon);
    assert!(
        robust_adversarial > robust_plain + 0.15,
        "adversarial {robust_adversarial} vs standard {robust_plain}"
    );
}

#[test]
fn adversarial_training_is_reproducible_and_warms_up_epsilon() {
    let (train_set, test_set) = (data(Split::Train, 300), data(Split::Test, 100));
    let config = TrainConfig {
        epochs: 2,
        adversarial: Some(AdversarialTraining {
            warmup_epochs: 2.0,
            ..AdversarialTraining::fgsm_rs(0.2)
        }),
        robust_eval_samples: 50,
        ..small_config(4)
    };
    let a = gauntlet_train::train(&config, &train_set, &test_set, &NoProgress).unwrap();
    let b = gauntlet_train::train(&config, &train_set, &test_set, &NoProgress).unwrap();
    assert_eq!(
        a.last.to_safetensors().unwrap(),
        b.last.to_safetensors().unwrap()
    );
    // Linear ramp over two epochs: half-way after the first, full after the second.
    let eps: Vec<f64> = a.history.iter().map(|e| e.epsilon.unwrap()).collect();
    assert!(
        (eps[0] - 0.1).abs() < 1e-12 && (eps[1] - 0.2).abs() < 1e-12,
        "{eps:?}"
    );
}

#[test]
fn bad_adversarial_settings_are_rejected() {
    let (train_set, test_set) = (data(Split::Train, 50), data(Split::Test, 20));
    let cases = [
        AdversarialTraining::pgd(0.0, 10),
        AdversarialTraining::pgd(0.3, 0),
        AdversarialTraining {
            steps: 3,
            ..AdversarialTraining::fgsm_rs(0.3)
        },
        AdversarialTraining {
            warmup_epochs: -1.0,
            ..AdversarialTraining::pgd(0.3, 10)
        },
        // Inputs lie in [0, 1]: ε = 1.5 reaches every image.
        AdversarialTraining::pgd(1.5, 10),
    ];
    for settings in cases {
        let config = TrainConfig {
            adversarial: Some(settings.clone()),
            ..small_config(1)
        };
        let err = train(&config, &train_set, &test_set, &NoProgress)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("invalid training configuration"),
            "{settings:?}: {err}"
        );
    }
}

#[test]
fn an_interrupted_and_resumed_run_ends_with_exactly_the_same_weights() {
    use gauntlet_train::{train_with, RunControl};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (train_set, test_set) = (data(Split::Train, 300), data(Split::Test, 100));
    let config = TrainConfig {
        epochs: 3,
        adversarial: Some(AdversarialTraining::fgsm_rs(0.1)),
        robust_eval_samples: 50,
        ..small_config(8)
    };
    let uninterrupted = gauntlet_train::train(&config, &train_set, &test_set, &NoProgress).unwrap();

    let dir = tempfile::tempdir().unwrap();
    // 300 images in batches of 32: 10 per epoch; stop in the middle of epoch 2.
    let batches = AtomicUsize::new(0);
    let stop = || batches.fetch_add(1, Ordering::SeqCst) >= 15;
    let interrupted = train_with(
        &config,
        &train_set,
        &test_set,
        &NoProgress,
        RunControl {
            checkpoint_dir: Some(dir.path()),
            stop: Some(&stop),
        },
    );
    assert!(
        matches!(
            interrupted,
            Err(gauntlet_train::Error::Interrupted { epochs_done: 1 })
        ),
        "{:?}",
        interrupted.map(|o| o.history.len())
    );
    let control = RunControl {
        checkpoint_dir: Some(dir.path()),
        stop: None,
    };
    let resumed = train_with(&config, &train_set, &test_set, &NoProgress, control).unwrap();
    assert_eq!(
        resumed.last.to_safetensors().unwrap(),
        uninterrupted.last.to_safetensors().unwrap()
    );
    assert_eq!(resumed.history.len(), 3);
    let robust = |o: &gauntlet_train::TrainOutcome| -> Vec<Option<f64>> {
        o.history.iter().map(|e| e.robust_accuracy).collect()
    };
    assert_eq!(robust(&resumed), robust(&uninterrupted));
    let best_bytes = |o: &gauntlet_train::TrainOutcome| {
        o.best
            .as_ref()
            .map(|b| (b.epoch, b.network.to_safetensors().unwrap()))
    };
    assert_eq!(best_bytes(&resumed), best_bytes(&uninterrupted));

    // A finished run resumes to itself without training again.
    let again = train_with(&config, &train_set, &test_set, &NoProgress, control).unwrap();
    assert_eq!(
        again.last.to_safetensors().unwrap(),
        uninterrupted.last.to_safetensors().unwrap()
    );

    // Another configuration or a damaged file is refused with a clear message.
    let other = TrainConfig {
        learning_rate: 0.01,
        ..config.clone()
    };
    let err = train_with(&other, &train_set, &test_set, &NoProgress, control)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("different configuration") && err.contains("learning_rate"),
        "{err}"
    );
    // A checkpoint whose parameters are packed another way (an older engine's)
    // would resume with scrambled weights: refused, naming both packings.
    let file = dir.path().join("checkpoint.safetensors");
    let valid = std::fs::read(&file).unwrap();
    let tag = b"native-graph-1";
    let at = valid
        .windows(tag.len())
        .position(|w| w == tag)
        .expect("the checkpoint names its packing");
    let mut other_packing = valid.clone();
    other_packing[at + tag.len() - 1] = b'0';
    std::fs::write(&file, &other_packing).unwrap();
    let err = train_with(&config, &train_set, &test_set, &NoProgress, control)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("packed as 'native-graph-0'") && err.contains("new checkpoint directory"),
        "{err}"
    );
    std::fs::write(dir.path().join("checkpoint.safetensors"), b"garbage").unwrap();
    let err = train_with(&config, &train_set, &test_set, &NoProgress, control)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a valid checkpoint"), "{err}");
}

#[test]
fn the_shipped_pgd_trained_cnn_is_robust_where_the_standard_one_is_not() {
    let test_set = data(Split::Test, 200);
    let load = |name: &str| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples/models")
            .join(name);
        let (model, _) = gauntlet_models::load_model(
            &path,
            &gauntlet_models::ModelOptions::default(),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        match model {
            gauntlet_models::Model::Network(net) => net,
            gauntlet_models::Model::Onnx(_) => panic!("expected a built-in network"),
        }
    };
    let (hardened, standard) = (
        load("mnist-cnn-pgd-at.safetensors"),
        load("mnist-cnn.safetensors"),
    );
    let clean = gauntlet_eval::evaluate_clean(&hardened, &test_set, 200, &NoProgress).unwrap();
    assert!(clean.accuracy >= 0.96, "clean accuracy {}", clean.accuracy);
    let robust_hardened = pgd_robust_accuracy(&hardened, &test_set, 0.3);
    let robust_standard = pgd_robust_accuracy(&standard, &test_set, 0.3);
    assert!(robust_hardened >= 0.6, "PGD-AT model: {robust_hardened}");
    assert!(robust_standard <= 0.1, "standard model: {robust_standard}");
}

#[test]
fn every_method_trains_reproducibly_and_trades_buys_robustness() {
    let (train_set, test_set) = (data(Split::Train, 1000), data(Split::Test, 200));
    let epsilon = 0.1;
    let methods = [
        AdversarialTraining::pgd(epsilon, 3),
        AdversarialTraining::fgsm_rs(epsilon),
        AdversarialTraining::trades(epsilon, 5),
        AdversarialTraining {
            clean_weight: 0.5,
            ..AdversarialTraining::pgd(epsilon, 3)
        },
    ];
    for settings in methods {
        let config = TrainConfig {
            adversarial: Some(settings.clone()),
            robust_eval_samples: 0,
            ..small_config(12)
        };
        let tiny = data(Split::Train, 96); // three batches
        let a = gauntlet_train::train(&config, &tiny, &test_set, &NoProgress).unwrap();
        let b = gauntlet_train::train(&config, &tiny, &test_set, &NoProgress).unwrap();
        assert_eq!(
            a.last.to_safetensors().unwrap(),
            b.last.to_safetensors().unwrap(),
            "{settings:?}"
        );
        assert!(a.history.iter().all(|e| e.train_loss.is_finite()));
    }
    let trades = TrainConfig {
        epochs: 3,
        adversarial: Some(AdversarialTraining::trades(epsilon, 5)),
        robust_eval_samples: 0,
        ..small_config(3)
    };
    let (plain, _) = train(&small_config(3), &train_set, &test_set, &NoProgress).unwrap();
    let (hardened, _) = train(&trades, &train_set, &test_set, &NoProgress).unwrap();
    let robust_plain = pgd_robust_accuracy(&plain, &test_set, epsilon);
    let robust_trades = pgd_robust_accuracy(&hardened, &test_set, epsilon);
    assert!(
        robust_trades > robust_plain + 0.15,
        "TRADES {robust_trades} vs standard {robust_plain}"
    );
}

#[test]
fn catastrophic_overfitting_of_fgsm_training_is_caught_and_the_good_model_kept() {
    // A constructed case: FGSM-RS at ε = 0.3 with a step of 2ε (Wong et al. use
    // 1.25ε; from 2ε on the random start no longer matters) and a high learning
    // rate. PGD robustness builds up, then collapses while training accuracy
    // against the single step keeps rising. Where the collapse happens depends
    // on the trajectory: after the engine's 5×5 convolutions moved to Winograd
    // (rounding differs in the last bits) it no longer came within 8 epochs at
    // a learning rate of 0.003 (robustness hovered at 15–25%) and 0.002 was
    // used; since session 15 the convolution before a max-pool runs its forward
    // pass on im2col again, 0.002 peaks at 19% robustness (below the 20% the
    // detector needs) and 0.003 collapses as it did originally.
    let (train_set, test_set) = (data(Split::Train, 4000), data(Split::Test, 200));
    let config = TrainConfig {
        arch: Arch::Cnn,
        epochs: 8,
        batch_size: 50,
        learning_rate: 0.003,
        adversarial: Some(AdversarialTraining {
            relative_step_size: 2.0,
            ..AdversarialTraining::fgsm_rs(0.3)
        }),
        robust_eval_samples: 200,
        robust_eval_steps: 10,
        ..TrainConfig::default()
    };
    let outcome = gauntlet_train::train(&config, &train_set, &test_set, &NoProgress).unwrap();
    assert_eq!(outcome.warnings.len(), 1, "{:?}", outcome.history);
    assert!(outcome.warnings[0].contains("catastrophic overfitting"));
    let epochs_run = outcome.history.len();
    assert!(epochs_run < 8, "the run stops early");
    let best = outcome.best.as_ref().unwrap();
    let last_robust = outcome.history[epochs_run - 1].robust_accuracy.unwrap();
    assert!(best.epoch < epochs_run && best.robust_accuracy > 2.0 * last_robust);
}
