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
