//! Evasion attacks and their registry.
//!
//! Every attack implements [`Attack`]: it proposes adversarial inputs. Projection
//! onto the ε-ball and into the input bounds, rejection of NaNs, and the verdict of
//! success (a fresh forward pass) happen in one place, [`run_attack`], outside
//! every attack (Foolbox's `__call__` idea), so no attack can report a perturbation
//! it did not respect.
//!
//! Registry names: see [`registry::NAMES`].

mod apgd;
mod context;
mod error;
mod fab;
mod fmn;
pub mod losses;
mod minimal;
pub mod ops;
mod pgd;
pub mod registry;
mod square;
mod tracker;

use candle_core::{Device, Tensor};
use gauntlet_core::{Classifier, Norm, SeedStream};

pub use apgd::{Apgd, ApgdParams};
pub use context::{AttackContext, LossGradient};
pub use error::{Error, Result};
pub use fab::{project_onto_halfspace, Fab, FabParams, FAB_VARIANTS};
pub use fmn::{Fmn, FmnParams};
pub use losses::Loss;
pub use minimal::{CarliniWagner, CwParams, DeepFool, DeepFoolParams};
pub use pgd::{Pgd, PgdParams, StepSize};
pub use registry::{build_attack, NAMES};
pub use square::{Square, SquareParams};
pub use tracker::BestIterate;

/// Whom the attack tries to fool, and how.
#[derive(Clone, Debug, PartialEq)]
pub enum Goal {
    /// Any wrong class will do.
    Untargeted {
        /// True labels.
        labels: Vec<u32>,
    },
    /// A specific class per sample.
    Targeted {
        /// True labels.
        labels: Vec<u32>,
        /// Target class per sample.
        targets: Vec<u32>,
    },
}

impl Goal {
    /// True labels.
    pub fn labels(&self) -> &[u32] {
        match self {
            Goal::Untargeted { labels } | Goal::Targeted { labels, .. } => labels,
        }
    }

    /// Whether predicting `prediction` for sample `i` achieves the goal.
    pub fn is_success(&self, i: usize, prediction: u32) -> bool {
        match self {
            Goal::Untargeted { labels } => prediction != labels[i],
            Goal::Targeted { targets, .. } => prediction == targets[i],
        }
    }

    /// Labels as a `(N,)` u32 tensor.
    pub fn labels_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_vec(
            self.labels().to_vec(),
            self.labels().len(),
            device,
        )?)
    }

    /// Targets as a tensor, for targeted goals.
    pub fn targets_tensor(&self, device: &Device) -> Result<Option<Tensor>> {
        match self {
            Goal::Untargeted { .. } => Ok(None),
            Goal::Targeted { targets, .. } => Ok(Some(Tensor::from_vec(
                targets.clone(),
                targets.len(),
                device,
            )?)),
        }
    }

    /// The goal restricted to `indices`.
    pub fn select(&self, indices: &[usize]) -> Goal {
        let pick = |v: &[u32]| indices.iter().map(|&i| v[i]).collect::<Vec<_>>();
        match self {
            Goal::Untargeted { labels } => Goal::Untargeted {
                labels: pick(labels),
            },
            Goal::Targeted { labels, targets } => Goal::Targeted {
                labels: pick(labels),
                targets: pick(targets),
            },
        }
    }
}

/// How an attack's result is judged (the record's vocabulary).
pub use gauntlet_record::AttackKind;

/// An evasion attack.
pub trait Attack: Send + Sync {
    /// Unique registry name, e.g. `pgd-linf`.
    fn name(&self) -> &str;
    /// The norm its perturbations are measured in.
    fn norm(&self) -> Norm;
    /// Fixed-ε or minimal-perturbation.
    fn kind(&self) -> AttackKind {
        AttackKind::FixedEpsilon
    }
    /// The full resolved parameters, for the record.
    fn parameters(&self) -> serde_json::Value;
    /// Whether the result depends on the seed.
    fn is_randomized(&self) -> bool;
    /// Whether it uses gradients (white-box) or only forward passes (black-box).
    fn uses_gradients(&self) -> bool {
        true
    }
    /// Propose adversarial inputs for `x` (same shape). `eps` is ignored by
    /// minimal-perturbation attacks.
    fn run(
        &self,
        ctx: &mut AttackContext,
        x: &Tensor,
        goal: &Goal,
        eps: f64,
        seed: &SeedStream,
    ) -> Result<Tensor>;
}

/// The checked outcome of an attack on one batch.
#[derive(Clone, Debug)]
pub struct AttackOutcome {
    /// Adversarial inputs: projected onto the ball, clipped to the bounds.
    pub adversarial: Tensor,
    /// Per sample: the adversarial input achieves the goal (fresh forward pass).
    pub success: Vec<bool>,
    /// Per sample: perturbation norm in the attack's norm.
    pub norms: Vec<f64>,
    /// Per sample: prediction on the adversarial input.
    pub predictions: Vec<u32>,
    /// Samples whose proposal was rejected (NaN or Inf) and replaced by the clean input.
    pub rejected: usize,
    /// Per-sample forward evaluations the attack used.
    pub forwards: u64,
    /// Per-sample gradient evaluations the attack used.
    pub gradients: u64,
}

/// Tolerance on ‖δ‖ ≤ ε for float rounding.
pub const NORM_TOLERANCE: f64 = 1e-5;

/// Run an attack and judge it: the one place where perturbations are projected,
/// clipped, checked and counted as successes.
pub fn run_attack(
    attack: &dyn Attack,
    model: &dyn Classifier,
    x: &Tensor,
    goal: &Goal,
    eps: f64,
    seed: &SeedStream,
) -> Result<AttackOutcome> {
    let n = x.dim(0)?;
    if goal.labels().len() != n {
        return Err(Error::Invalid(format!(
            "{} labels for {n} inputs",
            goal.labels().len()
        )));
    }
    let fixed = attack.kind() == AttackKind::FixedEpsilon;
    if fixed && !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::Invalid(format!(
            "epsilon {eps} must be finite and >= 0"
        )));
    }
    let bounds = model.bounds();
    let mut ctx = AttackContext::new(model);
    let proposal = attack.run(&mut ctx, x, goal, eps, seed)?;
    if proposal.dims() != x.dims() {
        return Err(Error::Invalid(format!(
            "{} returned shape {:?} for input {:?}",
            attack.name(),
            proposal.dims(),
            x.dims()
        )));
    }
    // Refuse non-finite proposals: such samples fall back to the clean input.
    let flat = proposal
        .flatten_from(1)?
        .to_dtype(candle_core::DType::F32)?
        .to_vec2::<f32>()?;
    let finite: Vec<bool> = flat
        .iter()
        .map(|row| row.iter().all(|v| v.is_finite()))
        .collect();
    let rejected = finite.iter().filter(|f| !**f).count();
    let proposal = if rejected > 0 {
        ops::where_rows(&finite, &proposal.nan_to_zero()?, x)?
    } else {
        proposal
    };
    let adversarial = if fixed {
        ops::project_and_clip(x, &proposal, attack.norm(), eps, bounds)?
    } else {
        ops::clip(&proposal, bounds)?
    };
    let norms = ops::norms_vec(&(&adversarial - x)?, attack.norm())?;
    let logits = model.logits(&adversarial.detach())?;
    let predictions = ops::argmax(&logits)?;
    let success = (0..n)
        .map(|i| {
            finite[i]
                && goal.is_success(i, predictions[i])
                && (!fixed || norms[i] <= eps * (1.0 + NORM_TOLERANCE) + NORM_TOLERANCE)
        })
        .collect();
    Ok(AttackOutcome {
        adversarial,
        success,
        norms,
        predictions,
        rejected,
        forwards: ctx.forwards(),
        gradients: ctx.gradients(),
    })
}

trait NanToZero {
    fn nan_to_zero(&self) -> Result<Tensor>;
}

impl NanToZero for Tensor {
    fn nan_to_zero(&self) -> Result<Tensor> {
        // NaN != NaN: keep values equal to themselves, zero elsewhere (then clamp Inf).
        let ok = self.eq(self)?;
        Ok(ok
            .where_cond(self, &self.zeros_like()?)?
            .clamp(-1e30, 1e30)?)
    }
}
