//! Gauntlet's shared vocabulary.
//!
//! Everything the other crates agree on lives here: the [`Classifier`] trait (a
//! differentiable model in pixel space), valid input [`Bounds`], perturbation
//! [`Norm`]s, input gradients through candle's autograd, keyed random streams
//! ([`SeedStream`]) and file fingerprints.

mod classifier;
mod contain;
mod error;
mod fingerprint;
mod fs;
mod loss;
mod memory;
mod observer;
mod runtime;
mod seed;

pub use classifier::{input_gradient, Bounds, Classifier, Norm};
pub use contain::contain_panic;
pub use error::{Error, Result};
pub use fingerprint::{sha256_bytes, sha256_file, Sha256Hasher};
pub use fs::{
    line_and_column, read_text_limited, write_atomic, write_atomic_with, MAX_CONFIG_BYTES,
    MAX_DOCUMENT_BYTES,
};
pub use loss::{
    cross_entropy_per_sample, cross_entropy_sum, largest, log_softmax, log_softmax_dim, softmax,
    softmax_dim,
};
pub use memory::{available_memory, ensure_batch_fits, ensure_memory, human_bytes};
pub use observer::{NoProgress, Observer};
pub use runtime::configure_threads;
pub use seed::SeedStream;

/// Re-exported so downstream crates and users name one candle version.
pub use candle_core;
