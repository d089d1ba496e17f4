//! Running the detectors and measuring a backdoor: the steps `detect` and `audit`
//! share, each producing its part of the run record.

use std::time::Instant;

use gauntlet_core::Observer;
use gauntlet_data::Dataset;
use gauntlet_models::Network;

use crate::model::NativeDetectorModel;

use crate::model::DetectorModel;
use gauntlet_record::{
    BackdoorRecord, CleanseClass, DetectorRecord, InjectionRecord, NeuralCleanseRecord,
    PoisoningRecord, StripRecord,
};
use gauntlet_train::TrainConfig;
use serde::{Deserialize, Serialize};

use crate::error::{config, Result};
use crate::features::{argmax, penultimate_features};
use crate::inject::{inject, InjectionConfig, Manifest, Trigger};
use crate::metrics::{auroc, detection_metrics};
use crate::{
    ActivationClustering, NeuralCleanse, SampleDetection, Scan, SpectralSignatures, Spectre, Strip,
    TriggerCarriers,
};

/// The detectors a run can use, by the names `--method` takes: four read the
/// training set, two probe the trained model at test time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detector {
    /// [`ActivationClustering`] (training set).
    ActivationClustering,
    /// [`SpectralSignatures`] (training set).
    SpectralSignatures,
    /// [`Spectre`] (training set).
    Spectre,
    /// [`Scan`] (training set).
    Scan,
    /// [`Strip`] (test time).
    Strip,
    /// [`NeuralCleanse`] (test time; its reversed trigger also finds training
    /// images, recorded as `neural-cleanse-trigger`).
    NeuralCleanse,
}

impl Detector {
    /// Every detector, in the order runs report them.
    pub const ALL: [Detector; 6] = [
        Self::ActivationClustering,
        Self::SpectralSignatures,
        Self::Spectre,
        Self::Scan,
        Self::Strip,
        Self::NeuralCleanse,
    ];

    /// Its name on the command line and in records.
    pub const fn name(self) -> &'static str {
        match self {
            Self::ActivationClustering => "activation-clustering",
            Self::SpectralSignatures => "spectral-signatures",
            Self::Spectre => "spectre",
            Self::Scan => "scan",
            Self::Strip => "strip",
            Self::NeuralCleanse => "neural-cleanse",
        }
    }
}

/// The training-set detectors a run uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingSetDetectors {
    /// Activation clustering, if run.
    pub activation_clustering: Option<ActivationClustering>,
    /// Spectral signatures, if run.
    pub spectral_signatures: Option<SpectralSignatures>,
    /// SPECTRE, if run.
    #[serde(default)]
    pub spectre: Option<Spectre>,
    /// SCAn, if run.
    #[serde(default)]
    pub scan: Option<Scan>,
}

impl TrainingSetDetectors {
    /// Every training-set detector with its defaults and `seed`.
    pub fn all(seed: u64) -> Self {
        Self {
            activation_clustering: Some(ActivationClustering {
                seed,
                ..ActivationClustering::default()
            }),
            spectral_signatures: Some(SpectralSignatures {
                seed,
                ..SpectralSignatures::default()
            }),
            spectre: Some(Spectre {
                seed,
                ..Spectre::default()
            }),
            scan: Some(Scan {
                seed,
                ..Scan::default()
            }),
        }
    }

    /// Run them on `data` under `net`; with `truth` (one flag per sample), score
    /// them. `clean` is a set the user trusts (the test split): SCAn reads its
    /// reference images there.
    pub fn run(
        &self,
        net: &dyn DetectorModel,
        data: &Dataset,
        clean: Option<&Dataset>,
        truth: Option<&[bool]>,
        batch_size: usize,
        observer: &dyn Observer,
    ) -> Result<Vec<DetectorRecord>> {
        let mut records = Vec::new();
        if self.activation_clustering.is_some()
            || self.spectral_signatures.is_some()
            || self.spectre.is_some()
            || self.scan.is_some()
        {
            let features = penultimate_features(net, data, batch_size, observer)?;
            if let Some(detector) = &self.activation_clustering {
                let started = Instant::now();
                let found = detector.detect(&features, data)?;
                records.push(detector_record(found, truth, started));
            }
            if let Some(detector) = &self.spectral_signatures {
                let started = Instant::now();
                let found = detector.detect(&features, data)?;
                records.push(detector_record(found, truth, started));
            }
            if let Some(detector) = &self.spectre {
                let started = Instant::now();
                let found = detector.detect(&features, data)?;
                records.push(detector_record(found, truth, started));
            }
            if let Some(detector) = &self.scan {
                let started = Instant::now();
                let reference = match clean {
                    Some(clean) if detector.reference_samples > 0 => {
                        let count = detector.reference_samples.min(clean.len());
                        let indices: Vec<usize> = (0..count).collect();
                        let subset = clean.select(clean.path().join("scan-reference"), &indices)?;
                        Some(penultimate_features(net, &subset, batch_size, observer)?)
                    }
                    _ => None,
                };
                let found = detector.detect(&features, reference.as_ref(), data)?;
                records.push(detector_record(found, truth, started));
            }
        }
        Ok(records)
    }
}

fn detector_record(
    found: SampleDetection,
    truth: Option<&[bool]>,
    started: Instant,
) -> DetectorRecord {
    let wall_seconds = started.elapsed().as_secs_f64();
    DetectorRecord {
        metrics: truth.map(|t| detection_metrics(&found.flagged, &found.scores, t)),
        flagged: found.flagged_indices(),
        method: found.method,
        scores: found.scores,
        classes: found.classes,
        wall_seconds,
    }
}

/// STRIP on a test split: the first `held_out` images calibrate the threshold and
/// supply the overlays; the next `held_out` are judged as clean inputs and, with a
/// known `trigger`, those of them not already of the `target` class are judged
/// again with it stamped on.
pub fn run_strip(
    strip: &Strip,
    net: &dyn DetectorModel,
    test_data: &Dataset,
    held_out: usize,
    trigger: Option<(&Trigger, Option<u32>)>,
) -> Result<StripRecord> {
    let started = Instant::now();
    if held_out < 2 || test_data.len() < 2 * held_out {
        return Err(config(format!(
            "STRIP holds out {held_out} clean test images and judges as many more: the test split needs at least {} (it has {}), and at least 2 are needed",
            2 * held_out,
            test_data.len()
        )));
    }
    let calibration_images = test_data.images_f32(0..held_out)?;
    let judged = test_data.images_f32(held_out..2 * held_out)?;
    let calibration = strip.calibrate(net, &calibration_images)?;
    let clean_entropies = strip.entropies(net, &judged, &calibration_images, "clean", false)?;
    let rejected = clean_entropies
        .iter()
        .filter(|&&e| calibration.flags(e))
        .count();
    let mut record = StripRecord {
        overlays: strip.overlays,
        false_rejection_rate: strip.false_rejection_rate,
        threshold: calibration.threshold,
        calibration_entropies: calibration.clean_entropies.clone(),
        measured_false_rejection_rate: rejected as f64 / clean_entropies.len() as f64,
        clean_entropies,
        triggered_entropies: None,
        false_acceptance_rate: None,
        auroc: None,
        wall_seconds: 0.0,
    };
    if let Some((trigger, target)) = trigger {
        let triggered = triggered_images(test_data, held_out..2 * held_out, trigger, target)?;
        let entropies =
            strip.entropies(net, &triggered, &calibration_images, "triggered", false)?;
        let accepted = entropies.iter().filter(|&&e| !calibration.flags(e)).count();
        record.false_acceptance_rate = Some(accepted as f64 / entropies.len().max(1) as f64);
        let scores: Vec<f64> = record
            .clean_entropies
            .iter()
            .chain(&entropies)
            .map(|e| -e)
            .collect();
        let truth: Vec<bool> = (0..scores.len())
            .map(|i| i >= record.clean_entropies.len())
            .collect();
        record.auroc = auroc(&scores, &truth);
        record.triggered_entropies = Some(entropies);
    }
    record.wall_seconds = started.elapsed().as_secs_f64();
    Ok(record)
}

/// Neural Cleanse on the first `samples` clean test images; with a known target,
/// whether it names exactly that class. With a `training` set (and its ground
/// truth, if known), the training images carrying each trigger it names
/// ([`TriggerCarriers`]) are returned as a training-set detector's record.
pub fn run_neural_cleanse(
    cleanse: &NeuralCleanse,
    net: &dyn DetectorModel,
    test_data: &Dataset,
    samples: usize,
    training: Option<(&Dataset, Option<&[bool]>)>,
    true_target: Option<u32>,
    observer: &dyn Observer,
) -> Result<(NeuralCleanseRecord, Option<DetectorRecord>)> {
    let started = Instant::now();
    let count = samples.min(test_data.len());
    let images = test_data.images_f32(0..count)?;
    let report = cleanse.run(net, &images, count, observer)?;
    let record = NeuralCleanseRecord {
        steps: cleanse.steps,
        names_true_target: true_target.map(|t| report.suspected_targets == [t]),
        suspected_targets: report.suspected_targets.clone(),
        classes: report
            .classes
            .iter()
            .map(|c| CleanseClass {
                class: c.class,
                mask_l1: c.mask_l1,
                attack_success: c.attack_success,
                reached_target: c.reached_target,
                anomaly_index: c.anomaly_index,
                flagged: c.flagged,
            })
            .collect(),
        wall_seconds: started.elapsed().as_secs_f64(),
    };
    let carriers = match training {
        Some((train, truth)) => {
            let started = Instant::now();
            TriggerCarriers::default()
                .detect(
                    net,
                    &report,
                    train,
                    (&images, &test_data.labels()[..count]),
                    cleanse.batch_size,
                    observer,
                )?
                .map(|found| detector_record(found, truth, started))
        }
        None => None,
    };
    Ok((record, carriers))
}

/// Copies of the test images in `range` whose label is not `target`, with `trigger` stamped.
fn triggered_images(
    data: &Dataset,
    range: std::ops::Range<usize>,
    trigger: &Trigger,
    target: Option<u32>,
) -> Result<Vec<f32>> {
    let mut images = Vec::new();
    for i in range {
        if Some(data.labels()[i]) == target {
            continue;
        }
        let mut image = data.images_f32(i..i + 1)?;
        trigger.apply(&mut image);
        images.extend(image);
    }
    Ok(images)
}

/// Clean accuracy on `test_data` and, with a trigger, the attack-success rate: the
/// share of triggered test images (true class ≠ target) classified as the target.
pub fn backdoor_effect(
    net: &dyn DetectorModel,
    test_data: &Dataset,
    trigger: Option<(&Trigger, u32)>,
    batch_size: usize,
) -> Result<(f64, Option<f64>)> {
    let predict = |images: &[f32]| -> Result<Vec<u32>> {
        let per: usize = test_data.image_shape().iter().product();
        let mut predictions = Vec::with_capacity(images.len() / per);
        for chunk in images.chunks(batch_size.max(1) * per) {
            let logits = net.logits(chunk, chunk.len() / per)?;
            predictions.extend(logits.chunks_exact(net.num_classes()).map(argmax));
        }
        Ok(predictions)
    };
    let clean = predict(&test_data.images_f32(0..test_data.len())?)?;
    let correct = clean
        .iter()
        .zip(test_data.labels())
        .filter(|(p, l)| p == l)
        .count();
    let accuracy = correct as f64 / test_data.len() as f64;
    let success = match trigger {
        None => None,
        Some((trigger, target)) => {
            let triggered = triggered_images(test_data, 0..test_data.len(), trigger, Some(target))?;
            let predictions = predict(&triggered)?;
            let hits = predictions.iter().filter(|&&p| p == target).count();
            Some(hits as f64 / predictions.len().max(1) as f64)
        }
    };
    Ok((accuracy, success))
}

/// The injection part of the record.
pub fn injection_record(manifest: &Manifest) -> InjectionRecord {
    InjectionRecord {
        attack: manifest.config.attack.name().into(),
        target: manifest.config.target,
        fraction: manifest.config.fraction,
        source_classes: manifest.source_classes.clone(),
        seed: manifest.config.seed,
        poisoned: manifest.indices.clone(),
        trigger_l1: manifest.trigger.as_ref().map(Trigger::mask_l1),
    }
}

/// Everything an audit does, with its settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditConfig {
    /// What to inject.
    pub injection: InjectionConfig,
    /// How to train the poisoned and the filtered model.
    pub training: TrainConfig,
    /// Training-set detectors (their flags are removed before retraining).
    pub detectors: TrainingSetDetectors,
    /// STRIP, if run.
    pub strip: Option<Strip>,
    /// Clean test images STRIP holds out (and judges as many more; default 500).
    pub strip_held_out: usize,
    /// Neural Cleanse, if run.
    pub neural_cleanse: Option<NeuralCleanse>,
    /// Clean test images Neural Cleanse optimises on (default 500).
    pub cleanse_samples: usize,
    /// Images per forward pass when computing features and accuracies (default 500).
    pub batch_size: usize,
}

/// What an audit produced.
#[derive(Clone, Debug)]
pub struct AuditOutcome {
    /// The record's poisoning section.
    pub record: PoisoningRecord,
    /// The injection's ground truth.
    pub manifest: Manifest,
    /// The model trained on the poisoned data.
    pub poisoned_model: Network,
    /// The model retrained without the flagged samples.
    pub filtered_model: Network,
}

/// The audit pipeline: inject → train → measure clean accuracy and attack success
/// → run every detector → remove what the training-set detectors flag, and the
/// training images carrying a trigger Neural Cleanse names → retrain
/// → measure again.
pub fn audit(
    settings: &AuditConfig,
    train_data: &Dataset,
    test_data: &Dataset,
    observer: &dyn Observer,
) -> Result<AuditOutcome> {
    settings.training.validate()?;
    if settings.batch_size == 0 {
        return Err(config("batch size must be at least 1"));
    }
    let poisoned = inject(train_data, &settings.injection)?;
    let manifest = poisoned.manifest;
    let truth = manifest.is_poisoned();
    let trigger = manifest.trigger.as_ref();
    let target = manifest.config.target;
    let backdoor = trigger.zip(target);

    let (before, poisoned_model) =
        train_and_measure(settings, &poisoned.dataset, test_data, backdoor, observer)?;
    let net = &native(&poisoned_model)?;
    let detectors = settings.detectors.run(
        net,
        &poisoned.dataset,
        Some(test_data),
        Some(&truth),
        settings.batch_size,
        observer,
    )?;
    let strip = match (&settings.strip, trigger) {
        (Some(strip), Some(trigger)) => Some(run_strip(
            strip,
            net,
            test_data,
            settings.strip_held_out,
            Some((trigger, target)),
        )?),
        _ => None,
    };
    let mut detectors = detectors;
    let neural_cleanse = match &settings.neural_cleanse {
        Some(cleanse) => {
            let (record, carriers) = run_neural_cleanse(
                cleanse,
                net,
                test_data,
                settings.cleanse_samples,
                Some((&poisoned.dataset, Some(&truth))),
                target.filter(|_| trigger.is_some()),
                observer,
            )?;
            detectors.extend(carriers);
            Some(record)
        }
        None => None,
    };

    let mut removed: Vec<usize> = detectors.iter().flat_map(|d| d.flagged.clone()).collect();
    removed.sort_unstable();
    removed.dedup();
    let keep: Vec<usize> = (0..poisoned.dataset.len())
        .filter(|i| removed.binary_search(i).is_err())
        .collect();
    let filtered = poisoned
        .dataset
        .select(poisoned.dataset.path().join("filtered"), &keep)?;
    let (after, filtered_model) =
        train_and_measure(settings, &filtered, test_data, backdoor, observer)?;

    let record = PoisoningRecord {
        train_dataset: train_data.record(),
        injection: Some(injection_record(&manifest)),
        detectors,
        strip,
        neural_cleanse,
        before_filtering: Some(before),
        after_filtering: Some(after),
        removed,
    };
    Ok(AuditOutcome {
        record,
        manifest,
        poisoned_model,
        filtered_model,
    })
}

fn train_and_measure(
    settings: &AuditConfig,
    train_data: &Dataset,
    test_data: &Dataset,
    backdoor: Option<(&Trigger, u32)>,
    observer: &dyn Observer,
) -> Result<(BackdoorRecord, Network)> {
    let started = Instant::now();
    let outcome = gauntlet_train::train(&settings.training, train_data, test_data, observer)?;
    let train_seconds = started.elapsed().as_secs_f64();
    let net = &native(&outcome.last)?;
    let (clean_accuracy, attack_success_rate) =
        backdoor_effect(net, test_data, backdoor, settings.batch_size)?;
    Ok((
        BackdoorRecord {
            train_samples: train_data.len(),
            clean_accuracy,
            attack_success_rate,
            train_seconds,
        },
        outcome.last,
    ))
}

/// The native engine of a built-in network (every detector runs on it).
pub fn native(network: &Network) -> Result<NativeDetectorModel<'_>> {
    NativeDetectorModel::new(network)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PatchPattern, PoisonKind};

    fn distinct(names: &[&str]) -> bool {
        let mut sorted = names.to_vec();
        sorted.sort_unstable();
        sorted.windows(2).all(|w| w[0] != w[1])
    }

    /// The name tables the command line is built from: distinct names, each
    /// parsing back to itself, each documented in the README.
    #[test]
    fn name_tables_are_distinct_parse_back_and_are_documented() {
        let readme = include_str!("../../../README.md");
        let detectors: Vec<&str> = Detector::ALL.iter().map(|d| d.name()).collect();
        let attacks: Vec<&str> = PoisonKind::ALL.iter().map(|k| k.name()).collect();
        let patterns: Vec<&str> = PatchPattern::NAMED.iter().map(|p| p.name()).collect();
        for names in [&detectors, &attacks, &patterns] {
            assert!(distinct(names), "{names:?}");
        }
        for pattern in PatchPattern::NAMED {
            assert_eq!(PatchPattern::parse(pattern.name()).unwrap(), pattern);
        }
        assert!(
            PatchPattern::parse("image").is_err(),
            "an image comes from a file"
        );
        for name in detectors.iter().chain(&attacks) {
            assert!(readme.contains(name), "README does not mention {name}");
        }
    }
}
