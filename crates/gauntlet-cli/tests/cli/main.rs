//! The one integration-test binary for the `gauntlet` command: real binary, real
//! files, asserted exit codes and outputs. One module per command (as ripgrep
//! splits its tests); the helpers they share are here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod errors;
mod eval;
mod library;
mod poison;
mod report;
mod scan;
mod train;

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

fn out_exists(p: &str) -> bool {
    Path::new(p).exists()
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
