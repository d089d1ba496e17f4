//! report, demo, check (the CI gate) and merge.

use super::*;

/// The README's main job, shortened (1 epoch, FGSM only): every step's record, its
/// own report, and the combined report with the comparison and training charts.
#[test]
fn demo_trains_evaluates_and_reports_both_models() {
    let dir = tempfile::tempdir().unwrap();
    let suite = dir.path().join("fgsm.toml");
    std::fs::write(
        &suite,
        "name = \"fgsm\"\ndescription = \"one step\"\n[[attack]]\nname = \"fgsm\"\neps = [0.1, 0.3]\n",
    )
    .unwrap();
    let out = dir.path().join("demo");
    let demo = [
        "demo",
        "--suite",
        suite.to_str().unwrap(),
        "--epochs",
        "1",
        "--out",
        out.to_str().unwrap(),
        "-q",
    ];
    let run = gauntlet(&demo);
    assert!(run.status.success(), "{}", stderr(&run));
    let first_model = std::fs::read(out.join("fgsm-rs/model.safetensors")).unwrap();
    // The README's main command runs again over its own output (a user's second
    // try), regenerating the same model rather than tripping over the first run.
    let again = gauntlet(&demo);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(
        std::fs::read(out.join("fgsm-rs/model.safetensors")).unwrap(),
        first_model
    );
    for file in [
        "report.html",
        "summary.md",
        "compare-linf.svg",
        "compare-linf.png",
        "training-accuracy.svg",
        "standard/results.json",
        "standard/report.html",
        "fgsm-rs/model.safetensors",
        "fgsm-rs/model.record.json",
        "fgsm-rs/model.report/report.html",
        "fgsm-rs/eval/results.json",
        "fgsm-rs/eval/report.html",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    // Each record says how to re-run exactly its step, not the demo.
    let trained = read_json(&out.join("fgsm-rs/model.record.json"));
    assert_eq!(trained["command"][1], "train");
    assert_eq!(trained["training"]["adversarial"]["method"], "fgsm-rs");
    let evaluated = read_json(&out.join("fgsm-rs/eval/results.json"));
    assert_eq!(evaluated["command"][1], "eval");
    assert_eq!(evaluated["clean"]["labels"].as_array().unwrap().len(), 1000);
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    for needle in [
        "standard CNN",
        "FGSM-RS CNN",
        "id=\"training\"",
        "id=\"gallery\"",
    ] {
        assert!(html.contains(needle), "{needle}");
    }
}

#[test]
fn report_renders_shipped_records_and_refuses_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let ok = gauntlet(&[
        "report",
        "reports/mnist-cnn-pgd-at/results.json",
        "examples/models/mnist-cnn-pgd-at.record.json",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.contains("mnist-cnn-pgd-at"), "{summary}");
    assert!(out.join("training-accuracy.png").is_file());

    let not_json = dir.path().join("bad.json");
    std::fs::write(&not_json, "{\"schema_version\": 1, \"kind\": ").unwrap();
    let wrong_version = dir.path().join("v9.json");
    std::fs::write(&wrong_version, "{\"schema_version\": 9}").unwrap();
    let out_s = dir.path().join("r2");
    let out_s = out_s.to_str().unwrap();
    let cases: [(Vec<&str>, &str); 4] = [
        (
            vec!["report", "missing.json", "--out", out_s],
            "missing.json",
        ),
        (
            vec!["report", not_json.to_str().unwrap(), "--out", out_s],
            "is not a Gauntlet run record",
        ),
        (
            vec!["report", wrong_version.to_str().unwrap(), "--out", out_s],
            "is not a Gauntlet run record",
        ),
        (
            vec![
                "report",
                "reports/mnist-cnn-pgd-at/results.json",
                "--labels",
                "a,b",
                "--out",
                out_s,
            ],
            "--labels has 2 entries for 1 records",
        ),
    ];
    for (args, needle) in cases {
        assert_clear_error(&gauntlet(&args), needle);
    }
}

/// The gate from the real binary: 0 on a pass, 1 on a regression, 2 on an error,
/// with junit.xml holding one case per check.
#[test]
fn check_exit_codes_follow_the_gate() {
    let dir = tempfile::tempdir().unwrap();
    let record = "reports/demo/standard/results.json";
    let baseline = dir.path().join("baseline.json");
    let update = gauntlet(&[
        "baseline",
        "update",
        record,
        "--out",
        baseline.to_str().unwrap(),
    ]);
    assert!(update.status.success(), "{}", stderr(&update));
    let out = dir.path().join("check");
    let run = |record: &str, extra: &[&str]| -> Output {
        let mut args = vec!["check", record, "--out", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        gauntlet(&args)
    };
    let same = run(
        record,
        &[
            "--baseline",
            baseline.to_str().unwrap(),
            "--min-clean",
            "0.9",
        ],
    );
    assert_eq!(same.status.code(), Some(0), "{}", stderr(&same));
    let junit = std::fs::read_to_string(out.join("junit.xml")).unwrap();
    assert_eq!(junit.matches("<testcase ").count(), 5, "{junit}");
    assert!(out.join("summary.md").is_file());

    // A regression: 50 of the samples robust at ε = 0.1 now broken.
    let mut worse = read_json(&repo(record));
    let robust = worse["robustness"]["worst_case"][0]["robust"]
        .as_array_mut()
        .unwrap();
    let mut lost = 0;
    for r in robust.iter_mut() {
        if lost < 50 && r.as_bool() == Some(true) {
            *r = serde_json::Value::Bool(false);
            lost += 1;
        }
    }
    let worse_path = dir.path().join("worse.json");
    std::fs::write(&worse_path, worse.to_string()).unwrap();
    let failed = run(
        worse_path.to_str().unwrap(),
        &["--baseline", baseline.to_str().unwrap()],
    );
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    let table = String::from_utf8_lossy(&failed.stdout);
    assert!(table.contains("FAIL robust accuracy linf ε=0.1"), "{table}");
    let junit = std::fs::read_to_string(out.join("junit.xml")).unwrap();
    assert_eq!(junit.matches("<failure ").count(), 1);

    // Errors: a different evaluation, a threshold the record cannot answer, bad flags.
    let mut other = read_json(&repo(record));
    other["dataset"]["num_samples"] = serde_json::json!(999);
    let other_path = dir.path().join("other.json");
    std::fs::write(&other_path, other.to_string()).unwrap();
    assert_clear_error(
        &run(
            other_path.to_str().unwrap(),
            &["--baseline", baseline.to_str().unwrap()],
        ),
        "999 samples vs baseline 1000",
    );
    let allowed = run(
        other_path.to_str().unwrap(),
        &["--baseline", baseline.to_str().unwrap(), "--allow-mismatch"],
    );
    assert_eq!(allowed.status.code(), Some(0), "{}", stderr(&allowed));
    assert_clear_error(
        &run(record, &["--min-robust", "linf:0.25:0.5"]),
        "no worst-case result for linf ε=0.25",
    );
    assert_clear_error(&run(record, &["--min-robust", "linf:0.3"]), "NORM:EPS:MIN");
    assert_clear_error(&run(record, &[]), "nothing to check");
    assert_clear_error(&run(record, &["--min-clean", "97"]), "not 95");
}

/// Three shards merged equal the single run (timings aside), and shards that do not
/// make up one evaluation are refused.
#[test]
fn three_shards_merge_into_the_single_run() {
    let dir = tempfile::tempdir().unwrap();
    // The same 90 images as IDX files and as a streamed image folder.
    let folder = dir.path().join("png");
    mnist_png_folder(&folder, 90);
    for data in ["datasets/mnist-5k", folder.to_str().unwrap()] {
        shards_merge_into_the_single_run(dir.path(), data);
    }
}

/// An L1 ε grid runs through the runner, the record, the report and the gate.
#[test]
fn l1_grids_run_through_the_attack_the_report_and_the_gate() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("l1");
    let attack = gauntlet(&[
        "attack",
        "--model",
        "examples/models/mnist-mlp.safetensors",
        "--data",
        "datasets/mnist-5k",
        "--limit",
        "30",
        "--attack",
        "apgd-ce-l1",
        "--eps",
        "4,8",
        "--steps",
        "20",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(attack.status.success(), "{}", stderr(&attack));
    let record = out.join("results.json");
    let json = read_json(&record);
    let worst = json["robustness"]["worst_case"].as_array().unwrap();
    assert_eq!(worst.len(), 2);
    assert!(worst.iter().all(|w| w["norm"] == "l1"), "{worst:?}");
    assert_eq!(json["robustness"]["best_known"][0]["norm"], "l1");
    let at_8 = worst[1]["robust_accuracy"].as_f64().unwrap();
    assert!(at_8 < 1.0, "nothing broken at L1 ε = 8 on the MLP");

    let report_dir = dir.path().join("report");
    let report = gauntlet(&[
        "report",
        record.to_str().unwrap(),
        "--out",
        report_dir.to_str().unwrap(),
    ]);
    assert!(report.status.success(), "{}", stderr(&report));
    let html = std::fs::read_to_string(report_dir.join("report.html")).unwrap();
    assert!(
        html.contains("L1 robust accuracy"),
        "the report has no L1 table"
    );

    let check = |threshold: &str| {
        gauntlet(&[
            "check",
            record.to_str().unwrap(),
            "--min-robust",
            &format!("l1:8:{threshold}"),
            "--out",
            dir.path().join("gate").to_str().unwrap(),
        ])
    };
    assert_eq!(check(&format!("{}", at_8 / 2.0)).status.code(), Some(0));
    assert_eq!(
        check(&format!("{}", (at_8 + 1.0) / 2.0)).status.code(),
        Some(1)
    );
}
