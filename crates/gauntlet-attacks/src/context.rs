//! What an attack sees of the model: logits and loss gradients, counted.

use candle_core::{Tensor, Var};
use gauntlet_core::Classifier;

use crate::Result;

/// The model as an attack sees it. Every forward and gradient evaluation is
/// counted per sample, for the record and for query budgets.
pub struct AttackContext<'a> {
    model: &'a dyn Classifier,
    forwards: u64,
    gradients: u64,
}

/// The result of one gradient evaluation.
pub struct LossGradient {
    /// Logits of the forward pass (no gradient attached).
    pub logits: Tensor,
    /// Per-sample loss `(N,)`.
    pub loss: Vec<f32>,
    /// d(sum of losses)/d(input), shape of the input.
    pub gradient: Tensor,
}

impl<'a> AttackContext<'a> {
    /// Wrap a model.
    pub fn new(model: &'a dyn Classifier) -> Self {
        Self {
            model,
            forwards: 0,
            gradients: 0,
        }
    }

    /// The model.
    pub fn model(&self) -> &dyn Classifier {
        self.model
    }

    /// Logits without gradient (counts one forward per sample).
    pub fn logits(&mut self, x: &Tensor) -> Result<Tensor> {
        self.forwards += x.dim(0)? as u64;
        Ok(self.model.logits(&x.detach())?.detach())
    }

    /// Per-sample loss and the input gradient of its sum (counts one gradient per
    /// sample). `loss` maps logits `(N, K)` to per-sample losses `(N,)`. Samples are
    /// independent, so each row of the gradient is that sample's own gradient.
    pub fn loss_gradient<F>(&mut self, x: &Tensor, loss: F) -> Result<LossGradient>
    where
        F: Fn(&Tensor) -> Result<Tensor>,
    {
        let n = x.dim(0)? as u64;
        self.gradients += n;
        let input = Var::from_tensor(&x.detach())?;
        let logits = self.model.logits(input.as_tensor())?;
        let per_sample = loss(&logits)?;
        let grads = per_sample.sum_all()?.backward()?;
        let gradient = match grads.get(input.as_tensor()) {
            Some(g) => g.clone(),
            None => x.zeros_like()?,
        };
        Ok(LossGradient {
            logits: logits.detach(),
            loss: per_sample
                .to_dtype(candle_core::DType::F32)?
                .to_vec1::<f32>()?,
            gradient,
        })
    }

    /// [`Self::loss_gradient`] averaged over `samples` forward and backward
    /// passes: Expectation over Transformation (Athalye et al. 2018,
    /// "Synthesizing Robust Adversarial Examples"; "Obfuscated Gradients Give a
    /// False Sense of Security"), the gradient of a randomised model's expected
    /// loss. The logits are the last pass's. One sample is the plain gradient.
    pub fn expected_loss_gradient<F>(
        &mut self,
        x: &Tensor,
        loss: F,
        samples: usize,
    ) -> Result<LossGradient>
    where
        F: Fn(&Tensor) -> Result<Tensor>,
    {
        let mut total = self.loss_gradient(x, &loss)?;
        for _ in 1..samples {
            let next = self.loss_gradient(x, &loss)?;
            total.gradient = (total.gradient + next.gradient)?;
            for (sum, value) in total.loss.iter_mut().zip(&next.loss) {
                *sum += value;
            }
            total.logits = next.logits;
        }
        if samples > 1 {
            total.gradient = (total.gradient / samples as f64)?;
            total.loss.iter_mut().for_each(|v| *v /= samples as f32);
        }
        Ok(total)
    }

    /// Logits and the input gradient of each listed class's logit, from one
    /// forward pass (counts one gradient per sample and class).
    pub fn class_gradients(&mut self, x: &Tensor, classes: usize) -> Result<(Tensor, Vec<Tensor>)> {
        let n = x.dim(0)? as u64;
        self.gradients += n * classes as u64;
        let input = Var::from_tensor(&x.detach())?;
        let logits = self.model.logits(input.as_tensor())?;
        let mut out = Vec::with_capacity(classes);
        for k in 0..classes {
            let grads = logits.narrow(1, k, 1)?.sum_all()?.backward()?;
            out.push(match grads.get(input.as_tensor()) {
                Some(g) => g.clone(),
                None => x.zeros_like()?,
            });
        }
        Ok((logits.detach(), out))
    }

    /// Gradient with respect to a latent `w` that `map` turns into an input
    /// (e.g. C&W's tanh box): `loss(w, x, logits)` is per sample. Returns
    /// `(x, logits, per-sample loss, d(sum loss)/dw)`.
    pub fn latent_gradient<M, F>(
        &mut self,
        w: &Tensor,
        map: M,
        loss: F,
    ) -> Result<(Tensor, Tensor, Vec<f32>, Tensor)>
    where
        M: Fn(&Tensor) -> Result<Tensor>,
        F: Fn(&Tensor, &Tensor) -> Result<Tensor>,
    {
        self.gradients += w.dim(0)? as u64;
        let latent = Var::from_tensor(&w.detach())?;
        let x = map(latent.as_tensor())?;
        let logits = self.model.logits(&x)?;
        let per_sample = loss(&x, &logits)?;
        let grads = per_sample.sum_all()?.backward()?;
        let gradient = match grads.get(latent.as_tensor()) {
            Some(g) => g.clone(),
            None => w.zeros_like()?,
        };
        let values = per_sample
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?;
        Ok((x.detach(), logits.detach(), values, gradient))
    }

    /// Each sample's classes from the highest logit down, on `x`, and how many
    /// targets a targeted attack gets from them: `wanted`, at most classes − 1
    /// (targets are the classes ranked 2nd, 3rd, …).
    pub fn ranked_classes(&mut self, x: &Tensor, wanted: usize) -> Result<(Vec<Vec<u32>>, usize)> {
        let (_, order) = self.logits(x)?.sort_last_dim(false)?;
        let order = order.to_dtype(candle_core::DType::U32)?.to_vec2::<u32>()?;
        let runs = wanted.min(order.first().map_or(0, |r| r.len().saturating_sub(1)));
        Ok((order, runs))
    }

    /// Per-sample forward evaluations so far.
    pub fn forwards(&self) -> u64 {
        self.forwards
    }

    /// Per-sample gradient evaluations so far.
    pub fn gradients(&self) -> u64 {
        self.gradients
    }
}
