//! Gauntlet's criterion benchmarks, one module per area (candle's layout).
//!
//! Run with `cargo bench -p gauntlet-benches`; numbers go to `benches/README.md`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use candle_core::Device;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gauntlet_core::{cross_entropy_sum, input_gradient, NoProgress, SeedStream};
use gauntlet_data::{load, Dataset, LoadOptions, Split};
use gauntlet_models::{Arch, Network, Normalization};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn mnist(split: Split) -> Dataset {
    load(
        &repo("datasets/mnist-5k"),
        &LoadOptions {
            split,
            limit: None,
            num_classes: None,
            ..LoadOptions::default()
        },
    )
    .unwrap()
}

mod gradients {
    use super::*;

    /// One forward + backward to the input at batch 100: the inner step of every
    /// white-box attack (image-gradient-steps/s = 100 / time).
    pub fn input_gradient_step(c: &mut Criterion) {
        let data = mnist(Split::Test);
        let (images, labels) = data.batch(0..100, &Device::Cpu).unwrap();
        let mut group = c.benchmark_group("input_gradient_batch100");
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(8));
        group.throughput(Throughput::Elements(100));
        for arch in [Arch::Mlp, Arch::Cnn] {
            let (net, _) = Network::init(
                arch,
                Normalization::default(),
                &SeedStream::new(1),
                &Device::Cpu,
            )
            .unwrap();
            let net = net.detached();
            group.bench_function(arch.name(), |b| {
                b.iter(|| {
                    input_gradient(&net, &images, |logits| cross_entropy_sum(logits, &labels))
                        .unwrap()
                })
            });
        }
        group.finish();
    }
}

mod training {
    use super::*;

    /// One epoch of standard training of `cnn` on the 4000 mnist-5k training
    /// images (batch 50, Adam), evaluation on 1000 test images included.
    pub fn cnn_epoch(c: &mut Criterion) {
        let (train_set, test_set) = (mnist(Split::Train), mnist(Split::Test));
        let config = gauntlet_train::TrainConfig {
            epochs: 1,
            ..Default::default()
        };
        let mut group = c.benchmark_group("train_epoch");
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(60));
        group.throughput(Throughput::Elements(train_set.len() as u64));
        group.bench_function("cnn_mnist5k", |b| {
            b.iter(|| gauntlet_train::train(&config, &train_set, &test_set, &NoProgress).unwrap())
        });
        group.finish();
    }
}

mod evaluation {
    use super::*;

    /// Clean evaluation of `cnn` on the 1000 mnist-5k test images.
    pub fn clean_cnn(c: &mut Criterion) {
        let data = mnist(Split::Test);
        let (net, _) = Network::init(
            Arch::Cnn,
            Normalization::default(),
            &SeedStream::new(2),
            &Device::Cpu,
        )
        .unwrap();
        let net = net.detached();
        let mut group = c.benchmark_group("clean_eval");
        group.sample_size(10);
        group.throughput(Throughput::Elements(data.len() as u64));
        group.bench_function("cnn_mnist5k_test", |b| {
            b.iter(|| gauntlet_eval::evaluate_clean(&net, &data, 500, &NoProgress).unwrap())
        });
        group.finish();
    }
}

mod poisoning {
    use super::*;
    use gauntlet_poison::{
        inject, native, penultimate_features, run_neural_cleanse, run_strip, InjectionConfig,
        NeuralCleanse, Patch, PoisonAttack, Strip, TrainingSetDetectors,
    };
    use gauntlet_train::TrainConfig;

    /// Each detector on the scenario: the 4000 mnist-5k training images with
    /// BadNets in 10% of the non-target images (target 0, seed 1), and a `cnn`
    /// trained on them for 2 epochs (the backdoor is learned by then).
    pub fn detectors(c: &mut Criterion) {
        let train = mnist(Split::Train);
        let test = mnist(Split::Test);
        let settings = InjectionConfig {
            attack: PoisonAttack::Badnets(Patch::default()),
            target: Some(0),
            fraction: 0.1,
            source: None,
            seed: 1,
        };
        let poisoned = inject(&train, &settings).unwrap();
        let training = TrainConfig {
            arch: Arch::Cnn,
            epochs: 2,
            robust_eval_samples: 0,
            ..TrainConfig::default()
        };
        let model = gauntlet_train::train(&training, &poisoned.dataset, &test, &NoProgress)
            .unwrap()
            .last;
        let net = &native(&model).unwrap();
        let data = &poisoned.dataset;
        let features = penultimate_features(net, data, 500, &NoProgress).unwrap();
        let detectors = TrainingSetDetectors::all(0);
        let trigger = poisoned.manifest.trigger.as_ref().unwrap();

        let mut group = c.benchmark_group("poison_detectors_mnist5k_train");
        group.sample_size(10);
        group.throughput(Throughput::Elements(data.len() as u64));
        group.bench_function("penultimate_features", |b| {
            b.iter(|| penultimate_features(net, data, 500, &NoProgress).unwrap())
        });
        let clustering = detectors.activation_clustering.unwrap();
        group.bench_function("activation_clustering", |b| {
            b.iter(|| clustering.detect(&features, data).unwrap())
        });
        let spectral = detectors.spectral_signatures.unwrap();
        group.bench_function("spectral_signatures", |b| {
            b.iter(|| spectral.detect(&features, data).unwrap())
        });
        let spectre = detectors.spectre.unwrap();
        group.bench_function("spectre", |b| {
            b.iter(|| spectre.detect(&features, data).unwrap())
        });
        let reference = penultimate_features(net, &test, 500, &NoProgress).unwrap();
        let scan = detectors.scan.unwrap();
        group.bench_function("scan_1000_reference_images", |b| {
            b.iter(|| scan.detect(&features, Some(&reference), data).unwrap())
        });
        group.finish();

        // Inference-time and trigger-search detectors work on test images.
        let mut group = c.benchmark_group("poison_detectors_mnist5k_test");
        group.sample_size(10);
        group.measurement_time(Duration::from_secs(60));
        group.bench_function("strip_500_calibration_500_judged_x2", |b| {
            b.iter(|| {
                run_strip(&Strip::default(), net, &test, 500, Some((trigger, Some(0)))).unwrap()
            })
        });
        // The default is 300 steps per class; 30 keeps the benchmark to minutes and
        // the cost is linear in the steps.
        let cleanse = NeuralCleanse {
            steps: 30,
            ..NeuralCleanse::default()
        };
        group.bench_function("neural_cleanse_30_steps_500_images", |b| {
            b.iter(|| {
                run_neural_cleanse(&cleanse, net, &test, 500, None, Some(0), &NoProgress).unwrap()
            })
        });
        group.finish();
    }
}

criterion_group!(
    benches,
    gradients::input_gradient_step,
    evaluation::clean_cnn,
    training::cnn_epoch,
    poisoning::detectors
);
criterion_main!(benches);
