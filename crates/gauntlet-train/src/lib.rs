//! Seeded training of Gauntlet's built-in architectures.
//!
//! Every random choice (initialisation, the shuffle of each epoch) comes from
//! ChaCha streams derived from one seed, never from candle's unseeded generator,
//! so a training run is reproducible bit for bit on the same machine and build.

pub mod checkpoint;
mod job;
mod objective;
mod optim;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use gauntlet_core::{largest, Classifier, NoProgress, Norm, Observer, SeedStream};
use gauntlet_data::Dataset;
use gauntlet_models::{Arch, NativeGraph, Network, Normalization};
use serde::{Deserialize, Serialize};

pub use job::{BestSaved, TrainJob, TrainOutput, TrainPlan};
pub use optim::{Adam, Optimizer, OptimizerKind, OptimizerSettings, Sgd};

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
    /// A job's setting is out of range or contradicts another; settings are named
    /// as the command line names them.
    #[error("{setting} {problem}")]
    Setting {
        /// Which setting.
        setting: &'static str,
        /// What is wrong with it and what was expected.
        problem: String,
    },
    /// A file could not be written or removed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done (e.g. `remove the earlier checkpoint`).
        action: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint could not be written, read or resumed.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The caller asked the run to stop; the last finished epoch is checkpointed.
    #[error("training interrupted after {epochs_done} finished epoch(s); resume from the checkpoint to continue")]
    Interrupted {
        /// Epochs finished (and checkpointed, if a directory was given).
        epochs_done: usize,
    },
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
    /// Learning-rate schedule (default constant).
    #[serde(default)]
    pub schedule: LrSchedule,
    /// Test images attacked after every epoch of adversarial training to measure
    /// robust accuracy (default 500; 0 turns it off).
    #[serde(default = "default_robust_eval_samples")]
    pub robust_eval_samples: usize,
    /// PGD steps of that evaluation (default 20, step 2.5·ε/steps, random start).
    #[serde(default = "default_robust_eval_steps")]
    pub robust_eval_steps: usize,
}

fn default_robust_eval_samples() -> usize {
    500
}

fn default_robust_eval_steps() -> usize {
    20
}

/// Learning-rate schedule over a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LrSchedule {
    /// The same rate throughout.
    #[default]
    Constant,
    /// ×0.1 from half-way and ×0.01 from three quarters of the epochs.
    Step,
    /// One cycle (Smith 2017, as used by Wong et al. 2020): per batch, linear from
    /// 0 up to the rate at 40% of the run and back down to 0 at its end.
    Cyclic,
}

impl LrSchedule {
    /// Every schedule, in the order the command line lists them.
    pub const ALL: [Self; 3] = [Self::Constant, Self::Step, Self::Cyclic];

    /// `constant`, `step` or `cyclic`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "constant" => Ok(Self::Constant),
            "step" => Ok(Self::Step),
            "cyclic" => Ok(Self::Cyclic),
            other => Err(Error::Config(format!(
                "unknown learning-rate schedule '{other}', expected constant, step or cyclic"
            ))),
        }
    }

    /// The name [`LrSchedule::parse`] reads.
    pub fn name(self) -> &'static str {
        match self {
            Self::Constant => "constant",
            Self::Step => "step",
            Self::Cyclic => "cyclic",
        }
    }

    /// The rate at `progress` ∈ [0, 1] of the run (measured in epochs, per batch).
    pub fn rate(self, base: f64, progress: f64) -> f64 {
        match self {
            LrSchedule::Constant => base,
            LrSchedule::Step if progress >= 0.75 => base * 0.01,
            LrSchedule::Step if progress >= 0.5 => base * 0.1,
            LrSchedule::Step => base,
            LrSchedule::Cyclic if progress < 0.4 => base * progress / 0.4,
            LrSchedule::Cyclic => base * ((1.0 - progress) / 0.6).max(0.0),
        }
    }
}

/// How adversarial examples for training are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdversarialMethod {
    /// PGD adversarial training, Madry et al. 2018 ("Towards Deep Learning Models
    /// Resistant to Adversarial Attacks"): every batch is replaced by PGD examples
    /// from a uniform random start inside the ε-ball.
    Pgd,
    /// "Fast is better than free", Wong et al. 2020: one FGSM step of 1.25·ε
    /// from a uniform random start. Prone to catastrophic overfitting, which the
    /// per-epoch PGD evaluation watches for.
    FgsmRs,
    /// TRADES, Zhang et al. 2019: clean cross-entropy plus β·KL between the clean
    /// and the adversarial prediction, the adversarial input maximising that KL.
    Trades,
}

impl AdversarialMethod {
    /// Every method, in the order the command line lists them.
    pub const ALL: [Self; 3] = [Self::Pgd, Self::FgsmRs, Self::Trades];

    /// `pgd`, `fgsm-rs` or `trades`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "pgd" => Ok(Self::Pgd),
            "fgsm-rs" => Ok(Self::FgsmRs),
            "trades" => Ok(Self::Trades),
            other => Err(Error::Config(format!(
                "unknown adversarial training method '{other}', expected pgd, fgsm-rs or trades"
            ))),
        }
    }

    /// Registry name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pgd => "pgd",
            Self::FgsmRs => "fgsm-rs",
            Self::Trades => "trades",
        }
    }
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
    /// Step size as a fraction of the current ε (Madry et al.'s rule 2.5/steps;
    /// 1.25 for fgsm-rs), so that it follows the ε warm-up.
    pub relative_step_size: f64,
    /// Epochs over which ε grows linearly from 0 to its value, per batch (default 0).
    #[serde(default)]
    pub warmup_epochs: f64,
    /// TRADES' weight of the KL term (default 6, the paper's).
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// pgd and fgsm-rs: weight of the clean loss in `w·CE(x) + (1 − w)·CE(x_adv)`
    /// (Goodfellow et al. 2015's mixture; default 0, adversarial only).
    #[serde(default)]
    pub clean_weight: f64,
}

fn default_beta() -> f64 {
    6.0
}

impl AdversarialTraining {
    /// PGD-L∞ training with `steps` steps of 2.5·ε/steps.
    pub fn pgd(epsilon: f64, steps: usize) -> Self {
        Self {
            method: AdversarialMethod::Pgd,
            norm: Norm::Linf,
            epsilon,
            steps,
            relative_step_size: 2.5 / steps.max(1) as f64,
            warmup_epochs: 0.0,
            beta: default_beta(),
            clean_weight: 0.0,
        }
    }

    /// TRADES in the L∞ ball with `steps` KL-ascent steps of 2.5·ε/steps, β = 6.
    pub fn trades(epsilon: f64, steps: usize) -> Self {
        Self {
            method: AdversarialMethod::Trades,
            ..Self::pgd(epsilon, steps)
        }
    }

    /// FGSM with random start (Wong et al. 2020): one step of 1.25·ε.
    pub fn fgsm_rs(epsilon: f64) -> Self {
        Self {
            method: AdversarialMethod::FgsmRs,
            norm: Norm::Linf,
            epsilon,
            steps: 1,
            relative_step_size: 1.25,
            warmup_epochs: 0.0,
            beta: default_beta(),
            clean_weight: 0.0,
        }
    }

    /// ε after `epochs_done` (fractional) epochs of warm-up.
    pub fn epsilon_at(&self, epochs_done: f64) -> f64 {
        if self.warmup_epochs <= 0.0 {
            self.epsilon
        } else {
            self.epsilon * (epochs_done / self.warmup_epochs).clamp(0.0, 1.0)
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
        if !(self.relative_step_size.is_finite() && self.relative_step_size > 0.0) {
            return Err(Error::Config(format!(
                "adversarial step size {} (relative to ε) must be finite and > 0",
                self.relative_step_size
            )));
        }
        if !(self.warmup_epochs.is_finite() && self.warmup_epochs >= 0.0) {
            return Err(Error::Config(format!(
                "ε warm-up {} must be a finite number of epochs ≥ 0",
                self.warmup_epochs
            )));
        }
        if !(self.beta.is_finite() && self.beta >= 0.0) {
            return Err(Error::Config(format!(
                "TRADES beta {} must be finite and ≥ 0",
                self.beta
            )));
        }
        if !(0.0..1.0).contains(&self.clean_weight) {
            return Err(Error::Config(format!(
                "clean-loss weight {} must be in [0, 1)",
                self.clean_weight
            )));
        }
        if self.norm == Norm::L1 {
            return Err(Error::Config(
                "adversarial training supports the linf and l2 norms, not l1".into(),
            ));
        }
        if self.method == AdversarialMethod::Trades {
            if self.norm != Norm::Linf {
                return Err(Error::Config(
                    "trades is implemented for the L∞ norm only".into(),
                ));
            }
            if self.clean_weight > 0.0 {
                return Err(Error::Config(
                    "trades has its own clean term (beta); a clean-loss weight does not apply"
                        .into(),
                ));
            }
        }
        if self.method == AdversarialMethod::FgsmRs && self.steps != 1 {
            return Err(Error::Config(format!(
                "fgsm-rs takes exactly one step, got {}",
                self.steps
            )));
        }
        Ok(())
    }

    /// The attack that makes the training examples.
    fn attack(&self) -> Result<Box<dyn gauntlet_attacks::Attack>> {
        let name = match self.norm {
            Norm::Linf => "pgd-linf",
            Norm::L2 => "pgd-l2",
            Norm::L1 => {
                return Err(Error::Config(
                    "adversarial training supports the linf and l2 norms, not l1".into(),
                ))
            }
        };
        let params = serde_json::json!({
            "steps": self.steps,
            "step_size": {"relative": self.relative_step_size},
            "random_start": true,
            "restarts": 1,
        });
        Ok(gauntlet_attacks::build_attack(name, &params)?)
    }

    /// The per-epoch evaluation attack: PGD in the training threat model.
    fn evaluation_attack(&self, steps: usize) -> Result<Box<dyn gauntlet_attacks::Attack>> {
        Self {
            method: AdversarialMethod::Pgd,
            steps,
            relative_step_size: 2.5 / steps.max(1) as f64,
            ..self.clone()
        }
        .attack()
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
            schedule: LrSchedule::Constant,
            robust_eval_samples: default_robust_eval_samples(),
            robust_eval_steps: default_robust_eval_steps(),
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
            if self.robust_eval_samples > 0 && self.robust_eval_steps == 0 {
                return Err(Error::Config(
                    "the per-epoch robust evaluation needs at least 1 PGD step".into(),
                ));
            }
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
    /// Robust accuracy on the first test images under the evaluation PGD attack
    /// (adversarial training only).
    pub robust_accuracy: Option<f64>,
    /// Training ε at the end of the epoch (after warm-up), adversarial training only.
    pub epsilon: Option<f64>,
    /// Learning rate at the end of the epoch.
    pub learning_rate: f64,
    /// Seconds for the epoch, evaluation included.
    pub wall_seconds: f64,
}

/// The model a run kept because its robust accuracy was the best (Rice et al.
/// 2020, "Overfitting in adversarially robust deep learning").
#[derive(Clone, Debug)]
pub struct BestCheckpoint {
    /// Epoch it was taken after (1-based).
    pub epoch: usize,
    /// Its robust accuracy.
    pub robust_accuracy: f64,
    /// The weights.
    pub network: Network,
}

/// Everything a training run produces.
#[derive(Clone, Debug)]
pub struct TrainOutcome {
    /// Weights after the last epoch run.
    pub last: Network,
    /// Best checkpoint by robust accuracy (adversarial training with evaluation).
    pub best: Option<BestCheckpoint>,
    /// One entry per epoch run.
    pub history: Vec<EpochStats>,
    /// What went wrong without stopping the run (e.g. catastrophic overfitting).
    pub warnings: Vec<String>,
}

/// Where a run checkpoints, and when it should stop.
#[derive(Clone, Copy, Default)]
pub struct RunControl<'a> {
    /// Directory of the per-epoch checkpoint. A checkpoint already there is
    /// resumed (it must come from the same configuration and data).
    pub checkpoint_dir: Option<&'a Path>,
    /// Polled before every batch; `true` stops the run with [`Error::Interrupted`],
    /// leaving the last finished epoch's checkpoint (e.g. on Ctrl-C).
    pub stop: Option<&'a (dyn Fn() -> bool + Sync)>,
}

/// Train a fresh network on `train_data`, evaluating on `test_data` after every epoch.
pub fn train(
    config: &TrainConfig,
    train_data: &Dataset,
    test_data: &Dataset,
    observer: &dyn Observer,
) -> Result<TrainOutcome> {
    train_with(
        config,
        train_data,
        test_data,
        observer,
        RunControl::default(),
    )
}

/// [`train`] with checkpoints after every epoch, resuming, and a stop signal. A run
/// interrupted at any point and resumed ends with exactly the weights of a run
/// that was never interrupted.
pub fn train_with(
    config: &TrainConfig,
    train_data: &Dataset,
    test_data: &Dataset,
    observer: &dyn Observer,
    control: RunControl<'_>,
) -> Result<TrainOutcome> {
    let mut run = Trainer::new(config, train_data, test_data)?;
    let mut first_epoch = 1;
    if let Some(dir) = control.checkpoint_dir {
        match run.resume(dir)? {
            Resumed::Fresh => {}
            Resumed::At(epochs_done) => first_epoch = epochs_done + 1,
            Resumed::Finished => return Ok(run.outcome),
        }
    }
    for epoch in first_epoch..=config.epochs {
        let started = Instant::now();
        let (loss, correct) = run.train_epoch(epoch, observer, control.stop)?;
        run.evaluate_epoch(epoch, loss, correct, started, observer)?;
        if let Some(dir) = control.checkpoint_dir {
            run.checkpoint(dir, epoch)?;
        }
        if run.stopped_early {
            break;
        }
    }
    Ok(run.outcome)
}

/// Where a run stands after looking for its checkpoint.
enum Resumed {
    /// No checkpoint: start at epoch 1.
    Fresh,
    /// Continue after this many finished epochs.
    At(usize),
    /// The checkpointed run had already stopped (catastrophic overfitting).
    Finished,
}

/// A training run between batches: the weights on the native engine, the
/// optimiser, and what the epochs so far found.
struct Trainer<'a> {
    config: &'a TrainConfig,
    train_data: &'a Dataset,
    test_data: &'a Dataset,
    seed: SeedStream,
    device: Device,
    /// Shared with the classifier that adversarial training attacks; the
    /// optimiser writes through `Arc::make_mut` once the attack's graph has been
    /// dropped.
    engine: Arc<NativeGraph>,
    bounds: gauntlet_core::Bounds,
    adversarial: Option<(&'a AdversarialTraining, Box<dyn gauntlet_attacks::Attack>)>,
    optimizer: Optimizer,
    param_grads: Vec<f32>,
    outcome: TrainOutcome,
    best_params: Option<Vec<f32>>,
    stopped_early: bool,
    epsilon_now: Option<f64>,
    rate_now: f64,
}

impl<'a> Trainer<'a> {
    /// A freshly initialised network (from the seed), checked against the data
    /// and the configuration before any compute.
    fn new(
        config: &'a TrainConfig,
        train_data: &'a Dataset,
        test_data: &'a Dataset,
    ) -> Result<Self> {
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
        let engine = Arc::new(engine.clone());
        let bounds = initial.bounds();
        if let Some(settings) = &config.adversarial {
            let range = bounds.max - bounds.min;
            if settings.epsilon > range {
                return Err(Error::Config(format!(
                    "adversarial epsilon {} exceeds the input range [{}, {}]: every image is reachable; expected at most {range}",
                    settings.epsilon, bounds.min, bounds.max
                )));
            }
        }
        let adversarial = config
            .adversarial
            .as_ref()
            .map(|a| -> Result<_> { Ok((a, a.attack()?)) })
            .transpose()?;
        let params = engine.params().len();
        Ok(Self {
            config,
            train_data,
            test_data,
            seed,
            device,
            optimizer: Optimizer::new(
                config.optimizer,
                config.learning_rate,
                config.momentum,
                params,
            ),
            param_grads: vec![0.0f32; params],
            engine,
            bounds,
            adversarial,
            outcome: TrainOutcome {
                last: initial,
                best: None,
                history: Vec::with_capacity(config.epochs),
                warnings: Vec::new(),
            },
            best_params: None,
            stopped_early: false,
            epsilon_now: None,
            rate_now: config.learning_rate,
        })
    }

    /// Continue from the checkpoint in `dir`, if there is one (it must come from
    /// the same configuration and data).
    fn resume(&mut self, dir: &Path) -> Result<Resumed> {
        let Some(saved) = checkpoint::load(dir)? else {
            return Ok(Resumed::Fresh);
        };
        let config = self.config;
        check_resumable(
            &saved.state,
            config,
            self.train_data,
            self.test_data,
            self.engine.params().len(),
            saved.params.len(),
        )?;
        Arc::make_mut(&mut self.engine)
            .params_mut()
            .copy_from_slice(&saved.params);
        self.optimizer = saved.optimizer;
        self.outcome.last =
            Network::from_native(config.arch, &self.engine, self.bounds, &self.device)?;
        if let (Some((epoch, robust_accuracy)), Some(params)) =
            (saved.state.best, &saved.best_params)
        {
            self.outcome.best = Some(BestCheckpoint {
                epoch,
                robust_accuracy,
                network: network_with(config.arch, &self.engine, params, self.bounds)?,
            });
        }
        self.best_params = saved.best_params;
        self.outcome.history = saved.state.history;
        self.outcome.warnings = saved.state.warnings;
        Ok(if saved.state.stopped_early {
            Resumed::Finished
        } else {
            Resumed::At(saved.state.epochs_done)
        })
    }

    /// One pass over the shuffled training split; the summed batch losses and the
    /// correctly classified training samples.
    fn train_epoch(
        &mut self,
        epoch: usize,
        observer: &dyn Observer,
        stop: Option<&(dyn Fn() -> bool + Sync)>,
    ) -> Result<(f64, usize)> {
        let config = self.config;
        let n = self.train_data.len();
        let num_batches = n.div_ceil(config.batch_size);
        let order = self
            .seed
            .derive(&format!("shuffle/epoch-{epoch}"))
            .permutation(n);
        observer.start(
            &format!("epoch {epoch}/{}", config.epochs),
            num_batches as u64,
        );
        let (mut loss_sum, mut correct) = (0.0, 0usize);
        for (b, indices) in order.chunks(config.batch_size).enumerate() {
            if stop.is_some_and(|stop| stop()) {
                return Err(Error::Interrupted {
                    epochs_done: epoch - 1,
                });
            }
            // Position in the run, in epochs, at the end of this batch.
            let epochs_done = (epoch - 1) as f64 + (b + 1) as f64 / num_batches as f64;
            self.rate_now = config
                .schedule
                .rate(config.learning_rate, epochs_done / config.epochs as f64);
            self.optimizer.set_learning_rate(self.rate_now);
            let (images, labels) = self.train_data.gather(indices, &self.device)?;
            let labels = labels.to_vec1::<u32>()?;
            let threat = match &self.adversarial {
                Some((settings, attack)) => {
                    let epsilon = settings.epsilon_at(epochs_done);
                    self.epsilon_now = Some(epsilon);
                    (epsilon > 0.0).then(|| objective::Threat {
                        settings,
                        attack: attack.as_ref(),
                        epsilon,
                        seed: self
                            .seed
                            .derive(&format!("adversarial/epoch-{epoch}/batch-{b}")),
                    })
                }
                None => None,
            };
            let batch = objective::batch_gradient(
                &self.engine,
                self.bounds,
                &images,
                &labels,
                threat,
                &mut self.param_grads,
            )?;
            if !batch.mean_loss.is_finite() {
                return Err(Error::Diverged {
                    epoch,
                    batch: b + 1,
                    loss: batch.mean_loss,
                });
            }
            self.optimizer.step(
                Arc::make_mut(&mut self.engine).params_mut(),
                &self.param_grads,
            )?;
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
        // The training batch's buffers would otherwise stay held while the
        // evaluation allocates its own.
        self.engine.release_buffers();
        Ok((loss_sum, correct))
    }

    /// Test (and, for adversarial training, robust) accuracy after an epoch; keeps
    /// the best epoch by robust accuracy and stops on catastrophic overfitting.
    fn evaluate_epoch(
        &mut self,
        epoch: usize,
        loss_sum: f64,
        correct: usize,
        started: Instant,
        observer: &dyn Observer,
    ) -> Result<()> {
        let config = self.config;
        let n = self.train_data.len();
        let network = Network::from_native(config.arch, &self.engine, self.bounds, &self.device)?;
        let evaluation = gauntlet_eval::evaluate_clean(
            &network,
            self.test_data,
            config.eval_batch_size,
            &NoProgress,
        )?;
        let robust_accuracy = match &self.adversarial {
            Some((settings, _)) if config.robust_eval_samples > 0 => Some(robust_accuracy(
                &network,
                self.test_data,
                &evaluation.predictions,
                settings,
                config,
                &self.seed.derive(&format!("robust-eval/epoch-{epoch}")),
            )?),
            _ => None,
        };
        let stats = EpochStats {
            epoch,
            train_loss: loss_sum / n.div_ceil(config.batch_size) as f64,
            train_accuracy: correct as f64 / n as f64,
            test_accuracy: evaluation.accuracy,
            robust_accuracy,
            epsilon: self.epsilon_now,
            learning_rate: self.rate_now,
            wall_seconds: started.elapsed().as_secs_f64(),
        };
        observer.finish(&format!(
            "epoch {epoch}: loss {:.4}, train {:.2}%, test {:.2}%{}, {:.1}s",
            stats.train_loss,
            100.0 * stats.train_accuracy,
            100.0 * stats.test_accuracy,
            robust_accuracy
                .map(|r| format!(", robust {:.2}%", 100.0 * r))
                .unwrap_or_default(),
            stats.wall_seconds
        ));
        self.outcome.history.push(stats);
        self.outcome.last = network;
        if let Some(robust) = robust_accuracy {
            self.keep_if_best(epoch, robust);
        }
        Ok(())
    }

    /// Keep this epoch if its robust accuracy is the best yet; watch for
    /// catastrophic overfitting (Wong et al. 2020): robustness against PGD
    /// collapses within an epoch while the single-step training attack keeps
    /// "succeeding". The paper stops and keeps the last good model.
    fn keep_if_best(&mut self, epoch: usize, robust: f64) {
        let best_so_far = self.outcome.best.as_ref().map(|b| b.robust_accuracy);
        if best_so_far.is_none_or(|best| robust > best) {
            self.outcome.best = Some(BestCheckpoint {
                epoch,
                robust_accuracy: robust,
                network: self.outcome.last.clone(),
            });
            self.best_params = Some(self.engine.params().to_vec());
        }
        if let (Some(best), Some((settings, _))) = (best_so_far, &self.adversarial) {
            if settings.method == AdversarialMethod::FgsmRs && best >= 0.2 && robust < 0.5 * best {
                self.outcome.warnings.push(format!(
                    "catastrophic overfitting in epoch {epoch}: PGD robust accuracy fell from {:.1}% to {:.1}%; stopped early, the best checkpoint is the last good one",
                    100.0 * best,
                    100.0 * robust
                ));
                self.stopped_early = true;
            }
        }
    }

    /// Everything needed to continue after `epoch`, written atomically to `dir`
    /// (from the run's own buffers: no copy of the weights or moments).
    fn checkpoint(&self, dir: &Path, epoch: usize) -> Result<()> {
        let state = checkpoint::CheckpointState {
            config: self.config.clone(),
            train_sha256: self.train_data.sha256().to_string(),
            test_sha256: self.test_data.sha256().to_string(),
            epochs_done: epoch,
            history: self.outcome.history.clone(),
            best: self
                .outcome
                .best
                .as_ref()
                .map(|b| (b.epoch, b.robust_accuracy)),
            warnings: self.outcome.warnings.clone(),
            stopped_early: self.stopped_early,
        };
        checkpoint::save_parts(
            dir,
            &state,
            self.engine.params(),
            self.best_params.as_deref(),
            &self.optimizer,
        )
    }
}

/// A network of `arch` with `params` (engine layout) on the plan of `engine`.
fn network_with(
    arch: Arch,
    engine: &NativeGraph,
    params: &[f32],
    bounds: gauntlet_core::Bounds,
) -> Result<Network> {
    let mut copy = engine.clone();
    if params.len() != copy.params().len() {
        return Err(Error::Checkpoint(format!(
            "{} parameters stored, the architecture has {}",
            params.len(),
            copy.params().len()
        )));
    }
    copy.params_mut().copy_from_slice(params);
    Ok(Network::from_native(arch, &copy, bounds, &Device::Cpu)?)
}

/// Refuses to resume a checkpoint of a different run.
fn check_resumable(
    state: &checkpoint::CheckpointState,
    config: &TrainConfig,
    train_data: &Dataset,
    test_data: &Dataset,
    expected_params: usize,
    stored_params: usize,
) -> Result<()> {
    let as_json = |c: &TrainConfig| serde_json::to_value(c).unwrap_or_default();
    let (saved, now) = (as_json(&state.config), as_json(config));
    if saved != now {
        let differing: Vec<String> = match (&saved, &now) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => a
                .iter()
                .filter(|(k, v)| b.get(*k) != Some(v))
                .map(|(k, v)| format!("{k} was {v}, now {}", b.get(k).cloned().unwrap_or_default()))
                .collect(),
            _ => vec!["the configuration".into()],
        };
        return Err(Error::Checkpoint(format!(
            "the checkpoint comes from a different configuration ({}); use the same options or a new checkpoint directory",
            differing.join("; ")
        )));
    }
    if state.train_sha256 != train_data.sha256() || state.test_sha256 != test_data.sha256() {
        return Err(Error::Checkpoint(
            "the checkpoint was trained on different data (sha256 differs); use the same --data or a new checkpoint directory".into(),
        ));
    }
    if stored_params != expected_params {
        return Err(Error::Checkpoint(format!(
            "the checkpoint holds {stored_params} parameters, {} has {expected_params}",
            config.arch
        )));
    }
    Ok(())
}

/// Robust accuracy of `network` on the first `config.robust_eval_samples` test
/// images under PGD in the training threat model (full ε): a sample counts when
/// its clean prediction and its adversarial prediction are both right.
fn robust_accuracy(
    network: &Network,
    test_data: &Dataset,
    clean_predictions: &[u32],
    settings: &AdversarialTraining,
    config: &TrainConfig,
    seed: &SeedStream,
) -> Result<f64> {
    let attack = settings.evaluation_attack(config.robust_eval_steps)?;
    let count = config.robust_eval_samples.min(test_data.len());
    let mut robust = 0usize;
    for (b, first) in (0..count).step_by(config.eval_batch_size).enumerate() {
        let end = (first + config.eval_batch_size).min(count);
        let (images, labels) = test_data.batch(first..end, &Device::Cpu)?;
        let labels = labels.to_vec1::<u32>()?;
        let result = gauntlet_attacks::run_attack(
            attack.as_ref(),
            network,
            &images,
            &gauntlet_attacks::Goal::Untargeted {
                labels: labels.clone(),
            },
            settings.epsilon,
            &seed.derive(&format!("batch-{b}")),
        )?;
        robust += labels
            .iter()
            .enumerate()
            .filter(|(i, label)| {
                clean_predictions.get(first + i) == Some(label)
                    && result.predictions.get(*i) == Some(label)
            })
            .count();
    }
    Ok(if count == 0 {
        0.0
    } else {
        robust as f64 / count as f64
    })
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
        let (argmax, max) = largest(row);
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

    /// The closed sets the command line offers (`ALL` and `name`) are exactly
    /// what `parse` reads (training configs and suites use it): each name once,
    /// each parsing back to itself.
    #[test]
    fn every_named_choice_parses_back_to_itself() {
        fn check<T: Copy + PartialEq + std::fmt::Debug>(
            all: &[T],
            name: fn(T) -> &'static str,
            parse: fn(&str) -> Result<T>,
        ) {
            let mut names: Vec<_> = all.iter().map(|&v| name(v)).collect();
            for &value in all {
                assert_eq!(parse(name(value)).unwrap(), value);
            }
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), all.len(), "a name is used twice");
            assert!(parse("no-such-choice").is_err());
        }
        check(
            &OptimizerKind::ALL,
            OptimizerKind::name,
            OptimizerKind::parse,
        );
        check(&LrSchedule::ALL, LrSchedule::name, LrSchedule::parse);
        check(
            &AdversarialMethod::ALL,
            AdversarialMethod::name,
            AdversarialMethod::parse,
        );
    }

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

    #[test]
    fn schedules_follow_their_definitions() {
        let base = 0.1;
        assert_eq!(LrSchedule::Constant.rate(base, 0.9), base);
        assert_eq!(LrSchedule::Step.rate(base, 0.49), base);
        assert!((LrSchedule::Step.rate(base, 0.5) - 0.01).abs() < 1e-15);
        assert!((LrSchedule::Step.rate(base, 0.8) - 0.001).abs() < 1e-15);
        assert_eq!(LrSchedule::Cyclic.rate(base, 0.0), 0.0);
        assert!((LrSchedule::Cyclic.rate(base, 0.2) - 0.05).abs() < 1e-15);
        assert!((LrSchedule::Cyclic.rate(base, 0.4) - base).abs() < 1e-15);
        assert!((LrSchedule::Cyclic.rate(base, 0.7) - 0.05).abs() < 1e-12);
        assert_eq!(LrSchedule::Cyclic.rate(base, 1.0), 0.0);
        assert!(LrSchedule::parse("cosine").is_err());
    }

    #[test]
    fn epsilon_warms_up_linearly_then_stays() {
        let settings = AdversarialTraining {
            warmup_epochs: 4.0,
            ..AdversarialTraining::pgd(0.3, 10)
        };
        assert_eq!(settings.epsilon_at(0.0), 0.0);
        assert!((settings.epsilon_at(1.0) - 0.075).abs() < 1e-15);
        assert_eq!(settings.epsilon_at(4.0), 0.3);
        assert_eq!(settings.epsilon_at(9.5), 0.3);
        assert_eq!(AdversarialTraining::pgd(0.3, 10).epsilon_at(0.0), 0.3);
    }
}
