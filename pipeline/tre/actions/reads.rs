//! Reads for the pages and the API that are not one job or request: the actor's
//! projects and roles, a project's jobs and release requests, and the audit trail an
//! auditor or output checker may read.
//!
//! Owns the walk over `projects/<p>/results/*` and `projects/<p>/requests/*.json`; every
//! record is read through its module's own loader ([`crate::tre::job::load`],
//! [`crate::tre::release::load`]), which refuses records edited on disk. Each read
//! checks the actor's standing first and audits its refusals. Danger: the audit trail
//! read shows only entries of projects the actor may read.

use std::collections::BTreeSet;

use super::Tre;
use super::auth::{Actor, Member};
use super::error::ActionError;
use crate::audit::{AuditEntry, Filter};
use crate::tre::id::Id;
use crate::tre::job::{self as jobs, JobRecord};
use crate::tre::release::{self, Request};
use crate::tre::workspace::{Role, Workspace, roles_of};

fn ids_in(dir: &std::path::Path, what: &'static str, suffix: &str) -> Vec<Id> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<Id> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(suffix)?.to_string();
            Id::parse(what, &stem).ok()
        })
        .collect();
    v.sort();
    v
}

/// The project's jobs, newest first (records that fail to load are left out).
pub fn jobs(ws: &Workspace, project: &Id) -> Vec<JobRecord> {
    let dir = ws.project_dir(project).join("results");
    let mut v: Vec<JobRecord> = ids_in(&dir, "job", "")
        .into_iter()
        .filter_map(|j| jobs::load(ws, project, &j).ok())
        .collect();
    v.sort_by_key(|j| std::cmp::Reverse(j.submitted_at));
    v
}

/// The project's release requests, newest first.
pub fn releases(ws: &Workspace, project: &Id) -> Vec<Request> {
    let dir = ws.project_dir(project).join("requests");
    let mut v: Vec<Request> = ids_in(&dir, "release", ".json")
        .into_iter()
        .filter_map(|r| release::load(ws, project, &r).ok())
        .collect();
    v.sort_by_key(|r| std::cmp::Reverse(r.created_at));
    v
}

/// One of the actor's projects.
#[derive(Debug, Clone)]
pub struct ProjectRoles {
    /// The project.
    pub project: Id,
    /// Its title.
    pub title: String,
    /// The actor's roles there (at least one).
    pub roles: Vec<Role>,
}

fn projects_of(tre: &Tre, actor: &Actor, strict: bool) -> Result<Vec<ProjectRoles>, ActionError> {
    let mut mine = Vec::new();
    for p in tre.ws.projects()? {
        let policy = match tre.ws.project(&p, &tre.schemas) {
            Ok(policy) => policy,
            Err(e) if strict => return Err(e.into()),
            Err(_) => continue,
        };
        let roles = roles_of(&policy, actor.user().as_str());
        if !roles.is_empty() {
            mine.push(ProjectRoles {
                project: p,
                title: policy.project.title.clone(),
                roles,
            });
        }
    }
    Ok(mine)
}

/// Who the actor is and their roles per project (`me`); a project whose policy cannot
/// be loaded fails the read.
pub fn me(tre: &Tre, actor: &Actor) -> Result<Vec<ProjectRoles>, ActionError> {
    let r = projects_of(tre, actor, true);
    tre.audited(actor, "me", None, r)
}

/// The actor's projects for the home page (`web.home`); a project whose policy cannot be
/// loaded is left out.
pub fn home(tre: &Tre, actor: &Actor) -> Result<Vec<ProjectRoles>, ActionError> {
    let r = projects_of(tre, actor, false);
    tre.audited(actor, "web.home", None, r)
}

/// A project's page.
#[derive(Debug)]
pub struct ProjectPage {
    /// The reader's standing.
    pub member: Member,
    /// Its jobs, newest first.
    pub jobs: Vec<JobRecord>,
    /// Its release requests, newest first.
    pub releases: Vec<Request>,
}

/// A project's jobs and requests (`web.project`): any member.
pub fn project(tre: &Tre, actor: &Actor, project: &str) -> Result<ProjectPage, ActionError> {
    let r = actor.member(tre, project).map(|member| ProjectPage {
        jobs: jobs(&tre.ws, &member.project)
            .iter()
            .map(|j| super::jobs::shown_to(j, super::jobs::Audience::of(&member.roles)))
            .collect(),
        releases: releases(&tre.ws, &member.project),
        member,
    });
    tre.audited(actor, "web.project", Some(project), r)
}

/// The audit trail the actor may read.
#[derive(Debug)]
pub struct Trail {
    /// The projects whose entries they may read (as an auditor or output checker).
    pub readable: BTreeSet<String>,
    /// Matching entries of those projects, newest first.
    pub entries: Vec<AuditEntry>,
}

/// Read the audit trail (`web.audit`): the entries of the projects the actor audits or
/// checks that match `filter`; a filter naming another project is refused.
pub fn audit_trail(tre: &Tre, actor: &Actor, filter: &Filter) -> Result<Trail, ActionError> {
    let r = (|| {
        let readable: BTreeSet<String> = tre
            .ws
            .projects()?
            .iter()
            .filter(|p| actor.audit_reader(tre, p.as_str()).is_ok())
            .map(|p| p.to_string())
            .collect();
        if let Some(p) = &filter.project
            && !readable.contains(p)
        {
            actor.audit_reader(tre, p)?;
        }
        let log = crate::audit::workspace_log_path(tre.ws.root());
        let mut entries: Vec<AuditEntry> = crate::audit::read_entries(&log)
            .unwrap_or_default()
            .into_iter()
            .map(|(_, e)| e)
            .filter(|e| {
                e.project.as_ref().is_some_and(|p| readable.contains(p)) && filter.matches(e)
            })
            .collect();
        entries.reverse();
        // Never another checker's decision on a version the reader has not decided yet.
        let entries = super::releases::seal_audit(tre, actor, entries);
        Ok(Trail { readable, entries })
    })();
    tre.audited(actor, "web.audit", filter.project.as_deref(), r)
}
