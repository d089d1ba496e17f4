//! The evaluation itself: clean accuracy, the suite's attacks (journaled), the
//! record, the adversarial examples and the report.

use std::time::Instant;

use anyhow::{Context, Result};
use gauntlet_core::Classifier;
use gauntlet_data::{Dataset, Split};
use gauntlet_eval::{RobustConfig, Suite};
use gauntlet_models::ModelInfo;
use gauntlet_record::{CleanRecord, RobustnessRecord, RunKind, RunRecord, SuiteRecord};

use super::plan::EvalPlan;
use crate::progress::CliProgress;
use crate::toolbox::{record_header, write_record, write_run_report};

pub(super) fn run_plan(mut plan: EvalPlan, started: Instant) -> Result<()> {
    let progress = CliProgress::new(plan.quiet);
    let clean = gauntlet_eval::evaluate_clean(&plan.model, &plan.data, plan.batch_size, &progress)?;
    let attacked = match plan.suite.take() {
        Some((suite, suite_record)) => Some(attack_phase(
            &plan,
            &suite,
            suite_record,
            &clean,
            &progress,
        )?),
        None => None,
    };
    let data = &plan.data;
    let mut record = record_header(
        RunKind::Eval,
        plan.seed,
        &plan.model,
        &plan.info,
        plan.scan.take(),
        data.record(),
    );
    record.clean = Some(CleanRecord {
        accuracy: clean.accuracy,
        correct: clean.correct.clone(),
        predictions: clean.predictions.clone(),
        labels: data.labels().to_vec(),
    });
    record.shard = plan.shard.clone();
    record.wall_seconds = started.elapsed().as_secs_f64();
    let mut journal = None;
    if let Some(attacked) = attacked {
        record.robustness = Some(attacked.section);
        if plan.save_adversarial {
            write_adversarial(&plan, &clean, &attacked.examples)?;
        }
        journal = Some(attacked.journal);
    }
    let path = plan.out.join("results.json");
    write_record(&path, &record)?;
    if let Some(journal) = journal {
        journal.finish()?;
    }
    print_summary(&plan.info, data, plan.split, &record);
    println!("wrote {}", path.display());
    write_run_report(&plan.out, &record, &path)
}

/// What the attacks of a suite produced: the record's section, the adversarial
/// examples kept, and the journal to close once the record is written.
struct Attacked {
    section: RobustnessRecord,
    examples: gauntlet_eval::Examples,
    journal: gauntlet_eval::FileJournal,
}

/// Sanity checks, then the suite's attacks, journaled batch by batch so Ctrl-C
/// or a crash loses nothing (`--resume` replays the journal).
fn attack_phase(
    plan: &EvalPlan,
    suite: &Suite,
    suite_record: SuiteRecord,
    clean: &gauntlet_eval::CleanResult,
    progress: &CliProgress,
) -> Result<Attacked> {
    let (model, data, out) = (&plan.model, &plan.data, &plan.out);
    let first_sample = plan.shard.as_ref().map_or(0, |s| s.first_sample);
    let entries = suite.entries()?;
    let (images, labels) = data.batch(0..data.len().min(plan.batch_size), model.device())?;
    let sanity = gauntlet_eval::model_sanity(model, &images, &labels)?;
    let config = RobustConfig {
        batch_size: plan.batch_size,
        seed: plan.seed,
        keep_examples: plan.save_adversarial,
        gallery_samples: gauntlet_eval::GALLERY_CANDIDATES.saturating_sub(first_sample),
        first_sample,
    };
    let fingerprint = gauntlet_eval::journal_fingerprint(
        &plan.info.sha256,
        data,
        plan.shard.as_ref(),
        &config,
        &suite_record,
        &suite.attacks,
    );
    let mut journal = gauntlet_eval::FileJournal::open(out, &fingerprint, plan.resume)?
        .with_stop_flag(crate::journal::install_interrupt_handler());
    if plan.resume {
        println!(
            "resuming {}: {} finished batches in the journal",
            out.display(),
            journal.resumed_batches()
        );
    }
    let result = match gauntlet_eval::evaluate_robust_journaled(
        model,
        data,
        clean,
        &entries,
        &config,
        progress,
        &mut journal,
    ) {
        Err(gauntlet_eval::Error::Interrupted { batches }) => {
            eprintln!(
                "interrupted after {batches} more batches, all saved in {}; continue with the same command and --resume {} instead of --out",
                journal.path().display(),
                out.display()
            );
            return Err(crate::journal::Interrupted.into());
        }
        other => other?,
    };
    let (section, examples) =
        result.into_record(model, data, suite_record, sanity, first_sample)?;
    Ok(Attacked {
        section,
        examples,
        journal,
    })
}

/// `--save-adversarial`: DIR/adversarial.npz, which `gauntlet eval --data` reads.
fn write_adversarial(
    plan: &EvalPlan,
    clean: &gauntlet_eval::CleanResult,
    examples: &gauntlet_eval::Examples,
) -> Result<()> {
    let path = plan.out.join("adversarial.npz");
    let first_sample = plan.shard.as_ref().map_or(0, |s| s.first_sample);
    let bytes = gauntlet_eval::adversarial_npz(
        &plan.model,
        &plan.data,
        &clean.predictions,
        examples,
        first_sample,
    )?;
    gauntlet_core::write_atomic(&path, &bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!(
        "wrote {} ({} adversarial examples)",
        path.display(),
        examples.len()
    );
    Ok(())
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
