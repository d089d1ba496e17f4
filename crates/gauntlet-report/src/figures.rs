//! Which charts a set of records calls for, as data.

use gauntlet_record::{Norm, RobustnessRecord, RunRecord};

use crate::charts::{Chart, ChartKind, Series, Stroke};
use crate::{epsilon, percent, slug, ReportInput, Section};

const ACCURACY: (f64, f64) = (0.0, 100.0);

/// Every chart, in the order the report shows them.
pub(crate) fn charts(inputs: &[ReportInput]) -> Vec<(Section, Chart)> {
    let mut out = Vec::new();
    let several = inputs.len() > 1;
    let prefix = |input: &ReportInput| -> String {
        if several {
            format!("{}-", slug(&input.label))
        } else {
            String::new()
        }
    };
    // Comparison first: it is the chart people look for when they pass two records.
    let with_robustness: Vec<&ReportInput> = inputs
        .iter()
        .filter(|i| i.record.robustness.is_some())
        .collect();
    if with_robustness.len() > 1 {
        for norm in norms_of(&with_robustness) {
            out.push((Section::Robustness, comparison(&with_robustness, norm)));
        }
    }
    for input in inputs {
        let record = &input.record;
        if let Some(robustness) = &record.robustness {
            let clean = record.clean.as_ref().map(|c| c.accuracy);
            for norm in norms(robustness) {
                out.push((
                    Section::Robustness,
                    robust_vs_epsilon(input, &prefix(input), robustness, norm, clean),
                ));
                if let Some(chart) = per_class(input, &prefix(input), robustness, norm) {
                    out.push((Section::Robustness, chart));
                }
            }
            for chart in minimal_cdfs(input, &prefix(input), robustness) {
                out.push((Section::Robustness, chart));
            }
        }
    }
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
        out.push((Section::Training, training_accuracy(&trained)));
        out.push((Section::Training, training_loss(&trained)));
    }
    for input in inputs {
        out.extend(
            poisoning(input, &prefix(input))
                .into_iter()
                .map(|c| (Section::Poisoning, c)),
        );
    }
    out
}

/// Norms in the order of the worst-case table.
pub(crate) fn norms(robustness: &RobustnessRecord) -> Vec<Norm> {
    let mut out: Vec<Norm> = Vec::new();
    for w in &robustness.worst_case {
        if !out.contains(&w.norm) {
            out.push(w.norm);
        }
    }
    out
}

fn norms_of(inputs: &[&ReportInput]) -> Vec<Norm> {
    let mut out: Vec<Norm> = Vec::new();
    for input in inputs {
        if let Some(r) = &input.record.robustness {
            for norm in norms(r) {
                if !out.contains(&norm) {
                    out.push(norm);
                }
            }
        }
    }
    out
}

fn clean_point(clean: Option<f64>) -> Vec<(f64, f64)> {
    clean.map(|c| vec![(0.0, 100.0 * c)]).unwrap_or_default()
}

fn worst_case_points(record: &RunRecord, norm: Norm) -> Vec<(f64, f64)> {
    let mut points = clean_point(record.clean.as_ref().map(|c| c.accuracy));
    if let Some(r) = &record.robustness {
        points.extend(
            r.worst_case
                .iter()
                .filter(|w| w.norm == norm)
                .map(|w| (w.epsilon, 100.0 * w.robust_accuracy)),
        );
    }
    points
}

fn comparison(inputs: &[&ReportInput], norm: Norm) -> Chart {
    let series = inputs
        .iter()
        .enumerate()
        .map(|(k, input)| Series {
            name: input.label.clone(),
            points: worst_case_points(&input.record, norm),
            stroke: Stroke::Solid,
            colour: k,
        })
        .collect();
    Chart {
        name: format!("compare-{norm}"),
        title: format!("Worst-case robust accuracy, {}", norm.symbol()),
        caption: format!(
            "Each line is one record: per sample, the worst case over every {} attack in its suite; ε = 0 is clean accuracy.",
            norm.symbol()
        ),
        kind: ChartKind::Lines {
            x_label: format!("ε ({} norm, input units)", norm.symbol()),
            y_label: "robust accuracy (%)".into(),
            y_range: ACCURACY,
            series,
        },
    }
}

/// Attacks of one norm in suite order, with their (cumulative) robust accuracy per ε.
pub(crate) fn attack_lines(
    robustness: &RobustnessRecord,
    norm: Norm,
) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut lines: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for a in robustness.attacks.iter().filter(|a| a.norm == norm) {
        match lines.iter_mut().find(|(name, _)| *name == a.attack) {
            Some((_, points)) => points.push((a.epsilon, a.robust_accuracy)),
            None => lines.push((a.attack.clone(), vec![(a.epsilon, a.robust_accuracy)])),
        }
    }
    lines
}

fn robust_vs_epsilon(
    input: &ReportInput,
    prefix: &str,
    robustness: &RobustnessRecord,
    norm: Norm,
    clean: Option<f64>,
) -> Chart {
    let mut series: Vec<Series> = attack_lines(robustness, norm)
        .into_iter()
        .enumerate()
        .map(|(k, (name, points))| {
            let mut all = clean_point(clean);
            all.extend(points.iter().map(|&(e, r)| (e, 100.0 * r)));
            Series {
                // The runner attacks only still-robust samples, so each line
                // includes the attacks before it in the suite.
                name: if k == 0 { name } else { format!("+ {name}") },
                points: all,
                stroke: Stroke::Solid,
                colour: k,
            }
        })
        .collect();
    series.push(Series {
        name: "worst case (per sample)".into(),
        points: worst_case_points(&input.record, norm),
        stroke: Stroke::Envelope,
        colour: 0,
    });
    Chart {
        name: format!("{prefix}robust-vs-epsilon-{norm}"),
        title: format!("{}: robust accuracy under {} attacks", input.label, norm.symbol()),
        caption: "Attacks run in suite order on the samples still classified correctly, so each line includes the attacks before it (“+”); the black line is the per-sample worst case. ε = 0 is clean accuracy.".into(),
        kind: ChartKind::Lines {
            x_label: format!("ε ({} norm, input units)", norm.symbol()),
            y_label: "robust accuracy (%)".into(),
            y_range: ACCURACY,
            series,
        },
    }
}

/// The ε shown per class: the smallest at which the worst case falls to half the
/// clean accuracy or below (where classes differ most), else the largest.
pub(crate) fn per_class_epsilon(
    robustness: &RobustnessRecord,
    norm: Norm,
    clean: f64,
) -> Option<usize> {
    let candidates: Vec<usize> = robustness
        .worst_case
        .iter()
        .enumerate()
        .filter(|(_, w)| w.norm == norm)
        .map(|(i, _)| i)
        .collect();
    candidates
        .iter()
        .copied()
        .find(|&i| robustness.worst_case[i].robust_accuracy <= 0.5 * clean)
        .or_else(|| candidates.last().copied())
}

fn per_class(
    input: &ReportInput,
    prefix: &str,
    robustness: &RobustnessRecord,
    norm: Norm,
) -> Option<Chart> {
    let clean = input.record.clean.as_ref()?;
    let labels = &clean.labels;
    if labels.is_empty() || labels.len() != clean.correct.len() {
        return None;
    }
    let chosen = &robustness.worst_case[per_class_epsilon(robustness, norm, clean.accuracy)?];
    if chosen.robust.len() != labels.len() {
        return None;
    }
    let classes = input.record.model.num_classes.max(1);
    let mut totals = vec![0usize; classes];
    let mut correct = vec![0usize; classes];
    let mut robust = vec![0usize; classes];
    for (i, &label) in labels.iter().enumerate() {
        let k = label as usize;
        if k >= classes {
            continue;
        }
        totals[k] += 1;
        correct[k] += usize::from(clean.correct[i]);
        robust[k] += usize::from(chosen.robust[i]);
    }
    let share = |counts: &[usize]| -> Vec<f64> {
        counts
            .iter()
            .zip(&totals)
            .map(|(&c, &t)| {
                if t == 0 {
                    f64::NAN
                } else {
                    100.0 * c as f64 / t as f64
                }
            })
            .collect()
    };
    Some(Chart {
        name: format!("{prefix}per-class-{norm}"),
        title: format!(
            "{}: per class, {} ε = {}",
            input.label,
            norm.symbol(),
            epsilon(chosen.epsilon)
        ),
        caption: format!(
            "Clean and worst-case robust accuracy per true class at ε = {} (the smallest ε at which overall robust accuracy is at most half the clean accuracy, else the largest).",
            epsilon(chosen.epsilon)
        ),
        kind: ChartKind::Bars {
            x_label: "true class".into(),
            y_label: "accuracy (%)".into(),
            categories: (0..classes).map(|k| k.to_string()).collect(),
            groups: vec![
                ("clean".into(), share(&correct)),
                (
                    format!("robust, ε = {}", epsilon(chosen.epsilon)),
                    share(&robust),
                ),
            ],
            y_range: ACCURACY,
            reference: None,
        },
    })
}

/// The share of all samples broken at a perturbation of at most x, from
/// per-sample norms (null: never broken).
fn broken_share(name: &str, norms: &[Option<f64>], stroke: Stroke, colour: usize) -> Series {
    let total = norms.len().max(1) as f64;
    let mut found: Vec<f64> = norms
        .iter()
        .flatten()
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    found.sort_by(f64::total_cmp);
    let mut points = vec![(0.0, 0.0)];
    for (rank, &value) in found.iter().enumerate() {
        points.push((value, 100.0 * (rank + 1) as f64 / total));
    }
    Series {
        name: format!("{name} ({} of {} found)", found.len(), norms.len()),
        points,
        stroke,
        colour,
    }
}

fn minimal_cdfs(input: &ReportInput, prefix: &str, robustness: &RobustnessRecord) -> Vec<Chart> {
    let mut by_norm: Vec<(Norm, Vec<Series>)> = Vec::new();
    for (k, minimal) in robustness.minimal.iter().enumerate() {
        let series = broken_share(&minimal.attack, &minimal.norms, Stroke::Solid, k);
        match by_norm.iter_mut().find(|(n, _)| *n == minimal.norm) {
            Some((_, list)) => list.push(series),
            None => by_norm.push((minimal.norm, vec![series])),
        }
    }
    // The best over every attack of the run, fixed-ε ones included: the
    // curve each attack is measured against in the optimality table.
    for (norm, list) in &mut by_norm {
        if let Some(best) = robustness.best_known.iter().find(|b| b.norm == *norm) {
            list.push(broken_share("best known", &best.norms, Stroke::Envelope, 0));
        }
    }
    by_norm
        .into_iter()
        .map(|(norm, series)| Chart {
            name: format!("{prefix}minimal-perturbation-{norm}"),
            title: format!("{}: minimal {} perturbations", input.label, norm.symbol()),
            caption: "Share of all samples whose smallest adversarial perturbation found is at most x (samples never broken never reach the top). The black line is the best known over every attack of the run (samples misclassified clean count at 0 there); an attack far to its right is weak on this model.".into(),
            kind: ChartKind::Lines {
                x_label: format!("perturbation ({} norm, input units)", norm.symbol()),
                y_label: "samples broken (%)".into(),
                y_range: ACCURACY,
                series,
            },
        })
        .collect()
}

fn training_accuracy(inputs: &[&ReportInput]) -> Chart {
    let mut series = Vec::new();
    for (k, input) in inputs.iter().enumerate() {
        let Some(training) = &input.record.training else {
            continue;
        };
        series.push(Series {
            name: format!("{}: clean", input.label),
            points: training
                .history
                .iter()
                .map(|e| (e.epoch as f64, 100.0 * e.test_accuracy))
                .collect(),
            stroke: Stroke::Solid,
            colour: k,
        });
        let robust: Vec<(f64, f64)> = training
            .history
            .iter()
            .filter_map(|e| e.robust_accuracy.map(|r| (e.epoch as f64, 100.0 * r)))
            .collect();
        if !robust.is_empty() {
            series.push(Series {
                name: format!("{}: robust", input.label),
                points: robust,
                stroke: Stroke::Dashed,
                colour: k,
            });
        }
    }
    Chart {
        name: "training-accuracy".into(),
        title: "Accuracy per epoch".into(),
        caption: "Clean test accuracy (solid) and robust accuracy on held-out images under the per-epoch PGD evaluation (dashed), after each epoch.".into(),
        kind: ChartKind::Lines {
            x_label: "epoch".into(),
            y_label: "accuracy (%)".into(),
            y_range: ACCURACY,
            series,
        },
    }
}

fn training_loss(inputs: &[&ReportInput]) -> Chart {
    let series: Vec<Series> = inputs
        .iter()
        .enumerate()
        .filter_map(|(k, input)| {
            let training = input.record.training.as_ref()?;
            Some(Series {
                name: input.label.clone(),
                points: training
                    .history
                    .iter()
                    .map(|e| (e.epoch as f64, e.train_loss))
                    .collect(),
                stroke: Stroke::Solid,
                colour: k,
            })
        })
        .collect();
    let top = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    Chart {
        name: "training-loss".into(),
        title: "Training loss per epoch".into(),
        caption:
            "Mean training loss over each epoch (on adversarial examples for adversarial training)."
                .into(),
        kind: ChartKind::Lines {
            x_label: "epoch".into(),
            y_label: "training loss (cross-entropy, nats)".into(),
            y_range: (0.0, if top > 0.0 { top * 1.1 } else { 1.0 }),
            series,
        },
    }
}

/// ROC points `(FPR %, TPR %)` of `scores` (higher = more suspicious) against `truth`.
pub(crate) fn roc(scores: &[f64], truth: &[bool]) -> Vec<(f64, f64)> {
    let positives = truth.iter().filter(|&&t| t).count();
    let negatives = truth.len() - positives;
    if positives == 0 || negatives == 0 || scores.len() != truth.len() {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut points = vec![(0.0, 0.0)];
    let mut i = 0;
    while i < order.len() {
        // Tied scores move together: one diagonal step.
        let mut j = i;
        while j < order.len() && scores[order[j]].total_cmp(&scores[order[i]]).is_eq() {
            if truth[order[j]] {
                tp += 1;
            } else {
                fp += 1;
            }
            j += 1;
        }
        points.push((
            100.0 * fp as f64 / negatives as f64,
            100.0 * tp as f64 / positives as f64,
        ));
        i = j;
    }
    points
}

fn poisoning(input: &ReportInput, prefix: &str) -> Vec<Chart> {
    let Some(poisoning) = &input.record.poisoning else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let truth: Option<Vec<bool>> = poisoning.injection.as_ref().map(|injection| {
        let n = poisoning.train_dataset.num_samples;
        let mut truth = vec![false; n];
        for &i in &injection.poisoned {
            if let Some(t) = truth.get_mut(i) {
                *t = true;
            }
        }
        truth
    });
    for detector in &poisoning.detectors {
        let groups = match &truth {
            Some(truth) if truth.len() == detector.scores.len() => {
                let pick = |want: bool| -> Vec<f64> {
                    detector
                        .scores
                        .iter()
                        .zip(truth)
                        .filter(|(_, &t)| t == want)
                        .map(|(&s, _)| s)
                        .collect()
                };
                vec![
                    ("clean samples".to_string(), pick(false)),
                    ("poisoned samples".to_string(), pick(true)),
                ]
            }
            _ => vec![("all samples".to_string(), detector.scores.clone())],
        };
        out.push(Chart {
            name: format!("{prefix}scores-{}", slug(&detector.method)),
            title: format!("{}: {} scores", input.label, detector.method),
            caption: format!(
                "Per-sample suspicion scores of {} (higher = more suspicious), each group normalised to its own size.",
                detector.method
            ),
            kind: ChartKind::Histogram {
                x_label: "score (method-specific units)".into(),
                groups,
                bins: 40,
                threshold: None,
            },
        });
    }
    if let Some(truth) = &truth {
        let series: Vec<Series> = poisoning
            .detectors
            .iter()
            .enumerate()
            .filter(|(_, d)| d.scores.len() == truth.len())
            .map(|(k, d)| Series {
                name: match d.metrics.as_ref().and_then(|m| m.auroc) {
                    Some(auc) => format!("{} (AUROC {auc:.3})", d.method),
                    None => d.method.clone(),
                },
                points: roc(&d.scores, truth),
                stroke: Stroke::Solid,
                colour: k,
            })
            .filter(|s| !s.points.is_empty())
            .collect();
        if !series.is_empty() {
            out.push(Chart {
                name: format!("{prefix}detector-roc"),
                title: format!("{}: training-set detectors, ROC", input.label),
                caption: "True-positive rate against false-positive rate as the score threshold sweeps, against the injection's ground truth.".into(),
                kind: ChartKind::Lines {
                    x_label: "false-positive rate (%)".into(),
                    y_label: "true-positive rate (%)".into(),
                    y_range: ACCURACY,
                    series,
                },
            });
        }
    }
    if let Some(strip) = &poisoning.strip {
        let mut groups = vec![("clean inputs".to_string(), strip.clean_entropies.clone())];
        if let Some(triggered) = &strip.triggered_entropies {
            groups.push(("triggered inputs".to_string(), triggered.clone()));
        }
        out.push(Chart {
            name: format!("{prefix}strip-entropy"),
            title: format!("{}: STRIP entropy", input.label),
            caption: format!(
                "Mean prediction entropy over {} blended copies per input; inputs left of the threshold (set for a {} false-rejection rate on held-out clean images) are rejected as triggered.",
                strip.overlays,
                percent(strip.false_rejection_rate)
            ),
            kind: ChartKind::Histogram {
                x_label: "entropy (nats)".into(),
                groups,
                bins: 40,
                threshold: Some(("threshold".into(), strip.threshold)),
            },
        });
    }
    if let Some(cleanse) = &poisoning.neural_cleanse {
        out.push(Chart {
            name: format!("{prefix}neural-cleanse"),
            title: format!("{}: Neural Cleanse anomaly index", input.label),
            caption: "Anomaly index per class of the smallest trigger found (median absolute deviation of the mask L1 norms); a class above 2 is a suspected backdoor target.".into(),
            kind: ChartKind::Bars {
                x_label: "target class".into(),
                y_label: "anomaly index (MADs below the median)".into(),
                categories: cleanse.classes.iter().map(|c| c.class.to_string()).collect(),
                groups: vec![(
                    "anomaly index".into(),
                    cleanse.classes.iter().map(|c| c.anomaly_index).collect(),
                )],
                y_range: {
                    let top = cleanse
                        .classes
                        .iter()
                        .map(|c| c.anomaly_index)
                        .filter(|v| v.is_finite())
                        .fold(2.5f64, f64::max);
                    let bottom = cleanse
                        .classes
                        .iter()
                        .map(|c| c.anomaly_index)
                        .filter(|v| v.is_finite())
                        .fold(0.0f64, f64::min);
                    (bottom, top * 1.1)
                },
                reference: Some(("threshold 2".into(), 2.0)),
            },
        });
    }
    if let (Some(before), Some(after)) = (&poisoning.before_filtering, &poisoning.after_filtering) {
        let asr = |b: &gauntlet_record::BackdoorRecord| {
            b.attack_success_rate.map(|v| 100.0 * v).unwrap_or(f64::NAN)
        };
        out.push(Chart {
            name: format!("{prefix}filtering"),
            title: format!("{}: before and after filtering", input.label),
            caption: "Clean test accuracy and the backdoor's attack-success rate (triggered test images of other classes classified as the target) for the model trained on the poisoned set and the one retrained without the flagged samples.".into(),
            kind: ChartKind::Bars {
                x_label: "training set".into(),
                y_label: "rate (%)".into(),
                categories: vec!["poisoned".into(), "filtered".into()],
                groups: vec![
                    (
                        "clean accuracy".into(),
                        vec![100.0 * before.clean_accuracy, 100.0 * after.clean_accuracy],
                    ),
                    ("attack success".into(), vec![asr(before), asr(after)]),
                ],
                y_range: ACCURACY,
                reference: None,
            },
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roc_of_a_perfect_and_a_useless_score() {
        let perfect = roc(&[0.9, 0.8, 0.1, 0.2], &[true, true, false, false]);
        assert_eq!(
            perfect,
            [
                (0.0, 0.0),
                (0.0, 50.0),
                (0.0, 100.0),
                (50.0, 100.0),
                (100.0, 100.0)
            ]
        );
        // All scores tied: one diagonal step.
        let tied = roc(&[1.0; 4], &[true, false, true, false]);
        assert_eq!(tied, [(0.0, 0.0), (100.0, 100.0)]);
        assert!(roc(&[1.0], &[true]).is_empty());
    }
}
