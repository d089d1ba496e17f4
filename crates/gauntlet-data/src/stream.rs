//! Image files decoded on demand: a dataset whose pixels stay on disk until a
//! batch asks for them, so its memory does not grow with its size. Batches are
//! decoded in parallel; after a batch of consecutive samples, the next batch
//! of the same size is decoded on a background thread while the caller
//! computes (one batch ahead, so memory stays bounded).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::error::format_err;
use crate::image_folder;
use crate::preprocess::Preprocess;
use crate::Result;

/// How every file becomes a sample (shared by all views of one folder).
#[derive(Debug)]
struct Decoder {
    root: PathBuf,
    channels: usize,
    preprocess: Preprocess,
    max_pixels: u64,
    /// `[channels, height, width]` every file must come out at.
    shape: [usize; 3],
}

impl Decoder {
    /// Decode `files` (relative paths) into planar bytes, back to back.
    fn decode(&self, files: &[String]) -> Result<Vec<u8>> {
        let per: usize = self.shape.iter().product();
        let mut out = vec![0u8; files.len() * per];
        out.par_chunks_mut(per).zip(files.par_iter()).try_for_each(
            |(slot, relative)| -> Result<()> {
                let path = self.root.join(relative);
                let image = image_folder::decode(&path, self.channels, self.max_pixels)?;
                let image = self.preprocess.apply(&image);
                let planar = image.to_planar();
                if planar.len() != per {
                    return Err(format_err(
                        &path,
                        format!(
                            "came out at {}x{} where every image is {}x{} (did the file change?)",
                            image.height, image.width, self.shape[1], self.shape[2]
                        ),
                    ));
                }
                slot.copy_from_slice(&planar);
                Ok(())
            },
        )?;
        Ok(out)
    }
}

type Ahead = Option<(Vec<usize>, JoinHandle<Result<Vec<u8>>>)>;

/// Image files in dataset order, decoded on demand.
#[derive(Clone, Debug)]
pub(crate) struct FileSamples {
    decoder: Arc<Decoder>,
    /// Relative paths, one per sample.
    files: Vec<String>,
    /// The batch being decoded ahead, by sample indices.
    ahead: Arc<Mutex<Ahead>>,
    /// Nanoseconds callers spent waiting for pixels (decoding a batch that
    /// was not decoded ahead, or waiting for the one that was).
    waited: Arc<AtomicU64>,
}

impl FileSamples {
    pub(crate) fn new(
        root: PathBuf,
        files: Vec<String>,
        channels: usize,
        preprocess: Preprocess,
        max_pixels: u64,
        shape: [usize; 3],
    ) -> FileSamples {
        FileSamples {
            decoder: Arc::new(Decoder {
                root,
                channels,
                preprocess,
                max_pixels,
                shape,
            }),
            files,
            ahead: Arc::new(Mutex::new(None)),
            waited: Arc::new(AtomicU64::new(0)),
        }
    }

    /// How long callers have waited for pixels so far.
    pub(crate) fn waited(&self) -> Duration {
        Duration::from_nanos(self.waited.load(Ordering::Relaxed))
    }

    pub(crate) fn len(&self) -> usize {
        self.files.len()
    }

    /// Planar bytes of the samples at `indices`, in that order. A run of
    /// consecutive indices also starts decoding the run that follows it.
    pub(crate) fn bytes(&self, indices: &[usize]) -> Result<Vec<u8>> {
        let started = Instant::now();
        let ahead = self.ahead.lock().ok().and_then(|mut slot| slot.take());
        let bytes = match ahead {
            Some((wanted, handle)) if wanted == indices => handle
                .join()
                .unwrap_or_else(|_| Err(crate::Error::Invalid("image decoding panicked".into())))?,
            // Another batch was asked for: the one decoded ahead is dropped
            // (its thread finishes on its own).
            _ => self.decoder.decode(&self.paths(indices))?,
        };
        let waited = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.waited.fetch_add(waited, Ordering::Relaxed);
        self.decode_next(indices);
        Ok(bytes)
    }

    fn paths(&self, indices: &[usize]) -> Vec<String> {
        indices.iter().map(|&i| self.files[i].clone()).collect()
    }

    fn decode_next(&self, indices: &[usize]) {
        let (Some(&first), Some(&last)) = (indices.first(), indices.last()) else {
            return;
        };
        let consecutive =
            last + 1 - first == indices.len() && indices.windows(2).all(|w| w[1] == w[0] + 1);
        if !consecutive || last + 1 >= self.files.len() {
            return;
        }
        let next: Vec<usize> =
            (last + 1..(last + 1 + indices.len()).min(self.files.len())).collect();
        let decoder = Arc::clone(&self.decoder);
        let paths = self.paths(&next);
        let handle = std::thread::spawn(move || decoder.decode(&paths));
        if let Ok(mut slot) = self.ahead.lock() {
            *slot = Some((next, handle));
        }
    }

    /// The samples at `indices`, in that order (no decoding).
    pub(crate) fn select(&self, indices: &[usize]) -> FileSamples {
        FileSamples {
            decoder: Arc::clone(&self.decoder),
            files: self.paths(indices),
            ahead: Arc::new(Mutex::new(None)),
            waited: Arc::clone(&self.waited),
        }
    }

    pub(crate) fn truncate(&mut self, n: usize) {
        self.files.truncate(n);
        self.ahead = Arc::new(Mutex::new(None));
    }

    /// Relative paths in dataset order (for fingerprints of derived sets).
    pub(crate) fn files(&self) -> &[String] {
        &self.files
    }
}
