//! scan, and loads that refuse what it flags.

use super::*;

/// `gauntlet scan` exit codes, and the scan every load runs first.
#[test]
fn scan_flags_code_execution_and_loads_refuse_it() {
    let dir = tempfile::tempdir().unwrap();
    let clean = gauntlet(&[
        "scan",
        "examples/models/mnist-mlp.safetensors",
        "crates/gauntlet-models/tests/fixtures/mlp.pt",
    ]);
    assert_eq!(clean.status.code(), Some(0), "{}", stderr(&clean));
    // pickle.dumps of a __reduce__ returning (os.system, ("id",)) in a torch.save zip.
    let evil = dir.path().join("evil.pt");
    {
        use std::io::Write;
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&evil).unwrap());
        let options = zip::write::SimpleFileOptions::default();
        zip.start_file("archive/data.pkl", options).unwrap();
        zip.write_all(b"\x80\x02cposix\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03.")
            .unwrap();
        zip.finish().unwrap();
    }
    let flagged = gauntlet(&["scan", evil.to_str().unwrap()]);
    assert_eq!(flagged.status.code(), Some(1));
    let text = String::from_utf8_lossy(&flagged.stdout);
    assert!(
        text.contains("critical") && text.contains("posix.system"),
        "{text}"
    );
    let json = gauntlet(&["scan", "--json", evil.to_str().unwrap()]);
    let reports: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(reports[0]["findings"][0]["severity"], "critical");
    assert_clear_error(&gauntlet(&["scan", "missing.pt"]), "missing.pt");
    // One unreadable file does not hide the others' reports.
    let text_file = dir.path().join("notes.txt");
    std::fs::write(&text_file, "hello").unwrap();
    let mixed = [
        "examples/models/mnist-mlp.safetensors",
        "missing.pt",
        evil.to_str().unwrap(),
        text_file.to_str().unwrap(),
    ];
    let json = gauntlet(&[&["scan", "--json"][..], &mixed[..]].concat());
    assert_eq!(json.status.code(), Some(2), "{}", stderr(&json));
    let reports: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let reports = reports.as_array().unwrap();
    assert_eq!(reports.len(), 4, "{reports:?}");
    assert_eq!(reports[0]["format"], "safetensors");
    assert!(reports[1]["error"].as_str().unwrap().contains("missing.pt"));
    assert_eq!(reports[2]["findings"][0]["severity"], "critical");
    assert!(reports[3]["error"]
        .as_str()
        .unwrap()
        .contains("not a PyTorch checkpoint"));
    let errors = stderr(&json);
    assert_eq!(
        errors.lines().filter(|l| l.starts_with("error: ")).count(),
        2,
        "{errors}"
    );
    let text = gauntlet(&[&["scan"][..], &mixed[..]].concat());
    assert_eq!(text.status.code(), Some(2));
    let shown = String::from_utf8_lossy(&text.stdout);
    assert!(
        shown.contains("mnist-mlp.safetensors: clean") && shown.contains("posix.system"),
        "{shown}"
    );

    let out = dir.path().join("eval");
    let base = |extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--model",
            evil.to_str().unwrap(),
            "--arch",
            "mlp",
            "--data",
            "datasets/mnist-5k",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        gauntlet(&args)
    };
    assert_clear_error(&base(&[]), "refusing model");
    // With the flag the scan lets it through; the loader (which never runs pickle
    // code) then finds no state dict in it.
    let allowed = base(&["--allow-unsafe-pickle"]);
    assert_eq!(allowed.status.code(), Some(2));
    assert!(!stderr(&allowed).contains("refusing model"));
    // A clean model's record keeps its scan.
    let ok = gauntlet(&[
        "eval",
        "--model",
        "examples/models/mnist-mlp.safetensors",
        "--data",
        "datasets/mnist-5k",
        "--limit",
        "20",
        "--out",
        out.to_str().unwrap(),
        "-q",
    ]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let record = read_json(&out.join("results.json"));
    assert_eq!(record["model"]["scan"]["format"], "safetensors");
    assert_eq!(
        record["model"]["scan"]["findings"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}
