//! The model zoo: every torchvision classification family (and the CIFAR
//! pre-activation nets), exported by today's PyTorch with both exporters, loads
//! and matches PyTorch's logits, input gradients and FGSM verdicts.
//!
//! The fixtures come from `tests/zoo/make_zoo.py` (run by hand; each export was
//! checked against onnxruntime there). `manifest.json` lists every family and
//! exporter; an export that failed inside PyTorch is recorded there and is the
//! only kind this test does not load.

use std::path::{Path, PathBuf};

use gauntlet_core::candle_core::{DType, Device, Tensor};
use gauntlet_core::{cross_entropy_sum, input_gradient, Classifier};
use gauntlet_models::{load_model, ModelOptions};

fn zoo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/zoo")
}

fn manifest() -> serde_json::Value {
    let text = std::fs::read_to_string(zoo_dir().join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// One exported model compared with PyTorch.
struct Comparison {
    logit_error: f32,
    gradient_cosine: f64,
    gradient_error: f32,
    fgsm_agrees: bool,
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn compare(family: &str, exporter: &str) -> Result<Comparison, String> {
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
    Ok(Comparison {
        logit_error,
        gradient_cosine,
        gradient_error,
        fgsm_agrees,
    })
}

#[test]
fn every_exported_zoo_model_matches_pytorch() {
    let manifest = manifest();
    let families = manifest["families"].as_object().unwrap();
    assert!(
        families.len() >= 15,
        "the zoo lists {} families",
        families.len()
    );
    let mut failures = Vec::new();
    let mut loaded = 0;
    for (family, entry) in families {
        for (exporter, export) in entry["exports"].as_object().unwrap() {
            if export["status"] != "exported" {
                continue;
            }
            match compare(family, exporter) {
                Ok(c) => {
                    loaded += 1;
                    println!(
                        "{family:16} {exporter:7} logits {:.1e}  grad cos {:.7} err {:.1e}  fgsm {}",
                        c.logit_error, c.gradient_cosine, c.gradient_error, c.fgsm_agrees
                    );
                    if !(c.logit_error <= 1e-4) {
                        failures.push(format!(
                            "{family}/{exporter}: logit error {:.2e}",
                            c.logit_error
                        ));
                    }
                    if !(c.gradient_cosine >= 0.9999 && c.gradient_error <= 1e-3) {
                        failures.push(format!(
                            "{family}/{exporter}: gradient cosine {:.6}, max error {:.2e}",
                            c.gradient_cosine, c.gradient_error
                        ));
                    }
                    if !c.fgsm_agrees {
                        failures.push(format!("{family}/{exporter}: FGSM verdicts differ"));
                    }
                }
                Err(e) => failures.push(format!("{family}/{exporter}: {e}")),
            }
        }
    }
    assert!(loaded >= 30, "only {loaded} exports loaded");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Both exporters' files exist for every family the manifest says was exported,
/// and the dynamo exporter's weights sit in a side file (external data).
#[test]
fn the_zoo_holds_what_its_manifest_says() {
    let manifest = manifest();
    for (family, entry) in manifest["families"].as_object().unwrap() {
        for (exporter, export) in entry["exports"].as_object().unwrap() {
            let path = zoo_dir().join(format!("{family}.{exporter}.onnx"));
            assert_eq!(
                path.exists(),
                export["status"] == "exported",
                "{family}/{exporter}: {}",
                export["status"]
            );
        }
    }
}
