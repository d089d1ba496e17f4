//! Robust accuracy: attacks swept over ε, per-sample worst case.
//!
//! For each attack in order and each ε (ascending), only samples that are still
//! robust are attacked (AutoAttack's schedule): clean-correct and not yet broken
//! by any attack of the same norm at a perturbation ≤ ε. A sample counts as robust
//! at ε only if no attack, restart or iterate found an adversarial example within
//! ε; adversarial examples found at a smaller ε count for every larger ε.

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::Tensor;
use gauntlet_attacks::{run_attack, Attack, AttackKind, Goal};
use gauntlet_core::{Classifier, Norm, Observer, SeedStream};
use gauntlet_data::Dataset;
use gauntlet_record::WarningCode;
use serde::{Deserialize, Serialize};

use crate::{predictions_of, CleanResult, Error, Result};

/// How targets are chosen for targeted attacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetSpec {
    /// Untargeted: any wrong class.
    None,
    /// A uniformly random wrong class per sample, drawn from the run's seed.
    Random,
    /// The class the model finds least likely on the clean input.
    LeastLikely,
    /// The same class for every sample (samples of that class are skipped as unbreakable).
    Class(u32),
}

/// Which samples a minimal-perturbation attack runs on. (Fixed-ε attacks always
/// run, per ε, on the samples still robust at that ε.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// Every clean-correct sample, so the attack's own curve is complete and
    /// its optimality can be measured.
    #[default]
    AllCorrect,
    /// AutoAttack's schedule: only samples no earlier attack of the norm broke
    /// at the grid's smallest ε, each until it is broken within that ε.
    StillRobust,
}

/// One attack of a suite, with its ε grid.
pub struct SuiteEntry {
    /// The attack.
    pub attack: Box<dyn Attack>,
    /// ε values (sorted ascending before running). Minimal-perturbation attacks use
    /// them as the points at which their curve is reported.
    pub epsilons: Vec<f64>,
    /// Targeting.
    pub target: TargetSpec,
    /// Which samples a minimal-perturbation attack runs on.
    pub schedule: Schedule,
}

// The result types are the run record's own (serde-only) types, so the record is
// written from them directly.
pub use gauntlet_record::{
    AttackRecord as AttackResult, BestKnownRecord as BestKnown, MinimalRecord as MinimalNorms,
    WarningRecord as Warning, WorstCaseRecord as WorstCase,
};

/// What one attack batch found: enough to fold it into the evaluation again
/// without recomputing it (see [`Journal`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchOutcome {
    /// The batch's samples (indices in this run's data), to check a replay.
    pub samples: Vec<usize>,
    /// `(sample, perturbation norm)` of each sample the attack broke.
    pub broken: Vec<(usize, f64)>,
    /// Gradient evaluations spent.
    pub gradients: u64,
    /// Forward evaluations spent.
    pub forwards: u64,
    /// Proposals rejected for leaving the ε-ball.
    pub rejected: usize,
    /// Adversarial images kept (`keep_examples` or gallery candidates).
    pub examples: Vec<(usize, Vec<f32>)>,
    /// Seconds the batch took.
    pub seconds: f64,
}

/// Where finished batches are kept, so an interrupted evaluation can resume: the
/// runner asks [`Journal::replay`] before each batch and reports each computed one
/// to [`Journal::record`]. Batches are named by attack position, ε and batch
/// number; since every random draw is keyed by the sample, a replayed batch is
/// exactly what recomputing it would give.
pub trait Journal {
    /// The outcome of batch `key` if it finished before.
    fn replay(&mut self, key: &str) -> Option<BatchOutcome>;
    /// Keep a finished batch (durably, before the next one starts).
    fn record(&mut self, key: &str, outcome: &BatchOutcome) -> Result<()>;
    /// Whether to stop before the next batch (e.g. after Ctrl-C).
    fn interrupted(&self) -> bool {
        false
    }
}

/// A journal that keeps nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoJournal;

impl Journal for NoJournal {
    fn replay(&mut self, _key: &str) -> Option<BatchOutcome> {
        None
    }
    fn record(&mut self, _key: &str, _outcome: &BatchOutcome) -> Result<()> {
        Ok(())
    }
}

/// Everything a robust evaluation found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RobustResult {
    /// Per attack and ε, in the order run.
    pub attacks: Vec<AttackResult>,
    /// Per minimal-perturbation attack.
    pub minimal: Vec<MinimalNorms>,
    /// Per norm: each sample's smallest adversarial perturbation over every attack.
    pub best_known: Vec<BestKnown>,
    /// Per norm and ε.
    pub worst_case: Vec<WorstCase>,
    /// Sanity warnings.
    pub warnings: Vec<Warning>,
    /// Adversarial examples kept for `--save-adversarial`: sample index -> (ε, attack, image).
    pub examples: crate::Examples,
}

/// Settings of a robust evaluation.
#[derive(Clone, Debug)]
pub struct RobustConfig {
    /// Samples per attack batch.
    pub batch_size: usize,
    /// The run's seed.
    pub seed: u64,
    /// Keep one adversarial example per broken sample (the smallest ε), for saving.
    pub keep_examples: bool,
    /// Also keep the examples of samples with an index below this, for the report's
    /// gallery (bounded memory whatever the dataset size).
    pub gallery_samples: usize,
    /// Index in the whole dataset of this run's first sample (non-zero for a
    /// shard): random streams are keyed by it, so a sample is attacked the same
    /// way in a shard as in the whole run.
    pub first_sample: usize,
}

/// Choose targets per sample.
fn targets_for(
    spec: TargetSpec,
    model: &dyn Classifier,
    data: &Dataset,
    indices: &[usize],
    seed: &SeedStream,
    batch_size: usize,
    first_sample: usize,
) -> Result<Option<Vec<u32>>> {
    let k = model.num_classes() as u32;
    let labels = data.labels();
    Ok(match spec {
        TargetSpec::None => None,
        TargetSpec::Class(c) => {
            if c >= k {
                return Err(Error::Invalid(format!(
                    "target class {c} is out of range, the model has classes 0..{k}"
                )));
            }
            Some(indices.iter().map(|_| c).collect())
        }
        TargetSpec::Random => {
            // Per sample, keyed by its index: independent of batching and pruning.
            Some(
                indices
                    .iter()
                    .map(|&i| {
                        let draw = seed
                            .derive(&format!("target/{}", first_sample + i))
                            .below(1, k as usize - 1)[0] as u32;
                        if draw >= labels[i] {
                            draw + 1
                        } else {
                            draw
                        }
                    })
                    .collect(),
            )
        }
        TargetSpec::LeastLikely => {
            let mut out = Vec::with_capacity(indices.len());
            for chunk in indices.chunks(batch_size) {
                let images = gather(data, chunk, model)?;
                let logits = model.logits(&images)?;
                out.extend(
                    logits
                        .neg()?
                        .argmax(candle_core::D::Minus1)?
                        .to_vec1::<u32>()?,
                );
            }
            Some(out)
        }
    })
}

/// Dataset-wide ids of a chunk of this run's samples.
fn sample_ids(chunk: &[usize], first_sample: usize) -> Vec<usize> {
    chunk.iter().map(|&i| first_sample + i).collect()
}

fn gather(data: &Dataset, indices: &[usize], model: &dyn Classifier) -> Result<Tensor> {
    Ok(data.gather(indices, model.device())?.0)
}

/// Run every attack of `suite` on `data`, after `clean`.
pub fn evaluate_robust(
    model: &dyn Classifier,
    data: &Dataset,
    clean: &CleanResult,
    suite: &[SuiteEntry],
    config: &RobustConfig,
    observer: &dyn Observer,
) -> Result<RobustResult> {
    evaluate_robust_journaled(model, data, clean, suite, config, observer, &mut NoJournal)
}

/// One batch: replayed from the journal, or computed and recorded.
fn batch_outcome(
    journal: &mut dyn Journal,
    key: &str,
    chunk: &[usize],
    computed_batches: &mut usize,
    compute: impl FnOnce() -> Result<BatchOutcome>,
) -> Result<BatchOutcome> {
    if let Some(outcome) = journal.replay(key) {
        if outcome.samples == chunk {
            return Ok(outcome);
        }
        return Err(Error::Journal(format!(
            "batch {key} in the journal covers other samples than this run's; the journal is from a different evaluation"
        )));
    }
    if journal.interrupted() {
        return Err(Error::Interrupted {
            batches: *computed_batches,
        });
    }
    let started = Instant::now();
    let mut outcome = compute()?;
    outcome.samples = chunk.to_vec();
    outcome.seconds = started.elapsed().as_secs_f64();
    journal.record(key, &outcome)?;
    *computed_batches += 1;
    Ok(outcome)
}

/// [`evaluate_robust`] with a [`Journal`]: finished batches are recorded as they
/// complete and replayed instead of recomputed, so a run that was killed resumes
/// where it stopped and ends with the same result.
pub fn evaluate_robust_journaled(
    model: &dyn Classifier,
    data: &Dataset,
    clean: &CleanResult,
    suite: &[SuiteEntry],
    config: &RobustConfig,
    observer: &dyn Observer,
    journal: &mut dyn Journal,
) -> Result<RobustResult> {
    if config.batch_size == 0 {
        return Err(Error::Invalid("batch size must be at least 1".into()));
    }
    let root = SeedStream::new(config.seed);
    let mut sweep = Sweep {
        model,
        data,
        clean,
        config,
        observer,
        journal,
        computed_batches: 0,
        broken_at: BTreeMap::new(),
        grids: BTreeMap::new(),
        white_box_done: BTreeMap::new(),
        result: RobustResult::default(),
    };
    // Random streams are keyed by attack name and occurrence, not by position, so
    // adding an attack to a suite leaves every other attack's draws (per sample)
    // unchanged: a suite that gains an attack can only break more samples.
    let mut occurrences: BTreeMap<&str, usize> = BTreeMap::new();
    for (position, entry) in suite.iter().enumerate() {
        let attack = entry.attack.as_ref();
        let occurrence = occurrences.entry(attack.name()).or_default();
        let stream = root.derive(&format!("attack/{}/{occurrence}", attack.name()));
        *occurrence += 1;
        let epsilons = sorted_epsilons(entry)?;
        sweep
            .grids
            .entry(attack.norm())
            .or_default()
            .extend(epsilons.iter().copied());
        sweep
            .broken_at
            .entry(attack.norm())
            .or_insert_with(|| vec![f64::INFINITY; data.len()]);
        if attack.kind() == AttackKind::MinimalPerturbation {
            sweep.minimal_attack(position, entry, &epsilons, &stream)?;
            continue;
        }
        for &eps in &epsilons {
            sweep.bounded_attack(position, entry, eps, &stream)?;
        }
        if attack.uses_gradients() {
            sweep.white_box_done.insert(attack.norm(), true);
        }
    }
    Ok(sweep.finish())
}

/// An attack's ε grid, checked, sorted and without repeats.
fn sorted_epsilons(entry: &SuiteEntry) -> Result<Vec<f64>> {
    let mut epsilons = entry.epsilons.clone();
    if let Some(bad) = epsilons.iter().find(|e| !(e.is_finite() && **e >= 0.0)) {
        return Err(Error::Invalid(format!(
            "{}: epsilon {bad} must be finite and >= 0",
            entry.attack.name()
        )));
    }
    epsilons.sort_by(f64::total_cmp);
    epsilons.dedup();
    Ok(epsilons)
}

/// The state of a robust evaluation between attacks: the smallest perturbation
/// at which each sample has been broken per norm (the per-sample worst case),
/// the ε grids seen, and the result so far.
struct Sweep<'a> {
    model: &'a dyn Classifier,
    data: &'a Dataset,
    clean: &'a CleanResult,
    config: &'a RobustConfig,
    observer: &'a dyn Observer,
    journal: &'a mut dyn Journal,
    computed_batches: usize,
    broken_at: BTreeMap<Norm, Vec<f64>>,
    grids: BTreeMap<Norm, Vec<f64>>,
    white_box_done: BTreeMap<Norm, bool>,
    result: RobustResult,
}

impl Sweep<'_> {
    /// A minimal-perturbation attack runs once per sample (no ε budget); its
    /// norms then give robust accuracy at every ε of its grid.
    fn minimal_attack(
        &mut self,
        position: usize,
        entry: &SuiteEntry,
        epsilons: &[f64],
        stream: &SeedStream,
    ) -> Result<()> {
        let (model, data, clean, config) = (self.model, self.data, self.clean, self.config);
        let attack = entry.attack.as_ref();
        let n = data.len();
        let smallest = epsilons.first().copied().unwrap_or(f64::INFINITY);
        let (indices, threshold) = match entry.schedule {
            Schedule::AllCorrect => (
                (0..n).filter(|&i| clean.correct[i]).collect(),
                f64::INFINITY,
            ),
            Schedule::StillRobust => (self.still_robust(attack.norm(), smallest), smallest),
        };
        self.observer.start(attack.name(), indices.len() as u64);
        let targets = targets_for(
            entry.target,
            model,
            data,
            &indices,
            stream,
            config.batch_size,
            config.first_sample,
        )?;
        let mut norms = vec![None; n];
        let (mut grads, mut fwds, mut rejected) = (0, 0, 0);
        let mut seconds = 0.0;
        for (b, chunk) in indices.chunks(config.batch_size).enumerate() {
            let key = format!("attack-{position}/minimal/batch-{b}");
            let outcome = batch_outcome(
                &mut *self.journal,
                &key,
                chunk,
                &mut self.computed_batches,
                || {
                    model.reseed_noise(&stream.derive(&format!("noise/batch-{b}")));
                    let images = gather(data, chunk, model)?;
                    let goal = make_goal(data, chunk, targets.as_deref(), &indices);
                    let outcome = run_attack(
                        attack,
                        model,
                        &images,
                        &goal,
                        threshold,
                        &stream.per_sample(&sample_ids(chunk, config.first_sample)),
                    )?;
                    Ok(BatchOutcome {
                        broken: chunk
                            .iter()
                            .enumerate()
                            .filter(|(j, _)| outcome.success[*j])
                            .map(|(j, &i)| (i, outcome.norms[j]))
                            .collect(),
                        gradients: outcome.gradients,
                        forwards: outcome.forwards,
                        rejected: outcome.rejected,
                        ..BatchOutcome::default()
                    })
                },
            )?;
            let broken = self.broken(attack.norm());
            for &(i, norm) in &outcome.broken {
                norms[i] = Some(norm);
                broken[i] = broken[i].min(norm);
            }
            grads += outcome.gradients;
            fwds += outcome.forwards;
            rejected += outcome.rejected;
            seconds += outcome.seconds;
            self.observer.advance(chunk.len() as u64, "");
        }
        let found: Vec<f64> = norms.iter().flatten().copied().collect();
        for (k, &eps) in epsilons.iter().enumerate() {
            let robust = self.robust_at(attack.norm(), eps);
            let newly = (0..n)
                .filter(|&i| norms[i].is_some_and(|v| v <= eps))
                .count();
            self.result.attacks.push(AttackResult {
                attack: attack.name().into(),
                norm: attack.norm(),
                kind: attack.kind(),
                parameters: attack.parameters(),
                target: gauntlet_record::json_value(&entry.target),
                epsilon: eps,
                robust_accuracy: gauntlet_record::accuracy_of(&robust),
                robust,
                attacked: indices.len(),
                newly_broken: newly,
                // The work was done once, for the whole grid.
                gradient_evaluations: if k == 0 { grads } else { 0 },
                forward_evaluations: if k == 0 { fwds } else { 0 },
                wall_seconds: if k == 0 { seconds } else { 0.0 },
                mean_perturbation: mean(&found),
                max_perturbation: found.iter().copied().fold(0.0, f64::max),
                rejected,
            });
        }
        self.observer.finish(&format!(
            "{}: adversarial examples for {} of {} samples",
            attack.name(),
            found.len(),
            indices.len()
        ));
        self.result.minimal.push(MinimalNorms {
            attack: attack.name().into(),
            norm: attack.norm(),
            norms,
        });
        Ok(())
    }

    /// A budgeted attack at one ε, on the samples no attack has broken at that ε
    /// yet (earlier attacks and smaller ε prune the work).
    fn bounded_attack(
        &mut self,
        position: usize,
        entry: &SuiteEntry,
        eps: f64,
        stream: &SeedStream,
    ) -> Result<()> {
        let (model, data, config) = (self.model, self.data, self.config);
        let attack = entry.attack.as_ref();
        let n = data.len();
        let indices = self.still_robust(attack.norm(), eps);
        self.observer.start(
            &format!("{} ε={eps:.4}", attack.name()),
            indices.len() as u64,
        );
        let eps_stream = stream.derive(&format!("eps-{eps}"));
        let targets = targets_for(
            entry.target,
            model,
            data,
            &indices,
            &eps_stream,
            config.batch_size,
            config.first_sample,
        )?;
        let (mut grads, mut fwds, mut rejected, mut newly) = (0, 0, 0, 0);
        let mut found_norms = Vec::new();
        let mut black_box_only = 0;
        let mut seconds = 0.0;
        let after_white_box = !attack.uses_gradients()
            && self
                .white_box_done
                .get(&attack.norm())
                .copied()
                .unwrap_or(false);
        for (b, chunk) in indices.chunks(config.batch_size).enumerate() {
            let key = format!("attack-{position}/eps-{eps}/batch-{b}");
            let outcome = batch_outcome(
                &mut *self.journal,
                &key,
                chunk,
                &mut self.computed_batches,
                || {
                    // A randomised model's noise for this batch follows from the
                    // seed and the batch alone, so resumed runs draw it again.
                    model.reseed_noise(&eps_stream.derive(&format!("noise/batch-{b}")));
                    let images = gather(data, chunk, model)?;
                    let goal = make_goal(data, chunk, targets.as_deref(), &indices);
                    let outcome = run_attack(
                        attack,
                        model,
                        &images,
                        &goal,
                        eps,
                        &eps_stream.per_sample(&sample_ids(chunk, config.first_sample)),
                    )?;
                    breaks_within(&outcome, chunk, data, eps, config)
                },
            )?;
            let broken = self.broken(attack.norm());
            for &(i, norm) in &outcome.broken {
                newly += 1;
                found_norms.push(norm);
                broken[i] = broken[i].min(norm.min(eps));
                if after_white_box {
                    black_box_only += 1;
                }
            }
            for (i, image) in outcome.examples {
                self.result
                    .examples
                    .entry(i)
                    .or_insert((eps, attack.name().to_string(), image));
            }
            seconds += outcome.seconds;
            grads += outcome.gradients;
            fwds += outcome.forwards;
            rejected += outcome.rejected;
            let robust_now = self.still_robust(attack.norm(), eps).len();
            self.observer.advance(
                chunk.len() as u64,
                &format!("robust {:.1}%", 100.0 * robust_now as f64 / n as f64),
            );
        }
        let robust = self.robust_at(attack.norm(), eps);
        let robust_accuracy = gauntlet_record::accuracy_of(&robust);
        self.observer.finish(&format!(
            "{} ε={eps}: robust accuracy {:.2}% ({newly} newly broken of {} attacked)",
            attack.name(),
            100.0 * robust_accuracy,
            indices.len()
        ));
        if black_box_only > 0 {
            self.result.warnings.push(Warning {
                code: WarningCode::BlackBoxBeatsWhiteBox,
                message: format!("{} (gradient-free) broke {black_box_only} samples at ε = {eps} that the gradient-based attacks before it could not", attack.name()),
                cause: "gradients are masked or obfuscated (e.g. saturated softmax, non-differentiable preprocessing, randomness), so white-box attacks underestimate the threat".into(),
                remedy: "trust the worst case, not the white-box numbers; use logits (not probabilities), DLR-loss attacks (apgd-dlr) and more restarts".into(),
            });
        }
        self.result.attacks.push(AttackResult {
            attack: attack.name().into(),
            norm: attack.norm(),
            kind: attack.kind(),
            parameters: attack.parameters(),
            target: gauntlet_record::json_value(&entry.target),
            epsilon: eps,
            robust_accuracy,
            robust,
            attacked: indices.len(),
            newly_broken: newly,
            gradient_evaluations: grads,
            forward_evaluations: fwds,
            wall_seconds: seconds,
            mean_perturbation: mean(&found_norms),
            max_perturbation: found_norms.iter().copied().fold(0.0, f64::max),
            rejected,
        });
        Ok(())
    }

    /// The smallest perturbation found per sample so far, in `norm`.
    fn broken(&mut self, norm: Norm) -> &mut Vec<f64> {
        let n = self.data.len();
        self.broken_at
            .entry(norm)
            .or_insert_with(|| vec![f64::INFINITY; n])
    }

    /// Whether each sample is still robust at `eps`: correctly classified and not
    /// broken by any attack at or below it.
    fn robust_at(&self, norm: Norm, eps: f64) -> Vec<bool> {
        let broken = &self.broken_at[&norm];
        (0..self.data.len())
            .map(|i| self.clean.correct[i] && broken[i] > eps)
            .collect()
    }

    /// The samples still robust at `eps`, in dataset order.
    fn still_robust(&self, norm: Norm, eps: f64) -> Vec<usize> {
        let robust = self.robust_at(norm, eps);
        (0..robust.len()).filter(|&i| robust[i]).collect()
    }

    /// The per-sample worst case over every attack, per norm and ε of any grid,
    /// and the warnings that read it.
    fn finish(mut self) -> RobustResult {
        for (&norm, broken) in &self.broken_at {
            let norms = (0..self.data.len())
                .map(|i| {
                    if !self.clean.correct[i] {
                        Some(0.0)
                    } else {
                        Some(broken[i]).filter(|v| v.is_finite())
                    }
                })
                .collect();
            self.result.best_known.push(BestKnown { norm, norms });
        }
        for (norm, mut grid) in std::mem::take(&mut self.grids) {
            grid.sort_by(f64::total_cmp);
            grid.dedup();
            for eps in grid {
                let robust = self.robust_at(norm, eps);
                self.result.worst_case.push(WorstCase {
                    norm,
                    epsilon: eps,
                    robust_accuracy: gauntlet_record::accuracy_of(&robust),
                    robust,
                });
            }
        }
        let mut result = self.result;
        result.warnings.extend(rising_warnings(&result.worst_case));
        result
            .warnings
            .extend(large_epsilon_warnings(self.model, &result.worst_case));
        result
    }
}

/// The samples of a batch an attack at `eps` broke (misclassified within ε,
/// whatever its goal: that is what robust accuracy measures), with their
/// adversarial images where they are kept.
fn breaks_within(
    outcome: &gauntlet_attacks::AttackOutcome,
    chunk: &[usize],
    data: &Dataset,
    eps: f64,
    config: &RobustConfig,
) -> Result<BatchOutcome> {
    let mut found = BatchOutcome {
        gradients: outcome.gradients,
        forwards: outcome.forwards,
        rejected: outcome.rejected,
        ..BatchOutcome::default()
    };
    for (j, &i) in chunk.iter().enumerate() {
        // Rejected proposals were replaced by the (correctly classified) clean
        // input, so a misclassified output within ε is a real break.
        let within = outcome.norms[j]
            <= eps * (1.0 + gauntlet_attacks::NORM_TOLERANCE) + gauntlet_attacks::NORM_TOLERANCE;
        if outcome.predictions[j] != data.labels()[i] && within {
            found.broken.push((i, outcome.norms[j]));
            if config.keep_examples || i < config.gallery_samples {
                let image = outcome
                    .adversarial
                    .narrow(0, j, 1)?
                    .flatten_all()?
                    .to_dtype(candle_core::DType::F32)?
                    .to_vec1::<f32>()?;
                found.examples.push((i, image));
            }
        }
    }
    Ok(found)
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn make_goal(data: &Dataset, chunk: &[usize], targets: Option<&[u32]>, indices: &[usize]) -> Goal {
    let labels: Vec<u32> = chunk.iter().map(|&i| data.labels()[i]).collect();
    match targets {
        None => Goal::Untargeted { labels },
        Some(all) => {
            // `targets` is aligned with `indices`; chunks are consecutive slices of it.
            let start = indices.iter().position(|&i| i == chunk[0]).unwrap_or(0);
            Goal::Targeted {
                labels,
                targets: all[start..start + chunk.len()].to_vec(),
            }
        }
    }
}

/// The worst case cannot rise with ε by construction (an adversarial example found
/// at a smaller ε counts for every larger one); if it ever does, say so loudly.
fn rising_warnings(worst: &[WorstCase]) -> Vec<Warning> {
    worst
        .windows(2)
        .filter(|w| w[0].norm == w[1].norm && w[1].robust_accuracy > w[0].robust_accuracy)
        .map(|w| Warning {
            code: WarningCode::RobustAccuracyRisesWithEpsilon,
            message: format!("robust accuracy rises from {:.2}% at ε = {} to {:.2}% at ε = {} ({})", 100.0 * w[0].robust_accuracy, w[0].epsilon, 100.0 * w[1].robust_accuracy, w[1].epsilon, w[1].norm),
            cause: "a larger threat model can only break more samples; this indicates a bug or a non-deterministic model".into(),
            remedy: "re-run with the same seed, check the non-deterministic-forward warning, and report it".into(),
        })
        .collect()
}

/// Accuracy above chance at a perturbation that can turn any image into any other
/// means the attacks failed, not that the model is robust.
fn large_epsilon_warnings(model: &dyn Classifier, worst: &[WorstCase]) -> Vec<Warning> {
    let bounds = model.bounds();
    let range = bounds.max - bounds.min;
    let [c, h, w] = model.input_shape();
    let chance = 1.0 / model.num_classes() as f64;
    worst
        .iter()
        .filter(|wc| {
            // The distance from any image to a mid-grey one, at most.
            let dimension = (c * h * w) as f64;
            let huge = match wc.norm {
                Norm::Linf => range * 0.5,
                Norm::L2 => range * 0.5 * dimension.sqrt(),
                Norm::L1 => range * 0.5 * dimension,
            };
            wc.epsilon >= huge && wc.robust_accuracy > chance
        })
        .map(|wc| Warning {
            code: WarningCode::AccuracyAboveChanceAtHugeEpsilon,
            message: format!("robust accuracy {:.1}% at ε = {} ({}), where any input can be changed into a mid-grey image", 100.0 * wc.robust_accuracy, wc.epsilon, wc.norm),
            cause: "the attacks are not converging (too few steps, a too small step size) or the gradients are masked".into(),
            remedy: "add steps and restarts, use apgd-ce/apgd-dlr and square-linf, and check the gradient warnings".into(),
        })
        .collect()
}

/// Model-level sanity checks on one batch: probabilities instead of logits,
/// non-deterministic forwards, zero or NaN gradients.
pub fn model_sanity(
    model: &dyn Classifier,
    images: &Tensor,
    labels: &Tensor,
) -> Result<Vec<Warning>> {
    let mut warnings = Vec::new();
    let a = model.logits(images)?;
    let b = model.logits(images)?;
    let rows = a.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
    let probabilities = rows.iter().all(|r| {
        r.iter().all(|v| (0.0..=1.0).contains(v)) && (r.iter().sum::<f32>() - 1.0).abs() < 1e-3
    });
    if probabilities {
        warnings.push(Warning {
            code: WarningCode::ProbabilitiesNotLogits,
            message: "the model's outputs are non-negative and sum to 1: they look like probabilities, not logits".into(),
            cause: "a final softmax saturates, so gradients of the cross-entropy vanish and gradient attacks underestimate the threat".into(),
            remedy: "export the model without its final Softmax, or rely on apgd-dlr and square-linf".into(),
        });
    }
    let diff = (&a - &b)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?;
    if diff != 0.0 {
        warnings.push(Warning {
            code: WarningCode::NonDeterministicForward,
            message: format!("two forward passes on the same input differ by up to {diff:e}"),
            cause: "randomised layers (dropout in training mode, random transforms) make a single attack run meaningless".into(),
            remedy: "put the model in evaluation mode; for a randomised defence run the suite that averages gradients over 20 samples (expectation over transformation): --suite attacks/rand-linf.toml or attacks/rand-l2.toml".into(),
        });
    }
    let _ = predictions_of(&a, 0)?;
    let input = candle_core::Var::from_tensor(&images.detach())?;
    let loss = gauntlet_core::cross_entropy_per_sample(&model.logits(input.as_tensor())?, labels)?;
    let grads = loss.sum_all()?.backward()?;
    if let Some(g) = grads.get(input.as_tensor()) {
        let per = g
            .flatten_from(1)?
            .to_dtype(candle_core::DType::F32)?
            .to_vec2::<f32>()?;
        let bad = per
            .iter()
            .filter(|r| r.iter().all(|v| *v == 0.0) || r.iter().any(|v| !v.is_finite()))
            .count();
        if bad * 10 > per.len() {
            warnings.push(Warning {
                code: WarningCode::ZeroOrNanGradients,
                message: format!("{bad} of {} samples have an all-zero or non-finite input gradient", per.len()),
                cause: "saturated outputs or non-differentiable operations mask the gradient; white-box attacks will fail for the wrong reason".into(),
                remedy: "use logits, check for NaNs in the model, and rely on apgd-dlr and square-linf".into(),
            });
        }
    }
    Ok(warnings)
}
