//! `gauntlet report`, and the report every run writes next to its record.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use gauntlet_report::ReportInput;

use crate::toolbox::{read_record, write_report, write_run_report};

#[derive(Args, Debug)]
pub(crate) struct ReportArgs {
    /// Run records (results.json, *.record.json); several are compared on shared charts.
    #[arg(required = true)]
    records: Vec<PathBuf>,
    /// Labels for the records, in order (default: each model's file name).
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// Output directory (created if missing): report.html, summary.md, charts as .svg and .png.
    #[arg(long)]
    out: PathBuf,
}

pub(crate) fn run(args: ReportArgs) -> Result<()> {
    if !args.labels.is_empty() && args.labels.len() != args.records.len() {
        anyhow::bail!(
            "--labels has {} entries for {} records, expected one per record",
            args.labels.len(),
            args.records.len()
        );
    }
    let mut inputs = Vec::with_capacity(args.records.len());
    for (k, path) in args.records.iter().enumerate() {
        let mut input = ReportInput::new(read_record(path)?);
        if let Some(label) = args.labels.get(k) {
            input.label = label.clone();
        }
        inputs.push(input);
    }
    write_report(&args.out, &inputs)?;
    println!("wrote {}", args.out.join("report.html").display());
    Ok(())
}

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

/// Run the steps as the equivalent `gauntlet` command lines (so the demo exercises
/// exactly what users run), then report all records together.
pub(crate) fn demo(args: DemoArgs) -> Result<()> {
    use clap::Parser as _;
    let text = |p: &Path| p.display().to_string();
    let standard_dir = args.out.join("standard");
    let adversarial_dir = args.out.join("fgsm-rs");
    let adversarial_model = adversarial_dir.join("model.safetensors");
    let adversarial_eval = adversarial_dir.join("eval");
    let seed = args.seed.to_string();
    let epochs = args.epochs.to_string();
    let (model, data, suite) = (text(&args.model), text(&args.data), text(&args.suite));
    let steps: Vec<(&str, Vec<String>)> = vec![
        (
            "evaluating the standard model",
            owned(&[
                "eval",
                "--model",
                &model,
                "--data",
                &data,
                "--suite",
                &suite,
                "--seed",
                &seed,
                "--out",
                &text(&standard_dir),
            ]),
        ),
        (
            "adversarially training a CNN (FGSM-RS, ε = 0.3)",
            owned(&[
                "train",
                "--data",
                &data,
                "--arch",
                "cnn",
                "--epochs",
                &epochs,
                "--adversarial",
                "fgsm-rs",
                "--epsilon",
                "0.3",
                "--warmup-epochs",
                "2",
                "--robust-eval-samples",
                "200",
                "--seed",
                &seed,
                "--out",
                &text(&adversarial_model),
            ]),
        ),
        (
            "evaluating the adversarially trained model",
            owned(&[
                "eval",
                "--model",
                &text(&adversarial_model),
                "--data",
                &data,
                "--suite",
                &suite,
                "--seed",
                &seed,
                "--out",
                &text(&adversarial_eval),
            ]),
        ),
    ];
    std::fs::create_dir_all(&adversarial_dir)
        .with_context(|| format!("cannot create {}", adversarial_dir.display()))?;
    for (k, (what, mut line)) in steps.into_iter().enumerate() {
        // The demo regenerates its directory: earlier results are replaced.
        line.push("--force".into());
        println!("[{}/4] {what}: gauntlet {}", k + 1, line.join(" "));
        if args.quiet {
            line.push("--quiet".into());
        }
        line.insert(0, "gauntlet".into());
        let cli = crate::cli::Cli::try_parse_from(&line)
            .with_context(|| format!("demo step {} has a bad command line", k + 1))?;
        crate::toolbox::set_command_line(Some(line));
        let outcome = crate::cli::run(cli);
        crate::toolbox::set_command_line(None);
        outcome?;
    }
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

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

fn labelled(path: &Path, label: &str) -> Result<ReportInput> {
    let mut input = ReportInput::new(read_record(path)?);
    input.label = label.into();
    Ok(input)
}

#[derive(Args, Debug)]
pub(crate) struct MergeArgs {
    /// The shard records (results.json of each `--shard K/N` run), in any order.
    #[arg(required = true)]
    records: Vec<PathBuf>,
    /// The merged record to write (e.g. merged/results.json); its report goes next to it.
    #[arg(long)]
    out: PathBuf,
}

pub(crate) fn merge(args: MergeArgs) -> Result<()> {
    let shards = args
        .records
        .iter()
        .map(|p| read_record(p))
        .collect::<Result<Vec<_>>>()?;
    let merged = gauntlet_record::merge_shards(&shards)?;
    let dir = args
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    crate::toolbox::write_record(&args.out, &merged)?;
    println!(
        "merged {} shards ({} samples) into {}",
        shards.len(),
        merged.dataset.num_samples,
        args.out.display()
    );
    write_run_report(&dir, &merged, &args.out)
}
