//! Listing a project's jobs and release requests for the pages.
//!
//! Owns only the walk over `projects/<p>/results/*` and `projects/<p>/requests/*.json`;
//! every record is read through its module's own loader ([`crate::jobs::load`],
//! [`crate::tre::release::load`]), which refuses records edited on disk. The caller must
//! have checked the person's standing in the project first. MERGE: service — move these
//! to `jobs::list` / `release::list` if the API grows listing routes.

use crate::jobs::{self, JobRecord};
use crate::tre::id::Id;
use crate::tre::release::{self, Request};
use crate::tre::workspace::Workspace;

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
