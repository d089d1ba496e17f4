//! Best iterate per sample: the first adversarial point found (for a random
//! model, optionally the latest), or else the point with the highest loss.
//! Attacks report this, not their last iterate.

use candle_core::Tensor;

use crate::ops::{argmax, where_rows};
use crate::{Goal, Result};

/// Per-sample best iterate.
pub struct BestIterate {
    adversarial: Tensor,
    found: Vec<bool>,
    loss: Vec<f32>,
    follow_latest: bool,
}

impl BestIterate {
    /// Start at the clean input, nothing found.
    pub fn new(x: &Tensor) -> Result<Self> {
        let n = x.dim(0)?;
        Ok(Self {
            adversarial: x.clone(),
            found: vec![false; n],
            loss: vec![f32::NEG_INFINITY; n],
            follow_latest: false,
        })
    }

    /// Keep replacing a found adversarial point with each later one judged
    /// adversarial, as AutoAttack's APGD does. For a random forward pass the
    /// first point one draw called adversarial sits on the edge of the region a
    /// fresh draw often undoes; the attack keeps climbing the loss, so later
    /// points lie deeper inside it. Deterministic attacks keep the first point.
    pub fn following_latest(mut self) -> Self {
        self.follow_latest = true;
        self
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.found.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// Indices of samples with no adversarial example yet.
    pub fn remaining(&self) -> Vec<usize> {
        self.found
            .iter()
            .enumerate()
            .filter(|(_, f)| !**f)
            .map(|(i, _)| i)
            .collect()
    }

    /// Which samples have an adversarial example.
    pub fn found(&self) -> &[bool] {
        &self.found
    }

    /// Consider `candidate` (with its logits and per-sample loss).
    pub fn update(
        &mut self,
        candidate: &Tensor,
        logits: &Tensor,
        loss: &[f32],
        goal: &Goal,
    ) -> Result<()> {
        let predictions = argmax(logits)?;
        let mut take = vec![false; self.found.len()];
        for i in 0..take.len() {
            if self.found[i] {
                if self.follow_latest && goal.is_success(i, predictions[i]) {
                    take[i] = true;
                    self.loss[i] = loss[i];
                }
                continue;
            }
            if goal.is_success(i, predictions[i]) {
                take[i] = true;
                self.found[i] = true;
                self.loss[i] = loss[i];
            } else if loss[i] > self.loss[i] {
                take[i] = true;
                self.loss[i] = loss[i];
            }
        }
        if take.iter().any(|t| *t) {
            self.adversarial = where_rows(&take, candidate, &self.adversarial)?;
        }
        Ok(())
    }

    /// Rows `indices` of `x`.
    pub fn select(&self, x: &Tensor, indices: &[usize]) -> Result<Tensor> {
        crate::ops::select_rows(x, indices)
    }

    /// One restart: run `attempt` on the samples with no adversarial example yet
    /// (given their inputs, goal, indices and a tracker for them) and fold its best
    /// iterates back in. Returns `false`, without calling `attempt`, when every
    /// sample is already broken.
    pub fn attack_remaining<F>(&mut self, x: &Tensor, goal: &Goal, attempt: F) -> Result<bool>
    where
        F: FnOnce(&Tensor, &Goal, &[usize], &mut BestIterate) -> Result<()>,
    {
        let remaining = self.remaining();
        if remaining.is_empty() {
            return Ok(false);
        }
        if remaining.len() == self.len() {
            // Nothing broken yet: no subset to copy or merge.
            attempt(x, goal, &remaining, self)?;
            return Ok(true);
        }
        let sub_x = self.select(x, &remaining)?;
        let mut sub = BestIterate::new(&sub_x)?;
        sub.follow_latest = self.follow_latest;
        attempt(&sub_x, &goal.select(&remaining), &remaining, &mut sub)?;
        self.merge(&remaining, &sub)?;
        Ok(true)
    }

    /// Fold in the results of a run on the subset `indices`.
    pub fn merge(&mut self, indices: &[usize], sub: &BestIterate) -> Result<()> {
        let mut rows = Vec::with_capacity(self.len());
        let mut improved = false;
        let mut pos = 0;
        for i in 0..self.len() {
            if pos < indices.len() && indices[pos] == i {
                let better = sub.found[pos] || (!self.found[i] && sub.loss[pos] > self.loss[i]);
                if better {
                    self.found[i] |= sub.found[pos];
                    self.loss[i] = sub.loss[pos];
                    rows.push(sub.adversarial.narrow(0, pos, 1)?);
                    improved = true;
                } else {
                    rows.push(self.adversarial.narrow(0, i, 1)?);
                }
                pos += 1;
            } else {
                rows.push(self.adversarial.narrow(0, i, 1)?);
            }
        }
        if improved {
            self.adversarial = Tensor::cat(&rows, 0)?;
        }
        Ok(())
    }

    /// The best points.
    pub fn into_adversarial(self) -> Tensor {
        self.adversarial
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Two samples; both judged adversarial at step 1 and again at step 2.
    fn two_successes(best: &mut BestIterate) -> Tensor {
        let goal = Goal::Untargeted { labels: vec![0, 0] };
        let wrong = Tensor::new(&[[0f32, 1.0], [0.0, 1.0]], &Device::Cpu).unwrap();
        let first = Tensor::full(1f32, (2, 3), &Device::Cpu).unwrap();
        let second = Tensor::full(2f32, (2, 3), &Device::Cpu).unwrap();
        best.update(&first, &wrong, &[1.0, 1.0], &goal).unwrap();
        best.update(&second, &wrong, &[0.5, 0.5], &goal).unwrap();
        second
    }

    #[test]
    fn the_first_success_stays_unless_following_the_latest() {
        let x = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let mut first = BestIterate::new(&x).unwrap();
        two_successes(&mut first);
        let kept = first.into_adversarial().flatten_all().unwrap();
        assert_eq!(kept.to_vec1::<f32>().unwrap(), vec![1.0; 6]);
        let mut latest = BestIterate::new(&x).unwrap().following_latest();
        two_successes(&mut latest);
        let kept = latest.into_adversarial().flatten_all().unwrap();
        assert_eq!(kept.to_vec1::<f32>().unwrap(), vec![2.0; 6]);
    }
}
