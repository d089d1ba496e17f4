//! The flags `inject`, `detect` and `audit` share: the attack to inject and the
//! detectors to run, resolved into the library's settings.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use gauntlet_poison::{
    ActivationClustering, Detector, InjectionConfig, NeuralCleanse, Patch, PatchPattern,
    PatchPosition, PoisonAttack, PoisonKind, Scan, SpectralSignatures, Spectre, Strip,
    TrainingSetDetectors,
};

use crate::toolbox::one_of;

/// The attack to inject.
#[derive(Args, Debug, Clone)]
pub(crate) struct InjectionArgs {
    /// badnets (Gu et al. 2017), blend (Chen et al. 2017) or label-flip.
    #[arg(long, value_parser = one_of(&PoisonKind::ALL, PoisonKind::name))]
    pub(super) attack: PoisonKind,
    /// Target class (required for badnets and blend; label-flip without it flips to random classes).
    #[arg(long)]
    pub(super) target: Option<u32>,
    /// Fraction of the source-class training images to poison, in (0, 1].
    #[arg(long, default_value_t = 0.1)]
    pub(super) fraction: f64,
    /// Source classes: all (every class but the target) or a list such as 1,7.
    #[arg(long, default_value = "all")]
    pub(super) source: String,
    /// BadNets patch side in pixels.
    #[arg(long, default_value_t = 3)]
    pub(super) trigger_size: usize,
    /// Trigger image (.npy, uint8 0–255 or float 0–1, H×W or C×H×W): the BadNets
    /// patch (square; its side sets the size) or the full-image blend pattern.
    #[arg(long, conflicts_with_all = ["trigger_size", "trigger_pattern"])]
    pub(super) trigger_image: Option<PathBuf>,
    /// BadNets patch position: bottom-right, bottom-left, top-right, top-left or ROW,COL.
    #[arg(long, default_value = "bottom-right")]
    pub(super) trigger_position: String,
    /// BadNets patch pattern.
    #[arg(long, default_value = "white", value_parser = patch_pattern())]
    pub(super) trigger_pattern: PatchPattern,
    /// Blend opacity α of the (seeded random-noise) pattern.
    #[arg(long, default_value_t = 0.1)]
    pub(super) alpha: f32,
    /// Seed of the choice of images, patterns and flips.
    #[arg(long, default_value_t = 0)]
    pub(super) seed: u64,
}

/// Detector settings shared by detect and audit.
#[derive(Args, Debug, Clone)]
pub(crate) struct DetectorArgs {
    /// Detectors, comma-separated, or all.
    #[arg(long, value_delimiter = ',', default_value = "all", value_parser = method_choice())]
    pub(super) method: Vec<MethodChoice>,
    /// STRIP: clean test images held out for calibration and overlays (as many more are judged).
    #[arg(long, default_value_t = 500)]
    pub(super) strip_held_out: usize,
    /// STRIP: clean images blended with each input.
    #[arg(long, default_value_t = 100)]
    pub(super) overlays: usize,
    /// STRIP: false-rejection rate the threshold is set for.
    #[arg(long, default_value_t = 0.01)]
    pub(super) false_rejection_rate: f64,
    /// Neural Cleanse: optimisation steps per class.
    #[arg(long, default_value_t = 300)]
    pub(super) cleanse_steps: usize,
    /// Neural Cleanse: clean test images it optimises on.
    #[arg(long, default_value_t = 500)]
    pub(super) cleanse_samples: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = 500)]
    pub(super) batch_size: usize,
}

pub(super) fn injection_config(args: &InjectionArgs) -> Result<InjectionConfig> {
    let trigger_image = match &args.trigger_image {
        Some(path) => Some((
            path,
            gauntlet_data::load_image_npy(path)
                .with_context(|| format!("cannot use --trigger-image {}", path.display()))?,
        )),
        None => None,
    };
    let attack = match args.attack {
        PoisonKind::Badnets => {
            let (size, pattern) = match trigger_image {
                Some((path, image)) => {
                    let [_, h, w] = image.shape;
                    if h != w {
                        bail!(
                            "--trigger-image {} is {h}×{w}, expected a square BadNets patch",
                            path.display()
                        );
                    }
                    (h, PatchPattern::Image(image.values))
                }
                None => (args.trigger_size, args.trigger_pattern.clone()),
            };
            PoisonAttack::Badnets(Patch {
                size,
                position: PatchPosition::parse(&args.trigger_position)?,
                pattern,
            })
        }
        PoisonKind::Blend => PoisonAttack::Blend {
            alpha: args.alpha,
            pattern: trigger_image.map(|(_, image)| image.values),
        },
        PoisonKind::LabelFlip if args.trigger_image.is_some() => {
            bail!("--trigger-image does not apply to label-flip, which changes labels only")
        }
        PoisonKind::LabelFlip => PoisonAttack::LabelFlip,
    };
    let source = match args.source.as_str() {
        "all" => None,
        list => Some(
            list.split(',')
                .map(|c| {
                    c.trim().parse::<u32>().with_context(|| {
                        format!("--source '{list}' must be 'all' or class numbers such as 1,7")
                    })
                })
                .collect::<Result<Vec<_>>>()?,
        ),
    };
    Ok(InjectionConfig {
        attack,
        target: args.target,
        fraction: args.fraction,
        source,
        seed: args.seed,
    })
}

/// Which detectors a `--method` list names.
pub(super) struct Methods {
    pub(super) training_set: TrainingSetDetectors,
    pub(super) strip: Option<Strip>,
    pub(super) cleanse: Option<NeuralCleanse>,
}

/// One `--method` value: a detector, or `all` of them.
#[derive(Clone, Copy, Debug)]
pub(crate) enum MethodChoice {
    All,
    One(Detector),
}

/// `--method`'s values: the library's detector names and `all`.
fn method_choice() -> impl clap::builder::TypedValueParser<Value = MethodChoice> {
    use clap::builder::TypedValueParser as _;
    let mut names: Vec<&'static str> = Detector::ALL.iter().map(|d| d.name()).collect();
    names.push("all");
    clap::builder::PossibleValuesParser::new(names).map(|chosen: String| {
        Detector::ALL
            .into_iter()
            .find(|d| d.name() == chosen)
            .map_or(MethodChoice::All, MethodChoice::One)
    })
}

/// `--trigger-pattern`'s values: the library's named patterns.
fn patch_pattern() -> impl clap::builder::TypedValueParser<Value = PatchPattern> {
    use clap::builder::TypedValueParser as _;
    let names: Vec<&'static str> = PatchPattern::NAMED.iter().map(|p| p.name()).collect();
    clap::builder::PossibleValuesParser::new(names)
        .try_map(|chosen: String| PatchPattern::parse(&chosen).map_err(|e| e.to_string()))
}

pub(super) fn methods(args: &DetectorArgs, seed: u64) -> Result<Methods> {
    let mut chosen = Methods {
        training_set: TrainingSetDetectors::default(),
        strip: None,
        cleanse: None,
    };
    let detectors = args.method.iter().flat_map(|choice| match choice {
        MethodChoice::All => Detector::ALL.to_vec(),
        MethodChoice::One(detector) => vec![*detector],
    });
    for detector in detectors {
        match detector {
            Detector::ActivationClustering => {
                chosen.training_set.activation_clustering = Some(ActivationClustering {
                    seed,
                    ..ActivationClustering::default()
                })
            }
            Detector::SpectralSignatures => {
                chosen.training_set.spectral_signatures = Some(SpectralSignatures {
                    seed,
                    ..SpectralSignatures::default()
                })
            }
            Detector::Spectre => {
                chosen.training_set.spectre = Some(Spectre {
                    seed,
                    ..Spectre::default()
                })
            }
            Detector::Scan => {
                chosen.training_set.scan = Some(Scan {
                    seed,
                    ..Scan::default()
                })
            }
            Detector::Strip => {
                chosen.strip = Some(Strip {
                    overlays: args.overlays,
                    false_rejection_rate: args.false_rejection_rate,
                    batch_size: args.batch_size,
                    seed,
                })
            }
            Detector::NeuralCleanse => {
                chosen.cleanse = Some(NeuralCleanse {
                    steps: args.cleanse_steps,
                    seed,
                    ..NeuralCleanse::default()
                })
            }
        }
    }
    if let Some(strip) = &chosen.strip {
        if strip.overlays == 0
            || !(strip.false_rejection_rate > 0.0 && strip.false_rejection_rate < 1.0)
        {
            bail!(
                "STRIP needs --overlays ≥ 1 and --false-rejection-rate in (0, 1), got {} and {}",
                strip.overlays,
                strip.false_rejection_rate
            );
        }
    }
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    Ok(chosen)
}
