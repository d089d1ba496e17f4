use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

/// A keyed source of reproducible randomness.
///
/// One `u64` seed per run is recorded; every random choice draws from a sub-stream
/// derived from it by a key (e.g. `"init"`, `"shuffle/epoch-3"`), so adding,
/// skipping or resuming one consumer never shifts another. candle's CPU random
/// number generator cannot be seeded, so all noise is drawn here, on the host, from
/// ChaCha8, and turned into tensors with `Tensor::from_vec`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedStream {
    seed: u64,
    key: [u8; 32],
}

impl SeedStream {
    /// The root stream of a run.
    pub fn new(seed: u64) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"gauntlet-seed-v1");
        hasher.update(seed.to_le_bytes());
        Self {
            seed,
            key: hasher.finalize().into(),
        }
    }

    /// The run's seed, as recorded.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// An independent sub-stream named by `label`.
    pub fn derive(&self, label: &str) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(self.key);
        hasher.update((label.len() as u64).to_le_bytes());
        hasher.update(label.as_bytes());
        Self {
            seed: self.seed,
            key: hasher.finalize().into(),
        }
    }

    /// A fresh generator at the start of this stream.
    pub fn rng(&self) -> ChaCha8Rng {
        ChaCha8Rng::from_seed(self.key)
    }

    /// `n` values uniform in `[low, high)`.
    pub fn uniform_f32(&self, n: usize, low: f32, high: f32) -> Vec<f32> {
        use rand::Rng;
        let mut rng = self.rng();
        (0..n).map(|_| rng.random_range(low..high)).collect()
    }

    /// `n` standard normal values.
    pub fn normal_f32(&self, n: usize) -> Vec<f32> {
        use rand::Rng;
        let mut rng = self.rng();
        (0..n)
            .map(|_| rng.sample::<f32, _>(rand_distr::StandardNormal))
            .collect()
    }

    /// `n` values that are each -1 or +1 with equal probability.
    pub fn signs_f32(&self, n: usize) -> Vec<f32> {
        use rand::Rng;
        let mut rng = self.rng();
        (0..n)
            .map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 })
            .collect()
    }

    /// `n` integers uniform in `0..bound` (`bound` > 0).
    pub fn below(&self, n: usize, bound: usize) -> Vec<usize> {
        use rand::Rng;
        let mut rng = self.rng();
        (0..n).map(|_| rng.random_range(0..bound.max(1))).collect()
    }

    /// A uniformly random permutation of `0..n` (Fisher–Yates).
    pub fn permutation(&self, n: usize) -> Vec<usize> {
        use rand::seq::SliceRandom;
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut self.rng());
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_and_label_give_the_same_stream() {
        let a = SeedStream::new(7).derive("init");
        let b = SeedStream::new(7).derive("init");
        assert_eq!(a.uniform_f32(16, -1.0, 1.0), b.uniform_f32(16, -1.0, 1.0));
    }

    #[test]
    fn different_labels_and_seeds_give_different_streams() {
        let root = SeedStream::new(7);
        let x = root.derive("a").uniform_f32(8, 0.0, 1.0);
        assert_ne!(x, root.derive("b").uniform_f32(8, 0.0, 1.0));
        assert_ne!(x, SeedStream::new(8).derive("a").uniform_f32(8, 0.0, 1.0));
    }

    #[test]
    fn permutation_is_a_permutation() {
        let mut p = SeedStream::new(1).permutation(1000);
        assert_ne!(p, (0..1000).collect::<Vec<_>>());
        p.sort_unstable();
        assert_eq!(p, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn normal_values_have_unit_variance() {
        let v = SeedStream::new(4).normal_f32(20_000);
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / v.len() as f32;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "mean {mean}, var {var}"
        );
        let s = SeedStream::new(4).signs_f32(1000);
        assert!(s.iter().all(|x| *x == 1.0 || *x == -1.0));
        assert!(s.iter().filter(|x| **x > 0.0).count().abs_diff(500) < 80);
    }

    #[test]
    fn uniform_values_stay_in_range() {
        let v = SeedStream::new(3).uniform_f32(10_000, -0.5, 0.25);
        assert!(v.iter().all(|x| (-0.5..0.25).contains(x)));
    }
}
