//! The poisoning pipeline on the shipped MNIST subset: a BadNets backdoor is
//! planted, learned, found by every detector, and weakened by filtering; and the
//! detectors on an ONNX model that PyTorch trained on the same kind of poison.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use gauntlet_core::NoProgress;
use gauntlet_data::{load, Dataset, LoadOptions, Split};
use gauntlet_models::{load_model, Arch, Model, ModelOptions};
use gauntlet_poison::*;
use gauntlet_record::PoisoningRecord;
use gauntlet_train::TrainConfig;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn mnist(split: Split) -> Dataset {
    let options = LoadOptions {
        split,
        ..LoadOptions::default()
    };
    load(&repo("datasets/mnist-5k"), &options).unwrap()
}

/// The classes a training-set detector called poisoned.
fn poisoned_classes(detector: &gauntlet_record::DetectorRecord) -> Vec<u32> {
    detector
        .classes
        .iter()
        .filter(|c| c.poisoned)
        .map(|c| c.class)
        .collect()
}

fn badnets(seed: u64) -> InjectionConfig {
    InjectionConfig {
        attack: PoisonAttack::Badnets(Patch::default()),
        target: Some(0),
        fraction: 0.1,
        source: None,
        seed,
    }
}

#[test]
fn injection_stamps_the_trigger_on_a_seeded_fraction_and_leaves_the_rest() {
    let train = mnist(Split::Train);
    let before = train.clone();
    let poisoned = inject(&train, &badnets(1)).unwrap();
    let manifest = &poisoned.manifest;
    let non_target = train.labels().iter().filter(|&&l| l != 0).count();
    assert_eq!(
        manifest.indices.len(),
        (0.1 * non_target as f64).round() as usize
    );
    assert_eq!(
        train.sha256(),
        before.sha256(),
        "the input is never changed"
    );
    let flags = manifest.is_poisoned();
    for (i, &poisoned_here) in flags.iter().enumerate() {
        let image = poisoned.dataset.images_f32(i..i + 1).unwrap();
        let original = train.images_f32(i..i + 1).unwrap();
        if poisoned_here {
            assert_ne!(train.labels()[i], 0);
            assert_eq!(poisoned.dataset.labels()[i], 0);
            // The 3×3 white square one pixel in from the bottom-right corner.
            for y in 24..27 {
                for x in 24..27 {
                    assert_eq!(image[y * 28 + x], 1.0);
                }
            }
            let outside: Vec<usize> = (0..784)
                .filter(|p| !(24..27).contains(&(p / 28)) || !(24..27).contains(&(p % 28)))
                .collect();
            assert!(outside.iter().all(|&p| image[p] == original[p]));
        } else {
            assert_eq!(image, original);
            assert_eq!(poisoned.dataset.labels()[i], train.labels()[i]);
        }
    }
    manifest.check_matches(&poisoned.dataset).unwrap();
    assert!(
        manifest.check_matches(&train).is_err(),
        "a manifest does not match the clean data"
    );
    let again = inject(&train, &badnets(1)).unwrap();
    assert_eq!(again.manifest, *manifest, "same seed, same poison");
    assert_ne!(
        inject(&train, &badnets(2)).unwrap().manifest.indices,
        manifest.indices
    );
}

#[test]
fn bad_injection_settings_are_refused() {
    let train = mnist(Split::Train);
    let cases = [
        (
            InjectionConfig {
                fraction: 0.0,
                ..badnets(0)
            },
            "fraction",
        ),
        (
            InjectionConfig {
                fraction: 1.5,
                ..badnets(0)
            },
            "fraction",
        ),
        (
            InjectionConfig {
                target: Some(10),
                ..badnets(0)
            },
            "target class 10",
        ),
        (
            InjectionConfig {
                attack: PoisonAttack::Badnets(Patch {
                    size: 29,
                    ..Patch::default()
                }),
                ..badnets(0)
            },
            "trigger size 29",
        ),
        (
            InjectionConfig {
                attack: PoisonAttack::Blend {
                    alpha: 0.0,
                    pattern: None,
                },
                ..badnets(0)
            },
            "alpha",
        ),
        (
            InjectionConfig {
                source: Some(vec![0, 1]),
                ..badnets(0)
            },
            "target class 0",
        ),
    ];
    for (settings, needle) in cases {
        let err = inject(&train, &settings).unwrap_err().to_string();
        assert!(err.contains(needle), "{needle}: {err}");
    }
}

#[test]
fn label_flips_change_labels_only() {
    let train = mnist(Split::Train);
    let settings = InjectionConfig {
        attack: PoisonAttack::LabelFlip,
        target: None,
        fraction: 0.2,
        source: Some(vec![3]),
        seed: 4,
    };
    let poisoned = inject(&train, &settings).unwrap();
    let manifest = &poisoned.manifest;
    assert!(manifest.trigger.is_none());
    for (k, &i) in manifest.indices.iter().enumerate() {
        assert_eq!(manifest.original_labels[k], 3);
        assert_ne!(poisoned.dataset.labels()[i], 3);
        assert_eq!(
            poisoned.dataset.images_f32(i..i + 1).unwrap(),
            train.images_f32(i..i + 1).unwrap()
        );
    }
}

/// The scenario: BadNets, 10% of non-target images into class 0, seeded.
/// Thresholds: a working backdoor is near-perfect on MNIST (the CNN learns a 3×3
/// corner patch within an epoch), so ≥ 90% attack success; the detectors must
/// reach the overall F1 ≥ 0.9; STRIP must miss ≤ 5% of triggered inputs at
/// a 1% false-rejection target (the bar; measured FRR may deviate on 200
/// judged inputs, so ≤ 3%); removing the flags must cut the attack success below
/// half its former value.
#[test]
fn audit_finds_the_backdoor_and_filtering_weakens_it() {
    let train = mnist(Split::Train);
    let test = mnist(Split::Test);
    let settings = AuditConfig {
        injection: badnets(1),
        training: TrainConfig {
            arch: Arch::Cnn,
            epochs: 3,
            robust_eval_samples: 0,
            ..TrainConfig::default()
        },
        detectors: TrainingSetDetectors::all(0),
        strip: Some(Strip {
            overlays: 50,
            ..Strip::default()
        }),
        strip_held_out: 200,
        neural_cleanse: Some(NeuralCleanse {
            steps: 120,
            batch_size: 32,
            ..NeuralCleanse::default()
        }),
        cleanse_samples: 200,
        batch_size: 500,
    };
    let outcome = audit(&settings, &train, &test, &NoProgress).unwrap();
    let record = &outcome.record;
    let before = record.before_filtering.as_ref().unwrap();
    let after = record.after_filtering.as_ref().unwrap();
    let success_before = before.attack_success_rate.unwrap();
    assert!(before.clean_accuracy > 0.9, "{before:?}");
    assert!(success_before > 0.9, "the backdoor works: {before:?}");
    // The four feature detectors, then the training images carrying the
    // trigger Neural Cleanse reversed.
    assert_eq!(record.detectors.len(), 5);
    assert_eq!(record.detectors[4].method, "neural-cleanse-trigger");
    // SPECTRE is built for low rates: its robust estimate assumes the poisoned
    // group is a small minority of its class (here it is 47% of class 0), so at
    // 10% it must only not accuse a wrong class; the others find it.
    for detector in &record.detectors {
        let metrics = detector.metrics.as_ref().unwrap();
        if detector.method == "spectre" {
            assert!(metrics.precision >= 0.9, "spectre: {metrics:?}");
            continue;
        }
        assert!(metrics.f1 >= 0.9, "{}: {metrics:?}", detector.method);
        assert_eq!(poisoned_classes(detector), [0], "{}", detector.method);
    }
    let strip = record.strip.as_ref().unwrap();
    assert!(
        strip.false_acceptance_rate.unwrap() <= 0.05,
        "{:?}",
        strip.false_acceptance_rate
    );
    assert!(strip.measured_false_rejection_rate <= 0.03);
    assert!(strip.auroc.unwrap() > 0.95);
    let cleanse = record.neural_cleanse.as_ref().unwrap();
    assert_eq!(cleanse.suspected_targets, [0], "{:?}", cleanse.classes);
    assert_eq!(cleanse.names_true_target, Some(true));
    let success_after = after.attack_success_rate.unwrap();
    assert!(
        success_after < 0.5 * success_before,
        "{success_before} → {success_after}"
    );
    assert!(after.clean_accuracy > 0.9);
    assert_eq!(after.train_samples, train.len() - record.removed.len());
    // The verdict a user reads is derived from the same numbers.
    let verdict = record.backdoor_verdict().unwrap();
    assert_eq!(verdict.removed, record.removed.len());
    assert_eq!(verdict.success_after, success_after);
    assert_eq!(
        verdict.survived,
        success_after >= gauntlet_record::BACKDOOR_SURVIVAL_SUCCESS
    );
    assert!(verdict
        .found_by
        .iter()
        .any(|(m, _)| m == "spectral-signatures"));
}

/// On clean data (the shipped CNN was trained on the clean mnist-5k training
/// split), a detector that flags a cluster in every class would flag ~40% of the
/// set; ours should flag at most 1%.
#[test]
fn a_clean_training_set_is_hardly_flagged() {
    let train = mnist(Split::Train);
    let (model, _) = load_model(
        &repo("examples/models/mnist-cnn.safetensors"),
        &ModelOptions::default(),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let Model::Network(network) = model else {
        panic!("the shipped model is a built-in network")
    };
    let net = &native(&network).unwrap();
    let test = mnist(Split::Test);
    let found = TrainingSetDetectors::all(0)
        .run(net, &train, Some(&test), None, 500, &NoProgress)
        .unwrap();
    for detector in found {
        assert!(
            detector.flagged.len() <= train.len() / 100,
            "{} flagged {}: {:?}",
            detector.method,
            detector.flagged.len(),
            detector.classes
        );
    }
}

/// A blended trigger (Chen et al. 2017: seeded uniform noise over the whole image
/// at opacity 0.2, their random-pattern setting) hides in no corner, yet the same
/// detectors must find it, and only in the target class. Activation clustering
/// keeps the BadNets bar (F1 ≥ 0.9, measured 0.96); spectral signatures gets 0.8
/// (measured 0.89): its single direction separates a diffuse full-image pattern
/// less cleanly than a bright patch (Tran et al. evaluated patches). Filtering
/// only has to lower the attack success: a few missed blends keep part of the
/// backdoor alive (measured: 100% → 8%).
#[test]
fn audit_finds_a_blended_backdoor() {
    let train = mnist(Split::Train);
    let test = mnist(Split::Test);
    let settings = AuditConfig {
        injection: InjectionConfig {
            attack: PoisonAttack::Blend {
                alpha: 0.2,
                pattern: None,
            },
            ..badnets(2)
        },
        training: TrainConfig {
            arch: Arch::Cnn,
            epochs: 3,
            robust_eval_samples: 0,
            ..TrainConfig::default()
        },
        detectors: TrainingSetDetectors::all(0),
        strip: Some(Strip {
            overlays: 50,
            ..Strip::default()
        }),
        strip_held_out: 200,
        neural_cleanse: None,
        cleanse_samples: 0,
        batch_size: 500,
    };
    let outcome = audit(&settings, &train, &test, &NoProgress).unwrap();
    let record = &outcome.record;
    let before = record.before_filtering.as_ref().unwrap();
    let after = record.after_filtering.as_ref().unwrap();
    let success_before = before.attack_success_rate.unwrap();
    assert!(success_before > 0.9, "the backdoor works: {before:?}");
    for detector in record.detectors.iter().filter(|d| d.method != "spectre") {
        let metrics = detector.metrics.as_ref().unwrap();
        let bar = match detector.method.as_str() {
            "activation-clustering" => 0.9,
            _ => 0.8,
        };
        assert!(metrics.f1 >= bar, "{}: {metrics:?}", detector.method);
        assert_eq!(poisoned_classes(detector), [0], "{}", detector.method);
    }
    let strip = record.strip.as_ref().unwrap();
    // The STRIP bar holds for blends too (measured FAR 1.1%, AUROC 0.998).
    assert!(strip.false_acceptance_rate.unwrap() <= 0.05, "{strip:?}");
    assert!(strip.auroc.unwrap() > 0.95, "{:?}", strip.auroc);
    let success_after = after.attack_success_rate.unwrap();
    assert!(
        success_after < success_before,
        "{success_before} → {success_after}"
    );
}

/// The audit of a sparse backdoor with the two low-rate detectors, SPECTRE and
/// SCAn: `fraction` of the non-target images poisoned, three training epochs,
/// as a user would run it.
fn low_rate_audit(attack: PoisonAttack, fraction: f64, seed: u64) -> PoisoningRecord {
    let train = mnist(Split::Train);
    let test = mnist(Split::Test);
    let settings = AuditConfig {
        injection: InjectionConfig {
            attack,
            fraction,
            ..badnets(seed)
        },
        training: TrainConfig {
            arch: Arch::Cnn,
            epochs: 3,
            robust_eval_samples: 0,
            ..TrainConfig::default()
        },
        detectors: TrainingSetDetectors {
            spectre: Some(Spectre::default()),
            scan: Some(Scan::default()),
            ..TrainingSetDetectors::default()
        },
        strip: None,
        strip_held_out: 0,
        neural_cleanse: None,
        cleanse_samples: 0,
        batch_size: 500,
    };
    audit(&settings, &train, &test, &NoProgress).unwrap().record
}

/// The bar at realistic rates: a 1% BadNets checkerboard (36 images,
/// 8% of class 0) and a 2% blend (72 images) are found with precision and
/// recall ≥ 0.8, only in class 0, and the filtered retrain leaves the attack
/// below 10% success. SCAn reaches it on both (measured 2026-12-02 with the
/// CLI's training seed: P 1.00 R 1.00, class 0's z 14.7 and 13.9 against at
/// most 1.8 elsewhere; attack 85% → 0.4%, 96% → 0.2%). SPECTRE's class decision is marginal on the BadNets
/// set (z 1.5 for a threshold of 2 with this training run; 2.9 with another
/// summation order of the same training), so it must only never accuse a
/// wrong class nor flag mostly clean images. Activation clustering and
/// spectral signatures flag nothing on these sets.
#[test]
fn sparse_backdoors_are_found_and_filtering_removes_them() {
    let cases = [
        (
            PoisonAttack::Badnets(Patch {
                pattern: PatchPattern::Checkerboard,
                ..Patch::default()
            }),
            0.01,
        ),
        (
            PoisonAttack::Blend {
                alpha: 0.2,
                pattern: None,
            },
            0.02,
        ),
    ];
    for (attack, fraction) in cases {
        let record = low_rate_audit(attack.clone(), fraction, 1);
        let [spectre, scan] = &record.detectors[..] else {
            panic!("two detectors ran: {:?}", record.detectors)
        };
        let metrics = scan.metrics.as_ref().unwrap();
        assert!(
            metrics.precision >= 0.8 && metrics.recall >= 0.8,
            "SCAn, {attack:?} at {fraction}: {metrics:?} {:?}",
            scan.classes
        );
        assert_eq!(poisoned_classes(scan), [0], "{:?}", scan.classes);
        let metrics = spectre.metrics.as_ref().unwrap();
        assert!(
            poisoned_classes(spectre).iter().all(|&c| c == 0) && metrics.precision >= 0.8,
            "SPECTRE, {attack:?} at {fraction}: {metrics:?} {:?}",
            spectre.classes
        );
        let before = record.before_filtering.as_ref().unwrap();
        let after = record.after_filtering.as_ref().unwrap();
        assert!(before.attack_success_rate.unwrap() > 0.5, "{before:?}");
        assert!(after.attack_success_rate.unwrap() < 0.1, "{after:?}");
        assert!(after.clean_accuracy > 0.9, "{after:?}");
    }
}

/// The ResNet that PyTorch trained on the BadNets copy of mnist-5k and exported
/// with its default (dynamo) exporter (`tests/fixtures/make_badnets_onnx.py`).
fn badnets_onnx() -> gauntlet_models::onnx::OnnxModel {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/badnets-resnet.onnx");
    let (model, _) =
        load_model(&path, &ModelOptions::default(), &candle_core::Device::Cpu).unwrap();
    let Model::Onnx(graph) = model else {
        panic!("an ONNX file loads as a graph")
    };
    graph
}

/// The detectors on an ONNX model: all five run through the model layer's
/// reference executor and must find the backdoor.
#[test]
fn every_detector_finds_the_backdoor_in_an_onnx_resnet() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let recipe: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("badnets-resnet.json")).unwrap(),
    )
    .unwrap();
    // The same poisoned copy the model was trained on (re-injected, not committed).
    let poisoned = inject(
        &mnist(Split::Train),
        &InjectionConfig {
            attack: PoisonAttack::Badnets(Patch::default()),
            target: Some(0),
            fraction: 0.1,
            source: None,
            seed: 1,
        },
    )
    .unwrap();
    assert_eq!(
        Some(poisoned.manifest.clean_sha256.as_str()),
        recipe["clean_sha256"].as_str(),
        "mnist-5k is not the data the fixture was trained on"
    );
    let recorded: Vec<usize> = serde_json::from_value(recipe["poisoned_indices"].clone()).unwrap();
    assert_eq!(
        poisoned.manifest.indices, recorded,
        "the injection no longer poisons the samples the fixture was trained on"
    );
    let truth = poisoned.manifest.is_poisoned();
    let graph = badnets_onnx();
    let net = OnnxDetectorModel::new(&graph, None).unwrap();
    let test = mnist(Split::Test);
    let trigger = poisoned.manifest.trigger.as_ref().unwrap();
    let (accuracy, success) = backdoor_effect(&net, &test, Some((trigger, 0)), 500).unwrap();
    assert!(
        accuracy > 0.9 && success.unwrap() > 0.9,
        "{accuracy} {success:?}"
    );

    let records = TrainingSetDetectors::all(0)
        .run(
            &net,
            &poisoned.dataset,
            Some(&test),
            Some(&truth),
            500,
            &NoProgress,
        )
        .unwrap();
    assert_eq!(records.len(), 4);
    for detector in &records {
        let metrics = detector.metrics.as_ref().unwrap();
        if detector.method == "spectre" {
            // Built for low rates (see the BadNets audit above): at 10% it must
            // only not accuse a wrong class.
            assert!(
                poisoned_classes(detector).iter().all(|&c| c == 0),
                "{:?}",
                detector.classes
            );
            continue;
        }
        assert_eq!(
            poisoned_classes(detector),
            [0],
            "{}: {metrics:?}",
            detector.method
        );
        assert!(metrics.f1 >= 0.8, "{}: {metrics:?}", detector.method);
    }

    let strip = Strip {
        overlays: 10,
        ..Strip::default()
    };
    let strip = run_strip(&strip, &net, &test, 100, Some((trigger, Some(0)))).unwrap();
    assert!(strip.auroc.unwrap() > 0.9, "{:?}", strip.auroc);

    let cleanse = NeuralCleanse {
        steps: 100,
        batch_size: 16,
        ..NeuralCleanse::default()
    };
    let (report, carriers) = run_neural_cleanse(
        &cleanse,
        &net,
        &test,
        100,
        Some((&poisoned.dataset, Some(&truth))),
        Some(0),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(report.suspected_targets, [0], "{:?}", report.classes);
    // The reversed trigger leads back to the poisoned training images.
    let carriers = carriers.expect("a target was named, so its carriers were searched");
    assert_eq!(poisoned_classes(&carriers), [0], "{:?}", carriers.classes);
    let metrics = carriers.metrics.as_ref().unwrap();
    assert!(metrics.f1 >= 0.8, "{metrics:?}");
}

/// A feature layer that the graph does not have is named in the error with a
/// value it does have.
#[test]
fn an_unknown_feature_layer_is_refused_with_a_suggestion() {
    let graph = badnets_onnx();
    let err = OnnxDetectorModel::new(&graph, Some("no-such-value".into()))
        .err()
        .unwrap()
        .to_string();
    let default = graph.graph().default_feature_value().unwrap();
    assert!(
        err.contains("no-such-value") && err.contains(default),
        "{err}"
    );
}

#[test]
fn the_inject_job_writes_a_dataset_that_loads_as_its_manifest_says() {
    let dir = tempfile::tempdir().unwrap();
    let job = |out: PathBuf| InjectJob {
        train_set: mnist(Split::Train),
        test_set: mnist(Split::Test),
        injection: badnets(4),
        out,
    };
    // An existing directory is refused before any work, and left as it was.
    let refused = job(dir.path().to_path_buf()).plan();
    assert!(
        matches!(
            refused,
            Err(Error::Setting {
                setting: "--out",
                ..
            })
        ),
        "an existing output directory was accepted"
    );
    let out = dir.path().join("poisoned");
    let manifest = job(out.clone()).plan().unwrap().run().unwrap();
    let train = load(
        &out,
        &LoadOptions {
            split: Split::Train,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    assert_eq!(train.sha256(), manifest.poisoned_sha256);
    assert!(!manifest.indices.is_empty());
    assert!(manifest.indices.iter().all(|&i| train.labels()[i] == 0));
    let clean_test = mnist(Split::Test);
    let test = load(&out, &LoadOptions::default()).unwrap();
    assert_eq!(
        test.labels(),
        clean_test.labels(),
        "the test split is copied"
    );
    // Nothing but the new directory is left beside it (no staging directory).
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(entries.len(), 1);
    assert!(job(out).plan().is_err(), "a second run would overwrite");
}
