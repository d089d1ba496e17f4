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
