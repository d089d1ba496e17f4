//! poison inject / detect.

use super::*;

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
            "invalid value 'sleeper' for '--attack <ATTACK>'; [possible values: badnets, blend, label-flip]",
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
    assert_clear_error(
        &unknown,
        "invalid value 'magic' for '--method <METHOD>'; [possible values: activation-clustering, spectral-signatures, spectre, scan, strip, neural-cleanse, all]",
    );
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
