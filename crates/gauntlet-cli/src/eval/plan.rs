//! Everything an evaluation needs, resolved and checked before any compute.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use gauntlet_core::Classifier;
use gauntlet_data::{Dataset, Split};
use gauntlet_eval::Suite;
use gauntlet_models::{Model, ModelInfo};
use gauntlet_record::{ModelScanRecord, SuiteRecord};

use super::RunArgs;
use crate::toolbox::{
    check_out_dir, ensure_batch_fits, load_data, load_model_checked, DataArgs, ModelArgs,
};

/// Everything an evaluation needs, resolved and checked before any compute.
pub(super) struct EvalPlan {
    pub(super) model: Model,
    pub(super) info: ModelInfo,
    pub(super) scan: Option<ModelScanRecord>,
    pub(super) data: Dataset,
    pub(super) split: Split,
    pub(super) seed: u64,
    pub(super) batch_size: usize,
    pub(super) suite: Option<(Suite, SuiteRecord)>,
    pub(super) save_adversarial: bool,
    pub(super) shard: Option<gauntlet_record::ShardRecord>,
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
    let split: Split = run.split.parse()?;
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
    let mut dataset = load_data(data, split, Some(info.input_shape[0]))?;
    let shard = match shard {
        None => None,
        Some((k, n)) => {
            let total = dataset.len();
            if n > total {
                bail!("--shard {k}/{n}: {n} shards of {total} samples would leave some empty");
            }
            let range = (k - 1) * total / n..k * total / n;
            let first_sample = range.start;
            dataset = dataset.shard(range)?;
            Some(gauntlet_record::ShardRecord {
                index: k,
                count: n,
                first_sample,
                total_samples: total,
            })
        }
    };
    gauntlet_eval::check_compatible(&loaded, &dataset).with_context(|| {
        format!(
            "model {} does not fit dataset {}",
            model.model.display(),
            data.data.display()
        )
    })?;
    ensure_batch_fits(
        "--batch-size",
        loaded.bytes_per_sample(),
        0,
        run.batch_size,
        dataset.len(),
    )?;
    Ok(EvalPlan {
        model: loaded,
        info,
        scan,
        data: dataset,
        split,
        seed: run.seed,
        batch_size: run.batch_size,
        suite,
        save_adversarial: run.save_adversarial,
        shard,
        out,
        resume,
        quiet: run.quiet,
    })
}
