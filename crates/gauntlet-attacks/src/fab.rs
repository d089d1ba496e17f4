//! Fast Adaptive Boundary attack (Croce & Hein 2020, "Minimally distorted
//! Adversarial Examples with a Fast Adaptive Boundary Attack", ICML): linearise
//! the classifier at the current point, pick the nearest linearised decision
//! boundary, and project onto it — inside the input box — both from the current
//! point and from the original input; step to a convex combination of the two
//! projections that leans towards the original input (α ≤ α_max), with a small
//! extrapolation η past the boundary. Once the point is adversarial, it is pulled
//! back towards the original (β) to look for a smaller perturbation.
//!
//! `fab-*` is untargeted (all classes' boundaries, one gradient per class and
//! step); `fab-t-*` is AutoAttack's targeted variant FAB-T: only the boundary
//! towards one target class at a time, the classes ranked 2nd, 3rd, … on the
//! clean input (two logits, one gradient per step). Both keep the smallest
//! adversarial perturbation found per sample.

use candle_core::{DType, Tensor};
use gauntlet_core::{Norm, SeedStream};
use serde::{Deserialize, Serialize};

use crate::context::AttackContext;
use crate::ops::{argmax, dual, row_norm, select_rows};
use crate::{Attack, AttackKind, Error, Goal, Result};

/// FAB parameters; defaults are AutoAttack's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FabParams {
    /// Iterations per restart and target (default 100).
    pub steps: usize,
    /// Runs; the first starts at the input, later ones at a random point at half
    /// the best perturbation found so far (default 1).
    pub restarts: usize,
    /// Largest weight α of the projection from the original input (default 0.1).
    pub alpha_max: f64,
    /// Extrapolation η past the linearised boundary (default 1.05).
    pub eta: f64,
    /// Backward step β towards the original input after a success (default 0.9).
    pub beta: f64,
    /// `fab-t-*` only: number of target classes, highest-scoring first (default 9).
    pub target_classes: usize,
}

impl Default for FabParams {
    fn default() -> Self {
        Self {
            steps: 100,
            restarts: 1,
            alpha_max: 0.1,
            eta: 1.05,
            beta: 0.9,
            target_classes: 9,
        }
    }
}

/// The FAB attack in one norm, untargeted or FAB-T.
#[derive(Clone, Debug)]
pub struct Fab {
    norm: Norm,
    targeted: bool,
    params: FabParams,
}

/// Every registered FAB variant: (name, norm, targeted).
pub const FAB_VARIANTS: [(&str, Norm, bool); 6] = [
    ("fab-linf", Norm::Linf, false),
    ("fab-l2", Norm::L2, false),
    ("fab-l1", Norm::L1, false),
    ("fab-t-linf", Norm::Linf, true),
    ("fab-t-l2", Norm::L2, true),
    ("fab-t-l1", Norm::L1, true),
];

impl Fab {
    /// The variant registered as `name`, if any.
    pub fn named(name: &str) -> Option<Self> {
        FAB_VARIANTS
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|&(_, norm, targeted)| Self {
                norm,
                targeted,
                params: FabParams::default(),
            })
    }

    /// The parameters.
    pub fn params(&self) -> &FabParams {
        &self.params
    }

    /// Replace the parameters (validated).
    pub fn with_params(mut self, params: FabParams) -> Result<Self> {
        let ok = params.steps > 0
            && params.restarts > 0
            && params.target_classes > 0
            && (0.0..=1.0).contains(&params.alpha_max)
            && params.eta.is_finite()
            && params.eta >= 1.0
            && (0.0..=1.0).contains(&params.beta);
        if !ok {
            return Err(Error::Param {
                attack: self.name().into(),
                message: "steps, restarts and target_classes must be >= 1, alpha_max and beta in [0, 1], eta finite and >= 1".into(),
            });
        }
        self.params = params;
        Ok(self)
    }
}

/// The smallest `delta` in `norm` with `w·delta ≥ c` and `lo ≤ point + delta ≤ hi`
/// (the projection onto a half-space inside the box). Moving coordinate i in the
/// direction of sign(wᵢ) gains |wᵢ| per unit, up to its room to the box's face;
/// when even the whole box cannot reach `c`, the box's best corner is returned.
pub fn project_onto_halfspace(
    point: &[f64],
    w: &[f64],
    c: f64,
    (lo, hi): (f64, f64),
    norm: Norm,
) -> Vec<f64> {
    let d = point.len();
    if c <= 0.0 {
        return vec![0.0; d];
    }
    let room: Vec<f64> = point
        .iter()
        .zip(w)
        .map(|(&p, &wi)| {
            if wi > 0.0 {
                hi - p
            } else if wi < 0.0 {
                p - lo
            } else {
                0.0
            }
            .max(0.0)
        })
        .collect();
    let moved = |amount: &dyn Fn(usize) -> f64| -> Vec<f64> {
        (0..d)
            .map(|i| amount(i).copysign(w[i]) * f64::from(w[i] != 0.0))
            .collect()
    };
    let reach: f64 = (0..d).map(|i| w[i].abs() * room[i]).sum();
    if reach <= c {
        return moved(&|i| room[i]);
    }
    match norm {
        Norm::L1 => {
            // A fractional knapsack: spend on the steepest coordinates first.
            let mut order: Vec<usize> = (0..d).filter(|&i| w[i] != 0.0).collect();
            order.sort_by(|&a, &b| w[b].abs().total_cmp(&w[a].abs()));
            let mut amount = vec![0.0; d];
            let mut left = c;
            for i in order {
                let take = room[i].min(left / w[i].abs());
                amount[i] = take;
                left -= take * w[i].abs();
                if left <= 0.0 {
                    break;
                }
            }
            moved(&|i| amount[i])
        }
        Norm::Linf | Norm::L2 => {
            // Every coordinate moves min(t·sᵢ, roomᵢ) with sᵢ = 1 (L∞) or |wᵢ|
            // (L2, the KKT solution); the gain is increasing in t, so bisect.
            let scale = |i: usize| if norm == Norm::Linf { 1.0 } else { w[i].abs() };
            let gain = |t: f64| {
                (0..d)
                    .map(|i| w[i].abs() * (t * scale(i)).min(room[i]))
                    .sum::<f64>()
            };
            let mut upper = (0..d)
                .filter(|&i| w[i] != 0.0)
                .map(|i| room[i] / scale(i))
                .fold(0.0, f64::max);
            let mut lower = 0.0;
            for _ in 0..60 {
                let mid = 0.5 * (lower + upper);
                if gain(mid) >= c {
                    upper = mid;
                } else {
                    lower = mid;
                }
            }
            moved(&|i| (upper * scale(i)).min(room[i]))
        }
    }
}

/// The linearised boundary a step aims at: `f(z) ≈ b + w·(z − x)` with `f > 0`
/// on the adversarial side.
struct Boundary {
    b: f64,
    w: Vec<f64>,
}

impl Fab {
    /// Per sample, the nearest linearised boundary at `point`: towards
    /// `targets[i]` for FAB-T, otherwise the nearest over all other classes.
    fn boundaries(
        &self,
        ctx: &mut AttackContext,
        point: &Tensor,
        labels: &[u32],
        targets: Option<&[u32]>,
    ) -> Result<Vec<Boundary>> {
        let n = labels.len();
        let per = point.elem_count() / n.max(1);
        let rows = |t: &Tensor| -> Result<Vec<f64>> {
            Ok(t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?)
        };
        if let Some(targets) = targets {
            let device = point.device();
            let y = Tensor::from_vec(labels.to_vec(), n, device)?;
            let t = Tensor::from_vec(targets.to_vec(), n, device)?;
            let pick = |logits: &Tensor, idx: &Tensor| -> candle_core::Result<Tensor> {
                logits.gather(&idx.unsqueeze(1)?, 1)?.squeeze(1)
            };
            let lg =
                ctx.loss_gradient(point, |logits| Ok((pick(logits, &t)? - pick(logits, &y)?)?))?;
            let g = rows(&lg.gradient)?;
            return Ok((0..n)
                .map(|i| Boundary {
                    b: f64::from(lg.loss[i]),
                    w: g[i * per..(i + 1) * per].to_vec(),
                })
                .collect());
        }
        let k = ctx.model().num_classes();
        let (logits, grads) = ctx.class_gradients(point, k)?;
        let z = logits.to_dtype(DType::F64)?.to_vec2::<f64>()?;
        let g: Vec<Vec<f64>> = grads.iter().map(&rows).collect::<Result<_>>()?;
        let q = dual(self.norm);
        // One scratch row for the distances; only the nearest boundary's normal
        // is kept (K − 1 candidates per sample and step).
        let mut scratch = vec![0f64; per];
        let difference = |j: usize, y: usize, i: usize, out: &mut [f64]| {
            let span = i * per..(i + 1) * per;
            for (o, (a, b)) in out
                .iter_mut()
                .zip(g[j][span.clone()].iter().zip(&g[y][span]))
            {
                *o = a - b;
            }
        };
        let mut boundaries = Vec::with_capacity(n);
        for (i, &label) in labels.iter().enumerate() {
            let y = label as usize;
            let mut nearest: Option<(f64, usize)> = None;
            for j in (0..k).filter(|&j| j != y) {
                difference(j, y, i, &mut scratch);
                let distance = (z[i][j] - z[i][y]).abs() / (row_norm(&scratch, q) + 1e-12);
                if nearest.is_none_or(|(d, _)| distance < d) {
                    nearest = Some((distance, j));
                }
            }
            let mut w = vec![0.0; per];
            let b = match nearest {
                Some((_, j)) => {
                    difference(j, y, i, &mut w);
                    z[i][j] - z[i][y]
                }
                None => 0.0,
            };
            boundaries.push(Boundary { b, w });
        }
        Ok(boundaries)
    }

    /// One FAB run on the batch from `start`, folding successes into `best`.
    #[allow(clippy::too_many_arguments)]
    fn run_once(
        &self,
        ctx: &mut AttackContext,
        x: &Tensor,
        clean: &[f64],
        start: Vec<f64>,
        goal: &Goal,
        targets: Option<&[u32]>,
        best: &mut Smallest,
    ) -> Result<()> {
        let bounds = ctx.model().bounds();
        let n = goal.labels().len();
        let per = clean.len() / n.max(1);
        let to_tensor = |values: &[f64]| -> Result<Tensor> {
            Ok(Tensor::from_vec(values.to_vec(), x.shape(), x.device())?.to_dtype(x.dtype())?)
        };
        let mut current = start;
        let params = &self.params;
        for _ in 0..params.steps {
            let boundaries = self.boundaries(ctx, &to_tensor(&current)?, goal.labels(), targets)?;
            let mut next = current.clone();
            for (i, boundary) in boundaries.iter().enumerate() {
                let span = i * per..(i + 1) * per;
                let here = &current[span.clone()];
                let origin = &clean[span.clone()];
                // From here: reach b + w·δ ≥ 0. From the origin, the same
                // linearised boundary: b + w·(origin + δ − here) ≥ 0.
                let shift: f64 = boundary
                    .w
                    .iter()
                    .zip(origin.iter().zip(here))
                    .map(|(w, (o, h))| w * (o - h))
                    .sum();
                let box_ = (bounds.min, bounds.max);
                let from_here =
                    project_onto_halfspace(here, &boundary.w, -boundary.b, box_, self.norm);
                let from_origin = project_onto_halfspace(
                    origin,
                    &boundary.w,
                    -boundary.b - shift,
                    box_,
                    self.norm,
                );
                let (a, b) = (
                    row_norm(&from_here, self.norm),
                    row_norm(&from_origin, self.norm),
                );
                let alpha = if a + b > 0.0 {
                    (a / (a + b)).min(params.alpha_max)
                } else {
                    0.0
                };
                for j in 0..per {
                    let moved = (1.0 - alpha) * (here[j] + params.eta * from_here[j])
                        + alpha * (origin[j] + params.eta * from_origin[j]);
                    next[span.start + j] = moved.clamp(bounds.min, bounds.max);
                }
            }
            let predictions = argmax(&ctx.logits(&to_tensor(&next)?)?)?;
            let adversarial = best.consider(&next, &predictions, goal);
            // After a success, step back towards the original input.
            for (i, &hit) in adversarial.iter().enumerate() {
                if hit {
                    for j in i * per..(i + 1) * per {
                        next[j] = (1.0 - params.beta) * clean[j] + params.beta * next[j];
                    }
                }
            }
            current = next;
        }
        Ok(())
    }
}

/// The smallest perturbation per sample that met the goal so far.
struct Smallest<'a> {
    norm: Norm,
    clean: &'a [f64],
    best: Vec<f64>,
    best_norm: Vec<f64>,
}

impl Smallest<'_> {
    /// Judge `points` by their predictions; returns which met the goal.
    fn consider(&mut self, points: &[f64], predictions: &[u32], goal: &Goal) -> Vec<bool> {
        let per = self.clean.len() / predictions.len().max(1);
        (0..predictions.len())
            .map(|i| {
                let span = i * per..(i + 1) * per;
                let adversarial = goal.is_success(i, predictions[i]);
                if adversarial {
                    let delta: Vec<f64> = points[span.clone()]
                        .iter()
                        .zip(&self.clean[span.clone()])
                        .map(|(p, c)| p - c)
                        .collect();
                    let norm = row_norm(&delta, self.norm);
                    if norm < self.best_norm[i] {
                        self.best_norm[i] = norm;
                        self.best[span.clone()].copy_from_slice(&points[span]);
                    }
                }
                adversarial
            })
            .collect()
    }
}

impl Attack for Fab {
    fn name(&self) -> &str {
        FAB_VARIANTS
            .iter()
            .find(|(_, norm, targeted)| *norm == self.norm && *targeted == self.targeted)
            .map_or("fab", |(name, _, _)| name)
    }
    fn norm(&self) -> Norm {
        self.norm
    }
    fn kind(&self) -> AttackKind {
        AttackKind::MinimalPerturbation
    }
    fn parameters(&self) -> serde_json::Value {
        gauntlet_record::json_value(&self.params)
    }
    fn is_randomized(&self) -> bool {
        self.params.restarts > 1
    }
    /// `eps`, when finite, is a threshold: a sample with an adversarial example
    /// within it is not attacked further (AutoAttack's schedule).
    fn run(
        &self,
        ctx: &mut AttackContext,
        x: &Tensor,
        goal: &Goal,
        eps: f64,
        seed: &SeedStream,
    ) -> Result<Tensor> {
        if self.targeted && matches!(goal, Goal::Targeted { .. }) {
            return Err(Error::Invalid(format!(
                "{} chooses its own targets (the top classes); run it untargeted",
                self.name()
            )));
        }
        let n = x.dim(0)?;
        if n == 0 {
            return Ok(x.clone());
        }
        let clean = x.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let per = clean.len() / n;
        let mut best = Smallest {
            norm: self.norm,
            clean: &clean,
            best: clean.clone(),
            best_norm: vec![f64::INFINITY; n],
        };
        // FAB-T's targets: the classes ranked 2nd, 3rd, … on the clean input.
        let (ranked, runs) = if self.targeted {
            let (order, runs) = ctx.ranked_classes(x, self.params.target_classes)?;
            (Some(order), runs)
        } else {
            (None, 1)
        };
        for run in 0..runs {
            for restart in 0..self.params.restarts {
                // Samples already broken within the threshold are done.
                let open: Vec<usize> = (0..n)
                    .filter(|&i| !(best.best_norm[i].is_finite() && best.best_norm[i] <= eps))
                    .collect();
                if open.is_empty() {
                    break;
                }
                let stream = seed.derive(&format!("target-{run}/restart-{restart}"));
                let sub_x = select_rows(x, &open)?;
                let sub_clean: Vec<f64> = open
                    .iter()
                    .flat_map(|&i| clean[i * per..(i + 1) * per].iter().copied())
                    .collect();
                let sub_goal = goal.select(&open);
                let sub_targets: Option<Vec<u32>> = ranked
                    .as_ref()
                    .map(|order| open.iter().map(|&i| order[i][run + 1]).collect());
                let start = if restart == 0 {
                    sub_clean.clone()
                } else {
                    random_start(&sub_clean, &open, &best.best_norm, self.norm, &stream, ctx)
                };
                let mut sub_best = Smallest {
                    norm: self.norm,
                    clean: &sub_clean,
                    best: sub_clean.clone(),
                    best_norm: open.iter().map(|&i| best.best_norm[i]).collect(),
                };
                self.run_once(
                    ctx,
                    &sub_x,
                    &sub_clean,
                    start,
                    &sub_goal,
                    sub_targets.as_deref(),
                    &mut sub_best,
                )?;
                for (k, &i) in open.iter().enumerate() {
                    if sub_best.best_norm[k] < best.best_norm[i] {
                        best.best_norm[i] = sub_best.best_norm[k];
                        best.best[i * per..(i + 1) * per]
                            .copy_from_slice(&sub_best.best[k * per..(k + 1) * per]);
                    }
                }
            }
        }
        Ok(Tensor::from_vec(best.best, x.shape(), x.device())?.to_dtype(x.dtype())?)
    }
}

/// A restart's starting points: a random direction at half the best norm found
/// so far (the clean input where nothing was found), clipped to the box.
fn random_start(
    clean: &[f64],
    samples: &[usize],
    best_norm: &[f64],
    norm: Norm,
    seed: &SeedStream,
    ctx: &AttackContext,
) -> Vec<f64> {
    let bounds = ctx.model().bounds();
    let per = clean.len() / samples.len().max(1);
    let draws = seed.uniform_f32(clean.len(), -1.0, 1.0);
    let mut start = clean.to_vec();
    for (k, &i) in samples.iter().enumerate() {
        if !best_norm[i].is_finite() {
            continue;
        }
        let span = k * per..(k + 1) * per;
        let direction: Vec<f64> = draws[span.clone()].iter().map(|&v| f64::from(v)).collect();
        let length = row_norm(&direction, norm).max(1e-12);
        for (j, d) in span.zip(direction) {
            start[j] = (clean[j] + 0.5 * best_norm[i] * d / length).clamp(bounds.min, bounds.max);
        }
    }
    start
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halfspace_projections_meet_the_constraint_at_the_closed_form() {
        let point = [0.5, 0.5, 0.5];
        let w = [2.0, -1.0, 0.0];
        let c = 0.3;
        // L2 without active box faces: δ = c·w/‖w‖² = (0.12, −0.06, 0).
        let l2 = project_onto_halfspace(&point, &w, c, (0.0, 1.0), Norm::L2);
        for (got, want) in l2.iter().zip([0.12, -0.06, 0.0]) {
            assert!((got - want).abs() < 1e-9, "{l2:?}");
        }
        // L∞: every moving coordinate by t with 3t = 0.3.
        let linf = project_onto_halfspace(&point, &w, c, (0.0, 1.0), Norm::Linf);
        for (got, want) in linf.iter().zip([0.1, -0.1, 0.0]) {
            assert!((got - want).abs() < 1e-9, "{linf:?}");
        }
        // L1: all on the steepest coordinate, 0.3 / 2.
        let l1 = project_onto_halfspace(&point, &w, c, (0.0, 1.0), Norm::L1);
        assert_eq!(l1, vec![0.15, 0.0, 0.0]);
    }

    #[test]
    fn box_faces_bind_and_an_unreachable_halfspace_gives_the_best_corner() {
        // The first coordinate has room 0.05 only, so the rest must make up.
        let point = [0.95, 0.5];
        let w = [1.0, 1.0];
        let l1 = project_onto_halfspace(&point, &w, 0.2, (0.0, 1.0), Norm::L1);
        assert!(
            (l1[0] + l1[1] - 0.2).abs() < 1e-12 && l1[0] <= 0.05 + 1e-12,
            "{l1:?}"
        );
        let linf = project_onto_halfspace(&point, &w, 0.2, (0.0, 1.0), Norm::Linf);
        assert!(
            (linf[0] - 0.05).abs() < 1e-9 && (linf[1] - 0.15).abs() < 1e-9,
            "{linf:?}"
        );
        let corner = project_onto_halfspace(&point, &w, 5.0, (0.0, 1.0), Norm::L2);
        assert!((corner[0] - 0.05).abs() < 1e-12 && (corner[1] - 0.5).abs() < 1e-12);
        assert_eq!(
            project_onto_halfspace(&point, &w, -1.0, (0.0, 1.0), Norm::L2),
            vec![0.0, 0.0]
        );
    }
}
