//! The output checker's pages: the queue of requests waiting for them, and the review
//! page (also the request's status page for the analyst).
//!
//! The review page shows the safe table, each finding in words, the SQL, purpose,
//! justification and context, the rules, the request's version chain (every earlier
//! version's job, decisions and comments), and the comparison with earlier tables
//! ([`super::diff`]). Other checkers' decisions on the current version are shown only to
//! a checker who has decided (or once the version is closed), as in OpenSAFELY's
//! Airlock; earlier versions' decisions are always shown. The rules are the action
//! library's ([`crate::tre::actions::releases::may_review`],
//! [`ReleasePage::shows_reviews`], [`ReleasePage::may_resubmit`]); the decision (approve,
//! reject, return for changes) is made by its review action, which refuses
//! self-approval and double review, and a new version by its resubmit action.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::Web;
use super::diff::{self, Earlier};
use super::error::WebError;
use super::jobs::{PageQuery, form, job_facts};
use super::layout::{badge, page, token_field, when};
use super::report;
use super::session::Signed;
use super::table::{self, SafeTable};
use crate::tre::actions::releases::{self, Decide, NewRequest, ReleasePage};
use crate::tre::actions::{Decision, ReleaseState, Request};

fn state_name(s: ReleaseState) -> &'static str {
    match s {
        ReleaseState::Requested => "requested",
        ReleaseState::Rejected => "rejected",
        ReleaseState::Returned => "returned for changes",
        ReleaseState::Exported => "exported",
    }
}

/// `GET /queue`: requests in the person's checker projects that are open, not theirs,
/// and not yet reviewed by them.
pub async fn queue(State(web): State<Web>, s: Signed) -> Result<Response, WebError> {
    let releases::Queue {
        checker_anywhere,
        waiting,
    } = releases::queue(&web.tre, &s.actor)?;
    let body = html! {
        h1 { "Review queue" }
        @if !checker_anywhere {
            p { "You are not an output checker of any project, so nothing waits for you here." }
        } @else if waiting.is_empty() {
            p { "Nothing is waiting for your review." }
        } @else {
            table {
                caption { (waiting.len()) " request(s) waiting for you" }
                thead { tr { th scope="col" { "Request" } th scope="col" { "Project" } th scope="col" { "Requested by" }
                    th scope="col" { "When" } th scope="col" { "Justification" } } }
                tbody { @for r in &waiting { tr {
                    td { a href=(format!("/projects/{}/releases/{}", r.project, r.release)) { "Review " (r.release) } }
                    td { (r.project) } td { (r.requester) } td { (when(&r.created_at)) } td { (r.justification) }
                } } }
            }
        }
    };
    Ok(Html(page("Review queue", Some(&s), body).into_string()).into_response())
}

/// `GET /projects/{p}/releases/{r}`.
pub async fn release(
    State(web): State<Web>,
    s: Signed,
    Path((p, r)): Path<(String, String)>,
    Query(q): Query<PageQuery>,
) -> Result<Response, WebError> {
    let view = releases::page(&web.tre, &s.actor, &p, &r)?;
    let (may_review, show_reviews, own, may_resubmit) = (
        view.may_review(),
        view.shows_reviews(),
        view.own_request(),
        view.may_resubmit(),
    );
    let ReleasePage {
        member: _,
        request: req,
        job,
        table,
        comparison,
    } = view;
    let table = SafeTable::from_csv(&table.bytes)?;
    let comparison = match comparison {
        Some(c) => {
            let shape = shape_of(&table, c.cells.as_ref());
            let mut earlier = Vec::new();
            for e in c.earlier {
                let t = SafeTable::from_csv(&e.table.bytes)?;
                let (label, when_, approved_by) = match &e.request {
                    Some(rq) => (
                        format!("release {}", rq.release),
                        when(&rq.created_at),
                        rq.approvals().into_iter().map(str::to_string).collect(),
                    ),
                    None => (
                        format!("job {} (received by the requester)", e.job.job),
                        when(&e.job.submitted_at),
                        Vec::new(),
                    ),
                };
                earlier.push(Earlier {
                    label,
                    job: e.job.job.to_string(),
                    when: when_,
                    approved_by,
                    shape: shape_of(&t, e.cells.as_ref()),
                    table: t,
                });
            }
            Some(html! {
                (diff::render(&table, shape.as_ref(), &earlier, &c.rules))
                @for n in &c.withdrawn { p.notice { (n) } }
            })
        }
        None => None,
    };
    let base = format!("/projects/{p}/releases/{r}");
    let body = html! {
        h1 { "Release request " (req.release) }
        p { "Project " a href=(format!("/projects/{p}")) { (p) } " · job " a href=(format!("/projects/{p}/jobs/{}", req.job)) { (req.job) } }
        (request_facts(&req, show_reviews))
        @if may_review { (review_form(&s, &base)) }
        @else if own { p.warn { "You asked for this release, so you cannot review it." } }
        @if may_resubmit { (resubmit_form(&s, &format!("{base}/versions"))) }
        h2 { "Safe table" }
        p.hint { "This is what would leave. Hidden cells are shown as —." }
        (table::render(&table, q.page.unwrap_or(1), &base, "Safe table"))
        @if let Some(o) = &job.outcome {
            h2 { "Findings" }
            p { (o.verdict.for_checker()) }
            @if let Some(rep) = &o.report { (report::render(rep, 3)) }
        }
        h2 { "How the table was made" }
        (job_facts(&job))
        @if let Some(c) = comparison { h2 { "Compared with earlier releases" } (c) }
    };
    Ok(
        Html(page(&format!("Release {}", req.release), Some(&s), body).into_string())
            .into_response(),
    )
}

/// The table's shape from its `cells.json`, else from its legacy marker columns.
fn shape_of(t: &SafeTable, cells: Option<&crate::received::ReceivedTable>) -> Option<diff::Shape> {
    match cells {
        Some(c) => diff::shape(t, c),
        None => (!t.value_columns().is_empty()).then(|| diff::Shape::legacy(t)),
    }
}

fn decisions(reviews: &[crate::tre::actions::Review]) -> Markup {
    html! {
        ul { @for x in reviews {
            li { strong { (x.checker) } " " (x.decision.words()) " on " (when(&x.at)) ": " (x.comment) }
        } }
    }
}

fn request_facts(req: &Request, show_reviews: bool) -> Markup {
    html! {
        dl.facts {
            dt { "State" } dd { (badge(state_name(req.state))) }
            dt { "Version" } dd { (req.version) @if req.version > 1 { " (resubmitted after " (req.version - 1) " earlier version(s), below)" } }
            dt { "Requested by" } dd { (req.requester) }
            dt { "Requested" } dd { (when(&req.created_at)) }
            dt { "Justification" } dd { (req.justification) }
            dt { "Context" } dd { (req.context) }
            dt { "Rules" } dd { (req.rules) " (sha256 " code { (req.rules_sha256.get(..12).unwrap_or("")) } "…)" }
        }
        h2 { "Decisions on version " (req.version) }
        @if show_reviews {
            @if req.reviews.is_empty() { p { "No checker has decided yet." } } @else { (decisions(&req.reviews)) }
        } @else {
            p.notice { "Other checkers' decisions on this version are shown after you decide, so that each review is independent." }
        }
        @if !req.history.is_empty() {
            h2 { "Earlier versions" }
            @let refusals = req.earlier_refusals();
            @if !refusals.is_empty() {
                div.warn role="note" { p { strong { "Earlier versions were rejected or returned: " }
                    @for (i, (v, x)) in refusals.iter().enumerate() {
                        @if i > 0 { "; " } (x.checker) " " (x.decision.words()) " version " (v) ": " (x.comment)
                    } } }
            }
            p.hint { "This version needs two approvals of its own; approvals of earlier versions do not count." }
            @for v in req.history.iter().rev() {
                h3 { "Version " (v.version) " — " (state_name(v.state)) }
                p { "Job " a href=(format!("/projects/{}/jobs/{}", req.project, v.job)) { (v.job) } " · requested " (when(&v.created_at))
                    " · rules " (v.rules) " · justification: " (v.justification) " · context: " (v.context) }
                @if v.reviews.is_empty() { p { "No decisions." } } @else { (decisions(&v.reviews)) }
            }
        }
        @if req.state == ReleaseState::Exported {
            h2 { "Exported files" }
            ul { @for f in &req.files { li { code { (f.path) } " (sha256 " code { (f.sha256.get(..12).unwrap_or("")) } "…)" } } }
        }
    }
}

fn resubmit_form(s: &Signed, action: &str) -> Markup {
    html! {
        h2 { "Resubmit as a new version" }
        p.hint { "Run the changed job first, then give its id. The checkers of the new version see every earlier decision and comment." }
        form.stack method="post" action=(action) {
            (token_field(s))
            label for="job" { "Job id of the changed table" }
            input type="text" id="job" name="job" required;
            label for="justification" { "Justification (what changed and why it should leave)" }
            textarea id="justification" name="justification" required minlength="3" maxlength="4000" {}
            label for="context" { "Context" }
            textarea id="context" name="context" required minlength="3" maxlength="4000" {}
            div { button type="submit" { "Resubmit" } }
        }
    }
}

fn review_form(s: &Signed, action: &str) -> Markup {
    html! {
        h2 { "Your decision" }
        form.stack method="post" action=(action) {
            (token_field(s))
            fieldset {
                legend { "Decision" }
                input type="radio" id="approve" name="decision" value="approve" required;
                label for="approve" { " Approve" }
                " "
                input type="radio" id="reject" name="decision" value="reject";
                label for="reject" { " Reject" }
                " "
                input type="radio" id="return" name="decision" value="return";
                label for="return" { " Return for changes" }
            }
            label for="comment" { "Comment (required)" }
            p.hint id="comment-hint" { "Say what you checked, or what must change. The requester and the other checker will read it; after a rejection or a return, the requester may resubmit a new version, whose checkers read it too." }
            textarea id="comment" name="comment" required minlength="3" maxlength="4000" aria-describedby="comment-hint" {}
            div { button type="submit" { "Record decision" } }
        }
    }
}

#[derive(Debug, Deserialize)]
struct ReviewForm {
    #[allow(dead_code)]
    form_token: String,
    decision: Decision,
    comment: String,
}

/// `POST /projects/{p}/releases/{r}`: review (the second distinct approval exports).
pub async fn review(
    State(web): State<Web>,
    s: Signed,
    Path((p, r)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, WebError> {
    let f: ReviewForm = form(&web, &s, &headers, &body)?;
    let d = Decide {
        decision: f.decision,
        comment: f.comment,
    };
    releases::review(&web.tre, &s.actor, &p, &r, d)?;
    Ok(Redirect::to(&format!("/projects/{p}/releases/{r}")).into_response())
}

#[derive(Debug, Deserialize)]
struct ResubmitForm {
    #[allow(dead_code)]
    form_token: String,
    job: String,
    justification: String,
    context: String,
}

/// `POST /projects/{p}/releases/{r}/versions`: resubmit a rejected or returned request
/// as a new version.
pub async fn resubmit(
    State(web): State<Web>,
    s: Signed,
    Path((p, r)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, WebError> {
    let f: ResubmitForm = form(&web, &s, &headers, &body)?;
    let new = NewRequest {
        job: f.job.trim().to_string(),
        justification: f.justification,
        context: f.context,
    };
    releases::resubmit(&web.tre, &s.actor, &p, &r, new)?;
    Ok(Redirect::to(&format!("/projects/{p}/releases/{r}")).into_response())
}
