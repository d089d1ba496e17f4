//! `gauntlet scan`: model files checked without loading them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use gauntlet_record::ModelScanRecord;
use gauntlet_scan::ScanReport;

#[derive(Args, Debug)]
pub(crate) struct ScanArgs {
    /// Model files: .pt, .pth, .bin, .ckpt, .pkl (zip or legacy), .safetensors, .onnx.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Print the reports as JSON (an array, one object per file) instead of text.
    #[arg(long)]
    json: bool,
}

/// The record's summary of a scan.
pub(crate) fn scan_record(report: &ScanReport) -> ModelScanRecord {
    ModelScanRecord {
        format: report.format.clone(),
        worst: report.worst().map(|s| s.as_str().to_string()),
        findings: report
            .findings
            .iter()
            .map(|f| format!("{}: {} ({})", f.severity.as_str(), f.message, f.location))
            .collect(),
        imports: report.imports.clone(),
    }
}

pub(crate) fn scan(args: ScanArgs) -> Result<ExitCode> {
    let reports = args
        .files
        .iter()
        .map(|f| {
            gauntlet_scan::scan_file(f).with_context(|| format!("cannot scan {}", f.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for report in &reports {
            match report.worst() {
                None => println!(
                    "{}: clean ({}, {} imports)",
                    report.path,
                    report.format,
                    report.imports.len()
                ),
                Some(worst) => {
                    println!(
                        "{}: {} finding(s), worst {} ({})",
                        report.path,
                        report.findings.len(),
                        worst.as_str(),
                        report.format
                    );
                    for f in &report.findings {
                        println!("  {:<8} {}: {}", f.severity.as_str(), f.location, f.message);
                    }
                }
            }
        }
    }
    Ok(if reports.iter().all(|r| r.findings.is_empty()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
