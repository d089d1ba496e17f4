//! `gauntlet train`: a built-in architecture, standard or adversarial training,
//! checkpoints every epoch; writes the model, its record and its report.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use gauntlet_data::Split;
use gauntlet_models::{Arch, Model, Normalization};
use gauntlet_record::{CleanRecord, RunKind, TrainingRecord};
use gauntlet_train::{
    AdversarialMethod, AdversarialTraining, LrSchedule, OptimizerKind, TrainConfig,
};

use crate::progress::CliProgress;
use crate::toolbox::{
    ensure_batch_fits, load_data, record_header, write_record, write_run_report, DataArgs,
};

#[derive(Args, Debug)]
pub(crate) struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Architecture to train: mlp, cnn, cifar-cnn.
    #[arg(long, default_value = "cnn")]
    arch: String,
    /// Passes over the training split.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Mini-batch size.
    #[arg(long, default_value_t = 50)]
    batch_size: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Optimiser: adam or sgd.
    #[arg(long, default_value = "adam")]
    optimizer: String,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// The run's seed: initialisation and shuffling derive from it.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Per-channel mean to fold into the model.
    #[arg(long, value_delimiter = ',', requires = "std")]
    mean: Option<Vec<f32>>,
    /// Per-channel standard deviation to fold into the model.
    #[arg(long, value_delimiter = ',', requires = "mean")]
    std: Option<Vec<f32>>,
    /// Learning-rate schedule: constant, step (×0.1 at 50% and 75% of the epochs) or cyclic (one cycle).
    #[arg(long, default_value = "constant")]
    schedule: String,
    /// Adversarial training: pgd (Madry et al. 2018), fgsm-rs (Wong et al. 2020) or trades (Zhang et al. 2019).
    #[arg(long, requires = "epsilon")]
    adversarial: Option<String>,
    // The options below only mean something with --adversarial; clap refuses them
    // without it rather than silently training a standard model.
    /// Training ε (L∞ radius in pixel units, e.g. 0.3 for MNIST, 8/255 ≈ 0.031 for CIFAR-10).
    #[arg(long, requires = "adversarial")]
    epsilon: Option<f64>,
    /// Attack steps per batch for pgd and trades [default: 10; fgsm-rs takes one].
    #[arg(long, requires = "adversarial")]
    attack_steps: Option<usize>,
    /// Step size as a fraction of ε [default: 2.5/steps for pgd and trades, 1.25 for fgsm-rs].
    #[arg(long, requires = "adversarial")]
    attack_step_size: Option<f64>,
    /// TRADES' weight of the KL term [default: 6].
    #[arg(long, requires = "adversarial")]
    beta: Option<f64>,
    /// pgd/fgsm-rs: weight w of the clean loss in w·CE(x) + (1-w)·CE(x_adv) [default: 0].
    #[arg(long, requires = "adversarial")]
    clean_weight: Option<f64>,
    /// Epochs over which ε grows linearly from 0 [default: 0].
    #[arg(long, requires = "adversarial")]
    warmup_epochs: Option<f64>,
    /// Test images attacked (PGD, training threat model) after each epoch; 0 turns it off [default: 500].
    #[arg(long, requires = "adversarial")]
    robust_eval_samples: Option<usize>,
    /// Batch size of the per-epoch test evaluation (clean and robust) [default: 500].
    #[arg(long)]
    eval_batch_size: Option<usize>,
    /// PGD steps of that per-epoch evaluation [default: 20].
    #[arg(long, requires = "adversarial")]
    robust_eval_steps: Option<usize>,
    /// Directory for the checkpoint written after every epoch [default: <out name>.checkpoint next to --out].
    #[arg(long, conflicts_with = "resume")]
    checkpoint_dir: Option<PathBuf>,
    /// Continue the interrupted run whose checkpoint is in DIR (same options and data as that run).
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// Where to write the model (.safetensors); its record goes next to it as <name>.record.json,
    /// and with --adversarial the best checkpoint by robust accuracy as <name>.best.safetensors.
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing --out model.
    #[arg(long)]
    force: bool,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
}

pub(crate) fn train(args: TrainArgs) -> Result<()> {
    let started = Instant::now();
    let arch = Arch::parse(&args.arch)?;
    let optimizer = OptimizerKind::parse(&args.optimizer)?;
    let normalization = match (args.mean, args.std) {
        (Some(mean), Some(std)) => Normalization { mean, std },
        _ => Normalization::default(),
    };
    let adversarial = match (args.adversarial.as_deref(), args.epsilon) {
        (Some(name), Some(epsilon)) => {
            let steps = args.attack_steps.unwrap_or(10);
            let mut settings = match AdversarialMethod::parse(name)? {
                AdversarialMethod::Pgd => AdversarialTraining::pgd(epsilon, steps),
                AdversarialMethod::Trades => AdversarialTraining::trades(epsilon, steps),
                AdversarialMethod::FgsmRs => AdversarialTraining {
                    // An explicit --attack-steps other than 1 is refused by validation.
                    steps: args.attack_steps.unwrap_or(1),
                    ..AdversarialTraining::fgsm_rs(epsilon)
                },
            };
            if let Some(step) = args.attack_step_size {
                settings.relative_step_size = step;
            }
            settings.beta = args.beta.unwrap_or(settings.beta);
            settings.clean_weight = args.clean_weight.unwrap_or(settings.clean_weight);
            settings.warmup_epochs = args.warmup_epochs.unwrap_or(settings.warmup_epochs);
            Some(settings)
        }
        // clap requires --epsilon with --adversarial and vice versa.
        _ => None,
    };
    let defaults = TrainConfig::default();
    let config = TrainConfig {
        arch,
        epochs: args.epochs,
        batch_size: args.batch_size,
        learning_rate: args.lr,
        optimizer,
        momentum: args.momentum,
        seed: args.seed,
        normalization,
        adversarial,
        schedule: LrSchedule::parse(&args.schedule)?,
        robust_eval_samples: args
            .robust_eval_samples
            .unwrap_or(defaults.robust_eval_samples),
        robust_eval_steps: args.robust_eval_steps.unwrap_or(defaults.robust_eval_steps),
        eval_batch_size: args.eval_batch_size.unwrap_or(defaults.eval_batch_size),
    };
    config.validate()?;
    if args.out.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        bail!("--out {} must end in .safetensors", args.out.display());
    }
    if args.out.is_dir() {
        bail!(
            "--out {} is a directory, expected a .safetensors file path",
            args.out.display()
        );
    }
    if args.out.exists() && !args.force && args.resume.is_none() {
        bail!(
            "--out {} already exists; choose a new path, or pass --force to replace it",
            args.out.display()
        );
    }
    let train_set = load_data(&args.data, Split::Train, None)?;
    // The evaluation split is always used whole: --limit restricts training data only.
    let eval_args = DataArgs {
        limit: None,
        ..args.data.clone()
    };
    let test_set = load_data(&eval_args, Split::Test, None)?;
    // Training keeps a batch and its gradients; the per-epoch evaluation attacks
    // batches of the test split.
    ensure_batch_fits(
        "--batch-size",
        arch.bytes_per_sample(),
        arch.training_fixed_bytes(),
        config.batch_size,
        train_set.len(),
    )?;
    ensure_batch_fits(
        "--eval-batch-size",
        arch.bytes_per_sample(),
        arch.training_fixed_bytes(),
        config.eval_batch_size,
        test_set.len(),
    )?;

    let checkpoint_dir = match (&args.resume, &args.checkpoint_dir) {
        (Some(dir), _) => {
            if !dir
                .join(gauntlet_train::checkpoint::CHECKPOINT_FILE)
                .is_file()
            {
                bail!(
                    "--resume {}: no {} there to resume",
                    dir.display(),
                    gauntlet_train::checkpoint::CHECKPOINT_FILE
                );
            }
            dir.clone()
        }
        (None, chosen) => {
            let dir = chosen
                .clone()
                .unwrap_or_else(|| args.out.with_extension("checkpoint"));
            let earlier = dir.join(gauntlet_train::checkpoint::CHECKPOINT_FILE);
            if earlier.exists() {
                if !args.force {
                    bail!(
                        "{} holds the checkpoint of an earlier run; pass --resume {} to continue it, --force to start afresh, or choose another --checkpoint-dir",
                        dir.display(),
                        dir.display()
                    );
                }
                // --force replaces the earlier run, its checkpoint included:
                // otherwise training would silently resume from it.
                std::fs::remove_file(&earlier).with_context(|| {
                    format!("cannot remove the earlier checkpoint {}", earlier.display())
                })?;
            }
            dir
        }
    };
    let progress = CliProgress::new(args.quiet);
    let outcome = gauntlet_train::train_with(
        &config,
        &train_set,
        &test_set,
        &progress,
        gauntlet_train::RunControl {
            checkpoint_dir: Some(&checkpoint_dir),
            stop: None,
        },
    )?;
    for warning in &outcome.warnings {
        eprintln!("warning: {warning}");
    }
    // Described from the network in memory, as `eval` would describe the file.
    let info = gauntlet_models::save_model(&outcome.last, &args.out)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    let model = Model::Network(outcome.last);
    let best_path = args.out.with_extension("best.safetensors");
    if let Some(best) = &outcome.best {
        best.network
            .save(&best_path)
            .with_context(|| format!("cannot write {}", best_path.display()))?;
    }
    let history = &outcome.history;
    let clean = gauntlet_eval::evaluate_clean(
        &model,
        &test_set,
        config.eval_batch_size,
        &gauntlet_core::NoProgress,
    )?;
    let mut record = record_header(
        RunKind::Train,
        config.seed,
        &model,
        &info,
        None,
        test_set.record(),
    );
    record.clean = Some(CleanRecord {
        accuracy: clean.accuracy,
        correct: clean.correct,
        predictions: clean.predictions,
        labels: test_set.labels().to_vec(),
    });
    record.training = Some(TrainingRecord {
        train_dataset: train_set.record(),
        arch: arch.name().into(),
        epochs: config.epochs,
        batch_size: config.batch_size,
        optimizer: optimizer.name().into(),
        learning_rate: config.learning_rate,
        momentum: if optimizer == OptimizerKind::Sgd {
            config.momentum
        } else {
            0.0
        },
        mean: config.normalization.mean.clone(),
        std: config.normalization.std.clone(),
        history: history
            .iter()
            .map(|e| gauntlet_record::EpochRecord {
                epoch: e.epoch,
                train_loss: e.train_loss,
                train_accuracy: e.train_accuracy,
                test_accuracy: e.test_accuracy,
                robust_accuracy: e.robust_accuracy,
                epsilon: e.epsilon,
                learning_rate: Some(e.learning_rate),
                wall_seconds: e.wall_seconds,
            })
            .collect(),
        schedule: args.schedule.clone(),
        adversarial: config.adversarial.as_ref().map(|a| {
            gauntlet_record::AdversarialTrainingRecord {
                method: a.method.name().into(),
                norm: match a.norm {
                    gauntlet_core::Norm::Linf => "linf".into(),
                    gauntlet_core::Norm::L2 => "l2".into(),
                },
                epsilon: a.epsilon,
                steps: a.steps,
                relative_step_size: a.relative_step_size,
                warmup_epochs: a.warmup_epochs,
                beta: a.beta,
                clean_weight: a.clean_weight,
                robust_eval_samples: config.robust_eval_samples,
                robust_eval_steps: config.robust_eval_steps,
            }
        }),
        best_epoch: outcome.best.as_ref().map(|b| b.epoch),
        warnings: outcome.warnings.clone(),
    });
    record.wall_seconds = started.elapsed().as_secs_f64();
    let record_path = args.out.with_extension("record.json");
    write_record(&record_path, &record)?;
    println!(
        "trained {} for {} epochs: test accuracy {:.2}% on {} samples, {:.1}s",
        arch,
        outcome.history.len(),
        100.0 * clean.accuracy,
        test_set.len(),
        record.wall_seconds
    );
    println!("wrote {} and {}", args.out.display(), record_path.display());
    if let Some(best) = &outcome.best {
        println!(
            "best robust accuracy {:.2}% after epoch {}: wrote {}",
            100.0 * best.robust_accuracy,
            best.epoch,
            best_path.display()
        );
    }
    // model.safetensors → model.report/ beside it.
    write_run_report(&args.out.with_extension("report"), &record, &record_path)
}
