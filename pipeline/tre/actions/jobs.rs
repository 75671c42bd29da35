//! Job actions: submit a job, read its status (through the API or its page) and its
//! safe table.
//!
//! Owns the rules of job results: who may submit (an analyst) and read (an analyst or
//! output checker of the project); every read of a result is audited before it is
//! answered (`job.read` with its report and verdict; `job.safe` with the safe table's
//! hash); a result `tre purge` withdrew is never served (the safe table is refused as
//! gone, the status says only the job, its state and the purge's message; both refusals
//! audited); an output checker sees the private disclosure report and exact run time and
//! memory, anyone else the verdict and those two coarsened ([`Audience`]). Danger: the
//! safe table is served only when its bytes match the recorded sha256; nothing here
//! reads the row-level result.

use chrono::{DateTime, Utc};

use super::Tre;
use super::auth::{Actor, Member};
use super::error::ActionError;
use crate::audit::{EntryDraft, HashRef};
use crate::tre::id::Id;
use crate::tre::job::{self, JobRecord, JobState};
use crate::tre::query::{QueryLimits, job_dir};
use crate::tre::workspace::Role;

/// Longest SQL text accepted.
pub const MAX_SQL_BYTES: usize = 64 * 1024;
/// Longest purpose accepted.
pub const MAX_PURPOSE_CHARS: usize = 2000;
/// The step analysts see peak memory in: 16 MiB.
const COARSE_PEAK_KIB: u64 = 16 * 1024;

/// A job to submit.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// One SQL query.
    pub sql: String,
    /// Why the job is run.
    pub purpose: String,
}

/// A queued job.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// Its id.
    pub job: Id,
    /// Its state (queued).
    pub state: JobState,
}

/// Submit a job (`job.submit`): an analyst of the project; audited, then recorded as
/// queued, then queued.
pub fn submit(
    tre: &Tre,
    actor: &Actor,
    project: &str,
    new: NewJob,
) -> Result<Submitted, ActionError> {
    let r = submit_inner(tre, actor, project, new);
    tre.audited(actor, "job.submit", Some(project), r)
}

fn submit_inner(tre: &Tre, actor: &Actor, p: &str, b: NewJob) -> Result<Submitted, ActionError> {
    let analyst = actor.analyst(tre, p)?.0;
    if b.sql.trim().is_empty() || b.sql.len() > MAX_SQL_BYTES {
        return Err(ActionError::BadField {
            field: "sql",
            problem: "must be one query of at most 64 KiB",
        });
    }
    if b.purpose.trim().chars().count() < 3 || b.purpose.chars().count() > MAX_PURPOSE_CHARS {
        return Err(ActionError::BadField {
            field: "purpose",
            problem: "must say why the job is run (3 to 2000 characters)",
        });
    }
    let job = Id::random("job").map_err(|_| ActionError::BadField {
        field: "job",
        problem: "could not be given an id (the OS random source failed)",
    })?;
    let rec = JobRecord {
        job: job.clone(),
        project: analyst.project.clone(),
        submitter: analyst.user().clone(),
        purpose: b.purpose.clone(),
        sql: b.sql.clone(),
        limits: QueryLimits::for_policy(&analyst.policy),
        state: JobState::Queued,
        reason: None,
        submitted_at: tre.auditor.clock().now(),
        started_at: None,
        finished_at: None,
        outcome: None,
        peak_rss_kib: None,
        failed_while_running: false,
        dataset_version: None,
    };
    job::create(
        &tre.ws,
        &tre.auditor,
        EntryDraft::new(analyst.user().as_str(), "job.submit")
            .project(analyst.project.as_str())
            .purpose(b.purpose.as_str())
            .detail("job", job.as_str())
            .detail("sql_sha256", crate::digest::sha256_hex(b.sql.as_bytes())),
        &rec,
    )?;
    tre.queue.push(rec.project.clone(), job.clone())?;
    Ok(Submitted {
        job,
        state: JobState::Queued,
    })
}

/// A job's record as `audience` may see it: for an analyst, a job that failed while
/// running over the data is only `failed` (see [`JobRecord::for_analyst`]).
pub fn shown_to(rec: &JobRecord, audience: Audience) -> JobRecord {
    match audience {
        Audience::Checker => rec.clone(),
        Audience::Analyst => rec.for_analyst(),
    }
}

/// Who reads a job's status: output checkers see the private disclosure report and the
/// exact run time and memory; everyone else (the analyst) the verdict, and run time and
/// memory coarsened (they depend on the data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// An output checker of the project.
    Checker,
    /// Anyone else with a role in the project.
    Analyst,
}

impl Audience {
    /// The audience of someone with `roles` in the project.
    pub fn of(roles: &[Role]) -> Audience {
        if roles.contains(&Role::Checker) {
            Audience::Checker
        } else {
            Audience::Analyst
        }
    }
}

/// A job's status as its audience may see it: never rows.
#[derive(Debug, Clone)]
pub struct JobView {
    /// The job.
    pub job: Id,
    /// Where it is.
    pub state: JobState,
    /// Why it ended as it did.
    pub reason: Option<String>,
    /// Its safe table may be requested for release.
    pub releasable: bool,
    /// Its result passed the checks without suppression.
    pub passes_as_is: bool,
    /// Who submitted it.
    pub submitter: Id,
    /// When (exact).
    pub submitted_at: String,
    /// When its process started (coarsened for analysts).
    pub started_at: Option<String>,
    /// When it ended (coarsened for analysts).
    pub finished_at: Option<String>,
    /// Peak memory in KiB (coarsened for analysts).
    pub peak_rss_kib: Option<u64>,
    /// The dataset version it ran on (set when it started).
    pub dataset_version: Option<u32>,
    /// What it produced, once it has.
    pub result: Option<ResultView>,
}

/// What a finished job produced, as its audience may see it.
#[derive(Debug, Clone)]
pub struct ResultView {
    /// Rows in the (unshown) result.
    pub rows: u64,
    /// Its columns.
    pub columns: Vec<String>,
    /// The verdict, in words.
    pub verdict: String,
    /// The rules it was checked under.
    pub rules: String,
    /// The private disclosure report: output checkers only.
    pub report: Option<String>,
}

/// Whether a job's safe table may be requested for release (and so is shown).
pub fn releasable(rec: &JobRecord) -> bool {
    rec.outcome
        .as_ref()
        .is_some_and(|o| o.releasable_after_apply && o.safe.is_some())
}

/// `rec` as `audience` may see it.
pub fn view(rec: &JobRecord, audience: Audience) -> JobView {
    let checker = audience == Audience::Checker;
    let shown = shown_to(rec, audience);
    let time = |t: &DateTime<Utc>| {
        if checker {
            crate::tre::stamp::text(t)
        } else {
            t.format("%Y-%m-%dT%H:%M:00Z").to_string()
        }
    };
    let o = rec.outcome.as_ref();
    JobView {
        job: rec.job.clone(),
        state: shown.state,
        reason: shown.reason,
        releasable: releasable(rec),
        passes_as_is: o.is_some_and(|o| o.releasable),
        submitter: rec.submitter.clone(),
        submitted_at: crate::tre::stamp::text(&rec.submitted_at),
        started_at: rec.started_at.as_ref().map(time),
        finished_at: rec.finished_at.as_ref().map(time),
        peak_rss_kib: rec.peak_rss_kib.map(|k| {
            if checker {
                k
            } else {
                k.div_ceil(COARSE_PEAK_KIB) * COARSE_PEAK_KIB
            }
        }),
        dataset_version: rec.dataset_version,
        result: o.map(|o| ResultView {
            rows: o.rows,
            columns: o.columns.clone(),
            verdict: if checker {
                o.verdict.for_checker()
            } else {
                o.verdict.for_analyst()
            },
            rules: o.rules.to_string(),
            report: o.report.clone().filter(|_| checker),
        }),
    }
}

/// A read job: its result withdrawn, or shown to its audience.
#[derive(Debug)]
pub enum JobRead {
    /// `tre purge` withdrew its result: only the job's own facts and this message.
    Withdrawn {
        /// The job's record (its result must not be shown).
        record: Box<JobRecord>,
        /// The purge's message (its id, when, and "re-run the job").
        message: String,
    },
    /// Readable (boxed: it holds the project's policy).
    Shown(Box<ShownJob>),
}

/// A job its reader may see.
#[derive(Debug)]
pub struct ShownJob {
    /// The reader's standing in the project.
    pub member: Member,
    /// The job's record.
    pub record: JobRecord,
    /// What the reader sees of it.
    pub view: JobView,
}

/// Read a job's status (`job.status`): a member of the project; a finished job's read
/// is audited (`job.read`, `read: status`) before it is answered, a withdrawn one as
/// refused. Polls of a queued or running job carry no result and are not audited, so a
/// client waiting for its job does not fill the log.
pub fn status(tre: &Tre, actor: &Actor, project: &str, job: &str) -> Result<JobRead, ActionError> {
    let r = read(tre, actor, project, job, "status");
    tre.audited(actor, "job.status", Some(project), r)
}

/// Read a job for its page (`web.job`): like [`status`], but every read is audited
/// (`read: page`).
pub fn page(tre: &Tre, actor: &Actor, project: &str, job: &str) -> Result<JobRead, ActionError> {
    let r = read(tre, actor, project, job, "page");
    tre.audited(actor, "web.job", Some(project), r)
}

fn load(tre: &Tre, actor: &Actor, p: &str, job: &str) -> Result<(Member, JobRecord), ActionError> {
    let m = actor.member(tre, p)?;
    let job = Id::parse("job", job)?;
    let rec = job::load(&tre.ws, &m.project, &job)?;
    Ok((m, rec))
}

fn read(tre: &Tre, actor: &Actor, p: &str, job: &str, what: &str) -> Result<JobRead, ActionError> {
    let (member, record) = load(tre, actor, p, job)?;
    let entry = EntryDraft::new(actor.user().as_str(), "job.read")
        .project(record.project.as_str())
        .detail("job", record.job.as_str())
        .detail("read", what)
        .detail("state", record.state.name());
    if let Some(message) = withdrawn(tre, &record)? {
        tre.record(entry.refused(message.as_str()))?;
        return Ok(JobRead::Withdrawn {
            record: Box::new(record),
            message,
        });
    }
    if what == "page" || record.state.is_final() {
        tre.record(entry)?;
    }
    let audience = Audience::of(&member.roles);
    let view = view(&record, audience);
    Ok(JobRead::Shown(Box::new(ShownJob {
        record: shown_to(&record, audience),
        member,
        view,
    })))
}

/// Why the result of `rec` may not be served, if `tre purge` withdrew it (see
/// [`crate::tre::purge::result_withdrawn`]); an unreadable withdrawal record refuses
/// too (fail closed).
fn withdrawn(tre: &Tre, rec: &JobRecord) -> Result<Option<String>, ActionError> {
    crate::tre::purge::result_withdrawn(&tre.ws, &rec.project, &rec.job).map_err(|e| match e {
        // A record that is not the one the purge sealed (deleted, edited, copied): the
        // workspace's own refusal, naming the file, like every other sealed record.
        crate::tre::purge::PurgeError::Workspace(w) => ActionError::Workspace(w),
        e => ActionError::WithdrawalUnreadable {
            job: rec.job.clone(),
            problem: e.to_string(),
        },
    })
}

/// A job's safe table (hidden cells empty), as CSV bytes checked against its recorded
/// sha256.
#[derive(Debug, Clone)]
pub struct SafeCsv {
    /// The CSV.
    pub bytes: Vec<u8>,
    /// Its sha256 (hex).
    pub sha256: String,
}

/// Read a job's safe table (`job.safe`): a member of the project; refused as gone when
/// `tre purge` withdrew it, and when it has none or its bytes changed on disk; audited
/// with its hash before it is answered.
pub fn safe_table(
    tre: &Tre,
    actor: &Actor,
    project: &str,
    job: &str,
) -> Result<SafeCsv, ActionError> {
    let r = safe_inner(tre, actor, project, job);
    tre.audited(actor, "job.safe", Some(project), r)
}

fn safe_inner(tre: &Tre, actor: &Actor, p: &str, job: &str) -> Result<SafeCsv, ActionError> {
    let (_, rec) = load(tre, actor, p, job)?;
    if let Some(message) = withdrawn(tre, &rec)? {
        return Err(ActionError::Withdrawn {
            job: rec.job.clone(),
            message,
        });
    }
    let no = |why| ActionError::NoSafeTable {
        job: rec.job.clone(),
        why,
    };
    let o = rec
        .outcome
        .as_ref()
        .ok_or_else(|| no("the job has not succeeded"))?;
    let safe = o
        .safe
        .as_ref()
        .ok_or_else(|| no("its result is not an aggregate table that can be made safe"))?;
    let path = job_dir(&tre.ws, &rec.project, &rec.job).join("safe.csv");
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut crate::tre::workspace::open_nofollow(&path)?,
        &mut bytes,
    )
    .map_err(|source| crate::tre::workspace::WorkspaceError::Io { path, source })?;
    let sha = crate::digest::sha256_hex(&bytes);
    if sha != safe.sha256 {
        return Err(no(
            "its safe table was changed on disk; it will not be shown",
        ));
    }
    tre.record(
        EntryDraft::new(actor.user().as_str(), "job.safe")
            .project(rec.project.as_str())
            .detail("job", rec.job.as_str())
            .output(HashRef::new(
                format!("projects/{}/results/{}/safe.csv", rec.project, rec.job),
                sha.clone(),
            )),
    )?;
    Ok(SafeCsv { bytes, sha256: sha })
}
