//! eval and attack: records, suites, resumption, memory, image folders.

use super::*;

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
        "invalid value 'fgsn' for '--attack <ATTACK>'",
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
