//! The detectors on an ONNX model: a ResNet that PyTorch trained on the BadNets
//! copy of mnist-5k and exported with its default (dynamo) exporter
//! (`tests/fixtures/make_badnets_onnx.py`). All four detectors run through the
//! model layer's reference executor and must find the backdoor.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use gauntlet_core::NoProgress;
use gauntlet_data::{load, Dataset, LoadOptions, Split};
use gauntlet_models::{load_model, Model, ModelOptions};
use gauntlet_poison::*;

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
    let (model, _) = load_model(
        &fixtures.join("badnets-resnet.onnx"),
        &ModelOptions::default(),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let Model::Onnx(graph) = &model else {
        panic!("an ONNX file loads as a graph")
    };
    let net = OnnxDetectorModel::new(graph, None).unwrap();
    let test = mnist(Split::Test);
    let trigger = poisoned.manifest.trigger.as_ref().unwrap();
    let (accuracy, success) = backdoor_effect(&net, &test, Some((trigger, 0)), 500).unwrap();
    assert!(
        accuracy > 0.9 && success.unwrap() > 0.9,
        "{accuracy} {success:?}"
    );

    let records = TrainingSetDetectors::all(0)
        .run(&net, &poisoned.dataset, Some(&truth), 500, &NoProgress)
        .unwrap();
    assert_eq!(records.len(), 2);
    for detector in &records {
        let metrics = detector.metrics.as_ref().unwrap();
        let poisoned_classes: Vec<u32> = detector
            .classes
            .iter()
            .filter(|c| c.poisoned)
            .map(|c| c.class)
            .collect();
        assert_eq!(poisoned_classes, [0], "{}: {metrics:?}", detector.method);
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
    let report = run_neural_cleanse(&cleanse, &net, &test, 100, Some(0), &NoProgress).unwrap();
    assert_eq!(report.suspected_targets, [0], "{:?}", report.classes);
}

/// A feature layer that the graph does not have is named in the error with a
/// value it does have.
#[test]
fn an_unknown_feature_layer_is_refused_with_a_suggestion() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let (model, _) = load_model(
        &fixtures.join("badnets-resnet.onnx"),
        &ModelOptions::default(),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let Model::Onnx(graph) = &model else {
        panic!("an ONNX file loads as a graph")
    };
    let err = OnnxDetectorModel::new(graph, Some("no-such-value".into()))
        .err()
        .unwrap()
        .to_string();
    let default = graph.graph().default_feature_value().unwrap();
    assert!(
        err.contains("no-such-value") && err.contains(default),
        "{err}"
    );
}
