//! Project policies: what one approved project may receive, loaded once into a typed plan.
//!
//! Owns the policy file format (`policies/*.toml`): project identity and purpose, legal
//! basis, opt-out handling (maximum list age, Type 1 codelist, lawful exemptions with
//! their references), and per table an allow-list of columns with their transforms and
//! optional row filters. Everything is checked here, against the extract schemas, with
//! messages naming the policy file and line: unknown keys, unknown tables or columns,
//! transforms that do not fit a column, and contradictions. Danger: this is where data
//! minimisation is decided, so it refuses rather than guesses; a `direct` identifier, the
//! NHS number and free text can never be kept raw. Stages receive the typed
//! [`Policy`] and never re-read the file.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use serde::Deserialize;
use toml::Spanned;

use crate::digest::sha256_hex;
use crate::optout::Type1Codelist;
use crate::schema::{ColumnType, IdentifierClass, SchemaSet, TableSchema};

/// The output column that replaces the NHS number (docs/contracts.md, Pseudonym).
pub const PSEUDONYM_COLUMN: &str = "patient_pseudonym";
/// The Type 1 codelist shipped with the tool, used when a policy names none.
pub const BUILTIN_TYPE1_CODELIST: &str = include_str!("../policies/codelists/type1-opt-out.csv");

/// A policy that cannot be used. Messages name the file and, where known, the line.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The policy file could not be read.
    #[error("cannot read policy {path}: {source}")]
    Io {
        /// The policy file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Not valid policy TOML.
    #[error("policy {path}: {message}")]
    Parse {
        /// The policy file.
        path: PathBuf,
        /// The parser's message, which names line and column.
        message: String,
    },
    /// A rule is broken.
    #[error("policy {path}, line {line}: {message}")]
    Invalid {
        /// The policy file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A file the policy refers to is unusable.
    #[error("policy {path}: {message}")]
    Reference {
        /// The policy file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl crate::error::Classify for PolicyError {
    fn kind(&self) -> crate::error::ErrorKind {
        match self {
            // An unreadable file is unreadable input; anything the policy says is a rule.
            PolicyError::Io { .. } => crate::error::ErrorKind::Failed,
            PolicyError::Parse { .. }
            | PolicyError::Invalid { .. }
            | PolicyError::Reference { .. } => crate::error::ErrorKind::Refused,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: u32,
    project: RawProject,
    opt_outs: RawOptOuts,
    tables: BTreeMap<Spanned<String>, RawTable>,
    #[serde(default)]
    tre: Option<TrePolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProject {
    id: Spanned<String>,
    title: String,
    purpose: String,
    legal_basis: String,
    #[serde(default)]
    organisation: Option<String>,
    #[serde(default)]
    lay_summary: Option<String>,
    #[serde(default)]
    article6: Option<String>,
    #[serde(default)]
    article9: Option<String>,
    #[serde(default)]
    common_law_basis: Option<String>,
    #[serde(default)]
    access_type: Option<String>,
    #[serde(default)]
    approved: Option<Spanned<String>>,
    #[serde(default)]
    ends: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOptOuts {
    max_age_days: Spanned<u32>,
    #[serde(default)]
    type1_codelist: Option<String>,
    #[serde(default)]
    national_data_opt_out_exemption: Option<Spanned<RawExemption>>,
    #[serde(default)]
    type1_exemption: Option<Spanned<RawExemption>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExemption {
    basis: String,
    reference: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    columns: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    #[serde(default)]
    date_window: Option<Spanned<RawDateWindow>>,
    #[serde(default)]
    codelist: Option<Spanned<RawCodelist>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDateWindow {
    column: String,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCodelist {
    column: String,
    file: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawColumnSpec {
    transform: String,
    #[serde(default)]
    width: Option<u32>,
    #[serde(default)]
    at: Option<String>,
    #[serde(default)]
    top: Option<u32>,
    #[serde(default)]
    rename: Option<String>,
}

/// The project a policy belongs to.
#[derive(Debug, Clone)]
pub struct Project {
    /// Short id (`[a-z0-9_-]+`).
    pub id: String,
    /// Title.
    pub title: String,
    /// Purpose of processing.
    pub purpose: String,
    /// Legal basis (free text, e.g. UK GDPR articles).
    pub legal_basis: String,
    /// What the public data-uses register says of the project (all of it, or `None`
    /// with the missing keys in [`Project::public_missing`]).
    pub public: Option<PublicFacts>,
    /// The `[project]` keys the register needs that the policy does not give.
    pub public_missing: Vec<&'static str>,
}

/// What the public data-uses register publishes about a project, from its policy:
/// the keys `organisation`, `lay_summary`, `article6`, `article9`,
/// `common_law_basis`, `access_type`, `approved` and `ends` of `[project]`.
/// `tre admin project add` refuses a policy without all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicFacts {
    /// The organisation responsible (the data controller or applicant).
    pub organisation: String,
    /// A plain-language summary for the public.
    pub lay_summary: String,
    /// The UK GDPR Article 6 lawful basis, e.g. `6(1)(e) public task`.
    pub article6: String,
    /// The UK GDPR Article 9 condition, e.g. `9(2)(j) research`.
    pub article9: String,
    /// The common-law duty of confidentiality basis (consent, s251 support, ...).
    pub common_law_basis: String,
    /// How the data is accessed, e.g. `trusted research environment; outputs checked`.
    pub access_type: String,
    /// The date the project was approved.
    pub approved: NaiveDate,
    /// The date the approval ends (after it, the project's actions raise alerts).
    pub ends: NaiveDate,
}

/// The `[project]` keys the public register needs.
pub const PUBLIC_KEYS: &[&str] = &[
    "organisation",
    "lay_summary",
    "article6",
    "article9",
    "common_law_basis",
    "access_type",
    "approved",
    "ends",
];

/// The lawful bases under which an opt-out may be set aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExemptionBasis {
    /// Control of Patient Information notice.
    Copi,
    /// Explicit consent.
    Consent,
    /// Section 251 support (Confidentiality Advisory Group).
    S251,
    /// A legal requirement (e.g. court order, statute).
    LegalRequirement,
}

/// A declared lawful exemption from an opt-out.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Exemption {
    /// The basis.
    pub basis: ExemptionBasis,
    /// Its reference (approval number, notice).
    pub reference: String,
}

/// How opt-outs are applied.
#[derive(Debug, Clone)]
pub struct OptOutPolicy {
    /// Oldest acceptable National Data Opt-out list, in days.
    pub max_age_days: u32,
    /// The Type 1 codelist.
    pub type1_codelist: Type1Codelist,
    /// Exemption from the National Data Opt-out, if declared.
    pub ndoo_exemption: Option<Exemption>,
    /// Exemption from Type 1 opt-outs, if declared.
    pub type1_exemption: Option<Exemption>,
}

/// What happens to one allowed column.
#[derive(Debug, Clone, PartialEq)]
pub enum Transform {
    /// Copied as it is.
    Keep,
    /// NHS number to `patient_pseudonym`.
    Pseudonymise,
    /// Date to its year (Int32).
    Year,
    /// Date to `YYYY-MM` text.
    YearMonth,
    /// Date of birth to an age band at a reference date, e.g. `40-44`, top-coded `90+`.
    AgeBand {
        /// Band width in years.
        width: u32,
        /// Reference date for the age.
        at: NaiveDate,
        /// Ages at or above this are one band (`90+`).
        top: u32,
    },
    /// Postcode to its outward code (district), e.g. `LS1`.
    PostcodeDistrict,
}

/// One column a project receives.
#[derive(Debug, Clone)]
pub struct ColumnRule {
    /// Input column name.
    pub input: String,
    /// Its index in the table schema.
    pub input_index: usize,
    /// Output column name.
    pub output: String,
    /// The transform.
    pub transform: Transform,
}

/// A date window row filter (inclusive).
#[derive(Debug, Clone)]
pub struct DateWindow {
    /// Column index in the schema.
    pub column: usize,
    /// Earliest date kept.
    pub from: Option<NaiveDate>,
    /// Latest date kept.
    pub to: Option<NaiveDate>,
}

/// A codelist row filter: keep rows whose code is in the list.
#[derive(Debug, Clone)]
pub struct CodelistFilter {
    /// Column index in the schema.
    pub column: usize,
    /// The codes.
    pub codes: HashSet<String>,
    /// The codelist file.
    pub path: PathBuf,
    /// Its SHA-256.
    pub sha256: String,
}

/// What a project receives of one table.
#[derive(Debug, Clone)]
pub struct TablePolicy {
    /// The table's schema.
    pub schema: TableSchema,
    /// Allowed columns in output order.
    pub columns: Vec<ColumnRule>,
    /// Optional date window.
    pub date_window: Option<DateWindow>,
    /// Optional codelist filter.
    pub codelist: Option<CodelistFilter>,
}

impl TablePolicy {
    /// The table name.
    pub fn name(&self) -> &str {
        &self.schema.name
    }
}

/// Settings for the project inside the research environment (users, output rules).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrePolicy {
    /// Approved analysts (operating-system logins).
    #[serde(default)]
    pub users: Vec<String>,
    /// Approved output checkers.
    #[serde(default)]
    pub output_checkers: Vec<String>,
    /// Auditors: may read the project's audit trail and its verification status, and
    /// nothing else (no jobs, no tables, no reviews).
    #[serde(default)]
    pub auditors: Vec<String>,
    /// Output rules: a preset name or a rules file.
    #[serde(default)]
    pub output_rules: Option<String>,
    /// Largest result a query job may produce.
    #[serde(default)]
    pub max_result_rows: Option<u64>,
    /// Longest a query job may run.
    #[serde(default)]
    pub max_query_seconds: Option<u64>,
    /// Most memory (MiB) a query job's process may use; default 1024.
    #[serde(default)]
    pub max_query_memory_mb: Option<u64>,
    /// Datasets (extract tables) the project's queries may read; default: all of the
    /// project's extract.
    #[serde(default)]
    pub datasets: Option<Vec<String>>,
}

/// A validated project policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The project.
    pub project: Project,
    /// Opt-out handling.
    pub opt_outs: OptOutPolicy,
    /// Tables in name order.
    pub tables: Vec<TablePolicy>,
    /// TRE settings, if any.
    pub tre: Option<TrePolicy>,
    /// SHA-256 of the policy file.
    pub sha256: String,
    /// Where it was loaded from.
    pub source: PathBuf,
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn did_you_mean<'a>(name: &str, options: impl Iterator<Item = &'a str>) -> String {
    let mut best: Option<(usize, &str)> = None;
    for o in options {
        let d = edit_distance(name, o);
        if d <= 3 && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, o));
        }
    }
    best.map_or(String::new(), |(_, o)| format!("; did you mean {o:?}?"))
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

struct Ctx<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Ctx<'_> {
    fn err(&self, span: std::ops::Range<usize>, message: impl Into<String>) -> PolicyError {
        PolicyError::Invalid {
            path: self.path.to_path_buf(),
            line: line_of(self.text, span.start),
            message: message.into(),
        }
    }

    fn date(
        &self,
        span: std::ops::Range<usize>,
        s: &str,
        what: &str,
    ) -> Result<NaiveDate, PolicyError> {
        NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .map_err(|_| self.err(span, format!("{what} {s:?} is not a date (YYYY-MM-DD)")))
    }
}

impl Policy {
    /// Load and validate a policy file against the schemas. Relative file references
    /// (codelists) resolve against the policy's directory.
    pub fn load(path: &Path, schemas: &SchemaSet) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, path, base, schemas)
    }

    /// Parse and validate policy text.
    pub fn from_toml(
        text: &str,
        path: &Path,
        base: &Path,
        schemas: &SchemaSet,
    ) -> Result<Self, PolicyError> {
        let raw: RawPolicy = toml::from_str(text).map_err(|e| parse_error(&e, text, path))?;
        let cx = Ctx { text, path };
        if raw.version != 1 {
            return Err(cx.err(
                0..0,
                format!("version {} is not supported (use 1)", raw.version),
            ));
        }
        let project = Self::project(&cx, raw.project)?;
        let opt_outs = Self::opt_outs(&cx, raw.opt_outs, base)?;
        let tables = Self::tables(&cx, raw.tables, schemas, base)?;
        if let Some(tre) = &raw.tre {
            Self::check_tre(&cx, tre)?;
        }
        Ok(Policy {
            project,
            opt_outs,
            tables,
            tre: raw.tre,
            sha256: sha256_hex(text.as_bytes()),
            source: path.to_path_buf(),
        })
    }

    /// The `[project]` section: an id of lowercase letters, digits, `-` or `_`, and a
    /// title, purpose and legal basis that are not empty.
    fn project(cx: &Ctx<'_>, raw: RawProject) -> Result<Project, PolicyError> {
        let id = raw.id.get_ref();
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        {
            return Err(cx.err(
                raw.id.span(),
                "project id must be lowercase letters, digits, - or _",
            ));
        }
        for (what, v) in [
            ("title", &raw.title),
            ("purpose", &raw.purpose),
            ("legal_basis", &raw.legal_basis),
        ] {
            if v.trim().is_empty() {
                return Err(cx.err(raw.id.span(), format!("project {what} must not be empty")));
            }
        }
        let (public, public_missing) = Self::public_facts(cx, &raw)?;
        Ok(Project {
            id: raw.id.into_inner(),
            title: raw.title,
            purpose: raw.purpose,
            legal_basis: raw.legal_basis,
            public,
            public_missing,
        })
    }

    /// The register's keys of `[project]`: each given one checked (text not empty,
    /// dates as dates, `ends` after `approved`); all of them, or the list of those
    /// missing.
    fn public_facts(
        cx: &Ctx<'_>,
        raw: &RawProject,
    ) -> Result<(Option<PublicFacts>, Vec<&'static str>), PolicyError> {
        let span = raw.id.span();
        let mut missing = Vec::new();
        let mut text = |key: &'static str, v: &Option<String>| -> Result<String, PolicyError> {
            match v {
                None => {
                    missing.push(key);
                    Ok(String::new())
                }
                Some(t) if t.trim().is_empty() => {
                    Err(cx.err(span.clone(), format!("project {key} must not be empty")))
                }
                Some(t) => Ok(t.clone()),
            }
        };
        let organisation = text("organisation", &raw.organisation)?;
        let lay_summary = text("lay_summary", &raw.lay_summary)?;
        let article6 = text("article6", &raw.article6)?;
        let article9 = text("article9", &raw.article9)?;
        let common_law_basis = text("common_law_basis", &raw.common_law_basis)?;
        let access_type = text("access_type", &raw.access_type)?;
        let mut date = |key: &'static str, v: &Option<Spanned<String>>| match v {
            None => {
                missing.push(key);
                Ok(None)
            }
            Some(d) => cx.date(d.span(), d.get_ref(), key).map(Some),
        };
        let approved = date("approved", &raw.approved)?;
        let ends = date("ends", &raw.ends)?;
        if let (Some(a), Some(e), Some(span)) = (approved, ends, raw.ends.as_ref())
            && e <= a
        {
            return Err(cx.err(
                span.span(),
                format!("project ends {e} is not after approved {a}"),
            ));
        }
        match (approved, ends) {
            (Some(approved), Some(ends)) if missing.is_empty() => Ok((
                Some(PublicFacts {
                    organisation,
                    lay_summary,
                    article6,
                    article9,
                    common_law_basis,
                    access_type,
                    approved,
                    ends,
                }),
                missing,
            )),
            _ => Ok((None, missing)),
        }
    }

    /// The register's facts, or a refusal naming the missing `[project]` keys (what
    /// `tre admin project add` requires).
    pub fn require_public(&self) -> Result<&PublicFacts, PolicyError> {
        self.project.public.as_ref().ok_or_else(|| PolicyError::Invalid {
            path: self.source.clone(),
            line: 1,
            message: format!(
                "[project] lacks {} that the public data-uses register needs; add them (see policies/demo.toml)",
                self.project.public_missing.join(", ")
            ),
        })
    }

    /// The `[tables.<name>]` sections, each checked against its schema; at least one.
    fn tables(
        cx: &Ctx<'_>,
        raw: BTreeMap<Spanned<String>, RawTable>,
        schemas: &SchemaSet,
        base: &Path,
    ) -> Result<Vec<TablePolicy>, PolicyError> {
        if raw.is_empty() {
            return Err(cx.err(
                0..0,
                "the policy names no tables: add at least one [tables.<name>]",
            ));
        }
        let mut tables = Vec::new();
        for (name, t) in raw {
            let Some(schema) = schemas.get(name.get_ref()) else {
                return Err(cx.err(
                    name.span(),
                    format!(
                        "unknown table {:?}{}",
                        name.get_ref(),
                        did_you_mean(name.get_ref(), schemas.names().into_iter())
                    ),
                ));
            };
            tables.push(Self::table(cx, schema, t, base)?);
        }
        Ok(tables)
    }

    /// The `[tre]` section: output checkers are independent of analysts.
    fn check_tre(cx: &Ctx<'_>, tre: &TrePolicy) -> Result<(), PolicyError> {
        for c in &tre.output_checkers {
            if tre.users.contains(c) {
                return Err(cx.err(
                    0..0,
                    format!("[tre]: {c:?} is both an analyst and an output checker; checkers must be independent of analysts"),
                ));
            }
        }
        Ok(())
    }

    fn opt_outs(cx: &Ctx<'_>, raw: RawOptOuts, base: &Path) -> Result<OptOutPolicy, PolicyError> {
        if *raw.max_age_days.get_ref() == 0 {
            return Err(cx.err(raw.max_age_days.span(), "max_age_days must be at least 1"));
        }
        let type1_codelist = match &raw.type1_codelist {
            Some(file) => Type1Codelist::load(&base.join(file)),
            None => Type1Codelist::parse(
                BUILTIN_TYPE1_CODELIST,
                Path::new("<built-in>/policies/codelists/type1-opt-out.csv"),
            ),
        }
        .map_err(|e| PolicyError::Reference {
            path: cx.path.to_path_buf(),
            message: e.to_string(),
        })?;
        let exemption =
            |e: Option<Spanned<RawExemption>>| -> Result<Option<Exemption>, PolicyError> {
                let Some(e) = e else { return Ok(None) };
                let span = e.span();
                let e = e.into_inner();
                let basis = match e.basis.as_str() {
                    "copi" => ExemptionBasis::Copi,
                    "consent" => ExemptionBasis::Consent,
                    "s251" => ExemptionBasis::S251,
                    "legal_requirement" => ExemptionBasis::LegalRequirement,
                    other => {
                        return Err(cx.err(
                        span,
                        format!("exemption basis {other:?} is not one of copi, consent, s251, legal_requirement"),
                    ));
                    }
                };
                if e.reference.trim().len() < 3 {
                    return Err(cx.err(
                    span,
                    "an exemption needs its reference (approval number or notice), not an empty string",
                ));
                }
                Ok(Some(Exemption {
                    basis,
                    reference: e.reference,
                }))
            };
        Ok(OptOutPolicy {
            max_age_days: *raw.max_age_days.get_ref(),
            type1_codelist,
            ndoo_exemption: exemption(raw.national_data_opt_out_exemption)?,
            type1_exemption: exemption(raw.type1_exemption)?,
        })
    }

    /// One table's policy: its column rules, date window and codelist filter.
    fn table(
        cx: &Ctx<'_>,
        schema: &TableSchema,
        raw: RawTable,
        base: &Path,
    ) -> Result<TablePolicy, PolicyError> {
        let columns = column_rules(cx, schema, raw.columns)?;
        let date_window = date_window(cx, schema, raw.date_window)?;
        let codelist = codelist_filter(cx, schema, raw.codelist, base)?;
        Ok(TablePolicy {
            schema: schema.clone(),
            columns,
            date_window,
            codelist,
        })
    }

    /// A table's policy by name.
    pub fn table_policy(&self, name: &str) -> Option<&TablePolicy> {
        self.tables.iter().find(|t| t.name() == name)
    }
}

/// A TOML error as the parser's message and its line, never its snippet of the file,
/// which could be a list's line when a list was given as the policy by mistake.
fn parse_error(e: &toml::de::Error, text: &str, path: &Path) -> PolicyError {
    PolicyError::Parse {
        path: path.to_path_buf(),
        message: match e.span() {
            Some(span) => format!(
                "line {}: {}",
                text.as_bytes()[..span.start.min(text.len())]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count()
                    + 1,
                e.message().trim_end()
            ),
            None => e.message().trim_end().to_string(),
        },
    }
}

/// A column named in a table's policy: its schema index, or an error with a suggestion.
fn find_column(
    cx: &Ctx<'_>,
    schema: &TableSchema,
    span: std::ops::Range<usize>,
    col: &str,
) -> Result<usize, PolicyError> {
    schema.column_index(col).ok_or_else(|| {
        cx.err(
            span,
            format!(
                "table {}: unknown column {col:?}{}",
                schema.name,
                did_you_mean(col, schema.columns.iter().map(|c| c.name.as_str()))
            ),
        )
    })
}

/// The column rules of a table, in schema order, each output name once.
fn column_rules(
    cx: &Ctx<'_>,
    schema: &TableSchema,
    raw: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
) -> Result<Vec<ColumnRule>, PolicyError> {
    let mut columns = Vec::new();
    let mut outputs = HashSet::new();
    for (name, spec) in raw {
        let (rule, span) = column_rule(cx, schema, name, spec)?;
        if !outputs.insert(rule.output.clone()) {
            return Err(cx.err(
                span,
                format!(
                    "table {}, column {}: output column {:?} would appear twice; use `rename`",
                    schema.name, rule.input, rule.output
                ),
            ));
        }
        columns.push(rule);
    }
    if columns.is_empty() {
        return Err(cx.err(
            0..0,
            format!(
                "table {}: no columns allowed; remove the table instead",
                schema.name
            ),
        ));
    }
    // Canonical order: schema order, so outputs do not depend on TOML key order.
    columns.sort_by_key(|c| c.input_index);
    Ok(columns)
}

/// One column's rule (and the span of its name, for messages).
fn column_rule(
    cx: &Ctx<'_>,
    schema: &TableSchema,
    name: Spanned<String>,
    spec: Spanned<toml::Value>,
) -> Result<(ColumnRule, std::ops::Range<usize>), PolicyError> {
    let span = name.span();
    let idx = find_column(cx, schema, span.clone(), name.get_ref())?;
    let col = &schema.columns[idx];
    let spec_span = spec.span();
    let spec: RawColumnSpec = match spec.into_inner() {
        toml::Value::String(s) => RawColumnSpec {
            transform: s,
            width: None,
            at: None,
            top: None,
            rename: None,
        },
        v @ toml::Value::Table(_) => v.try_into().map_err(|e: toml::de::Error| {
            cx.err(
                spec_span.clone(),
                format!("column {}: {}", col.name, e.message()),
            )
        })?,
        _ => {
            return Err(cx.err(
                spec_span,
                format!("column {}: expected a transform name or a table", col.name),
            ));
        }
    };
    let here = |m: String| {
        cx.err(
            span.clone(),
            format!("table {}, column {}: {m}", schema.name, col.name),
        )
    };
    let transform = transform_of(cx, &spec, span.clone(), &here)?;
    check_fits(&transform, col, &spec, &here)?;
    let output = spec.rename.unwrap_or_else(|| match transform {
        Transform::Pseudonymise => PSEUDONYM_COLUMN.to_string(),
        Transform::AgeBand { .. } => "age_band".to_string(),
        Transform::PostcodeDistrict => "postcode_district".to_string(),
        _ => col.name.clone(),
    });
    Ok((
        ColumnRule {
            input: col.name.clone(),
            input_index: idx,
            output,
            transform,
        },
        span,
    ))
}

/// The transform a column spec names, with its parameters checked.
fn transform_of(
    cx: &Ctx<'_>,
    spec: &RawColumnSpec,
    span: std::ops::Range<usize>,
    here: &dyn Fn(String) -> PolicyError,
) -> Result<Transform, PolicyError> {
    Ok(match spec.transform.as_str() {
        "keep" => Transform::Keep,
        "pseudonymise" | "pseudonymize" => Transform::Pseudonymise,
        "year" => Transform::Year,
        "year_month" => Transform::YearMonth,
        "age_band" => {
            let width = spec
                .width
                .ok_or_else(|| here("age_band needs `width` (years)".into()))?;
            let at = spec
                .at
                .as_deref()
                .ok_or_else(|| here("age_band needs `at` (reference date)".into()))?;
            if width == 0 || width > 50 {
                return Err(here(format!(
                    "age_band width {width} must be between 1 and 50"
                )));
            }
            Transform::AgeBand {
                width,
                at: cx.date(span.clone(), at, "age_band `at`")?,
                top: spec.top.unwrap_or(90),
            }
        }
        "postcode_district" => Transform::PostcodeDistrict,
        "drop" => {
            return Err(here(
                "columns are dropped by leaving them out of the policy; remove this line".into(),
            ));
        }
        other => {
            return Err(here(format!(
                "unknown transform {other:?}; use keep, pseudonymise, year, year_month, age_band or postcode_district"
            )));
        }
    })
}

/// A transform fits its column: no raw identifiers, dates for date transforms, only
/// age_band takes parameters.
fn check_fits(
    transform: &Transform,
    col: &crate::schema::ColumnSchema,
    spec: &RawColumnSpec,
    here: &dyn Fn(String) -> PolicyError,
) -> Result<(), PolicyError> {
    let is_date = col.ty == ColumnType::Date;
    let no_params = spec.width.is_none() && spec.at.is_none() && spec.top.is_none();
    if !matches!(transform, Transform::AgeBand { .. }) && !no_params {
        return Err(here(format!(
            "`width`, `at` and `top` only apply to age_band, not {}",
            spec.transform
        )));
    }
    match (transform, col.class) {
        (
            Transform::Keep,
            IdentifierClass::Direct | IdentifierClass::NhsNumber | IdentifierClass::FreeText,
        ) => {
            return Err(here(format!(
                "a {} identifier can never be kept raw; drop it (leave it out) or use a transform{}",
                col.class.name(),
                if col.class == IdentifierClass::NhsNumber {
                    " (pseudonymise)"
                } else {
                    ""
                }
            )));
        }
        (Transform::Pseudonymise, c) if c != IdentifierClass::NhsNumber => {
            return Err(here(
                "only the NHS number column can be pseudonymised".into(),
            ));
        }
        (Transform::Year | Transform::YearMonth | Transform::AgeBand { .. }, _) if !is_date => {
            return Err(here(format!(
                "{} needs a date column, but this is {}",
                spec.transform,
                col.ty.name()
            )));
        }
        (Transform::PostcodeDistrict, _) if col.ty != ColumnType::String => {
            return Err(here("postcode_district needs a string column".into()));
        }
        (Transform::PostcodeDistrict, _) if !col.name.contains("postcode") => {
            return Err(here(
                "postcode_district only applies to postcode columns".into(),
            ));
        }
        _ => {}
    }
    Ok(())
}

/// A table's date window, if it has one.
fn date_window(
    cx: &Ctx<'_>,
    schema: &TableSchema,
    raw: Option<Spanned<RawDateWindow>>,
) -> Result<Option<DateWindow>, PolicyError> {
    Ok(match raw {
        None => None,
        Some(w) => {
            let span = w.span();
            let w = w.into_inner();
            let column = find_column(cx, schema, span.clone(), &w.column)?;
            if schema.columns[column].ty != ColumnType::Date {
                return Err(cx.err(
                    span,
                    format!("date_window column {:?} is not a date column", w.column),
                ));
            }
            let from = w
                .from
                .as_deref()
                .map(|s| cx.date(span.clone(), s, "date_window `from`"))
                .transpose()?;
            let to =
                w.to.as_deref()
                    .map(|s| cx.date(span.clone(), s, "date_window `to`"))
                    .transpose()?;
            if let (Some(f), Some(t)) = (from, to)
                && f > t
            {
                return Err(cx.err(
                    span,
                    format!("date_window `from` {f} is after `to` {t}: no row could pass"),
                ));
            }
            if from.is_none() && to.is_none() {
                return Err(cx.err(span, "date_window needs `from`, `to` or both"));
            }
            Some(DateWindow { column, from, to })
        }
    })
}

/// A table's codelist filter, if it has one; its file resolves against `base`.
fn codelist_filter(
    cx: &Ctx<'_>,
    schema: &TableSchema,
    raw: Option<Spanned<RawCodelist>>,
    base: &Path,
) -> Result<Option<CodelistFilter>, PolicyError> {
    Ok(match raw {
        None => None,
        Some(c) => {
            let span = c.span();
            let c = c.into_inner();
            let column = find_column(cx, schema, span.clone(), &c.column)?;
            if schema.columns[column].ty != ColumnType::String {
                return Err(cx.err(
                    span,
                    format!("codelist column {:?} is not a string column", c.column),
                ));
            }
            let p = base.join(&c.file);
            let (codes, sha256) = load_codelist(&p).map_err(|m| cx.err(span.clone(), m))?;
            Some(CodelistFilter {
                column,
                codes,
                path: p,
                sha256,
            })
        }
    })
}

/// Load a filter codelist: a CSV with a `code` column (OpenSAFELY's format), or one code
/// per line.
fn load_codelist(path: &Path) -> Result<(HashSet<String>, String), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read codelist {}: {e}", path.display()))?;
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(text.as_bytes());
    let headers = rdr
        .headers()
        .map_err(|e| format!("codelist {}: {e}", path.display()))?
        .clone();
    let ci = headers.iter().position(|h| h == "code").ok_or_else(|| {
        format!(
            "codelist {} has no `code` column in its header line",
            path.display()
        )
    })?;
    let mut codes = HashSet::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| format!("codelist {}: {e}", path.display()))?;
        let code = rec.get(ci).unwrap_or("").trim();
        if !code.is_empty() {
            codes.insert(code.to_string());
        }
    }
    if codes.is_empty() {
        return Err(format!(
            "codelist {} holds no codes: no row could pass",
            path.display()
        ));
    }
    Ok((codes, sha256_hex(text.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"version = 1
[project]
id = "p1"
title = "T"
purpose = "P"
legal_basis = "L"
[opt_outs]
max_age_days = 30
"#;

    fn load(extra: &str) -> Result<Policy, PolicyError> {
        load_text(BASE, extra)
    }

    fn load_text(base: &str, extra: &str) -> Result<Policy, PolicyError> {
        let text = format!("{base}{extra}");
        Policy::from_toml(
            &text,
            Path::new("p.toml"),
            Path::new("."),
            &SchemaSet::builtin(),
        )
    }

    #[test]
    fn an_unreadable_file_fails_and_a_broken_rule_is_refused() {
        use crate::error::{Classify, ErrorKind};
        let missing = Policy::load(Path::new("/nonexistent/p.toml"), &SchemaSet::builtin())
            .expect_err("no such file");
        assert_eq!(missing.kind(), ErrorKind::Failed, "{missing}");
        let no_tables = load("").expect_err("no tables");
        assert_eq!(no_tables.kind(), ErrorKind::Refused, "{no_tables}");
        let table = "[tables.patients.columns]\nnhs_number = \"pseudonymise\"\n";
        let bad_id =
            load_text(&BASE.replace("\"p1\"", "\"P 1\""), table).expect_err("a bad project id");
        assert!(bad_id.to_string().contains("project id"), "{bad_id}");
        assert_eq!(bad_id.kind(), ErrorKind::Refused);
        let tre = "[tre]\nusers = [\"a\"]\noutput_checkers = [\"a\", \"b\"]\n";
        let both = load(&format!("{table}{tre}")).expect_err("an analyst who checks");
        assert!(
            both.to_string()
                .contains("both an analyst and an output checker"),
            "{both}"
        );
    }

    #[test]
    fn minimal_policy_loads() {
        let p = load("[tables.patients.columns]\nnhs_number = \"pseudonymise\"\nsex = \"keep\"\ndate_of_birth = { transform = \"age_band\", width = 5, at = \"2026-01-01\" }\n").expect("loads");
        let t = &p.tables[0];
        assert_eq!(
            t.columns
                .iter()
                .map(|c| c.output.as_str())
                .collect::<Vec<_>>(),
            ["patient_pseudonym", "age_band", "sex"]
        );
    }

    #[test]
    fn direct_identifier_keep_is_refused_with_line() {
        let e =
            load("[tables.patients.columns]\nnhs_number = \"pseudonymise\"\npostcode = \"keep\"\n")
                .expect_err("refused")
                .to_string();
        assert!(e.contains("line 11"), "{e}");
        assert!(e.contains("never be kept"), "{e}");
        let e = load("[tables.patients.columns]\nnhs_number = \"keep\"\n")
            .expect_err("refused")
            .to_string();
        assert!(e.contains("pseudonymise"), "{e}");
    }

    #[test]
    fn unknown_names_get_suggestions() {
        let e = load("[tables.patient.columns]\nsex = \"keep\"\n")
            .expect_err("refused")
            .to_string();
        assert!(e.contains("did you mean \"patients\""), "{e}");
        let e = load("[tables.patients.columns]\nsexx = \"keep\"\n")
            .expect_err("refused")
            .to_string();
        assert!(
            e.contains("line 10") && e.contains("did you mean \"sex\""),
            "{e}"
        );
        let e = load("colour = 1\n[tables.patients.columns]\nsex = \"keep\"\n")
            .expect_err("refused")
            .to_string();
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn contradictions_are_refused() {
        let e = load("[tables.clinical_events]\ndate_window = { column = \"event_date\", from = \"2020-01-01\", to = \"2019-01-01\" }\n[tables.clinical_events.columns]\nsnomed_code = \"keep\"\n").expect_err("refused").to_string();
        assert!(e.contains("after"), "{e}");
        let e = load("[tables.patients.columns]\nsex = \"year\"\n")
            .expect_err("refused")
            .to_string();
        assert!(e.contains("needs a date column"), "{e}");
        let e = load("[tables.patients.columns]\nsex = { transform = \"keep\", width = 5 }\n")
            .expect_err("refused")
            .to_string();
        assert!(e.contains("only apply to age_band"), "{e}");
        let text = format!("{}[tables.patients.columns]\nsex = \"keep\"\n", BASE.replace("max_age_days = 30", "max_age_days = 30\nnational_data_opt_out_exemption = { basis = \"s251\", reference = \"\" }"));
        let e = Policy::from_toml(
            &text,
            Path::new("p.toml"),
            Path::new("."),
            &SchemaSet::builtin(),
        )
        .expect_err("refused")
        .to_string();
        assert!(e.contains("reference"), "{e}");
    }

    #[test]
    fn shipped_policies_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let schemas = SchemaSet::builtin();
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("policies/") {
            let path = entry.expect("entry").path();
            // The alert rules file lives beside the policies but is not one.
            let alert_rules = path.file_name().is_some_and(|n| n == "alert-rules.toml");
            if path.extension().is_some_and(|e| e == "toml") && !alert_rules {
                Policy::load(&path, &schemas).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 2, "ship demo.toml and an example project policy");
    }

    const PUBLIC: &str = r#"organisation = "Org"
lay_summary = "Lay"
article6 = "6(1)(e)"
article9 = "9(2)(j)"
common_law_basis = "s251"
access_type = "TRE"
approved = "2026-01-01"
ends = "2027-01-01"
"#;

    fn with_public(public: &str) -> Result<Policy, PolicyError> {
        let base = BASE.replace(
            "legal_basis = \"L\"\n",
            &format!("legal_basis = \"L\"\n{public}"),
        );
        let text = format!("{base}[tables.patients.columns]\nsex = \"keep\"\n");
        Policy::from_toml(
            &text,
            Path::new("p.toml"),
            Path::new("."),
            &SchemaSet::builtin(),
        )
    }

    #[test]
    fn register_facts_are_all_given_or_refused_by_require_public() {
        let p = with_public(PUBLIC).expect("valid");
        let f = p.require_public().expect("valid");
        assert_eq!(f.organisation, "Org");
        assert_eq!(f.ends, NaiveDate::from_ymd_opt(2027, 1, 1).expect("valid"));
        let p = with_public("organisation = \"Org\"\n").expect("valid");
        let e = p.require_public().expect_err("refused").to_string();
        assert!(e.contains("lay_summary") && e.contains("ends"), "{e}");
        assert!(!e.contains("organisation,"), "{e}");
    }

    #[test]
    fn register_facts_are_checked_at_load() {
        let bad_date = PUBLIC.replace("2027-01-01", "next year");
        assert!(
            with_public(&bad_date)
                .expect_err("refused")
                .to_string()
                .contains("not a date")
        );
        let backwards = PUBLIC.replace("2027-01-01", "2025-01-01");
        assert!(
            with_public(&backwards)
                .expect_err("refused")
                .to_string()
                .contains("not after")
        );
        let empty = PUBLIC.replace("\"Lay\"", "\" \"");
        assert!(
            with_public(&empty)
                .expect_err("refused")
                .to_string()
                .contains("lay_summary")
        );
        let unknown = format!("{PUBLIC}sponsor = \"x\"\n");
        assert!(with_public(&unknown).is_err());
    }
}
