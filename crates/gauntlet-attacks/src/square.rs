//! Square Attack (Andriushchenko et al. 2020, "Square Attack: a query-efficient
//! black-box adversarial attack via random search"): score-based, forward passes
//! only, keeping proposals that lower the margin.
//!
//! L∞: starts from vertical stripes of ±ε and repeatedly sets a random square
//! window to ±ε per channel. L2: starts from a grid of "pseudo-Gaussian" squares
//! (centred bumps of ±1/r² rings) scaled to ε, and each step moves the
//! perturbation's mass from a second random window into the first, reshaped as a
//! fresh bump of random sign per channel, so ‖δ‖₂ stays at ε.

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

/// The Square attack in one norm.
#[derive(Clone, Debug)]
pub struct Square {
    norm: Norm,
    params: SquareParams,
}

impl Default for Square {
    fn default() -> Self {
        Self::new(Norm::Linf)
    }
}

impl Square {
    /// Square in `norm` (`square-linf` or `square-l2`); L1 has no Square attack.
    pub fn new(norm: Norm) -> Self {
        Self {
            norm,
            params: SquareParams {
                queries: 5000,
                p_init: 0.8,
            },
        }
    }

    /// The parameters.
    pub fn params(&self) -> &SquareParams {
        &self.params
    }

    /// Replace the parameters (validated).
    pub fn with_params(mut self, params: SquareParams) -> Result<Self> {
        if params.queries == 0 || !(params.p_init > 0.0 && params.p_init <= 1.0) {
            return Err(Error::Param {
                attack: self.name().into(),
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
        match self.norm {
            Norm::L2 => "square-l2",
            _ => "square-linf",
        }
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
                    "{} needs NCHW input, got {other:?}",
                    self.name()
                )))
            }
        };
        if self.norm == Norm::L2 {
            return self.run_l2(ctx, x, goal, eps, seed, [n, c, h, w]);
        }
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

/// A centred bump on an `rows × cols` window: rings at Chebyshev distance r from
/// the centre weigh Σ_{k ≥ r} 1/(k+1)², unit L2 norm.
fn bump(rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows * cols];
    let (centre_r, centre_c) = (rows / 2, cols / 2);
    for k in 0..rows.max(cols).div_ceil(2) + 1 {
        let weight = 1.0 / ((k + 1) * (k + 1)) as f32;
        let (r0, c0) = (centre_r.saturating_sub(k), centre_c.saturating_sub(k));
        let (r1, c1) = ((centre_r + k + 1).min(rows), (centre_c + k + 1).min(cols));
        for r in r0..r1 {
            for c in c0..c1 {
                out[r * cols + c] += weight;
            }
        }
    }
    normalise(&mut out);
    out
}

/// The initial pattern's tile: a bump over the top half minus one over the
/// bottom half, transposed when `transpose`, unit L2 norm.
fn split_bump(side: usize, transpose: bool) -> Vec<f32> {
    let top = side / 2;
    let upper = bump(top, side);
    let lower = bump(side - top, side);
    let mut tile: Vec<f32> = upper
        .iter()
        .copied()
        .chain(lower.iter().map(|v| -v))
        .collect();
    if transpose {
        tile = (0..side * side)
            .map(|k| tile[(k % side) * side + k / side])
            .collect();
    }
    normalise(&mut tile);
    tile
}

fn normalise(values: &mut [f32]) {
    let length = values.iter().map(|v| v * v).sum::<f32>().sqrt();
    if length > 0.0 {
        values.iter_mut().for_each(|v| *v /= length);
    }
}

impl Square {
    /// The L2 variant (the paper's Algorithm 3, as in AutoAttack).
    fn run_l2(
        &self,
        ctx: &mut AttackContext,
        x: &Tensor,
        goal: &Goal,
        eps: f64,
        seed: &SeedStream,
        [n, c, h, w]: [usize; 4],
    ) -> Result<Tensor> {
        let bounds = ctx.model().bounds();
        let (lo, hi) = (bounds.min as f32, bounds.max as f32);
        let eps = eps as f32;
        let per = c * h * w;
        let clean = x
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?;
        let to_tensor = |values: &[f32], rows: usize| -> Result<Tensor> {
            Ok(
                Tensor::from_vec(values.to_vec(), (rows, c, h, w), x.device())?
                    .to_dtype(x.dtype())?,
            )
        };
        let at = |ch: usize, row: usize, col: usize| (ch * h + row) * w + col;
        // Scale a perturbation to ‖δ‖₂ = ε and clip the image into the box.
        let realise = |i: usize, delta: &[f32]| -> Vec<f32> {
            let length = delta.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            (0..per)
                .map(|k| (clean[i * per + k] + delta[k] * eps / length).clamp(lo, hi))
                .collect()
        };
        // Initial grid of split bumps (side h/5, centred) with random signs per
        // channel and a random orientation per tile.
        let side = (h / 5).max(1);
        let (tiles_down, tiles_across) = (h / side, w / side);
        let tiles = tiles_down * tiles_across;
        let (top, left) = ((h - side * tiles_down) / 2, (w - side * tiles_across) / 2);
        let init = seed.derive("init");
        let signs = init.derive("sign").signs_f32(n * c * tiles);
        let flips = init.derive("transpose").signs_f32(n * tiles);
        let mut images = Vec::with_capacity(n * per);
        for i in 0..n {
            let mut delta = vec![0f32; per];
            for t in 0..tiles {
                let (row, col) = (
                    top + (t / tiles_across) * side,
                    left + (t % tiles_across) * side,
                );
                let tile = split_bump(side, flips[i * tiles + t] > 0.0);
                for ch in 0..c {
                    let sign = signs[(i * c + ch) * tiles + t];
                    for r in 0..side {
                        for q in 0..side {
                            delta[at(ch, row + r, col + q)] += sign * tile[r * side + q];
                        }
                    }
                }
            }
            images.extend(realise(i, &delta));
        }
        let mut best_margin = goal_margin(&ctx.logits(&to_tensor(&images, n)?)?, goal)?;
        let mut best_images = images;
        for query in 1..self.params.queries {
            let active: Vec<usize> = (0..n).filter(|&i| best_margin[i] >= 0.0).collect();
            if active.is_empty() {
                break;
            }
            let mut side = ((self.p_at(query) * (h * w) as f64).sqrt().round() as usize)
                .max(3)
                .min(h.min(w));
            if side % 2 == 0 && side < h.min(w) {
                side += 1;
            }
            let step = seed.derive(&format!("query-{query}")).rows(&active);
            let rows = step.derive("row").below(active.len(), h - side + 1);
            let cols = step.derive("col").below(active.len(), w - side + 1);
            let rows2 = step.derive("row2").below(active.len(), h - side + 1);
            let cols2 = step.derive("col2").below(active.len(), w - side + 1);
            let signs = step.derive("sign").signs_f32(active.len() * c);
            let shape = bump(side, side);
            let mut proposals = Vec::with_capacity(active.len() * per);
            for (a, &i) in active.iter().enumerate() {
                let delta: Vec<f32> = (0..per)
                    .map(|k| best_images[i * per + k] - clean[i * per + k])
                    .collect();
                let in_first = |r: usize, q: usize| {
                    (rows[a]..rows[a] + side).contains(&r) && (cols[a]..cols[a] + side).contains(&q)
                };
                let in_second = |r: usize, q: usize| {
                    (rows2[a]..rows2[a] + side).contains(&r)
                        && (cols2[a]..cols2[a] + side).contains(&q)
                };
                let total: f32 = delta.iter().map(|v| v * v).sum();
                // The mass in both windows (all channels) is what gets redistributed,
                // plus whatever the budget still allows.
                let mut windows = 0f32;
                for ch in 0..c {
                    for r in 0..h {
                        for q in 0..w {
                            if in_first(r, q) || in_second(r, q) {
                                windows += delta[at(ch, r, q)].powi(2);
                            }
                        }
                    }
                }
                let spare = (eps * eps - total).max(0.0) / c as f32;
                let mut next = delta.clone();
                for ch in 0..c {
                    // The first window's current content, normalised, plus a new
                    // bump of random sign; rescaled to its share of the mass.
                    let mut old = vec![0f32; side * side];
                    for r in 0..side {
                        for q in 0..side {
                            old[r * side + q] = delta[at(ch, rows[a] + r, cols[a] + q)];
                        }
                    }
                    normalise(&mut old);
                    let mut fresh: Vec<f32> = shape
                        .iter()
                        .zip(&old)
                        .map(|(s, o)| s * signs[a * c + ch] + o)
                        .collect();
                    normalise(&mut fresh);
                    let scale = (spare + windows).sqrt();
                    for r in 0..side {
                        for q in 0..side {
                            next[at(ch, rows2[a] + r, cols2[a] + q)] = 0.0;
                        }
                    }
                    for r in 0..side {
                        for q in 0..side {
                            next[at(ch, rows[a] + r, cols[a] + q)] = fresh[r * side + q] * scale;
                        }
                    }
                }
                proposals.extend(realise(i, &next));
            }
            let margins = goal_margin(
                &ctx.logits(&to_tensor(&proposals, active.len())?)?,
                &goal.select(&active),
            )?;
            for (a, &i) in active.iter().enumerate() {
                if margins[a] < best_margin[i] {
                    best_margin[i] = margins[a];
                    best_images[i * per..(i + 1) * per]
                        .copy_from_slice(&proposals[a * per..(a + 1) * per]);
                }
            }
        }
        to_tensor(&best_images, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bumps_have_unit_norm_and_peak_at_the_centre() {
        let b = bump(5, 5);
        let length: f32 = b.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((length - 1.0).abs() < 1e-5);
        let peak = b.iter().copied().fold(f32::MIN, f32::max);
        assert_eq!(b[2 * 5 + 2], peak);
        assert!(b[0] > 0.0 && b[0] < peak);
        let split = split_bump(6, false);
        assert!(split[..18].iter().all(|v| *v > 0.0) && split[18..].iter().all(|v| *v < 0.0));
        let flipped = split_bump(6, true);
        assert!((flipped[1] - split[6]).abs() < 1e-7, "transposed");
    }
}
