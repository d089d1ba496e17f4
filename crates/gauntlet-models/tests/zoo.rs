//! The model zoo: every torchvision classification family (and the CIFAR
//! pre-activation nets), exported by today's PyTorch with both exporters, loads
//! and matches PyTorch's logits, input gradients and FGSM verdicts.
//!
//! The fixtures come from `tests/zoo/make_zoo.py` (run by hand; each export was
//! checked against onnxruntime there). `manifest.json` lists every family and
//! exporter; an export that failed inside PyTorch is recorded there and is the
//! only kind this test does not load.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "zoo/compare.rs"]
mod compare;

use compare::{compare, manifest, zoo_dir};

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
                    if c.logit_error.is_nan() || c.logit_error > 1e-4 {
                        failures.push(format!(
                            "{family}/{exporter}: logit error {:.2e}",
                            c.logit_error
                        ));
                    }
                    if c.gradient_cosine.is_nan()
                        || c.gradient_cosine < 0.9999
                        || c.gradient_error.is_nan()
                        || c.gradient_error > 1e-3
                    {
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
    assert!(loaded >= 42, "only {loaded} exports loaded");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Both exporters' files exist for every family the manifest says was exported,
/// and docs/models.md's zoo table has a row for each.
#[test]
fn the_zoo_holds_what_its_manifest_says() {
    let manifest = manifest();
    let docs = std::fs::read_to_string(zoo_dir().join("../../../../docs/models.md")).unwrap();
    for (family, entry) in manifest["families"].as_object().unwrap() {
        for (exporter, export) in entry["exports"].as_object().unwrap() {
            let path = zoo_dir().join(format!("{family}.{exporter}.onnx"));
            let row = format!("| {family} | {} | {exporter} |", entry["parameters"]);
            assert!(
                docs.contains(&row),
                "docs/models.md's zoo table lacks {row}: rerun the zoo_table example"
            );
            assert_eq!(
                path.exists(),
                export["status"] == "exported",
                "{family}/{exporter}: {}",
                export["status"]
            );
        }
    }
}
