//! Built-in architectures with PyTorch-compatible tensor names and layouts
//! (`[out, in, kh, kw]` for convolutions, `[out, in]` for linear layers), so a
//! state dict trained in PyTorch loads as-is.

use std::collections::HashMap;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::layers::{conv2d, linear, pool2d, Pool2d};
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

    /// Values one sample produces in a forward pass (every layer's output,
    /// pooling included): what the backward pass keeps per sample.
    pub fn activations_per_sample(self) -> usize {
        match self {
            Arch::Mlp => 784 + 256 + 256 + 10,
            Arch::Cnn => 784 + 32 * 28 * 28 + 32 * 14 * 14 + 64 * 14 * 14 + 64 * 7 * 7 + 1024 + 10,
            Arch::CifarCnn => {
                3 * 32 * 32
                    + 2 * 32 * 32 * 32
                    + 32 * 16 * 16
                    + 2 * 64 * 16 * 16
                    + 64 * 8 * 8
                    + 256
                    + 10
            }
        }
    }

    /// Memory one sample takes while attacked or trained on, in bytes: the
    /// activations the backward pass keeps plus ~8 input-sized buffers (x, x_adv,
    /// δ, gradient, best so far, ...). Measured peak memory grows ~120 KB per
    /// sample for `cnn` under PGD; this says ~220 KB.
    pub fn bytes_per_sample(self) -> u64 {
        let input: usize = self.input_shape().iter().product();
        ((self.activations_per_sample() + 8 * input) * std::mem::size_of::<f32>()) as u64
    }

    /// Number of output classes.
    pub fn num_classes(self) -> usize {
        10
    }

    /// The parameters, in a fixed order.
    pub fn parameters(self) -> Vec<ParamSpec> {
        let mut specs = Vec::new();
        let mut conv = |name: &str, out: usize, inp: usize, k: usize| {
            specs.push(spec(
                &format!("{name}.weight"),
                &[out, inp, k, k],
                inp * k * k,
            ));
            specs.push(spec(&format!("{name}.bias"), &[out], inp * k * k));
        };
        match self {
            Arch::Mlp => {}
            Arch::Cnn => {
                conv("conv1", 32, 1, 5);
                conv("conv2", 64, 32, 5);
            }
            Arch::CifarCnn => {
                conv("conv1", 32, 3, 3);
                conv("conv2", 32, 32, 3);
                conv("conv3", 64, 32, 3);
                conv("conv4", 64, 64, 3);
            }
        }
        let dense: &[(&str, usize, usize)] = match self {
            Arch::Mlp => &[("fc1", 256, 784), ("fc2", 256, 256), ("fc3", 10, 256)],
            Arch::Cnn => &[("fc1", 1024, 3136), ("fc2", 10, 1024)],
            Arch::CifarCnn => &[("fc1", 256, 4096), ("fc2", 10, 256)],
        };
        for &(name, out, inp) in dense {
            specs.push(spec(&format!("{name}.weight"), &[out, inp], inp));
            specs.push(spec(&format!("{name}.bias"), &[out], inp));
        }
        specs
    }

    /// Logits for normalised NCHW input.
    pub(crate) fn forward(self, p: &Params, x: &Tensor) -> Result<Tensor> {
        let conv = |x: &Tensor, name: &str, pad: usize| -> Result<Tensor> {
            Ok(conv2d(
                x,
                p.get(&format!("{name}.weight"))?,
                Some(p.get(&format!("{name}.bias"))?),
                1,
                [pad; 4],
                1,
                1,
            )?
            .relu()?)
        };
        let dense = |x: &Tensor, name: &str| -> Result<Tensor> {
            linear(
                x,
                p.get(&format!("{name}.weight"))?,
                Some(p.get(&format!("{name}.bias"))?),
            )
        };
        match self {
            Arch::Mlp => {
                let x = x.flatten_from(1)?;
                let x = dense(&x, "fc1")?.relu()?;
                let x = dense(&x, "fc2")?.relu()?;
                dense(&x, "fc3")
            }
            Arch::Cnn => {
                let x = pool2d(&conv(x, "conv1", 2)?, Pool2d::max(2))?;
                let x = pool2d(&conv(&x, "conv2", 2)?, Pool2d::max(2))?;
                let x = dense(&x.flatten_from(1)?, "fc1")?.relu()?;
                dense(&x, "fc2")
            }
            Arch::CifarCnn => {
                let x = conv(x, "conv1", 1)?;
                let x = pool2d(&conv(&x, "conv2", 1)?, Pool2d::max(2))?;
                let x = conv(&x, "conv3", 1)?;
                let x = pool2d(&conv(&x, "conv4", 1)?, Pool2d::max(2))?;
                let x = dense(&x.flatten_from(1)?, "fc1")?.relu()?;
                dense(&x, "fc2")
            }
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
