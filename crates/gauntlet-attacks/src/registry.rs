//! Attacks by name, with parameter overrides from suites and the command line.

use serde_json::Value;

use crate::pgd::{Pgd, PgdParams};
use crate::{Attack, Error, Result};

/// Every registered attack name.
pub const NAMES: &[&str] = &["fgsm", "bim", "pgd-linf", "pgd-l2", "mifgsm"];

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
    Err(Error::Unknown(name.to_string(), NAMES.join(", ")))
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
