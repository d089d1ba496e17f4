//! `gauntlet poison inject | detect | audit`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::{Args, Subcommand};
use gauntlet_core::Classifier;
use gauntlet_data::{Dataset, Split};
use gauntlet_models::{load_model, Arch, Model, ModelOptions};
use gauntlet_poison::{
    ActivationClustering, AuditConfig, DetectorModel, InjectionConfig, Manifest, NeuralCleanse,
    OnnxDetectorModel, Patch, PatchPattern, PatchPosition, PoisonAttack, Scan, SpectralSignatures,
    Spectre, Strip, TrainingSetDetectors,
};
use gauntlet_record::{PoisoningRecord, RunKind, RunRecord, SCHEMA_VERSION};
use gauntlet_train::TrainConfig;

use crate::progress::CliProgress;
use crate::toolbox::{
    check_out_dir, command_line, environment, load_data, load_model_checked, model_record,
    write_record, DataArgs, ModelArgs,
};

#[derive(Subcommand, Debug)]
pub(crate) enum PoisonCommand {
    /// Write a poisoned copy of a dataset (train split poisoned, test split copied)
    /// and its ground-truth manifest.json; the input is never touched.
    Inject(InjectArgs),
    /// Run detectors on a (possibly poisoned) dataset with a model trained on it.
    Detect(DetectArgs),
    /// Inject → train → measure → detect → filter → retrain → measure, in one record.
    Audit(AuditArgs),
}

/// The attack to inject.
#[derive(Args, Debug, Clone)]
pub(crate) struct InjectionArgs {
    /// badnets (Gu et al. 2017), blend (Chen et al. 2017) or label-flip.
    #[arg(long)]
    attack: String,
    /// Target class (required for badnets and blend; label-flip without it flips to random classes).
    #[arg(long)]
    target: Option<u32>,
    /// Fraction of the source-class training images to poison, in (0, 1].
    #[arg(long, default_value_t = 0.1)]
    fraction: f64,
    /// Source classes: all (every class but the target) or a list such as 1,7.
    #[arg(long, default_value = "all")]
    source: String,
    /// BadNets patch side in pixels.
    #[arg(long, default_value_t = 3)]
    trigger_size: usize,
    /// Trigger image (.npy, uint8 0–255 or float 0–1, H×W or C×H×W): the BadNets
    /// patch (square; its side sets the size) or the full-image blend pattern.
    #[arg(long, conflicts_with_all = ["trigger_size", "trigger_pattern"])]
    trigger_image: Option<PathBuf>,
    /// BadNets patch position: bottom-right, bottom-left, top-right, top-left or ROW,COL.
    #[arg(long, default_value = "bottom-right")]
    trigger_position: String,
    /// BadNets patch pattern: white, checkerboard or random.
    #[arg(long, default_value = "white")]
    trigger_pattern: String,
    /// Blend opacity α of the (seeded random-noise) pattern.
    #[arg(long, default_value_t = 0.1)]
    alpha: f32,
    /// Seed of the choice of images, patterns and flips.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args, Debug)]
pub(crate) struct InjectArgs {
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    injection: InjectionArgs,
    /// New dataset directory (x_train.npy, y_train.npy, x_test.npy, y_test.npy, manifest.json); must not exist.
    #[arg(long)]
    out: PathBuf,
}

/// Detector settings shared by detect and audit.
#[derive(Args, Debug, Clone)]
pub(crate) struct DetectorArgs {
    /// Detectors: activation-clustering, spectral-signatures, spectre, scan, strip, neural-cleanse, or all (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "all")]
    method: Vec<String>,
    /// STRIP: clean test images held out for calibration and overlays (as many more are judged).
    #[arg(long, default_value_t = 500)]
    strip_held_out: usize,
    /// STRIP: clean images blended with each input.
    #[arg(long, default_value_t = 100)]
    overlays: usize,
    /// STRIP: false-rejection rate the threshold is set for.
    #[arg(long, default_value_t = 0.01)]
    false_rejection_rate: f64,
    /// Neural Cleanse: optimisation steps per class.
    #[arg(long, default_value_t = 300)]
    cleanse_steps: usize,
    /// Neural Cleanse: clean test images it optimises on.
    #[arg(long, default_value_t = 500)]
    cleanse_samples: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
}

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

#[derive(Args, Debug)]
pub(crate) struct AuditArgs {
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    injection: InjectionArgs,
    #[command(flatten)]
    detectors: DetectorArgs,
    /// Architecture trained on the poisoned data: mlp, cnn, cifar-cnn.
    #[arg(long, default_value = "cnn")]
    arch: String,
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

pub(crate) fn run(command: PoisonCommand) -> Result<()> {
    match command {
        PoisonCommand::Inject(args) => inject(args),
        PoisonCommand::Detect(args) => detect(args),
        PoisonCommand::Audit(args) => audit(args),
    }
}

fn injection_config(args: &InjectionArgs) -> Result<InjectionConfig> {
    let trigger_image = match &args.trigger_image {
        Some(path) => Some((
            path,
            gauntlet_data::load_image_npy(path)
                .with_context(|| format!("cannot use --trigger-image {}", path.display()))?,
        )),
        None => None,
    };
    let attack = match args.attack.as_str() {
        "badnets" => {
            let (size, pattern) = match trigger_image {
                Some((path, image)) => {
                    let [_, h, w] = image.shape;
                    if h != w {
                        bail!(
                            "--trigger-image {} is {h}×{w}, expected a square BadNets patch",
                            path.display()
                        );
                    }
                    (h, PatchPattern::Image(image.values))
                }
                None => (
                    args.trigger_size,
                    PatchPattern::parse(&args.trigger_pattern)?,
                ),
            };
            PoisonAttack::Badnets(Patch {
                size,
                position: PatchPosition::parse(&args.trigger_position)?,
                pattern,
            })
        }
        "blend" => PoisonAttack::Blend {
            alpha: args.alpha,
            pattern: trigger_image.map(|(_, image)| image.values),
        },
        "label-flip" if args.trigger_image.is_some() => {
            bail!("--trigger-image does not apply to label-flip, which changes labels only")
        }
        "label-flip" => PoisonAttack::LabelFlip,
        other => bail!("unknown poisoning attack '{other}', expected badnets, blend or label-flip"),
    };
    let source = match args.source.as_str() {
        "all" => None,
        list => Some(
            list.split(',')
                .map(|c| {
                    c.trim().parse::<u32>().with_context(|| {
                        format!("--source '{list}' must be 'all' or class numbers such as 1,7")
                    })
                })
                .collect::<Result<Vec<_>>>()?,
        ),
    };
    Ok(InjectionConfig {
        attack,
        target: args.target,
        fraction: args.fraction,
        source,
        seed: args.seed,
    })
}

/// Refuse an output directory that exists (the input dataset included), so
/// nothing is ever overwritten.
fn fresh_out_dir(out: &Path) -> Result<()> {
    if out.exists() {
        bail!(
            "--out {} already exists; choose a new directory (poisoning never overwrites)",
            out.display()
        );
    }
    Ok(())
}

fn inject(args: InjectArgs) -> Result<()> {
    fresh_out_dir(&args.out)?;
    let settings = injection_config(&args.injection)?;
    let train = load_data(&args.data, Split::Train, None)?;
    let test_args = DataArgs {
        limit: None,
        ..args.data.clone()
    };
    let test = load_data(&test_args, Split::Test, None)?;
    let poisoned = gauntlet_poison::inject(&train, &settings)?;
    // Write into a temporary sibling directory and rename it into place: the output
    // appears whole or not at all.
    let parent = match args.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".gauntlet-inject-")
        .tempdir_in(&parent)
        .with_context(|| format!("cannot create a staging directory in {}", parent.display()))?;
    let write = |name: &str, bytes: &[u8]| -> Result<()> {
        let path = staging.path().join(name);
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))
    };
    let (x_train, y_train) = poisoned.dataset.to_npy()?;
    write("x_train.npy", &x_train)?;
    write("y_train.npy", &y_train)?;
    let (x_test, y_test) = test.to_npy()?;
    write("x_test.npy", &x_test)?;
    write("y_test.npy", &y_test)?;
    let reloaded = gauntlet_data::load(
        staging.path(),
        &gauntlet_data::LoadOptions {
            split: Split::Train,
            limit: None,
            num_classes: Some(train.num_classes()),
            ..Default::default()
        },
    )?;
    let mut manifest = poisoned.manifest;
    manifest.poisoned_sha256 = reloaded.sha256().into();
    write("manifest.json", manifest_json(&manifest)?.as_bytes())?;
    let staged = staging.keep();
    std::fs::rename(&staged, &args.out)
        .with_context(|| format!("cannot move the new dataset into {}", args.out.display()))?;
    println!(
        "poisoned {} of {} training samples ({}{}); wrote {} with manifest.json",
        manifest.indices.len(),
        train.len(),
        settings.attack.name(),
        settings
            .target
            .map(|t| format!(" → class {t}"))
            .unwrap_or_default(),
        args.out.display()
    );
    Ok(())
}

fn manifest_json(manifest: &Manifest) -> Result<String> {
    let mut text = serde_json::to_string_pretty(manifest)?;
    text.push('\n');
    Ok(text)
}

fn read_manifest(path: &Path, data: &Dataset) -> Result<Manifest> {
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

/// Which detectors a `--method` list names.
struct Methods {
    training_set: TrainingSetDetectors,
    strip: Option<Strip>,
    cleanse: Option<NeuralCleanse>,
}

fn methods(args: &DetectorArgs, seed: u64) -> Result<Methods> {
    let mut chosen = Methods {
        training_set: TrainingSetDetectors::default(),
        strip: None,
        cleanse: None,
    };
    for name in &args.method {
        let all = name == "all";
        let mut known = all;
        if all || name == "activation-clustering" {
            chosen.training_set.activation_clustering = Some(ActivationClustering {
                seed,
                ..ActivationClustering::default()
            });
            known = true;
        }
        if all || name == "spectral-signatures" {
            chosen.training_set.spectral_signatures = Some(SpectralSignatures {
                seed,
                ..SpectralSignatures::default()
            });
            known = true;
        }
        if all || name == "spectre" {
            chosen.training_set.spectre = Some(Spectre {
                seed,
                ..Spectre::default()
            });
            known = true;
        }
        if all || name == "scan" {
            chosen.training_set.scan = Some(Scan {
                seed,
                ..Scan::default()
            });
            known = true;
        }
        if all || name == "strip" {
            chosen.strip = Some(Strip {
                overlays: args.overlays,
                false_rejection_rate: args.false_rejection_rate,
                batch_size: args.batch_size,
                seed,
            });
            known = true;
        }
        if all || name == "neural-cleanse" {
            chosen.cleanse = Some(NeuralCleanse {
                steps: args.cleanse_steps,
                seed,
                ..NeuralCleanse::default()
            });
            known = true;
        }
        if !known {
            bail!("unknown detector '{name}', expected activation-clustering, spectral-signatures, spectre, scan, strip, neural-cleanse or all");
        }
    }
    if let Some(strip) = &chosen.strip {
        if strip.overlays == 0
            || !(strip.false_rejection_rate > 0.0 && strip.false_rejection_rate < 1.0)
        {
            bail!(
                "STRIP needs --overlays ≥ 1 and --false-rejection-rate in (0, 1), got {} and {}",
                strip.overlays,
                strip.false_rejection_rate
            );
        }
    }
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    Ok(chosen)
}

fn detect(args: DetectArgs) -> Result<()> {
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
    crate::toolbox::ensure_batch_fits(
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
    let record = RunRecord {
        schema_version: SCHEMA_VERSION,
        tool: gauntlet_record::this_tool(),
        kind: RunKind::Poison,
        command: command_line(),
        seed: args.seed,
        environment: environment(&model),
        model: model_record(&info, scan),
        dataset: test.record(),
        clean: None,
        training: None,
        robustness: None,
        poisoning: Some(poisoning),
        shard: None,
        wall_seconds: started.elapsed().as_secs_f64(),
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let path = args.out.join("results.json");
    write_record(&path, &record)?;
    println!("wrote {}", path.display());
    crate::toolbox::write_run_report(&args.out, &record, &path)
}

fn audit(args: AuditArgs) -> Result<()> {
    let started = Instant::now();
    fresh_out_dir(&args.out)?;
    let injection = injection_config(&args.injection)?;
    let seed = injection.seed;
    let chosen = methods(&args.detectors, seed)?;
    let training = TrainConfig {
        arch: Arch::parse(&args.arch)?,
        epochs: args.epochs,
        seed,
        robust_eval_samples: 0,
        ..TrainConfig::default()
    };
    training.validate()?;
    let train = load_data(&args.data, Split::Train, None)?;
    let test_args = DataArgs {
        limit: None,
        ..args.data.clone()
    };
    let test = load_data(&test_args, Split::Test, None)?;
    injection.validate(&train)?;
    // Training uses its default batch of 50: a few MB per batch.
    crate::toolbox::ensure_batch_fits(
        "--batch-size",
        training.arch.bytes_per_sample(),
        training.arch.training_fixed_bytes(),
        args.detectors.batch_size,
        train.len(),
    )?;
    let settings = AuditConfig {
        injection,
        training,
        detectors: chosen.training_set,
        strip: chosen.strip,
        strip_held_out: args.detectors.strip_held_out,
        neural_cleanse: chosen.cleanse,
        cleanse_samples: args.detectors.cleanse_samples,
        batch_size: args.detectors.batch_size,
    };
    let progress = CliProgress::new(args.quiet);
    let outcome = gauntlet_poison::audit(&settings, &train, &test, &progress)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let poisoned_path = args.out.join("poisoned.safetensors");
    let filtered_path = args.out.join("filtered.safetensors");
    outcome.poisoned_model.save(&poisoned_path)?;
    outcome.filtered_model.save(&filtered_path)?;
    gauntlet_core::write_atomic(
        &args.out.join("manifest.json"),
        manifest_json(&outcome.manifest)?.as_bytes(),
    )?;
    let (poisoned, info) = load_model(&poisoned_path, &ModelOptions::default(), &Device::Cpu)
        .with_context(|| format!("cannot reload {}", poisoned_path.display()))?;
    print_findings(&outcome.record);
    let record = RunRecord {
        schema_version: SCHEMA_VERSION,
        tool: gauntlet_record::this_tool(),
        kind: RunKind::Poison,
        command: command_line(),
        seed,
        environment: environment(&poisoned),
        model: model_record(&info, None),
        dataset: test.record(),
        clean: None,
        training: None,
        robustness: None,
        poisoning: Some(outcome.record),
        shard: None,
        wall_seconds: started.elapsed().as_secs_f64(),
    };
    let path = args.out.join("results.json");
    write_record(&path, &record)?;
    println!("wrote {}", path.display());
    crate::toolbox::write_run_report(&args.out, &record, &path)
}

fn print_findings(record: &PoisoningRecord) {
    if let Some(before) = &record.before_filtering {
        println!(
            "poisoned model: clean accuracy {:.2}%, attack success {}",
            100.0 * before.clean_accuracy,
            percent(before.attack_success_rate)
        );
    }
    for detector in &record.detectors {
        let classes: Vec<String> = detector
            .classes
            .iter()
            .filter(|c| c.poisoned)
            .map(|c| c.class.to_string())
            .collect();
        let quality = detector
            .metrics
            .as_ref()
            .map(|m| {
                format!(
                    ", precision {:.3} recall {:.3} F1 {:.3}",
                    m.precision, m.recall, m.f1
                )
            })
            .unwrap_or_default();
        println!(
            "{:<22} flagged {} samples in classes [{}]{quality} ({:.1}s)",
            detector.method,
            detector.flagged.len(),
            classes.join(", "),
            detector.wall_seconds
        );
    }
    if let Some(strip) = &record.strip {
        println!(
            "{:<22} threshold {:.4}, clean rejected {:.1}%, triggered accepted {} ({:.1}s)",
            "strip",
            strip.threshold,
            100.0 * strip.measured_false_rejection_rate,
            percent(strip.false_acceptance_rate),
            strip.wall_seconds
        );
    }
    if let Some(cleanse) = &record.neural_cleanse {
        println!(
            "{:<22} suspected targets {:?} ({:.1}s)",
            "neural-cleanse", cleanse.suspected_targets, cleanse.wall_seconds
        );
    }
    if let Some(after) = &record.after_filtering {
        println!(
            "filtered model ({} samples removed): clean accuracy {:.2}%, attack success {}",
            record.removed.len(),
            100.0 * after.clean_accuracy,
            percent(after.attack_success_rate)
        );
    }
    if let Some(verdict) = record.backdoor_verdict() {
        println!("{verdict}");
    }
}

fn percent(value: Option<f64>) -> String {
    value
        .map(|v| format!("{:.1}%", 100.0 * v))
        .unwrap_or_else(|| "n/a".into())
}
