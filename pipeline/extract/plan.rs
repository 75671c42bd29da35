//! The extract plan: everything checked before the first byte is written, then the run
//! (Type 1 scan, each table, the manifest last).

use std::collections::BTreeMap;
use std::path::Path;

use super::progress::Progress;
use super::table::{Filters, TableTargets, run_table};
use super::type1::scan_type1;
use super::{ExtractError, ExtractOptions};
use crate::clock::Clock;
use crate::durable::{FileRecord, Mode, write_atomic};
use crate::ingest::{CsvChunker, IngestError, InputFile, ParquetInput};
use crate::manifest::{Manifest, OptOutRecord, TableReport, Type1Record};
use crate::optout::{OptOutList, OptOutSet};
use crate::output::OutputError;
use crate::policy::{Exemption, Policy, TablePolicy};
use crate::pseudonym::ProjectKey;
use crate::schema::{SchemaSet, TableSchema};
use crate::transform::TransformBug;

/// Everything a run needs, validated.
#[derive(Debug)]
pub struct ExtractPlan {
    policy: Policy,
    key: ProjectKey,
    opt_outs: Option<OptOutList>,
    inputs: Vec<(TablePolicy, InputFile)>,
    type1_source: Option<(TableSchema, InputFile)>,
    options: ExtractOptions,
}

fn exemption_json(e: &Option<Exemption>) -> Option<serde_json::Value> {
    e.as_ref().and_then(|e| serde_json::to_value(e).ok())
}

impl ExtractPlan {
    /// Check everything that can be checked before writing: opt-out list present and
    /// fresh (unless exempt), inputs present with matching headers, output directory.
    pub fn new(
        policy: Policy,
        key: ProjectKey,
        opt_outs: Option<OptOutList>,
        schemas: &SchemaSet,
        options: ExtractOptions,
        clock: &dyn Clock,
    ) -> Result<Self, ExtractError> {
        check_opt_outs(&policy, opt_outs.as_ref(), clock.today())?;
        let inputs = locate_inputs(&policy, &options.input_dir)?;
        let type1_source = if policy.opt_outs.type1_exemption.is_some() {
            None
        } else {
            Some(locate_type1_source(schemas, &options.input_dir)?)
        };
        check_paths(&options)?;
        Ok(ExtractPlan {
            policy,
            key,
            opt_outs,
            inputs,
            type1_source,
            options,
        })
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Run the extract. On error, no manifest exists in the output directory.
    pub fn run(&self, clock: &dyn Clock) -> Result<Manifest, ExtractError> {
        let started_at = clock.now();
        let out = &self.options.out_dir;
        let quarantine = self.options.quarantine();
        prepare_dir(out, self.options.overwrite, false)?;
        prepare_dir(&quarantine, self.options.overwrite, true)?;
        let pool = self.pool()?;
        let progress = Progress::new(self.options.progress);
        let ndoo = match &self.opt_outs {
            Some(l) => l.set.clone(),
            None => OptOutSet::default(),
        };
        let type1 = self.type1_dissenters(&pool, &progress)?;
        let ctx = Filters {
            ndoo: &ndoo,
            ndoo_exempt: self.policy.opt_outs.ndoo_exemption.is_some(),
            type1: &type1,
            type1_exempt: self.policy.opt_outs.type1_exemption.is_some(),
            pseudonymiser: self.key.pseudonymiser(),
        };
        let targets = TableTargets {
            out,
            quarantine: &quarantine,
            chunk_bytes: self.options.chunk_bytes,
        };
        let (tables, files) = self.run_tables(&pool, &ctx, &targets, &progress)?;
        let manifest = self.manifest(started_at, clock.now(), &type1, tables, files);
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| OutputError::Io {
            path: out.join("manifest.json"),
            source: std::io::Error::other(e),
        })?;
        write_atomic(&out.join("manifest.json"), &json, Mode::Shared).map_err(OutputError::from)?;
        Ok(manifest)
    }

    fn pool(&self) -> Result<rayon::ThreadPool, ExtractError> {
        let threads = if self.options.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.options.threads
        };
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| ExtractError::Usage(format!("cannot start {threads} worker threads: {e}")))
    }

    /// The Type 1 dissenters (empty when the policy is exempt).
    fn type1_dissenters(
        &self,
        pool: &rayon::ThreadPool,
        progress: &Progress,
    ) -> Result<OptOutSet, ExtractError> {
        let Some((schema, file)) = &self.type1_source else {
            return Ok(OptOutSet::default());
        };
        let bar = progress.bar(file, &format!("{} (Type 1 scan)", schema.name));
        let codelist = &self.policy.opt_outs.type1_codelist;
        let t = scan_type1(pool, schema, file, codelist, self.options.chunk_bytes, &bar)?;
        bar.finish_and_clear();
        Ok(t.dissenters())
    }

    fn run_tables(
        &self,
        pool: &rayon::ThreadPool,
        ctx: &Filters<'_>,
        targets: &TableTargets<'_>,
        progress: &Progress,
    ) -> Result<(BTreeMap<String, TableReport>, Vec<FileRecord>), ExtractError> {
        let mut tables = BTreeMap::new();
        let mut files = Vec::new();
        for (table, input) in &self.inputs {
            let bar = progress.bar(input, table.name());
            let report = run_table(pool, table, input, ctx, targets, &bar)?;
            bar.finish_and_clear();
            if let Some(o) = &report.output {
                files.push(FileRecord {
                    path: o.path.clone(),
                    size: o.bytes,
                    sha256: o.sha256.clone(),
                });
            }
            if !report.balances() {
                return Err(ExtractError::Bug(TransformBug::accounting(table.name())));
            }
            tables.insert(table.name().to_string(), report);
        }
        Ok((tables, files))
    }

    fn manifest(
        &self,
        started_at: chrono::DateTime<chrono::Utc>,
        finished_at: chrono::DateTime<chrono::Utc>,
        type1: &OptOutSet,
        tables: BTreeMap<String, TableReport>,
        files: Vec<FileRecord>,
    ) -> Manifest {
        let ts = |t: chrono::DateTime<chrono::Utc>| {
            t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        Manifest {
            format: crate::manifest::FORMAT.into(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            project: self.policy.project.id.clone(),
            purpose: self.policy.project.purpose.clone(),
            policy_sha256: self.policy.sha256.clone(),
            key_fingerprint: self.key.fingerprint(),
            opt_outs: OptOutRecord {
                as_of: self.opt_outs.as_ref().map(|l| l.as_of.to_string()),
                sha256: self.opt_outs.as_ref().map(|l| l.sha256.clone()),
                entries: self.opt_outs.as_ref().map_or(0, |l| l.entries),
                exemption: exemption_json(&self.policy.opt_outs.ndoo_exemption),
            },
            type1: Type1Record {
                dissenters: type1.len() as u64,
                codelist_sha256: self.policy.opt_outs.type1_codelist.sha256.clone(),
                exemption: exemption_json(&self.policy.opt_outs.type1_exemption),
            },
            started_at: ts(started_at),
            finished_at: ts(finished_at),
            tables,
            files,
            purges: Vec::new(),
        }
    }
}

/// The opt-out list is present and fresh, unless the policy declares an exemption.
fn check_opt_outs(
    policy: &Policy,
    opt_outs: Option<&OptOutList>,
    today: chrono::NaiveDate,
) -> Result<(), ExtractError> {
    match (opt_outs, &policy.opt_outs.ndoo_exemption) {
        (None, None) => Err(ExtractError::Refused(
            "the National Data Opt-out list is required (--opt-outs FILE); only a policy declaring a lawful exemption may run without it".into(),
        )),
        (Some(l), _) => l
            .check_fresh(today, policy.opt_outs.max_age_days)
            .map_err(|e| ExtractError::Refused(e.to_string())),
        (None, Some(_)) => Ok(()),
    }
}

/// Each table's input, found and its header checked.
fn locate_inputs(
    policy: &Policy,
    input_dir: &Path,
) -> Result<Vec<(TablePolicy, InputFile)>, ExtractError> {
    let mut inputs = Vec::new();
    for t in &policy.tables {
        if t.schema.nhs_number_index().is_none()
            && (policy.opt_outs.ndoo_exemption.is_none()
                || policy.opt_outs.type1_exemption.is_none())
        {
            return Err(ExtractError::Refused(format!(
                "table {} has no nhs_number column, so opt-outs cannot be applied to it",
                t.name()
            )));
        }
        let f = InputFile::locate(input_dir, t.name())?;
        open_check(&f, &t.schema)?;
        inputs.push((t.clone(), f));
    }
    Ok(inputs)
}

/// The first table that records Type 1 codes and has an input.
fn locate_type1_source(
    schemas: &SchemaSet,
    input_dir: &Path,
) -> Result<(TableSchema, InputFile), ExtractError> {
    for s in schemas.tables().filter(|s| s.type1_codes.is_some()) {
        match InputFile::locate(input_dir, &s.name) {
            Ok(f) => {
                open_check(&f, s)?;
                return Ok((s.clone(), f));
            }
            Err(IngestError::Missing { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ExtractError::Refused(format!(
        "Type 1 opt-outs cannot be checked: no input in {} for a table that records them ({}); supply it or declare a type1_exemption",
        input_dir.display(),
        schemas
            .tables()
            .filter(|s| s.type1_codes.is_some())
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// Output, quarantine and input directories are distinct; OUT is empty unless overwriting.
fn check_paths(options: &ExtractOptions) -> Result<(), ExtractError> {
    let out = &options.out_dir;
    let quarantine = options.quarantine();
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    if abs(&quarantine).starts_with(abs(out)) {
        return Err(ExtractError::Usage(format!(
            "quarantine directory {} must not be inside the output directory {}",
            quarantine.display(),
            out.display()
        )));
    }
    if abs(out) == abs(&options.input_dir) {
        return Err(ExtractError::Usage(
            "the output directory must differ from the input directory".into(),
        ));
    }
    if let Ok(mut rd) = std::fs::read_dir(out)
        && rd.next().is_some()
        && !options.overwrite
    {
        return Err(ExtractError::Usage(format!(
            "output directory {} exists and is not empty; choose a new one or pass --overwrite",
            out.display()
        )));
    }
    Ok(())
}

/// Fails the run on a Parquet/CSV header mismatch before anything is written.
fn open_check(f: &InputFile, schema: &TableSchema) -> Result<(), IngestError> {
    match f {
        InputFile::Csv(p) => CsvChunker::open(p, schema, 1 << 16).map(|_| ()),
        InputFile::Parquet(p) => ParquetInput::open(p, schema, 1024).map(|_| ()),
    }
}

/// Make `dir` exist and be empty; with `overwrite`, remove the old manifest first so a
/// crash mid-way never leaves an old manifest beside new files.
fn prepare_dir(dir: &Path, overwrite: bool, private: bool) -> Result<(), ExtractError> {
    let io = |source| OutputError::Io {
        path: dir.to_path_buf(),
        source,
    };
    if dir.exists() {
        let manifest = dir.join("manifest.json");
        if manifest.exists() {
            std::fs::remove_file(&manifest).map_err(io)?;
            crate::durable::fsync_parent(&manifest).map_err(io)?;
        }
        if overwrite {
            for e in std::fs::read_dir(dir).map_err(io)? {
                let p = e.map_err(io)?.path();
                if p.is_dir() {
                    std::fs::remove_dir_all(&p).map_err(io)?;
                } else {
                    std::fs::remove_file(&p).map_err(io)?;
                }
            }
        }
    } else {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    let _ = private;
    crate::durable::fsync_parent(&dir.join("x")).map_err(io)?;
    Ok(())
}
