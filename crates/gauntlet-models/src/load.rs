//! Loading any supported model file into a [`Model`], with its fingerprint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use gauntlet_core::{input_gradient, Bounds, Classifier, SeedStream};
use serde::{Deserialize, Serialize};

use crate::network::{Network, Normalization};
use crate::onnx::OnnxModel;
use crate::{Arch, Error, Result};

/// The file format a model came from (the record's vocabulary).
pub use gauntlet_record::ModelFormat;

/// Detect a model's format from its extension, falling back to the file's first bytes.
fn detect_format(path: &Path, head: &[u8]) -> Result<ModelFormat> {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("safetensors") => return Ok(ModelFormat::Safetensors),
        Some("pt" | "pth" | "bin" | "ckpt") => return Ok(ModelFormat::Pytorch),
        Some("onnx") => return Ok(ModelFormat::Onnx),
        _ => {}
    }
    if head.starts_with(b"PK\x03\x04") {
        Ok(ModelFormat::Pytorch)
    } else if head.len() >= 9 && head[8] == b'{' {
        Ok(ModelFormat::Safetensors)
    } else {
        Err(Error::Format {
            path: path.to_path_buf(),
            message: "unknown model format, expected .safetensors, .pt/.pth (PyTorch state dict) or .onnx".into(),
        })
    }
}

/// How to interpret a model file; everything defaults to what the file says.
#[derive(Clone, Debug, Default)]
pub struct ModelOptions {
    /// Architecture for files that do not name one (PyTorch state dicts, foreign safetensors).
    pub arch: Option<Arch>,
    /// Normalisation to fold in (overrides the file's).
    pub normalization: Option<Normalization>,
    /// Valid input range (default `[0, 1]`).
    pub bounds: Option<Bounds>,
    /// Input shape `[C, H, W]` for ONNX graphs whose input is symbolic.
    pub input_shape: Option<[usize; 3]>,
}

/// What a model is, for the record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Path as given.
    pub path: PathBuf,
    /// sha256 of the file.
    pub sha256: String,
    /// File format.
    pub format: ModelFormat,
    /// Architecture name (`onnx` for graphs).
    pub arch: String,
    /// Number of classes.
    pub num_classes: usize,
    /// `[C, H, W]`.
    pub input_shape: [usize; 3],
    /// Valid input range.
    pub bounds: Bounds,
}

/// A loaded classifier: a built-in network or an ONNX graph.
#[derive(Clone, Debug)]
pub enum Model {
    /// A built-in architecture.
    Network(Network),
    /// An interpreted ONNX graph.
    Onnx(OnnxModel),
}

impl Model {
    /// A copy computing in `dtype` (f64 for finite-difference checks).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(match self {
            Model::Network(n) => Model::Network(n.to_dtype(dtype)?),
            Model::Onnx(o) => Model::Onnx(o.to_dtype(dtype)?),
        })
    }

    /// Which executor computes this model, for records: `native`, or
    /// `reference: <why>` when it runs on candle's graph (one line).
    pub fn engine(&self) -> String {
        match self {
            Model::Network(n) if n.native().is_some() => "native".into(),
            Model::Network(_) => "reference: the native engine computes in f32 on the CPU".into(),
            Model::Onnx(o) => match o.reference_reason() {
                None => "native".into(),
                Some(reason) => format!("reference: {reason}"),
            },
        }
    }

    fn inner(&self) -> &dyn Classifier {
        match self {
            Model::Network(n) => n,
            Model::Onnx(o) => o,
        }
    }
}

impl Classifier for Model {
    fn logits(&self, x: &Tensor) -> gauntlet_core::Result<Tensor> {
        self.inner().logits(x)
    }
    fn reseed_noise(&self, stream: &gauntlet_core::SeedStream) {
        self.inner().reseed_noise(stream);
    }
    fn is_random(&self) -> bool {
        self.inner().is_random()
    }
    fn bounds(&self) -> Bounds {
        self.inner().bounds()
    }
    fn num_classes(&self) -> usize {
        self.inner().num_classes()
    }
    fn input_shape(&self) -> [usize; 3] {
        self.inner().input_shape()
    }
    fn device(&self) -> &Device {
        self.inner().device()
    }
    fn bytes_per_sample(&self) -> u64 {
        self.inner().bytes_per_sample()
    }
}

/// Load a model file, fingerprint it and verify that inputs receive a gradient.
pub fn load_model(
    path: &Path,
    options: &ModelOptions,
    device: &Device,
) -> Result<(Model, ModelInfo)> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let sha256 = gauntlet_core::sha256_bytes(&bytes);
    let format = detect_format(path, &bytes[..bytes.len().min(16)])?;
    let bounds = options.bounds.unwrap_or(Bounds::UNIT);
    let (model, arch_name) = match format {
        ModelFormat::Safetensors => {
            let net = load_safetensors(path, &bytes, options, bounds, device)?;
            let name = net.arch().name().to_string();
            (Model::Network(net), name)
        }
        ModelFormat::Pytorch => {
            let net = load_pytorch(path, options, bounds, device)?;
            let name = net.arch().name().to_string();
            (Model::Network(net), name)
        }
        ModelFormat::Onnx => {
            let norm = options.normalization.clone().unwrap_or_default();
            let graph =
                OnnxModel::from_bytes(path, &bytes, options.input_shape, norm, bounds, device)?;
            (Model::Onnx(graph), "onnx".to_string())
        }
    };
    verify_input_gradient(&model).map_err(|e| match e {
        Error::NoGradient(m) => Error::NoGradient(format!("{}: {m}", path.display())),
        other => other,
    })?;
    let info = ModelInfo {
        path: path.to_path_buf(),
        sha256,
        format,
        arch: arch_name,
        num_classes: model.num_classes(),
        input_shape: model.input_shape(),
        bounds,
    };
    Ok((model, info))
}

/// Write a built-in network as safetensors (atomically) and describe the file as
/// [`load_model`] would on loading it back, without loading it: the same sha256,
/// format, architecture, shape and classes, and the network's bounds (the file
/// does not store them; a unit-range network loads back with the default ones).
pub fn save_model(network: &Network, path: &Path) -> Result<ModelInfo> {
    let sha256 = network.save(path)?;
    Ok(ModelInfo {
        path: path.to_path_buf(),
        sha256,
        format: ModelFormat::Safetensors,
        arch: network.arch().name().to_string(),
        num_classes: network.num_classes(),
        input_shape: network.input_shape(),
        bounds: network.bounds(),
    })
}

fn format_err(path: &Path, message: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn load_safetensors(
    path: &Path,
    bytes: &[u8],
    options: &ModelOptions,
    bounds: Bounds,
    device: &Device,
) -> Result<Network> {
    let tensors = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| format_err(path, format!("not a valid safetensors file: {e}")))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| format_err(path, format!("not a valid safetensors file: {e}")))?;
    let meta: HashMap<String, String> = header.metadata().clone().unwrap_or_default();
    let arch = match (options.arch, meta.get("gauntlet.arch")) {
        (Some(a), _) => a,
        (None, Some(name)) => Arch::parse(name).map_err(|e| format_err(path, e.to_string()))?,
        (None, None) => {
            return Err(format_err(
                path,
                "the file does not say its architecture (no gauntlet.arch metadata); pass --arch mlp|cnn|cifar-cnn",
            ))
        }
    };
    let stored_norm = || -> Result<Normalization> {
        let parse = |key: &str| -> Result<Vec<f32>> {
            match meta.get(key) {
                None => Ok(Vec::new()),
                Some(v) => serde_json::from_str(v).map_err(|e| {
                    format_err(
                        path,
                        format!("metadata {key} = {v:?} is not a list of numbers: {e}"),
                    )
                }),
            }
        };
        Ok(Normalization {
            mean: parse("gauntlet.mean")?,
            std: parse("gauntlet.std")?,
        })
    };
    let normalization = match &options.normalization {
        Some(n) => n.clone(),
        None => stored_norm()?,
    };
    let bounds = match (options.bounds, meta.get("gauntlet.bounds")) {
        (None, Some(b)) => {
            let v: Vec<f64> = serde_json::from_str(b).map_err(|e| {
                format_err(
                    path,
                    format!("metadata gauntlet.bounds = {b:?} is invalid: {e}"),
                )
            })?;
            match v.as_slice() {
                [lo, hi] => Bounds::new(*lo, *hi).map_err(|e| format_err(path, e.to_string()))?,
                _ => {
                    return Err(format_err(
                        path,
                        format!("metadata gauntlet.bounds = {b:?}, expected [min, max]"),
                    ))
                }
            }
        }
        _ => bounds,
    };
    let mut map = HashMap::new();
    for (name, view) in tensors.tensors() {
        let t = candle_core::safetensors::Load::load(&view, device)
            .map_err(|e| format_err(path, format!("tensor '{name}': {e}")))?;
        map.insert(name, t);
    }
    Network::from_tensors(arch, map, normalization, bounds, device)
}

fn load_pytorch(
    path: &Path,
    options: &ModelOptions,
    bounds: Bounds,
    device: &Device,
) -> Result<Network> {
    let arch = options.arch.ok_or_else(|| {
        format_err(
            path,
            "a PyTorch state dict does not say its architecture; pass --arch mlp|cnn|cifar-cnn",
        )
    })?;
    // candle's reader interprets pickle opcodes itself: no Python code is executed.
    let mut entries = Vec::new();
    for key in [
        None,
        Some("state_dict"),
        Some("model_state_dict"),
        Some("model"),
    ] {
        match candle_core::pickle::read_all_with_key(path, key) {
            Ok(found) if !found.is_empty() => {
                entries = found;
                break;
            }
            Ok(_) => {}
            Err(e) if key.is_none() => {
                return Err(format_err(
                    path,
                    format!("not a readable PyTorch (zip) checkpoint: {e}"),
                ));
            }
            Err(_) => {}
        }
    }
    if entries.is_empty() {
        return Err(format_err(path, "no tensors found (looked at the top level and under 'state_dict', 'model_state_dict', 'model')"));
    }
    let map: HashMap<String, Tensor> = entries
        .into_iter()
        .map(|(name, t)| {
            (
                name.strip_prefix("module.")
                    .map(str::to_string)
                    .unwrap_or(name),
                t,
            )
        })
        .collect();
    let normalization = options.normalization.clone().unwrap_or_default();
    Network::from_tensors(arch, map, normalization, bounds, device)
}

/// Refuse models whose input gradient is zero or not finite: white-box attacks
/// on them would silently report robustness that is not there.
pub fn verify_input_gradient(model: &dyn Classifier) -> Result<()> {
    let [c, h, w] = model.input_shape();
    let n = 2;
    let seed = SeedStream::new(0).derive("gradient-probe");
    let Bounds { min, max } = model.bounds();
    let x = seed.uniform_f32(n * c * h * w, min as f32, max as f32);
    let x = Tensor::from_vec(x, (n, c, h, w), model.device())?;
    let k = model.num_classes();
    let weights = Tensor::from_vec(
        seed.derive("weights").uniform_f32(n * k, -1.0, 1.0),
        (n, k),
        model.device(),
    )?;
    let (_, grad) = input_gradient(model, &x, |logits| Ok((logits * &weights)?.sum_all()?))?;
    let g = grad.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    if g.iter().any(|v| !v.is_finite()) {
        return Err(Error::NoGradient(
            "the input gradient contains NaN or Inf; gradient-based attacks cannot run".into(),
        ));
    }
    if g.iter().all(|v| *v == 0.0) {
        return Err(Error::NoGradient(
            "the input receives no gradient (it is exactly zero): an op drops it, so white-box attacks would report false robustness".into(),
        ));
    }
    Ok(())
}
