//! What an evaluation keeps besides its numbers: the report's gallery of broken
//! samples and the adversarial examples as an NPZ a user can evaluate again.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use gauntlet_core::Classifier;
use gauntlet_data::{encode_npy, encode_npz, Dataset};
use gauntlet_record::{GalleryExample, RobustnessRecord, SuiteRecord, GALLERY_SIZE};

use crate::{predictions_of, AttackResult, Error, Result, RobustResult, Warning};

/// Samples (in dataset order) whose adversarial examples are kept for the gallery:
/// [`RobustConfig::gallery_samples`](crate::RobustConfig) of a run starting at
/// sample 0.
pub const GALLERY_CANDIDATES: usize = 64;

/// Adversarial examples by sample index: (ε, attack, image), as
/// [`RobustResult::examples`](crate::RobustResult) keeps them.
pub type Examples = BTreeMap<usize, (f64, String, Vec<f32>)>;

/// The first broken samples among the gallery candidates, with their clean and
/// adversarial images, predictions and confidences, for the report. Indices are
/// dataset-wide: `first_sample` is where a shard starts.
pub fn gallery(
    model: &dyn Classifier,
    data: &Dataset,
    examples: &Examples,
    attacks: &[AttackResult],
    first_sample: usize,
) -> Result<Vec<GalleryExample>> {
    // Each example with its attack's norm (every example comes from a listed attack).
    let chosen: Vec<_> = examples
        .iter()
        .filter(|(&i, _)| first_sample + i < GALLERY_CANDIDATES)
        .filter_map(|(i, example)| {
            let norm = attacks.iter().find(|a| a.attack == example.1)?.norm;
            Some((i, (example, norm)))
        })
        .take(GALLERY_SIZE)
        .collect();
    if chosen.is_empty() {
        return Ok(Vec::new());
    }
    let shape = data.image_shape();
    let [c, h, w] = shape;
    let indices: Vec<usize> = chosen.iter().map(|(&i, _)| i).collect();
    let (clean_images, _) = data.gather(&indices, model.device())?;
    let adversarial: Vec<f32> = chosen
        .iter()
        .flat_map(|(_, ((_, _, image), _))| image.iter().copied())
        .collect();
    let adversarial_images =
        Tensor::from_vec(adversarial, (chosen.len(), c, h, w), model.device())?;
    let clean_top = top_class(model, &clean_images)?;
    let adversarial_top = top_class(model, &adversarial_images)?;
    let clean_pixels = clean_images
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let per = c * h * w;
    Ok(chosen
        .iter()
        .enumerate()
        .map(
            |(k, (&index, ((epsilon, attack, image), norm)))| GalleryExample {
                index: first_sample + index,
                label: data.labels()[index],
                attack: attack.clone(),
                norm: *norm,
                epsilon: *epsilon,
                shape,
                original: clean_pixels[k * per..(k + 1) * per].to_vec(),
                adversarial: image.clone(),
                clean_prediction: clean_top[k].0,
                clean_confidence: clean_top[k].1,
                adversarial_prediction: adversarial_top[k].0,
                adversarial_confidence: adversarial_top[k].1,
            },
        )
        .collect())
}

impl RobustResult {
    /// The run record's robustness section for `suite`, with its gallery; the
    /// `sanity` warnings (the model checks run before the attacks) come before
    /// the attacks' own. The adversarial examples kept are returned beside it.
    pub fn into_record(
        self,
        model: &dyn Classifier,
        data: &Dataset,
        suite: SuiteRecord,
        mut sanity: Vec<Warning>,
        first_sample: usize,
    ) -> Result<(RobustnessRecord, Examples)> {
        let gallery = gallery(model, data, &self.examples, &self.attacks, first_sample)?;
        sanity.extend(self.warnings);
        let record = RobustnessRecord {
            suite,
            attacks: self.attacks,
            minimal: self.minimal,
            best_known: self.best_known,
            worst_case: self.worst_case,
            warnings: sanity,
            gallery,
        };
        Ok((record, self.examples))
    }
}

/// The predicted class and its softmax probability per image.
fn top_class(model: &dyn Classifier, images: &Tensor) -> Result<Vec<(u32, f64)>> {
    let probabilities = gauntlet_core::softmax(&model.logits(images)?)?
        .to_dtype(DType::F32)?
        .to_vec2::<f32>()?;
    Ok(probabilities
        .iter()
        .map(|row| {
            let (class, p) = gauntlet_core::largest(row);
            (class as u32, f64::from(p))
        })
        .collect())
}

/// The adversarial examples as NPZ bytes that `gauntlet eval --data` reads
/// directly (`x`, `y`), plus where they came from: `indices` (dataset-wide),
/// `clean_predictions`, `adversarial_predictions` (the model on `x`) and
/// `epsilons` (the smallest ε that broke each sample).
pub fn adversarial_npz(
    model: &dyn Classifier,
    data: &Dataset,
    clean_predictions: &[u32],
    examples: &Examples,
    first_sample: usize,
) -> Result<Vec<u8>> {
    let [c, h, w] = data.image_shape();
    let m = examples.len();
    let mut images = Vec::with_capacity(m * c * h * w);
    let (mut labels, mut indices, mut clean, mut epsilons) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (&i, (epsilon, _, image)) in examples {
        images.extend_from_slice(image);
        labels.push(i64::from(data.labels()[i]));
        indices.push((first_sample + i) as i64);
        clean.push(i64::from(clean_predictions[i]));
        epsilons.push(*epsilon);
    }
    let adversarial = if m == 0 {
        Vec::new()
    } else {
        let x = Tensor::from_vec(images.clone(), (m, c, h, w), model.device())?;
        predictions_of(&model.logits(&x)?, 0)?
            .into_iter()
            .map(i64::from)
            .collect()
    };
    let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let i64s = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let f64s = |v: &[f64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    encode_npz(&[
        ("x.npy", encode_npy("<f4", &[m, c, h, w], &f32s(&images))),
        ("y.npy", encode_npy("<i8", &[m], &i64s(&labels))),
        ("indices.npy", encode_npy("<i8", &[m], &i64s(&indices))),
        (
            "clean_predictions.npy",
            encode_npy("<i8", &[m], &i64s(&clean)),
        ),
        (
            "adversarial_predictions.npy",
            encode_npy("<i8", &[m], &i64s(&adversarial)),
        ),
        ("epsilons.npy", encode_npy("<f8", &[m], &f64s(&epsilons))),
    ])
    .map_err(Error::Encode)
}
