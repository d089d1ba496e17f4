//! Image folders: torchvision's class and file order, Pillow's conversions,
//! the shipped MNIST written as PNG files, and every kind of bad folder.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use gauntlet_data::{load, DataFormat, LoadOptions, Preprocess};

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/mnist-5k")
}

fn png(path: &Path, width: u32, height: u32, color: image::ColorType, pixels: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::save_buffer(path, pixels, width, height, color).unwrap();
}

fn grey(path: &Path, value: u8, size: u32) {
    png(
        path,
        size,
        size,
        image::ColorType::L8,
        &vec![value; (size * size) as usize],
    );
}

fn options(channels: usize) -> LoadOptions {
    LoadOptions {
        channels: Some(channels),
        ..LoadOptions::default()
    }
}

fn error(dir: &Path, options: &LoadOptions) -> String {
    load(dir, options).unwrap_err().to_string()
}

#[test]
fn classes_and_files_are_ordered_as_torchvision_orders_them() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Code-point order: "B" < "a" < "b" < "ä"; each image's grey value
    // says where torchvision puts it.
    grey(&root.join("b/z.png"), 50, 4);
    grey(&root.join("b/A.PNG"), 40, 4);
    grey(&root.join("a/nested/deeper/x.png"), 30, 4);
    grey(&root.join("a/y.png"), 20, 4);
    grey(&root.join("B/only.png"), 10, 4);
    grey(&root.join("ä/k.png"), 60, 4);
    std::fs::write(root.join("b/notes.txt"), "not an image").unwrap();
    let data = load(root, &options(1)).unwrap();
    assert_eq!(data.format(), DataFormat::ImageFolder);
    assert_eq!(data.labels(), [0, 1, 1, 2, 2, 3]);
    assert_eq!(data.num_classes(), 4);
    let firsts: Vec<u8> = data
        .images_f32(0..6)
        .unwrap()
        .chunks(16)
        .map(|c| (c[0] * 255.0).round() as u8)
        .collect();
    // "a/y.png" sorts before "a/nested" as os.walk's sorted tuples do:
    // ("a", [...], ["y.png"]) < ("a/nested/deeper", ...).
    assert_eq!(firsts, [10, 20, 30, 40, 50, 60]);
}

#[test]
fn a_classes_file_pins_the_order_and_may_list_absent_classes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("images");
    grey(&root.join("cat/1.png"), 1, 4);
    grey(&root.join("dog/1.png"), 2, 4);
    let classes = dir.path().join("classes.txt");
    std::fs::write(&classes, "dog\nbird\ncat\n").unwrap();
    let mut opts = options(1);
    opts.folder.classes_file = Some(classes.clone());
    let data = load(&root, &opts).unwrap();
    // Images in folder-name order (cat, dog), labels from the file.
    assert_eq!(data.labels(), [2, 0]);
    assert_eq!(data.num_classes(), 3);
    // A folder the file does not list is an error naming it.
    grey(&root.join("fish/1.png"), 3, 4);
    let message = error(&root, &opts);
    assert!(
        message.contains("fish") && message.contains("does not list"),
        "{message}"
    );
}

#[test]
fn a_labels_csv_reads_a_flat_folder() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    grey(&root.join("img/a.png"), 1, 4);
    grey(&root.join("img/b.png"), 2, 4);
    grey(&root.join("img/c.png"), 3, 4);
    let csv = root.join("labels.csv");
    std::fs::write(&csv, "path,label\nimg/c.png,7\nimg/a.png,2\n").unwrap();
    let mut opts = options(1);
    opts.folder.labels_csv = Some(csv.clone());
    let data = load(root, &opts).unwrap();
    // CSV order, labels as given, classes up to the largest.
    assert_eq!(data.labels(), [7, 2]);
    assert_eq!(data.num_classes(), 8);
    // Class names: sorted, as a folder's would be.
    std::fs::write(&csv, "img/a.png,zebra\nimg/b.png,ant\n").unwrap();
    assert_eq!(load(root, &opts).unwrap().labels(), [1, 0]);
    for (rows, expected) in [
        ("img/missing.png,1\n", "does not exist"),
        ("../outside.png,1\n", "inside"),
        ("img/a.png\n", "expected 'path,label'"),
        // Found by fuzzing: classes 0..=label were listed one string each.
        ("img/a.png,1785788708\n", "not a class index"),
    ] {
        std::fs::write(&csv, rows).unwrap();
        let message = error(root, &opts);
        assert!(
            message.contains("labels.csv") && message.contains(expected),
            "{message}"
        );
    }
    let classes = root.join("classes.txt");
    std::fs::write(&classes, "ant\nzebra\n").unwrap();
    opts.folder.classes_file = Some(classes);
    std::fs::write(&csv, "img/a.png,horse\n").unwrap();
    let message = error(root, &opts);
    assert!(
        message.contains("line 1") && message.contains("horse"),
        "{message}"
    );
}

#[test]
fn colours_convert_as_pillow_converts_them() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // One RGBA pixel (alpha dropped, not composited), one grey pixel.
    png(
        &root.join("c/rgba.png"),
        1,
        1,
        image::ColorType::Rgba8,
        &[255, 0, 0, 10],
    );
    png(
        &root.join("c/x_grey.png"),
        1,
        1,
        image::ColorType::L8,
        &[77],
    );
    // 16-bit: colour keeps its high byte, grey is clipped at 255 (I;16 → L).
    let rgb16: Vec<u8> = [0x1234u16, 0xff00, 0x0080]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect();
    png(
        &root.join("c/y_rgb16.png"),
        1,
        1,
        image::ColorType::Rgb16,
        &rgb16,
    );
    png(
        &root.join("c/z_grey16.png"),
        1,
        1,
        image::ColorType::L16,
        &300u16.to_ne_bytes(),
    );
    let rgb = load(root, &options(3)).unwrap();
    let bytes: Vec<u8> = rgb
        .images_f32(0..4)
        .unwrap()
        .iter()
        .map(|v| (v * 255.0).round() as u8)
        .collect();
    assert_eq!(
        bytes,
        [255, 0, 0, 77, 77, 77, 0x12, 0xff, 0x00, 255, 255, 255]
    );
    let luma = load(root, &options(1)).unwrap();
    let bytes: Vec<u8> = luma
        .images_f32(0..4)
        .unwrap()
        .iter()
        .map(|v| (v * 255.0).round() as u8)
        .collect();
    // Pillow: (255, 0, 0) → 76; (0x12, 0xff, 0) → (18·19595 + 255·38470 + 32768) >> 16 = 155.
    assert_eq!(bytes, [76, 77, 155, 255]);
}

#[test]
fn the_shipped_mnist_as_png_files_is_the_same_data() {
    let idx = load(&shipped(), &LoadOptions::default()).unwrap();
    let n = 300;
    let dir = tempfile::tempdir().unwrap();
    let pixels = idx.images_f32(0..n).unwrap();
    for (i, image) in pixels.chunks(784).enumerate() {
        let bytes: Vec<u8> = image.iter().map(|v| (v * 255.0).round() as u8).collect();
        let label = idx.labels()[i];
        png(
            &dir.path().join(format!("{label}/{i:05}.png")),
            28,
            28,
            image::ColorType::L8,
            &bytes,
        );
    }
    let folder = load(dir.path(), &options(1)).unwrap();
    assert_eq!(folder.len(), n);
    assert_eq!(folder.image_shape(), [1, 28, 28]);
    // The folder is grouped by class; within a class, in file order.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (idx.labels()[i], i));
    let from_folder = folder.images_f32(0..n).unwrap();
    for (k, &i) in order.iter().enumerate() {
        assert_eq!(folder.labels()[k], idx.labels()[i]);
        assert_eq!(
            from_folder[k * 784..(k + 1) * 784],
            pixels[i * 784..(i + 1) * 784],
            "sample {i}"
        );
    }
    // The record says how the files became samples.
    let record = folder.record();
    assert_eq!(record.format.as_str(), "image-folder");
    assert_eq!(record.preprocess.as_deref(), Some("none, grey (L)"));
}

#[test]
fn resize_and_crop_bring_mixed_sizes_to_one_and_mixed_sizes_alone_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    grey(&root.join("a/big.png"), 100, 40);
    png(
        &root.join("a/wide.png"),
        30,
        20,
        image::ColorType::L8,
        &[200; 600],
    );
    let message = error(root, &options(1));
    assert!(
        message.contains("big.png")
            && message.contains("wide.png")
            && message.contains("--center-crop"),
        "{message}"
    );
    let mut opts = options(1);
    opts.preprocess = Preprocess {
        resize: Some(16),
        center_crop: Some([12, 12]),
    };
    let data = load(root, &opts).unwrap();
    assert_eq!(data.image_shape(), [1, 12, 12]);
    // Constant images stay constant through Pillow's resampling.
    let values = data.images_f32(0..2).unwrap();
    assert!(values[..144].iter().all(|&v| (v * 255.0).round() == 100.0));
    assert!(values[144..].iter().all(|&v| (v * 255.0).round() == 200.0));
    // Resizing alone leaves the two aspect ratios apart.
    opts.preprocess.center_crop = None;
    let message = error(root, &opts);
    assert!(
        message.contains("16x16") && message.contains("16x24"),
        "{message}"
    );
}

#[test]
fn bad_folders_and_bad_images_are_one_line_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    grey(&root.join("a/fine.png"), 1, 4);
    // An empty class folder (torchvision refuses it too).
    std::fs::create_dir_all(root.join("b")).unwrap();
    std::fs::write(root.join("b/readme.txt"), "no images").unwrap();
    let message = error(root, &options(1));
    assert!(
        message.contains("holds no image files") && message.contains('b'),
        "{message}"
    );
    std::fs::remove_dir_all(root.join("b")).unwrap();

    // Garbage with an image extension: refused at the header pass.
    std::fs::write(root.join("a/garbage.png"), b"not a png at all").unwrap();
    let message = error(root, &options(1));
    assert!(message.contains("garbage.png"), "{message}");
    std::fs::remove_file(root.join("a/garbage.png")).unwrap();

    // A truncated PNG: the header reads, the pixels do not. Pixels are
    // decoded when a batch needs them, so the error comes from that batch.
    let noise: Vec<u8> = (0..64 * 64u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    png(
        &root.join("a/full.png"),
        64,
        64,
        image::ColorType::L8,
        &noise,
    );
    grey(&root.join("a/fine.png"), 1, 64);
    let bytes = std::fs::read(root.join("a/full.png")).unwrap();
    std::fs::write(root.join("a/full.png"), &bytes[..bytes.len() / 2]).unwrap();
    let data = load(root, &options(1)).unwrap();
    let message = data.images_f32(0..data.len()).unwrap_err().to_string();
    assert!(
        message.contains("full.png")
            && message.contains("cannot decode")
            && !message.contains('\n'),
        "{message}"
    );
    std::fs::remove_file(root.join("a/full.png")).unwrap();
    grey(&root.join("a/fine.png"), 1, 4);
    grey(&root.join("a/fine.png"), 1, 4);

    // A decompression bomb: a PNG of under 200 bytes declaring 20000×20000.
    let mut bomb = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(20_000u32.to_be_bytes());
    ihdr.extend(20_000u32.to_be_bytes());
    ihdr.extend([8, 0, 0, 0, 0]);
    let chunk = |out: &mut Vec<u8>, body: &[u8]| {
        out.extend((body.len() as u32 - 4).to_be_bytes());
        out.extend(body);
        let mut crc = flate2::Crc::new();
        crc.update(body);
        out.extend(crc.sum().to_be_bytes());
    };
    chunk(&mut bomb, &ihdr);
    // The first rows, compressed: the file stays tiny.
    let mut idat = b"IDAT".to_vec();
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut zlib, &[0u8; 4096]).unwrap();
    idat.extend(zlib.finish().unwrap());
    chunk(&mut bomb, &idat);
    chunk(&mut bomb, b"IEND");
    assert!(bomb.len() < 200);
    std::fs::write(root.join("a/bomb.png"), &bomb).unwrap();
    let message = error(root, &options(1));
    assert!(
        message.contains("bomb.png") && message.contains("400000000 pixels"),
        "{message}"
    );
    std::fs::remove_file(root.join("a/bomb.png")).unwrap();

    // A symlink loop.
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(root.join("a"), root.join("a/again")).unwrap();
        let message = error(root, &options(1));
        assert!(message.contains("symlink loop"), "{message}");
        std::fs::remove_file(root.join("a/again")).unwrap();
    }
    // Folder flags select nothing when the folder is fine.
    assert_eq!(load(root, &options(1)).unwrap().len(), 1);
}

/// torchvision's reading of the committed photo folder (benches/image_parity/
/// make_fixture.py): the expected arrays loaded through the NumPy reader.
fn torchvision_expected(array: &str) -> gauntlet_data::Dataset {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixtures.join(array), dir.path().join("x.npy")).unwrap();
    std::fs::copy(
        fixtures.join("expected_labels.npy"),
        dir.path().join("y.npy"),
    )
    .unwrap();
    load(dir.path(), &LoadOptions::default()).unwrap()
}

#[test]
fn real_photos_in_every_encoding_match_torchvision_s_preprocessing() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let files: Vec<String> = std::fs::read_to_string(fixtures.join("expected_files.txt"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    for (channels, array) in [(3, "expected_rgb.npy"), (1, "expected_l.npy")] {
        let expected = torchvision_expected(array);
        let mut opts = options(channels);
        opts.preprocess = Preprocess {
            resize: Some(24),
            center_crop: Some([20, 20]),
        };
        let ours = load(&fixtures.join("photos"), &opts).unwrap();
        assert_eq!(ours.len(), files.len());
        assert_eq!(ours.labels(), expected.labels(), "ImageFolder's order");
        let per = channels * 20 * 20;
        let (a, b) = (
            ours.images_f32(0..ours.len()).unwrap(),
            expected.images_f32(0..ours.len()).unwrap(),
        );
        for (i, file) in files.iter().enumerate() {
            let worst = a[i * per..(i + 1) * per]
                .iter()
                .zip(&b[i * per..(i + 1) * per])
                .map(|(x, y)| ((x - y) * 255.0).abs().round() as u32)
                .max()
                .unwrap();
            // Lossless sources (and lossy WebP, whose decoder is exact) match
            // bit for bit: resampling, cropping and conversions are Pillow's
            // arithmetic. JPEG decoders differ from libjpeg-turbo in IDCT
            // rounding and chroma upsampling: a few levels (docs/data.md).
            let jpeg = file.ends_with(".jpg") || file.ends_with(".jpeg");
            let allowed = if jpeg { 4 } else { 0 };
            assert!(
                worst <= allowed,
                "{file} ({channels} channels): {worst} levels from torchvision"
            );
        }
    }
}
