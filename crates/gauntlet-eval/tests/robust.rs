//! The robust-evaluation runner: worst-case aggregation, pruning, suites, and
//! attack strength on the shipped CNN.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use gauntlet_attacks::{build_attack, Attack, AttackContext, Goal};
use gauntlet_core::{Bounds, Classifier, NoProgress, Norm, SeedStream};
use gauntlet_data::{load, Dataset, LoadOptions, Split};
use gauntlet_eval::{
    evaluate_clean, evaluate_robust, RobustConfig, Schedule, Suite, SuiteEntry, TargetSpec,
};
use gauntlet_models::{load_model, ModelOptions};
use gauntlet_record::WarningCode;

/// logits = the two input values: class 0 wins while x0 > x1.
struct TwoPixels;

impl Classifier for TwoPixels {
    fn logits(&self, x: &Tensor) -> gauntlet_core::Result<Tensor> {
        Ok(x.flatten_from(1)?)
    }
    fn bounds(&self) -> Bounds {
        Bounds::UNIT
    }
    fn num_classes(&self) -> usize {
        2
    }
    fn input_shape(&self) -> [usize; 3] {
        [1, 1, 2]
    }
    fn device(&self) -> &Device {
        &Device::Cpu
    }
}

/// Breaks exactly the samples whose first pixel lies in `[low, high)`, by raising
/// the second pixel just above the first.
struct Breaker {
    name: &'static str,
    low: f32,
    high: f32,
}

impl Attack for Breaker {
    fn name(&self) -> &str {
        self.name
    }
    fn norm(&self) -> Norm {
        Norm::Linf
    }
    fn parameters(&self) -> serde_json::Value {
        serde_json::json!({"low": self.low, "high": self.high})
    }
    fn is_randomized(&self) -> bool {
        false
    }
    fn run(
        &self,
        _ctx: &mut AttackContext,
        x: &Tensor,
        _goal: &Goal,
        _eps: f64,
        _seed: &SeedStream,
    ) -> gauntlet_attacks::Result<Tensor> {
        let mut v = x.flatten_all()?.to_vec1::<f32>()?;
        for pair in v.chunks_mut(2) {
            if (self.low..self.high).contains(&pair[0]) {
                pair[1] = pair[0] + 0.05;
            }
        }
        Ok(Tensor::from_vec(v, x.shape(), x.device())?)
    }
}

/// Four two-pixel samples of class 0 whose first pixel (0.6 to 0.9) leads.
fn four_samples() -> Dataset {
    Dataset::from_f32(
        "two-pixels",
        [1, 1, 2],
        vec![0.6, 0.5, 0.7, 0.5, 0.8, 0.5, 0.9, 0.5],
        vec![0, 0, 0, 0],
        2,
    )
    .unwrap()
}

/// Four samples of which `a` breaks the first three (at ε = 0.5), keeping their
/// adversarial examples.
fn three_broken() -> (
    Dataset,
    gauntlet_eval::CleanResult,
    gauntlet_eval::RobustResult,
) {
    let data = four_samples();
    let clean = evaluate_clean(&TwoPixels, &data, 4, &NoProgress).unwrap();
    let suite = vec![SuiteEntry {
        attack: Box::new(Breaker {
            name: "a",
            low: 0.0,
            high: 0.85,
        }),
        epsilons: vec![0.5],
        target: TargetSpec::None,
        schedule: Schedule::default(),
    }];
    let config = RobustConfig {
        batch_size: 4,
        seed: 0,
        keep_examples: true,
        gallery_samples: 0,
        first_sample: 0,
    };
    let result = evaluate_robust(&TwoPixels, &data, &clean, &suite, &config, &NoProgress).unwrap();
    (data, clean, result)
}

#[test]
fn the_gallery_shows_broken_samples_with_what_the_model_said_before_and_after() {
    let (data, _, result) = three_broken();
    let gallery =
        gauntlet_eval::gallery(&TwoPixels, &data, &result.examples, &result.attacks, 0).unwrap();
    assert_eq!(
        gallery.iter().map(|g| g.index).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    for g in &gallery {
        let original = data.images_f32(g.index..g.index + 1).unwrap();
        assert_eq!(g.original, original);
        assert_eq!(g.adversarial, result.examples[&g.index].2);
        assert_eq!(
            (g.attack.as_str(), g.norm.name(), g.epsilon),
            ("a", "linf", 0.5)
        );
        assert_eq!((g.clean_prediction, g.adversarial_prediction), (0, 1));
        // Softmax of the two pixels, the model's logits.
        let p = |winner: f32, other: f32| 1.0 / (1.0 + f64::from(other - winner).exp());
        assert!((g.clean_confidence - p(original[0], original[1])).abs() < 1e-6);
        assert!((g.adversarial_confidence - p(g.adversarial[1], g.adversarial[0])).abs() < 1e-6);
    }
    // A shard starting at sample 62 shows what the whole run would show there:
    // dataset-wide indices, and only candidates below GALLERY_CANDIDATES.
    let shard =
        gauntlet_eval::gallery(&TwoPixels, &data, &result.examples, &result.attacks, 62).unwrap();
    assert_eq!(
        shard.iter().map(|g| g.index).collect::<Vec<_>>(),
        vec![62, 63]
    );
}

#[test]
fn saved_adversarial_examples_load_back_as_a_dataset_with_their_labels() {
    let (data, clean, result) = three_broken();
    let bytes =
        gauntlet_eval::adversarial_npz(&TwoPixels, &data, &clean.predictions, &result.examples, 0)
            .unwrap();
    let again =
        gauntlet_eval::adversarial_npz(&TwoPixels, &data, &clean.predictions, &result.examples, 0)
            .unwrap();
    assert_eq!(bytes, again, "the same examples must give the same bytes");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adversarial.npz");
    std::fs::write(&path, &bytes).unwrap();
    let loaded = load(
        &path,
        &LoadOptions {
            num_classes: Some(2),
            ..LoadOptions::default()
        },
    )
    .unwrap();
    assert_eq!(loaded.len(), 3);
    assert_eq!(loaded.labels(), &[0, 0, 0]);
    let expected: Vec<f32> = (0..3).flat_map(|i| result.examples[&i].2.clone()).collect();
    assert_eq!(loaded.images_f32(0..3).unwrap(), expected);
    // Every saved example fools the model (the adversarial predictions array is
    // the model on `x`).
    let after = evaluate_clean(&TwoPixels, &loaded, 3, &NoProgress).unwrap();
    assert_eq!(after.correct, vec![false; 3]);
}

#[test]
fn worst_case_is_the_per_sample_and_over_attacks_that_break_disjoint_samples() {
    let data = four_samples();
    let clean = evaluate_clean(&TwoPixels, &data, 4, &NoProgress).unwrap();
    assert_eq!(clean.correct, vec![true; 4]);
    let suite = vec![
        SuiteEntry {
            attack: Box::new(Breaker {
                name: "a",
                low: 0.0,
                high: 0.75,
            }),
            epsilons: vec![0.5, 0.1],
            target: TargetSpec::None,
            schedule: Schedule::default(),
        },
        SuiteEntry {
            attack: Box::new(Breaker {
                name: "b",
                low: 0.75,
                high: 0.85,
            }),
            epsilons: vec![0.1, 0.5],
            target: TargetSpec::None,
            schedule: Schedule::default(),
        },
    ];
    let config = RobustConfig {
        batch_size: 3,
        seed: 0,
        keep_examples: true,
        gallery_samples: 0,
        first_sample: 0,
    };
    let result = evaluate_robust(&TwoPixels, &data, &clean, &suite, &config, &NoProgress).unwrap();
    let at = |name: &str, eps: f64| {
        result
            .attacks
            .iter()
            .find(|r| r.attack == name && r.epsilon == eps)
            .unwrap()
    };
    // ε = 0.1 is too small for either (the moves are 0.15 to 0.25, ties stay class 0).
    assert_eq!(at("a", 0.1).robust, vec![true; 4]);
    assert_eq!(at("b", 0.1).robust, vec![true; 4]);
    // ε = 0.5: a breaks samples 0 and 1, then b (run only on 2 and 3) breaks 2.
    assert_eq!(at("a", 0.5).robust, vec![false, false, true, true]);
    assert_eq!(
        at("b", 0.5).attacked,
        2,
        "b must attack only what a left robust"
    );
    assert_eq!(at("b", 0.5).newly_broken, 1);
    assert_eq!(at("b", 0.5).robust, vec![false, false, false, true]);
    let worst: Vec<_> = result
        .worst_case
        .iter()
        .map(|w| (w.epsilon, w.robust.clone(), w.robust_accuracy))
        .collect();
    assert_eq!(
        worst,
        vec![
            (0.1, vec![true; 4], 1.0),
            (0.5, vec![false, false, false, true], 0.25)
        ]
    );
    assert_eq!(
        result.examples.keys().copied().collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn shipped_cnn_and_data(limit: usize) -> (gauntlet_models::Model, Dataset) {
    let (model, _) = load_model(
        &repo("examples/models/mnist-cnn.safetensors"),
        &ModelOptions::default(),
        &Device::Cpu,
    )
    .unwrap();
    let data = load(
        &repo("datasets/mnist-5k"),
        &LoadOptions {
            split: Split::Test,
            limit: Some(limit),
            num_classes: None,
            ..Default::default()
        },
    )
    .unwrap();
    (model, data)
}

fn robust_count(
    model: &dyn Classifier,
    data: &Dataset,
    name: &str,
    params: serde_json::Value,
    eps: f64,
) -> usize {
    let clean = evaluate_clean(model, data, 100, &NoProgress).unwrap();
    let suite = vec![SuiteEntry {
        attack: build_attack(name, &params).unwrap(),
        epsilons: vec![eps],
        target: TargetSpec::None,
        schedule: Schedule::default(),
    }];
    let config = RobustConfig {
        batch_size: 100,
        seed: 1,
        keep_examples: false,
        gallery_samples: 0,
        first_sample: 0,
    };
    let result = evaluate_robust(model, data, &clean, &suite, &config, &NoProgress).unwrap();
    result.worst_case[0].robust.iter().filter(|r| **r).count()
}

#[test]
fn apgd_is_at_least_as_strong_as_pgd_with_the_same_budget_on_the_shipped_cnn() {
    let (model, data) = shipped_cnn_and_data(24);
    let budget = serde_json::json!({"steps": 50});
    let pgd = robust_count(&model, &data, "pgd-linf", budget.clone(), 0.06);
    let apgd = robust_count(&model, &data, "apgd-ce", budget, 0.06);
    assert!(apgd <= pgd, "APGD-CE left {apgd} robust, PGD {pgd}");
}

#[test]
fn minimal_perturbation_curve_is_monotone_and_consistent_with_its_norms() {
    let (model, data) = shipped_cnn_and_data(12);
    let clean = evaluate_clean(&model, &data, 100, &NoProgress).unwrap();
    let grid = vec![0.5, 1.0, 1.5, 2.0, 3.0, 5.0];
    let suite = vec![SuiteEntry {
        attack: build_attack("deepfool", &serde_json::Value::Null).unwrap(),
        epsilons: grid.clone(),
        target: TargetSpec::None,
        schedule: Schedule::default(),
    }];
    let config = RobustConfig {
        batch_size: 100,
        seed: 0,
        keep_examples: false,
        gallery_samples: 0,
        first_sample: 0,
    };
    let result = evaluate_robust(&model, &data, &clean, &suite, &config, &NoProgress).unwrap();
    let norms = &result.minimal[0].norms;
    let mut previous = 1.0;
    for wc in &result.worst_case {
        // The curve at ε is exactly: correct and (no adversarial example or norm > ε).
        let expected: Vec<bool> = (0..data.len())
            .map(|i| clean.correct[i] && norms[i].is_none_or(|n| n > wc.epsilon))
            .collect();
        assert_eq!(wc.robust, expected, "ε = {}", wc.epsilon);
        assert!(wc.robust_accuracy <= previous);
        previous = wc.robust_accuracy;
    }
    assert!(
        norms.iter().filter(|n| n.is_some()).count()
            >= clean.correct.iter().filter(|c| **c).count() * 9 / 10,
        "DeepFool failed too often: {norms:?}"
    );
    assert_eq!(
        result.worst_case.last().unwrap().robust_accuracy,
        0.0,
        "a standard CNN has no sample robust at L2 ε = 5"
    );
}

#[test]
fn shipped_suites_parse() {
    let mut seen = 0;
    for file in std::fs::read_dir(repo("attacks")).unwrap() {
        let path = file.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let suite = Suite::from_file(&path).unwrap();
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        assert_eq!(suite.name, stem, "{}", path.display());
        assert!(!suite.entries().unwrap().is_empty(), "{stem}");
        seen += 1;
    }
    assert!(seen >= 5, "only {seen} suites under attacks/");
}

#[test]
fn sanity_check_flags_probabilities_instead_of_logits() {
    struct Softmaxed(TwoPixels);
    impl Classifier for Softmaxed {
        fn logits(&self, x: &Tensor) -> gauntlet_core::Result<Tensor> {
            gauntlet_core::softmax(&self.0.logits(x)?)
        }
        fn bounds(&self) -> Bounds {
            Bounds::UNIT
        }
        fn num_classes(&self) -> usize {
            2
        }
        fn input_shape(&self) -> [usize; 3] {
            [1, 1, 2]
        }
        fn device(&self) -> &Device {
            &Device::Cpu
        }
    }
    let x = Tensor::new(&[[[[0.6f32, 0.5]]], [[[0.2, 0.9]]]], &Device::Cpu).unwrap();
    let y = Tensor::new(&[0u32, 1], &Device::Cpu).unwrap();
    let flagged = gauntlet_eval::model_sanity(&Softmaxed(TwoPixels), &x, &y).unwrap();
    assert!(
        flagged
            .iter()
            .any(|w| w.code == WarningCode::ProbabilitiesNotLogits),
        "{flagged:?}"
    );
    let clean = gauntlet_eval::model_sanity(&TwoPixels, &x, &y).unwrap();
    assert!(
        clean
            .iter()
            .all(|w| w.code != WarningCode::ProbabilitiesNotLogits),
        "{clean:?}"
    );
}

#[test]
fn record_types_carry_norm_kind_and_target_names() {
    let data = Dataset::from_f32(
        "two-pixels",
        [1, 1, 2],
        vec![0.6, 0.5, 0.9, 0.5],
        vec![0, 0],
        2,
    )
    .unwrap();
    let clean = evaluate_clean(&TwoPixels, &data, 4, &NoProgress).unwrap();
    let suite = vec![SuiteEntry {
        attack: Box::new(Breaker {
            name: "a",
            low: 0.0,
            high: 0.75,
        }),
        epsilons: vec![0.5],
        target: TargetSpec::None,
        schedule: Schedule::default(),
    }];
    let config = RobustConfig {
        batch_size: 4,
        seed: 0,
        keep_examples: false,
        gallery_samples: 0,
        first_sample: 0,
    };
    let result = evaluate_robust(&TwoPixels, &data, &clean, &suite, &config, &NoProgress).unwrap();
    assert_eq!(
        (result.attacks[0].norm.name(), result.attacks[0].kind.name()),
        ("linf", "fixed-epsilon")
    );
    assert_eq!(result.attacks[0].target, serde_json::json!("none"));
    assert!(result
        .warnings
        .iter()
        .all(|w| w.code != WarningCode::RobustAccuracyRisesWithEpsilon));
}

/// Every random draw is keyed by the sample, so per-sample results do not depend on
/// the batch size or on running the samples in two shards (with `first_sample`):
/// the basis of `--shard` and of resuming.
#[test]
fn results_do_not_depend_on_batch_size_or_sharding() {
    let (model, data) = shipped_cnn_and_data(40);
    let suite = || {
        vec![
            SuiteEntry {
                attack: build_attack("pgd-linf", &serde_json::json!({"steps": 5})).unwrap(),
                epsilons: vec![0.1, 0.2],
                target: TargetSpec::None,
                schedule: Schedule::default(),
            },
            SuiteEntry {
                attack: build_attack("square-linf", &serde_json::json!({"queries": 30})).unwrap(),
                epsilons: vec![0.2],
                target: TargetSpec::Random,
                schedule: Schedule::default(),
            },
        ]
    };
    let run = |data: &Dataset, batch_size: usize, first_sample: usize| {
        let clean = evaluate_clean(&model, data, batch_size, &NoProgress).unwrap();
        let config = RobustConfig {
            batch_size,
            seed: 5,
            keep_examples: false,
            gallery_samples: 0,
            first_sample,
        };
        let result = evaluate_robust(&model, data, &clean, &suite(), &config, &NoProgress).unwrap();
        let per_attack: Vec<Vec<bool>> = result.attacks.iter().map(|a| a.robust.clone()).collect();
        let worst: Vec<Vec<bool>> = result.worst_case.iter().map(|w| w.robust.clone()).collect();
        (per_attack, worst)
    };
    let whole = run(&data, 40, 0);
    assert_eq!(run(&data, 7, 0), whole, "batch size changed the results");
    let first: Vec<usize> = (0..15).collect();
    let second: Vec<usize> = (15..40).collect();
    let a = run(&data.select("a", &first).unwrap(), 8, 0);
    let b = run(&data.select("b", &second).unwrap(), 8, 15);
    let joined: Vec<Vec<bool>> =
        a.0.iter()
            .zip(&b.0)
            .map(|(x, y)| [x.clone(), y.clone()].concat())
            .collect();
    assert_eq!(joined, whole.0, "two shards differ from the whole run");
    // The attacks did something: not everything robust, not everything broken.
    let last = &whole.1[whole.1.len() - 1];
    assert!(last.iter().any(|r| *r) || whole.1[0].iter().any(|r| !*r));
}

fn entry(
    name: &str,
    params: serde_json::Value,
    epsilons: &[f64],
    schedule: Schedule,
) -> SuiteEntry {
    SuiteEntry {
        attack: build_attack(name, &params).unwrap(),
        epsilons: epsilons.to_vec(),
        target: TargetSpec::None,
        schedule,
    }
}

fn config() -> RobustConfig {
    RobustConfig {
        batch_size: 100,
        seed: 0,
        keep_examples: false,
        gallery_samples: 0,
        first_sample: 0,
    }
}

#[test]
fn the_best_known_perturbations_are_the_worst_case_curve_and_bound_every_attack() {
    let (model, data) = shipped_cnn_and_data(16);
    let clean = evaluate_clean(&model, &data, 100, &NoProgress).unwrap();
    let grid = [0.05, 0.1, 0.15];
    let suite = vec![
        entry(
            "pgd-linf",
            serde_json::json!({"steps": 10}),
            &grid,
            Schedule::default(),
        ),
        entry(
            "fmn-linf",
            serde_json::json!({"steps": 30}),
            &grid,
            Schedule::default(),
        ),
    ];
    let result = evaluate_robust(&model, &data, &clean, &suite, &config(), &NoProgress).unwrap();
    let best = &result.best_known[0];
    assert_eq!(best.norm, Norm::Linf);
    for (i, known) in best.norms.iter().enumerate() {
        if !clean.correct[i] {
            assert_eq!(*known, Some(0.0), "sample {i} is misclassified clean");
            continue;
        }
        // No attack found anything smaller than the best known.
        if let Some(own) = result.minimal[0].norms[i] {
            assert!(
                known.is_some_and(|k| k <= own),
                "sample {i}: best {known:?} > fmn {own}"
            );
        }
    }
    // The curve at every grid point is exactly what the per-sample bests say.
    for wc in &result.worst_case {
        let expected: Vec<bool> = (0..data.len())
            .map(|i| clean.correct[i] && best.norms[i].is_none_or(|b| b > wc.epsilon))
            .collect();
        assert_eq!(wc.robust, expected, "ε = {}", wc.epsilon);
    }
}

#[test]
fn a_still_robust_schedule_attacks_only_what_earlier_attacks_left_and_never_weakens_the_suite() {
    let (model, data) = shipped_cnn_and_data(16);
    let clean = evaluate_clean(&model, &data, 100, &NoProgress).unwrap();
    let grid = [0.05, 0.1];
    let pgd = || {
        entry(
            "pgd-linf",
            serde_json::json!({"steps": 5}),
            &grid,
            Schedule::default(),
        )
    };
    let fab = entry(
        "fab-t-linf",
        serde_json::json!({"steps": 20, "target_classes": 3}),
        &grid,
        Schedule::StillRobust,
    );
    let before = evaluate_robust(&model, &data, &clean, &[pgd()], &config(), &NoProgress).unwrap();
    let after =
        evaluate_robust(&model, &data, &clean, &[pgd(), fab], &config(), &NoProgress).unwrap();
    let still_robust = before.worst_case[0].robust.iter().filter(|r| **r).count();
    let fab_rows: Vec<_> = after
        .attacks
        .iter()
        .filter(|a| a.attack == "fab-t-linf")
        .collect();
    assert_eq!(
        fab_rows[0].attacked, still_robust,
        "FAB-T ran on other samples than the still-robust ones"
    );
    for (b, a) in before.worst_case.iter().zip(&after.worst_case) {
        for i in 0..data.len() {
            assert!(
                b.robust[i] || !a.robust[i],
                "sample {i} robust again at ε = {}",
                a.epsilon
            );
        }
    }
    // Its curve is partial, so the optimality table leaves it out.
    let record = gauntlet_record::RobustnessRecord {
        suite: gauntlet_record::SuiteRecord {
            name: "t".into(),
            description: String::new(),
            path: None,
            sha256: None,
        },
        attacks: after.attacks.clone(),
        minimal: after.minimal.clone(),
        best_known: after.best_known.clone(),
        worst_case: after.worst_case.clone(),
        warnings: Vec::new(),
        gallery: Vec::new(),
    };
    let correct = clean.correct.iter().filter(|c| **c).count();
    assert_eq!(
        gauntlet_record::optimality(&record).is_empty(),
        still_robust < correct,
        "a partial curve must have no optimality row, a full one must"
    );
}

#[test]
fn adding_an_attack_to_a_suite_leaves_the_other_attacks_draws_unchanged() {
    // PGD with a random start draws from its own stream; putting FGSM before it
    // moves it to another position but must not change a single verdict on the
    // samples that reach it in both suites, so the longer suite can only break more.
    let (model, data) = shipped_cnn_and_data(40);
    let clean = evaluate_clean(&model, &data, 100, &NoProgress).unwrap();
    let grid = [0.15];
    let pgd = || {
        entry(
            "pgd-linf",
            serde_json::json!({"steps": 10, "step_size": {"relative": 0.25}}),
            &grid,
            Schedule::default(),
        )
    };
    let fgsm = || entry("fgsm", serde_json::json!({}), &grid, Schedule::default());
    let run = |suite: &[SuiteEntry]| {
        evaluate_robust(&model, &data, &clean, suite, &config(), &NoProgress).unwrap()
    };
    let alone = run(&[pgd()]);
    let after_fgsm = run(&[fgsm(), pgd()]);
    let fgsm_robust = &after_fgsm.attacks[0].robust;
    let (pgd_alone, pgd_after) = (&alone.attacks[0].robust, &after_fgsm.attacks[1].robust);
    let mut compared = 0;
    let mut pgd_broke = 0;
    for i in 0..data.len() {
        if clean.correct[i] && fgsm_robust[i] {
            compared += 1;
            pgd_broke += usize::from(!pgd_alone[i]);
            assert_eq!(
                pgd_alone[i], pgd_after[i],
                "sample {i}: PGD's verdict changed when FGSM was put before it"
            );
        }
    }
    // The check compared something, and PGD's draws decided some of it.
    assert!(
        compared > 0 && pgd_broke > 0 && pgd_broke < compared,
        "PGD broke {pgd_broke} of {compared}"
    );
    for i in 0..data.len() {
        assert!(
            alone.worst_case[0].robust[i] || !after_fgsm.worst_case[0].robust[i],
            "sample {i} robust again in the longer suite"
        );
    }
}

#[test]
fn a_random_forward_pass_is_flagged_with_the_suite_that_handles_it() {
    /// TwoPixels plus fresh noise on every call.
    struct Noisy(std::sync::atomic::AtomicU64);
    impl Classifier for Noisy {
        fn logits(&self, x: &Tensor) -> gauntlet_core::Result<Tensor> {
            let call = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let noise = SeedStream::new(call).uniform_f32(x.elem_count(), -0.01, 0.01);
            let noise = Tensor::from_vec(noise, x.shape(), x.device())?;
            Ok((x + noise)?.flatten_from(1)?)
        }
        fn bounds(&self) -> Bounds {
            Bounds::UNIT
        }
        fn num_classes(&self) -> usize {
            2
        }
        fn input_shape(&self) -> [usize; 3] {
            [1, 1, 2]
        }
        fn device(&self) -> &Device {
            &Device::Cpu
        }
    }
    let x = Tensor::new(&[[[[0.6f32, 0.5]]], [[[0.2, 0.9]]]], &Device::Cpu).unwrap();
    let y = Tensor::new(&[0u32, 1], &Device::Cpu).unwrap();
    let flagged =
        gauntlet_eval::model_sanity(&Noisy(std::sync::atomic::AtomicU64::new(0)), &x, &y).unwrap();
    let warning = flagged
        .iter()
        .find(|w| w.code == WarningCode::NonDeterministicForward)
        .expect("a random forward pass is flagged");
    // The remedy names suites that exist and average gradients over samples.
    for suite in ["attacks/rand-linf.toml", "attacks/rand-l2.toml"] {
        assert!(warning.remedy.contains(suite), "{}", warning.remedy);
        let parsed = Suite::from_file(&repo(suite)).unwrap();
        for entry in parsed.entries().unwrap() {
            assert_eq!(entry.attack.parameters()["eot_samples"], 20, "{suite}");
        }
    }
    let steady = gauntlet_eval::model_sanity(&TwoPixels, &x, &y).unwrap();
    assert!(steady
        .iter()
        .all(|w| w.code != WarningCode::NonDeterministicForward));
    // The same holds for a randomised defence exported from PyTorch (input
    // noise from randn_like/rand_like), whose noise is seeded, not constant.
    let (onnx, _) = load_model(
        &repo("crates/gauntlet-models/tests/fixtures/noisy-legacy.onnx"),
        &ModelOptions::default(),
        &Device::Cpu,
    )
    .unwrap();
    let images = Tensor::full(0.5f32, (2, 1, 8, 8), &Device::Cpu).unwrap();
    let flagged = gauntlet_eval::model_sanity(&onnx, &images, &y).unwrap();
    assert!(
        flagged
            .iter()
            .any(|w| w.code == WarningCode::NonDeterministicForward),
        "{flagged:?}"
    );
}
