//! The evaluation itself: clean accuracy, the suite's attacks (journaled), the
//! record, the adversarial examples and the report.

use std::time::Instant;

use anyhow::{Context, Result};

use super::plan::EvalPlan;
use crate::progress::CliProgress;
use crate::toolbox::{write_record, write_run_report};

pub(super) fn run_plan(plan: EvalPlan, started: Instant) -> Result<()> {
    let EvalPlan {
        job,
        info,
        split,
        out,
        resume,
        quiet,
    } = plan;
    // Attacks run journaled, batch by batch, so Ctrl-C or a crash loses nothing
    // (`--resume` replays the journal).
    let mut journal = match job.fingerprint() {
        None => None,
        Some(fingerprint) => Some(
            gauntlet_eval::FileJournal::open(&out, &fingerprint, resume)?
                .with_stop_flag(crate::journal::install_interrupt_handler()),
        ),
    };
    if let (true, Some(journal)) = (resume, &journal) {
        println!(
            "resuming {}: {} finished batches in the journal",
            out.display(),
            journal.resumed_batches()
        );
    }
    let progress = CliProgress::new(quiet);
    let output = match &mut journal {
        Some(file) => job.run(&progress, file),
        None => job.run(&progress, &mut gauntlet_eval::NoJournal),
    };
    let output = match output {
        Err(gauntlet_eval::Error::Interrupted { batches }) => {
            let saved_in = journal.as_ref().map(|j| j.path().display().to_string());
            eprintln!(
                "interrupted after {batches} more batches, all saved in {}; continue with the same command and --resume {} instead of --out",
                saved_in.unwrap_or_default(),
                out.display()
            );
            return Err(crate::journal::Interrupted.into());
        }
        other => other?,
    };
    let mut record = output.record;
    // The whole command's time, loading included.
    record.wall_seconds = started.elapsed().as_secs_f64();
    if let Some(adversarial) = output.adversarial {
        let path = out.join("adversarial.npz");
        gauntlet_core::write_atomic(&path, &adversarial.npz)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!(
            "wrote {} ({} adversarial examples)",
            path.display(),
            adversarial.count
        );
    }
    let path = out.join("results.json");
    write_record(&path, &record)?;
    if let Some(journal) = journal {
        journal.finish()?;
    }
    crate::summary::print_evaluation(&info, job.data(), split, &record);
    println!("wrote {}", path.display());
    write_run_report(&out, &record, &path)
}
