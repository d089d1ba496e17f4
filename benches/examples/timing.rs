//! Gauntlet's side of the head-to-head harness (`benches/head_to_head.py`): times
//! one workload and prints a JSON line. Not a test; run in release mode.
//!
//! ```sh
//! cargo run --release -p gauntlet-benches --example timing -- grad cnn 100 20
//! cargo run --release -p gauntlet-benches --example timing -- pgd cnn 0.3 40 100 [images]
//! cargo run --release -p gauntlet-benches --example timing -- fgsm cnn 0.1 100
//! cargo run --release -p gauntlet-benches --example timing -- logits cnn 100
//! cargo run --release -p gauntlet-benches --example timing -- train cnn
//! cargo run --release -p gauntlet-benches --example timing -- train cnn pgd
//! cargo run --release -p gauntlet-benches --example timing -- gemm 1536
//! cargo run --release -p gauntlet-benches --example timing -- onnx-grad MODEL.onnx 64 5
//! cargo run --release -p gauntlet-benches --example timing -- onnx-pgd MODEL.onnx 0.0314 40 64 256
//! cargo run --release -p gauntlet-benches --example timing -- gemm-shape 2080 256 768 t
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use gauntlet_attacks::{build_attack, run_attack, Goal};
use gauntlet_core::{cross_entropy_sum, input_gradient, Classifier, SeedStream};
use gauntlet_data::{load, LoadOptions, Split};
use gauntlet_models::{load_model, ModelOptions};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn main() {
    gauntlet_core::configure_threads(None);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    if arg(0) == "gemm-shape" {
        return gemm_shape(
            arg(1).parse().unwrap(),
            arg(2).parse().unwrap(),
            arg(3).parse().unwrap(),
            arg(4) == "t",
        );
    }
    if arg(0) == "gemm" {
        return gemm_ceiling(arg(1).parse().unwrap());
    }
    if let Some(workload) = arg(0).strip_prefix("onnx-") {
        return onnx_workload(workload, &args[1..]);
    }
    // `train` starts from scratch; everything else uses the shipped weights.
    let model_path = repo(&format!("examples/models/mnist-{}.safetensors", arg(1)));
    let (model, _) = load_model(&model_path, &ModelOptions::default(), &Device::Cpu).unwrap();
    let data = load(
        &repo("datasets/mnist-5k"),
        &LoadOptions {
            split: Split::Test,
            limit: None,
            num_classes: None,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    match arg(0).as_str() {
        "grad" => {
            let batch: usize = arg(2).parse().unwrap();
            let iters: usize = arg(3).parse().unwrap();
            let (x, y) = data.batch(0..batch, &Device::Cpu).unwrap();
            input_gradient(&model, &x, |l| cross_entropy_sum(l, &y)).unwrap();
            let start = Instant::now();
            for _ in 0..iters {
                input_gradient(&model, &x, |l| cross_entropy_sum(l, &y)).unwrap();
            }
            let seconds = start.elapsed().as_secs_f64() / iters as f64;
            println!("{{\"workload\": \"grad\", \"seconds_per_step\": {seconds}, \"images_per_second\": {}}}", batch as f64 / seconds);
        }
        "native" => {
            // The engine alone, no candle around it: the floor under "grad".
            let batch: usize = arg(2).parse().unwrap();
            let iters: usize = arg(3).parse().unwrap();
            let gauntlet_models::Model::Network(net) = &model else {
                panic!("built-in architectures only")
            };
            let engine = net.native().unwrap();
            let (x, _) = data.batch(0..batch, &Device::Cpu).unwrap();
            let x = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let grad = vec![0.1f32; batch * 10];
            let start = Instant::now();
            for _ in 0..iters {
                let (_, acts) = engine.forward(&x, batch, true).unwrap();
                engine
                    .backward(&mut acts.unwrap(), &grad, true, None)
                    .unwrap();
            }
            let seconds = start.elapsed().as_secs_f64() / iters as f64;
            println!("{{\"workload\": \"native\", \"seconds_per_step\": {seconds}, \"images_per_second\": {}}}", batch as f64 / seconds);
        }
        "pgd" | "fgsm" => {
            let eps: f64 = arg(2).parse().unwrap();
            let (name, params, batch) = if arg(0) == "pgd" {
                let steps: usize = arg(3).parse().unwrap();
                (
                    "pgd-linf",
                    serde_json::json!({"steps": steps, "step_size": {"absolute": 0.01}}),
                    arg(4).parse::<usize>().unwrap(),
                )
            } else {
                (
                    "fgsm",
                    serde_json::Value::Null,
                    arg(3).parse::<usize>().unwrap(),
                )
            };
            let attack = build_attack(name, &params).unwrap();
            // Optional image count (default all 1000), to show that peak memory
            // does not grow with the number of samples.
            let images: usize = arg(5).parse().unwrap_or(data.len()).min(data.len());
            let start = Instant::now();
            let mut robust = Vec::new();
            for (b, first) in (0..images).step_by(batch).enumerate() {
                let end = (first + batch).min(images);
                let (x, y) = data.batch(first..end, &Device::Cpu).unwrap();
                let labels = y.to_vec1::<u32>().unwrap();
                let clean = model
                    .logits(&x)
                    .unwrap()
                    .argmax(1)
                    .unwrap()
                    .to_vec1::<u32>()
                    .unwrap();
                let out = run_attack(
                    attack.as_ref(),
                    &model,
                    &x,
                    &Goal::Untargeted {
                        labels: labels.clone(),
                    },
                    eps,
                    &SeedStream::new(0).derive(&format!("batch-{b}")),
                )
                .unwrap();
                // Every sample attacked every step (no pruning): robust = clean-correct and not fooled.
                robust.extend(
                    (0..labels.len())
                        .map(|i| clean[i] == labels[i] && out.predictions[i] == labels[i]),
                );
            }
            let seconds = start.elapsed().as_secs_f64();
            let bits: String = robust.iter().map(|r| if *r { '1' } else { '0' }).collect();
            println!(
                "{{\"workload\": \"{name}\", \"seconds\": {seconds}, \"robust_accuracy\": {}, \"peak_rss_mib\": {}, \"robust\": \"{bits}\"}}",
                robust.iter().filter(|r| **r).count() as f64 / robust.len() as f64,
                peak_rss_mib()
            );
        }
        "logits" => {
            let n: usize = arg(2).parse().unwrap();
            let (x, _) = data.batch(0..n, &Device::Cpu).unwrap();
            let logits = model.logits(&x).unwrap().to_vec2::<f32>().unwrap();
            println!(
                "{}",
                serde_json::json!({"workload": "logits", "logits": logits})
            );
        }
        "train" => {
            let train_set = load(
                &repo("datasets/mnist-5k"),
                &LoadOptions {
                    split: Split::Train,
                    limit: None,
                    num_classes: None,
                    ..LoadOptions::default()
                },
            )
            .unwrap();
            let arch = gauntlet_models::Arch::parse(&arg(1)).unwrap();
            // `train cnn pgd`: one epoch of PGD-AT (ε 0.3, 10 steps of 0.075, random start).
            // `train cnn pgd40` / `train cnn fgsm-rs`: the other adversarial budgets.
            let adversarial = match arg(2).as_str() {
                "pgd" => Some(gauntlet_train::AdversarialTraining::pgd(0.3, 10)),
                "pgd40" => Some(gauntlet_train::AdversarialTraining::pgd(0.3, 40)),
                "fgsm-rs" => Some(gauntlet_train::AdversarialTraining::fgsm_rs(0.3)),
                _ => None,
            };
            let config = gauntlet_train::TrainConfig {
                arch,
                epochs: 1,
                adversarial,
                // Same work as the PyTorch side: no per-epoch robust evaluation.
                robust_eval_samples: 0,
                ..Default::default()
            };
            let start = Instant::now();
            let history =
                gauntlet_train::train(&config, &train_set, &data, &gauntlet_core::NoProgress)
                    .unwrap()
                    .history;
            let seconds = start.elapsed().as_secs_f64();
            println!(
                "{{\"workload\": \"train\", \"seconds\": {seconds}, \"test_accuracy\": {}}}",
                history[0].test_accuracy
            );
        }
        other => panic!("unknown workload {other}: expected grad, pgd, fgsm, logits or train"),
    }
}

/// Seeded images in [0, 1] and labels for a model of `shape` with `classes` outputs.
fn random_batch(
    shape: [usize; 3],
    classes: usize,
    count: usize,
    stream: &str,
) -> (candle_core::Tensor, Vec<u32>) {
    let seed = SeedStream::new(0).derive(stream);
    let [c, h, w] = shape;
    let x = candle_core::Tensor::from_vec(
        seed.uniform_f32(count * c * h * w, 0.0, 1.0),
        (count, c, h, w),
        &Device::Cpu,
    )
    .unwrap();
    let labels = seed
        .derive("labels")
        .uniform_f32(count, 0.0, classes as f32)
        .into_iter()
        .map(|v| (v as u32).min(classes as u32 - 1))
        .collect();
    (x, labels)
}

/// The zoo head-to-head's workloads on an ONNX file with random images (speed
/// only): `grad MODEL BATCH ITERS` (forward + input gradient of the summed
/// cross-entropy) and `pgd MODEL EPS STEPS BATCH IMAGES` (PGD-L∞ with step 2.5·ε/steps,
/// every image attacked every step).
fn onnx_workload(workload: &str, args: &[String]) {
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let start = Instant::now();
    let (model, _) =
        load_model(Path::new(&arg(0)), &ModelOptions::default(), &Device::Cpu).unwrap();
    let load_seconds = start.elapsed().as_secs_f64();
    let gauntlet_models::Model::Onnx(onnx) = &model else {
        panic!("an ONNX file")
    };
    let engine = match onnx.reference_reason() {
        None => "native".to_string(),
        Some(reason) => format!("reference ({reason})"),
    };
    let macs = onnx.native().map_or(0, |n| n.macs_per_image());
    let (shape, classes) = (model.input_shape(), model.num_classes());
    match workload {
        "grad" => {
            let batch: usize = arg(1).parse().unwrap();
            let iters: usize = arg(2).parse().unwrap();
            let (x, labels) = random_batch(shape, classes, batch, "grad");
            let y = candle_core::Tensor::new(labels.as_slice(), &Device::Cpu).unwrap();
            input_gradient(&model, &x, |l| cross_entropy_sum(l, &y)).unwrap();
            let start = Instant::now();
            for _ in 0..iters {
                input_gradient(&model, &x, |l| cross_entropy_sum(l, &y)).unwrap();
            }
            let seconds = start.elapsed().as_secs_f64() / iters as f64;
            // Forward + input gradient: two forward passes' worth of multiply-adds
            // (the input gradient of each layer costs what its forward pass does), 2 FLOPs each.
            let gflops = 4.0 * macs as f64 * batch as f64 / seconds / 1e9;
            println!(
                "{}",
                serde_json::json!({"workload": "onnx-grad", "seconds_per_step": seconds, "engine": engine,
                    "load_seconds": load_seconds, "gflops": gflops, "macs_per_image": macs, "peak_rss_mib": peak_rss_mib()})
            );
        }
        "pgd" => {
            let eps: f64 = arg(1).parse().unwrap();
            let steps: usize = arg(2).parse().unwrap();
            let batch: usize = arg(3).parse().unwrap();
            let images: usize = arg(4).parse().unwrap();
            let attack = build_attack(
                "pgd-linf",
                &serde_json::json!({"steps": steps, "step_size": {"absolute": 2.5 * eps / steps as f64}, "random_start": false}),
            )
            .unwrap();
            let start = Instant::now();
            let mut fooled = 0;
            for (b, first) in (0..images).step_by(batch).enumerate() {
                let count = batch.min(images - first);
                let (x, labels) = random_batch(shape, classes, count, &format!("pgd-{b}"));
                let out = run_attack(
                    attack.as_ref(),
                    &model,
                    &x,
                    &Goal::Untargeted {
                        labels: labels.clone(),
                    },
                    eps,
                    &SeedStream::new(0).derive(&format!("batch-{b}")),
                )
                .unwrap();
                fooled += out
                    .predictions
                    .iter()
                    .zip(&labels)
                    .filter(|(p, y)| p != y)
                    .count();
            }
            let seconds = start.elapsed().as_secs_f64();
            println!(
                "{}",
                serde_json::json!({"workload": "onnx-pgd", "seconds": seconds, "engine": engine,
                    "misclassified": fooled, "images": images, "peak_rss_mib": peak_rss_mib()})
            );
        }
        other => panic!("unknown ONNX workload {other}: expected onnx-grad or onnx-pgd"),
    }
}

/// The GEMM kernel's own ceiling on this CPU: large square products,
/// single-threaded and on every rayon thread.
fn gemm_ceiling(size: usize) {
    let rates: Vec<f64> = [1, rayon::current_num_threads()]
        .into_iter()
        .map(|threads| gemm_gflops(size, size, size, false, threads))
        .collect();
    println!(
        "{{\"workload\": \"gemm\", \"gflops_one_thread\": {}, \"gflops_all_threads\": {}}}",
        rates[0], rates[1]
    );
}

/// GFLOP/s of `C (m×n) += A (m×k) · B (k×n)` on `threads` threads, over 10
/// calls after a warm-up; `transposed`: B stored `n×k` and read transposed.
fn gemm_gflops(m: usize, k: usize, n: usize, transposed: bool, threads: usize) -> f64 {
    let a = vec![1.0f32; m * k];
    let b = vec![0.5f32; k * n];
    let mut c = vec![0.0f32; m * n];
    let (rhs_col_stride, rhs_row_stride) = if transposed {
        (k as isize, 1)
    } else {
        (1, n as isize)
    };
    let parallelism = if threads == 1 {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(threads)
    };
    let mut run = || unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            rhs_col_stride,
            rhs_row_stride,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    };
    run();
    let iters = 10;
    let start = Instant::now();
    for _ in 0..iters {
        run();
    }
    let seconds = start.elapsed().as_secs_f64() / iters as f64;
    2.0 * (m * k * n) as f64 / seconds / 1e9
}

/// The process's peak resident memory (VmHWM) in MiB, 0 where /proc is missing.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// `gemm-shape M K N [t]`: single-thread GFLOP/s of one GEMM shape (`t`: the
/// right-hand side read transposed, as an input gradient reads a weight).
fn gemm_shape(m: usize, k: usize, n: usize, transposed: bool) {
    let gflops = gemm_gflops(m, k, n, transposed, 1);
    println!("{m}x{k}x{n} t={transposed}: {gflops:.1} GFLOP/s");
}
