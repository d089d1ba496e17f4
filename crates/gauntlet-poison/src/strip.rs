//! STRIP: inference-time backdoor detection by superimposition.

use gauntlet_core::SeedStream;
use serde::{Deserialize, Serialize};

use crate::error::{config, Result};
use crate::model::DetectorModel;

/// STRIP (Gao et al. 2019, "STRIP: A Defence Against Trojan Attacks on Deep Neural
/// Networks"): superimpose an input with `overlays` held-out clean images and
/// average the entropy of the model's class distribution over the copies. A clean
/// input's prediction scatters; a triggered one stays with the target whatever is
/// blended in, so its entropy is low. The threshold is the entropy below which only
/// `false_rejection_rate` of held-out clean inputs fall.
///
/// Superimposition adds the two images and clips to `[0, 1]` (the paper's
/// `addWeighted(x, 1, x', 1, 0)`). The entropy is taken over the classes of each
/// copy, then averaged over the copies (IBM ART takes it across the copies
/// instead, which misses most triggered inputs).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Strip {
    /// Clean images blended with each input (default 100, as in the paper).
    pub overlays: usize,
    /// Share of clean inputs allowed to be rejected (default 0.01).
    pub false_rejection_rate: f64,
    /// Copies evaluated per forward pass (default 500).
    pub batch_size: usize,
    /// Seed of the choice of overlays.
    pub seed: u64,
}

impl Default for Strip {
    fn default() -> Self {
        Self {
            overlays: 100,
            false_rejection_rate: 0.01,
            batch_size: 500,
            seed: 0,
        }
    }
}

/// A calibrated STRIP detector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StripCalibration {
    /// Inputs with a mean entropy below this are flagged as triggered.
    pub threshold: f64,
    /// Entropies of the held-out clean inputs it was set from.
    pub clean_entropies: Vec<f64>,
}

impl Strip {
    fn validate(&self, held_out: usize) -> Result<()> {
        if self.overlays == 0 || self.batch_size == 0 {
            return Err(config(
                "STRIP needs at least 1 overlay and a batch size of at least 1",
            ));
        }
        if !(self.false_rejection_rate > 0.0 && self.false_rejection_rate < 1.0) {
            return Err(config(format!(
                "STRIP false-rejection rate {} is outside (0, 1)",
                self.false_rejection_rate
            )));
        }
        if held_out < 2 {
            return Err(config("STRIP needs at least 2 held-out clean images"));
        }
        Ok(())
    }

    /// Mean prediction entropy (nats) of each of `inputs` (n images, NCHW values)
    /// under superimposition with images drawn from `held_out`. `key` names the
    /// input set so its overlay draws are independent of other sets'.
    /// `held_out_offset`, when the inputs are themselves the held-out images, keeps
    /// an input from being blended with itself.
    pub fn entropies(
        &self,
        net: &dyn DetectorModel,
        inputs: &[f32],
        held_out: &[f32],
        key: &str,
        inputs_are_held_out: bool,
    ) -> Result<Vec<f64>> {
        let per: usize = net.input_shape().iter().product();
        let pool = held_out.len() / per;
        self.validate(pool)?;
        let count = inputs.len() / per;
        let classes = net.num_classes();
        let seeds = SeedStream::new(self.seed).derive(&format!("strip/{key}"));
        let per_pass = (self.batch_size / self.overlays).max(1);
        let mut entropies = Vec::with_capacity(count);
        let mut start = 0;
        while start < count {
            let end = (start + per_pass).min(count);
            let mut copies = Vec::with_capacity((end - start) * self.overlays * per);
            for i in start..end {
                let input = &inputs[i * per..(i + 1) * per];
                let draws = seeds.derive(&i.to_string()).below(
                    self.overlays,
                    if inputs_are_held_out { pool - 1 } else { pool },
                );
                for draw in draws {
                    let j = if inputs_are_held_out && draw >= i {
                        draw + 1
                    } else {
                        draw
                    };
                    let overlay = &held_out[j * per..(j + 1) * per];
                    copies.extend(input.iter().zip(overlay).map(|(a, b)| (a + b).min(1.0)));
                }
            }
            let logits = net.logits(&copies, (end - start) * self.overlays)?;
            for input_logits in logits.chunks_exact(self.overlays * classes) {
                let total: f64 = input_logits.chunks_exact(classes).map(entropy).sum();
                entropies.push(total / self.overlays as f64);
            }
            start = end;
        }
        Ok(entropies)
    }

    /// Set the threshold from held-out clean images (each blended with the others).
    pub fn calibrate(&self, net: &dyn DetectorModel, held_out: &[f32]) -> Result<StripCalibration> {
        let clean_entropies = self.entropies(net, held_out, held_out, "calibration", true)?;
        let mut sorted = clean_entropies.clone();
        sorted.sort_by(f64::total_cmp);
        // The largest threshold that rejects at most the allowed share.
        let allowed = (self.false_rejection_rate * sorted.len() as f64).floor() as usize;
        let threshold = sorted[allowed.min(sorted.len() - 1)];
        Ok(StripCalibration {
            threshold,
            clean_entropies,
        })
    }
}

impl StripCalibration {
    /// Whether an input with this mean entropy is flagged as triggered.
    pub fn flags(&self, entropy: f64) -> bool {
        entropy < self.threshold
    }
}

/// Entropy (nats) of the softmax of one row of logits.
fn entropy(logits: &[f32]) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = logits.iter().map(|&l| f64::from(l - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter()
        .map(|&e| e / sum)
        .filter(|&p| p > 0.0)
        .map(|p| -p * p.ln())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::entropy;

    #[test]
    fn entropy_of_uniform_and_certain_predictions() {
        assert!((entropy(&[0.0; 10]) - 10f64.ln()).abs() < 1e-9);
        assert!(entropy(&[100.0, 0.0, 0.0]) < 1e-30);
    }
}
