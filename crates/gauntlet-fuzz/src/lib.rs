//! Fuzz-target bodies: each takes arbitrary bytes, hands them to one of Gauntlet's
//! parsers through the same public entry point the CLI uses (files on disk
//! included), and checks what must hold for any input: no panic, and whatever is
//! accepted is well-formed (labels in range, pixels finite and in `[0, 1]`,
//! records that survive a round trip). Each returns whether the input was
//! accepted, so the tests can check that the seeds reach past the error paths.
//!
//! The libFuzzer harness lives in `fuzz/` (built by `cargo fuzz`, run by
//! `fuzz/run.sh`); [`TARGETS`] lets the workspace tests replay the seed corpus and
//! every crash input kept under `fuzz/regressions/`.
//!
//! Inputs that name several files (an IDX pair, `x.npy` + `y.npy`) are split at a
//! 4-byte little-endian length after a 1-byte mode; see each target.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use gauntlet_data::{LoadOptions, Split};

/// A fuzz target: a name (the `fuzz/fuzz_targets/<name>.rs` binary) and its body.
pub type Target = (&'static str, fn(&[u8]) -> bool);

/// Every target, by name.
pub const TARGETS: &[Target] = &[
    ("dataset_idx", dataset_idx),
    ("dataset_cifar", dataset_cifar),
    ("dataset_npy", dataset_npy),
    ("dataset_npz", dataset_npz),
    ("image_npy", image_npy),
    ("image_folder", image_folder),
    ("dataset_cifar_python", dataset_cifar_python),
    ("pickle_walk", pickle_walk),
    ("scan_model", scan_model),
    ("load_model", load_model),
    ("suite_toml", suite_toml),
    ("policy_toml", policy_toml),
    ("run_record", run_record),
    ("journal", journal),
    ("checkpoint", checkpoint),
];

thread_local! {
    // One scratch directory per thread, reused across inputs: creating a fresh one
    // per input would dominate the fuzzer's time. In /dev/shm where there is one.
    static SCRATCH: RefCell<Option<tempfile::TempDir>> = const { RefCell::new(None) };
}

/// A clean, empty directory for this input (the same path every call).
fn scratch(sub: &str) -> PathBuf {
    let root = SCRATCH.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            let shm = Path::new("/dev/shm");
            let made = if shm.is_dir() {
                tempfile::Builder::new()
                    .prefix("gauntlet-fuzz")
                    .tempdir_in(shm)
            } else {
                tempfile::Builder::new().prefix("gauntlet-fuzz").tempdir()
            };
            // Without a scratch directory the harness cannot run at all.
            #[allow(clippy::expect_used)]
            {
                *cell = Some(made.expect("cannot create a scratch directory"));
            }
        }
        cell.as_ref()
            .map(|d| d.path().to_path_buf())
            .unwrap_or_default()
    });
    let dir = root.join(sub);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::create_dir_all(&dir);
    dir
}

fn write(path: &Path, bytes: &[u8]) {
    let _ = std::fs::write(path, bytes);
}

/// Split `data` into a mode byte and two parts: `[mode][len: u32 LE][first][second]`.
fn two_files(data: &[u8]) -> (u8, &[u8], &[u8]) {
    let mode = data.first().copied().unwrap_or(0);
    let rest = data.get(1..).unwrap_or(&[]);
    let (len, rest) = match rest.get(..4) {
        Some(b) => (
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize,
            &rest[4..],
        ),
        None => (0, rest),
    };
    let split = len.min(rest.len());
    (mode, &rest[..split], &rest[split..])
}

/// The inverse of [`two_files`], for building seeds.
pub fn join_files(mode: u8, first: &[u8], second: &[u8]) -> Vec<u8> {
    let mut out = vec![mode];
    out.extend((first.len() as u32).to_le_bytes());
    out.extend(first);
    out.extend(second);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = encoder.write_all(bytes);
    encoder.finish().unwrap_or_default()
}

/// Whatever a loader accepts must be usable: labels in range, pixels finite and in
/// the declared range, shapes consistent.
fn check_dataset(result: gauntlet_data::Result<gauntlet_data::Dataset>) -> bool {
    let Ok(dataset) = result else { return false };
    assert!(!dataset.is_empty(), "an empty dataset was accepted");
    let classes = dataset.num_classes();
    assert!(
        dataset.labels().iter().all(|&l| (l as usize) < classes),
        "a label outside 0..{classes} was accepted"
    );
    let [c, h, w] = dataset.image_shape();
    let n = dataset.len().min(16);
    if let Ok(pixels) = dataset.images_f32(0..n) {
        assert_eq!(
            pixels.len(),
            n * c * h * w,
            "image buffer of the wrong size"
        );
        assert!(
            pixels
                .iter()
                .all(|p| p.is_finite() && (0.0..=1.0).contains(p)),
            "a pixel outside [0, 1] was accepted"
        );
    }
    true
}

fn load(dir: &Path, mode: u8) -> gauntlet_data::Result<gauntlet_data::Dataset> {
    let options = LoadOptions {
        split: Split::Test,
        limit: None,
        // Sometimes an explicit class count, which every label must respect.
        num_classes: (mode & 0x80 != 0).then_some(usize::from(mode & 0x0f) + 1),
        ..LoadOptions::default()
    };
    gauntlet_data::load(dir, &options)
}

/// MNIST IDX pair. Mode bits 0–1: 0 raw files, 1 both gzipped (the fuzzed bytes
/// are the decompressed content), 2 the fuzzed bytes named `.gz` as they are.
pub fn dataset_idx(data: &[u8]) -> bool {
    let (mode, images, labels) = two_files(data);
    let dir = scratch("idx");
    let (suffix, images, labels) = match mode & 3 {
        1 => (".gz", gzip(images), gzip(labels)),
        2 => (".gz", images.to_vec(), labels.to_vec()),
        _ => ("", images.to_vec(), labels.to_vec()),
    };
    write(
        &dir.join(format!("t10k-images-idx3-ubyte{suffix}")),
        &images,
    );
    write(
        &dir.join(format!("t10k-labels-idx1-ubyte{suffix}")),
        &labels,
    );
    check_dataset(load(&dir, mode))
}

/// A CIFAR-10 binary batch (`test_batch.bin`).
pub fn dataset_cifar(data: &[u8]) -> bool {
    let dir = scratch("cifar");
    write(&dir.join("test_batch.bin"), data);
    check_dataset(load(&dir, 0))
}

/// `x.npy` + `y.npy`.
pub fn dataset_npy(data: &[u8]) -> bool {
    let (mode, x, y) = two_files(data);
    let dir = scratch("npy");
    write(&dir.join("x.npy"), x);
    write(&dir.join("y.npy"), y);
    check_dataset(load(&dir, mode))
}

/// An `.npz` archive (zip of `.npy` arrays).
pub fn dataset_npz(data: &[u8]) -> bool {
    let dir = scratch("npz");
    let path = dir.join("data.npz");
    write(&path, data);
    let options = LoadOptions {
        split: Split::Test,
        limit: None,
        num_classes: None,
        ..Default::default()
    };
    check_dataset(gauntlet_data::load(&path, &options))
}

/// An image folder. Mode bits 0–3 pick the first file's extension (from
/// torchvision's list), bit 4 makes the second part a labels CSV for a flat
/// folder (else a PNG in a second class folder), bit 5 asks for one channel,
/// bits 6–7 the preprocessing (none, resize 8, resize 8 + crop 6, crop 6).
/// Images may declare at most 2²⁰ pixels here, so that the allocation a
/// valid large image needs stays inside the fuzzer's memory limit.
pub fn image_folder(data: &[u8]) -> bool {
    use gauntlet_data::image_folder::{FolderOptions, IMAGE_EXTENSIONS};
    let (mode, first, second) = two_files(data);
    let dir = scratch("folder");
    let ext = IMAGE_EXTENSIONS[usize::from(mode & 0x0f) % IMAGE_EXTENSIONS.len()];
    let mut folder = FolderOptions {
        max_pixels: Some(1 << 20),
        ..FolderOptions::default()
    };
    if mode & 0x10 != 0 {
        write(&dir.join(format!("a{ext}")), first);
        let csv = dir.join("labels.csv");
        write(&csv, second);
        folder.labels_csv = Some(csv);
    } else {
        let _ = std::fs::create_dir_all(dir.join("a"));
        let _ = std::fs::create_dir_all(dir.join("b"));
        write(&dir.join(format!("a/x{ext}")), first);
        write(&dir.join("b/y.png"), second);
    }
    let preprocess = gauntlet_data::Preprocess {
        resize: matches!(mode >> 6, 1 | 2).then_some(8),
        center_crop: matches!(mode >> 6, 2 | 3).then_some([6, 6]),
    };
    let options = LoadOptions {
        channels: Some(if mode & 0x20 != 0 { 1 } else { 3 }),
        preprocess,
        folder,
        ..LoadOptions::default()
    };
    check_dataset(gauntlet_data::load(&dir, &options))
}

/// A CIFAR python batch (`test_batch` beside a `batches.meta`): the
/// restricted unpickler on arbitrary bytes.
pub fn dataset_cifar_python(data: &[u8]) -> bool {
    let dir = scratch("cifar-py");
    write(&dir.join("batches.meta"), b"\x80\x02}q\x00.");
    write(&dir.join("test_batch"), data);
    check_dataset(load(&dir, 0))
}

/// A single image (trigger pattern) in `.npy`.
pub fn image_npy(data: &[u8]) -> bool {
    let dir = scratch("image");
    let path = dir.join("trigger.npy");
    write(&path, data);
    let Ok(image) = gauntlet_data::load_image_npy(&path) else {
        return false;
    };
    let [c, h, w] = image.shape;
    assert_eq!(image.values.len(), c * h * w, "image of the wrong size");
    assert!(
        image.values.iter().all(|v| (0.0..=1.0).contains(v)),
        "a pixel outside [0, 1] was accepted"
    );
    true
}

/// The pickle opcode walker on raw bytes.
pub fn pickle_walk(data: &[u8]) -> bool {
    let walk = gauntlet_scan::walk(data);
    for import in &walk.imports {
        let _ = gauntlet_scan::classify(import);
    }
    walk.malformed.is_none()
}

const MODEL_EXTENSIONS: [&str; 6] = ["pt", "pth", "pkl", "bin", "safetensors", "onnx"];

/// `gauntlet scan` on one file; the first byte picks the file's extension.
pub fn scan_model(data: &[u8]) -> bool {
    let Some((&pick, bytes)) = data.split_first() else {
        return false;
    };
    let ext = MODEL_EXTENSIONS[usize::from(pick) % MODEL_EXTENSIONS.len()];
    let dir = scratch("scan");
    let path = dir.join(format!("model.{ext}"));
    write(&path, bytes);
    let Ok(report) = gauntlet_scan::scan_file(&path) else {
        return false;
    };
    assert!(
        serde_json::to_string(&report).is_ok(),
        "a scan report that cannot be written as JSON"
    );
    true
}

/// What `eval` does with a model file: scan it, refuse dangerous files, load the
/// rest (safetensors and PyTorch as the `mlp` architecture) and verify the input
/// gradient. The first byte picks the format (`% 3`) and, for ONNX, whether the
/// input shape is the graph's own or forced to 1×28×28 (`/ 3 % 2`).
pub fn load_model(data: &[u8]) -> bool {
    let Some((&pick, bytes)) = data.split_first() else {
        return false;
    };
    let ext = ["safetensors", "pt", "onnx"][usize::from(pick) % 3];
    let dir = scratch("load");
    let path = dir.join(format!("model.{ext}"));
    write(&path, bytes);
    if gauntlet_scan::scan_file(&path).is_ok_and(|report| report.is_dangerous()) {
        return false;
    }
    let options = gauntlet_models::ModelOptions {
        arch: gauntlet_models::Arch::parse("mlp").ok(),
        input_shape: (pick / 3 % 2 == 1).then_some([1, 28, 28]),
        ..Default::default()
    };
    gauntlet_models::load_model(&path, &options, &candle_core::Device::Cpu).is_ok()
}

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// An attack suite (TOML), expanded into its attack entries.
pub fn suite_toml(data: &[u8]) -> bool {
    let Some(text) = text(data) else {
        return false;
    };
    gauntlet_eval::Suite::from_toml(text, Path::new("fuzz.toml"))
        .and_then(|suite| suite.entries())
        .is_ok()
}

/// A gate policy (TOML), validated.
pub fn policy_toml(data: &[u8]) -> bool {
    let Some(text) = text(data) else {
        return false;
    };
    gauntlet_check::Policy::from_toml(text)
        .and_then(|policy| policy.validate())
        .is_ok()
}

/// A run record (also a baseline): what parses must write back and parse again.
pub fn run_record(data: &[u8]) -> bool {
    let Some(text) = text(data) else {
        return false;
    };
    let Ok(record) = gauntlet_record::RunRecord::from_json(text) else {
        return false;
    };
    let written = record.to_json();
    assert!(
        written.is_ok(),
        "a record that parsed cannot be written back"
    );
    assert!(
        written.is_ok_and(|text| gauntlet_record::RunRecord::from_json(&text).is_ok()),
        "a record that parsed does not parse after writing it back"
    );
    true
}

/// An evaluation journal, resumed (the fingerprint `fuzz` is the one to match).
pub fn journal(data: &[u8]) -> bool {
    let dir = scratch("journal");
    write(&dir.join(gauntlet_eval::JOURNAL_FILE), data);
    gauntlet_eval::FileJournal::open(&dir, "fuzz", true)
        .is_ok_and(|journal| journal.resumed_batches() > 0)
}

/// A training checkpoint (`train --resume DIR`): weights, optimiser moments and
/// the run's state as safetensors metadata.
pub fn checkpoint(data: &[u8]) -> bool {
    let dir = scratch("checkpoint");
    write(&dir.join(gauntlet_train::checkpoint::CHECKPOINT_FILE), data);
    let Ok(Some(checkpoint)) = gauntlet_train::checkpoint::load(&dir) else {
        return false;
    };
    assert!(
        checkpoint
            .optimizer
            .moments()
            .iter()
            .all(|(_, m)| m.len() == checkpoint.params.len()),
        "optimiser moments of another length than the parameters were accepted"
    );
    true
}
