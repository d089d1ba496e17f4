//! Writes the zoo table of docs/models.md: for every family and exporter whether
//! it loads, which executor runs it, its logit and gradient errors against
//! PyTorch, and the time per image of a forward + backward pass to the input
//! (batch 32, median of 5) on the native engine and on the reference executor.
//! Run in release on an otherwise idle machine:
//!
//!     cargo run --release -p gauntlet-models --example zoo_table
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/zoo/compare.rs"]
mod compare;

use std::time::Instant;

use gauntlet_core::candle_core::Tensor;
use gauntlet_core::{cross_entropy_sum, input_gradient, Classifier};
use gauntlet_models::Model;

fn main() {
    let manifest = compare::manifest();
    println!("| family | parameters | exporter | loads | engine | logit error | gradient cosine | gradient error | FGSM verdicts | ms per image, native | ms per image, reference |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (family, entry) in manifest["families"].as_object().unwrap() {
        let params = entry["parameters"].as_u64().unwrap_or(0);
        for (exporter, export) in entry["exports"].as_object().unwrap() {
            let prefix = format!("| {family} | {params} | {exporter} |");
            if export["status"] != "exported" {
                let error = export["error"].as_str().unwrap_or("").replace('|', "/");
                let error: String = error.chars().take(90).collect();
                println!(
                    "{prefix} — ({}: {error}…) | | | | | | | |",
                    export["status"].as_str().unwrap_or("?")
                );
                continue;
            }
            match compare::compare(family, exporter) {
                Err(e) => println!("{prefix} **no**: {e} | | | | | | | |"),
                Ok(c) => {
                    let reps = 32 / c.input.dims()[0];
                    let x = Tensor::cat(&vec![c.input.clone(); reps], 0).unwrap();
                    let labels = Tensor::cat(&vec![c.labels.clone(); reps], 0).unwrap();
                    let time = |model: &dyn Classifier| {
                        let mut times: Vec<f64> = (0..5)
                            .map(|_| {
                                let started = Instant::now();
                                input_gradient(model, &x, |l| cross_entropy_sum(l, &labels))
                                    .unwrap();
                                started.elapsed().as_secs_f64() * 1000.0 / x.dims()[0] as f64
                            })
                            .collect();
                        times.sort_by(f64::total_cmp);
                        times[2]
                    };
                    let Model::Onnx(onnx) = &c.model else {
                        panic!("the zoo holds ONNX files")
                    };
                    let engine = c.model.engine();
                    let native = if onnx.native().is_some() {
                        format!("{:.2}", time(onnx))
                    } else {
                        "—".into()
                    };
                    let reference = time(&onnx.with_reference_executor());
                    println!(
                        "{prefix} yes | {} | {:.1e} | {:.7} | {:.1e} | {} | {native} | {reference:.2} |",
                        engine.split(':').next().unwrap_or_default(),
                        c.logit_error,
                        c.gradient_cosine,
                        c.gradient_error,
                        if c.fgsm_agrees {
                            "identical"
                        } else {
                            "**differ**"
                        },
                    );
                }
            }
        }
    }
}
