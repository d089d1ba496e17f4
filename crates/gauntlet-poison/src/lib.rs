//! Poisoning for Gauntlet: inject backdoors and label flips into a training set,
//! detect them, and measure the detectors against the ground truth.
//!
//! - [`inject`]: BadNets patches (Gu et al. 2017), blended triggers (Chen et al.
//!   2017) and label flips, with a ground-truth [`Manifest`].
//! - Training-set detectors on penultimate [`Features`]: [`ActivationClustering`]
//!   (Chen et al. 2018) and [`SpectralSignatures`] (Tran et al. 2018), both deciding
//!   which classes are poisoned at all, not only which samples look odd in each;
//!   [`Spectre`] (Hayase et al. 2021) and [`Scan`] (Tang et al. 2021) for low
//!   poisoning rates.
//! - [`TriggerCarriers`]: the training images carrying a trigger that
//!   [`NeuralCleanse`] (Wang et al. 2019) reverse-engineered.
//!
//! Detection never reads the manifest; evaluation against it is separate.

mod carriers;
mod cleanse;
mod detect;
mod error;
mod features;
mod inject;
mod job;
mod knn;
mod metrics;
mod model;
mod pipeline;
mod scan;
mod spectre;
mod strip;

pub use carriers::TriggerCarriers;
pub use cleanse::{ClassTrigger, CleanseReport, NeuralCleanse};
pub use detect::{
    ActivationClustering, ClassDecision, ClassFinding, SampleDetection, SpectralSignatures,
};
pub use error::{Error, Result};
pub use features::{penultimate_features, Features};
pub use inject::{
    inject, InjectionConfig, Manifest, Patch, PatchPattern, PatchPosition, PoisonAttack,
    PoisonKind, Poisoned, Trigger, MANIFEST_VERSION,
};
pub use job::{AuditJob, AuditPlan, DetectJob, DetectPlan, InjectJob, InjectPlan};
pub use metrics::{auroc, detection_metrics, DetectionMetrics};
pub use model::{DetectorModel, NativeDetectorModel, OnnxDetectorModel};
pub use pipeline::{
    audit, backdoor_effect, injection_record, native, run_neural_cleanse, run_strip, AuditConfig,
    AuditOutcome, Detector, TrainingSetDetectors,
};
pub use scan::Scan;
pub use spectre::Spectre;
pub use strip::{Strip, StripCalibration};
