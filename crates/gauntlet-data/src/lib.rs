//! Datasets for Gauntlet: the formats users actually have.
//!
//! - MNIST-style IDX directories (MNIST, Fashion-MNIST, KMNIST; raw or `.gz`),
//! - CIFAR-10 binary batches (`data_batch_*.bin`, `test_batch.bin`),
//! - NumPy: an `.npz` archive or a directory of `.npy` files holding `x` (images,
//!   `uint8` 0..255 or float 0..1, NCHW or NHWC) and `y` (integer labels).
//!
//! [`load`] detects the format. Images are kept compactly (bytes when the source
//! is bytes) and turned into `f32` tensors in `[0, 1]`, NCHW, one batch at a time.
//! `limit` takes the first N samples unshuffled, so results stay comparable
//! between runs and tools. Every malformed file yields an [`Error`] naming it.

mod error;
mod idx;
pub mod image_folder;
pub mod pickled;
pub mod preprocess;
pub use preprocess::Preprocess;
mod npy;
mod stream;
pub use npy::{encode_npy, encode_npz};
mod reader;

use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use gauntlet_core::Sha256Hasher;
use serde::{Deserialize, Serialize};

use error::{format_err, io_err};
pub use error::{Error, Result};

/// Which part of a dataset to read; the format a dataset was read from (the
/// record's vocabulary).
pub use gauntlet_record::{DataFormat, Split};

/// The choice named `value` among `choices`, or an error listing them.
fn choose<T: Copy>(value: &str, what: &str, choices: &[(&str, T)]) -> Result<T> {
    choices
        .iter()
        .find(|(name, _)| *name == value)
        .map(|(_, choice)| *choice)
        .ok_or_else(|| {
            let names: Vec<String> = choices.iter().map(|(n, _)| format!("'{n}'")).collect();
            Error::Invalid(format!(
                "unknown {what} '{value}', expected {}",
                names.join(" or ")
            ))
        })
}

/// Which of CIFAR-100's two label sets to read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelSet {
    /// The 100 fine classes (the usual benchmark).
    #[default]
    Fine,
    /// The 20 superclasses.
    Coarse,
}

impl std::str::FromStr for LabelSet {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        choose(
            s,
            "label set",
            &[("fine", LabelSet::Fine), ("coarse", LabelSet::Coarse)],
        )
    }
}

/// How to load a dataset.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Which split (default: test).
    pub split: Split,
    /// Keep only the first `limit` samples, in file order (default: all).
    pub limit: Option<usize>,
    /// Number of classes; labels must lie in `0..num_classes`. Default: 10 for IDX
    /// and CIFAR-10, `max label + 1` for NumPy data.
    pub num_classes: Option<usize>,
    /// CIFAR-100: fine (default) or coarse labels.
    pub label_set: LabelSet,
    /// Image folders: resizing and cropping, as torchvision's transforms.
    pub preprocess: Preprocess,
    /// Image folders: channels to convert every image to (1 as Pillow's
    /// `convert("L")`, 3 as `convert("RGB")`; default 3). Other formats keep
    /// their own.
    pub channels: Option<usize>,
    /// Image folders: a `path,label` CSV for a flat folder, and a file pinning
    /// the class order.
    pub folder: image_folder::FolderOptions,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            split: Split::Test,
            limit: None,
            num_classes: None,
            label_set: LabelSet::Fine,
            preprocess: Preprocess::default(),
            channels: None,
            folder: image_folder::FolderOptions::default(),
        }
    }
}

/// A new image and/or label for one sample, for [`Dataset::with_replaced`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Replacement {
    /// Index of the sample.
    pub index: usize,
    /// New image (NCHW values in `[0, 1]`), or `None` to keep it.
    pub image: Option<Vec<f32>>,
    /// New label, or `None` to keep it.
    pub label: Option<u32>,
}

/// Pixel storage: bytes are scaled by 1/255 when batched; image files stay
/// on disk until a batch asks for them.
#[derive(Clone, Debug)]
enum Pixels {
    U8(Vec<u8>),
    F32(Vec<f32>),
    Files(stream::FileSamples),
}

/// A labelled image dataset held in memory, NCHW.
#[derive(Clone, Debug)]
pub struct Dataset {
    path: PathBuf,
    format: DataFormat,
    split: Split,
    sha256: String,
    shape: [usize; 3],
    num_classes: usize,
    pixels: Pixels,
    labels: Vec<u32>,
    /// How image files were preprocessed (image folders only).
    preprocess: Option<Preprocess>,
}

impl Dataset {
    /// Build a dataset from `f32` pixels in `[0, 1]` (NCHW) and labels, checking both.
    pub fn from_f32(
        name: impl Into<PathBuf>,
        shape: [usize; 3],
        pixels: Vec<f32>,
        labels: Vec<u32>,
        num_classes: usize,
    ) -> Result<Self> {
        let path = name.into();
        let mut bytes = Vec::with_capacity(pixels.len() * 4 + labels.len() * 4);
        pixels.iter().for_each(|p| bytes.extend(p.to_le_bytes()));
        labels.iter().for_each(|l| bytes.extend(l.to_le_bytes()));
        let dataset = Self {
            sha256: gauntlet_core::sha256_bytes(&bytes),
            path: path.clone(),
            format: DataFormat::Npy,
            split: Split::Test,
            shape,
            num_classes,
            pixels: Pixels::F32(pixels),
            labels,
            preprocess: None,
        };
        dataset.check(&path)?;
        Ok(dataset)
    }

    fn check(&self, path: &Path) -> Result<()> {
        let per = self.sample_len();
        let n_pixels = match &self.pixels {
            Pixels::U8(p) => p.len(),
            Pixels::F32(p) => p.len(),
            Pixels::Files(files) => files.len() * per,
        };
        if per == 0 || n_pixels != per * self.labels.len() {
            return Err(format_err(
                path,
                format!(
                    "{} images of shape {:?} need {} values, found {n_pixels}",
                    self.labels.len(),
                    self.shape,
                    per * self.labels.len()
                ),
            ));
        }
        if let Pixels::F32(p) = &self.pixels {
            if let Some((i, v)) = p
                .iter()
                .enumerate()
                .find(|(_, v)| !(v.is_finite() && (0.0..=1.0).contains(*v)))
            {
                return Err(format_err(
                    path,
                    format!(
                        "float image value {v} at sample {} is outside [0, 1] (NaN and Inf are refused); scale 0..255 data by 1/255",
                        i / per
                    ),
                ));
            }
        }
        check_labels(
            path,
            self.labels.iter().map(|&l| l as i64),
            self.num_classes,
        )
    }

    /// Where the data was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The detected format.
    pub fn format(&self) -> DataFormat {
        self.format
    }
    /// How long reads of this dataset (and of subsets selected from it) have
    /// waited for image files to be decoded: `None` for data held in memory.
    pub fn decode_wait(&self) -> Option<std::time::Duration> {
        match &self.pixels {
            Pixels::Files(files) => Some(files.waited()),
            _ => None,
        }
    }

    /// How image files were resized and cropped (image folders only).
    pub fn preprocess(&self) -> Option<Preprocess> {
        self.preprocess
    }
    /// The record's dataset section: what was read, identified by content.
    pub fn record(&self) -> gauntlet_record::DatasetRecord {
        gauntlet_record::DatasetRecord {
            path: self.path.display().to_string(),
            sha256: self.sha256.clone(),
            format: self.format,
            split: self.split,
            num_samples: self.len(),
            preprocess: self.preprocess.map(|p| {
                let mode = if self.shape[0] == 1 {
                    "grey (L)"
                } else {
                    "RGB"
                };
                format!("{}, {mode}", p.describe())
            }),
        }
    }
    /// The split read.
    pub fn split(&self) -> Split {
        self.split
    }
    /// sha256 over the files that make up this split (names and contents), before `limit`.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
    /// Shape of one image, `[channels, height, width]`.
    pub fn image_shape(&self) -> [usize; 3] {
        self.shape
    }
    /// Number of classes labels range over.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// Whether the dataset holds no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// All labels, in dataset order.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }
    fn sample_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// The images of `range` as `f32` values in `[0, 1]`, NCHW, flattened.
    pub fn images_f32(&self, range: Range<usize>) -> Result<Vec<f32>> {
        self.check_range(&range)?;
        let per = self.sample_len();
        let span = range.start * per..range.end * per;
        Ok(match &self.pixels {
            Pixels::U8(p) => p[span].iter().map(|&v| v as f32 / 255.0).collect(),
            Pixels::F32(p) => p[span].to_vec(),
            Pixels::Files(files) => {
                let indices: Vec<usize> = range.collect();
                files
                    .bytes(&indices)?
                    .iter()
                    .map(|&v| v as f32 / 255.0)
                    .collect()
            }
        })
    }

    /// Images `(N, C, H, W)` as `f32` and labels `(N,)` as `u32` for `range`.
    pub fn batch(&self, range: Range<usize>, device: &Device) -> Result<(Tensor, Tensor)> {
        let n = range.len();
        let [c, h, w] = self.shape;
        let images = Tensor::from_vec(self.images_f32(range.clone())?, (n, c, h, w), device)?;
        let labels = Tensor::from_vec(self.labels[range].to_vec(), n, device)?;
        Ok((images, labels))
    }

    /// The samples at `indices`, in that order (for shuffled training batches).
    pub fn gather(&self, indices: &[usize], device: &Device) -> Result<(Tensor, Tensor)> {
        let per = self.sample_len();
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(Error::Invalid(format!(
                "sample {bad} is outside the dataset's 0..{}",
                self.len()
            )));
        }
        let labels: Vec<u32> = indices.iter().map(|&i| self.labels[i]).collect();
        let images: Vec<f32> = match &self.pixels {
            // One parallel decode for the whole batch.
            Pixels::Files(files) => files
                .bytes(indices)?
                .iter()
                .map(|&v| v as f32 / 255.0)
                .collect(),
            _ => {
                let mut images = Vec::with_capacity(indices.len() * per);
                for &i in indices {
                    images.extend(self.images_f32(i..i + 1)?);
                }
                images
            }
        };
        let [c, h, w] = self.shape;
        Ok((
            Tensor::from_vec(images, (indices.len(), c, h, w), device)?,
            Tensor::from_vec(labels, indices.len(), device)?,
        ))
    }

    /// Keep only the first `n` samples (no-op if there are fewer).
    pub fn truncate(&mut self, n: usize) {
        let per = self.sample_len();
        self.labels.truncate(n);
        match &mut self.pixels {
            Pixels::U8(p) => p.truncate(n * per),
            Pixels::F32(p) => p.truncate(n * per),
            Pixels::Files(files) => files.truncate(n),
        }
    }

    /// Whether pixels are stored as bytes (0..255), as IDX and CIFAR-10 data are.
    pub fn is_byte_valued(&self) -> bool {
        matches!(self.pixels, Pixels::U8(_) | Pixels::Files(_))
    }

    /// A copy named `name` in which the samples listed in `replacements` get new
    /// images (NCHW, `[0, 1]`) and/or labels. Byte-valued data stays byte-valued:
    /// new pixel values are rounded to the nearest 1/255, as they would be when saved
    /// as an image file. The copy's sha256 is over its contents.
    pub fn with_replaced(
        &self,
        name: impl Into<PathBuf>,
        replacements: &[Replacement],
    ) -> Result<Dataset> {
        let path = name.into();
        let per = self.sample_len();
        let mut copy = self.clone();
        copy.path = path.clone();
        // Replacing pixels needs them in memory.
        if let Pixels::Files(files) = &self.pixels {
            let all: Vec<usize> = (0..files.len()).collect();
            copy.pixels = Pixels::U8(files.bytes(&all)?);
        }
        for replacement in replacements {
            let index = replacement.index;
            if index >= self.len() {
                return Err(Error::Invalid(format!(
                    "sample {index} to replace is outside the dataset's 0..{}",
                    self.len()
                )));
            }
            if let Some(image) = &replacement.image {
                if image.len() != per {
                    return Err(Error::Invalid(format!(
                        "replacement image for sample {index} has {} values, expected {per}",
                        image.len()
                    )));
                }
                let span = index * per..(index + 1) * per;
                match &mut copy.pixels {
                    Pixels::U8(p) => {
                        for (dst, &v) in p[span].iter_mut().zip(image) {
                            *dst = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
                        }
                    }
                    Pixels::F32(p) => p[span].copy_from_slice(image),
                    // Read into memory above.
                    Pixels::Files(_) => {}
                }
            }
            if let Some(label) = replacement.label {
                copy.labels[index] = label;
            }
        }
        copy.check(&path)?;
        copy.sha256 = copy.content_sha256();
        Ok(copy)
    }

    /// A copy named `name` holding only the samples at `indices`, in that order
    /// (e.g. a training set with flagged samples removed).
    pub fn select(&self, name: impl Into<PathBuf>, indices: &[usize]) -> Result<Dataset> {
        let per = self.sample_len();
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(Error::Invalid(format!(
                "sample {bad} to select is outside the dataset's 0..{}",
                self.len()
            )));
        }
        let pixels = match &self.pixels {
            Pixels::U8(p) => Pixels::U8(
                indices
                    .iter()
                    .flat_map(|&i| p[i * per..(i + 1) * per].iter().copied())
                    .collect(),
            ),
            Pixels::F32(p) => Pixels::F32(
                indices
                    .iter()
                    .flat_map(|&i| p[i * per..(i + 1) * per].iter().copied())
                    .collect(),
            ),
            Pixels::Files(files) => Pixels::Files(files.select(indices)),
        };
        let mut copy = Dataset {
            path: name.into(),
            pixels,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            ..self.clone_header()
        };
        copy.sha256 = copy.content_sha256();
        Ok(copy)
    }

    /// The samples in `range`, keeping this dataset's path and sha256: a shard is
    /// identified by its source plus the range (recorded by the caller).
    pub fn shard(&self, range: Range<usize>) -> Result<Dataset> {
        if range.start > range.end || range.end > self.len() {
            return Err(Error::Invalid(format!(
                "shard {}..{} is outside the dataset's 0..{}",
                range.start,
                range.end,
                self.len()
            )));
        }
        let indices: Vec<usize> = range.collect();
        let mut copy = self.select(self.path.clone(), &indices)?;
        copy.sha256 = self.sha256.clone();
        Ok(copy)
    }

    fn clone_header(&self) -> Dataset {
        Dataset {
            path: self.path.clone(),
            format: self.format,
            split: self.split,
            sha256: self.sha256.clone(),
            shape: self.shape,
            num_classes: self.num_classes,
            pixels: Pixels::U8(Vec::new()),
            labels: Vec::new(),
            preprocess: self.preprocess,
        }
    }

    fn content_sha256(&self) -> String {
        let mut hasher = Sha256Hasher::new();
        hasher.update(format!("{:?}/{}\n", self.shape, self.num_classes).as_bytes());
        match &self.pixels {
            Pixels::U8(p) => hasher.update(p),
            Pixels::F32(p) => p.iter().for_each(|v| hasher.update(&v.to_le_bytes())),
            // The folder's fingerprint covers the files' bytes; a subset is
            // named by its files.
            Pixels::Files(files) => {
                hasher.update(self.sha256.as_bytes());
                files.files().iter().for_each(|f| {
                    hasher.update(f.as_bytes());
                    hasher.update(b"\n");
                });
            }
        }
        self.labels
            .iter()
            .for_each(|l| hasher.update(&l.to_le_bytes()));
        hasher.finish_hex()
    }

    /// The images and labels as NumPy `.npy` files (`numpy.save` format): images
    /// `(N, C, H, W)` as `uint8` for byte-valued data and `float32` otherwise, labels
    /// `(N,)` as `int64`. [`load`] reads them back from `x_<split>.npy` / `y_<split>.npy`.
    pub fn to_npy(&self) -> Result<(Vec<u8>, Vec<u8>)> {
        let [c, h, w] = self.shape;
        let shape = [self.len(), c, h, w];
        let images = match &self.pixels {
            Pixels::U8(p) => encode_npy("|u1", &shape, p),
            Pixels::F32(p) => {
                let bytes: Vec<u8> = p.iter().flat_map(|v| v.to_le_bytes()).collect();
                encode_npy("<f4", &shape, &bytes)
            }
            Pixels::Files(files) => {
                let all: Vec<usize> = (0..files.len()).collect();
                encode_npy("|u1", &shape, &files.bytes(&all)?)
            }
        };
        let labels: Vec<u8> = self
            .labels
            .iter()
            .flat_map(|&l| i64::from(l).to_le_bytes())
            .collect();
        Ok((images, encode_npy("<i8", &[self.len()], &labels)))
    }

    fn check_range(&self, range: &Range<usize>) -> Result<()> {
        if range.start > range.end || range.end > self.len() {
            return Err(Error::Invalid(format!(
                "sample range {range:?} is outside the dataset's 0..{}",
                self.len()
            )));
        }
        Ok(())
    }
}

fn check_labels(path: &Path, labels: impl Iterator<Item = i64>, num_classes: usize) -> Result<()> {
    for (index, label) in labels.enumerate() {
        if label < 0 || label >= num_classes as i64 {
            return Err(Error::LabelOutOfRange {
                path: path.to_path_buf(),
                index,
                label,
                num_classes,
            });
        }
    }
    Ok(())
}

/// Load a dataset, detecting its format from `path`.
pub fn load(path: &Path, options: &LoadOptions) -> Result<Dataset> {
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    let mut dataset = if meta.is_dir() {
        load_dir(path, options)?
    } else {
        match path.extension().and_then(|e| e.to_str()) {
            Some("npz") => load_npz(path, options)?,
            _ => {
                return Err(Error::UnknownFormat {
                    path: path.to_path_buf(),
                    message: "unsupported dataset file, expected an .npz archive or a directory (MNIST IDX, CIFAR-10 binary, or x.npy + y.npy)".into(),
                })
            }
        }
    };
    if dataset.is_empty() {
        return Err(format_err(path, "the dataset holds no samples"));
    }
    if let Some(limit) = options.limit {
        if limit == 0 {
            return Err(Error::Invalid("--limit must be at least 1".into()));
        }
        dataset.truncate(limit);
    }
    Ok(dataset)
}

fn load_dir(dir: &Path, options: &LoadOptions) -> Result<Dataset> {
    if let Some((images, labels)) = find_idx_pair(dir, options.split) {
        return load_idx(dir, &images, &labels, options);
    }
    for cifar_dir in [dir.to_path_buf(), dir.join("cifar-10-batches-bin")] {
        if let Some(files) = find_cifar_batches(&cifar_dir, options.split)? {
            return load_cifar10(dir, &files, options);
        }
    }
    for (sub, format) in [
        ("cifar-10-batches-py", DataFormat::Cifar10Python),
        ("cifar-100-python", DataFormat::Cifar100Python),
        ("cifar-100-binary", DataFormat::Cifar100Binary),
    ] {
        for cifar_dir in [dir.to_path_buf(), dir.join(sub)] {
            if let Some(files) = cifar_files(&cifar_dir, format, options.split) {
                return load_cifar_files(dir, format, &files, options);
            }
        }
    }
    let split = options.split.as_str();
    for (x, y) in [
        (format!("x_{split}.npy"), format!("y_{split}.npy")),
        ("x.npy".to_string(), "y.npy".to_string()),
    ] {
        if dir.join(&x).is_file() && dir.join(&y).is_file() {
            return load_npy_dir(dir, &dir.join(x), &dir.join(y), options);
        }
    }
    if let Some(folder) = image_folder_for_split(dir, options) {
        return load_image_folder(&folder, options);
    }
    Err(Error::UnknownFormat {
        path: dir.to_path_buf(),
        message: format!(
            "no {split} split found: expected MNIST IDX files ({}-images-idx3-ubyte[.gz] and labels), CIFAR-10 batches ({}), CIFAR python batches or CIFAR-100 binary, x.npy + y.npy, or an image folder (DIR/<class>/<images>, or --labels labels.csv)",
            if split == "train" { "train" } else { "t10k" },
            if split == "train" { "data_batch_*.bin" } else { "test_batch.bin" }
        ),
    })
}

fn find_idx_pair(dir: &Path, split: Split) -> Option<(PathBuf, PathBuf)> {
    let prefixes: &[&str] = match split {
        Split::Train => &["train"],
        Split::Test => &["t10k", "test"],
    };
    for prefix in prefixes {
        for sep in ["-", "."] {
            for gz in ["", ".gz"] {
                let images = dir.join(format!("{prefix}-images{sep}idx3-ubyte{gz}"));
                let labels = dir.join(format!("{prefix}-labels{sep}idx1-ubyte{gz}"));
                if images.is_file() && labels.is_file() {
                    return Some((images, labels));
                }
            }
        }
    }
    None
}

fn fingerprint(files: &[&Path]) -> Result<String> {
    let mut hasher = Sha256Hasher::new();
    for file in files {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let digest = gauntlet_core::sha256_file(file).map_err(|e| match e {
            gauntlet_core::Error::Io { path, source } => Error::Io { path, source },
            other => Error::Invalid(other.to_string()),
        })?;
        hasher.update(name.as_bytes());
        hasher.update(b"\0");
        hasher.update(digest.as_bytes());
        hasher.update(b"\n");
    }
    Ok(hasher.finish_hex())
}

fn load_idx(
    dir: &Path,
    images_path: &Path,
    labels_path: &Path,
    options: &LoadOptions,
) -> Result<Dataset> {
    let images = idx::read_idx(images_path, 3)?;
    let labels = idx::read_idx(labels_path, 1)?;
    let (n, h, w) = (images.dims[0], images.dims[1], images.dims[2]);
    if labels.dims[0] != n {
        return Err(format_err(
            labels_path,
            format!(
                "holds {} labels but {} holds {n} images: counts must match",
                labels.dims[0],
                images_path.display()
            ),
        ));
    }
    let num_classes = options.num_classes.unwrap_or(10);
    check_labels(
        labels_path,
        labels.data.iter().map(|&l| l as i64),
        num_classes,
    )?;
    Ok(Dataset {
        path: dir.to_path_buf(),
        format: DataFormat::Idx,
        split: options.split,
        sha256: fingerprint(&[images_path, labels_path])?,
        shape: [1, h, w],
        num_classes,
        pixels: Pixels::U8(images.data),
        labels: labels.data.into_iter().map(u32::from).collect(),
        preprocess: None,
    })
}

const CIFAR_IMAGE: usize = 3 * 32 * 32;

fn find_cifar_batches(dir: &Path, split: Split) -> Result<Option<Vec<PathBuf>>> {
    if !dir.is_dir() {
        return Ok(None);
    }
    let files = match split {
        Split::Test => vec![dir.join("test_batch.bin")],
        Split::Train => (1..=5)
            .map(|i| dir.join(format!("data_batch_{i}.bin")))
            .collect(),
    };
    let present: Vec<PathBuf> = files.into_iter().filter(|f| f.is_file()).collect();
    Ok(if present.is_empty() {
        None
    } else {
        Some(present)
    })
}

fn load_cifar10(dir: &Path, files: &[PathBuf], options: &LoadOptions) -> Result<Dataset> {
    let num_classes = options.num_classes.unwrap_or(10);
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    let total: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    crate::reader::ensure_fits(dir, total)?;
    for file in files {
        let mut bytes = Vec::new();
        File::open(file)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(io_err(file))?;
        if bytes.is_empty() || bytes.len() % (CIFAR_IMAGE + 1) != 0 {
            return Err(format_err(
                file,
                format!(
                    "{} bytes is not a whole number of CIFAR-10 records ({} bytes each: 1 label + 3x32x32 pixels); truncated or not CIFAR-10 binary",
                    bytes.len(),
                    CIFAR_IMAGE + 1
                ),
            ));
        }
        let offset = labels.len();
        for record in bytes.chunks_exact(CIFAR_IMAGE + 1) {
            labels.push(record[0] as u32);
            pixels.extend_from_slice(&record[1..]);
        }
        check_labels(
            file,
            labels[offset..].iter().map(|&l| l as i64),
            num_classes,
        )?;
    }
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    Ok(Dataset {
        path: dir.to_path_buf(),
        format: DataFormat::Cifar10Binary,
        split: options.split,
        sha256: fingerprint(&refs)?,
        shape: [3, 32, 32],
        num_classes,
        pixels: Pixels::U8(pixels),
        labels,
        preprocess: None,
    })
}

fn load_npy_dir(
    dir: &Path,
    x_path: &Path,
    y_path: &Path,
    options: &LoadOptions,
) -> Result<Dataset> {
    let read = |p: &Path| -> Result<npy::NpyArray> {
        let file = File::open(p).map_err(io_err(p))?;
        let len = file.metadata().map_err(io_err(p))?.len() as usize;
        npy::read_npy(&mut std::io::BufReader::new(file), len, p)
    };
    let x = read(x_path)?;
    let y = read(y_path)?;
    let mut dataset = from_arrays(x_path, y_path, x, y, options)?;
    dataset.path = dir.to_path_buf();
    dataset.format = DataFormat::Npy;
    dataset.sha256 = fingerprint(&[x_path, y_path])?;
    Ok(dataset)
}

fn load_npz(path: &Path, options: &LoadOptions) -> Result<Dataset> {
    let file = File::open(path).map_err(io_err(path))?;
    let file_len = file.metadata().map_err(io_err(path))?.len() as usize;
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| format_err(path, format!("not a valid .npz (zip) archive: {e}")))?;
    let split = options.split.as_str();
    let names: Vec<String> = archive.file_names().map(str::to_string).collect();
    let pick = |candidates: &[String]| candidates.iter().find(|c| names.contains(c)).cloned();
    let x_name = pick(&[
        format!("x_{split}.npy"),
        "x.npy".into(),
        "images.npy".into(),
    ]);
    let y_name = pick(&[
        format!("y_{split}.npy"),
        "y.npy".into(),
        "labels.npy".into(),
    ]);
    let (Some(x_name), Some(y_name)) = (x_name, y_name) else {
        return Err(format_err(
            path,
            format!("expected arrays 'x' and 'y' (or 'x_{split}'/'y_{split}'), found {names:?}"),
        ));
    };
    let mut read = |name: &str| -> Result<npy::NpyArray> {
        let mut entry = archive
            .by_name(name)
            .map_err(|e| format_err(path, format!("cannot open '{name}': {e}")))?;
        // A stored entry can be no larger than the file; deflate expands ~1032x at most.
        let max_len = file_len.saturating_mul(1100);
        let entry_path = path.join(name);
        npy::read_npy(&mut entry, max_len, &entry_path)
    };
    let x = read(&x_name)?;
    let y = read(&y_name)?;
    let mut dataset = from_arrays(&path.join(&x_name), &path.join(&y_name), x, y, options)?;
    dataset.path = path.to_path_buf();
    dataset.format = DataFormat::Npz;
    dataset.sha256 = fingerprint(&[path])?;
    Ok(dataset)
}

/// Interpret `x` (images) and `y` (labels) arrays.
fn from_arrays(
    x_path: &Path,
    y_path: &Path,
    x: npy::NpyArray,
    y: npy::NpyArray,
    options: &LoadOptions,
) -> Result<Dataset> {
    if !y.dtype.is_integer() || y.shape.len() != 1 {
        return Err(format_err(
            y_path,
            format!(
                "labels must be a 1-D integer array, got shape {:?} of {:?}",
                y.shape, y.dtype
            ),
        ));
    }
    let n = y.shape[0];
    let (shape, nhwc) = match x.shape.as_slice() {
        [_, h, w] => ([1, *h, *w], false),
        [_, c, h, w] if matches!(c, 1 | 3) => ([*c, *h, *w], false),
        [_, h, w, c] if matches!(c, 1 | 3) => ([*c, *h, *w], true),
        other => {
            return Err(format_err(
                x_path,
                format!("images of shape {other:?} are not supported, expected (N, H, W), (N, C, H, W) or (N, H, W, C) with C = 1 or 3"),
            ))
        }
    };
    if x.shape[0] != n {
        return Err(format_err(
            y_path,
            format!(
                "holds {n} labels but {} holds {} images: counts must match",
                x_path.display(),
                x.shape[0]
            ),
        ));
    }
    let labels_f64 = y.to_f64();
    let max_label = labels_f64.iter().cloned().fold(0.0f64, f64::max);
    let num_classes = options.num_classes.unwrap_or(max_label as usize + 1);
    check_labels(y_path, labels_f64.iter().map(|&l| l as i64), num_classes)?;
    let labels: Vec<u32> = labels_f64.iter().map(|&l| l as u32).collect();
    let [c, h, w] = shape;
    let to_nchw = |i: usize| -> usize {
        if !nhwc {
            return i;
        }
        // i indexes NCHW output; map to the NHWC source offset.
        let (sample, rest) = (i / (c * h * w), i % (c * h * w));
        let (ch, pix) = (rest / (h * w), rest % (h * w));
        sample * c * h * w + pix * c + ch
    };
    let pixels = match x.dtype {
        npy::NpyDtype::U8 => {
            let src = &x.bytes;
            Pixels::U8((0..src.len()).map(|i| src[to_nchw(i)]).collect())
        }
        npy::NpyDtype::F32 | npy::NpyDtype::F64 => {
            let src = x.to_f64();
            Pixels::F32((0..src.len()).map(|i| src[to_nchw(i)] as f32).collect())
        }
        other => {
            return Err(format_err(
                x_path,
                format!("image dtype {other:?} is not supported, expected uint8 (0..255) or float32/float64 (0..1)"),
            ))
        }
    };
    let dataset = Dataset {
        path: x_path.to_path_buf(),
        format: DataFormat::Npy,
        split: options.split,
        sha256: String::new(),
        shape,
        num_classes,
        pixels,
        labels,
        preprocess: None,
    };
    dataset.check(x_path)?;
    Ok(dataset)
}

/// The files of a CIFAR layout other than CIFAR-10 binary, if `dir` holds
/// that layout's marker file and the split's files.
fn cifar_files(dir: &Path, format: DataFormat, split: Split) -> Option<Vec<PathBuf>> {
    let (marker, files): (&str, Vec<String>) = match (format, split) {
        (DataFormat::Cifar10Python, Split::Train) => (
            "batches.meta",
            (1..=5).map(|i| format!("data_batch_{i}")).collect(),
        ),
        (DataFormat::Cifar10Python, Split::Test) => ("batches.meta", vec!["test_batch".into()]),
        (DataFormat::Cifar100Python, _) => ("meta", vec![split.as_str().into()]),
        (DataFormat::Cifar100Binary, _) => (
            "fine_label_names.txt",
            vec![format!("{}.bin", split.as_str())],
        ),
        _ => return None,
    };
    let present: Vec<PathBuf> = files
        .iter()
        .map(|f| dir.join(f))
        .filter(|f| f.is_file())
        .collect();
    (dir.join(marker).is_file() && !present.is_empty()).then_some(present)
}

/// CIFAR python batches (pickled dicts, read by the restricted unpickler)
/// and CIFAR-100 binary records (coarse label, fine label, 3072 pixels).
fn load_cifar_files(
    dir: &Path,
    format: DataFormat,
    files: &[PathBuf],
    options: &LoadOptions,
) -> Result<Dataset> {
    let total: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    crate::reader::ensure_fits(dir, total)?;
    let (labels_key, default_classes) = match (format, options.label_set) {
        (DataFormat::Cifar10Python, _) => ("labels", 10),
        (_, LabelSet::Fine) => ("fine_labels", 100),
        (_, LabelSet::Coarse) => ("coarse_labels", 20),
    };
    let num_classes = options.num_classes.unwrap_or(default_classes);
    let mut pixels = Vec::new();
    let mut labels: Vec<u32> = Vec::new();
    for file in files {
        let bytes = std::fs::read(file).map_err(io_err(file))?;
        let file_labels: Vec<i64> = if format == DataFormat::Cifar100Binary {
            const RECORD: usize = 2 + CIFAR_IMAGE;
            if bytes.is_empty() || bytes.len() % RECORD != 0 {
                return Err(format_err(
                    file,
                    format!(
                        "{} bytes is not a whole number of CIFAR-100 records ({RECORD} bytes each: coarse and fine label + 3x32x32 pixels)",
                        bytes.len()
                    ),
                ));
            }
            let which = usize::from(options.label_set == LabelSet::Fine);
            bytes
                .chunks_exact(RECORD)
                .map(|record| {
                    pixels.extend_from_slice(&record[2..]);
                    i64::from(record[which])
                })
                .collect()
        } else {
            let batch = pickled::unpickle(&bytes, file)?;
            let data = match batch.get("data") {
                Some(pickled::Value::Array(array)) => array,
                _ => {
                    return Err(format_err(
                        file,
                        "holds no 'data' array; expected a CIFAR python batch",
                    ))
                }
            };
            if data.item_size() != Some(1)
                || data.shape.len() != 2
                || data.shape[1] != CIFAR_IMAGE
                || data.fortran
            {
                return Err(format_err(
                    file,
                    format!(
                        "'data' is a {:?} array of {}, expected N x 3072 uint8 in C order",
                        data.shape, data.dtype
                    ),
                ));
            }
            pixels.extend_from_slice(&data.data);
            let list = match batch.get(labels_key) {
                Some(pickled::Value::List(items)) => items
                    .iter()
                    .map(|v| match v {
                        pickled::Value::Int(i) => Some(*i),
                        _ => None,
                    })
                    .collect::<Option<Vec<i64>>>(),
                Some(pickled::Value::Array(array)) => array.integers(),
                _ => None,
            };
            let list = list
                .ok_or_else(|| format_err(file, format!("holds no integer '{labels_key}' list")))?;
            if list.len() != data.shape[0] {
                return Err(format_err(
                    file,
                    format!("holds {} labels for {} images", list.len(), data.shape[0]),
                ));
            }
            list
        };
        check_labels(file, file_labels.iter().copied(), num_classes)?;
        labels.extend(file_labels.iter().map(|&l| l as u32));
    }
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    Ok(Dataset {
        path: dir.to_path_buf(),
        format,
        split: options.split,
        sha256: fingerprint(&refs)?,
        shape: [3, 32, 32],
        num_classes,
        pixels: Pixels::U8(pixels),
        labels,
        preprocess: None,
    })
}

/// The image folder to read for `options.split`: `DIR/train` or
/// `DIR/test` (`DIR/val`) when both splits are there, else `DIR` itself.
fn image_folder_for_split(dir: &Path, options: &LoadOptions) -> Option<PathBuf> {
    let candidates: &[&str] = match options.split {
        Split::Train => &["train"],
        Split::Test => &["test", "val"],
    };
    let has_splits =
        dir.join("train").is_dir() && (dir.join("test").is_dir() || dir.join("val").is_dir());
    if has_splits {
        if let Some(split_dir) = candidates.iter().map(|c| dir.join(c)).find(|d| {
            d.is_dir()
                && (options.folder.labels_csv.is_some() || image_folder::looks_like_image_folder(d))
        }) {
            return Some(split_dir);
        }
    }
    (options.folder.labels_csv.is_some() || image_folder::looks_like_image_folder(dir))
        .then(|| dir.to_path_buf())
}

/// An image folder as a dataset: every header checked up front (sizes,
/// bombs, one output size), the pixels decoded batch by batch when asked for.
fn load_image_folder(dir: &Path, options: &LoadOptions) -> Result<Dataset> {
    let folder = image_folder::ImageFolder::open(dir, &options.folder)?;
    let channels = match options.channels.unwrap_or(3) {
        c @ (1 | 3) => c,
        other => {
            return Err(Error::Invalid(format!(
                "images convert to 1 (grey) or 3 (RGB) channels, not {other}"
            )))
        }
    };
    let num_classes = options.num_classes.unwrap_or(folder.classes.len());
    if num_classes < folder.classes.len() {
        return Err(Error::Invalid(format!(
            "--num-classes {num_classes} is fewer than the folder's {} classes",
            folder.classes.len()
        )));
    }
    let mut entries = folder.entries.clone();
    if let Some(limit) = options.limit {
        entries.truncate(limit);
    }
    let limited = image_folder::ImageFolder {
        entries,
        ..folder.clone()
    };
    let max_pixels = options
        .folder
        .max_pixels
        .unwrap_or(image_folder::MAX_IMAGE_PIXELS);
    let sizes = limited.sizes(max_pixels)?;
    let [h, w] = image_folder::common_size(&limited, &sizes, &options.preprocess)?;
    // Decoded on demand, batch by batch: memory does not grow with the
    // number of images.
    let files = stream::FileSamples::new(
        dir.to_path_buf(),
        limited.entries.iter().map(|e| e.relative.clone()).collect(),
        channels,
        options.preprocess,
        max_pixels,
        [channels, h, w],
    );
    Ok(Dataset {
        path: dir.to_path_buf(),
        format: DataFormat::ImageFolder,
        split: options.split,
        sha256: folder.fingerprint(&options.preprocess, channels)?,
        shape: [channels, h, w],
        num_classes,
        labels: limited.entries.iter().map(|e| e.label).collect(),
        pixels: Pixels::Files(files),
        preprocess: Some(options.preprocess),
    })
}

/// One image read from an `.npy` file by [`load_image_npy`], in `[0, 1]`, C order.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyImage {
    /// `[C, H, W]`; a 2-D `H × W` array is read as one channel.
    pub shape: [usize; 3],
    /// `C·H·W` values in `[0, 1]`.
    pub values: Vec<f32>,
}

/// Read a single image (a trigger, a pattern) from an `.npy` file: `uint8` arrays
/// are scaled by 1/255, float arrays must already lie in `[0, 1]`. Shape `H × W`
/// or `C × H × W`.
pub fn load_image_npy(path: &Path) -> Result<NpyImage> {
    let file = File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len() as usize;
    let array = npy::read_npy(&mut std::io::BufReader::new(file), len, path)?;
    let shape = match array.shape[..] {
        [h, w] => [1, h, w],
        [c, h, w] => [c, h, w],
        _ => {
            return Err(format_err(
                path,
                format!(
                    "image array has shape {:?}, expected H×W or C×H×W",
                    array.shape
                ),
            ))
        }
    };
    if shape.contains(&0) {
        return Err(format_err(path, "image array is empty"));
    }
    let scale = if array.dtype == npy::NpyDtype::U8 {
        1.0 / 255.0
    } else if array.dtype.is_integer() {
        return Err(format_err(
            path,
            "image array must be uint8 (0–255) or float (0–1)",
        ));
    } else {
        1.0
    };
    let mut values = Vec::with_capacity(array.len());
    for (index, value) in array.to_f64().into_iter().enumerate() {
        let value = value * scale;
        if !(0.0..=1.0).contains(&value) {
            return Err(format_err(
                path,
                format!("value {value} at element {index} is outside [0, 1]"),
            ));
        }
        values.push(value as f32);
    }
    Ok(NpyImage { shape, values })
}
