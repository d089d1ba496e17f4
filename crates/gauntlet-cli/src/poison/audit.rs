//! `gauntlet poison audit`: inject → train → measure → detect → filter →
//! retrain → measure, in one record.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use gauntlet_data::Split;
use gauntlet_models::Arch;
use gauntlet_poison::{AuditConfig, AuditJob};
use gauntlet_train::TrainConfig;

use super::options::{injection_config, methods, DetectorArgs, InjectionArgs};
use super::write_outputs;
use crate::progress::CliProgress;
use crate::toolbox::{command_line, load_data, one_of, DataArgs};

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
    // Flags first (cheap), then the data; the job checks the rest.
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
    let train = load_data(&args.data, Split::Train, None)?;
    let test_args = DataArgs {
        limit: None,
        ..args.data.clone()
    };
    let test = load_data(&test_args, Split::Test, None)?;
    let plan = AuditJob {
        config: AuditConfig {
            injection,
            training,
            detectors: chosen.training_set,
            strip: chosen.strip,
            strip_held_out: args.detectors.strip_held_out,
            neural_cleanse: chosen.cleanse,
            cleanse_samples: args.detectors.cleanse_samples,
            batch_size: args.detectors.batch_size,
        },
        train_set: train,
        test_set: test,
        out: args.out.clone(),
        command: command_line(),
    }
    .plan()?;
    let record = plan.run(&CliProgress::new(args.quiet))?;
    write_outputs(&args.out, record, started)
}
