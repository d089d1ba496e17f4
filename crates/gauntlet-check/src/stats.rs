//! McNemar's exact test and the matching confidence interval of a paired drop in
//! accuracy (McNemar 1947; interval by inverting the exact binomial test,
//! Clopper & Pearson 1934, conditional on the number of discordant samples).

/// A paired comparison of per-sample correctness on the same samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PairedDrop {
    /// Samples compared.
    pub samples: usize,
    /// Correct in the baseline, wrong now.
    pub lost: usize,
    /// Wrong in the baseline, correct now.
    pub gained: usize,
    /// Observed drop in accuracy, `(lost − gained) / samples` (negative: improved).
    pub drop: f64,
    /// Two-sided `1 − alpha` confidence interval of the drop.
    pub interval: (f64, f64),
    /// One-sided exact McNemar p-value for "now is worse".
    pub p_value: f64,
}

/// Compare `baseline` and `now` (per-sample correctness, same samples in the same
/// order) at significance level `alpha`.
pub fn paired_drop(baseline: &[bool], now: &[bool], alpha: f64) -> PairedDrop {
    let samples = baseline.len().min(now.len());
    let lost = baseline.iter().zip(now).filter(|(&b, &n)| b && !n).count();
    let gained = baseline.iter().zip(now).filter(|(&b, &n)| !b && n).count();
    let discordant = lost + gained;
    if samples == 0 || discordant == 0 {
        return PairedDrop {
            samples,
            lost,
            gained,
            drop: 0.0,
            interval: (0.0, 0.0),
            p_value: 1.0,
        };
    }
    // Under "no difference", each discordant sample is a loss with probability 1/2.
    let p_value = binomial_at_least(lost, discordant, 0.5);
    let (low, high) = clopper_pearson(lost, discordant, alpha);
    let scale = discordant as f64 / samples as f64;
    PairedDrop {
        samples,
        lost,
        gained,
        drop: (lost as f64 - gained as f64) / samples as f64,
        interval: (scale * (2.0 * low - 1.0), scale * (2.0 * high - 1.0)),
        p_value,
    }
}

/// `P(X ≥ k)` for `X ~ Binomial(m, p)`, summed in log space (exact for any m).
pub fn binomial_at_least(k: usize, m: usize, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > m {
        return 0.0;
    }
    if p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    let logs = log_pmf(m, p);
    log_sum_exp(&logs[k..]).exp().min(1.0)
}

/// `P(X ≤ k)` for `X ~ Binomial(m, p)`.
pub fn binomial_at_most(k: usize, m: usize, p: f64) -> f64 {
    if k >= m {
        return 1.0;
    }
    1.0 - binomial_at_least(k + 1, m, p)
}

fn log_pmf(m: usize, p: f64) -> Vec<f64> {
    let mut logs = Vec::with_capacity(m + 1);
    let mut current = m as f64 * (1.0 - p).ln();
    let ratio = (p / (1.0 - p)).ln();
    logs.push(current);
    for j in 0..m {
        current += ((m - j) as f64).ln() - ((j + 1) as f64).ln() + ratio;
        logs.push(current);
    }
    logs
}

fn log_sum_exp(values: &[f64]) -> f64 {
    let top = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !top.is_finite() {
        return top;
    }
    top + values.iter().map(|v| (v - top).exp()).sum::<f64>().ln()
}

/// The exact two-sided `1 − alpha` interval of a binomial proportion with `k`
/// successes in `m` trials.
pub fn clopper_pearson(k: usize, m: usize, alpha: f64) -> (f64, f64) {
    let tail = alpha / 2.0;
    // P(X ≥ k | θ) grows with θ; P(X ≤ k | θ) falls with θ.
    let low = if k == 0 {
        0.0
    } else {
        bisect(|theta| binomial_at_least(k, m, theta) < tail)
    };
    let high = if k == m {
        1.0
    } else {
        bisect(|theta| binomial_at_most(k, m, theta) > tail)
    };
    (low, high)
}

/// The boundary in (0, 1) where `below` turns from true to false.
fn bisect(below: impl Fn(f64) -> bool) -> f64 {
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if below(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binomial_tails_match_hand_computed_values() {
        // Bin(10, 1/2): P(X ≥ 8) = (45 + 10 + 1) / 1024.
        assert!((binomial_at_least(8, 10, 0.5) - 56.0 / 1024.0).abs() < 1e-12);
        assert!((binomial_at_most(2, 10, 0.5) - 56.0 / 1024.0).abs() < 1e-12);
        assert_eq!(binomial_at_least(0, 10, 0.3), 1.0);
        assert_eq!(binomial_at_least(11, 10, 0.3), 0.0);
        // Large m stays finite and sums to one.
        let total = binomial_at_least(0, 100_000, 0.5);
        assert!((total - 1.0).abs() < 1e-9);
        assert!((binomial_at_least(50_001, 100_000, 0.5) - 0.4987).abs() < 1e-3);
    }

    #[test]
    fn clopper_pearson_inverts_the_exact_test() {
        // Textbook value: 0 of 10 → upper bound 1 − 0.025^(1/10) = 0.3085.
        let (low, high) = clopper_pearson(0, 10, 0.05);
        assert_eq!(low, 0.0);
        assert!((high - 0.308_5).abs() < 1e-3, "{high}");
        let (low, high) = clopper_pearson(5, 10, 0.05);
        assert!(
            (low - 0.187_1).abs() < 1e-3 && (high - 0.812_9).abs() < 1e-3,
            "{low} {high}"
        );
        let (low, high) = clopper_pearson(7, 7, 0.05);
        assert!(low > 0.5 && high == 1.0);
    }

    #[test]
    fn a_paired_drop_is_significant_only_when_it_is_lopsided() {
        let n = 1000;
        let base = vec![true; n];
        // 40 samples lost, none gained: a real regression.
        let mut worse = base.clone();
        for w in worse.iter_mut().take(40) {
            *w = false;
        }
        let regression = paired_drop(&base, &worse, 0.05);
        assert_eq!((regression.lost, regression.gained), (40, 0));
        assert!((regression.drop - 0.04).abs() < 1e-12);
        assert!(regression.p_value < 1e-9);
        assert!(regression.interval.0 > 0.0 && regression.interval.0 < 0.04);
        // 5 lost and 3 gained among otherwise identical results: noise.
        let mut base = vec![true; n];
        for b in base.iter_mut().skip(500).take(3) {
            *b = false;
        }
        let mut now = vec![true; n];
        for w in now.iter_mut().take(5) {
            *w = false;
        }
        let noise = paired_drop(&base, &now, 0.05);
        assert_eq!((noise.lost, noise.gained), (5, 3));
        assert!(noise.p_value > 0.3);
        assert!(noise.interval.0 < 0.0 && noise.interval.1 > 0.0);
        let same = paired_drop(&base, &base, 0.05);
        assert_eq!(
            (same.drop, same.p_value, same.interval),
            (0.0, 1.0, (0.0, 0.0))
        );
    }
}
