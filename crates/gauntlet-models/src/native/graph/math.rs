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
