//! `gauntlet poison inject | detect | audit`: one module per subcommand; the
//! injection and detector flags they share are in `options`.

mod audit;
mod detect;
mod inject;
mod options;

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use clap::Subcommand;
use gauntlet_record::{PoisoningRecord, RunRecord};

#[derive(Subcommand, Debug)]
pub(crate) enum PoisonCommand {
    /// Write a poisoned copy of a dataset (train split poisoned, test split copied)
    /// and its ground-truth manifest.json; the input is never touched.
    Inject(inject::InjectArgs),
    /// Run detectors on a (possibly poisoned) dataset with a model trained on it.
    Detect(detect::DetectArgs),
    /// Inject → train → measure → detect → filter → retrain → measure, in one record.
    Audit(audit::AuditArgs),
}

pub(crate) fn run(command: PoisonCommand) -> Result<()> {
    match command {
        PoisonCommand::Inject(args) => inject::inject(args),
        PoisonCommand::Detect(args) => detect::detect(args),
        PoisonCommand::Audit(args) => audit::audit(args),
    }
}

/// Print what the detectors found, then write the record (timed from `started`,
/// loading included) and its report into `out`.
pub(super) fn write_outputs(out: &Path, mut record: RunRecord, started: Instant) -> Result<()> {
    if let Some(poisoning) = &record.poisoning {
        print_findings(poisoning);
    }
    record.wall_seconds = started.elapsed().as_secs_f64();
    let path = out.join("results.json");
    crate::toolbox::write_record(&path, &record)?;
    println!("wrote {}", path.display());
    crate::toolbox::write_run_report(out, &record, &path)
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

pub(super) fn percent(value: Option<f64>) -> String {
    value
        .map(|v| format!("{:.1}%", 100.0 * v))
        .unwrap_or_else(|| "n/a".into())
}
