//! CIFAR in every form users download it: the python batches (pickled dicts,
//! read by the restricted unpickler), re-pickled by Python 3 at every
//! protocol, and CIFAR-100 binary. Fixtures: tests/fixtures/cifar/
//! (make_cifar_fixtures.py; each checked there against CPython's unpickler).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use gauntlet_data::{load, DataFormat, LabelSet, LoadOptions, Split};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/cifar")
        .join(name)
}

/// The fixture's pixels: (13·i + 7·j) mod 256 for image i, byte j.
fn expected_pixels() -> Vec<f32> {
    (0..5)
        .flat_map(|i| (0..3072).map(move |j| ((13 * i + 7 * j) % 256) as f32 / 255.0))
        .collect()
}

#[test]
fn every_cifar_layout_reads_the_same_images_and_labels() {
    let cases: [(&str, DataFormat, LabelSet, &[u32], usize); 8] = [
        (
            "cifar-10-batches-py",
            DataFormat::Cifar10Python,
            LabelSet::Fine,
            &[3, 8, 0, 9, 3],
            10,
        ),
        (
            "py3-protocol-2",
            DataFormat::Cifar10Python,
            LabelSet::Fine,
            &[3, 8, 0, 9, 3],
            10,
        ),
        (
            "py3-protocol-3",
            DataFormat::Cifar10Python,
            LabelSet::Fine,
            &[3, 8, 0, 9, 3],
            10,
        ),
        (
            "py3-protocol-4",
            DataFormat::Cifar10Python,
            LabelSet::Fine,
            &[3, 8, 0, 9, 3],
            10,
        ),
        (
            "py3-protocol-5",
            DataFormat::Cifar10Python,
            LabelSet::Fine,
            &[3, 8, 0, 9, 3],
            10,
        ),
        (
            "cifar-100-python",
            DataFormat::Cifar100Python,
            LabelSet::Fine,
            &[19, 29, 0, 11, 99],
            100,
        ),
        (
            "cifar-100-python",
            DataFormat::Cifar100Python,
            LabelSet::Coarse,
            &[11, 15, 4, 14, 19],
            20,
        ),
        (
            "cifar-100-binary",
            DataFormat::Cifar100Binary,
            LabelSet::Coarse,
            &[11, 15, 4, 14, 19],
            20,
        ),
    ];
    for (dir, format, label_set, labels, classes) in cases {
        let options = LoadOptions {
            label_set,
            ..LoadOptions::default()
        };
        let data = load(&fixture(dir), &options).unwrap_or_else(|e| panic!("{dir}: {e}"));
        assert_eq!(data.format(), format, "{dir}");
        assert_eq!(data.labels(), labels, "{dir} {label_set:?}");
        assert_eq!(data.num_classes(), classes, "{dir}");
        assert_eq!(data.image_shape(), [3, 32, 32]);
        assert_eq!(data.images_f32(0..5).unwrap(), expected_pixels(), "{dir}");
    }
    // The parent of the official folder works too, and the train split reads
    // the data batches.
    let parent = load(
        &fixture(""),
        &LoadOptions {
            split: Split::Train,
            ..LoadOptions::default()
        },
    );
    // fixtures/cifar holds several layouts; the first found is CIFAR-10 python.
    assert_eq!(parent.unwrap().format(), DataFormat::Cifar10Python);
    let fine = load(&fixture("cifar-100-binary"), &LoadOptions::default()).unwrap();
    assert_eq!(fine.labels(), [19, 29, 0, 11, 99]);
}

#[test]
fn a_cifar_pickle_that_imports_anything_else_is_refused_unrun() {
    let message = load(&fixture("malicious"), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("test_batch")
            && message.contains("posix.system")
            && message.contains("refused"),
        "{message}"
    );
    assert!(!message.contains('\n'));
}

#[test]
fn truncated_and_corrupted_cifar_pickles_are_errors() {
    let bytes = std::fs::read(fixture("cifar-10-batches-py/test_batch")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("cifar-10-batches-py/batches.meta"),
        dir.path().join("batches.meta"),
    )
    .unwrap();
    // Cut at many places; flip bytes at many places: an error or the right
    // data, never a panic.
    for cut in (0..bytes.len()).step_by(97).chain([bytes.len() - 1]) {
        std::fs::write(dir.path().join("test_batch"), &bytes[..cut]).unwrap();
        assert!(
            load(dir.path(), &LoadOptions::default()).is_err(),
            "cut at {cut}"
        );
    }
    for at in (0..bytes.len()).step_by(13) {
        let mut flipped = bytes.clone();
        flipped[at] ^= 0x5a;
        std::fs::write(dir.path().join("test_batch"), &flipped).unwrap();
        if let Ok(data) = load(dir.path(), &LoadOptions::default()) {
            assert!(data.labels().iter().all(|&l| l < 10));
        }
    }
    // CIFAR-100 binary of a size that is not whole records.
    let binary = tempfile::tempdir().unwrap();
    std::fs::write(binary.path().join("fine_label_names.txt"), "apple\n").unwrap();
    std::fs::write(binary.path().join("test.bin"), vec![0u8; 3075]).unwrap();
    let message = load(binary.path(), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(message.contains("3074 bytes each"), "{message}");
}

#[test]
fn pickles_that_copy_or_nest_without_end_are_refused_quickly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("cifar-10-batches-py/batches.meta"),
        dir.path().join("batches.meta"),
    )
    .unwrap();
    // A list that DUP-and-APPENDs itself doubles each round (2^4000 values
    // from 16 kB: found by fuzzing as an out-of-memory); 100 000 lists
    // nested in each other would overflow the stack when dropped.
    let doubling = [b"\x80\x02]".to_vec(), b"2a".repeat(4000), b".".to_vec()].concat();
    let deep = [
        b"\x80\x02".to_vec(),
        b"]".repeat(100_000),
        b"a".repeat(99_999),
        b".".to_vec(),
    ]
    .concat();
    for (name, bytes, expected) in [
        ("doubling", doubling, "copies more values"),
        ("deep", deep, "nested deeper"),
    ] {
        std::fs::write(dir.path().join("test_batch"), &bytes).unwrap();
        let message = load(dir.path(), &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(message.contains(expected), "{name}: {message}");
    }
}
