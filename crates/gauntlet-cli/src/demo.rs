//! `gauntlet demo`: the main job on the shipped defaults. It composes the same
//! library jobs `eval` and `train` run (recording for each step the command line
//! that re-runs it alone), then writes one report comparing them.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use gauntlet_data::Split;
use gauntlet_eval::{EvalJob, NoJournal, Suite};
use gauntlet_report::ReportInput;
use gauntlet_train::{AdversarialTraining, TrainConfig, TrainJob};

use crate::progress::CliProgress;
use crate::toolbox::{
    check_out_dir, load_data, load_model_checked, read_record, write_record, write_report,
    write_run_report, DataArgs, ModelArgs,
};

#[derive(Args, Debug)]
pub(crate) struct DemoArgs {
    /// The standard model to evaluate (the shipped CNN by default).
    #[arg(long, default_value = "examples/models/mnist-cnn.safetensors")]
    model: PathBuf,
    /// Dataset (the shipped MNIST subset by default): its train split trains the
    /// adversarial model, its test split evaluates both.
    #[arg(long, default_value = "datasets/mnist-5k")]
    data: PathBuf,
    /// Attack suite both models are evaluated under.
    #[arg(long, default_value = "attacks/quick.toml")]
    suite: PathBuf,
    /// Epochs of FGSM-RS adversarial training (Wong et al. 2020) at ε = 0.3.
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    /// The run's seed (training and attacks).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory: the combined report, and one sub-directory per run
    /// (replaced on every run: the demo regenerates it).
    #[arg(long, default_value = "reports/demo")]
    out: PathBuf,
    /// No progress bars.
    #[arg(long, short)]
    quiet: bool,
}

/// FGSM-RS training settings of the demo (Wong et al. 2020 at MNIST's ε = 0.3,
/// warmed up over two epochs), as the recorded command line gives them.
const EPSILON: f64 = 0.3;
const WARMUP_EPOCHS: f64 = 2.0;
const ROBUST_EVAL_SAMPLES: usize = 200;

pub(crate) fn demo(args: DemoArgs) -> Result<()> {
    let standard_dir = args.out.join("standard");
    let adversarial_model = args.out.join("fgsm-rs").join("model.safetensors");
    let adversarial_eval = args.out.join("fgsm-rs").join("eval");
    evaluate(
        &args,
        "[1/4] evaluating the standard model",
        &args.model,
        &standard_dir,
    )?;
    train(&args, &adversarial_model)?;
    evaluate(
        &args,
        "[3/4] evaluating the adversarially trained model",
        &adversarial_model,
        &adversarial_eval,
    )?;
    println!("[4/4] writing the combined report");
    let mut inputs = vec![
        labelled(&standard_dir.join("results.json"), "standard CNN")?,
        labelled(&adversarial_eval.join("results.json"), "FGSM-RS CNN")?,
        labelled(
            &adversarial_model.with_extension("record.json"),
            "FGSM-RS training",
        )?,
    ];
    // The standard model's own training record, when it ships with one, gives the
    // standard curve next to the adversarial one.
    let standard_training = args.model.with_extension("record.json");
    if standard_training.is_file() {
        inputs.push(labelled(&standard_training, "standard training")?);
    }
    write_report(&args.out, &inputs)?;
    println!("wrote {}", args.out.join("report.html").display());
    Ok(())
}

/// `gauntlet eval --model MODEL --suite … --out OUT --force`, through the
/// library's evaluation job.
fn evaluate(args: &DemoArgs, step: &str, model: &Path, out: &Path) -> Result<()> {
    let command = step_line(
        args,
        step,
        &[
            "eval",
            "--model",
            &text(model),
            "--data",
            &text(&args.data),
            "--suite",
            &text(&args.suite),
            "--seed",
            &args.seed.to_string(),
            "--out",
            &text(out),
        ],
    );
    // The demo regenerates its directory: earlier results are replaced.
    check_out_dir(out, true)?;
    let (model, info, scan) = load_model_checked(&ModelArgs::file(model))?;
    let data = load_data(
        &DataArgs::path(&args.data),
        Split::Test,
        Some(info.input_shape[0]),
    )?;
    let suite = Suite::from_file(&args.suite)?;
    let suite_record = suite.record(Some(&args.suite))?;
    let plan = EvalJob {
        suite: Some((suite, suite_record)),
        seed: args.seed,
        command,
        ..EvalJob::new(model, gauntlet_eval::model_record(&info, scan), data)
    }
    .plan()?;
    let record = plan
        .run(&CliProgress::new(args.quiet), &mut NoJournal)?
        .record;
    let path = out.join("results.json");
    write_record(&path, &record)?;
    crate::summary::print_evaluation(&info, plan.data(), Split::Test, &record);
    println!("wrote {}", path.display());
    write_run_report(out, &record, &path)
}

/// `gauntlet train --adversarial fgsm-rs … --out MODEL --force`, through the
/// library's training job.
fn train(args: &DemoArgs, model: &Path) -> Result<()> {
    let command = step_line(
        args,
        &format!("[2/4] adversarially training a CNN (FGSM-RS, ε = {EPSILON})"),
        &[
            "train",
            "--data",
            &text(&args.data),
            "--arch",
            "cnn",
            "--epochs",
            &args.epochs.to_string(),
            "--adversarial",
            "fgsm-rs",
            "--epsilon",
            &EPSILON.to_string(),
            "--warmup-epochs",
            &WARMUP_EPOCHS.to_string(),
            "--robust-eval-samples",
            &ROBUST_EVAL_SAMPLES.to_string(),
            "--seed",
            &args.seed.to_string(),
            "--out",
            &text(model),
        ],
    );
    let config = TrainConfig {
        epochs: args.epochs,
        seed: args.seed,
        adversarial: Some(AdversarialTraining {
            warmup_epochs: WARMUP_EPOCHS,
            ..AdversarialTraining::fgsm_rs(EPSILON)
        }),
        robust_eval_samples: ROBUST_EVAL_SAMPLES,
        ..TrainConfig::default()
    };
    let data = DataArgs::path(&args.data);
    let plan = TrainJob {
        config,
        train_set: load_data(&data, Split::Train, None)?,
        test_set: load_data(&data, Split::Test, None)?,
        out: model.to_path_buf(),
        checkpoint_dir: None,
        resume: false,
        replace: true,
        command,
    }
    .plan()?;
    let output = plan.run(&CliProgress::new(args.quiet), None)?;
    let record_path = model.with_extension("record.json");
    write_record(&record_path, &output.record)?;
    crate::summary::print_training(&output.record, model, &record_path, output.best.as_ref());
    write_run_report(
        &model.with_extension("report"),
        &output.record,
        &record_path,
    )
}

/// Announce a step with the command line that re-runs it alone, and return that
/// line for its record: `gauntlet`, the step's arguments, `--force` (the demo
/// replaces earlier results), and `--quiet` when the demo is quiet.
fn step_line(args: &DemoArgs, step: &str, arguments: &[&str]) -> Vec<String> {
    let mut line = vec!["gauntlet".to_string()];
    line.extend(arguments.iter().map(|a| a.to_string()));
    line.push("--force".into());
    println!("{step}: {}", line.join(" "));
    if args.quiet {
        line.push("--quiet".into());
    }
    line
}

fn text(path: &Path) -> String {
    path.display().to_string()
}

fn labelled(path: &Path, label: &str) -> Result<ReportInput> {
    let mut input = ReportInput::new(read_record(path)?);
    input.label = label.into();
    Ok(input)
}
