//! Release actions: request a release of a job's safe table, read a request, review it
//! (approve, reject or return for changes; the second distinct approval exports),
//! resubmit a rejected or returned request as a new version, export it again, and the
//! output checker's queue and review page.
//!
//! Owns who may do what with a request: an analyst requests and (the requester)
//! resubmits; an output checker reviews (never their own request, never twice:
//! [`crate::tre::release::review`]) and exports; any member reads. [`may_review`] and
//! [`shows_reviews`] are the one statement of the review rule for display, and
//! [`seal`] and [`seal_audit`] apply it to everything a checker reads (the request's
//! JSON, its page, the audit trail): before a checker has decided on the current
//! version, no other checker's decision or comment on that version reaches them; the
//! earlier versions' decisions are history and are always shown. Every change happens under the release lock with the request
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
    /// Approve, reject or return for changes.
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
            .detail("version", r.version)
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

/// Answer a rejected or returned request with a new version pointing at a new job
/// (`release.resubmit`): its requester, still an analyst of the project; audited with
/// the request's bound write (the entry names the version, the new and the earlier job,
/// and who rejected or returned earlier versions).
pub fn resubmit(
    tre: &Tre,
    actor: &Actor,
    project: &str,
    release: &str,
    new: NewRequest,
) -> Result<Request, ActionError> {
    let _one_writer = lock(tre);
    let r = resubmit_inner(tre, actor, project, release, new);
    tre.audited(actor, "release.resubmit", Some(project), r)
}

fn resubmit_inner(
    tre: &Tre,
    actor: &Actor,
    p: &str,
    r: &str,
    b: NewRequest,
) -> Result<Request, ActionError> {
    let analyst = actor.analyst(tre, p)?.0;
    bounded("justification", &b.justification)?;
    bounded("context", &b.context)?;
    let id = Id::parse("release", r)?;
    let job = Id::parse("job", &b.job)?;
    let current = release::load(&tre.ws, &analyst.project, &id)?;
    let rec = job::load(&tre.ws, &analyst.project, &job)?;
    let next = release::resubmit(
        &tre.ws,
        &analyst.policy,
        &current,
        &rec,
        analyst.user(),
        &b.justification,
        &b.context,
        tre.auditor.clock().now(),
    )?;
    let earlier: Vec<String> = next
        .earlier_refusals()
        .iter()
        .map(|(v, x)| format!("v{v}:{}:{:?}", x.checker, x.decision).to_lowercase())
        .collect();
    release::save(
        &tre.ws,
        &tre.auditor,
        EntryDraft::new(analyst.user().as_str(), "release.resubmit")
            .project(next.project.as_str())
            .purpose(next.justification.as_str())
            .detail("release", next.release.as_str())
            .detail("version", next.version)
            .detail("job", next.job.as_str())
            .detail("previous_job", current.job.as_str())
            .detail("earlier_decisions", earlier.join(","))
            .detail("rules_sha256", next.rules_sha256.as_str())
            .input(HashRef::new(
                format!(
                    "projects/{}/results/{}/result.parquet",
                    next.project, next.job
                ),
                next.result_sha256.clone(),
            )),
        &next,
    )?;
    Ok(next)
}

/// A request as one reader may see it: when `sealed`, the current version's reviews
/// were taken out (see [`seal`]).
#[derive(Debug, Clone)]
pub struct Shown {
    /// The request (its current reviews emptied when sealed).
    pub request: Request,
    /// The reader is a checker who has not decided on the open current version.
    pub sealed: bool,
}

/// The request as `member` may see it: a checker who has not yet decided on the open
/// current version gets it without that version's reviews (the earlier versions'
/// decisions are history and stay).
pub fn seal(member: &Member, mut req: Request) -> Shown {
    let sealed = !shows_reviews(member, &req);
    if sealed {
        req.reviews.clear();
    }
    Shown {
        request: req,
        sealed,
    }
}

/// Read a request (`release.status`): any member of the project; sealed for a checker
/// who has not decided yet ([`seal`]).
pub fn show(tre: &Tre, actor: &Actor, project: &str, release: &str) -> Result<Shown, ActionError> {
    let r = (|| {
        let m = actor.member(tre, project)?;
        let r = Id::parse("release", release)?;
        let req = release::load(&tre.ws, &m.project, &r)?;
        Ok(seal(&m, req))
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
) -> Result<Shown, ActionError> {
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
) -> Result<Shown, ActionError> {
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
            .detail("version", req.version)
            .detail("decision", format!("{:?}", b.decision).to_lowercase())
            .detail("comment", b.comment.as_str())
            .detail("approvals", req.approvals().len()),
        &req,
    )?;
    if let Some(e) = prepared {
        export_prepared(tre, &checker, &mut req, &e)?;
    }
    Ok(seal(&checker, req))
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
) -> Result<Shown, ActionError> {
    let _one_writer = lock(tre);
    let r = export_inner(tre, actor, project, release);
    tre.audited(actor, "release.export", Some(project), r)
}

fn export_inner(tre: &Tre, actor: &Actor, p: &str, r: &str) -> Result<Shown, ActionError> {
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
        return Ok(seal(&checker, req));
    }
    let e = prepare(tre, &checker, &req)?;
    export_prepared(tre, &checker, &mut req, &e)?;
    Ok(seal(&checker, req))
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

/// Whether `member` may see the other checkers' decisions on the current version of
/// `req`: each review is independent, so a checker sees them only once they decided or
/// the version closed (rejected, returned, exporting or exported).
pub fn shows_reviews(member: &Member, req: &Request) -> bool {
    !member.is_checker() || decided(member, req) || !req.is_open()
}

/// The actions whose audit entries carry a checker's decision on a request (or, for an
/// export, who approved it).
const DECISION_ACTIONS: &[&str] = &[
    "release.review",
    "release.export.start",
    "release.export",
    "release.recover",
];

/// Take out of `entries` every entry that would show `actor` another checker's decision
/// on a request version they have not decided yet ([`shows_reviews`]): that version's
/// `release.review` entries by others (refusals included) and any export entry of the
/// request while it is open. Entries of earlier versions (their `version` detail, 1 when
/// absent) stay: they are history.
pub fn seal_audit(
    tre: &Tre,
    actor: &Actor,
    entries: Vec<crate::audit::AuditEntry>,
) -> Vec<crate::audit::AuditEntry> {
    use std::collections::BTreeMap;
    // Per project: the requests whose open version the actor may not see decided yet,
    // with that version (read once per project).
    let mut sealed: BTreeMap<String, Vec<(String, u32)>> = BTreeMap::new();
    entries
        .into_iter()
        .filter(|e| {
            if !DECISION_ACTIONS.contains(&e.action.as_str()) || e.actor == actor.user().as_str() {
                return true;
            }
            let Some(project) = e.project.clone() else {
                return true;
            };
            let open = sealed.entry(project.clone()).or_insert_with(|| {
                let Ok(member) = actor.member(tre, &project) else {
                    return Vec::new();
                };
                reads::releases(&tre.ws, &member.project)
                    .into_iter()
                    .filter(|r| !shows_reviews(&member, r))
                    .map(|r| (r.release.to_string(), r.version))
                    .collect()
            });
            let named = e.detail.get("release").and_then(|v| v.as_str());
            let text = e.detail.to_string();
            let version = e
                .detail
                .get("version")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(1);
            !open.iter().any(|(release, v)| {
                let mentions = match named {
                    Some(n) => n == release,
                    None => text.contains(release.as_str()),
                };
                mentions && (e.action != "release.review" || version == u64::from(*v))
            })
        })
        .collect()
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

/// Most of the requester's earlier received tables a review page compares with (the
/// newest), beside every exported release of the project. Each is an audited `job.safe`
/// read by the checker, which the `result_reads` alert counts: kept small.
pub const MAX_RECEIVED_COMPARED: usize = 10;

/// An earlier table the checker compares the one under review with.
#[derive(Debug)]
pub struct Earlier {
    /// The exported release it left in, or `None` for a table the requester received
    /// (read as a job's safe table) that was never exported.
    pub request: Option<Request>,
    /// Its job.
    pub job: JobRecord,
    /// Its safe table.
    pub table: SafeCsv,
    /// What the analyst saw of each cell (`cells.json`), when the job wrote one: it
    /// tells the safe table's key columns from its measure columns.
    pub cells: Option<crate::received::ReceivedTable>,
}

/// What a checker compares a request with.
#[derive(Debug)]
pub struct Comparison {
    /// The project's disclosure rules.
    pub rules: crate::disclosure::rules::Rules,
    /// What the analyst saw of each cell of the table under review (`cells.json`).
    pub cells: Option<crate::received::ReceivedTable>,
    /// The project's exported releases, then the requester's other received tables.
    pub earlier: Vec<Earlier>,
    /// Earlier releases not compared because `tre purge` withdrew their result.
    pub withdrawn: Vec<String>,
}

/// A job's `cells.json` (what the analyst saw per cell), if it has a readable one.
fn cells_of(tre: &Tre, project: &Id, job: &Id) -> Option<crate::received::ReceivedTable> {
    crate::received::ReceivedTableOnDisk {
        job: job.to_string(),
        dir: crate::tre::query::job_dir(&tre.ws, project, job),
    }
    .read_table()
    .ok()
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

    /// The reader asked for this release, is still an analyst of the project, and a
    /// checker rejected or returned its current version: they may answer with a new
    /// version ([`resubmit`]).
    pub fn may_resubmit(&self) -> bool {
        self.member.is_analyst()
            && self.request.requester == *self.member.user()
            && self.request.exporting.is_none()
            && matches!(
                self.request.state,
                ReleaseState::Rejected | ReleaseState::Returned
            )
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
    let request = seal(&member, request).request;
    let table = jobs::safe_table(tre, actor, project, request.job.as_str())?;
    let comparison = if member.is_checker() {
        let rules = crate::tre::query::project_rules(&tre.ws, &member.policy)
            .map(|(_, rules, _)| rules)
            .map_err(|e| ActionError::Release(e.into()));
        let rules = tre.audited(actor, "web.release", Some(project), rules)?;
        let (earlier, withdrawn) = earlier(tre, actor, &request)?;
        Some(Comparison {
            rules,
            cells: cells_of(tre, &request.project, &request.job),
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

/// The tables a request is compared with: every exported release of the project (other
/// than `r`), then the requester's other jobs with a safe table (what they already
/// received; the newest [`MAX_RECEIVED_COMPARED`], never one already listed), each with
/// its safe table read through [`jobs::safe_table`] (audited) and its `cells.json`; and,
/// for each exported release whose result `tre purge` has since withdrawn (its table is
/// no longer served), a note saying so instead.
fn earlier(
    tre: &Tre,
    actor: &Actor,
    r: &Request,
) -> Result<(Vec<Earlier>, Vec<String>), ActionError> {
    let mut v = Vec::new();
    let mut withdrawn = Vec::new();
    let mut seen = std::collections::BTreeSet::from([r.job.clone()]);
    for e in reads::releases(&tre.ws, &r.project) {
        if e.release == r.release || e.state != ReleaseState::Exported {
            continue;
        }
        let Ok(rec) = job::load(&tre.ws, &r.project, &e.job) else {
            continue;
        };
        match jobs::safe_table(tre, actor, r.project.as_str(), e.job.as_str()) {
            Ok(table) => {
                seen.insert(e.job.clone());
                v.push(Earlier {
                    cells: cells_of(tre, &r.project, &e.job),
                    request: Some(e),
                    job: rec,
                    table,
                })
            }
            Err(err) if err.class() == super::error::Class::Gone => withdrawn.push(format!(
                "Earlier release {} is not compared: {}",
                e.release,
                err.public_message()
            )),
            Err(err) => return Err(err),
        }
    }
    let received = reads::jobs(&tre.ws, &r.project)
        .into_iter()
        .filter(|j| j.submitter == r.requester && !seen.contains(&j.job))
        .filter(|j| j.outcome.as_ref().is_some_and(|o| o.safe.is_some()))
        .take(MAX_RECEIVED_COMPARED);
    for rec in received {
        // A table withdrawn or changed since is not what the analyst holds now: left out.
        if let Ok(table) = jobs::safe_table(tre, actor, r.project.as_str(), rec.job.as_str()) {
            v.push(Earlier {
                cells: cells_of(tre, &r.project, &rec.job),
                request: None,
                job: rec,
                table,
            });
        }
    }
    Ok((v, withdrawn))
}
