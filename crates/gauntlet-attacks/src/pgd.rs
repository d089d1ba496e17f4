//! The projected-gradient family: FGSM, BIM, PGD (L∞, L2) and MI-FGSM are one
//! loop with different settings.

use candle_core::{Tensor, D};
use gauntlet_core::{Norm, SeedStream};
use serde::{Deserialize, Serialize};

use crate::context::AttackContext;
use crate::losses::{objective, Loss};
use crate::ops::{ascent_direction, per_sample, project_and_clip, random_in_ball};
use crate::tracker::BestIterate;
use crate::{Attack, Error, Goal, Result};

/// Step size of an iterative attack.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepSize {
    /// A multiple of ε (Foolbox's `rel_stepsize`).
    Relative(f64),
    /// A fixed value in input units.
    Absolute(f64),
}

impl StepSize {
    fn at(self, eps: f64) -> f64 {
        match self {
            StepSize::Relative(r) => r * eps,
            StepSize::Absolute(a) => a,
        }
    }
}

/// Parameters of the PGD family. Every field has the documented default of the
/// preset it belongs to; unknown keys are rejected.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgdParams {
    /// Gradient steps per restart.
    pub steps: usize,
    /// Step size (relative to ε or absolute).
    pub step_size: StepSize,
    /// Start from a uniformly random point of the ε-ball.
    pub random_start: bool,
    /// Independent runs; each further run attacks only samples not yet broken.
    pub restarts: usize,
    /// MI-FGSM momentum decay μ (gradients L1-normalised and accumulated); `None`: plain PGD.
    pub momentum: Option<f64>,
    /// Loss ascended.
    pub loss: Loss,
}

/// An attack of the PGD family.
#[derive(Clone, Debug)]
pub struct Pgd {
    name: &'static str,
    norm: Norm,
    params: PgdParams,
}

impl Pgd {
    /// FGSM (Goodfellow et al. 2015, "Explaining and Harnessing Adversarial
    /// Examples"): one signed-gradient step of size ε from the clean input.
    pub fn fgsm() -> Self {
        Self::new(
            "fgsm",
            Norm::Linf,
            PgdParams {
                steps: 1,
                step_size: StepSize::Relative(1.0),
                random_start: false,
                restarts: 1,
                momentum: None,
                loss: Loss::Ce,
            },
        )
    }

    /// BIM / I-FGSM (Kurakin et al. 2016, "Adversarial examples in the physical
    /// world"): 10 signed steps of ε/8 from the clean input, projected to the ball.
    pub fn bim() -> Self {
        Self::new(
            "bim",
            Norm::Linf,
            PgdParams {
                steps: 10,
                step_size: StepSize::Relative(0.125),
                random_start: false,
                restarts: 1,
                momentum: None,
                loss: Loss::Ce,
            },
        )
    }

    /// PGD-L∞ (Madry et al. 2018, "Towards Deep Learning Models Resistant to
    /// Adversarial Attacks"): uniform random start, 40 steps of ε/30 (Foolbox's
    /// default, Madry's 0.01 at ε = 0.3), one restart.
    pub fn pgd_linf() -> Self {
        Self::new(
            "pgd-linf",
            Norm::Linf,
            PgdParams {
                steps: 40,
                step_size: StepSize::Relative(1.0 / 30.0),
                random_start: true,
                restarts: 1,
                momentum: None,
                loss: Loss::Ce,
            },
        )
    }

    /// PGD-L2 (Madry et al. 2018): uniform random start in the L2 ball, 50 steps of
    /// 0.1·ε along the L2-normalised gradient, one restart.
    pub fn pgd_l2() -> Self {
        Self::new(
            "pgd-l2",
            Norm::L2,
            PgdParams {
                steps: 50,
                step_size: StepSize::Relative(0.1),
                random_start: true,
                restarts: 1,
                momentum: None,
                loss: Loss::Ce,
            },
        )
    }

    /// MI-FGSM (Dong et al. 2018, "Boosting Adversarial Attacks with Momentum"):
    /// 10 steps of ε/10, momentum decay μ = 1 on L1-normalised gradients.
    pub fn mifgsm() -> Self {
        Self::new(
            "mifgsm",
            Norm::Linf,
            PgdParams {
                steps: 10,
                step_size: StepSize::Relative(0.1),
                random_start: false,
                restarts: 1,
                momentum: Some(1.0),
                loss: Loss::Ce,
            },
        )
    }

    fn new(name: &'static str, norm: Norm, params: PgdParams) -> Self {
        Self { name, norm, params }
    }

    /// Replace the parameters (validated).
    pub fn with_params(mut self, params: PgdParams) -> Result<Self> {
        let bad = |m: String| {
            Err(Error::Param {
                attack: self.name.into(),
                message: m,
            })
        };
        if params.steps == 0 {
            return bad("steps must be at least 1".into());
        }
        if params.restarts == 0 {
            return bad("restarts must be at least 1".into());
        }
        let size = match params.step_size {
            StepSize::Relative(v) | StepSize::Absolute(v) => v,
        };
        if !(size.is_finite() && size > 0.0) {
            return bad(format!("step_size {size} must be finite and > 0"));
        }
        if let Some(mu) = params.momentum {
            if !(mu.is_finite() && mu >= 0.0) {
                return bad(format!("momentum {mu} must be finite and >= 0"));
            }
        }
        self.params = params;
        Ok(self)
    }

    /// The parameters.
    pub fn params(&self) -> &PgdParams {
        &self.params
    }

    fn run_once(
        &self,
        ctx: &mut AttackContext,
        x: &Tensor,
        goal: &Goal,
        eps: f64,
        seed: &SeedStream,
        best: &mut BestIterate,
    ) -> Result<()> {
        let bounds = ctx.model().bounds();
        let labels = goal.labels_tensor(x.device())?;
        let targets = goal.targets_tensor(x.device())?;
        let loss = self.params.loss;
        let ascent = |logits: &Tensor| objective(loss, logits, &labels, targets.as_ref());
        let alpha = self.params.step_size.at(eps);
        let mut adv = if self.params.random_start && eps > 0.0 {
            project_and_clip(
                x,
                &(x + random_in_ball(x, self.norm, eps, &seed.derive("start"))?)?,
                self.norm,
                eps,
                bounds,
            )?
        } else {
            x.clone()
        };
        let mut velocity: Option<Tensor> = None;
        for _ in 0..self.params.steps {
            let lg = ctx.loss_gradient(&adv, |l| Ok(ascent(l)?))?;
            best.update(&adv, &lg.logits, &lg.loss, goal)?;
            let mut g = lg.gradient;
            if let Some(mu) = self.params.momentum {
                let l1 = (g.abs()?.flatten_from(1)?.mean(D::Minus1)? + 1e-12)?;
                let normalised = g.broadcast_div(&per_sample(&l1, &g)?)?;
                let v = match velocity.take() {
                    Some(v) => ((v * mu)? + normalised)?,
                    None => normalised,
                };
                g = v.clone();
                velocity = Some(v);
            }
            adv = (adv + (ascent_direction(&g, self.norm)? * alpha)?)?;
            adv = project_and_clip(x, &adv, self.norm, eps, bounds)?;
        }
        let logits = ctx.logits(&adv)?;
        let final_loss = ascent(&logits)?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?;
        best.update(&adv, &logits, &final_loss, goal)?;
        Ok(())
    }
}

impl Attack for Pgd {
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
        self.params.random_start
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
        for restart in 0..self.params.restarts {
            let stream = seed.derive(&format!("restart-{restart}"));
            let attacked = best.attack_remaining(x, goal, |sub_x, sub_goal, _, sub_best| {
                self.run_once(ctx, sub_x, sub_goal, eps, &stream, sub_best)
            })?;
            if !attacked {
                break;
            }
        }
        Ok(best.into_adversarial())
    }
}
