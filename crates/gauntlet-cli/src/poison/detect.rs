//! `gauntlet poison detect`: detectors on a (possibly poisoned) training set
//! with a model trained on it, scored against a manifest when there is one.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use gauntlet_core::Classifier;
use gauntlet_data::{Dataset, Split};
use gauntlet_models::Model;
use gauntlet_poison::{DetectorModel, Manifest, OnnxDetectorModel};
use gauntlet_record::{PoisoningRecord, RunKind};

use super::options::{methods, DetectorArgs};
use super::print_findings;
use crate::progress::CliProgress;
use crate::toolbox::{
    check_out_dir, load_data, load_model_checked, record_header, write_record, DataArgs, ModelArgs,
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
    let (onnx_net, native_net);
    let net: &dyn DetectorModel = match &model {
        Model::Network(network) => {
            if args.feature_layer.is_some() {
                bail!("--feature-layer names a value of an ONNX graph; built-in architectures use their penultimate layer");
            }
            native_net = gauntlet_poison::native(network)?;
            &native_net
        }
        Model::Onnx(graph) => {
            onnx_net = OnnxDetectorModel::new(graph, args.feature_layer.clone())
                .context("--feature-layer")?;
            &onnx_net
        }
    };
    let train = load_data(&args.data, Split::Train, None)?;
    gauntlet_eval::check_compatible(&model, &train)?;
    gauntlet_core::ensure_batch_fits(
        "--batch-size",
        model.bytes_per_sample(),
        0,
        args.detectors.batch_size,
        train.len(),
    )?;
    let test_args = DataArgs {
        limit: None,
        ..args.data.clone()
    };
    let test = load_data(&test_args, Split::Test, None)?;
    let manifest = args
        .ground_truth
        .as_deref()
        .map(|path| read_manifest(path, &train))
        .transpose()?;
    let truth = manifest.as_ref().map(Manifest::is_poisoned);
    let progress = CliProgress::new(args.quiet);
    let detectors = chosen.training_set.run(
        net,
        &train,
        Some(&test),
        truth.as_deref(),
        args.detectors.batch_size,
        &progress,
    )?;
    let trigger = manifest
        .as_ref()
        .and_then(|m| m.trigger.as_ref().map(|t| (t, m.config.target)));
    let strip = chosen
        .strip
        .as_ref()
        .map(|strip| {
            gauntlet_poison::run_strip(strip, net, &test, args.detectors.strip_held_out, trigger)
        })
        .transpose()?;
    let true_target = trigger.and_then(|(_, target)| target);
    let mut detectors = detectors;
    let neural_cleanse = match &chosen.cleanse {
        Some(cleanse) => {
            let (record, carriers) = gauntlet_poison::run_neural_cleanse(
                cleanse,
                net,
                &test,
                args.detectors.cleanse_samples,
                Some((&train, truth.as_deref())),
                true_target,
                &progress,
            )?;
            detectors.extend(carriers);
            Some(record)
        }
        None => None,
    };
    let poisoning = PoisoningRecord {
        train_dataset: train.record(),
        injection: manifest.as_ref().map(gauntlet_poison::injection_record),
        detectors,
        strip,
        neural_cleanse,
        before_filtering: None,
        after_filtering: None,
        removed: Vec::new(),
    };
    print_findings(&poisoning);
    let mut record = record_header(
        RunKind::Poison,
        args.seed,
        &model,
        &info,
        scan,
        test.record(),
    );
    record.poisoning = Some(poisoning);
    record.wall_seconds = started.elapsed().as_secs_f64();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let path = args.out.join("results.json");
    write_record(&path, &record)?;
    println!("wrote {}", path.display());
    crate::toolbox::write_run_report(&args.out, &record, &path)
}
