//! Seeded training of Gauntlet's built-in architectures.
//!
//! Every random choice (initialisation, the shuffle of each epoch) comes from
//! ChaCha streams derived from one seed, never from candle's unseeded generator,
//! so a training run is reproducible bit for bit on the same machine and build.

mod optim;

use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use gauntlet_core::{Classifier, NoProgress, Norm, Observer, SeedStream};
use gauntlet_data::Dataset;
use gauntlet_models::{Arch, NativeClassifier, Network, Normalization};
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
    /// From the attacks that make adversarial training examples.
    #[error(transparent)]
    Attack(#[from] gauntlet_attacks::Error),
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
    /// Train on adversarial examples instead of clean ones (default: standard training).
    #[serde(default)]
    pub adversarial: Option<AdversarialTraining>,
}

/// How adversarial examples for training are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdversarialMethod {
    /// PGD adversarial training, Madry et al. 2018 ("Towards Deep Learning Models
    /// Resistant to Adversarial Attacks"): every batch is replaced by PGD examples
    /// from a uniform random start inside the ε-ball.
    Pgd,
}

/// Adversarial-training settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdversarialTraining {
    /// The method.
    pub method: AdversarialMethod,
    /// Threat model's norm (default L∞).
    pub norm: Norm,
    /// Radius of the threat model.
    pub epsilon: f64,
    /// Attack steps per batch (Madry et al.: 40 on MNIST; 10 is the common budget).
    pub steps: usize,
    /// Absolute step size (Madry et al.'s rule: 2.5·ε / steps).
    pub step_size: f64,
}

impl AdversarialTraining {
    /// PGD-L∞ training with `steps` steps of 2.5·ε/steps.
    pub fn pgd(epsilon: f64, steps: usize) -> Self {
        Self {
            method: AdversarialMethod::Pgd,
            norm: Norm::Linf,
            epsilon,
            steps,
            step_size: 2.5 * epsilon / steps.max(1) as f64,
        }
    }

    fn validate(&self) -> Result<()> {
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return Err(Error::Config(format!(
                "adversarial epsilon {} must be finite and > 0",
                self.epsilon
            )));
        }
        if self.steps == 0 {
            return Err(Error::Config("adversarial steps must be at least 1".into()));
        }
        if !(self.step_size.is_finite() && self.step_size > 0.0) {
            return Err(Error::Config(format!(
                "adversarial step size {} must be finite and > 0",
                self.step_size
            )));
        }
        Ok(())
    }

    /// The attack that makes the training examples.
    fn attack(&self) -> Result<Box<dyn gauntlet_attacks::Attack>> {
        let name = match self.norm {
            Norm::Linf => "pgd-linf",
            Norm::L2 => "pgd-l2",
        };
        let params = serde_json::json!({
            "steps": self.steps,
            "step_size": {"absolute": self.step_size},
            "random_start": true,
            "restarts": 1,
        });
        Ok(gauntlet_attacks::build_attack(name, &params)?)
    }
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
            adversarial: None,
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
        if let Some(adversarial) = &self.adversarial {
            adversarial.validate()?;
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
    let (initial, _) = Network::init(
        config.arch,
        config.normalization.clone(),
        &seed.derive("init"),
        &device,
    )?;
    let initial = initial.detached();
    gauntlet_eval::check_compatible(&initial, train_data)?;
    gauntlet_eval::check_compatible(&initial, test_data)?;
    let Some(engine) = initial.native() else {
        return Err(Error::Config(
            "training runs on the CPU's native engine with f32 weights".into(),
        ));
    };
    // Shared with the classifier that adversarial training attacks; the optimiser
    // writes through `Arc::make_mut` once the attack's graph has been dropped.
    let mut engine = Arc::new(engine.clone());
    let bounds = initial.bounds();
    let attack = config
        .adversarial
        .as_ref()
        .map(AdversarialTraining::attack)
        .transpose()?;
    let mut optimizer = Optimizer::new(
        config.optimizer,
        config.learning_rate,
        config.momentum,
        engine.params().len(),
    );
    let mut param_grads = vec![0.0f32; engine.params().len()];
    let classes = config.arch.num_classes();
    let n = train_data.len();
    let num_batches = n.div_ceil(config.batch_size);
    let mut history = Vec::with_capacity(config.epochs);
    let mut network = initial;
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
            let labels = labels.to_vec1::<u32>()?;
            let images = match (&attack, &config.adversarial) {
                (Some(attack), Some(adversarial)) => {
                    let model = NativeClassifier::new(Arc::clone(&engine), bounds);
                    let outcome = gauntlet_attacks::run_attack(
                        attack.as_ref(),
                        &model,
                        &images,
                        &gauntlet_attacks::Goal::Untargeted {
                            labels: labels.clone(),
                        },
                        adversarial.epsilon,
                        &seed.derive(&format!("adversarial/epoch-{epoch}/batch-{b}")),
                    )?;
                    outcome.adversarial
                }
                _ => images,
            };
            let images = images.flatten_all()?.to_vec1::<f32>()?;
            let (logits, activations) = engine.forward(&images, indices.len(), true)?;
            let batch = softmax_cross_entropy(&logits, &labels, classes)?;
            if !batch.mean_loss.is_finite() {
                return Err(Error::Diverged {
                    epoch,
                    batch: b + 1,
                    loss: batch.mean_loss,
                });
            }
            if let Some(activations) = activations {
                param_grads.fill(0.0);
                engine.backward(
                    &activations,
                    &batch.grad_logits,
                    false,
                    Some(&mut param_grads),
                )?;
                optimizer.step(Arc::make_mut(&mut engine).params_mut(), &param_grads)?;
            }
            correct += batch.correct;
            loss_sum += batch.mean_loss;
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
        network = Network::from_native(&engine, bounds, &device)?;
        let evaluation = gauntlet_eval::evaluate_clean(
            &network,
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
    Ok((network, history))
}

/// Mean cross-entropy of a batch, its gradient with respect to the logits, and
/// how many predictions were right.
pub struct BatchLoss {
    /// Mean over the batch of `-log softmax(z)_y`.
    pub mean_loss: f64,
    /// `(softmax(z) - onehot(y)) / n`, row-major `(n, classes)`.
    pub grad_logits: Vec<f32>,
    /// Samples whose largest logit is their label.
    pub correct: usize,
}

/// Softmax cross-entropy on raw logits, computed in f64 with the max subtracted.
pub fn softmax_cross_entropy(logits: &[f32], labels: &[u32], classes: usize) -> Result<BatchLoss> {
    let n = labels.len();
    if classes == 0 || logits.len() != n * classes {
        return Err(Error::Config(format!(
            "{} logits for {n} labels of {classes} classes",
            logits.len()
        )));
    }
    let mut grad_logits = vec![0.0f32; logits.len()];
    let (mut loss_sum, mut correct) = (0.0f64, 0usize);
    for ((row, grad), &label) in logits
        .chunks_exact(classes)
        .zip(grad_logits.chunks_exact_mut(classes))
        .zip(labels)
    {
        let label = label as usize;
        if label >= classes {
            return Err(Error::Config(format!(
                "label {label} out of range for {classes} classes"
            )));
        }
        let (argmax, max) = row
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                if v > best.1 {
                    (i, v)
                } else {
                    best
                }
            });
        if argmax == label {
            correct += 1;
        }
        let max = f64::from(max);
        let sum: f64 = row.iter().map(|&v| (f64::from(v) - max).exp()).sum();
        loss_sum += sum.ln() + max - f64::from(row[label]);
        for (i, (g, &v)) in grad.iter_mut().zip(row).enumerate() {
            let p = (f64::from(v) - max).exp() / sum;
            let target = if i == label { 1.0 } else { 0.0 };
            *g = ((p - target) / n as f64) as f32;
        }
    }
    Ok(BatchLoss {
        mean_loss: if n == 0 { 0.0 } else { loss_sum / n as f64 },
        grad_logits,
        correct,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use candle_core::{Tensor, Var};

    #[test]
    fn native_cross_entropy_matches_candle_value_and_gradient() {
        let values: Vec<f32> = (0..12).map(|i| ((i * 5 % 7) as f32 - 3.0) * 1.7).collect();
        let labels = [2u32, 0, 3];
        let ours = softmax_cross_entropy(&values, &labels, 4).unwrap();
        let logits =
            Var::from_tensor(&Tensor::from_vec(values, (3, 4), &Device::Cpu).unwrap()).unwrap();
        let label_tensor = Tensor::new(&labels, &Device::Cpu).unwrap();
        let loss = (gauntlet_core::cross_entropy_sum(logits.as_tensor(), &label_tensor).unwrap()
            / 3.0)
            .unwrap();
        let reference = loss.to_scalar::<f32>().unwrap() as f64;
        assert!(
            (ours.mean_loss - reference).abs() < 1e-5,
            "{} vs {reference}",
            ours.mean_loss
        );
        let grad = loss
            .backward()
            .unwrap()
            .get(logits.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (a, b) in ours.grad_logits.iter().zip(&grad) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        assert!(softmax_cross_entropy(&[0.0; 4], &[4], 4).is_err());
    }
}
