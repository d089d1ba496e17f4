//! SPECTRE: robust covariance estimation and quantum-entropy scoring, the
//! training-set detector built for the low poisoning rates where spectral
//! signatures fail.

use linfa_linalg::eigh::Eigh;
use ndarray::{Array1, Array2, Axis};
use serde::{Deserialize, Serialize};

use gauntlet_core::SeedStream;
use gauntlet_data::Dataset;

use crate::detect::{
    centred_rows, consistency, median, robust_z, top_singular, SampleDetection, MIN_CLASS_SAMPLES,
};
use crate::error::{config, Error, Result};
use crate::features::Features;
use crate::knn::{majority, neighbour_labels};
use crate::pipeline::Detector;
use gauntlet_record::ClassFinding;

const METHOD: &str = Detector::Spectre.name();

/// SPECTRE (Hayase, Kong, Somani & Oh, ICML 2021, "SPECTRE: Defending Against
/// Backdoor Attacks Using Robust Statistics"). Per class: project the penultimate
/// activations on their top `k` principal directions; estimate the clean
/// samples' mean and covariance robustly, so a poisoned group cannot inflate
/// them; whiten every sample with that estimate, so the clean samples look
/// isotropic and the poisoned group stands out as a direction of excess
/// variance; score each sample by quantum entropy (QUE, Dong, Hopkins & Li 2019):
/// `τᵢ = x̃ᵢᵀ U x̃ᵢ` with `U = exp(α(Σ̃ − I)/(‖Σ̃‖ − 1)) / tr(·)`, which weights the
/// directions of excess variance exponentially.
///
/// Where this implementation departs from the paper, and why:
/// - Robust estimation by the reweighted minimum covariance determinant
///   (Rousseeuw & Van Driessen 1999: concentration steps on the half of the class
///   with the smallest Mahalanobis distances, a consistency factor, then the
///   97.5% χ² inliers) instead of the paper's DKK17 filter, which needs the
///   number of poisoned samples as input; MCD tolerates any group below half the
///   class and needs no rate.
/// - `k` is chosen per class from the paper's grid of squares by the largest
///   QUE-weighted variance relative to the noise edge `(1 + √(k/n))²` of a clean
///   class (Marchenko–Pastur). The paper picks `k` by the raw value.
/// - The paper is told the poison count ε and the target class and removes the
///   top 1.5·ε scores. Here neither is known, and penultimate activations are
///   far from Gaussian, so no score threshold holds across classes. Instead the
///   QUE ranking is read with exclusionary reclassification (Chen et al. 2018):
///   the top `candidate_share` of each class are put to a k-NN vote in input
///   space, without one another; dirty-label poisons are voted into their
///   source classes, clean samples mostly into their own. The poisoned group is
///   the leading run of the ranking where "elsewhere" votes dominate (a CUSUM
///   change point), and a class is poisoned when that group is reclassified far
///   more than its class is (`max_consistency_ratio`) and its evidence is a
///   robust outlier among the classes (`min_outlier_score`). The flagged
///   samples are the group's members voted elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spectre {
    /// Largest number of principal directions tried (default 64; the grid is
    /// 1, 4, 9, …, up to it).
    pub max_components: usize,
    /// QUE's α (default 4, as in the paper).
    pub alpha: f64,
    /// Share of each class, highest QUE scores first, examined for a poisoned
    /// group (default 0.25: the groups SPECTRE is built for are smaller).
    pub candidate_share: f64,
    /// Fewest reclassified samples in a poisoned group (default 5).
    pub min_group: usize,
    /// Robust z-score among the classes of the group's evidence (`−log₁₀` of
    /// the binomial tail of its reclassifications at the class's own rate,
    /// log scale) above which a class may be poisoned (default 2; measured:
    /// poisoned classes 2.9–4.6, clean classes at most 1.6).
    pub min_outlier_score: f64,
    /// The group must be reclassified into its class
    /// less than this fraction as often as the rest of the class is (default
    /// 0.25, as for the other detectors; measured: poisoned groups 0.00–0.04,
    /// a clean class's tail 0.33–0.76).
    pub max_consistency_ratio: f64,
    /// Neighbours of the k-NN reclassification (default 5).
    pub neighbours: usize,
    /// Seed of the PCA's random start.
    pub seed: u64,
}

impl Default for Spectre {
    fn default() -> Self {
        Self {
            max_components: 64,
            alpha: 4.0,
            candidate_share: 0.25,
            min_group: 5,
            min_outlier_score: 2.0,
            max_consistency_ratio: 0.25,
            neighbours: 5,
            seed: 0,
        }
    }
}

/// One class's analysis, before the decision across classes.
struct ClassScores {
    class: u32,
    members: Vec<usize>,
    /// Log QUE scores standardised by the class's lower quantiles.
    standardised: Vec<f64>,
    /// QUE-weighted variance over the noise edge, at the chosen `k`.
    statistic: f64,
}

impl Spectre {
    fn validate(&self) -> Result<()> {
        if self.max_components == 0 || self.neighbours == 0 {
            return Err(config(
                "SPECTRE needs at least 1 component and at least 1 neighbour",
            ));
        }
        if !(self.candidate_share > 0.0 && self.candidate_share <= 1.0) {
            return Err(config(format!(
                "SPECTRE candidate share {} is outside (0, 1]",
                self.candidate_share
            )));
        }
        if !(self.alpha > 0.0 && self.alpha.is_finite()) {
            return Err(config(format!("SPECTRE α {} must be positive", self.alpha)));
        }
        Ok(())
    }

    /// Run on the features of a (possibly poisoned) training set.
    pub fn detect(&self, features: &Features, data: &Dataset) -> Result<SampleDetection> {
        self.validate()?;
        let seeds = SeedStream::new(self.seed);
        let mut analysed = Vec::new();
        for class in 0..data.num_classes() as u32 {
            let members = features.members(class);
            if members.len() < MIN_CLASS_SAMPLES {
                continue;
            }
            analysed.push(self.class_scores(features, class, members, &seeds)?);
        }
        self.decide(&analysed, data)
    }

    fn class_scores(
        &self,
        features: &Features,
        class: u32,
        members: Vec<usize>,
        seeds: &SeedStream,
    ) -> Result<ClassScores> {
        let n = members.len();
        let centred = centred_rows(features, &members);
        // MCD needs clearly more samples than dimensions in its half of the class.
        let k_max = self
            .max_components
            .min(features.dim)
            .min((n - 1) / 4)
            .max(1);
        let (sigma, v_t) = top_singular(&centred, k_max, seeds, &format!("class-{class}"), METHOD)?;
        let mut order: Vec<usize> = (0..sigma.len()).collect();
        order.sort_by(|&a, &b| sigma[b].total_cmp(&sigma[a]));
        let projected = centred.dot(&v_t.t());
        let mut best: Option<(f64, Que)> = None;
        for k in (1..)
            .map(|r: usize| r * r)
            .take_while(|&k| k <= order.len())
        {
            let reduced = projected.select(Axis(1), &order[..k]);
            let Some(que) = Que::fit(&reduced, self.alpha) else {
                continue;
            };
            let edge = (1.0 + (k as f64 / n as f64).sqrt()).powi(2);
            let statistic = que.weighted_variance / edge;
            if best.as_ref().is_none_or(|(s, _)| statistic > *s) {
                best = Some((statistic, que));
            }
        }
        let (statistic, que) = best.ok_or_else(|| Error::Numeric {
            method: METHOD,
            message: format!("class {class}'s activations have no spread to estimate"),
        })?;
        Ok(ClassScores {
            class,
            members,
            standardised: standardise_upper_tail(&que.scores),
            statistic,
        })
    }

    fn decide(&self, analysed: &[ClassScores], data: &Dataset) -> Result<SampleDetection> {
        let mut detection = SampleDetection::unflagged(METHOD, data.len(), analysed.len());
        let mut groups = Vec::with_capacity(analysed.len());
        for scores in analysed {
            groups.push(self.leading_reclassified_group(scores, data)?);
        }
        // How unusual each class's group is, among the classes: clean classes
        // have groups too (their most atypical samples are often reclassified),
        // so the evidence is judged against theirs.
        let logs: Vec<f64> = groups
            .iter()
            .map(|g| g.evidence.max(1e-3).log10())
            .collect();
        let outlier_scores = robust_z(&logs, 0.05);
        for ((scores, group), outlier_score) in analysed.iter().zip(groups).zip(outlier_scores) {
            let poisoned = group.reclassified.len() >= self.min_group
                && outlier_score >= self.min_outlier_score
                && group.suspect_consistency < self.max_consistency_ratio * group.class_consistency;
            if poisoned {
                group
                    .reclassified
                    .iter()
                    .for_each(|&i| detection.flagged[i] = true);
            }
            for (&index, &z) in scores.members.iter().zip(&scores.standardised) {
                detection.scores[index] = z;
            }
            detection.classes.push(ClassFinding {
                class: scores.class,
                samples: scores.members.len(),
                suspect_size: group.reclassified.len(),
                statistic: scores.statistic,
                outlier_score,
                suspect_consistency: group.suspect_consistency,
                class_consistency: group.class_consistency,
                poisoned,
            });
        }
        Ok(detection)
    }

    /// The leading group of a class's QUE ranking that input-space neighbours
    /// reclassify elsewhere, with its reclassification shares and how unlikely
    /// so many reclassifications are at the class's own rate.
    fn leading_reclassified_group(&self, scores: &ClassScores, data: &Dataset) -> Result<Group> {
        let n = scores.members.len();
        let mut ranking: Vec<usize> = (0..n).collect();
        ranking.sort_by(|&a, &b| {
            scores.standardised[b]
                .total_cmp(&scores.standardised[a])
                .then(a.cmp(&b))
        });
        let examined = ((self.candidate_share * n as f64).ceil() as usize).clamp(1, n);
        let candidates: Vec<usize> = ranking[..examined]
            .iter()
            .map(|&k| scores.members[k])
            .collect();
        let elsewhere = reclassified_elsewhere(data, scores.class, &candidates, self.neighbours)?;
        let length = leading_group(&elsewhere);
        let mut in_group = vec![false; n];
        ranking[..length].iter().for_each(|&k| in_group[k] = true);
        let (suspect_consistency, class_consistency) = consistency(
            data,
            scores.class,
            &scores.members,
            &in_group,
            self.neighbours,
        )?;
        let reclassified: Vec<usize> = candidates[..length]
            .iter()
            .zip(&elsewhere)
            .filter(|&(_, &e)| e)
            .map(|(&i, _)| i)
            .collect();
        let evidence = -binomial_upper_tail(length, reclassified.len(), 1.0 - class_consistency)
            .max(1e-300)
            .log10();
        Ok(Group {
            reclassified,
            suspect_consistency,
            class_consistency,
            evidence,
        })
    }
}

/// A class's leading group of reclassified samples.
struct Group {
    /// Its members whose neighbours vote for another class.
    reclassified: Vec<usize>,
    suspect_consistency: f64,
    class_consistency: f64,
    /// `−log₁₀ P(≥ that many reclassified)` at the class's own rate.
    evidence: f64,
}

/// The length of the leading run of a ranking where samples reclassified
/// elsewhere dominate: the prefix maximising `Σ (eᵢ − ½)` (a CUSUM change point).
/// Poisoned samples, ranked first by QUE, are reclassified elsewhere almost
/// always and clean ones rarely, so the sum climbs through the poisoned group
/// and falls after it; a few clean samples ranked among the poisoned do not end
/// the group.
fn leading_group(elsewhere: &[bool]) -> usize {
    let (mut sum, mut best, mut at) = (0.0f64, 0.0f64, 0);
    for (i, &e) in elsewhere.iter().enumerate() {
        sum += if e { 0.5 } else { -0.5 };
        if sum > best {
            best = sum;
            at = i + 1;
        }
    }
    at
}

/// `P(X ≥ k)` for `X ~ Binomial(n, p)`, summed in log space.
fn binomial_upper_tail(n: usize, k: usize, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    let p = p.clamp(1e-6, 1.0 - 1e-6);
    let ln_choose = |n: usize, k: usize| -> f64 {
        (1..=k)
            .map(|i| ((n - k + i) as f64).ln() - (i as f64).ln())
            .sum()
    };
    (k..=n)
        .map(|j| (ln_choose(n, j) + j as f64 * p.ln() + (n - j) as f64 * (1.0 - p).ln()).exp())
        .sum::<f64>()
        .min(1.0)
}

/// Log scores standardised by the 10% and 25% quantiles: location the 25%
/// quantile, scale the distance between the two. A poisoned group sits in the
/// upper tail, so it moves neither (up to the share that shifts a quantile);
/// the scores then compare roughly across classes, for ROC curves.
fn standardise_upper_tail(scores: &[f64]) -> Vec<f64> {
    let logs: Vec<f64> = scores.iter().map(|s| s.max(1e-300).ln()).collect();
    let mut sorted = logs.clone();
    sorted.sort_by(f64::total_cmp);
    let at =
        |q: f64| sorted[((q * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1)];
    let (low, quartile) = (at(0.10), at(0.25));
    let scale = (quartile - low).max(1e-9);
    logs.iter().map(|l| (l - quartile) / scale).collect()
}

/// For each candidate of `class`: whether the majority of its nearest neighbours
/// in input space, other candidates excluded, votes for another class.
fn reclassified_elsewhere(
    data: &Dataset,
    class: u32,
    candidates: &[usize],
    neighbours: usize,
) -> Result<Vec<bool>> {
    let mut excluded = vec![false; data.len()];
    candidates.iter().for_each(|&i| excluded[i] = true);
    let votes = neighbour_labels(data, candidates, &excluded, neighbours)?;
    Ok(votes
        .iter()
        .map(|labels| majority(labels) != Some(class))
        .collect())
}

/// QUE scoring of one class in `k` dimensions after robust whitening.
struct Que {
    /// `tr(Σ̃ U)`: the variance of the whitened samples, weighted towards the
    /// directions where it exceeds 1.
    weighted_variance: f64,
    /// `x̃ᵢᵀ U x̃ᵢ` per sample.
    scores: Vec<f64>,
}

impl Que {
    /// `None` when the robust covariance is singular (no spread to whiten).
    fn fit(points: &Array2<f64>, alpha: f64) -> Option<Self> {
        let (mean, covariance) = robust_mean_covariance(points)?;
        let whitening = symmetric_power(&covariance, -0.5)?;
        let white = (points - &mean).dot(&whitening);
        let n = white.nrows() as f64;
        let spread = white.t().dot(&white) / n;
        let (values, vectors) = spread.eigh().ok()?;
        let top = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        // exp(α(λ − 1)/(λmax − 1)); with no excess variance anywhere every
        // direction weighs the same.
        let raw: Vec<f64> = if top > 1.0 + 1e-9 {
            values
                .iter()
                .map(|&l| (alpha * (l - top) / (top - 1.0)).exp())
                .collect()
        } else {
            vec![1.0; values.len()]
        };
        let total: f64 = raw.iter().sum();
        let weights: Vec<f64> = raw.iter().map(|w| w / total).collect();
        let weighted_variance = values.iter().zip(&weights).map(|(l, w)| l * w).sum();
        let coordinates = white.dot(&vectors);
        let scores = coordinates
            .rows()
            .into_iter()
            .map(|row| row.iter().zip(&weights).map(|(c, w)| w * c * c).sum())
            .collect();
        Some(Self {
            weighted_variance,
            scores,
        })
    }
}

/// Reweighted minimum covariance determinant (Rousseeuw & Van Driessen 1999,
/// "A Fast Algorithm for the Minimum Covariance Determinant Estimator"; the
/// start of Hubert, Rousseeuw & Verdonck 2012): start from the half of the
/// points nearest the coordinate-wise median in MAD units, repeat
/// concentration steps (keep the `h` smallest Mahalanobis distances) until the
/// subset stops changing, scale the covariance so the median distance matches a
/// Gaussian's, then re-estimate from every point within the 97.5% χ² quantile.
/// Deterministic; `None` when a covariance is singular.
pub(crate) fn robust_mean_covariance(points: &Array2<f64>) -> Option<(Array1<f64>, Array2<f64>)> {
    let (n, k) = points.dim();
    let h = (n + k).div_ceil(2).min(n);
    // Start from the points nearest the coordinate-wise median, each coordinate
    // in units of its MAD (as deterministic MCD does): in plain Euclidean terms
    // a tight group offset along a low-variance direction looks central.
    let mut standardised = vec![0.0f64; n];
    for column in points.columns() {
        let values = column.to_vec();
        let centre = median(&values);
        let deviations: Vec<f64> = values.iter().map(|v| (v - centre).abs()).collect();
        let scale = median(&deviations).max(1e-12);
        for (total, v) in standardised.iter_mut().zip(&values) {
            *total += ((v - centre) / scale).powi(2);
        }
    }
    let mut subset = smallest(&standardised, h);
    let mut estimate = mean_covariance(points, &subset)?;
    for _ in 0..100 {
        let distances = mahalanobis(points, &estimate)?;
        let next = smallest(&distances, h);
        if next == subset {
            break;
        }
        subset = next;
        estimate = mean_covariance(points, &subset)?;
    }
    let distances = mahalanobis(points, &estimate)?;
    let consistency = median(&distances) / chi_square_quantile(k, 0.5);
    if !(consistency > 0.0 && consistency.is_finite()) {
        return None;
    }
    let cutoff = chi_square_quantile(k, 0.975) * consistency;
    let inliers: Vec<usize> = (0..n).filter(|&i| distances[i] <= cutoff).collect();
    if inliers.len() <= k {
        return Some((estimate.0, estimate.1 * consistency));
    }
    mean_covariance(points, &inliers)
}

/// Indices of the `h` smallest values, ascending by index.
fn smallest(values: &[f64], h: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]).then(a.cmp(&b)));
    order.truncate(h);
    order.sort_unstable();
    order
}

fn mean_covariance(points: &Array2<f64>, rows: &[usize]) -> Option<(Array1<f64>, Array2<f64>)> {
    let chosen = points.select(Axis(0), rows);
    let mean = chosen.mean_axis(Axis(0))?;
    let centred = &chosen - &mean;
    let covariance = centred.t().dot(&centred) / rows.len() as f64;
    Some((mean, covariance))
}

/// Squared Mahalanobis distance of every point.
fn mahalanobis(
    points: &Array2<f64>,
    (mean, covariance): &(Array1<f64>, Array2<f64>),
) -> Option<Vec<f64>> {
    let whitening = symmetric_power(covariance, -0.5)?;
    let white = (points - mean).dot(&whitening);
    Some(white.rows().into_iter().map(|r| r.dot(&r)).collect())
}

/// `A^p` of a symmetric positive-definite matrix; `None` when it is singular
/// (an eigenvalue below 1e-10 of the largest) or the decomposition fails.
fn symmetric_power(matrix: &Array2<f64>, power: f64) -> Option<Array2<f64>> {
    let (values, vectors) = matrix.eigh().ok()?;
    let top = values.iter().copied().fold(0.0f64, f64::max);
    if top <= 0.0 || values.iter().any(|&v| v.is_nan() || v <= top * 1e-10) {
        return None;
    }
    let scaled = &vectors * &values.mapv(|v| v.powf(power));
    Some(scaled.dot(&vectors.t()))
}

/// The `p` quantile of χ² with `k` degrees of freedom (Wilson & Hilferty 1931).
fn chi_square_quantile(k: usize, p: f64) -> f64 {
    let k = k as f64;
    let z = standard_normal_quantile(p);
    let c = 2.0 / (9.0 * k);
    k * (1.0 - c + z * c.sqrt()).powi(3).max(0.0)
}

/// The standard normal quantile (Acklam's rational approximation, relative error
/// below 1.2e-9), enough for thresholds.
fn standard_normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let p = p.clamp(1e-300, 1.0 - 1e-16);
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.024_25 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.024_25 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_and_chi_square_quantiles_match_tables() {
        assert!((standard_normal_quantile(0.975) - 1.959_964).abs() < 1e-5);
        assert!((standard_normal_quantile(0.01) + 2.326_348).abs() < 1e-5);
        // χ²₁₀: median 9.342, 97.5% 20.483 (Wilson–Hilferty is within 0.5%).
        assert!((chi_square_quantile(10, 0.5) / 9.342 - 1.0).abs() < 5e-3);
        assert!((chi_square_quantile(10, 0.975) / 20.483 - 1.0).abs() < 5e-3);
    }

    /// 400 Gaussian points with unequal variances and a tight group of 30 far
    /// out: the robust estimate ignores the group, QUE scores every member of
    /// it above every clean point.
    #[test]
    fn robust_whitening_exposes_a_small_far_group() {
        let seeds = SeedStream::new(7);
        let (clean, far, k) = (400, 30, 5);
        let noise = seeds.normal_f32((clean + far) * k);
        let mut points = Array2::<f64>::zeros((clean + far, k));
        for i in 0..clean + far {
            for j in 0..k {
                let scale = [5.0, 3.0, 1.0, 0.5, 0.2][j];
                points[[i, j]] = f64::from(noise[i * k + j]) * scale;
                if i >= clean {
                    // A small offset in a low-variance direction: invisible to
                    // the top principal direction, obvious once whitened.
                    points[[i, j]] =
                        f64::from(noise[i * k + j]) * 0.05 + [0.0, 0.0, 0.0, 0.0, 3.0][j];
                }
            }
        }
        let (mean, covariance) = robust_mean_covariance(&points).unwrap();
        assert!(mean[4].abs() < 0.1, "{mean}");
        assert!(
            (covariance[[4, 4]].sqrt() - 0.2).abs() < 0.05,
            "{covariance}"
        );
        let que = Que::fit(&points, 4.0).unwrap();
        let lowest_far = que.scores[clean..]
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min);
        let highest_clean = que.scores[..clean].iter().copied().fold(0.0, f64::max);
        assert!(
            lowest_far > highest_clean,
            "{lowest_far} vs {highest_clean}"
        );
    }
}
