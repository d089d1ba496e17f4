//! The model-loading layer on candle.
//!
//! Built-in architectures ([`Arch`]) with PyTorch-compatible names, loaded from
//! safetensors or PyTorch state dicts, and ONNX graphs ([`onnx::OnnxModel`]); all
//! are [`gauntlet_core::Classifier`]s in pixel space with input gradients through
//! candle's autograd. [`load_model`] detects the format, fingerprints the file and
//! refuses models whose input gets no gradient.

mod arch;
mod conv;
mod error;
pub mod graph;
pub mod layers;
mod load;
pub mod native;
mod network;
pub mod onnx;
mod safetensors_io;

pub use arch::{Arch, ParamSpec};
pub use error::{Error, Result, UnsupportedOperators};
pub use load::{
    load_model, save_model, verify_input_gradient, Model, ModelFormat, ModelInfo, ModelOptions,
};
pub use native::{matmul_transposed, GraphTape, NativeClassifier, NativeGraph};
pub use network::{Network, Normalization};
pub use safetensors_io::serialize as safetensors_bytes;
pub use safetensors_io::write as write_safetensors;
