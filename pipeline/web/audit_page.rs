//! The audit trail page: entries filtered by project, person and action, newest first
//! and paginated, with the log's verification status against the latest checkpoint.
//!
//! Who may read it: there is no auditor role in a project's policy yet, so an output
//! checker sees the entries of the projects they check (MERGE: service — swap in an
//! auditor role when the policy has one). Verification calls [`crate::audit::verify`]
//! and compares the log with the newest checkpoint in the workspace's checkpoints folder.
//! Danger: entries are shown as the audit module stored them (already sanitised); the
//! page never shows entries of projects the person does not check.

use std::collections::BTreeSet;

use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::Web;
use super::error::WebError;
use super::layout::page;
use super::session::Signed;
use crate::audit::{AuditEntry, Filter};
use crate::tre::actions::AuditHead;
use crate::tre::actions::reads;

/// Entries per page.
pub const PER_PAGE: usize = 100;

/// The filter form's fields.
#[derive(Debug, Deserialize, Default)]
pub struct TrailQuery {
    /// Only this project.
    pub project: Option<String>,
    /// Only this person.
    pub actor: Option<String>,
    /// Only this action (or its sub-actions).
    pub action: Option<String>,
    /// Page, from 1.
    pub page: Option<usize>,
}

fn nonempty(s: &Option<String>) -> Option<String> {
    s.as_ref()
        .map(|x| x.trim().to_string())
        .filter(|x| !x.is_empty())
}

/// The verification status, in words: (intact, text).
pub fn status(web: &Web) -> (bool, String) {
    let log = crate::audit::workspace_log_path(web.tre.ws.root());
    let report = match crate::audit::verify(&log) {
        Ok(r) => r,
        Err(e) => return (false, format!("The audit log could not be read: {e}")),
    };
    if let Some(t) = &report.problem {
        return (false, format!("The audit log does NOT verify: {t}"));
    }
    let last = report.last.as_ref().map_or(0, |h| h.seq);
    // MERGE: audit — verify the newest signed checkpoint (signature and that the log still
    // holds its entry) with the audit module's checkpoint API once it is on this branch.
    match latest_checkpoint(web) {
        None => (
            true,
            format!("The audit log verifies ({last} entries); no checkpoint has been written yet."),
        ),
        Some(cp) => {
            let holds = crate::audit::read_entries(&log)
                .ok()
                .is_some_and(|es| es.iter().any(|(_, e)| e.seq == cp.seq && e.hash == cp.hash));
            if holds {
                (
                    true,
                    format!(
                        "The audit log verifies ({last} entries) and holds the latest checkpoint's entry (seq {}).",
                        cp.seq
                    ),
                )
            } else {
                (
                    false,
                    format!(
                        "The audit log does NOT match the latest checkpoint (seq {}): entries were removed or rewritten.",
                        cp.seq
                    ),
                )
            }
        }
    }
}

/// The newest checkpoint whose signature holds under the workspace's public key (a
/// checkpoint that does not verify is never trusted here; `tre audit verify` names it).
fn latest_checkpoint(web: &Web) -> Option<AuditHead> {
    use crate::audit::checkpoint::{list_checkpoints, public_key_path, read_checkpoint};
    let root = web.tre.ws.root();
    let key = crate::audit::PublicKey::load(&public_key_path(root)).ok()?;
    let (_, path) = list_checkpoints(&web.tre.ws.checkpoints_dir())
        .ok()?
        .into_iter()
        .max_by_key(|(seq, _)| *seq)?;
    let record = read_checkpoint(&path).ok()??;
    record.check_signature(&key).ok()?;
    Some(AuditHead {
        seq: record.seq,
        hash: record.hash,
    })
}

/// `GET /audit`.
pub async fn trail(
    State(web): State<Web>,
    s: Signed,
    Query(q): Query<TrailQuery>,
) -> Result<Response, WebError> {
    let filter = Filter {
        project: nonempty(&q.project),
        actor: nonempty(&q.actor),
        action: nonempty(&q.action),
    };
    let reads::Trail {
        readable: checked,
        entries,
    } = reads::audit_trail(&web.tre, &s.actor, &filter)?;
    let (intact, words) = status(&web);
    let body = html! {
        h1 { "Audit trail" }
        p class=(if intact { "notice" } else { "error" }) role="status" { (words) }
        @if checked.is_empty() {
            p { "You are not an output checker of any project, so no entries are shown." }
        } @else {
            (filter_form(&q, &checked))
            (entries_table(&entries, &q))
        }
    };
    Ok(Html(page("Audit trail", Some(&s), body).into_string()).into_response())
}

fn filter_form(q: &TrailQuery, checked: &BTreeSet<String>) -> Markup {
    let sel = nonempty(&q.project);
    html! {
        form method="get" action="/audit" {
            fieldset {
                legend { "Filter" }
                label for="f-project" { "Project" } " "
                select id="f-project" name="project" {
                    option value="" { "All your projects" }
                    @for p in checked { option value=(p) selected[sel.as_deref() == Some(p.as_str())] { (p) } }
                }
                " "
                label for="f-actor" { "Person" } " "
                input type="text" id="f-actor" name="actor" value=(q.actor.clone().unwrap_or_default());
                " "
                label for="f-action" { "Action" } " "
                input type="text" id="f-action" name="action" placeholder="release" value=(q.action.clone().unwrap_or_default());
                " "
                button type="submit" { "Filter" }
            }
        }
    }
}

fn entries_table(entries: &[AuditEntry], q: &TrailQuery) -> Markup {
    let pages = entries.len().div_ceil(PER_PAGE).max(1);
    let page = q.page.unwrap_or(1).clamp(1, pages);
    let link = |n: usize| {
        let v = |o: &Option<String>| o.clone().unwrap_or_default();
        let pairs = [
            ("project", v(&q.project)),
            ("actor", v(&q.actor)),
            ("action", v(&q.action)),
            ("page", n.to_string()),
        ];
        format!(
            "/audit?{}",
            serde_urlencoded::to_string(pairs).unwrap_or_default()
        )
    };
    html! {
        div.scroll { table {
            caption { (entries.len()) " matching entries, newest first — page " (page) " of " (pages) }
            thead { tr { th scope="col" { "Seq" } th scope="col" { "Time" } th scope="col" { "Person" } th scope="col" { "Action" }
                th scope="col" { "Outcome" } th scope="col" { "Project" } th scope="col" { "Details" } } }
            tbody { @for e in entries.iter().skip((page - 1) * PER_PAGE).take(PER_PAGE) { tr {
                td.num { (e.seq) } td { (e.time) } td { (e.actor) } td { (e.action) }
                td { (e.outcome.as_str()) } td { (e.project.clone().unwrap_or_default()) }
                td { code { (details(e)) } }
            } } }
        } }
        @if pages > 1 {
            nav.pager aria-label="Audit trail pages" {
                @if page > 1 { a href=(link(page - 1)) rel="prev" { "Newer entries" } }
                @if page < pages { a href=(link(page + 1)) rel="next" { "Older entries" } }
            }
        }
    }
}

fn details(e: &AuditEntry) -> String {
    let mut s = match &e.detail {
        serde_json::Value::Object(m) => m
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(t) => format!("{k}={t}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    if let Some(p) = &e.purpose {
        s = format!("purpose={p} {s}");
    }
    s
}
