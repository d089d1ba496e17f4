//! Clean evaluation on the shipped data and model.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use candle_core::Device;
use gauntlet_core::{NoProgress, SeedStream};
use gauntlet_data::{load, LoadOptions, Split};
use gauntlet_eval::{check_compatible, evaluate_clean};
use gauntlet_models::{load_model, Arch, Model, ModelOptions, Network, Normalization};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn test_split(limit: Option<usize>) -> gauntlet_data::Dataset {
    load(
        &repo("datasets/mnist-5k"),
        &LoadOptions {
            split: Split::Test,
            limit,
            num_classes: None,
            ..Default::default()
        },
    )
    .unwrap()
}

#[test]
fn shipped_cnn_is_accurate_on_the_shipped_test_split() {
    let (model, _) = load_model(
        &repo("examples/models/mnist-cnn.safetensors"),
        &ModelOptions::default(),
        &Device::Cpu,
    )
    .unwrap();
    let data = test_split(None);
    let result = evaluate_clean(&model, &data, 250, &NoProgress).unwrap();
    assert_eq!(result.correct.len(), 1000);
    assert!(
        result.accuracy >= 0.97,
        "shipped CNN accuracy {} < 97%",
        result.accuracy
    );
}

#[test]
fn shipped_mlp_beats_chance_by_far() {
    let (model, _) = load_model(
        &repo("examples/models/mnist-mlp.safetensors"),
        &ModelOptions::default(),
        &Device::Cpu,
    )
    .unwrap();
    let result = evaluate_clean(&model, &test_split(None), 500, &NoProgress).unwrap();
    assert!(
        result.accuracy >= 0.93,
        "shipped MLP accuracy {}",
        result.accuracy
    );
}

#[test]
fn batch_size_does_not_change_the_verdicts() {
    let (model, _) = load_model(
        &repo("examples/models/mnist-mlp.safetensors"),
        &ModelOptions::default(),
        &Device::Cpu,
    )
    .unwrap();
    let data = test_split(Some(203));
    let a = evaluate_clean(&model, &data, 1000, &NoProgress).unwrap();
    let b = evaluate_clean(&model, &data, 7, &NoProgress).unwrap();
    assert_eq!(a, b);
    let correct = a.correct.iter().filter(|c| **c).count();
    assert_eq!(a.accuracy, correct as f64 / 203.0);
    assert!(evaluate_clean(&model, &data, 0, &NoProgress).is_err());
}

#[test]
fn a_model_for_other_images_is_refused_with_both_shapes() {
    let (net, _) = Network::init(
        Arch::CifarCnn,
        Normalization::default(),
        &SeedStream::new(1),
        &Device::Cpu,
    )
    .unwrap();
    let err = check_compatible(&Model::Network(net.detached()), &test_split(Some(5)))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("[3, 32, 32]") && err.contains("[1, 28, 28]"),
        "{err}"
    );
}

#[test]
fn non_finite_outputs_are_an_error_naming_the_sample() {
    let (net, _) = Network::init(
        Arch::Mlp,
        Normalization::default(),
        &SeedStream::new(2),
        &Device::Cpu,
    )
    .unwrap();
    let mut tensors = net.tensors().clone();
    let bias = tensors["fc3.bias"].clone();
    tensors.insert("fc3.bias".into(), (bias * f64::NAN).unwrap());
    let broken = Network::from_tensors(
        Arch::Mlp,
        tensors,
        Normalization::default(),
        gauntlet_core::Bounds::UNIT,
        &Device::Cpu,
    )
    .unwrap();
    let err = evaluate_clean(&broken, &test_split(Some(4)), 4, &NoProgress)
        .unwrap_err()
        .to_string();
    assert!(err.contains("sample 0"), "{err}");
}
