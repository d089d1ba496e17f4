use std::path::PathBuf;

/// Errors while building, loading or saving a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tensor operation failed inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// An error from the core vocabulary.
    #[error(transparent)]
    Core(#[from] gauntlet_core::Error),
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file is not valid in its format.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong and what was expected.
        message: String,
    },
    /// Tensors the architecture needs are absent.
    #[error("{arch} needs tensors that are missing: {missing:?}; the file has {found:?}")]
    MissingTensors {
        /// The architecture.
        arch: String,
        /// Names expected but absent.
        missing: Vec<String>,
        /// Names present in the file.
        found: Vec<String>,
    },
    /// A tensor has the wrong shape for the architecture.
    #[error("tensor '{name}' has shape {got:?}, expected {expected:?}")]
    ShapeMismatch {
        /// Tensor name.
        name: String,
        /// Shape the architecture needs.
        expected: Vec<usize>,
        /// Shape found.
        got: Vec<usize>,
    },
    /// ONNX operators Gauntlet does not implement (boxed: the details are large and rare).
    #[error("{0}")]
    UnsupportedOps(Box<UnsupportedOperators>),
    /// The model gives no usable input gradient, so white-box attacks would be meaningless.
    #[error("{0}")]
    NoGradient(String),
    /// A bad argument or configuration.
    #[error("{0}")]
    Invalid(String),
    /// The metadata saved with a model could not be written as JSON.
    #[error("cannot serialise the model's metadata: {0}")]
    Metadata(#[source] serde_json::Error),
}

/// What the importer lacks in a graph, for [`Error::UnsupportedOps`].
#[derive(Debug, thiserror::Error)]
#[error("unsupported ONNX operator {op} at node '{node}' (inputs: {inputs}); {hint}; all unsupported here: {ops:?} (the supported list is in docs/models.md)")]
pub struct UnsupportedOperators {
    /// Every unsupported operator type in the graph, each once.
    pub ops: Vec<String>,
    /// The first unsupported node's operator.
    pub op: String,
    /// Its name.
    pub node: String,
    /// Its inputs with their shapes, where the graph before it runs.
    pub inputs: String,
    /// The exporter option that usually avoids it.
    pub hint: String,
}

/// Result with the models [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl From<Error> for gauntlet_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Core(inner) => inner,
            Error::Candle(inner) => gauntlet_core::Error::Candle(inner),
            other => gauntlet_core::Error::InvalidArgument {
                what: "model".into(),
                got: other.to_string(),
                expected: "a valid model".into(),
            },
        }
    }
}
