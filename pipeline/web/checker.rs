//! The output checker's pages: the queue of requests waiting for them, and the review
//! page (also the request's status page for the analyst).
//!
//! The review page shows the safe table, each finding in words, the SQL, purpose,
//! justification and context, the rules, and the comparison with earlier releases.
//! Other checkers' decisions are shown only to a checker who has decided (or once the
//! request is closed), as in OpenSAFELY's Airlock. The decision is made by the API's
//! own review handler, which refuses self-approval and double review.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::Web;
use super::api;
use super::diff::{self, Earlier};
use super::error::WebError;
use super::jobs::{PageQuery, form, job_facts, safe_table};
use super::layout::{badge, page, token_field, when};
use super::lists;
use super::report;
use super::session::Signed;
use super::table;
use crate::server::error::ApiError;
use crate::server::releases as api_releases;
use crate::tre::id::Id;
use crate::tre::release::{Decision, ReleaseState, Request};
use crate::tre::workspace::{Role, roles_of};

fn state_name(s: ReleaseState) -> &'static str {
    match s {
        ReleaseState::Requested => "requested",
        ReleaseState::Rejected => "rejected",
        ReleaseState::Exported => "exported",
    }
}

/// `GET /queue`: requests in the person's checker projects that are open, not theirs,
/// and not yet reviewed by them.
pub async fn queue(State(web): State<Web>, s: Signed) -> Result<Response, WebError> {
    let app = &web.app;
    let projects = app
        .ws
        .projects()
        .map_err(|e| api::refused(app, s.user.as_str(), "web.queue", None, e.into()))?;
    let mut waiting: Vec<Request> = Vec::new();
    let mut checker_anywhere = false;
    for p in projects {
        let Ok(c) = s.caller().checker(app, p.as_str()) else {
            continue;
        };
        checker_anywhere = true;
        waiting.extend(
            lists::releases(&app.ws, &c.0.project)
                .into_iter()
                .filter(|r| {
                    r.state == ReleaseState::Requested
                        && r.requester != s.user
                        && !r.reviews.iter().any(|x| x.checker == s.user)
                }),
        );
    }
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

/// Earlier exported releases of the project (other than `r`), with their safe tables;
/// and, for each one whose result `tre purge` has since withdrawn (its table is no longer
/// served), a note saying so instead.
async fn earlier(
    web: &Web,
    s: &Signed,
    r: &Request,
) -> Result<(Vec<Earlier>, Vec<String>), WebError> {
    let mut v = Vec::new();
    let mut withdrawn = Vec::new();
    for e in lists::releases(&web.app.ws, &r.project) {
        if e.release == r.release || e.state != ReleaseState::Exported {
            continue;
        }
        let table = match safe_table(web, s, r.project.as_str(), e.job.as_str()).await {
            Ok(t) => t,
            Err(WebError::Api {
                status: 410,
                message,
            }) => {
                withdrawn.push(format!(
                    "Earlier release {} is not compared: {message}",
                    e.release
                ));
                continue;
            }
            Err(err) => return Err(err),
        };
        v.push(Earlier {
            release: e.release.to_string(),
            job: e.job.to_string(),
            when: when(&e.created_at),
            approved_by: e.approvals().into_iter().map(str::to_string).collect(),
            table,
        });
    }
    Ok((v, withdrawn))
}

/// `GET /projects/{p}/releases/{r}`.
pub async fn release(
    State(web): State<Web>,
    s: Signed,
    Path((p, r)): Path<(String, String)>,
    Query(q): Query<PageQuery>,
) -> Result<Response, WebError> {
    let app = &web.app;
    let (m, req, job) = (|| {
        let m = s.caller().member(app, &p)?;
        let id = Id::parse("release", &r)?;
        let req = crate::tre::release::load(&app.ws, &m.project, &id)?;
        let job = crate::jobs::load(&app.ws, &m.project, &req.job)?;
        Ok::<_, ApiError>((m, req, job))
    })()
    .map_err(|e| api::refused(app, s.user.as_str(), "web.release", Some(&p), e))?;
    let table = safe_table(&web, &s, &p, req.job.as_str()).await?;
    let checker = roles_of(&m.policy, s.user.as_str()).contains(&Role::Checker);
    let decided = req.reviews.iter().any(|x| x.checker == s.user);
    let may_review =
        checker && req.state == ReleaseState::Requested && !decided && req.requester != s.user;
    let show_reviews = !checker || decided || req.state != ReleaseState::Requested;
    let comparison = if checker {
        let rules = crate::tre::query::project_rules(&app.ws, &m.policy)
            .map(|(_, rules, _)| rules)
            .map_err(|e| {
                api::refused(
                    app,
                    s.user.as_str(),
                    "web.release",
                    Some(&p),
                    ApiError::Release(e.into()),
                )
            })?;
        let (earlier, withdrawn) = earlier(&web, &s, &req).await?;
        Some(html! {
            (diff::render(&table, &earlier, &rules))
            @for n in &withdrawn { p.notice { (n) } }
        })
    } else {
        None
    };
    let base = format!("/projects/{p}/releases/{r}");
    let body = html! {
        h1 { "Release request " (req.release) }
        p { "Project " a href=(format!("/projects/{p}")) { (p) } " · job " a href=(format!("/projects/{p}/jobs/{}", req.job)) { (req.job) } }
        (request_facts(&req, show_reviews))
        @if may_review { (review_form(&s, &base)) }
        @else if checker && req.requester == s.user { p.warn { "You asked for this release, so you cannot review it." } }
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

fn request_facts(req: &Request, show_reviews: bool) -> Markup {
    html! {
        dl.facts {
            dt { "State" } dd { (badge(state_name(req.state))) }
            dt { "Requested by" } dd { (req.requester) }
            dt { "Requested" } dd { (when(&req.created_at)) }
            dt { "Justification" } dd { (req.justification) }
            dt { "Context" } dd { (req.context) }
            dt { "Rules" } dd { (req.rules) " (sha256 " code { (req.rules_sha256.get(..12).unwrap_or("")) } "…)" }
        }
        h2 { "Decisions" }
        @if show_reviews {
            @if req.reviews.is_empty() { p { "No checker has decided yet." } } @else {
                ul { @for x in &req.reviews {
                    li { strong { (x.checker) } " " (if x.decision == Decision::Approve { "approved" } else { "rejected" })
                        " on " (when(&x.at)) ": " (x.comment) }
                } }
            }
        } @else {
            p.notice { "Other checkers' decisions are shown after you decide, so that each review is independent." }
        }
        @if req.state == ReleaseState::Exported {
            h2 { "Exported files" }
            ul { @for f in &req.files { li { code { (f.path) } " (sha256 " code { (f.sha256.get(..12).unwrap_or("")) } "…)" } } }
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
            }
            label for="comment" { "Comment (required)" }
            p.hint id="comment-hint" { "Say what you checked, or what must change. The requester and the other checker will read it." }
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

/// `POST /projects/{p}/releases/{r}`: review through the API's handler (the second
/// distinct approval exports).
pub async fn review(
    State(web): State<Web>,
    s: Signed,
    Path((p, r)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, WebError> {
    let f: ReviewForm = form(&web, &s, &headers, &body)?;
    let b = api_releases::ReviewBody {
        decision: f.decision,
        comment: f.comment,
    };
    let resp = api_releases::review(
        State(web.app.clone()),
        s.caller(),
        Path((p.clone(), r.clone())),
        Ok(Json(b)),
    )
    .await;
    api::json(resp, "the review").await?;
    Ok(Redirect::to(&format!("/projects/{p}/releases/{r}")).into_response())
}
