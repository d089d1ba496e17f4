//! SCAn: the statistical contamination analyzer, a training-set detector that
//! tests each class for a second population instead of looking for a large or
//! well-separated cluster.

use linfa_linalg::eigh::Eigh;
use ndarray::{Array1, Array2, Axis};
use rand::Rng;
use serde::{Deserialize, Serialize};

use gauntlet_core::SeedStream;
use gauntlet_data::Dataset;

use crate::detect::{
    consistency, median, robust_z, top_singular, SampleDetection, MIN_CLASS_SAMPLES,
};
use crate::error::{config, Error, Result};
use crate::features::Features;
use crate::pipeline::Detector;
use gauntlet_record::ClassFinding;

const METHOD: &str = Detector::Scan.name();

/// SCAn (Tang, Wang, Tang & Zhang, USENIX Security 2021, "Demon in the Variant:
/// Statistical Analysis of DNNs for Robust Backdoor Contamination Detection").
///
/// A representation is modelled as `r = μ_class + ε`: a class identity drawn with
/// covariance `S_μ` and a within-class variation `ε` with covariance `S_ε` that
/// every class shares. The global model (`S_μ`, `S_ε`) is fitted by EM on a
/// clean reference set. Then each class of the training set is "untangled": the
/// best split into two identities sharing `S_ε` (hard EM in `S_ε`'s
/// Mahalanobis metric) is tested against one identity by a likelihood ratio
/// `J`; a contaminated class, whose members come from two populations (its own
/// images and trigger carriers from other classes), has a much larger `J` than
/// the others. A class is flagged when its robust z-score of `J` among the
/// classes exceeds `threshold` (e, as in the authors' code); the subgroup that
/// holds fewer of the clean reference images is the poisoned one.
///
/// Why this one: its class decision does not need the poisoned group to be a
/// large cluster (activation clustering's weakness at low rates) nor to carry
/// the dominant direction of variance (spectral signatures'); the statistic
/// grows with how distinct the group is, not with its share of the class.
///
/// Where this implementation departs from the paper, and why:
/// - The penultimate activations are first projected on their top
///   `components` principal directions (computed on the training set): the EM
///   inverts `n·S_μ + S_ε` for every class at every step, cubic in the width
///   (1 024 for the MNIST CNN). Class identities span at most `classes − 1`
///   directions and a trigger group adds one more, so a few dozen keep both.
/// - Each class's split is started `restarts` times (seeded random pairs of
///   centres) and the split with the largest `J` is kept; the authors start
///   once from a random assignment, which can settle on a poorer split.
/// - The z-score is one-sided: a class with an unusually small `J` is not
///   suspicious.
/// - As for the other detectors here, a flagged class must also fail
///   exclusionary reclassification (Chen et al. 2018): its suspect subgroup is
///   reclassified into it by input-space neighbours less than
///   `max_consistency_ratio` as often as the rest of the class. This keeps a
///   clean class with two legitimate styles from being emptied.
/// - Without a reference set the global model is fitted on the training set
///   itself (a few percent of poison barely moves `S_ε`) and the smaller
///   subgroup is the suspect.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scan {
    /// Principal directions the activations are projected on (default 32).
    pub components: usize,
    /// One-sided robust z-score of a class's `J` above which it may be
    /// poisoned (default e ≈ 2.718, the authors' value).
    pub threshold: f64,
    /// Starts of each class's two-way split (default 8).
    pub restarts: usize,
    /// Clean reference images read from the test split (default 1 000; 0: none,
    /// the training set stands in).
    pub reference_samples: usize,
    /// Fewest training samples in a poisoned subgroup (default 5).
    pub min_group: usize,
    /// The suspect subgroup must be reclassified into its class less than this
    /// fraction as often as the rest of the class is (default 0.25).
    pub max_consistency_ratio: f64,
    /// Neighbours of the k-NN reclassification (default 5).
    pub neighbours: usize,
    /// Seed of the PCA's random start and of the split restarts.
    pub seed: u64,
}

impl Default for Scan {
    fn default() -> Self {
        Self {
            components: 32,
            threshold: std::f64::consts::E,
            restarts: 8,
            reference_samples: 1000,
            min_group: 5,
            max_consistency_ratio: 0.25,
            neighbours: 5,
            seed: 0,
        }
    }
}

/// The global model: identity and variation covariances, and `S_ε`'s
/// pseudo-inverse.
struct GlobalModel {
    identity: Array2<f64>,
    variation: Array2<f64>,
    precision: Array2<f64>,
}

/// A class's best two-way split.
struct Split {
    /// Per row: whether it is in the first subgroup.
    first: Vec<bool>,
    means: [Array1<f64>; 2],
    /// The likelihood-ratio statistic `J` (twice the mean log-likelihood gain
    /// per sample of two identities over one).
    statistic: f64,
}

impl Scan {
    fn validate(&self) -> Result<()> {
        if self.components == 0 || self.restarts == 0 || self.neighbours == 0 {
            return Err(config(
                "SCAn needs at least 1 component, 1 restart and 1 neighbour",
            ));
        }
        if !(self.threshold.is_finite() && self.max_consistency_ratio > 0.0) {
            return Err(config(format!(
                "SCAn threshold {} and consistency ratio {} must be finite and positive",
                self.threshold, self.max_consistency_ratio
            )));
        }
        Ok(())
    }

    /// Run on the features of a (possibly poisoned) training set, with the
    /// features of clean reference images (labelled correctly) if there are any.
    pub fn detect(
        &self,
        features: &Features,
        reference: Option<&Features>,
        data: &Dataset,
    ) -> Result<SampleDetection> {
        self.validate()?;
        if let Some(reference) = reference {
            if reference.dim != features.dim {
                return Err(config(format!(
                    "SCAn's reference activations have {} values, the training set's {}",
                    reference.dim, features.dim
                )));
            }
        }
        let seeds = SeedStream::new(self.seed);
        let (train, clean) = self.project(features, reference, &seeds)?;
        let model = match (&clean, reference) {
            (Some(points), Some(reference)) if !reference.is_empty() => {
                global_model(points, &reference.labels)?
            }
            _ => global_model(&train, &features.labels)?,
        };
        let classes = features
            .labels
            .iter()
            .copied()
            .max()
            .map_or(0, |c| c as usize + 1);
        let mut analysed = Vec::new();
        for class in 0..classes as u32 {
            let members = features.members(class);
            if members.len() < MIN_CLASS_SAMPLES {
                continue;
            }
            let references: Vec<usize> = reference.map(|r| r.members(class)).unwrap_or_default();
            let mut rows = train.select(Axis(0), &members);
            if let Some(clean) = &clean {
                rows.append(Axis(0), clean.select(Axis(0), &references).view())
                    .map_err(|e| numeric(format!("class {class}: {e}")))?;
            }
            let stream = seeds.derive(&format!("split/class-{class}"));
            let split = self.best_split(&rows, &model, &stream)?;
            analysed.push((class, members, references.len(), split));
        }
        self.decide(&analysed, &train, &model, data)
    }

    /// Centre on the training mean and project training and reference
    /// activations on the training set's top principal directions.
    fn project(
        &self,
        features: &Features,
        reference: Option<&Features>,
        seeds: &SeedStream,
    ) -> Result<(Array2<f64>, Option<Array2<f64>>)> {
        let as_matrix = |f: &Features| {
            Array2::from_shape_fn((f.len(), f.dim), |(i, j)| {
                f64::from(f.values[i * f.dim + j])
            })
        };
        let train = as_matrix(features);
        let mean = train
            .mean_axis(Axis(0))
            .ok_or_else(|| numeric("the training set is empty".into()))?;
        let centred = &train - &mean;
        let k = self
            .components
            .min(features.dim)
            .min(features.len().saturating_sub(1))
            .max(1);
        let (_, basis) = top_singular(&centred, k, seeds, "training-set", METHOD)?;
        let clean = reference.map(|r| (as_matrix(r) - &mean).dot(&basis.t()));
        Ok((centred.dot(&basis.t()), clean))
    }

    /// The split of one class's rows with the largest `J` over the restarts.
    fn best_split(
        &self,
        rows: &Array2<f64>,
        model: &GlobalModel,
        seeds: &SeedStream,
    ) -> Result<Split> {
        // Rows are relative to the training mean, the identities' prior mean.
        let n = rows.nrows();
        if n < 2 {
            return Ok(Split {
                first: vec![true; n],
                means: [Array1::zeros(rows.ncols()), Array1::zeros(rows.ncols())],
                statistic: 0.0,
            });
        }
        let mut rng = seeds.rng();
        let mut best: Option<Split> = None;
        for _ in 0..self.restarts {
            let a = rng.random_range(0..n);
            let b = (a + rng.random_range(1..n)) % n;
            let split = untangle(rows, &model.precision, a, b);
            let Some(split) = split else { continue };
            let statistic = likelihood_ratio(rows, model, &split.0, &split.1)?;
            if best.as_ref().is_none_or(|s| statistic > s.statistic) {
                best = Some(Split {
                    first: split.0,
                    means: split.1,
                    statistic,
                });
            }
        }
        Ok(best.unwrap_or_else(|| Split {
            first: vec![true; n],
            means: [Array1::zeros(rows.ncols()), Array1::zeros(rows.ncols())],
            statistic: 0.0,
        }))
    }

    fn decide(
        &self,
        analysed: &[(u32, Vec<usize>, usize, Split)],
        train: &Array2<f64>,
        model: &GlobalModel,
        data: &Dataset,
    ) -> Result<SampleDetection> {
        let mut detection = SampleDetection::unflagged(METHOD, data.len(), analysed.len());
        let statistics: Vec<f64> = analysed.iter().map(|(_, _, _, s)| s.statistic).collect();
        // The floor only keeps identical statistics from dividing by zero.
        let floor = 1e-12 * median(&statistics).abs().max(1e-12);
        let anomalies = robust_z(&statistics, floor);
        for (((class, members, references, split), statistic), anomaly) in
            analysed.iter().zip(&statistics).zip(anomalies)
        {
            let suspect_first = suspect_is_first(split, members.len(), *references);
            let in_suspect: Vec<bool> = split.first[..members.len()]
                .iter()
                .map(|&f| f == suspect_first)
                .collect();
            let suspect_size = in_suspect.iter().filter(|&&s| s).count();
            let (suspect_consistency, class_consistency) =
                consistency(data, *class, members, &in_suspect, self.neighbours)?;
            let poisoned = anomaly > self.threshold
                && suspect_size >= self.min_group
                && suspect_consistency < self.max_consistency_ratio * class_consistency;
            // Signed distance towards the suspect identity, in S_ε's Mahalanobis
            // units, relative to the midpoint of the two identities.
            let (suspect, rest) = if suspect_first {
                (&split.means[0], &split.means[1])
            } else {
                (&split.means[1], &split.means[0])
            };
            let offset = suspect - rest;
            let direction = model.precision.dot(&offset);
            let scale = offset.dot(&direction).max(1e-12).sqrt();
            let midpoint = (suspect + rest) / 2.0;
            for (r, &index) in members.iter().enumerate() {
                let x = &train.row(index) - &midpoint;
                detection.scores[index] = x.dot(&direction) / scale;
                detection.flagged[index] = poisoned && in_suspect[r];
            }
            detection.classes.push(ClassFinding {
                class: *class,
                samples: members.len(),
                suspect_size,
                statistic: *statistic,
                outlier_score: anomaly,
                suspect_consistency,
                class_consistency,
                poisoned,
            });
        }
        Ok(detection)
    }
}

/// Whether the first subgroup is the suspect: the one holding fewer of the
/// class's clean reference rows (they follow its `members` training rows), or
/// without references the one with fewer training rows.
fn suspect_is_first(split: &Split, members: usize, references: usize) -> bool {
    let count = |rows: &[bool]| rows.iter().filter(|&&f| f).count();
    let (train, clean) = split.first.split_at(members);
    if references > 0 {
        let clean_first = count(clean);
        let clean_second = references - clean_first;
        if clean_first != clean_second {
            return clean_first < clean_second;
        }
    }
    count(train) * 2 <= members
}

/// Hard EM of two identities sharing the variation covariance: start from
/// rows `a` and `b` as centres, assign each row to the nearer mean in the
/// `precision` metric, re-estimate the means, until nothing moves (at most 100
/// steps). `None` when a subgroup empties.
fn untangle(
    rows: &Array2<f64>,
    precision: &Array2<f64>,
    a: usize,
    b: usize,
) -> Option<(Vec<bool>, [Array1<f64>; 2])> {
    let n = rows.nrows();
    let mut means = [rows.row(a).to_owned(), rows.row(b).to_owned()];
    let mut first = vec![false; n];
    for _ in 0..100 {
        // Nearer the first mean: 2xᵀF(u₁ − u₂) > u₁ᵀFu₁ − u₂ᵀFu₂.
        let offset = &means[0] - &means[1];
        let direction = precision.dot(&offset);
        let bias =
            means[0].dot(&precision.dot(&means[0])) - means[1].dot(&precision.dot(&means[1]));
        let projections = rows.dot(&direction);
        let assigned: Vec<bool> = projections.iter().map(|p| 2.0 * p > bias).collect();
        let size = assigned.iter().filter(|&&f| f).count();
        if size == 0 || size == n {
            return None;
        }
        let changed = assigned != first;
        first = assigned;
        means = [
            group_mean(rows, &first, true),
            group_mean(rows, &first, false),
        ];
        if !changed {
            break;
        }
    }
    Some((first, means))
}

fn group_mean(rows: &Array2<f64>, first: &[bool], which: bool) -> Array1<f64> {
    let mut sum = Array1::<f64>::zeros(rows.ncols());
    let mut count = 0usize;
    for (row, _) in rows
        .rows()
        .into_iter()
        .zip(first)
        .filter(|(_, &f)| f == which)
    {
        sum += &row;
        count += 1;
    }
    sum / count.max(1) as f64
}

/// SCAn's test statistic: `(1/n) Σᵢ [μᵀFμ − u_gᵀFu_g − 2xᵢᵀF(μ − u_g)]`, twice
/// the mean per-row log-likelihood gain of the two identities `u_g` over the
/// one identity `μ = S_μ (n S_μ + S_ε)⁻¹ Σxᵢ`, its posterior mean given the rows.
/// (The authors' code has `S_ε` in front of the inverse, which is the
/// posterior mean only when the two covariances commute; otherwise the one
/// identity is pulled towards the global mean and classes far from it score
/// high whether they split or not: clean classes of the MNIST CNN reached a
/// z-score of 3.9 that way, at most 1.7 with the posterior mean, while the
/// 1% BadNets class rose from 12.8 to 14.7.)
fn likelihood_ratio(
    rows: &Array2<f64>,
    model: &GlobalModel,
    first: &[bool],
    means: &[Array1<f64>; 2],
) -> Result<f64> {
    let n = rows.nrows();
    let f = &model.precision;
    let g = pseudo_inverse(&(&model.identity * n as f64 + &model.variation))?;
    let sum = rows.sum_axis(Axis(0));
    let mu = model.identity.dot(&g.dot(&sum));
    let mu_f_mu = mu.dot(&f.dot(&mu));
    let mut statistic = 0.0;
    for (which, mean) in [true, false].into_iter().zip(means) {
        let size = first.iter().filter(|&&x| x == which).count() as f64;
        statistic += size * (mu_f_mu - mean.dot(&f.dot(mean)));
        let direction = f.dot(&(&mu - mean));
        let projection: f64 = rows
            .rows()
            .into_iter()
            .zip(first)
            .filter(|(_, &x)| x == which)
            .map(|(row, _)| row.dot(&direction))
            .sum();
        statistic -= 2.0 * projection;
    }
    Ok(statistic / n as f64)
}

/// The global model by EM (the "Bayesian face revisited" model of Chen et al.
/// 2012, as SCAn fits it): start from the covariances of the class means and
/// of the deviations from them, then alternate the posterior identities
/// `u_k = −S_ε G_k Σ_{i∈k} xᵢ`, `G_k = −(n_k S_μ + S_ε)⁻¹ S_μ S_ε⁻¹`, with
/// re-estimating the covariances, until they settle (at most 100 steps).
fn global_model(points: &Array2<f64>, labels: &[u32]) -> Result<GlobalModel> {
    let (n, _) = points.dim();
    if n < 2 {
        return Err(numeric("the global model needs at least 2 samples".into()));
    }
    let mean = points
        .mean_axis(Axis(0))
        .ok_or_else(|| numeric("no samples".into()))?;
    let centred = points - &mean;
    let classes = labels.iter().copied().max().map_or(0, |c| c as usize + 1);
    let mut sums = Array2::<f64>::zeros((classes, centred.ncols()));
    let mut counts = vec![0usize; classes];
    for (row, &label) in centred.rows().into_iter().zip(labels) {
        let mut target = sums.row_mut(label as usize);
        target += &row;
        counts[label as usize] += 1;
    }
    let mut identities = sums.clone();
    for (mut row, &count) in identities.rows_mut().into_iter().zip(&counts) {
        row /= count.max(1) as f64;
    }
    let (mut identity, mut variation) = covariances(&centred, labels, &identities);
    for _ in 0..100 {
        let precision = pseudo_inverse(&variation)?;
        let identity_precision = identity.dot(&precision);
        for (k, &count) in counts.iter().enumerate() {
            if count == 0 {
                continue;
            }
            let g = pseudo_inverse(&(&identity * count as f64 + &variation))?;
            let posterior = variation.dot(&g.dot(&identity_precision.dot(&sums.row(k))));
            identities.row_mut(k).assign(&posterior);
        }
        let (next_identity, next_variation) = covariances(&centred, labels, &identities);
        let moved =
            frobenius(&(&next_identity - &identity)) + frobenius(&(&next_variation - &variation));
        let size = frobenius(&next_identity) + frobenius(&next_variation);
        identity = next_identity;
        variation = next_variation;
        if moved <= 1e-6 * size.max(1e-300) {
            break;
        }
    }
    Ok(GlobalModel {
        precision: pseudo_inverse(&variation)?,
        identity,
        variation,
    })
}

/// Sample covariances (n − 1) of each row's identity and of its deviation from it.
fn covariances(
    centred: &Array2<f64>,
    labels: &[u32],
    identities: &Array2<f64>,
) -> (Array2<f64>, Array2<f64>) {
    let u = Array2::from_shape_fn(centred.dim(), |(i, j)| identities[[labels[i] as usize, j]]);
    let e = centred - &u;
    (covariance(&u), covariance(&e))
}

fn covariance(rows: &Array2<f64>) -> Array2<f64> {
    let n = rows.nrows();
    let mean = rows
        .mean_axis(Axis(0))
        .unwrap_or_else(|| Array1::zeros(rows.ncols()));
    let centred = rows - &mean;
    centred.t().dot(&centred) / (n.saturating_sub(1).max(1)) as f64
}

fn frobenius(matrix: &Array2<f64>) -> f64 {
    matrix.iter().map(|v| v * v).sum::<f64>().sqrt()
}

/// Moore–Penrose pseudo-inverse of a symmetric matrix: eigenvalues below 1e-10
/// of the largest count as zero.
fn pseudo_inverse(matrix: &Array2<f64>) -> Result<Array2<f64>> {
    let (values, vectors) = matrix
        .eigh()
        .map_err(|e| numeric(format!("eigendecomposition failed: {e}")))?;
    let top = values.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let inverted: Vec<f64> = values
        .iter()
        .map(|&v| if v.abs() > top * 1e-10 { 1.0 / v } else { 0.0 })
        .collect();
    let scaled = &vectors * &Array1::from(inverted);
    Ok(scaled.dot(&vectors.t()))
}

fn numeric(message: String) -> Error {
    Error::Numeric {
        method: METHOD,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `classes` Gaussian classes in `dim` dimensions: identities with standard
    /// deviation `identity_sd` per axis, variation with standard deviation 1 on
    /// the first half of the axes and 0.5 on the rest.
    fn gaussian_classes(
        classes: usize,
        per_class: usize,
        dim: usize,
        identity_sd: f64,
        seed: u64,
    ) -> (Array2<f64>, Vec<u32>) {
        let seeds = SeedStream::new(seed);
        let centres = seeds.derive("centres").normal_f32(classes * dim);
        let noise = seeds.derive("noise").normal_f32(classes * per_class * dim);
        let points = Array2::from_shape_fn((classes * per_class, dim), |(i, j)| {
            let class = i / per_class;
            let scale = if j < dim / 2 { 1.0 } else { 0.5 };
            identity_sd * f64::from(centres[class * dim + j])
                + scale * f64::from(noise[i * dim + j])
        });
        let labels = (0..classes * per_class)
            .map(|i| (i / per_class) as u32)
            .collect();
        (points, labels)
    }

    #[test]
    fn the_pseudo_inverse_inverts_what_it_can() {
        let a = Array2::from_shape_vec((3, 3), vec![4.0, 1.0, 0.0, 1.0, 3.0, 0.0, 0.0, 0.0, 0.0])
            .unwrap();
        let pinv = pseudo_inverse(&a).unwrap();
        // A A⁺ A = A, and on the non-singular block A⁺ is the inverse.
        let back = a.dot(&pinv).dot(&a);
        assert!((&back - &a).iter().all(|v| v.abs() < 1e-12), "{back}");
        let block = pinv
            .slice(ndarray::s![..2, ..2])
            .dot(&a.slice(ndarray::s![..2, ..2]));
        assert!((block[[0, 0]] - 1.0).abs() < 1e-12 && block[[0, 1]].abs() < 1e-12);
        assert_eq!(pinv[[2, 2]], 0.0);
    }

    #[test]
    fn the_global_model_recovers_identity_and_variation_covariances() {
        let (points, labels) = gaussian_classes(40, 200, 4, 3.0, 1);
        let model = global_model(&points, &labels).unwrap();
        // Variation: 1 and 0.25 on the diagonal, 0 elsewhere (8 000 samples).
        for i in 0..4 {
            let want = if i < 2 { 1.0 } else { 0.25 };
            assert!(
                (model.variation[[i, i]] - want).abs() < 0.05 * want + 0.02,
                "S_ε[{i},{i}] = {}",
                model.variation[[i, i]]
            );
        }
        // Identity: 9 per axis, estimated from only 40 class centres.
        for i in 0..4 {
            let got = model.identity[[i, i]];
            assert!((4.0..16.0).contains(&got), "S_μ[{i},{i}] = {got}");
        }
    }

    #[test]
    fn a_class_of_two_populations_has_a_larger_statistic_and_is_split_between_them() {
        let (points, labels) = gaussian_classes(10, 300, 6, 4.0, 2);
        let model = global_model(&points, &labels).unwrap();
        let scan = Scan::default();
        let class = |c: usize| {
            points
                .slice(ndarray::s![c * 300..(c + 1) * 300, ..])
                .to_owned()
        };
        // Class 0 with 24 members (8%) replaced by carriers of another
        // identity: class 1's rows shifted by 3 along every axis.
        let mut contaminated = class(0);
        for r in 0..24 {
            let carrier = &class(1).row(r) + 3.0;
            contaminated.row_mut(r).assign(&carrier);
        }
        let seeds = SeedStream::new(3);
        let clean = scan.best_split(&class(2), &model, &seeds).unwrap();
        let split = scan.best_split(&contaminated, &model, &seeds).unwrap();
        assert!(
            split.statistic > 3.0 * clean.statistic,
            "contaminated J {} vs clean J {}",
            split.statistic,
            clean.statistic
        );
        // The carriers form one subgroup, the smaller one.
        let carriers_first = split.first[0];
        let wrong = (0..300)
            .filter(|&r| (split.first[r] == carriers_first) != (r < 24))
            .count();
        assert!(wrong <= 3, "{wrong} rows on the wrong side");
        assert_eq!(suspect_is_first(&split, 300, 0), carriers_first);
    }

    #[test]
    fn the_reference_rows_decide_which_subgroup_is_suspect() {
        // Rows 0..4 training, 4..10 clean references; the references sit in
        // the second subgroup, so the first is the suspect even though larger.
        let split = Split {
            first: vec![
                true, true, true, false, false, false, false, false, true, false,
            ],
            means: [Array1::zeros(1), Array1::zeros(1)],
            statistic: 1.0,
        };
        assert!(suspect_is_first(&split, 4, 6));
        assert!(!suspect_is_first(&split, 4, 0));
    }
}
