//! The evaluation job: what `gauntlet eval` and `gauntlet attack` do, as a library
//! call. [`EvalJob::plan`] checks everything before any compute;
//! [`EvalPlan::run`] evaluates and returns exactly the run record the CLI writes,
//! and the adversarial examples when they were asked for.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::path::Path;
//! use gauntlet_eval::{model_record, EvalJob, NoJournal, Suite};
//!
//! let path = Path::new("examples/models/mnist-cnn.safetensors");
//! let (model, info) = gauntlet_models::load_model(
//!     path,
//!     &Default::default(),
//!     &candle_core::Device::Cpu,
//! )?;
//! let data = gauntlet_data::load(Path::new("datasets/mnist-5k"), &Default::default())?;
//! let suite = Suite::from_file(Path::new("attacks/quick.toml"))?;
//! let suite_record = suite.record(Some(Path::new("attacks/quick.toml")))?;
//! let plan = EvalJob {
//!     suite: Some((suite, suite_record)),
//!     ..EvalJob::new(model, model_record(&info, None), data)
//! }
//! .plan()?;
//! let output = plan.run(&gauntlet_core::NoProgress, &mut NoJournal)?;
//! println!("{}", output.record.to_json()?);
//! # Ok(())
//! # }
//! ```

use std::time::Instant;

use gauntlet_core::{Classifier, Observer};
use gauntlet_data::Dataset;
use gauntlet_models::{Model, ModelInfo};
use gauntlet_record::{
    CleanRecord, DatasetRecord, Environment, ModelRecord, ModelScanRecord, RunKind, RunRecord,
    ShardRecord, SuiteRecord,
};

use crate::{
    adversarial_npz, check_compatible, evaluate_clean, evaluate_robust_journaled,
    journal_fingerprint, model_sanity, Error, Journal, Result, RobustConfig, Suite, SuiteEntry,
    GALLERY_CANDIDATES,
};

/// The settings of one evaluation, as a user gives them.
pub struct EvalJob {
    /// The model, loaded (e.g. by [`gauntlet_models::load_model`]).
    pub model: Model,
    /// How the record describes the model ([`model_record`]).
    pub model_record: ModelRecord,
    /// The data evaluated on.
    pub data: Dataset,
    /// The attacks, with what the record says about them; `None` for clean
    /// accuracy only.
    pub suite: Option<(Suite, SuiteRecord)>,
    /// The run's seed: every random choice derives from it.
    pub seed: u64,
    /// Samples per forward pass and attack batch.
    pub batch_size: usize,
    /// Also return the adversarial examples found, as NPZ bytes.
    pub keep_examples: bool,
    /// Evaluate only shard K of N (1-based): a contiguous, deterministic slice
    /// of the samples; the records of all N merge into the whole run's.
    pub shard: Option<(usize, usize)>,
    /// The command line that re-runs this evaluation, for the record.
    pub command: Vec<String>,
}

impl EvalJob {
    /// Clean accuracy only, seed 0, batches of 500, the whole dataset; set the
    /// other fields to change that.
    pub fn new(model: Model, model_record: ModelRecord, data: Dataset) -> Self {
        Self {
            model,
            model_record,
            data,
            suite: None,
            seed: 0,
            batch_size: 500,
            keep_examples: false,
            shard: None,
            command: Vec::new(),
        }
    }

    /// Resolve and check everything before any compute: the batch size and the
    /// memory it needs, the shard, the model against the data, and the suite's
    /// attacks against the registry.
    pub fn plan(self) -> Result<EvalPlan> {
        if self.batch_size == 0 {
            return Err(setting("batch size", "must be at least 1"));
        }
        if self.keep_examples && self.suite.is_none() {
            return Err(setting(
                "keep examples",
                "needs a suite: there are no adversarial examples without attacks",
            ));
        }
        let (data, shard) = match self.shard {
            None => (self.data, None),
            Some((index, count)) => shard_of(self.data, index, count)?,
        };
        check_compatible(&self.model, &data)?;
        gauntlet_core::ensure_batch_fits(
            "--batch-size",
            self.model.bytes_per_sample(),
            0,
            self.batch_size,
            data.len(),
        )?;
        let suite = match self.suite {
            None => None,
            Some((suite, record)) => Some((suite.entries()?, suite, record)),
        };
        let first_sample = shard.as_ref().map_or(0, |s| s.first_sample);
        Ok(EvalPlan {
            model: self.model,
            model_record: self.model_record,
            data,
            suite,
            config: RobustConfig {
                batch_size: self.batch_size,
                seed: self.seed,
                keep_examples: self.keep_examples,
                gallery_samples: GALLERY_CANDIDATES.saturating_sub(first_sample),
                first_sample,
            },
            shard,
            command: self.command,
        })
    }
}

/// Shard `index` of `count` (1-based) of `data`: a contiguous slice, and what the
/// record says about it.
fn shard_of(data: Dataset, index: usize, count: usize) -> Result<(Dataset, Option<ShardRecord>)> {
    let total = data.len();
    if count == 0 || !(1..=count).contains(&index) {
        return Err(setting(
            "shard",
            format!("{index}/{count} must be K/N with 1 ≤ K ≤ N"),
        ));
    }
    if count > total {
        return Err(setting(
            "shard",
            format!("{index}/{count}: {count} shards of {total} samples would leave some empty"),
        ));
    }
    let range = (index - 1) * total / count..index * total / count;
    let record = ShardRecord {
        index,
        count,
        first_sample: range.start,
        total_samples: total,
    };
    Ok((data.shard(range)?, Some(record)))
}

fn setting(setting: &'static str, problem: impl Into<String>) -> Error {
    Error::Setting {
        setting,
        problem: problem.into(),
    }
}

/// An evaluation checked and ready to run.
pub struct EvalPlan {
    model: Model,
    model_record: ModelRecord,
    data: Dataset,
    suite: Option<(Vec<SuiteEntry>, Suite, SuiteRecord)>,
    config: RobustConfig,
    shard: Option<ShardRecord>,
    command: Vec<String>,
}

/// What an evaluation produced.
pub struct EvalOutput {
    /// The run record (`results.json`).
    pub record: RunRecord,
    /// The adversarial examples, when the job kept them.
    pub adversarial: Option<AdversarialExamples>,
}

/// The adversarial examples an evaluation found, one per broken sample (at the
/// smallest ε that broke it).
pub struct AdversarialExamples {
    /// How many.
    pub count: usize,
    /// As `adversarial.npz` ([`adversarial_npz`]): `gauntlet eval --data` reads it.
    pub npz: Vec<u8>,
}

impl EvalPlan {
    /// The model evaluated.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The data evaluated (this shard's, for a shard).
    pub fn data(&self) -> &Dataset {
        &self.data
    }

    /// Whether the plan runs attacks (a clean-only evaluation has nothing to
    /// journal or resume).
    pub fn has_attacks(&self) -> bool {
        self.suite.is_some()
    }

    /// What a journal for this evaluation must have been written for
    /// ([`journal_fingerprint`]); `None` without attacks.
    pub fn fingerprint(&self) -> Option<String> {
        self.suite.as_ref().map(|(_, suite, record)| {
            journal_fingerprint(
                &self.model_record.sha256,
                &self.data,
                self.shard.as_ref(),
                &self.config,
                record,
                &suite.attacks,
            )
        })
    }

    /// Clean accuracy, then (with a suite) sanity checks and the attacks with
    /// the per-sample worst case, each finished batch kept in `journal` (a
    /// journal that asks to stop ends the run with [`Error::Interrupted`]).
    pub fn run(&self, observer: &dyn Observer, journal: &mut dyn Journal) -> Result<EvalOutput> {
        let started = Instant::now();
        let (model, data, config) = (&self.model, &self.data, &self.config);
        let clean = evaluate_clean(model, data, config.batch_size, observer)?;
        let mut robustness = None;
        let mut adversarial = None;
        if let Some((entries, _, suite_record)) = &self.suite {
            let (images, labels) =
                data.batch(0..data.len().min(config.batch_size), model.device())?;
            let sanity = model_sanity(model, &images, &labels)?;
            let result =
                evaluate_robust_journaled(model, data, &clean, entries, config, observer, journal)?;
            let (section, examples) = result.into_record(
                model,
                data,
                suite_record.clone(),
                sanity,
                config.first_sample,
            )?;
            robustness = Some(section);
            if config.keep_examples {
                adversarial = Some(AdversarialExamples {
                    count: examples.len(),
                    npz: adversarial_npz(
                        model,
                        data,
                        &clean.predictions,
                        &examples,
                        config.first_sample,
                    )?,
                });
            }
        }
        let mut record = record_header(
            RunKind::Eval,
            self.command.clone(),
            config.seed,
            model,
            self.model_record.clone(),
            data.record(),
        );
        record.clean = Some(CleanRecord {
            labels: data.labels().to_vec(),
            accuracy: clean.accuracy,
            correct: clean.correct,
            predictions: clean.predictions,
        });
        record.robustness = robustness;
        record.shard = self.shard.clone();
        record.wall_seconds = started.elapsed().as_secs_f64();
        Ok(EvalOutput {
            record,
            adversarial,
        })
    }
}

/// The record every job writes, with its header filled in: the command line,
/// the seed, where it ran and which executor ran `model`, the model and the
/// data. The job fills its own section and the wall time.
pub fn record_header(
    kind: RunKind,
    command: Vec<String>,
    seed: u64,
    model: &Model,
    model_record: ModelRecord,
    dataset: DatasetRecord,
) -> RunRecord {
    let environment = Environment {
        device: "cpu".into(),
        threads: candle_core::utils::get_num_threads(),
        engine: model.engine(),
    };
    RunRecord::new(kind, command, seed, environment, model_record, dataset)
}

/// The record's model section for a loaded model; `scan` is what a scan of the
/// file before loading found (`None` for models Gauntlet wrote itself).
pub fn model_record(info: &ModelInfo, scan: Option<ModelScanRecord>) -> ModelRecord {
    ModelRecord {
        path: info.path.display().to_string(),
        sha256: info.sha256.clone(),
        format: info.format,
        arch: info.arch.clone(),
        num_classes: info.num_classes,
        input_shape: info.input_shape,
        bounds: [info.bounds.min, info.bounds.max],
        scan,
    }
}
