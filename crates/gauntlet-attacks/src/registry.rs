//! Attacks by name, with parameter overrides from suites and the command line.

use serde_json::Value;

use gauntlet_core::Norm;

use crate::apgd::Apgd;
use crate::fab::Fab;
use crate::fmn::Fmn;
use crate::minimal::{CarliniWagner, DeepFool};
use crate::pgd::{Pgd, PgdParams};
use crate::square::Square;
use crate::{Attack, Error, Result};

/// Every registered attack name.
pub const NAMES: &[&str] = &[
    "fgsm",
    "bim",
    "pgd-linf",
    "pgd-l2",
    "mifgsm",
    "apgd-ce",
    "apgd-dlr",
    "apgd-t",
    "apgd-ce-l2",
    "apgd-dlr-l2",
    "apgd-t-l2",
    "apgd-ce-l1",
    "apgd-dlr-l1",
    "apgd-t-l1",
    "square-linf",
    "square-l2",
    "deepfool",
    "cw-l2",
    "fmn-linf",
    "fmn-l2",
    "fmn-l1",
    "fab-linf",
    "fab-l2",
    "fab-l1",
    "fab-t-linf",
    "fab-t-l2",
    "fab-t-l1",
];

/// Build an attack by name, applying `overrides` (a JSON object of parameters) on
/// top of its documented defaults. Unknown names and keys are errors that say what
/// would have been accepted.
pub fn build_attack(name: &str, overrides: &Value) -> Result<Box<dyn Attack>> {
    let pgd = match name {
        "fgsm" => Some(Pgd::fgsm()),
        "bim" => Some(Pgd::bim()),
        "pgd-linf" => Some(Pgd::pgd_linf()),
        "pgd-l2" => Some(Pgd::pgd_l2()),
        "mifgsm" => Some(Pgd::mifgsm()),
        _ => None,
    };
    if let Some(attack) = pgd {
        let params: PgdParams = merge(name, attack.params(), overrides)?;
        return Ok(Box::new(attack.with_params(params)?));
    }
    let apgd = match name {
        "apgd-ce" => Some(Apgd::ce(Norm::Linf)),
        "apgd-dlr" => Some(Apgd::dlr(Norm::Linf)),
        "apgd-t" => Some(Apgd::targeted(Norm::Linf)),
        "apgd-ce-l2" => Some(Apgd::ce(Norm::L2)),
        "apgd-dlr-l2" => Some(Apgd::dlr(Norm::L2)),
        "apgd-t-l2" => Some(Apgd::targeted(Norm::L2)),
        "apgd-ce-l1" => Some(Apgd::ce(Norm::L1)),
        "apgd-dlr-l1" => Some(Apgd::dlr(Norm::L1)),
        "apgd-t-l1" => Some(Apgd::targeted(Norm::L1)),
        _ => None,
    };
    if let Some(attack) = apgd {
        let params = merge(name, attack.params(), overrides)?;
        return Ok(Box::new(attack.with_params(params)?));
    }
    if let Some(attack) = Fab::named(name) {
        let params = merge(name, attack.params(), overrides)?;
        return Ok(Box::new(attack.with_params(params)?));
    }
    if let Some(&norm) = Norm::ALL.iter().find(|&&norm| Fmn::name_for(norm) == name) {
        let attack = Fmn::new(norm);
        let params = merge(name, attack.params(), overrides)?;
        return Ok(Box::new(attack.with_params(params)?));
    }
    match name {
        "square-linf" | "square-l2" => {
            let attack = Square::new(if name == "square-l2" {
                Norm::L2
            } else {
                Norm::Linf
            });
            let params = merge(name, attack.params(), overrides)?;
            Ok(Box::new(attack.with_params(params)?))
        }
        "deepfool" => {
            let attack = DeepFool::default();
            let params = merge(name, attack.params(), overrides)?;
            Ok(Box::new(attack.with_params(params)?))
        }
        "cw-l2" => {
            let attack = CarliniWagner::default();
            let params = merge(name, attack.params(), overrides)?;
            Ok(Box::new(attack.with_params(params)?))
        }
        _ => Err(Error::Unknown(name.to_string(), NAMES.join(", "))),
    }
}

/// Overlay `overrides` on `defaults` and deserialise, naming any unknown key.
fn merge<T: serde::Serialize + serde::de::DeserializeOwned>(
    name: &str,
    defaults: &T,
    overrides: &Value,
) -> Result<T> {
    let mut base = serde_json::to_value(defaults).map_err(|e| Error::Invalid(e.to_string()))?;
    let param_err = |message: String| Error::Param {
        attack: name.to_string(),
        message,
    };
    match (overrides, &mut base) {
        (Value::Null, _) => {}
        (Value::Object(over), Value::Object(map)) => {
            for (key, value) in over {
                if !map.contains_key(key) {
                    let known: Vec<&String> = map.keys().collect();
                    return Err(param_err(format!(
                        "unknown parameter '{key}', expected one of {known:?}"
                    )));
                }
                map.insert(key.clone(), value.clone());
            }
        }
        _ => {
            return Err(param_err(
                "parameters must be a table of key = value".into(),
            ))
        }
    }
    serde_json::from_value(base).map_err(|e| param_err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_builds_under_its_own_name_and_the_readme_lists_it() {
        let readme = include_str!("../../../README.md");
        for name in NAMES {
            let attack = build_attack(name, &Value::Null).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(attack.name(), *name);
            // The README's table writes norm twins as `apgd-ce` (`-l2`, `-l1`).
            let listed = readme.contains(&format!("`{name}`"))
                || ["-l2", "-l1"].iter().any(|suffix| {
                    name.strip_suffix(suffix).is_some_and(|base| {
                        readme.contains(&format!("`{base}`"))
                            && readme.contains(&format!("`{suffix}`"))
                    })
                });
            assert!(listed, "{name} is missing from the README's attack table");
        }
    }
}
