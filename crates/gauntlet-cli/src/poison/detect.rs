//! `gauntlet poison detect`: detectors on a (possibly poisoned) training set
//! with a model trained on it, scored against a manifest when there is one.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use gauntlet_data::{Dataset, Split};
use gauntlet_poison::{DetectJob, Manifest};

use super::options::{methods, DetectorArgs};
use super::write_outputs;
use crate::progress::CliProgress;
use crate::toolbox::{
    check_out_dir, command_line, load_data, load_model_checked, DataArgs, ModelArgs,
};

#[derive(Args, Debug)]
pub(crate) struct DetectArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    detectors: DetectorArgs,
    /// Ground-truth manifest.json from `poison inject`: scores the detectors against it.
    #[arg(long)]
    ground_truth: Option<PathBuf>,
    /// ONNX models: the graph value (a node output name) whose activations the
    /// clustering detectors read; by default the input of the last Gemm/MatMul.
    #[arg(long, value_name = "NODE_OUTPUT")]
    feature_layer: Option<String>,
    /// The run's seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory for results.json.
    #[arg(long)]
    out: PathBuf,
    /// Replace the run record already in --out.
    #[arg(long)]
    force: bool,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
}

pub(super) fn read_manifest(path: &Path, data: &Dataset) -> Result<Manifest> {
    let text =
        gauntlet_core::read_text_limited(path, gauntlet_core::MAX_DOCUMENT_BYTES, "manifest")?;
    let manifest: Manifest = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a Gauntlet poisoning manifest", path.display()))?;
    manifest.check_matches(data).map_err(|message| {
        anyhow::anyhow!(
            "manifest {} does not describe the dataset {}: {message}",
            path.display(),
            data.path().display()
        )
    })?;
    Ok(manifest)
}

pub(super) fn detect(args: DetectArgs) -> Result<()> {
    let started = Instant::now();
    check_out_dir(&args.out, args.force)?;
    let chosen = methods(&args.detectors, args.seed)?;
    let (model, info, scan) = load_model_checked(&args.model)?;
    let train = load_data(&args.data, Split::Train, None)?;
    let test_args = DataArgs {
        limit: None,
        ..args.data.clone()
    };
    let test = load_data(&test_args, Split::Test, None)?;
    let ground_truth = args
        .ground_truth
        .as_deref()
        .map(|path| read_manifest(path, &train))
        .transpose()?;
    let plan = DetectJob {
        model,
        model_record: gauntlet_eval::model_record(&info, scan),
        feature_layer: args.feature_layer.clone(),
        train_set: train,
        test_set: test,
        ground_truth,
        detectors: chosen.training_set,
        strip: chosen.strip.map(|s| (s, args.detectors.strip_held_out)),
        neural_cleanse: chosen.cleanse.map(|c| (c, args.detectors.cleanse_samples)),
        batch_size: args.detectors.batch_size,
        seed: args.seed,
        command: command_line(),
    }
    .plan()?;
    let record = plan.run(&CliProgress::new(args.quiet))?;
    write_outputs(&args.out, record, started)
}
