//! Minimal-perturbation attacks: they search for the smallest adversarial
//! perturbation and report its norm per sample, which gives the whole
//! accuracy-vs-ε curve from one run.

use candle_core::{DType, Tensor};
use gauntlet_core::{Norm, SeedStream};
use serde::{Deserialize, Serialize};

use crate::context::AttackContext;
use crate::losses::margin;
use crate::ops::{argmax, norms_vec, where_rows};
use crate::{Attack, AttackKind, Error, Goal, Result};

/// DeepFool parameters (the paper's defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeepFoolParams {
    /// Maximum iterations (default 50).
    pub steps: usize,
    /// Overshoot factor applied to the accumulated step (default 0.02).
    pub overshoot: f64,
}

/// DeepFool, L2 (Moosavi-Dezfooli et al. 2016, "DeepFool: a simple and accurate
/// method to fool deep neural networks"): linearise the classifier around the
/// current point and step to the nearest linearised decision boundary, until the
/// label flips. Untargeted only.
#[derive(Clone, Debug)]
pub struct DeepFool {
    params: DeepFoolParams,
}

impl Default for DeepFool {
    fn default() -> Self {
        Self {
            params: DeepFoolParams {
                steps: 50,
                overshoot: 0.02,
            },
        }
    }
}

impl DeepFool {
    /// The parameters.
    pub fn params(&self) -> &DeepFoolParams {
        &self.params
    }
    /// Replace the parameters (validated).
    pub fn with_params(mut self, params: DeepFoolParams) -> Result<Self> {
        if params.steps == 0 || !(params.overshoot >= 0.0 && params.overshoot.is_finite()) {
            return Err(Error::Param {
                attack: "deepfool".into(),
                message: "steps must be >= 1 and overshoot finite and >= 0".into(),
            });
        }
        self.params = params;
        Ok(self)
    }
}

impl Attack for DeepFool {
    fn name(&self) -> &str {
        "deepfool"
    }
    fn norm(&self) -> Norm {
        Norm::L2
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
        if matches!(goal, Goal::Targeted { .. }) {
            return Err(Error::Invalid("deepfool is untargeted only".into()));
        }
        let bounds = ctx.model().bounds();
        let n = x.dim(0)?;
        let per: usize = x.dims()[1..].iter().product();
        let labels = goal.labels();
        let k = ctx.model().num_classes();
        let mut total = vec![0f32; n * per];
        let mut adv = x.clone();
        for _ in 0..self.params.steps {
            let (logits, grads) = ctx.class_gradients(&adv, k)?;
            let preds = argmax(&logits)?;
            let active: Vec<usize> = (0..n).filter(|&i| preds[i] == labels[i]).collect();
            if active.is_empty() {
                break;
            }
            let z = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            let g: Vec<Vec<f32>> = grads
                .iter()
                .map(|t| t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>())
                .collect::<candle_core::Result<_>>()?;
            for &i in &active {
                let y = labels[i] as usize;
                let mut best: Option<(f32, usize)> = None;
                for c in (0..k).filter(|&c| c != y) {
                    let f = z[i][c] - z[i][y];
                    let wn: f32 = (0..per)
                        .map(|j| (g[c][i * per + j] - g[y][i * per + j]).powi(2))
                        .sum::<f32>()
                        .sqrt();
                    let dist = f.abs() / (wn + 1e-8);
                    if best.is_none_or(|(d, _)| dist < d) {
                        best = Some((dist, c));
                    }
                }
                let Some((_, c)) = best else { continue };
                let f = (z[i][c] - z[i][y]).abs();
                let wn2: f32 = (0..per)
                    .map(|j| (g[c][i * per + j] - g[y][i * per + j]).powi(2))
                    .sum::<f32>();
                let scale = (f + 1e-4) / (wn2 + 1e-8);
                for j in 0..per {
                    total[i * per + j] += scale * (g[c][i * per + j] - g[y][i * per + j]);
                }
            }
            let step =
                Tensor::from_vec(total.clone(), x.shape(), x.device())?.to_dtype(x.dtype())?;
            adv = (x + (step * (1.0 + self.params.overshoot))?)?.clamp(bounds.min, bounds.max)?;
        }
        Ok(adv)
    }
}

/// Carlini–Wagner L2 parameters. The paper runs 9 binary-search steps of 10 000
/// iterations; these defaults (5 × 100) trade a little strength for CPU time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CwParams {
    /// Binary-search steps over the trade-off constant c (default 5).
    pub binary_search_steps: usize,
    /// Adam iterations per search step (default 100).
    pub steps: usize,
    /// Adam learning rate in tanh space (default 0.01).
    pub learning_rate: f64,
    /// Starting c (default 0.1).
    pub initial_const: f64,
    /// Confidence margin κ (default 0).
    pub confidence: f64,
}

/// C&W L2 (Carlini & Wagner 2017, "Towards Evaluating the Robustness of Neural
/// Networks"): minimise ‖δ‖₂² + c·max(z_y − max_{i≠y} z_i, −κ) in tanh space with
/// Adam, binary-searching c per sample; keeps the smallest successful perturbation.
#[derive(Clone, Debug)]
pub struct CarliniWagner {
    params: CwParams,
}

impl Default for CarliniWagner {
    fn default() -> Self {
        Self {
            params: CwParams {
                binary_search_steps: 5,
                steps: 100,
                learning_rate: 0.01,
                initial_const: 0.1,
                confidence: 0.0,
            },
        }
    }
}

impl CarliniWagner {
    /// The parameters.
    pub fn params(&self) -> &CwParams {
        &self.params
    }
    /// Replace the parameters (validated).
    pub fn with_params(mut self, params: CwParams) -> Result<Self> {
        let ok = params.binary_search_steps > 0
            && params.steps > 0
            && params.learning_rate > 0.0
            && params.initial_const > 0.0
            && params.confidence >= 0.0;
        if !ok {
            return Err(Error::Param {
                attack: "cw-l2".into(),
                message: "steps must be >= 1, learning_rate and initial_const > 0, confidence >= 0"
                    .into(),
            });
        }
        self.params = params;
        Ok(self)
    }
}

impl Attack for CarliniWagner {
    fn name(&self) -> &str {
        "cw-l2"
    }
    fn norm(&self) -> Norm {
        Norm::L2
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
        let (lo, range) = (bounds.min, bounds.max - bounds.min);
        let n = x.dim(0)?;
        let device = x.device();
        let labels = goal.labels_tensor(device)?;
        let targets = goal.targets_tensor(device)?;
        // x = lo + range * (tanh(w) + 1) / 2
        let to_x = |w: &Tensor| -> Result<Tensor> {
            Ok(((w.tanh()? + 1.0)? * (range / 2.0))?.affine(1.0, lo)?)
        };
        let w0 = {
            let unit = ((x - lo)? / range)?
                .affine(2.0, -1.0)?
                .clamp(-0.999999, 0.999999)?;
            // atanh(u) = 0.5 * ln((1 + u) / (1 - u))
            (((&unit + 1.0)? / (unit.neg()? + 1.0)?)?.log()? * 0.5)?
        };
        let kappa = self.params.confidence;
        let mut c = vec![self.params.initial_const as f32; n];
        let mut c_lo = vec![0f32; n];
        let mut c_hi = vec![f32::INFINITY; n];
        let mut best_norm = vec![f64::INFINITY; n];
        let mut best = x.clone();
        let (b1, b2, eps_adam) = (0.9f64, 0.999f64, 1e-8f64);
        for _ in 0..self.params.binary_search_steps {
            let c_t = Tensor::from_vec(c.clone(), n, device)?.to_dtype(x.dtype())?;
            let mut w = w0.clone();
            let (mut m, mut v) = (w.zeros_like()?, w.zeros_like()?);
            let mut succeeded = vec![false; n];
            for step in 1..=self.params.steps {
                let loss = |adv: &Tensor, logits: &Tensor| -> Result<Tensor> {
                    let dist = (adv - x)?.sqr()?.flatten_from(1)?.sum(1)?;
                    let m = match &targets {
                        None => margin(logits, &labels)?,
                        Some(t) => margin(logits, t)?.neg()?,
                    };
                    let hinge = m.maximum(-kappa)?;
                    Ok((dist + (hinge * &c_t)?)?)
                };
                let (adv, logits, _, g) = ctx.latent_gradient(&w, |w| to_x(w), loss)?;
                let preds = argmax(&logits)?;
                let norms = norms_vec(&(&adv - x)?, Norm::L2)?;
                let mut improved = vec![false; n];
                for i in 0..n {
                    if goal.is_success(i, preds[i]) {
                        succeeded[i] = true;
                        if norms[i] < best_norm[i] {
                            best_norm[i] = norms[i];
                            improved[i] = true;
                        }
                    }
                }
                if improved.iter().any(|b| *b) {
                    best = where_rows(&improved, &adv, &best)?;
                }
                m = ((&m * b1)? + (&g * (1.0 - b1))?)?;
                v = ((&v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
                let m_hat = (&m / (1.0 - b1.powi(step as i32)))?;
                let v_hat = (&v / (1.0 - b2.powi(step as i32)))?;
                w = (&w - ((m_hat / (v_hat.sqrt()? + eps_adam)?)? * self.params.learning_rate)?)?;
            }
            for i in 0..n {
                if succeeded[i] {
                    c_hi[i] = c_hi[i].min(c[i]);
                } else {
                    c_lo[i] = c_lo[i].max(c[i]);
                }
                c[i] = if c_hi[i].is_finite() {
                    (c_lo[i] + c_hi[i]) / 2.0
                } else {
                    c[i] * 10.0
                };
            }
        }
        Ok(best)
    }
}
