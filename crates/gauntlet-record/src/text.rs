//! Text helpers for the values a record holds, shared by everything that reads
//! or renders records (the evaluation runner, the report, the CI gate).

/// `value` as JSON for a record (an attack's parameters, a target). Serde
/// refuses only maps with non-string keys, which none of these have; should one
/// appear, the record holds the error's text rather than a silent `null`.
pub fn json_value<T: serde::Serialize + ?Sized>(value: &T) -> serde_json::Value {
    serde_json::to_value(value)
        .unwrap_or_else(|e| serde_json::Value::String(format!("not serialisable: {e}")))
}

/// An ε as people write it: a non-negative number (`0.3`) or a fraction
/// (`8/255`). `None` for anything else (negative, infinite, `x/0`, not a number);
/// callers say in their own words what was expected.
pub fn parse_epsilon(text: &str) -> Option<f64> {
    let text = text.trim();
    let value = match text.split_once('/') {
        Some((a, b)) => {
            let (a, b): (f64, f64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
            if b == 0.0 {
                return None;
            }
            a / b
        }
        None => text.parse().ok()?,
    };
    (value.is_finite() && value >= 0.0).then_some(value)
}

/// Escape text for HTML and XML alike (report pages, SVG, JUnit): the five
/// markup characters, and control characters other than tab, newline and
/// carriage return (not allowed in XML 1.0) replaced by U+FFFD.
pub fn escape_markup(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            // &#39; rather than &apos;, which HTML 4 lacks.
            '\'' => out.push_str("&#39;"),
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t' | '\r') => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epsilons_parse_as_numbers_or_fractions() {
        assert_eq!(parse_epsilon("8/255"), Some(8.0 / 255.0));
        assert_eq!(parse_epsilon(" 0.3 "), Some(0.3));
        assert_eq!(parse_epsilon("0"), Some(0.0));
        for bad in ["", "-0.1", "8/0", "inf", "NaN", "a/b", "1/2/3", "eps"] {
            assert_eq!(parse_epsilon(bad), None, "{bad} should be rejected");
        }
    }

    #[test]
    fn markup_is_escaped_and_control_characters_replaced() {
        assert_eq!(
            escape_markup("<a href=\"x\">O'Neil & co</a>"),
            "&lt;a href=&quot;x&quot;&gt;O&#39;Neil &amp; co&lt;/a&gt;"
        );
        assert_eq!(escape_markup("a\u{1}b\tc\n"), "a\u{FFFD}b\tc\n");
    }
}
