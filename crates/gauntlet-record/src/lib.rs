//! The run record: `results.json`, the single source of truth of a Gauntlet run.
//!
//! Serde only (no candle), so reports, merges and CI checks build and run fast.
//! The schema is versioned ([`SCHEMA_VERSION`]) and documented in
//! `docs/record-schema.md`; readers refuse versions they do not know.

use serde::{Deserialize, Serialize};

mod merge;
mod optimality;
mod text;
mod vocabulary;
pub use merge::merge_shards;
pub use optimality::{optimality, Optimality};
pub use text::{escape_markup, json_value, parse_epsilon};
pub use vocabulary::{
    AttackKind, DataFormat, ModelFormat, Norm, ScanFormat, Severity, Split, WarningCode,
};

/// Version of the schema this crate writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// Errors reading a record.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Not valid JSON, or not a run record.
    #[error("not a valid Gauntlet run record: {0}")]
    Parse(#[from] serde_json::Error),
    /// A schema version this build does not understand.
    #[error("run record has schema_version {found}, this build reads version {expected}")]
    SchemaVersion {
        /// Version in the file.
        found: u64,
        /// Version supported.
        expected: u32,
    },
    /// The record could not be written as JSON.
    #[error("cannot serialise the run record: {0}")]
    Serialise(#[source] serde_json::Error),
    /// Shard records that cannot be merged into one evaluation.
    #[error("cannot merge: {0}")]
    Merge(String),
}

/// Result with the record [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// What kind of run produced the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunKind {
    /// `gauntlet eval`.
    Eval,
    /// `gauntlet train`.
    Train,
    /// `gauntlet poison detect` or `gauntlet poison audit`.
    Poison,
}

/// One run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRecord {
    /// Always [`SCHEMA_VERSION`] when written by this build.
    pub schema_version: u32,
    /// The tool that wrote the record.
    pub tool: Tool,
    /// What kind of run this was.
    pub kind: RunKind,
    /// The command line, for re-running exactly this evaluation.
    pub command: Vec<String>,
    /// The run's seed: every random choice derives from it.
    pub seed: u64,
    /// The machine-independent execution settings.
    pub environment: Environment,
    /// The model evaluated (or produced, for training).
    pub model: ModelRecord,
    /// The data evaluated on (for training: the evaluation split).
    pub dataset: DatasetRecord,
    /// Clean accuracy, per sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clean: Option<CleanRecord>,
    /// Training configuration and per-epoch history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<TrainingRecord>,
    /// Attack results, the per-sample worst case and sanity warnings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub robustness: Option<RobustnessRecord>,
    /// Poisoning: injection, detectors, and the backdoor before and after filtering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poisoning: Option<PoisoningRecord>,
    /// Set when this record covers one shard of an evaluation (`--shard K/N`);
    /// `gauntlet merge` combines the shards into the record of the whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardRecord>,
    /// Wall-clock seconds of the whole run (the only field that varies between identical runs).
    pub wall_seconds: f64,
}

/// Name and version of the writer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    /// `"gauntlet"`.
    pub name: String,
    /// Crate version.
    pub version: String,
}

/// Where the run executed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    /// `"cpu"` (or an accelerator name).
    pub device: String,
    /// Worker threads used by the tensor backend.
    pub threads: usize,
    /// Which executor ran the model: `native`, or `reference: <why>` when a
    /// graph fell back to candle's (absent in records of older builds).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub engine: String,
}

/// The model, identified by content.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRecord {
    /// Path as given.
    pub path: String,
    /// sha256 of the file.
    pub sha256: String,
    /// The file's format.
    pub format: ModelFormat,
    /// Architecture (`mlp`, `cnn`, `cifar-cnn`, or `onnx`).
    pub arch: String,
    /// Number of classes.
    pub num_classes: usize,
    /// `[C, H, W]`.
    pub input_shape: [usize; 3],
    /// Valid input range `[min, max]`.
    pub bounds: [f64; 2],
    /// What `gauntlet scan` found in the file before it was loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan: Option<ModelScanRecord>,
}

/// The model-file scan kept with the model's identity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelScanRecord {
    /// What the file was scanned as.
    pub format: ScanFormat,
    /// The worst finding's severity, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worst: Option<Severity>,
    /// Each finding as `severity: message`.
    #[serde(default)]
    pub findings: Vec<String>,
    /// Globals the pickles import (pickle formats).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub imports: Vec<String>,
}

/// The dataset, identified by content.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetRecord {
    /// Path as given.
    pub path: String,
    /// sha256 over the split's files.
    pub sha256: String,
    /// The format the split was read from.
    pub format: DataFormat,
    /// Which split.
    pub split: Split,
    /// Samples evaluated: the first `num_samples` of the split, in file order.
    pub num_samples: usize,
    /// How image files became samples (image folders only), e.g.
    /// `resize 256 (shorter side, bilinear, antialiased), center-crop 224x224,
    /// RGB`; the attacks perturb the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocess: Option<String>,
}

/// Clean (unattacked) results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanRecord {
    /// Fraction of samples classified correctly.
    pub accuracy: f64,
    /// One entry per sample, dataset order: was it classified correctly?
    pub correct: Vec<bool>,
    /// Predicted class per sample, dataset order.
    pub predictions: Vec<u32>,
    /// True label per sample, dataset order (for per-class results; empty in
    /// records written before it was added).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<u32>,
}

/// Training configuration and history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingRecord {
    /// Training data (the train split).
    pub train_dataset: DatasetRecord,
    /// Architecture trained.
    pub arch: String,
    /// Number of epochs.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Optimiser: `adam` or `sgd`.
    pub optimizer: String,
    /// Learning rate.
    pub learning_rate: f64,
    /// SGD momentum (0 for Adam).
    pub momentum: f64,
    /// Folded input normalisation, per channel (empty: none).
    pub mean: Vec<f32>,
    /// Folded input normalisation, per channel (empty: none).
    pub std: Vec<f32>,
    /// One entry per epoch.
    pub history: Vec<EpochRecord>,
    /// Learning-rate schedule: `constant`, `step` or `cyclic`.
    #[serde(default = "constant_schedule")]
    pub schedule: String,
    /// Adversarial training settings (absent for standard training).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adversarial: Option<AdversarialTrainingRecord>,
    /// Epoch whose weights were kept as the best checkpoint by robust accuracy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_epoch: Option<usize>,
    /// Problems that did not stop the run (e.g. catastrophic overfitting).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

fn constant_schedule() -> String {
    "constant".into()
}

/// How adversarial training made its examples.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdversarialTrainingRecord {
    /// `pgd` (Madry et al. 2018), `fgsm-rs` (Wong et al. 2020) or `trades` (Zhang et al. 2019).
    pub method: String,
    /// Threat model's norm.
    pub norm: Norm,
    /// Final training ε.
    pub epsilon: f64,
    /// Attack steps per batch.
    pub steps: usize,
    /// Step size as a fraction of ε.
    pub relative_step_size: f64,
    /// Epochs of linear ε warm-up.
    pub warmup_epochs: f64,
    /// TRADES' β (weight of the KL term).
    #[serde(default)]
    pub beta: f64,
    /// Weight of the clean loss mixed into pgd/fgsm-rs training.
    #[serde(default)]
    pub clean_weight: f64,
    /// Test images attacked after each epoch (0: none).
    pub robust_eval_samples: usize,
    /// PGD steps of that evaluation.
    pub robust_eval_steps: usize,
}

/// Statistics of one training epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpochRecord {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches.
    pub train_loss: f64,
    /// Training accuracy over the epoch (as the weights changed).
    pub train_accuracy: f64,
    /// Accuracy on the evaluation split after the epoch.
    pub test_accuracy: f64,
    /// Robust accuracy after the epoch under the evaluation PGD attack
    /// (adversarial training only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub robust_accuracy: Option<f64>,
    /// Training ε at the end of the epoch (adversarial training only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
    /// Learning rate at the end of the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    /// Seconds the epoch took (training plus evaluation).
    pub wall_seconds: f64,
}

/// Robust evaluation: what was run, what it found, and what looked suspicious.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RobustnessRecord {
    /// The suite (or the single attack) that was run.
    pub suite: SuiteRecord,
    /// Per attack and ε, in the order run.
    pub attacks: Vec<AttackRecord>,
    /// Per minimal-perturbation attack: the norm found per sample.
    #[serde(default)]
    pub minimal: Vec<MinimalRecord>,
    /// Per norm: each sample's smallest adversarial perturbation over every
    /// attack run (absent in records older than the field).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub best_known: Vec<BestKnownRecord>,
    /// Per norm and ε: the worst case over every attack.
    pub worst_case: Vec<WorstCaseRecord>,
    /// Sanity warnings, each with a cause and a remedy.
    #[serde(default)]
    pub warnings: Vec<WarningRecord>,
    /// A few adversarial examples for the report's gallery.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gallery: Vec<GalleryExample>,
}

/// Which slice of an evaluation a shard record covers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardRecord {
    /// 1-based shard number.
    pub index: usize,
    /// Number of shards.
    pub count: usize,
    /// Index of this shard's first sample among the evaluation's samples.
    pub first_sample: usize,
    /// Samples of the whole evaluation.
    pub total_samples: usize,
}

/// The share of `true` among per-sample flags (0 when there are none): how every
/// accuracy in a record is computed, by the runner and by shard merging alike, so
/// a merged record's accuracies equal the single run's exactly.
pub fn accuracy_of(flags: &[bool]) -> f64 {
    flags.iter().filter(|&&f| f).count() as f64 / flags.len().max(1) as f64
}

/// Adversarial examples a record keeps for the report's gallery.
pub const GALLERY_SIZE: usize = 8;

/// One adversarial example kept for the report: the first broken samples in
/// dataset order, at the smallest ε that broke them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GalleryExample {
    /// Sample index in the dataset.
    pub index: usize,
    /// True label.
    pub label: u32,
    /// The attack that broke it.
    pub attack: String,
    /// Its norm.
    pub norm: Norm,
    /// The smallest ε that broke it.
    pub epsilon: f64,
    /// `[C, H, W]`.
    pub shape: [usize; 3],
    /// The clean image, C order, in the model's bounds.
    pub original: Vec<f32>,
    /// The adversarial image.
    pub adversarial: Vec<f32>,
    /// Predicted class of the clean image and its softmax probability.
    pub clean_prediction: u32,
    /// Softmax probability of `clean_prediction`.
    pub clean_confidence: f64,
    /// Predicted class of the adversarial image.
    pub adversarial_prediction: u32,
    /// Softmax probability of `adversarial_prediction`.
    pub adversarial_confidence: f64,
}

/// The attack suite.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteRecord {
    /// Preset name (or the attack's name for `gauntlet attack`).
    pub name: String,
    /// What it is for.
    pub description: String,
    /// The TOML file, if one was used.
    pub path: Option<String>,
    /// sha256 of that file.
    pub sha256: Option<String>,
}

/// One attack at one ε.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttackRecord {
    /// Registry name.
    pub attack: String,
    /// The norm its perturbations are measured in.
    pub norm: Norm,
    /// Fixed-ε or minimal-perturbation.
    pub kind: AttackKind,
    /// The attack's full resolved parameters.
    pub parameters: serde_json::Value,
    /// Targeting: `"none"`, `"random"`, `"least-likely"` or `{"class": k}`.
    pub target: serde_json::Value,
    /// ε.
    pub epsilon: f64,
    /// Robust accuracy after this attack and everything before it in the suite.
    pub robust_accuracy: f64,
    /// Per sample, dataset order: still robust after this attack.
    pub robust: Vec<bool>,
    /// Samples this attack was run on (clean-correct and still robust).
    pub attacked: usize,
    /// Samples it broke that nothing before it had.
    pub newly_broken: usize,
    /// Per-sample gradient evaluations.
    pub gradient_evaluations: u64,
    /// Per-sample forward evaluations.
    pub forward_evaluations: u64,
    /// Seconds.
    pub wall_seconds: f64,
    /// Mean norm of the adversarial perturbations it found.
    pub mean_perturbation: f64,
    /// Largest norm of the adversarial perturbations it found.
    pub max_perturbation: f64,
    /// Proposals refused (NaN or Inf).
    pub rejected: usize,
}

/// Per-sample minimal perturbations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinimalRecord {
    /// Registry name.
    pub attack: String,
    /// The norm its perturbations are measured in.
    pub norm: Norm,
    /// Per sample: the norm of the adversarial example found, or null.
    pub norms: Vec<Option<f64>>,
}

/// The best-known perturbation per sample in one norm: the smallest
/// adversarial perturbation any attack of the run found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BestKnownRecord {
    /// The norm.
    pub norm: Norm,
    /// Per sample, dataset order: the smallest norm found, 0 for samples the
    /// model misclassifies unperturbed, null where no attack succeeded.
    pub norms: Vec<Option<f64>>,
}

/// The worst case over the suite for one norm and ε.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorstCaseRecord {
    /// The norm of the threat model.
    pub norm: Norm,
    /// ε.
    pub epsilon: f64,
    /// Fraction of samples robust to every attack.
    pub robust_accuracy: f64,
    /// Per sample, dataset order.
    pub robust: Vec<bool>,
}

/// A documented sanity warning.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarningRecord {
    /// Stable identifier, e.g. `probabilities-not-logits`.
    pub code: WarningCode,
    /// What was observed.
    pub message: String,
    /// Why it matters.
    pub cause: String,
    /// What to do.
    pub remedy: String,
}

/// A poisoning run: what was injected (audit), what each detector found, and the
/// backdoor's effect before and after removing flagged samples.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoisoningRecord {
    /// The (possibly poisoned) training split analysed.
    pub train_dataset: DatasetRecord,
    /// The injection, when known (audit, or detect with a ground-truth manifest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injection: Option<InjectionRecord>,
    /// Training-set detectors (activation clustering, spectral signatures,
    /// SPECTRE, SCAn, and the carriers of the triggers Neural Cleanse names).
    #[serde(default)]
    pub detectors: Vec<DetectorRecord>,
    /// STRIP, the inference-time detector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strip: Option<StripRecord>,
    /// Neural Cleanse's per-class reverse-engineered triggers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub neural_cleanse: Option<NeuralCleanseRecord>,
    /// The model trained on the poisoned data (audit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_filtering: Option<BackdoorRecord>,
    /// The model retrained without the flagged samples (audit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_filtering: Option<BackdoorRecord>,
    /// Training samples removed before retraining (the union of the training-set
    /// detectors' flags, Neural Cleanse's trigger carriers included), ascending.
    #[serde(default)]
    pub removed: Vec<usize>,
}

/// Attack success after filtering at or above which an audit's backdoor is said
/// to have survived (the bar of the poisoning issue: below 10%).
pub const BACKDOOR_SURVIVAL_SUCCESS: f64 = 0.10;

/// An audit's outcome in one sentence's worth of facts, derived from its record.
#[derive(Clone, Debug, PartialEq)]
pub struct BackdoorVerdict {
    /// Attack success of the model trained on the poisoned data.
    pub success_before: f64,
    /// Attack success after removing the flagged samples and retraining.
    pub success_after: f64,
    /// Training samples removed.
    pub removed: usize,
    /// Each detector that flagged anything, with how many samples it flagged.
    pub found_by: Vec<(String, usize)>,
    /// Whether the retrained model still obeys the trigger
    /// (`success_after ≥ BACKDOOR_SURVIVAL_SUCCESS`).
    pub survived: bool,
}

impl std::fmt::Display for BackdoorVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let found_by = if self.found_by.is_empty() {
            "no detector flagged anything".to_string()
        } else {
            let parts: Vec<String> = self
                .found_by
                .iter()
                .map(|(method, count)| format!("{method} {count}"))
                .collect();
            format!("found by {}", parts.join(", "))
        };
        write!(
            f,
            "backdoor {}: attack success {:.1}% → {:.1}% after removing {} samples ({found_by})",
            if self.survived { "SURVIVED" } else { "removed" },
            100.0 * self.success_before,
            100.0 * self.success_after,
            self.removed
        )
    }
}

impl PoisoningRecord {
    /// Whether the audit's filtering removed the backdoor; `None` unless the
    /// record measured a trigger's attack success before and after filtering.
    pub fn backdoor_verdict(&self) -> Option<BackdoorVerdict> {
        let before = self.before_filtering.as_ref()?.attack_success_rate?;
        let after = self.after_filtering.as_ref()?.attack_success_rate?;
        Some(BackdoorVerdict {
            success_before: before,
            success_after: after,
            removed: self.removed.len(),
            found_by: self
                .detectors
                .iter()
                .filter(|d| !d.flagged.is_empty())
                .map(|d| (d.method.clone(), d.flagged.len()))
                .collect(),
            survived: after >= BACKDOOR_SURVIVAL_SUCCESS,
        })
    }
}

/// The ground truth of an injection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectionRecord {
    /// `badnets`, `blend` or `label-flip`.
    pub attack: String,
    /// Target class (none for random label flips).
    pub target: Option<u32>,
    /// Fraction of source-class images poisoned.
    pub fraction: f64,
    /// Source classes.
    pub source_classes: Vec<u32>,
    /// Seed of the injection.
    pub seed: u64,
    /// Poisoned sample indices, ascending.
    pub poisoned: Vec<usize>,
    /// Mask L1 norm of the trigger (pixels covered), for backdoors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_l1: Option<f64>,
}

/// One training-set detector's output, and its quality when the truth is known.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorRecord {
    /// `activation-clustering`, `spectral-signatures`, `spectre`, `scan` or
    /// `neural-cleanse-trigger`.
    pub method: String,
    /// Per training sample (dataset order): higher is more suspicious.
    pub scores: Vec<f64>,
    /// Flagged sample indices, ascending.
    pub flagged: Vec<usize>,
    /// Per-class findings.
    pub classes: Vec<ClassFinding>,
    /// Against the ground truth, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<DetectionMetrics>,
    /// Seconds the detector took (features excluded).
    pub wall_seconds: f64,
}

/// What a training-set detector found in one class.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassFinding {
    /// The class (by the dataset's labels).
    pub class: u32,
    /// Samples labelled with it.
    pub samples: usize,
    /// Size of the suspect (smaller) group of its two-way split (SPECTRE: its
    /// leading group's members voted into other classes; SCAn: the subgroup
    /// holding fewer clean reference images).
    pub suspect_size: usize,
    /// The split statistic (silhouette, or the spectral split's explained
    /// variance; SPECTRE: QUE-weighted variance over the noise edge; SCAn: the
    /// likelihood ratio `J` of two class identities over one).
    pub statistic: f64,
    /// Its robust z-score among the classes (SPECTRE: of its group's binomial
    /// evidence; SCAn: one-sided, of `J`).
    pub outlier_score: f64,
    /// Share of the suspect group a k-NN classifier in input space, trained without
    /// the group, assigns to this class (exclusionary reclassification).
    pub suspect_consistency: f64,
    /// The same share for the rest of the class (its baseline).
    pub class_consistency: f64,
    /// Whether the class is judged poisoned (its suspect group is flagged).
    pub poisoned: bool,
}

/// How well a detector's flags and scores match the truth.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectionMetrics {
    /// Samples judged.
    pub samples: usize,
    /// Truly poisoned samples among them.
    pub poisoned: usize,
    /// Samples flagged.
    pub flagged: usize,
    /// Flagged and poisoned.
    pub true_positives: usize,
    /// TP / flagged (1 when nothing is flagged).
    pub precision: f64,
    /// TP / poisoned (1 when nothing is poisoned).
    pub recall: f64,
    /// Harmonic mean of precision and recall (0 when both are 0).
    pub f1: f64,
    /// Flagged clean samples / clean samples.
    pub false_positive_rate: f64,
    /// Area under the ROC curve of the scores; `None` when only one kind of sample is present.
    pub auroc: Option<f64>,
}

/// STRIP's calibration and, when triggered inputs are known, its quality.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StripRecord {
    /// Clean images blended with each input.
    pub overlays: usize,
    /// Target false-rejection rate the threshold was set for.
    pub false_rejection_rate: f64,
    /// Entropy threshold: inputs below it are flagged.
    pub threshold: f64,
    /// Mean entropies of the held-out clean calibration inputs.
    pub calibration_entropies: Vec<f64>,
    /// Mean entropies of the clean inputs judged.
    pub clean_entropies: Vec<f64>,
    /// Share of the judged clean inputs flagged.
    pub measured_false_rejection_rate: f64,
    /// Mean entropies of triggered inputs (when the trigger is known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggered_entropies: Option<Vec<f64>>,
    /// Share of triggered inputs not flagged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub false_acceptance_rate: Option<f64>,
    /// AUROC of low entropy as the triggered-input score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auroc: Option<f64>,
    /// Seconds STRIP took.
    pub wall_seconds: f64,
}

/// Neural Cleanse's findings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NeuralCleanseRecord {
    /// Optimisation steps per class.
    pub steps: usize,
    /// One entry per class.
    pub classes: Vec<CleanseClass>,
    /// Classes named as backdoor targets.
    pub suspected_targets: Vec<u32>,
    /// Whether the named targets are exactly the true target (when known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names_true_target: Option<bool>,
    /// Seconds Neural Cleanse took.
    pub wall_seconds: f64,
}

/// Neural Cleanse's trigger for one class.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanseClass {
    /// The class.
    pub class: u32,
    /// L1 norm of its smallest successful mask.
    pub mask_l1: f64,
    /// Share of a batch that mask sent to the class.
    pub attack_success: f64,
    /// Whether any mask reached the target success rate.
    pub reached_target: bool,
    /// Anomaly index (positive: smaller than the median).
    pub anomaly_index: f64,
    /// Whether the class is named a backdoor target.
    pub flagged: bool,
}

/// A model's clean accuracy and backdoor success.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackdoorRecord {
    /// Training samples it was trained on.
    pub train_samples: usize,
    /// Accuracy on the clean test split.
    pub clean_accuracy: f64,
    /// Share of triggered test images (true class ≠ target) classified as the
    /// target; none for label flips.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attack_success_rate: Option<f64>,
    /// Seconds of training.
    pub train_seconds: f64,
}

impl RunRecord {
    /// The header every run shares (this build's schema and tool, what ran, on
    /// which model and data), with no sections yet: each job fills its own
    /// (`clean`, `training`, `robustness`, `poisoning`, `shard`) and the wall time.
    pub fn new(
        kind: RunKind,
        command: Vec<String>,
        seed: u64,
        environment: Environment,
        model: ModelRecord,
        dataset: DatasetRecord,
    ) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            tool: this_tool(),
            kind,
            command,
            seed,
            environment,
            model,
            dataset,
            clean: None,
            training: None,
            robustness: None,
            poisoning: None,
            shard: None,
            wall_seconds: 0.0,
        }
    }

    /// Pretty JSON with a trailing newline; the same record always gives the same bytes.
    pub fn to_json(&self) -> Result<String> {
        let mut text = serde_json::to_string_pretty(self).map_err(Error::Serialise)?;
        text.push('\n');
        Ok(text)
    }

    /// Parse a record, refusing unknown schema versions before anything else.
    pub fn from_json(text: &str) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_str(text)?;
        let found = value
            .get("schema_version")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        if found != u64::from(SCHEMA_VERSION) {
            return Err(Error::SchemaVersion {
                found,
                expected: SCHEMA_VERSION,
            });
        }
        Ok(serde_json::from_value(value)?)
    }
}

/// The tool block for records written by this build.
pub fn this_tool() -> Tool {
    Tool {
        name: "gauntlet".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RunRecord {
        RunRecord {
            schema_version: SCHEMA_VERSION,
            tool: this_tool(),
            kind: RunKind::Eval,
            command: vec!["gauntlet".into(), "eval".into()],
            seed: 7,
            environment: Environment {
                device: "cpu".into(),
                threads: 2,
                engine: "native".into(),
            },
            model: ModelRecord {
                path: "m.safetensors".into(),
                sha256: "ab".repeat(32),
                format: ModelFormat::Safetensors,
                arch: "cnn".into(),
                num_classes: 10,
                input_shape: [1, 28, 28],
                bounds: [0.0, 1.0],
                scan: None,
            },
            dataset: DatasetRecord {
                path: "datasets/mnist-5k".into(),
                sha256: "cd".repeat(32),
                format: DataFormat::Idx,
                split: Split::Test,
                num_samples: 3,
                preprocess: None,
            },
            clean: Some(CleanRecord {
                labels: vec![],
                accuracy: 2.0 / 3.0,
                correct: vec![true, false, true],
                predictions: vec![1, 2, 3],
            }),
            training: None,
            robustness: None,
            poisoning: None,
            shard: None,
            wall_seconds: 0.5,
        }
    }

    fn audit(success_before: Option<f64>, success_after: f64) -> PoisoningRecord {
        let backdoor = |rate| BackdoorRecord {
            train_samples: 100,
            clean_accuracy: 0.98,
            attack_success_rate: rate,
            train_seconds: 1.0,
        };
        let detector = |method: &str, flagged: Vec<usize>| DetectorRecord {
            method: method.into(),
            scores: vec![0.0; 100],
            flagged,
            classes: vec![],
            metrics: None,
            wall_seconds: 0.1,
        };
        PoisoningRecord {
            train_dataset: sample().dataset,
            injection: None,
            detectors: vec![
                detector("spectral-signatures", vec![]),
                detector("spectre", vec![3, 5, 8]),
            ],
            strip: None,
            neural_cleanse: None,
            before_filtering: Some(backdoor(success_before)),
            after_filtering: Some(backdoor(Some(success_after))),
            removed: vec![3, 5, 8],
        }
    }

    #[test]
    fn the_backdoor_verdict_is_derived_from_the_audit() {
        let removed = audit(Some(0.9), 0.02).backdoor_verdict().unwrap();
        assert!(!removed.survived);
        assert_eq!(removed.removed, 3);
        assert_eq!(removed.found_by, [("spectre".to_string(), 3)]);
        assert_eq!(
            removed.to_string(),
            "backdoor removed: attack success 90.0% → 2.0% after removing 3 samples (found by spectre 3)"
        );
        let survived = audit(Some(0.9), BACKDOOR_SURVIVAL_SUCCESS)
            .backdoor_verdict()
            .unwrap();
        assert!(survived.survived);
        assert!(survived.to_string().starts_with("backdoor SURVIVED"));
        // A label flip has no trigger, so there is no verdict to give.
        assert_eq!(audit(None, 0.0).backdoor_verdict(), None);
    }

    #[test]
    fn round_trip_is_lossless_and_byte_stable() {
        let r = sample();
        let text = r.to_json().unwrap();
        let back = RunRecord::from_json(&text).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.to_json().unwrap(), text);
        assert!(!text.contains("training"), "absent sections are omitted");
    }

    /// The typed vocabulary (norms, kinds, warning codes) reads every record
    /// the repository ships and writes it back byte for byte.
    #[test]
    fn shipped_records_round_trip_unchanged() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../reports");
        let mut seen = 0;
        for relative in [
            "demo/standard/results.json",
            "demo/fgsm-rs/eval/results.json",
            "demo/fgsm-rs/model.record.json",
            "mnist-cnn-pgd-at/results.json",
        ] {
            let text = std::fs::read_to_string(root.join(relative)).unwrap();
            let written = RunRecord::from_json(&text).unwrap().to_json().unwrap();
            // The first differing line, not two whole records.
            let differs = written
                .lines()
                .zip(text.lines())
                .enumerate()
                .find(|(_, (a, b))| a != b);
            assert_eq!(differs, None, "{relative}");
            assert_eq!(written.len(), text.len(), "{relative}");
            seen += 1;
        }
        assert_eq!(seen, 4);
    }

    #[test]
    fn unknown_schema_versions_and_fields_are_refused() {
        let text = sample()
            .to_json()
            .unwrap()
            .replace("\"schema_version\": 1", "\"schema_version\": 99");
        let err = RunRecord::from_json(&text).unwrap_err().to_string();
        assert!(err.contains("99") && err.contains("version 1"), "{err}");
        let text = sample()
            .to_json()
            .unwrap()
            .replace("\"seed\": 7", "\"seed\": 7, \"sede\": 8");
        assert!(RunRecord::from_json(&text)
            .unwrap_err()
            .to_string()
            .contains("sede"));
        assert!(RunRecord::from_json("{").is_err());
    }
}
