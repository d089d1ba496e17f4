//! The self-contained HTML page. Well-formed XHTML-style markup (every element
//! closed, only XML entities), so it parses as HTML and as XML alike.

use std::fmt::Write as _;

use base64::Engine as _;
use gauntlet_record::{GalleryExample, RunKind, RunRecord};

use crate::charts::{encode_png, RenderedChart};
use crate::figures::{attack_lines, norms};
use crate::{epsilon, percent, ReportInput, Result, Section};

const STYLE: &str = "
body{font-family:'DejaVu Sans',Verdana,Arial,sans-serif;color:#1b1b1b;background:#fff;margin:0;line-height:1.45}
main{max-width:1000px;margin:0 auto;padding:1.5rem}
h1{font-size:1.7rem;margin:.2rem 0 1rem}h2{font-size:1.3rem;border-bottom:2px solid #0072b2;padding-bottom:.2rem;margin-top:2rem}
h3{font-size:1.08rem;margin-top:1.4rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.92rem}
th,td{border:1px solid #c9c9c9;padding:.25rem .55rem;text-align:right;vertical-align:top}
th{background:#f1f4f7}td.l,th.l{text-align:left}
figure{margin:1rem 0;page-break-inside:avoid}figcaption{font-size:.88rem;color:#444;max-width:760px}
svg{max-width:100%;height:auto}
.verdict{font-size:1.05rem;background:#f4f8fb;border-left:5px solid #0072b2;padding:.6rem .9rem}
.warning{border:2px solid #d55e00;background:#fff4ec;padding:.5rem .9rem;margin:.6rem 0}
.warning b{color:#a63f00}
.banner{border:2px solid #d55e00;background:#fff4ec;padding:.4rem .9rem;font-weight:bold}
code,pre{font-family:'DejaVu Sans Mono',Menlo,Consolas,monospace;font-size:.85rem}
pre{background:#f6f6f6;padding:.5rem;white-space:pre-wrap;word-break:break-all}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.15rem .9rem;font-size:.92rem}
dt{font-weight:bold}dd{margin:0;word-break:break-all}
.gallery{display:flex;flex-wrap:wrap;gap:.8rem}
.example{border:1px solid #c9c9c9;padding:.4rem;font-size:.82rem;text-align:center}
.example img{image-rendering:pixelated;width:84px;height:84px;border:1px solid #999}
.note{font-size:.88rem;color:#444}
@media print{main{max-width:none}h2{page-break-after:avoid}}
";

// HTML (and SVG) escaping is shared with the gate's JUnit output.
pub(crate) use gauntlet_record::escape_markup as escape;

/// A command line as one copy-pasteable shell string.
pub(crate) fn shell_line(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=,:+@%".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The one-paragraph verdict of a record.
pub(crate) fn verdict(record: &RunRecord) -> String {
    let mut parts = Vec::new();
    if let Some(clean) = &record.clean {
        parts.push(format!(
            "Clean accuracy {} on {} samples.",
            percent(clean.accuracy),
            record.dataset.num_samples
        ));
    }
    if let Some(robustness) = &record.robustness {
        for norm in norms(robustness) {
            let points: Vec<String> = robustness
                .worst_case
                .iter()
                .filter(|w| w.norm == norm)
                .map(|w| {
                    format!(
                        "{} at ε = {}",
                        percent(w.robust_accuracy),
                        epsilon(w.epsilon)
                    )
                })
                .collect();
            let attacks = attack_lines(robustness, norm).len();
            parts.push(format!(
                "Under {} attacks the worst-case robust accuracy is {} (per sample, worst of {} attack{}).",
                norm.symbol(),
                points.join(", "),
                attacks,
                if attacks == 1 { "" } else { "s" }
            ));
        }
        if !robustness.warnings.is_empty() {
            parts.push(format!(
                "{} sanity warning{}: read them before trusting these numbers.",
                robustness.warnings.len(),
                if robustness.warnings.len() == 1 {
                    ""
                } else {
                    "s"
                }
            ));
        }
    }
    if let Some(training) = &record.training {
        let method = training
            .adversarial
            .as_ref()
            .map(|a| {
                format!(
                    "{} adversarial training ({} ε = {})",
                    a.method,
                    a.norm.symbol(),
                    epsilon(a.epsilon)
                )
            })
            .unwrap_or_else(|| "standard training".into());
        let mut text = format!(
            "{} epoch{} of {method}.",
            training.history.len(),
            if training.history.len() == 1 { "" } else { "s" }
        );
        if let Some(last) = training.history.last() {
            let _ = write!(text, " Last epoch: clean {}", percent(last.test_accuracy));
            if let Some(r) = last.robust_accuracy {
                let _ = write!(text, ", robust {}", percent(r));
            }
            text.push('.');
        }
        if let Some(best) = training.best_epoch {
            let _ = write!(text, " Best robust checkpoint: epoch {best}.");
        }
        parts.push(text);
    }
    if let Some(poisoning) = &record.poisoning {
        if let Some(injection) = &poisoning.injection {
            parts.push(format!(
                "Injected {} into {} training samples{}.",
                injection.attack,
                injection.poisoned.len(),
                injection
                    .target
                    .map(|t| format!(" (target class {t})"))
                    .unwrap_or_default()
            ));
        }
        for d in &poisoning.detectors {
            let mut text = format!("{} flagged {} samples", d.method, d.flagged.len());
            if let Some(m) = &d.metrics {
                let _ = write!(
                    text,
                    " (precision {:.3}, recall {:.3}, F1 {:.3})",
                    m.precision, m.recall, m.f1
                );
            }
            text.push('.');
            parts.push(text);
        }
        if let Some(verdict) = poisoning.backdoor_verdict() {
            parts.push(verdict_sentence(&verdict));
        }
    }
    parts.join(" ")
}

fn kind_name(kind: RunKind) -> &'static str {
    match kind {
        RunKind::Eval => "evaluation",
        RunKind::Train => "training",
        RunKind::Poison => "poisoning",
    }
}

fn figure(out: &mut String, rendered: &RenderedChart) {
    // plotters writes a bare <svg> element: it inlines as is.
    let svg = rendered.svg.trim();
    let _ = writeln!(
        out,
        "<figure id=\"chart-{}\">{svg}<figcaption>{} Files: <code>{}.svg</code>, <code>{}.png</code>.</figcaption></figure>",
        escape(&rendered.chart.name),
        escape(&rendered.chart.caption),
        escape(&rendered.chart.name),
        escape(&rendered.chart.name),
    );
}

/// The full page.
pub(crate) fn page(inputs: &[ReportInput], charts: &[(Section, RenderedChart)]) -> Result<String> {
    let mut out = String::new();
    let title = match inputs {
        [one] => format!("Gauntlet report: {}", one.label),
        many => format!("Gauntlet report: {} records", many.len()),
    };
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/><title>{}</title><style>{STYLE}</style></head>\n<body><main>\n<h1>{}</h1>\n",
        escape(&title),
        escape(&title)
    );

    let warning_count = count_warnings(inputs);
    summary_section(&mut out, inputs, warning_count);
    // Provenance.
    out.push_str("<section id=\"provenance\"><h2>Provenance</h2>\n<p class=\"note\">Everything needed to re-run exactly these runs.</p>\n");
    for input in inputs {
        provenance(&mut out, input);
    }
    out.push_str("</section>\n");

    // Accuracy tables.
    let evaluated: Vec<&ReportInput> = inputs.iter().filter(|i| i.record.clean.is_some()).collect();
    if !evaluated.is_empty() {
        out.push_str("<section id=\"accuracy\"><h2>Clean and robust accuracy</h2>\n");
        for input in evaluated {
            accuracy_tables(&mut out, input);
        }
        out.push_str("<p class=\"note\">Robust accuracy per attack includes the attacks before it in the suite (the runner attacks only samples still classified correctly); the worst case is per sample over every attack of the norm, at that ε or any smaller one.</p>\n</section>\n");
    }

    robustness_sections(&mut out, inputs, charts)?;
    if warning_count > 0 {
        warnings_section(&mut out, inputs);
    }
    training_section(&mut out, inputs, charts);
    poisoning_section(&mut out, inputs, charts);
    // Configuration.
    out.push_str("<section id=\"configuration\"><h2>Configuration</h2>\n");
    for input in inputs {
        configuration(&mut out, input);
    }
    out.push_str("</section>\n");
    let _ = write!(
        out,
        "<footer><p class=\"note\">Rendered by {} {} from the run record{} alone.</p></footer>\n</main></body></html>\n",
        escape(&inputs[0].record.tool.name),
        escape(&inputs[0].record.tool.version),
        if inputs.len() == 1 { "" } else { "s" }
    );
    Ok(out)
}

/// Sanity warnings over every record (evaluation and training).
fn count_warnings(inputs: &[ReportInput]) -> usize {
    inputs
        .iter()
        .map(|i| {
            i.record.robustness.as_ref().map_or(0, |r| r.warnings.len())
                + i.record.training.as_ref().map_or(0, |t| t.warnings.len())
        })
        .sum()
}

/// The verdict of each record, with a banner when any has warnings.
fn summary_section(out: &mut String, inputs: &[ReportInput], warning_count: usize) {
    out.push_str("<section id=\"summary\"><h2>Summary</h2>\n");
    if warning_count > 0 {
        let _ = writeln!(
            out,
            "<p class=\"banner\">{warning_count} sanity warning{} — see <a href=\"#warnings\">Sanity warnings</a> before trusting these numbers.</p>",
            if warning_count == 1 { "" } else { "s" }
        );
    }
    for input in inputs {
        let _ = writeln!(
            out,
            "<p class=\"verdict\"><b>{}</b> ({}): {}</p>",
            escape(&input.label),
            kind_name(input.record.kind),
            escape(&verdict(&input.record))
        );
    }
    out.push_str("</section>\n");
}

/// Robustness charts and the gallery of adversarial examples.
fn robustness_sections(
    out: &mut String,
    inputs: &[ReportInput],
    charts: &[(Section, RenderedChart)],
) -> Result<()> {
    let robustness_charts: Vec<&RenderedChart> = charts
        .iter()
        .filter(|(s, _)| *s == Section::Robustness)
        .map(|(_, c)| c)
        .collect();
    if !robustness_charts.is_empty() {
        out.push_str("<section id=\"charts\"><h2>Charts</h2>\n");
        for chart in robustness_charts {
            figure(out, chart);
        }
        out.push_str("</section>\n");
    }
    let galleries: Vec<&ReportInput> = inputs
        .iter()
        .filter(|i| {
            i.record
                .robustness
                .as_ref()
                .is_some_and(|r| !r.gallery.is_empty())
        })
        .collect();
    if !galleries.is_empty() {
        out.push_str("<section id=\"gallery\"><h2>Adversarial examples</h2>\n<p class=\"note\">The first broken test samples: the clean image, the adversarial one, and the perturbation amplified to the full grey range (mid-grey = 0).</p>\n");
        for input in galleries {
            gallery(out, input)?;
        }
        out.push_str("</section>\n");
    }
    Ok(())
}

/// Each warning with its cause and remedy.
fn warnings_section(out: &mut String, inputs: &[ReportInput]) {
    out.push_str("<section id=\"warnings\"><h2>Sanity warnings</h2>\n");
    for input in inputs {
        if let Some(r) = &input.record.robustness {
            for w in &r.warnings {
                let _ = writeln!(
                    out,
                    "<div class=\"warning\"><p><b>{} [{}]</b>: {}</p><p><b>Cause</b>: {}</p><p><b>Remedy</b>: {}</p></div>",
                    escape(&input.label),
                    escape(w.code.name()),
                    escape(&w.message),
                    escape(&w.cause),
                    escape(&w.remedy)
                );
            }
        }
        if let Some(t) = &input.record.training {
            for w in &t.warnings {
                let _ = writeln!(
                    out,
                    "<div class=\"warning\"><p><b>{} [training]</b>: {}</p></div>",
                    escape(&input.label),
                    escape(w)
                );
            }
        }
    }
    out.push_str("</section>\n");
}

/// Training curves and per-epoch tables.
fn training_section(out: &mut String, inputs: &[ReportInput], charts: &[(Section, RenderedChart)]) {
    let trained: Vec<&ReportInput> = inputs
        .iter()
        .filter(|i| {
            i.record
                .training
                .as_ref()
                .is_some_and(|t| !t.history.is_empty())
        })
        .collect();
    if !trained.is_empty() {
        out.push_str("<section id=\"training\"><h2>Training</h2>\n");
        for (_, chart) in charts.iter().filter(|(s, _)| *s == Section::Training) {
            figure(out, chart);
        }
        for input in trained {
            training_table(out, input);
        }
        out.push_str("</section>\n");
    }
}

/// What each poisoning run injected and found, and its charts.
fn poisoning_section(
    out: &mut String,
    inputs: &[ReportInput],
    charts: &[(Section, RenderedChart)],
) {
    let poisoned: Vec<&ReportInput> = inputs
        .iter()
        .filter(|i| i.record.poisoning.is_some())
        .collect();
    if !poisoned.is_empty() {
        out.push_str("<section id=\"poisoning\"><h2>Poisoning</h2>\n");
        for input in poisoned {
            poisoning_tables(out, input);
        }
        for (_, chart) in charts.iter().filter(|(s, _)| *s == Section::Poisoning) {
            figure(out, chart);
        }
        out.push_str("</section>\n");
    }
}

fn provenance(out: &mut String, input: &ReportInput) {
    let r = &input.record;
    let _ = write!(out, "<h3>{}</h3>\n<dl>", escape(&input.label));
    let mut row = |k: &str, v: String| {
        let _ = write!(out, "<dt>{}</dt><dd>{}</dd>", escape(k), v);
    };
    row(
        "tool",
        escape(&format!("{} {}", r.tool.name, r.tool.version)),
    );
    row("run", escape(kind_name(r.kind)));
    row(
        "command",
        format!("<code>{}</code>", escape(&shell_line(&r.command))),
    );
    row("seed", r.seed.to_string());
    row(
        "model",
        format!(
            "{} ({}, {}, {} classes, input {:?}, bounds [{}, {}])<br/><code>sha256 {}</code>",
            escape(&r.model.path),
            escape(r.model.format.as_str()),
            escape(&r.model.arch),
            r.model.num_classes,
            r.model.input_shape,
            r.model.bounds[0],
            r.model.bounds[1],
            escape(&r.model.sha256)
        ),
    );
    row(
        "dataset",
        format!(
            "{} ({}, {} split, first {} samples){}<br/><code>sha256 {}</code>",
            escape(&r.dataset.path),
            escape(r.dataset.format.as_str()),
            escape(r.dataset.split.as_str()),
            r.dataset.num_samples,
            preprocessing(&r.dataset),
            escape(&r.dataset.sha256)
        ),
    );
    let train_dataset = r
        .training
        .as_ref()
        .map(|t| &t.train_dataset)
        .or(r.poisoning.as_ref().map(|p| &p.train_dataset));
    if let Some(d) = train_dataset {
        row(
            "training data",
            format!(
                "{} ({}, {} split, {} samples){}<br/><code>sha256 {}</code>",
                escape(&d.path),
                escape(d.format.as_str()),
                escape(d.split.as_str()),
                d.num_samples,
                preprocessing(d),
                escape(&d.sha256)
            ),
        );
    }
    if let Some(rb) = &r.robustness {
        let s = &rb.suite;
        row(
            "suite",
            format!(
                "{}{}{}",
                escape(&s.name),
                s.path
                    .as_ref()
                    .map(|p| format!(" ({})", escape(p)))
                    .unwrap_or_default(),
                s.sha256
                    .as_ref()
                    .map(|h| format!("<br/><code>sha256 {}</code>", escape(h)))
                    .unwrap_or_default()
            ),
        );
    }
    row(
        "environment",
        escape(&format!(
            "{}, {} threads{}",
            r.environment.device,
            r.environment.threads,
            match r.environment.engine.as_str() {
                "" => String::new(),
                engine => format!(", {engine} engine"),
            }
        )),
    );
    row("wall time", escape(&format!("{:.1} s", r.wall_seconds)));
    out.push_str("</dl>\n");
}

fn accuracy_tables(out: &mut String, input: &ReportInput) {
    let r = &input.record;
    let Some(clean) = &r.clean else { return };
    let _ = write!(
        out,
        "<h3>{}</h3>\n<p>Clean accuracy: <b>{}</b> ({} of {} samples).</p>\n",
        escape(&input.label),
        percent(clean.accuracy),
        clean.correct.iter().filter(|&&c| c).count(),
        clean.correct.len()
    );
    let Some(robustness) = &r.robustness else {
        return;
    };
    for norm in norms(robustness) {
        let lines = attack_lines(robustness, norm);
        let _ = write!(
            out,
            "<table><caption>{} robust accuracy</caption><thead><tr><th>ε</th>",
            escape(norm.symbol())
        );
        for (k, (name, _)) in lines.iter().enumerate() {
            let _ = write!(
                out,
                "<th>{}{}</th>",
                if k == 0 { "" } else { "+ " },
                escape(name)
            );
        }
        out.push_str("<th>worst case</th></tr></thead><tbody>");
        for w in robustness.worst_case.iter().filter(|w| w.norm == norm) {
            let _ = write!(out, "<tr><td>{}</td>", escape(&epsilon(w.epsilon)));
            for (_, points) in &lines {
                let cell = points
                    .iter()
                    .find(|(e, _)| (e - w.epsilon).abs() <= 1e-12 * w.epsilon.abs().max(1.0))
                    .map(|(_, acc)| percent(*acc))
                    .unwrap_or_else(|| "—".into());
                let _ = write!(out, "<td>{cell}</td>");
            }
            let _ = write!(out, "<td><b>{}</b></td></tr>", percent(w.robust_accuracy));
        }
        out.push_str("</tbody></table>\n");
    }
    if !robustness.attacks.is_empty() {
        out.push_str("<table><caption>Cost per attack and ε</caption><thead><tr><th class=\"l\">attack</th><th>ε</th><th>attacked</th><th>newly broken</th><th>gradients</th><th>forwards</th><th>mean ‖δ‖</th><th>seconds</th></tr></thead><tbody>");
        for a in &robustness.attacks {
            let _ = write!(
                out,
                "<tr><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.4}</td><td>{:.1}</td></tr>",
                escape(&a.attack),
                escape(&epsilon(a.epsilon)),
                a.attacked,
                a.newly_broken,
                a.gradient_evaluations,
                a.forward_evaluations,
                a.mean_perturbation,
                a.wall_seconds
            );
        }
        out.push_str("</tbody></table>\n");
    }
    optimality_table(out, robustness);
}

/// Each minimal-perturbation attack against the best perturbations known
/// (AttackBench's local optimality), so a weak attack shows at a glance.
fn optimality_table(out: &mut String, robustness: &gauntlet_record::RobustnessRecord) {
    let rows = gauntlet_record::optimality(robustness);
    if rows.is_empty() {
        return;
    }
    out.push_str("<table><caption>Minimal-perturbation attacks against the best perturbation known per sample (local optimality: area under the best-known robust-accuracy curve on [0, E] over the attack's own; 1 = optimal)</caption><thead><tr><th class=\"l\">attack</th><th>norm</th><th>found</th><th>at the best known</th><th>E</th><th>area</th><th>best-known area</th><th>local optimality</th></tr></thead><tbody>");
    for row in rows {
        let _ = write!(
            out,
            "<tr><td class=\"l\">{}</td><td>{}</td><td>{} of {}</td><td>{}</td><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{}{:.3}{}</td></tr>",
            escape(&row.attack),
            escape(row.norm.symbol()),
            row.found,
            row.attacked,
            row.at_best,
            escape(&epsilon(row.epsilon_max)),
            row.area,
            row.best_area,
            if row.local_optimality < WEAK_OPTIMALITY { "<b>" } else { "" },
            row.local_optimality,
            if row.local_optimality < WEAK_OPTIMALITY { "</b> (weak on this model)" } else { "" },
        );
    }
    out.push_str("</tbody></table>\n");
}

/// Below this local optimality an attack is flagged as weak on the model.
const WEAK_OPTIMALITY: f64 = 0.9;

fn training_table(out: &mut String, input: &ReportInput) {
    let Some(t) = &input.record.training else {
        return;
    };
    let _ = write!(
        out,
        "<h3>{}</h3>\n<table><thead><tr><th>epoch</th><th>train loss</th><th>train accuracy</th><th>clean test accuracy</th><th>robust accuracy</th><th>ε</th><th>learning rate</th><th>seconds</th></tr></thead><tbody>",
        escape(&input.label)
    );
    for e in &t.history {
        let best = t.best_epoch == Some(e.epoch);
        let _ = write!(
            out,
            "<tr><td>{}{}</td><td>{:.4}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td></tr>",
            e.epoch,
            if best { " (best)" } else { "" },
            e.train_loss,
            percent(e.train_accuracy),
            percent(e.test_accuracy),
            e.robust_accuracy.map(percent).unwrap_or_else(|| "—".into()),
            e.epsilon.map(epsilon).unwrap_or_else(|| "—".into()),
            e.learning_rate.map(|l| format!("{l:.2e}")).unwrap_or_else(|| "—".into()),
            e.wall_seconds
        );
    }
    out.push_str("</tbody></table>\n");
}

fn poisoning_tables(out: &mut String, input: &ReportInput) {
    let Some(p) = &input.record.poisoning else {
        return;
    };
    let _ = writeln!(out, "<h3>{}</h3>", escape(&input.label));
    if let Some(inj) = &p.injection {
        let _ = writeln!(
            out,
            "<p>Injection: <b>{}</b>, {} of the source-class training images (classes {:?}){}, seed {}: {} samples poisoned.</p>",
            escape(&inj.attack),
            percent(inj.fraction),
            inj.source_classes,
            inj.target.map(|t| format!(" → class {t}")).unwrap_or_default(),
            inj.seed,
            inj.poisoned.len()
        );
    }
    if !p.detectors.is_empty() {
        out.push_str("<table><caption>Training-set detectors</caption><thead><tr><th class=\"l\">detector</th><th>flagged</th><th>classes judged poisoned</th><th>precision</th><th>recall</th><th>F1</th><th>AUROC</th><th>seconds</th></tr></thead><tbody>");
        for d in &p.detectors {
            let classes: Vec<String> = d
                .classes
                .iter()
                .filter(|c| c.poisoned)
                .map(|c| c.class.to_string())
                .collect();
            let m = d.metrics.as_ref();
            let f = |v: Option<f64>| v.map(|v| format!("{v:.3}")).unwrap_or_else(|| "—".into());
            let _ = write!(
                out,
                "<tr><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td></tr>",
                escape(&d.method),
                d.flagged.len(),
                if classes.is_empty() { "none".into() } else { classes.join(", ") },
                f(m.map(|m| m.precision)),
                f(m.map(|m| m.recall)),
                f(m.map(|m| m.f1)),
                f(m.and_then(|m| m.auroc)),
                d.wall_seconds
            );
        }
        out.push_str("</tbody></table>\n");
    }
    if let Some(s) = &p.strip {
        let _ = writeln!(
            out,
            "<p>STRIP ({} overlays): threshold {:.4} nats for a {} false-rejection rate (measured {}); false acceptance of triggered inputs {}; AUROC {}.</p>",
            s.overlays,
            s.threshold,
            percent(s.false_rejection_rate),
            percent(s.measured_false_rejection_rate),
            s.false_acceptance_rate.map(percent).unwrap_or_else(|| "—".into()),
            s.auroc.map(|a| format!("{a:.3}")).unwrap_or_else(|| "—".into())
        );
    }
    if let Some(nc) = &p.neural_cleanse {
        let _ = writeln!(
            out,
            "<p>Neural Cleanse ({} steps per class): suspected target{} {}{}.</p>",
            nc.steps,
            if nc.suspected_targets.len() == 1 {
                ""
            } else {
                "s"
            },
            if nc.suspected_targets.is_empty() {
                "none".to_string()
            } else {
                format!("{:?}", nc.suspected_targets)
            },
            match nc.names_true_target {
                Some(true) => " — the true target",
                Some(false) => " — not the true target",
                None => "",
            }
        );
    }
    if let Some(verdict) = p.backdoor_verdict() {
        let _ = writeln!(
            out,
            "<p class=\"{}\">{}</p>",
            if verdict.survived {
                "warning"
            } else {
                "verdict"
            },
            escape(&verdict_sentence(&verdict))
        );
    }
    if let (Some(b), Some(a)) = (&p.before_filtering, &p.after_filtering) {
        let asr = |v: Option<f64>| v.map(percent).unwrap_or_else(|| "—".into());
        let _ = writeln!(
            out,
            "<table><caption>Before and after filtering ({} samples removed)</caption><thead><tr><th class=\"l\">model</th><th>training samples</th><th>clean accuracy</th><th>attack success</th><th>training seconds</th></tr></thead><tbody><tr><td class=\"l\">poisoned</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td></tr><tr><td class=\"l\">filtered</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td></tr></tbody></table>",
            p.removed.len(),
            b.train_samples,
            percent(b.clean_accuracy),
            asr(b.attack_success_rate),
            b.train_seconds,
            a.train_samples,
            percent(a.clean_accuracy),
            asr(a.attack_success_rate),
            a.train_seconds
        );
    }
}

fn configuration(out: &mut String, input: &ReportInput) {
    let r = &input.record;
    let _ = writeln!(out, "<h3>{}</h3>", escape(&input.label));
    if let Some(rb) = &r.robustness {
        let _ = write!(
            out,
            "<p>Suite <b>{}</b>: {}</p>\n<table><thead><tr><th class=\"l\">attack</th><th class=\"l\">norm</th><th>ε</th><th class=\"l\">target</th><th class=\"l\">resolved parameters</th></tr></thead><tbody>",
            escape(&rb.suite.name),
            escape(&rb.suite.description)
        );
        for a in &rb.attacks {
            let _ = write!(
                out,
                "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td><td>{}</td><td class=\"l\"><code>{}</code></td><td class=\"l\"><code>{}</code></td></tr>",
                escape(&a.attack),
                escape(a.norm.symbol()),
                escape(&epsilon(a.epsilon)),
                escape(&a.target.to_string()),
                escape(&a.parameters.to_string())
            );
        }
        out.push_str("</tbody></table>\n");
    }
    if let Some(t) = &r.training {
        let _ = writeln!(
            out,
            "<p>Training: {} for {} epochs, batch {}, {} (learning rate {}, momentum {}, {} schedule), normalisation mean {:?} std {:?}.</p>",
            escape(&t.arch),
            t.epochs,
            t.batch_size,
            escape(&t.optimizer),
            t.learning_rate,
            t.momentum,
            escape(&t.schedule),
            t.mean,
            t.std
        );
        if let Some(a) = &t.adversarial {
            let _ = writeln!(
                out,
                "<pre>{}</pre>",
                escape(&serde_json::to_string_pretty(a).unwrap_or_default())
            );
        }
    }
    if let Some(p) = &r.poisoning {
        let summary: Vec<String> = p
            .detectors
            .iter()
            .map(|d| d.method.clone())
            .chain(p.strip.as_ref().map(|_| "strip".to_string()))
            .chain(
                p.neural_cleanse
                    .as_ref()
                    .map(|_| "neural-cleanse".to_string()),
            )
            .collect();
        let _ = writeln!(
            out,
            "<p>Poisoning detectors run: {}.</p>",
            escape(&summary.join(", "))
        );
    }
}

fn gallery(out: &mut String, input: &ReportInput) -> Result<()> {
    let Some(r) = &input.record.robustness else {
        return Ok(());
    };
    let bounds = input.record.model.bounds;
    let _ = write!(
        out,
        "<h3>{}</h3>\n<div class=\"gallery\">",
        escape(&input.label)
    );
    for example in &r.gallery {
        let [clean, adversarial, perturbation] = example_images(example, bounds)?;
        let _ = write!(
            out,
            "<div class=\"example\"><img alt=\"clean sample {}\" src=\"{clean}\"/> <img alt=\"adversarial\" src=\"{adversarial}\"/> <img alt=\"perturbation, amplified\" src=\"{perturbation}\"/><br/>#{}, true class {}<br/>clean → {} ({})<br/>adversarial → <b>{}</b> ({})<br/>{} {} ε = {}</div>",
            example.index,
            example.index,
            example.label,
            example.clean_prediction,
            percent(example.clean_confidence),
            example.adversarial_prediction,
            percent(example.adversarial_confidence),
            escape(&example.attack),
            escape(example.norm.symbol()),
            escape(&epsilon(example.epsilon)),
        );
    }
    out.push_str("</div>\n");
    Ok(())
}

/// The clean image, the adversarial image and the amplified perturbation as PNG
/// data URIs (1 or 3 channels; others show the first channel).
fn example_images(example: &GalleryExample, bounds: [f64; 2]) -> Result<[String; 3]> {
    let [c, h, w] = example.shape;
    let per = c * h * w;
    if per == 0 || example.original.len() != per || example.adversarial.len() != per {
        return Err(crate::Error::Render(format!(
            "gallery example {}: images do not match shape {:?}",
            example.index, example.shape
        )));
    }
    let (lo, hi) = (bounds[0], bounds[1]);
    let span = if hi > lo { hi - lo } else { 1.0 };
    let scale = |v: f64| -> f64 { ((v - lo) / span).clamp(0.0, 1.0) };
    let delta: Vec<f64> = example
        .original
        .iter()
        .zip(&example.adversarial)
        .map(|(&a, &b)| f64::from(b) - f64::from(a))
        .collect();
    let amplitude = delta
        .iter()
        .map(|d| d.abs())
        .filter(|d| d.is_finite())
        .fold(0.0f64, f64::max);
    let clean: Vec<f64> = example
        .original
        .iter()
        .map(|&v| scale(f64::from(v)))
        .collect();
    let adversarial: Vec<f64> = example
        .adversarial
        .iter()
        .map(|&v| scale(f64::from(v)))
        .collect();
    let perturbation: Vec<f64> = delta
        .iter()
        .map(|&d| {
            if amplitude > 0.0 {
                0.5 + 0.5 * d / amplitude
            } else {
                0.5
            }
        })
        .collect();
    let encode = |values: &[f64]| -> Result<String> {
        let (channels, colour) = if c == 3 {
            (3, png::ColorType::Rgb)
        } else {
            (1, png::ColorType::Grayscale)
        };
        let mut pixels = Vec::with_capacity(h * w * channels);
        for y in 0..h {
            for x in 0..w {
                for ch in 0..channels {
                    let v = values[ch * h * w + y * w + x];
                    let v = if v.is_finite() { v } else { 0.0 };
                    pixels.push((v * 255.0).round().clamp(0.0, 255.0) as u8);
                }
            }
        }
        let png = encode_png(w as u32, h as u32, &pixels, colour)?;
        Ok(format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(png)
        ))
    };
    Ok([
        encode(&clean)?,
        encode(&adversarial)?,
        encode(&perturbation)?,
    ])
}

/// A line saying how image files were preprocessed (image folders only).
fn preprocessing(dataset: &gauntlet_record::DatasetRecord) -> String {
    dataset
        .preprocess
        .as_deref()
        .map(|p| format!("<br/>preprocessed: {}", escape(p)))
        .unwrap_or_default()
}

/// The verdict's one line (its `Display`), as a sentence.
fn verdict_sentence(verdict: &gauntlet_record::BackdoorVerdict) -> String {
    let text = verdict.to_string();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => format!("{}{}.", first.to_uppercase(), chars.as_str()),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_shell_quoting() {
        assert_eq!(
            escape("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(
            shell_line(&[
                "gauntlet".into(),
                "--out".into(),
                "my dir".into(),
                "it's".into()
            ]),
            "gauntlet --out 'my dir' 'it'\\''s'"
        );
    }
}
