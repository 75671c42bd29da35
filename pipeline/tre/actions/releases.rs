//! Release actions: request a release of a job's safe table, read a request, review it
//! (the second distinct approval exports), export it again, and the output checker's
//! queue and review page.
//!
//! Owns who may do what with a request: an analyst requests; an output checker reviews
//! (never their own request, never twice: [`crate::tre::release::review`]) and exports;
//! any member reads. [`may_review`] and [`shows_reviews`] are the one statement of the
//! review rule for display. Every change happens under the release lock with the request
//! re-read from disk, so concurrent reviews are never lost; each change is one bound
//! write (its audit entry names the request file, see [`crate::tre::records`]), and an
//! export follows the crash-consistent steps of [`release::export`]: a failed export is
//! rolled back and audited, and [`export`] retries it (or finishes one left
//! `exporting`). Danger: nothing leaves without two distinct approvals.

use super::auth::{Actor, Member};
use super::error::ActionError;
use super::jobs::{self, SafeCsv};
use super::{Tre, reads};
use crate::audit::{EntryDraft, HashRef};
use crate::tre::id::Id;
use crate::tre::job::{self, JobRecord};
use crate::tre::release::{self, Decision, ReleaseState, Request, Review};

/// Longest justification, context or comment.
pub const MAX_TEXT_CHARS: usize = 4000;

fn bounded(field: &'static str, s: &str) -> Result<(), ActionError> {
    if s.chars().count() > MAX_TEXT_CHARS {
        return Err(ActionError::BadField {
            field,
            problem: "is longer than 4000 characters",
        });
    }
    Ok(())
}

/// A release to ask for.
#[derive(Debug, Clone)]
pub struct NewRequest {
    /// The job whose safe table should leave.
    pub job: String,
    /// Why it should leave.
    pub justification: String,
    /// What the table is and how it was made.
    pub context: String,
}

/// A checker's decision.
#[derive(Debug, Clone)]
pub struct Decide {
    /// Approve or reject.
    pub decision: Decision,
    /// Why.
    pub comment: String,
}

fn lock(tre: &Tre) -> std::sync::MutexGuard<'_, ()> {
    // A panic while holding it leaves no half-written request (writes are atomic).
    tre.releases
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Request a release (`release.request`): an analyst of the project; audited with the
/// request's bound write.
pub fn request(
    tre: &Tre,
    actor: &Actor,
    project: &str,
    new: NewRequest,
) -> Result<Request, ActionError> {
    let r = request_inner(tre, actor, project, new);
    tre.audited(actor, "release.request", Some(project), r)
}

fn request_inner(tre: &Tre, actor: &Actor, p: &str, b: NewRequest) -> Result<Request, ActionError> {
    let analyst = actor.analyst(tre, p)?.0;
    bounded("justification", &b.justification)?;
    bounded("context", &b.context)?;
    let job = Id::parse("job", &b.job)?;
    let rec = job::load(&tre.ws, &analyst.project, &job)?;
    let id = Id::random("rel").map_err(|_| ActionError::BadField {
        field: "release",
        problem: "could not be given an id (the OS random source failed)",
    })?;
    let r = release::draft(
        &tre.ws,
        &analyst.policy,
        &rec,
        analyst.user(),
        id,
        &b.justification,
        &b.context,
        tre.auditor.clock().now(),
    )?;
    release::save(
        &tre.ws,
        &tre.auditor,
        EntryDraft::new(analyst.user().as_str(), "release.request")
            .project(r.project.as_str())
            .purpose(r.justification.as_str())
            .detail("release", r.release.as_str())
            .detail("job", r.job.as_str())
            .detail("rules_sha256", r.rules_sha256.as_str())
            .input(HashRef::new(
                format!("projects/{}/results/{}/result.parquet", r.project, r.job),
                r.result_sha256.clone(),
            )),
        &r,
    )?;
    Ok(r)
}

/// Read a request (`release.status`): any member of the project.
pub fn show(
    tre: &Tre,
    actor: &Actor,
    project: &str,
    release: &str,
) -> Result<Request, ActionError> {
    let r = (|| {
        let m = actor.member(tre, project)?;
        let r = Id::parse("release", release)?;
        Ok(release::load(&tre.ws, &m.project, &r)?)
    })();
    tre.audited(actor, "release.status", Some(project), r)
}

/// Review a request (`release.review`): an output checker of the project, not its
/// requester, once; the second distinct approval exports.
pub fn review(
    tre: &Tre,
    actor: &Actor,
    project: &str,
    release: &str,
    d: Decide,
) -> Result<Request, ActionError> {
    let _one_writer = lock(tre);
    let r = review_inner(tre, actor, project, release, d);
    tre.audited(actor, "release.review", Some(project), r)
}

fn review_inner(
    tre: &Tre,
    actor: &Actor,
    p: &str,
    r: &str,
    b: Decide,
) -> Result<Request, ActionError> {
    let checker = actor.checker(tre, p)?.0;
    bounded("comment", &b.comment)?;
    let id = Id::parse("release", r)?;
    let mut req = release::load(&tre.ws, &checker.project, &id)?;
    release::review(
        &mut req,
        Review {
            checker: checker.user().clone(),
            decision: b.decision,
            comment: b.comment.clone(),
            at: tre.auditor.clock().now(),
        },
    )?;
    let export_due = req.state == ReleaseState::Requested && req.approvals().len() >= 2;
    // Prepared before the review is saved: an export that cannot even start (no outbox,
    // a withdrawn result) refuses the second approval rather than leave it unexported.
    let prepared = if export_due {
        Some(prepare(tre, &checker, &req)?)
    } else {
        None
    };
    release::save(
        &tre.ws,
        &tre.auditor,
        EntryDraft::new(checker.user().as_str(), "release.review")
            .project(req.project.as_str())
            .detail("release", req.release.as_str())
            .detail("decision", format!("{:?}", b.decision).to_lowercase())
            .detail("comment", b.comment.as_str())
            .detail("approvals", req.approvals().len()),
        &req,
    )?;
    if let Some(e) = prepared {
        export_prepared(tre, &checker, &mut req, &e)?;
    }
    Ok(req)
}

fn prepare(tre: &Tre, checker: &Member, req: &Request) -> Result<release::Export, ActionError> {
    Ok(release::prepare_export(
        &tre.ws,
        &checker.policy,
        req,
        tre.auditor.clock().now(),
        tre.auditor.head()?,
    )?)
}

/// The one place an export is carried out (its steps: [`release::export`]).
fn export_prepared(
    tre: &Tre,
    checker: &Member,
    req: &mut Request,
    e: &release::Export,
) -> Result<(), ActionError> {
    release::export(
        &tre.ws,
        &tre.auditor,
        &checker.policy,
        req,
        e,
        checker.user().as_str(),
    )?;
    Ok(())
}

/// Export an approved request again (after an outbox problem was fixed), or finish (or
/// roll back) one left `exporting` (`release.export`): an output checker of the
/// project; refused unless two distinct checkers approved.
pub fn export(
    tre: &Tre,
    actor: &Actor,
    project: &str,
    release: &str,
) -> Result<Request, ActionError> {
    let _one_writer = lock(tre);
    let r = export_inner(tre, actor, project, release);
    tre.audited(actor, "release.export", Some(project), r)
}

fn export_inner(tre: &Tre, actor: &Actor, p: &str, r: &str) -> Result<Request, ActionError> {
    let checker = actor.checker(tre, p)?.0;
    let id = Id::parse("release", r)?;
    let mut req = release::load(&tre.ws, &checker.project, &id)?;
    if req.exporting.is_some() {
        release::resume(
            &tre.ws,
            &tre.auditor,
            &checker.policy,
            &mut req,
            checker.user().as_str(),
        )?;
        return Ok(req);
    }
    let e = prepare(tre, &checker, &req)?;
    export_prepared(tre, &checker, &mut req, &e)?;
    Ok(req)
}

/// Whether `member` may review `req` now: an output checker of its project, the request
/// open, not theirs, and not yet decided by them.
pub fn may_review(member: &Member, req: &Request) -> bool {
    member.is_checker()
        && req.state == ReleaseState::Requested
        && req.requester != *member.user()
        && !decided(member, req)
}

fn decided(member: &Member, req: &Request) -> bool {
    req.reviews.iter().any(|x| x.checker == *member.user())
}

/// Whether `member` may see the other checkers' decisions on `req`: each review is
/// independent, so a checker sees them only once they decided or the request closed.
pub fn shows_reviews(member: &Member, req: &Request) -> bool {
    !member.is_checker() || decided(member, req) || req.state != ReleaseState::Requested
}

/// The output checker's queue.
#[derive(Debug)]
pub struct Queue {
    /// Whether the actor checks any project.
    pub checker_anywhere: bool,
    /// Requests waiting for them, newest first per project.
    pub waiting: Vec<Request>,
}

/// The requests in the actor's checker projects that they may review now (`web.queue`).
pub fn queue(tre: &Tre, actor: &Actor) -> Result<Queue, ActionError> {
    let r = (|| {
        let mut q = Queue {
            checker_anywhere: false,
            waiting: Vec::new(),
        };
        for p in tre.ws.projects()? {
            let Ok(c) = actor.checker(tre, p.as_str()) else {
                continue;
            };
            q.checker_anywhere = true;
            let m = c.0;
            q.waiting.extend(
                reads::releases(&tre.ws, &m.project)
                    .into_iter()
                    .filter(|r| may_review(&m, r)),
            );
        }
        Ok(q)
    })();
    tre.audited(actor, "web.queue", None, r)
}

/// An earlier exported release of the same project, with its safe table.
#[derive(Debug)]
pub struct Earlier {
    /// The request.
    pub request: Request,
    /// Its safe table.
    pub table: SafeCsv,
}

/// What a checker compares a request with.
#[derive(Debug)]
pub struct Comparison {
    /// The project's disclosure rules.
    pub rules: crate::disclosure::rules::Rules,
    /// Earlier exported releases, with their tables.
    pub earlier: Vec<Earlier>,
    /// Earlier releases not compared because `tre purge` withdrew their result.
    pub withdrawn: Vec<String>,
}

/// A request's review page.
#[derive(Debug)]
pub struct ReleasePage {
    /// The reader's standing.
    pub member: Member,
    /// The request.
    pub request: Request,
    /// Its job.
    pub job: JobRecord,
    /// The safe table that would leave (read through [`jobs::safe_table`], audited).
    pub table: SafeCsv,
    /// For an output checker: the comparison with earlier releases.
    pub comparison: Option<Comparison>,
}

impl ReleasePage {
    /// See [`may_review`].
    pub fn may_review(&self) -> bool {
        may_review(&self.member, &self.request)
    }

    /// See [`shows_reviews`].
    pub fn shows_reviews(&self) -> bool {
        shows_reviews(&self.member, &self.request)
    }

    /// The reader is an output checker who asked for this release (and so cannot review
    /// it).
    pub fn own_request(&self) -> bool {
        self.member.is_checker() && self.request.requester == *self.member.user()
    }
}

/// Read a request for its page (`web.release`): any member; its safe table (and, for an
/// output checker, those of earlier exported releases) read through
/// [`jobs::safe_table`].
pub fn page(
    tre: &Tre,
    actor: &Actor,
    project: &str,
    release: &str,
) -> Result<ReleasePage, ActionError> {
    let r = (|| {
        let m = actor.member(tre, project)?;
        let id = Id::parse("release", release)?;
        let req = release::load(&tre.ws, &m.project, &id)?;
        let job = job::load(&tre.ws, &m.project, &req.job)?;
        Ok((m, req, job))
    })();
    let (member, request, job) = tre.audited(actor, "web.release", Some(project), r)?;
    let table = jobs::safe_table(tre, actor, project, request.job.as_str())?;
    let comparison = if member.is_checker() {
        let rules = crate::tre::query::project_rules(&tre.ws, &member.policy)
            .map(|(_, rules, _)| rules)
            .map_err(|e| ActionError::Release(e.into()));
        let rules = tre.audited(actor, "web.release", Some(project), rules)?;
        let (earlier, withdrawn) = earlier(tre, actor, &request)?;
        Some(Comparison {
            rules,
            earlier,
            withdrawn,
        })
    } else {
        None
    };
    Ok(ReleasePage {
        member,
        request,
        job,
        table,
        comparison,
    })
}

/// Earlier exported releases of the project (other than `r`), with their safe tables;
/// and, for each one whose result `tre purge` has since withdrawn (its table is no longer
/// served), a note saying so instead.
fn earlier(
    tre: &Tre,
    actor: &Actor,
    r: &Request,
) -> Result<(Vec<Earlier>, Vec<String>), ActionError> {
    let mut v = Vec::new();
    let mut withdrawn = Vec::new();
    for e in reads::releases(&tre.ws, &r.project) {
        if e.release == r.release || e.state != ReleaseState::Exported {
            continue;
        }
        match jobs::safe_table(tre, actor, r.project.as_str(), e.job.as_str()) {
            Ok(table) => v.push(Earlier { request: e, table }),
            Err(err) if err.class() == super::error::Class::Gone => withdrawn.push(format!(
                "Earlier release {} is not compared: {}",
                e.release,
                err.public_message()
            )),
            Err(err) => return Err(err),
        }
    }
    Ok((v, withdrawn))
}
