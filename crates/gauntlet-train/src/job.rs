//! The training job: what `gauntlet train` does, as a library call.
//! [`TrainJob::plan`] checks everything before any compute; [`TrainPlan::run`]
//! trains (checkpointing every epoch), writes the model, and returns exactly the
//! run record the CLI writes next to it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use gauntlet_core::{NoProgress, Observer};
use gauntlet_data::Dataset;
use gauntlet_models::Model;
use gauntlet_record::{
    AdversarialTrainingRecord, CleanRecord, EpochRecord, RunKind, RunRecord, TrainingRecord,
};

use crate::checkpoint::CHECKPOINT_FILE;
use crate::{train_with, Error, OptimizerKind, Result, RunControl, TrainConfig, TrainOutcome};

/// The settings of one training run, as a user gives them.
pub struct TrainJob {
    /// What to train and how.
    pub config: TrainConfig,
    /// The data trained on.
    pub train_set: Dataset,
    /// The data evaluated on after every epoch and at the end.
    pub test_set: Dataset,
    /// Where to write the model (`.safetensors`); with adversarial training the
    /// best epoch by robust accuracy goes beside it as `<name>.best.safetensors`.
    pub out: PathBuf,
    /// The per-epoch checkpoint's directory (default `<out name>.checkpoint`
    /// beside `out`); with `resume`, the one holding the run to continue.
    pub checkpoint_dir: Option<PathBuf>,
    /// Continue the interrupted run checkpointed in `checkpoint_dir`.
    pub resume: bool,
    /// Replace an existing `out` and start afresh over an earlier checkpoint.
    pub replace: bool,
    /// The command line that re-runs this training, for the record.
    pub command: Vec<String>,
}

impl TrainJob {
    /// Resolve and check everything before any compute: the configuration, the
    /// output path, the memory each batch size needs, and the checkpoint.
    pub fn plan(self) -> Result<TrainPlan> {
        self.config.validate()?;
        let out = &self.out;
        if out.extension().and_then(|e| e.to_str()) != Some("safetensors") {
            return Err(setting(
                "--out",
                format!("{} must end in .safetensors", out.display()),
            ));
        }
        if out.is_dir() {
            return Err(setting(
                "--out",
                format!(
                    "{} is a directory, expected a .safetensors file path",
                    out.display()
                ),
            ));
        }
        if out.exists() && !self.replace && !self.resume {
            return Err(setting(
                "--out",
                format!(
                    "{} already exists; choose a new path, or pass --force to replace it",
                    out.display()
                ),
            ));
        }
        // Training keeps a batch and its gradients; the per-epoch evaluation
        // attacks batches of the test split.
        let arch = self.config.arch;
        for (flag, batch_size, samples) in [
            ("--batch-size", self.config.batch_size, self.train_set.len()),
            (
                "--eval-batch-size",
                self.config.eval_batch_size,
                self.test_set.len(),
            ),
        ] {
            gauntlet_core::ensure_batch_fits(
                flag,
                arch.bytes_per_sample(),
                arch.training_fixed_bytes(),
                batch_size,
                samples,
            )?;
        }
        let checkpoint_dir = self
            .checkpoint_dir
            .clone()
            .unwrap_or_else(|| out.with_extension("checkpoint"));
        let checkpoint = checkpoint_dir.join(CHECKPOINT_FILE);
        if self.resume && !checkpoint.is_file() {
            return Err(setting(
                "--resume",
                format!(
                    "{}: no {CHECKPOINT_FILE} there to resume",
                    checkpoint_dir.display()
                ),
            ));
        }
        if !self.resume && checkpoint.exists() && !self.replace {
            return Err(setting(
                "--checkpoint-dir",
                format!(
                    "{0} holds the checkpoint of an earlier run; pass --resume {0} to continue it, --force to start afresh, or choose another --checkpoint-dir",
                    checkpoint_dir.display()
                ),
            ));
        }
        Ok(TrainPlan {
            // Replacing an earlier run drops its checkpoint (at run time):
            // otherwise training would silently resume from it.
            drop_checkpoint: (!self.resume && checkpoint.exists()).then_some(checkpoint),
            checkpoint_dir,
            job: self,
        })
    }
}

fn setting(setting: &'static str, problem: String) -> Error {
    Error::Setting { setting, problem }
}

/// A training run checked and ready to start.
pub struct TrainPlan {
    job: TrainJob,
    checkpoint_dir: PathBuf,
    drop_checkpoint: Option<PathBuf>,
}

/// What a training run produced (the model is written to the job's `out`).
pub struct TrainOutput {
    /// The run record (`<name>.record.json`).
    pub record: RunRecord,
    /// The best epoch by robust accuracy, written beside the model.
    pub best: Option<BestSaved>,
}

/// The best epoch's weights, as written.
pub struct BestSaved {
    /// Epoch (1-based).
    pub epoch: usize,
    /// Its robust accuracy in the per-epoch evaluation.
    pub robust_accuracy: f64,
    /// Where they were written.
    pub path: PathBuf,
}

impl TrainPlan {
    /// Where the checkpoint goes.
    pub fn checkpoint_dir(&self) -> &Path {
        &self.checkpoint_dir
    }

    /// Train (resuming the checkpoint when asked), write the model and the best
    /// epoch, and evaluate the model on the test split for the record. `stop` is
    /// polled before every batch: `true` ends the run with
    /// [`Error::Interrupted`], the last finished epoch checkpointed.
    pub fn run(
        &self,
        observer: &dyn Observer,
        stop: Option<&(dyn Fn() -> bool + Sync)>,
    ) -> Result<TrainOutput> {
        let started = Instant::now();
        let job = &self.job;
        if let Some(earlier) = &self.drop_checkpoint {
            std::fs::remove_file(earlier).map_err(|source| Error::Io {
                action: "remove the earlier checkpoint",
                path: earlier.clone(),
                source,
            })?;
        }
        let outcome = train_with(
            &job.config,
            &job.train_set,
            &job.test_set,
            observer,
            RunControl {
                checkpoint_dir: Some(&self.checkpoint_dir),
                stop,
            },
        )?;
        // Described from the network in memory, as `eval` describes the file.
        let info = gauntlet_models::save_model(&outcome.last, &job.out)?;
        let best = match &outcome.best {
            None => None,
            Some(best) => {
                let path = job.out.with_extension("best.safetensors");
                best.network.save(&path)?;
                Some(BestSaved {
                    epoch: best.epoch,
                    robust_accuracy: best.robust_accuracy,
                    path,
                })
            }
        };
        let training = self.training_record(&outcome);
        let model = Model::Network(outcome.last);
        let clean = gauntlet_eval::evaluate_clean(
            &model,
            &job.test_set,
            job.config.eval_batch_size,
            &NoProgress,
        )?;
        let mut record = gauntlet_eval::record_header(
            RunKind::Train,
            job.command.clone(),
            job.config.seed,
            &model,
            gauntlet_eval::model_record(&info, None),
            job.test_set.record(),
        );
        record.clean = Some(CleanRecord {
            labels: job.test_set.labels().to_vec(),
            accuracy: clean.accuracy,
            correct: clean.correct,
            predictions: clean.predictions,
        });
        record.training = Some(training);
        record.wall_seconds = started.elapsed().as_secs_f64();
        Ok(TrainOutput { record, best })
    }

    /// The record's training section: the configuration and every epoch.
    fn training_record(&self, outcome: &TrainOutcome) -> TrainingRecord {
        let config = &self.job.config;
        TrainingRecord {
            train_dataset: self.job.train_set.record(),
            arch: config.arch.name().into(),
            epochs: config.epochs,
            batch_size: config.batch_size,
            optimizer: config.optimizer.name().into(),
            learning_rate: config.learning_rate,
            momentum: if config.optimizer == OptimizerKind::Sgd {
                config.momentum
            } else {
                0.0
            },
            mean: config.normalization.mean.clone(),
            std: config.normalization.std.clone(),
            history: outcome
                .history
                .iter()
                .map(|e| EpochRecord {
                    epoch: e.epoch,
                    train_loss: e.train_loss,
                    train_accuracy: e.train_accuracy,
                    test_accuracy: e.test_accuracy,
                    robust_accuracy: e.robust_accuracy,
                    epsilon: e.epsilon,
                    learning_rate: Some(e.learning_rate),
                    wall_seconds: e.wall_seconds,
                })
                .collect(),
            schedule: config.schedule.name().into(),
            adversarial: config
                .adversarial
                .as_ref()
                .map(|a| AdversarialTrainingRecord {
                    method: a.method.name().into(),
                    norm: a.norm,
                    epsilon: a.epsilon,
                    steps: a.steps,
                    relative_step_size: a.relative_step_size,
                    warmup_epochs: a.warmup_epochs,
                    beta: a.beta,
                    clean_weight: a.clean_weight,
                    robust_eval_samples: config.robust_eval_samples,
                    robust_eval_steps: config.robust_eval_steps,
                }),
            best_epoch: outcome.best.as_ref().map(|b| b.epoch),
            warnings: outcome.warnings.clone(),
        }
    }
}
