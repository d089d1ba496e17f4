use std::path::PathBuf;

/// Errors of the core vocabulary.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tensor operation failed inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What the operating system said (`File too large`, `No space left`, ...).
        source: std::io::Error,
    },
    /// A file is larger than its kind of file may be.
    #[error("{path} is larger than {limit}, the most a {what} may hold")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its role (`suite`, `policy`, `run record`, ...).
        what: String,
        /// The limit, for people (`1.0 MiB`).
        limit: String,
    },
    /// A text file holds bytes that are not UTF-8.
    #[error("{path} is not UTF-8 text (invalid byte at offset {offset})")]
    NotText {
        /// The file.
        path: PathBuf,
        /// Where the valid text ends.
        offset: usize,
    },
    /// The work would need more memory than the machine (or its limits) leaves.
    #[error("{0}")]
    OutOfMemory(String),
    /// An argument had a value outside what is accepted.
    #[error("invalid {what}: got {got}, expected {expected}")]
    InvalidArgument {
        /// Which argument.
        what: String,
        /// The value received.
        got: String,
        /// What would have been accepted.
        expected: String,
    },
}

/// Result with the core [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
