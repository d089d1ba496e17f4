//! The one table of ONNX operators the importer understands: each row names the
//! operator, parses its attributes into a typed [`Op`], and says what the docs
//! list shows. The importer, `SUPPORTED_OPS`, the docs and the README list all
//! come from [`OPERATORS`].

use crate::graph::op::{CastTo, Coordinates, Distribution, PadMode};
use crate::graph::{
    BinaryOp as B, CompareOp as C, Op, ReduceOp as R, ResizeMode, UnaryOp as U, VariadicOp as V,
};
use crate::layers::{Pool2d, PoolKind};

use super::proto::{AttributeProto, NodeProto};

/// A node being parsed: its attributes and the model's default-domain opset.
pub(super) struct NodeCtx<'a> {
    pub node: &'a NodeProto,
    pub opset: i64,
}

type Parsed = std::result::Result<Op, String>;

impl NodeCtx<'_> {
    fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.node
            .attribute
            .iter()
            .find(|a| a.name.as_deref() == Some(name))
    }
    fn i(&self, name: &str, default: i64) -> i64 {
        self.attr(name).and_then(|a| a.i).unwrap_or(default)
    }
    fn f(&self, name: &str, default: f64) -> f64 {
        self.attr(name)
            .and_then(|a| a.f)
            .map(f64::from)
            .unwrap_or(default)
    }
    fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.attr(name).map(|a| a.ints.clone())
    }
    fn s(&self, name: &str) -> Option<String> {
        self.attr(name)
            .and_then(|a| a.s.as_ref())
            .map(|s| String::from_utf8_lossy(s).into_owned())
    }
    fn flag(&self, name: &str, default: i64) -> bool {
        self.i(name, default) != 0
    }
}

/// One supported operator.
pub struct OperatorSpec {
    /// The ONNX `op_type` (default domain).
    pub name: &'static str,
    /// What is supported, when it is less than the whole specification.
    pub note: &'static str,
    pub(super) parse: fn(&NodeCtx) -> Parsed,
}

macro_rules! ops {
    ($($name:literal $(($note:literal))? => $parse:expr,)*) => {
        /// Every ONNX operator Gauntlet imports, in alphabetical order.
        pub static OPERATORS: &[OperatorSpec] = &[
            $(OperatorSpec { name: $name, note: ops!(@note $($note)?), parse: $parse },)*
        ];
    };
    (@note) => { "" };
    (@note $note:literal) => { $note };
}

ops! {
    "Abs" => |_| Ok(Op::Unary(U::Abs)),
    "Add" => |_| Ok(Op::Binary(B::Add)),
    "And" => |_| Ok(Op::Binary(B::And)),
    "AveragePool" ("2-D; no dilation") => |c| pool(c, false),
    "BatchNormalization" ("inference mode") => |c| {
        if c.flag("training_mode", 0) {
            return Err("training_mode=1 is not an inference graph; export with model.eval()".into());
        }
        Ok(Op::BatchNorm { epsilon: c.f("epsilon", 1e-5) })
    },
    "Cast" ("to float, integer and bool types") => cast,
    "Ceil" => |_| Ok(Op::Unary(U::Ceil)),
    "Celu" => |c| Ok(Op::Unary(U::Celu { alpha: c.f("alpha", 1.0) })),
    "Clip" => |c| Ok(Op::Clip {
        min: c.attr("min").and_then(|a| a.f).map(f64::from),
        max: c.attr("max").and_then(|a| a.f).map(f64::from),
    }),
    "Concat" ("any axis") => |c| Ok(Op::Concat(c.i("axis", 0))),
    "ConstantOfShape" => |c| {
        let value = match c.attr("value").and_then(|a| a.t.as_ref()) {
            Some(t) => super::model::decode_tensor_plain(t)?,
            None => candle_core::Tensor::new(&[0f32], &candle_core::Device::Cpu).map_err(|e| e.to_string())?,
        };
        Ok(Op::ConstantOfShape(value))
    },
    "Conv" ("2-D; equal height/width strides and dilations; explicit pads") => conv,
    "Cos" => |_| Ok(Op::Unary(U::Cos)),
    "Div" => |_| Ok(Op::Binary(B::Div)),
    "Dropout" ("inference: identity") => |_| Ok(Op::Identity),
    "Einsum" ("one or two operands, no '...' or diagonals") => |c| {
        c.s("equation").map(Op::Einsum).ok_or_else(|| "the equation attribute is missing".into())
    },
    "Elu" => |c| Ok(Op::Unary(U::Elu { alpha: c.f("alpha", 1.0) })),
    "Equal" => |_| Ok(Op::Compare(C::Equal)),
    "Erf" => |_| Ok(Op::Unary(U::Erf)),
    "Exp" => |_| Ok(Op::Unary(U::Exp)),
    "Expand" => |_| Ok(Op::Expand),
    "Flatten" => |c| Ok(Op::Flatten(c.i("axis", 1))),
    "Floor" => |_| Ok(Op::Unary(U::Floor)),
    "Gather" => |c| Ok(Op::Gather(c.i("axis", 0))),
    "GatherElements" => |c| Ok(Op::GatherElements(c.i("axis", 0))),
    "GatherND" ("batch_dims 0") => |c| Ok(Op::GatherNd {
        batch_dims: usize::try_from(c.i("batch_dims", 0)).map_err(|_| "negative batch_dims".to_string())?,
    }),
    "Gelu" => |c| Ok(Op::Unary(U::Gelu { tanh: c.s("approximate").as_deref() == Some("tanh") })),
    "Gemm" => |c| Ok(Op::Gemm {
        alpha: c.f("alpha", 1.0),
        beta: c.f("beta", 1.0),
        trans_a: c.flag("transA", 0),
        trans_b: c.flag("transB", 0),
    }),
    "GlobalAveragePool" => |_| Ok(Op::GlobalPool { max: false }),
    "GlobalMaxPool" => |_| Ok(Op::GlobalPool { max: true }),
    "Greater" => |_| Ok(Op::Compare(C::Greater)),
    "GreaterOrEqual" => |_| Ok(Op::Compare(C::GreaterOrEqual)),
    "GroupNormalization" ("opset 18 per-group and opset 21 per-channel scales") => |c| Ok(Op::GroupNorm {
        groups: usize::try_from(c.i("num_groups", 0)).map_err(|_| "negative num_groups".to_string())?,
        epsilon: c.f("epsilon", 1e-5),
    }),
    "HardSigmoid" => |c| Ok(Op::Unary(U::HardSigmoid { alpha: c.f("alpha", 0.2), beta: c.f("beta", 0.5) })),
    "HardSwish" => |_| Ok(Op::Unary(U::HardSwish)),
    "Identity" => |_| Ok(Op::Identity),
    "InstanceNormalization" => |c| Ok(Op::InstanceNorm { epsilon: c.f("epsilon", 1e-5) }),
    "IsInf" => |_| Ok(Op::Unary(U::IsInf)),
    "IsNaN" => |_| Ok(Op::Unary(U::IsNaN)),
    "LayerNormalization" => |c| Ok(Op::LayerNorm { axis: c.i("axis", -1), epsilon: c.f("epsilon", 1e-5) }),
    "LeakyRelu" => |c| Ok(Op::Unary(U::LeakyRelu { alpha: c.f("alpha", 0.01) })),
    "Less" => |_| Ok(Op::Compare(C::Less)),
    "LessOrEqual" => |_| Ok(Op::Compare(C::LessOrEqual)),
    "Log" => |_| Ok(Op::Unary(U::Log)),
    "LogSoftmax" => |c| softmax(c, true),
    "MatMul" ("batched, broadcast") => |_| Ok(Op::MatMul),
    "Max" => |_| Ok(Op::Variadic(V::Max)),
    "MaxPool" ("2-D; no dilation, no Indices output") => |c| pool(c, true),
    "Mean" => |_| Ok(Op::Variadic(V::Mean)),
    "Min" => |_| Ok(Op::Variadic(V::Min)),
    "Mish" => |_| Ok(Op::Unary(U::Mish)),
    "Mod" => |c| Ok(Op::Binary(B::Mod { fmod: c.flag("fmod", 0) })),
    "Mul" => |_| Ok(Op::Binary(B::Mul)),
    "Neg" => |_| Ok(Op::Unary(U::Neg)),
    "Not" => |_| Ok(Op::Unary(U::Not)),
    "Or" => |_| Ok(Op::Binary(B::Or)),
    "Pad" ("constant, reflect, edge, wrap") => pad,
    "Pow" => |_| Ok(Op::Binary(B::Pow)),
    "PRelu" => |_| Ok(Op::PRelu),
    "RandomNormal" ("drawn from the run's seed, not the seed attribute") => |c| random(c, true, false),
    "RandomNormalLike" ("drawn from the run's seed, not the seed attribute") => |c| random(c, true, true),
    "RandomUniform" ("drawn from the run's seed, not the seed attribute") => |c| random(c, false, false),
    "RandomUniformLike" ("drawn from the run's seed, not the seed attribute") => |c| random(c, false, true),
    "Range" => |_| Ok(Op::Range),
    "Reciprocal" => |_| Ok(Op::Unary(U::Reciprocal)),
    "ReduceL1" => |c| reduce(c, R::L1, 18),
    "ReduceL2" => |c| reduce(c, R::L2, 18),
    "ReduceLogSumExp" => |c| reduce(c, R::LogSumExp, 18),
    "ReduceMax" => |c| reduce(c, R::Max, 18),
    "ReduceMean" => |c| reduce(c, R::Mean, 18),
    "ReduceMin" => |c| reduce(c, R::Min, 18),
    "ReduceProd" => |c| reduce(c, R::Prod, 18),
    "ReduceSum" => |c| reduce(c, R::Sum, 13),
    "ReduceSumSquare" => |c| reduce(c, R::SumSquare, 18),
    "Relu" => |_| Ok(Op::Unary(U::Relu)),
    "Reshape" => |c| Ok(Op::Reshape { allow_zero: c.flag("allowzero", 0) }),
    "Resize" ("nearest and linear; no antialiasing when shrinking") => resize,
    "Round" => |_| Ok(Op::Unary(U::Round)),
    "ScatterND" ("reduction none") => |c| match c.s("reduction").as_deref() {
        None | Some("none") => Ok(Op::ScatterNd),
        Some(other) => Err(format!("reduction {other} is not supported")),
    },
    "Selu" => |c| Ok(Op::Unary(U::Selu { alpha: c.f("alpha", 1.673_263_192_176_818_8), gamma: c.f("gamma", 1.050_700_987_354_030_2) })),
    "Shape" => |c| Ok(Op::Shape { start: c.i("start", 0), end: c.attr("end").and_then(|a| a.i) }),
    "Sigmoid" => |_| Ok(Op::Unary(U::Sigmoid)),
    "Sign" => |_| Ok(Op::Unary(U::Sign)),
    "Sin" => |_| Ok(Op::Unary(U::Sin)),
    "Size" => |_| Ok(Op::Size),
    "Slice" ("any steps, including negative") => |c| Ok(if c.opset < 10 {
        Op::Slice { starts: c.ints("starts"), ends: c.ints("ends"), axes: c.ints("axes") }
    } else {
        Op::Slice { starts: None, ends: None, axes: None }
    }),
    "Softmax" => |c| softmax(c, false),
    "Softplus" => |_| Ok(Op::Unary(U::Softplus)),
    "Softsign" => |_| Ok(Op::Unary(U::Softsign)),
    "Split" ("any axis") => |c| Ok(Op::Split { axis: c.i("axis", 0), sizes: c.ints("split") }),
    "Sqrt" => |_| Ok(Op::Unary(U::Sqrt)),
    "Squeeze" => |c| Ok(Op::Squeeze(c.ints("axes"))),
    "Sub" => |_| Ok(Op::Binary(B::Sub)),
    "Sum" => |_| Ok(Op::Variadic(V::Sum)),
    "Tanh" => |_| Ok(Op::Unary(U::Tanh)),
    "Tile" => |_| Ok(Op::Tile),
    "Transpose" => |c| Ok(Op::Transpose(
        c.ints("perm")
            .map(|p| p.into_iter().map(|v| usize::try_from(v).map_err(|_| format!("perm value {v} is negative"))).collect::<std::result::Result<Vec<_>, _>>())
            .transpose()?,
    )),
    "Unsqueeze" => |c| Ok(Op::Unsqueeze(c.ints("axes"))),
    "Upsample" ("nearest and linear") => upsample,
    "Where" => |_| Ok(Op::Where),
    "Xor" => |_| Ok(Op::Binary(B::Xor)),
}

/// The row for `op_type`, if supported.
pub(super) fn lookup(op_type: &str) -> Option<&'static OperatorSpec> {
    OPERATORS.iter().find(|o| o.name == op_type)
}

/// The usual way around an operator the importer lacks.
pub(super) fn hint(op_type: &str, domain: Option<&str>) -> &'static str {
    match (op_type, domain) {
        (_, Some(d)) if !d.is_empty() && d != "ai.onnx" => {
            "it comes from a custom domain: export without backend-specific fusions (plain torch.onnx.export, no onnxruntime graph optimisation)"
        }
        ("If" | "Loop" | "Scan", _) => {
            "data-dependent control flow: export with fixed input shapes and no Python branching on tensor values"
        }
        ("ConvTranspose" | "DepthToSpace" | "SpaceToDepth", _) => {
            "not an image-classifier operator Gauntlet implements; try the other exporter (torch.onnx.export(..., dynamo=False) or dynamo=True)"
        }
        _ => "try the other exporter (torch.onnx.export(..., dynamo=False) or dynamo=True), or a different opset_version",
    }
}

fn usize_of(v: i64, what: &str) -> std::result::Result<usize, String> {
    usize::try_from(v).map_err(|_| format!("{what} {v} must be non-negative"))
}

/// Two equal spatial values (the convolution kernel supports square strides/dilations).
fn square(values: Option<Vec<i64>>, what: &str) -> std::result::Result<usize, String> {
    match values.as_deref() {
        None | Some([]) => Ok(1),
        Some([a, b]) if a == b => usize_of(*a, what),
        Some(other) => Err(format!(
            "{what} {other:?} is not supported, only equal height and width values"
        )),
    }
}

/// ONNX pads `[x1_begin, x2_begin, x1_end, x2_end]` as `[top, left, bottom, right]`.
fn pads2d(c: &NodeCtx) -> std::result::Result<[usize; 4], String> {
    match c.s("auto_pad").as_deref() {
        None | Some("NOTSET") | Some("VALID") | Some("") => {}
        Some(other) => {
            return Err(format!(
                "auto_pad {other} is not supported; export with explicit pads"
            ))
        }
    }
    match c.ints("pads").as_deref() {
        None | Some([]) => Ok([0; 4]),
        Some([t, l, b, r]) => Ok([
            usize_of(*t, "pad")?,
            usize_of(*l, "pad")?,
            usize_of(*b, "pad")?,
            usize_of(*r, "pad")?,
        ]),
        Some(other) => Err(format!("pads {other:?} are not 2-D")),
    }
}

fn conv(c: &NodeCtx) -> Parsed {
    Ok(Op::Conv {
        stride: square(c.ints("strides"), "strides")?,
        pads: pads2d(c)?,
        dilation: square(c.ints("dilations"), "dilations")?,
        groups: usize_of(c.i("group", 1), "group")?,
    })
}

fn pool(c: &NodeCtx, max: bool) -> Parsed {
    if max && c.node.output.iter().skip(1).any(|o| !o.is_empty()) {
        return Err("the Indices output is not supported".into());
    }
    let kernel = match c.ints("kernel_shape").as_deref() {
        Some([h, w]) => (usize_of(*h, "kernel")?, usize_of(*w, "kernel")?),
        other => return Err(format!("kernel_shape {other:?} is not 2-D")),
    };
    let stride = match c.ints("strides").as_deref() {
        None | Some([]) => (1, 1),
        Some([a, b]) => (usize_of(*a, "stride")?, usize_of(*b, "stride")?),
        Some(other) => return Err(format!("strides {other:?} are not 2-D")),
    };
    if square(c.ints("dilations"), "dilations")? != 1 {
        return Err("dilated pooling is not supported".into());
    }
    let kind = if max {
        PoolKind::Max
    } else {
        PoolKind::Avg {
            count_include_pad: c.flag("count_include_pad", 0),
        }
    };
    Ok(Op::Pool(Pool2d {
        kind,
        kernel,
        stride,
        pads: pads2d(c)?,
        ceil_mode: c.flag("ceil_mode", 0),
    }))
}

fn softmax(c: &NodeCtx, log: bool) -> Parsed {
    Ok(Op::Softmax {
        axis: c.i("axis", if c.opset < 13 { 1 } else { -1 }),
        legacy: c.opset < 13,
        log,
    })
}

/// Reductions take their axes as an input from `input_since` on (13 for
/// ReduceSum, 18 for the others), as an attribute before.
fn reduce(c: &NodeCtx, op: R, input_since: i64) -> Parsed {
    Ok(Op::Reduce {
        op,
        axes: if c.opset < input_since {
            c.ints("axes")
        } else {
            None
        },
        keep_dims: c.flag("keepdims", 1),
        noop_with_empty_axes: c.flag("noop_with_empty_axes", 0),
    })
}

fn cast(c: &NodeCtx) -> Parsed {
    use super::proto::data_type as t;
    let to = c.i("to", 0) as i32;
    Ok(Op::Cast(match to {
        t::FLOAT | t::DOUBLE | t::FLOAT16 | t::BFLOAT16 => CastTo::Float,
        t::BOOL => CastTo::Bool,
        t::INT8 | t::INT16 | t::INT32 | t::INT64 | t::UINT8 | t::UINT16 | t::UINT32 | t::UINT64 => {
            CastTo::Integer
        }
        other => return Err(format!("cast to data type {other} is not supported")),
    }))
}

/// `RandomNormal[Like]` and `RandomUniform[Like]`: the distribution from the
/// attributes, the shape from `shape` (or input 0's for `-Like`). The `seed`
/// attribute is ignored on purpose: every draw comes from the run's recorded seed.
fn random(c: &NodeCtx, normal: bool, like: bool) -> Parsed {
    use super::proto::data_type as t;
    if let Some(dtype) = c.attr("dtype").and_then(|a| a.i) {
        let dtype = dtype as i32;
        if ![t::FLOAT, t::DOUBLE, t::FLOAT16, t::BFLOAT16].contains(&dtype) {
            return Err(format!("data type {dtype} is not a floating-point type"));
        }
    }
    let distribution = if normal {
        Distribution::Normal {
            mean: c.f("mean", 0.0),
            scale: c.f("scale", 1.0),
        }
    } else {
        Distribution::Uniform {
            low: c.f("low", 0.0),
            high: c.f("high", 1.0),
        }
    };
    distribution.check()?;
    let shape = if like {
        None
    } else {
        let dims = c
            .ints("shape")
            .ok_or_else(|| "the shape attribute is missing".to_string())?;
        Some(
            dims.into_iter()
                .map(|d| usize_of(d, "shape dimension"))
                .collect::<std::result::Result<Vec<_>, _>>()?,
        )
    };
    Ok(Op::Random {
        distribution,
        shape,
    })
}

fn pad(c: &NodeCtx) -> Parsed {
    let mode = match c.s("mode").as_deref() {
        None | Some("constant") => PadMode::Constant,
        Some("reflect") => PadMode::Reflect,
        Some("edge") => PadMode::Edge,
        Some("wrap") => PadMode::Wrap,
        Some(other) => return Err(format!("pad mode {other} is not supported")),
    };
    Ok(Op::Pad {
        mode,
        pads: if c.opset < 11 { c.ints("pads") } else { None },
        value: c.f("value", 0.0),
    })
}

fn resize(c: &NodeCtx) -> Parsed {
    let coordinates = match c.s("coordinate_transformation_mode").as_deref() {
        None | Some("half_pixel") => Coordinates::HalfPixel,
        Some("pytorch_half_pixel") => Coordinates::PytorchHalfPixel,
        Some("align_corners") => Coordinates::AlignCorners,
        Some("asymmetric") => Coordinates::Asymmetric,
        Some(other) => {
            return Err(format!(
                "coordinate_transformation_mode {other} is not supported"
            ))
        }
    };
    if c.ints("axes").is_some() {
        return Err("the axes attribute is not supported; export without it".into());
    }
    if c.flag("antialias", 0) {
        return Err(
            "antialiased resizing is not supported; use antialias=False in the model".into(),
        );
    }
    // Opset 10's Resize reads (X, scales): the importer moves scales to input 2.
    resize_with(c, coordinates)
}

fn resize_with(c: &NodeCtx, coordinates: Coordinates) -> Parsed {
    let mode = match c.s("mode").as_deref() {
        None | Some("nearest") => ResizeMode::Nearest {
            rounding: match c.s("nearest_mode").as_deref() {
                None | Some("round_prefer_floor") => 0,
                Some("round_prefer_ceil") => 1,
                Some("floor") => 2,
                Some("ceil") => 3,
                Some(other) => return Err(format!("nearest_mode {other} is not supported")),
            },
        },
        Some("linear" | "bilinear") => ResizeMode::Linear,
        Some(other) => {
            return Err(format!(
                "mode {other} is not supported (nearest and linear are)"
            ))
        }
    };
    Ok(Op::Resize { mode, coordinates })
}

/// The old `Upsample` (X, scales): asymmetric coordinates, nearest rounds down.
fn upsample(c: &NodeCtx) -> Parsed {
    Ok(match resize_with(c, Coordinates::Asymmetric)? {
        Op::Resize {
            mode: ResizeMode::Nearest { .. },
            coordinates,
        } => Op::Resize {
            mode: ResizeMode::Nearest { rounding: 2 },
            coordinates,
        },
        other => other,
    })
}

/// The supported-operator list as a Markdown table (`docs/models.md` holds it
/// verbatim; a test keeps the two equal).
pub fn operators_markdown() -> String {
    let mut out = String::from("| operator | supported |\n|---|---|\n");
    for op in OPERATORS {
        let note = if op.note.is_empty() { "yes" } else { op.note };
        out.push_str(&format!("| `{}` | {note} |\n", op.name));
    }
    out
}
