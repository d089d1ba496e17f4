//! Square Attack, L∞ (Andriushchenko et al. 2020, "Square Attack: a query-efficient
//! black-box adversarial attack via random search"): score-based, forward passes
//! only. Starts from vertical stripes of ±ε and repeatedly proposes a random
//! square window set to ±ε per channel, keeping proposals that lower the margin.

use candle_core::Tensor;
use gauntlet_core::{Norm, SeedStream};
use serde::{Deserialize, Serialize};

use crate::context::AttackContext;
use crate::losses::margin;
use crate::{Attack, Error, Goal, Result};

/// Parameters; defaults are AutoAttack's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SquareParams {
    /// Query budget per sample (default 5000).
    pub queries: usize,
    /// Initial fraction of pixels in the square (default 0.8), halved on a fixed schedule.
    pub p_init: f64,
}

/// The Square attack.
#[derive(Clone, Debug)]
pub struct Square {
    params: SquareParams,
}

impl Default for Square {
    fn default() -> Self {
        Self {
            params: SquareParams {
                queries: 5000,
                p_init: 0.8,
            },
        }
    }
}

impl Square {
    /// The parameters.
    pub fn params(&self) -> &SquareParams {
        &self.params
    }

    /// Replace the parameters (validated).
    pub fn with_params(mut self, params: SquareParams) -> Result<Self> {
        if params.queries == 0 || !(params.p_init > 0.0 && params.p_init <= 1.0) {
            return Err(Error::Param {
                attack: "square-linf".into(),
                message: "queries must be >= 1 and p_init in (0, 1]".into(),
            });
        }
        self.params = params;
        Ok(self)
    }

    /// The paper's schedule for the square's pixel fraction, on a 10 000-query scale.
    fn p_at(&self, query: usize) -> f64 {
        let it = (query as f64 / self.params.queries as f64 * 10000.0) as usize;
        let halvings = [10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000]
            .iter()
            .filter(|&&t| it > t)
            .count();
        self.params.p_init / f64::powi(2.0, halvings as i32)
    }
}

/// Margin to minimise: `z_y − max_{i≠y} z_i` (untargeted) or `max_{i≠t} z_i − z_t`
/// (targeted); the goal is reached once it is negative.
fn goal_margin(logits: &Tensor, goal: &Goal) -> Result<Vec<f32>> {
    let device = logits.device();
    let m = match goal {
        Goal::Untargeted { .. } => margin(logits, &goal.labels_tensor(device)?)?,
        Goal::Targeted { .. } => {
            let t = goal
                .targets_tensor(device)?
                .ok_or_else(|| Error::Invalid("targeted goal without targets".into()))?;
            margin(logits, &t)?.neg()?
        }
    };
    Ok(m.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?)
}

impl Attack for Square {
    fn name(&self) -> &str {
        "square-linf"
    }
    fn norm(&self) -> Norm {
        Norm::Linf
    }
    fn parameters(&self) -> serde_json::Value {
        gauntlet_record::json_value(&self.params)
    }
    fn is_randomized(&self) -> bool {
        true
    }
    fn uses_gradients(&self) -> bool {
        false
    }
    fn run(
        &self,
        ctx: &mut AttackContext,
        x: &Tensor,
        goal: &Goal,
        eps: f64,
        seed: &SeedStream,
    ) -> Result<Tensor> {
        let [n, c, h, w] = match x.dims() {
            [n, c, h, w] => [*n, *c, *h, *w],
            other => {
                return Err(Error::Invalid(format!(
                    "square-linf needs NCHW input, got {other:?}"
                )))
            }
        };
        let bounds = ctx.model().bounds();
        let (lo, hi) = (bounds.min as f32, bounds.max as f32);
        let eps = eps as f32;
        let clean = x
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?;
        let per = c * h * w;
        let to_tensor = |values: &[f32], rows: usize| -> Result<Tensor> {
            Ok(
                Tensor::from_vec(values.to_vec(), (rows, c, h, w), x.device())?
                    .to_dtype(x.dtype())?,
            )
        };
        let apply = |delta: &[f32], i: usize, out: &mut Vec<f32>| {
            for k in 0..per {
                out.push((clean[i * per + k] + delta[k]).clamp(lo, hi));
            }
        };
        // Vertical stripes: one random sign per (sample, channel, column).
        let stripes = seed.derive("init").signs_f32(n * c * w);
        let mut delta = vec![0f32; n * per];
        for i in 0..n {
            for ch in 0..c {
                for row in 0..h {
                    for col in 0..w {
                        delta[i * per + (ch * h + row) * w + col] =
                            eps * stripes[(i * c + ch) * w + col];
                    }
                }
            }
        }
        let mut images = Vec::with_capacity(n * per);
        (0..n).for_each(|i| apply(&delta[i * per..(i + 1) * per], i, &mut images));
        let mut best_margin = goal_margin(&ctx.logits(&to_tensor(&images, n)?)?, goal)?;
        let mut best_images = images;

        for query in 1..self.params.queries {
            let active: Vec<usize> = (0..n).filter(|&i| best_margin[i] >= 0.0).collect();
            if active.is_empty() {
                break;
            }
            let side = ((self.p_at(query) * (h * w) as f64).sqrt().round() as usize)
                .clamp(1, h.min(w).saturating_sub(1).max(1));
            // Bound to the samples still attacked, so each sample's squares do not
            // depend on which others are still in play.
            let step = seed.derive(&format!("query-{query}")).rows(&active);
            let rows = step.derive("row").below(active.len(), h - side + 1);
            let cols = step.derive("col").below(active.len(), w - side + 1);
            let signs = step.derive("sign").signs_f32(active.len() * c);
            let mut proposals = Vec::with_capacity(active.len() * per);
            let mut proposal_deltas = Vec::with_capacity(active.len());
            for (a, &i) in active.iter().enumerate() {
                let mut d = delta[i * per..(i + 1) * per].to_vec();
                for ch in 0..c {
                    for row in rows[a]..rows[a] + side {
                        for col in cols[a]..cols[a] + side {
                            d[(ch * h + row) * w + col] = eps * signs[a * c + ch];
                        }
                    }
                }
                apply(&d, i, &mut proposals);
                proposal_deltas.push(d);
            }
            let margins = goal_margin(
                &ctx.logits(&to_tensor(&proposals, active.len())?)?,
                &goal.select(&active),
            )?;
            for (a, &i) in active.iter().enumerate() {
                if margins[a] < best_margin[i] {
                    best_margin[i] = margins[a];
                    delta[i * per..(i + 1) * per].copy_from_slice(&proposal_deltas[a]);
                    best_images[i * per..(i + 1) * per]
                        .copy_from_slice(&proposals[a * per..(a + 1) * per]);
                }
            }
        }
        to_tensor(&best_images, n)
    }
}
