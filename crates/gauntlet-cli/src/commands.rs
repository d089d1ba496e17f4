//! Argument parsing, planning (every user error before any compute) and dispatch.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::{Args, Parser, Subcommand};
use gauntlet_core::{Bounds, Classifier};
use gauntlet_data::{Dataset, Split};
use gauntlet_eval::{RobustConfig, Suite, TargetSpec};
use gauntlet_models::{load_model, Arch, Model, ModelInfo, ModelOptions, Normalization};
use gauntlet_record::{
    CleanRecord, ModelScanRecord, RobustnessRecord, RunKind, RunRecord, SuiteRecord,
    TrainingRecord, GALLERY_SIZE, SCHEMA_VERSION,
};
use gauntlet_train::{
    AdversarialMethod, AdversarialTraining, LrSchedule, OptimizerKind, TrainConfig,
};

use crate::progress::CliProgress;
use crate::toolbox::{
    check_out_dir, command_line, ensure_batch_fits, environment, load_data, load_model_checked,
    model_record, write_record, write_run_report, DataArgs, ModelArgs,
};

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
    Train(TrainArgs),
    /// Evaluate a model on a dataset: clean accuracy, and robust accuracy under an
    /// attack suite (--suite); writes the run record (results.json).
    Eval(EvalArgs),
    /// Run one attack over an ε grid and write the run record (results.json).
    Attack(AttackArgs),
    /// Load a model, check it, and print what it is (format, architecture, sha256).
    Info(InfoArgs),
    /// Poisoning: inject backdoors or label flips, detect them, audit a training recipe.
    #[command(subcommand)]
    Poison(crate::poison::PoisonCommand),
    /// Render run records as report.html, summary.md and charts (.svg, .png);
    /// several records are compared on shared charts.
    Report(crate::report::ReportArgs),
    /// The main job on the shipped defaults: evaluate the shipped CNN, adversarially
    /// train a CNN for a few epochs (FGSM-RS), evaluate it the same way, and write
    /// one report comparing them.
    Demo(crate::report::DemoArgs),
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

/// Settings shared by every evaluating command.
#[derive(Args, Debug)]
struct RunArgs {
    /// Split to evaluate.
    #[arg(long, default_value = "test")]
    split: String,
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
struct EvalArgs {
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
struct AttackArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Attack registry name (fgsm, bim, pgd-linf, pgd-l2, mifgsm, apgd-ce, apgd-dlr,
    /// apgd-t, apgd-ce-l2, apgd-dlr-l2, apgd-t-l2, square-linf, deepfool, cw-l2).
    #[arg(long)]
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
    /// Restarts (PGD family, APGD).
    #[arg(long)]
    restarts: Option<usize>,
    /// Query budget (square-linf).
    #[arg(long)]
    queries: Option<usize>,
    /// Targeted goal: random, least-likely, or a class index.
    #[arg(long)]
    targeted: Option<String>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args, Debug)]
struct TrainArgs {
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

#[derive(Args, Debug)]
struct InfoArgs {
    #[command(flatten)]
    model: ModelArgs,
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Check(args) => return crate::gate::check(args),
        Command::Scan(args) => return crate::scan::scan(args),
        Command::Baseline(command) => crate::gate::baseline(command),
        Command::Train(args) => train(args),
        Command::Eval(args) => eval(args),
        Command::Attack(args) => attack(args),
        Command::Info(args) => info(args),
        Command::Poison(command) => crate::poison::run(command),
        Command::Report(args) => crate::report::run(args),
        Command::Demo(args) => crate::report::demo(args),
        Command::Merge(args) => crate::report::merge(args),
    }
    .map(|()| ExitCode::SUCCESS)
}

/// Everything an evaluation needs, resolved and checked before any compute.
struct EvalPlan {
    model: Model,
    info: ModelInfo,
    scan: Option<ModelScanRecord>,
    data: Dataset,
    split: Split,
    seed: u64,
    batch_size: usize,
    suite: Option<(Suite, SuiteRecord)>,
    save_adversarial: bool,
    shard: Option<gauntlet_record::ShardRecord>,
    out: PathBuf,
    resume: bool,
    quiet: bool,
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
fn plan(
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

fn eval(args: EvalArgs) -> Result<()> {
    let started = Instant::now();
    let suite = match &args.suite {
        None => None,
        Some(path) => {
            let suite = Suite::from_file(path)?;
            let sha256 = gauntlet_core::sha256_file(path)
                .with_context(|| format!("cannot read suite {}", path.display()))?;
            let record = SuiteRecord {
                name: suite.name.clone(),
                description: suite.description.clone(),
                path: Some(path.display().to_string()),
                sha256: Some(sha256),
            };
            Some((suite, record))
        }
    };
    let plan = plan(&args.model, &args.data, args.run, suite)?;
    run_plan(plan, started)
}

fn attack(args: AttackArgs) -> Result<()> {
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
    let target = match &args.targeted {
        None => TargetSpec::None,
        Some(t) => gauntlet_eval::parse_target(t)?,
    };
    gauntlet_attacks::build_attack(&args.attack, &params)?;
    let suite = Suite {
        name: args.attack.clone(),
        description: format!("single attack: {}", args.attack),
        attacks: vec![gauntlet_eval::SuiteAttack {
            name: args.attack.clone(),
            epsilons,
            target,
            params,
        }],
    };
    let record = SuiteRecord {
        name: suite.name.clone(),
        description: suite.description.clone(),
        path: None,
        sha256: None,
    };
    let plan = plan(&args.model, &args.data, args.run, Some((suite, record)))?;
    run_plan(plan, started)
}

fn run_plan(plan: EvalPlan, started: Instant) -> Result<()> {
    let EvalPlan {
        model,
        info,
        scan,
        data,
        split,
        seed,
        batch_size,
        suite,
        save_adversarial,
        shard,
        out,
        resume,
        quiet,
    } = plan;
    let first_sample = shard.as_ref().map_or(0, |s| s.first_sample);
    let progress = CliProgress::new(quiet);
    let clean = gauntlet_eval::evaluate_clean(&model, &data, batch_size, &progress)?;
    let mut robustness = None;
    let mut examples = None;
    let mut journal = None;
    if let Some((suite, suite_record)) = suite {
        let entries = suite.entries()?;
        let (images, labels) = data.batch(0..data.len().min(batch_size), model.device())?;
        let mut warnings = gauntlet_eval::model_sanity(&model, &images, &labels)?;
        let config = RobustConfig {
            batch_size,
            seed,
            keep_examples: save_adversarial,
            gallery_samples: GALLERY_CANDIDATES.saturating_sub(first_sample),
            first_sample,
        };
        // Everything that decides the results: a journal from another evaluation
        // is never replayed into this one.
        let fingerprint = gauntlet_core::sha256_bytes(
            format!(
                "{}|{}|{}|{}|{}|{:?}|{}|{}|{}|{:?}|{:?}",
                env!("CARGO_PKG_VERSION"),
                info.sha256,
                data.sha256(),
                split.as_str(),
                data.len(),
                shard,
                seed,
                batch_size,
                save_adversarial,
                suite_record,
                suite.attacks
            )
            .as_bytes(),
        );
        let mut file_journal = gauntlet_eval::FileJournal::open(&out, &fingerprint, resume)?
            .with_stop_flag(crate::journal::install_interrupt_handler());
        if resume {
            println!(
                "resuming {}: {} finished batches in the journal",
                out.display(),
                file_journal.resumed_batches()
            );
        }
        let result = match gauntlet_eval::evaluate_robust_journaled(
            &model,
            &data,
            &clean,
            &entries,
            &config,
            &progress,
            &mut file_journal,
        ) {
            Err(gauntlet_eval::Error::Interrupted { batches }) => {
                eprintln!(
                    "interrupted after {batches} more batches, all saved in {}; continue with the same command and --resume {} instead of --out",
                    file_journal.path().display(),
                    out.display()
                );
                return Err(crate::journal::Interrupted.into());
            }
            other => other?,
        };
        journal = Some(file_journal);
        warnings.extend(result.warnings.iter().cloned());
        let mut gallery = gallery(&model, &data, &result.examples, &result.attacks)?;
        // Shards record dataset-wide indices, as the whole run would.
        gallery.iter_mut().for_each(|g| g.index += first_sample);
        robustness = Some(RobustnessRecord {
            suite: suite_record,
            attacks: result.attacks,
            minimal: result.minimal,
            worst_case: result.worst_case,
            warnings,
            gallery,
        });
        examples = Some(result.examples);
    }
    let record = RunRecord {
        schema_version: SCHEMA_VERSION,
        tool: gauntlet_record::this_tool(),
        kind: RunKind::Eval,
        command: command_line(),
        seed,
        environment: environment(&model),
        model: model_record(&info, scan),
        dataset: data.record(),
        clean: Some(CleanRecord {
            accuracy: clean.accuracy,
            correct: clean.correct.clone(),
            predictions: clean.predictions.clone(),
            labels: data.labels().to_vec(),
        }),
        training: None,
        robustness,
        poisoning: None,
        shard,
        wall_seconds: started.elapsed().as_secs_f64(),
    };
    if let Some(examples) = examples.filter(|_| save_adversarial) {
        let path = out.join("adversarial.npz");
        write_adversarial(
            &path,
            &model,
            &data,
            &clean.predictions,
            &examples,
            first_sample,
        )?;
        println!(
            "wrote {} ({} adversarial examples)",
            path.display(),
            examples.len()
        );
    }
    let path = out.join("results.json");
    write_record(&path, &record)?;
    if let Some(journal) = journal {
        journal.finish()?;
    }
    print_summary(&info, &data, split, &record);
    println!("wrote {}", path.display());
    write_run_report(&out, &record, &path)
}

fn print_summary(info: &ModelInfo, data: &Dataset, split: Split, record: &RunRecord) {
    let clean = record.clean.as_ref().map(|c| c.accuracy).unwrap_or(0.0);
    println!(
        "{} ({}, {}) on {} {} ({} samples): clean accuracy {:.2}%",
        info.path.display(),
        info.arch,
        &info.sha256[..12],
        data.path().display(),
        split.as_str(),
        data.len(),
        100.0 * clean,
    );
    if let Some(r) = &record.robustness {
        for wc in &r.worst_case {
            println!(
                "  worst case {:>4} ε = {:<8} robust accuracy {:6.2}%",
                wc.norm,
                format!("{:.4}", wc.epsilon),
                100.0 * wc.robust_accuracy
            );
        }
        for w in &r.warnings {
            println!("  warning [{}]: {}", w.code, w.message);
        }
    }
    if let Some(waited) = data.decode_wait() {
        let waited = waited.as_secs_f64();
        println!(
            "  image decoding held the run up {waited:.2} s of {:.2} s ({:.1}%; the next batch is decoded while one is evaluated)",
            record.wall_seconds,
            100.0 * waited / record.wall_seconds.max(1e-9)
        );
    }
}

/// Samples (in dataset order) whose adversarial examples are kept for the gallery.
const GALLERY_CANDIDATES: usize = 64;

/// The first broken samples with their adversarial examples, predictions and
/// confidences, for the report.
fn gallery(
    model: &Model,
    data: &Dataset,
    examples: &std::collections::BTreeMap<usize, (f64, String, Vec<f32>)>,
    attacks: &[gauntlet_record::AttackRecord],
) -> Result<Vec<gauntlet_record::GalleryExample>> {
    let shape = data.image_shape();
    let chosen: Vec<_> = examples
        .iter()
        .filter(|(&i, _)| i < GALLERY_CANDIDATES)
        .take(GALLERY_SIZE)
        .collect();
    if chosen.is_empty() {
        return Ok(Vec::new());
    }
    let indices: Vec<usize> = chosen.iter().map(|(&i, _)| i).collect();
    let (clean_images, _) = data.gather(&indices, model.device())?;
    let adversarial: Vec<f32> = chosen
        .iter()
        .flat_map(|(_, (_, _, image))| image.iter().copied())
        .collect();
    let [c, h, w] = shape;
    let adversarial_images =
        candle_core::Tensor::from_vec(adversarial, (chosen.len(), c, h, w), model.device())?;
    // The predicted class and its softmax probability per image.
    let top = |images: &candle_core::Tensor| -> Result<Vec<(u32, f64)>> {
        let probabilities = gauntlet_core::softmax(&model.logits(images)?)?
            .to_dtype(candle_core::DType::F32)?
            .to_vec2::<f32>()?;
        Ok(probabilities
            .iter()
            .map(|row| {
                let (class, p) = gauntlet_train::largest(row);
                (class as u32, f64::from(p))
            })
            .collect())
    };
    let clean_top = top(&clean_images)?;
    let adversarial_top = top(&adversarial_images)?;
    let clean_pixels = clean_images
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let per = c * h * w;
    Ok(chosen
        .iter()
        .enumerate()
        .map(|(k, (&index, (epsilon, attack, image)))| {
            let norm = attacks
                .iter()
                .find(|a| &a.attack == attack)
                .map(|a| a.norm.clone())
                .unwrap_or_default();
            gauntlet_record::GalleryExample {
                index,
                label: data.labels()[index],
                attack: attack.clone(),
                norm,
                epsilon: *epsilon,
                shape,
                original: clean_pixels[k * per..(k + 1) * per].to_vec(),
                adversarial: image.clone(),
                clean_prediction: clean_top[k].0,
                clean_confidence: clean_top[k].1,
                adversarial_prediction: adversarial_top[k].0,
                adversarial_confidence: adversarial_top[k].1,
            }
        })
        .collect())
}

/// The adversarial examples as an NPZ that `gauntlet eval --data` reads directly
/// (`x`, `y`), plus where they came from.
fn write_adversarial(
    path: &Path,
    model: &Model,
    data: &Dataset,
    clean_predictions: &[u32],
    examples: &std::collections::BTreeMap<usize, (f64, String, Vec<f32>)>,
    first_sample: usize,
) -> Result<()> {
    use std::io::Write;
    let [c, h, w] = data.image_shape();
    let m = examples.len();
    let mut images = Vec::with_capacity(m * c * h * w);
    let (mut labels, mut indices, mut clean_pred, mut eps) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (&i, (e, _, image)) in examples {
        images.extend_from_slice(image);
        labels.push(data.labels()[i] as i64);
        indices.push((first_sample + i) as i64);
        clean_pred.push(clean_predictions[i] as i64);
        eps.push(*e);
    }
    let mut adv_pred = Vec::with_capacity(m);
    if m > 0 {
        let x = candle_core::Tensor::from_vec(images.clone(), (m, c, h, w), model.device())?;
        let logits = model.logits(&x)?;
        adv_pred = gauntlet_eval::predictions_of(&logits, 0)?
            .into_iter()
            .map(i64::from)
            .collect();
    }
    let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let i64s = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let f64s = |v: &[f64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let entries = [
        (
            "x.npy",
            gauntlet_data::encode_npy("<f4", &[m, c, h, w], &f32s(&images)),
        ),
        (
            "y.npy",
            gauntlet_data::encode_npy("<i8", &[m], &i64s(&labels)),
        ),
        (
            "indices.npy",
            gauntlet_data::encode_npy("<i8", &[m], &i64s(&indices)),
        ),
        (
            "clean_predictions.npy",
            gauntlet_data::encode_npy("<i8", &[m], &i64s(&clean_pred)),
        ),
        (
            "adversarial_predictions.npy",
            gauntlet_data::encode_npy("<i8", &[m], &i64s(&adv_pred)),
        ),
        (
            "epsilons.npy",
            gauntlet_data::encode_npy("<f8", &[m], &f64s(&eps)),
        ),
    ];
    let mut buffer = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buffer);
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .last_modified_time(zip::DateTime::default());
        for (name, bytes) in entries {
            zip.start_file(name, options)?;
            zip.write_all(&bytes)?;
        }
        zip.finish()?;
    }
    gauntlet_core::write_atomic(path, buffer.get_ref())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn train(args: TrainArgs) -> Result<()> {
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
    outcome
        .last
        .save(&args.out)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    let best_path = args.out.with_extension("best.safetensors");
    if let Some(best) = &outcome.best {
        best.network
            .save(&best_path)
            .with_context(|| format!("cannot write {}", best_path.display()))?;
    }
    let history = &outcome.history;

    // Describe the saved file exactly as `eval` would, by loading it back.
    let (model, info) = load_model(&args.out, &ModelOptions::default(), &Device::Cpu)
        .with_context(|| format!("cannot reload the trained model {}", args.out.display()))?;
    let clean = gauntlet_eval::evaluate_clean(
        &model,
        &test_set,
        config.eval_batch_size,
        &gauntlet_core::NoProgress,
    )?;
    let record = RunRecord {
        schema_version: SCHEMA_VERSION,
        tool: gauntlet_record::this_tool(),
        kind: RunKind::Train,
        command: command_line(),
        seed: config.seed,
        environment: environment(&model),
        model: model_record(&info, None),
        dataset: test_set.record(),
        clean: Some(CleanRecord {
            accuracy: clean.accuracy,
            correct: clean.correct,
            predictions: clean.predictions,
            labels: test_set.labels().to_vec(),
        }),
        training: Some(TrainingRecord {
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
        }),
        robustness: None,
        poisoning: None,
        shard: None,
        wall_seconds: started.elapsed().as_secs_f64(),
    };
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

fn info(args: InfoArgs) -> Result<()> {
    let (model, info, _) = load_model_checked(&args.model)?;
    let Bounds { min, max } = model.bounds();
    println!("path         {}", info.path.display());
    println!("sha256       {}", info.sha256);
    println!("format       {}", info.format.as_str());
    println!("arch         {}", info.arch);
    println!("input shape  {:?} (C, H, W)", info.input_shape);
    println!("classes      {}", info.num_classes);
    println!("bounds       [{min}, {max}]");
    if let Model::Onnx(onnx) = &model {
        let graph = onnx.graph();
        let ops: Vec<String> = graph
            .op_counts()
            .into_iter()
            .map(|(op, n)| format!("{op} {n}"))
            .collect();
        println!(
            "graph        {} nodes after constant folding: {}",
            graph.nodes.len(),
            ops.join(", ")
        );
        match onnx.native() {
            Some(native) => {
                let kernels: Vec<String> = native
                    .kernel_counts()
                    .into_iter()
                    .map(|(kernel, n)| format!("{kernel} {n}"))
                    .collect();
                println!("engine       native: {}", kernels.join(", "));
            }
            None => {
                println!("engine       {}", model.engine());
                if let Some(size) = onnx.slice_size() {
                    println!(
                        "batching     runs {size} image(s) at a time (the graph does not batch correctly)"
                    );
                }
            }
        }
        if let Some(feature) = graph.default_feature_value() {
            println!("features     '{feature}' (poison detect's default --feature-layer)");
        }
    }
    println!("gradient     ok (input receives a finite, non-zero gradient)");
    Ok(())
}
