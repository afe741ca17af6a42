//! The SDK's one error type: what a plugin returns to fail a record or its init, and what host
//! calls return when the host refuses them.

use std::fmt;

/// What went wrong, broadly. New kinds may be added in minor releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Raised by plugin code ([`Error::new`], `From<&str>`, `From<String>`).
    Plugin,
    /// The input could not be read: a malformed record encoding, bad UTF-8, bad JSON, a
    /// config that does not parse.
    InvalidInput,
    /// The host refused: output topic not declared, state not granted, a write during init
    /// (host status `DENIED`).
    Denied,
    /// A key, value, record or per-call total is over the limits (host status `TOO_LARGE`).
    TooLarge,
    /// The host rejected the arguments of a call (host status `INVALID`).
    InvalidArgument,
    /// A `state_put` would take the plugin's state past its quota of bytes or keys (host
    /// status `QUOTA`). Nothing was written; deleting keys frees quota.
    QuotaExceeded,
    /// The host failed internally, or answered with a status this SDK does not know.
    Host,
}

/// An error with a kind and a human-readable message. The message ends up in the dead-letter
/// record's error header (for `on_record`) or in the plugin's status (for `init`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    /// A plugin error with `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Error::with_kind(ErrorKind::Plugin, message)
    }

    /// An error of a given kind.
    pub fn with_kind(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }

    /// The error for a negative status returned by host import `op`.
    pub fn from_status(op: &str, status: i32) -> Self {
        use crate::abi::status;
        let (kind, what) = match status {
            status::NOT_FOUND => (ErrorKind::Host, "not found"),
            status::DENIED => (ErrorKind::Denied, "denied by the manifest"),
            status::TOO_LARGE => (ErrorKind::TooLarge, "over the host's size limits"),
            status::INVALID => (ErrorKind::InvalidArgument, "invalid arguments"),
            status::QUOTA => (
                ErrorKind::QuotaExceeded,
                "the plugin's state quota (bytes or keys) would be exceeded",
            ),
            status::INTERNAL => (ErrorKind::Host, "host internal error"),
            _ => (ErrorKind::Host, "unknown host status"),
        };
        Error::with_kind(kind, format!("{op} failed: {what} (status {status})"))
    }

    /// The kind of error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Prefixes the message with some context, keeping the kind.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Error::new(message)
    }
}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Error::new(message)
    }
}

impl From<std::str::Utf8Error> for Error {
    fn from(e: std::str::Utf8Error) -> Self {
        Error::with_kind(ErrorKind::InvalidInput, format!("invalid UTF-8: {e}"))
    }
}

impl From<std::num::ParseIntError> for Error {
    fn from(e: std::num::ParseIntError) -> Self {
        Error::with_kind(ErrorKind::InvalidInput, format!("invalid integer: {e}"))
    }
}

impl From<std::num::ParseFloatError> for Error {
    fn from(e: std::num::ParseFloatError) -> Self {
        Error::with_kind(ErrorKind::InvalidInput, format!("invalid number: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::status;

    #[test]
    fn host_statuses_map_to_kinds_and_name_the_call() {
        let e = Error::from_status("emit", status::DENIED);
        assert_eq!(e.kind(), ErrorKind::Denied);
        assert!(e.message().starts_with("emit failed"), "{e}");
        assert_eq!(
            Error::from_status("x", status::TOO_LARGE).kind(),
            ErrorKind::TooLarge
        );
        assert_eq!(
            Error::from_status("x", status::INVALID).kind(),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            Error::from_status("x", status::QUOTA).kind(),
            ErrorKind::QuotaExceeded
        );
        assert_eq!(Error::from_status("x", -99).kind(), ErrorKind::Host);
    }

    #[test]
    fn context_prefixes_the_message_and_keeps_the_kind() {
        let e = Error::with_kind(ErrorKind::TooLarge, "value too big").context("state_put c/1");
        assert_eq!(e.to_string(), "state_put c/1: value too big");
        assert_eq!(e.kind(), ErrorKind::TooLarge);
    }
}
