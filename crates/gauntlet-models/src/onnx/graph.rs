use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use gauntlet_core::{Bounds, Classifier};
use prost::Message;

use super::proto::{self, data_type, AttributeProto, NodeProto, TensorProto};
use crate::layers::{conv2d, linear, log_softmax_dim, pool2d, softmax_dim, Pool2d, PoolKind};
use crate::network::Normalization;
use crate::{Error, Result};

/// Operator types the interpreter implements.
pub const SUPPORTED_OPS: &[&str] = &[
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Clip",
    "Concat",
    "Constant",
    "Conv",
    "Div",
    "Dropout",
    "Flatten",
    "Gather",
    "Gemm",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Identity",
    "LeakyRelu",
    "LogSoftmax",
    "MatMul",
    "MaxPool",
    "Mul",
    "Relu",
    "Reshape",
    "Shape",
    "Sigmoid",
    "Softmax",
    "Squeeze",
    "Sub",
    "Tanh",
    "Transpose",
    "Unsqueeze",
];

#[derive(Clone, Debug)]
enum Op {
    Conv {
        stride: usize,
        pads: [usize; 4],
        dilation: usize,
        groups: usize,
    },
    /// BatchNormalization folded to `x * scale + shift`, both `(1, C, 1, 1)`.
    Affine {
        scale: Tensor,
        shift: Tensor,
    },
    Relu,
    LeakyRelu(f64),
    Sigmoid,
    Tanh,
    Clip {
        min: Option<f64>,
        max: Option<f64>,
    },
    Identity,
    Pool(Pool2d),
    GlobalAvgPool,
    GlobalMaxPool,
    Add,
    Sub,
    Mul,
    Div,
    Flatten(i64),
    Reshape {
        allow_zero: bool,
    },
    Gemm {
        alpha: f64,
        beta: f64,
        trans_a: bool,
        trans_b: bool,
    },
    MatMul,
    Softmax {
        axis: i64,
        legacy: bool,
        log: bool,
    },
    Shape,
    Gather(i64),
    Unsqueeze(Option<Vec<i64>>),
    Squeeze(Option<Vec<i64>>),
    Concat(i64),
    Transpose(Option<Vec<usize>>),
}

#[derive(Clone, Debug)]
struct Node {
    name: String,
    op: Op,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

/// An ONNX graph interpreted with differentiable candle ops.
#[derive(Clone, Debug)]
pub struct OnnxModel {
    nodes: Vec<Node>,
    constants: HashMap<String, Tensor>,
    input: String,
    output: String,
    input_shape: [usize; 3],
    num_classes: usize,
    normalization: Normalization,
    bounds: Bounds,
    device: Device,
    /// Values one sample produces across all nodes (measured by the probe run).
    activations_per_sample: usize,
}

fn format_err(path: &Path, message: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

impl OnnxModel {
    /// Parse an ONNX model. `input_shape` overrides the graph's declared input
    /// shape (needed when it is symbolic).
    pub fn from_bytes(
        path: &Path,
        bytes: &[u8],
        input_shape: Option<[usize; 3]>,
        normalization: Normalization,
        bounds: Bounds,
        device: &Device,
    ) -> Result<Self> {
        let model = proto::ModelProto::decode(bytes)
            .map_err(|e| format_err(path, format!("not a valid ONNX protobuf: {e}")))?;
        let opset = model
            .opset_import
            .iter()
            .filter(|o| matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")))
            .filter_map(|o| o.version)
            .max()
            .unwrap_or(13);
        let graph = model
            .graph
            .ok_or_else(|| format_err(path, "the model has no graph"))?;

        let unsupported: BTreeSet<String> = graph
            .node
            .iter()
            .filter_map(|n| {
                let op = n.op_type.clone().unwrap_or_default();
                let foreign = !matches!(n.domain.as_deref(), None | Some("") | Some("ai.onnx"));
                (foreign || !SUPPORTED_OPS.contains(&op.as_str())).then(|| match &n.domain {
                    Some(d) if foreign => format!("{d}::{op}"),
                    _ => op,
                })
            })
            .collect();
        if !unsupported.is_empty() {
            return Err(Error::UnsupportedOps {
                ops: unsupported.into_iter().collect(),
                supported: SUPPORTED_OPS.join(", "),
            });
        }

        let mut constants = HashMap::new();
        for init in &graph.initializer {
            let name = init.name.clone().unwrap_or_default();
            constants.insert(name, decode_tensor(path, init, device)?);
        }
        let inputs: Vec<&proto::ValueInfoProto> = graph
            .input
            .iter()
            .filter(|i| !constants.contains_key(i.name.as_deref().unwrap_or_default()))
            .collect();
        let [input_info] = inputs.as_slice() else {
            return Err(format_err(
                path,
                format!("expected exactly one data input, found {}", inputs.len()),
            ));
        };
        let input = input_info.name.clone().unwrap_or_default();
        let declared = declared_shape(input_info);
        let input_shape = match (input_shape, declared) {
            (Some(s), _) => s,
            (None, Some(s)) => s,
            (None, None) => {
                return Err(format_err(
                    path,
                    "the graph's input shape is not fixed [N, C, H, W]; pass the input shape explicitly",
                ))
            }
        };
        let output = graph
            .output
            .first()
            .and_then(|o| o.name.clone())
            .ok_or_else(|| format_err(path, "the graph has no output"))?;

        let mut nodes = Vec::new();
        for (index, n) in graph.node.iter().enumerate() {
            let name = n
                .name
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| format!("node {index}"));
            let op_type = n.op_type.as_deref().unwrap_or_default();
            let ctx = |m: String| format_err(path, format!("{op_type} '{name}': {m}"));
            if op_type == "Constant" {
                let t = attr(n, "value")
                    .and_then(|a| a.t.as_ref())
                    .ok_or_else(|| ctx("only tensor-valued Constant nodes are supported".into()))?;
                let out = n.output.first().cloned().unwrap_or_default();
                constants.insert(out, decode_tensor(path, t, device)?);
                continue;
            }
            let op = parse_op(n, op_type, opset, &constants).map_err(ctx)?;
            nodes.push(Node {
                name,
                op,
                inputs: n.input.clone(),
                outputs: n.output.clone(),
            });
        }

        let mut model = Self {
            nodes,
            constants,
            input,
            output,
            input_shape,
            num_classes: 0,
            normalization,
            bounds,
            device: device.clone(),
            activations_per_sample: 0,
        };
        normalization_check(&model.normalization, input_shape[0])?;
        // One forward pass finds the class count and proves the graph runs.
        let probe = Tensor::zeros(
            (1, input_shape[0], input_shape[1], input_shape[2]),
            DType::F32,
            device,
        )?;
        let (logits, activations) = model.run_counting(&probe).map_err(|e| {
            format_err(
                path,
                format!("the graph does not run on input {input_shape:?}: {e}"),
            )
        })?;
        model.activations_per_sample = activations;
        match logits.dims() {
            [1, c] if *c >= 2 => model.num_classes = *c,
            other => {
                return Err(format_err(
                    path,
                    format!("the graph's output has shape {other:?} for one input, expected [1, classes] with at least 2 classes"),
                ))
            }
        }
        Ok(model)
    }

    /// A copy with every floating-point constant converted to `dtype`.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let mut model = self.clone();
        for t in model.constants.values_mut() {
            if t.dtype().is_float() {
                *t = t.to_dtype(dtype)?;
            }
        }
        for node in &mut model.nodes {
            if let Op::Affine { scale, shift } = &mut node.op {
                *scale = scale.to_dtype(dtype)?;
                *shift = shift.to_dtype(dtype)?;
            }
        }
        Ok(model)
    }

    /// Number of operator nodes (constants excluded).
    pub fn num_nodes(&self) -> usize {
        self.nodes.len()
    }

    fn run(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.run_counting(x)?.0)
    }

    /// Values one sample produces across all nodes, for memory estimates.
    pub fn activations_per_sample(&self) -> usize {
        self.activations_per_sample
    }

    /// The logits, and how many values all nodes produced.
    fn run_counting(&self, x: &Tensor) -> Result<(Tensor, usize)> {
        let x = self.normalization.apply(x)?;
        let mut produced = x.elem_count();
        let mut values: HashMap<&str, Tensor> = HashMap::new();
        values.insert(self.input.as_str(), x);
        for node in &self.nodes {
            let get = |i: usize| -> Result<&Tensor> {
                let name = node.inputs.get(i).map(String::as_str).unwrap_or_default();
                values
                    .get(name)
                    .or_else(|| self.constants.get(name))
                    .ok_or_else(|| {
                        Error::Invalid(format!(
                            "node '{}' reads '{name}', which is not computed before it",
                            node.name
                        ))
                    })
            };
            let has = |i: usize| node.inputs.get(i).is_some_and(|n| !n.is_empty());
            let y = eval(node, &get, &has)
                .map_err(|e| Error::Invalid(format!("node '{}': {e}", node.name)))?;
            let out = node.outputs.first().map(String::as_str).unwrap_or_default();
            produced += y.elem_count();
            values.insert(out, y);
        }
        let logits = values
            .remove(self.output.as_str())
            .or_else(|| self.constants.get(&self.output).cloned())
            .ok_or_else(|| {
                Error::Invalid(format!("graph output '{}' is never computed", self.output))
            })?;
        Ok((logits, produced))
    }
}

fn normalization_check(n: &Normalization, channels: usize) -> Result<()> {
    n.validate(channels)
}

/// Operators that compute on values (not shapes): candle implements them for
/// floating-point tensors only and panics (`todo!`) on integer ones, which a
/// hostile graph can feed them (found by fuzzing).
fn needs_float(op: &Op) -> bool {
    matches!(
        op,
        Op::Conv { .. }
            | Op::Affine { .. }
            | Op::Relu
            | Op::LeakyRelu(_)
            | Op::Sigmoid
            | Op::Tanh
            | Op::Clip { .. }
            | Op::Pool(_)
            | Op::GlobalAvgPool
            | Op::GlobalMaxPool
            | Op::Gemm { .. }
            | Op::MatMul
            | Op::Softmax { .. }
    )
}

fn eval<'a>(
    node: &Node,
    get: &dyn Fn(usize) -> Result<&'a Tensor>,
    has: &dyn Fn(usize) -> bool,
) -> Result<Tensor> {
    if needs_float(&node.op) {
        for i in (0..node.inputs.len()).filter(|&i| has(i)) {
            let dtype = get(i)?.dtype();
            if !dtype.is_float() {
                return Err(Error::Invalid(format!(
                    "input {i} is {dtype:?}, this operator needs floating-point values"
                )));
            }
        }
    }
    // Integer division by zero panics in candle's kernels (Rust semantics).
    if matches!(node.op, Op::Div) && !get(0)?.dtype().is_float() {
        let divisor = same_dtype(get(1)?, get(0)?)?
            .flatten_all()?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?;
        if divisor.contains(&0.0) {
            return Err(Error::Invalid("integer division by zero".into()));
        }
    }
    Ok(match &node.op {
        Op::Conv {
            stride,
            pads,
            dilation,
            groups,
        } => {
            let bias = if has(2) { Some(get(2)?) } else { None };
            conv2d(get(0)?, get(1)?, bias, *stride, *pads, *dilation, *groups)?
        }
        Op::Affine { scale, shift } => get(0)?.broadcast_mul(scale)?.broadcast_add(shift)?,
        Op::Relu => get(0)?.relu()?,
        Op::LeakyRelu(alpha) => {
            let x = get(0)?;
            // max(x, 0) + alpha * min(x, 0), differentiable.
            (x.relu()? + (x.neg()?.relu()?.neg()? * *alpha)?)?
        }
        Op::Sigmoid => {
            let x = get(0)?;
            (x.neg()?.exp()? + 1.0)?.recip()?
        }
        Op::Tanh => get(0)?.tanh()?,
        Op::Clip { min, max } => {
            let mut x = get(0)?.clone();
            let min = if has(1) { Some(scalar(get(1)?)?) } else { *min };
            let max = if has(2) { Some(scalar(get(2)?)?) } else { *max };
            if let Some(lo) = min {
                x = x.maximum(lo)?;
            }
            if let Some(hi) = max {
                x = x.minimum(hi)?;
            }
            x
        }
        Op::Identity => get(0)?.clone(),
        Op::Pool(p) => pool2d(get(0)?, *p)?,
        Op::GlobalAvgPool => get(0)?.mean_keepdim(3)?.mean_keepdim(2)?,
        Op::GlobalMaxPool => get(0)?.max_keepdim(3)?.max_keepdim(2)?,
        Op::Add => get(0)?.broadcast_add(&same_dtype(get(1)?, get(0)?)?)?,
        Op::Sub => get(0)?.broadcast_sub(&same_dtype(get(1)?, get(0)?)?)?,
        Op::Mul => get(0)?.broadcast_mul(&same_dtype(get(1)?, get(0)?)?)?,
        Op::Div => get(0)?.broadcast_div(&same_dtype(get(1)?, get(0)?)?)?,
        Op::Flatten(axis) => {
            let x = get(0)?;
            let axis = norm_axis(*axis, x.rank() + 1)?;
            let outer: usize = x.dims()[..axis].iter().product();
            x.reshape((outer, x.elem_count() / outer.max(1)))?
        }
        Op::Reshape { allow_zero } => {
            let x = get(0)?;
            let spec = get(1)?
                .to_dtype(DType::I64)?
                .flatten_all()?
                .to_vec1::<i64>()?;
            x.reshape(resolve_reshape(x.dims(), &spec, *allow_zero)?)?
        }
        Op::Gemm {
            alpha,
            beta,
            trans_a,
            trans_b,
        } => {
            let a = if *trans_a {
                get(0)?.t()?
            } else {
                get(0)?.clone()
            };
            let b = get(1)?;
            // linear() computes a·wᵀ; Gemm with transB=1 is exactly that.
            let weight = if *trans_b { b.clone() } else { b.t()? };
            let mut y = linear(&a, &weight, None)?;
            if *alpha != 1.0 {
                y = (y * *alpha)?;
            }
            if has(2) {
                let c = get(2)?;
                y = y.broadcast_add(&if *beta != 1.0 {
                    (c * *beta)?
                } else {
                    c.clone()
                })?;
            }
            y
        }
        Op::MatMul => {
            let (a, b) = (get(0)?, get(1)?);
            if a.rank() == 2 && b.rank() == 2 {
                a.matmul(b)?
            } else {
                a.broadcast_matmul(b)?
            }
        }
        Op::Softmax { axis, legacy, log } => {
            let x = get(0)?;
            let axis = norm_axis(*axis, x.rank())?;
            let f = if *log { log_softmax_dim } else { softmax_dim };
            if *legacy && axis + 1 < x.rank() {
                // Before opset 13: coerce to 2-D at `axis`, softmax over the flattened tail.
                let dims = x.dims().to_vec();
                let outer: usize = dims[..axis].iter().product();
                f(&x.reshape((outer, x.elem_count() / outer.max(1)))?, 1)?.reshape(dims)?
            } else {
                f(x, axis)?
            }
        }
        Op::Shape => {
            let x = get(0)?;
            let dims: Vec<i64> = x.dims().iter().map(|&d| d as i64).collect();
            Tensor::from_vec(dims, x.rank(), x.device())?
        }
        Op::Gather(axis) => {
            let (x, idx) = (get(0)?, get(1)?);
            let axis = norm_axis(*axis, x.rank())?;
            let len = x.dims()[axis] as i64;
            let raw = idx.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?;
            let fixed: Vec<u32> = raw
                .iter()
                .map(|&i| if i < 0 { i + len } else { i })
                .map(|i| {
                    u32::try_from(i)
                        .map_err(|_| Error::Invalid(format!("gather index {i} out of range")))
                })
                .collect::<Result<_>>()?;
            let index = Tensor::from_vec(fixed, raw.len(), x.device())?;
            let y = x.index_select(&index, axis)?;
            if idx.rank() == 0 {
                y.squeeze(axis)?
            } else {
                let mut dims = x.dims()[..axis].to_vec();
                dims.extend_from_slice(idx.dims());
                dims.extend_from_slice(&x.dims()[axis + 1..]);
                y.reshape(dims)?
            }
        }
        Op::Unsqueeze(axes) => {
            let x = get(0)?;
            let axes = match axes {
                Some(a) => a.clone(),
                None => get(1)?
                    .to_dtype(DType::I64)?
                    .flatten_all()?
                    .to_vec1::<i64>()?,
            };
            let out_rank = x.rank() + axes.len();
            let mut norm: Vec<usize> = axes
                .iter()
                .map(|&a| norm_axis(a, out_rank))
                .collect::<Result<_>>()?;
            norm.sort_unstable();
            let mut y = x.clone();
            for a in norm {
                y = y.unsqueeze(a)?;
            }
            y
        }
        Op::Squeeze(axes) => {
            let x = get(0)?;
            let axes = match axes {
                Some(a) => a.clone(),
                None if has(1) => get(1)?
                    .to_dtype(DType::I64)?
                    .flatten_all()?
                    .to_vec1::<i64>()?,
                None => (0..x.rank() as i64)
                    .filter(|&a| x.dims()[a as usize] == 1)
                    .collect(),
            };
            let mut norm: Vec<usize> = axes
                .iter()
                .map(|&a| norm_axis(a, x.rank()))
                .collect::<Result<_>>()?;
            norm.sort_unstable_by(|a, b| b.cmp(a));
            let mut y = x.clone();
            for a in norm {
                y = y.squeeze(a)?;
            }
            y
        }
        Op::Concat(axis) => {
            let parts: Vec<Tensor> = (0..node.inputs.len())
                .map(|i| get(i).cloned())
                .collect::<Result<_>>()?;
            let rank = parts.first().map(|p| p.rank()).unwrap_or(1);
            Tensor::cat(&parts, norm_axis(*axis, rank)?)?
        }
        Op::Transpose(perm) => {
            let x = get(0)?;
            let perm = perm
                .clone()
                .unwrap_or_else(|| (0..x.rank()).rev().collect());
            x.permute(perm)?.contiguous()?
        }
    })
}

fn same_dtype(b: &Tensor, like: &Tensor) -> Result<Tensor> {
    Ok(if b.dtype() == like.dtype() {
        b.clone()
    } else {
        b.to_dtype(like.dtype())?
    })
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?
        .first()
        .copied()
        .unwrap_or(0.0))
}

fn norm_axis(axis: i64, rank: usize) -> Result<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    if a < 0 || a >= rank.max(1) as i64 {
        return Err(Error::Invalid(format!(
            "axis {axis} is out of range for rank {rank}"
        )));
    }
    Ok(a as usize)
}

fn resolve_reshape(dims: &[usize], spec: &[i64], allow_zero: bool) -> Result<Vec<usize>> {
    let total: usize = dims.iter().product();
    let mut out = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &s) in spec.iter().enumerate() {
        match s {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 if !allow_zero => out.push(
                *dims
                    .get(i)
                    .ok_or_else(|| Error::Invalid("reshape copies a missing dimension".into()))?,
            ),
            s if s >= 0 => out.push(s as usize),
            _ => return Err(Error::Invalid(format!("invalid reshape target {spec:?}"))),
        }
    }
    if let Some(i) = infer {
        let known: usize = out.iter().product();
        if known == 0 || !total.is_multiple_of(known) {
            return Err(Error::Invalid(format!(
                "cannot reshape {dims:?} to {spec:?}"
            )));
        }
        out[i] = total / known;
    }
    Ok(out)
}

fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute
        .iter()
        .find(|a| a.name.as_deref() == Some(name))
}
fn attr_i(node: &NodeProto, name: &str, default: i64) -> i64 {
    attr(node, name).and_then(|a| a.i).unwrap_or(default)
}
fn attr_f(node: &NodeProto, name: &str, default: f64) -> f64 {
    attr(node, name)
        .and_then(|a| a.f)
        .map(f64::from)
        .unwrap_or(default)
}
fn attr_ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(node, name).map(|a| a.ints.clone())
}
fn attr_s(node: &NodeProto, name: &str) -> Option<String> {
    attr(node, name)
        .and_then(|a| a.s.as_ref())
        .map(|s| String::from_utf8_lossy(s).into_owned())
}

fn to_usize(v: i64, what: &str) -> std::result::Result<usize, String> {
    usize::try_from(v).map_err(|_| format!("{what} {v} must be non-negative"))
}

/// Two equal spatial values (we support square strides/dilations only).
fn square(
    values: Option<Vec<i64>>,
    default: usize,
    what: &str,
) -> std::result::Result<usize, String> {
    match values.as_deref() {
        None | Some([]) => Ok(default),
        Some([a, b]) if a == b => to_usize(*a, what),
        Some(other) => Err(format!(
            "{what} {other:?} is not supported, only equal height and width values"
        )),
    }
}

/// ONNX pads `[top, left, bottom, right]` from `[x1_begin, x2_begin, x1_end, x2_end]`.
fn pads(node: &NodeProto) -> std::result::Result<[usize; 4], String> {
    match attr_s(node, "auto_pad").as_deref() {
        None | Some("NOTSET") | Some("VALID") => {}
        Some(other) => {
            return Err(format!(
                "auto_pad {other} is not supported; export with explicit pads"
            ))
        }
    }
    match attr_ints(node, "pads").as_deref() {
        None | Some([]) => Ok([0; 4]),
        Some([t, l, b, r]) => Ok([
            to_usize(*t, "pad")?,
            to_usize(*l, "pad")?,
            to_usize(*b, "pad")?,
            to_usize(*r, "pad")?,
        ]),
        Some(other) => Err(format!("pads {other:?} are not 2-D")),
    }
}

fn kernel2(node: &NodeProto) -> std::result::Result<(usize, usize), String> {
    match attr_ints(node, "kernel_shape").as_deref() {
        Some([h, w]) => Ok((to_usize(*h, "kernel")?, to_usize(*w, "kernel")?)),
        other => Err(format!("kernel_shape {other:?} is not 2-D")),
    }
}

fn parse_op(
    node: &NodeProto,
    op_type: &str,
    opset: i64,
    constants: &HashMap<String, Tensor>,
) -> std::result::Result<Op, String> {
    let constant = |i: usize| node.input.get(i).and_then(|n| constants.get(n));
    Ok(match op_type {
        "Conv" => Op::Conv {
            stride: square(attr_ints(node, "strides"), 1, "strides")?,
            pads: pads(node)?,
            dilation: square(attr_ints(node, "dilations"), 1, "dilations")?,
            groups: to_usize(attr_i(node, "group", 1), "group")?,
        },
        "BatchNormalization" => {
            let eps = attr_f(node, "epsilon", 1e-5);
            let get = |i: usize| -> std::result::Result<Vec<f32>, String> {
                constant(i)
                    .ok_or_else(|| {
                        format!("input {i} must be a constant (inference-mode BatchNormalization)")
                    })?
                    .to_dtype(DType::F32)
                    .and_then(|t| t.flatten_all())
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(|e| e.to_string())
            };
            let (gamma, beta, mean, var) = (get(1)?, get(2)?, get(3)?, get(4)?);
            let c = gamma.len();
            if beta.len() != c || mean.len() != c || var.len() != c {
                return Err("scale, bias, mean and var must have the same length".into());
            }
            let scale: Vec<f32> = (0..c)
                .map(|i| gamma[i] / (var[i] + eps as f32).sqrt())
                .collect();
            let shift: Vec<f32> = (0..c).map(|i| beta[i] - mean[i] * scale[i]).collect();
            let device = constant(1)
                .map(|t| t.device().clone())
                .unwrap_or(Device::Cpu);
            let mk =
                |v: Vec<f32>| Tensor::from_vec(v, (1, c, 1, 1), &device).map_err(|e| e.to_string());
            Op::Affine {
                scale: mk(scale)?,
                shift: mk(shift)?,
            }
        }
        "Relu" => Op::Relu,
        "LeakyRelu" => Op::LeakyRelu(attr_f(node, "alpha", 0.01)),
        "Sigmoid" => Op::Sigmoid,
        "Tanh" => Op::Tanh,
        "Clip" => Op::Clip {
            min: attr(node, "min").and_then(|a| a.f).map(f64::from),
            max: attr(node, "max").and_then(|a| a.f).map(f64::from),
        },
        "Identity" | "Dropout" => Op::Identity,
        "MaxPool" | "AveragePool" => {
            if op_type == "MaxPool" && node.output.len() > 1 {
                return Err("the Indices output is not supported".into());
            }
            let kernel = kernel2(node)?;
            let stride = match attr_ints(node, "strides").as_deref() {
                None | Some([]) => (1, 1),
                Some([a, b]) => (to_usize(*a, "stride")?, to_usize(*b, "stride")?),
                Some(other) => return Err(format!("strides {other:?} are not 2-D")),
            };
            square(attr_ints(node, "dilations"), 1, "dilations").and_then(|d| {
                if d == 1 {
                    Ok(())
                } else {
                    Err("dilated pooling is not supported".into())
                }
            })?;
            let kind = if op_type == "MaxPool" {
                PoolKind::Max
            } else {
                PoolKind::Avg {
                    count_include_pad: attr_i(node, "count_include_pad", 0) != 0,
                }
            };
            Op::Pool(Pool2d {
                kind,
                kernel,
                stride,
                pads: pads(node)?,
                ceil_mode: attr_i(node, "ceil_mode", 0) != 0,
            })
        }
        "GlobalAveragePool" => Op::GlobalAvgPool,
        "GlobalMaxPool" => Op::GlobalMaxPool,
        "Add" => Op::Add,
        "Sub" => Op::Sub,
        "Mul" => Op::Mul,
        "Div" => Op::Div,
        "Flatten" => Op::Flatten(attr_i(node, "axis", 1)),
        "Reshape" => Op::Reshape {
            allow_zero: attr_i(node, "allowzero", 0) != 0,
        },
        "Gemm" => Op::Gemm {
            alpha: attr_f(node, "alpha", 1.0),
            beta: attr_f(node, "beta", 1.0),
            trans_a: attr_i(node, "transA", 0) != 0,
            trans_b: attr_i(node, "transB", 0) != 0,
        },
        "MatMul" => Op::MatMul,
        "Softmax" | "LogSoftmax" => Op::Softmax {
            axis: attr_i(node, "axis", if opset < 13 { 1 } else { -1 }),
            legacy: opset < 13,
            log: op_type == "LogSoftmax",
        },
        "Shape" => Op::Shape,
        "Gather" => Op::Gather(attr_i(node, "axis", 0)),
        "Unsqueeze" => Op::Unsqueeze(attr_ints(node, "axes")),
        "Squeeze" => Op::Squeeze(attr_ints(node, "axes")),
        "Concat" => Op::Concat(attr_i(node, "axis", 0)),
        "Transpose" => Op::Transpose(
            attr_ints(node, "perm")
                .map(|p| {
                    p.into_iter()
                        .map(|v| to_usize(v, "perm"))
                        .collect::<std::result::Result<Vec<_>, _>>()
                })
                .transpose()?,
        ),
        other => return Err(format!("operator {other} is not supported")),
    })
}

fn declared_shape(info: &proto::ValueInfoProto) -> Option<[usize; 3]> {
    let dims = &info
        .r#type
        .as_ref()?
        .tensor_type
        .as_ref()?
        .shape
        .as_ref()?
        .dim;
    match dims.as_slice() {
        [_, c, h, w] => Some([
            usize::try_from(c.dim_value?).ok()?,
            usize::try_from(h.dim_value?).ok()?,
            usize::try_from(w.dim_value?).ok()?,
        ]),
        _ => None,
    }
}

fn decode_tensor(path: &Path, t: &TensorProto, device: &Device) -> Result<Tensor> {
    let name = t.name.clone().unwrap_or_default();
    let err = |m: String| format_err(path, format!("tensor '{name}': {m}"));
    if t.data_location == Some(1) || !t.external_data.is_empty() {
        return Err(err(
            "external data files are not supported; re-export with the weights embedded".into(),
        ));
    }
    let dims: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| err(format!("negative dimension {d}"))))
        .collect::<Result<_>>()?;
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| err(format!("dimensions {dims:?} overflow")))?;
    let raw = t.raw_data.as_deref();
    let check_len = |have: usize| -> Result<()> {
        if have != count {
            return Err(err(format!(
                "holds {have} values, its dimensions {dims:?} need {count}"
            )));
        }
        Ok(())
    };
    match t.data_type.unwrap_or(0) {
        data_type::FLOAT | data_type::DOUBLE => {
            let values: Vec<f32> = match (t.data_type, raw) {
                (Some(data_type::FLOAT), Some(r)) => r
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                (Some(data_type::DOUBLE), Some(r)) => r
                    .chunks_exact(8)
                    .map(|c| {
                        f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                    })
                    .collect(),
                (Some(data_type::FLOAT), None) => t.float_data.clone(),
                _ => t.double_data.iter().map(|&v| v as f32).collect(),
            };
            if let Some(r) = raw {
                let size = if t.data_type == Some(data_type::FLOAT) {
                    4
                } else {
                    8
                };
                if r.len() != count * size {
                    return Err(err(format!(
                        "raw data is {} bytes, its dimensions {dims:?} need {}",
                        r.len(),
                        count * size
                    )));
                }
            }
            check_len(values.len())?;
            Ok(Tensor::from_vec(values, dims, device)?)
        }
        data_type::INT64 | data_type::INT32 | data_type::INT8 | data_type::UINT8 => {
            let values: Vec<i64> = match (t.data_type.unwrap_or(0), raw) {
                (data_type::INT64, Some(r)) => r
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect(),
                (data_type::INT32, Some(r)) => r
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                    .collect(),
                (data_type::INT8, Some(r)) => r.iter().map(|&b| b as i8 as i64).collect(),
                (data_type::UINT8, Some(r)) => r.iter().map(|&b| b as i64).collect(),
                (data_type::INT64, None) => t.int64_data.clone(),
                (_, None) => t.int32_data.iter().map(|&v| v as i64).collect(),
                _ => Vec::new(),
            };
            check_len(values.len())?;
            Ok(Tensor::from_vec(values, dims, device)?)
        }
        other => Err(err(format!(
            "data type {other} is not supported (float, double and integers are)"
        ))),
    }
}

impl Classifier for OnnxModel {
    fn logits(&self, x: &Tensor) -> gauntlet_core::Result<Tensor> {
        Ok(self.run(x)?)
    }
    fn bounds(&self) -> Bounds {
        self.bounds
    }
    fn num_classes(&self) -> usize {
        self.num_classes
    }
    fn input_shape(&self) -> [usize; 3] {
        self.input_shape
    }
    fn device(&self) -> &Device {
        &self.device
    }
    fn bytes_per_sample(&self) -> u64 {
        // The interpreter runs on candle's graph: every node's output and its
        // gradient are alive in the backward pass, plus the attack's buffers.
        let [c, h, w] = self.input_shape;
        ((2 * self.activations_per_sample + 8 * c * h * w) * std::mem::size_of::<f32>()) as u64
    }
}
