//! ONNX graphs as differentiable Gauntlet classifiers.
//!
//! The model is parsed once (prost types written by hand, no `protoc`) into a list
//! of our own ops over candle tensors; weights are decoded once, BatchNormalization
//! is folded into a per-channel scale and shift, and every op has a backward pass,
//! so white-box attacks get input gradients through the graph. Covers what
//! `torch.onnx.export` emits for image classifiers: Conv (padding, stride, groups),
//! BatchNormalization, Relu/LeakyRelu/Sigmoid/Tanh/Clip, MaxPool (padding,
//! overlapping windows, ceil mode), AveragePool, GlobalAveragePool/GlobalMaxPool,
//! Add/Sub/Mul/Div, Flatten/Reshape (with Shape/Gather/Unsqueeze/Concat chains),
//! Gemm/MatMul, Softmax/LogSoftmax (any opset's axis rule), Transpose, Identity,
//! Dropout, Constant.

mod graph;
pub mod proto;

pub use graph::{OnnxModel, SUPPORTED_OPS};
