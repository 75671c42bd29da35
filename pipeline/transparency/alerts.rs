//! Breach detection: rules over the audit stream, each alert raised once as an audit
//! entry, acknowledged by an auditor with a note.
//!
//! Owns [`evaluate`] (the rules of [`super::rules::AlertRules`] over typed audit entries
//! and the integrity findings of [`integrity_findings`]), [`check`] (evaluate, then
//! append an `alert.raised` entry for each alert the log does not hold yet), [`states`]
//! (the alerts and their acknowledgements, read back from the log), [`ack`] (an
//! `alert.ack` entry) and [`Watcher`] (the background thread of `tre serve` that checks
//! after every new entry and on a schedule). An alert's id is the hash of its rule, its
//! subject and the first entry of its evidence, so evaluating again, on a schedule, from
//! another process or after a restart never raises the same alert twice: the state is
//! the log. Danger: alerts name users and projects, never patients; their entries are
//! ordinary audit entries (sanitised), and the rules never look at an entry's free text.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::TransparencyError;
use super::rules::{AlertRules, Burst};
use crate::audit::{AuditEntry, EntryDraft, Outcome};
use crate::digest::sha256_hex;
use crate::schema::SchemaSet;
use crate::tre::auditor::Auditor;
use crate::tre::workspace::Workspace;

/// The action of an alert's entry.
pub const RAISED: &str = "alert.raised";
/// The action of an acknowledgement's entry.
pub const ACK: &str = "alert.ack";
/// The actor of `alert.raised` entries.
pub const ALERT_ACTOR: &str = "tre-alerts";

/// The rules, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// A burst of failed sign-ins.
    FailedSignIns,
    /// Many refused jobs by one user.
    RefusedJobs,
    /// Many jobs with the same SQL by one user.
    RepeatedJobs,
    /// Many reads of results by one user.
    ResultReads,
    /// An action on a project outside its approved dates.
    OutsideProjectDates,
    /// The audit log fails verification.
    AuditVerification,
    /// A workspace record changed outside the service.
    RecordChanged,
}

impl Rule {
    /// The rule's name.
    pub fn name(self) -> &'static str {
        match self {
            Rule::FailedSignIns => "failed_sign_ins",
            Rule::RefusedJobs => "refused_jobs",
            Rule::RepeatedJobs => "repeated_jobs",
            Rule::ResultReads => "result_reads",
            Rule::OutsideProjectDates => "outside_project_dates",
            Rule::AuditVerification => "audit_verification",
            Rule::RecordChanged => "record_changed",
        }
    }
}

/// An alert the rules found (raised or not yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Candidate {
    /// `alert-<16 hex>`, from the rule, subject and first evidence.
    pub id: String,
    /// The rule.
    pub rule: Rule,
    /// The project concerned, if any.
    pub project: Option<String>,
    /// Whom or what it is about: a user, `service`, a record path.
    pub subject: String,
    /// What happened, in words.
    pub summary: String,
    /// The audit entries (`seq`) it rests on.
    pub evidence: Vec<u64>,
}

/// An alert as the log holds it, with its acknowledgements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertState {
    /// Its id.
    pub id: String,
    /// The rule's name.
    pub rule: String,
    /// The project, if any.
    pub project: Option<String>,
    /// Whom or what it is about.
    pub subject: String,
    /// What happened.
    pub summary: String,
    /// When raised.
    pub raised: String,
    /// The `alert.raised` entry.
    pub raised_seq: u64,
    /// The evidence entries.
    pub evidence: Vec<u64>,
    /// Acknowledgements, in order.
    pub acks: Vec<Ack>,
}

/// An acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    /// Who.
    pub by: String,
    /// When.
    pub at: String,
    /// What they did about it.
    pub note: String,
    /// The `alert.ack` entry.
    pub seq: u64,
}

/// Something wrong with the workspace's integrity, found outside the log's entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntegrityFinding {
    /// [`Rule::AuditVerification`] or [`Rule::RecordChanged`].
    pub rule: Rule,
    /// What it is about (the log, a record path).
    pub subject: String,
    /// What identifies this state of it (a line and kind, the file's hash), so the same
    /// finding is one alert and a new change is another.
    pub key: String,
    /// In words.
    pub summary: String,
}

fn alert_id(rule: Rule, subject: &str, key: &str) -> String {
    let h = sha256_hex(format!("{}\n{subject}\n{key}", rule.name()).as_bytes());
    format!("alert-{}", &h[..16])
}

fn time_of(e: &AuditEntry) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(&e.time)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn detail_str<'a>(e: &'a AuditEntry, key: &str) -> Option<&'a str> {
    e.detail.get(key).and_then(Value::as_str)
}

/// Sliding windows per subject: an alert when the weights within the window reach the
/// threshold; the window is then emptied, so the next alert needs as many new entries.
struct Windows {
    rule: Rule,
    burst: Burst,
    open: BTreeMap<String, VecDeque<(u64, DateTime<Utc>, u64)>>,
    out: Vec<Candidate>,
}

impl Windows {
    fn new(rule: Rule, burst: Burst) -> Self {
        Windows {
            rule,
            burst,
            open: BTreeMap::new(),
            out: Vec::new(),
        }
    }

    fn add(
        &mut self,
        subject: &str,
        project: Option<&str>,
        e: &AuditEntry,
        weight: u64,
        what: &str,
    ) {
        let Some(t) = time_of(e) else { return };
        let window = chrono::Duration::minutes(self.burst.window_minutes as i64);
        let q = self.open.entry(subject.to_string()).or_default();
        q.push_back((e.seq, t, weight));
        while q.front().is_some_and(|(_, ft, _)| t - *ft > window) {
            q.pop_front();
        }
        let total: u64 = q.iter().map(|(_, _, w)| w).sum();
        if total >= self.burst.count {
            let evidence: Vec<u64> = q.iter().map(|(s, _, _)| *s).collect();
            let first = evidence[0];
            self.out.push(Candidate {
                id: alert_id(self.rule, subject, &first.to_string()),
                rule: self.rule,
                project: project.map(str::to_string),
                subject: subject.to_string(),
                summary: format!(
                    "{total} {what} within {} minutes (threshold {})",
                    self.burst.window_minutes, self.burst.count
                ),
                evidence,
            });
            q.clear();
        }
    }
}

/// The alerts the rules find in `entries` (log order), given each project's approved
/// and end dates, the integrity findings, and `blocked(project, job)`: whether a job
/// that ran was blocked by the checks (row-level or identifying output, which can never
/// be released: its job record says so). Alert entries themselves are never evidence.
pub fn evaluate(
    entries: &[AuditEntry],
    rules: &AlertRules,
    dates: &BTreeMap<String, (NaiveDate, NaiveDate)>,
    integrity: &[IntegrityFinding],
    blocked: &mut dyn FnMut(&str, &str) -> bool,
) -> Vec<Candidate> {
    let mut sign_ins = Windows::new(Rule::FailedSignIns, rules.failed_sign_ins);
    let mut refused = Windows::new(Rule::RefusedJobs, rules.refused_jobs);
    let mut repeated = Windows::new(Rule::RepeatedJobs, rules.repeated_jobs);
    let mut reads = Windows::new(Rule::ResultReads, rules.result_reads);
    let mut outside: BTreeMap<(String, NaiveDate), Vec<u64>> = BTreeMap::new();
    for e in entries {
        if e.action.starts_with("alert.") {
            continue;
        }
        let failed = e.outcome != Outcome::Ok;
        match e.action.as_str() {
            "auth" | "web.sign_in" if failed => {
                sign_ins.add("service", None, e, 1, "failed sign-ins");
            }
            "auth.failed" => {
                let n = e.detail.get("count").and_then(Value::as_u64).unwrap_or(1);
                sign_ins.add("service", None, e, n.max(1), "failed sign-ins");
            }
            // A job refused at submission (lineage: identifiers, differencing) or ended
            // by the checks or a limit.
            "job.run" if failed => {
                refused.add(&e.actor, e.project.as_deref(), e, 1, "refused jobs");
            }
            "job.run" => {
                if let (Some(p), Some(j)) = (e.project.as_deref(), detail_str(e, "job"))
                    && blocked(p, j)
                {
                    refused.add(&e.actor, Some(p), e, 1, "refused jobs");
                }
            }
            "job.submit" if e.outcome == Outcome::Refused => {
                refused.add(&e.actor, e.project.as_deref(), e, 1, "refused jobs");
            }
            _ => {}
        }
        if e.action == "job.submit"
            && e.outcome == Outcome::Ok
            && let Some(sql) = detail_str(e, "sql_sha256")
        {
            let subject = format!("{} sql {}", e.actor, &sql[..sql.len().min(12)]);
            repeated.add(
                &subject,
                e.project.as_deref(),
                e,
                1,
                "jobs with the same SQL",
            );
        }
        // Reads of a result: its safe table, or a finished job's status and report (a
        // poll while the job is queued or running shows no result).
        let result_read = e.action == "job.safe"
            || (e.action == "job.read" && detail_str(e, "state") == Some("succeeded"));
        if result_read {
            reads.add(&e.actor, e.project.as_deref(), e, 1, "reads of results");
        }
        if rules.outside_project_dates
            && (e.action.starts_with("job.") || e.action.starts_with("release."))
            && e.actor != "service"
            && let (Some(p), Some(t)) = (&e.project, time_of(e))
            && let Some((from, to)) = dates.get(p)
        {
            let day = t.date_naive();
            if day < *from || day > *to {
                outside.entry((p.clone(), day)).or_default().push(e.seq);
            }
        }
    }
    let mut out = Vec::new();
    for w in [sign_ins, refused, repeated, reads] {
        out.extend(w.out);
    }
    for ((project, day), evidence) in outside {
        let (from, to) = dates[&project];
        out.push(Candidate {
            id: alert_id(Rule::OutsideProjectDates, &project, &day.to_string()),
            rule: Rule::OutsideProjectDates,
            project: Some(project.clone()),
            subject: project,
            summary: format!(
                "{} actions on {day}, outside the project's approval ({from} to {to})",
                evidence.len()
            ),
            evidence,
        });
    }
    if rules.integrity {
        for f in integrity {
            out.push(Candidate {
                id: alert_id(f.rule, &f.subject, &f.key),
                rule: f.rule,
                project: None,
                subject: f.subject.clone(),
                summary: f.summary.clone(),
                evidence: Vec::new(),
            });
        }
    }
    out
}

/// The integrity of the workspace now: the audit log's verification, and every record
/// the log says the service wrote, read back through its seal and audited hash.
pub fn integrity_findings(ws: &Workspace) -> Result<Vec<IntegrityFinding>, TransparencyError> {
    let mut out = Vec::new();
    let log = crate::audit::workspace_log_path(ws.root());
    // One read of the log for the chain and the signed checkpoints, where there are any.
    let anchored = crate::tre::auditor::anchored_report(ws, &[]);
    let own;
    let report = match &anchored {
        Ok(Some(r)) => &r.chain,
        _ => {
            own = crate::audit::verify(&log)?;
            &own
        }
    };
    if let Some(t) = &report.problem {
        out.push(IntegrityFinding {
            rule: Rule::AuditVerification,
            subject: "audit log".into(),
            key: format!("{:?} line {}", t.kind, t.line),
            summary: format!("the audit log fails verification: {t}"),
        });
    }
    // The signed checkpoints: a log cut, recomputed or deleted since one was written.
    match anchored.map(|r| r.as_ref().and_then(crate::tre::auditor::anchor_finding)) {
        Ok(None) => {}
        Ok(Some(finding)) => out.push(IntegrityFinding {
            rule: Rule::AuditVerification,
            subject: "audit checkpoints".into(),
            key: sha256_hex(finding.as_bytes()),
            summary: format!("the audit log no longer matches its signed checkpoints: {finding}"),
        }),
        Err(e) => out.push(IntegrityFinding {
            rule: Rule::AuditVerification,
            subject: "audit checkpoints".into(),
            key: sha256_hex(e.to_string().as_bytes()),
            summary: format!("the audit checkpoints could not be verified: {e}"),
        }),
    }
    out.extend(dataset_findings(ws)?);
    for rel in ws.audited_records()? {
        let path = ws.root().join(&rel);
        if let Err(e) = ws.read_record_bytes(&path) {
            let now = crate::digest::sha256_file(&path)
                .map(|(h, _)| h)
                .unwrap_or_else(|_| "missing".into());
            out.push(IntegrityFinding {
                rule: Rule::RecordChanged,
                subject: rel.clone(),
                key: now,
                summary: format!("workspace record {rel} was changed outside the service: {e}"),
            });
        }
    }
    Ok(out)
}

/// Every installed dataset file (of every version held) re-hashed against the server's
/// sealed dataset record (the hashes verified at install, and after each purge): a file
/// changed, replaced or removed outside the
/// service is a [`Rule::RecordChanged`] finding keyed by its hash now, so each new state
/// is one alert. Reads every dataset file: run on the schedule, not per entry.
fn dataset_findings(ws: &Workspace) -> Result<Vec<IntegrityFinding>, TransparencyError> {
    let mut out = Vec::new();
    for project in ws.projects()? {
        if !ws.dataset_installed(project.as_str()) {
            continue;
        }
        // A dataset record that no longer opens is reported by the record walk.
        let Ok(rec) = ws.dataset(&project) else {
            continue;
        };
        // The current version and every earlier one still held.
        let versions = std::iter::once((rec.version, &rec.tables))
            .chain(rec.earlier.iter().map(|v| (v.version, &v.tables)));
        for (version, t) in versions.flat_map(|(v, ts)| ts.iter().map(move |t| (v, t))) {
            let dir = ws.version_dir(&project, version);
            let path = dir.join(t.file.as_str());
            let now = match crate::tre::workspace::open_nofollow(&path)
                .ok()
                .and_then(|f| crate::digest::sha256_reader(f).ok())
            {
                Some((sha, _)) if sha == t.sha256 => continue,
                Some((sha, _)) => sha,
                None => "missing or not a regular file".to_string(),
            };
            let rel = ws
                .rel(&path)
                .unwrap_or_else(|_| format!("projects/{project}/data/{}", t.file));
            out.push(IntegrityFinding {
                rule: Rule::RecordChanged,
                subject: rel.clone(),
                summary: format!(
                    "dataset file {rel} (table {}) was changed outside the service: its sha256 is not the one recorded when it was installed",
                    t.name
                ),
                key: now,
            });
        }
    }
    Ok(out)
}

/// Refused with [`TransparencyError::Tampered`] (the alert itself) when the workspace's
/// audit log fails verification or no longer matches a signed checkpoint: checked before
/// anything opens the log for appending, which it would refuse.
pub fn audit_alarm(ws: &Workspace) -> Result<(), TransparencyError> {
    let log = crate::audit::workspace_log_path(ws.root());
    if !log.exists() {
        return Ok(());
    }
    // One read of the log for the chain and the signed checkpoints, where there are any.
    let anchored = crate::tre::auditor::anchored_report(ws, &[]);
    let own;
    let report = match &anchored {
        Ok(Some(r)) => &r.chain,
        _ => {
            own = crate::audit::verify(&log)?;
            &own
        }
    };
    if let Some(t) = &report.problem {
        let key = format!("{:?} line {}", t.kind, t.line);
        return Err(TransparencyError::Tampered {
            alert: alert_id(Rule::AuditVerification, "audit log", &key),
            summary: format!("the audit log fails verification: {t}"),
        });
    }
    // A log that no longer matches a signed checkpoint is refused by the auditor too.
    if let Some(finding) = anchored?
        .as_ref()
        .and_then(crate::tre::auditor::anchor_finding)
    {
        return Err(TransparencyError::Tampered {
            alert: alert_id(
                Rule::AuditVerification,
                "audit checkpoints",
                &sha256_hex(finding.as_bytes()),
            ),
            summary: format!("the audit log no longer matches its signed checkpoints: {finding}"),
        });
    }
    Ok(())
}

/// The alerts the log holds, with their acknowledgements, in the order raised.
pub fn states(entries: &[AuditEntry]) -> Vec<AlertState> {
    let mut out: Vec<AlertState> = Vec::new();
    let mut at: BTreeMap<String, usize> = BTreeMap::new();
    for e in entries {
        let Some(id) = detail_str(e, "alert") else {
            continue;
        };
        if e.action == RAISED && e.outcome == Outcome::Ok && !at.contains_key(id) {
            at.insert(id.to_string(), out.len());
            out.push(AlertState {
                id: id.to_string(),
                rule: detail_str(e, "rule").unwrap_or("").to_string(),
                project: e.project.clone(),
                subject: detail_str(e, "subject").unwrap_or("").to_string(),
                summary: detail_str(e, "summary").unwrap_or("").to_string(),
                raised: e.time.clone(),
                raised_seq: e.seq,
                evidence: e
                    .detail
                    .get("evidence")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_u64).collect())
                    .unwrap_or_default(),
                acks: Vec::new(),
            });
        } else if e.action == ACK
            && e.outcome == Outcome::Ok
            && let Some(&i) = at.get(id)
        {
            out[i].acks.push(Ack {
                by: e.actor.clone(),
                at: e.time.clone(),
                note: detail_str(e, "note").unwrap_or("").to_string(),
                seq: e.seq,
            });
        }
    }
    out
}

/// Each project's approved and end dates, from its installed policy.
pub fn project_dates(
    ws: &Workspace,
    schemas: &SchemaSet,
) -> Result<BTreeMap<String, (NaiveDate, NaiveDate)>, TransparencyError> {
    let mut out = BTreeMap::new();
    for id in ws.projects()? {
        let policy = ws.project(&id, schemas)?;
        if let Some(f) = &policy.project.public {
            out.insert(id.to_string(), (f.approved, f.ends));
        }
    }
    Ok(out)
}

/// One evaluation at a time in this process (the watcher and a request).
static CHECKING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Evaluate the rules over the whole log (and, with `integrity`, the workspace's
/// integrity), and raise every alert the log does not hold yet. Returns those raised.
pub fn check(
    ws: &Workspace,
    schemas: &SchemaSet,
    auditor: &Auditor,
    rules: &AlertRules,
    integrity: bool,
) -> Result<Vec<Candidate>, TransparencyError> {
    check_cached(
        &mut EntryCache::default(),
        ws,
        schemas,
        auditor,
        rules,
        integrity,
    )
}

/// The audit log's entries as read so far, brought up to date by reading only what was
/// appended since (the watcher keeps one, so a check after each new entry does not
/// re-read the whole log). A log replaced, cut or rewritten is read again from its start.
#[derive(Debug, Default)]
pub struct EntryCache {
    tail: crate::audit::tail::LogTail,
    entries: Vec<AuditEntry>,
}

impl EntryCache {
    /// Read what was appended, and hand back every entry.
    pub fn refresh(&mut self, ws: &Workspace) -> Result<&[AuditEntry], TransparencyError> {
        let log = crate::audit::workspace_log_path(ws.root());
        let EntryCache { tail, entries } = self;
        tail.read_new(&log, |e| match e {
            crate::audit::tail::TailEvent::Restart => entries.clear(),
            crate::audit::tail::TailEvent::Line(line) => {
                if let Ok(entry) = serde_json::from_slice(line) {
                    entries.push(entry);
                }
            }
        })
        .map_err(|source| crate::audit::AuditError::Io {
            op: "read",
            path: log.clone(),
            source,
        })?;
        Ok(&self.entries)
    }
}

/// [`check`] with the entries from `cache`, brought up to date first.
pub fn check_cached(
    cache: &mut EntryCache,
    ws: &Workspace,
    schemas: &SchemaSet,
    auditor: &Auditor,
    rules: &AlertRules,
    integrity: bool,
) -> Result<Vec<Candidate>, TransparencyError> {
    let _one = CHECKING.lock().unwrap_or_else(|p| p.into_inner());
    let findings = if integrity && rules.integrity {
        integrity_findings(ws)?
    } else {
        Vec::new()
    };
    let entries = cache.refresh(ws)?;
    let known: BTreeSet<String> = states(entries).into_iter().map(|a| a.id).collect();
    let dates = project_dates(ws, schemas)?;
    let mut raised = Vec::new();
    let mut blocked = |p: &str, j: &str| job_blocked(ws, p, j);
    for c in evaluate(entries, rules, &dates, &findings, &mut blocked) {
        if known.contains(&c.id) || raised.iter().any(|r: &Candidate| r.id == c.id) {
            continue;
        }
        let mut d = EntryDraft::new(ALERT_ACTOR, RAISED)
            .detail("alert", c.id.as_str())
            .detail("rule", c.rule.name())
            .detail("subject", c.subject.as_str())
            .detail("summary", c.summary.as_str())
            .detail("evidence", c.evidence.clone());
        if let Some(p) = &c.project {
            d = d.project(p.as_str());
        }
        match auditor.record(d) {
            Ok(_) => raised.push(c),
            // A log that fails verification refuses every new entry (fail closed), so
            // this alert cannot be recorded in it: it is the error itself.
            Err(_) if c.rule == Rule::AuditVerification => {
                return Err(TransparencyError::Tampered {
                    alert: c.id,
                    summary: c.summary,
                });
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(raised)
}

/// Whether a finished job was blocked by the checks (its result can never be released,
/// not even its safe version), from its sealed record; remembered once known.
pub(crate) fn job_blocked(ws: &Workspace, project: &str, job: &str) -> bool {
    static KNOWN: std::sync::Mutex<BTreeMap<String, bool>> = std::sync::Mutex::new(BTreeMap::new());
    let key = format!("{}/{project}/{job}", ws.root().display());
    if let Some(b) = KNOWN.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return *b;
    }
    let (Ok(p), Ok(j)) = (
        crate::tre::id::Id::parse("project", project),
        crate::tre::id::Id::parse("job", job),
    ) else {
        return false;
    };
    let Ok(rec) = crate::tre::job::load(ws, &p, &j) else {
        return false;
    };
    let Some(o) = &rec.outcome else {
        return false;
    };
    let b = !o.releasable && !o.releasable_after_apply;
    KNOWN
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, b);
    b
}

/// Every entry of the workspace's log, in order.
pub fn entries_of(ws: &Workspace) -> Result<Vec<AuditEntry>, TransparencyError> {
    let log = crate::audit::workspace_log_path(ws.root());
    if !log.exists() {
        return Ok(Vec::new());
    }
    Ok(crate::audit::read_entries(&log)?
        .into_iter()
        .map(|(_, e)| e)
        .collect())
}

/// Acknowledge alert `id` as `by`, with `note` (what was done); audited as `alert.ack`.
pub fn ack(
    auditor: &Auditor,
    entries: &[AuditEntry],
    id: &str,
    by: &str,
    note: &str,
) -> Result<AlertState, TransparencyError> {
    let Some(mut alert) = states(entries).into_iter().find(|a| a.id == id) else {
        return Err(TransparencyError::NoAlert(id.to_string()));
    };
    if note.trim().chars().count() < 3 {
        return Err(TransparencyError::NoNote);
    }
    let mut d = EntryDraft::new(by, ACK)
        .detail("alert", alert.id.as_str())
        .detail("note", note.trim());
    if let Some(p) = &alert.project {
        d = d.project(p.as_str());
    }
    let e = auditor.record(d)?;
    alert.acks.push(Ack {
        by: e.actor.clone(),
        at: e.time.clone(),
        note: detail_str(&e, "note").unwrap_or("").to_string(),
        seq: e.seq,
    });
    Ok(alert)
}

/// The background checker of `tre serve`: after every new audit entry (polled each
/// second) the entry rules, and every `schedule_seconds` the integrity checks too.
#[derive(Debug)]
pub struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    /// Start watching. The rules come from `WS/alert-rules.toml` or the defaults; bad
    /// rules are refused here, so the server does not start without its alerts.
    pub fn start(ws: Workspace, auditor: Auditor) -> Result<Watcher, TransparencyError> {
        let rules = AlertRules::for_workspace(ws.root())?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let schemas = SchemaSet::builtin();
            let every = Duration::from_secs(rules.schedule_seconds);
            let mut last_seq = None;
            let mut last_full: Option<Instant> = None;
            let mut cache = EntryCache::default();
            while !flag.load(Ordering::Relaxed) {
                let seq = auditor.head().ok().flatten().map(|h| h.seq);
                let full = last_full.is_none_or(|t| t.elapsed() >= every);
                if full || seq != last_seq {
                    if let Err(e) = check_cached(&mut cache, &ws, &schemas, &auditor, &rules, full)
                    {
                        eprintln!("tre serve: alerts could not be evaluated: {e}");
                    }
                    if full {
                        last_full = Some(Instant::now());
                    }
                    last_seq = auditor.head().ok().flatten().map(|h| h.seq);
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        Ok(Watcher {
            stop,
            thread: Some(thread),
        })
    }

    /// Stop and wait for the thread.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, secs: i64, actor: &str, action: &str, outcome: Outcome) -> AuditEntry {
        let t = DateTime::parse_from_rfc3339("2026-06-01T10:00:00Z").expect("valid")
            + chrono::Duration::seconds(secs);
        AuditEntry {
            seq,
            time: t.with_timezone(&Utc).to_rfc3339(),
            actor: actor.into(),
            action: action.into(),
            outcome,
            project: Some("p".into()),
            purpose: None,
            detail: serde_json::json!({"sql_sha256": "ab".repeat(32)}),
            inputs: vec![],
            outputs: vec![],
            prev: String::new(),
            hash: String::new(),
        }
    }

    #[test]
    fn a_burst_raises_once_and_a_slow_trickle_never() {
        let rules = AlertRules::default();
        let burst: Vec<_> = (1..=12)
            .map(|i| entry(i, i as i64, "anonymous", "auth", Outcome::Refused))
            .collect();
        let c = evaluate(&burst, &rules, &BTreeMap::new(), &[], &mut |_, _| false);
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c[0].rule, Rule::FailedSignIns);
        assert_eq!(c[0].evidence, (1..=10).collect::<Vec<_>>());
        // The same log evaluated again gives the same id.
        assert_eq!(
            evaluate(&burst, &rules, &BTreeMap::new(), &[], &mut |_, _| false)[0].id,
            c[0].id
        );
        let slow: Vec<_> = (1..=30)
            .map(|i| entry(i, i as i64 * 120, "anonymous", "auth", Outcome::Refused))
            .collect();
        assert!(evaluate(&slow, &rules, &BTreeMap::new(), &[], &mut |_, _| false).is_empty());
    }

    #[test]
    fn outside_dates_is_one_alert_per_project_and_day() {
        let d = |s| NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("valid");
        let dates = BTreeMap::from([("p".to_string(), (d("2026-01-01"), d("2026-05-31")))]);
        let e: Vec<_> = (1..=3)
            .map(|i| entry(i, i as i64, "alice", "job.submit", Outcome::Ok))
            .collect();
        let c = evaluate(&e, &AlertRules::default(), &dates, &[], &mut |_, _| false);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].evidence, vec![1, 2, 3]);
        let inside = BTreeMap::from([("p".to_string(), (d("2026-01-01"), d("2026-12-31")))]);
        assert!(evaluate(&e, &AlertRules::default(), &inside, &[], &mut |_, _| false).is_empty());
    }

    #[test]
    fn acknowledgements_attach_to_their_alert() {
        let mut raised = entry(5, 0, ALERT_ACTOR, RAISED, Outcome::Ok);
        raised.detail =
            serde_json::json!({"alert": "alert-1", "rule": "refused_jobs", "evidence": [1, 2]});
        let mut acked = entry(6, 1, "auditor", ACK, Outcome::Ok);
        acked.detail = serde_json::json!({"alert": "alert-1", "note": "spoke to the analyst"});
        let s = states(&[raised, acked]);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].evidence, vec![1, 2]);
        assert_eq!(s[0].acks[0].note, "spoke to the analyst");
    }
}
