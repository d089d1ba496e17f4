//! Seeded training of Gauntlet's built-in architectures.
//!
//! Every random choice (initialisation, the shuffle of each epoch) comes from
//! ChaCha streams derived from one seed, never from candle's unseeded generator,
//! so a training run is reproducible bit for bit on the same machine and build.

mod optim;

use std::time::Instant;

use candle_core::{Device, D};
use gauntlet_core::{cross_entropy_sum, Classifier, NoProgress, Observer, SeedStream};
use gauntlet_data::Dataset;
use gauntlet_models::{Arch, Network, Normalization};
use serde::{Deserialize, Serialize};

pub use optim::{Adam, Optimizer, OptimizerKind, Sgd};

/// Errors of training.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of range.
    #[error("invalid training configuration: {0}")]
    Config(String),
    /// The data does not fit the architecture.
    #[error(transparent)]
    Eval(#[from] gauntlet_eval::Error),
    /// From the model layer.
    #[error(transparent)]
    Model(#[from] gauntlet_models::Error),
    /// From the data layer.
    #[error(transparent)]
    Data(#[from] gauntlet_data::Error),
    /// From the core vocabulary.
    #[error(transparent)]
    Core(#[from] gauntlet_core::Error),
    /// From candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The loss became NaN or infinite.
    #[error("training diverged: the loss became {loss} in epoch {epoch}, batch {batch}; lower the learning rate")]
    Diverged {
        /// Epoch (1-based).
        epoch: usize,
        /// Batch within the epoch (1-based).
        batch: usize,
        /// The loss value.
        loss: f64,
    },
}

/// Result with the training [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Standard (non-adversarial) training configuration. Defaults train the Madry
/// MNIST CNN well on mnist-5k.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Architecture to train (default `cnn`).
    pub arch: Arch,
    /// Passes over the training data (default 10).
    pub epochs: usize,
    /// Mini-batch size (default 50).
    pub batch_size: usize,
    /// Learning rate (default 1e-3, for Adam).
    pub learning_rate: f64,
    /// Optimiser (default Adam, Kingma & Ba 2015).
    pub optimizer: OptimizerKind,
    /// SGD momentum (default 0.9; ignored by Adam).
    pub momentum: f64,
    /// The run's seed (default 0).
    pub seed: u64,
    /// Input normalisation folded into the model (default none).
    pub normalization: Normalization,
    /// Batch size for the per-epoch evaluation (default 500).
    pub eval_batch_size: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            arch: Arch::Cnn,
            epochs: 10,
            batch_size: 50,
            learning_rate: 1e-3,
            optimizer: OptimizerKind::Adam,
            momentum: 0.9,
            seed: 0,
            normalization: Normalization::default(),
            eval_batch_size: 500,
        }
    }
}

impl TrainConfig {
    /// Check every value before any compute.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            return Err(Error::Config("epochs must be at least 1".into()));
        }
        if self.batch_size == 0 || self.eval_batch_size == 0 {
            return Err(Error::Config("batch sizes must be at least 1".into()));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(Error::Config(format!(
                "learning rate {} must be finite and > 0",
                self.learning_rate
            )));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(Error::Config(format!(
                "momentum {} must be in [0, 1)",
                self.momentum
            )));
        }
        Ok(())
    }
}

/// What happened in one epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches.
    pub train_loss: f64,
    /// Training accuracy over the epoch.
    pub train_accuracy: f64,
    /// Accuracy on the evaluation data after the epoch.
    pub test_accuracy: f64,
    /// Seconds for the epoch, evaluation included.
    pub wall_seconds: f64,
}

/// Train a fresh network on `train_data`, evaluating on `test_data` after every epoch.
pub fn train(
    config: &TrainConfig,
    train_data: &Dataset,
    test_data: &Dataset,
    observer: &dyn Observer,
) -> Result<(Network, Vec<EpochStats>)> {
    config.validate()?;
    let device = Device::Cpu;
    let seed = SeedStream::new(config.seed);
    let (network, vars) = Network::init(
        config.arch,
        config.normalization.clone(),
        &seed.derive("init"),
        &device,
    )?;
    gauntlet_eval::check_compatible(&network, train_data)?;
    gauntlet_eval::check_compatible(&network, test_data)?;
    let mut optimizer = Optimizer::new(
        config.optimizer,
        config.learning_rate,
        config.momentum,
        vars,
    )?;
    let n = train_data.len();
    let num_batches = n.div_ceil(config.batch_size);
    let mut history = Vec::with_capacity(config.epochs);
    for epoch in 1..=config.epochs {
        let started = Instant::now();
        let order = seed
            .derive(&format!("shuffle/epoch-{epoch}"))
            .permutation(n);
        observer.start(
            &format!("epoch {epoch}/{}", config.epochs),
            num_batches as u64,
        );
        let (mut loss_sum, mut correct) = (0.0, 0usize);
        for (b, indices) in order.chunks(config.batch_size).enumerate() {
            let (images, labels) = train_data.gather(indices, &device)?;
            let logits = network.logits(&images)?;
            let loss = (cross_entropy_sum(&logits, &labels)? / indices.len() as f64)?;
            let loss_value = loss.to_scalar::<f32>()? as f64;
            if !loss_value.is_finite() {
                return Err(Error::Diverged {
                    epoch,
                    batch: b + 1,
                    loss: loss_value,
                });
            }
            let grads = loss.backward()?;
            optimizer.step(&grads)?;
            let predicted = logits.detach().argmax(D::Minus1)?.to_vec1::<u32>()?;
            correct += predicted
                .iter()
                .zip(labels.to_vec1::<u32>()?)
                .filter(|(p, l)| **p == *l)
                .count();
            loss_sum += loss_value;
            let seen = (b * config.batch_size + indices.len()) as f64;
            observer.advance(
                1,
                &format!(
                    "loss {:.4} acc {:.2}%",
                    loss_sum / (b + 1) as f64,
                    100.0 * correct as f64 / seen
                ),
            );
        }
        let evaluation = gauntlet_eval::evaluate_clean(
            &network.detached(),
            test_data,
            config.eval_batch_size,
            &NoProgress,
        )?;
        let stats = EpochStats {
            epoch,
            train_loss: loss_sum / num_batches as f64,
            train_accuracy: correct as f64 / n as f64,
            test_accuracy: evaluation.accuracy,
            wall_seconds: started.elapsed().as_secs_f64(),
        };
        observer.finish(&format!(
            "epoch {epoch}: loss {:.4}, train {:.2}%, test {:.2}%, {:.1}s",
            stats.train_loss,
            100.0 * stats.train_accuracy,
            100.0 * stats.test_accuracy,
            stats.wall_seconds
        ));
        history.push(stats);
    }
    Ok((network.detached(), history))
}
