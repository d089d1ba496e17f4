//! The poisoning jobs: what `gauntlet poison inject`, `gauntlet poison detect`
//! and `gauntlet poison audit` do, as library calls. `plan` checks every setting before any compute; `run`
//! returns exactly the run record the CLI writes.

use std::path::{Path, PathBuf};
use std::time::Instant;

use gauntlet_core::{Classifier, Observer};
use gauntlet_data::Dataset;
use gauntlet_models::Model;
use gauntlet_record::{ModelRecord, PoisoningRecord, RunKind, RunRecord};

use crate::{
    audit, inject, injection_record, native, run_neural_cleanse, run_strip, AuditConfig,
    DetectorModel, Error, InjectionConfig, Manifest, NeuralCleanse, OnnxDetectorModel, Result,
    Strip, TrainingSetDetectors,
};

/// The settings of one injection: a poisoned copy of a dataset, written as a
/// new dataset directory that `--data` reads.
pub struct InjectJob {
    /// The clean training data to poison.
    pub train_set: Dataset,
    /// The test data, copied unchanged (attack success is measured on it).
    pub test_set: Dataset,
    /// What to inject.
    pub injection: InjectionConfig,
    /// A new directory for `x_train.npy`, `y_train.npy`, `x_test.npy`,
    /// `y_test.npy` and `manifest.json` (an existing one is refused).
    pub out: PathBuf,
}

impl InjectJob {
    /// Check the output directory and the injection against the data, before
    /// any work.
    pub fn plan(self) -> Result<InjectPlan> {
        refuse_existing(&self.out)?;
        self.injection.validate(&self.train_set)?;
        Ok(InjectPlan { job: self })
    }
}

/// An injection checked and ready to run.
pub struct InjectPlan {
    job: InjectJob,
}

impl InjectPlan {
    /// Poison the training set and write the new dataset: into a staging
    /// directory beside `out`, renamed into place, so it appears whole or not
    /// at all. Returns the manifest, whose `poisoned_sha256` is the fingerprint
    /// `--data` will report for the new training split.
    pub fn run(&self) -> Result<Manifest> {
        let job = &self.job;
        let poisoned = inject(&job.train_set, &job.injection)?;
        let write_error = |path: &Path, source| gauntlet_core::Error::Write {
            path: path.to_path_buf(),
            source,
        };
        let parent = match job.out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| write_error(&parent, e))?;
        let staging = tempfile::Builder::new()
            .prefix(".gauntlet-inject-")
            .tempdir_in(&parent)
            .map_err(|e| write_error(&parent, e))?;
        let write = |name: &str, bytes: &[u8]| {
            let path = staging.path().join(name);
            std::fs::write(&path, bytes).map_err(|e| write_error(&path, e))
        };
        let (x_train, y_train) = poisoned.dataset.to_npy()?;
        write("x_train.npy", &x_train)?;
        write("y_train.npy", &y_train)?;
        let (x_test, y_test) = job.test_set.to_npy()?;
        write("x_test.npy", &x_test)?;
        write("y_test.npy", &y_test)?;
        // The fingerprint of the files as `--data` will load them.
        let reloaded = gauntlet_data::load(
            staging.path(),
            &gauntlet_data::LoadOptions {
                split: gauntlet_data::Split::Train,
                limit: None,
                num_classes: Some(job.train_set.num_classes()),
                ..Default::default()
            },
        )?;
        let mut manifest = poisoned.manifest;
        manifest.poisoned_sha256 = reloaded.sha256().into();
        write("manifest.json", manifest.to_json()?.as_bytes())?;
        let staged = staging.keep();
        std::fs::rename(&staged, &job.out).map_err(|e| write_error(&job.out, e))?;
        Ok(manifest)
    }
}

/// Poisoning writes new directories only.
fn refuse_existing(out: &Path) -> Result<()> {
    if out.exists() {
        return Err(setting(
            "--out",
            format!(
                "{} already exists; choose a new directory (poisoning never overwrites)",
                out.display()
            ),
        ));
    }
    Ok(())
}

/// The settings of one detection run on a model and the data it was trained on.
pub struct DetectJob {
    /// The model trained on `train_set`.
    pub model: Model,
    /// How the record describes it (`gauntlet_eval::model_record`).
    pub model_record: ModelRecord,
    /// ONNX models: the graph value whose activations the clustering detectors
    /// read (default: the input of the last Gemm/MatMul). Built-in architectures
    /// use their penultimate layer.
    pub feature_layer: Option<String>,
    /// The (possibly poisoned) training data.
    pub train_set: Dataset,
    /// Clean test data (STRIP and Neural Cleanse, and the record's dataset).
    pub test_set: Dataset,
    /// The injection's ground truth, when known: detectors are scored against it.
    pub ground_truth: Option<Manifest>,
    /// The training-set detectors to run.
    pub detectors: TrainingSetDetectors,
    /// STRIP (test time), with the clean test images it holds out.
    pub strip: Option<(Strip, usize)>,
    /// Neural Cleanse, with the clean test images it optimises on.
    pub neural_cleanse: Option<(NeuralCleanse, usize)>,
    /// Images per forward pass.
    pub batch_size: usize,
    /// The run's seed (the detectors' own seeds are in their settings).
    pub seed: u64,
    /// The command line that re-runs this detection, for the record.
    pub command: Vec<String>,
}

impl DetectJob {
    /// Check the feature layer against the model, the model against the data,
    /// and the batch's memory, before any compute.
    pub fn plan(self) -> Result<DetectPlan> {
        if let Some(layer) = &self.feature_layer {
            match &self.model {
                Model::Network(_) => {
                    return Err(setting(
                        "--feature-layer",
                        format!("{layer} names a value of an ONNX graph; built-in architectures use their penultimate layer"),
                    ))
                }
                // Resolving the layer checks that the graph has it.
                Model::Onnx(graph) => {
                    OnnxDetectorModel::new(graph, Some(layer.clone()))?;
                }
            }
        }
        gauntlet_eval::check_compatible(&self.model, &self.train_set)
            .map_err(gauntlet_train::Error::from)?;
        gauntlet_core::ensure_batch_fits(
            "--batch-size",
            self.model.bytes_per_sample(),
            0,
            self.batch_size,
            self.train_set.len(),
        )?;
        Ok(DetectPlan { job: self })
    }
}

/// A detection run checked and ready to start.
pub struct DetectPlan {
    job: DetectJob,
}

impl DetectPlan {
    /// Run the detectors (training-set ones, then STRIP and Neural Cleanse) and
    /// return the run record.
    pub fn run(&self, observer: &dyn Observer) -> Result<RunRecord> {
        let started = Instant::now();
        let job = &self.job;
        let (onnx, built_in);
        let net: &dyn DetectorModel = match &job.model {
            Model::Network(network) => {
                built_in = native(network)?;
                &built_in
            }
            Model::Onnx(graph) => {
                onnx = OnnxDetectorModel::new(graph, job.feature_layer.clone())?;
                &onnx
            }
        };
        let manifest = job.ground_truth.as_ref();
        let truth = manifest.map(Manifest::is_poisoned);
        let mut detectors = job.detectors.run(
            net,
            &job.train_set,
            Some(&job.test_set),
            truth.as_deref(),
            job.batch_size,
            observer,
        )?;
        let trigger = manifest.and_then(|m| m.trigger.as_ref().map(|t| (t, m.config.target)));
        let strip = job
            .strip
            .as_ref()
            .map(|(strip, held_out)| run_strip(strip, net, &job.test_set, *held_out, trigger))
            .transpose()?;
        let neural_cleanse = match &job.neural_cleanse {
            Some((cleanse, samples)) => {
                let (record, carriers) = run_neural_cleanse(
                    cleanse,
                    net,
                    &job.test_set,
                    *samples,
                    Some((&job.train_set, truth.as_deref())),
                    trigger.and_then(|(_, target)| target),
                    observer,
                )?;
                detectors.extend(carriers);
                Some(record)
            }
            None => None,
        };
        let mut record = gauntlet_eval::record_header(
            RunKind::Poison,
            job.command.clone(),
            job.seed,
            &job.model,
            job.model_record.clone(),
            job.test_set.record(),
        );
        record.poisoning = Some(PoisoningRecord {
            train_dataset: job.train_set.record(),
            injection: manifest.map(injection_record),
            detectors,
            strip,
            neural_cleanse,
            before_filtering: None,
            after_filtering: None,
            removed: Vec::new(),
        });
        record.wall_seconds = started.elapsed().as_secs_f64();
        Ok(record)
    }
}

/// The settings of one audit: inject, train, detect, filter, retrain, measure.
pub struct AuditJob {
    /// The injection, training and detector settings.
    pub config: AuditConfig,
    /// The clean training data to poison.
    pub train_set: Dataset,
    /// Clean test data (attack success, STRIP, Neural Cleanse).
    pub test_set: Dataset,
    /// A new directory for `manifest.json`, `poisoned.safetensors` and
    /// `filtered.safetensors` (an existing one is refused: nothing is
    /// overwritten).
    pub out: PathBuf,
    /// The command line that re-runs this audit, for the record.
    pub command: Vec<String>,
}

impl AuditJob {
    /// Check the output directory, the training settings, the injection against
    /// the data and the batch's memory, before any compute.
    pub fn plan(self) -> Result<AuditPlan> {
        refuse_existing(&self.out)?;
        self.config.training.validate()?;
        self.config.injection.validate(&self.train_set)?;
        let arch = self.config.training.arch;
        gauntlet_core::ensure_batch_fits(
            "--batch-size",
            arch.bytes_per_sample(),
            arch.training_fixed_bytes(),
            self.config.batch_size,
            self.train_set.len(),
        )?;
        Ok(AuditPlan { job: self })
    }
}

/// An audit checked and ready to start.
pub struct AuditPlan {
    job: AuditJob,
}

impl AuditPlan {
    /// Run the audit, write its ground truth and both models into the output
    /// directory, and return the run record (describing the poisoned model).
    pub fn run(&self, observer: &dyn Observer) -> Result<RunRecord> {
        let started = Instant::now();
        let job = &self.job;
        let outcome = audit(&job.config, &job.train_set, &job.test_set, observer)?;
        // Described from the network in memory, as `eval` would describe the file.
        let info = gauntlet_models::save_model(
            &outcome.poisoned_model,
            &job.out.join("poisoned.safetensors"),
        )?;
        outcome
            .filtered_model
            .save(&job.out.join("filtered.safetensors"))?;
        gauntlet_core::write_atomic(
            &job.out.join("manifest.json"),
            outcome.manifest.to_json()?.as_bytes(),
        )?;
        let mut record = gauntlet_eval::record_header(
            RunKind::Poison,
            job.command.clone(),
            job.config.injection.seed,
            &Model::Network(outcome.poisoned_model),
            gauntlet_eval::model_record(&info, None),
            job.test_set.record(),
        );
        record.poisoning = Some(outcome.record);
        record.wall_seconds = started.elapsed().as_secs_f64();
        Ok(record)
    }
}

fn setting(setting: &'static str, problem: String) -> Error {
    Error::Setting { setting, problem }
}
