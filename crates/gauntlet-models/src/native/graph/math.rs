//! `exp`, `erf` and `tanh` without calls into libm, so the elementwise loops
//! that use them (SiLU, GELU, softmax) vectorise. Accurate to a few units in
//! the 7th significant digit, well inside the engine's 1e-4 agreement with the
//! reference executor (checked in the tests below against libm over the range
//! activations take).

use std::f32::consts::LN_2;

/// `e^x`: `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`, a degree-6 Taylor polynomial
/// for `e^r` (relative error below 2e-7), and `2^n` built in the exponent bits.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // Below -87.3 the result is under f32's smallest normal; above 88.7, inf.
    let x = x.clamp(-87.3, 88.7);
    // Round to nearest without a call: adding 1.5·2^23 drops the fraction.
    const ROUND: f32 = 12_582_912.0;
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    // ln 2 split in two so that n·LN2_HI is exact.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = LN_2 - LN2_HI;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // n lies in [-126, 128]: a normal power of two except 2^128, which the
    // clamp above only reaches for x = 88.7 where p·2^127·2 is still finite.
    let n = n as i32;
    let half = n / 2;
    let scale = |e: i32| f32::from_bits(((e + 127) as u32) << 23);
    p * scale(half) * scale(n - half)
}

/// Independent partial results per reduction, so the loops vectorise (a
/// single float accumulator is a serial chain the compiler may not reorder).
const LANES: usize = 8;

/// `Σ f(v)` over `values`, in eight interleaved partial sums added at the end:
/// a fixed order, so the same input gives the same sum.
#[inline(always)]
pub(crate) fn sum_map(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f(v);
        }
    }
    let mut total = tail.iter().map(|&v| f(v)).sum::<f32>();
    for lane in lanes {
        total += lane;
    }
    total
}

/// `Σ f(a, b)` over pairs, likewise in eight lanes.
#[inline(always)]
pub(crate) fn sum_zip(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let whole = n - n % LANES;
    for (ca, cb) in a[..whole]
        .chunks_exact(LANES)
        .zip(b[..whole].chunks_exact(LANES))
    {
        for ((lane, &x), &y) in lanes.iter_mut().zip(ca).zip(cb) {
            *lane += f(x, y);
        }
    }
    let mut total: f32 = a[whole..]
        .iter()
        .zip(&b[whole..])
        .map(|(&x, &y)| f(x, y))
        .sum();
    for lane in lanes {
        total += lane;
    }
    total
}

/// The largest of `values` (−∞ for none), likewise in eight lanes.
#[inline(always)]
pub(crate) fn max(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = if v > *lane { v } else { *lane };
        }
    }
    tail.iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// The error function, Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5e-7).
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let magnitude = 1.0 - poly * exp(-a * a);
    magnitude.copysign(x)
}

/// `tanh x = 1 − 2 / (e^{2x} + 1)`.
#[inline(always)]
pub(crate) fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

/// The logistic function.
#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_reductions_equal_plain_ones() {
        for len in [0, 1, 7, 8, 9, 65, 256] {
            let values: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let plain: f64 = values.iter().map(|&v| f64::from(v * v)).sum();
            let lanes = sum_map(&values, |v| v * v);
            assert!(
                (f64::from(lanes) - plain).abs() <= 1e-5 * plain.max(1.0),
                "{len}: {lanes} vs {plain}"
            );
            let largest = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&values), largest, "{len}");
            let ones = vec![1.0; len];
            let plain_dot: f64 = values.iter().map(|&v| f64::from(v)).sum();
            let lanes_dot = sum_zip(&values, &ones, |a, b| a * b);
            assert!(
                (f64::from(lanes_dot) - plain_dot).abs() <= 1e-4,
                "{len}: {lanes_dot} vs {plain_dot}"
            );
        }
    }

    #[test]
    fn approximations_agree_with_libm() {
        let mut worst = [0.0f32; 4];
        for i in -20_000..=20_000 {
            let x = i as f32 * 1e-3;
            let pairs = [
                (exp(x), x.exp(), true),
                (erf(x), libm::erff(x), false),
                (tanh(x), x.tanh(), false),
                (sigmoid(x), 1.0 / (1.0 + (-x).exp()), false),
            ];
            for (k, (ours, exact, relative)) in pairs.into_iter().enumerate() {
                let error = (ours - exact).abs() / if relative { exact } else { 1.0 };
                worst[k] = worst[k].max(error);
            }
        }
        assert!(worst[0] < 5e-7, "exp relative error {}", worst[0]);
        assert!(
            worst.iter().skip(1).all(|e| *e < 5e-7),
            "abs errors {worst:?}"
        );
        assert_eq!(exp(-200.0), 0.0f32.max(exp(-200.0)));
        assert!(exp(100.0).is_finite() && exp(100.0) > 1e38);
        assert!(erf(0.0).abs() < 2e-7);
        assert!((erf(-1.0) + erf(1.0)).abs() < 1e-7);
    }
}
