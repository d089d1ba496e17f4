//! The one integration-test binary for the `gauntlet` command: real binary, real
//! files, asserted exit codes and outputs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn gauntlet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gauntlet"))
        .args(args)
        .current_dir(repo(""))
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An error run: exit code 2 and a single `error:` line naming the problem.
fn assert_clear_error(out: &Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(needle),
        "expected '{needle}' in: {err}"
    );
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn eval_on_the_shipped_model_writes_a_consistent_record() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = gauntlet(&[
        "eval",
        "--model",
        "examples/models/mnist-cnn.safetensors",
        "--data",
        "datasets/mnist-5k",
        "--limit",
        "200",
        "--seed",
        "42",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let record = read_json(&out.join("results.json"));
    assert_eq!(record["schema_version"], 1);
    assert_eq!(record["kind"], "eval");
    assert_eq!(record["seed"], 42);
    assert_eq!(record["dataset"]["num_samples"], 200);
    assert_eq!(record["dataset"]["split"], "test");
    assert_eq!(record["model"]["arch"], "cnn");
    let sha = gauntlet_core::sha256_file(&repo("examples/models/mnist-cnn.safetensors")).unwrap();
    assert_eq!(record["model"]["sha256"], sha.as_str());
    let correct = record["clean"]["correct"].as_array().unwrap();
    assert_eq!(correct.len(), 200);
    let n_correct = correct.iter().filter(|c| c.as_bool().unwrap()).count();
    assert_eq!(
        record["clean"]["accuracy"].as_f64().unwrap(),
        n_correct as f64 / 200.0
    );
    assert!(n_correct >= 190, "shipped CNN got only {n_correct}/200");
    // The record and its report, and no temporary files left (clean accuracy
    // only: no charts).
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["report.html", "results.json", "summary.md"]);
}

#[test]
fn eval_of_a_pytorch_state_dict_and_its_onnx_twin_agree() {
    let dir = tempfile::tempdir().unwrap();
    let mut verdicts = Vec::new();
    for (name, extra) in [("mlp.pt", vec!["--arch", "mlp"]), ("mlp.onnx", vec![])] {
        let out = dir.path().join(name);
        let model = repo("crates/gauntlet-models/tests/fixtures").join(name);
        let mut args = vec![
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--data",
            "datasets/mnist-5k",
            "--limit",
            "50",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        let o = gauntlet(&args);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        verdicts.push(read_json(&out.join("results.json"))["clean"]["predictions"].clone());
    }
    assert_eq!(verdicts[0], verdicts[1]);
}

#[test]
fn train_is_reproducible_and_its_model_evaluates() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = Vec::new();
    for run in ["a", "b"] {
        let model = dir.path().join(format!("{run}.safetensors"));
        let o = gauntlet(&[
            "train",
            "--data",
            "datasets/mnist-5k",
            "--arch",
            "mlp",
            "--epochs",
            "1",
            "--limit",
            "300",
            "--seed",
            "9",
            "--out",
            model.to_str().unwrap(),
            "--quiet",
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        bytes.push(std::fs::read(&model).unwrap());
        let record = read_json(&dir.path().join(format!("{run}.record.json")));
        assert_eq!(record["kind"], "train");
        assert_eq!(record["training"]["history"].as_array().unwrap().len(), 1);
        assert_eq!(record["training"]["train_dataset"]["num_samples"], 300);
        assert_eq!(record["dataset"]["num_samples"], 1000);
        let final_acc = record["training"]["history"][0]["test_accuracy"]
            .as_f64()
            .unwrap();
        assert_eq!(
            record["clean"]["accuracy"].as_f64().unwrap(),
            final_acc,
            "reloaded model must match training's last evaluation"
        );
    }
    assert_eq!(
        bytes[0], bytes[1],
        "same seed must give the same model file"
    );
    let o = gauntlet(&[
        "info",
        "--model",
        dir.path().join("a.safetensors").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains("mlp"));
}

#[test]
fn adversarial_training_records_robustness_keeps_the_best_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("at.safetensors");
    let args = [
        "train",
        "--data",
        "datasets/mnist-5k",
        "--arch",
        "mlp",
        "--epochs",
        "2",
        "--limit",
        "200",
        "--adversarial",
        "fgsm-rs",
        "--epsilon",
        "0.1",
        "--robust-eval-samples",
        "50",
        "--schedule",
        "cyclic",
        "--out",
        model.to_str().unwrap(),
        "--quiet",
    ];
    let o = gauntlet(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let record = read_json(&dir.path().join("at.record.json"));
    let training = &record["training"];
    assert_eq!(training["adversarial"]["method"], "fgsm-rs");
    assert_eq!(training["schedule"], "cyclic");
    for epoch in training["history"].as_array().unwrap() {
        let robust = epoch["robust_accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&robust));
    }
    let best_epoch = training["best_epoch"].as_u64().unwrap();
    assert!((1..=2).contains(&best_epoch));
    assert!(dir.path().join("at.best.safetensors").is_file());
    let first = std::fs::read(&model).unwrap();

    // Neither the model nor the checkpoint of that run is silently overwritten…
    let again = gauntlet(&args);
    assert_clear_error(&again, "already exists; choose a new path, or pass --force");
    std::fs::remove_file(&model).unwrap();
    assert_clear_error(&gauntlet(&args), "holds the checkpoint of an earlier run");
    // --force starts afresh and, seeded, retrains the same model. It must not
    // resume from the old checkpoint: spoilt here, resuming from it would fail.
    let old_checkpoint = dir.path().join("at.checkpoint/checkpoint.safetensors");
    std::fs::write(&old_checkpoint, b"not a checkpoint").unwrap();
    let mut forced: Vec<&str> = args.to_vec();
    forced.push("--force");
    let o = gauntlet(&forced);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(std::fs::read(&model).unwrap(), first);
    // …and resuming the finished run gives the same model.
    let checkpoint = dir.path().join("at.checkpoint");
    let mut resume: Vec<&str> = args.to_vec();
    resume.extend(["--resume", checkpoint.to_str().unwrap()]);
    let o = gauntlet(&resume);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(std::fs::read(&model).unwrap(), first);
    // Resuming with other options is refused.
    let mut changed = resume.clone();
    changed[6] = "3";
    assert_clear_error(&gauntlet(&changed), "different configuration");

    // Adversarial options without --adversarial are refused, not ignored…
    let stray = gauntlet(&[
        "train",
        "--data",
        "datasets/mnist-5k",
        "--epsilon",
        "0.3",
        "--out",
        "x.safetensors",
    ]);
    assert_eq!(stray.status.code(), Some(2));
    assert!(
        stderr(&stray).contains("--adversarial"),
        "{}",
        stderr(&stray)
    );
    // …and so are settings the method cannot take.
    let fgsm_steps = dir.path().join("steps.safetensors");
    assert_clear_error(
        &gauntlet(&[
            "train",
            "--data",
            "datasets/mnist-5k",
            "--adversarial",
            "fgsm-rs",
            "--epsilon",
            "0.3",
            "--attack-steps",
            "5",
            "--out",
            fgsm_steps.to_str().unwrap(),
        ]),
        "fgsm-rs takes exactly one step",
    );
}

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
        "unknown split 'validation'",
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
        "unknown architecture 'vgg'",
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
        "lbfgs",
    );
    assert!(!out_exists(out), "no output may be written on error");
}

fn out_exists(p: &str) -> bool {
    Path::new(p).exists()
}

#[test]
fn a_model_that_does_not_fit_the_data_is_refused_before_compute() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("rgb.npz");
    // A 3-channel dataset for a 1-channel model.
    let x = gauntlet_data::encode_npy("|u1", &[2, 3, 28, 28], &vec![0u8; 2 * 3 * 28 * 28]);
    let y = gauntlet_data::encode_npy("|u1", &[2], &[0, 1]);
    write_npz(&data, &[("x.npy", x), ("y.npy", y)]);
    let out = dir.path().join("o");
    let o = gauntlet(&[
        "eval",
        "--model",
        "examples/models/mnist-cnn.safetensors",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_clear_error(&o, "[1, 28, 28]");
    assert!(!out.exists());
}

fn write_npz(path: &Path, entries: &[(&str, Vec<u8>)]) {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    for (name, bytes) in entries {
        zip.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

#[test]
fn attack_writes_per_sample_robustness_and_the_worst_case() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fgsm");
    let o = gauntlet(&[
        "attack",
        "--model",
        "examples/models/mnist-mlp.safetensors",
        "--data",
        "datasets/mnist-5k",
        "--attack",
        "fgsm",
        "--eps",
        "0.05,8/255,0.2",
        "--limit",
        "60",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
        "--save-adversarial",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let record = read_json(&out.join("results.json"));
    let r = &record["robustness"];
    assert_eq!(r["suite"]["name"], "fgsm");
    let attacks = r["attacks"].as_array().unwrap();
    let eps: Vec<f64> = attacks
        .iter()
        .map(|a| a["epsilon"].as_f64().unwrap())
        .collect();
    assert_eq!(
        eps,
        vec![8.0 / 255.0, 0.05, 0.2],
        "ε sorted ascending, fractions parsed"
    );
    let clean: Vec<bool> = record["clean"]["correct"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_bool().unwrap())
        .collect();
    let mut previous = clean.iter().filter(|c| **c).count();
    for a in attacks {
        let robust: Vec<bool> = a["robust"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_bool().unwrap())
            .collect();
        assert_eq!(robust.len(), 60);
        assert!(
            robust.iter().zip(&clean).all(|(r, c)| !r || *c),
            "robust implies clean-correct"
        );
        let count = robust.iter().filter(|r| **r).count();
        assert!(count <= previous, "robust accuracy rose with ε");
        assert_eq!(a["robust_accuracy"].as_f64().unwrap(), count as f64 / 60.0);
        assert!(a["max_perturbation"].as_f64().unwrap() <= a["epsilon"].as_f64().unwrap() + 1e-5);
        assert_eq!(a["parameters"]["steps"], 1);
        previous = count;
    }
    let worst = r["worst_case"].as_array().unwrap();
    assert_eq!(worst.len(), 3);
    assert_eq!(worst[2]["robust"], attacks[2]["robust"]);
    // The saved adversarial examples are a dataset: evaluating the model on them
    // reproduces their recorded (wrong) predictions.
    let npz = out.join("adversarial.npz");
    let again = dir.path().join("again");
    let o = gauntlet(&[
        "eval",
        "--model",
        "examples/models/mnist-mlp.safetensors",
        "--data",
        npz.to_str().unwrap(),
        "--num-classes",
        "10",
        "--out",
        again.to_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let replay = read_json(&again.join("results.json"));
    let broken_count = 60
        - worst[2]["robust"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v.as_bool().unwrap())
            .count()
        - clean.iter().filter(|c| !**c).count();
    assert_eq!(
        replay["dataset"]["num_samples"].as_u64().unwrap() as usize,
        broken_count
    );
    assert_eq!(
        replay["clean"]["accuracy"].as_f64().unwrap(),
        0.0,
        "every saved example must fool the model"
    );
}

#[test]
fn eval_with_a_suite_runs_every_attack_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let suite = dir.path().join("tiny.toml");
    std::fs::write(&suite, "name = \"tiny\"\n[[attack]]\nname = \"fgsm\"\neps = [0.1]\n[[attack]]\nname = \"pgd-linf\"\neps = [0.1]\nparams = { steps = 5 }\n").unwrap();
    let out = dir.path().join("o");
    let o = gauntlet(&[
        "eval",
        "--model",
        "examples/models/mnist-mlp.safetensors",
        "--data",
        "datasets/mnist-5k",
        "--suite",
        suite.to_str().unwrap(),
        "--limit",
        "40",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let record = read_json(&out.join("results.json"));
    let r = &record["robustness"];
    assert_eq!(r["suite"]["name"], "tiny");
    assert_eq!(
        r["suite"]["sha256"].as_str().unwrap(),
        gauntlet_core::sha256_file(&suite).unwrap()
    );
    let names: Vec<&str> = r["attacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["attack"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["fgsm", "pgd-linf"]);
    let fgsm_robust = r["attacks"][0]["robust_accuracy"].as_f64().unwrap();
    let worst = r["worst_case"][0]["robust_accuracy"].as_f64().unwrap();
    assert!(worst <= fgsm_robust);
    assert_eq!(
        r["attacks"][1]["attacked"].as_u64().unwrap() as f64,
        (fgsm_robust * 40.0).round()
    );
}

#[test]
fn attack_and_suite_errors_exit_2_before_any_compute() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let out = out.to_str().unwrap();
    let mlp = "examples/models/mnist-mlp.safetensors";
    let base = [
        "attack",
        "--model",
        mlp,
        "--data",
        "datasets/mnist-5k",
        "--out",
        out,
    ];
    let with = |extra: &[&str]| {
        let mut args: Vec<&str> = base.to_vec();
        args.extend_from_slice(extra);
        gauntlet(&args)
    };
    assert_clear_error(
        &with(&["--attack", "fgsn", "--eps", "0.1"]),
        "unknown attack 'fgsn'",
    );
    assert_clear_error(
        &with(&["--attack", "fgsm", "--eps", "abc"]),
        "epsilon 'abc'",
    );
    assert_clear_error(&with(&["--attack", "fgsm", "--eps=-0.1"]), "epsilon '-0.1'");
    assert_clear_error(
        &with(&["--attack", "square-linf", "--eps", "0.1", "--steps", "3"]),
        "unknown parameter 'steps'",
    );
    assert_clear_error(
        &with(&[
            "--attack",
            "pgd-linf",
            "--eps",
            "0.1",
            "--targeted",
            "sideways",
        ]),
        "target 'sideways'",
    );
    let suite = dir.path().join("bad.toml");
    std::fs::write(
        &suite,
        "name = \"bad\"\n[[attack]]\nname = \"fgsm\"\neps = [0.1]\nepsilon = 3\n",
    )
    .unwrap();
    assert_clear_error(
        &gauntlet(&[
            "eval",
            "--model",
            mlp,
            "--data",
            "datasets/mnist-5k",
            "--suite",
            suite.to_str().unwrap(),
            "--out",
            out,
        ]),
        "epsilon",
    );
    assert!(!Path::new(out).exists());
}

#[test]
fn a_training_run_killed_mid_way_resumes_to_the_uninterrupted_model() {
    let dir = tempfile::tempdir().unwrap();
    let args = |name: &str| -> Vec<String> {
        [
            "train",
            "--data",
            "datasets/mnist-5k",
            "--arch",
            "mlp",
            "--epochs",
            "6",
            "--adversarial",
            "pgd",
            "--epsilon",
            "0.1",
            "--attack-steps",
            "3",
            "--robust-eval-samples",
            "100",
            "--quiet",
            "--out",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([dir.path().join(name).to_str().unwrap().to_string()])
        .collect()
    };
    let o = Command::new(env!("CARGO_BIN_EXE_gauntlet"))
        .args(args("whole.safetensors"))
        .current_dir(repo(""))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    // kill -9 once the first epoch's checkpoint exists.
    let checkpoint = dir.path().join("killed.checkpoint");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gauntlet"))
        .args(args("killed.safetensors"))
        .current_dir(repo(""))
        .spawn()
        .unwrap();
    let file = checkpoint.join("checkpoint.safetensors");
    let started = std::time::Instant::now();
    while !file.exists() && started.elapsed().as_secs() < 300 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(file.exists(), "no checkpoint was written");

    let mut resume = args("killed.safetensors");
    resume.extend([
        "--resume".to_string(),
        checkpoint.to_str().unwrap().to_string(),
    ]);
    let o = Command::new(env!("CARGO_BIN_EXE_gauntlet"))
        .args(&resume)
        .current_dir(repo(""))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(dir.path().join("killed.safetensors")).unwrap(),
        std::fs::read(dir.path().join("whole.safetensors")).unwrap(),
        "resumed model differs from the uninterrupted one"
    );
    let record = read_json(&dir.path().join("killed.record.json"));
    assert_eq!(record["training"]["history"].as_array().unwrap().len(), 6);
}

#[test]
fn poison_inject_writes_a_loadable_dataset_and_refuses_bad_settings_writing_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("poisoned");
    let out_s = out.to_str().unwrap();
    let base = [
        "poison",
        "inject",
        "--data",
        "datasets/mnist-5k",
        "--seed",
        "3",
        "--out",
        out_s,
    ];
    let with = |extra: &[&str]| -> Output {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        gauntlet(&args)
    };
    let bad: [(&[&str], &str); 6] = [
        (
            &["--attack", "badnets", "--target", "0", "--fraction", "0"],
            "fraction 0 is outside (0, 1]",
        ),
        (
            &["--attack", "badnets", "--target", "0", "--fraction", "1.5"],
            "fraction 1.5",
        ),
        (
            &["--attack", "badnets", "--target", "12"],
            "target class 12 does not exist",
        ),
        (&["--attack", "badnets"], "badnets needs a target class"),
        (
            &[
                "--attack",
                "badnets",
                "--target",
                "0",
                "--trigger-size",
                "40",
            ],
            "trigger size 40",
        ),
        (
            &["--attack", "sleeper", "--target", "0"],
            "unknown poisoning attack 'sleeper'",
        ),
    ];
    for (extra, needle) in bad {
        assert_clear_error(&with(extra), needle);
        assert!(!out.exists(), "nothing is written on bad input");
    }
    let ok = with(&["--attack", "badnets", "--target", "0", "--fraction", "0.1"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    for file in [
        "x_train.npy",
        "y_train.npy",
        "x_test.npy",
        "y_test.npy",
        "manifest.json",
    ] {
        assert!(out.join(file).is_file(), "{file}");
    }
    let manifest = read_json(&out.join("manifest.json"));
    assert_eq!(manifest["indices"].as_array().unwrap().len(), 360);
    // The new dataset evaluates like any other, and the output is never overwritten.
    let again = with(&["--attack", "badnets", "--target", "0"]);
    assert_clear_error(&again, "already exists");
    // A manifest that does not describe the data is refused before any detection.
    let detect = gauntlet(&[
        "poison",
        "detect",
        "--model",
        "examples/models/mnist-cnn.safetensors",
        "--data",
        "datasets/mnist-5k",
        "--ground-truth",
        out.join("manifest.json").to_str().unwrap(),
        "--method",
        "spectral-signatures",
        "--out",
        dir.path().join("d").to_str().unwrap(),
    ]);
    assert_clear_error(&detect, "does not describe the dataset");
    let unknown = gauntlet(&[
        "poison",
        "detect",
        "--model",
        "examples/models/mnist-cnn.safetensors",
        "--data",
        out_s,
        "--method",
        "magic",
        "--out",
        dir.path().join("d").to_str().unwrap(),
    ]);
    assert_clear_error(&unknown, "unknown detector 'magic'");
}

#[test]
fn poison_detect_on_clean_data_with_the_shipped_model_flags_almost_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("detect");
    let run = gauntlet(&[
        "poison",
        "detect",
        "--model",
        "examples/models/mnist-cnn.safetensors",
        "--data",
        "datasets/mnist-5k",
        "--method",
        "activation-clustering,spectral-signatures,spectre,scan",
        "--out",
        out.to_str().unwrap(),
        "-q",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let record = read_json(&out.join("results.json"));
    assert_eq!(record["kind"], "poison");
    let detectors = record["poisoning"]["detectors"].as_array().unwrap();
    assert_eq!(detectors.len(), 4);
    for detector in detectors {
        assert_eq!(detector["scores"].as_array().unwrap().len(), 4000);
        assert!(
            detector["flagged"].as_array().unwrap().len() <= 40,
            "{}",
            detector["method"]
        );
    }
}

#[test]
fn poison_inject_stamps_a_given_trigger_image_and_refuses_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    // A 4×4 uint8 trigger: an X of 255 on 0.
    let mut pixels = vec![0u8; 16];
    for i in 0..4 {
        pixels[i * 4 + i] = 255;
        pixels[i * 4 + 3 - i] = 255;
    }
    let trigger = dir.path().join("x.npy");
    std::fs::write(&trigger, gauntlet_data::encode_npy("|u1", &[4, 4], &pixels)).unwrap();
    let out = dir.path().join("poisoned");
    let run = gauntlet(&[
        "poison",
        "inject",
        "--data",
        "datasets/mnist-5k",
        "--attack",
        "badnets",
        "--target",
        "0",
        "--trigger-image",
        trigger.to_str().unwrap(),
        "--trigger-position",
        "0,0",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let manifest = read_json(&out.join("manifest.json"));
    let pattern = manifest["trigger"]["pattern"].as_array().unwrap();
    let mask = manifest["trigger"]["mask"].as_array().unwrap();
    for row in 0..28 {
        for col in 0..28 {
            let inside = row < 4 && col < 4;
            let m = mask[row * 28 + col].as_f64().unwrap();
            assert_eq!(m, if inside { 1.0 } else { 0.0 }, "mask at {row},{col}");
            if inside {
                let p = pattern[row * 28 + col].as_f64().unwrap();
                assert_eq!(
                    p,
                    pixels[row * 4 + col] as f64 / 255.0,
                    "pattern at {row},{col}"
                );
            }
        }
    }
    // The stamped training images carry the X exactly.
    let train = gauntlet_data::LoadOptions {
        split: gauntlet_data::Split::Train,
        ..Default::default()
    };
    let poisoned = gauntlet_data::load(&out, &train).unwrap();
    let first = manifest["indices"][0].as_u64().unwrap() as usize;
    let image = poisoned.images_f32(first..first + 1).unwrap();
    for row in 0..4 {
        for col in 0..4 {
            assert_eq!(image[row * 28 + col], pixels[row * 4 + col] as f32 / 255.0);
        }
    }

    let wide = dir.path().join("wide.npy");
    std::fs::write(&wide, gauntlet_data::encode_npy("|u1", &[3, 5], &[0; 15])).unwrap();
    let bright = dir.path().join("bright.npy");
    let values: Vec<u8> = [2.0f32; 9].iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&bright, gauntlet_data::encode_npy("<f4", &[3, 3], &values)).unwrap();
    for (file, needle) in [
        (&wide, "expected a square BadNets patch"),
        (&bright, "outside [0, 1]"),
        (&dir.path().join("missing.npy"), "missing.npy"),
    ] {
        let bad_out = dir.path().join("bad");
        let bad = gauntlet(&[
            "poison",
            "inject",
            "--data",
            "datasets/mnist-5k",
            "--attack",
            "badnets",
            "--target",
            "0",
            "--trigger-image",
            file.to_str().unwrap(),
            "--out",
            bad_out.to_str().unwrap(),
        ]);
        assert_clear_error(&bad, needle);
        assert!(!bad_out.exists());
    }
}

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

#[test]
fn threads_flag_is_honoured_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("one-thread");
    let run = gauntlet(&[
        "--threads",
        "1",
        "eval",
        "--model",
        "examples/models/mnist-mlp.safetensors",
        "--data",
        "datasets/mnist-5k",
        "--limit",
        "50",
        "--out",
        out.to_str().unwrap(),
        "-q",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let record = read_json(&out.join("results.json"));
    assert_eq!(record["environment"]["threads"], 1);
    assert!(
        out.join("report.html").is_file(),
        "eval writes its report next to the record"
    );
    // A second run never replaces the record by accident; --force does.
    let again = [
        "eval",
        "--model",
        "examples/models/mnist-mlp.safetensors",
        "--data",
        "datasets/mnist-5k",
        "--limit",
        "30",
        "--out",
        out.to_str().unwrap(),
        "-q",
    ];
    assert_clear_error(&gauntlet(&again), "already holds a run record");
    assert_eq!(
        read_json(&out.join("results.json")),
        record,
        "the first record is intact"
    );
    let mut forced = again.to_vec();
    forced.push("--force");
    let replaced = gauntlet(&forced);
    assert!(replaced.status.success(), "{}", stderr(&replaced));
    assert_eq!(
        read_json(&out.join("results.json"))["dataset"]["num_samples"],
        30
    );
}

/// Equal, except that floats (also inside arrays, e.g. images) may differ in the
/// last bits with the batch a sample ran in.
fn close(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    match (a, b) {
        (serde_json::Value::Array(x), serde_json::Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| close(p, q))
        }
        _ => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(1.0),
            _ => a == b,
        },
    }
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

fn shards_merge_into_the_single_run(base: &Path, data: &str) {
    let dir = tempfile::tempdir_in(base).unwrap();
    let suite = dir.path().join("suite.toml");
    std::fs::write(
        &suite,
        "name = \"mini\"\ndescription = \"fgsm and short pgd\"\n[[attack]]\nname = \"fgsm\"\neps = [0.1, 0.2]\n[[attack]]\nname = \"pgd-linf\"\neps = [0.1, 0.2]\nparams = { steps = 5 }\n",
    )
    .unwrap();
    let eval = |out: &str, extra: &[&str]| {
        let out = dir.path().join(out);
        let mut args = vec![
            "eval",
            "--model",
            "examples/models/mnist-cnn.safetensors",
            "--data",
            data,
            "--suite",
            suite.to_str().unwrap(),
            "--limit",
            "90",
            "--batch-size",
            "16",
            "--out",
            out.to_str().unwrap(),
            "-q",
        ];
        args.extend_from_slice(extra);
        let run = gauntlet(&args);
        assert!(run.status.success(), "{}", stderr(&run));
        out.join("results.json")
    };
    let whole = eval("whole", &[]);
    let shards: Vec<PathBuf> = (1..=3)
        .map(|k| eval(&format!("s{k}"), &["--shard", &format!("{k}/3")]))
        .collect();
    let shard = read_json(&shards[1]);
    assert_eq!(shard["dataset"]["num_samples"], 30);
    assert_eq!(shard["shard"]["first_sample"], 30);

    let merged_path = dir.path().join("merged/results.json");
    let s = |p: &PathBuf| p.to_str().unwrap().to_string();
    let merge = gauntlet(&[
        "merge",
        &s(&shards[2]),
        &s(&shards[0]),
        &s(&shards[1]),
        "--out",
        &s(&merged_path),
    ]);
    assert!(merge.status.success(), "{}", stderr(&merge));
    let merged = without_timings(&merged_path);
    let single = without_timings(&whole);
    for key in [
        "clean",
        "dataset",
        "model",
        "seed",
        "environment",
        "kind",
        "tool",
    ] {
        assert_eq!(merged[key], single[key], "{key}");
    }
    let (m, w) = (&merged["robustness"], &single["robustness"]);
    assert_eq!(m["worst_case"], w["worst_case"]);
    assert_eq!(m["suite"], w["suite"]);
    for (a, b) in m["attacks"]
        .as_array()
        .unwrap()
        .iter()
        .zip(w["attacks"].as_array().unwrap())
    {
        for (key, value) in a.as_object().unwrap() {
            assert!(
                close(value, &b[key]),
                "attack {} {key}: {value} vs {}",
                a["attack"],
                b[key]
            );
        }
    }
    for (a, b) in m["gallery"]
        .as_array()
        .unwrap()
        .iter()
        .zip(w["gallery"].as_array().unwrap())
    {
        for (key, value) in a.as_object().unwrap() {
            assert!(close(value, &b[key]), "gallery {key}");
        }
    }
    assert_eq!(
        m["gallery"].as_array().unwrap().len(),
        w["gallery"].as_array().unwrap().len()
    );

    // Missing, duplicated or foreign shards are refused.
    let out = s(&dir.path().join("bad/results.json"));
    assert_clear_error(
        &gauntlet(&["merge", &s(&shards[0]), &s(&shards[1]), "--out", &out]),
        "shard 3/3 missing",
    );
    assert_clear_error(
        &gauntlet(&[
            "merge",
            &s(&shards[0]),
            &s(&shards[0]),
            &s(&shards[1]),
            "--out",
            &out,
        ]),
        "shard 1/3 is given twice",
    );
    let half = eval("half", &["--shard", "1/2"]);
    assert_clear_error(
        &gauntlet(&[
            "merge",
            &s(&shards[0]),
            &s(&half),
            &s(&shards[2]),
            "--out",
            &out,
        ]),
        "does not belong",
    );
    let reseeded = eval("reseeded", &["--shard", "2/3", "--seed", "9"]);
    assert_clear_error(
        &gauntlet(&[
            "merge",
            &s(&shards[0]),
            &s(&reseeded),
            &s(&shards[2]),
            "--out",
            &out,
        ]),
        "differs from shard 1 in its seed",
    );
    assert_clear_error(
        &gauntlet(&["merge", &s(&whole), "--out", &out]),
        "is not a shard",
    );
    assert_clear_error(
        &eval_error(&dir, &["--shard", "4/3"]),
        "--shard '4/3' must be K/N",
    );
}

fn eval_error(dir: &tempfile::TempDir, extra: &[&str]) -> Output {
    let out = dir.path().join("never");
    let mut args = vec![
        "eval",
        "--model",
        "examples/models/mnist-cnn.safetensors",
        "--data",
        "datasets/mnist-5k",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    gauntlet(&args)
}

/// A record with its timings and command line removed: what must match between an
/// interrupted-and-resumed run and an uninterrupted one.
fn without_timings(path: &Path) -> serde_json::Value {
    let mut record = read_json(path);
    let r = record.as_object_mut().unwrap();
    r.remove("wall_seconds");
    r.remove("command");
    for a in r["robustness"]["attacks"].as_array_mut().unwrap() {
        a.as_object_mut().unwrap().remove("wall_seconds");
    }
    record
}

fn journal_lines(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("journal.jsonl"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// kill -9 and Ctrl-C part-way, then --resume: the same record as a run never
/// interrupted, and a journal from another evaluation is refused.
#[test]
fn an_evaluation_killed_or_interrupted_resumes_to_the_same_record() {
    let dir = tempfile::tempdir().unwrap();
    let suite = dir.path().join("suite.toml");
    std::fs::write(
        &suite,
        "name = \"resumable\"\ndescription = \"pgd\"\n[[attack]]\nname = \"pgd-linf\"\neps = [0.1, 0.2, 0.3]\nparams = { steps = 10 }\n",
    )
    .unwrap();
    let args = |target: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "eval",
            "--model",
            "examples/models/mnist-cnn.safetensors",
            "--data",
            "datasets/mnist-5k",
            "--suite",
            suite.to_str().unwrap(),
            "--limit",
            "120",
            "--batch-size",
            "10",
            "-q",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(target.iter().map(|s| s.to_string()));
        v
    };
    let whole = dir.path().join("whole");
    let run = gauntlet(
        &args(&["--out", whole.to_str().unwrap()])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(
        !whole.join("journal.jsonl").exists(),
        "a finished run leaves no journal"
    );

    for signal in ["KILL", "INT"] {
        let out = dir.path().join(format!("stopped-{signal}"));
        let child = Command::new(env!("CARGO_BIN_EXE_gauntlet"))
            .args(args(&["--out", out.to_str().unwrap()]))
            .current_dir(repo(""))
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while journal_lines(&out) < 5 {
            assert!(started.elapsed().as_secs() < 120, "the journal never grew");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let output = child.wait_with_output().unwrap();
        assert!(
            !out.join("results.json").exists(),
            "{signal}: no record from a stopped run"
        );
        if signal == "INT" {
            assert_eq!(output.status.code(), Some(130), "Ctrl-C exits 130");
            let err = String::from_utf8_lossy(&output.stderr);
            assert!(err.contains("--resume"), "says how to resume: {err}");
        }
        let saved = journal_lines(&out);
        assert!(saved >= 5, "{signal}: {saved} lines");
        // A journal line cut short by the kill is dropped on resume.
        let mut journal = std::fs::OpenOptions::new()
            .append(true)
            .open(out.join("journal.jsonl"))
            .unwrap();
        std::io::Write::write_all(&mut journal, b"{\"key\":\"attack-0/eps-0.3/batch-").unwrap();
        drop(journal);
        // Another evaluation cannot continue it.
        let reseeded = args(&["--resume", out.to_str().unwrap(), "--seed", "4"]);
        assert_clear_error(
            &gauntlet(&reseeded.iter().map(String::as_str).collect::<Vec<_>>()),
            "different evaluation",
        );
        let resumed = gauntlet(
            &args(&["--resume", out.to_str().unwrap()])
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
        assert!(resumed.status.success(), "{}", stderr(&resumed));
        assert!(
            String::from_utf8_lossy(&resumed.stdout).contains("finished batches in the journal")
        );
        assert_eq!(
            without_timings(&out.join("results.json")),
            without_timings(&whole.join("results.json")),
            "{signal}: the resumed record differs from the uninterrupted one"
        );
        assert!(!out.join("journal.jsonl").exists());
    }
    assert_clear_error(
        &gauntlet(
            &args(&["--resume", whole.to_str().unwrap()])
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        ),
        "nothing to resume",
    );
}

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

/// Run `gauntlet` with every file write capped at `max_file_bytes` (RLIMIT_FSIZE):
/// the first write past it fails part-way, as on a full disk. With `killed`, the
/// process dies there (SIGXFSZ), as in a crash mid-write; otherwise the write
/// returns EFBIG and Gauntlet must report it.
fn gauntlet_with_file_limit(args: &[&str], max_file_bytes: u64, killed: bool) -> Output {
    gauntlet_with_rlimit(args, libc::RLIMIT_FSIZE, max_file_bytes, killed)
}

fn gauntlet_with_rlimit(
    args: &[&str],
    resource: libc::__rlimit_resource_t,
    value: u64,
    die_on_sigxfsz: bool,
) -> Output {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(env!("CARGO_BIN_EXE_gauntlet"));
    command.args(args).current_dir(repo(""));
    // SAFETY: only async-signal-safe calls (setrlimit, signal) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            if libc::setrlimit(resource, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let action = if die_on_sigxfsz {
                libc::SIG_DFL
            } else {
                libc::SIG_IGN
            };
            libc::signal(libc::SIGXFSZ, action);
            Ok(())
        });
    }
    command.output().unwrap()
}

fn files_under(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                found.extend(files_under(&path));
            } else if let Ok(meta) = entry.metadata() {
                found.push((path, meta.len()));
            }
        }
    }
    found
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// What must agree between two records of the same evaluation.
fn verdicts(record: &serde_json::Value) -> serde_json::Value {
    serde_json::json!([
        record["clean"]["correct"],
        record["robustness"]["worst_case"],
        record["robustness"]["attacks"]
            .as_array()
            .map(|a| a.iter().map(|x| x["robust"].clone()).collect::<Vec<_>>()),
    ])
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

/// Memory pressure: a dataset larger than the memory left, and a `--batch-size`
/// whose working memory cannot fit, are refused before any compute with a message
/// saying what to do (the address space is capped with RLIMIT_AS so the test means
/// the same on any machine); the batch size the message suggests then runs.
#[test]
fn work_larger_than_memory_is_refused_early_with_a_smaller_batch_suggested() {
    const MIB: u64 = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    // 8 GiB of images, as a sparse file: it takes no disk space.
    let data = dir.path().join("huge");
    std::fs::create_dir(&data).unwrap();
    let count: u32 = 10_000_000;
    let mut header = vec![0, 0, 8, 3];
    for dim in [count, 28, 28] {
        header.extend(dim.to_be_bytes());
    }
    let images = std::fs::File::create(data.join("t10k-images-idx3-ubyte")).unwrap();
    std::io::Write::write_all(&mut &images, &header).unwrap();
    images.set_len(16 + u64::from(count) * 784).unwrap();
    let mut labels = vec![0, 0, 8, 1];
    labels.extend(count.to_be_bytes());
    let file = std::fs::File::create(data.join("t10k-labels-idx1-ubyte")).unwrap();
    std::io::Write::write_all(&mut &file, &labels).unwrap();
    file.set_len(8 + u64::from(count)).unwrap();
    let out = dir.path().join("out");
    let refused = gauntlet_with_rlimit(
        &[
            "eval",
            "--model",
            "examples/models/mnist-mlp.safetensors",
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        libc::RLIMIT_AS,
        4096 * MIB,
        false,
    );
    assert_clear_error(
        &refused,
        "t10k-images-idx3-ubyte: the data needs about 7.3 GiB",
    );
    assert!(
        stderr(&refused).contains("more memory"),
        "{}",
        stderr(&refused)
    );
    assert!(!out.exists(), "nothing written");

    // A model file larger than the memory left: refused before it is read.
    let huge_model = dir.path().join("huge.safetensors");
    std::fs::File::create(&huge_model)
        .unwrap()
        .set_len(8 << 30)
        .unwrap();
    let refused = gauntlet_with_rlimit(
        &[
            "eval",
            "--model",
            huge_model.to_str().unwrap(),
            "--data",
            "datasets/mnist-5k",
            "--out",
            out.to_str().unwrap(),
        ],
        libc::RLIMIT_AS,
        4096 * MIB,
        false,
    );
    assert_clear_error(&refused, "huge.safetensors needs about 16.0 GiB of memory");

    // Training the CNN on the 4000 training images in one batch, in 700 MiB.
    let model = dir.path().join("model.safetensors");
    let train = |batch: &str| {
        gauntlet_with_rlimit(
            &[
                "train",
                "--arch",
                "cnn",
                "--data",
                "datasets/mnist-5k",
                "--epochs",
                "1",
                "--batch-size",
                batch,
                "--force",
                "--out",
                model.to_str().unwrap(),
            ],
            libc::RLIMIT_AS,
            700 * MIB,
            false,
        )
    };
    let refused = train("100000");
    assert_clear_error(
        &refused,
        "--batch-size 100000 (4000 samples here) needs about",
    );
    assert!(!model.exists(), "refused before training");
    let message = stderr(&refused);
    let suggested: String = message
        .split("use --batch-size ")
        .nth(1)
        .unwrap_or_else(|| panic!("no suggestion in: {message}"))
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let suggested_size: usize = suggested.parse().unwrap();
    assert!((1..4000).contains(&suggested_size), "{message}");
    let trained = train(&suggested);
    assert!(trained.status.success(), "{}", stderr(&trained));
    assert!(model.is_file());

    // The same check guards evaluation.
    let refused = gauntlet_with_rlimit(
        &[
            "eval",
            "--model",
            "examples/models/mnist-cnn.safetensors",
            "--data",
            "datasets/mnist-5k",
            "--suite",
            "attacks/quick.toml",
            "--out",
            out.to_str().unwrap(),
        ],
        libc::RLIMIT_AS,
        350 * MIB,
        false,
    );
    assert_clear_error(&refused, "use --batch-size");
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

/// Every command on a model from today's default exporter (`torch.export`-based,
/// weights in `resnet18.dynamo.onnx.data` beside the graph): info, attack, report,
/// check and poison detect. The images and labels are the zoo fixture's (labels
/// are PyTorch's predictions, so every image starts correctly classified).
#[test]
fn every_command_runs_on_a_dynamo_exported_onnx_resnet() {
    let dir = tempfile::tempdir().unwrap();
    let zoo = repo("crates/gauntlet-models/tests/zoo");
    let fixture =
        candle_core::safetensors::load(zoo.join("resnet18.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let x = fixture["input"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let labels: Vec<u8> = fixture["logits"]
        .argmax(1)
        .unwrap()
        .to_vec1::<u32>()
        .unwrap()
        .into_iter()
        .map(|l| l as u8)
        .collect();
    let x_bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let data = dir.path().join("four.npz");
    write_npz(
        &data,
        &[
            (
                "x.npy",
                gauntlet_data::encode_npy("<f4", &[4, 3, 32, 32], &x_bytes),
            ),
            ("y.npy", gauntlet_data::encode_npy("|u1", &[4], &labels)),
        ],
    );
    let model = zoo.join("resnet18.dynamo.onnx");
    let (model, data) = (model.to_str().unwrap(), data.to_str().unwrap());

    let o = gauntlet(&["info", "--model", model]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let info = String::from_utf8_lossy(&o.stdout);
    assert!(info.contains("onnx") && info.contains("10"), "{info}");
    assert!(info.contains("engine       native: "), "{info}");

    let attacked = dir.path().join("attack");
    let o = gauntlet(&[
        "attack",
        "--model",
        model,
        "--data",
        data,
        "--attack",
        "fgsm",
        "--eps",
        "8/255",
        "--out",
        attacked.to_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let record_path = attacked.join("results.json");
    let record = read_json(&record_path);
    assert_eq!(record["clean"]["accuracy"], 1.0, "{}", record["clean"]);
    assert_eq!(record["model"]["format"], "onnx");
    assert_eq!(
        record["environment"]["engine"], "native",
        "the ResNet runs natively"
    );

    let report = dir.path().join("report");
    let o = gauntlet(&[
        "report",
        record_path.to_str().unwrap(),
        "--out",
        report.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(report.join("report.html").exists());
    let o = gauntlet(&["check", record_path.to_str().unwrap(), "--min-clean", "0.9"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    let detected = dir.path().join("detect");
    let o = gauntlet(&[
        "poison",
        "detect",
        "--model",
        model,
        "--data",
        data,
        "--method",
        "strip",
        "--strip-held-out",
        "2",
        "--overlays",
        "1",
        "--out",
        detected.to_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(read_json(&detected.join("results.json"))["poisoning"]["strip"].is_object());
    // --feature-layer is for graphs; a built-in network says so.
    let o = gauntlet(&[
        "poison",
        "detect",
        "--model",
        "examples/models/mnist-cnn.safetensors",
        "--data",
        "datasets/mnist-5k",
        "--feature-layer",
        "x",
        "--out",
        dir.path().join("never").to_str().unwrap(),
    ]);
    assert_clear_error(&o, "--feature-layer");
}

/// The first `n` test images of the shipped MNIST as a PNG image folder
/// (`<label>/<index>.png`), and the IDX dataset they came from.
fn mnist_png_folder(folder: &Path, n: usize) -> gauntlet_data::Dataset {
    let idx = gauntlet_data::load(
        &repo("datasets/mnist-5k"),
        &gauntlet_data::LoadOptions {
            limit: Some(n),
            ..Default::default()
        },
    )
    .unwrap();
    let pixels = idx.images_f32(0..n).unwrap();
    for (i, image) in pixels.chunks(784).enumerate() {
        let path = folder.join(format!("{}/{i:05}.png", idx.labels()[i]));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let bytes: Vec<u8> = image.iter().map(|v| (v * 255.0).round() as u8).collect();
        image::save_buffer(&path, &bytes, 28, 28, image::ColorType::L8).unwrap();
    }
    idx
}

#[test]
fn an_image_folder_of_the_shipped_mnist_gives_the_idx_files_per_sample_results() {
    let n = 120;
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("mnist-png");
    let idx = mnist_png_folder(&folder, n);
    let run = |data: &str, out: &Path, extra: &[&str]| {
        let mut args = vec![
            "attack",
            "--model",
            "examples/models/mnist-cnn.safetensors",
            "--data",
            data,
            "--attack",
            "fgsm",
            "--eps",
            "0.1",
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ];
        args.extend_from_slice(extra);
        let o = gauntlet(&args);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        read_json(&out.join("results.json"))
    };
    let from_idx = run(
        "datasets/mnist-5k",
        &dir.path().join("idx"),
        &["--limit", "120"],
    );
    let from_png = run(folder.to_str().unwrap(), &dir.path().join("png"), &[]);
    assert_eq!(from_png["dataset"]["format"], "image-folder");
    assert_eq!(from_png["dataset"]["preprocess"], "none, grey (L)");
    let report = std::fs::read_to_string(dir.path().join("png/report.html")).unwrap();
    assert!(report.contains("preprocessed: none, grey (L)"));
    // The folder holds the samples grouped by class, file order within.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (idx.labels()[i], i));
    for (key, field) in [("clean", "predictions"), ("clean", "correct")] {
        let a = from_idx[key][field].as_array().unwrap();
        let b = from_png[key][field].as_array().unwrap();
        for (k, &i) in order.iter().enumerate() {
            assert_eq!(b[k], a[i], "{key}.{field} of sample {i}");
        }
    }
    let a = from_idx["robustness"]["attacks"][0]["robust"]
        .as_array()
        .unwrap();
    let b = from_png["robustness"]["attacks"][0]["robust"]
        .as_array()
        .unwrap();
    for (k, &i) in order.iter().enumerate() {
        assert_eq!(b[k], a[i], "FGSM verdict of sample {i}");
    }
    // Folder flags on other formats are a clear error.
    let o = gauntlet(&[
        "eval",
        "--model",
        "examples/models/mnist-cnn.safetensors",
        "--data",
        "datasets/mnist-5k",
        "--resize",
        "32",
        "--out",
        dir.path().join("bad").to_str().unwrap(),
    ]);
    assert_clear_error(&o, "--resize applies to image folders");
}

/// Run `gauntlet` and return its exit code and its own peak resident memory
/// in KiB (`wait4` on this child alone; other tests' processes do not count).
#[cfg(target_os = "linux")]
// The child is reaped by wait4, which std cannot see.
#[allow(clippy::zombie_processes)]
fn gauntlet_peak_memory(args: &[&str]) -> (i32, i64) {
    let child = Command::new(env!("CARGO_BIN_EXE_gauntlet"))
        .args(args)
        .current_dir(repo(""))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: rusage is plain data, filled by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    // SAFETY: waits for the child just spawned, which std has not reaped.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid);
    (libc::WEXITSTATUS(status), usage.ru_maxrss)
}

#[cfg(target_os = "linux")]
#[test]
fn a_streamed_image_folder_s_memory_does_not_grow_with_its_size() {
    // 50 different 32×32 RGB images, as PNG bytes, reused under many names.
    let pngs: Vec<Vec<u8>> = (0..50u32)
        .map(|seed| {
            let pixels: Vec<u8> = (0..32 * 32 * 3u32)
                .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed * 97) >> 24) as u8)
                .collect();
            let mut png = Vec::new();
            image::write_buffer_with_format(
                &mut std::io::Cursor::new(&mut png),
                &pixels,
                32,
                32,
                image::ColorType::Rgb8,
                image::ImageFormat::Png,
            )
            .unwrap();
            png
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut peaks = Vec::new();
    for n in [2_000usize, 20_000] {
        let folder = dir.path().join(format!("folder-{n}"));
        for k in 0..n {
            let path = folder.join(format!("{}/{k:06}.png", k % 10));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, &pngs[k % pngs.len()]).unwrap();
        }
        let out = dir.path().join(format!("run-{n}"));
        let (code, peak) = gauntlet_peak_memory(&[
            "eval",
            "--model",
            "crates/gauntlet-models/tests/zoo/resnet18.legacy.onnx",
            "--data",
            folder.to_str().unwrap(),
            "--batch-size",
            "200",
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ]);
        assert_eq!(code, 0);
        let record = read_json(&out.join("results.json"));
        assert_eq!(record["dataset"]["num_samples"], n);
        peaks.push(peak);
    }
    // Held in memory, 18 000 more 3×32×32 images would be 55 MB of pixels
    // (one byte each); streamed, only the file list and the per-sample
    // results grow (measured: about 7 MB).
    let growth_kib = peaks[1] - peaks[0];
    assert!(
        growth_kib < 20 * 1024,
        "peak memory grew by {growth_kib} KiB from 2 000 to 20 000 images ({peaks:?})"
    );
}
