//! The CI gate, from run records alone: absolute thresholds on clean and robust
//! accuracy, and regressions against a baseline record judged with McNemar's exact
//! test on the per-sample results, so a gate neither flakes on noise nor hides a
//! real drop.
//!
//! ```
//! use gauntlet_check::Policy;
//! let policy = Policy::from_toml(r#"
//!     alpha = 0.05
//!     min_clean_accuracy = 0.95
//!     max_drop = 0.01
//!     [[robust]]
//!     norm = "linf"
//!     epsilon = "8/255"
//!     min_accuracy = 0.40
//! "#).unwrap();
//! assert_eq!(policy.robust.len(), 1);
//! ```

mod output;
mod stats;

use gauntlet_record::{Norm, RunRecord};
use serde::Deserialize;

pub use output::{junit_xml, markdown, table};
pub use stats::{binomial_at_least, binomial_at_most, clopper_pearson, paired_drop, PairedDrop};

/// Errors of the gate: the policy is invalid, or the records cannot be compared.
/// (A failed check is not an error: it is a verdict in [`Outcome`].)
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The policy file or flags are invalid.
    #[error("invalid policy: {0}")]
    Policy(String),
    /// The record lacks what the policy asks about.
    #[error("{0}")]
    Missing(String),
    /// The record and the baseline describe different evaluations.
    #[error("the record and the baseline describe different evaluations: {0} (pass --allow-mismatch to compare anyway)")]
    Mismatch(String),
}

/// Result with the gate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// What the gate enforces. Accuracies are fractions in `[0, 1]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Significance level of the regression tests (default 0.05): a drop fails the
    /// gate only when the whole `1 − alpha` confidence interval lies above `max_drop`.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Minimum clean accuracy.
    #[serde(default)]
    pub min_clean_accuracy: Option<f64>,
    /// Minimum robust accuracies.
    #[serde(default)]
    pub robust: Vec<RobustThreshold>,
    /// With a baseline: the largest drop in accuracy tolerated (default 0: any
    /// statistically significant drop fails).
    #[serde(default)]
    pub max_drop: f64,
}

fn default_alpha() -> f64 {
    0.05
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            alpha: default_alpha(),
            min_clean_accuracy: None,
            robust: Vec::new(),
            max_drop: 0.0,
        }
    }
}

/// A minimum robust accuracy at one norm and ε.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RobustThreshold {
    /// The threat model's norm.
    pub norm: Norm,
    /// ε as a number or a fraction such as `"8/255"`.
    pub epsilon: Epsilon,
    /// Which result to read: the per-sample worst case (default) or one attack.
    #[serde(default)]
    pub attack: AttackSelector,
    /// Minimum robust accuracy.
    pub min_accuracy: f64,
}

/// The name of the per-sample worst case over every attack of a norm.
pub const WORST_CASE: &str = "worst-case";

/// Which robust accuracy a threshold reads: `worst-case` (the per-sample worst
/// case over every attack of the norm) or an attack's registry name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "String")]
pub enum AttackSelector {
    /// The per-sample worst case, [`WORST_CASE`].
    #[default]
    WorstCase,
    /// One attack's own robust accuracy.
    Attack(String),
}

impl From<String> for AttackSelector {
    fn from(name: String) -> Self {
        if name == WORST_CASE {
            Self::WorstCase
        } else {
            Self::Attack(name)
        }
    }
}

impl std::fmt::Display for AttackSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::WorstCase => f.write_str(WORST_CASE),
            Self::Attack(name) => f.write_str(name),
        }
    }
}

/// ε in a policy: a number or a fraction `"a/b"`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Epsilon {
    /// A number.
    Value(f64),
    /// A fraction such as `"8/255"`.
    Text(String),
}

impl Epsilon {
    /// The value.
    pub fn value(&self) -> Result<f64> {
        match self {
            Self::Value(v) => Ok(*v),
            Self::Text(text) => parse_epsilon(text),
        }
    }
}

/// Parse `0.3` or `8/255`.
pub fn parse_epsilon(text: &str) -> Result<f64> {
    gauntlet_record::parse_epsilon(text).ok_or_else(|| {
        Error::Policy(format!(
            "ε '{text}' is not a number or a fraction such as 8/255"
        ))
    })
}

impl Policy {
    /// Parse a policy file.
    pub fn from_toml(text: &str) -> Result<Self> {
        let policy: Self = toml::from_str(text).map_err(|e| {
            // Point at the place; toml's own message quotes the whole line.
            let before = &text[..e.span().map_or(0, |s| s.start).min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            Error::Policy(format!("line {line}, column {column}: {}", e.message()))
        })?;
        policy.validate()?;
        Ok(policy)
    }

    /// Check every value is in range.
    pub fn validate(&self) -> Result<()> {
        let fraction = |name: &str, v: f64| -> Result<()> {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(Error::Policy(format!(
                    "{name} = {v} is outside [0, 1] (accuracies are fractions: 0.95, not 95)"
                )))
            }
        };
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(Error::Policy(format!(
                "alpha = {} is outside (0, 1); 0.05 is usual",
                self.alpha
            )));
        }
        if let Some(v) = self.min_clean_accuracy {
            fraction("min_clean_accuracy", v)?;
        }
        fraction("max_drop", self.max_drop)?;
        for r in &self.robust {
            fraction("robust.min_accuracy", r.min_accuracy)?;
            r.epsilon.value()?;
        }
        Ok(())
    }

    /// Whether the policy checks anything without a baseline.
    pub fn has_thresholds(&self) -> bool {
        self.min_clean_accuracy.is_some() || !self.robust.is_empty()
    }
}

/// What a check compared.
#[derive(Clone, Debug, PartialEq)]
pub enum CheckKind {
    /// An absolute minimum.
    Threshold {
        /// The minimum.
        minimum: f64,
    },
    /// A paired comparison with the baseline.
    Regression {
        /// The baseline's accuracy.
        baseline: f64,
        /// The tolerated drop.
        max_drop: f64,
        /// The test, when the samples could be paired.
        test: Option<PairedDrop>,
    },
}

/// One check and its verdict.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    /// What is checked, e.g. `robust accuracy linf ε=0.3 (worst-case)`.
    pub name: String,
    /// A short machine-friendly group (`clean`, `robust.linf`).
    pub group: String,
    /// The value now.
    pub now: f64,
    /// Threshold or regression.
    pub kind: CheckKind,
    /// Whether it passed.
    pub passed: bool,
    /// One sentence saying why.
    pub detail: String,
}

/// The gate's result.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The record's label (its model path).
    pub label: String,
    /// Every check, thresholds first.
    pub checks: Vec<Check>,
    /// Significance level used.
    pub alpha: f64,
    /// Differences with the baseline that `--allow-mismatch` let through.
    pub mismatches: Vec<String>,
}

impl Outcome {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    /// Number of failed checks.
    pub fn failures(&self) -> usize {
        self.checks.iter().filter(|c| !c.passed).count()
    }
}

/// A per-sample result series of a record.
struct Metric<'a> {
    name: String,
    group: String,
    accuracy: f64,
    per_sample: &'a [bool],
}

fn same_epsilon(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn metrics(record: &RunRecord) -> Vec<Metric<'_>> {
    let mut out = Vec::new();
    if let Some(clean) = &record.clean {
        out.push(Metric {
            name: "clean accuracy".into(),
            group: "clean".into(),
            accuracy: clean.accuracy,
            per_sample: &clean.correct,
        });
    }
    if let Some(r) = &record.robustness {
        for w in &r.worst_case {
            out.push(Metric {
                name: format!(
                    "robust accuracy {} ε={} ({WORST_CASE})",
                    w.norm,
                    format_epsilon(w.epsilon)
                ),
                group: format!("robust.{}", w.norm),
                accuracy: w.robust_accuracy,
                per_sample: &w.robust,
            });
        }
    }
    out
}

/// ε without float noise.
pub fn format_epsilon(value: f64) -> String {
    let text = format!("{value:.6}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// What must agree for two records to be compared sample by sample.
fn mismatches(record: &RunRecord, baseline: &RunRecord) -> Vec<String> {
    let mut out = Vec::new();
    if record.model.input_shape != baseline.model.input_shape {
        out.push(format!(
            "model input shape {:?} vs baseline {:?}",
            record.model.input_shape, baseline.model.input_shape
        ));
    }
    if record.dataset.sha256 != baseline.dataset.sha256 {
        out.push(format!(
            "dataset sha256 {}… vs baseline {}…",
            &record
                .dataset
                .sha256
                .get(..12)
                .unwrap_or(&record.dataset.sha256),
            &baseline
                .dataset
                .sha256
                .get(..12)
                .unwrap_or(&baseline.dataset.sha256)
        ));
    }
    if record.dataset.num_samples != baseline.dataset.num_samples {
        out.push(format!(
            "{} samples vs baseline {}",
            record.dataset.num_samples, baseline.dataset.num_samples
        ));
    }
    let suite = |r: &RunRecord| {
        r.robustness
            .as_ref()
            .map(|rb| (rb.suite.name.clone(), rb.suite.sha256.clone()))
    };
    if suite(record) != suite(baseline) {
        let describe = |s: Option<(String, Option<String>)>| match s {
            None => "no attack suite".to_string(),
            Some((name, hash)) => format!(
                "suite '{name}'{}",
                hash.map(|h| format!(" ({}…)", h.get(..12).unwrap_or(&h)))
                    .unwrap_or_default()
            ),
        };
        out.push(format!(
            "{} vs baseline {}",
            describe(suite(record)),
            describe(suite(baseline))
        ));
    }
    let grid = |r: &RunRecord| -> Vec<(Norm, String)> {
        r.robustness
            .iter()
            .flat_map(|rb| rb.worst_case.iter())
            .map(|w| (w.norm, format_epsilon(w.epsilon)))
            .collect()
    };
    if grid(record) != grid(baseline) {
        let show = |g: Vec<(Norm, String)>| {
            g.iter()
                .map(|(n, e)| format!("{n} {e}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push(format!(
            "ε grid [{}] vs baseline [{}]",
            show(grid(record)),
            show(grid(baseline))
        ));
    }
    out
}

/// Run the gate: the policy's thresholds on `record`, and with a `baseline`, a
/// regression check of every metric both records have (clean accuracy and each
/// worst-case robust accuracy).
pub fn check(
    record: &RunRecord,
    policy: &Policy,
    baseline: Option<&RunRecord>,
    allow_mismatch: bool,
) -> Result<Outcome> {
    policy.validate()?;
    if !policy.has_thresholds() && baseline.is_none() {
        return Err(Error::Policy(
            "nothing to check: give thresholds (--policy FILE, --min-clean, --min-robust) and/or --baseline BASELINE.json".into(),
        ));
    }
    let mut checks = Vec::new();
    if let Some(minimum) = policy.min_clean_accuracy {
        let clean = record
            .clean
            .as_ref()
            .ok_or_else(|| Error::Missing("the record has no clean accuracy".into()))?;
        checks.push(threshold(
            "clean accuracy".into(),
            "clean".into(),
            clean.accuracy,
            minimum,
        ));
    }
    for wanted in &policy.robust {
        let eps = wanted.epsilon.value()?;
        let robustness = record.robustness.as_ref().ok_or_else(|| {
            Error::Missing(
                "the policy has robust thresholds but the record has no attack results (evaluate with --suite)".into(),
            )
        })?;
        let found = match &wanted.attack {
            AttackSelector::WorstCase => robustness
                .worst_case
                .iter()
                .find(|w| w.norm == wanted.norm && same_epsilon(w.epsilon, eps))
                .map(|w| w.robust_accuracy),
            AttackSelector::Attack(name) => robustness
                .attacks
                .iter()
                .find(|a| {
                    &a.attack == name && a.norm == wanted.norm && same_epsilon(a.epsilon, eps)
                })
                .map(|a| a.robust_accuracy),
        };
        let accuracy = found.ok_or_else(|| {
            let available: Vec<String> = robustness
                .worst_case
                .iter()
                .map(|w| format!("{} {}", w.norm, format_epsilon(w.epsilon)))
                .collect();
            Error::Missing(format!(
                "the record has no {} result for {} ε={} (it has: {})",
                wanted.attack,
                wanted.norm,
                format_epsilon(eps),
                available.join(", ")
            ))
        })?;
        checks.push(threshold(
            format!(
                "robust accuracy {} ε={} ({})",
                wanted.norm,
                format_epsilon(eps),
                wanted.attack
            ),
            format!("robust.{}", wanted.norm),
            accuracy,
            wanted.min_accuracy,
        ));
    }
    let mut found_mismatches = Vec::new();
    if let Some(baseline) = baseline {
        found_mismatches = mismatches(record, baseline);
        if !found_mismatches.is_empty() && !allow_mismatch {
            return Err(Error::Mismatch(found_mismatches.join("; ")));
        }
        let base_metrics = metrics(baseline);
        for now in metrics(record) {
            let Some(base) = base_metrics.iter().find(|b| b.name == now.name) else {
                continue;
            };
            checks.push(regression(&now, base, policy));
        }
        if base_metrics.is_empty() {
            return Err(Error::Missing(
                "the baseline has no clean or robust results to compare with".into(),
            ));
        }
    }
    Ok(Outcome {
        label: record.model.path.clone(),
        checks,
        alpha: policy.alpha,
        mismatches: found_mismatches,
    })
}

fn threshold(name: String, group: String, now: f64, minimum: f64) -> Check {
    let passed = now >= minimum;
    Check {
        detail: format!(
            "{:.2}% {} the minimum {:.2}%",
            100.0 * now,
            if passed { "meets" } else { "is below" },
            100.0 * minimum
        ),
        name,
        group,
        now,
        kind: CheckKind::Threshold { minimum },
        passed,
    }
}

fn regression(now: &Metric<'_>, base: &Metric<'_>, policy: &Policy) -> Check {
    let paired = now.per_sample.len() == base.per_sample.len() && !now.per_sample.is_empty();
    let (test, passed, detail) = if paired {
        let test = paired_drop(base.per_sample, now.per_sample, policy.alpha);
        let (low, high) = test.interval;
        // Fail only when the whole interval lies above the tolerated drop.
        let passed = low <= policy.max_drop;
        let detail = format!(
            "drop {:+.2} points, {:.0}% CI [{:+.2}, {:+.2}], McNemar p = {:.3} ({} lost, {} gained): {}",
            100.0 * test.drop,
            100.0 * (1.0 - policy.alpha),
            100.0 * low,
            100.0 * high,
            test.p_value,
            test.lost,
            test.gained,
            if passed {
                format!(
                    "not significantly more than the allowed {:.2} points",
                    100.0 * policy.max_drop
                )
            } else {
                format!(
                    "significantly more than the allowed {:.2} points",
                    100.0 * policy.max_drop
                )
            }
        );
        (Some(test), passed, detail)
    } else {
        // Without paired samples (only with --allow-mismatch) the raw difference decides.
        let drop = base.accuracy - now.accuracy;
        let passed = drop <= policy.max_drop;
        (
            None,
            passed,
            format!(
                "drop {:+.2} points (samples differ, so no paired test: raw difference against the allowed {:.2} points)",
                100.0 * drop,
                100.0 * policy.max_drop
            ),
        )
    };
    Check {
        name: now.name.clone(),
        group: now.group.clone(),
        now: now.accuracy,
        kind: CheckKind::Regression {
            baseline: base.accuracy,
            max_drop: policy.max_drop,
            test,
        },
        passed,
        detail,
    }
}
