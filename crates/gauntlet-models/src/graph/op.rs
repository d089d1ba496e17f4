//! The IR's operators, with their attributes parsed and typed.

use candle_core::{DType, Tensor};

use crate::layers::Pool2d;
use crate::Result;

/// Elementwise functions of one input.
#[derive(Clone, Copy, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum UnaryOp {
    Relu,
    LeakyRelu { alpha: f64 },
    Sigmoid,
    Tanh,
    HardSigmoid { alpha: f64, beta: f64 },
    HardSwish,
    Softplus,
    Softsign,
    Elu { alpha: f64 },
    Selu { alpha: f64, gamma: f64 },
    Celu { alpha: f64 },
    Mish,
    Gelu { tanh: bool },
    Erf,
    Sqrt,
    Reciprocal,
    Neg,
    Abs,
    Exp,
    Log,
    Sin,
    Cos,
    Floor,
    Ceil,
    Round,
    Sign,
    Not,
    IsNaN,
    IsInf,
}

/// Elementwise functions of two inputs with ONNX (numpy) broadcasting.
#[derive(Clone, Copy, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Mod { fmod: bool },
    And,
    Or,
    Xor,
}

/// Comparisons, producing booleans (stored as `u8`).
#[derive(Clone, Copy, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum CompareOp {
    Equal,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

/// Elementwise reductions over any number of inputs (`Sum`, `Mean`, `Max`, `Min`).
#[derive(Clone, Copy, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum VariadicOp {
    Sum,
    Mean,
    Max,
    Min,
}

/// Reductions over axes.
#[derive(Clone, Copy, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum ReduceOp {
    Mean,
    Sum,
    Max,
    Min,
    Prod,
    L1,
    L2,
    SumSquare,
    LogSumExp,
}

/// How `Resize` interpolates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ResizeMode {
    /// Nearest neighbour with ONNX's `nearest_mode` rounding.
    Nearest {
        /// `round_prefer_floor` (ONNX's default), `round_prefer_ceil`, `floor`, `ceil` as 0..=3.
        rounding: u8,
    },
    /// Bilinear (separable linear interpolation on each spatial axis).
    Linear,
}

/// The distribution a random operator draws from, with ONNX's parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Distribution {
    /// `RandomNormal`: mean and standard deviation (`scale`).
    Normal {
        /// Mean.
        mean: f64,
        /// Standard deviation.
        scale: f64,
    },
    /// `RandomUniform`: uniform on `[low, high)`.
    Uniform {
        /// Lower bound.
        low: f64,
        /// Upper bound.
        high: f64,
    },
}

impl Distribution {
    /// The distribution's mean: what a random operator returns when a graph runs
    /// without noise (shape probes, and the noiseless reference in tests).
    pub fn mean(&self) -> f64 {
        match *self {
            Distribution::Normal { mean, .. } => mean,
            Distribution::Uniform { low, high } => 0.5 * (low + high),
        }
    }

    /// `count` values drawn from `stream`, or the mean everywhere without one.
    /// Both executors draw through here, so the reference executor and the
    /// native engine see the same noise for the same stream.
    pub fn values(&self, count: usize, stream: Option<&gauntlet_core::SeedStream>) -> Vec<f32> {
        match (stream, *self) {
            (None, d) => vec![d.mean() as f32; count],
            (Some(s), Distribution::Normal { mean, scale }) => {
                let (mean, scale) = (mean as f32, scale as f32);
                s.normal_f32(count)
                    .into_iter()
                    .map(|z| mean + scale * z)
                    .collect()
            }
            (Some(s), Distribution::Uniform { low, high }) => {
                s.uniform_f32(count, low as f32, high as f32)
            }
        }
    }

    /// Refuse parameters no draw can follow (sampling would otherwise panic on
    /// an empty or non-finite range): finite values, `low < high`.
    pub fn check(&self) -> std::result::Result<(), String> {
        match *self {
            Distribution::Normal { mean, scale } if !(mean.is_finite() && scale.is_finite()) => {
                Err(format!("mean {mean} and scale {scale} must be finite"))
            }
            Distribution::Uniform { low, high }
                if !(low.is_finite() && high.is_finite() && low < high) =>
            {
                Err(format!(
                    "low {low} and high {high} must be finite with low < high"
                ))
            }
            _ => Ok(()),
        }
    }
}

/// One typed operator.
#[derive(Clone, Debug)]
#[allow(missing_docs)]
pub enum Op {
    Unary(UnaryOp),
    Binary(BinaryOp),
    Compare(CompareOp),
    Variadic(VariadicOp),
    /// `where(cond, x, y)` with broadcasting.
    Where,
    /// Clamp; bounds from attributes (opset < 11) or inputs 1 and 2.
    Clip {
        min: Option<f64>,
        max: Option<f64>,
    },
    /// Leaky ReLU with a learned, broadcast slope (input 1).
    PRelu,
    /// Convert to a type: floats become the graph's float type, integers `i64`, booleans `u8`.
    Cast(CastTo),
    /// 2-D convolution over NCHW (input 2 is the optional bias).
    Conv {
        stride: usize,
        pads: [usize; 4],
        dilation: usize,
        groups: usize,
    },
    /// Inference-mode batch normalisation over channel axis 1 (inputs: x, scale, bias, mean, var).
    BatchNorm {
        epsilon: f64,
    },
    /// `x * scale + shift` per channel (axis 1): batch normalisation with constant statistics, folded.
    Affine {
        scale: Tensor,
        shift: Tensor,
    },
    /// Normalisation over the axes from `axis` to the last (inputs: x, scale, optional bias).
    LayerNorm {
        axis: i64,
        epsilon: f64,
    },
    /// Normalisation over channel groups (inputs: x, scale, bias).
    GroupNorm {
        groups: usize,
        epsilon: f64,
    },
    /// Per-sample, per-channel normalisation over the spatial axes.
    InstanceNorm {
        epsilon: f64,
    },
    Pool(Pool2d),
    GlobalPool {
        max: bool,
    },
    Gemm {
        alpha: f64,
        beta: f64,
        trans_a: bool,
        trans_b: bool,
    },
    /// Matrix product with numpy semantics (batched, broadcast, 1-D operands).
    MatMul,
    /// Einstein summation of one or two operands.
    Einsum(String),
    Softmax {
        axis: i64,
        legacy: bool,
        log: bool,
    },
    /// Reduction; axes from the attribute or input 1.
    Reduce {
        op: ReduceOp,
        axes: Option<Vec<i64>>,
        keep_dims: bool,
        noop_with_empty_axes: bool,
    },
    Shape {
        start: i64,
        end: Option<i64>,
    },
    Size,
    Gather(i64),
    GatherElements(i64),
    GatherNd {
        batch_dims: usize,
    },
    ScatterNd,
    Unsqueeze(Option<Vec<i64>>),
    Squeeze(Option<Vec<i64>>),
    Concat(i64),
    /// Split along `axis`; sizes from input 1, the attribute, or equal parts.
    Split {
        axis: i64,
        sizes: Option<Vec<i64>>,
    },
    Transpose(Option<Vec<usize>>),
    Flatten(i64),
    Reshape {
        allow_zero: bool,
    },
    /// Broadcast to a shape (input 1).
    Expand,
    /// Repeat along each axis (input 1).
    Tile,
    /// Slice; starts/ends/axes/steps from attributes (opset < 10) or inputs 1..=4.
    Slice {
        starts: Option<Vec<i64>>,
        ends: Option<Vec<i64>>,
        axes: Option<Vec<i64>>,
    },
    /// Padding; amounts from the attribute (opset < 11) or inputs 1 (pads), 2 (value), 3 (axes).
    Pad {
        mode: PadMode,
        pads: Option<Vec<i64>>,
        value: f64,
    },
    /// Resize the spatial axes (inputs: x, roi, scales, sizes).
    Resize {
        mode: ResizeMode,
        /// ONNX `coordinate_transformation_mode`.
        coordinates: Coordinates,
    },
    /// A tensor of the shape given by input 0, filled with a value.
    ConstantOfShape(Tensor),
    /// `start, start + delta, …` below `limit` (inputs 0..=2).
    Range,
    /// Returns its input (also `Dropout` in inference).
    Identity,
    /// Fresh random values on every forward pass (`torch.randn_like`, `rand_like`
    /// as exporters write them), drawn from the model's seeded [`super::NoiseSource`];
    /// the shape is the attribute's, or input 0's for the `-Like` forms. No gradient
    /// flows through it (its values do not depend on its input's).
    Random {
        distribution: Distribution,
        shape: Option<Vec<usize>>,
    },
}

/// Target of a `Cast`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CastTo {
    /// Any floating-point type: the graph's float type.
    Float,
    /// Any integer type: `i64`.
    Integer,
    /// `bool`: `u8` 0/1.
    Bool,
}

/// How `Pad` fills.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PadMode {
    /// With a constant value.
    Constant,
    /// Mirrored at the edge, without repeating it.
    Reflect,
    /// Repeating the edge value.
    Edge,
    /// Wrapping around.
    Wrap,
}

/// How `Resize` maps output coordinates to input coordinates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Coordinates {
    /// `(x + 0.5) / scale - 0.5` (ONNX's default, PyTorch's `align_corners=False`).
    HalfPixel,
    /// Like half-pixel, but 0 for outputs of length 1.
    PytorchHalfPixel,
    /// `x * (in - 1) / (out - 1)` (`align_corners=True`).
    AlignCorners,
    /// `x / scale` (PyTorch's nearest).
    Asymmetric,
}

impl Op {
    /// Convert tensors held in the op itself to `dtype` (floating-point ones only).
    pub(crate) fn convert_floats(&mut self, dtype: DType) -> Result<()> {
        match self {
            Op::Affine { scale, shift } => {
                *scale = scale.to_dtype(dtype)?;
                *shift = shift.to_dtype(dtype)?;
            }
            Op::ConstantOfShape(value) if value.dtype().is_float() => {
                *value = value.to_dtype(dtype)?;
            }
            _ => {}
        }
        Ok(())
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The variant's name without its parameters (`Gelu`, not `Gelu { tanh: false }`).
        let bare = |debug: String| {
            debug
                .split([' ', '{', '('])
                .next()
                .unwrap_or_default()
                .to_string()
        };
        let name = match self {
            Op::Unary(u) => return f.write_str(&bare(format!("{u:?}"))),
            Op::Binary(b) => return f.write_str(&bare(format!("{b:?}"))),
            Op::Compare(c) => return write!(f, "{c:?}"),
            Op::Variadic(v) => return write!(f, "{v:?}"),
            Op::Reduce { op, .. } => return write!(f, "Reduce{op:?}"),
            Op::Where => "Where",
            Op::Clip { .. } => "Clip",
            Op::PRelu => "PRelu",
            Op::Cast(_) => "Cast",
            Op::Conv { .. } => "Conv",
            Op::BatchNorm { .. } => "BatchNormalization",
            Op::Affine { .. } => "Affine",
            Op::LayerNorm { .. } => "LayerNormalization",
            Op::GroupNorm { .. } => "GroupNormalization",
            Op::InstanceNorm { .. } => "InstanceNormalization",
            Op::Pool(p) => match p.kind {
                crate::layers::PoolKind::Max => "MaxPool",
                crate::layers::PoolKind::Avg { .. } => "AveragePool",
            },
            Op::GlobalPool { max: true } => "GlobalMaxPool",
            Op::GlobalPool { max: false } => "GlobalAveragePool",
            Op::Gemm { .. } => "Gemm",
            Op::MatMul => "MatMul",
            Op::Einsum(_) => "Einsum",
            Op::Softmax { log: false, .. } => "Softmax",
            Op::Softmax { log: true, .. } => "LogSoftmax",
            Op::Shape { .. } => "Shape",
            Op::Size => "Size",
            Op::Gather(_) => "Gather",
            Op::GatherElements(_) => "GatherElements",
            Op::GatherNd { .. } => "GatherND",
            Op::ScatterNd => "ScatterND",
            Op::Unsqueeze(_) => "Unsqueeze",
            Op::Squeeze(_) => "Squeeze",
            Op::Concat(_) => "Concat",
            Op::Split { .. } => "Split",
            Op::Transpose(_) => "Transpose",
            Op::Flatten(_) => "Flatten",
            Op::Reshape { .. } => "Reshape",
            Op::Expand => "Expand",
            Op::Tile => "Tile",
            Op::Slice { .. } => "Slice",
            Op::Pad { .. } => "Pad",
            Op::Resize { .. } => "Resize",
            Op::ConstantOfShape(_) => "ConstantOfShape",
            Op::Range => "Range",
            Op::Identity => "Identity",
            Op::Random {
                distribution,
                shape,
            } => {
                let base = match distribution {
                    Distribution::Normal { .. } => "RandomNormal",
                    Distribution::Uniform { .. } => "RandomUniform",
                };
                return write!(f, "{base}{}", if shape.is_none() { "Like" } else { "" });
            }
        };
        f.write_str(name)
    }
}
