//! What every command shares: the model and data flags and their loading (scan
//! first, memory checked), the run record's common sections and its atomic
//! writing, output-directory checks, and the report written next to a record.
//! Command modules import from here, never from each other.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use gauntlet_data::{Dataset, LoadOptions, Split};
use gauntlet_models::{load_model, Arch, Model, ModelInfo, ModelOptions, Normalization};
use gauntlet_record::{ModelScanRecord, RunRecord};
use gauntlet_report::ReportInput;
use gauntlet_scan::ScanReport;

/// How to read a model file.
#[derive(Args, Debug, Clone)]
pub(crate) struct ModelArgs {
    /// Model file: .safetensors, .pt/.pth (PyTorch state dict) or .onnx.
    #[arg(long)]
    pub(crate) model: PathBuf,
    /// Architecture, for files that do not record one.
    #[arg(long, value_parser = one_of(&Arch::ALL, Arch::name))]
    pub(crate) arch: Option<Arch>,
    /// Per-channel mean to fold into the model, e.g. 0.1307 or 0.4914,0.4822,0.4465.
    #[arg(long, value_delimiter = ',', requires = "std")]
    pub(crate) mean: Option<Vec<f32>>,
    /// Per-channel standard deviation to fold into the model.
    #[arg(long, value_delimiter = ',', requires = "mean")]
    pub(crate) std: Option<Vec<f32>>,
    /// Input shape C,H,W for ONNX graphs whose input shape is symbolic.
    #[arg(long, value_delimiter = ',')]
    pub(crate) input_shape: Option<Vec<usize>>,
    /// Load a pickle whose scan found code-executing or hidden imports anyway
    /// (Gauntlet's reader never runs them, but you vouch for the file).
    #[arg(long)]
    pub(crate) allow_unsafe_pickle: bool,
}

/// Which data to read.
#[derive(Args, Debug, Clone)]
pub(crate) struct DataArgs {
    /// Dataset: an MNIST IDX directory, a CIFAR-10 binary directory, an .npz file,
    /// or a directory with x.npy and y.npy.
    #[arg(long)]
    pub(crate) data: PathBuf,
    /// Evaluate only the first N samples (unshuffled, so runs stay comparable).
    #[arg(long)]
    pub(crate) limit: Option<usize>,
    /// Number of classes, when the labels do not show it (default: 10 for IDX/CIFAR).
    #[arg(long)]
    pub(crate) num_classes: Option<usize>,
    /// CIFAR-100: the 100 fine classes or the 20 coarse superclasses.
    #[arg(long, value_name = "fine|coarse", default_value = "fine")]
    pub(crate) label_set: gauntlet_data::LabelSet,
    /// Image folders: resize the shorter side to N pixels (bilinear with
    /// antialiasing, as torchvision's Resize(N) on PIL images).
    #[arg(long, value_name = "N")]
    pub(crate) resize: Option<usize>,
    /// Image folders: crop the centre to H×W (torchvision's CenterCrop); one
    /// number for a square.
    #[arg(long, value_name = "H[,W]", value_parser = parse_crop)]
    pub(crate) center_crop: Option<[usize; 2]>,
    /// Image folders: a CSV of `path,label` rows (paths relative to --data;
    /// labels class indices or names) for a flat folder of images.
    #[arg(long, value_name = "CSV")]
    pub(crate) labels: Option<PathBuf>,
    /// Image folders: class names one per line, pinning the class order
    /// (default: sub-folder names sorted, as torchvision's ImageFolder).
    #[arg(long, value_name = "FILE")]
    pub(crate) classes: Option<PathBuf>,
}

impl ModelArgs {
    /// `--model PATH` and no other model flag.
    pub(crate) fn file(path: &Path) -> Self {
        Self {
            model: path.to_path_buf(),
            arch: None,
            mean: None,
            std: None,
            input_shape: None,
            allow_unsafe_pickle: false,
        }
    }
}

impl DataArgs {
    /// `--data PATH` and no other data flag.
    pub(crate) fn path(path: &Path) -> Self {
        Self {
            data: path.to_path_buf(),
            limit: None,
            num_classes: None,
            label_set: gauntlet_data::LabelSet::default(),
            resize: None,
            center_crop: None,
            labels: None,
            classes: None,
        }
    }
}

/// A flag whose values are a closed set the library names (`ALL` and `name`):
/// clap lists the names in `--help` and refuses any other value, naming them.
pub(crate) fn one_of<T: Copy + Send + Sync + 'static>(
    all: &'static [T],
    name: fn(T) -> &'static str,
) -> impl clap::builder::TypedValueParser<Value = T> {
    use clap::builder::TypedValueParser as _;
    let names: Vec<&'static str> = all.iter().map(|&value| name(value)).collect();
    clap::builder::PossibleValuesParser::new(names).try_map(move |chosen: String| {
        all.iter()
            .copied()
            .find(|&value| name(value) == chosen)
            .ok_or_else(|| format!("unknown value '{chosen}'"))
    })
}

/// `--center-crop H[,W]`.
fn parse_crop(text: &str) -> std::result::Result<[usize; 2], String> {
    let parse = |t: &str| match t.trim().parse::<usize>() {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(format!(
            "expected H or H,W with positive integers, found '{text}'"
        )),
    };
    match text.split_once(',') {
        None => parse(text).map(|v| [v, v]),
        Some((h, w)) => Ok([parse(h)?, parse(w)?]),
    }
}

/// The command line as typed, with the program named `gauntlet` wherever it was run from.
pub(crate) fn command_line() -> Vec<String> {
    std::iter::once("gauntlet".to_string())
        .chain(std::env::args().skip(1))
        .collect()
}

fn model_options(args: &ModelArgs) -> Result<ModelOptions> {
    let normalization = match (&args.mean, &args.std) {
        (Some(mean), Some(std)) => Some(Normalization {
            mean: mean.clone(),
            std: std.clone(),
        }),
        _ => None,
    };
    let input_shape = match args.input_shape.as_deref() {
        None => None,
        Some([c, h, w]) if *c > 0 && *h > 0 && *w > 0 => Some([*c, *h, *w]),
        Some(other) => bail!("--input-shape {other:?} must be three positive numbers C,H,W"),
    };
    Ok(ModelOptions {
        arch: args.arch,
        normalization,
        bounds: None,
        input_shape,
    })
}

/// Scan, then load, a model: a file that would run code in Python (or whose
/// header lies) is refused. Files the scanner cannot read go on to the loader,
/// which reports them. The scan is returned for the run record.
pub(crate) fn load_model_checked(
    args: &ModelArgs,
) -> Result<(Model, ModelInfo, Option<ModelScanRecord>)> {
    let options = model_options(args)?;
    // The file's bytes and the tensors built from them are alive at once. Checked
    // here, at start-up, where the process's own footprint is small and known.
    if let Ok(meta) = std::fs::metadata(&args.model) {
        gauntlet_core::ensure_memory(
            meta.len().saturating_mul(2),
            &format!("model {}", args.model.display()),
            "use a machine with more memory",
        )?;
    }
    let scan = gauntlet_scan::scan_file(&args.model).ok();
    if let Some(report) = &scan {
        if report.is_dangerous() {
            let worst = report
                .findings
                .iter()
                .max_by_key(|f| f.severity)
                .map(|f| format!("{} ({})", f.message, f.location))
                .unwrap_or_default();
            let pickle = report.format != gauntlet_scan::ScanFormat::Safetensors;
            if !(pickle && args.allow_unsafe_pickle) {
                bail!(
                    "refusing model {}: {worst}{}; see `gauntlet scan {}`",
                    args.model.display(),
                    if pickle {
                        " (--allow-unsafe-pickle to load it anyway)"
                    } else {
                        ""
                    },
                    args.model.display()
                );
            }
        }
    }
    let (model, info) = load_model(&args.model, &options, &Device::Cpu)
        .with_context(|| format!("cannot load model {}", args.model.display()))?;
    Ok((model, info, scan.as_ref().map(ScanReport::to_record)))
}

/// Read `--data`; `channels` is the model's input channel count where a
/// model is known (image files are converted to it).
pub(crate) fn load_data(args: &DataArgs, split: Split, channels: Option<usize>) -> Result<Dataset> {
    if args.resize == Some(0) {
        bail!("--resize must be at least 1");
    }
    let options = LoadOptions {
        split,
        limit: args.limit,
        num_classes: args.num_classes,
        label_set: args.label_set,
        preprocess: gauntlet_data::Preprocess {
            resize: args.resize,
            center_crop: args.center_crop,
        },
        channels,
        folder: gauntlet_data::image_folder::FolderOptions {
            labels_csv: args.labels.clone(),
            classes_file: args.classes.clone(),
            max_pixels: None,
        },
    };
    let dataset = gauntlet_data::load(&args.data, &options).with_context(|| {
        format!(
            "cannot load the {} split of {}",
            split.as_str(),
            args.data.display()
        )
    })?;
    let folder_flags = [
        ("--resize", args.resize.is_some()),
        ("--center-crop", args.center_crop.is_some()),
        ("--labels", args.labels.is_some()),
        ("--classes", args.classes.is_some()),
    ];
    if dataset.format() != gauntlet_data::DataFormat::ImageFolder {
        if let Some((flag, _)) = folder_flags.iter().find(|(_, given)| *given) {
            bail!(
                "{flag} applies to image folders, but {} is {} data",
                args.data.display(),
                dataset.format().as_str()
            );
        }
    }
    Ok(dataset)
}

/// Refuse an output path that is an existing file where a directory is expected.
/// Refuse an output directory that already holds a run record unless `replace`
/// (`--force`, or resuming the run that is in it): nothing is lost by accident.
pub(crate) fn check_out_dir(out: &Path, replace: bool) -> Result<()> {
    if out.exists() && !out.is_dir() {
        bail!("--out {} exists and is not a directory", out.display());
    }
    if !replace && out.join("results.json").exists() {
        bail!(
            "--out {} already holds a run record (results.json); choose a new directory, or pass --force to replace it",
            out.display()
        );
    }
    Ok(())
}

pub(crate) fn write_record(path: &Path, record: &RunRecord) -> Result<()> {
    gauntlet_core::write_atomic(path, record.to_json()?.as_bytes())
        .with_context(|| format!("cannot write the run record {}", path.display()))
}

/// Read and check one run record.
pub(crate) fn read_record(path: &Path) -> Result<RunRecord> {
    let text =
        gauntlet_core::read_text_limited(path, gauntlet_core::MAX_DOCUMENT_BYTES, "run record")?;
    RunRecord::from_json(&text)
        .with_context(|| format!("{} is not a Gauntlet run record", path.display()))
}

/// Render `inputs` into `dir`, each file written atomically.
pub(crate) fn write_report(dir: &Path, inputs: &[ReportInput]) -> Result<()> {
    let report = gauntlet_report::build(inputs).context("cannot build the report")?;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create report directory {}", dir.display()))?;
    for file in &report.files {
        let path = dir.join(&file.name);
        gauntlet_core::write_atomic(&path, &file.bytes)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The report of one run, next to its record.
pub(crate) fn write_run_report(dir: &Path, record: &RunRecord, record_path: &Path) -> Result<()> {
    // The record is written first: a report that fails (disk full) loses nothing.
    write_report(dir, &[ReportInput::new(record.clone())]).with_context(|| {
        format!(
            "{} is complete but its report is not; rerun `gauntlet report {} --out {}`",
            record_path.display(),
            record_path.display(),
            dir.display()
        )
    })?;
    println!("wrote {}", dir.join("report.html").display());
    Ok(())
}
