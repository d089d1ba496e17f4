//! The gate on the shipped demo record and constructed variants of it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use gauntlet_check::{check, junit_xml, markdown, Policy};
use gauntlet_record::RunRecord;

fn shipped() -> RunRecord {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../reports/demo/standard/results.json");
    RunRecord::from_json(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Flip the first `count` robust samples of the worst case at index `at` to broken
/// (a real regression: `count` samples lost, none gained).
fn lose(record: &mut RunRecord, at: usize, count: usize) {
    let w = &mut record.robustness.as_mut().unwrap().worst_case[at];
    let mut left = count;
    for r in w.robust.iter_mut() {
        if left > 0 && *r {
            *r = false;
            left -= 1;
        }
    }
    assert_eq!(left, 0, "not enough robust samples to lose");
    w.robust_accuracy = w.robust.iter().filter(|&&r| r).count() as f64 / w.robust.len() as f64;
}

/// Swap `count` robust samples for as many broken ones: same accuracy, new samples.
fn churn(record: &mut RunRecord, at: usize, lost: usize, gained: usize) {
    let w = &mut record.robustness.as_mut().unwrap().worst_case[at];
    let robust: Vec<usize> = (0..w.robust.len()).filter(|&i| w.robust[i]).collect();
    let broken: Vec<usize> = (0..w.robust.len()).filter(|&i| !w.robust[i]).collect();
    for &i in robust.iter().take(lost) {
        w.robust[i] = false;
    }
    for &i in broken.iter().take(gained) {
        w.robust[i] = true;
    }
    w.robust_accuracy = w.robust.iter().filter(|&&r| r).count() as f64 / w.robust.len() as f64;
}

#[test]
fn identical_records_pass() {
    let record = shipped();
    let outcome = check(&record, &Policy::default(), Some(&record), false).unwrap();
    assert!(outcome.passed());
    // Clean accuracy + one regression check per (norm, ε) of the worst case.
    assert_eq!(
        outcome.checks.len(),
        1 + record.robustness.as_ref().unwrap().worst_case.len()
    );
}

#[test]
fn a_real_regression_fails_and_noise_does_not() {
    let baseline = shipped();
    // 40 of the ~760 samples robust at ε = 0.1 broken: a 4-point drop.
    let mut worse = baseline.clone();
    lose(&mut worse, 0, 40);
    let outcome = check(&worse, &Policy::default(), Some(&baseline), false).unwrap();
    assert!(!outcome.passed());
    let failed: Vec<&str> = outcome
        .checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(failed, ["robust accuracy linf ε=0.1 (worst-case)"]);
    // A tolerance larger than the whole confidence interval lets it through.
    let lenient = Policy {
        max_drop: 0.06,
        ..Policy::default()
    };
    assert!(check(&worse, &lenient, Some(&baseline), false)
        .unwrap()
        .passed());
    // 6 lost and 4 gained: a 0.2-point drop that a fresh seed could cause.
    let mut noisy = baseline.clone();
    churn(&mut noisy, 0, 6, 4);
    let outcome = check(&noisy, &Policy::default(), Some(&baseline), false).unwrap();
    assert!(outcome.passed(), "{:?}", outcome.checks);
    // The same 0.2 points as a pure loss of 2 samples is not significant either
    // (p = 0.25): small drops need many samples to prove.
    let mut small = baseline.clone();
    lose(&mut small, 0, 2);
    assert!(check(&small, &Policy::default(), Some(&baseline), false)
        .unwrap()
        .passed());
}

#[test]
fn thresholds_pass_and_fail_on_the_recorded_values() {
    let record = shipped();
    let clean = record.clean.as_ref().unwrap().accuracy;
    let worst = record.robustness.as_ref().unwrap().worst_case[0].robust_accuracy;
    let policy = |min_clean: f64, min_robust: f64| {
        Policy::from_toml(&format!(
            "min_clean_accuracy = {min_clean}\n[[robust]]\nnorm = \"linf\"\nepsilon = 0.1\nmin_accuracy = {min_robust}\n"
        ))
        .unwrap()
    };
    assert!(check(&record, &policy(clean, worst), None, false)
        .unwrap()
        .passed());
    let outcome = check(&record, &policy(clean + 0.001, worst), None, false).unwrap();
    assert_eq!(outcome.failures(), 1);
    let outcome = check(&record, &policy(clean, worst + 0.001), None, false).unwrap();
    assert_eq!(outcome.failures(), 1);
    // A threshold on one attack rather than the worst case (ε written as 51/255 = 0.2).
    let fgsm_accuracy = record
        .robustness
        .as_ref()
        .unwrap()
        .attacks
        .iter()
        .find(|a| a.attack == "fgsm" && (a.epsilon - 0.2).abs() < 1e-12)
        .unwrap()
        .robust_accuracy;
    let fgsm = |minimum: f64| {
        Policy::from_toml(&format!(
            "[[robust]]\nnorm = \"linf\"\nepsilon = \"51/255\"\nattack = \"fgsm\"\nmin_accuracy = {minimum}\n"
        ))
        .unwrap()
    };
    assert!(check(&record, &fgsm(fgsm_accuracy), None, false)
        .unwrap()
        .passed());
    assert_eq!(
        check(&record, &fgsm(fgsm_accuracy + 0.001), None, false)
            .unwrap()
            .failures(),
        1
    );
}

#[test]
fn mismatched_evaluations_are_refused_unless_allowed() {
    let baseline = shipped();
    let mut other_data = baseline.clone();
    other_data.dataset.sha256 = "00".repeat(32);
    let mut fewer = baseline.clone();
    fewer.dataset.num_samples = 500;
    let mut other_grid = baseline.clone();
    other_grid.robustness.as_mut().unwrap().worst_case.pop();
    let mut other_shape = baseline.clone();
    other_shape.model.input_shape = [3, 32, 32];
    let mut other_suite = baseline.clone();
    other_suite.robustness.as_mut().unwrap().suite.sha256 = Some("11".repeat(32));
    for (record, needle) in [
        (&other_data, "dataset sha256"),
        (&fewer, "500 samples vs baseline 1000"),
        (&other_grid, "ε grid"),
        (&other_shape, "model input shape"),
        (&other_suite, "suite 'quick'"),
    ] {
        let err = check(record, &Policy::default(), Some(&baseline), false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(needle) && err.contains("--allow-mismatch"),
            "{needle}: {err}"
        );
        let allowed = check(record, &Policy::default(), Some(&baseline), true).unwrap();
        assert!(!allowed.mismatches.is_empty());
    }
}

#[test]
fn bad_policies_and_missing_results_are_errors() {
    let record = shipped();
    for (text, needle) in [
        ("alpha = 1.5", "alpha"),
        ("min_clean_accuracy = 95", "not 95"),
        ("max_drop = -0.1", "max_drop"),
        (
            "[[robust]]\nnorm = \"l7\"\nepsilon = 0.1\nmin_accuracy = 0.5",
            "l7",
        ),
        (
            "[[robust]]\nnorm = \"linf\"\nepsilon = \"8/0\"\nmin_accuracy = 0.5",
            "8/0",
        ),
        ("typo = 1", "unknown field"),
    ] {
        let err = Policy::from_toml(text).unwrap_err().to_string();
        assert!(err.contains(needle), "{needle}: {err}");
    }
    let missing =
        Policy::from_toml("[[robust]]\nnorm = \"linf\"\nepsilon = 0.25\nmin_accuracy = 0.5")
            .unwrap();
    let err = check(&record, &missing, None, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no worst-case result for linf ε=0.25"),
        "{err}"
    );
    let err = check(&record, &Policy::default(), None, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nothing to check"), "{err}");
}

#[test]
fn junit_has_one_case_per_check_and_markdown_a_row_per_check() {
    let baseline = shipped();
    let mut worse = baseline.clone();
    lose(&mut worse, 0, 40);
    let policy = Policy {
        min_clean_accuracy: Some(0.9),
        ..Policy::default()
    };
    let outcome = check(&worse, &policy, Some(&baseline), false).unwrap();
    let xml = junit_xml(&outcome);
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let cases: Vec<roxmltree::Node> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .collect();
    assert_eq!(cases.len(), outcome.checks.len());
    let failures = doc
        .descendants()
        .filter(|n| n.has_tag_name("failure"))
        .count();
    assert_eq!(failures, outcome.failures());
    let suite = doc
        .descendants()
        .find(|n| n.has_tag_name("testsuite"))
        .unwrap();
    assert_eq!(
        suite.attribute("tests"),
        Some(outcome.checks.len().to_string().as_str())
    );
    assert_eq!(suite.attribute("failures"), Some("1"));
    let md = markdown(&outcome);
    assert_eq!(
        md.lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| check"))
            .count(),
        outcome.checks.len()
    );
    assert!(md.contains("FAILED"));
}
