//! The incident report for the data protection officer: what happened, whose data, which
//! releases, and the timeline from the audit trail.
//!
//! Owns [`report`], a Markdown document about one alert. "Whose data" is the project,
//! its organisation and its datasets, never patients: the report is built from the
//! alert, the installed policy and the typed audit entries, like the register, and is
//! refused if anything in it is shaped like an NHS number.

use std::collections::BTreeSet;
use std::fmt::Write;

use serde_json::Value;

use super::TransparencyError;
use super::alerts::{self, AlertState};
use crate::audit::AuditEntry;
use crate::schema::SchemaSet;
use crate::tre::workspace::Workspace;

/// The report about alert `id`, as of `now`.
pub fn report(
    ws: &Workspace,
    schemas: &SchemaSet,
    entries: &[AuditEntry],
    id: &str,
    now: &str,
) -> Result<String, TransparencyError> {
    let alert: AlertState = alerts::states(entries)
        .into_iter()
        .find(|a| a.id == id)
        .ok_or_else(|| TransparencyError::NoAlert(id.to_string()))?;
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "# Incident report: {}\n", alert.id);
    let _ = writeln!(
        w,
        "Prepared {now} by {} for the data protection officer.\n",
        super::register::tool()
    );
    let _ = writeln!(w, "## What happened\n");
    let _ = writeln!(w, "- Rule: {}", alert.rule);
    let _ = writeln!(
        w,
        "- Raised: {} (audit entry {})",
        alert.raised, alert.raised_seq
    );
    let _ = writeln!(w, "- Concerns: {}", alert.subject);
    let _ = writeln!(w, "- Summary: {}", alert.summary);
    let evidence: Vec<String> = alert.evidence.iter().map(u64::to_string).collect();
    let _ = writeln!(
        w,
        "- Evidence (audit entries): {}",
        if evidence.is_empty() {
            "the workspace check itself".to_string()
        } else {
            evidence.join(", ")
        }
    );
    if alert.acks.is_empty() {
        let _ = writeln!(w, "- Status: open (not acknowledged)");
    }
    for a in &alert.acks {
        let _ = writeln!(
            w,
            "- Acknowledged by {} at {} (entry {}): {}",
            a.by, a.at, a.seq, a.note
        );
    }
    let _ = writeln!(w, "\n## Whose data\n");
    let project = alert.project.clone().or_else(|| {
        // A user's alert names the projects its evidence touched.
        let ps: BTreeSet<&str> = entries
            .iter()
            .filter(|e| alert.evidence.contains(&e.seq))
            .filter_map(|e| e.project.as_deref())
            .collect();
        (ps.len() == 1).then(|| ps.into_iter().next().unwrap_or_default().to_string())
    });
    match &project {
        None => {
            let _ = writeln!(
                w,
                "The alert concerns the service as a whole, not one project's data. No patient-level data is named in this report."
            );
        }
        Some(p) => match ws.project(p, schemas) {
            Ok(policy) => {
                let _ = writeln!(w, "- Project: {} ({})", policy.project.title, p);
                if let Some(f) = &policy.project.public {
                    let _ = writeln!(w, "- Organisation: {}", f.organisation);
                    let _ = writeln!(w, "- Approved: {} to {}", f.approved, f.ends);
                }
                let tables: Vec<&str> = policy.tables.iter().map(|t| t.name()).collect();
                let _ = writeln!(w, "- Datasets: {}", tables.join(", "));
                let _ = writeln!(
                    w,
                    "- Pseudonymised records of the project's extract; no patient is named here."
                );
            }
            Err(e) => {
                let _ = writeln!(
                    w,
                    "- Project: {p} (its installed policy cannot be read: {e})"
                );
            }
        },
    }
    let _ = writeln!(w, "\n## Releases\n");
    let first = alert.evidence.first().copied().unwrap_or(alert.raised_seq);
    let releases: Vec<&AuditEntry> = entries
        .iter()
        .filter(|e| e.action == "release.export" && e.outcome == crate::audit::Outcome::Ok)
        .filter(|e| project.is_none() || e.project == project)
        .collect();
    if releases.is_empty() {
        let _ = writeln!(
            w,
            "No results were released{}.",
            if project.is_some() {
                " from this project"
            } else {
                ""
            }
        );
    }
    for e in releases {
        let rel = e
            .detail
            .get("release")
            .and_then(Value::as_str)
            .unwrap_or("?");
        let files: Vec<String> = e
            .outputs
            .iter()
            .map(|f| format!("{} (sha256 {})", f.path, f.sha256))
            .collect();
        let when = if e.seq >= first {
            "after the first evidence"
        } else {
            "before the first evidence"
        };
        let _ = writeln!(
            w,
            "- {rel} exported {} by {} ({when}): {}",
            e.time,
            e.actor,
            files.join(", ")
        );
    }
    let _ = writeln!(w, "\n## Timeline (from the audit trail)\n");
    let _ = writeln!(
        w,
        "| seq | time | who | action | outcome | project | job / release |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|---|");
    for e in entries.iter().filter(|e| {
        alert.evidence.contains(&e.seq)
            || e.detail.get("alert").and_then(Value::as_str) == Some(alert.id.as_str())
    }) {
        let what = ["job", "release"]
            .iter()
            .filter_map(|k| e.detail.get(*k).and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" ");
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} |",
            e.seq,
            e.time,
            e.actor,
            e.action,
            e.outcome.as_str(),
            e.project.as_deref().unwrap_or("-"),
            what
        );
    }
    super::guard("incident report", &out)?;
    Ok(out)
}
