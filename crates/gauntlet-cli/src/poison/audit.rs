//! `gauntlet poison audit`: inject → train → measure → detect → filter →
//! retrain → measure, in one record.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use gauntlet_data::Split;
use gauntlet_models::{Arch, Model};
use gauntlet_poison::AuditConfig;
use gauntlet_record::RunKind;
use gauntlet_train::TrainConfig;

use super::options::{injection_config, methods, DetectorArgs, InjectionArgs};
use super::{fresh_out_dir, manifest_json, print_findings};
use crate::progress::CliProgress;
use crate::toolbox::{load_data, one_of, record_header, write_record, DataArgs};

#[derive(Args, Debug)]
pub(crate) struct AuditArgs {
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    injection: InjectionArgs,
    #[command(flatten)]
    detectors: DetectorArgs,
    /// Architecture trained on the poisoned data.
    #[arg(long, default_value = "cnn", value_parser = one_of(&Arch::ALL, Arch::name))]
    arch: Arch,
    /// Training epochs (poisoned and filtered models).
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Output directory: results.json, manifest.json, poisoned.safetensors, filtered.safetensors.
    #[arg(long)]
    out: PathBuf,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
}

pub(super) fn audit(args: AuditArgs) -> Result<()> {
    let started = Instant::now();
    fresh_out_dir(&args.out)?;
    let injection = injection_config(&args.injection)?;
    let seed = injection.seed;
    let chosen = methods(&args.detectors, seed)?;
    let training = TrainConfig {
        arch: args.arch,
        epochs: args.epochs,
        seed,
        robust_eval_samples: 0,
        ..TrainConfig::default()
    };
    training.validate()?;
    let train = load_data(&args.data, Split::Train, None)?;
    let test_args = DataArgs {
        limit: None,
        ..args.data.clone()
    };
    let test = load_data(&test_args, Split::Test, None)?;
    injection.validate(&train)?;
    // Training uses its default batch of 50: a few MB per batch.
    gauntlet_core::ensure_batch_fits(
        "--batch-size",
        training.arch.bytes_per_sample(),
        training.arch.training_fixed_bytes(),
        args.detectors.batch_size,
        train.len(),
    )?;
    let settings = AuditConfig {
        injection,
        training,
        detectors: chosen.training_set,
        strip: chosen.strip,
        strip_held_out: args.detectors.strip_held_out,
        neural_cleanse: chosen.cleanse,
        cleanse_samples: args.detectors.cleanse_samples,
        batch_size: args.detectors.batch_size,
    };
    let progress = CliProgress::new(args.quiet);
    let outcome = gauntlet_poison::audit(&settings, &train, &test, &progress)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let poisoned_path = args.out.join("poisoned.safetensors");
    let filtered_path = args.out.join("filtered.safetensors");
    // Described from the network in memory, as `eval` would describe the file.
    let info = gauntlet_models::save_model(&outcome.poisoned_model, &poisoned_path)?;
    outcome.filtered_model.save(&filtered_path)?;
    gauntlet_core::write_atomic(
        &args.out.join("manifest.json"),
        manifest_json(&outcome.manifest)?.as_bytes(),
    )?;
    let poisoned = Model::Network(outcome.poisoned_model);
    print_findings(&outcome.record);
    let mut record = record_header(RunKind::Poison, seed, &poisoned, &info, None, test.record());
    record.poisoning = Some(outcome.record);
    record.wall_seconds = started.elapsed().as_secs_f64();
    let path = args.out.join("results.json");
    write_record(&path, &record)?;
    println!("wrote {}", path.display());
    crate::toolbox::write_run_report(&args.out, &record, &path)
}
