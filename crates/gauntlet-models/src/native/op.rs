//! A native engine as one candle op, so attacks keep using candle's autograd for
//! their losses while the network itself runs natively.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

use super::{GraphTape, NativeGraph};
use crate::Result;

/// What candle needs from an engine: logits, and the input gradient of a pass
/// that kept its tape.
pub(crate) trait Engine: Send + Sync + 'static {
    /// What a forward pass keeps for the backward pass.
    type Tape: Send + Sync;
    /// The op's name in candle's graph.
    const NAME: &'static str;
    fn classes(&self) -> usize;
    fn logits(
        &self,
        images: &[f32],
        count: usize,
        keep: bool,
    ) -> Result<(Vec<f32>, Option<Self::Tape>)>;
    fn input_gradient(&self, tape: &Self::Tape, grad_logits: &[f32]) -> Result<Vec<f32>>;
}

impl Engine for NativeGraph {
    type Tape = GraphTape;
    const NAME: &'static str = "gauntlet-native-graph";
    fn classes(&self) -> usize {
        self.num_classes()
    }
    fn logits(
        &self,
        images: &[f32],
        count: usize,
        keep: bool,
    ) -> Result<(Vec<f32>, Option<GraphTape>)> {
        self.forward(images, count, keep)
    }
    fn input_gradient(&self, tape: &GraphTape, grad_logits: &[f32]) -> Result<Vec<f32>> {
        NativeGraph::input_gradient(self, tape, grad_logits)
    }
}

/// Forward computed before the op is built; the op hands the logits to candle
/// and runs the native backward pass when candle asks for the input gradient.
struct EngineLogits<E: Engine> {
    engine: Arc<E>,
    logits: Vec<f32>,
    count: usize,
    tape: Option<E::Tape>,
}

impl<E: Engine> CustomOp1 for EngineLogits<E> {
    fn name(&self) -> &'static str {
        E::NAME
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok((
            CpuStorage::F32(self.logits.clone()),
            Shape::from((self.count, self.engine.classes())),
        ))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let Some(tape) = &self.tape else {
            candle_core::bail!("internal: {} recorded no activations", E::NAME);
        };
        let grad = grad_res
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let input = self
            .engine
            .input_gradient(tape, &grad)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok(Some(Tensor::from_vec(input, arg.shape(), arg.device())?))
    }
}

/// Logits of `x` (f32, NCHW, on the CPU) through `engine`, differentiable with
/// respect to `x` when `x` is tracked (a variable or computed from one).
pub(crate) fn engine_logits<E: Engine>(engine: &Arc<E>, x: &Tensor) -> Result<Tensor> {
    let count = x.dim(0)?;
    let values = x.flatten_all()?.to_vec1::<f32>()?;
    let keep = x.track_op();
    let (logits, tape) = engine.logits(&values, count, keep)?;
    if !keep {
        return Ok(Tensor::from_vec(
            logits,
            (count, engine.classes()),
            x.device(),
        )?);
    }
    let op = EngineLogits {
        engine: Arc::clone(engine),
        logits,
        count,
        tape,
    };
    Ok(x.apply_op1(op)?)
}
