//! Scratch experiment (not shipped): inject, train, detect, print.
use gauntlet_core::NoProgress;
use gauntlet_data::{load, LoadOptions, Split};
use gauntlet_models::Arch;
use gauntlet_poison::*;
use gauntlet_train::{train, TrainConfig};

fn main() -> Result<()> {
    gauntlet_core::configure_threads(None);
    let args: Vec<String> = std::env::args().collect();
    let arch = Arch::parse(args.get(1).map(String::as_str).unwrap_or("cnn"))?;
    let epochs: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3);
    let clean_run = args.get(3).map(|s| s == "clean").unwrap_or(false);
    let path = std::path::Path::new("datasets/mnist-5k");
    let train_set = load(
        path,
        &LoadOptions {
            split: Split::Train,
            ..Default::default()
        },
    )?;
    let test_set = load(path, &LoadOptions::default())?;
    let cfg = InjectionConfig {
        attack: PoisonAttack::Badnets(Patch::default()),
        target: Some(0),
        fraction: 0.1,
        source: None,
        seed: 1,
    };
    let poisoned = inject(&train_set, &cfg)?;
    let data = if clean_run {
        train_set.clone()
    } else {
        poisoned.dataset.clone()
    };
    let truth = if clean_run {
        vec![false; data.len()]
    } else {
        poisoned.manifest.is_poisoned()
    };
    println!(
        "poisoned {} of {}",
        poisoned.manifest.indices.len(),
        data.len()
    );
    let t = std::time::Instant::now();
    let config = TrainConfig {
        arch,
        epochs,
        ..TrainConfig::default()
    };
    let outcome = train(&config, &data, &test_set, &NoProgress)?;
    println!(
        "train {:.1}s acc {:?}",
        t.elapsed().as_secs_f64(),
        outcome.history.last().map(|h| h.test_accuracy)
    );
    let net = outcome.last.native().unwrap().clone();
    let t = std::time::Instant::now();
    let features = penultimate_features(&net, &data, 250, &NoProgress)?;
    println!(
        "features {:.2}s dim {}",
        t.elapsed().as_secs_f64(),
        features.dim
    );
    for (name, det) in [
        ("ac", {
            let t = std::time::Instant::now();
            let d = ActivationClustering::default().detect(&features, &data)?;
            println!("ac {:.2}s", t.elapsed().as_secs_f64());
            d
        }),
        ("ss", {
            let t = std::time::Instant::now();
            let d = SpectralSignatures::default().detect(&features, &data)?;
            println!("ss {:.2}s", t.elapsed().as_secs_f64());
            d
        }),
    ] {
        for c in &det.classes {
            println!(
                "{name} class {} n {} suspect {} stat {:.3} z {:.2} cons {:.2}/{:.2} {}",
                c.class,
                c.samples,
                c.suspect_size,
                c.statistic,
                c.outlier_score,
                c.suspect_consistency,
                c.class_consistency,
                c.poisoned
            );
        }
        let m = detection_metrics(&det.flagged, &det.scores, &truth);
        println!(
            "{name}: P {:.3} R {:.3} F1 {:.3} AUROC {:?} flagged {}",
            m.precision, m.recall, m.f1, m.auroc, m.flagged
        );
    }
    // STRIP: held-out = first 500 test images, judged = next 500 clean + triggered (non-target).
    let per = 784;
    let held = test_set.images_f32(0..500)?;
    let judged = test_set.images_f32(500..1000)?;
    let mut triggered = Vec::new();
    let trig = poisoned.manifest.trigger.clone().unwrap();
    for i in 500..1000 {
        if test_set.labels()[i] != 0 {
            let mut x = test_set.images_f32(i..i + 1)?;
            trig.apply(&mut x);
            triggered.extend(x);
        }
    }
    let t = std::time::Instant::now();
    let strip = Strip::default();
    let cal = strip.calibrate(&net, &held)?;
    let clean_e = strip.entropies(&net, &judged, &held, "clean", false)?;
    let trig_e = strip.entropies(&net, &triggered, &held, "triggered", false)?;
    println!(
        "strip {:.1}s threshold {:.3}",
        t.elapsed().as_secs_f64(),
        cal.threshold
    );
    let frr = clean_e.iter().filter(|&&e| cal.flags(e)).count() as f64 / clean_e.len() as f64;
    let far = trig_e.iter().filter(|&&e| !cal.flags(e)).count() as f64 / trig_e.len() as f64;
    println!("strip FRR {frr:.3} FAR {far:.3}");
    let t = std::time::Instant::now();
    let steps: usize = std::env::var("NC_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let nc = NeuralCleanse {
        steps,
        ..Default::default()
    }
    .run(&net, &held, 500, &NoProgress)?;
    println!("nc {:.1}s", t.elapsed().as_secs_f64());
    for c in &nc.classes {
        println!(
            "nc class {} l1 {:.1} succ {:.2} reached {} idx {:.2} {}",
            c.class, c.mask_l1, c.attack_success, c.reached_target, c.anomaly_index, c.flagged
        );
    }
    Ok(())
}
