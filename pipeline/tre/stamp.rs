//! Times in the TRE's records: RFC 3339 in UTC, milliseconds.
//!
//! Owns the one serde form of a `DateTime<Utc>` in sealed records (chrono's own serde
//! feature is not enabled: it would rebuild Arrow and DataFusion). Use with
//! `#[serde(with = "crate::tre::stamp")]`, or [`opt`] for an `Option`.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serializer};

/// The text form.
pub fn text(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Serialize.
pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&text(t))
}

/// Deserialize.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let s = String::deserialize(d)?;
    DateTime::parse_from_rfc3339(&s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(serde::de::Error::custom)
}

/// The same for `Option<DateTime<Utc>>`.
pub mod opt {
    use super::*;

    /// Serialize.
    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_some(&text(t)),
            None => s.serialize_none(),
        }
    }

    /// Deserialize.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| {
            DateTime::parse_from_rfc3339(&s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Rec {
        #[serde(with = "crate::tre::stamp")]
        at: DateTime<Utc>,
        #[serde(with = "crate::tre::stamp::opt")]
        done: Option<DateTime<Utc>>,
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("date")
            .with_timezone(&Utc)
    }

    #[test]
    fn times_are_utc_with_milliseconds_and_round_trip() {
        let rec = Rec {
            at: t("2026-03-01T10:15:30.123456+01:00"),
            done: None,
        };
        let json = serde_json::to_string(&rec).expect("json");
        assert_eq!(json, r#"{"at":"2026-03-01T09:15:30.123Z","done":null}"#);
        let back: Rec = serde_json::from_str(&json).expect("back");
        assert_eq!(back.at, t("2026-03-01T09:15:30.123Z"));
        let rec = Rec {
            at: back.at,
            done: Some(back.at),
        };
        let json = serde_json::to_string(&rec).expect("json");
        assert_eq!(serde_json::from_str::<Rec>(&json).expect("back"), rec);
    }

    #[test]
    fn a_time_that_is_not_rfc_3339_is_refused() {
        for bad in [
            r#"{"at":"2026-03-01 09:15","done":null}"#,
            r#"{"at":"2026-03-01T09:15:30Z","done":"yesterday"}"#,
        ] {
            assert!(serde_json::from_str::<Rec>(bad).is_err(), "{bad}");
        }
    }
}
