//! Random operators (a randomised defence's `randn_like`/`rand_like`): fresh
//! noise on every forward pass, drawn exactly as the reference executor draws it.

use gauntlet_core::SeedStream;

use crate::graph::Distribution;

/// Noise shaped like a batched value. Drawn from the pass's stream under the
/// value's name in the graph's row-major order (batch first), the order the
/// reference executor draws in, then stored in the slot's layout; so both
/// executors compute with the same noise after the same reseed. No gradient
/// flows through it (the step reads no slot).
#[derive(Clone, Debug)]
pub(super) struct RandomNoise {
    pub distribution: Distribution,
    /// The graph value it writes: its stream's label.
    pub label: String,
    /// Per-sample `[C, H, W]` when stored channels-last (then transposed).
    pub channels_last: Option<(usize, usize)>,
}

impl RandomNoise {
    /// Fills `out` (whole samples) from `pass`, or with the mean without one.
    pub fn forward(&self, pass: Option<&SeedStream>, out: &mut [f32]) {
        let stream = pass.map(|p| p.derive(&self.label));
        let values = self.distribution.values(out.len(), stream.as_ref());
        match self.channels_last {
            // Per sample: channel-major (as drawn) to pixel-major (as stored).
            Some((channels, pixels)) if stream.is_some() => {
                crate::native::kernels::transpose_into(&values, out, channels, pixels)
            }
            _ => out.copy_from_slice(&values),
        }
    }
}
