//! Losses attacks ascend, each per sample `(N,)`, differentiable.

use candle_core::{DType, Tensor, D};
use gauntlet_core::{cross_entropy_per_sample, Result as CoreResult};

use crate::Result;

/// The loss an attack maximises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Loss {
    /// Cross-entropy (negated towards the target for targeted attacks).
    Ce,
    /// Difference of logits ratio, Croce & Hein 2020: scale-invariant, so a model
    /// that merely rescales its logits cannot mask the gradient.
    Dlr,
}

/// `(N, K)` one-hot of `labels` in the logits' dtype.
fn one_hot(labels: &Tensor, logits: &Tensor) -> Result<Tensor> {
    let k = logits.dim(D::Minus1)?;
    let n = logits.dim(0)?;
    let idx = labels.to_dtype(DType::U32)?.unsqueeze(1)?;
    let zeros = Tensor::zeros((n, k), logits.dtype(), logits.device())?;
    let ones = Tensor::ones((n, 1), logits.dtype(), logits.device())?;
    Ok(zeros.scatter_add(&idx, &ones, 1)?)
}

/// Logit of `labels` per sample.
fn pick(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    Ok(logits
        .gather(&labels.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?
        .squeeze(1)?)
}

/// Largest logit other than `labels`.
fn max_other(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    // Push the label's logit far down, then take the max.
    let mask = one_hot(labels, logits)?;
    Ok((logits - (mask * 1e9)?)?.max(D::Minus1)?)
}

/// Margin `z_y - max_{i != y} z_i`: negative exactly when misclassified.
pub fn margin(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    Ok((pick(logits, labels)? - max_other(logits, labels)?)?)
}

/// Sorted logits, descending, `(N, K)`.
fn sorted_desc(logits: &Tensor) -> Result<Tensor> {
    Ok(logits.sort_last_dim(false)?.0)
}

/// Untargeted DLR: `-(z_y - max_{i≠y} z_i) / (z_π1 - z_π3 + 1e-12)`.
pub fn dlr(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let sorted = sorted_desc(logits)?;
    let k = logits.dim(D::Minus1)?;
    let third = sorted.narrow(1, 2.min(k - 1), 1)?.squeeze(1)?;
    let denom = ((sorted.narrow(1, 0, 1)?.squeeze(1)? - third)? + 1e-12)?;
    Ok(margin(logits, labels)?.neg()?.div(&denom.detach())?)
}

/// Targeted DLR: `-(z_y - z_t) / (z_π1 - (z_π3 + z_π4)/2 + 1e-12)`.
pub fn dlr_targeted(logits: &Tensor, labels: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let sorted = sorted_desc(logits)?;
    let k = logits.dim(D::Minus1)?;
    let third = sorted.narrow(1, 2.min(k - 1), 1)?.squeeze(1)?;
    let fourth = sorted.narrow(1, 3.min(k - 1), 1)?.squeeze(1)?;
    let denom = ((sorted.narrow(1, 0, 1)?.squeeze(1)? - ((third + fourth)? * 0.5)?)? + 1e-12)?;
    let diff = (pick(logits, labels)? - pick(logits, targets)?)?;
    Ok(diff.neg()?.div(&denom.detach())?)
}

/// The per-sample objective to *maximise* for a loss and goal.
pub fn objective(
    loss: Loss,
    logits: &Tensor,
    labels: &Tensor,
    targets: Option<&Tensor>,
) -> CoreResult<Tensor> {
    match (loss, targets) {
        (Loss::Ce, None) => cross_entropy_per_sample(logits, labels),
        (Loss::Ce, Some(t)) => Ok(cross_entropy_per_sample(logits, t)?.neg()?),
        (Loss::Dlr, None) => dlr(logits, labels).map_err(to_core),
        (Loss::Dlr, Some(t)) => dlr_targeted(logits, labels, t).map_err(to_core),
    }
}

fn to_core(e: crate::Error) -> gauntlet_core::Error {
    match e {
        crate::Error::Core(c) => c,
        crate::Error::Candle(c) => gauntlet_core::Error::Candle(c),
        other => gauntlet_core::Error::InvalidArgument {
            what: "loss".into(),
            got: other.to_string(),
            expected: "a valid loss".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn margin_and_dlr_match_hand_computation() {
        let logits = Tensor::new(
            &[[3.0f32, 1.0, 2.0, 0.0], [0.0, 5.0, 1.0, 2.0]],
            &Device::Cpu,
        )
        .unwrap();
        let labels = Tensor::new(&[0u32, 2], &Device::Cpu).unwrap();
        assert_eq!(
            margin(&logits, &labels).unwrap().to_vec1::<f32>().unwrap(),
            vec![1.0, -4.0]
        );
        let d = dlr(&logits, &labels).unwrap().to_vec1::<f32>().unwrap();
        // sample 0: -(3-2)/(3-1) = -0.5; sample 1: -(1-5)/(5-1) = 1
        assert!(
            (d[0] + 0.5).abs() < 1e-6 && (d[1] - 1.0).abs() < 1e-6,
            "{d:?}"
        );
        let targets = Tensor::new(&[3u32, 1], &Device::Cpu).unwrap();
        let t = dlr_targeted(&logits, &labels, &targets)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        // sample 0: -(3-0)/(3-(1+0)/2) = -1.2; sample 1: -(1-5)/(5-(1+0)/2) = 0.888..
        assert!(
            (t[0] + 1.2).abs() < 1e-5 && (t[1] - 4.0 / 4.5).abs() < 1e-5,
            "{t:?}"
        );
    }
}
