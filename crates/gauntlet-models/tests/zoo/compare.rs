//! Comparing one zoo export with PyTorch's reference values; shared by the zoo
//! test and the example that writes docs/models.md's table.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::path::{Path, PathBuf};

use gauntlet_core::candle_core::{DType, Device, Tensor};
use gauntlet_core::{cross_entropy_sum, input_gradient, Classifier};
use gauntlet_models::{load_model, Model, ModelOptions};

/// The zoo's folder.
pub fn zoo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/zoo")
}

/// The generator's manifest.json.
pub fn manifest() -> serde_json::Value {
    let text = std::fs::read_to_string(zoo_dir().join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// One exported model compared with PyTorch.
pub struct Comparison {
    /// The loaded model.
    pub model: Model,
    /// The fixture's images.
    pub input: Tensor,
    /// Labels of the images.
    pub labels: Tensor,
    /// Max |logit difference| over the logit scale.
    pub logit_error: f32,
    /// Cosine between the input gradients.
    pub gradient_cosine: f64,
    /// Max |gradient difference| over the gradient scale.
    pub gradient_error: f32,
    /// Whether the FGSM verdict of every image equals PyTorch's.
    pub fgsm_agrees: bool,
}

pub fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

pub fn compare(family: &str, exporter: &str) -> Result<Comparison, String> {
    let dir = zoo_dir();
    let reference = gauntlet_core::candle_core::safetensors::load(
        dir.join(format!("{family}.safetensors")),
        &Device::Cpu,
    )
    .map_err(|e| e.to_string())?;
    let get = |k: &str| reference.get(k).cloned().ok_or(format!("{k} missing"));
    let (x, labels) = (get("input")?, get("labels")?);
    let (torch_logits, torch_grad) = (get("logits")?, get("gradient")?);
    let torch_fgsm = get("fgsm_pred")?
        .to_vec1::<i64>()
        .map_err(|e| e.to_string())?;
    let path = dir.join(format!("{family}.{exporter}.onnx"));
    let (model, _) =
        load_model(&path, &ModelOptions::default(), &Device::Cpu).map_err(|e| e.to_string())?;

    let logits = model.logits(&x).map_err(|e| e.to_string())?;
    let scale = max_abs(&torch_logits).max(1.0);
    let logit_error = max_abs(&(logits - &torch_logits).map_err(|e| e.to_string())?) / scale;

    let (_, grad) =
        input_gradient(&model, &x, |l| cross_entropy_sum(l, &labels)).map_err(|e| e.to_string())?;
    let g = grad.flatten_all().unwrap().to_dtype(DType::F64).unwrap();
    let t = torch_grad
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let dot = (&g * &t)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let norm = |v: &Tensor| {
        v.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
            .sqrt()
    };
    let gradient_cosine = dot / (norm(&g) * norm(&t)).max(1e-30);
    let gradient_error = max_abs(&(&grad - &torch_grad).unwrap()) / max_abs(&torch_grad).max(1e-12);

    // FGSM at 8/255 from our own gradient: the verdict per image must be PyTorch's.
    let eps = manifest()["eps"].as_f64().unwrap();
    let x_adv = (&x + (grad.sign().unwrap() * eps).unwrap())
        .unwrap()
        .clamp(0f32, 1f32)
        .unwrap();
    let preds = model
        .logits(&x_adv)
        .map_err(|e| e.to_string())?
        .argmax(1)
        .unwrap()
        .to_vec1::<u32>()
        .unwrap();
    let labels = labels.to_vec1::<i64>().unwrap();
    let fgsm_agrees = preds
        .iter()
        .zip(&torch_fgsm)
        .zip(&labels)
        .all(|((&p, &tp), &y)| (i64::from(p) != y) == (tp != y));
    let labels_tensor = Tensor::new(labels.as_slice(), &Device::Cpu).map_err(|e| e.to_string())?;
    Ok(Comparison {
        model,
        input: x,
        labels: labels_tensor,
        logit_error,
        gradient_cosine,
        gradient_error,
        fgsm_agrees,
    })
}
