//! Ids for projects, jobs, release requests and users: `[a-z0-9][a-z0-9._-]{0,63}`.
//!
//! Owns the one rule that keeps names from becoming paths. Everything that arrives from
//! a person (an HTTP path segment, a JSON field, a command-line argument) and names a
//! thing in the workspace is parsed into an [`Id`] first; the workspace maps ids to its
//! own paths. Danger: an id is joined onto workspace paths, so it must never contain
//! `/`, `..`, NUL or anything else a file system interprets.

use std::fmt;

/// The longest id, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Why a string is not an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Empty.
    #[error("the {what} id is empty; ids are 1-64 characters from a-z, 0-9, '.', '_' and '-'")]
    Empty {
        /// What the id names.
        what: &'static str,
    },
    /// Too long.
    #[error("the {what} id is {len} bytes long; ids are at most {MAX_ID_LEN}")]
    TooLong {
        /// What the id names.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// A character outside the alphabet (or a bad first character, or `..`).
    #[error(
        "the {what} id has a character that is not allowed at position {position}; ids start with a-z or 0-9 and use only a-z, 0-9, '.', '_' and '-' (never '..')"
    )]
    BadChar {
        /// What the id names.
        what: &'static str,
        /// 0-based byte position.
        position: usize,
    },
}

impl crate::error::Classify for IdError {
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Failed
    }
}

/// A checked id.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Id(String);

impl Id {
    /// Parse `s` as the id of a `what` ("project", "job", ...).
    pub fn parse(what: &'static str, s: &str) -> Result<Id, IdError> {
        if s.is_empty() {
            return Err(IdError::Empty { what });
        }
        if s.len() > MAX_ID_LEN {
            return Err(IdError::TooLong { what, len: s.len() });
        }
        for (i, b) in s.bytes().enumerate() {
            let ok = b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || (i > 0 && matches!(b, b'.' | b'_' | b'-'));
            if !ok {
                return Err(IdError::BadChar { what, position: i });
            }
        }
        if let Some(p) = s.find("..") {
            return Err(IdError::BadChar { what, position: p });
        }
        Ok(Id(s.to_string()))
    }

    /// A new random id `<prefix>-<16 hex>` (prefix must itself be a valid id start).
    pub fn random(prefix: &str) -> Result<Id, getrandom::Error> {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b)?;
        Ok(Id(format!("{prefix}-{}", crate::digest::hex(&b))))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Id {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Id::parse("stored", &s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_ids() {
        for s in [
            "demo",
            "a",
            "job-0123abcd",
            "diabetes.outcomes_2",
            &"a".repeat(64),
        ] {
            assert!(Id::parse("project", s).is_ok(), "{s}");
        }
    }

    #[test]
    fn refuses_paths_and_oddities() {
        for s in [
            "",
            "../x",
            "a/b",
            "/etc",
            "a..b",
            ".hidden",
            "-x",
            "A",
            "a b",
            "a\0b",
            "é",
            &"a".repeat(65),
        ] {
            assert!(Id::parse("project", s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn random_ids_are_ids() {
        let id = Id::random("job").expect("random");
        assert_eq!(Id::parse("job", id.as_str()).expect("valid"), id);
    }

    proptest::proptest! {
        #[test]
        fn an_id_never_holds_a_separator(s in "\\PC{0,80}") {
            if let Ok(id) = Id::parse("x", &s) {
                proptest::prop_assert!(!id.as_str().contains('/') && !id.as_str().contains(".."));
                proptest::prop_assert!(id.as_str().len() <= MAX_ID_LEN);
            }
        }
    }
}
