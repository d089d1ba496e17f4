//! The gate's verdicts as a terminal table, JUnit XML and Markdown.

use std::fmt::Write as _;

use crate::{Check, CheckKind, Outcome};

fn percent(v: f64) -> String {
    if v.is_finite() {
        format!("{:.2}%", 100.0 * v)
    } else {
        "n/a".into()
    }
}

/// The "threshold or baseline" column.
fn expected(check: &Check) -> String {
    match &check.kind {
        CheckKind::Threshold { minimum } => format!("≥ {}", percent(*minimum)),
        CheckKind::Regression {
            baseline, max_drop, ..
        } => format!(
            "baseline {}, allowed drop {:.2} pts",
            percent(*baseline),
            100.0 * max_drop
        ),
    }
}

/// The Δ column: now − threshold or now − baseline, in points.
fn delta(check: &Check) -> String {
    let reference = match &check.kind {
        CheckKind::Threshold { minimum } => *minimum,
        CheckKind::Regression { baseline, .. } => *baseline,
    };
    format!("{:+.2}", 100.0 * (check.now - reference))
}

fn verdict(check: &Check) -> &'static str {
    if check.passed {
        "pass"
    } else {
        "FAIL"
    }
}

/// A plain-text table for the terminal.
pub fn table(outcome: &Outcome) -> String {
    let rows: Vec<[String; 5]> = outcome
        .checks
        .iter()
        .map(|c| {
            [
                c.name.clone(),
                expected(c),
                percent(c.now),
                delta(c),
                verdict(c).to_string(),
            ]
        })
        .collect();
    let header = [
        "check".to_string(),
        "threshold / baseline".into(),
        "now".into(),
        "Δ (points)".into(),
        "verdict".into(),
    ];
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String; 5]| -> String {
        let mut out = String::new();
        for (k, (cell, w)) in cells.iter().zip(widths).enumerate() {
            let pad = w - cell.chars().count();
            if k == 0 || k == 1 {
                let _ = write!(out, "{cell}{}  ", " ".repeat(pad));
            } else {
                let _ = write!(out, "{}{cell}  ", " ".repeat(pad));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(&header);
    out.push('\n');
    for row in &rows {
        out.push_str(&line(row));
        out.push('\n');
    }
    for c in outcome.checks.iter().filter(|c| !c.passed) {
        let _ = writeln!(out, "FAIL {}: {}", c.name, c.detail);
    }
    for m in &outcome.mismatches {
        let _ = writeln!(out, "note: compared despite a mismatch: {m}");
    }
    let _ = writeln!(
        out,
        "{}: {} of {} checks passed",
        if outcome.passed() { "PASSED" } else { "FAILED" },
        outcome.checks.len() - outcome.failures(),
        outcome.checks.len()
    );
    out
}

/// JUnit XML with one test case per check (the format CI test-report viewers read).
pub fn junit_xml(outcome: &Outcome) -> String {
    let tests = outcome.checks.len();
    let failures = outcome.failures();
    let suite = gauntlet_record::escape_markup(&format!("gauntlet check: {}", outcome.label));
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"gauntlet check\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\">"
    );
    let _ = writeln!(
        out,
        "  <testsuite name=\"{suite}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" skipped=\"0\">"
    );
    for c in &outcome.checks {
        let kind = match c.kind {
            CheckKind::Threshold { .. } => "threshold",
            CheckKind::Regression { .. } => "regression",
        };
        let name = gauntlet_record::escape_markup(&format!("{} {}", c.name, expected(c)));
        let classname = gauntlet_record::escape_markup(&format!("gauntlet.{kind}.{}", c.group));
        if c.passed {
            let _ = writeln!(
                out,
                "    <testcase classname=\"{classname}\" name=\"{name}\" time=\"0\">\n      <system-out>{}</system-out>\n    </testcase>",
                gauntlet_record::escape_markup(&c.detail)
            );
        } else {
            let _ = writeln!(
                out,
                "    <testcase classname=\"{classname}\" name=\"{name}\" time=\"0\">\n      <failure message=\"{}\" type=\"{kind}\">now {}, {}</failure>\n    </testcase>",
                gauntlet_record::escape_markup(&c.detail),
                percent(c.now),
                gauntlet_record::escape_markup(&c.detail)
            );
        }
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

/// GitHub-flavoured Markdown for a pull-request comment.
pub fn markdown(outcome: &Outcome) -> String {
    let cell = |t: &str| t.replace('|', "\\|");
    let mut out = format!(
        "## Gauntlet check: {}\n\n**{}** — {} of {} checks passed (significance level {}).\n\n",
        if outcome.passed() {
            "passed ✅"
        } else {
            "FAILED ❌"
        },
        cell(&outcome.label),
        outcome.checks.len() - outcome.failures(),
        outcome.checks.len(),
        outcome.alpha
    );
    out.push_str(
        "| check | threshold / baseline | now | Δ (points) | verdict |\n|---|---|---:|---:|---|\n",
    );
    for c in &outcome.checks {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            cell(&c.name),
            cell(&expected(c)),
            percent(c.now),
            delta(c),
            if c.passed { "pass" } else { "**FAIL**" }
        );
    }
    let failed: Vec<&Check> = outcome.checks.iter().filter(|c| !c.passed).collect();
    if !failed.is_empty() {
        out.push_str("\n### Failures\n\n");
        for c in failed {
            let _ = writeln!(out, "- **{}**: {}", cell(&c.name), c.detail);
        }
    }
    let regressions: Vec<&Check> = outcome
        .checks
        .iter()
        .filter(|c| c.passed && matches!(c.kind, CheckKind::Regression { .. }))
        .collect();
    if !regressions.is_empty() {
        out.push_str("\n<details><summary>Regression tests that passed</summary>\n\n");
        for c in regressions {
            let _ = writeln!(out, "- {}: {}", cell(&c.name), c.detail);
        }
        out.push_str("\n</details>\n");
    }
    for m in &outcome.mismatches {
        let _ = writeln!(out, "\n> Compared despite a mismatch: {m}");
    }
    out
}
