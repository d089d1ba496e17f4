//! The scanner on the corpus of public fixtures (picklescan, modelscan,
//! fickling) and our own tricks, against the labels a CPython-unpickler oracle
//! gave them (`benches/scan_corpus/`; docs/scan.md).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use gauntlet_scan::scan_file;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

fn labels() -> Vec<(String, String)> {
    std::fs::read_to_string(corpus().join("labels.tsv"))
        .unwrap()
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| {
            let mut fields = line.split('\t');
            (
                fields.next().unwrap().to_string(),
                fields.next().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn every_malicious_file_is_refused_and_benign_ones_are_loaded() {
    let labels = labels();
    assert!(labels.len() >= 150, "{} corpus files", labels.len());
    let mut wrong = Vec::new();
    let mut malicious = 0;
    for (file, label) in &labels {
        // Every file, whatever its label: a verdict or an error, never a panic.
        let outcome = scan_file(&corpus().join(file));
        match (label.as_str(), &outcome) {
            ("malicious", Ok(report)) if report.refuse => malicious += 1,
            ("malicious", _) => wrong.push(format!("{file}: malicious, not refused: {outcome:?}")),
            ("benign", Ok(report)) if report.refuse => {
                wrong.push(format!("{file}: benign, refused: {:?}", report.findings))
            }
            ("benign", Err(e)) => wrong.push(format!("{file}: benign, cannot scan: {e}")),
            ("benign" | "fails", _) => {}
            (other, _) => wrong.push(format!("{file}: unknown label {other}")),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(malicious >= 130, "{malicious} malicious files");
}
