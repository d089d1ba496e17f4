/// Errors of the attacks.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A parameter is outside its valid range.
    #[error("invalid parameter for {attack}: {message}")]
    Param {
        /// The attack.
        attack: String,
        /// What is wrong and what was expected.
        message: String,
    },
    /// No attack is registered under the name.
    #[error("unknown attack '{0}', expected one of: {1}")]
    Unknown(String, String),
    /// A caller error (shapes, goals, ε).
    #[error("{0}")]
    Invalid(String),
    /// From the core vocabulary.
    #[error(transparent)]
    Core(#[from] gauntlet_core::Error),
    /// From candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result with the attacks [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
