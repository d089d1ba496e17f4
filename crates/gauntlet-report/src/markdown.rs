//! `summary.md`: GitHub-flavoured Markdown for a pull-request comment.

use std::fmt::Write as _;

use crate::charts::RenderedChart;
use crate::html::verdict;
use crate::{epsilon, percent, ReportInput, Section};

/// Markdown table cells cannot hold `|` or line breaks.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

pub(crate) fn summary(inputs: &[ReportInput], charts: &[(Section, RenderedChart)]) -> String {
    let mut out = String::from("## Gauntlet robustness report\n\n");
    for input in inputs {
        let _ = writeln!(
            out,
            "**{}**: {}\n",
            cell(&input.label),
            verdict(&input.record)
        );
    }
    // One table: a row per record, a column per (norm, ε) of the worst case.
    let mut columns: Vec<(gauntlet_record::Norm, f64)> = Vec::new();
    for input in inputs {
        if let Some(r) = &input.record.robustness {
            for w in &r.worst_case {
                if !columns
                    .iter()
                    .any(|(n, e)| *n == w.norm && (e - w.epsilon).abs() < 1e-12)
                {
                    columns.push((w.norm, w.epsilon));
                }
            }
        }
    }
    let evaluated: Vec<&ReportInput> = inputs.iter().filter(|i| i.record.clean.is_some()).collect();
    if !evaluated.is_empty() {
        out.push_str("| record | clean |");
        for (norm, eps) in &columns {
            let _ = write!(out, " {} ε={} |", norm.symbol(), epsilon(*eps));
        }
        out.push_str("\n|---|---:|");
        out.push_str(&"---:|".repeat(columns.len()));
        out.push('\n');
        for input in evaluated {
            let clean = input
                .record
                .clean
                .as_ref()
                .map(|c| c.accuracy)
                .unwrap_or(f64::NAN);
            let _ = write!(out, "| {} | {} |", cell(&input.label), percent(clean));
            for (norm, eps) in &columns {
                let value = input
                    .record
                    .robustness
                    .as_ref()
                    .and_then(|r| {
                        r.worst_case
                            .iter()
                            .find(|w| w.norm == *norm && (w.epsilon - eps).abs() < 1e-12)
                    })
                    .map(|w| percent(w.robust_accuracy))
                    .unwrap_or_else(|| "—".into());
                let _ = write!(out, " {value} |");
            }
            out.push('\n');
        }
        out.push_str(
            "\nRobust accuracy is the per-sample worst case over every attack of the norm.\n\n",
        );
    }
    // The key chart: the comparison when there is one, else the first robustness chart.
    let key = charts
        .iter()
        .find(|(_, c)| c.chart.name.starts_with("compare-"))
        .or_else(|| charts.iter().find(|(s, _)| *s == Section::Robustness))
        .or_else(|| charts.first());
    if let Some((_, chart)) = key {
        let _ = writeln!(
            out,
            "![{}]({}.png)\n",
            cell(&chart.chart.title),
            chart.chart.name
        );
    }
    let warnings: Vec<String> = inputs
        .iter()
        .flat_map(|i| {
            let sanity = i
                .record
                .robustness
                .iter()
                .flat_map(|r| r.warnings.iter())
                .map(move |w| {
                    format!(
                        "- **{}** `{}`: {} Remedy: {}",
                        cell(&i.label),
                        w.code,
                        w.message,
                        w.remedy
                    )
                });
            let training = i
                .record
                .training
                .iter()
                .flat_map(|t| t.warnings.iter())
                .map(move |w| format!("- **{}** training: {w}", cell(&i.label)));
            sanity.chain(training).collect::<Vec<_>>()
        })
        .collect();
    if !warnings.is_empty() {
        let _ = writeln!(out, "### ⚠ Sanity warnings\n\n{}\n", warnings.join("\n"));
    }
    out.push_str("Full report: `report.html` (self-contained; open it in any browser).\n");
    out
}
