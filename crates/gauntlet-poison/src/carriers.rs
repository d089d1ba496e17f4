//! From a trigger reversed at test time to the training images that carry it.

use gauntlet_data::Dataset;
use serde::{Deserialize, Serialize};

use crate::cleanse::CleanseReport;
use crate::detect::{consistency, SampleDetection};
use crate::error::{config, Result};
use crate::features::{penultimate_features, Features};
use crate::model::DetectorModel;
use gauntlet_core::Observer;
use gauntlet_record::ClassFinding;

const METHOD: &str = "neural-cleanse-trigger";

/// The training images that carry a trigger Neural Cleanse reverse-engineered.
///
/// Neural Cleanse (Wang et al. 2019) names a target class `t` and a trigger
/// that sends clean images to it. A backdoored model maps every input carrying
/// the real trigger to one region of its penultimate layer, and the reversed
/// trigger, which works through the same shortcut, lands there too. So: stamp
/// the reversed trigger on clean images of the other classes and take the mean
/// of their penultimate activations (`μ_trigger`); take the mean of the clean
/// images of class `t` (`μ_t`). A training sample labelled `t` carries the
/// trigger when its activations are nearer `μ_trigger` than `μ_t`. Its score
/// is `(‖f − μ_label‖ − ‖f − μ_trigger‖) / ‖μ_label − μ_trigger‖`, positive on
/// the trigger's side. Wang et al. use the reversed trigger to filter inputs and
/// unlearn the backdoor; using it to find the poisoned training images is this
/// tool's step, so that the audit's retraining can remove them.
///
/// As for the other detectors, the group is flagged only if it fails
/// exclusionary reclassification (Chen et al. 2018): a k-NN vote in input
/// space, without the group, puts it in class `t` less than
/// `max_consistency_ratio` times as often as the rest of the class. A class
/// Neural Cleanse named wrongly then loses nothing.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TriggerCarriers {
    /// Fewest carriers in a poisoned class (default 5).
    pub min_group: usize,
    /// The carriers must be reclassified into the target less than this
    /// fraction as often as the rest of the class is (default 0.25).
    pub max_consistency_ratio: f64,
    /// Neighbours of the k-NN reclassification (default 5).
    pub neighbours: usize,
}

impl Default for TriggerCarriers {
    fn default() -> Self {
        Self {
            min_group: 5,
            max_consistency_ratio: 0.25,
            neighbours: 5,
        }
    }
}

impl TriggerCarriers {
    /// Find the carriers in `train` of every trigger `report` flags, from the
    /// clean images Neural Cleanse ran on (`clean`, NCHW, with their labels).
    /// `None` when Neural Cleanse named no target.
    pub fn detect(
        &self,
        net: &dyn DetectorModel,
        report: &CleanseReport,
        train: &Dataset,
        clean: (&[f32], &[u32]),
        batch_size: usize,
        observer: &dyn Observer,
    ) -> Result<Option<SampleDetection>> {
        let (clean_images, clean_labels) = clean;
        if report.suspected_targets.is_empty() {
            return Ok(None);
        }
        if self.neighbours == 0 || batch_size == 0 {
            return Err(config(
                "the trigger-carrier search needs at least 1 neighbour and a batch size of at least 1",
            ));
        }
        let per: usize = net.input_shape().iter().product();
        if clean_images.len() != clean_labels.len() * per {
            return Err(config(format!(
                "{} values for {} clean images of {per} values",
                clean_images.len(),
                clean_labels.len()
            )));
        }
        let classes = net.num_classes();
        let clean_features = features_of(net, clean_images, clean_labels.len(), batch_size)?;
        let dim = clean_features.len() / clean_labels.len().max(1);
        let class_means: Vec<Option<Vec<f64>>> = (0..classes as u32)
            .map(|class| {
                mean_of(
                    &clean_features,
                    dim,
                    clean_labels.iter().map(|&l| l == class),
                )
            })
            .collect();
        let train_features = penultimate_features(net, train, batch_size, observer)?;
        let total = train.len();
        let mut detection = SampleDetection {
            method: METHOD.into(),
            scores: vec![f64::NEG_INFINITY; total],
            flagged: vec![false; total],
            classes: Vec::new(),
        };
        for found in report.classes.iter().filter(|c| c.flagged) {
            let target = found.class;
            // The reversed trigger on clean images of the other classes.
            let mut triggered = Vec::new();
            for (image, &label) in clean_images.chunks_exact(per).zip(clean_labels) {
                if label != target {
                    let mut image = image.to_vec();
                    found.trigger.apply(&mut image);
                    triggered.extend(image);
                }
            }
            let count = triggered.len() / per;
            let triggered_features = features_of(net, &triggered, count, batch_size)?;
            let Some(trigger_mean) = mean_of(&triggered_features, dim, (0..count).map(|_| true))
            else {
                continue;
            };
            for i in 0..total {
                let label = train.labels()[i] as usize;
                let Some(label_mean) = class_means.get(label).and_then(Option::as_ref) else {
                    continue;
                };
                let score = side_of(train_features.row(i), label_mean, &trigger_mean);
                detection.scores[i] = detection.scores[i].max(score);
            }
            let finding = self.decide(
                &mut detection,
                &train_features,
                train,
                target,
                found.anomaly_index,
            )?;
            detection.classes.push(finding);
        }
        for score in &mut detection.scores {
            if !score.is_finite() {
                *score = -1.0;
            }
        }
        Ok(Some(detection))
    }

    /// Flag the target's carriers if they fail exclusionary reclassification.
    fn decide(
        &self,
        detection: &mut SampleDetection,
        features: &Features,
        train: &Dataset,
        target: u32,
        anomaly_index: f64,
    ) -> Result<ClassFinding> {
        let members = features.members(target);
        let suspect: Vec<bool> = members.iter().map(|&i| detection.scores[i] > 0.0).collect();
        let suspect_size = suspect.iter().filter(|&&s| s).count();
        let (suspect_consistency, class_consistency) =
            if suspect_size >= self.min_group && suspect_size < members.len() {
                consistency(train, target, &members, &suspect, self.neighbours)?
            } else {
                (1.0, 1.0)
            };
        let poisoned = suspect_size >= self.min_group
            && suspect_consistency < self.max_consistency_ratio * class_consistency;
        if poisoned {
            for (&i, &s) in members.iter().zip(&suspect) {
                detection.flagged[i] |= s;
            }
        }
        Ok(ClassFinding {
            class: target,
            samples: members.len(),
            suspect_size,
            statistic: anomaly_index,
            outlier_score: anomaly_index,
            suspect_consistency,
            class_consistency,
            poisoned,
        })
    }
}

/// Penultimate activations of `n` NCHW images, in batches.
fn features_of(
    net: &dyn DetectorModel,
    images: &[f32],
    n: usize,
    batch_size: usize,
) -> Result<Vec<f32>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let per = images.len() / n;
    let mut features = Vec::new();
    for chunk in images.chunks(batch_size * per) {
        features.extend(net.logits_and_features(chunk, chunk.len() / per)?.1);
    }
    Ok(features)
}

/// The mean of the rows (`dim` wide) that `chosen` selects; `None` if none is.
fn mean_of(rows: &[f32], dim: usize, chosen: impl Iterator<Item = bool>) -> Option<Vec<f64>> {
    let mut sum = vec![0.0f64; dim];
    let mut count = 0usize;
    for (row, take) in rows.chunks_exact(dim.max(1)).zip(chosen) {
        if take {
            sum.iter_mut()
                .zip(row)
                .for_each(|(s, &v)| *s += f64::from(v));
            count += 1;
        }
    }
    (count > 0).then(|| sum.into_iter().map(|s| s / count as f64).collect())
}

/// Where `f` lies between the clean mean and the trigger mean: positive when it
/// is nearer the trigger, in units of the distance between the two means.
fn side_of(f: &[f32], clean_mean: &[f64], trigger_mean: &[f64]) -> f64 {
    let distance = |mean: &[f64]| -> f64 {
        f.iter()
            .zip(mean)
            .map(|(&v, m)| (f64::from(v) - m).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let apart = clean_mean
        .iter()
        .zip(trigger_mean)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f64>()
        .sqrt()
        .max(1e-12);
    (distance(clean_mean) - distance(trigger_mean)) / apart
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn side_of_is_signed_distance_in_units_of_the_gap() {
        let clean = [0.0, 0.0];
        let trigger = [4.0, 0.0];
        // At the clean mean: a full gap nearer the clean side.
        assert!((side_of(&[0.0, 0.0], &clean, &trigger) + 1.0).abs() < 1e-12);
        // At the trigger mean: a full gap nearer the trigger side.
        assert!((side_of(&[4.0, 0.0], &clean, &trigger) - 1.0).abs() < 1e-12);
        // On the bisector: neither side.
        assert!(side_of(&[2.0, 3.0], &clean, &trigger).abs() < 1e-6);
    }

    #[test]
    fn mean_of_takes_only_the_chosen_rows() {
        let rows = [1.0, 2.0, 10.0, 20.0, 3.0, 4.0];
        let mean = mean_of(&rows, 2, [true, false, true].into_iter());
        assert_eq!(mean, Some(vec![2.0, 3.0]));
        assert_eq!(mean_of(&rows, 2, [false; 3].into_iter()), None);
    }
}
