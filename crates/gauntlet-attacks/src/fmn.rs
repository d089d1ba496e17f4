//! Fast Minimum-Norm attack (Pintor et al. 2021, "Fast Minimum-norm Adversarial
//! Attacks through Adaptive Norm Constraints", NeurIPS): normalised gradient
//! steps on the logit margin inside an Lp ball whose radius ε adapts every step —
//! it shrinks by a factor (1 − γ) while the point is adversarial and grows by
//! (1 + γ) once an adversarial example has been found and lost, and before the
//! first one it jumps to the linearised distance to the boundary. Step size α and
//! γ are cosine-annealed. The smallest adversarial perturbation seen is returned.
//! One departure from the reference: the jump to the linearised boundary
//! overshoots it by the same factor (1 + γ), so the first adversarial point is
//! reached even where the model is linear.
//!
//! AttackBench (Cinà et al., AAAI 2025) ranks FMN among the most optimal
//! minimum-norm attacks in every norm; one implementation serves L∞, L2 and L1.

use candle_core::{DType, Tensor};
use gauntlet_core::{Norm, SeedStream};
use serde::{Deserialize, Serialize};

use crate::context::AttackContext;
use crate::losses::margin;
use crate::ops::{argmax, dual, project_l1_row, row_norm};
use crate::{Attack, AttackKind, Error, Goal, Result};

/// FMN parameters. Step sizes and γ follow the reference implementation
/// (α from 1 to 0.01, γ from 0.05 to 0.001); the paper runs 1 000 steps, these
/// defaults run 100, as Foolbox does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FmnParams {
    /// Iterations (default 100).
    pub steps: usize,
    /// Initial step size α₀, applied to the L2-normalised gradient (default 1).
    pub alpha_init: f64,
    /// Final step size after cosine annealing (default 0.01).
    pub alpha_final: f64,
    /// Initial factor γ₀ by which ε shrinks or grows (default 0.05).
    pub gamma_init: f64,
    /// Final γ after cosine annealing (default 0.001).
    pub gamma_final: f64,
}

impl Default for FmnParams {
    fn default() -> Self {
        Self {
            steps: 100,
            alpha_init: 1.0,
            alpha_final: 0.01,
            gamma_init: 0.05,
            gamma_final: 0.001,
        }
    }
}

/// The FMN attack in one norm.
#[derive(Clone, Debug)]
pub struct Fmn {
    norm: Norm,
    params: FmnParams,
}

impl Fmn {
    /// FMN in `norm` (`fmn-linf`, `fmn-l2`, `fmn-l1`).
    pub fn new(norm: Norm) -> Self {
        Self {
            norm,
            params: FmnParams::default(),
        }
    }

    /// The registry name for `norm`.
    pub fn name_for(norm: Norm) -> &'static str {
        match norm {
            Norm::Linf => "fmn-linf",
            Norm::L2 => "fmn-l2",
            Norm::L1 => "fmn-l1",
        }
    }

    /// The parameters.
    pub fn params(&self) -> &FmnParams {
        &self.params
    }

    /// Replace the parameters (validated).
    pub fn with_params(mut self, params: FmnParams) -> Result<Self> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        let fraction = |v: f64| (0.0..1.0).contains(&v);
        let ok = params.steps > 0
            && positive(params.alpha_init)
            && positive(params.alpha_final)
            && fraction(params.gamma_init)
            && fraction(params.gamma_final);
        if !ok {
            return Err(Error::Param {
                attack: Self::name_for(self.norm).into(),
                message: "steps must be >= 1, alpha_init and alpha_final > 0, gamma_init and gamma_final in [0, 1)".into(),
            });
        }
        self.params = params;
        Ok(self)
    }
}

/// Project one row onto the ball of radius `eps` in `norm`, in place.
fn project_row(row: &mut [f32], norm: Norm, eps: f64) {
    match norm {
        Norm::Linf => {
            let e = eps as f32;
            row.iter_mut().for_each(|v| *v = v.clamp(-e, e));
        }
        Norm::L2 => {
            let length = row_norm(row, Norm::L2);
            if length > eps {
                let factor = (eps / length) as f32;
                row.iter_mut().for_each(|v| *v *= factor);
            }
        }
        Norm::L1 => project_l1_row(row, eps as f32),
    }
}

/// A value annealed from `start` to `end` on a half cosine over `steps`.
fn cosine(start: f64, end: f64, step: usize, steps: usize) -> f64 {
    let weight = (1.0 + (std::f64::consts::PI * step as f64 / steps as f64).cos()) / 2.0;
    end + (start - end) * weight
}

impl Attack for Fmn {
    fn name(&self) -> &str {
        Self::name_for(self.norm)
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
        false
    }
    fn run(
        &self,
        ctx: &mut AttackContext,
        x: &Tensor,
        goal: &Goal,
        _eps: f64,
        _seed: &SeedStream,
    ) -> Result<Tensor> {
        let bounds = ctx.model().bounds();
        let n = x.dim(0)?;
        if n == 0 {
            return Ok(x.clone());
        }
        let per = x.elem_count() / n;
        let clean = x.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let labels = goal.labels_tensor(x.device())?;
        let targets = goal.targets_tensor(x.device())?;
        // Ascend the margin towards the goal: max_{i≠y} z_i − z_y untargeted,
        // z_t − max_{i≠t} z_i targeted; it is positive exactly when the goal is met.
        let objective = |logits: &Tensor| -> Result<Tensor> {
            match &targets {
                None => Ok(margin(logits, &labels)?.neg()?),
                Some(t) => margin(logits, t),
            }
        };
        // No ε larger than the distance to the farthest point of the box helps.
        let worst: Vec<f64> = clean
            .chunks(per)
            .map(|row| {
                let far: Vec<f32> = row
                    .iter()
                    .map(|&v| (v - bounds.min as f32).max(bounds.max as f32 - v))
                    .collect();
                row_norm(&far, self.norm)
            })
            .collect();
        let mut delta = vec![0f32; n * per];
        let mut epsilon = vec![f64::INFINITY; n];
        let mut smallest = Smallest {
            norm: self.norm,
            per,
            clean: &clean,
            best: clean.clone(),
            best_norm: worst.clone(),
            found: vec![false; n],
        };
        let steps = self.params.steps;
        let to_input = |delta: &[f32]| -> Result<Tensor> {
            let values: Vec<f32> = clean.iter().zip(delta).map(|(c, d)| c + d).collect();
            Ok(Tensor::from_vec(values, x.shape(), x.device())?.to_dtype(x.dtype())?)
        };
        for step in 0..steps {
            let alpha = cosine(self.params.alpha_init, self.params.alpha_final, step, steps);
            let gamma = cosine(self.params.gamma_init, self.params.gamma_final, step, steps);
            let point = to_input(&delta)?;
            let lg = ctx.loss_gradient(&point, |logits| objective(logits))?;
            let predictions = argmax(&lg.logits)?;
            let status = smallest.consider(&delta, &predictions, goal);
            let mut gradient = lg
                .gradient
                .flatten_all()?
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?;
            for i in 0..n {
                let (norm, adversarial) = status[i];
                let g = &mut gradient[i * per..(i + 1) * per];
                let dual = row_norm(g, dual(self.norm)).max(1e-12);
                let to_boundary = f64::from(lg.loss[i].abs()) / dual;
                epsilon[i] = if adversarial {
                    (epsilon[i] * (1.0 - gamma)).min(smallest.best_norm[i])
                } else if smallest.found[i] {
                    epsilon[i] * (1.0 + gamma)
                } else {
                    // The reference steps exactly onto the linearised boundary;
                    // on a (locally) linear model that creeps towards it from
                    // inside forever, so overshoot by γ, as DeepFool does.
                    (norm + to_boundary) * (1.0 + gamma)
                }
                .min(worst[i]);
                let length = row_norm(g, Norm::L2).max(1e-12);
                let scale = (alpha / length) as f32;
                let row = &mut delta[i * per..(i + 1) * per];
                for (d, gj) in row.iter_mut().zip(g.iter()) {
                    *d += scale * gj;
                }
                project_row(row, self.norm, epsilon[i]);
                // Back into the input box (moving towards the clean value only
                // shrinks |δ|, so the ball constraint still holds).
                for (d, &c) in row.iter_mut().zip(&clean[i * per..(i + 1) * per]) {
                    *d = (c + *d).clamp(bounds.min as f32, bounds.max as f32) - c;
                }
            }
        }
        // The last step's point has not been judged yet.
        let point = to_input(&delta)?;
        let predictions = argmax(&ctx.logits(&point)?)?;
        smallest.consider(&delta, &predictions, goal);
        Ok(Tensor::from_vec(smallest.best, x.shape(), x.device())?.to_dtype(x.dtype())?)
    }
}

/// The smallest perturbation per sample that met the goal so far.
struct Smallest<'a> {
    norm: Norm,
    per: usize,
    clean: &'a [f32],
    best: Vec<f32>,
    best_norm: Vec<f64>,
    found: Vec<bool>,
}

impl Smallest<'_> {
    /// Judge the points `clean + delta` by their predictions; returns each
    /// sample's perturbation norm and whether it met the goal.
    fn consider(&mut self, delta: &[f32], predictions: &[u32], goal: &Goal) -> Vec<(f64, bool)> {
        let per = self.per;
        (0..predictions.len())
            .map(|i| {
                let rows = i * per..(i + 1) * per;
                let row = &delta[rows.clone()];
                let norm = row_norm(row, self.norm);
                let adversarial = goal.is_success(i, predictions[i]);
                if adversarial && (!self.found[i] || norm < self.best_norm[i]) {
                    self.found[i] = true;
                    self.best_norm[i] = norm;
                    for ((b, c), d) in self.best[rows.clone()]
                        .iter_mut()
                        .zip(&self.clean[rows])
                        .zip(row)
                    {
                        *b = c + d;
                    }
                }
                (norm, adversarial)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projections_land_on_the_ball_and_keep_signs() {
        let original = vec![0.5f32, -0.25, 0.1, -0.05];
        for (norm, eps) in [(Norm::Linf, 0.2), (Norm::L2, 0.3), (Norm::L1, 0.4)] {
            let mut row = original.clone();
            project_row(&mut row, norm, eps);
            let length = row_norm(&row, norm);
            assert!((length - eps).abs() < 1e-6, "{norm}: {length} vs {eps}");
            for (p, o) in row.iter().zip(&original) {
                assert!(
                    p * o >= 0.0 && p.abs() <= o.abs() + 1e-7,
                    "{norm}: {p} from {o}"
                );
            }
        }
        // Inside the ball nothing moves.
        let mut row = original.clone();
        project_row(&mut row, Norm::L1, 10.0);
        assert_eq!(row, original);
    }

    #[test]
    fn the_l1_projection_soft_thresholds_by_the_closed_form() {
        // |v| = (3, 1, 0.5), eps = 2: θ solves (3 − θ) + (1 − θ) = 2 → θ = 1, and
        // 0.5 < θ drops out: (2, 0, 0).
        let mut row = vec![3.0f32, -1.0, 0.5];
        project_l1_row(&mut row, 2.0);
        assert_eq!(row, vec![2.0, 0.0, 0.0]);
    }

    #[test]
    fn the_schedule_starts_and_ends_where_the_paper_says() {
        assert!((cosine(1.0, 0.01, 0, 100) - 1.0).abs() < 1e-12);
        let last = cosine(1.0, 0.01, 99, 100);
        assert!(last > 0.01 && last < 0.02, "{last}");
    }
}
