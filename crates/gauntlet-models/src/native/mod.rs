//! The native engine: forward and backward passes of any graph in the IR
//! written directly on f32 slices, without candle's graph.
//!
//! Attacks and training spend nearly all their time in one operation, a forward
//! pass followed by a backward pass. Going through candle's graph costs a fresh
//! tensor (and its page faults) per op, NCHW im2col gathers, and bookkeeping;
//! here the graph is planned once into steps on NHWC buffers (GEMMs through the
//! `gemm` crate's kernels, fused bias/activation epilogues, pooled buffers), see
//! [`NativeGraph`]. The built-in architectures are graphs like any imported one.
//! The candle path (the IR's reference executor) stays as the reference the
//! tests compare against and as the path for f64 and non-CPU devices.

mod graph;
pub(crate) mod kernels;
mod op;

use candle_core::{DType, Device, Tensor};
use gauntlet_core::{Bounds, Classifier};

use crate::{Error, Result};

pub use graph::{GraphTape, NativeGraph, NotPlanned};
pub(crate) use op::engine_logits;

/// `lhs (m × k) · rhs (n × k)ᵀ` as an `m × n` row-major matrix, on the engine's GEMM
/// kernels (e.g. all pairwise dot products of two sets of images).
pub fn matmul_transposed(lhs: &[f32], rhs: &[f32], k: usize) -> Result<Vec<f32>> {
    if k == 0 || !lhs.len().is_multiple_of(k) || !rhs.len().is_multiple_of(k) {
        return Err(Error::Invalid(format!(
            "matrices of {} and {} values do not have rows of {k}",
            lhs.len(),
            rhs.len()
        )));
    }
    let (m, n) = (lhs.len() / k, rhs.len() / k);
    let mut out = vec![0.0f32; m * n];
    on_pool(|| {
        kernels::matmul(
            &mut out,
            kernels::Mat::new(lhs, m, k),
            kernels::Mat::new(rhs, n, k).t(),
            false,
            kernels::Threads::All,
        )
    })?;
    Ok(out)
}

/// A native engine as a [`Classifier`], sharing its weights without a copy: the
/// model an adversarial-training step attacks while the weights are trained.
#[derive(Clone, Debug)]
pub struct NativeClassifier {
    net: std::sync::Arc<NativeGraph>,
    bounds: Bounds,
    device: Device,
}

impl NativeClassifier {
    /// Wraps `net`, whose inputs lie within `bounds`.
    pub fn new(net: std::sync::Arc<NativeGraph>, bounds: Bounds) -> Self {
        Self {
            net,
            bounds,
            device: Device::Cpu,
        }
    }
}

impl Classifier for NativeClassifier {
    fn logits(&self, x: &Tensor) -> gauntlet_core::Result<Tensor> {
        Ok(engine_logits(&self.net, &x.to_dtype(DType::F32)?)?)
    }
    fn bounds(&self) -> Bounds {
        self.bounds
    }
    fn num_classes(&self) -> usize {
        self.net.num_classes()
    }
    fn input_shape(&self) -> [usize; 3] {
        self.net.input_shape()
    }
    fn device(&self) -> &Device {
        &self.device
    }
}

/// Runs `work` on a rayon worker, so the many parallel loops and GEMMs inside it
/// fork from within the pool instead of each waking it from outside (a context
/// switch per loop, a large share of a small network's step).
pub(crate) fn on_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| work())
}

#[cfg(test)]
mod tests;
