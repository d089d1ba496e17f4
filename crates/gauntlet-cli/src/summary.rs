//! What a command prints about the record it wrote (the record itself is the
//! result; this is the few lines a user reads in the terminal).

use std::path::Path;

use gauntlet_data::{Dataset, Split};
use gauntlet_models::ModelInfo;
use gauntlet_record::RunRecord;
use gauntlet_train::BestSaved;

/// An evaluation: the model on the data, clean accuracy, the worst case per ε,
/// the sanity warnings, and how long image decoding held the run up.
pub(crate) fn print_evaluation(info: &ModelInfo, data: &Dataset, split: Split, record: &RunRecord) {
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

/// A training run: warnings, test accuracy, and where the model, its record and
/// the best epoch went.
pub(crate) fn print_training(
    record: &RunRecord,
    model: &Path,
    record_path: &Path,
    best: Option<&BestSaved>,
) {
    let training = record.training.as_ref();
    for warning in training.iter().flat_map(|t| &t.warnings) {
        eprintln!("warning: {warning}");
    }
    println!(
        "trained {} for {} epochs: test accuracy {:.2}% on {} samples, {:.1}s",
        training.map_or("", |t| t.arch.as_str()),
        training.map_or(0, |t| t.history.len()),
        100.0 * record.clean.as_ref().map_or(0.0, |c| c.accuracy),
        record.dataset.num_samples,
        record.wall_seconds
    );
    println!("wrote {} and {}", model.display(), record_path.display());
    if let Some(best) = best {
        println!(
            "best robust accuracy {:.2}% after epoch {}: wrote {}",
            100.0 * best.robust_accuracy,
            best.epoch,
            best.path.display()
        );
    }
}
