//! Training checkpoints: everything needed to continue a run after the last
//! finished epoch and end with exactly the weights an uninterrupted run ends with.
//!
//! Every random choice of a run is a pure function of the seed and the epoch (or
//! batch) it belongs to (keyed ChaCha streams, see `gauntlet_core::SeedStream`), so
//! no generator position needs saving: weights, optimiser state, the epoch, the
//! history and the best checkpoint are the whole state. One safetensors file holds
//! the float vectors; its metadata holds the rest as JSON. It is replaced
//! atomically after every epoch, so a crash leaves the previous epoch's state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::optim::Optimizer;
use crate::{EpochStats, Error, Result, TrainConfig};

/// File name inside the checkpoint directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";

/// The order of the flat parameter and moment vectors (the native engine's
/// packing). Checkpoints written with another packing (before the built-in
/// architectures ran on the graph engine) are refused rather than resumed
/// with scrambled weights.
const PARAMS_LAYOUT: &str = "native-graph-1";

/// The state of a run after a finished epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// What was run; a resume must use the same.
    pub state: CheckpointState,
    /// Parameters (engine layout).
    pub params: Vec<f32>,
    /// Best checkpoint's parameters, if any.
    pub best_params: Option<Vec<f32>>,
    /// Optimiser moments.
    pub optimizer: Optimizer,
}

/// The small part of a checkpoint, stored as JSON metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// The run's configuration.
    pub config: TrainConfig,
    /// sha256 of the training and evaluation data.
    pub train_sha256: String,
    /// sha256 of the evaluation data.
    pub test_sha256: String,
    /// Epochs finished.
    pub epochs_done: usize,
    /// History so far.
    pub history: Vec<EpochStats>,
    /// Epoch and robust accuracy of the best checkpoint.
    pub best: Option<(usize, f64)>,
    /// Warnings so far.
    pub warnings: Vec<String>,
    /// Set when the run ended early (catastrophic overfitting): nothing to resume.
    pub stopped_early: bool,
}

fn path_in(dir: &Path) -> PathBuf {
    dir.join(CHECKPOINT_FILE)
}

/// Writes `checkpoint` into `dir` atomically (creating `dir`).
pub fn save(dir: &Path, checkpoint: &Checkpoint) -> Result<()> {
    save_parts(
        dir,
        &checkpoint.state,
        &checkpoint.params,
        checkpoint.best_params.as_deref(),
        &checkpoint.optimizer,
    )
}

/// [`save`] from borrowed parts: a running training writes its checkpoint
/// without first copying its weights and optimiser state.
pub fn save_parts(
    dir: &Path,
    state: &CheckpointState,
    params: &[f32],
    best_params: Option<&[f32]>,
    optimizer: &Optimizer,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| {
        Error::Checkpoint(format!(
            "cannot create checkpoint directory {}: {e}",
            dir.display()
        ))
    })?;
    let state = serde_json::to_string(state)
        .map_err(|e| Error::Checkpoint(format!("cannot encode checkpoint state: {e}")))?;
    let settings = serde_json::to_string(&optimizer.settings())
        .map_err(|e| Error::Checkpoint(format!("cannot encode optimiser settings: {e}")))?;
    let metadata = BTreeMap::from([
        ("gauntlet.checkpoint".to_string(), state),
        ("gauntlet.optimizer".to_string(), settings),
        (
            "gauntlet.params_layout".to_string(),
            PARAMS_LAYOUT.to_string(),
        ),
    ]);
    // Borrowed, not copied: a checkpoint is several times the weights' size, and
    // it is written while the evaluation's buffers are still held.
    let mut tensors: BTreeMap<String, (Vec<usize>, &[f32])> = BTreeMap::new();
    fn vector(v: &[f32]) -> (Vec<usize>, &[f32]) {
        (vec![v.len()], v)
    }
    tensors.insert("params".to_string(), vector(params));
    if let Some(best) = best_params {
        tensors.insert("best.params".to_string(), vector(best));
    }
    for (name, values) in optimizer.moments() {
        tensors.insert(format!("optimizer.{name}"), vector(values));
    }
    // Streamed to the file: built in memory first, the checkpoint was one more
    // allocation of its whole size, which a run near its memory limit could not
    // get after the epoch (an abort, not an error).
    gauntlet_core::write_atomic_with(&path_in(dir), |file| {
        gauntlet_models::write_safetensors(file, &metadata, &tensors)
    })?;
    Ok(())
}

/// Reads the checkpoint in `dir`; `Ok(None)` when there is none yet.
pub fn load(dir: &Path) -> Result<Option<Checkpoint>> {
    let path = path_in(dir);
    if let Ok(meta) = std::fs::metadata(&path) {
        gauntlet_core::ensure_memory(
            meta.len().saturating_mul(2),
            &format!("checkpoint {}", path.display()),
            "use a machine with more memory",
        )?;
    }
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::Checkpoint(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    let bad = |what: String| {
        Error::Checkpoint(format!(
            "{} is not a valid checkpoint: {what}",
            path.display()
        ))
    };
    let tensors = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let field = |key: &str| {
        metadata
            .get(key)
            .ok_or_else(|| bad(format!("no {key} metadata")))
    };
    let layout = metadata
        .get("gauntlet.params_layout")
        .map_or("none", String::as_str);
    if layout != PARAMS_LAYOUT {
        return Err(bad(format!(
            "its parameters are packed as '{layout}', this version packs them as '{PARAMS_LAYOUT}'; start the run again in a new checkpoint directory"
        )));
    }
    let state: CheckpointState =
        serde_json::from_str(field("gauntlet.checkpoint")?).map_err(|e| bad(e.to_string()))?;
    let settings: crate::optim::OptimizerSettings =
        serde_json::from_str(field("gauntlet.optimizer")?).map_err(|e| bad(e.to_string()))?;
    let vector = |name: &str| -> Result<Option<Vec<f32>>> {
        let view = match tensors.tensor(name) {
            Ok(view) => view,
            Err(safetensors::SafeTensorError::TensorNotFound(_)) => return Ok(None),
            Err(e) => return Err(bad(e.to_string())),
        };
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(bad(format!("{name} is {:?}, expected F32", view.dtype())));
        }
        Ok(Some(
            view.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ))
    };
    let params = vector("params")?.ok_or_else(|| bad("no params tensor".into()))?;
    let best_params = vector("best.params")?;
    let mut moments = Vec::new();
    for name in settings.moment_names() {
        let values = vector(&format!("optimizer.{name}"))?
            .ok_or_else(|| bad(format!("no optimizer.{name} tensor")))?;
        moments.push(values);
    }
    let optimizer = Optimizer::from_parts(settings, moments).map_err(|e| bad(e.to_string()))?;
    Ok(Some(Checkpoint {
        state,
        params,
        best_params,
        optimizer,
    }))
}
