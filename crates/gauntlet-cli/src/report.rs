//! `gauntlet report`, and the report every run writes next to its record.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use gauntlet_record::RunRecord;
use gauntlet_report::ReportInput;

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

/// Read and check one run record.
pub(crate) fn read_record(path: &Path) -> Result<RunRecord> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read run record {}", path.display()))?;
    RunRecord::from_json(&text)
        .with_context(|| format!("{} is not a Gauntlet run record", path.display()))
}

/// Render `inputs` into `dir`, each file written atomically.
pub(crate) fn write_report(dir: &Path, inputs: &[ReportInput]) -> Result<()> {
    let report = gauntlet_report::build(inputs).context("cannot build the report")?;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create report directory {}", dir.display()))?;
    for file in &report.files {
        let path = dir.join(&file.name);
        gauntlet_core::write_atomic(&path, &file.bytes)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The report of one run, next to its record.
pub(crate) fn write_run_report(dir: &Path, record: &RunRecord) -> Result<()> {
    write_report(dir, &[ReportInput::new(record.clone())])?;
    println!("wrote {}", dir.join("report.html").display());
    Ok(())
}
