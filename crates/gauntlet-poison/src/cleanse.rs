//! Neural Cleanse: reverse-engineer a minimal trigger per class.

use gauntlet_core::{Observer, SeedStream};
use gauntlet_train::{Optimizer, OptimizerKind};
use serde::{Deserialize, Serialize};

use crate::detect::median;
use crate::error::{config, Result};
use crate::inject::Trigger;
use crate::model::DetectorModel;

/// Neural Cleanse (Wang et al. 2019, "Neural Cleanse: Identifying and Mitigating
/// Backdoor Attacks in Neural Networks"). For every class `t`, find the smallest
/// mask `m` and pattern `p` such that `(1 − m) ⊙ x + m ⊙ p` sends clean images to
/// `t`: minimise `CE(f(x'), t) + λ·‖m‖₁` with Adam over sigmoid-parametrised mask
/// and pattern. λ follows the paper's schedule: 0 until the attack first succeeds
/// on `target_success` of a batch, then `initial_cost`, ×1.5 after `patience`
/// successful steps and ÷1.5^1.5 after `patience` failing ones. The smallest
/// successful mask's L1 norm is kept. A backdoor target needs a far smaller mask
/// than the other classes: the anomaly index of class `t` is
/// `(median − ‖m_t‖₁) / (1.4826 · MAD)`, and classes above `anomaly_threshold`
/// (default 2, as in the paper) are named as targets.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct NeuralCleanse {
    /// Optimisation steps per class (default 300).
    pub steps: usize,
    /// Clean images per step (default 64).
    pub batch_size: usize,
    /// Adam learning rate (default 0.1).
    pub learning_rate: f64,
    /// First λ once the attack succeeds (default 1e-3, as in the paper).
    pub initial_cost: f64,
    /// Share of a batch that must reach the target for a mask to count (default 0.99).
    pub target_success: f64,
    /// Steps between λ adjustments (default 5).
    pub patience: usize,
    /// Anomaly index above which a class is named a target (default 2).
    pub anomaly_threshold: f64,
    /// Seed of the batch order and initial mask.
    pub seed: u64,
}

impl Default for NeuralCleanse {
    fn default() -> Self {
        Self {
            steps: 300,
            batch_size: 64,
            learning_rate: 0.1,
            initial_cost: 1e-3,
            target_success: 0.99,
            patience: 5,
            anomaly_threshold: 2.0,
            seed: 0,
        }
    }
}

/// The trigger found for one class.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassTrigger {
    /// The class.
    pub class: u32,
    /// L1 norm of the smallest successful mask (or the last one, if none succeeded).
    pub mask_l1: f64,
    /// Share of a batch that mask sent to the class.
    pub attack_success: f64,
    /// Whether any mask reached the target success rate.
    pub reached_target: bool,
    /// Anomaly index (positive: smaller than the median).
    pub anomaly_index: f64,
    /// Whether the class is named a backdoor target.
    pub flagged: bool,
    /// The reverse-engineered trigger.
    pub trigger: Trigger,
}

/// Neural Cleanse's findings over all classes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CleanseReport {
    /// One entry per class.
    pub classes: Vec<ClassTrigger>,
    /// Median of the mask norms.
    pub median_l1: f64,
    /// Median absolute deviation of the mask norms.
    pub mad_l1: f64,
    /// Classes named as backdoor targets.
    pub suspected_targets: Vec<u32>,
}

impl NeuralCleanse {
    /// Reverse-engineer a trigger for every class from clean images (`count` NCHW
    /// images in `[0, 1]`).
    pub fn run(
        &self,
        net: &dyn DetectorModel,
        clean: &[f32],
        count: usize,
        observer: &dyn Observer,
    ) -> Result<CleanseReport> {
        if self.steps == 0 || self.batch_size == 0 || self.patience == 0 {
            return Err(config(
                "neural cleanse needs at least 1 step, a batch size of at least 1 and a patience of at least 1",
            ));
        }
        if !(self.learning_rate > 0.0 && self.initial_cost > 0.0) {
            return Err(config(
                "neural cleanse needs a positive learning rate and cost",
            ));
        }
        if count == 0 {
            return Err(config("neural cleanse needs clean images"));
        }
        let classes = net.num_classes();
        observer.start(
            crate::Detector::NeuralCleanse.name(),
            (classes * self.steps) as u64,
        );
        let mut found = Vec::with_capacity(classes);
        for class in 0..classes as u32 {
            found.push(self.reverse_engineer(net, clean, count, class, observer)?);
        }
        let norms: Vec<f64> = found.iter().map(|c| c.mask_l1).collect();
        let median_l1 = median(&norms);
        let mad_l1 = median(
            &norms
                .iter()
                .map(|n| (n - median_l1).abs())
                .collect::<Vec<_>>(),
        );
        let spread = (1.4826 * mad_l1).max(1e-9);
        for class in &mut found {
            class.anomaly_index = (median_l1 - class.mask_l1) / spread;
            class.flagged = class.anomaly_index > self.anomaly_threshold && class.reached_target;
        }
        let suspected_targets = found
            .iter()
            .filter(|c| c.flagged)
            .map(|c| c.class)
            .collect();
        observer.finish("");
        Ok(CleanseReport {
            classes: found,
            median_l1,
            mad_l1,
            suspected_targets,
        })
    }

    fn reverse_engineer(
        &self,
        net: &dyn DetectorModel,
        clean: &[f32],
        count: usize,
        class: u32,
        observer: &dyn Observer,
    ) -> Result<ClassTrigger> {
        let shape = net.input_shape();
        let [c, h, w] = shape;
        let (plane, per) = (h * w, c * h * w);
        let classes = net.num_classes();
        let seeds = SeedStream::new(self.seed).derive(&format!("cleanse/class-{class}"));
        // Parameters: mask logits (plane) then pattern logits (per); the mask starts
        // small and random, the pattern mid-grey and random.
        let mut params: Vec<f32> = seeds
            .derive("init")
            .uniform_f32(plane + per, -0.5, 0.5)
            .into_iter()
            .enumerate()
            .map(|(i, v)| if i < plane { v - 2.0 } else { v })
            .collect();
        let mut adam = Optimizer::new(OptimizerKind::Adam, self.learning_rate, 0.0, params.len());
        let mut cost = 0.0f64;
        let (mut up, mut down) = (0usize, 0usize);
        let mut best: Option<(f64, f64, Vec<f32>)> = None;
        let mut last_success = 0.0;
        let order = seeds.derive("order").permutation(count);
        let mut cursor = 0;
        for step in 0..self.steps {
            let mask: Vec<f32> = params[..plane].iter().map(|&a| sigmoid(a)).collect();
            let pattern: Vec<f32> = params[plane..].iter().map(|&b| sigmoid(b)).collect();
            let batch = self.batch_size.min(count);
            let mut images = Vec::with_capacity(batch * per);
            let mut originals = Vec::with_capacity(batch * per);
            for _ in 0..batch {
                let i = order[cursor % count];
                cursor += 1;
                let x = &clean[i * per..(i + 1) * per];
                originals.extend_from_slice(x);
                images.extend(x.iter().enumerate().map(|(k, &v)| {
                    let m = mask[k % plane];
                    (1.0 - m) * v + m * pattern[k]
                }));
            }
            let mut hits = 0;
            let (_, input_grad) =
                net.logits_and_input_gradient(&images, batch, &mut |logits: &[f32]| {
                    let loss = gauntlet_train::softmax_cross_entropy(
                        logits,
                        &vec![class; batch],
                        classes,
                    )?;
                    hits = loss.correct;
                    Ok(loss.grad_logits)
                })?;
            let success = hits as f64 / batch as f64;
            last_success = success;
            let l1: f64 = mask.iter().map(|&m| f64::from(m)).sum();
            if success >= self.target_success && best.as_ref().is_none_or(|(n, _, _)| l1 < *n) {
                best = Some((l1, success, params.clone()));
            }
            // Chain rule through x' = (1 − m)x + m·p and the sigmoids.
            let mut grads = vec![0.0f32; params.len()];
            for (g_image, x_image) in input_grad
                .chunks_exact(per)
                .zip(originals.chunks_exact(per))
            {
                for k in 0..per {
                    let pixel = k % plane;
                    grads[pixel] += g_image[k] * (pattern[k] - x_image[k]);
                    grads[plane + k] += g_image[k] * mask[pixel];
                }
            }
            for pixel in 0..plane {
                let m = mask[pixel];
                grads[pixel] = (grads[pixel] + cost as f32) * m * (1.0 - m);
            }
            for k in 0..per {
                let p = pattern[k];
                grads[plane + k] *= p * (1.0 - p);
            }
            adam.step(&mut params, &grads)?;
            // λ schedule (Wang et al.): start once the attack works, then keep the
            // mask as small as success allows.
            if cost == 0.0 {
                if success >= self.target_success {
                    cost = self.initial_cost;
                }
            } else if success >= self.target_success {
                up += 1;
                down = 0;
                if up >= self.patience {
                    cost *= 1.5;
                    up = 0;
                }
            } else {
                down += 1;
                up = 0;
                if down >= self.patience {
                    cost /= 1.5f64.powf(1.5);
                    down = 0;
                }
            }
            if step % 10 == 9 {
                observer.advance(
                    10,
                    &format!("class {class}: |m| {l1:.1}, success {success:.2}"),
                );
            }
        }
        observer.advance((self.steps % 10) as u64, "");
        let reached_target = best.is_some();
        let (mask_l1, attack_success, params) = match best {
            Some(found) => found,
            None => {
                let l1 = params[..plane].iter().map(|&a| f64::from(sigmoid(a))).sum();
                (l1, last_success, params)
            }
        };
        Ok(ClassTrigger {
            class,
            mask_l1,
            attack_success,
            reached_target,
            anomaly_index: 0.0,
            flagged: false,
            trigger: Trigger {
                shape,
                mask: params[..plane].iter().map(|&a| sigmoid(a)).collect(),
                pattern: params[plane..].iter().map(|&b| sigmoid(b)).collect(),
            },
        })
    }
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}
