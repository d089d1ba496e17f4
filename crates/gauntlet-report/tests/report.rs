//! Reports from fixed records: golden bytes, well-formed SVG and HTML, the right
//! sections and no empty ones, no panic on degenerate records, and (when Chromium
//! is installed) the page as a browser sees it.
//!
//! Regenerate the golden files after an intended change with
//! `GAUNTLET_BLESS=1 cargo test -p gauntlet-report --test report`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use gauntlet_record::RunRecord;
use gauntlet_report::{build, ReportInput};
use serde_json::{json, Value};

fn record(value: Value) -> RunRecord {
    RunRecord::from_json(&value.to_string()).unwrap()
}

fn base(kind: &str, model: &str, samples: usize) -> Value {
    json!({
        "schema_version": 1,
        "tool": {"name": "gauntlet", "version": "0.1.0"},
        "kind": kind,
        "command": ["gauntlet", kind, "--model", model, "--out", "my dir"],
        "seed": 7,
        "environment": {"device": "cpu", "threads": 2},
        "model": {"path": model, "sha256": "ab".repeat(32), "format": "safetensors",
                  "arch": "cnn", "num_classes": 3, "input_shape": [1, 2, 2], "bounds": [0.0, 1.0]},
        "dataset": {"path": "datasets/tiny", "sha256": "cd".repeat(32), "format": "npy",
                    "split": "test", "num_samples": samples},
        "wall_seconds": 1.5
    })
}

fn attack(name: &str, norm: &str, epsilon: f64, robust: &[bool]) -> Value {
    let accuracy = robust.iter().filter(|&&r| r).count() as f64 / robust.len().max(1) as f64;
    json!({"attack": name, "norm": norm, "kind": "fixed-epsilon", "parameters": {"steps": 10},
           "target": null, "epsilon": epsilon, "robust_accuracy": accuracy, "robust": robust,
           "attacked": robust.len(), "newly_broken": 1, "gradient_evaluations": 60,
           "forward_evaluations": 6, "wall_seconds": 0.25, "mean_perturbation": epsilon,
           "max_perturbation": epsilon, "rejected": 0})
}

fn worst(norm: &str, epsilon: f64, robust: &[bool]) -> Value {
    let accuracy = robust.iter().filter(|&&r| r).count() as f64 / robust.len().max(1) as f64;
    json!({"norm": norm, "epsilon": epsilon, "robust_accuracy": accuracy, "robust": robust})
}

/// An evaluation with two norms, a minimal-perturbation attack, a warning and a gallery.
fn eval_record() -> RunRecord {
    let mut value = base("eval", "models/<b>&cnn</b>.safetensors", 6);
    let (t, f) = (true, false);
    value["clean"] = json!({"accuracy": 5.0 / 6.0, "correct": [t, t, t, t, t, f],
                            "predictions": [0, 1, 2, 0, 1, 0], "labels": [0, 1, 2, 0, 1, 2]});
    value["robustness"] = json!({
        "suite": {"name": "standard", "description": "PGD & friends", "path": "attacks/s.toml",
                  "sha256": "ef".repeat(32)},
        "attacks": [
            attack("fgsm", "linf", 0.1, &[t, t, t, t, f, f]),
            attack("fgsm", "linf", 8.0 / 255.0 * 10.0, &[t, f, t, f, f, f]),
            attack("pgd-linf", "linf", 0.1, &[t, t, f, t, f, f]),
            attack("pgd-linf", "linf", 8.0 / 255.0 * 10.0, &[f, f, t, f, f, f]),
            attack("pgd-l2", "l2", 0.5, &[t, t, t, f, f, f]),
        ],
        "minimal": [{"attack": "deepfool", "norm": "l2", "norms": [0.2, 0.9, null, 0.4, 0.1, 0.0]}],
        "best_known": [{"norm": "l2", "norms": [0.2, 0.6, null, 0.4, 0.1, 0.0]}],
        "worst_case": [
            worst("linf", 0.1, &[t, t, f, t, f, f]),
            worst("linf", 8.0 / 255.0 * 10.0, &[f, f, f, f, f, f]),
            worst("l2", 0.5, &[t, t, t, f, f, f]),
        ],
        "warnings": [{"code": "black-box-beats-white-box", "message": "square broke 2 samples PGD did not",
                      "cause": "gradient masking", "remedy": "run apgd-dlr"}],
        "gallery": [{"index": 4, "label": 1, "attack": "fgsm", "norm": "linf", "epsilon": 0.1,
                     "shape": [1, 2, 2], "original": [0.0, 0.5, 1.0, 0.25],
                     "adversarial": [0.1, 0.4, 0.9, 0.35], "clean_prediction": 1,
                     "clean_confidence": 0.9, "adversarial_prediction": 2,
                     "adversarial_confidence": 0.6}]
    });
    record(value)
}

fn train_record(adversarial: bool) -> RunRecord {
    let model = if adversarial {
        "models/at.safetensors"
    } else {
        "models/std.safetensors"
    };
    let mut value = base("train", model, 6);
    value["clean"] = json!({"accuracy": 0.5, "correct": [true, false], "predictions": [0, 0]});
    let history: Vec<Value> = (1..=3)
        .map(|e| {
            let mut epoch = json!({"epoch": e, "train_loss": 1.0 / e as f64, "train_accuracy": 0.3 * e as f64,
                                   "test_accuracy": 0.3 * e as f64, "wall_seconds": 2.0});
            if adversarial {
                epoch["robust_accuracy"] = json!(0.2 * e as f64);
                epoch["epsilon"] = json!(0.3);
                epoch["learning_rate"] = json!(0.001);
            }
            epoch
        })
        .collect();
    value["training"] = json!({
        "train_dataset": {"path": "datasets/tiny", "sha256": "12".repeat(32), "format": "npy",
                          "split": "train", "num_samples": 40},
        "arch": "cnn", "epochs": 3, "batch_size": 10, "optimizer": "adam", "learning_rate": 0.001,
        "momentum": 0.9, "mean": [0.0], "std": [1.0], "history": history, "schedule": "constant"
    });
    if adversarial {
        value["training"]["adversarial"] = json!({"method": "fgsm-rs", "norm": "linf", "epsilon": 0.3,
            "steps": 1, "relative_step_size": 1.25, "warmup_epochs": 1.0, "robust_eval_samples": 100,
            "robust_eval_steps": 20});
        value["training"]["best_epoch"] = json!(3);
        value["training"]["warnings"] = json!(["catastrophic overfitting at epoch 4"]);
    }
    record(value)
}

fn poison_record() -> RunRecord {
    let mut value = base("poison", "models/poisoned.safetensors", 8);
    let scores: Vec<f64> = (0..10)
        .map(|i| {
            if i < 3 {
                5.0 + i as f64
            } else {
                i as f64 * 0.1
            }
        })
        .collect();
    value["poisoning"] = json!({
        "train_dataset": {"path": "datasets/tiny-poisoned", "sha256": "34".repeat(32), "format": "npy",
                          "split": "train", "num_samples": 10},
        "injection": {"attack": "badnets", "target": 0, "fraction": 0.3, "source_classes": [1, 2],
                      "seed": 1, "poisoned": [0, 1, 2]},
        "detectors": [{"method": "spectral-signatures", "scores": scores, "flagged": [0, 1, 2],
                       "classes": [{"class": 0, "samples": 5, "suspect_size": 3, "statistic": 0.9,
                                    "outlier_score": 3.0, "suspect_consistency": 0.0,
                                    "class_consistency": 1.0, "poisoned": true}],
                       "metrics": {"samples": 10, "poisoned": 3, "flagged": 3, "true_positives": 3,
                                   "precision": 1.0, "recall": 1.0, "f1": 1.0,
                                   "false_positive_rate": 0.0, "auroc": 1.0},
                       "wall_seconds": 0.4}],
        "strip": {"overlays": 10, "false_rejection_rate": 0.01, "threshold": 0.2,
                  "calibration_entropies": [0.5, 0.6, 0.7], "clean_entropies": [0.4, 0.6, 0.8],
                  "measured_false_rejection_rate": 0.0, "triggered_entropies": [0.01, 0.02, 0.3],
                  "false_acceptance_rate": 0.333, "auroc": 0.9, "wall_seconds": 3.0},
        "neural_cleanse": {"steps": 50, "suspected_targets": [0], "names_true_target": true,
                           "classes": [
                               {"class": 0, "mask_l1": 9.0, "attack_success": 0.99, "reached_target": true, "anomaly_index": 4.2, "flagged": true},
                               {"class": 1, "mask_l1": 80.0, "attack_success": 0.99, "reached_target": true, "anomaly_index": 0.3, "flagged": false},
                               {"class": 2, "mask_l1": 95.0, "attack_success": 0.99, "reached_target": true, "anomaly_index": -0.5, "flagged": false}],
                           "wall_seconds": 9.0},
        "before_filtering": {"train_samples": 10, "clean_accuracy": 0.9, "attack_success_rate": 0.98, "train_seconds": 4.0},
        "after_filtering": {"train_samples": 7, "clean_accuracy": 0.89, "attack_success_rate": 0.05, "train_seconds": 3.0},
        "removed": [0, 1, 2]
    });
    record(value)
}

fn inputs(records: Vec<RunRecord>) -> Vec<ReportInput> {
    records.into_iter().map(ReportInput::new).collect()
}

fn file<'a>(report: &'a gauntlet_report::Report, name: &str) -> &'a [u8] {
    &report
        .files
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no {name} in the report"))
        .bytes
}

fn html_of(report: &gauntlet_report::Report) -> String {
    String::from_utf8(file(report, "report.html").to_vec()).unwrap()
}

/// Parse the page as XML (it is written well-formed) and return the ids of its sections.
fn sections(html: &str) -> Vec<String> {
    let document = roxmltree::Document::parse_with_options(
        html,
        roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("report.html does not parse: {e}"));
    let sections: Vec<roxmltree::Node> = document
        .descendants()
        .filter(|n| n.has_tag_name("section"))
        .collect();
    for section in &sections {
        // No empty section: a heading and at least one more element.
        assert!(
            section.children().filter(|c| c.is_element()).count() >= 2,
            "empty section {:?}",
            section.attribute("id")
        );
    }
    sections
        .iter()
        .filter_map(|s| s.attribute("id").map(String::from))
        .collect()
}

#[test]
fn every_section_with_data_appears_and_none_without() {
    let full = build(&inputs(vec![
        eval_record(),
        train_record(false),
        train_record(true),
        poison_record(),
    ]))
    .unwrap();
    assert_eq!(
        sections(&html_of(&full)),
        [
            "summary",
            "provenance",
            "accuracy",
            "charts",
            "gallery",
            "warnings",
            "training",
            "poisoning",
            "configuration"
        ]
    );
    let eval_only = build(&inputs(vec![eval_record()])).unwrap();
    assert_eq!(
        sections(&html_of(&eval_only)),
        [
            "summary",
            "provenance",
            "accuracy",
            "charts",
            "gallery",
            "warnings",
            "configuration"
        ]
    );
    let poison_only = build(&inputs(vec![poison_record()])).unwrap();
    assert_eq!(
        sections(&html_of(&poison_only)),
        ["summary", "provenance", "poisoning", "configuration"]
    );
    // Text from records is escaped, never markup.
    let html = html_of(&eval_only);
    assert!(html.contains("models/&lt;b&gt;&amp;cnn&lt;/b&gt;.safetensors"));
    assert!(!html.contains("<b>&cnn"));
    // The page needs nothing from outside.
    for external in ["http://", "https://", "<script", "<link"] {
        let hits = html.matches(external).count();
        let in_svg_namespace = html.matches("http://www.w3.org/2000/svg").count();
        if external == "http://" {
            assert_eq!(
                hits, in_svg_namespace,
                "only the SVG namespace URI may appear"
            );
        } else {
            assert_eq!(hits, 0, "{external}");
        }
    }
}

#[test]
fn every_chart_is_valid_svg_and_png_and_the_charts_asked_for_exist() {
    let report = build(&inputs(vec![
        eval_record(),
        train_record(false),
        train_record(true),
        poison_record(),
    ]))
    .unwrap();
    let names: Vec<&str> = report.files.iter().map(|f| f.name.as_str()).collect();
    for expected in [
        "b-robust-vs-epsilon-linf.svg",
        "b-per-class-linf.svg",
        "b-minimal-perturbation-l2.svg",
        "training-accuracy.svg",
        "training-loss.svg",
        "poisoned-poison-scores-spectral-signatures.svg",
        "poisoned-poison-detector-roc.svg",
        "poisoned-poison-strip-entropy.svg",
        "poisoned-poison-neural-cleanse.svg",
        "poisoned-poison-filtering.svg",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    for f in &report.files {
        if f.name.ends_with(".svg") {
            let text = std::str::from_utf8(&f.bytes).unwrap();
            let svg = roxmltree::Document::parse(text)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", f.name));
            assert!(svg.root_element().has_tag_name("svg"));
            // Every chart labels its axes.
            assert!(text.contains("</text>"), "{} has no text", f.name);
            let png = &file(&report, &f.name.replace(".svg", ".png"));
            assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        }
    }
}

#[test]
fn several_records_share_a_comparison_chart_and_markdown_table() {
    let mut hardened = eval_record();
    hardened.model.path = "models/hardened.safetensors".into();
    let report = build(&inputs(vec![eval_record(), hardened])).unwrap();
    let svg = String::from_utf8(file(&report, "compare-linf.svg").to_vec()).unwrap();
    assert!(
        svg.contains("hardened"),
        "the comparison names both records"
    );
    let summary = String::from_utf8(file(&report, "summary.md").to_vec()).unwrap();
    assert!(
        summary.contains("| record | clean | L∞ ε=0.1 |"),
        "{summary}"
    );
    assert!(
        summary.contains("![Worst-case robust accuracy, L∞](compare-linf.png)"),
        "{summary}"
    );
    assert!(summary.contains("black-box-beats-white-box"));
}

#[test]
fn degenerate_records_render_without_panicking() {
    // NaN everywhere, zero samples, a single ε, no robustness at all.
    let mut nan = eval_record();
    nan.clean.as_mut().unwrap().accuracy = f64::NAN;
    let robustness = nan.robustness.as_mut().unwrap();
    robustness.worst_case.truncate(1);
    robustness.worst_case[0].robust_accuracy = f64::NAN;
    robustness.attacks.truncate(1);
    robustness.attacks[0].robust_accuracy = f64::NAN;
    robustness.attacks[0].epsilon = f64::INFINITY;
    robustness.gallery[0].adversarial[0] = f32::NAN;
    let mut empty = base("eval", "m.safetensors", 0);
    empty["clean"] = json!({"accuracy": 0.0, "correct": [], "predictions": []});
    empty["robustness"] = json!({"suite": {"name": "s", "description": ""}, "attacks": [],
                                 "worst_case": [worst("linf", 0.3, &[])]});
    let bare = record(base("eval", "", 0));
    for records in [vec![nan], vec![record(empty)], vec![bare]] {
        let report = build(&inputs(records)).unwrap();
        sections(&html_of(&report));
    }
    assert!(
        build(&[]).is_err(),
        "no records is an error, not an empty page"
    );
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// The same records always give the same bytes, and these bytes are committed:
/// any change to the output shows up in review.
#[test]
fn a_fixed_record_renders_to_the_committed_bytes() {
    let first = build(&inputs(vec![
        eval_record(),
        train_record(true),
        poison_record(),
    ]))
    .unwrap();
    let second = build(&inputs(vec![
        eval_record(),
        train_record(true),
        poison_record(),
    ]))
    .unwrap();
    assert_eq!(first.files, second.files, "rendering is deterministic");
    let dir = golden_dir();
    if std::env::var_os("GAUNTLET_BLESS").is_some() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for f in &first.files {
            std::fs::write(dir.join(&f.name), &f.bytes).unwrap();
        }
    }
    let mut committed: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}; bless with GAUNTLET_BLESS=1", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    committed.sort();
    let mut produced: Vec<String> = first.files.iter().map(|f| f.name.clone()).collect();
    produced.sort();
    assert_eq!(produced, committed, "the set of files changed");
    for f in &first.files {
        let want = std::fs::read(dir.join(&f.name)).unwrap();
        assert!(
            want == f.bytes,
            "{} differs from the committed golden file (bless with GAUNTLET_BLESS=1 if intended)",
            f.name
        );
    }
}

/// Drive headless Chromium against the generated page: it must load, lay out every
/// section, and render a screenshot. Ignored by default, so a run without a
/// browser says so instead of passing quietly: `apt-get install chromium`, then
/// `cargo test --workspace --test report -- --ignored`.
#[test]
#[ignore = "needs chromium on PATH (apt-get install chromium; run with --ignored)"]
fn chromium_renders_the_page() {
    let browser = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
    let Some(browser) = browser else {
        panic!("no chromium, chromium-browser or google-chrome on PATH (apt-get install chromium)");
    };
    let dir = tempfile::tempdir().unwrap();
    let report = build(&inputs(vec![
        eval_record(),
        train_record(true),
        poison_record(),
    ]))
    .unwrap();
    for f in &report.files {
        std::fs::write(dir.path().join(&f.name), &f.bytes).unwrap();
    }
    let page = format!("file://{}", dir.path().join("report.html").display());
    let shot = dir.path().join("shot.png");
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
    ];
    let dom = std::process::Command::new(browser)
        .args(common)
        .args(["--dump-dom", &page])
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout);
    for id in [
        "summary",
        "provenance",
        "accuracy",
        "charts",
        "gallery",
        "warnings",
        "training",
        "poisoning",
        "configuration",
    ] {
        assert!(
            dom.contains(&format!("<section id=\"{id}\">")),
            "Chromium's DOM lacks section {id}"
        );
    }
    assert!(
        dom.matches("<svg").count() >= 8,
        "inline charts are in the DOM"
    );
    let status = std::process::Command::new(browser)
        .args(common)
        .args([
            &format!("--screenshot={}", shot.display()),
            "--window-size=1100,1600",
            &page,
        ])
        .output()
        .unwrap();
    assert!(status.status.success());
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.len() > 10_000,
        "the screenshot has content ({} bytes)",
        png.len()
    );
}
