//! `gauntlet scan`: model files checked without loading them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
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

/// Every file is scanned and reported, even when another cannot be read: a
/// file that cannot be scanned is an `error` line on stderr (and, with
/// `--json`, an entry `{"path", "error"}`). Exit 2 when any file could not be
/// scanned, else 1 when any has findings, else 0.
pub(crate) fn scan(args: ScanArgs) -> Result<ExitCode> {
    let outcomes: Vec<(String, Result<ScanReport>)> = args
        .files
        .iter()
        .map(|f| {
            let scanned =
                gauntlet_scan::scan_file(f).with_context(|| format!("cannot scan {}", f.display()));
            (f.display().to_string(), scanned)
        })
        .collect();
    for (_, outcome) in &outcomes {
        if let Err(err) = outcome {
            eprintln!("error: {}", crate::one_line(err));
        }
    }
    if args.json {
        let entries: Vec<serde_json::Value> = outcomes
            .iter()
            .map(|(path, outcome)| match outcome {
                Ok(report) => serde_json::to_value(report),
                Err(err) => Ok(serde_json::json!({"path": path, "error": crate::one_line(err)})),
            })
            .collect::<std::result::Result<_, _>>()?;
        println!("{}", serde_json::to_string_pretty(&entries)?);
    }
    let reports: Vec<&ScanReport> = outcomes
        .iter()
        .filter_map(|(_, o)| o.as_ref().ok())
        .collect();
    if !args.json {
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
                        "{}: {} finding(s), worst {} ({}){}",
                        report.path,
                        report.findings.len(),
                        worst.as_str(),
                        report.format,
                        if report.refuse {
                            "; refused by eval/attack/info (imports outside the allow-list or a high finding)"
                        } else {
                            ""
                        }
                    );
                    for f in &report.findings {
                        println!("  {:<8} {}: {}", f.severity.as_str(), f.location, f.message);
                    }
                }
            }
        }
    }
    Ok(if reports.len() < outcomes.len() {
        ExitCode::from(2)
    } else if reports.iter().all(|r| r.findings.is_empty()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
