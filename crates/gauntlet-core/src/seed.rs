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
///
/// A stream can be bound to the samples of a batch ([`SeedStream::per_sample`]):
/// then every draw of a multiple of the batch size is split into one sub-stream per
/// sample, keyed by the sample's index in the dataset, so what a sample gets does
/// not depend on which other samples share its batch. That makes results identical
/// whatever the batch size, sharding or resumption.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedStream {
    seed: u64,
    key: [u8; 32],
    samples: Option<std::sync::Arc<[usize]>>,
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
            samples: None,
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
            samples: self.samples.clone(),
        }
    }

    /// This stream bound to a batch: row `r` of the batch is dataset sample `ids[r]`.
    pub fn per_sample(&self, ids: &[usize]) -> Self {
        Self {
            samples: Some(ids.into()),
            ..self.clone()
        }
    }

    /// The stream bound to some rows of its batch (`rows` index the current batch),
    /// for draws over a subset such as the samples still being attacked.
    pub fn rows(&self, rows: &[usize]) -> Self {
        match &self.samples {
            Some(ids) => Self {
                samples: Some(rows.iter().filter_map(|&r| ids.get(r).copied()).collect()),
                ..self.clone()
            },
            None => self.clone(),
        }
    }

    /// `n` values drawn by `draw`, split per sample when bound to a batch and `n`
    /// is a multiple of its size.
    fn draw<T>(&self, n: usize, draw: impl Fn(&Self, usize) -> Vec<T>) -> Vec<T> {
        match &self.samples {
            Some(ids) if !ids.is_empty() && n.is_multiple_of(ids.len()) => {
                let per = n / ids.len();
                let mut out = Vec::with_capacity(n);
                for id in ids.iter() {
                    let sub = Self {
                        samples: None,
                        ..self.derive(&format!("sample-{id}"))
                    };
                    out.extend(draw(&sub, per));
                }
                out
            }
            _ => draw(self, n),
        }
    }

    /// A fresh generator at the start of this stream.
    pub fn rng(&self) -> ChaCha8Rng {
        ChaCha8Rng::from_seed(self.key)
    }

    /// `n` values uniform in `[low, high)`.
    pub fn uniform_f32(&self, n: usize, low: f32, high: f32) -> Vec<f32> {
        use rand::Rng;
        self.draw(n, |s, n| {
            let mut rng = s.rng();
            (0..n).map(|_| rng.random_range(low..high)).collect()
        })
    }

    /// `n` standard normal values.
    pub fn normal_f32(&self, n: usize) -> Vec<f32> {
        use rand::Rng;
        self.draw(n, |s, n| {
            let mut rng = s.rng();
            (0..n)
                .map(|_| rng.sample::<f32, _>(rand_distr::StandardNormal))
                .collect()
        })
    }

    /// `n` values that are each -1 or +1 with equal probability.
    pub fn signs_f32(&self, n: usize) -> Vec<f32> {
        use rand::Rng;
        self.draw(n, |s, n| {
            let mut rng = s.rng();
            (0..n)
                .map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 })
                .collect()
        })
    }

    /// `n` integers uniform in `0..bound` (`bound` > 0).
    pub fn below(&self, n: usize, bound: usize) -> Vec<usize> {
        use rand::Rng;
        self.draw(n, |s, n| {
            let mut rng = s.rng();
            (0..n).map(|_| rng.random_range(0..bound.max(1))).collect()
        })
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
    fn per_sample_draws_do_not_depend_on_the_batch() {
        let root = SeedStream::new(3).derive("pgd");
        let together = root.per_sample(&[4, 9, 17]).uniform_f32(3 * 5, 0.0, 1.0);
        let alone = root.per_sample(&[9]).uniform_f32(5, 0.0, 1.0);
        assert_eq!(&together[5..10], &alone[..]);
        let other_batch = root.per_sample(&[9, 2]).uniform_f32(2 * 5, 0.0, 1.0);
        assert_eq!(&other_batch[..5], &alone[..]);
        // A subset of rows keeps each sample's stream.
        let rows = root.per_sample(&[4, 9, 17]).rows(&[1, 2]).signs_f32(2 * 3);
        assert_eq!(&rows[..3], &root.per_sample(&[9]).signs_f32(3)[..]);
        // Derived streams stay bound; unbound draws are unchanged.
        let derived = root.per_sample(&[9]).derive("x").normal_f32(4);
        assert_eq!(derived, root.derive("x").per_sample(&[9]).normal_f32(4));
        assert_ne!(root.uniform_f32(5, 0.0, 1.0), alone);
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
