//! `gauntlet train`: a built-in architecture, standard or adversarial training,
//! checkpoints every epoch; writes the model, its record and its report.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use gauntlet_data::Split;
use gauntlet_models::{Arch, Normalization};
use gauntlet_train::{
    AdversarialMethod, AdversarialTraining, LrSchedule, OptimizerKind, TrainConfig,
};

use crate::progress::CliProgress;
use crate::toolbox::{command_line, load_data, one_of, write_record, write_run_report, DataArgs};

#[derive(Args, Debug)]
pub(crate) struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Architecture to train.
    #[arg(long, default_value = "cnn", value_parser = one_of(&Arch::ALL, Arch::name))]
    arch: Arch,
    /// Passes over the training split.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Mini-batch size.
    #[arg(long, default_value_t = 50)]
    batch_size: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Optimiser: Adam (Kingma & Ba 2015) or SGD with momentum.
    #[arg(long, default_value = "adam", value_parser = one_of(&OptimizerKind::ALL, OptimizerKind::name))]
    optimizer: OptimizerKind,
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
    #[arg(long, default_value = "constant", value_parser = one_of(&LrSchedule::ALL, LrSchedule::name))]
    schedule: LrSchedule,
    /// Adversarial training: pgd (Madry et al. 2018), fgsm-rs (Wong et al. 2020) or trades (Zhang et al. 2019).
    #[arg(long, requires = "epsilon", value_parser = one_of(&AdversarialMethod::ALL, AdversarialMethod::name))]
    adversarial: Option<AdversarialMethod>,
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
    let normalization = match (args.mean, args.std) {
        (Some(mean), Some(std)) => Normalization { mean, std },
        _ => Normalization::default(),
    };
    let adversarial = match (args.adversarial, args.epsilon) {
        (Some(method), Some(epsilon)) => {
            let steps = args.attack_steps.unwrap_or(10);
            let mut settings = match method {
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
        arch: args.arch,
        epochs: args.epochs,
        batch_size: args.batch_size,
        learning_rate: args.lr,
        optimizer: args.optimizer,
        momentum: args.momentum,
        seed: args.seed,
        normalization,
        adversarial,
        schedule: args.schedule,
        robust_eval_samples: args
            .robust_eval_samples
            .unwrap_or(defaults.robust_eval_samples),
        robust_eval_steps: args.robust_eval_steps.unwrap_or(defaults.robust_eval_steps),
        eval_batch_size: args.eval_batch_size.unwrap_or(defaults.eval_batch_size),
    };
    let train_set = load_data(&args.data, Split::Train, None)?;
    // The evaluation split is always used whole: --limit restricts training data only.
    let eval_args = DataArgs {
        limit: None,
        ..args.data.clone()
    };
    let test_set = load_data(&eval_args, Split::Test, None)?;
    let plan = gauntlet_train::TrainJob {
        config,
        train_set,
        test_set,
        out: args.out.clone(),
        checkpoint_dir: args.resume.clone().or(args.checkpoint_dir),
        resume: args.resume.is_some(),
        replace: args.force,
        command: command_line(),
    }
    .plan()?;
    let progress = CliProgress::new(args.quiet);
    let output = plan.run(&progress, None)?;
    let mut record = output.record;
    // The whole command's time, loading included.
    record.wall_seconds = started.elapsed().as_secs_f64();
    let record_path = args.out.with_extension("record.json");
    write_record(&record_path, &record)?;
    crate::summary::print_training(&record, &args.out, &record_path, output.best.as_ref());
    // model.safetensors → model.report/ beside it.
    write_run_report(&args.out.with_extension("report"), &record, &record_path)
}
