//! Poison injection: BadNets patches, blended triggers and label flips.

use std::collections::BTreeSet;

use gauntlet_core::SeedStream;
use gauntlet_data::{Dataset, Replacement};
use serde::{Deserialize, Serialize};

use crate::error::{config, Error, Result};

/// A trigger in its most general form: `x' = (1 − m) ⊙ x + m ⊙ p`, with a per-pixel
/// mask `m ∈ [0, 1]` (shared by the channels) and a pattern `p ∈ [0, 1]`. A BadNets
/// patch is a 0/1 mask over a square; a blended trigger is a constant mask α; the
/// triggers Neural Cleanse reverse-engineers have the same form.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trigger {
    /// Image shape `[C, H, W]` the trigger applies to.
    pub shape: [usize; 3],
    /// Mask, `H × W` values in `[0, 1]`.
    pub mask: Vec<f32>,
    /// Pattern, `C × H × W` values in `[0, 1]`.
    pub pattern: Vec<f32>,
}

impl Trigger {
    /// Stamp the trigger onto one NCHW image in place.
    pub fn apply(&self, image: &mut [f32]) {
        let [c, h, w] = self.shape;
        let plane = h * w;
        for channel in 0..c {
            for pixel in 0..plane {
                let m = self.mask[pixel];
                if m == 0.0 {
                    continue;
                }
                let i = channel * plane + pixel;
                image[i] = (1.0 - m) * image[i] + m * self.pattern[i];
            }
        }
    }

    /// Stamp the trigger onto every image of a batch (`n × C·H·W` values).
    pub fn apply_all(&self, images: &mut [f32]) {
        let per: usize = self.shape.iter().product();
        for image in images.chunks_exact_mut(per) {
            self.apply(image);
        }
    }

    /// L1 norm of the mask: the number of pixels a patch covers.
    pub fn mask_l1(&self) -> f64 {
        self.mask.iter().map(|&m| f64::from(m)).sum()
    }
}

/// Where a BadNets patch sits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PatchPosition {
    /// The bottom-right corner, one pixel in from the edges (default; Gu et al.).
    #[default]
    BottomRight,
    /// The bottom-left corner, one pixel in.
    BottomLeft,
    /// The top-right corner, one pixel in.
    TopRight,
    /// The top-left corner, one pixel in.
    TopLeft,
    /// Top-left pixel of the patch at (row, column).
    At {
        /// Row of the patch's top-left pixel.
        row: usize,
        /// Column of the patch's top-left pixel.
        col: usize,
    },
}

impl PatchPosition {
    /// Parse `bottom-right`, `bottom-left`, `top-right`, `top-left` or `ROW,COL`.
    pub fn parse(text: &str) -> Result<Self> {
        Ok(match text {
            "bottom-right" => Self::BottomRight,
            "bottom-left" => Self::BottomLeft,
            "top-right" => Self::TopRight,
            "top-left" => Self::TopLeft,
            other => {
                let parsed = other
                    .split_once(',')
                    .and_then(|(r, c)| Some((r.trim().parse().ok()?, c.trim().parse().ok()?)));
                match parsed {
                    Some((row, col)) => Self::At { row, col },
                    None => {
                        return Err(config(format!(
                            "unknown trigger position '{other}', expected bottom-right, bottom-left, top-right, top-left or ROW,COL"
                        )))
                    }
                }
            }
        })
    }

    fn origin(self, size: usize, h: usize, w: usize) -> Result<(usize, usize)> {
        let fits = |extent: usize| size + 2 <= extent;
        let (row, col) = match self {
            Self::At { row, col } => (row, col),
            corner => {
                if !fits(h) || !fits(w) {
                    return Err(config(format!(
                        "a {size}×{size} trigger with a 1-pixel margin does not fit a {h}×{w} image"
                    )));
                }
                match corner {
                    Self::BottomRight => (h - 1 - size, w - 1 - size),
                    Self::BottomLeft => (h - 1 - size, 1),
                    Self::TopRight => (1, w - 1 - size),
                    _ => (1, 1),
                }
            }
        };
        if row + size > h || col + size > w {
            return Err(config(format!(
                "a {size}×{size} trigger at row {row}, column {col} does not fit a {h}×{w} image"
            )));
        }
        Ok((row, col))
    }
}

/// What a BadNets patch looks like.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PatchPattern {
    /// Every pixel at the maximum (default: Gu et al.'s white square).
    #[default]
    White,
    /// Alternating white and black pixels.
    Checkerboard,
    /// Seeded uniform noise.
    Random,
    /// A given `C × size × size` image with values in `[0, 1]`.
    Image(Vec<f32>),
}

impl PatchPattern {
    /// The patterns a name selects (the `Image` pattern comes from a file).
    pub const NAMED: [PatchPattern; 3] = [Self::White, Self::Checkerboard, Self::Random];

    /// Its name: `white`, `checkerboard`, `random`, or `image`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::White => "white",
            Self::Checkerboard => "checkerboard",
            Self::Random => "random",
            Self::Image(_) => "image",
        }
    }

    /// Parse one of [`PatchPattern::NAMED`] by its name.
    pub fn parse(text: &str) -> Result<Self> {
        Self::NAMED
            .iter()
            .find(|pattern| pattern.name() == text)
            .cloned()
            .ok_or_else(|| {
                let names: Vec<&str> = Self::NAMED.iter().map(|p| p.name()).collect();
                config(format!(
                    "unknown trigger pattern '{text}', expected one of {}",
                    names.join(", ")
                ))
            })
    }
}

/// A BadNets trigger patch (Gu et al. 2017, "BadNets: Identifying Vulnerabilities in
/// the Machine Learning Model Supply Chain"). Default: a 3×3 white square in the
/// bottom-right corner.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Patch {
    /// Side length in pixels (default 3).
    pub size: usize,
    /// Position (default bottom-right).
    pub position: PatchPosition,
    /// Pattern (default white).
    pub pattern: PatchPattern,
}

impl Default for Patch {
    fn default() -> Self {
        Self {
            size: 3,
            position: PatchPosition::BottomRight,
            pattern: PatchPattern::White,
        }
    }
}

/// The poisoning attack to inject.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "attack")]
pub enum PoisonAttack {
    /// Stamp a patch on the chosen images and relabel them to the target (Gu et al. 2017).
    Badnets(Patch),
    /// Blend a full-image pattern with opacity `alpha` and relabel to the target
    /// (Chen et al. 2017, "Targeted Backdoor Attacks on Deep Learning Systems Using
    /// Data Poisoning"). The pattern is seeded uniform noise unless given.
    Blend {
        /// Opacity of the pattern (default 0.1 in the CLI, as in Chen et al.'s
        /// random-pattern experiments; must lie in (0, 1]).
        alpha: f32,
        /// A `C × H × W` pattern in `[0, 1]`; `None` draws seeded uniform noise.
        pattern: Option<Vec<f32>>,
    },
    /// Change labels only: to the target class if one is given (class-pair flips),
    /// otherwise to a uniformly random other class.
    LabelFlip,
}

/// Which poisoning attack, without its settings: the closed set `--attack`
/// names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoisonKind {
    /// [`PoisonAttack::Badnets`].
    Badnets,
    /// [`PoisonAttack::Blend`].
    Blend,
    /// [`PoisonAttack::LabelFlip`].
    LabelFlip,
}

impl PoisonKind {
    /// Every poisoning attack.
    pub const ALL: [PoisonKind; 3] = [Self::Badnets, Self::Blend, Self::LabelFlip];

    /// The name used on the command line and in records.
    pub fn name(self) -> &'static str {
        match self {
            Self::Badnets => "badnets",
            Self::Blend => "blend",
            Self::LabelFlip => "label-flip",
        }
    }
}

impl PoisonAttack {
    /// Which attack this is.
    pub fn kind(&self) -> PoisonKind {
        match self {
            Self::Badnets(_) => PoisonKind::Badnets,
            Self::Blend { .. } => PoisonKind::Blend,
            Self::LabelFlip => PoisonKind::LabelFlip,
        }
    }

    /// The name used on the command line and in records.
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// Whether the attack plants a trigger (a backdoor) rather than flipping labels.
    pub fn has_trigger(&self) -> bool {
        !matches!(self, Self::LabelFlip)
    }
}

/// What to inject, where, and with which seed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InjectionConfig {
    /// The attack.
    pub attack: PoisonAttack,
    /// Target class. Required for backdoors; for label flips `None` flips to random classes.
    pub target: Option<u32>,
    /// Fraction of the source-class images to poison, in (0, 1].
    pub fraction: f64,
    /// Source classes whose images are poisoned; `None` means every class but the target.
    pub source: Option<Vec<u32>>,
    /// Seed of the choice of images (and of random patterns and flips).
    pub seed: u64,
}

/// Ground truth of an injection: which samples were changed and how. Written next
/// to the poisoned dataset; detectors never read it, evaluation does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version.
    pub schema_version: u32,
    /// The injection's settings.
    pub config: InjectionConfig,
    /// Source classes actually used.
    pub source_classes: Vec<u32>,
    /// Samples in the poisoned training split.
    pub num_samples: usize,
    /// sha256 of the clean training split it was made from.
    pub clean_sha256: String,
    /// sha256 of the poisoned training split as `gauntlet_data::load` reports it
    /// (set once the dataset is written).
    pub poisoned_sha256: String,
    /// Indices of the poisoned samples, ascending.
    pub indices: Vec<usize>,
    /// Their labels before poisoning.
    pub original_labels: Vec<u32>,
    /// Their labels after poisoning.
    pub poisoned_labels: Vec<u32>,
    /// The trigger stamped on them (backdoors only).
    pub trigger: Option<Trigger>,
}

/// Version of [`Manifest`]'s format.
pub const MANIFEST_VERSION: u32 = 1;

impl Manifest {
    /// `manifest.json`: pretty JSON with a trailing newline.
    pub fn to_json(&self) -> Result<String> {
        let mut text = serde_json::to_string_pretty(self).map_err(|e| Error::Manifest {
            path: "manifest.json".into(),
            message: format!("cannot serialise: {e}"),
        })?;
        text.push('\n');
        Ok(text)
    }

    /// One flag per training sample: `true` where the sample was poisoned.
    pub fn is_poisoned(&self) -> Vec<bool> {
        let mut flags = vec![false; self.num_samples];
        for &i in &self.indices {
            if let Some(flag) = flags.get_mut(i) {
                *flag = true;
            }
        }
        flags
    }

    /// Check that `data` is the poisoned training split this manifest describes.
    pub fn check_matches(&self, data: &Dataset) -> std::result::Result<(), String> {
        if data.len() != self.num_samples {
            return Err(format!(
                "describes {} training samples but the dataset has {}",
                self.num_samples,
                data.len()
            ));
        }
        if self.indices.len() != self.poisoned_labels.len()
            || self.indices.len() != self.original_labels.len()
        {
            return Err("index and label lists differ in length".into());
        }
        if !self.poisoned_sha256.is_empty() && self.poisoned_sha256 != data.sha256() {
            return Err(format!(
                "was written for training data with sha256 {}, but this dataset's is {}",
                self.poisoned_sha256,
                data.sha256()
            ));
        }
        for (&i, &label) in self.indices.iter().zip(&self.poisoned_labels) {
            match data.labels().get(i) {
                Some(&actual) if actual == label => {}
                Some(&actual) => {
                    return Err(format!(
                        "sample {i} should carry the poisoned label {label} but has {actual}"
                    ))
                }
                None => return Err(format!("poisoned index {i} is outside the dataset")),
            }
        }
        if let Some(trigger) = &self.trigger {
            if trigger.shape != data.image_shape() {
                return Err(format!(
                    "trigger of shape {:?} does not fit images of shape {:?}",
                    trigger.shape,
                    data.image_shape()
                ));
            }
        }
        Ok(())
    }
}

/// The result of an injection: the poisoned training data and its ground truth.
#[derive(Clone, Debug)]
pub struct Poisoned {
    /// The poisoned copy (the input is never changed).
    pub dataset: Dataset,
    /// What was done to it.
    pub manifest: Manifest,
}

impl InjectionConfig {
    /// Check the settings against the data they will poison.
    pub fn validate(&self, data: &Dataset) -> Result<()> {
        let classes = data.num_classes() as u32;
        if !(self.fraction > 0.0 && self.fraction <= 1.0) {
            return Err(config(format!(
                "fraction {} is outside (0, 1]",
                self.fraction
            )));
        }
        match (self.target, self.attack.has_trigger()) {
            (Some(t), _) if t >= classes => {
                return Err(config(format!(
                    "target class {t} does not exist: the data has classes 0..{}",
                    classes.saturating_sub(1)
                )))
            }
            (None, true) => {
                return Err(config(format!(
                    "{} needs a target class",
                    self.attack.name()
                )))
            }
            _ => {}
        }
        if let Some(source) = &self.source {
            if source.is_empty() {
                return Err(config("the source class list is empty"));
            }
            if let Some(bad) = source.iter().find(|&&c| c >= classes) {
                return Err(config(format!(
                    "source class {bad} does not exist: the data has classes 0..{}",
                    classes.saturating_sub(1)
                )));
            }
            if let Some(t) = self.target {
                if source.contains(&t) {
                    return Err(config(format!(
                        "source classes include the target class {t}"
                    )));
                }
            }
        }
        let [_, h, w] = data.image_shape();
        match &self.attack {
            PoisonAttack::Badnets(patch) => {
                if patch.size == 0 || patch.size > h || patch.size > w {
                    return Err(config(format!(
                        "trigger size {} does not fit {h}×{w} images (expected 1..={})",
                        patch.size,
                        h.min(w)
                    )));
                }
                patch.position.origin(patch.size, h, w)?;
                if let PatchPattern::Image(values) = &patch.pattern {
                    let [c, _, _] = data.image_shape();
                    if values.len() != c * patch.size * patch.size {
                        return Err(config(format!(
                            "trigger image has {} values, expected {c}×{}×{}",
                            values.len(),
                            patch.size,
                            patch.size
                        )));
                    }
                }
            }
            PoisonAttack::Blend { alpha, pattern } => {
                if !(*alpha > 0.0 && *alpha <= 1.0) {
                    return Err(config(format!("blend alpha {alpha} is outside (0, 1]")));
                }
                let per: usize = data.image_shape().iter().product();
                if let Some(p) = pattern {
                    if p.len() != per {
                        return Err(config(format!(
                            "blend pattern has {} values, expected {per}",
                            p.len()
                        )));
                    }
                }
            }
            PoisonAttack::LabelFlip => {}
        }
        Ok(())
    }

    /// The trigger this configuration stamps on images of `shape` (`None` for label flips).
    pub fn trigger(&self, shape: [usize; 3]) -> Result<Option<Trigger>> {
        let [c, h, w] = shape;
        let seed = SeedStream::new(self.seed).derive("poison/pattern");
        Ok(match &self.attack {
            PoisonAttack::LabelFlip => None,
            PoisonAttack::Badnets(patch) => {
                let size = patch.size;
                let (row, col) = patch.position.origin(size, h, w)?;
                let noise = seed.uniform_f32(c * size * size, 0.0, 1.0);
                let mut mask = vec![0.0f32; h * w];
                let mut pattern = vec![0.0f32; c * h * w];
                for ch in 0..c {
                    for dy in 0..size {
                        for dx in 0..size {
                            let (y, x) = (row + dy, col + dx);
                            mask[y * w + x] = 1.0;
                            let local = ch * size * size + dy * size + dx;
                            pattern[ch * h * w + y * w + x] = match &patch.pattern {
                                PatchPattern::White => 1.0,
                                PatchPattern::Checkerboard => ((dy + dx + 1) % 2) as f32,
                                PatchPattern::Random => noise[local],
                                PatchPattern::Image(values) => values[local].clamp(0.0, 1.0),
                            };
                        }
                    }
                }
                Some(Trigger {
                    shape,
                    mask,
                    pattern,
                })
            }
            PoisonAttack::Blend { alpha, pattern } => Some(Trigger {
                shape,
                mask: vec![*alpha; h * w],
                pattern: match pattern {
                    Some(p) => p.iter().map(|v| v.clamp(0.0, 1.0)).collect(),
                    None => seed.uniform_f32(c * h * w, 0.0, 1.0),
                },
            }),
        })
    }
}

/// Poison a copy of `data` (a training split) as `config` says, returning it with
/// its ground-truth manifest. The choice of images is a seeded sample of
/// `round(fraction × candidates)` source-class images.
pub fn inject(data: &Dataset, settings: &InjectionConfig) -> Result<Poisoned> {
    settings.validate(data)?;
    let classes = data.num_classes() as u32;
    let source_classes: Vec<u32> = match &settings.source {
        Some(list) => list
            .iter()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
        None => (0..classes)
            .filter(|&c| Some(c) != settings.target)
            .collect(),
    };
    let candidates: Vec<usize> = (0..data.len())
        .filter(|&i| source_classes.contains(&data.labels()[i]))
        .collect();
    let count = (settings.fraction * candidates.len() as f64).round() as usize;
    if count == 0 {
        return Err(config(format!(
            "fraction {} of {} source-class images poisons none; raise the fraction",
            settings.fraction,
            candidates.len()
        )));
    }
    let seed = SeedStream::new(settings.seed);
    let order = seed.derive("poison/choice").permutation(candidates.len());
    let mut indices: Vec<usize> = order[..count].iter().map(|&k| candidates[k]).collect();
    indices.sort_unstable();
    let trigger = settings.trigger(data.image_shape())?;
    let random_labels = seed
        .derive("poison/flip")
        .below(count, classes as usize - 1);
    let mut replacements = Vec::with_capacity(count);
    let mut original_labels = Vec::with_capacity(count);
    let mut poisoned_labels = Vec::with_capacity(count);
    for (k, &index) in indices.iter().enumerate() {
        let original = data.labels()[index];
        let label = match settings.target {
            Some(target) => target,
            // A uniformly random class other than the original.
            None => {
                let r = random_labels[k] as u32;
                if r >= original {
                    r + 1
                } else {
                    r
                }
            }
        };
        let image = match &trigger {
            Some(trigger) => {
                let mut image = data.images_f32(index..index + 1)?;
                trigger.apply(&mut image);
                Some(image)
            }
            None => None,
        };
        replacements.push(Replacement {
            index,
            image,
            label: Some(label),
        });
        original_labels.push(original);
        poisoned_labels.push(label);
    }
    let name = data
        .path()
        .join(format!("poisoned-{}", settings.attack.name()));
    let dataset = data.with_replaced(name, &replacements)?;
    let manifest = Manifest {
        schema_version: MANIFEST_VERSION,
        config: settings.clone(),
        source_classes,
        num_samples: data.len(),
        clean_sha256: data.sha256().into(),
        poisoned_sha256: String::new(),
        indices,
        original_labels,
        poisoned_labels,
        trigger,
    };
    Ok(Poisoned { dataset, manifest })
}
