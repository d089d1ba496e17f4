//! Training-set detectors: activation clustering and spectral signatures, with a
//! decision, shared by both, of which classes are poisoned at all.

use linfa::traits::{Fit, Predict};
use linfa::DatasetBase;
use linfa_clustering::KMeans;
use linfa_linalg::eigh::Eigh;
use linfa_linalg::lobpcg::TruncatedSvd;
use linfa_linalg::Order;
use ndarray::{Array1, Array2, Axis};
use rand_xoshiro::rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256Plus;
use serde::{Deserialize, Serialize};

use gauntlet_core::SeedStream;

use crate::error::{config, Error, Result};
use crate::features::Features;
use crate::knn::{majority, neighbour_labels};
use crate::pipeline::Detector;
use gauntlet_data::Dataset;
pub use gauntlet_record::ClassFinding;

/// When a class is called poisoned.
///
/// ART's detectors flag a cluster in every class, so clean images of unpoisoned
/// classes swamp the true finds. How well a class splits is not enough to tell: on
/// MNIST the clean class 1 (straight and slanted ones) splits better than a
/// backdoored class. A class is poisoned when its split statistic reaches
/// `min_statistic` and its suspect group fails exclusionary reclassification (see
/// `max_consistency_ratio`). The statistic's robust z-score among the classes is
/// recorded for reports, not used to decide.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassDecision {
    /// Minimum value of the statistic itself (method-specific default).
    pub min_statistic: f64,
    /// The suspect group must be reclassified into its class less than this
    /// fraction as often as the rest of the class is (default 0.25).
    pub max_consistency_ratio: f64,
    /// Neighbours of the k-NN reclassification (default 5).
    pub neighbours: usize,
}

/// Per-sample results of a training-set detector. Scores are higher for more
/// suspicious samples and comparable across classes, for ROC curves; flags are the
/// detector's decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleDetection {
    /// The detector's name (`activation-clustering`, `spectral-signatures`).
    pub method: String,
    /// One score per training sample.
    pub scores: Vec<f64>,
    /// One decision per training sample.
    pub flagged: Vec<bool>,
    /// Per-class findings.
    pub classes: Vec<ClassFinding>,
}

impl SampleDetection {
    /// Nothing flagged yet: every score 0, for `samples` training samples.
    pub(crate) fn unflagged(method: &str, samples: usize, classes: usize) -> Self {
        Self {
            method: method.into(),
            scores: vec![0.0; samples],
            flagged: vec![false; samples],
            classes: Vec::with_capacity(classes),
        }
    }

    /// Indices of the flagged samples.
    pub fn flagged_indices(&self) -> Vec<usize> {
        (0..self.flagged.len())
            .filter(|&i| self.flagged[i])
            .collect()
    }
}

/// Activation clustering (Chen et al. 2018, "Detecting Backdoor Attacks on Deep
/// Neural Networks by Activation Clustering"): per class, reduce the penultimate
/// activations to `components` dimensions (PCA; the paper used ICA, ART defaults to
/// PCA too), split them by 2-means, and take the smaller cluster as the suspect.
/// The class statistic is the split's mean silhouette.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivationClustering {
    /// Dimensions kept by the PCA (default 10, as in the paper).
    pub components: usize,
    /// Which classes count as poisoned (default: silhouette ≥ 0.15 and reclassification ratio < 0.25).
    pub decision: ClassDecision,
    /// Seed of the k-means initialisation.
    pub seed: u64,
}

impl Default for ActivationClustering {
    fn default() -> Self {
        Self {
            components: 10,
            decision: ClassDecision {
                min_statistic: 0.15,
                max_consistency_ratio: 0.25,
                neighbours: 5,
            },
            seed: 0,
        }
    }
}

/// Spectral signatures (Tran et al. 2018, "Spectral Signatures in Backdoor
/// Attacks"): per class, centre the penultimate activations and project them on the
/// top right singular vector; poisoned samples lie far out along it. Tran et al.
/// remove the top 1.5·ε of scores in every class for a known poison rate ε; here
/// the projections are split in two by exact 1-D 2-means, the class statistic is
/// the split's share of the variance (≈ 0.64 for a unimodal Gaussian, → 1 for two
/// separated groups), and in poisoned classes the group on the far side of the
/// median (the minority) is flagged. The per-sample score is Tran's squared
/// projection, centred at the class median so a large poisoned group cannot hide
/// by shifting the mean.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpectralSignatures {
    /// Which classes count as poisoned (default: explained share ≥ 0.68, just above a Gaussian's 0.64, and reclassification ratio < 0.25).
    pub decision: ClassDecision,
    /// Seed of the SVD's random start.
    pub seed: u64,
}

impl Default for SpectralSignatures {
    fn default() -> Self {
        Self {
            decision: ClassDecision {
                min_statistic: 0.68,
                max_consistency_ratio: 0.25,
                neighbours: 5,
            },
            seed: 0,
        }
    }
}

/// Classes with fewer samples are not analysed (nothing to split reliably).
pub(crate) const MIN_CLASS_SAMPLES: usize = 10;

/// One class's analysis before the cross-class decision.
struct ClassSplit {
    class: u32,
    members: Vec<usize>,
    /// Which members form the suspect group.
    suspect: Vec<bool>,
    statistic: f64,
    /// Per-member score before the class factor.
    scores: Vec<f64>,
}

impl ActivationClustering {
    /// Run on the features of a (possibly poisoned) training set.
    pub fn detect(&self, features: &Features, data: &Dataset) -> Result<SampleDetection> {
        const METHOD: &str = Detector::ActivationClustering.name();
        let num_classes = data.num_classes();
        if self.components == 0 {
            return Err(config("activation clustering needs at least 1 component"));
        }
        let seeds = SeedStream::new(self.seed);
        let mut splits = Vec::new();
        for class in 0..num_classes as u32 {
            let members = features.members(class);
            if members.len() < MIN_CLASS_SAMPLES {
                continue;
            }
            let k = self.components.min(members.len() - 1).min(features.dim);
            let (centred, v_t) = class_directions(features, &members, k, &seeds, class, METHOD)?;
            let reduced = centred.dot(&v_t.t());
            let rng_seed = first_u64(&seeds.derive(&format!("kmeans/class-{class}")));
            let dataset = DatasetBase::from(reduced.clone());
            let model = KMeans::params_with_rng(2, Xoshiro256Plus::seed_from_u64(rng_seed))
                .n_runs(10)
                .max_n_iterations(300)
                .tolerance(1e-6)
                .fit(&dataset)
                .map_err(|e| Error::Numeric {
                    method: METHOD,
                    message: format!("k-means on class {class} failed: {e}"),
                })?;
            let assignment: Array1<usize> = model.predict(&reduced);
            let ones = assignment.iter().filter(|&&a| a == 1).count();
            let suspect_label = usize::from(ones * 2 <= assignment.len());
            let suspect: Vec<bool> = assignment.iter().map(|&a| a == suspect_label).collect();
            let mean_silhouette = silhouette(&reduced, &assignment);
            let scores = suspect.iter().map(|&s| f64::from(u8::from(s))).collect();
            splits.push(ClassSplit {
                class,
                members,
                suspect,
                statistic: mean_silhouette,
                scores,
            });
        }
        decide(METHOD, splits, self.decision, data)
    }
}

impl SpectralSignatures {
    /// Run on the features of a (possibly poisoned) training set.
    pub fn detect(&self, features: &Features, data: &Dataset) -> Result<SampleDetection> {
        const METHOD: &str = Detector::SpectralSignatures.name();
        let num_classes = data.num_classes();
        let seeds = SeedStream::new(self.seed);
        let mut splits = Vec::new();
        for class in 0..num_classes as u32 {
            let members = features.members(class);
            if members.len() < MIN_CLASS_SAMPLES {
                continue;
            }
            let (centred, v_t) = class_directions(features, &members, 1, &seeds, class, METHOD)?;
            let projection: Vec<f64> = centred.dot(&v_t.row(0)).to_vec();
            let (threshold, share) = split_1d(&projection);
            let median = median(&projection);
            let low: usize = projection.iter().filter(|&&p| p < threshold).count();
            // The minority side lies across the threshold from the median.
            let suspect_low = low * 2 < projection.len();
            let suspect: Vec<bool> = projection
                .iter()
                .map(|&p| (p < threshold) == suspect_low)
                .collect();
            let scores = projection.iter().map(|&p| (p - median).powi(2)).collect();
            splits.push(ClassSplit {
                class,
                members,
                suspect,
                statistic: share,
                scores,
            });
        }
        // Squared projections are in each class's own units: scale by the class's
        // median score so scores compare across classes.
        for split in &mut splits {
            let scale = median(&split.scores).max(1e-12);
            split.scores.iter_mut().for_each(|s| *s /= scale);
        }
        decide(METHOD, splits, self.decision, data)
    }
}

/// The cross-class decision shared by both detectors.
fn decide(
    method: &str,
    splits: Vec<ClassSplit>,
    decision: ClassDecision,
    data: &Dataset,
) -> Result<SampleDetection> {
    let statistics: Vec<f64> = splits.iter().map(|s| s.statistic).collect();
    // A floor on the spread keeps identical classes from making tiny differences infinite.
    let outlier_scores = robust_z(&statistics, 1e-3);
    let mut detection = SampleDetection::unflagged(method, data.len(), splits.len());
    for (split, outlier_score) in splits.into_iter().zip(outlier_scores) {
        let (suspect_consistency, class_consistency) = consistency(
            data,
            split.class,
            &split.members,
            &split.suspect,
            decision.neighbours,
        )?;
        let poisoned = split.statistic >= decision.min_statistic
            && suspect_consistency < decision.max_consistency_ratio * class_consistency;
        // Scores: a suspect group's failure to be reclassified into its class lifts
        // all its members, so suspects of a clearly poisoned class rank above
        // anything in a clean class; the method's own per-sample score orders the
        // samples within a group.
        let ratio = if class_consistency > 0.0 {
            (suspect_consistency / class_consistency).min(1.0)
        } else {
            1.0
        };
        for (k, &index) in split.members.iter().enumerate() {
            let within = split.scores[k].clamp(0.0, 1e6).ln_1p() * 1e-3;
            detection.scores[index] = if split.suspect[k] {
                (1.0 - ratio) + within
            } else {
                within
            };
            detection.flagged[index] = poisoned && split.suspect[k];
        }
        detection.classes.push(ClassFinding {
            class: split.class,
            samples: split.members.len(),
            suspect_size: split.suspect.iter().filter(|&&s| s).count(),
            statistic: split.statistic,
            outlier_score,
            suspect_consistency,
            class_consistency,
            poisoned,
        });
    }
    Ok(detection)
}

/// Exclusionary reclassification (Chen et al. 2018, §"Exclusionary
/// Reclassification"), with a k-nearest-neighbour classifier in input space in place
/// of a retrained network: the share of the suspect group whose neighbours outside
/// the group vote for the class they are labelled with, and the same share for the
/// rest of the class (neighbours anywhere but themselves). A legitimate sub-style of
/// a class (slanted ones) is still recognised by its neighbours; poisoned images
/// are recognised as the classes they came from.
pub(crate) fn consistency(
    data: &Dataset,
    class: u32,
    members: &[usize],
    suspect: &[bool],
    neighbours: usize,
) -> Result<(f64, f64)> {
    let suspects: Vec<usize> = members
        .iter()
        .zip(suspect)
        .filter(|(_, &s)| s)
        .map(|(&i, _)| i)
        .collect();
    let rest: Vec<usize> = members
        .iter()
        .zip(suspect)
        .filter(|(_, &s)| !s)
        .map(|(&i, _)| i)
        // An evenly spaced sample bounds the cost on large classes.
        .collect();
    let step = rest.len().div_ceil(MAX_REFERENCE_QUERIES).max(1);
    let rest: Vec<usize> = rest.into_iter().step_by(step).collect();
    let mut excluded = vec![false; data.len()];
    suspects.iter().for_each(|&i| excluded[i] = true);
    let share = |votes: Vec<Vec<u32>>| -> f64 {
        if votes.is_empty() {
            return 1.0;
        }
        let agree = votes
            .iter()
            .filter(|labels| majority(labels) == Some(class))
            .count();
        agree as f64 / votes.len() as f64
    };
    let suspect_share = share(neighbour_labels(data, &suspects, &excluded, neighbours)?);
    let rest_share = share(neighbour_labels(
        data,
        &rest,
        &vec![false; data.len()],
        neighbours,
    )?);
    Ok((suspect_share, rest_share))
}

/// At most this many non-suspect members are reclassified to set a class's baseline.
const MAX_REFERENCE_QUERIES: usize = 200;

pub(crate) fn centred_rows(features: &Features, members: &[usize]) -> Array2<f64> {
    let mut matrix = Array2::<f64>::zeros((members.len(), features.dim));
    for (r, &i) in members.iter().enumerate() {
        for (dst, &v) in matrix.row_mut(r).iter_mut().zip(features.row(i)) {
            *dst = f64::from(v);
        }
    }
    if let Some(mean) = matrix.mean_axis(Axis(0)) {
        matrix -= &mean;
    }
    matrix
}

/// The top `k` singular values and right singular vectors (rows of `v_t`) of
/// `subject`'s activations (`class-3`, `training-set`: it names the seed stream
/// and the error).
pub(crate) fn top_singular(
    matrix: &Array2<f64>,
    k: usize,
    seeds: &SeedStream,
    subject: &str,
    method: &'static str,
) -> Result<(Array1<f64>, Array2<f64>)> {
    let rng_seed = first_u64(&seeds.derive(&format!("svd/{subject}")));
    // linfa's LOBPCG panics (sorting NaN eigenvalues) on some finite inputs
    // instead of returning an error; the dense route below cannot break down.
    let decomposed = gauntlet_core::contain_panic(|| {
        TruncatedSvd::new_with_rng(
            matrix.clone(),
            Order::Largest,
            Xoshiro256Plus::seed_from_u64(rng_seed),
        )
        .precision(1e-5)
        .maxiter(500)
        .decompose(k)
    });
    if let Ok(Ok(result)) = decomposed {
        let (_, sigma, v_t) = result.values_vectors();
        if sigma.iter().chain(v_t.iter()).all(|v| v.is_finite()) {
            return Ok((sigma, v_t));
        }
    }
    dense_top_singular(matrix, k).ok_or_else(|| Error::Numeric {
        method,
        message: format!(
            "SVD of {subject}'s activations failed: neither LOBPCG nor the dense \
             eigendecomposition of its Gram matrix gave finite values"
        ),
    })
}

/// The top `k` singular values and right singular vectors (as rows) of
/// `matrix`, from the dense symmetric eigendecomposition of its smaller Gram
/// matrix (`AᵀA` when it has no more columns than rows, else `AAᵀ`, mapping
/// each left vector `u` to `Aᵀu / σ`). Like LOBPCG's truncated SVD it returns
/// no direction past the matrix's rank (σ below 1e-6 of the largest). Slower
/// than LOBPCG for wide matrices but without an iteration that can break down;
/// `None` when the decomposition fails or gives non-finite values.
pub(crate) fn dense_top_singular(
    matrix: &Array2<f64>,
    k: usize,
) -> Option<(Array1<f64>, Array2<f64>)> {
    let (rows, columns) = matrix.dim();
    let by_columns = columns <= rows;
    let gram = if by_columns {
        matrix.t().dot(matrix)
    } else {
        matrix.dot(&matrix.t())
    };
    let (values, vectors) = gram.eigh().ok()?;
    if values.iter().any(|v| !v.is_finite()) {
        return None;
    }
    // Eigenvalues this far below the largest are round-off of a zero.
    let floor = values.iter().fold(0.0f64, |a, &b| a.max(b)) * 1e-12;
    let mut order: Vec<usize> = (0..values.len()).filter(|&i| values[i] > floor).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    order.truncate(k);
    let sigma: Array1<f64> = order.iter().map(|&i| values[i].sqrt()).collect();
    let mut v_t = Array2::zeros((order.len(), columns));
    for (row, (&index, &singular)) in order.iter().zip(&sigma).enumerate() {
        let vector = vectors.column(index);
        if by_columns {
            v_t.row_mut(row).assign(&vector);
        } else {
            v_t.row_mut(row)
                .assign(&(matrix.t().dot(&vector) / singular));
        }
    }
    let finite = sigma.iter().chain(v_t.iter()).all(|v| v.is_finite());
    finite.then_some((sigma, v_t))
}

/// A class's centred activations and their top `k` principal directions.
fn class_directions(
    features: &Features,
    members: &[usize],
    k: usize,
    seeds: &SeedStream,
    class: u32,
    method: &'static str,
) -> Result<(Array2<f64>, Array2<f64>)> {
    let centred = centred_rows(features, members);
    let subject = format!("class-{class}");
    let (_, v_t) = top_singular(&centred, k, seeds, &subject, method)?;
    Ok((centred, v_t))
}

/// Robust z-scores: distance from the median in units of the scaled median
/// absolute deviation (1.4826·MAD, σ for a Gaussian), the spread floored at
/// `min_spread`.
pub(crate) fn robust_z(values: &[f64], min_spread: f64) -> Vec<f64> {
    let centre = median(values);
    let deviations: Vec<f64> = values.iter().map(|v| (v - centre).abs()).collect();
    let spread = (1.4826 * median(&deviations)).max(min_spread);
    values.iter().map(|v| (v - centre) / spread).collect()
}

fn first_u64(stream: &SeedStream) -> u64 {
    use rand::RngCore;
    stream.rng().next_u64()
}

/// Mean silhouette of a two-way assignment (Rousseeuw 1987).
fn silhouette(points: &Array2<f64>, assignment: &Array1<usize>) -> f64 {
    let n = points.nrows();
    let sizes = [
        assignment.iter().filter(|&&a| a == 0).count(),
        assignment.iter().filter(|&&a| a == 1).count(),
    ];
    if sizes[0] < 2 || sizes[1] < 2 {
        return 0.0;
    }
    let per_sample: Vec<f64> = (0..n)
        .map(|i| {
            let mut sums = [0.0f64; 2];
            for j in 0..n {
                if i != j {
                    let d = (&points.row(i) - &points.row(j))
                        .mapv(|v| v * v)
                        .sum()
                        .sqrt();
                    sums[assignment[j]] += d;
                }
            }
            let own = assignment[i];
            let a = sums[own] / (sizes[own] - 1) as f64;
            let b = sums[1 - own] / sizes[1 - own] as f64;
            if a.max(b) > 0.0 {
                (b - a) / a.max(b)
            } else {
                0.0
            }
        })
        .collect();
    per_sample.iter().sum::<f64>() / n as f64
}

/// Exact 1-D 2-means: the threshold minimising the within-group sum of squares, and
/// the share of the variance the split explains.
fn split_1d(values: &[f64]) -> (f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let total: f64 = sorted.iter().sum();
    let mean = total / n as f64;
    let total_ss: f64 = sorted.iter().map(|v| (v - mean).powi(2)).sum();
    let (mut best_between, mut best_at) = (0.0f64, 1);
    let mut left = 0.0;
    for k in 1..n {
        left += sorted[k - 1];
        let (n1, n2) = (k as f64, (n - k) as f64);
        let (m1, m2) = (left / n1, (total - left) / n2);
        let between = n1 * (m1 - mean).powi(2) + n2 * (m2 - mean).powi(2);
        if between > best_between {
            best_between = between;
            best_at = k;
        }
    }
    let threshold = 0.5 * (sorted[best_at - 1] + sorted[best_at.min(n - 1)]);
    let share = if total_ss > 0.0 {
        best_between / total_ss
    } else {
        0.0
    };
    (threshold, share)
}

pub(crate) fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        0.5 * (sorted[n / 2 - 1] + sorted[n / 2])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_dimensional_split_finds_the_gap() {
        let mut values: Vec<f64> = (0..50).map(|i| i as f64 * 0.01).collect();
        values.extend((0..30).map(|i| 10.0 + i as f64 * 0.01));
        let (threshold, share) = split_1d(&values);
        assert!(threshold > 0.49 && threshold < 10.0, "{threshold}");
        assert!(share > 0.99, "{share}");
    }

    /// A seeded `rows × columns` matrix of rank at most `rank`.
    fn low_rank(rows: usize, columns: usize, rank: usize, seed: u64) -> Array2<f64> {
        use rand_xoshiro::rand_core::RngCore;
        let mut rng = Xoshiro256Plus::seed_from_u64(seed);
        let mut uniform = || (rng.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0;
        let left = Array2::from_shape_fn((rows, rank), |_| uniform());
        let right = Array2::from_shape_fn((rank, columns), |_| uniform());
        left.dot(&right)
    }

    /// `(σ, Vᵀ)` is the start of `matrix`'s SVD: σ descending, the rows of Vᵀ
    /// orthonormal, and ‖A vᵢ‖ = σᵢ with the A vᵢ mutually orthogonal.
    fn assert_singular(matrix: &Array2<f64>, (sigma, v_t): &(Array1<f64>, Array2<f64>)) {
        let scale = sigma[0];
        assert!(
            sigma.windows(2).into_iter().all(|w| w[0] >= w[1]),
            "{sigma}"
        );
        let gram = v_t.dot(&v_t.t());
        let images = matrix.dot(&v_t.t());
        let image_gram = images.t().dot(&images);
        for ((i, j), value) in gram.indexed_iter() {
            let expected = if i == j { 1.0 } else { 0.0 };
            assert!((value - expected).abs() < 1e-9, "VVᵀ[{i},{j}] = {value}");
            let expected = if i == j { sigma[i] * sigma[i] } else { 0.0 };
            let found = image_gram[[i, j]];
            assert!(
                (found - expected).abs() < 1e-9 * scale * scale,
                "(AV)ᵀAV[{i},{j}] = {found}"
            );
        }
    }

    #[test]
    fn dense_singular_directions_are_the_svd_tall_and_wide() {
        for (rows, columns) in [(60, 12), (12, 60)] {
            let matrix = low_rank(rows, columns, 12, 7);
            let full = dense_top_singular(&matrix, 12).unwrap();
            assert_eq!(full.0.len(), 12);
            assert_singular(&matrix, &full);
            // All of it: Σσ² is the squared Frobenius norm.
            let energy: f64 = full.0.iter().map(|s| s * s).sum();
            let frobenius: f64 = matrix.iter().map(|v| v * v).sum();
            assert!(
                (energy - frobenius).abs() < 1e-9 * frobenius,
                "{energy} vs {frobenius}"
            );
            // The top 3 are the first 3 of the whole.
            let top = dense_top_singular(&matrix, 3).unwrap();
            assert_eq!(top.0, full.0.slice(ndarray::s![..3]));
        }
    }

    #[test]
    fn singular_directions_stop_at_the_rank() {
        // More directions asked for than the matrix has: both routes (LOBPCG,
        // or the dense fallback when it breaks down) return the rank's two.
        let matrix = low_rank(30, 20, 2, 3);
        let seeds = SeedStream::new(5);
        let found = top_singular(&matrix, 6, &seeds, "class-0", "test").unwrap();
        assert_eq!(found.0.len(), 2, "{}", found.0);
        assert_singular(&matrix, &found);
        for wide in [false, true] {
            let input = if wide {
                matrix.t().to_owned()
            } else {
                matrix.clone()
            };
            let dense = dense_top_singular(&input, 6).unwrap();
            assert_eq!(dense.0.len(), 2);
            assert_singular(&input, &dense);
            for (a, b) in found.0.iter().zip(&dense.0) {
                assert!(
                    (a - b).abs() <= 1e-6 * found.0[0],
                    "{} vs {}",
                    found.0,
                    dense.0
                );
            }
        }
    }

    #[test]
    fn silhouette_of_separated_clusters_is_near_one() {
        let points = Array2::from_shape_vec((6, 1), vec![0.0, 0.1, 0.2, 10.0, 10.1, 10.2]).unwrap();
        let assignment = Array1::from(vec![0, 0, 0, 1, 1, 1]);
        let mean = silhouette(&points, &assignment);
        assert!(mean > 0.95, "{mean}");
        let mixed = Array1::from(vec![0, 1, 0, 1, 0, 1]);
        assert!(silhouette(&points, &mixed) < 0.0);
    }
}
