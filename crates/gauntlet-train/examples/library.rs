//! Gauntlet as a library: train a CNN with FGSM-RS adversarial training, then
//! evaluate it under the `quick` suite — the same jobs `gauntlet train` and
//! `gauntlet eval` run, giving the same run records, without the command line.
//!
//! ```text
//! cargo run --release -p gauntlet-train --example library [OUT_DIR]
//! ```
//! Writes `OUT_DIR/model.safetensors` (default `target/library-example`) and
//! prints the two records' headline numbers.

use std::path::{Path, PathBuf};

use gauntlet_data::{LoadOptions, Split};
use gauntlet_eval::{EvalJob, NoJournal, Suite};
use gauntlet_train::{AdversarialTraining, TrainConfig, TrainJob};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = std::env::args()
        .nth(1)
        .map_or_else(|| repo.join("target/library-example"), PathBuf::from);
    let data = repo.join("datasets/mnist-5k");
    let load = |split, limit| {
        let options = LoadOptions {
            split,
            limit,
            ..LoadOptions::default()
        };
        gauntlet_data::load(&data, &options)
    };

    // Train: every setting is checked by `plan` before the first batch.
    let model_path = out.join("model.safetensors");
    let training = TrainJob {
        config: TrainConfig {
            epochs: 2,
            seed: 1,
            adversarial: Some(AdversarialTraining::fgsm_rs(0.3)),
            robust_eval_samples: 100,
            ..TrainConfig::default()
        },
        train_set: load(Split::Train, Some(2000))?,
        test_set: load(Split::Test, None)?,
        out: model_path.clone(),
        checkpoint_dir: None,
        resume: false,
        replace: true,
        command: vec!["library example".into()],
    }
    .plan()?
    .run(&gauntlet_core::NoProgress, None)?;
    for epoch in training.record.training.iter().flat_map(|t| &t.history) {
        println!(
            "epoch {}: test accuracy {:.1}%, robust accuracy {}",
            epoch.epoch,
            100.0 * epoch.test_accuracy,
            epoch
                .robust_accuracy
                .map_or("-".into(), |a| format!("{:.1}%", 100.0 * a))
        );
    }

    // Evaluate the model just written, as `gauntlet eval --suite` would.
    let (model, info) =
        gauntlet_models::load_model(&model_path, &Default::default(), &candle_core::Device::Cpu)?;
    let suite_path = repo.join("attacks/quick.toml");
    let suite = Suite::from_file(&suite_path)?;
    let suite_record = suite.record(Some(&suite_path))?;
    let evaluation = EvalJob {
        suite: Some((suite, suite_record)),
        seed: 1,
        command: vec!["library example".into()],
        ..EvalJob::new(
            model,
            gauntlet_eval::model_record(&info, None),
            load(Split::Test, Some(200))?,
        )
    }
    .plan()?
    .run(&gauntlet_core::NoProgress, &mut NoJournal)?;
    let record = evaluation.record;
    if let Some(clean) = &record.clean {
        println!("clean accuracy {:.1}%", 100.0 * clean.accuracy);
    }
    for worst in record.robustness.iter().flat_map(|r| &r.worst_case) {
        println!(
            "worst case {} ε = {:.2}: robust accuracy {:.1}%",
            worst.norm,
            worst.epsilon,
            100.0 * worst.robust_accuracy
        );
    }
    gauntlet_core::write_atomic(&out.join("results.json"), record.to_json()?.as_bytes())?;
    println!("wrote {}", out.join("results.json").display());
    Ok(())
}
