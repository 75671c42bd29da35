//! The extract plan: everything checked before the first byte is written, then the run
//! (Type 1 scan, each table, the manifest last).

use std::collections::BTreeMap;
use std::path::Path;

use super::paths::{self, Dirs};
use super::progress::Progress;
use super::table::{Filters, TableTargets, run_table};
use super::type1::scan_type1;
use super::{ExtractError, ExtractOptions};
use crate::clock::Clock;
use crate::durable::{FileRecord, Mode, write_atomic};
use crate::ingest::{CsvChunker, IngestError, InputFile, ParquetInput};
use crate::manifest::{Manifest, OptOutRecord, TableReport, Type1Record};
use crate::optout::{ListKind, OptOutList, OptOutSet};
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
    dirs: Dirs,
}

fn exemption_json(e: &Option<Exemption>) -> Option<serde_json::Value> {
    e.as_ref().and_then(|e| serde_json::to_value(e).ok())
}

impl ExtractPlan {
    /// Check everything that can be checked before writing: opt-out list (deny-list or
    /// the service's allow-list) present, not empty and fresh (unless exempt), inputs present with matching headers, output directory.
    pub fn new(
        policy: Policy,
        key: ProjectKey,
        opt_outs: Option<OptOutList>,
        schemas: &SchemaSet,
        options: ExtractOptions,
        clock: &dyn Clock,
    ) -> Result<Self, ExtractError> {
        check_opt_outs(&policy, opt_outs.as_ref(), &options, clock.today())?;
        let inputs = locate_inputs(&policy, &options.input_dir)?;
        let type1_source = if policy.opt_outs.type1_exemption.is_some() {
            None
        } else {
            Some(locate_type1_source(schemas, &options.input_dir)?)
        };
        let dirs = Dirs::check(
            &options.out_dir,
            &options.quarantine(),
            &options.input_dir,
            options.overwrite,
        )?;
        Ok(ExtractPlan {
            dirs,
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
        let (out, quarantine) = (&self.dirs.out, &self.dirs.quarantine);
        // Held until the run returns: a second extract into the same place is refused.
        let _locks = self.claim_dirs()?;
        let pool = self.pool()?;
        let progress = Progress::new(self.options.progress);
        // No list (a declared exemption) is an empty deny-list: never an empty allow-list,
        // which would remove everyone.
        let (ndoo, ndoo_kind) = match &self.opt_outs {
            Some(l) => (l.set.clone(), l.kind),
            None => (OptOutSet::default(), ListKind::Deny),
        };
        let type1 = self.type1_dissenters(&pool, &progress)?;
        let ctx = Filters {
            ndoo: &ndoo,
            ndoo_kind,
            ndoo_exempt: self.policy.opt_outs.ndoo_exemption.is_some(),
            type1: &type1,
            type1_exempt: self.policy.opt_outs.type1_exemption.is_some(),
            pseudonymiser: self.key.pseudonymiser(),
            remote: self.options.pseudonyms.clone(),
        };
        let targets = TableTargets {
            out,
            quarantine,
            csv_limits: self.options.csv_limits,
        };
        let (tables, files) = self.run_tables(&pool, &ctx, &targets, &progress)?;
        let manifest = self.manifest(started_at, clock.now(), &type1, tables, files);
        let json = serde_json::to_vec_pretty(&manifest).map_err(ExtractError::Manifest)?;
        write_atomic(&out.join("manifest.json"), &json, Mode::Shared).map_err(OutputError::from)?;
        paths::release(quarantine)?;
        paths::release(out)?;
        Ok(manifest)
    }

    /// Create and lock OUT and the quarantine; under the locks, clear what an earlier run
    /// named (with `--overwrite`) and list the files this run will write.
    fn claim_dirs(&self) -> Result<[std::fs::File; 2], ExtractError> {
        let (out, quarantine) = (&self.dirs.out, &self.dirs.quarantine);
        let lock_out = paths::create_and_lock(out, false)?;
        let lock_q = paths::create_and_lock(quarantine, true)?;
        let (old_out, old_q) = previous_names(out);
        let overwrite = self.options.overwrite;
        let mut out_files: Vec<String> = self
            .inputs
            .iter()
            .map(|(t, _)| format!("{}.parquet", t.name()))
            .collect();
        out_files.push("manifest.json".into());
        let q_files: Vec<String> = self
            .inputs
            .iter()
            .map(|(t, _)| format!("{}.csv", t.name()))
            .collect();
        // The quarantine is claimed while OUT's earlier manifest still recognises it, and
        // nothing is deleted until both listings are written.
        let earlier_q = paths::claim("quarantine", quarantine, overwrite, &old_q, &q_files)?;
        let earlier_out = paths::claim("output", out, overwrite, &old_out, &out_files)?;
        paths::clear(out, earlier_out)?;
        paths::clear(quarantine, earlier_q)?;
        Ok([lock_out, lock_q])
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
            .map_err(|source| ExtractError::Threads { threads, source })
    }

    /// The NHS numbers of the input's Type 1 dissenters (empty when the policy is
    /// exempt), from a scan of their own: `tre admin refresh` re-applies them to the
    /// dataset versions installed earlier.
    pub fn type1_opt_outs(&self) -> Result<OptOutSet, ExtractError> {
        self.type1_dissenters(&self.pool()?, &Progress::new(false))
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
        let t = scan_type1(pool, schema, file, codelist, &self.options.csv_limits, &bar)?;
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
                kind: self.opt_outs.as_ref().map(|l| l.kind.as_str().to_string()),
                file: self.opt_outs.as_ref().map(OptOutList::file_name),
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
    options: &ExtractOptions,
    today: chrono::NaiveDate,
) -> Result<(), ExtractError> {
    if let Some(l) = opt_outs {
        l.check_not_empty(options.allow_empty_opt_outs)?;
    }
    match (opt_outs, &policy.opt_outs.ndoo_exemption) {
        (None, None) => Err(ExtractError::OptOutsRequired),
        (Some(l), _) => Ok(l.check_fresh(today, policy.opt_outs.max_age_days)?),
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
            return Err(ExtractError::NoNhsNumberColumn {
                table: t.name().to_string(),
            });
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
    Err(ExtractError::NoType1Source {
        dir: input_dir.to_path_buf(),
        tables: schemas
            .tables()
            .filter(|s| s.type1_codes.is_some())
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Fails the run on a Parquet/CSV header mismatch before anything is written.
fn open_check(f: &InputFile, schema: &TableSchema) -> Result<(), IngestError> {
    match f {
        InputFile::Csv(p) => CsvChunker::open(p, schema, 1 << 16).map(|_| ()),
        InputFile::Parquet(p) => ParquetInput::open(p, schema, 1024).map(|_| ()),
    }
}

/// The files an earlier run's manifest in `out` named: (in OUT, in the quarantine).
fn previous_names(out: &Path) -> (Vec<String>, Vec<String>) {
    let Ok(bytes) = std::fs::read(out.join("manifest.json")) else {
        return (Vec::new(), Vec::new());
    };
    let Ok(m) = serde_json::from_slice::<Manifest>(&bytes) else {
        return (Vec::new(), Vec::new());
    };
    let name = |p: &str| {
        Path::new(p)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
    };
    let mut o: Vec<String> = m.files.iter().filter_map(|f| name(&f.path)).collect();
    let mut q = Vec::new();
    for t in m.tables.values() {
        o.extend(t.output.as_ref().and_then(|r| name(&r.path)));
        q.extend(t.quarantine.as_ref().and_then(|r| name(&r.path)));
    }
    (o, q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FixedClock;

    fn clock() -> FixedClock {
        FixedClock(
            chrono::DateTime::parse_from_rfc3339("2026-01-10T12:00:00Z")
                .expect("time")
                .with_timezone(&chrono::Utc),
        )
    }

    fn policy(schemas: &SchemaSet) -> Policy {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/demo.toml");
        Policy::load(&path, schemas).expect("demo policy")
    }

    fn list(text: &str, as_of: &str) -> OptOutList {
        let d = chrono::NaiveDate::parse_from_str(as_of, "%Y-%m-%d").expect("date");
        OptOutList::parse(text.as_bytes(), Path::new("l.txt"), d).expect("list")
    }

    fn key() -> ProjectKey {
        ProjectKey::from_bytes(std::array::from_fn(|i| (i * 37 + 11) as u8))
    }

    #[test]
    fn no_list_and_no_exemption_is_refused() {
        let s = SchemaSet::builtin();
        let p = policy(&s);
        let t = tempfile::tempdir().expect("tmp");
        let o = ExtractOptions::new(t.path().join("in"), t.path().join("out"));
        let e = ExtractPlan::new(p, key(), None, &s, o, &clock()).expect_err("refused");
        assert!(matches!(e, ExtractError::OptOutsRequired));
        assert_eq!(
            crate::error::Classify::kind(&e),
            crate::error::ErrorKind::Refused
        );
    }

    #[test]
    fn stale_and_empty_lists_are_refused_before_inputs_are_read() {
        let s = SchemaSet::builtin();
        let t = tempfile::tempdir().expect("tmp");
        let o = ExtractOptions::new(t.path().join("in"), t.path().join("out"));
        let stale = list("9434765919\n", "2025-01-01");
        let e = ExtractPlan::new(policy(&s), key(), Some(stale), &s, o.clone(), &clock())
            .expect_err("stale");
        assert!(matches!(
            e,
            ExtractError::OptOuts(crate::optout::OptOutError::Stale { .. })
        ));
        let empty = list("nhs_number\n", "2026-01-09");
        let e =
            ExtractPlan::new(policy(&s), key(), Some(empty), &s, o, &clock()).expect_err("empty");
        assert!(matches!(
            e,
            ExtractError::OptOuts(crate::optout::OptOutError::Empty { .. })
        ));
    }

    #[test]
    fn missing_input_names_the_table() {
        let s = SchemaSet::builtin();
        let t = tempfile::tempdir().expect("tmp");
        std::fs::create_dir(t.path().join("in")).expect("in");
        let o = ExtractOptions::new(t.path().join("in"), t.path().join("out"));
        let l = list("9434765919\n", "2026-01-09");
        let e = ExtractPlan::new(policy(&s), key(), Some(l), &s, o, &clock()).expect_err("missing");
        assert!(
            matches!(e, ExtractError::Ingest(IngestError::Missing { .. })),
            "{e}"
        );
    }

    #[test]
    fn out_inside_a_workspace_is_refused() {
        let t = tempfile::tempdir().expect("tmp");
        std::fs::write(t.path().join("workspace.toml"), "").expect("ws");
        std::fs::create_dir(t.path().join("in")).expect("in");
        let e = Dirs::check(
            &t.path().join("projects/p/data"),
            &t.path().join("q"),
            &t.path().join("in"),
            false,
        )
        .expect_err("inside");
        assert!(matches!(e, paths::PathError::InsideWorkspace { .. }), "{e}");
    }

    /// An event-order file cut into many small chunks: row groups of
    /// [`crate::extract::table::CHUNKS_PER_ROW_GROUP`] chunks each, every row accounted for (a
    /// malformed row in the middle quarantined), and the same bytes for any thread count.
    #[test]
    fn row_groups_span_several_chunks_and_lose_nothing() {
        let s = SchemaSet::builtin();
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/bench.toml");
        let t = tempfile::tempdir().expect("tmp");
        let input = t.path().join("in");
        std::fs::create_dir(&input).expect("in");
        let numbers: Vec<u64> = (9_434_765_000u64..)
            .filter_map(|n| crate::nhs_number::NhsNumber::from_u64(n).map(|v| v.get()))
            .take(500)
            .collect();
        let mut csv = String::from("nhs_number,event_date,snomed_code,numeric_value,unit\n");
        let rows = 60_000usize;
        for i in 0..rows {
            if i == rows / 2 {
                csv.push_str("not-a-number,2020-01-01,38341003,,\n");
            }
            let n = numbers[(i * 7) % numbers.len()];
            csv.push_str(&format!(
                "{n},2020-01-{:02},38341003,{},mmHg\n",
                1 + i % 28,
                i % 150
            ));
        }
        std::fs::write(input.join("clinical_events.csv"), &csv).expect("csv");
        // The chunker reads at least 64 KiB at a time: chunks of about that size.
        let chunk_bytes = 64 << 10;
        let chunks = csv.len().div_ceil(chunk_bytes);
        let run = |threads: usize, name: &str| {
            let mut o = ExtractOptions::new(&input, t.path().join(name));
            o.threads = threads;
            o.csv_limits.chunk_bytes = chunk_bytes;
            let l = list("9434765919\n", "2026-01-09");
            let policy = Policy::load(&path, &s).expect("bench policy");
            let m = ExtractPlan::new(policy, key(), Some(l), &s, o, &clock())
                .and_then(|p| p.run(&clock()))
                .expect("extract runs");
            let bytes =
                std::fs::read(t.path().join(name).join("clinical_events.parquet")).expect("output");
            (m, bytes)
        };
        let (m, one) = run(1, "one");
        let r = &m.tables["clinical_events"];
        assert_eq!(r.rows_read, rows as u64 + 1);
        assert_eq!(r.rows_rejected, 1);
        assert_eq!(
            r.rows_written + r.rows_removed_ndoo + r.rows_removed_type1,
            rows as u64
        );
        let file = std::fs::File::open(t.path().join("one/clinical_events.parquet")).expect("open");
        let reader = parquet::file::reader::SerializedFileReader::new(file).expect("parquet");
        let groups = parquet::file::reader::FileReader::metadata(&reader).num_row_groups();
        assert!(chunks > 16, "{chunks} chunks");
        assert!(
            groups >= 2
                && groups * 2 < chunks
                && groups <= chunks.div_ceil(crate::extract::table::CHUNKS_PER_ROW_GROUP),
            "{groups} row groups from about {chunks} chunks"
        );
        for threads in [2, 3] {
            let (_, other) = run(threads, &format!("t{threads}"));
            assert!(one == other, "--threads {threads} wrote different bytes");
        }
    }
}
