//! The crate's error model: every module error says once what kind of failure it is.
//!
//! Each module keeps its own `thiserror` enum with structured fields (file, line, column,
//! rule); this module only names the three kinds that decide the exit status and the
//! audit outcome, and the trait every module error implements to map into them. Danger:
//! a kind is decided here, at the error's definition, never re-derived from its message.

/// What kind of failure an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorKind {
    /// A rule refused the work (stale opt-out list, weak key, policy violation, a table
    /// that may not leave): exit status 1.
    Refused,
    /// Bad usage or unreadable input, or the environment failed (disk full): exit 2.
    Failed,
    /// A bug in tre itself (an invariant broke, a worker panicked): exit 2, and the
    /// message says to report it.
    Bug,
}

impl ErrorKind {
    /// The process exit status for this kind.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Refused => 1,
            ErrorKind::Failed | ErrorKind::Bug => 2,
        }
    }
}

/// Implemented by every module's error enum: its kind, decided by variant.
pub trait Classify {
    /// The kind of this error.
    fn kind(&self) -> ErrorKind;

    /// Shorthand for `kind() == Refused`.
    fn is_refusal(&self) -> bool {
        self.kind() == ErrorKind::Refused
    }
}

impl Classify for crate::durable::DurableError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(ErrorKind::Refused.exit_code(), 1);
        assert_eq!(ErrorKind::Failed.exit_code(), 2);
        assert_eq!(ErrorKind::Bug.exit_code(), 2);
    }
}
