//! The library's jobs write the records the CLI writes: a researcher calling
//! `EvalJob` or `TrainJob` from Rust gets exactly what `gauntlet attack` or
//! `gauntlet train` would have written, timings aside.

use std::path::Path;

use gauntlet_eval::{EvalJob, NoJournal, Suite, SuiteAttack};
use gauntlet_train::{TrainConfig, TrainJob};

use super::*;

/// A record as JSON with every wall-clock time removed (the only fields that
/// vary between identical runs).
fn untimed(mut record: serde_json::Value) -> serde_json::Value {
    match &mut record {
        serde_json::Value::Object(map) => {
            map.remove("wall_seconds");
            for value in map.values_mut() {
                *value = untimed(value.take());
            }
        }
        serde_json::Value::Array(items) => {
            for value in items {
                *value = untimed(value.take());
            }
        }
        _ => {}
    }
    record
}

fn record_json(record: &gauntlet_record::RunRecord) -> serde_json::Value {
    untimed(serde_json::from_str(&record.to_json().unwrap()).unwrap())
}

fn text(path: &Path) -> String {
    path.display().to_string()
}

#[test]
fn the_evaluation_job_gives_the_record_and_examples_gauntlet_attack_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (model_path, data_path) = (
        repo("examples/models/mnist-cnn.safetensors"),
        repo("datasets/mnist-5k"),
    );
    let out = dir.path().join("cli");
    let line = [
        "attack",
        "--model",
        &text(&model_path),
        "--data",
        &text(&data_path),
        "--attack",
        "pgd-linf",
        "--eps",
        "0.1,0.3",
        "--steps",
        "5",
        "--limit",
        "60",
        "--batch-size",
        "25",
        "--seed",
        "3",
        "--save-adversarial",
        "--out",
        &text(&out),
        "-q",
    ];
    let cli = gauntlet(&line);
    assert!(cli.status.success(), "{}", stderr(&cli));

    let (model, info) =
        gauntlet_models::load_model(&model_path, &Default::default(), &candle_core::Device::Cpu)
            .unwrap();
    let scan = gauntlet_scan::scan_file(&model_path).unwrap();
    let data = gauntlet_data::load(
        &data_path,
        &gauntlet_data::LoadOptions {
            limit: Some(60),
            channels: Some(1),
            ..Default::default()
        },
    )
    .unwrap();
    let suite = Suite::single(SuiteAttack {
        name: "pgd-linf".into(),
        epsilons: vec![0.1, 0.3],
        target: gauntlet_eval::TargetSpec::None,
        params: serde_json::json!({ "steps": 5 }),
        schedule: gauntlet_eval::Schedule::default(),
    })
    .unwrap();
    let suite_record = suite.record(None).unwrap();
    let plan = EvalJob {
        suite: Some((suite, suite_record)),
        seed: 3,
        batch_size: 25,
        keep_examples: true,
        command: std::iter::once("gauntlet")
            .chain(line)
            .map(String::from)
            .collect(),
        ..EvalJob::new(
            model,
            gauntlet_eval::model_record(&info, Some(scan.to_record())),
            data,
        )
    }
    .plan()
    .unwrap();
    let output = plan
        .run(&gauntlet_core::NoProgress, &mut NoJournal)
        .unwrap();

    let written = untimed(read_json(&out.join("results.json")));
    assert_eq!(record_json(&output.record), written);
    let examples = output.adversarial.unwrap();
    assert!(
        examples.count > 0,
        "PGD at ε = 0.3 breaks some of 60 samples"
    );
    assert_eq!(
        examples.npz,
        std::fs::read(out.join("adversarial.npz")).unwrap()
    );
}

#[test]
fn the_training_job_gives_the_model_and_record_gauntlet_train_writes() {
    let dir = tempfile::tempdir().unwrap();
    let data_path = repo("datasets/mnist-5k");
    let cli_model = dir.path().join("cli").join("m.safetensors");
    let line = [
        "train",
        "--data",
        &text(&data_path),
        "--arch",
        "mlp",
        "--epochs",
        "1",
        "--limit",
        "300",
        "--seed",
        "5",
        "--out",
        &text(&cli_model),
        "-q",
    ];
    let cli = gauntlet(&line);
    assert!(cli.status.success(), "{}", stderr(&cli));

    let load = |split, limit| {
        gauntlet_data::load(
            &data_path,
            &gauntlet_data::LoadOptions {
                split,
                limit,
                ..Default::default()
            },
        )
        .unwrap()
    };
    let library_model = dir.path().join("library").join("m.safetensors");
    let plan = TrainJob {
        config: TrainConfig {
            arch: gauntlet_models::Arch::Mlp,
            epochs: 1,
            seed: 5,
            ..TrainConfig::default()
        },
        train_set: load(gauntlet_data::Split::Train, Some(300)),
        test_set: load(gauntlet_data::Split::Test, None),
        out: library_model.clone(),
        checkpoint_dir: None,
        resume: false,
        replace: false,
        command: std::iter::once("gauntlet")
            .chain(line)
            .map(String::from)
            .collect(),
    }
    .plan()
    .unwrap();
    let output = plan.run(&gauntlet_core::NoProgress, None).unwrap();

    assert_eq!(
        std::fs::read(&library_model).unwrap(),
        std::fs::read(&cli_model).unwrap(),
        "the same seed trains the same weights"
    );
    let mut written = untimed(read_json(&cli_model.with_extension("record.json")));
    // The one difference: where each wrote its model.
    written["model"]["path"] = text(&library_model).into();
    assert_eq!(record_json(&output.record), written);
}
