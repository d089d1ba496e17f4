//! Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness
//! with an ensemble of diverse parameter-free attacks"): PGD with momentum and a
//! step size that halves at checkpoints when progress stalls, restarting from the
//! best point. `apgd-ce` ascends cross-entropy, `apgd-dlr` the scale-invariant
//! DLR loss, and `apgd-t` the targeted DLR loss towards each of the top classes in
//! turn (a sample counts as broken when it is misclassified, as in AutoAttack).

use candle_core::{DType, Tensor};
use gauntlet_core::{Norm, SeedStream};
use serde::{Deserialize, Serialize};

use crate::context::AttackContext;
use crate::losses::{objective, Loss};
use crate::ops::{ascent_direction, per_sample, project_and_clip, random_in_ball, where_rows};
use crate::tracker::BestIterate;
use crate::{Attack, Error, Goal, Result};

/// Parameters of APGD; defaults are AutoAttack's "standard" version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApgdParams {
    /// Iterations per restart (default 100).
    pub steps: usize,
    /// Restarts, each on the samples not yet broken (default 1).
    pub restarts: usize,
    /// Loss ascended (CE for `apgd-ce`, DLR for `apgd-dlr` and `apgd-t`).
    pub loss: Loss,
    /// Momentum α of the update (default 0.75).
    pub momentum: f64,
    /// Fraction ρ of improving steps below which the step size halves (default 0.75).
    pub rho: f64,
    /// `apgd-t` only: number of target classes tried, highest-scoring first (default 9).
    pub target_classes: usize,
    /// Gradients averaged per step, Expectation over Transformation for models
    /// whose forward pass is random (default 1; AutoAttack's `rand` version: 20).
    #[serde(default = "one")]
    pub eot_samples: usize,
}

fn one() -> usize {
    1
}

/// An APGD attack.
#[derive(Clone, Debug)]
pub struct Apgd {
    name: &'static str,
    norm: Norm,
    targeted: bool,
    params: ApgdParams,
}

impl Apgd {
    /// `apgd-ce` (L∞), `apgd-ce-l2` or `apgd-ce-l1`.
    pub fn ce(norm: Norm) -> Self {
        Self::new(
            match norm {
                Norm::Linf => "apgd-ce",
                Norm::L2 => "apgd-ce-l2",
                Norm::L1 => "apgd-ce-l1",
            },
            norm,
            false,
            Loss::Ce,
        )
    }
    /// `apgd-dlr` (L∞), `apgd-dlr-l2` or `apgd-dlr-l1`.
    pub fn dlr(norm: Norm) -> Self {
        Self::new(
            match norm {
                Norm::Linf => "apgd-dlr",
                Norm::L2 => "apgd-dlr-l2",
                Norm::L1 => "apgd-dlr-l1",
            },
            norm,
            false,
            Loss::Dlr,
        )
    }
    /// `apgd-t` (L∞), `apgd-t-l2` or `apgd-t-l1`: targeted DLR over the top classes.
    pub fn targeted(norm: Norm) -> Self {
        Self::new(
            match norm {
                Norm::Linf => "apgd-t",
                Norm::L2 => "apgd-t-l2",
                Norm::L1 => "apgd-t-l1",
            },
            norm,
            true,
            Loss::Dlr,
        )
    }

    fn new(name: &'static str, norm: Norm, targeted: bool, loss: Loss) -> Self {
        Self {
            name,
            norm,
            targeted,
            params: ApgdParams {
                steps: 100,
                restarts: 1,
                loss,
                momentum: 0.75,
                rho: 0.75,
                target_classes: 9,
                eot_samples: 1,
            },
        }
    }

    /// The parameters.
    pub fn params(&self) -> &ApgdParams {
        &self.params
    }

    /// Replace the parameters (validated).
    pub fn with_params(mut self, params: ApgdParams) -> Result<Self> {
        let bad = |m: &str| {
            Err(Error::Param {
                attack: self.name.into(),
                message: m.into(),
            })
        };
        if params.steps == 0
            || params.restarts == 0
            || params.target_classes == 0
            || params.eot_samples == 0
        {
            return bad("steps, restarts, target_classes and eot_samples must be at least 1");
        }
        if !(0.0..=1.0).contains(&params.momentum) || !(0.0..=1.0).contains(&params.rho) {
            return bad("momentum and rho must be in [0, 1]");
        }
        self.params = params;
        Ok(self)
    }

    /// Checkpoint iterations: p₀ = 0, p₁ = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06).
    fn checkpoints(steps: usize) -> Vec<usize> {
        let mut p = vec![0.0f64, 0.22];
        while *p.last().unwrap_or(&1.0) < 1.0 {
            let n = p.len();
            p.push(p[n - 1] + (p[n - 1] - p[n - 2] - 0.03).max(0.06));
        }
        let mut w: Vec<usize> = p
            .iter()
            .map(|v| (v * steps as f64).ceil() as usize)
            .filter(|&c| c > 0 && c < steps)
            .collect();
        w.dedup();
        w
    }

    /// One APGD run on a batch, ascending `objective` towards `targets` if given.
    #[allow(clippy::too_many_arguments)]
    fn run_once(
        &self,
        ctx: &mut AttackContext,
        x: &Tensor,
        goal: &Goal,
        targets: Option<&Tensor>,
        eps: f64,
        seed: &SeedStream,
        best: &mut BestIterate,
    ) -> Result<()> {
        if self.norm == Norm::L1 {
            return self.run_once_l1(ctx, x, goal, targets, eps, seed, best);
        }
        let bounds = ctx.model().bounds();
        let n = x.dim(0)?;
        let labels = goal.labels_tensor(x.device())?;
        let loss = self.params.loss;
        let f = |logits: &Tensor| objective(loss, logits, &labels, targets);
        let proj = |t: &Tensor| project_and_clip(x, t, self.norm, eps, bounds);

        let eot = self.params.eot_samples;
        let mut x_adv = if eps > 0.0 {
            proj(&(x + random_in_ball(x, self.norm, eps, &seed.derive("start"))?)?)?
        } else {
            x.clone()
        };
        let mut eta = vec![2.0 * eps as f32; n];
        let lg = ctx.expected_loss_gradient(&x_adv, |l| Ok(f(l)?), eot)?;
        best.update(&x_adv, &lg.logits, &lg.loss, goal)?;
        let mut grad = lg.gradient;
        let mut f_cur = lg.loss.clone();
        let mut f_best = lg.loss;
        let mut x_best = x_adv.clone();
        let mut grad_best = grad.clone();
        let mut x_prev = x_adv.clone();
        let mut increases = vec![0usize; n];
        let mut f_best_last_check = f_best.clone();
        let mut reduced_last_check = vec![false; n];
        let checkpoints = Self::checkpoints(self.params.steps);
        let mut last_check = 0;
        let alpha = self.params.momentum;

        for k in 0..self.params.steps {
            let eta_t = per_sample(
                &Tensor::from_vec(eta.clone(), n, x.device())?.to_dtype(x.dtype())?,
                x,
            )?;
            let z = proj(&(&x_adv + ascent_direction(&grad, self.norm)?.broadcast_mul(&eta_t)?)?)?;
            let x_new = if k == 0 {
                z
            } else {
                let moved = ((&x_adv + ((&z - &x_adv)? * alpha)?)?
                    + ((&x_adv - &x_prev)? * (1.0 - alpha))?)?;
                proj(&moved)?
            };
            x_prev = x_adv;
            x_adv = x_new;
            let lg = ctx.expected_loss_gradient(&x_adv, |l| Ok(f(l)?), eot)?;
            best.update(&x_adv, &lg.logits, &lg.loss, goal)?;
            grad = lg.gradient;
            let mut improved = vec![false; n];
            for i in 0..n {
                if lg.loss[i] > f_cur[i] {
                    increases[i] += 1;
                }
                if lg.loss[i] > f_best[i] {
                    f_best[i] = lg.loss[i];
                    improved[i] = true;
                }
            }
            f_cur = lg.loss;
            if improved.iter().any(|b| *b) {
                x_best = where_rows(&improved, &x_adv, &x_best)?;
                grad_best = where_rows(&improved, &grad, &grad_best)?;
            }
            if checkpoints.contains(&(k + 1)) {
                let interval = (k + 1 - last_check) as f64;
                let mut reduce = vec![false; n];
                for i in 0..n {
                    let oscillating = (increases[i] as f64) <= self.params.rho * interval;
                    let stalled = !reduced_last_check[i] && f_best_last_check[i] >= f_best[i];
                    reduce[i] = oscillating || stalled;
                    if reduce[i] {
                        eta[i] /= 2.0;
                    }
                }
                if reduce.iter().any(|b| *b) {
                    x_adv = where_rows(&reduce, &x_best, &x_adv)?;
                    grad = where_rows(&reduce, &grad_best, &grad)?;
                }
                reduced_last_check = reduce;
                f_best_last_check = f_best.clone();
                increases = vec![0; n];
                last_check = k + 1;
            }
        }
        Ok(())
    }
}

/// The L1 variant (Croce & Hein 2021, "Mind the box: l1-APGD for sparse
/// adversarial attacks on image classifiers", ICML): sparse steps along the signs
/// of the largest gradient entries, the exact projection onto the L1 ball inside
/// the box, and the share of coordinates moved adapted at every checkpoint to
/// the sparsity of the best point. As in AutoAttack's L1 recipe, the steps are
/// spent 30% at 3ε, 30% at 2ε and 40% at ε, each phase starting from the last
/// one's best point; only the last phase's points can count as adversarial.
impl Apgd {
    #[allow(clippy::too_many_arguments)]
    fn run_once_l1(
        &self,
        ctx: &mut AttackContext,
        x: &Tensor,
        goal: &Goal,
        targets: Option<&Tensor>,
        eps: f64,
        seed: &SeedStream,
        best: &mut BestIterate,
    ) -> Result<()> {
        let bounds = ctx.model().bounds();
        let start = {
            let noise = seed.derive("start").normal_f32(x.elem_count());
            let noise = Tensor::from_vec(noise, x.shape(), x.device())?.to_dtype(x.dtype())?;
            (x + noise)?
        };
        let phases = [(3.0, 0.3), (2.0, 0.3), (1.0, 0.4)];
        let mut point = start;
        let mut warm = false;
        for (k, (scale, share)) in phases.into_iter().enumerate() {
            let radius = eps * scale;
            let steps = ((self.params.steps as f64) * share).ceil() as usize;
            let from = project_and_clip(x, &point, Norm::L1, radius, bounds)?;
            let mut scratch = BestIterate::new(x)?;
            let tracker = if k + 1 == phases.len() {
                &mut *best
            } else {
                &mut scratch
            };
            point = self.l1_phase(ctx, x, goal, targets, from, radius, steps, warm, tracker)?;
            warm = true;
        }
        Ok(())
    }

    /// One L1 phase at `radius` from `from`; returns its highest-loss point.
    #[allow(clippy::too_many_arguments)]
    fn l1_phase(
        &self,
        ctx: &mut AttackContext,
        x: &Tensor,
        goal: &Goal,
        targets: Option<&Tensor>,
        from: Tensor,
        radius: f64,
        steps: usize,
        warm: bool,
        best: &mut BestIterate,
    ) -> Result<Tensor> {
        let bounds = ctx.model().bounds();
        let n = x.dim(0)?;
        let per = x.elem_count() / n.max(1);
        let labels = goal.labels_tensor(x.device())?;
        let loss = self.params.loss;
        let f =
            |logits: &Tensor| -> Result<Tensor> { Ok(objective(loss, logits, &labels, targets)?) };
        let eot = self.params.eot_samples;
        let nonzero = |point: &Tensor| -> Result<Vec<f64>> {
            let rows = (point - x)?
                .flatten_from(1)?
                .to_dtype(DType::F32)?
                .to_vec2::<f32>()?;
            Ok(rows
                .iter()
                .map(|r| r.iter().filter(|v| **v != 0.0).count() as f64)
                .collect())
        };
        let mut x_adv = from;
        let lg = ctx.expected_loss_gradient(&x_adv, f, eot)?;
        best.update(&x_adv, &lg.logits, &lg.loss, goal)?;
        let mut grad = lg.gradient;
        let mut loss_best = lg.loss;
        let mut x_best = x_adv.clone();
        let mut grad_best = grad.clone();
        // The share of coordinates a step moves, and the sparsity it came from.
        let (mut topk, mut sparsity_old) = if warm {
            let s = nonzero(&x_adv)?;
            (
                s.iter().map(|v| v / per as f64 / 1.5).collect::<Vec<_>>(),
                s,
            )
        } else {
            (vec![0.2; n], vec![per as f64; n])
        };
        let mut step = vec![radius; n];
        let check_every = ((0.04 * steps as f64) as usize).max(1);
        for i in 0..steps {
            let g = grad
                .flatten_from(1)?
                .to_dtype(DType::F32)?
                .to_vec2::<f32>()?;
            let mut direction = vec![0f32; n * per];
            for (r, row) in g.iter().enumerate() {
                let mut magnitudes: Vec<f32> = row.iter().map(|v| v.abs()).collect();
                magnitudes.sort_by(f32::total_cmp);
                let index = ((1.0 - topk[r]) * per as f64).clamp(0.0, (per - 1) as f64) as usize;
                let threshold = magnitudes[index];
                let moved: Vec<usize> = (0..per)
                    .filter(|&j| row[j].abs() >= threshold && row[j] != 0.0)
                    .collect();
                let share = step[r] as f32 / (moved.len() as f32 + 1e-10);
                for j in moved {
                    direction[r * per + j] = share * row[j].signum();
                }
            }
            let direction =
                Tensor::from_vec(direction, x.shape(), x.device())?.to_dtype(x.dtype())?;
            x_adv = project_and_clip(x, &(&x_adv + direction)?, Norm::L1, radius, bounds)?;
            let lg = ctx.expected_loss_gradient(&x_adv, f, eot)?;
            best.update(&x_adv, &lg.logits, &lg.loss, goal)?;
            grad = lg.gradient;
            let improved: Vec<bool> = (0..n).map(|r| lg.loss[r] > loss_best[r]).collect();
            for r in 0..n {
                if improved[r] {
                    loss_best[r] = lg.loss[r];
                }
            }
            if improved.iter().any(|b| *b) {
                x_best = where_rows(&improved, &x_adv, &x_best)?;
                grad_best = where_rows(&improved, &grad, &grad_best)?;
            }
            if (i + 1) % check_every == 0 {
                let sparsity = nonzero(&x_best)?;
                let mut restart = vec![false; n];
                for r in 0..n {
                    // Fewer moved coordinates than before: restart from the best
                    // point with the full step; otherwise shrink the step.
                    restart[r] = sparsity[r] / sparsity_old[r] < 0.95;
                    topk[r] = sparsity[r] / per as f64 / 1.5;
                    step[r] = if restart[r] { radius } else { step[r] / 1.5 }
                        .clamp(radius / 10.0, radius);
                }
                sparsity_old = sparsity;
                if restart.iter().any(|b| *b) {
                    x_adv = where_rows(&restart, &x_best, &x_adv)?;
                    grad = where_rows(&restart, &grad_best, &grad)?;
                }
            }
        }
        Ok(x_best)
    }
}

impl Attack for Apgd {
    fn name(&self) -> &str {
        self.name
    }
    fn norm(&self) -> Norm {
        self.norm
    }
    fn parameters(&self) -> serde_json::Value {
        gauntlet_record::json_value(&self.params)
    }
    fn is_randomized(&self) -> bool {
        true
    }
    fn run(
        &self,
        ctx: &mut AttackContext,
        x: &Tensor,
        goal: &Goal,
        eps: f64,
        seed: &SeedStream,
    ) -> Result<Tensor> {
        let mut best = BestIterate::new(x)?;
        if self.params.eot_samples > 1 || ctx.model().is_random() {
            // A random model: keep the latest point judged adversarial.
            best = best.following_latest();
        }
        // apgd-t's targets: the classes ranked 2nd, 3rd, ... on the clean input.
        let (ranked, runs) = if self.targeted {
            let (order, runs) = ctx.ranked_classes(x, self.params.target_classes)?;
            (Some(order), runs)
        } else {
            (None, 1)
        };
        for run in 0..runs {
            for restart in 0..self.params.restarts {
                let stream = seed.derive(&format!("target-{run}/restart-{restart}"));
                let attacked =
                    best.attack_remaining(x, goal, |sub_x, sub_goal, remaining, sub_best| {
                        let targets = match (&ranked, sub_goal) {
                            (Some(order), _) => {
                                let t: Vec<u32> =
                                    remaining.iter().map(|&i| order[i][run + 1]).collect();
                                Some(Tensor::from_vec(t, remaining.len(), x.device())?)
                            }
                            (None, Goal::Targeted { .. }) => sub_goal.targets_tensor(x.device())?,
                            (None, Goal::Untargeted { .. }) => None,
                        };
                        self.run_once(
                            ctx,
                            sub_x,
                            sub_goal,
                            targets.as_ref(),
                            eps,
                            &stream,
                            sub_best,
                        )
                    })?;
                if !attacked {
                    return Ok(best.into_adversarial());
                }
            }
        }
        Ok(best.into_adversarial())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_follow_the_paper_schedule() {
        // p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99, 1.05; ceil(p·100) in
        // binary floating point gives 58 for 0.57 (0.5700000000000001), exactly as
        // the reference implementation computes it.
        assert_eq!(Apgd::checkpoints(100), vec![22, 41, 58, 70, 80, 87, 93, 99]);
    }
}
