//! Penultimate-layer features, computed in batches.

use gauntlet_core::Observer;
use gauntlet_data::Dataset;

use crate::model::DetectorModel;

use crate::error::{config, Result};

/// Penultimate activations of a dataset: only what the activation-based detectors
/// need (a few KiB per image), never the images themselves as one tensor.
#[derive(Clone, Debug)]
pub struct Features {
    /// Width of one feature vector.
    pub dim: usize,
    /// `len × dim` values, row-major, in dataset order.
    pub values: Vec<f32>,
    /// The label of each sample (as the dataset states it).
    pub labels: Vec<u32>,
    /// The model's prediction for each sample.
    pub predictions: Vec<u32>,
}

impl Features {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The feature vector of sample `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.dim..(i + 1) * self.dim]
    }

    /// Indices of the samples labelled `class`, ascending.
    pub fn members(&self, class: u32) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.labels[i] == class)
            .collect()
    }
}

/// The penultimate activations of every sample of `data` under `net`, in batches of
/// `batch_size` images.
pub fn penultimate_features(
    net: &dyn DetectorModel,
    data: &Dataset,
    batch_size: usize,
    observer: &dyn Observer,
) -> Result<Features> {
    if batch_size == 0 {
        return Err(config("batch size must be at least 1"));
    }
    let classes = net.num_classes();
    let mut features = Features {
        dim: 0,
        values: Vec::new(),
        labels: data.labels().to_vec(),
        predictions: Vec::with_capacity(data.len()),
    };
    observer.start("features", data.len() as u64);
    let mut start = 0;
    while start < data.len() {
        let end = (start + batch_size).min(data.len());
        let images = data.images_f32(start..end)?;
        let (logits, penultimate) = net.logits_and_features(&images, end - start)?;
        features.dim = penultimate.len() / (end - start);
        features.values.extend_from_slice(&penultimate);
        features
            .predictions
            .extend(logits.chunks_exact(classes).map(argmax));
        observer.advance((end - start) as u64, "");
        start = end;
    }
    observer.finish(&format!(
        "{} feature vectors of width {}",
        data.len(),
        features.dim
    ));
    Ok(features)
}

/// The predicted class of one row of logits.
pub(crate) fn argmax(row: &[f32]) -> u32 {
    gauntlet_core::largest(row).0 as u32
}
