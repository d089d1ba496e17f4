//! Merging the records of `--shard K/N` runs into the record of the whole run.

use crate::{accuracy_of, AttackKind, AttackRecord, Error, Norm, Result, RunKind, RunRecord};

fn refuse(message: String) -> Error {
    Error::Merge(message)
}

/// What identifies an attack run apart from its results.
fn attack_key(a: &AttackRecord) -> (String, Norm, AttackKind, String, String, u64) {
    (
        a.attack.clone(),
        a.norm,
        a.kind,
        a.parameters.to_string(),
        a.target.to_string(),
        a.epsilon.to_bits(),
    )
}

/// Check the shards describe one evaluation split into `count` contiguous slices,
/// each given once, and combine them: per-sample results concatenated in sample
/// order, accuracies recomputed, work counters and seconds summed. The result
/// equals the unsharded run's record except for timings, the command line (the
/// shard's, without `--shard`), mean perturbations (re-weighted, equal up to
/// rounding) and sanity warnings (those found in any shard, once per code).
pub fn merge_shards(shards: &[RunRecord]) -> Result<RunRecord> {
    let (head, ordered) = ordered_shards(shards)?;
    // The header comes from the first record given, as the user listed them.
    let Some(first) = shards.first() else {
        return Err(refuse("no shard records given".into()));
    };
    let mut merged = first.clone();
    merged.shard = None;
    merged.dataset.num_samples = head.total_samples;
    merged.wall_seconds = ordered.iter().map(|(_, r)| r.wall_seconds).sum();
    merged.command = without_shard_flag(&first.command);
    if let Some(clean) = merged.clean.as_mut() {
        clean.correct.clear();
        clean.predictions.clear();
        clean.labels.clear();
        for (_, r) in &ordered {
            let part = r
                .clean
                .as_ref()
                .ok_or_else(|| refuse("a shard has no clean results".into()))?;
            clean.correct.extend(&part.correct);
            clean.predictions.extend(&part.predictions);
            clean.labels.extend(&part.labels);
        }
        clean.accuracy = accuracy_of(&clean.correct);
    }
    if let Some(robustness) = merged.robustness.as_mut() {
        let parts: Vec<&crate::RobustnessRecord> = ordered
            .iter()
            .map(|(_, r)| {
                r.robustness
                    .as_ref()
                    .ok_or_else(|| refuse("a shard has no attack results".into()))
            })
            .collect::<Result<_>>()?;
        merge_robustness(robustness, &parts);
    }
    Ok(merged)
}

/// The shards in sample order with their shard sections, after checking that
/// they are evaluation records of one run (same tool, seed, model, data and
/// attacks), each given once, contiguous and covering every sample; and the
/// first one's shard section.
fn ordered_shards(
    shards: &[RunRecord],
) -> Result<(crate::ShardRecord, Vec<(crate::ShardRecord, &RunRecord)>)> {
    let first = shards
        .first()
        .ok_or_else(|| refuse("no shard records given".into()))?;
    let head = shard_of(first)?;
    let mut ordered: Vec<(crate::ShardRecord, &RunRecord)> = Vec::with_capacity(shards.len());
    for record in shards {
        let shard = shard_of(record)?;
        check_same_run(record, &shard, first, &head)?;
        if ordered.iter().any(|(s, _)| s.index == shard.index) {
            return Err(refuse(format!(
                "shard {}/{} is given twice",
                shard.index, shard.count
            )));
        }
        ordered.push((shard, record));
    }
    ordered.sort_by_key(|(s, _)| s.index);
    let present: Vec<usize> = ordered.iter().map(|(s, _)| s.index).collect();
    let missing: Vec<String> = (1..=head.count)
        .filter(|k| !present.contains(k))
        .map(|k| format!("{k}/{}", head.count))
        .collect();
    if !missing.is_empty() {
        return Err(refuse(format!("shard {} missing", missing.join(", "))));
    }
    let mut next = 0;
    for (shard, record) in &ordered {
        if shard.first_sample != next {
            return Err(refuse(format!(
                "shard {}/{} starts at sample {} but the shards before it end at {} (overlap or gap)",
                shard.index, shard.count, shard.first_sample, next
            )));
        }
        next += record.dataset.num_samples;
    }
    if next != head.total_samples {
        return Err(refuse(format!(
            "the shards cover {next} samples, the evaluation has {}",
            head.total_samples
        )));
    }
    Ok((head, ordered))
}

/// A record's shard section, or why it is not a shard.
fn shard_of(record: &RunRecord) -> Result<crate::ShardRecord> {
    record.shard.clone().ok_or_else(|| {
        refuse(format!(
            "the record of {} on {} is not a shard (no shard section)",
            record.model.path, record.dataset.path
        ))
    })
}

/// Refuse a shard that is not part of the same evaluation as the first.
fn check_same_run(
    record: &RunRecord,
    shard: &crate::ShardRecord,
    first: &RunRecord,
    head: &crate::ShardRecord,
) -> Result<()> {
    if record.kind != RunKind::Eval {
        return Err(refuse("only evaluation records are sharded".into()));
    }
    if shard.count != head.count || shard.total_samples != head.total_samples {
        return Err(refuse(format!(
            "shard {}/{} of {} samples does not belong with shard {}/{} of {} samples",
            shard.index,
            shard.count,
            shard.total_samples,
            head.index,
            head.count,
            head.total_samples
        )));
    }
    let same = |what: &str, ok: bool| -> Result<()> {
        if ok {
            Ok(())
        } else {
            Err(refuse(format!(
                "shard {} differs from shard {} in its {what}",
                shard.index, head.index
            )))
        }
    };
    same("tool version", record.tool == first.tool)?;
    same("seed", record.seed == first.seed)?;
    same("model", record.model == first.model)?;
    let dataset = |r: &RunRecord| {
        (
            r.dataset.path.clone(),
            r.dataset.sha256.clone(),
            r.dataset.split,
        )
    };
    same("dataset", dataset(record) == dataset(first))?;
    let suite = |r: &RunRecord| r.robustness.as_ref().map(|rb| rb.suite.clone());
    same("attack suite", suite(record) == suite(first))?;
    let attacks = |r: &RunRecord| -> Vec<_> {
        r.robustness
            .iter()
            .flat_map(|rb| rb.attacks.iter().map(attack_key))
            .collect()
    };
    same(
        "attacks, parameters or ε grid",
        attacks(record) == attacks(first),
    )
}

/// The whole run's command: a shard's without `--shard K/N`.
fn without_shard_flag(command: &[String]) -> Vec<String> {
    let mut whole = Vec::with_capacity(command.len());
    let mut skip = false;
    for arg in command {
        if skip {
            skip = false;
        } else if arg == "--shard" {
            skip = true;
        } else if !arg.starts_with("--shard=") {
            whole.push(arg.clone());
        }
    }
    whole
}

/// The robustness section of the whole run from the shards' (in sample order):
/// per-sample verdicts concatenated, accuracies recomputed, work summed,
/// warnings once per code, the gallery's first examples by index.
fn merge_robustness(robustness: &mut crate::RobustnessRecord, parts: &[&crate::RobustnessRecord]) {
    for (j, attack) in robustness.attacks.iter_mut().enumerate() {
        let all: Vec<&AttackRecord> = parts.iter().map(|p| &p.attacks[j]).collect();
        merge_attack(attack, &all);
    }
    for (j, minimal) in robustness.minimal.iter_mut().enumerate() {
        minimal.norms = parts
            .iter()
            .flat_map(|p| {
                p.minimal
                    .get(j)
                    .map(|m| m.norms.clone())
                    .unwrap_or_default()
            })
            .collect();
    }
    for (j, best) in robustness.best_known.iter_mut().enumerate() {
        best.norms = parts
            .iter()
            .flat_map(|p| {
                p.best_known
                    .get(j)
                    .map(|b| b.norms.clone())
                    .unwrap_or_default()
            })
            .collect();
    }
    for (j, worst) in robustness.worst_case.iter_mut().enumerate() {
        worst.robust = parts
            .iter()
            .flat_map(|p| {
                p.worst_case
                    .get(j)
                    .map(|w| w.robust.clone())
                    .unwrap_or_default()
            })
            .collect();
        worst.robust_accuracy = accuracy_of(&worst.robust);
    }
    robustness.warnings.clear();
    for part in parts {
        for w in &part.warnings {
            if !robustness.warnings.iter().any(|m| m.code == w.code) {
                robustness.warnings.push(w.clone());
            }
        }
    }
    let mut gallery: Vec<_> = parts
        .iter()
        .flat_map(|p| p.gallery.iter().cloned())
        .collect();
    gallery.sort_by_key(|g| g.index);
    gallery.truncate(crate::GALLERY_SIZE);
    robustness.gallery = gallery;
}

/// One attack at one ε over the whole run, from its record in every shard.
fn merge_attack(attack: &mut AttackRecord, all: &[&AttackRecord]) {
    attack.robust = all.iter().flat_map(|a| a.robust.iter().copied()).collect();
    attack.robust_accuracy = accuracy_of(&attack.robust);
    attack.attacked = all.iter().map(|a| a.attacked).sum();
    attack.newly_broken = all.iter().map(|a| a.newly_broken).sum();
    attack.gradient_evaluations = all.iter().map(|a| a.gradient_evaluations).sum();
    attack.forward_evaluations = all.iter().map(|a| a.forward_evaluations).sum();
    attack.rejected = all.iter().map(|a| a.rejected).sum();
    attack.wall_seconds = all.iter().map(|a| a.wall_seconds).sum();
    attack.max_perturbation = all.iter().map(|a| a.max_perturbation).fold(0.0, f64::max);
    // The mean over every sample found, re-weighted by each shard's count.
    let found = attack.newly_broken;
    attack.mean_perturbation = if found == 0 {
        0.0
    } else {
        all.iter()
            .map(|a| a.mean_perturbation * a.newly_broken as f64)
            .sum::<f64>()
            / found as f64
    };
}
