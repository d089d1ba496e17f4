//! What the detectors need from a model, whatever executes it: logits,
//! penultimate features and input gradients on batches of f32 images.
//!
//! The built-in architectures answer through their native engine; any other
//! model that loads (an ONNX graph) through the model layer's reference executor
//! ([`OnnxDetectorModel`]), with its features read at a named graph value.

use candle_core::{DType, Device, Tensor, Var};
use gauntlet_core::Classifier;
use gauntlet_models::onnx::OnnxModel;
use gauntlet_models::{NativeGraph, Network};

use crate::error::{config, Result};

/// A classifier the poisoning detectors can inspect. Images are `n × C×H×W`
/// values in pixel space, NCHW, row-major.
pub trait DetectorModel: Sync {
    /// `[C, H, W]`.
    fn input_shape(&self) -> [usize; 3];
    /// Number of classes.
    fn num_classes(&self) -> usize;
    /// Logits, `n × classes`.
    fn logits(&self, images: &[f32], n: usize) -> Result<Vec<f32>>;
    /// Logits and the penultimate features (`n × width`), with the width.
    fn logits_and_features(&self, images: &[f32], n: usize) -> Result<(Vec<f32>, Vec<f32>)>;
    /// Logits, and the input gradient of `Σ g ⊙ logits` where `g = grad_of_logits(logits)`
    /// (a vector–Jacobian product: the gradient of any loss of the logits).
    fn logits_and_input_gradient(
        &self,
        images: &[f32],
        n: usize,
        grad_of_logits: &mut dyn FnMut(&[f32]) -> Result<Vec<f32>>,
    ) -> Result<(Vec<f32>, Vec<f32>)>;
}

/// A built-in network on the native engine, its features read at the graph
/// value that feeds the last fully connected layer (the penultimate layer).
pub struct NativeDetectorModel<'a> {
    engine: &'a NativeGraph,
    feature: String,
}

impl<'a> NativeDetectorModel<'a> {
    /// The native engine of `network`, which every built-in network has with f32
    /// weights on the CPU.
    pub fn new(network: &'a Network) -> Result<Self> {
        let engine = network.native().ok_or_else(|| {
            config("poisoning detectors run on the built-in architectures' f32 engine; this network has none")
        })?;
        let feature = network
            .graph()
            .default_feature_value()
            .ok_or_else(|| config("internal: the network has no fully connected layer"))?
            .to_string();
        Ok(Self { engine, feature })
    }
}

impl DetectorModel for NativeDetectorModel<'_> {
    fn input_shape(&self) -> [usize; 3] {
        self.engine.input_shape()
    }
    fn num_classes(&self) -> usize {
        self.engine.num_classes()
    }
    fn logits(&self, images: &[f32], n: usize) -> Result<Vec<f32>> {
        Ok(self.engine.forward(images, n, false)?.0)
    }
    fn logits_and_features(&self, images: &[f32], n: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        self.engine
            .logits_and_value(images, n, &self.feature)?
            .ok_or_else(|| {
                config(format!(
                    "internal: the native plan does not keep '{}'",
                    self.feature
                ))
            })
    }
    fn logits_and_input_gradient(
        &self,
        images: &[f32],
        n: usize,
        grad_of_logits: &mut dyn FnMut(&[f32]) -> Result<Vec<f32>>,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let (logits, kept) = self.engine.forward(images, n, true)?;
        let kept = kept.ok_or_else(|| config("internal: forward kept no activations"))?;
        let g = grad_of_logits(&logits)?;
        let input_grad = self.engine.input_gradient(&kept, &g)?;
        Ok((logits, input_grad))
    }
}

/// An ONNX graph for the detectors: features are the graph value `feature`
/// (by default the input of the last `Gemm`/`MatMul`), gradients come from the
/// reference executor's autograd.
pub struct OnnxDetectorModel<'a> {
    model: &'a OnnxModel,
    feature: Option<String>,
}

impl<'a> OnnxDetectorModel<'a> {
    /// Wrap `model`; `feature` names the graph value to read features from.
    pub fn new(model: &'a OnnxModel, feature: Option<String>) -> Result<Self> {
        let wrapped = Self { model, feature };
        // Surface a bad --feature-layer now, before any batch runs.
        let [c, h, w] = model.input_shape();
        let probe = Tensor::zeros((1, c, h, w), DType::F32, model.device())?;
        model.logits_and_features(&probe, wrapped.feature.as_deref())?;
        Ok(wrapped)
    }

    fn tensor(&self, images: &[f32], n: usize) -> Result<Tensor> {
        let [c, h, w] = self.model.input_shape();
        if images.len() != n * c * h * w {
            return Err(config(format!(
                "{} values for {n} images of shape [{c}, {h}, {w}]",
                images.len()
            )));
        }
        Ok(Tensor::from_slice(images, (n, c, h, w), &Device::Cpu)?)
    }
}

fn values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

impl DetectorModel for OnnxDetectorModel<'_> {
    fn input_shape(&self) -> [usize; 3] {
        self.model.input_shape()
    }
    fn num_classes(&self) -> usize {
        self.model.num_classes()
    }
    fn logits(&self, images: &[f32], n: usize) -> Result<Vec<f32>> {
        values(&self.model.logits(&self.tensor(images, n)?)?)
    }
    fn logits_and_features(&self, images: &[f32], n: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let (logits, features) = self
            .model
            .logits_and_features(&self.tensor(images, n)?, self.feature.as_deref())?;
        Ok((values(&logits)?, values(&features)?))
    }
    fn logits_and_input_gradient(
        &self,
        images: &[f32],
        n: usize,
        grad_of_logits: &mut dyn FnMut(&[f32]) -> Result<Vec<f32>>,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let input = Var::from_tensor(&self.tensor(images, n)?)?;
        let logits = self.model.logits(input.as_tensor())?;
        let logit_values = values(&logits)?;
        let g = grad_of_logits(&logit_values)?;
        let g = Tensor::from_vec(g, logits.dims(), logits.device())?.to_dtype(logits.dtype())?;
        let grads = (logits * g)?.sum_all()?.backward()?;
        let grad = match grads.get(input.as_tensor()) {
            Some(t) => values(t)?,
            None => vec![0.0; images.len()],
        };
        Ok((logit_values, grad))
    }
}
