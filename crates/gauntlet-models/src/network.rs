//! A built-in architecture with its weights: a [`Classifier`] in pixel space.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use gauntlet_core::{Bounds, Classifier, SeedStream};
use serde::{Deserialize, Serialize};

use crate::arch::{Arch, Params};
use crate::graph::Graph;
use crate::native::NativeGraph;
use crate::{Error, Result};

/// Per-channel input normalisation `(x - mean) / std`, folded into the model so that
/// attacks work in pixel space. Empty vectors mean "no normalisation".
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Per-channel mean (pixel units).
    pub mean: Vec<f32>,
    /// Per-channel standard deviation (pixel units), all > 0.
    pub std: Vec<f32>,
}

impl Normalization {
    /// Whether this is the identity.
    pub fn is_identity(&self) -> bool {
        self.mean.is_empty() && self.std.is_empty()
    }

    /// `(mean, std)` of `channel` (validated: one of each per channel).
    pub(crate) fn channel(&self, channel: usize) -> (f32, f32) {
        (
            self.mean.get(channel).copied().unwrap_or(0.0),
            self.std.get(channel).copied().unwrap_or(1.0),
        )
    }

    pub(crate) fn validate(&self, channels: usize) -> Result<()> {
        if self.is_identity() {
            return Ok(());
        }
        if self.mean.len() != channels || self.std.len() != channels {
            return Err(Error::Invalid(format!(
                "normalisation has {} mean and {} std values, expected {channels} each (one per input channel)",
                self.mean.len(),
                self.std.len()
            )));
        }
        if let Some(s) = self.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(Error::Invalid(format!(
                "normalisation std {s} must be finite and > 0"
            )));
        }
        if let Some(m) = self.mean.iter().find(|m| !m.is_finite()) {
            return Err(Error::Invalid(format!(
                "normalisation mean {m} must be finite"
            )));
        }
        Ok(())
    }

    /// `(x - mean) / std` as a differentiable op, or `x` unchanged.
    pub(crate) fn apply(&self, x: &Tensor) -> Result<Tensor> {
        if self.is_identity() {
            return Ok(x.clone());
        }
        let c = self.mean.len();
        let mean = Tensor::from_slice(&self.mean, (1, c, 1, 1), x.device())?.to_dtype(x.dtype())?;
        let std = Tensor::from_slice(&self.std, (1, c, 1, 1), x.device())?.to_dtype(x.dtype())?;
        Ok(x.broadcast_sub(&mean)?.broadcast_div(&std)?)
    }
}

/// A built-in architecture with weights, normalisation and input bounds.
#[derive(Clone, Debug)]
pub struct Network {
    arch: Arch,
    params: Params,
    /// The architecture's graph over `params`: the reference forward pass.
    graph: Graph,
    normalization: Normalization,
    bounds: Bounds,
    device: Device,
    /// The native engine's plan of `graph` for constant f32 weights on the CPU
    /// (see [`crate::native`]); `None` runs the reference executor.
    native: Option<Arc<NativeGraph>>,
}

impl Network {
    /// Build from named tensors, checking that every parameter the architecture
    /// needs is present with the right shape. Extra tensors are an error too (they
    /// usually mean the wrong architecture was chosen).
    pub fn from_tensors(
        arch: Arch,
        tensors: HashMap<String, Tensor>,
        normalization: Normalization,
        bounds: Bounds,
        device: &Device,
    ) -> Result<Self> {
        let params = checked_params(arch, &tensors, &normalization, device)?;
        let native = native_engine(arch, &params, &normalization, device)?;
        Ok(Self {
            arch,
            graph: arch.graph(&params)?,
            params,
            normalization,
            bounds,
            device: device.clone(),
            native,
        })
    }

    /// A network of `arch` with the weights of a native engine (e.g. after
    /// native training): the engine's parameters back in PyTorch's layout, and
    /// on the CPU a copy of the engine itself. Planning again from those
    /// parameters would give the same plan (the layout round-trips exactly), at
    /// the cost of a probe run and fresh copies of every weight — a tenth of a
    /// short training epoch, which builds one of these per epoch.
    pub fn from_native(
        arch: Arch,
        net: &NativeGraph,
        bounds: Bounds,
        device: &Device,
    ) -> Result<Self> {
        let mut tensors = HashMap::new();
        for (name, shape, values) in net.named_params() {
            tensors.insert(name, Tensor::from_vec(values, shape, device)?);
        }
        let normalization = net.normalization().clone();
        let params = checked_params(arch, &tensors, &normalization, device)?;
        Ok(Self {
            arch,
            graph: arch.graph(&params)?,
            params,
            normalization,
            bounds,
            device: device.clone(),
            native: device.is_cpu().then(|| Arc::new(net.clone())),
        })
    }

    /// The same network evaluated through candle's graph instead of the native
    /// engine: the reference the engine is tested against.
    pub fn graph_only(&self) -> Self {
        Self {
            native: None,
            ..self.clone()
        }
    }

    /// The native engine, when this network runs on it.
    pub fn native(&self) -> Option<&NativeGraph> {
        self.native.as_deref()
    }

    /// Fresh trainable weights, PyTorch's default initialisation (uniform in
    /// ±1/√fan_in for weights and biases), drawn from `seed` on the host.
    /// Returns the network (whose weights are the variables) and the variables.
    pub fn init(
        arch: Arch,
        normalization: Normalization,
        seed: &SeedStream,
        device: &Device,
    ) -> Result<(Self, Vec<(String, Var)>)> {
        normalization.validate(arch.input_shape()[0])?;
        let mut vars = Vec::new();
        let mut params = HashMap::new();
        for spec in arch.parameters() {
            let bound = 1.0 / (spec.fan_in as f32).sqrt();
            let n = spec.shape.iter().product();
            let values = seed
                .derive(&format!("init/{}", spec.name))
                .uniform_f32(n, -bound, bound);
            let var = Var::from_tensor(&Tensor::from_vec(values, spec.shape.as_slice(), device)?)?;
            params.insert(spec.name.clone(), var.as_tensor().clone());
            vars.push((spec.name, var));
        }
        let params = Params(params);
        let net = Self {
            arch,
            graph: arch.graph(&params)?,
            params,
            normalization,
            bounds: Bounds::UNIT,
            device: device.clone(),
            // The weights are variables: training goes through candle's graph.
            native: None,
        };
        Ok((net, vars))
    }

    /// The same network with its weights as constants: attacks compute no weight gradients.
    pub fn detached(&self) -> Self {
        let params = Params(
            self.params
                .0
                .iter()
                .map(|(k, v)| (k.clone(), v.detach()))
                .collect(),
        );
        // Only fails for non-f32 weights, which then simply use the graph.
        let native = native_engine(self.arch, &params, &self.normalization, &self.device)
            .ok()
            .flatten();
        // The same parameter names as `self`'s graph, so this cannot fail.
        let graph = self
            .arch
            .graph(&params)
            .unwrap_or_else(|_| self.graph.clone());
        Self {
            params,
            graph,
            native,
            ..self.clone()
        }
    }

    /// A copy with weights converted to `dtype` (f64 for finite-difference checks).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let mut params = HashMap::new();
        for (k, v) in &self.params.0 {
            params.insert(k.clone(), v.to_dtype(dtype)?);
        }
        let params = Params(params);
        let native = if dtype == DType::F32 {
            native_engine(self.arch, &params, &self.normalization, &self.device)?
        } else {
            None
        };
        Ok(Self {
            graph: self.arch.graph(&params)?,
            params,
            native,
            ..self.clone()
        })
    }

    /// The architecture's graph in the IR over these weights (the reference
    /// forward pass; it reads normalised input).
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The architecture.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The folded normalisation.
    pub fn normalization(&self) -> &Normalization {
        &self.normalization
    }

    /// Parameter tensors by name.
    pub fn tensors(&self) -> &HashMap<String, Tensor> {
        &self.params.0
    }

    /// Safetensors bytes: every parameter as f32 plus Gauntlet's metadata
    /// (architecture, input shape, bounds, mean/std, classes), so the file loads
    /// without `--arch`. Deterministic: the same weights give the same bytes.
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let (metadata, tensors) = self.safetensors_parts()?;
        Ok(crate::safetensors_io::serialize(&metadata, &tensors))
    }

    /// Write [`Network::to_safetensors`]'s bytes atomically to `path`, streamed
    /// (never whole in memory), and return their lowercase hex sha256.
    pub fn save(&self, path: &std::path::Path) -> Result<String> {
        let (metadata, tensors) = self.safetensors_parts()?;
        let mut hasher = gauntlet_core::Sha256Hasher::new();
        gauntlet_core::write_atomic_with(path, |file| {
            let mut tee = HashingWriter {
                inner: file,
                hasher: &mut hasher,
            };
            crate::safetensors_io::write(&mut tee, &metadata, &tensors)
        })?;
        Ok(hasher.finish_hex())
    }

    /// The metadata and f32 tensors a safetensors file of this network holds.
    #[allow(clippy::type_complexity)]
    fn safetensors_parts(
        &self,
    ) -> Result<(
        BTreeMap<String, String>,
        BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    )> {
        let mut metadata = BTreeMap::new();
        metadata.insert("gauntlet.format".to_string(), "1".to_string());
        metadata.insert("gauntlet.arch".to_string(), self.arch.name().to_string());
        metadata.insert(
            "gauntlet.input_shape".to_string(),
            json(&self.arch.input_shape().to_vec())?,
        );
        metadata.insert(
            "gauntlet.num_classes".to_string(),
            self.arch.num_classes().to_string(),
        );
        metadata.insert(
            "gauntlet.bounds".to_string(),
            json(&vec![self.bounds.min, self.bounds.max])?,
        );
        metadata.insert("gauntlet.mean".to_string(), json(&self.normalization.mean)?);
        metadata.insert("gauntlet.std".to_string(), json(&self.normalization.std)?);
        let mut tensors = BTreeMap::new();
        for (name, t) in &self.params.0 {
            let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            tensors.insert(name.clone(), (t.dims().to_vec(), values));
        }
        Ok((metadata, tensors))
    }
}

/// Passes writes through to `inner` and hashes exactly the bytes it accepted.
struct HashingWriter<'a> {
    inner: &'a mut dyn std::io::Write,
    hasher: &'a mut gauntlet_core::Sha256Hasher,
}

impl std::io::Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The native engine's plan of `arch`'s graph for constant f32 weights on the
/// CPU, else `None`. Every parameter must be trainable on the engine (training
/// runs on it), which the built-in architectures' plain layers always are.
/// `tensors` as `arch`'s parameters in f32 on `device`: every parameter the
/// architecture needs, with its shape, and nothing else (extra tensors usually
/// mean the wrong architecture was chosen).
fn checked_params(
    arch: Arch,
    tensors: &HashMap<String, Tensor>,
    normalization: &Normalization,
    device: &Device,
) -> Result<Params> {
    normalization.validate(arch.input_shape()[0])?;
    let specs = arch.parameters();
    let mut found: Vec<String> = tensors.keys().cloned().collect();
    found.sort();
    let missing: Vec<String> = specs
        .iter()
        .filter(|s| !tensors.contains_key(&s.name))
        .map(|s| s.name.clone())
        .collect();
    let unexpected: Vec<&String> = found
        .iter()
        .filter(|n| !specs.iter().any(|s| &s.name == *n))
        .collect();
    if !missing.is_empty() {
        return Err(Error::MissingTensors {
            arch: arch.name().into(),
            missing,
            found,
        });
    }
    if !unexpected.is_empty() {
        return Err(Error::Invalid(format!(
            "{arch} does not use tensors {unexpected:?}: is this the right architecture? (expected exactly {:?})",
            specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>()
        )));
    }
    let mut params = HashMap::new();
    for spec in specs {
        let Some(t) = tensors.get(&spec.name) else {
            continue;
        };
        if t.dims() != spec.shape.as_slice() {
            return Err(Error::ShapeMismatch {
                name: spec.name,
                expected: spec.shape,
                got: t.dims().to_vec(),
            });
        }
        let t = t.to_dtype(DType::F32)?.to_device(device)?;
        params.insert(spec.name, t);
    }
    Ok(Params(params))
}

fn native_engine(
    arch: Arch,
    params: &Params,
    normalization: &Normalization,
    device: &Device,
) -> Result<Option<Arc<NativeGraph>>> {
    let constant_f32 = params
        .0
        .values()
        .all(|t| t.dtype() == DType::F32 && !t.is_variable() && !t.track_op());
    if !device.is_cpu() || !constant_f32 {
        return Ok(None);
    }
    let graph = arch.graph(params)?;
    let engine = NativeGraph::plan(&graph, arch.input_shape(), normalization).map_err(|e| {
        Error::Invalid(format!(
            "internal: the native engine cannot plan {arch}: {e}"
        ))
    })?;
    let names: Vec<String> = arch.parameters().into_iter().map(|p| p.name).collect();
    if let Some(reason) = engine.untrainable(&names) {
        return Err(Error::Invalid(format!(
            "internal: {arch} on the native engine: {reason}"
        )));
    }
    Ok(Some(Arc::new(engine)))
}

fn json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(Error::Metadata)
}

impl Classifier for Network {
    fn logits(&self, x: &Tensor) -> gauntlet_core::Result<Tensor> {
        if let Some(native) = &self.native {
            if x.dtype() == DType::F32 && x.device().is_cpu() {
                return Ok(crate::native::engine_logits(native, x)?);
            }
        }
        let x = self.normalization.apply(x)?;
        Ok(self.graph.run(&x, None)?.output)
    }
    fn bounds(&self) -> Bounds {
        self.bounds
    }
    fn num_classes(&self) -> usize {
        self.arch.num_classes()
    }
    fn input_shape(&self) -> [usize; 3] {
        self.arch.input_shape()
    }
    fn device(&self) -> &Device {
        &self.device
    }
    fn bytes_per_sample(&self) -> u64 {
        self.arch.bytes_per_sample()
    }
}
