//! Attack suites: frozen TOML presets (`attacks/*.toml`).
//!
//! ```toml
//! name = "quick"
//! description = "FGSM and PGD-Linf on the MNIST epsilon grid"
//!
//! [[attack]]
//! name = "pgd-linf"
//! eps = [0.1, "8/255", 0.3]      # numbers or fractions
//! target = "none"                # or "random", "least-likely", or a class index
//! params = { steps = 40, restarts = 1 }
//! schedule = "still-robust"      # minimal-perturbation attacks only: run on the
//!                                # samples still robust (default "all-correct")
//! ```
//! Unknown keys anywhere are rejected with a message naming the key.

use std::path::Path;

use gauntlet_attacks::build_attack;
use gauntlet_record::SuiteRecord;
use serde::Deserialize;

use crate::robust::{Schedule, SuiteEntry, TargetSpec};
use crate::{Error, Result};

/// A parsed suite (before the attacks are built).
#[derive(Clone, Debug, PartialEq)]
pub struct Suite {
    /// Preset name.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// Attacks in the order they run.
    pub attacks: Vec<SuiteAttack>,
}

/// One attack of a suite.
#[derive(Clone, Debug, PartialEq)]
pub struct SuiteAttack {
    /// Registry name.
    pub name: String,
    /// ε grid.
    pub epsilons: Vec<f64>,
    /// Targeting.
    pub target: TargetSpec,
    /// Parameter overrides.
    pub params: serde_json::Value,
    /// Which samples a minimal-perturbation attack runs on.
    pub schedule: Schedule,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSuite {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(rename = "attack")]
    attacks: Vec<RawAttack>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAttack {
    name: String,
    #[serde(default)]
    eps: Vec<toml::Value>,
    #[serde(default)]
    target: Option<toml::Value>,
    #[serde(default)]
    params: Option<toml::Table>,
    #[serde(default)]
    schedule: Option<Schedule>,
}

/// Parse an ε written as a number or a fraction such as `"8/255"`.
pub fn parse_epsilon(text: &str) -> Result<f64> {
    gauntlet_record::parse_epsilon(text).ok_or_else(|| bad_eps(text.trim()))
}

fn bad_eps(text: &str) -> Error {
    Error::Invalid(format!(
        "epsilon '{text}' is not valid: expected a non-negative number or a fraction like 8/255"
    ))
}

/// Parse a target written as `none`, `random`, `least-likely` or a class index.
pub fn parse_target(text: &str) -> Result<TargetSpec> {
    match text {
        "none" | "untargeted" => Ok(TargetSpec::None),
        "random" => Ok(TargetSpec::Random),
        "least-likely" => Ok(TargetSpec::LeastLikely),
        other => other
            .parse::<u32>()
            .map(TargetSpec::Class)
            .map_err(|_| Error::Invalid(format!("target '{other}' is not valid: expected none, random, least-likely or a class index"))),
    }
}

impl Suite {
    /// Parse suite TOML; `origin` names the file in messages.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self> {
        let raw: RawSuite = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((1, 1), |span| {
                gauntlet_core::line_and_column(text, span.start)
            });
            Error::Invalid(format!(
                "{}:{line}:{column}: {}",
                origin.display(),
                e.message()
            ))
        })?;
        if raw.attacks.is_empty() {
            return Err(Error::Invalid(format!(
                "{}: the suite has no [[attack]] entries",
                origin.display()
            )));
        }
        let mut attacks = Vec::new();
        for (i, a) in raw.attacks.into_iter().enumerate() {
            let ctx = |m: String| {
                Error::Invalid(format!(
                    "{}: attack {} ('{}'): {m}",
                    origin.display(),
                    i + 1,
                    a.name
                ))
            };
            let epsilons = a
                .eps
                .iter()
                .map(|v| match v {
                    toml::Value::Float(f) => parse_epsilon(&f.to_string()),
                    toml::Value::Integer(n) => parse_epsilon(&n.to_string()),
                    toml::Value::String(s) => parse_epsilon(s),
                    other => Err(bad_eps(&other.to_string())),
                })
                .collect::<Result<Vec<f64>>>()
                .map_err(|e| ctx(e.to_string()))?;
            let target = match &a.target {
                None => TargetSpec::None,
                Some(toml::Value::String(s)) => parse_target(s).map_err(|e| ctx(e.to_string()))?,
                Some(toml::Value::Integer(n)) => {
                    parse_target(&n.to_string()).map_err(|e| ctx(e.to_string()))?
                }
                Some(other) => return Err(ctx(format!("target {other} is not valid"))),
            };
            let params = match a.params {
                None => serde_json::Value::Null,
                Some(table) => serde_json::to_value(table).map_err(|e| ctx(e.to_string()))?,
            };
            // Build once now so bad names and parameters surface before any compute.
            let built = build_attack(&a.name, &params).map_err(|e| ctx(e.to_string()))?;
            if a.schedule.is_some()
                && built.kind() != gauntlet_attacks::AttackKind::MinimalPerturbation
            {
                return Err(ctx("schedule applies to minimal-perturbation attacks only; fixed-epsilon attacks always run on the samples still robust at each epsilon".into()));
            }
            if epsilons.is_empty() {
                return Err(ctx("eps is empty: give at least one epsilon".into()));
            }
            attacks.push(SuiteAttack {
                name: a.name,
                epsilons,
                target,
                params,
                schedule: a.schedule.unwrap_or_default(),
            });
        }
        Ok(Self {
            name: raw.name,
            description: raw.description,
            attacks,
        })
    }

    /// Read and parse a suite file.
    pub fn from_file(path: &Path) -> Result<Self> {
        // The error names the file and says what is wrong with it.
        let text = gauntlet_core::read_text_limited(path, gauntlet_core::MAX_CONFIG_BYTES, "suite")
            .map_err(|e| Error::Invalid(e.to_string()))?;
        Self::from_toml(&text, path)
    }

    /// A suite of one attack, as `gauntlet attack` runs it; the attack's name and
    /// parameters are checked against the registry here, before any compute.
    pub fn single(attack: SuiteAttack) -> Result<Self> {
        build_attack(&attack.name, &attack.params)?;
        Ok(Self {
            name: attack.name.clone(),
            description: format!("single attack: {}", attack.name),
            attacks: vec![attack],
        })
    }

    /// What the run record says about this suite: its name and description, and
    /// for a suite read from `file`, the file and its sha256.
    pub fn record(&self, file: Option<&Path>) -> Result<SuiteRecord> {
        let sha256 = file.map(gauntlet_core::sha256_file).transpose()?;
        Ok(SuiteRecord {
            name: self.name.clone(),
            description: self.description.clone(),
            path: file.map(|p| p.display().to_string()),
            sha256,
        })
    }

    /// Build the attacks.
    pub fn entries(&self) -> Result<Vec<SuiteEntry>> {
        self.attacks
            .iter()
            .map(|a| {
                Ok(SuiteEntry {
                    attack: build_attack(&a.name, &a.params)?,
                    epsilons: a.epsilons.clone(),
                    target: a.target,
                    schedule: a.schedule,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_and_numbers_parse() {
        assert_eq!(parse_epsilon("8/255").unwrap(), 8.0 / 255.0);
        assert_eq!(parse_epsilon(" 0.3 ").unwrap(), 0.3);
        for bad in ["-0.1", "1/0", "eight", "nan", "inf"] {
            assert!(parse_epsilon(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn suites_parse_and_unknown_keys_are_named() {
        let text = r#"
            name = "t"
            [[attack]]
            name = "pgd-linf"
            eps = [0.1, "8/255", 1]
            target = "random"
            params = { steps = 5 }
        "#;
        let suite = Suite::from_toml(text, Path::new("t.toml")).unwrap();
        assert_eq!(suite.attacks[0].epsilons, vec![0.1, 8.0 / 255.0, 1.0]);
        assert_eq!(suite.attacks[0].target, TargetSpec::Random);
        assert_eq!(suite.entries().unwrap()[0].attack.parameters()["steps"], 5);

        let err = Suite::from_toml(&text.replace("target", "tagret"), Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("tagret"), "{err}");
        let err = Suite::from_toml(&text.replace("steps = 5", "stepz = 5"), Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("stepz") && err.contains("t.toml"), "{err}");
        let err = Suite::from_toml(&text.replace("0.1,", "-0.1,"), Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("-0.1"), "{err}");
        let err = Suite::from_toml(
            &text.replace(
                "params = {",
                "schedule = \"still-robust\"\n            params = {",
            ),
            Path::new("t.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("minimal-perturbation attacks only"), "{err}");
        let err = Suite::from_toml(&text.replace("pgd-linf", "pgd-l3"), Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("pgd-l3"), "{err}");
    }
}
