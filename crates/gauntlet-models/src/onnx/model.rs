//! ONNX protobuf → graph IR, and the resulting [`OnnxModel`] classifier.

use std::collections::{BTreeSet, HashMap};
use std::path::{Component, Path};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use gauntlet_core::{Bounds, Classifier};
use prost::Message;

use super::ops::{self, NodeCtx};
use super::proto::{self, data_type, TensorProto};
use crate::graph::{passes, Graph, Node, Noise, NoiseSource};
use crate::native::{engine_logits, NativeGraph};
use crate::network::Normalization;
use crate::{Error, Result};

/// Operator types the importer implements (default ONNX domain), from [`ops::OPERATORS`].
pub fn supported_ops() -> impl Iterator<Item = &'static str> {
    ops::OPERATORS.iter().map(|o| o.name)
}

/// An ONNX graph imported into the IR and run by the reference executor, with
/// differentiable candle ops.
#[derive(Clone, Debug)]
pub struct OnnxModel {
    graph: Graph,
    input_shape: [usize; 3],
    /// The batch size the graph was exported with, when it is fixed (run sample by sample).
    fixed_batch: Option<usize>,
    num_classes: usize,
    normalization: Normalization,
    bounds: Bounds,
    device: Device,
    /// Values one sample produces across all nodes (measured by the probe run).
    activations_per_sample: usize,
    /// The graph planned for the native engine, when it can run it.
    native: Option<Arc<NativeGraph>>,
    /// Why the graph runs on the reference executor instead, when it does.
    not_native: Option<String>,
    /// Where the graph's random operators draw from (shared by copies).
    noise: Arc<NoiseSource>,
}

/// The label of the random operators' stream under the seed it is given.
const NOISE_LABEL: &str = "model-noise";

fn format_err(path: &Path, message: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

impl OnnxModel {
    /// Parse an ONNX model. `input_shape` overrides the graph's declared input
    /// shape (needed when it is symbolic). External data files are read from the
    /// model's directory.
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
        let graph_proto = model
            .graph
            .ok_or_else(|| format_err(path, "the model has no graph"))?;
        let base_dir = path.parent().unwrap_or(Path::new("."));

        let mut constants = HashMap::new();
        for init in &graph_proto.initializer {
            let name = init.name.clone().unwrap_or_default();
            constants.insert(name, decode_tensor(path, base_dir, init, device)?);
        }
        let inputs: Vec<&proto::ValueInfoProto> = graph_proto
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
        let input_shape = match (input_shape, declared.map(|d| d.1)) {
            (Some(s), _) => s,
            (None, Some(s)) => s,
            (None, None) => {
                return Err(format_err(
                    path,
                    "the graph's input shape is not fixed [N, C, H, W]; pass the input shape explicitly",
                ))
            }
        };
        let fixed_batch = declared.and_then(|d| d.0);
        let output = graph_proto
            .output
            .first()
            .and_then(|o| o.name.clone())
            .ok_or_else(|| format_err(path, "the graph has no output"))?;

        let (nodes, unsupported) = import_nodes(
            path,
            base_dir,
            &graph_proto.node,
            opset,
            &mut constants,
            device,
        )?;
        let mut graph = Graph {
            nodes,
            constants,
            input,
            output,
            float: DType::F32,
        };
        normalization.validate(input_shape[0])?;
        if let Some(first) = unsupported {
            return Err(unsupported_error(
                &graph,
                first,
                &graph_proto.node,
                input_shape,
            ));
        }
        passes::simplify(&mut graph).map_err(|e| format_err(path, e.to_string()))?;
        let mut model = Self {
            graph,
            input_shape,
            fixed_batch,
            num_classes: 0,
            normalization,
            bounds,
            device: device.clone(),
            activations_per_sample: 0,
            native: None,
            not_native: None,
            noise: Arc::new(NoiseSource::new(
                gauntlet_core::SeedStream::new(0).derive(NOISE_LABEL),
            )),
        };
        // One forward pass finds the class count and proves the graph runs.
        let probe = Tensor::zeros(
            (1, input_shape[0], input_shape[1], input_shape[2]),
            DType::F32,
            device,
        )?;
        let run = model.graph.run(&probe, None).map_err(|e| {
            format_err(
                path,
                format!("the graph does not run on input {input_shape:?}: {e}"),
            )
        })?;
        model.activations_per_sample = run.produced;
        match run.output.dims() {
            [1, c] if *c >= 2 => model.num_classes = *c,
            other => {
                return Err(format_err(
                    path,
                    format!("the graph's output has shape {other:?} for one input, expected [1, classes] with at least 2 classes"),
                ))
            }
        }
        // A graph that does not batch correctly (a fixed declared batch, or an
        // exporter that baked batch 1 into a Reshape despite a dynamic batch
        // axis) runs in slices of its declared batch, one image by default.
        model.fixed_batch = if model.batch_free().unwrap_or(false) {
            None
        } else {
            Some(model.fixed_batch.unwrap_or(1))
        };
        model.plan_native();
        Ok(model)
    }

    /// Plans the native engine when the graph batches correctly on the CPU in f32.
    fn plan_native(&mut self) {
        self.native = None;
        let reason = if !self.device.is_cpu() {
            "the native engine runs on the CPU only".to_string()
        } else if self.fixed_batch.is_some_and(|b| b != 1) {
            "the graph was exported for a fixed batch, so it runs in slices".to_string()
        } else {
            // A graph that only runs on single samples is planned on one: each
            // sample of a batch then runs alone, exactly as slices would.
            let plan = if self.fixed_batch.is_some() {
                NativeGraph::plan_single
            } else {
                NativeGraph::plan
            };
            match plan(&self.graph, self.input_shape, &self.normalization) {
                Ok(mut native) => {
                    native.draw_from(Arc::clone(&self.noise));
                    self.native = Some(Arc::new(native));
                    self.not_native = None;
                    return;
                }
                Err(not_planned) => not_planned.to_string(),
            }
        };
        self.not_native = Some(reason);
    }

    /// Restart the random operators' noise from `stream` (see [`NoiseSource`]).
    pub fn reseed_noise(&self, stream: &gauntlet_core::SeedStream) {
        self.noise.reseed(stream.derive(NOISE_LABEL));
    }

    /// Whether the graph draws fresh random values on every forward pass.
    pub fn is_random(&self) -> bool {
        self.graph.is_random()
    }

    /// The native engine's plan, when this model runs on it.
    pub fn native(&self) -> Option<&NativeGraph> {
        self.native.as_deref()
    }

    /// Why the model runs on the reference executor, when it does (one line).
    pub fn reference_reason(&self) -> Option<&str> {
        self.not_native.as_deref()
    }

    /// The same model evaluated by the reference executor only (for comparisons).
    pub fn with_reference_executor(&self) -> Self {
        Self {
            native: None,
            not_native: Some("the reference executor was asked for".into()),
            ..self.clone()
        }
    }

    /// A copy with every floating-point constant converted to `dtype`.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let mut model = Self {
            graph: self.graph.to_dtype(dtype)?,
            ..self.clone()
        };
        if dtype != DType::F32 {
            model.native = None;
            model.not_native = Some(format!("the native engine computes in f32, not {dtype:?}"));
        }
        Ok(model)
    }

    /// The batch size the graph must run in, when it does not batch correctly
    /// (then Gauntlet runs it in slices of this size, usually one image).
    pub fn slice_size(&self) -> Option<usize> {
        self.fixed_batch
    }

    /// The imported graph in the IR.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Number of operator nodes left after the passes (constants excluded).
    pub fn num_nodes(&self) -> usize {
        self.graph.nodes.len()
    }

    /// Values one sample produces across all nodes, for memory estimates.
    pub fn activations_per_sample(&self) -> usize {
        self.activations_per_sample
    }

    /// The logits and the value named `feature` (a node output; by default the
    /// input of the last fully connected layer), flattened to `(N, width)`.
    pub fn logits_and_features(
        &self,
        x: &Tensor,
        feature: Option<&str>,
    ) -> Result<(Tensor, Tensor)> {
        let name = match feature {
            Some(f) if self.graph.computes(f) => f,
            Some(f) => {
                return Err(Error::Invalid(format!(
                    "the graph has no value named '{f}'; expected a node output name, e.g. '{}'",
                    self.graph.default_feature_value().unwrap_or("?")
                )))
            }
            None => self.graph.default_feature_value().ok_or_else(|| {
                Error::Invalid(
                    "the graph has no Gemm or MatMul layer to take features from; name a node output"
                        .into(),
                )
            })?,
        };
        if let Some(native) = self.native.as_ref().filter(|_| x.device().is_cpu()) {
            let n = x.dim(0)?;
            let pixels = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            if let Some((logits, features)) = native.logits_and_value(&pixels, n, name)? {
                let width = features.len() / n.max(1);
                return Ok((
                    Tensor::from_vec(logits, (n, self.num_classes), x.device())?,
                    Tensor::from_vec(features, (n, width), x.device())?,
                ));
            }
        }
        let mut logits = Vec::new();
        let mut features = Vec::new();
        for part in self.batches(x)? {
            let x = self.normalization.apply(&part)?;
            let run = self
                .graph
                .run_with_noise(&x, Some(name), Noise::Draw(&self.noise))?;
            let f = run
                .captured
                .ok_or_else(|| Error::Invalid(format!("value '{name}' was not computed")))?;
            let n = part.dims()[0];
            if f.dims().first() != Some(&n) {
                return Err(Error::Invalid(format!(
                    "value '{name}' has shape {:?}, not one row per sample",
                    f.dims()
                )));
            }
            features.push(f.reshape((n, f.elem_count() / n.max(1)))?);
            logits.push(run.output);
        }
        Ok((Tensor::cat(&logits, 0)?, Tensor::cat(&features, 0)?))
    }

    /// Whether the graph computes each sample of a batch on its own: most do, even
    /// legacy exports without `dynamic_axes` (they declare batch 1); some do not
    /// (batch 1 baked into a reshape). Checked on two different images: batched and
    /// one-by-one results must agree.
    fn batch_free(&self) -> Result<bool> {
        let [c, h, w] = self.input_shape;
        let seed = gauntlet_core::SeedStream::new(0).derive("batch-probe");
        let x = Tensor::from_vec(
            seed.uniform_f32(2 * c * h * w, 0.0, 1.0),
            (2, c, h, w),
            &self.device,
        )?;
        let Ok(batched) = self.graph.run(&self.normalization.apply(&x)?, None) else {
            return Ok(false);
        };
        if batched.output.dims() != [2, self.num_classes] {
            return Ok(false);
        }
        for i in 0..2 {
            let single = self
                .graph
                .run(&self.normalization.apply(&x.narrow(0, i, 1)?)?, None)?
                .output;
            let diff = (batched.output.narrow(0, i, 1)? - &single)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            let scale = single
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?
                .max(1.0);
            if diff.is_nan() || diff > 1e-4 * scale {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Graphs exported with a fixed batch run on slices of that size.
    fn batches(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let n = x.dims().first().copied().unwrap_or(0);
        match self.fixed_batch {
            Some(b) if b != n && b > 0 => {
                if n % b != 0 {
                    return Err(Error::Invalid(format!(
                        "the graph was exported for batches of {b} (re-export with a dynamic batch axis); got {n} samples"
                    )));
                }
                Ok((0..n / b)
                    .map(|i| x.narrow(0, i * b, b))
                    .collect::<candle_core::Result<_>>()?)
            }
            _ => Ok(vec![x.clone()]),
        }
    }

    fn run(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(native) = &self.native {
            if x.device().is_cpu() {
                return engine_logits(native, &x.to_dtype(DType::F32)?);
            }
        }
        let outputs = self
            .batches(x)?
            .iter()
            .map(|part| {
                let x = self.normalization.apply(part)?;
                Ok(self
                    .graph
                    .run_with_noise(&x, None, Noise::Draw(&self.noise))?
                    .output)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(match outputs.as_slice() {
            [one] => one.clone(),
            _ => Tensor::cat(&outputs, 0)?,
        })
    }
}

/// Turn protobuf nodes into IR nodes. `Constant` nodes become constants; the first
/// unsupported node (index) is returned instead of failing, so the error can name
/// its input shapes.
fn import_nodes(
    path: &Path,
    base_dir: &Path,
    protos: &[proto::NodeProto],
    opset: i64,
    constants: &mut HashMap<String, Tensor>,
    device: &Device,
) -> Result<(Vec<Node>, Option<usize>)> {
    let mut nodes = Vec::new();
    let mut unsupported = None;
    for (index, n) in protos.iter().enumerate() {
        let name = node_name(n, index);
        let op_type = n.op_type.as_deref().unwrap_or_default();
        let ctx = |m: String| format_err(path, format!("{op_type} node '{name}': {m}"));
        if op_type == "Constant" && !foreign(n) {
            let out = n.output.first().cloned().unwrap_or_default();
            constants.insert(
                out,
                constant_value(path, base_dir, n, device).map_err(|e| ctx(e.to_string()))?,
            );
            continue;
        }
        let spec = if foreign(n) {
            None
        } else {
            ops::lookup(op_type)
        };
        let Some(spec) = spec else {
            unsupported.get_or_insert(index);
            continue;
        };
        let op = (spec.parse)(&NodeCtx { node: n, opset }).map_err(ctx)?;
        let mut inputs = n.input.clone();
        // Opset-10 Resize and Upsample read (X, scales): scales move to input 2.
        if (op_type == "Upsample" || (op_type == "Resize" && opset < 11)) && inputs.len() == 2 {
            inputs.insert(1, String::new());
        }
        nodes.push(Node {
            name,
            op,
            inputs,
            outputs: n.output.clone(),
        });
    }
    Ok((nodes, unsupported))
}

/// Whether the node's operator is from a domain other than ONNX's own.
fn foreign(n: &proto::NodeProto) -> bool {
    !matches!(n.domain.as_deref(), None | Some("") | Some("ai.onnx"))
}

/// Whether the importer lacks the node's operator (`Constant` it handles itself).
fn unsupported(n: &proto::NodeProto) -> bool {
    let op = n.op_type.as_deref().unwrap_or_default();
    foreign(n) || (op != "Constant" && ops::lookup(op).is_none())
}

fn node_name(n: &proto::NodeProto, index: usize) -> String {
    n.name
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("node {index}"))
}

/// The error for an unsupported operator: every unsupported type, and for the
/// first such node its name and its inputs' shapes (found by running the graph
/// up to it on one zero image).
fn unsupported_error(
    graph: &Graph,
    first: usize,
    protos: &[proto::NodeProto],
    input_shape: [usize; 3],
) -> Error {
    let ops: BTreeSet<String> = protos
        .iter()
        .filter(|n| unsupported(n))
        .map(|n| match n.domain.as_deref() {
            Some(d) if !d.is_empty() && d != "ai.onnx" => {
                format!("{d}::{}", n.op_type.as_deref().unwrap_or_default())
            }
            _ => n.op_type.clone().unwrap_or_default(),
        })
        .collect();
    let node = &protos[first];
    let shapes = input_shapes_before(graph, node, input_shape);
    Error::UnsupportedOps(Box::new(crate::error::UnsupportedOperators {
        ops: ops.into_iter().collect(),
        op: node.op_type.clone().unwrap_or_default(),
        node: node_name(node, first),
        inputs: shapes,
        hint: ops::hint(
            node.op_type.as_deref().unwrap_or_default(),
            node.domain.as_deref(),
        )
        .to_string(),
    }))
}

fn input_shapes_before(graph: &Graph, node: &proto::NodeProto, input_shape: [usize; 3]) -> String {
    let [c, h, w] = input_shape;
    let probe = Tensor::zeros((1, c, h, w), DType::F32, &Device::Cpu);
    let shapes = node
        .input
        .iter()
        .filter(|i| !i.is_empty())
        .map(|name| {
            let shape = probe.as_ref().ok().and_then(|x| {
                let mut g = graph.clone();
                g.output = name.clone();
                // Only nodes before the unsupported one exist in the graph.
                g.run(x, None)
                    .ok()
                    .map(|r| format!("{:?}", r.output.dims()))
            });
            format!(
                "{name} {}",
                shape.unwrap_or_else(|| "(shape unknown)".into())
            )
        })
        .collect::<Vec<_>>();
    shapes.join(", ")
}

/// The value of a `Constant` node, from whichever attribute holds it.
fn constant_value(
    path: &Path,
    base_dir: &Path,
    n: &proto::NodeProto,
    device: &Device,
) -> Result<Tensor> {
    let attr = n
        .attribute
        .first()
        .ok_or_else(|| Error::Invalid("a Constant without a value".into()))?;
    let name = attr.name.as_deref().unwrap_or_default();
    Ok(match name {
        "value" => {
            let t = attr
                .t
                .as_ref()
                .ok_or_else(|| Error::Invalid("value is not a tensor".into()))?;
            decode_tensor(path, base_dir, t, device)?
        }
        "value_float" => Tensor::new(attr.f.unwrap_or(0.0), device)?,
        "value_floats" => Tensor::new(attr.floats.as_slice(), device)?,
        "value_int" => Tensor::new(attr.i.unwrap_or(0), device)?,
        "value_ints" => Tensor::new(attr.ints.as_slice(), device)?,
        other => {
            return Err(Error::Invalid(format!(
                "Constant attribute '{other}' is not supported"
            )))
        }
    })
}

/// `(fixed batch size, [C, H, W])` from the graph input's declared type.
fn declared_shape(info: &proto::ValueInfoProto) -> Option<(Option<usize>, [usize; 3])> {
    let dims = &info
        .r#type
        .as_ref()?
        .tensor_type
        .as_ref()?
        .shape
        .as_ref()?
        .dim;
    match dims.as_slice() {
        [n, c, h, w] => Some((
            n.dim_value
                .and_then(|v| usize::try_from(v).ok())
                .filter(|&v| v > 0),
            [
                usize::try_from(c.dim_value?).ok()?,
                usize::try_from(h.dim_value?).ok()?,
                usize::try_from(w.dim_value?).ok()?,
            ],
        )),
        _ => None,
    }
}

/// A tensor attribute decoded on the CPU, for parsers (no external data).
pub(super) fn decode_tensor_plain(t: &TensorProto) -> std::result::Result<Tensor, String> {
    if t.data_location == Some(1) {
        return Err("an attribute tensor cannot use external data".into());
    }
    decode_tensor(Path::new("attribute"), Path::new("."), t, &Device::Cpu)
        .map_err(|e| e.to_string())
}

/// The bytes of a tensor stored in an external data file next to the model. The
/// location must stay inside the model's directory (the scanner rejects escaping
/// paths as critical; the loader refuses them too).
fn external_bytes(base_dir: &Path, t: &TensorProto) -> std::result::Result<Vec<u8>, String> {
    let field = |key: &str| {
        t.external_data
            .iter()
            .find(|e| e.key.as_deref() == Some(key))
            .and_then(|e| e.value.clone())
    };
    let location = field("location").ok_or("external data without a location")?;
    let rel = Path::new(&location);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "external data location '{location}' leaves the model's directory; expected a file name beside the model"
        ));
    }
    let file = base_dir.join(rel);
    let dir = base_dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", base_dir.display()))?;
    let real = file
        .canonicalize()
        .map_err(|e| format!("external data '{location}': {e}"))?;
    if !real.starts_with(&dir) {
        return Err(format!(
            "external data '{location}' links outside the model's directory"
        ));
    }
    let number = |key: &str| -> std::result::Result<Option<u64>, String> {
        field(key)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| format!("external data {key} '{v}' is not a number"))
            })
            .transpose()
    };
    let offset = number("offset")?.unwrap_or(0);
    let size = std::fs::metadata(&real)
        .map_err(|e| format!("external data '{location}': {e}"))?
        .len();
    let length = number("length")?.unwrap_or(size.saturating_sub(offset));
    if offset.checked_add(length).is_none_or(|end| end > size) {
        return Err(format!(
            "external data '{location}' is {size} bytes; the tensor needs bytes {offset}..{}",
            offset.saturating_add(length)
        ));
    }
    use std::io::{Read, Seek, SeekFrom};
    let mut f =
        std::fs::File::open(&real).map_err(|e| format!("external data '{location}': {e}"))?;
    f.seek(SeekFrom::Start(offset)).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; usize::try_from(length).map_err(|_| "external tensor too large")?];
    f.read_exact(&mut buf)
        .map_err(|e| format!("external data '{location}': {e}"))?;
    Ok(buf)
}

pub(super) fn decode_tensor(
    path: &Path,
    base_dir: &Path,
    t: &TensorProto,
    device: &Device,
) -> Result<Tensor> {
    let name = t.name.clone().unwrap_or_default();
    let err = |m: String| format_err(path, format!("tensor '{name}': {m}"));
    let dims: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| err(format!("negative dimension {d}"))))
        .collect::<Result<_>>()?;
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| err(format!("dimensions {dims:?} overflow")))?;
    let external;
    let raw = if t.data_location == Some(1) || !t.external_data.is_empty() {
        external = external_bytes(base_dir, t).map_err(err)?;
        Some(external.as_slice())
    } else {
        t.raw_data.as_deref()
    };
    let dtype = t.data_type.unwrap_or(0);
    let check_len = |have: usize| -> Result<()> {
        if have != count {
            return Err(err(format!(
                "holds {have} values, its dimensions {dims:?} need {count}"
            )));
        }
        Ok(())
    };
    let check_raw = |r: &[u8], size: usize| -> Result<()> {
        if Some(r.len()) != count.checked_mul(size) {
            return Err(err(format!(
                "raw data is {} bytes, its dimensions {dims:?} need {count} values of {size} bytes",
                r.len()
            )));
        }
        Ok(())
    };
    use data_type as t_;
    match dtype {
        t_::FLOAT | t_::DOUBLE | t_::FLOAT16 | t_::BFLOAT16 => {
            let values: Vec<f32> = match (dtype, raw) {
                (t_::FLOAT, Some(r)) => {
                    check_raw(r, 4)?;
                    r.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect()
                }
                (t_::DOUBLE, Some(r)) => {
                    check_raw(r, 8)?;
                    r.chunks_exact(8)
                        .map(|c| {
                            f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                                as f32
                        })
                        .collect()
                }
                (t_::FLOAT16 | t_::BFLOAT16, raw) => {
                    // Stored as raw 2-byte values, or one per int32_data entry.
                    let bytes: Vec<u8> = match raw {
                        Some(r) => r.to_vec(),
                        None => t
                            .int32_data
                            .iter()
                            .flat_map(|&v| (v as u16).to_le_bytes())
                            .collect(),
                    };
                    check_raw(&bytes, 2)?;
                    let half = if dtype == t_::FLOAT16 {
                        DType::F16
                    } else {
                        DType::BF16
                    };
                    return Ok(Tensor::from_raw_buffer(&bytes, half, &dims, &Device::Cpu)?
                        .to_dtype(DType::F32)?
                        .to_device(device)?);
                }
                (t_::FLOAT, None) => t.float_data.clone(),
                _ => t.double_data.iter().map(|&v| v as f32).collect(),
            };
            check_len(values.len())?;
            Ok(Tensor::from_vec(values, dims, device)?)
        }
        t_::INT64
        | t_::INT32
        | t_::INT16
        | t_::INT8
        | t_::UINT8
        | t_::UINT16
        | t_::UINT32
        | t_::UINT64
        | t_::BOOL => {
            let values: Vec<i64> = match (dtype, raw) {
                (t_::INT64 | t_::UINT64, Some(r)) => {
                    check_raw(r, 8)?;
                    r.chunks_exact(8)
                        .map(|c| {
                            i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                        })
                        .collect()
                }
                (t_::INT32, Some(r)) => {
                    check_raw(r, 4)?;
                    r.chunks_exact(4)
                        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                        .collect()
                }
                (t_::UINT32, Some(r)) => {
                    check_raw(r, 4)?;
                    r.chunks_exact(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                        .collect()
                }
                (t_::INT16, Some(r)) => {
                    check_raw(r, 2)?;
                    r.chunks_exact(2)
                        .map(|c| i16::from_le_bytes([c[0], c[1]]) as i64)
                        .collect()
                }
                (t_::UINT16, Some(r)) => {
                    check_raw(r, 2)?;
                    r.chunks_exact(2)
                        .map(|c| u16::from_le_bytes([c[0], c[1]]) as i64)
                        .collect()
                }
                (t_::INT8, Some(r)) => r.iter().map(|&b| b as i8 as i64).collect(),
                (_, Some(r)) => r.iter().map(|&b| b as i64).collect(),
                (t_::INT64, None) => t.int64_data.clone(),
                (t_::UINT64, None) => Vec::new(),
                (_, None) => t.int32_data.iter().map(|&v| v as i64).collect(),
            };
            check_len(values.len())?;
            if dtype == t_::BOOL {
                let b: Vec<u8> = values.iter().map(|&v| u8::from(v != 0)).collect();
                return Ok(Tensor::from_vec(b, dims, device)?);
            }
            Ok(Tensor::from_vec(values, dims, device)?)
        }
        other => Err(err(format!(
            "data type {other} is not supported (floats, integers and booleans are)"
        ))),
    }
}

impl Classifier for OnnxModel {
    fn logits(&self, x: &Tensor) -> gauntlet_core::Result<Tensor> {
        Ok(self.run(x)?)
    }
    fn reseed_noise(&self, stream: &gauntlet_core::SeedStream) {
        OnnxModel::reseed_noise(self, stream);
    }
    fn is_random(&self) -> bool {
        OnnxModel::is_random(self)
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
        // Every node's output and its gradient are alive in the backward pass
        // (on candle's graph, or in the native engine's tape), plus the attack's buffers.
        let [c, h, w] = self.input_shape;
        ((2 * self.activations_per_sample + 8 * c * h * w) * std::mem::size_of::<f32>()) as u64
    }
}
