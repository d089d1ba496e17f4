use std::path::PathBuf;

/// Errors while reading a dataset. Every variant names the file at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file is not valid in its format (bad magic, truncated, lying header, ...).
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong and what was expected.
        message: String,
    },
    /// No supported dataset layout was recognised at the path.
    #[error("{path}: {message}")]
    UnknownFormat {
        /// The path given.
        path: PathBuf,
        /// What was looked for.
        message: String,
    },
    /// A label is outside `0..num_classes`.
    #[error("{path}: label {label} of sample {index} is out of range, expected 0..{num_classes}")]
    LabelOutOfRange {
        /// The labels file.
        path: PathBuf,
        /// Sample index.
        index: usize,
        /// The bad label.
        label: i64,
        /// Number of classes expected.
        num_classes: usize,
    },
    /// A caller asked for something the dataset cannot give.
    #[error("{0}")]
    Invalid(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result with the data [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn format_err(path: &std::path::Path, message: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}
