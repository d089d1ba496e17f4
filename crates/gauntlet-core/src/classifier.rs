use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The valid range of every input value (pixel space), e.g. `[0, 1]`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bounds {
    /// Smallest valid value.
    pub min: f64,
    /// Largest valid value.
    pub max: f64,
}

impl Bounds {
    /// The unit interval `[0, 1]`, the default for images.
    pub const UNIT: Bounds = Bounds { min: 0.0, max: 1.0 };

    /// Checked constructor: both finite and `min < max`.
    pub fn new(min: f64, max: f64) -> Result<Self> {
        if !(min.is_finite() && max.is_finite() && min < max) {
            return Err(Error::InvalidArgument {
                what: "bounds".into(),
                got: format!("[{min}, {max}]"),
                expected: "finite values with min < max".into(),
            });
        }
        Ok(Self { min, max })
    }
}

/// The norm that measures a perturbation; the record's vocabulary, so runs,
/// records and policies share one name table.
pub use gauntlet_record::Norm;

/// A differentiable classifier in input (pixel) space, in evaluation mode.
///
/// Normalisation is folded into the model, so callers always pass values within
/// [`Classifier::bounds`]. Gradients flow to the input through candle's autograd;
/// implementations keep their weights as constants so that a backward pass during
/// an attack computes no weight gradients.
pub trait Classifier: Send + Sync {
    /// Pre-softmax scores: `(N, C, H, W)` -> `(N, classes)`.
    fn logits(&self, x: &Tensor) -> Result<Tensor>;
    /// The valid input range.
    fn bounds(&self) -> Bounds;
    /// Number of output classes.
    fn num_classes(&self) -> usize;
    /// Shape of one input, `[channels, height, width]`.
    fn input_shape(&self) -> [usize; 3];
    /// The device the model's tensors live on.
    fn device(&self) -> &Device;
    /// Restart the model's own randomness (a randomised defence's noise) from
    /// `stream`, so that its forward passes from here on follow from the run's
    /// seed. Deterministic models ignore it (the default).
    fn reseed_noise(&self, _stream: &crate::SeedStream) {}
    /// Whether the forward pass itself is random (a randomised defence's noise
    /// operators), so that attacks can treat one pass's verdict as a draw.
    fn is_random(&self) -> bool {
        false
    }
    /// Memory one sample takes while it is attacked or trained on, in bytes:
    /// the activations kept for the backward pass, their gradients and the
    /// attack's own copies of the input. An estimate, used to refuse a batch that
    /// cannot fit before any compute; the default counts 64 copies of the input.
    fn bytes_per_sample(&self) -> u64 {
        let [c, h, w] = self.input_shape();
        (64 * c * h * w * std::mem::size_of::<f32>()) as u64
    }
}

/// Gradient of a scalar `loss(logits)` with respect to the input `x`.
///
/// Returns `(loss value, gradient)`; the gradient has the shape of `x`. The input is
/// the only [`Var`]: the model's weights receive no gradient.
pub fn input_gradient<F>(model: &dyn Classifier, x: &Tensor, loss: F) -> Result<(f64, Tensor)>
where
    F: Fn(&Tensor) -> Result<Tensor>,
{
    let input = Var::from_tensor(&x.detach())?;
    let logits = model.logits(input.as_tensor())?;
    let value = loss(&logits)?;
    let loss_value = value
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?;
    let grads = value.backward()?;
    let grad = match grads.get(input.as_tensor()) {
        Some(g) => g.clone(),
        // No path from the input to the loss: the gradient is genuinely zero.
        None => input.as_tensor().zeros_like()?,
    };
    Ok((loss_value, grad))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    /// `logits = x W^T`, the simplest differentiable classifier.
    struct Linear {
        weight: Tensor,
    }
    impl Classifier for Linear {
        fn logits(&self, x: &Tensor) -> Result<Tensor> {
            Ok(x.flatten_from(1)?.matmul(&self.weight.t()?)?)
        }
        fn bounds(&self) -> Bounds {
            Bounds::UNIT
        }
        fn num_classes(&self) -> usize {
            2
        }
        fn input_shape(&self) -> [usize; 3] {
            [1, 1, 3]
        }
        fn device(&self) -> &Device {
            self.weight.device()
        }
    }

    #[test]
    fn gradient_of_a_linear_logit_is_its_weight_row() {
        let weight = Tensor::new(&[[1.0f64, -2.0, 0.5], [3.0, 0.0, -1.0]], &Device::Cpu).unwrap();
        let model = Linear { weight };
        let x = Tensor::new(&[[[[0.1f64, 0.2, 0.3]]]], &Device::Cpu).unwrap();
        let (value, grad) = input_gradient(&model, &x, |logits| {
            Ok(logits.narrow(1, 1, 1)?.sum_all()?)
        })
        .unwrap();
        assert!((value - (0.3 - 0.3)).abs() < 1e-12);
        let g = grad.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        assert_eq!(g, vec![3.0, 0.0, -1.0]);
        assert_eq!(grad.dtype(), DType::F64);
    }

    #[test]
    fn bounds_reject_empty_or_non_finite_ranges() {
        assert!(Bounds::new(0.0, 1.0).is_ok());
        assert!(Bounds::new(1.0, 1.0).is_err());
        assert!(Bounds::new(0.0, f64::NAN).is_err());
    }
}
