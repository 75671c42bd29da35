//! The register as people and programs read it: HTML, JSON, CSV, and a static site.
//!
//! Owns the renderings of a [`Register`]: one HTML page (no script, the service's
//! stylesheet), the JSON document, one CSV per section (projects, jobs, releases,
//! incidents; list fields joined with `; `), one SDC record per release, and
//! [`write_site`], which writes them all atomically (crate::durable) for publishing
//! elsewhere. Every rendering passes [`super::guard`] before it is returned: nothing
//! shaped like an NHS number is ever published.

use std::path::{Path, PathBuf};

use maud::{DOCTYPE, Markup, html};

use super::TransparencyError;
use super::register::Register;
use crate::durable::{Mode, write_atomic};

/// Where the page's links point: the served register or the static site.
#[derive(Debug, Clone, Copy)]
pub struct Links<'a> {
    /// The stylesheet.
    pub css: &'a str,
    /// The JSON document.
    pub json: &'a str,
    /// The CSV files' folder, ending in `/` (or empty for the page's own folder).
    pub csv: &'a str,
}

/// The links of the register served by `tre serve` at `/register`.
pub const SERVED: Links<'static> = Links {
    css: "/static/tre.css",
    json: "/register.json",
    csv: "/register/",
};

/// The links of the static site (`tre register build`).
pub const STATIC: Links<'static> = Links {
    css: "tre.css",
    json: "register.json",
    csv: "",
};

/// The CSV sections, by file name.
pub const CSV_FILES: &[&str] = &["projects.csv", "jobs.csv", "releases.csv", "incidents.csv"];

fn when(t: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(t)
        .map(|d| {
            d.with_timezone(&chrono::Utc)
                .format("%Y-%m-%d %H:%M UTC")
                .to_string()
        })
        .unwrap_or_else(|_| t.to_string())
}

fn short(h: &str) -> &str {
    &h[..h.len().min(12)]
}

/// The register as one HTML page.
pub fn html(reg: &Register, links: Links<'_>) -> Result<String, TransparencyError> {
    let body: Markup = html! {
        h1 { "Data-uses register" }
        p { "Every project approved to use data in this trusted research environment, every analysis run, and every result that left it. "
            "No personal data is published here: no names of patients, no NHS numbers, no pseudonyms, no results." }
        p { "Last updated " strong { (when(&reg.last_updated)) } " (audit entry " (reg.audit_seq) "), by " (reg.tool_version) ". "
            "Download: " a href=(links.json) { "JSON" } " · "
            @for (i, f) in CSV_FILES.iter().enumerate() {
                @if i > 0 { " · " }
                a href={ (links.csv) (f) } { (f) }
            }
        }
        h2 id="projects" { "Projects" }
        @for p in &reg.projects {
            section.project aria-labelledby={ "p-" (p.id) } {
                h3 id={ "p-" (p.id) } { (p.title) " " small { "(" (p.id) ")" } }
                p { (p.lay_summary) }
                dl {
                    dt { "Organisation" } dd { (p.organisation) }
                    dt { "Purpose" } dd { (p.purpose) }
                    dt { "Legal basis (UK GDPR Article 6)" } dd { (p.article6) }
                    dt { "Condition (UK GDPR Article 9)" } dd { (p.article9) }
                    dt { "Common-law basis" } dd { (p.common_law_basis) }
                    dt { "National Data Opt-out" } dd { (p.national_data_opt_out) }
                    dt { "Type 1 opt-outs" } dd { (p.type1_opt_out) }
                    dt { "Datasets" } dd { (p.datasets.join(", ")) }
                    dt { "Extract versions" } dd {
                        @if p.extract_versions.is_empty() { "none installed" }
                        @for v in &p.extract_versions {
                            "version " (v.version) " (" (v.status) "), installed " (when(&v.installed))
                            @if let Some(x) = &v.extracted { ", extracted " (when(x)) }
                            @if let Some(d) = &v.opt_outs_as_of { ", opt-outs as of " (d) }
                            @if let Some(l) = &v.opt_outs_sha256 { " (list " code { (short(l)) } ")" }
                            @if let Some(m) = &v.manifest_sha256 { " (manifest " code { (short(m)) } ")" }
                            br;
                        }
                    }
                    dt { "Access" } dd { (p.access_type) }
                    dt { "Approved" } dd { (p.approved) " to " (p.ends) }
                }
            }
        }
        h2 id="jobs" { "Analyses run" }
        div.scroll { table {
            thead { tr { th { "When" } th { "Project" } th { "User" } th { "Purpose" } th { "SQL (SHA-256)" } th { "Datasets" } th { "Extract version" } th { "Outcome" } } }
            tbody {
                @for j in &reg.jobs {
                    tr { td { (when(&j.submitted)) } td { (j.project) } td { (j.user) } td { (j.purpose) }
                         td { code { (short(&j.sql_sha256)) } } td { (j.datasets.join(", ")) } td { (j.extract_version) } td { (j.outcome) } }
                }
            }
        } }
        h2 id="releases" { "Results released" }
        div.scroll { table {
            thead { tr { th { "Date" } th { "Release" } th { "Project" } th { "Files (SHA-256)" } th { "Checked by" } th { "Disclosure rules" } th { "Audit checkpoint" } } }
            tbody {
                @for r in &reg.releases {
                    tr { td { (when(&r.date)) } td { (r.release) } td { (r.project) }
                         td { @for f in &r.files { (f.name) " " code { (f.sha256) } br; } }
                         td { (r.checkers.join(", ")) }
                         td { (r.sdc.rules) " (" code { (short(&r.sdc.rules_sha256)) } "), " (r.sdc.tool) }
                         td { @match r.checkpoint_seq { Some(s) => { "signed at entry " (s) }, None => { "not yet signed" } } } }
                }
            }
        } }
        h2 id="incidents" { "Incidents" }
        @if reg.incidents.is_empty() { p { "No alerts have been raised." } } @else {
            table {
                thead { tr { th { "Raised" } th { "Alert" } th { "Kind" } th { "Concerns" } th { "Status" } } }
                tbody {
                    @for i in &reg.incidents {
                        tr { td { (when(&i.raised)) } td { (i.id) } td { (i.rule.replace('_', " ")) } td { (i.project) } td { (i.status) } }
                    }
                }
            }
        }
    };
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Data-uses register · TRE" }
                link rel="stylesheet" href=(links.css);
            }
            body { main id="main" { (body) } }
        }
    }
    .into_string();
    super::guard("register page", &page)?;
    Ok(page)
}

/// The register as JSON.
pub fn json(reg: &Register) -> Result<String, TransparencyError> {
    let text =
        serde_json::to_string_pretty(reg).map_err(|_| TransparencyError::Serialise("register"))?;
    super::guard("register JSON", &text)?;
    Ok(text)
}

/// One CSV section by file name (one of [`CSV_FILES`]).
pub fn csv(reg: &Register, file: &str) -> Result<Option<String>, TransparencyError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let ser = |_| TransparencyError::Serialise("register CSV");
    match file {
        "projects.csv" => {
            w.write_record([
                "id",
                "title",
                "purpose",
                "lay_summary",
                "organisation",
                "article6",
                "article9",
                "common_law_basis",
                "national_data_opt_out",
                "type1_opt_out",
                "datasets",
                "extract_versions",
                "access_type",
                "approved",
                "ends",
            ])
            .map_err(ser)?;
            for p in &reg.projects {
                let versions = p
                    .extract_versions
                    .iter()
                    .map(|v| {
                        format!(
                            "{} {} {} extracted {} opt-outs {} manifest {}",
                            v.version,
                            v.status,
                            v.installed,
                            v.extracted.as_deref().unwrap_or("-"),
                            v.opt_outs_as_of.as_deref().unwrap_or("-"),
                            v.manifest_sha256.as_deref().unwrap_or("-")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                w.write_record([
                    &p.id,
                    &p.title,
                    &p.purpose,
                    &p.lay_summary,
                    &p.organisation,
                    &p.article6,
                    &p.article9,
                    &p.common_law_basis,
                    &p.national_data_opt_out,
                    &p.type1_opt_out,
                    &p.datasets.join("; "),
                    &versions,
                    &p.access_type,
                    &p.approved,
                    &p.ends,
                ])
                .map_err(ser)?;
            }
        }
        "jobs.csv" => {
            w.write_record([
                "job",
                "project",
                "submitted",
                "user",
                "purpose",
                "sql_sha256",
                "datasets",
                "extract_version",
                "outcome",
            ])
            .map_err(ser)?;
            for j in &reg.jobs {
                w.write_record([
                    &j.job,
                    &j.project,
                    &j.submitted,
                    &j.user,
                    &j.purpose,
                    &j.sql_sha256,
                    &j.datasets.join("; "),
                    &j.extract_version.to_string(),
                    &j.outcome,
                ])
                .map_err(ser)?;
            }
        }
        "releases.csv" => {
            w.write_record([
                "release",
                "project",
                "date",
                "files",
                "checkers",
                "rules",
                "rules_sha256",
                "result_sha256",
                "tool",
                "checkpoint_seq",
            ])
            .map_err(ser)?;
            for r in &reg.releases {
                let files = r
                    .files
                    .iter()
                    .map(|f| format!("{} {}", f.name, f.sha256))
                    .collect::<Vec<_>>()
                    .join("; ");
                let cp = r.checkpoint_seq.map(|s| s.to_string()).unwrap_or_default();
                w.write_record([
                    &r.release,
                    &r.project,
                    &r.date,
                    &files,
                    &r.checkers.join("; "),
                    &r.sdc.rules,
                    &r.sdc.rules_sha256,
                    &r.sdc.result_sha256,
                    &r.sdc.tool,
                    &cp,
                ])
                .map_err(ser)?;
            }
        }
        "incidents.csv" => {
            w.write_record(["id", "rule", "project", "raised", "status"])
                .map_err(ser)?;
            for i in &reg.incidents {
                w.write_record([&i.id, &i.rule, &i.project, &i.raised, &i.status])
                    .map_err(ser)?;
            }
        }
        _ => return Ok(None),
    }
    let bytes = w
        .into_inner()
        .map_err(|_| TransparencyError::Serialise("register CSV"))?;
    let text =
        String::from_utf8(bytes).map_err(|_| TransparencyError::Serialise("register CSV"))?;
    super::guard("register CSV", &text)?;
    Ok(Some(text))
}

/// Write the register as a static site into `dir` (created if needed): `index.html`,
/// `register.json`, the CSV files, `sdc/<release>.json` and `tre.css`, each atomically.
/// Returns the files written.
pub fn write_site(reg: &Register, dir: &Path) -> Result<Vec<PathBuf>, TransparencyError> {
    let write = |path: PathBuf, text: &str| -> Result<PathBuf, TransparencyError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| TransparencyError::Write {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        write_atomic(&path, text.as_bytes(), Mode::Shared).map_err(|e| {
            TransparencyError::Write {
                path: path.clone(),
                source: std::io::Error::other(e.to_string()),
            }
        })?;
        Ok(path)
    };
    // Render everything first: nothing is written if any part is refused.
    let mut files = vec![
        ("index.html".to_string(), html(reg, STATIC)?),
        ("register.json".to_string(), json(reg)?),
        (
            "tre.css".to_string(),
            include_str!("../web/tre.css").to_string(),
        ),
    ];
    for f in CSV_FILES {
        if let Some(text) = csv(reg, f)? {
            files.push((f.to_string(), text));
        }
    }
    for r in &reg.releases {
        let text = serde_json::to_string_pretty(&r.sdc)
            .map_err(|_| TransparencyError::Serialise("SDC record"))?;
        files.push((format!("sdc/{}.json", r.release), text));
    }
    files
        .into_iter()
        .map(|(name, text)| write(dir.join(name), &text))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transparency::register::{IncidentEntry, JobEntry};

    fn register() -> Register {
        Register {
            last_updated: "2026-06-01T10:00:00.000Z".into(),
            audit_seq: 7,
            tool_version: "tre-pipeline test".into(),
            projects: vec![],
            jobs: vec![JobEntry {
                job: "job-1".into(),
                project: "p".into(),
                submitted: "2026-06-01T09:00:00.000Z".into(),
                user: "alice".into(),
                purpose: "counts, by \"age\"".into(),
                sql_sha256: "ab".repeat(32),
                datasets: vec!["patients".into(), "events".into()],
                extract_version: 1,
                outcome: "succeeded".into(),
            }],
            releases: vec![],
            incidents: vec![IncidentEntry {
                id: "alert-1".into(),
                rule: "failed_sign_ins".into(),
                project: "service".into(),
                raised: "2026-06-01T09:30:00.000Z".into(),
                status: "open".into(),
            }],
        }
    }

    #[test]
    fn csv_and_json_say_the_same_and_html_escapes() {
        let r = register();
        let jobs = csv(&r, "jobs.csv").expect("csv").expect("a section");
        let mut rdr = csv::Reader::from_reader(jobs.as_bytes());
        let row = rdr.records().next().expect("a row").expect("parses");
        assert_eq!(&row[4], "counts, by \"age\"");
        assert_eq!(&row[6], "patients; events");
        let back: Register = serde_json::from_str(&json(&r).expect("json")).expect("parses");
        assert_eq!(back, r);
        let page = html(&r, STATIC).expect("html");
        assert!(page.contains("counts, by &quot;age&quot;"), "escaped");
        assert!(page.contains("failed sign ins"));
        assert!(csv(&r, "../etc/passwd").expect("no error").is_none());
    }

    #[test]
    fn a_register_holding_an_nhs_number_is_never_rendered() {
        let mut r = register();
        r.jobs[0].purpose = "look up 943 476 5919".into();
        assert!(html(&r, SERVED).is_err());
        assert!(json(&r).is_err());
        assert!(csv(&r, "jobs.csv").is_err());
        let dir = tempfile::tempdir().expect("tmp");
        assert!(write_site(&r, dir.path()).is_err());
        assert!(
            std::fs::read_dir(dir.path()).expect("dir").next().is_none(),
            "nothing written"
        );
    }
}
