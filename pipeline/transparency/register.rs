//! The public data-uses register: what each project is, what its people ran, and what
//! left the TRE.
//!
//! Owns the register's content ([`Register`]) and [`build`], which assembles it from the
//! installed policies ([`crate::tre::workspace::Workspace::project`]), the sealed dataset
//! and release records, the typed audit entries and the checkpoint files. Danger: it is
//! published without sign-in, so it takes only titles, purposes, legal bases, dates, user
//! names, ids, counts and hashes, never a result, a row, a pseudonym or an NHS number;
//! free text comes from policies and audit entries, which are sanitised on the way in.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::TransparencyError;
use super::alerts::{self, AlertState};
use crate::audit::{AuditEntry, Outcome};
use crate::policy::{Exemption, Policy};
use crate::schema::SchemaSet;
use crate::tre::id::Id;
use crate::tre::workspace::Workspace;

/// The whole register.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Register {
    /// When it was built (RFC 3339, UTC).
    pub last_updated: String,
    /// The audit entry it reflects up to (its `seq`), 0 for an empty log.
    pub audit_seq: u64,
    /// The tool that built it.
    pub tool_version: String,
    /// Projects, by id.
    pub projects: Vec<ProjectEntry>,
    /// Jobs, in submission order.
    pub jobs: Vec<JobEntry>,
    /// Releases, in export order.
    pub releases: Vec<ReleaseEntry>,
    /// Incidents (alerts), in the order raised.
    pub incidents: Vec<IncidentEntry>,
}

/// One project.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProjectEntry {
    /// Project id.
    pub id: String,
    /// Title.
    pub title: String,
    /// Purpose of processing.
    pub purpose: String,
    /// Plain-language summary.
    pub lay_summary: String,
    /// Organisation responsible.
    pub organisation: String,
    /// UK GDPR Article 6 basis.
    pub article6: String,
    /// UK GDPR Article 9 condition.
    pub article9: String,
    /// Common-law duty of confidentiality basis.
    pub common_law_basis: String,
    /// National Data Opt-out: `applied`, or `exempt: <basis> <reference>`.
    pub national_data_opt_out: String,
    /// Type 1 opt-outs: `applied`, or `exempt: <basis> <reference>`.
    pub type1_opt_out: String,
    /// The datasets (extract tables) its queries may read.
    pub datasets: Vec<String>,
    /// Extract versions installed, oldest first.
    pub extract_versions: Vec<ExtractVersion>,
    /// How the data is accessed.
    pub access_type: String,
    /// Approval date (YYYY-MM-DD).
    pub approved: String,
    /// End date (YYYY-MM-DD).
    pub ends: String,
}

/// One installed extract version of a project.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExtractVersion {
    /// 1 for the first installed.
    pub version: u32,
    /// When it was installed (RFC 3339).
    pub installed: String,
    /// When its extract was made (RFC 3339), for a version still held.
    #[serde(default)]
    pub extracted: Option<String>,
    /// The "as of" date of the National Data Opt-out list it was extracted with.
    #[serde(default)]
    pub opt_outs_as_of: Option<String>,
    /// SHA-256 of that list.
    #[serde(default)]
    pub opt_outs_sha256: Option<String>,
    /// SHA-256 of its manifest as held now (after any purge), for a version still held.
    pub manifest_sha256: Option<String>,
    /// `current` (what jobs read), `held` (earlier, purged of every later refresh's
    /// opt-outs) or `dropped`.
    #[serde(default)]
    pub status: String,
}

/// One job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JobEntry {
    /// Job id (`-` for a submission refused before it had one).
    pub job: String,
    /// Project id.
    pub project: String,
    /// When submitted.
    pub submitted: String,
    /// Who (user name).
    pub user: String,
    /// Declared purpose.
    pub purpose: String,
    /// SHA-256 of the SQL.
    pub sql_sha256: String,
    /// Datasets it could read.
    pub datasets: Vec<String>,
    /// The extract version it ran on (0 when none was installed).
    pub extract_version: u32,
    /// `succeeded`, `failed`, `killed`, `refused`, `queued`, ...
    pub outcome: String,
}

/// One release.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReleaseEntry {
    /// Release id.
    pub release: String,
    /// Project id.
    pub project: String,
    /// When exported.
    pub date: String,
    /// Files, by name and SHA-256.
    pub files: Vec<ReleasedFile>,
    /// The two (or more) output checkers who approved it.
    pub checkers: Vec<String>,
    /// The machine-readable SDC record (SATRE 3.3.09).
    pub sdc: SdcRecord,
    /// The `seq` of the first signed audit checkpoint that covers the export, if one
    /// has been written yet.
    pub checkpoint_seq: Option<u64>,
}

/// A released file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReleasedFile {
    /// File name in the outbox.
    pub name: String,
    /// Its SHA-256.
    pub sha256: String,
}

/// What statistical disclosure control was applied to a release.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SdcRecord {
    /// `tre-sdc-record/1`.
    pub format: String,
    /// The disclosure rules by name (preset or rules file).
    pub rules: String,
    /// SHA-256 of the rules (canonical JSON).
    pub rules_sha256: String,
    /// SHA-256 of the checked result.
    pub result_sha256: String,
    /// SHA-256 of the safe table that was released.
    pub safe_sha256: String,
    /// Reviews: approvals.
    pub approvals: u32,
    /// Reviews: rejections before the approvals.
    pub rejections: u32,
    /// The tool and version that applied the checks.
    pub tool: String,
}

/// One incident (an alert), as the public sees it: what kind, when, and whether an
/// auditor dealt with it; never who or what the evidence was.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IncidentEntry {
    /// Alert id.
    pub id: String,
    /// The rule.
    pub rule: String,
    /// The project, or `service` for the whole TRE.
    pub project: String,
    /// When raised.
    pub raised: String,
    /// `open` or `acknowledged`.
    pub status: String,
}

/// The tool named in records: `tre-pipeline <version>`.
pub fn tool() -> String {
    format!("tre-pipeline {}", env!("CARGO_PKG_VERSION"))
}

fn opt_out(e: &Option<Exemption>) -> String {
    match e {
        None => "applied".to_string(),
        Some(e) => {
            let basis = serde_json::to_value(e.basis)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            format!("exempt: {basis} {}", e.reference)
        }
    }
}

fn detail_str<'a>(e: &'a AuditEntry, key: &str) -> Option<&'a str> {
    e.detail.get(key).and_then(Value::as_str)
}

/// The datasets a project's queries may read: the policy's `[tre] datasets`, else every
/// table of its extract.
fn datasets_of(policy: &Policy) -> Vec<String> {
    policy
        .tre
        .as_ref()
        .and_then(|t| t.datasets.clone())
        .unwrap_or_else(|| policy.tables.iter().map(|t| t.name().to_string()).collect())
}

/// Build the register from the workspace, its audit `entries` (in log order) and the
/// `seq`s of the checkpoints written so far, as of `now`.
pub fn build(
    ws: &Workspace,
    schemas: &SchemaSet,
    entries: &[AuditEntry],
    checkpoints: &[u64],
    now: &str,
) -> Result<Register, TransparencyError> {
    let mut policies = BTreeMap::new();
    for id in ws.projects()? {
        let policy = ws.project(&id, schemas)?;
        policies.insert(id.to_string(), policy);
    }
    // Extract versions per project, from the audit trail (each install is an entry:
    // `admin.dataset.add` installs version 1, `refresh.install` the version it names),
    // as (seq, version, time).
    let mut versions: BTreeMap<String, Vec<(u64, u32, String)>> = BTreeMap::new();
    for e in entries {
        let version = match e.action.as_str() {
            "admin.dataset.add" => Some(1),
            crate::tre::refresh::REFRESH_INSTALL_ACTION => e
                .detail
                .get("version")
                .and_then(Value::as_u64)
                .and_then(|v| u32::try_from(v).ok()),
            _ => None,
        };
        if let (Some(v), Outcome::Ok, Some(p)) = (version, &e.outcome, &e.project) {
            versions
                .entry(p.clone())
                .or_default()
                .push((e.seq, v, e.time.clone()));
        }
    }
    let mut projects = Vec::new();
    for (id, policy) in &policies {
        let facts = policy.require_public()?;
        let current = Id::parse("project", id)
            .ok()
            .filter(|p| ws.dataset_installed(p.as_str()))
            .map(|p| ws.dataset(&p))
            .transpose()?;
        let extract_versions = extract_versions(versions.get(id), current.as_ref());
        projects.push(ProjectEntry {
            id: id.clone(),
            title: policy.project.title.clone(),
            purpose: policy.project.purpose.clone(),
            lay_summary: facts.lay_summary.clone(),
            organisation: facts.organisation.clone(),
            article6: facts.article6.clone(),
            article9: facts.article9.clone(),
            common_law_basis: facts.common_law_basis.clone(),
            national_data_opt_out: opt_out(&policy.opt_outs.ndoo_exemption),
            type1_opt_out: opt_out(&policy.opt_outs.type1_exemption),
            datasets: datasets_of(policy),
            extract_versions,
            access_type: facts.access_type.clone(),
            approved: facts.approved.to_string(),
            ends: facts.ends.to_string(),
        });
    }
    let jobs = jobs(ws, entries, &policies, &versions);
    let releases = releases(ws, entries, checkpoints)?;
    let incidents = alerts::states(entries)
        .into_iter()
        .map(|a: AlertState| IncidentEntry {
            id: a.id,
            rule: a.rule,
            project: a.project.unwrap_or_else(|| "service".into()),
            raised: a.raised,
            status: if a.acks.is_empty() {
                "open"
            } else {
                "acknowledged"
            }
            .into(),
        })
        .collect();
    Ok(Register {
        last_updated: now.to_string(),
        audit_seq: entries.last().map_or(0, |e| e.seq),
        tool_version: tool(),
        projects,
        jobs,
        releases,
        incidents,
    })
}

/// A project's versions: each one installed (by the audit trail, a version installed
/// twice by a resumed refresh counted once), with the dates and hashes the dataset
/// record holds for those still held.
fn extract_versions(
    installs: Option<&Vec<(u64, u32, String)>>,
    current: Option<&crate::tre::workspace::DatasetRecord>,
) -> Vec<ExtractVersion> {
    let mut out: BTreeMap<u32, ExtractVersion> = BTreeMap::new();
    let newest = current.map_or(0, |c| c.version);
    for (_, v, time) in installs.into_iter().flatten() {
        if *v <= newest {
            out.entry(*v).or_insert_with(|| ExtractVersion {
                version: *v,
                installed: time.clone(),
                extracted: None,
                opt_outs_as_of: None,
                opt_outs_sha256: None,
                manifest_sha256: None,
                status: "dropped".into(),
            });
        }
    }
    for v in current.map(|c| c.versions()).unwrap_or_default() {
        let e = out.entry(v.version).or_insert_with(|| ExtractVersion {
            version: v.version,
            installed: v.installed_at.clone(),
            extracted: None,
            opt_outs_as_of: None,
            opt_outs_sha256: None,
            manifest_sha256: None,
            status: String::new(),
        });
        e.extracted = v.extracted_at.clone();
        e.opt_outs_as_of = v.opt_outs_as_of.clone();
        e.opt_outs_sha256 = v.opt_outs_sha256.clone();
        e.manifest_sha256 = Some(v.manifest_sha256.clone());
        e.status = if v.version == newest {
            "current"
        } else {
            "held"
        }
        .into();
    }
    out.into_values().collect()
}

/// Jobs from `job.submit` entries, their outcome from the last `job.run` of each, their
/// dataset version from the job's record (set when it started), else from the audit
/// trail (the versions installed before it was submitted).
fn jobs(
    ws: &Workspace,
    entries: &[AuditEntry],
    policies: &BTreeMap<String, Policy>,
    versions: &BTreeMap<String, Vec<(u64, u32, String)>>,
) -> Vec<JobEntry> {
    let mut ended: BTreeMap<&str, String> = BTreeMap::new();
    for e in entries {
        if e.action == "job.run"
            && let Some(job) = detail_str(e, "job")
        {
            let state = detail_str(e, "state").unwrap_or(e.outcome.as_str());
            let outcome = if e.outcome == Outcome::Refused {
                "refused".to_string()
            } else {
                state.to_string()
            };
            ended.insert(job, outcome);
        }
    }
    let mut out = Vec::new();
    for e in entries.iter().filter(|e| e.action == "job.submit") {
        let Some(project) = e.project.clone() else {
            continue;
        };
        let job = detail_str(e, "job").unwrap_or("-").to_string();
        let outcome = match e.outcome {
            Outcome::Ok => match ended.get(job.as_str()) {
                Some(state) if state == "succeeded" && alerts::job_blocked(ws, &project, &job) => {
                    "blocked by the output checks".to_string()
                }
                Some(state) => state.clone(),
                None => "queued".into(),
            },
            other => if other == Outcome::Refused {
                "refused"
            } else {
                "error"
            }
            .to_string(),
        };
        let recorded = Id::parse("project", &project)
            .ok()
            .zip(Id::parse("job", &job).ok())
            .and_then(|(p, j)| crate::tre::job::load(ws, &p, &j).ok())
            .and_then(|r| r.dataset_version);
        let extract_version = recorded.unwrap_or_else(|| {
            versions.get(&project).map_or(0, |v| {
                v.iter()
                    .filter(|(seq, _, _)| *seq < e.seq)
                    .map(|(_, v, _)| *v)
                    .max()
                    .unwrap_or(0)
            })
        });
        out.push(JobEntry {
            job,
            datasets: policies.get(&project).map(datasets_of).unwrap_or_default(),
            project,
            submitted: e.time.clone(),
            user: e.actor.clone(),
            purpose: e.purpose.clone().unwrap_or_default(),
            sql_sha256: detail_str(e, "sql_sha256").unwrap_or("").to_string(),
            extract_version,
            outcome,
        });
    }
    out
}

/// Releases from `release.export` entries, with their checkers and rules from the sealed
/// release record.
fn releases(
    ws: &Workspace,
    entries: &[AuditEntry],
    checkpoints: &[u64],
) -> Result<Vec<ReleaseEntry>, TransparencyError> {
    let mut out = Vec::new();
    for e in entries {
        if e.action != "release.export" || e.outcome != Outcome::Ok {
            continue;
        }
        let (Some(project), Some(release)) = (e.project.as_deref(), detail_str(e, "release"))
        else {
            continue;
        };
        let (Ok(p), Ok(r)) = (Id::parse("project", project), Id::parse("release", release)) else {
            continue;
        };
        let req = crate::tre::release::load(ws, &p, &r)?;
        use crate::tre::release::Decision;
        let checkers = req
            .reviews
            .iter()
            .filter(|v| v.decision == Decision::Approve)
            .map(|v| v.checker.to_string())
            .collect::<Vec<_>>();
        // Earlier versions' rejections and returns count too (a resubmitted request).
        let rejections = (req
            .reviews
            .iter()
            .filter(|v| v.decision != Decision::Approve)
            .count()
            + req.earlier_refusals().len()) as u32;
        out.push(ReleaseEntry {
            release: release.to_string(),
            project: project.to_string(),
            date: e.time.clone(),
            files: e
                .outputs
                .iter()
                .map(|f| ReleasedFile {
                    name: Path::new(&f.path)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    sha256: f.sha256.clone(),
                })
                .collect(),
            sdc: SdcRecord {
                format: "tre-sdc-record/1".into(),
                rules: req.rules.clone(),
                rules_sha256: req.rules_sha256.clone(),
                result_sha256: req.result_sha256.clone(),
                safe_sha256: req.safe_sha256.clone(),
                approvals: checkers.len() as u32,
                rejections,
                tool: tool(),
            },
            checkers,
            checkpoint_seq: checkpoints.iter().copied().filter(|s| *s >= e.seq).min(),
        });
    }
    Ok(out)
}

/// The `seq`s of the checkpoint files in `dir` (`checkpoint-N.json`), read and parsed
/// as checkpoints (a file that is not one is left out).
pub fn checkpoint_seqs(dir: &Path) -> Vec<u64> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<u64> = rd
        .filter_map(Result::ok)
        .filter_map(|d| {
            crate::audit::checkpoint::read_checkpoint(&d.path())
                .ok()
                .flatten()
        })
        .map(|c| c.seq)
        .collect();
    out.sort_unstable();
    out
}
