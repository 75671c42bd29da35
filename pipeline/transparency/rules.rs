//! The alert rules file: the thresholds of each breach-detection rule.
//!
//! Owns the format of `policies/alert-rules.toml` ([`AlertRules`], parsed strictly and
//! checked once at load) and its documented defaults ([`AlertRules::default`], used when
//! the workspace has no `alert-rules.toml`). It decides nothing itself: [`super::alerts`]
//! applies the thresholds.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::TransparencyError;

/// The name of the rules file inside a workspace (`WS/alert-rules.toml`), read by
/// `tre serve` and `tre admin alerts` when present.
pub const WORKSPACE_RULES_FILE: &str = "alert-rules.toml";

/// All the thresholds. Every section may be left out for its default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertRules {
    /// Bursts of failed sign-ins (API and pages).
    pub failed_sign_ins: Burst,
    /// Refused jobs by one user (disclosure, differencing, identifier refusals).
    pub refused_jobs: Burst,
    /// Near-identical jobs (same SQL hash) by one user.
    pub repeated_jobs: Burst,
    /// Reads of results and safe tables (`job.read`, `job.safe`) by one user.
    pub result_reads: Burst,
    /// Whether actions on a project outside its `approved`..`ends` dates raise alerts.
    pub outside_project_dates: bool,
    /// Whether audit verification failures and workspace records changed outside the
    /// service raise alerts.
    pub integrity: bool,
    /// Seconds between scheduled evaluations in `tre serve` (besides every new entry).
    pub schedule_seconds: u64,
}

/// "At least `count` matching entries within `window_minutes`".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Burst {
    /// How many entries raise the alert.
    pub count: u64,
    /// Within how many minutes.
    pub window_minutes: u64,
}

impl Default for AlertRules {
    /// The documented defaults (policies/alert-rules.toml says the same).
    fn default() -> Self {
        AlertRules {
            failed_sign_ins: Burst {
                count: 10,
                window_minutes: 10,
            },
            refused_jobs: Burst {
                count: 5,
                window_minutes: 60,
            },
            repeated_jobs: Burst {
                count: 10,
                window_minutes: 60,
            },
            result_reads: Burst {
                count: 200,
                window_minutes: 60,
            },
            outside_project_dates: true,
            integrity: true,
            schedule_seconds: 300,
        }
    }
}

impl AlertRules {
    /// Parse and check rules text.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, TransparencyError> {
        let err = |message: String| TransparencyError::Rules {
            path: path.to_path_buf(),
            message,
        };
        let rules: AlertRules = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| {
                text.as_bytes()[..s.start.min(text.len())]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count()
                    + 1
            });
            err(match line {
                Some(l) => format!("line {l}: {}", e.message().trim_end()),
                None => e.message().trim_end().to_string(),
            })
        })?;
        for (name, b) in [
            ("failed_sign_ins", rules.failed_sign_ins),
            ("refused_jobs", rules.refused_jobs),
            ("repeated_jobs", rules.repeated_jobs),
            ("result_reads", rules.result_reads),
        ] {
            if b.count < 2 || b.window_minutes == 0 {
                return Err(err(format!(
                    "[{name}]: count must be at least 2 and window_minutes at least 1"
                )));
            }
        }
        if rules.schedule_seconds == 0 {
            return Err(err("schedule_seconds must be at least 1".into()));
        }
        Ok(rules)
    }

    /// Load a rules file.
    pub fn load(path: &Path) -> Result<Self, TransparencyError> {
        let text = std::fs::read_to_string(path).map_err(|e| TransparencyError::Rules {
            path: path.to_path_buf(),
            message: format!("cannot read it: {e}"),
        })?;
        Self::from_toml(&text, path)
    }

    /// The workspace's rules (`WS/alert-rules.toml`), or the defaults when it has none.
    pub fn for_workspace(workspace: &Path) -> Result<Self, TransparencyError> {
        let path = workspace.join(WORKSPACE_RULES_FILE);
        if path.exists() {
            Self::load(&path)
        } else {
            Ok(Self::default())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_file_is_the_defaults() {
        let text = include_str!("../../policies/alert-rules.toml");
        let r = AlertRules::from_toml(text, Path::new("alert-rules.toml")).expect("valid");
        assert_eq!(r, AlertRules::default());
    }

    #[test]
    fn bad_rules_are_refused_with_their_line() {
        let p = Path::new("r.toml");
        let e = AlertRules::from_toml("[failed_sign_ins]\ncount = 10\nwindow = 3\n", p)
            .expect_err("refused")
            .to_string();
        assert!(e.contains("line"), "{e}");
        let e = AlertRules::from_toml("[failed_sign_ins]\ncount = 1\nwindow_minutes = 3\n", p)
            .expect_err("refused")
            .to_string();
        assert!(e.contains("at least 2"), "{e}");
        let partial = AlertRules::from_toml("integrity = false\n", p).expect("valid");
        assert!(!partial.integrity);
        assert_eq!(
            partial.failed_sign_ins,
            AlertRules::default().failed_sign_ins
        );
    }
}
