//! ONNX graphs as differentiable Gauntlet classifiers.
//!
//! The importer turns the protobuf (prost types written by hand, no `protoc`) into
//! the model layer's graph IR ([`crate::graph`]): one typed op per node, parsed by
//! the row for its operator in [`OPERATORS`]; `Constant` nodes, initializers and
//! external data files become constants. The IR passes then fold every node whose
//! inputs are all constant (exporters' shape arithmetic, `Identity` copies of
//! deduplicated weights) and inference batch normalisation, and the reference
//! executor runs what is left with differentiable candle ops, so white-box attacks
//! get exact input gradients.

mod model;
mod ops;
pub mod proto;

pub use model::{supported_ops, OnnxModel};
pub use ops::{operators_markdown, OperatorSpec, OPERATORS};
