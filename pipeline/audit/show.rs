//! Showing the log: which entries `tre audit show` lists ([`Filter`], [`read_entries`])
//! and how they are printed ([`write_table`], [`write_json_lines`]).
//!
//! Read-only; it sits beside verification and never decides anything. Danger: a stored
//! string may hold terminal escapes (written before sanitising existed, or by hand), so
//! every string is escaped on output whatever is stored: nothing here writes a control
//! or bidirectional-formatting character to a terminal.

use std::io::Write;
use std::path::Path;

use super::entry::AuditEntry;
use super::error::{AuditError, io_err};
use super::sanitise::{escape_control, is_unsafe_char};

/// Which entries `tre audit show` lists. Empty criteria match everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this project.
    pub project: Option<String>,
    /// Only this actor.
    pub actor: Option<String>,
    /// Only this action, or its sub-actions (`release` matches `release.review`).
    pub action: Option<String>,
}

impl Filter {
    /// Whether `e` passes.
    pub fn matches(&self, e: &AuditEntry) -> bool {
        self.project
            .as_ref()
            .is_none_or(|p| e.project.as_deref() == Some(p.as_str()))
            && self.actor.as_ref().is_none_or(|a| &e.actor == a)
            && self.action.as_ref().is_none_or(|a| {
                e.action == *a
                    || e.action
                        .strip_prefix(a.as_str())
                        .is_some_and(|rest| rest.starts_with('.'))
            })
    }
}

/// Every line of the log that is an audit entry, with its line number, skipping any that
/// is not (run [`super::verify`] to learn whether the log can be trusted).
pub fn read_entries(path: &Path) -> Result<Vec<(u64, AuditEntry)>, AuditError> {
    let bytes = std::fs::read(path).map_err(io_err("read", path))?;
    Ok(bytes
        .split(|&c| c == b'\n')
        .enumerate()
        .filter_map(|(i, l)| {
            let e: AuditEntry = serde_json::from_slice(l).ok()?;
            Some((i as u64 + 1, e))
        })
        .collect())
}

/// A plain text table, oldest first: seq, time, actor, action, outcome, project, purpose
/// (cut to 40 characters) and the top-level detail (cut to 60). Every cell is escaped.
pub fn write_table(out: &mut impl Write, entries: &[&AuditEntry]) -> std::io::Result<()> {
    let header = [
        "SEQ", "TIME", "ACTOR", "ACTION", "OUTCOME", "PROJECT", "PURPOSE", "DETAIL",
    ];
    let rows: Vec<[String; 8]> = entries.iter().map(|e| row(e)).collect();
    let mut widths = header.map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: &[&str]| -> std::io::Result<()> {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        writeln!(out, "{}", s.trim_end())
    };
    line(out, &header)?;
    for r in &rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        line(out, &cells)?;
    }
    Ok(())
}

/// One table row, every cell escaped.
fn row(e: &AuditEntry) -> [String; 8] {
    let safe = |s: &str| escape_control(s).into_owned();
    [
        e.seq.to_string(),
        safe(&e.time),
        safe(&e.actor),
        safe(&e.action),
        e.outcome.as_str().to_string(),
        safe(e.project.as_deref().unwrap_or("-")),
        shorten(&safe(e.purpose.as_deref().unwrap_or("-")), 40),
        shorten(&safe(&short_detail(&e.detail)), 60),
    ]
}

/// The entries as JSON lines, with every unsafe character `\u`-escaped (JSON escapes
/// C0 controls itself, but not DEL, C1 controls or bidirectional formatting).
pub fn write_json_lines(out: &mut impl Write, entries: &[&AuditEntry]) -> std::io::Result<()> {
    for e in entries {
        let line = serde_json::to_string(e).map_err(std::io::Error::other)?;
        writeln!(out, "{}", escape_json_text(&line))?;
    }
    Ok(())
}

/// `\uXXXX`-escape every unsafe character of serialised JSON (they only occur inside
/// strings, where the escape means the same character).
pub fn escape_json_text(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if is_unsafe_char(c) {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `key=value` pairs of the top-level detail.
fn short_detail(detail: &serde_json::Value) -> String {
    match detail {
        serde_json::Value::Object(m) if m.is_empty() => "-".into(),
        serde_json::Value::Object(m) => m
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::audit::testutil::build;

    #[test]
    fn filter_matches_project_actor_and_action_prefix() {
        let (_d, path) = build(6);
        let entries = read_entries(&path).unwrap();
        let f = Filter {
            project: Some("p1".into()),
            actor: Some("alice".into()),
            action: None,
        };
        let got: Vec<u64> = entries
            .iter()
            .filter(|(_, e)| f.matches(e))
            .map(|(l, _)| *l)
            .collect();
        assert_eq!(got, vec![1]);
        let mut e = entries[0].1.clone();
        e.action = "release.review".into();
        let rel = Filter {
            action: Some("release".into()),
            ..Filter::default()
        };
        assert!(rel.matches(&e));
        e.action = "releases".into();
        assert!(!rel.matches(&e));
    }

    #[test]
    fn stored_escapes_never_reach_the_output() {
        let (_d, path) = build(1);
        let mut e = read_entries(&path).unwrap().remove(0).1;
        // As if written by hand or by an older tre: raw controls in the stored strings.
        e.purpose = Some("\x1b[2J\u{9b}6n\u{202e}evil".into());
        e.actor = "mal\x07lory".into();
        e.detail = serde_json::json!({"note": "a\u{7f}b\nc"});
        let mut table = Vec::new();
        write_table(&mut table, &[&e]).unwrap();
        let mut json = Vec::new();
        write_json_lines(&mut json, &[&e]).unwrap();
        for out in [table, json.clone()] {
            let text = String::from_utf8(out).unwrap();
            let body = text.trim_end_matches('\n').replace('\n', "");
            assert!(!body.chars().any(is_unsafe_char), "{body:?}");
        }
        // The JSON still parses back to the stored strings.
        let back: AuditEntry = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.purpose, e.purpose);
    }
}
