//! Scoring detectors against ground truth.

pub use gauntlet_record::DetectionMetrics;

/// Compare `flagged` and `scores` with `truth` (all one entry per sample).
pub fn detection_metrics(flagged: &[bool], scores: &[f64], truth: &[bool]) -> DetectionMetrics {
    let samples = truth.len();
    let poisoned = truth.iter().filter(|&&t| t).count();
    let flagged_count = flagged.iter().filter(|&&f| f).count();
    let true_positives = flagged.iter().zip(truth).filter(|(&f, &t)| f && t).count();
    let precision = if flagged_count == 0 {
        1.0
    } else {
        true_positives as f64 / flagged_count as f64
    };
    let recall = if poisoned == 0 {
        1.0
    } else {
        true_positives as f64 / poisoned as f64
    };
    let f1 = if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    };
    let clean = samples - poisoned;
    let false_positive_rate = if clean == 0 {
        0.0
    } else {
        (flagged_count - true_positives) as f64 / clean as f64
    };
    DetectionMetrics {
        samples,
        poisoned,
        flagged: flagged_count,
        true_positives,
        precision,
        recall,
        f1,
        false_positive_rate,
        auroc: auroc(scores, truth),
    }
}

/// Area under the ROC curve: the probability that a random positive scores above a
/// random negative, ties counting half (the Mann–Whitney U statistic).
pub fn auroc(scores: &[f64], truth: &[bool]) -> Option<f64> {
    let positives = truth.iter().filter(|&&t| t).count();
    let negatives = truth.len() - positives;
    if positives == 0 || negatives == 0 || scores.len() != truth.len() {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Average ranks over ties, then U = sum of positive ranks − P(P+1)/2.
    let mut rank_sum = 0.0f64;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let average_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            if truth[k] {
                rank_sum += average_rank;
            }
        }
        i = j + 1;
    }
    let p = positives as f64;
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * negatives as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_and_inverted_scores() {
        let truth = [false, false, true, true];
        assert_eq!(auroc(&[0.1, 0.2, 0.8, 0.9], &truth), Some(1.0));
        assert_eq!(auroc(&[0.9, 0.8, 0.2, 0.1], &truth), Some(0.0));
        assert_eq!(auroc(&[0.5; 4], &truth), Some(0.5));
        assert_eq!(auroc(&[0.5; 2], &[true, true]), None);
    }

    #[test]
    fn precision_recall_and_f1_count_correctly() {
        let truth = [true, true, false, false, false];
        let flagged = [true, false, true, false, false];
        let m = detection_metrics(&flagged, &[0.0; 5], &truth);
        assert_eq!((m.true_positives, m.flagged, m.poisoned), (1, 2, 2));
        assert!((m.precision - 0.5).abs() < 1e-12 && (m.recall - 0.5).abs() < 1e-12);
        assert!((m.f1 - 0.5).abs() < 1e-12);
        assert!((m.false_positive_rate - 1.0 / 3.0).abs() < 1e-12);
    }
}
