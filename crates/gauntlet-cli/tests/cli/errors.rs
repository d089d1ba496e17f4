//! errors across commands: one clear line, exit 2, nothing lost.

use super::*;

#[test]
fn user_errors_exit_2_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let out = out.to_str().unwrap();
    let cnn = "examples/models/mnist-cnn.safetensors";
    assert_clear_error(
        &gauntlet(&[
            "eval",
            "--model",
            "missing.safetensors",
            "--data",
            "datasets/mnist-5k",
            "--out",
            out,
        ]),
        "missing.safetensors",
    );
    assert_clear_error(
        &gauntlet(&["eval", "--model", cnn, "--data", "nowhere", "--out", out]),
        "nowhere",
    );
    assert_clear_error(
        &gauntlet(&[
            "eval",
            "--model",
            cnn,
            "--data",
            "datasets/mnist-5k",
            "--split",
            "validation",
            "--out",
            out,
        ]),
        // A closed set: clap names the value and every accepted one.
        "invalid value 'validation' for '--split <SPLIT>'; [possible values: train, test]",
    );
    assert_clear_error(
        &gauntlet(&[
            "eval",
            "--model",
            cnn,
            "--data",
            "datasets/mnist-5k",
            "--limit",
            "0",
            "--out",
            out,
        ]),
        "--limit",
    );
    let pt = repo("crates/gauntlet-models/tests/fixtures/mlp.pt");
    assert_clear_error(
        &gauntlet(&[
            "eval",
            "--model",
            pt.to_str().unwrap(),
            "--data",
            "datasets/mnist-5k",
            "--out",
            out,
        ]),
        "--arch",
    );
    assert_clear_error(
        &gauntlet(&[
            "eval",
            "--model",
            pt.to_str().unwrap(),
            "--arch",
            "cnn",
            "--data",
            "datasets/mnist-5k",
            "--out",
            out,
        ]),
        "conv1.weight",
    );
    assert_clear_error(
        &gauntlet(&[
            "eval",
            "--model",
            cnn,
            "--arch",
            "vgg",
            "--data",
            "datasets/mnist-5k",
            "--out",
            out,
        ]),
        "invalid value 'vgg' for '--arch <ARCH>'; [possible values: mlp, cnn, cifar-cnn]",
    );
    let file = dir.path().join("file.txt");
    std::fs::write(&file, "x").unwrap();
    assert_clear_error(
        &gauntlet(&[
            "eval",
            "--model",
            cnn,
            "--data",
            "datasets/mnist-5k",
            "--out",
            file.to_str().unwrap(),
        ]),
        "not a directory",
    );
    assert_clear_error(
        &gauntlet(&[
            "train",
            "--data",
            "datasets/mnist-5k",
            "--epochs",
            "0",
            "--out",
            "x.safetensors",
        ]),
        "epochs",
    );
    assert_clear_error(
        &gauntlet(&[
            "train",
            "--data",
            "datasets/mnist-5k",
            "--optimizer",
            "lbfgs",
            "--out",
            "x.safetensors",
        ]),
        "invalid value 'lbfgs' for '--optimizer <OPTIMIZER>'; [possible values: adam, sgd]",
    );
    // Other usage errors are one line too, hints kept.
    assert_clear_error(
        &gauntlet(&[
            "train",
            "--data",
            "datasets/mnist-5k",
            "--optimiser",
            "sgd",
            "--out",
            "x.safetensors",
        ]),
        "unexpected argument '--optimiser' found; tip: a similar argument exists: '--optimizer'",
    );
    assert!(!out_exists(out), "no output may be written on error");
}

/// Fault injection: every output file of an evaluation in turn has its write fail
/// part-way (the disk "fills" one byte before it is complete), with the write
/// reported as an error and with the process killed. Each time: a clear one-line
/// error or the kill, no half-written file and no temporary file left behind, any
/// record present is complete, and the run resumes (or reruns) to the same results.
/// With attacks the journal is the largest file and fails first; a clean-only
/// evaluation (no journal) makes the record and each report file fail in turn.
#[test]
fn writes_failing_part_way_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let suite = dir.path().join("suite.toml");
    std::fs::write(
        &suite,
        "name = \"faults\"\ndescription = \"pgd\"\n[[attack]]\nname = \"pgd-linf\"\neps = [0.1, 0.3]\nparams = { steps = 5 }\n",
    )
    .unwrap();
    let mut recovered = [0usize; 3];
    for with_attacks in [true, false] {
        let args = |flag: &str, out: &Path| -> Vec<String> {
            let mut v: Vec<String> = [
                "eval",
                "--model",
                "examples/models/mnist-mlp.safetensors",
                "--data",
                "datasets/mnist-5k",
                "--limit",
                "60",
                "--batch-size",
                "20",
                "-q",
                flag,
                out.to_str().unwrap(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            if with_attacks {
                v.extend(["--suite".to_string(), suite.display().to_string()]);
            }
            v
        };
        let whole = dir.path().join(format!("whole-{with_attacks}"));
        let run = gauntlet(&strs(&args("--out", &whole)));
        assert!(run.status.success(), "{}", stderr(&run));
        let expected = verdicts(&read_json(&whole.join("results.json")));
        // One cap between each two output sizes, so each output in turn is the
        // first to fail; midpoints, because timings make sizes vary by a few bytes.
        let mut sizes: Vec<u64> = files_under(&whole).iter().map(|(_, s)| *s).collect();
        sizes.sort_unstable();
        sizes.dedup();
        let mut caps: Vec<u64> = vec![0, 40];
        caps.extend(sizes.iter().scan(0, |below, &size| {
            let cap = (*below + size) / 2;
            *below = size;
            Some(cap)
        }));
        assert!(
            caps.len() >= 5,
            "expected several outputs, got sizes {sizes:?}"
        );

        for (case, &cap) in caps.iter().enumerate() {
            for killed in [false, true] {
                let out = dir
                    .path()
                    .join(format!("cap-{with_attacks}-{case}-{killed}"));
                let failed = gauntlet_with_file_limit(&strs(&args("--out", &out)), cap, killed);
                let what = format!("attacks {with_attacks}, cap {cap} bytes, killed {killed}");
                if failed.status.success() {
                    // Only possible if every output came out under the cap this time.
                    assert!(
                        files_under(&out).iter().all(|(_, size)| *size <= cap),
                        "{what}: succeeded although an output exceeds the cap"
                    );
                    continue;
                }
                if killed {
                    use std::os::unix::process::ExitStatusExt;
                    assert_eq!(
                        failed.status.signal(),
                        Some(libc::SIGXFSZ),
                        "{what}: {}",
                        stderr(&failed)
                    );
                } else {
                    assert_clear_error(&failed, "File too large");
                    for (path, _) in files_under(&out) {
                        let name = path.file_name().unwrap().to_string_lossy().into_owned();
                        assert!(!name.ends_with(".tmp"), "{what}: left {name}");
                    }
                }
                let record_path = out.join("results.json");
                let resumable = std::fs::read_to_string(out.join("journal.jsonl"))
                    .map(|t| t.contains('\n'))
                    .unwrap_or(false);
                let recovery = if record_path.exists() {
                    // The record was written whole before the failure: it is the result.
                    assert_eq!(verdicts(&read_json(&record_path)), expected, "{what}");
                    assert!(
                        killed || stderr(&failed).contains("gauntlet report"),
                        "{what}: says how to finish the report: {}",
                        stderr(&failed)
                    );
                    recovered[0] += 1;
                    gauntlet(&[
                        "report",
                        record_path.to_str().unwrap(),
                        "--out",
                        out.to_str().unwrap(),
                    ])
                } else if resumable {
                    recovered[1] += 1;
                    gauntlet(&strs(&args("--resume", &out)))
                } else {
                    recovered[2] += 1;
                    gauntlet(&strs(&args("--out", &out)))
                };
                assert!(recovery.status.success(), "{what}: {}", stderr(&recovery));
                assert_eq!(verdicts(&read_json(&record_path)), expected, "{what}");
                assert!(out.join("report.html").is_file(), "{what}");
            }
        }
    }
    // Every kind of recovery was exercised: report rerun, resume, fresh run.
    assert!(recovered.iter().all(|&n| n > 0), "{recovered:?}");

    // Training: the first checkpoint (weights and Adam moments, ~3 MB for the
    // MLP) cannot be written; no torn checkpoint or model is left, and the same
    // command then trains the same model as a run that never failed.
    let model = dir.path().join("mlp.safetensors");
    let train = [
        "train",
        "--arch",
        "mlp",
        "--data",
        "datasets/mnist-5k",
        "--epochs",
        "1",
        "--limit",
        "500",
        "--out",
        model.to_str().unwrap(),
    ];
    let failed = gauntlet_with_file_limit(&train, 2 << 20, false);
    // Epoch lines come first on stderr; the error is the last line.
    assert_eq!(failed.status.code(), Some(2), "{}", stderr(&failed));
    let last_line = stderr(&failed).lines().last().unwrap_or("").to_string();
    assert!(
        last_line.starts_with("error: cannot write") && last_line.contains("File too large"),
        "{last_line}"
    );
    let left: Vec<_> = files_under(dir.path())
        .into_iter()
        .filter(|(p, _)| p.starts_with(model.with_extension("checkpoint")) || p == &model)
        .collect();
    assert!(left.is_empty(), "torn training outputs left: {left:?}");
    let rerun = gauntlet(&train);
    assert!(rerun.status.success(), "{}", stderr(&rerun));
    let clean_dir = dir.path().join("clean");
    let clean_model = clean_dir.join("mlp.safetensors");
    let mut clean = train.to_vec();
    let last = clean.len() - 1;
    clean[last] = clean_model.to_str().unwrap();
    let reference = gauntlet(&clean);
    assert!(reference.status.success(), "{}", stderr(&reference));
    assert_eq!(
        std::fs::read(&model).unwrap(),
        std::fs::read(&clean_model).unwrap(),
        "the model trained after the failure differs"
    );
}

/// Configurations and records that are deeply nested, huge, endless or binary:
/// each a one-line error naming the file, read no further than a size limit, and
/// never the parser's quote of a megabyte-long line.
#[test]
fn hostile_configs_and_records_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let deep_toml = dir.path().join("deep.toml");
    std::fs::write(
        &deep_toml,
        format!(
            "name = \"deep\"\ndescription = \"d\"\nx = {}{}\n",
            "[".repeat(100_000),
            "]".repeat(100_000)
        ),
    )
    .unwrap();
    let huge_toml = dir.path().join("huge.toml");
    std::fs::write(&huge_toml, "# padding\n".repeat(200_000)).unwrap();
    let binary = dir.path().join("binary.toml");
    std::fs::write(&binary, [0xff, 0xfe, 0x00, 0x01]).unwrap();
    let deep_json = dir.path().join("deep.json");
    std::fs::write(
        &deep_json,
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
    )
    .unwrap();
    let record = "examples/models/mnist-mlp.record.json";
    let eval = |suite: &Path| {
        gauntlet(&[
            "eval",
            "--model",
            "examples/models/mnist-mlp.safetensors",
            "--data",
            "datasets/mnist-5k",
            "--suite",
            suite.to_str().unwrap(),
            "--out",
            dir.path().join("out").to_str().unwrap(),
        ])
    };
    let check = |policy: &Path| gauntlet(&["check", record, "--policy", policy.to_str().unwrap()]);
    let cases = [
        (eval(&deep_toml), "deep.toml:3:"),
        (
            eval(&huge_toml),
            "huge.toml is larger than 1.0 MiB, the most a suite may hold",
        ),
        (
            eval(Path::new("/dev/zero")),
            "/dev/zero is larger than 1.0 MiB",
        ),
        (eval(&binary), "binary.toml is not UTF-8 text"),
        (check(&deep_toml), "line 3, column"),
        (check(&huge_toml), "the most a policy may hold"),
        (check(&binary), "binary.toml is not UTF-8 text"),
        (
            gauntlet(&[
                "report",
                deep_json.to_str().unwrap(),
                "--out",
                dir.path().to_str().unwrap(),
            ]),
            "recursion limit exceeded",
        ),
        (
            gauntlet(&["report", "/dev/zero", "--out", dir.path().to_str().unwrap()]),
            "/dev/zero is larger than 1.0 GiB, the most a run record may hold",
        ),
        (
            gauntlet(&["check", deep_json.to_str().unwrap(), "--min-clean", "0.5"]),
            "deep.json",
        ),
    ];
    for (output, needle) in cases {
        assert_clear_error(&output, needle);
        assert!(stderr(&output).len() < 600, "{}", stderr(&output));
    }
    assert!(!dir.path().join("out").exists(), "nothing written");
}
