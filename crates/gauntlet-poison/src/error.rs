/// Errors of poisoning injection and detection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of range or inconsistent with the data.
    #[error("invalid poisoning configuration: {0}")]
    Config(String),
    /// A job's setting is out of range or contradicts another; settings are named
    /// as the command line names them.
    #[error("{setting} {problem}")]
    Setting {
        /// Which setting.
        setting: &'static str,
        /// What is wrong with it and what was expected.
        problem: String,
    },
    /// A ground-truth manifest is unreadable or does not describe the dataset.
    #[error("manifest {path}: {message}")]
    Manifest {
        /// The manifest file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A numeric routine (k-means, SVD) failed on the features it was given.
    #[error("{method}: {message}")]
    Numeric {
        /// The detector.
        method: &'static str,
        /// What failed.
        message: String,
    },
    /// From the data layer.
    #[error(transparent)]
    Data(#[from] gauntlet_data::Error),
    /// From the model layer.
    #[error(transparent)]
    Model(#[from] gauntlet_models::Error),
    /// From training.
    #[error(transparent)]
    Train(#[from] gauntlet_train::Error),
    /// From the core vocabulary.
    #[error(transparent)]
    Core(#[from] gauntlet_core::Error),
    /// From candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result with the poisoning [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn config(message: impl Into<String>) -> Error {
    Error::Config(message.into())
}
