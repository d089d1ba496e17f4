//! The evaluation runner: turns a classifier and a dataset into per-sample results.
//!
//! Compatibility checks between model and data, clean accuracy with one verdict
//! per sample in dataset order, and robust accuracy over attack suites with the
//! per-sample worst case ([`evaluate_robust`]); the whole evaluation job as one
//! library call ([`EvalJob`]).

mod artifacts;
mod job;
mod journal;
mod robust;
mod suite;

pub use artifacts::{adversarial_npz, gallery, Examples, GALLERY_CANDIDATES};
pub use job::{model_record, record_header, AdversarialExamples, EvalJob, EvalOutput, EvalPlan};
pub use journal::{journal_fingerprint, FileJournal, JOURNAL_FILE};
pub use robust::{
    evaluate_robust, evaluate_robust_journaled, model_sanity, AttackResult, BatchOutcome,
    BestKnown, Journal, MinimalNorms, NoJournal, RobustConfig, RobustResult, Schedule, SuiteEntry,
    TargetSpec, Warning, WorstCase,
};
pub use suite::{parse_epsilon, parse_target, Suite, SuiteAttack};

use candle_core::{DType, Tensor, D};
use gauntlet_core::{Classifier, Observer};
use gauntlet_data::Dataset;

/// Errors of the evaluation runner.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The model cannot be evaluated on this data.
    #[error("{0}")]
    Incompatible(String),
    /// The model produced NaN or infinite outputs.
    #[error("the model produced a non-finite output (NaN or Inf) on sample {sample}; check the weights and the input range")]
    NonFinite {
        /// First offending sample, in dataset order.
        sample: usize,
    },
    /// A bad argument.
    #[error("{0}")]
    Invalid(String),
    /// A job's setting is out of range or contradicts another, or the data.
    #[error("{setting} {problem}")]
    Setting {
        /// Which setting.
        setting: &'static str,
        /// What is wrong with it and what was expected.
        problem: String,
    },
    /// From the model layer.
    #[error(transparent)]
    Model(#[from] gauntlet_models::Error),
    /// From the core vocabulary.
    #[error(transparent)]
    Core(#[from] gauntlet_core::Error),
    /// From the data layer.
    #[error(transparent)]
    Data(#[from] gauntlet_data::Error),
    /// From candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// From an attack.
    #[error(transparent)]
    Attack(#[from] gauntlet_attacks::Error),
    /// The journal asked to stop (Ctrl-C); every finished batch is saved.
    #[error("interrupted after {batches} finished batches (all saved to the journal)")]
    Interrupted {
        /// Batches finished in this process.
        batches: usize,
    },
    /// The journal could not be written or read.
    #[error("journal: {0}")]
    Journal(String),
    /// The adversarial examples could not be encoded as NPZ.
    #[error("cannot encode the adversarial examples as NPZ: {0}")]
    Encode(#[source] std::io::Error),
}

/// Result with the eval [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Refuse model/data pairs that cannot be evaluated, with a message saying why.
pub fn check_compatible(model: &dyn Classifier, data: &Dataset) -> Result<()> {
    if model.input_shape() != data.image_shape() {
        return Err(Error::Incompatible(format!(
            "the model expects inputs of shape {:?} (C, H, W) but the dataset's images are {:?}",
            model.input_shape(),
            data.image_shape()
        )));
    }
    if data.num_classes() > model.num_classes() {
        return Err(Error::Incompatible(format!(
            "the dataset has {} classes but the model outputs only {}",
            data.num_classes(),
            model.num_classes()
        )));
    }
    Ok(())
}

/// Clean predictions of a model on a dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct CleanResult {
    /// Predicted class per sample, dataset order.
    pub predictions: Vec<u32>,
    /// Whether each prediction equals the label.
    pub correct: Vec<bool>,
    /// Fraction correct.
    pub accuracy: f64,
}

/// Arg-max predictions for a batch of logits, refusing non-finite outputs.
pub fn predictions_of(logits: &Tensor, first_sample: usize) -> Result<Vec<u32>> {
    let logits = logits.to_dtype(DType::F32)?;
    let finite = logits.to_vec2::<f32>()?;
    if let Some(i) = finite
        .iter()
        .position(|row| row.iter().any(|v| !v.is_finite()))
    {
        return Err(Error::NonFinite {
            sample: first_sample + i,
        });
    }
    Ok(logits.argmax(D::Minus1)?.to_vec1::<u32>()?)
}

/// Evaluate `model` on every sample of `data`, `batch_size` at a time.
pub fn evaluate_clean(
    model: &dyn Classifier,
    data: &Dataset,
    batch_size: usize,
    observer: &dyn Observer,
) -> Result<CleanResult> {
    if batch_size == 0 {
        return Err(Error::Invalid("batch size must be at least 1".into()));
    }
    check_compatible(model, data)?;
    observer.start("clean", data.len() as u64);
    let mut predictions = Vec::with_capacity(data.len());
    let mut start = 0;
    while start < data.len() {
        let end = (start + batch_size).min(data.len());
        let (images, _) = data.batch(start..end, model.device())?;
        let logits = model.logits(&images)?;
        predictions.extend(predictions_of(&logits, start)?);
        observer.advance((end - start) as u64, "");
        start = end;
    }
    let correct: Vec<bool> = predictions
        .iter()
        .zip(data.labels())
        .map(|(p, l)| p == l)
        .collect();
    let accuracy = gauntlet_record::accuracy_of(&correct);
    observer.finish(&format!("clean accuracy {:.2}%", 100.0 * accuracy));
    Ok(CleanResult {
        predictions,
        correct,
        accuracy,
    })
}
