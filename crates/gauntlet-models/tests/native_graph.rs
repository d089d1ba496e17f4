//! The native engine on every zoo model: it plans every export (a graph that
//! fell back to the reference executor would silently run several times
//! slower), and matches the reference executor's logits and input gradients.
//! (tests/zoo.rs checks the same models, now on the native engine, against
//! PyTorch.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "zoo/compare.rs"]
mod compare;

use compare::{manifest, max_abs, zoo_dir};
use gauntlet_core::candle_core::{Device, Tensor};
use gauntlet_core::{cross_entropy_sum, input_gradient, Classifier};
use gauntlet_models::graph::Op;
use gauntlet_models::{load_model, Model, ModelOptions};

fn gradient(model: &dyn Classifier, x: &Tensor, labels: &Tensor) -> Tensor {
    input_gradient(model, x, |l| cross_entropy_sum(l, labels))
        .unwrap()
        .1
}

#[test]
fn the_native_engine_matches_the_reference_executor_on_the_zoo() {
    let manifest = manifest();
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for (family, entry) in manifest["families"].as_object().unwrap() {
        for (exporter, export) in entry["exports"].as_object().unwrap() {
            if export["status"] != "exported" {
                continue;
            }
            let path = zoo_dir().join(format!("{family}.{exporter}.onnx"));
            let (model, _) = load_model(&path, &ModelOptions::default(), &Device::Cpu).unwrap();
            let Model::Onnx(onnx) = &model else {
                panic!("not onnx")
            };
            let reference = onnx.with_reference_executor();
            let Some(native) = onnx.native() else {
                report.push(format!(
                    "{family:16} {exporter:7} reference: {}",
                    onnx.reference_reason().unwrap_or("?")
                ));
                continue;
            };
            let data = gauntlet_core::candle_core::safetensors::load(
                zoo_dir().join(format!("{family}.safetensors")),
                &Device::Cpu,
            )
            .unwrap();
            let (x, labels) = (&data["input"], &data["labels"]);
            let t = std::time::Instant::now();
            let g_native = gradient(onnx, x, labels);
            let native_time = t.elapsed();
            let t = std::time::Instant::now();
            let g_reference = gradient(&reference, x, labels);
            let reference_time = t.elapsed();
            let l_native = onnx.logits(x).unwrap();
            let l_reference = reference.logits(x).unwrap();
            let logit_error =
                max_abs(&(&l_native - &l_reference).unwrap()) / max_abs(&l_reference).max(1.0);
            let grad_error =
                max_abs(&(&g_native - &g_reference).unwrap()) / max_abs(&g_reference).max(1e-12);
            report.push(format!(
                "{family:16} {exporter:7} native {:?} logits {logit_error:.1e} grad {grad_error:.1e} time {:.1} vs {:.1} ms",
                native.kernel_counts(),
                native_time.as_secs_f64() * 1e3,
                reference_time.as_secs_f64() * 1e3
            ));
            if logit_error.is_nan()
                || logit_error > 1e-4
                || grad_error.is_nan()
                || grad_error > 1e-3
            {
                failures.push(format!(
                    "{family}/{exporter}: logits {logit_error:.2e}, gradient {grad_error:.2e}"
                ));
            }
            // The poisoning detectors' features (the last fully connected layer's
            // input, and every pooling output: NHWC in the engine) read back in
            // the graph's order.
            let graph = onnx.graph();
            let pooled = graph
                .nodes
                .iter()
                .filter(|n| matches!(n.op, Op::Pool(_) | Op::GlobalPool { .. }))
                .map(|n| n.outputs[0].as_str());
            for feature in graph.default_feature_value().into_iter().chain(pooled) {
                let pixels = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let served = native.logits_and_value(&pixels, x.dim(0).unwrap(), feature);
                if !matches!(served, Ok(Some(_))) {
                    failures.push(format!(
                        "{family}/{exporter}: the engine does not keep '{feature}'"
                    ));
                }
                let (_, native_features) = onnx.logits_and_features(x, Some(feature)).unwrap();
                let (_, reference_features) =
                    reference.logits_and_features(x, Some(feature)).unwrap();
                let error = max_abs(&(&native_features - &reference_features).unwrap())
                    / max_abs(&reference_features).max(1.0);
                if error.is_nan() || error > 1e-4 {
                    failures.push(format!(
                        "{family}/{exporter}: features '{feature}' differ by {error:.2e}"
                    ));
                }
            }
        }
    }
    println!("{}", report.join("\n"));
    assert!(report.len() >= 42, "only {} exports compared", report.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
