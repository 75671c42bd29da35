//! The analyst's pages: their projects, a project's jobs with the submit form, and a
//! job's status, disclosure report, safe table and release request form.
//!
//! Every read and action is one call to the action library
//! ([`crate::tre::actions::jobs`], [`crate::tre::actions::releases`],
//! [`crate::tre::actions::reads`]), which checks the role and audits: a job's page
//! (`job.read`) before it is shown, its safe table (`job.safe`). The page of a job whose
//! result `tre purge` withdrew shows the purge's message and the job's own facts only:
//! never its verdict, report or table.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::Web;
use super::error::WebError;
use super::layout::{badge, page, token_field, when};
use super::report;
use super::session::{Signed, check_form};
use super::table::{self, SafeTable};
use crate::tre::actions::jobs::{self as actions, JobRead, NewJob};
use crate::tre::actions::releases::{self as release_actions, NewRequest};
use crate::tre::actions::{JobRecord, JobState, Role, reads};

/// `?page=N` on pages with a table.
#[derive(Debug, Deserialize)]
pub struct PageQuery {
    /// Page number, from 1.
    pub page: Option<usize>,
}

/// Read a urlencoded form body and check its token and origin.
pub fn form<T: serde::de::DeserializeOwned>(
    web: &Web,
    s: &Signed,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T, WebError> {
    let fields: HashMap<String, String> =
        serde_urlencoded::from_bytes(body).map_err(|e| WebError::Form {
            problem: e.to_string(),
        })?;
    check_form(
        web,
        headers,
        &s.form_token,
        fields.get("form_token").map_or("", String::as_str),
    )?;
    serde_urlencoded::from_bytes(body).map_err(|e| WebError::Form {
        problem: e.to_string(),
    })
}

fn html_page(title: &str, s: &Signed, body: Markup) -> Response {
    Html(page(title, Some(s), body).into_string()).into_response()
}

/// `GET /`: the person's projects and roles.
pub async fn home(State(web): State<Web>, s: Signed) -> Result<Response, WebError> {
    let mine = reads::home(&web.tre, &s.actor)?;
    let body = html! {
        h1 { "Your projects" }
        @if mine.is_empty() {
            p { "You are not an analyst or output checker of any project yet. Ask the operator to add you to a project's policy." }
        } @else {
            table {
                caption.visually-hidden { "Projects and your roles" }
                thead { tr { th scope="col" { "Project" } th scope="col" { "Title" } th scope="col" { "Your role" } } }
                tbody { @for m in &mine { tr {
                    td { a href=(format!("/projects/{}", m.project)) { (m.project) } }
                    td { (m.title) }
                    td { (m.roles.iter().map(|r| match r { Role::Checker => "output checker", Role::Analyst => "analyst", Role::Auditor => "auditor" }).collect::<Vec<_>>().join(", ")) }
                } } }
            }
        }
        p { "Output checkers: requests waiting for you are in the " a href="/queue" { "review queue" } "." }
    };
    Ok(html_page("Your projects", &s, body))
}

/// `GET /projects/{p}`: jobs and release requests; the submit form for analysts.
pub async fn project(
    State(web): State<Web>,
    s: Signed,
    Path(p): Path<String>,
) -> Result<Response, WebError> {
    let reads::ProjectPage {
        member: m,
        jobs,
        releases,
    } = reads::project(&web.tre, &s.actor, &p)?;
    let analyst = m.is_analyst();
    let body = html! {
        h1 { "Project " (m.project) }
        p { (m.policy.project.title) }
        @if analyst { (submit_form(&s, m.project.as_str())) }
        h2 { "Jobs" }
        @if jobs.is_empty() { p { "No jobs yet." } } @else { (job_table(m.project.as_str(), &jobs)) }
        h2 { "Release requests" }
        @if releases.is_empty() { p { "No release requests yet." } } @else {
            table {
                thead { tr { th scope="col" { "Request" } th scope="col" { "Job" } th scope="col" { "Requested by" }
                    th scope="col" { "When" } th scope="col" { "State" } } }
                tbody { @for r in &releases { tr {
                    td { a href=(format!("/projects/{}/releases/{}", r.project, r.release)) { (r.release) } }
                    td { (r.job) } td { (r.requester) } td { (when(&r.created_at)) }
                    td { (badge(&format!("{:?}", r.state).to_lowercase())) }
                } } }
            }
        }
    };
    Ok(html_page(&format!("Project {}", m.project), &s, body))
}

fn submit_form(s: &Signed, p: &str) -> Markup {
    html! {
        h2 { "Submit a job" }
        form.stack method="post" action=(format!("/projects/{p}")) {
            (token_field(s))
            label for="sql" { "SQL query" }
            p.hint id="sql-hint" {
                "One aggregate over the project's tables: SELECT keys, then any of COUNT(DISTINCT patient_pseudonym), COUNT(*), COUNT(x), SUM(x), AVG(x), a ratio of two of them (SUM(x) / COUNT(*)), a share (100.0 * COUNT(*) / SUM(COUNT(*)) OVER (PARTITION BY key)), and MIN, MAX or MEDIAN where the project's rules allow; FROM any read-only SQL in which each row is one patient's own data (join patient tables ON patient_pseudonym); GROUP BY the keys. The TRE computes the table itself and you see its safe version; see docs/service.md, Job request format."
            }
            textarea.sql id="sql" name="sql" required aria-describedby="sql-hint" {}
            label for="purpose" { "Purpose (required)" }
            p.hint id="purpose-hint" { "Why you run this job. It is written to the audit trail." }
            input type="text" id="purpose" name="purpose" required minlength="3" maxlength="2000" aria-describedby="purpose-hint";
            div { button type="submit" { "Submit job" } }
        }
    }
}

fn job_table(p: &str, jobs: &[JobRecord]) -> Markup {
    html! {
        table {
            thead { tr { th scope="col" { "Job" } th scope="col" { "Purpose" } th scope="col" { "Submitted by" }
                th scope="col" { "Submitted" } th scope="col" { "Status" } } }
            tbody { @for j in jobs { tr {
                td { a href=(format!("/projects/{p}/jobs/{}", j.job)) { (j.job) } }
                td { (j.purpose) } td { (j.submitter) } td { (when(&j.submitted_at)) }
                td { (badge(state_name(j.state))) @if let Some(r) = &j.reason { " " span { (r) } } }
            } } }
        }
    }
}

/// A job state's name as the API says it.
pub fn state_name(s: JobState) -> &'static str {
    s.name()
}

#[derive(Debug, Deserialize)]
struct SubmitForm {
    #[allow(dead_code)]
    form_token: String,
    sql: String,
    purpose: String,
}

/// `POST /projects/{p}`: submit a job.
pub async fn submit(
    State(web): State<Web>,
    s: Signed,
    Path(p): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, WebError> {
    let f: SubmitForm = form(&web, &s, &headers, &body)?;
    let new = NewJob {
        sql: f.sql,
        purpose: f.purpose,
    };
    let job = actions::submit(&web.tre, &s.actor, &p, new)?.job;
    Ok(Redirect::to(&format!("/projects/{p}/jobs/{job}")).into_response())
}

/// `GET /projects/{p}/jobs/{job}`.
pub async fn job(
    State(web): State<Web>,
    s: Signed,
    Path((p, job)): Path<(String, String)>,
    Query(q): Query<PageQuery>,
) -> Result<Response, WebError> {
    let (m, rec) = match actions::page(&web.tre, &s.actor, &p, &job)? {
        JobRead::Withdrawn { record, message } => {
            // A withdrawn result: the purge's message, the job's own facts, nothing of
            // its result (no verdict, report, table or release form).
            let body = html! {
                h1 { "Job " (record.job) }
                p { a href=(format!("/projects/{p}")) { "Back to project " (p) } }
                p.error role="alert" { (message) }
                (facts(&record, false))
            };
            return Ok(html_page(&format!("Job {}", record.job), &s, body));
        }
        JobRead::Shown(shown) => (shown.member, shown.record),
    };
    let o = rec.outcome.as_ref();
    let table = if actions::releasable(&rec) {
        let t = actions::safe_table(&web.tre, &s.actor, &p, &job)?;
        Some(SafeTable::from_csv(&t.bytes)?)
    } else {
        None
    };
    let base = format!("/projects/{p}/jobs/{job}");
    let body = html! {
        h1 { "Job " (rec.job) }
        p { a href=(format!("/projects/{p}")) { "Back to project " (p) } }
        (job_facts(&rec))
        @if let Some(o) = o {
            h2 { "Verdict" }
            p { (if m.is_checker() { o.verdict.for_checker() } else { o.verdict.for_analyst() }) }
            @if let Some(rep) = o.report.as_ref().filter(|_| m.is_checker()) { h2 { "Disclosure report" } (report::render(rep, 3)) }
        }
        @if let Some(t) = &table {
            h2 { "Safe table" }
            p.hint { "Suppressed and rounded. Hidden cells are shown as —." }
            (table::render(t, q.page.unwrap_or(1), &base, "Safe table"))
            @if m.is_analyst() { (release_form(&s, &base)) }
        }
    };
    Ok(html_page(&format!("Job {}", rec.job), &s, body))
}

/// The facts of a job: who, why, the SQL, state and reason.
pub fn job_facts(rec: &JobRecord) -> Markup {
    facts(rec, true)
}

/// [`job_facts`], with the result's rules and size only when `outcome` is set.
fn facts(rec: &JobRecord, outcome: bool) -> Markup {
    html! {
        dl.facts {
            dt { "Status" } dd { (badge(state_name(rec.state))) @if let Some(r) = &rec.reason { " — " (r) } }
            dt { "Submitted by" } dd { (rec.submitter) }
            dt { "Submitted" } dd { (when(&rec.submitted_at)) }
            @if let Some(f) = &rec.finished_at { dt { "Finished" } dd { (when(f)) } }
            @if let Some(v) = rec.dataset_version { dt { "Dataset version" } dd { (v) } }
            dt { "Purpose" } dd { (rec.purpose) }
            @if let Some(o) = rec.outcome.as_ref().filter(|_| outcome) { dt { "Rules" } dd { (o.rules) } dt { "Result" } dd { (o.rows) " rows × " (o.columns.len()) " columns (not shown)" } }
        }
        h2 { "SQL" }
        pre { code { (rec.sql) } }
    }
}

fn release_form(s: &Signed, action: &str) -> Markup {
    html! {
        h2 { "Request release" }
        p { "Two output checkers will review the safe table above before it leaves." }
        form.stack method="post" action=(action) {
            (token_field(s))
            label for="justification" { "Justification (required)" }
            p.hint id="j-hint" { "Why this table needs to leave the environment." }
            textarea id="justification" name="justification" required minlength="3" maxlength="4000" aria-describedby="j-hint" {}
            label for="context" { "Context (required)" }
            p.hint id="c-hint" { "What the table is, how it was made, the population, and how it relates to earlier releases." }
            textarea id="context" name="context" required minlength="3" maxlength="4000" aria-describedby="c-hint" {}
            div { button type="submit" { "Request release" } }
        }
    }
}

#[derive(Debug, Deserialize)]
struct ReleaseForm {
    #[allow(dead_code)]
    form_token: String,
    justification: String,
    context: String,
}

/// `POST /projects/{p}/jobs/{job}`: request a release.
pub async fn request_release(
    State(web): State<Web>,
    s: Signed,
    Path((p, job)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, WebError> {
    let f: ReleaseForm = form(&web, &s, &headers, &body)?;
    let new = NewRequest {
        job,
        justification: f.justification,
        context: f.context,
    };
    let rel = release_actions::request(&web.tre, &s.actor, &p, new)?.release;
    Ok(Redirect::to(&format!("/projects/{p}/releases/{rel}")).into_response())
}
