//! Everything an evaluation needs, resolved and checked before any compute.

use std::path::PathBuf;

use anyhow::{bail, Result};
use gauntlet_data::Split;
use gauntlet_eval::Suite;
use gauntlet_models::ModelInfo;
use gauntlet_record::SuiteRecord;

use super::RunArgs;
use crate::toolbox::{
    check_out_dir, command_line, load_data, load_model_checked, DataArgs, ModelArgs,
};

/// The library's checked evaluation, and what the command needs around it.
pub(super) struct EvalPlan {
    pub(super) job: gauntlet_eval::EvalPlan,
    pub(super) info: ModelInfo,
    pub(super) split: Split,
    pub(super) out: PathBuf,
    pub(super) resume: bool,
    pub(super) quiet: bool,
}

/// Parse `K/N` (1 ≤ K ≤ N).
fn parse_shard(text: &str) -> Result<(usize, usize)> {
    let parsed = text.split_once('/').and_then(|(k, n)| {
        Some((
            k.trim().parse::<usize>().ok()?,
            n.trim().parse::<usize>().ok()?,
        ))
    });
    match parsed {
        Some((k, n)) if n >= 1 && (1..=n).contains(&k) => Ok((k, n)),
        _ => bail!("--shard '{text}' must be K/N with 1 ≤ K ≤ N, e.g. 2/3"),
    }
}

/// Resolve and check everything before any compute: every user error surfaces here.
pub(super) fn plan(
    model: &ModelArgs,
    data: &DataArgs,
    run: RunArgs,
    suite: Option<(Suite, SuiteRecord)>,
) -> Result<EvalPlan> {
    let split = run.split;
    if run.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if run.save_adversarial && suite.is_none() {
        bail!(
            "--save-adversarial needs --suite: there are no adversarial examples without attacks"
        );
    }
    let resume = run.resume.is_some();
    let out = match (run.resume, run.out) {
        (Some(dir), _) | (None, Some(dir)) => dir,
        (None, None) => bail!("--out DIR is required"),
    };
    if resume && suite.is_none() {
        bail!("--resume continues attack suites; a clean-only evaluation has nothing to resume");
    }
    check_out_dir(&out, run.force || resume)?;
    let shard = run.shard.as_deref().map(parse_shard).transpose()?;
    let (loaded, info, scan) = load_model_checked(model)?;
    let dataset = load_data(data, split, Some(info.input_shape[0]))?;
    let job = gauntlet_eval::EvalJob {
        model: loaded,
        model_record: gauntlet_eval::model_record(&info, scan),
        data: dataset,
        suite,
        seed: run.seed,
        batch_size: run.batch_size,
        keep_examples: run.save_adversarial,
        shard,
        command: command_line(),
    };
    let job = job.plan().map_err(|err| match err {
        gauntlet_eval::Error::Incompatible(_) => anyhow::Error::new(err).context(format!(
            "model {} does not fit dataset {}",
            model.model.display(),
            data.data.display()
        )),
        other => other.into(),
    })?;
    Ok(EvalPlan {
        job,
        info,
        split,
        out,
        resume,
        quiet: run.quiet,
    })
}
