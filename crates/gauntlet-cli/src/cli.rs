//! The command line's schema: every command and its flags (clap), and the
//! dispatch to the module that runs it.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Adversarial-robustness testing for image classifiers.
#[derive(Parser, Debug)]
#[command(name = "gauntlet", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// CPU threads for compute (default: all cores); recorded in the run record.
    #[arg(long, global = true)]
    pub(crate) threads: Option<usize>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a built-in architecture (seeded, reproducible) and save it as safetensors.
    Train(crate::train::TrainArgs),
    /// Evaluate a model on a dataset: clean accuracy, and robust accuracy under an
    /// attack suite (--suite); writes the run record (results.json).
    Eval(crate::eval::EvalArgs),
    /// Run one attack over an ε grid and write the run record (results.json).
    Attack(crate::eval::AttackArgs),
    /// Load a model, check it, and print what it is (format, architecture, sha256).
    Info(crate::info::InfoArgs),
    /// Poisoning: inject backdoors or label flips, detect them, audit a training recipe.
    #[command(subcommand)]
    Poison(crate::poison::PoisonCommand),
    /// Render run records as report.html, summary.md and charts (.svg, .png);
    /// several records are compared on shared charts.
    Report(crate::report::ReportArgs),
    /// The main job on the shipped defaults: evaluate the shipped CNN, adversarially
    /// train a CNN for a few epochs (FGSM-RS), evaluate it the same way, and write
    /// one report comparing them.
    Demo(crate::demo::DemoArgs),
    /// The CI gate: thresholds and/or regressions against a baseline. Exit 0 pass,
    /// 1 the gate failed, 2 an error. Writes junit.xml and summary.md.
    Check(crate::gate::CheckArgs),
    /// Manage baselines for `gauntlet check --baseline`.
    #[command(subcommand)]
    Baseline(crate::gate::BaselineCommand),
    /// Combine the records of `--shard K/N` runs into the record of the whole run.
    Merge(crate::report::MergeArgs),
    /// Scan model files without loading them: pickle imports (PyTorch .pt/.pth/
    /// .bin/.ckpt, raw pickles), safetensors headers and ONNX external data. Exit 0
    /// clean, 1 findings, 2 error.
    Scan(crate::scan::ScanArgs),
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Check(args) => return crate::gate::check(args),
        Command::Scan(args) => return crate::scan::scan(args),
        Command::Baseline(command) => crate::gate::baseline(command),
        Command::Train(args) => crate::train::train(args),
        Command::Eval(args) => crate::eval::eval(args),
        Command::Attack(args) => crate::eval::attack(args),
        Command::Info(args) => crate::info::info(args),
        Command::Poison(command) => crate::poison::run(command),
        Command::Report(args) => crate::report::run(args),
        Command::Demo(args) => crate::demo::demo(args),
        Command::Merge(args) => crate::report::merge(args),
    }
    .map(|()| ExitCode::SUCCESS)
}
