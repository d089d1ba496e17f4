//! The native engine as one candle op, so attacks keep using candle's autograd
//! for their losses while the network itself runs natively.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

use super::{Activations, NativeNet};
use crate::Result;

/// Forward computed before the op is built; the op hands the logits to candle
/// and runs the native backward pass when candle asks for the input gradient.
struct NativeLogits {
    net: Arc<NativeNet>,
    logits: Vec<f32>,
    count: usize,
    activations: Option<Activations>,
}

impl CustomOp1 for NativeLogits {
    fn name(&self) -> &'static str {
        "gauntlet-native-network"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok((
            CpuStorage::F32(self.logits.clone()),
            Shape::from((self.count, self.net.arch.num_classes())),
        ))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let Some(activations) = &self.activations else {
            candle_core::bail!("internal: native network recorded no activations");
        };
        let grad = grad_res
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let input = self
            .net
            .backward(activations, &grad, true, None)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?
            .unwrap_or_default();
        Ok(Some(Tensor::from_vec(input, arg.shape(), arg.device())?))
    }
}

/// Logits of `x` (f32, NCHW, on the CPU) through `net`, differentiable with
/// respect to `x` when `x` is tracked (a variable or computed from one).
pub(crate) fn logits_op(net: &Arc<NativeNet>, x: &Tensor) -> Result<Tensor> {
    let count = x.dim(0)?;
    let values = x.flatten_all()?.to_vec1::<f32>()?;
    let keep = x.track_op();
    let (logits, activations) = net.forward(&values, count, keep)?;
    if !keep {
        return Ok(Tensor::from_vec(
            logits,
            (count, net.arch.num_classes()),
            x.device(),
        )?);
    }
    let op = NativeLogits {
        net: Arc::clone(net),
        logits,
        count,
        activations,
    };
    Ok(x.apply_op1(op)?)
}
