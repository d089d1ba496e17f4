//! Built-in architectures with PyTorch-compatible tensor names and layouts
//! (`[out, in, kh, kw]` for convolutions, `[out, in]` for linear layers), so a
//! state dict trained in PyTorch loads as-is.

use std::collections::HashMap;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::graph::{Graph, Node, Op, UnaryOp};
use crate::layers::Pool2d;
use crate::{Error, Result};

/// A built-in network architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// MNIST multi-layer perceptron 784-256-256-10 with ReLU (`fc1`, `fc2`, `fc3`).
    Mlp,
    /// The MNIST CNN of Madry et al. 2018 ("Towards Deep Learning Models Resistant
    /// to Adversarial Attacks"): `conv1` 1→32 5×5 pad 2, ReLU, max-pool 2; `conv2`
    /// 32→64 5×5 pad 2, ReLU, max-pool 2; flatten (NCHW); `fc1` 3136→1024, ReLU;
    /// `fc2` 1024→10.
    Cnn,
    /// A small VGG-style CIFAR-10 network (3×32×32 input), ~1.1 M parameters:
    /// `conv1` 3→32 3×3 pad 1, ReLU, `conv2` 32→32 3×3 pad 1, ReLU, max-pool 2;
    /// `conv3` 32→64 3×3 pad 1, ReLU, `conv4` 64→64 3×3 pad 1, ReLU, max-pool 2;
    /// flatten; `fc1` 4096→256, ReLU; `fc2` 256→10.
    CifarCnn,
}

/// One parameter tensor an architecture needs.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    /// PyTorch state-dict name, e.g. `conv1.weight`.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Inputs feeding one output unit (for PyTorch's default initialisation).
    pub fan_in: usize,
}

impl Arch {
    /// Every built-in architecture.
    pub const ALL: [Arch; 3] = [Arch::Mlp, Arch::Cnn, Arch::CifarCnn];

    /// Registry name: `mlp`, `cnn`, `cifar-cnn`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Mlp => "mlp",
            Arch::Cnn => "cnn",
            Arch::CifarCnn => "cifar-cnn",
        }
    }

    /// Parse a registry name.
    pub fn parse(name: &str) -> Result<Arch> {
        Arch::ALL
            .into_iter()
            .find(|a| a.name() == name)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown architecture '{name}', expected one of: {}",
                    Arch::ALL.map(|a| a.name()).join(", ")
                ))
            })
    }

    /// Shape of one input, `[channels, height, width]`.
    pub fn input_shape(self) -> [usize; 3] {
        match self {
            Arch::Mlp | Arch::Cnn => [1, 28, 28],
            Arch::CifarCnn => [3, 32, 32],
        }
    }

    /// The layers, in order: the one description of each architecture, from
    /// which its parameters, graph, memory estimate and native stages follow.
    pub(crate) fn layers(self) -> &'static [Layer] {
        const fn conv(name: &'static str, outputs: usize, kernel: usize) -> Layer {
            Layer::ConvRelu {
                name,
                outputs,
                kernel,
            }
        }
        const fn dense(name: &'static str, outputs: usize, relu: bool) -> Layer {
            Layer::Dense {
                name,
                outputs,
                relu,
            }
        }
        const MLP: &[Layer] = &[
            dense("fc1", 256, true),
            dense("fc2", 256, true),
            dense("fc3", 10, false),
        ];
        const CNN: &[Layer] = &[
            conv("conv1", 32, 5),
            Layer::MaxPool2,
            conv("conv2", 64, 5),
            Layer::MaxPool2,
            dense("fc1", 1024, true),
            dense("fc2", 10, false),
        ];
        const CIFAR_CNN: &[Layer] = &[
            conv("conv1", 32, 3),
            conv("conv2", 32, 3),
            Layer::MaxPool2,
            conv("conv3", 64, 3),
            conv("conv4", 64, 3),
            Layer::MaxPool2,
            dense("fc1", 256, true),
            dense("fc2", 10, false),
        ];
        match self {
            Arch::Mlp => MLP,
            Arch::Cnn => CNN,
            Arch::CifarCnn => CIFAR_CNN,
        }
    }

    /// Each layer with the per-sample shape it reads (`[c, h, w]`, or `[n]`
    /// once flattened).
    pub(crate) fn layer_inputs(self) -> Vec<(Layer, Vec<usize>)> {
        let mut shape = self.input_shape().to_vec();
        let mut out = Vec::new();
        for &layer in self.layers() {
            out.push((layer, shape.clone()));
            shape = layer.output_shape(&shape);
        }
        out
    }

    /// Values one sample produces in a forward pass (every layer's output, the
    /// input and pooling included; ReLU is fused into its layer): what the
    /// backward pass keeps per sample.
    pub fn activations_per_sample(self) -> usize {
        let input: usize = self.input_shape().iter().product();
        input
            + self
                .layer_inputs()
                .iter()
                .map(|(layer, shape)| layer.output_shape(shape).iter().product::<usize>())
                .sum::<usize>()
    }

    /// Memory one sample takes while attacked or trained on, in bytes: the
    /// activations the backward pass keeps and as much again for their
    /// gradients (the engine keeps both kinds of buffer from pass to pass), plus
    /// ~8 input-sized buffers (x, x_adv, δ, gradient, best so far, ...). For
    /// `cnn` this says ~410 KB; training it at batch 591 peaked at ~420 KB per
    /// sample above a fixed ~100 MB (weights and optimiser state).
    pub fn bytes_per_sample(self) -> u64 {
        let input: usize = self.input_shape().iter().product();
        ((2 * self.activations_per_sample() + 8 * input) * std::mem::size_of::<f32>()) as u64
    }

    /// Memory training needs whatever the batch, in bytes: the weights, their
    /// gradients and two optimiser moments, and a copy of the weights for the
    /// per-epoch evaluation.
    pub fn training_fixed_bytes(self) -> u64 {
        let params: usize = self
            .parameters()
            .iter()
            .map(|p| p.shape.iter().product::<usize>())
            .sum();
        (5 * params * std::mem::size_of::<f32>()) as u64
    }

    /// Number of output classes.
    pub fn num_classes(self) -> usize {
        10
    }

    /// The parameters, in a fixed order (each layer's weight, then its bias).
    pub fn parameters(self) -> Vec<ParamSpec> {
        let mut specs = Vec::new();
        for (layer, shape) in self.layer_inputs() {
            let (name, weight, fan_in, outputs) = match layer {
                Layer::ConvRelu {
                    name,
                    outputs,
                    kernel,
                } => {
                    let inputs = shape[0];
                    (
                        name,
                        vec![outputs, inputs, kernel, kernel],
                        inputs * kernel * kernel,
                        outputs,
                    )
                }
                Layer::Dense { name, outputs, .. } => {
                    let inputs: usize = shape.iter().product();
                    (name, vec![outputs, inputs], inputs, outputs)
                }
                Layer::MaxPool2 => continue,
            };
            specs.push(spec(&format!("{name}.weight"), &weight, fan_in));
            specs.push(spec(&format!("{name}.bias"), &[outputs], fan_in));
        }
        specs
    }

    /// The architecture as a graph in the IR, with `params` (PyTorch names and
    /// layouts, as [`Arch::parameters`] lists them) as its constants; it reads
    /// normalised NCHW input. The reference executor runs it, and the native
    /// engine plans it like any imported graph.
    pub(crate) fn graph(self, params: &Params) -> Result<Graph> {
        let mut nodes = Vec::new();
        let mut value = "input".to_string();
        let mut push = |op: Op, inputs: Vec<String>, value: &mut String| {
            let output = format!("{}{}", "v", nodes.len());
            nodes.push(Node {
                name: format!("node {}", nodes.len()),
                op,
                inputs,
                outputs: vec![output.clone()],
            });
            *value = output;
        };
        for (layer, shape) in self.layer_inputs() {
            match layer {
                Layer::ConvRelu { name, kernel, .. } => {
                    let pad = kernel / 2;
                    let conv = Op::Conv {
                        stride: 1,
                        pads: [pad; 4],
                        dilation: 1,
                        groups: 1,
                    };
                    let inputs = vec![
                        value.clone(),
                        format!("{name}.weight"),
                        format!("{name}.bias"),
                    ];
                    push(conv, inputs, &mut value);
                    push(Op::Unary(UnaryOp::Relu), vec![value.clone()], &mut value);
                }
                Layer::MaxPool2 => push(Op::Pool(Pool2d::max(2)), vec![value.clone()], &mut value),
                Layer::Dense { name, relu, .. } => {
                    if shape.len() > 1 {
                        // PyTorch's `x.flatten(1)`: NCHW order.
                        push(Op::Flatten(1), vec![value.clone()], &mut value);
                    }
                    let gemm = Op::Gemm {
                        alpha: 1.0,
                        beta: 1.0,
                        trans_a: false,
                        trans_b: true,
                    };
                    let inputs = vec![
                        value.clone(),
                        format!("{name}.weight"),
                        format!("{name}.bias"),
                    ];
                    push(gemm, inputs, &mut value);
                    if relu {
                        push(Op::Unary(UnaryOp::Relu), vec![value.clone()], &mut value);
                    }
                }
            }
        }
        let mut constants = HashMap::new();
        for spec in self.parameters() {
            constants.insert(spec.name.clone(), params.get(&spec.name)?.clone());
        }
        let float = constants
            .values()
            .next()
            .map_or(candle_core::DType::F32, Tensor::dtype);
        Ok(Graph {
            nodes,
            constants,
            input: "input".into(),
            output: value,
            float,
        })
    }
}

/// One layer of a built-in architecture. Convolutions are stride 1 with "same"
/// zero padding (`kernel / 2`) and a bias; dense layers read their input
/// flattened in NCHW order, as PyTorch's `x.flatten(1)` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layer {
    /// Convolution with bias, then ReLU.
    ConvRelu {
        name: &'static str,
        outputs: usize,
        kernel: usize,
    },
    /// 2×2 max-pooling with stride 2.
    MaxPool2,
    /// `x Wᵀ + b`, then ReLU if `relu`.
    Dense {
        name: &'static str,
        outputs: usize,
        relu: bool,
    },
}

impl Layer {
    /// Per-sample output shape for input `shape`.
    pub(crate) fn output_shape(self, shape: &[usize]) -> Vec<usize> {
        match (self, shape) {
            (Layer::ConvRelu { outputs, .. }, &[_, h, w]) => vec![outputs, h, w],
            (Layer::MaxPool2, &[c, h, w]) => vec![c, h / 2, w / 2],
            (Layer::Dense { outputs, .. }, _) => vec![outputs],
            // Not reachable from the architectures above (a test walks them all).
            _ => shape.to_vec(),
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn spec(name: &str, shape: &[usize], fan_in: usize) -> ParamSpec {
    ParamSpec {
        name: name.to_string(),
        shape: shape.to_vec(),
        fan_in,
    }
}

/// Named parameter tensors.
#[derive(Clone, Debug, Default)]
pub(crate) struct Params(pub HashMap<String, Tensor>);

impl Params {
    pub(crate) fn get(&self, name: &str) -> Result<&Tensor> {
        self.0
            .get(name)
            .ok_or_else(|| Error::Invalid(format!("internal: parameter '{name}' was not loaded")))
    }
}
