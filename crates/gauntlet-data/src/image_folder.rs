//! Folders of image files, as torchvision's `ImageFolder` reads them
//! (`DIR/<class>/**/<image>`), or a flat folder with a `path,label` CSV.
//!
//! Class order, file order and the accepted extensions are torchvision's, so
//! class indices match how a model was trained: classes are the sub-folder
//! names sorted by code point (Python's `sorted`), files are walked
//! recursively through symlinks, directories in sorted path order and files
//! sorted by name within each, and a file counts when its name ends
//! (case-insensitively) with one of [`IMAGE_EXTENSIONS`]. Decoding is the
//! `image` crate's; colour conversion and resizing are Pillow's arithmetic
//! ([`crate::preprocess`]).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use gauntlet_core::Sha256Hasher;
use rayon::prelude::*;

use crate::error::{format_err, io_err};
use crate::preprocess::{luma, Interleaved, Preprocess};
use crate::{Error, Result};

/// torchvision's `IMG_EXTENSIONS`: the files an `ImageFolder` holds.
pub const IMAGE_EXTENSIONS: [&str; 9] = [
    ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
];

/// Pillow refuses images above twice `Image.MAX_IMAGE_PIXELS` (89 478 485) as
/// decompression bombs; so does Gauntlet, before decoding.
pub const MAX_IMAGE_PIXELS: u64 = 2 * 89_478_485;

/// The most classes a labels CSV with class indices may imply (ImageNet-21k
/// has 21 841): a larger index is a typo or a corrupt file, not a class.
pub const MAX_CLASSES: u32 = 1 << 20;

/// Whether a file name has one of [`IMAGE_EXTENSIONS`] (any case).
pub fn is_image_file(name: &str) -> bool {
    let lower = name.to_lowercase();
    IMAGE_EXTENSIONS.iter().any(|ext| lower.ends_with(ext))
}

/// One image of the folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Path relative to the folder, `/`-separated.
    pub relative: String,
    /// Class index.
    pub label: u32,
}

/// A listed image folder: where its images are and their classes.
#[derive(Clone, Debug)]
pub struct ImageFolder {
    /// The folder.
    pub root: PathBuf,
    /// Class names in index order.
    pub classes: Vec<String>,
    /// Every image, in torchvision's order.
    pub entries: Vec<Entry>,
}

/// How to read an image folder.
#[derive(Clone, Debug, Default)]
pub struct FolderOptions {
    /// A CSV of `path,label` rows (paths relative to the folder; labels class
    /// indices or class names) instead of class sub-folders.
    pub labels_csv: Option<PathBuf>,
    /// A file of class names, one per line, pinning the class order.
    pub classes_file: Option<PathBuf>,
    /// The most pixels an image may declare (default [`MAX_IMAGE_PIXELS`],
    /// Pillow's bound); larger images are refused from their header.
    pub max_pixels: Option<u64>,
}

fn read_classes_file(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let classes: Vec<String> = text
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .filter(|l| !l.is_empty())
        .collect();
    if classes.is_empty() {
        return Err(format_err(
            path,
            "lists no classes, expected one name per line",
        ));
    }
    let mut seen = HashSet::new();
    if let Some(twice) = classes.iter().find(|c| !seen.insert(c.as_str())) {
        return Err(format_err(path, format!("lists class '{twice}' twice")));
    }
    Ok(classes)
}

/// Walk `dir` recursively (through symlinks, as torchvision does), returning
/// image files relative to `root` in torchvision's order.
fn walk_images(root: &Path, dir: &Path) -> Result<Vec<String>> {
    // (relative directory, files in it); sorted by directory path, as
    // `sorted(os.walk(...))` sorts.
    let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut stack = vec![(dir.to_path_buf(), Vec::<PathBuf>::new())];
    while let Some((current, ancestors)) = stack.pop() {
        let canonical = current.canonicalize().map_err(io_err(&current))?;
        if ancestors.contains(&canonical) {
            return Err(format_err(
                &current,
                "is a symlink loop (it leads back to a folder above it)",
            ));
        }
        let mut chain = ancestors;
        chain.push(canonical);
        let relative_dir = relative(root, &current);
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&current).map_err(io_err(&current))? {
            let entry = entry.map_err(io_err(&current))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            // metadata() follows symlinks; a dangling one is skipped as
            // os.walk skips it.
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push((path, chain.clone()));
            } else if is_image_file(&name) {
                files.push(name);
            }
        }
        files.sort();
        found.insert(relative_dir, files);
    }
    Ok(found
        .into_iter()
        .flat_map(|(dir, files)| {
            files.into_iter().map(move |f| {
                if dir.is_empty() {
                    f
                } else {
                    format!("{dir}/{f}")
                }
            })
        })
        .collect())
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// Whether `dir` looks like an image folder: a sub-folder holding an image
/// file directly (enough to tell it from the other layouts).
pub fn looks_like_image_folder(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|class| {
        class.path().is_dir()
            && std::fs::read_dir(class.path()).is_ok_and(|files| {
                files
                    .flatten()
                    .any(|f| is_image_file(&f.file_name().to_string_lossy()))
            })
    })
}

impl ImageFolder {
    /// List the folder: classes and images, checked (every class folder
    /// holds an image, labels in range, listed files exist).
    pub fn open(root: &Path, options: &FolderOptions) -> Result<ImageFolder> {
        let pinned = options
            .classes_file
            .as_deref()
            .map(read_classes_file)
            .transpose()?;
        match &options.labels_csv {
            Some(csv) => Self::from_csv(root, csv, pinned),
            None => Self::from_class_folders(root, pinned),
        }
    }

    fn from_class_folders(root: &Path, pinned: Option<Vec<String>>) -> Result<ImageFolder> {
        let mut folders = Vec::new();
        for entry in std::fs::read_dir(root).map_err(io_err(root))? {
            let entry = entry.map_err(io_err(root))?;
            if std::fs::metadata(entry.path()).is_ok_and(|m| m.is_dir()) {
                folders.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        // Python's sorted() on str: code point order, which is UTF-8 byte order.
        folders.sort();
        if folders.is_empty() {
            return Err(format_err(
                root,
                "holds no class folders, expected DIR/<class>/<image files> (or --labels labels.csv for a flat folder)",
            ));
        }
        let classes = match pinned {
            Some(classes) => {
                if let Some(extra) = folders.iter().find(|f| !classes.contains(f)) {
                    return Err(format_err(
                        &root.join(extra),
                        "is a class folder that the classes file does not list",
                    ));
                }
                classes
            }
            None => folders.clone(),
        };
        let mut entries = Vec::new();
        for folder in &folders {
            let label = classes.iter().position(|c| c == folder).unwrap_or(0) as u32;
            let files = walk_images(root, &root.join(folder))?;
            if files.is_empty() {
                return Err(format_err(
                    &root.join(folder),
                    format!(
                        "class folder holds no image files, expected files ending in one of {}",
                        IMAGE_EXTENSIONS.join(" ")
                    ),
                ));
            }
            entries.extend(files.into_iter().map(|relative| Entry { relative, label }));
        }
        // torchvision appends each class's images in class-name order (which
        // is index order unless a classes file pins another).
        Ok(ImageFolder {
            root: root.to_path_buf(),
            classes,
            entries,
        })
    }

    fn from_csv(root: &Path, csv: &Path, pinned: Option<Vec<String>>) -> Result<ImageFolder> {
        let text = std::fs::read_to_string(csv).map_err(io_err(csv))?;
        let mut rows = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || (number == 0 && line.trim() == "path,label") {
                continue;
            }
            let Some((path, label)) = line.rsplit_once(',') else {
                return Err(format_err(
                    csv,
                    format!("line {}: expected 'path,label', found '{line}'", number + 1),
                ));
            };
            let path = path.trim().trim_matches('"').to_string();
            let label = label.trim().trim_matches('"').to_string();
            if path.is_empty() || label.is_empty() {
                return Err(format_err(
                    csv,
                    format!("line {}: expected 'path,label', found '{line}'", number + 1),
                ));
            }
            rows.push((number + 1, path, label));
        }
        if rows.is_empty() {
            return Err(format_err(
                csv,
                "lists no images, expected 'path,label' rows",
            ));
        }
        let numeric = rows.iter().all(|(_, _, l)| l.parse::<u32>().is_ok());
        let classes: Vec<String> = match (&pinned, numeric) {
            (Some(classes), _) => classes.clone(),
            (None, true) => {
                let (line, label) = rows
                    .iter()
                    .filter_map(|(line, _, l)| Some((*line, l.parse::<u32>().ok()?)))
                    .max_by_key(|&(_, label)| label)
                    .unwrap_or((0, 0));
                if label >= MAX_CLASSES {
                    return Err(format_err(
                        csv,
                        format!(
                            "line {line}: label {label} is not a class index (at most {} classes)",
                            MAX_CLASSES
                        ),
                    ));
                }
                (0..=label).map(|i| i.to_string()).collect()
            }
            (None, false) => rows
                .iter()
                .map(|(_, _, l)| l.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
        };
        let mut entries = Vec::with_capacity(rows.len());
        for (line, path, label) in rows {
            let index = match classes.iter().position(|c| *c == label) {
                Some(index) => index as u32,
                None if pinned.is_some() && numeric => label.parse::<u32>().unwrap_or(u32::MAX),
                None => u32::MAX,
            };
            if index as usize >= classes.len() {
                return Err(format_err(
                    csv,
                    format!(
                        "line {line}: label '{label}' is not one of the {} classes",
                        classes.len()
                    ),
                ));
            }
            if Path::new(&path).is_absolute() || path.split(['/', '\\']).any(|p| p == "..") {
                return Err(format_err(
                    csv,
                    format!(
                        "line {line}: '{path}' must be a path inside {}",
                        root.display()
                    ),
                ));
            }
            if !root.join(&path).is_file() {
                return Err(format_err(
                    csv,
                    format!(
                        "line {line}: image '{path}' does not exist in {}",
                        root.display()
                    ),
                ));
            }
            entries.push(Entry {
                relative: path,
                label: index,
            });
        }
        Ok(ImageFolder {
            root: root.to_path_buf(),
            classes,
            entries,
        })
    }

    /// Each image's `[height, width]` from its header alone (nothing is
    /// decoded), refusing decompression bombs and unreadable headers.
    pub fn sizes(&self, max_pixels: u64) -> Result<Vec<[usize; 2]>> {
        self.entries
            .par_iter()
            .map(|entry| {
                let path = self.root.join(&entry.relative);
                let reader = open_image(&path)?;
                let (w, h) = reader
                    .into_dimensions()
                    .map_err(|e| format_err(&path, format!("cannot read the image header: {e}")))?;
                check_pixels(&path, w, h, max_pixels)?;
                Ok([h as usize, w as usize])
            })
            .collect()
    }

    /// sha256 over the class list, the relative paths (sorted) and each
    /// file's bytes, read in a stream.
    pub fn fingerprint(&self, preprocess: &Preprocess, channels: usize) -> Result<String> {
        let mut hasher = Sha256Hasher::new();
        hasher.update(format!("image-folder/{channels}/{}\n", preprocess.describe()).as_bytes());
        for class in &self.classes {
            hasher.update(class.as_bytes());
            hasher.update(b"\n");
        }
        let mut sorted: Vec<&Entry> = self.entries.iter().collect();
        sorted.sort_by(|a, b| a.relative.cmp(&b.relative));
        let mut buffer = vec![0u8; 1 << 16];
        for entry in sorted {
            let path = self.root.join(&entry.relative);
            hasher.update(format!("{}\0{}\n", entry.relative, entry.label).as_bytes());
            let mut file = std::fs::File::open(&path).map_err(io_err(&path))?;
            loop {
                let n = file.read(&mut buffer).map_err(io_err(&path))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buffer[..n]);
            }
        }
        Ok(hasher.finish_hex())
    }
}

fn open_image(path: &Path) -> Result<image::ImageReader<std::io::BufReader<std::fs::File>>> {
    image::ImageReader::open(path)
        .map_err(io_err(path))?
        .with_guessed_format()
        .map_err(io_err(path))
}

fn check_pixels(path: &Path, width: u32, height: u32, max_pixels: u64) -> Result<()> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(format_err(
            path,
            format!(
                "declares {width}x{height} = {pixels} pixels, more than {max_pixels} (a decompression bomb; Pillow refuses more than {MAX_IMAGE_PIXELS})"
            ),
        ));
    }
    if pixels == 0 {
        return Err(format_err(path, "declares an empty image"));
    }
    Ok(())
}

/// Decode one image and convert it as Pillow's `convert("RGB")`
/// (`channels` 3) or `convert("L")` (1) would: alpha dropped (not
/// composited), grey replicated, luma by ITU-R 601-2; 16-bit colour keeps
/// its high byte (Pillow opens it as 8-bit RGB) and 16-bit grey is clipped
/// at 255 (Pillow's `I;16` → `L`).
pub fn decode(path: &Path, channels: usize, max_pixels: u64) -> Result<Interleaved> {
    let reader = open_image(path)?;
    let mut limits = image::Limits::default();
    // The allocation bound covers a 16-bit RGBA image of the largest size
    // allowed.
    limits.max_alloc = Some(max_pixels.saturating_mul(8));
    let mut reader = reader;
    reader.limits(limits);
    let image = reader
        .decode()
        .map_err(|e| format_err(path, format!("cannot decode the image: {e}")))?;
    check_pixels(path, image.width(), image.height(), max_pixels)?;
    let (width, height) = (image.width() as usize, image.height() as usize);
    use image::DynamicImage as D;
    // Every source as 8-bit samples with its own channel count (1 grey,
    // 2 grey+alpha, 3 RGB, 4 RGBA).
    let (source, source_channels): (Vec<u8>, usize) = match image {
        D::ImageLuma8(i) => (i.into_raw(), 1),
        D::ImageLumaA8(i) => (i.into_raw(), 2),
        D::ImageRgb8(i) => (i.into_raw(), 3),
        D::ImageRgba8(i) => (i.into_raw(), 4),
        D::ImageLuma16(i) => (i.into_raw().iter().map(|&v| v.min(255) as u8).collect(), 1),
        D::ImageLumaA16(i) => (
            i.into_raw()
                .chunks_exact(2)
                .flat_map(|p| [p[0].min(255) as u8, (p[1] >> 8) as u8])
                .collect(),
            2,
        ),
        D::ImageRgb16(i) => (i.into_raw().iter().map(|&v| (v >> 8) as u8).collect(), 3),
        D::ImageRgba16(i) => (i.into_raw().iter().map(|&v| (v >> 8) as u8).collect(), 4),
        other => (other.to_rgb8().into_raw(), 3),
    };
    let pixels: Vec<u8> = match (source_channels, channels) {
        (1, 1) | (3, 3) => source,
        (2, 1) => source.iter().step_by(2).copied().collect(),
        (1 | 2, _) => source
            .iter()
            .step_by(source_channels)
            .flat_map(|&v| [v, v, v])
            .collect(),
        (_, 1) => source
            .chunks_exact(source_channels)
            .map(|p| luma(p[0], p[1], p[2]))
            .collect(),
        _ => source
            .chunks_exact(source_channels)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
    };
    Ok(Interleaved {
        height,
        width,
        channels: if channels == 1 { 1 } else { 3 },
        pixels,
    })
}

/// Check that every image comes out of `preprocess` at one size, naming two
/// files that differ when they do not.
pub fn common_size(
    folder: &ImageFolder,
    sizes: &[[usize; 2]],
    preprocess: &Preprocess,
) -> Result<[usize; 2]> {
    let mut first: Option<([usize; 2], &str)> = None;
    for (entry, &size) in folder.entries.iter().zip(sizes) {
        let out = preprocess.output_size(size);
        match first {
            None => first = Some((out, &entry.relative)),
            Some((expected, name)) if expected != out => {
                let hint = if preprocess.center_crop.is_some() {
                    ""
                } else {
                    "; use --center-crop (with --resize) to bring them to one size"
                };
                return Err(Error::Format {
                    path: folder.root.clone(),
                    message: format!(
                        "images come out at different sizes: '{name}' is {}x{} and '{}' is {}x{}{hint}",
                        expected[0], expected[1], entry.relative, out[0], out[1]
                    ),
                });
            }
            Some(_) => {}
        }
    }
    first
        .map(|(size, _)| size)
        .ok_or_else(|| format_err(&folder.root, "holds no images"))
}
