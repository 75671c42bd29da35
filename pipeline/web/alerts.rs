//! `GET /alerts` and `POST /alerts/{id}`: the alerts page for auditors, with a form to
//! acknowledge an alert with a note.
//!
//! Owns the page only: which alerts a person sees and the acknowledgement itself are the
//! API's ([`crate::server::alerts::visible`], [`crate::server::alerts::acknowledge`]),
//! and a refusal is audited as the API audits it. Danger: alerts name users and
//! projects; only auditors reach this page's content.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::Web;
use super::error::WebError;
use super::jobs::form;
use super::layout::{page, token_field};
use super::session::Signed;
use crate::transparency::service::{acknowledge, visible};

#[derive(Debug, Deserialize)]
struct AckForm {
    #[allow(dead_code)]
    form_token: String,
    note: String,
}

/// `GET /alerts`.
pub async fn list(State(web): State<Web>, s: Signed) -> Result<Response, WebError> {
    let alerts = visible(&web.tre, &s.actor)?;
    let open = alerts.iter().filter(|a| a.acks.is_empty()).count();
    let body = html! {
        h1 { "Alerts" }
        p role="status" { (alerts.len()) " alerts, " (open) " open. Each was raised by a rule over the audit trail; acknowledge one with a note saying what was done. "
            "The incident report for the data protection officer: " code { "tre admin alerts --workspace WS report ID --out FILE" } "." }
        @for a in alerts.iter().rev() {
            section.alert aria-labelledby=(a.id) {
                h2 id=(a.id) { (a.rule.replace('_', " ")) " " small { (a.id) } }
                p { (a.summary) }
                dl {
                    dt { "Raised" } dd { (a.raised) " (audit entry " (a.raised_seq) ")" }
                    dt { "Concerns" } dd { (a.project.as_deref().unwrap_or("the whole service")) ": " (a.subject) }
                    dt { "Evidence" } dd { @if a.evidence.is_empty() { "the workspace check" } @else { "audit entries " (a.evidence.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")) } }
                    dt { "Status" } dd {
                        @if a.acks.is_empty() { span class="badge bad" { "open" } }
                        @for k in &a.acks { span class="badge ok" { "acknowledged" } " by " (k.by) " at " (k.at) ": " (k.note) br; }
                    }
                }
                @if a.acks.is_empty() {
                    form method="post" action={ "/alerts/" (a.id) } {
                        (token_field(&s))
                        label for={ "note-" (a.id) } { "What was done" } " "
                        input type="text" id={ "note-" (a.id) } name="note" required minlength="3" maxlength="4000";
                        " "
                        button type="submit" { "Acknowledge" }
                    }
                }
            }
        }
    };
    Ok(Html(page("Alerts", Some(&s), body).into_string()).into_response())
}

/// `POST /alerts/{id}`: acknowledge.
pub async fn ack(
    State(web): State<Web>,
    s: Signed,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, WebError> {
    let f: AckForm = form(&web, &s, &headers, &body)?;
    acknowledge(&web.tre, &s.actor, &id, &f.note)?;
    Ok(Redirect::to("/alerts").into_response())
}
