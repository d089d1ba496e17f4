//! Reports rendered from Gauntlet run records alone: a self-contained
//! `report.html` (inline SVG charts and images, no scripts, no network),
//! `summary.md` for a pull-request comment, and every chart as `.svg` and `.png`.
//!
//! The same records always give the same bytes: nothing here reads the clock, the
//! environment or the system's fonts (the charts' font is compiled in).
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let text = std::fs::read_to_string("reports/demo/standard/results.json")?;
//! let record = gauntlet_record::RunRecord::from_json(&text)?;
//! let input = gauntlet_report::ReportInput::new(record);
//! for file in gauntlet_report::build(&[input])?.files {
//!     println!("{} ({} bytes)", file.name, file.bytes.len());
//! }
//! # Ok(()) }
//! ```

mod charts;
mod figures;
mod html;
mod markdown;

use gauntlet_record::RunRecord;

pub use charts::{Chart, ChartKind, RenderedChart, Series, Stroke};

/// Errors while building a report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Nothing to report.
    #[error("no records given: a report needs at least one run record")]
    NoRecords,
    /// A chart or image could not be drawn.
    #[error("cannot render {0}")]
    Render(String),
}

/// Result with the report [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// One record and the name it goes by in the report.
#[derive(Clone, Debug)]
pub struct ReportInput {
    /// Shown in legends and headings (default: the model's file name and the run kind).
    pub label: String,
    /// The record.
    pub record: RunRecord,
}

impl ReportInput {
    /// Label a record by its model's file name (`mnist-cnn`) and, for training and
    /// poisoning runs, the kind (`mnist-cnn-pgd-at (train)`).
    pub fn new(record: RunRecord) -> Self {
        let stem = std::path::Path::new(&record.model.path)
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| !s.is_empty())
            .unwrap_or("model")
            .to_string();
        let label = match record.kind {
            gauntlet_record::RunKind::Eval => stem,
            gauntlet_record::RunKind::Train => format!("{stem} (train)"),
            gauntlet_record::RunKind::Poison => format!("{stem} (poison)"),
        };
        Self { label, record }
    }
}

/// One output file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportFile {
    /// File name inside the report directory.
    pub name: String,
    /// Contents.
    pub bytes: Vec<u8>,
}

/// Everything a report consists of, in a fixed order.
#[derive(Clone, Debug)]
pub struct Report {
    /// `report.html`, `summary.md`, then each chart's `.svg` and `.png`.
    pub files: Vec<ReportFile>,
}

/// Build the report for one or more records. With several, they are also drawn
/// on shared charts (worst-case robust accuracy vs ε, training curves) and labels
/// are made unique.
pub fn build(inputs: &[ReportInput]) -> Result<Report> {
    if inputs.is_empty() {
        return Err(Error::NoRecords);
    }
    let inputs = unique_labels(inputs);
    let charts = figures::charts(&inputs)
        .into_iter()
        .map(|(section, chart)| chart.render().map(|rendered| (section, rendered)))
        .collect::<Result<Vec<_>>>()?;
    let html = html::page(&inputs, &charts)?;
    let summary = markdown::summary(&inputs, &charts);
    let mut files = vec![
        ReportFile {
            name: "report.html".into(),
            bytes: html.into_bytes(),
        },
        ReportFile {
            name: "summary.md".into(),
            bytes: summary.into_bytes(),
        },
    ];
    for (_, rendered) in charts {
        files.push(ReportFile {
            name: format!("{}.svg", rendered.chart.name),
            bytes: rendered.svg.into_bytes(),
        });
        files.push(ReportFile {
            name: format!("{}.png", rendered.chart.name),
            bytes: rendered.png,
        });
    }
    Ok(Report { files })
}

/// Where a chart appears in the HTML.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Section {
    Robustness,
    Training,
    Poisoning,
}

fn unique_labels(inputs: &[ReportInput]) -> Vec<ReportInput> {
    let mut out: Vec<ReportInput> = Vec::with_capacity(inputs.len());
    for input in inputs {
        let mut label = input.label.clone();
        let mut n = 2;
        while out.iter().any(|o| o.label == label) {
            label = format!("{} #{n}", input.label);
            n += 1;
        }
        out.push(ReportInput {
            label,
            record: input.record.clone(),
        });
    }
    out
}

/// `0.974` → `97.4%`; non-finite → `n/a`.
pub(crate) fn percent(fraction: f64) -> String {
    if fraction.is_finite() {
        format!("{:.1}%", 100.0 * fraction)
    } else {
        "n/a".into()
    }
}

/// ε as written in suites: up to 4 significant decimals, and k/255 when it is one.
pub(crate) fn epsilon(value: f64) -> String {
    if !value.is_finite() {
        return "n/a".into();
    }
    let text = format!("{value:.4}");
    // 8/255 reads better than 0.0314, but 0.2 stays 0.2 (it is also 51/255).
    let short = format!("{value:.3}")
        .parse::<f64>()
        .is_ok_and(|s| (s - value).abs() < 1e-9);
    let k = value * 255.0;
    if !short && value > 0.0 && value < 1.0 && (k - k.round()).abs() < 1e-6 {
        return format!("{}/255", k.round());
    }
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A file-name-safe slug.
pub(crate) fn slug(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epsilons_read_as_written_in_suites() {
        assert_eq!(epsilon(0.2), "0.2");
        assert_eq!(epsilon(8.0 / 255.0), "8/255");
        assert_eq!(epsilon(0.5), "0.5");
        assert_eq!(epsilon(1.5), "1.5");
        assert_eq!(epsilon(0.03), "0.03");
        assert_eq!(epsilon(f64::NAN), "n/a");
        assert_eq!(percent(0.974), "97.4%");
        assert_eq!(slug("mnist-cnn (train) #2"), "mnist-cnn-train-2");
    }
}
