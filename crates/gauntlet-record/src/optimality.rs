//! How close each minimal-perturbation attack came to the best perturbations
//! known: AttackBench's local optimality (Cinà et al., AAAI 2025, "AttackBench:
//! Evaluating Gradient-based Attacks for Adversarial Examples").
//!
//! An attack's robust-accuracy-vs-ε curve lies on or above the curve of the
//! per-sample best over every attack run. The area under a curve on [0, E] is
//! the mean over samples of min(dᵢ, E), with dᵢ the sample's perturbation (∞
//! where none was found), so both areas come exactly from the per-sample norms,
//! without a grid. Local optimality is best area / attack area: 1 when the
//! attack found the best perturbation for every sample, lower the more area lies
//! between its curve and the best-known one. Attacks that ran only on the
//! samples still robust (AutoAttack's schedule) have no full curve and no row.

use serde::{Deserialize, Serialize};

use crate::{Norm, RobustnessRecord};

/// One minimal-perturbation attack measured against the best known.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Optimality {
    /// Registry name.
    pub attack: String,
    /// The norm.
    pub norm: Norm,
    /// Upper end E of the integration range: the largest ε of the norm's grid.
    pub epsilon_max: f64,
    /// Samples it found an adversarial example for (clean-correct ones only).
    pub found: usize,
    /// Clean-correct samples.
    pub attacked: usize,
    /// Samples on which its perturbation is within 1% of the best known.
    pub at_best: usize,
    /// Area under its robust-accuracy curve on [0, E].
    pub area: f64,
    /// Area under the best-known curve on [0, E].
    pub best_area: f64,
    /// best_area / area, in [0, 1] (1 when both areas are 0).
    pub local_optimality: f64,
}

/// Relative slack within which a perturbation counts as the best known.
const AT_BEST: f64 = 0.01;

/// The optimality of every minimal-perturbation attack in `robustness`, in
/// record order; empty for records without best-known perturbations.
pub fn optimality(robustness: &RobustnessRecord) -> Vec<Optimality> {
    robustness
        .minimal
        .iter()
        .filter_map(|minimal| {
            let best = robustness
                .best_known
                .iter()
                .find(|b| b.norm == minimal.norm)?;
            if best.norms.len() != minimal.norms.len() {
                return None;
            }
            // An attack scheduled on the still-robust samples only has no curve
            // of its own to compare.
            let correct = best.norms.iter().filter(|d| **d != Some(0.0)).count();
            let ran_on_all = robustness
                .attacks
                .iter()
                .find(|a| a.attack == minimal.attack && a.norm == minimal.norm)
                .is_none_or(|a| a.attacked >= correct);
            if !ran_on_all {
                return None;
            }
            let grid_max = robustness
                .worst_case
                .iter()
                .filter(|w| w.norm == minimal.norm)
                .map(|w| w.epsilon)
                .fold(0.0, f64::max);
            let epsilon_max = if grid_max > 0.0 {
                grid_max
            } else {
                best.norms.iter().flatten().copied().fold(0.0, f64::max)
            };
            let clip = |d: Option<f64>| d.map_or(epsilon_max, |v| v.min(epsilon_max));
            let (mut area, mut best_area) = (0.0, 0.0);
            let (mut found, mut attacked, mut at_best) = (0, 0, 0);
            for (&own, &known) in minimal.norms.iter().zip(&best.norms) {
                // Misclassified unperturbed: at zero on both curves.
                if known == Some(0.0) {
                    continue;
                }
                attacked += 1;
                found += usize::from(own.is_some());
                if let (Some(o), Some(k)) = (own, known) {
                    at_best += usize::from(o <= k * (1.0 + AT_BEST));
                }
                area += clip(own);
                best_area += clip(known);
            }
            let samples = best.norms.len().max(1) as f64;
            let (area, best_area) = (area / samples, best_area / samples);
            Some(Optimality {
                attack: minimal.attack.clone(),
                norm: minimal.norm,
                epsilon_max,
                found,
                attacked,
                at_best,
                area,
                best_area,
                local_optimality: if area > 0.0 { best_area / area } else { 1.0 },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BestKnownRecord, MinimalRecord, SuiteRecord, WorstCaseRecord};

    fn record(
        minimal: Vec<MinimalRecord>,
        best: Vec<Option<f64>>,
        grid: &[f64],
    ) -> RobustnessRecord {
        RobustnessRecord {
            suite: SuiteRecord {
                name: "t".into(),
                description: String::new(),
                path: None,
                sha256: None,
            },
            attacks: Vec::new(),
            minimal,
            best_known: vec![BestKnownRecord {
                norm: Norm::L2,
                norms: best,
            }],
            worst_case: grid
                .iter()
                .map(|&epsilon| WorstCaseRecord {
                    norm: Norm::L2,
                    epsilon,
                    robust_accuracy: 0.0,
                    robust: Vec::new(),
                })
                .collect(),
            warnings: Vec::new(),
            gallery: Vec::new(),
        }
    }

    #[test]
    fn areas_are_the_mean_clipped_perturbation_and_the_ratio_is_their_quotient() {
        // Sample 0 is misclassified unperturbed; sample 3 is never broken.
        let best = vec![Some(0.0), Some(0.5), Some(1.0), None];
        let weak = MinimalRecord {
            attack: "weak".into(),
            norm: Norm::L2,
            norms: vec![None, Some(1.0), Some(3.0), None],
        };
        let optimal = MinimalRecord {
            attack: "optimal".into(),
            norm: Norm::L2,
            norms: vec![None, Some(0.5), Some(1.0), None],
        };
        let rows = optimality(&record(vec![weak, optimal], best, &[1.0, 2.0]));
        // E = 2: best area (0.5 + 1 + 2) / 4, weak area (1 + 2 + 2) / 4.
        assert_eq!(rows[0].epsilon_max, 2.0);
        assert!((rows[0].best_area - 3.5 / 4.0).abs() < 1e-12);
        assert!((rows[0].area - 5.0 / 4.0).abs() < 1e-12);
        assert!((rows[0].local_optimality - 0.7).abs() < 1e-12);
        assert_eq!(
            (rows[0].found, rows[0].attacked, rows[0].at_best),
            (2, 3, 0)
        );
        assert_eq!(rows[1].local_optimality, 1.0);
        assert_eq!(rows[1].at_best, 2);
    }

    #[test]
    fn records_without_best_known_perturbations_have_no_rows() {
        let mut r = record(Vec::new(), Vec::new(), &[]);
        r.best_known.clear();
        r.minimal.push(MinimalRecord {
            attack: "a".into(),
            norm: Norm::L2,
            norms: vec![Some(1.0)],
        });
        assert!(optimality(&r).is_empty());
    }
}
