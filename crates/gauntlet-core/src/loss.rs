use candle_core::{DType, Tensor};

use crate::Result;

// These are composed from differentiable candle ops on purpose: candle's fused
// softmax kernels are built with `apply_op*_no_bwd` and silently drop gradients.

/// Numerically stable log-softmax along `dim`, differentiable.
pub fn log_softmax_dim(x: &Tensor, dim: usize) -> Result<Tensor> {
    // The max is a constant shift: detaching it changes no value or gradient.
    let max = x.max_keepdim(dim)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let log_sum = shifted.exp()?.sum_keepdim(dim)?.log()?;
    Ok(shifted.broadcast_sub(&log_sum)?)
}

/// Softmax along `dim`, differentiable.
pub fn softmax_dim(x: &Tensor, dim: usize) -> Result<Tensor> {
    let max = x.max_keepdim(dim)?.detach();
    let exp = x.broadcast_sub(&max)?.exp()?;
    let sum = exp.sum_keepdim(dim)?;
    Ok(exp.broadcast_div(&sum)?)
}

/// Log-softmax over the last dimension.
pub fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    log_softmax_dim(logits, logits.rank().saturating_sub(1))
}

/// Softmax over the last dimension.
pub fn softmax(logits: &Tensor) -> Result<Tensor> {
    softmax_dim(logits, logits.rank().saturating_sub(1))
}

/// Cross-entropy of each sample, shape `(N,)`; `labels` are integer class indices.
pub fn cross_entropy_per_sample(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let log_probs = log_softmax(logits)?;
    let labels = labels.to_dtype(DType::U32)?.unsqueeze(1)?;
    Ok(log_probs.gather(&labels, 1)?.squeeze(1)?.neg()?)
}

/// Summed cross-entropy: per-sample input gradients are not scaled by the batch size.
pub fn cross_entropy_sum(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    Ok(cross_entropy_per_sample(logits, labels)?.sum_all()?)
}

/// Index and value of the largest logit (the first on ties).
pub fn largest(row: &[f32]) -> (usize, f32) {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn cross_entropy_matches_hand_computation() {
        let logits = Tensor::new(&[[1.0f64, 2.0, 3.0], [0.0, 0.0, 0.0]], &Device::Cpu).unwrap();
        let labels = Tensor::new(&[2u32, 1], &Device::Cpu).unwrap();
        let ce = cross_entropy_per_sample(&logits, &labels)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let lse = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        assert!((ce[0] - (lse - 3.0)).abs() < 1e-12);
        assert!((ce[1] - 3f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn softmax_rows_sum_to_one_even_for_huge_logits() {
        let logits = Tensor::new(&[[1000.0f32, 999.0, -1000.0]], &Device::Cpu).unwrap();
        let p = softmax(&logits).unwrap().to_vec2::<f32>().unwrap();
        assert!(p[0].iter().all(|v| v.is_finite()));
        assert!((p[0].iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn softmax_gradient_is_not_dropped() {
        let x = candle_core::Var::new(&[[0.5f64, -1.0, 2.0]], &Device::Cpu).unwrap();
        let p = softmax(x.as_tensor()).unwrap();
        let picked = p.narrow(1, 0, 1).unwrap().sum_all().unwrap();
        let grads = picked.backward().unwrap();
        let g = grads.get(&x).unwrap().to_vec2::<f64>().unwrap();
        assert!(
            g[0].iter().any(|v| v.abs() > 1e-3),
            "gradient was dropped: {g:?}"
        );
    }
}
