//! Why a plugin produced nothing.

use std::fmt;

use crate::bindings::EnrichError;

/// Why a run produced nothing.
///
/// Carnet's run ledger records the kind (an unsupported input is the outcome `declined`, the
/// others are `failed` with the reason `unavailable` or `failed`); the message is for the
/// plugin's author (`carnet plugin run` prints it), cut to 200 characters. Name keys and hosts
/// in it, never the values of a contact's fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The input is not something this plugin handles (a missing field, a webmail address…):
    /// not a failure, nothing to retry.
    Unsupported(String),
    /// A remote source did not answer; the run may succeed later.
    Unavailable(String),
    /// Anything else: a bug or a source that answered nonsense.
    Failed(String),
}

impl Error {
    /// Returns an [`Error::Unsupported`] with `message`.
    pub fn unsupported(message: impl Into<String>) -> Error {
        Error::Unsupported(message.into())
    }

    /// Returns an [`Error::Unavailable`] with `message`.
    pub fn unavailable(message: impl Into<String>) -> Error {
        Error::Unavailable(message.into())
    }

    /// Returns an [`Error::Failed`] with `message`.
    pub fn failed(message: impl Into<String>) -> Error {
        Error::Failed(message.into())
    }

    /// Returns the message, whatever the kind.
    pub fn message(&self) -> &str {
        match self {
            Error::Unsupported(m) | Error::Unavailable(m) | Error::Failed(m) => m,
        }
    }

    pub(crate) fn into_wit(self) -> EnrichError {
        match self {
            Error::Unsupported(m) => EnrichError::Unsupported(m),
            Error::Unavailable(m) => EnrichError::Unavailable(m),
            Error::Failed(m) => EnrichError::Failed(m),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Error::Unsupported(_) => "unsupported",
            Error::Unavailable(_) => "unavailable",
            Error::Failed(_) => "failed",
        };
        write!(f, "{kind}: {}", self.message())
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_error_keeps_its_kind_across_the_world() {
        assert_eq!(Error::unsupported("no `email` field").to_string(), "unsupported: no `email` field");
        assert!(matches!(Error::unavailable("down").into_wit(), EnrichError::Unavailable(m) if m == "down"));
        assert!(matches!(Error::failed("bad").into_wit(), EnrichError::Failed(m) if m == "bad"));
        assert_eq!(Error::failed("bad").message(), "bad");
    }
}
