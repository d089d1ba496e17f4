//! Write the fuzz seed corpus, `fuzz/seeds/<target>/`, from the repository's real
//! files (the shipped MNIST subset, the model fixtures, attack suites, the CI
//! policy, a shipped record) cut down to a few KB each. Run from the repository
//! root: `cargo run -p gauntlet-fuzz --example make_seeds`. The seeds are committed;
//! `fuzz/run.sh` copies them into the working corpus.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context, Result};
use gauntlet_fuzz::join_files;

fn gunzip(path: &str) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).with_context(|| path.to_string())?;
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(file).read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn put(target: &str, name: &str, bytes: &[u8]) -> Result<()> {
    let dir = Path::new("fuzz/seeds").join(target);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(name), bytes)?;
    Ok(())
}

/// First `n` items of an IDX file, with its count rewritten.
fn idx_head(bytes: &[u8], header: usize, item: usize, n: usize) -> Vec<u8> {
    let mut out = bytes[..header + n * item].to_vec();
    out[4..8].copy_from_slice(&(n as u32).to_be_bytes());
    out
}

fn zip_of(entries: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, bytes) in entries {
        writer.start_file(*name, zip::write::SimpleFileOptions::default())?;
        writer.write_all(bytes)?;
    }
    Ok(writer.finish()?.into_inner())
}

fn main() -> Result<()> {
    let images = gunzip("datasets/mnist-5k/t10k-images-idx3-ubyte.gz")?;
    let labels = gunzip("datasets/mnist-5k/t10k-labels-idx1-ubyte.gz")?;
    let n = 4;
    let idx_images = idx_head(&images, 16, 784, n);
    let idx_labels = idx_head(&labels, 8, 1, n);
    put(
        "dataset_idx",
        "raw",
        &join_files(0, &idx_images, &idx_labels),
    )?;
    put(
        "dataset_idx",
        "gzip",
        &join_files(1, &idx_images, &idx_labels),
    )?;
    put(
        "dataset_idx",
        "classes",
        &join_files(0x89, &idx_images, &idx_labels),
    )?;

    // CIFAR-10 records are a label byte and 3 × 32 × 32 pixels; MNIST pixels stand
    // in for the content.
    let mut cifar = Vec::new();
    for i in 0..2 {
        cifar.push(labels[8 + i]);
        cifar.extend(images[16..].iter().cycle().skip(i * 3072).take(3072));
    }
    put("dataset_cifar", "two-records", &cifar)?;

    let pixels = &idx_images[16..];
    let x_u8 = gauntlet_data::encode_npy("|u1", &[n, 28, 28], pixels);
    let x_f32: Vec<u8> = pixels
        .iter()
        .flat_map(|&p| (f32::from(p) / 255.0).to_le_bytes())
        .collect();
    let x_f32 = gauntlet_data::encode_npy("<f4", &[n, 1, 28, 28], &x_f32);
    let y: Vec<u8> = idx_labels[8..]
        .iter()
        .flat_map(|&l| i64::from(l).to_le_bytes())
        .collect();
    let y = gauntlet_data::encode_npy("<i8", &[n], &y);
    put("dataset_npy", "uint8", &join_files(0, &x_u8, &y))?;
    put("dataset_npy", "float32", &join_files(0, &x_f32, &y))?;
    put(
        "dataset_npz",
        "xy",
        &zip_of(&[("x.npy", &x_u8), ("y.npy", &y)])?,
    )?;
    put(
        "dataset_npz",
        "split",
        &zip_of(&[("x_test.npy", &x_f32), ("y_test.npy", &y)])?,
    )?;

    put(
        "image_npy",
        "patch-u8",
        &gauntlet_data::encode_npy("|u1", &[3, 3], &[255, 0, 255, 0, 255, 0, 255, 0, 255]),
    )?;
    let blend: Vec<u8> = (0..2 * 4 * 4)
        .flat_map(|i| (i as f32 / 32.0).to_le_bytes())
        .collect();
    put(
        "image_npy",
        "pattern-f32",
        &gauntlet_data::encode_npy("<f4", &[2, 4, 4], &blend),
    )?;

    // The pickle inside a real torch.save zip, and a small checkpoint around it.
    let pt_path = "crates/gauntlet-models/tests/fixtures/mlp.pt";
    let mut archive = zip::ZipArchive::new(std::fs::File::open(pt_path).context(pt_path)?)?;
    let pickle_name = archive
        .file_names()
        .find(|n| n.ends_with("data.pkl"))
        .map(str::to_string)
        .context("no data.pkl in mlp.pt")?;
    let mut pickle = Vec::new();
    archive.by_name(&pickle_name)?.read_to_end(&mut pickle)?;
    put("pickle_walk", "state-dict", &pickle)?;
    // `os.system('true')` as protocol 2: the kind of file the scanner exists for.
    let hostile = b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.";
    put("pickle_walk", "os-system", hostile)?;
    let small_pt = zip_of(&[
        ("archive/data.pkl", &pickle),
        ("archive/data/0", &[0u8; 64]),
        ("archive/version", b"3\n"),
    ])?;
    let tensors = std::collections::BTreeMap::from([(
        "fc1.weight".to_string(),
        (vec![3, 4], (0..12).map(|i| i as f32).collect::<Vec<f32>>()),
    )]);
    let safetensors = gauntlet_models::safetensors_bytes(&Default::default(), &tensors);
    let pools = std::fs::read("crates/gauntlet-models/tests/fixtures/pools.onnx")?;
    let resnet = std::fs::read("crates/gauntlet-models/tests/fixtures/resnet.onnx")?;
    let with_pick = |pick: u8, bytes: &[u8]| [&[pick][..], bytes].concat();
    put("scan_model", "pt", &with_pick(0, &small_pt))?;
    put("scan_model", "pkl", &with_pick(2, hostile))?;
    put("scan_model", "safetensors", &with_pick(4, &safetensors))?;
    put("scan_model", "onnx", &with_pick(5, &pools))?;
    // Too small for the `mlp` architecture: they reach the loaders' checks.
    put(
        "load_model",
        "reject-partial-safetensors",
        &with_pick(0, &safetensors),
    )?;
    put("load_model", "reject-partial-pt", &with_pick(1, &small_pt))?;
    // ONNX with the graph's own input shape (pick 2) and a forced 1×28×28 (pick 5).
    put("load_model", "pools-onnx", &with_pick(5, &pools))?;
    put("load_model", "resnet-onnx", &with_pick(2, &resnet))?;
    // Zoo exports (legacy exporter: one file) that reach the newer operators:
    // Fire-module Concat and ceil-mode pooling, ShuffleNet's channel shuffle
    // (Split/Transpose/Reshape), ViT's attention (Gather, Expand, LayerNormalization,
    // Erf, batched MatMul), ConvNeXt's permuted LayerNorm.
    for family in ["squeezenet", "shufflenet-v2", "vit", "convnext"] {
        let bytes = std::fs::read(format!(
            "crates/gauntlet-models/tests/zoo/{family}.legacy.onnx"
        ))?;
        put(
            "load_model",
            &format!("{family}-onnx"),
            &with_pick(2, &bytes),
        )?;
    }

    for suite in ["quick", "minimal", "standard-linf", "standard-l2"] {
        put(
            "suite_toml",
            suite,
            &std::fs::read(format!("attacks/{suite}.toml"))?,
        )?;
    }
    put(
        "policy_toml",
        "ci",
        &std::fs::read("examples/ci/gauntlet.toml")?,
    )?;
    put(
        "run_record",
        "mnist-mlp",
        &std::fs::read("examples/models/mnist-mlp.record.json")?,
    )?;

    let dir = tempfile::tempdir()?;
    let mut journal = gauntlet_eval::FileJournal::open(dir.path(), "fuzz", false)?;
    for sample in 0..2 {
        gauntlet_eval::Journal::record(
            &mut journal,
            &format!("0/0.1/{sample}"),
            &gauntlet_eval::BatchOutcome {
                samples: vec![sample],
                broken: vec![(sample, 0.1)],
                gradients: 40,
                ..Default::default()
            },
        )?;
    }
    put(
        "journal",
        "two-batches",
        &std::fs::read(dir.path().join(gauntlet_eval::JOURNAL_FILE))?,
    )?;
    // A training checkpoint of a 16-parameter run after one epoch.
    let dir = tempfile::tempdir()?;
    let params: Vec<f32> = (0..16).map(|i| i as f32 / 16.0).collect();
    let mut optimizer =
        gauntlet_train::Optimizer::new(gauntlet_train::OptimizerKind::Adam, 1e-3, 0.0, 16);
    optimizer.step(&mut params.clone(), &params)?;
    let checkpoint = gauntlet_train::checkpoint::Checkpoint {
        state: gauntlet_train::checkpoint::CheckpointState {
            config: gauntlet_train::TrainConfig::default(),
            train_sha256: "0".repeat(64),
            test_sha256: "1".repeat(64),
            epochs_done: 1,
            history: Vec::new(),
            best: None,
            warnings: Vec::new(),
            stopped_early: false,
        },
        best_params: Some(params.clone()),
        params,
        optimizer,
    };
    gauntlet_train::checkpoint::save(dir.path(), &checkpoint)?;
    put(
        "checkpoint",
        "one-epoch",
        &std::fs::read(dir.path().join(gauntlet_train::checkpoint::CHECKPOINT_FILE))?,
    )?;
    Ok(())
}
