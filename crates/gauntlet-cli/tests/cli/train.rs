//! train: reproducibility, adversarial training, resumption.

use super::*;

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
