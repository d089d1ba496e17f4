//! `gauntlet check` (the CI gate) and `gauntlet baseline update`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use gauntlet_check::{AttackSelector, Epsilon, Policy, RobustThreshold};
use gauntlet_core::Norm;

use crate::toolbox::{read_record, write_record};

#[derive(Args, Debug)]
pub(crate) struct CheckArgs {
    /// The run record to judge (results.json).
    record: PathBuf,
    /// Policy file (TOML): alpha, min_clean_accuracy, max_drop, [[robust]] thresholds.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Minimum clean accuracy as a fraction (overrides the policy's).
    #[arg(long)]
    min_clean: Option<f64>,
    /// Minimum robust accuracy NORM:EPS:MIN[:ATTACK], e.g. linf:0.3:0.6 or
    /// linf:8/255:0.4:pgd-linf (repeatable; default attack: the per-sample worst case).
    #[arg(long)]
    min_robust: Vec<String>,
    /// Baseline record (from `gauntlet baseline update`) to test for regressions.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Largest tolerated drop in accuracy against the baseline, as a fraction (default 0).
    #[arg(long)]
    max_drop: Option<f64>,
    /// Significance level of the regression tests (default 0.05).
    #[arg(long)]
    alpha: Option<f64>,
    /// Compare with a baseline from a different evaluation anyway.
    #[arg(long)]
    allow_mismatch: bool,
    /// Directory for junit.xml and summary.md (default: check/ next to the record).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum BaselineCommand {
    /// Make a record the baseline that `gauntlet check --baseline` compares with.
    Update(BaselineArgs),
}

#[derive(Args, Debug)]
pub(crate) struct BaselineArgs {
    /// The run record to adopt (results.json).
    record: PathBuf,
    /// Where to write the baseline (overwritten deliberately, atomically).
    #[arg(long)]
    out: PathBuf,
}

fn robust_flag(text: &str) -> Result<RobustThreshold> {
    let parts: Vec<&str> = text.split(':').collect();
    if !(3..=4).contains(&parts.len()) {
        bail!("--min-robust '{text}' must be NORM:EPS:MIN[:ATTACK], e.g. linf:0.3:0.6");
    }
    let min_accuracy: f64 = parts[2]
        .parse()
        .with_context(|| format!("--min-robust '{text}': '{}' is not a number", parts[2]))?;
    let names: Vec<&str> = Norm::ALL.iter().map(|n| n.name()).collect();
    let norm = Norm::ALL
        .into_iter()
        .find(|n| n.name() == parts[0])
        .with_context(|| {
            format!(
                "--min-robust '{text}': norm '{}' is not one of {}",
                parts[0],
                names.join(", ")
            )
        })?;
    Ok(RobustThreshold {
        norm,
        epsilon: Epsilon::Value(gauntlet_check::parse_epsilon(parts[1])?),
        attack: parts
            .get(3)
            .map_or(AttackSelector::WorstCase, |a| a.to_string().into()),
        min_accuracy,
    })
}

pub(crate) fn check(args: CheckArgs) -> Result<ExitCode> {
    let mut policy = match &args.policy {
        Some(path) => {
            let text =
                gauntlet_core::read_text_limited(path, gauntlet_core::MAX_CONFIG_BYTES, "policy")?;
            Policy::from_toml(&text).with_context(|| format!("policy {}", path.display()))?
        }
        None => Policy::default(),
    };
    if let Some(v) = args.min_clean {
        policy.min_clean_accuracy = Some(v);
    }
    for flag in &args.min_robust {
        policy.robust.push(robust_flag(flag)?);
    }
    if let Some(v) = args.max_drop {
        policy.max_drop = v;
    }
    if let Some(v) = args.alpha {
        policy.alpha = v;
    }
    let record = read_record(&args.record)?;
    let baseline = match &args.baseline {
        Some(path) => Some(read_record(path).context("cannot use the baseline")?),
        None => None,
    };
    let outcome = gauntlet_check::check(&record, &policy, baseline.as_ref(), args.allow_mismatch)
        .with_context(|| format!("cannot check {}", args.record.display()))?;
    let out = args.out.clone().unwrap_or_else(|| {
        args.record
            .parent()
            .map(|p| p.join("check"))
            .unwrap_or_else(|| PathBuf::from("check"))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    for (name, text) in [
        ("junit.xml", gauntlet_check::junit_xml(&outcome)),
        ("summary.md", gauntlet_check::markdown(&outcome)),
    ] {
        let path = out.join(name);
        gauntlet_core::write_atomic(&path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    print!("{}", gauntlet_check::table(&outcome));
    println!("wrote {} and summary.md", out.join("junit.xml").display());
    // ripgrep's convention: 1 = ran fine, but the gate failed.
    Ok(if outcome.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub(crate) fn baseline(command: BaselineCommand) -> Result<()> {
    let BaselineCommand::Update(args) = command;
    let mut record = read_record(&args.record)?;
    if record.clean.is_none() {
        bail!(
            "{} has no clean results to compare with (a baseline comes from eval or attack)",
            args.record.display()
        );
    }
    // The gallery is for reports; a baseline needs only the per-sample verdicts.
    if let Some(r) = record.robustness.as_mut() {
        r.gallery.clear();
    }
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    write_record(&args.out, &record)?;
    println!(
        "wrote baseline {} from {} ({}, {} samples)",
        args.out.display(),
        args.record.display(),
        record.model.path,
        record.dataset.num_samples
    );
    Ok(())
}
