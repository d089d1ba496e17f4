//! Public-API tests of the dataset loaders: the shipped data, every format, and
//! every kind of bad file (each must be an error, never a panic).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::{Path, PathBuf};

use gauntlet_data::{encode_npy, load, DataFormat, LoadOptions, Split};

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/mnist-5k")
}

fn opts(split: Split) -> LoadOptions {
    LoadOptions {
        split,
        ..LoadOptions::default()
    }
}

#[test]
fn shipped_mnist_splits_have_the_documented_sizes_and_balance() {
    for (split, n) in [(Split::Train, 4000), (Split::Test, 1000)] {
        let data = load(&shipped(), &opts(split)).unwrap();
        assert_eq!(data.len(), n);
        assert_eq!(data.format(), DataFormat::Idx);
        assert_eq!(data.image_shape(), [1, 28, 28]);
        let mut per_class = [0usize; 10];
        data.labels()
            .iter()
            .for_each(|&l| per_class[l as usize] += 1);
        assert_eq!(per_class, [n / 10; 10], "{split:?} split is not balanced");
        // Shuffled, not sorted by label as the source CSV was.
        assert!(data.labels().windows(2).filter(|w| w[0] != w[1]).count() > n / 2);
        let pixels = data.images_f32(0..n).unwrap();
        assert!(pixels.iter().all(|p| (0.0..=1.0).contains(p)));
        let max = pixels.iter().cloned().fold(0.0f32, f32::max);
        assert_eq!(max, 1.0, "MNIST ink should reach 255");
        let mean = pixels.iter().sum::<f32>() / pixels.len() as f32;
        assert!(
            (0.09..0.17).contains(&mean),
            "mean intensity {mean} is not MNIST-like"
        );
    }
}

#[test]
fn shipped_fingerprint_matches_the_files() {
    let a = load(&shipped(), &opts(Split::Test)).unwrap();
    let b = load(&shipped(), &opts(Split::Train)).unwrap();
    assert_eq!(a.sha256().len(), 64);
    assert_ne!(a.sha256(), b.sha256());
}

#[test]
fn limit_takes_the_first_samples_in_file_order() {
    let full = load(&shipped(), &opts(Split::Test)).unwrap();
    let first = load(
        &shipped(),
        &LoadOptions {
            limit: Some(37),
            ..opts(Split::Test)
        },
    )
    .unwrap();
    assert_eq!(first.len(), 37);
    assert_eq!(first.labels(), &full.labels()[..37]);
    assert_eq!(
        first.images_f32(0..37).unwrap(),
        full.images_f32(0..37).unwrap()
    );
    assert_eq!(first.sha256(), full.sha256());
}

#[test]
fn batch_builds_nchw_tensors() {
    let data = load(&shipped(), &opts(Split::Test)).unwrap();
    let (x, y) = data.batch(10..20, &candle_core::Device::Cpu).unwrap();
    assert_eq!(x.dims(), &[10, 1, 28, 28]);
    assert_eq!(y.to_vec1::<u32>().unwrap(), data.labels()[10..20].to_vec());
    assert!(data.batch(990..1001, &candle_core::Device::Cpu).is_err());
}

// ---------- IDX bad files ----------

fn idx_images(n: u32, h: u32, w: u32, pixels: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, 3];
    for d in [n, h, w] {
        out.extend(d.to_be_bytes());
    }
    out.extend_from_slice(pixels);
    out
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, 1];
    out.extend((labels.len() as u32).to_be_bytes());
    out.extend_from_slice(labels);
    out
}

fn write_idx_dir(images: &[u8], labels: &[u8], gzip: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let ext = if gzip { ".gz" } else { "" };
    for (name, bytes) in [
        ("t10k-images-idx3-ubyte", images),
        ("t10k-labels-idx1-ubyte", labels),
    ] {
        let path = dir.path().join(format!("{name}{ext}"));
        if gzip {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(bytes).unwrap();
            std::fs::write(path, enc.finish().unwrap()).unwrap();
        } else {
            std::fs::write(path, bytes).unwrap();
        }
    }
    dir
}

fn load_err(dir: &Path) -> String {
    let err = load(dir, &opts(Split::Test)).unwrap_err();
    format!("{err}")
}

#[test]
fn valid_small_idx_loads_raw_and_gzipped() {
    for gzip in [false, true] {
        let dir = write_idx_dir(
            &idx_images(2, 2, 3, &[0, 255, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6]),
            &idx_labels(&[3, 9]),
            gzip,
        );
        let data = load(dir.path(), &opts(Split::Test)).unwrap();
        assert_eq!(data.image_shape(), [1, 2, 3]);
        assert_eq!(data.labels(), &[3, 9]);
        assert_eq!(data.images_f32(0..1).unwrap()[1], 1.0);
    }
}

#[test]
fn idx_with_bad_magic_is_rejected() {
    let mut images = idx_images(1, 2, 2, &[0; 4]);
    images[0] = 0x50;
    let dir = write_idx_dir(&images, &idx_labels(&[1]), false);
    let err = load_err(dir.path());
    assert!(
        err.contains("bad magic") && err.contains("t10k-images"),
        "{err}"
    );
}

#[test]
fn truncated_idx_is_rejected_raw_and_gzipped() {
    for gzip in [false, true] {
        let dir = write_idx_dir(&idx_images(3, 2, 2, &[0; 8]), &idx_labels(&[1, 2, 3]), gzip);
        let err = load_err(dir.path());
        assert!(
            err.contains("truncated") || err.contains("at most"),
            "{err}"
        );
    }
}

#[test]
fn idx_header_shorter_than_the_data_is_rejected() {
    let dir = write_idx_dir(&idx_images(1, 2, 2, &[0; 9]), &idx_labels(&[1]), false);
    let err = load_err(dir.path());
    assert!(err.contains("more follows"), "{err}");
}

#[test]
fn idx_header_claiming_billions_is_rejected_before_allocating() {
    for gzip in [false, true] {
        let dir = write_idx_dir(
            &idx_images(4_000_000_000, 28, 28, &[0; 16]),
            &idx_labels(&[1]),
            gzip,
        );
        let err = load_err(dir.path());
        assert!(
            err.contains("can hold at most") || err.contains("overflow"),
            "{err}"
        );
    }
}

#[test]
fn idx_label_out_of_range_is_rejected() {
    let dir = write_idx_dir(&idx_images(2, 1, 1, &[0, 0]), &idx_labels(&[1, 12]), false);
    let err = load_err(dir.path());
    assert!(
        err.contains("label 12 of sample 1") && err.contains("0..10"),
        "{err}"
    );
}

#[test]
fn idx_count_mismatch_is_rejected() {
    let dir = write_idx_dir(
        &idx_images(2, 1, 1, &[0, 0]),
        &idx_labels(&[1, 2, 3]),
        false,
    );
    let err = load_err(dir.path());
    assert!(
        err.contains("3 labels") && err.contains("2 images"),
        "{err}"
    );
}

#[test]
fn corrupt_gzip_is_rejected() {
    let dir = write_idx_dir(&idx_images(2, 1, 1, &[0, 0]), &idx_labels(&[1, 2]), true);
    let path = dir.path().join("t10k-images-idx3-ubyte.gz");
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    bytes[mid + 1] ^= 0x55;
    std::fs::write(&path, bytes).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("t10k-images"), "{err}");
}

#[test]
fn empty_and_missing_inputs_are_errors() {
    let dir = write_idx_dir(&[], &[], false);
    let err = load_err(dir.path());
    assert!(err.contains("truncated"), "{err}");
    let err = load_err(&dir.path().join("nope"));
    assert!(err.contains("cannot read"), "{err}");
    let empty = tempfile::tempdir().unwrap();
    let err = load_err(empty.path());
    assert!(err.contains("no test split found"), "{err}");
}

// ---------- CIFAR-10 ----------

fn cifar_record(label: u8, fill: u8) -> Vec<u8> {
    let mut r = vec![label];
    r.extend(std::iter::repeat_n(fill, 3072));
    r
}

#[test]
fn cifar10_batches_load_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::write(
        bin.join("data_batch_1.bin"),
        [cifar_record(1, 10), cifar_record(2, 20)].concat(),
    )
    .unwrap();
    std::fs::write(bin.join("data_batch_2.bin"), cifar_record(9, 255)).unwrap();
    std::fs::write(bin.join("test_batch.bin"), cifar_record(4, 0)).unwrap();
    let train = load(dir.path(), &opts(Split::Train)).unwrap();
    assert_eq!(train.format(), DataFormat::Cifar10Binary);
    assert_eq!(train.labels(), &[1, 2, 9]);
    assert_eq!(train.image_shape(), [3, 32, 32]);
    assert_eq!(train.images_f32(2..3).unwrap()[0], 1.0);
    let test = load(&bin, &opts(Split::Test)).unwrap();
    assert_eq!(test.labels(), &[4]);
}

#[test]
fn cifar10_truncated_batch_and_bad_label_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut rec = cifar_record(1, 0);
    rec.pop();
    std::fs::write(dir.path().join("test_batch.bin"), rec).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("whole number of CIFAR-10 records"), "{err}");
    std::fs::write(dir.path().join("test_batch.bin"), cifar_record(10, 0)).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("label 10"), "{err}");
}

// ---------- NumPy ----------

/// Through the crate's own writer, so every NPZ test is also a round trip of it.
fn write_npz(path: &Path, entries: &[(&str, Vec<u8>)]) {
    std::fs::write(path, gauntlet_data::encode_npz(entries).unwrap()).unwrap();
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn npz_nhwc_and_nchw_give_the_same_images() {
    // Two RGB 2x2 images; NHWC source.
    let nhwc: Vec<u8> = (0..24).map(|i| (i * 10) as u8).collect();
    let mut nchw = vec![0u8; 24];
    for s in 0..2 {
        for p in 0..4 {
            for c in 0..3 {
                nchw[s * 12 + c * 4 + p] = nhwc[s * 12 + p * 3 + c];
            }
        }
    }
    let labels: Vec<u8> = [1i64, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.npz");
    let b = dir.path().join("b.npz");
    write_npz(
        &a,
        &[
            ("x.npy", encode_npy("|u1", &[2, 2, 2, 3], &nhwc)),
            ("y.npy", encode_npy("<i8", &[2], &labels)),
        ],
    );
    write_npz(
        &b,
        &[
            ("x.npy", encode_npy("|u1", &[2, 3, 2, 2], &nchw)),
            ("y.npy", encode_npy("<i8", &[2], &labels)),
        ],
    );
    let da = load(&a, &opts(Split::Test)).unwrap();
    let db = load(&b, &opts(Split::Test)).unwrap();
    assert_eq!(da.format(), DataFormat::Npz);
    assert_eq!(da.image_shape(), [3, 2, 2]);
    assert_eq!(da.images_f32(0..2).unwrap(), db.images_f32(0..2).unwrap());
    assert_eq!(da.labels(), &[1, 0]);
    assert_eq!(da.num_classes(), 2);
}

#[test]
fn npz_float_images_must_be_in_unit_range_and_finite() {
    let dir = tempfile::tempdir().unwrap();
    let labels = encode_npy("|u1", &[2], &[0, 1]);
    let ok = dir.path().join("ok.npz");
    write_npz(
        &ok,
        &[
            (
                "x.npy",
                encode_npy("<f4", &[2, 1, 2], &f32_bytes(&[0.0, 0.5, 1.0, 0.25])),
            ),
            ("y.npy", labels.clone()),
        ],
    );
    let data = load(&ok, &opts(Split::Test)).unwrap();
    assert_eq!(data.images_f32(0..2).unwrap(), vec![0.0, 0.5, 1.0, 0.25]);
    for (name, bad) in [("scaled", 255.0f32), ("nan", f32::NAN)] {
        let path = dir.path().join(format!("{name}.npz"));
        write_npz(
            &path,
            &[
                (
                    "x.npy",
                    encode_npy("<f4", &[2, 1, 2], &f32_bytes(&[0.0, bad, 1.0, 0.25])),
                ),
                ("y.npy", labels.clone()),
            ],
        );
        let err = load_err(&path);
        assert!(err.contains("outside [0, 1]"), "{err}");
    }
}

#[test]
fn npz_split_keys_missing_arrays_and_mismatches_are_handled() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("split.npz");
    write_npz(
        &path,
        &[
            ("x_train.npy", encode_npy("|u1", &[1, 1, 1], &[7])),
            ("y_train.npy", encode_npy("|u1", &[1], &[3])),
            ("x_test.npy", encode_npy("|u1", &[2, 1, 1], &[1, 2])),
            ("y_test.npy", encode_npy("|u1", &[2], &[0, 1])),
        ],
    );
    assert_eq!(load(&path, &opts(Split::Train)).unwrap().labels(), &[3]);
    assert_eq!(load(&path, &opts(Split::Test)).unwrap().len(), 2);

    let missing = dir.path().join("missing.npz");
    write_npz(&missing, &[("x.npy", encode_npy("|u1", &[1, 1, 1], &[7]))]);
    assert!(load_err(&missing).contains("expected arrays 'x' and 'y'"));

    let mismatch = dir.path().join("mismatch.npz");
    write_npz(
        &mismatch,
        &[
            ("x.npy", encode_npy("|u1", &[2, 1, 1], &[7, 8])),
            ("y.npy", encode_npy("|u1", &[3], &[0, 1, 2])),
        ],
    );
    assert!(load_err(&mismatch).contains("counts must match"));

    let float_labels = dir.path().join("float_labels.npz");
    write_npz(
        &float_labels,
        &[
            ("x.npy", encode_npy("|u1", &[1, 1, 1], &[7])),
            ("y.npy", encode_npy("<f4", &[1], &f32_bytes(&[1.0]))),
        ],
    );
    assert!(load_err(&float_labels).contains("integer"));

    let negative = dir.path().join("negative.npz");
    write_npz(
        &negative,
        &[
            ("x.npy", encode_npy("|u1", &[1, 1, 1], &[7])),
            ("y.npy", encode_npy("|i1", &[1], &[0xff])),
        ],
    );
    assert!(load_err(&negative).contains("label -1"));

    let garbage = dir.path().join("garbage.npz");
    std::fs::write(&garbage, b"this is not a zip archive").unwrap();
    assert!(load_err(&garbage).contains("not a valid .npz"));
}

#[test]
fn npy_directory_loads_and_explicit_class_count_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("x.npy"),
        encode_npy("|u1", &[3, 2, 2], &[0; 12]),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("y.npy"),
        encode_npy(
            "<i4",
            &[3],
            &f32_bytes(&[])
                .iter()
                .copied()
                .chain([0, 0, 0, 0, 5, 0, 0, 0, 2, 0, 0, 0])
                .collect::<Vec<_>>(),
        ),
    )
    .unwrap();
    let data = load(dir.path(), &opts(Split::Test)).unwrap();
    assert_eq!(data.format(), DataFormat::Npy);
    assert_eq!(data.labels(), &[0, 5, 2]);
    assert_eq!(data.num_classes(), 6);
    let err = load(
        dir.path(),
        &LoadOptions {
            num_classes: Some(4),
            ..opts(Split::Test)
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("label 5 of sample 1") && err.contains("0..4"),
        "{err}"
    );
}

#[test]
fn limit_zero_is_rejected() {
    let err = load(
        &shipped(),
        &LoadOptions {
            limit: Some(0),
            ..opts(Split::Test)
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("--limit"), "{err}");
}

// ---------- hostile inputs (issue #9) ----------

/// A gzip bomb: a header promising 10 images followed by 256 MiB of zeros that
/// compress to ~250 KB. Reading stops one byte past the promised payload, so memory
/// stays bounded, and the lie is named. A header promising more than deflate can
/// expand the file to is refused before reading anything.
#[test]
fn gzip_bombs_are_refused_with_bounded_reading() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("t10k-images-idx3-ubyte.gz");
    let mut encoder = flate2::write::GzEncoder::new(
        std::fs::File::create(&images).unwrap(),
        flate2::Compression::fast(),
    );
    encoder.write_all(&idx_images(10, 28, 28, &[])).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..256 {
        encoder.write_all(&zeros).unwrap();
    }
    encoder.finish().unwrap();
    let compressed = std::fs::metadata(&images).unwrap().len();
    assert!(compressed < 2 << 20, "{compressed} bytes is no bomb");
    std::fs::write(dir.path().join("t10k-labels-idx1-ubyte.gz"), {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&idx_labels(&[1; 10])).unwrap();
        enc.finish().unwrap()
    })
    .unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("t10k-images") && err.contains("more follows"),
        "{err}"
    );

    // A header promising 3 million images from the same small file: more than
    // deflate's ~1032:1 ratio could produce, refused before any allocation.
    let lying = dir.path().join("t10k-images-idx3-ubyte.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&idx_images(3_000_000, 28, 28, &[0; 4096]))
        .unwrap();
    std::fs::write(&lying, enc.finish().unwrap()).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("can hold at most"), "{err}");
}

/// `.npy` headers that lie: a shape whose bytes exceed the file, a shape whose
/// product overflows, a negative dimension, and a header length past the file.
#[test]
fn lying_npy_headers_are_refused_before_allocating() {
    let labels = encode_npy("<i8", &[2], &[0u8; 16]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "claims 784000000000 bytes",
            encode_npy("|u1", &[1_000_000_000, 28, 28], &[0; 64]),
        ),
        (
            "overflows",
            encode_npy("<f4", &[1 << 40, 1 << 40, 1 << 20], &[0; 64]),
        ),
        ("no valid 'shape'", {
            let mut bytes = encode_npy("|u1", &[2, 2, 2], &[0; 8]);
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let at = text.find("(2, 2, 2)").unwrap();
            bytes[at + 1] = b'-';
            bytes
        }),
        ("header length 65535 is implausible", {
            let mut bytes = encode_npy("|u1", &[2, 2, 2], &[0; 8]);
            bytes[8] = 0xff;
            bytes[9] = 0xff;
            bytes
        }),
    ];
    for (what, images) in cases {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.npy"), &images).unwrap();
        std::fs::write(dir.path().join("y.npy"), &labels).unwrap();
        let err = load_err(dir.path());
        assert!(err.contains("x.npy") && err.contains(what), "{what}: {err}");
    }
}

/// Data larger than the memory left is refused before reading, naming the file
/// and the sizes (a 1 TiB sparse file: no disk space used).
#[test]
fn data_larger_than_memory_is_refused_before_reading() {
    let count: u64 = (1 << 40) / 784;
    let dir = tempfile::tempdir().unwrap();
    let images = std::fs::File::create(dir.path().join("t10k-images-idx3-ubyte")).unwrap();
    (&images)
        .write_all(&idx_images(count as u32, 28, 28, &[]))
        .unwrap();
    if images.set_len(16 + count * 784).is_err() {
        eprintln!("skipped: this filesystem has no sparse 1 TiB files");
        return;
    }
    let labels = std::fs::File::create(dir.path().join("t10k-labels-idx1-ubyte")).unwrap();
    let mut header = vec![0, 0, 8, 1];
    header.extend((count as u32).to_be_bytes());
    (&labels).write_all(&header).unwrap();
    labels.set_len(8 + count).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("t10k-images") && err.contains("needs about 1024.0 GiB"),
        "{err}"
    );
}
