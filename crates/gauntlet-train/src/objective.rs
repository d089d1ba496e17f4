//! The training objective of one batch and its gradient: standard cross-entropy,
//! adversarial cross-entropy (optionally mixed with the clean loss), or TRADES.

use std::sync::Arc;

use candle_core::Tensor;
use gauntlet_core::{Bounds, SeedStream};
use gauntlet_models::{NativeClassifier, NativeGraph};

use crate::{softmax_cross_entropy, AdversarialMethod, AdversarialTraining, Error, Result};

/// Loss and training accuracy of one batch.
pub(crate) struct BatchResult {
    /// Mean loss of the objective.
    pub mean_loss: f64,
    /// Samples whose training input (adversarial when attacked) was classified right.
    pub correct: usize,
}

/// The adversarial part of a batch's objective.
pub(crate) struct Threat<'a> {
    pub settings: &'a AdversarialTraining,
    pub attack: &'a dyn gauntlet_attacks::Attack,
    /// ε for this batch (after warm-up), > 0.
    pub epsilon: f64,
    pub seed: SeedStream,
}

/// Writes the gradient of the batch's objective into `param_grads`.
pub(crate) fn batch_gradient(
    engine: &Arc<NativeGraph>,
    bounds: Bounds,
    images: &Tensor,
    labels: &[u32],
    threat: Option<Threat<'_>>,
    param_grads: &mut [f32],
) -> Result<BatchResult> {
    param_grads.fill(0.0);
    let count = labels.len();
    let classes = engine.num_classes();
    let Some(threat) = threat else {
        let clean = images.flatten_all()?.to_vec1::<f32>()?;
        return weighted_cross_entropy(engine, &clean, labels, 1.0, param_grads);
    };
    match threat.settings.method {
        AdversarialMethod::Pgd | AdversarialMethod::FgsmRs => {
            let model = NativeClassifier::new(Arc::clone(engine), bounds);
            let adversarial = gauntlet_attacks::run_attack(
                threat.attack,
                &model,
                images,
                &gauntlet_attacks::Goal::Untargeted {
                    labels: labels.to_vec(),
                },
                threat.epsilon,
                &threat.seed,
            )?
            .adversarial
            .flatten_all()?
            .to_vec1::<f32>()?;
            drop(model);
            let clean_weight = threat.settings.clean_weight;
            let mut result = weighted_cross_entropy(
                engine,
                &adversarial,
                labels,
                1.0 - clean_weight,
                param_grads,
            )?;
            if clean_weight > 0.0 {
                // Goodfellow et al. 2015's mixture: w·CE(x) + (1 − w)·CE(x_adv).
                let clean = images.flatten_all()?.to_vec1::<f32>()?;
                let clean_part =
                    weighted_cross_entropy(engine, &clean, labels, clean_weight, param_grads)?;
                result.mean_loss += clean_part.mean_loss;
            }
            Ok(result)
        }
        AdversarialMethod::Trades => {
            let clean = images.flatten_all()?.to_vec1::<f32>()?;
            trades(
                engine,
                bounds,
                &clean,
                labels,
                classes,
                count,
                &threat,
                param_grads,
            )
        }
    }
}

/// Adds `weight ·` the gradient of the mean cross-entropy on `images`.
fn weighted_cross_entropy(
    engine: &NativeGraph,
    images: &[f32],
    labels: &[u32],
    weight: f64,
    param_grads: &mut [f32],
) -> Result<BatchResult> {
    let (logits, activations) = engine.forward(images, labels.len(), true)?;
    let mut batch = softmax_cross_entropy(&logits, labels, engine.num_classes())?;
    if weight != 1.0 {
        batch
            .grad_logits
            .iter_mut()
            .for_each(|g| *g *= weight as f32);
    }
    if let Some(mut activations) = activations {
        engine.backward(
            &mut activations,
            &batch.grad_logits,
            false,
            Some(param_grads),
        )?;
    }
    Ok(BatchResult {
        mean_loss: weight * batch.mean_loss,
        correct: batch.correct,
    })
}

/// Row-wise softmax in f64.
fn softmax_rows(logits: &[f32], classes: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(logits.len());
    for row in logits.chunks_exact(classes) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let exps: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp()).collect();
        let sum: f64 = exps.iter().sum();
        out.extend(exps.iter().map(|e| e / sum));
    }
    out
}

/// TRADES, Zhang et al. 2019 ("Theoretically Principled Trade-off between
/// Robustness and Accuracy"): minimise `CE(f(x), y) + β·KL(p(x) ‖ p(x'))` where x'
/// maximises the KL term inside the L∞ ball, found by sign-gradient ascent from
/// `x + 0.001·N(0, I)` (the paper's start).
#[allow(clippy::too_many_arguments)]
fn trades(
    engine: &NativeGraph,
    bounds: Bounds,
    clean: &[f32],
    labels: &[u32],
    classes: usize,
    count: usize,
    threat: &Threat<'_>,
    param_grads: &mut [f32],
) -> Result<BatchResult> {
    let settings = threat.settings;
    let (epsilon, step) = (
        threat.epsilon as f32,
        (threat.epsilon * settings.relative_step_size) as f32,
    );
    let (low, high) = (bounds.min as f32, bounds.max as f32);
    let (clean_logits, clean_activations) = engine.forward(clean, count, true)?;
    let p = softmax_rows(&clean_logits, classes);
    let start = threat.seed.derive("trades-start").normal_f32(clean.len());
    let mut adversarial: Vec<f32> = clean
        .iter()
        .zip(&start)
        .map(|(x, n)| (x + 0.001 * n).clamp(low, high))
        .collect();
    for _ in 0..settings.steps {
        let (logits, activations) = engine.forward(&adversarial, count, true)?;
        let q = softmax_rows(&logits, classes);
        // d/dz' of Σ KL(p ‖ softmax(z')) is q − p.
        let grad_logits: Vec<f32> = q.iter().zip(&p).map(|(q, p)| (q - p) as f32).collect();
        let Some(mut activations) = activations else {
            break;
        };
        let grad = engine
            .backward(&mut activations, &grad_logits, true, None)?
            .unwrap_or_default();
        for ((a, x), g) in adversarial.iter_mut().zip(clean).zip(&grad) {
            let moved = *a + step * g.signum() * f32::from(*g != 0.0);
            *a = moved.clamp(x - epsilon, x + epsilon).clamp(low, high);
        }
    }
    let (adversarial_logits, adversarial_activations) =
        engine.forward(&adversarial, count, true)?;
    let q = softmax_rows(&adversarial_logits, classes);
    let beta = settings.beta;
    let n = count.max(1) as f64;
    let clean_part = softmax_cross_entropy(&clean_logits, labels, classes)?;
    let mut grad_clean = clean_part.grad_logits;
    let mut grad_adversarial = vec![0.0f32; q.len()];
    let mut kl_sum = 0.0;
    for row in 0..count {
        let range = row * classes..(row + 1) * classes;
        let (p_row, q_row) = (&p[range.clone()], &q[range.clone()]);
        let kl: f64 = p_row
            .iter()
            .zip(q_row)
            .filter(|(p, _)| **p > 0.0)
            .map(|(p, q)| p * (p.ln() - q.max(1e-300).ln()))
            .sum();
        kl_sum += kl;
        for (j, i) in range.enumerate() {
            let (pj, qj) = (p_row[j], q_row[j]);
            let log_ratio = if pj > 0.0 {
                pj.ln() - qj.max(1e-300).ln()
            } else {
                0.0
            };
            grad_clean[i] += (beta / n * pj * (log_ratio - kl)) as f32;
            grad_adversarial[i] = (beta / n * (qj - pj)) as f32;
        }
    }
    let (Some(mut clean_activations), Some(mut adversarial_activations)) =
        (clean_activations, adversarial_activations)
    else {
        return Err(Error::Config("internal: no activations recorded".into()));
    };
    engine.backward(
        &mut clean_activations,
        &grad_clean,
        false,
        Some(param_grads),
    )?;
    engine.backward(
        &mut adversarial_activations,
        &grad_adversarial,
        false,
        Some(param_grads),
    )?;
    let correct = adversarial_logits
        .chunks_exact(classes)
        .zip(labels)
        .filter(|(row, label)| gauntlet_core::largest(row).0 == **label as usize)
        .count();
    Ok(BatchResult {
        mean_loss: clean_part.mean_loss + beta * kl_sum / n,
        correct,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use candle_core::{Device, Var};

    /// The analytic TRADES logit gradients against candle's autograd of the same
    /// objective.
    #[test]
    fn kl_gradients_match_autograd() {
        let (n, k, beta) = (2usize, 3usize, 6.0f64);
        let zc = [0.3f32, -1.2, 2.0, 0.5, 0.1, -0.4];
        let za = [1.1f32, -0.2, 0.4, -0.7, 0.9, 0.2];
        let p = softmax_rows(&zc, k);
        let q = softmax_rows(&za, k);
        let mut kl = vec![0.0; n];
        for r in 0..n {
            kl[r] = (0..k)
                .map(|j| p[r * k + j] * (p[r * k + j].ln() - q[r * k + j].ln()))
                .sum();
        }
        let vc = Var::from_tensor(&Tensor::from_vec(zc.to_vec(), (n, k), &Device::Cpu).unwrap())
            .unwrap();
        let va = Var::from_tensor(&Tensor::from_vec(za.to_vec(), (n, k), &Device::Cpu).unwrap())
            .unwrap();
        let lp = gauntlet_core::log_softmax(vc.as_tensor()).unwrap();
        let lq = gauntlet_core::log_softmax(va.as_tensor()).unwrap();
        let objective = ((lp.exp().unwrap() * (&lp - &lq).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
            * (beta / n as f64))
            .unwrap();
        let grads = objective.backward().unwrap();
        let dc = grads
            .get(vc.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let da = grads
            .get(va.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (r, kl_row) in kl.iter().enumerate() {
            for j in 0..k {
                let i = r * k + j;
                let ours_c = beta / n as f64 * p[i] * ((p[i].ln() - q[i].ln()) - kl_row);
                let ours_a = beta / n as f64 * (q[i] - p[i]);
                assert!(
                    (ours_c as f32 - dc[i]).abs() < 1e-5,
                    "clean {i}: {ours_c} vs {}",
                    dc[i]
                );
                assert!(
                    (ours_a as f32 - da[i]).abs() < 1e-5,
                    "adversarial {i}: {ours_a} vs {}",
                    da[i]
                );
            }
        }
    }
}
