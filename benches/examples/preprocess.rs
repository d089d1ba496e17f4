//! Read an image folder as `gauntlet eval --data DIR` would and write the
//! samples as NumPy files, for comparison with torchvision (never part of the
//! test command; see benches/image_parity/compare.py).
//!
//! ```text
//! cargo run --release -p gauntlet-benches --example preprocess -- \
//!     DIR CHANNELS RESIZE|- CROP|- OUT_DIR
//! ```
//! writes `OUT_DIR/x.npy` (`uint8`, N×C×H×W), `OUT_DIR/y.npy` and prints the
//! decode-and-preprocess throughput.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Instant;

use gauntlet_data::{load, LoadOptions, Preprocess};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, channels, resize, crop, out] = args.as_slice() else {
        eprintln!("usage: preprocess DIR CHANNELS RESIZE|- CROP|- OUT_DIR");
        std::process::exit(2);
    };
    let number = |s: &str| (s != "-").then(|| s.parse::<usize>().expect("a number or -"));
    let options = LoadOptions {
        channels: Some(channels.parse().expect("1 or 3")),
        preprocess: Preprocess {
            resize: number(resize),
            center_crop: number(crop).map(|c| [c, c]),
        },
        ..LoadOptions::default()
    };
    let started = Instant::now();
    let data = load(Path::new(dir), &options).unwrap();
    // Loading checks headers only; the pixels are decoded here.
    let (x, y) = data.to_npy().unwrap();
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{{\"images\":{},\"seconds\":{seconds:.3},\"images_per_second\":{:.1}}}",
        data.len(),
        data.len() as f64 / seconds
    );
    std::fs::create_dir_all(out).unwrap();
    std::fs::write(Path::new(out).join("x.npy"), x).unwrap();
    std::fs::write(Path::new(out).join("y.npy"), y).unwrap();
}
