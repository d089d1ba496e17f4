//! `gauntlet eval` and `gauntlet attack`: flags → plan (every user error before
//! any compute, in `plan`) → run, record and report (`run`).

mod plan;
mod run;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use gauntlet_data::Split;
use gauntlet_eval::{Suite, TargetSpec};

use crate::toolbox::{one_of, DataArgs, ModelArgs};

/// `--targeted`, checked as clap parses it.
fn parse_target(text: &str) -> std::result::Result<TargetSpec, String> {
    gauntlet_eval::parse_target(text).map_err(|e| e.to_string())
}

/// Settings shared by every evaluating command.
#[derive(Args, Debug)]
struct RunArgs {
    /// Split to evaluate.
    #[arg(long, default_value = "test", value_parser = one_of(&Split::ALL, Split::as_str))]
    split: Split,
    /// The run's seed (recorded; every random choice derives from it).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Samples per forward pass / attack batch.
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    /// Also write the adversarial examples found to DIR/adversarial.npz.
    #[arg(long)]
    save_adversarial: bool,
    /// Evaluate only shard K of N (1-based): a contiguous, deterministic slice of the
    /// samples; `gauntlet merge` combines the N records into the whole run's.
    #[arg(long, value_name = "K/N")]
    shard: Option<String>,
    /// Output directory for results.json (and, while attacks run, journal.jsonl).
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue the run interrupted in DIR (a crash, kill -9 or Ctrl-C), skipping
    /// the batches its journal holds; give the same arguments as the first time.
    #[arg(long, value_name = "DIR", conflicts_with = "out")]
    resume: Option<PathBuf>,
    /// Replace the run record already in --out.
    #[arg(long)]
    force: bool,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args, Debug)]
pub(crate) struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Attack suite (TOML preset, e.g. attacks/quick.toml); without it only clean accuracy.
    #[arg(long)]
    suite: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args, Debug)]
pub(crate) struct AttackArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Attack registry name.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(gauntlet_attacks::NAMES))]
    attack: String,
    /// ε values, comma-separated; fractions like 8/255 are accepted.
    #[arg(long, value_delimiter = ',', required = true)]
    eps: Vec<String>,
    /// Iterations (iterative attacks).
    #[arg(long)]
    steps: Option<usize>,
    /// Absolute step size (PGD family).
    #[arg(long, conflicts_with = "rel_step_size")]
    step_size: Option<f64>,
    /// Step size relative to ε (PGD family).
    #[arg(long)]
    rel_step_size: Option<f64>,
    /// Restarts (PGD family, APGD, FAB).
    #[arg(long)]
    restarts: Option<usize>,
    /// Query budget (square-linf, square-l2).
    #[arg(long)]
    queries: Option<usize>,
    /// Targeted goal: random, least-likely, or a class index.
    #[arg(long, value_parser = parse_target)]
    targeted: Option<TargetSpec>,
    #[command(flatten)]
    run: RunArgs,
}

pub(crate) fn eval(args: EvalArgs) -> Result<()> {
    let started = Instant::now();
    let suite = match &args.suite {
        None => None,
        Some(path) => {
            let suite = Suite::from_file(path)?;
            let record = suite.record(Some(path))?;
            Some((suite, record))
        }
    };
    let plan = plan::plan(&args.model, &args.data, args.run, suite)?;
    run::run_plan(plan, started)
}

pub(crate) fn attack(args: AttackArgs) -> Result<()> {
    let started = Instant::now();
    let mut params = serde_json::Map::new();
    if let Some(v) = args.steps {
        params.insert("steps".into(), v.into());
    }
    if let Some(v) = args.step_size {
        params.insert("step_size".into(), serde_json::json!({ "absolute": v }));
    }
    if let Some(v) = args.rel_step_size {
        params.insert("step_size".into(), serde_json::json!({ "relative": v }));
    }
    if let Some(v) = args.restarts {
        params.insert("restarts".into(), v.into());
    }
    if let Some(v) = args.queries {
        params.insert("queries".into(), v.into());
    }
    let params = serde_json::Value::Object(params);
    let epsilons = args
        .eps
        .iter()
        .map(|e| gauntlet_eval::parse_epsilon(e))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let target = args.targeted.unwrap_or(TargetSpec::None);
    let suite = Suite::single(gauntlet_eval::SuiteAttack {
        name: args.attack.clone(),
        epsilons,
        target,
        params,
        schedule: gauntlet_eval::Schedule::default(),
    })?;
    let record = suite.record(None)?;
    let plan = plan::plan(&args.model, &args.data, args.run, Some((suite, record)))?;
    run::run_plan(plan, started)
}
