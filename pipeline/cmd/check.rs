//! `tre check`: check an aggregate table for disclosure risk before it leaves the TRE.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use tre_pipeline::disclosure::{
    self, Format, NkRule, Overrides, RoleSpec, Rounding, RoundingMethod, Rules,
};

use super::{CmdError, CmdResult, Ctx};

/// Check an aggregate table (CSV or Parquet) against output rules and report every cell that
/// fails, with the rule and the reason.
///
/// Every hidden cell is audited by a linear-programming attacker who knows the table's
/// structure, the rules and the true totals: each must keep the protection interval the
/// rules require, or the table may not be released and --apply writes nothing.
///
/// Exit status: 0 the table may be released as it is, 1 it may not (or it looks like
/// row-level data, or --apply cannot protect it), 2 error (unreadable or malformed table,
/// bad rules).
///
/// Column roles are inferred from names unless given (a query job's result gets them from
/// its query plan instead): whole-number columns named n, count or *_count are counts
/// (negative counts are refused); columns named like percentages or ratios (pct, share,
/// rate, ...) are recomputed from the published counts; means are hidden with their count;
/// numeric columns named like sums (or non-integer) are magnitudes;
/// `<magnitude>_top1`, `_top2`... hold each cell's largest contributions for the dominance
/// rules; everything else is a dimension. A dimension value "Total" or "All" marks a margin.
///
/// Examples:
///   tre check table.csv --rules opensafely
///   tre check table.parquet --rules acro-default --json
///   tre check table.csv --rules policies/output-rules/ons-srs.toml --threshold 10 --apply safe.csv
///   tre check table.csv --rules nhse-sde --format markdown > report.md
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The table to check (`.csv`, or `.parquet`).
    pub table: PathBuf,
    /// Rules: a preset (opensafely, opensafely-midpoint6, acro-default, ons-srs, nhse-sde) or a rules file.
    #[arg(long)]
    pub rules: String,
    /// Count columns (repeatable; default: inferred).
    #[arg(long = "counts", num_args = 1..)]
    pub counts: Vec<String>,
    /// Dimension columns (repeatable; default: inferred).
    #[arg(long = "dims", num_args = 1..)]
    pub dims: Vec<String>,
    /// Magnitude columns (repeatable; default: inferred).
    #[arg(long = "magnitudes", num_args = 1..)]
    pub magnitudes: Vec<String>,
    /// Largest contributions of a magnitude: `MAG=TOP1,TOP2,...` (repeatable).
    #[arg(long = "contributors")]
    pub contributors: Vec<String>,
    /// The table includes margins (total rows); it is an error if none are found.
    #[arg(long, conflicts_with = "no_margins")]
    pub margins: bool,
    /// The table has no margins.
    #[arg(long)]
    pub no_margins: bool,
    /// A dimension value that marks a total (repeatable; default: Total, All).
    #[arg(long = "total-label")]
    pub total_labels: Vec<String>,
    /// Override the threshold: the smallest count that may be published.
    #[arg(long)]
    pub threshold: Option<u64>,
    /// Treat zero counts as disclosive.
    #[arg(long, conflicts_with = "zeros_safe")]
    pub zeros_disclosive: bool,
    /// Treat zero counts as safe.
    #[arg(long)]
    pub zeros_safe: bool,
    /// Turn secondary suppression off (then totals may reveal suppressed cells).
    #[arg(long)]
    pub no_secondary: bool,
    /// Override rounding: `none`, a base such as `5` (nearest), or `midpoint6`.
    #[arg(long)]
    pub round: Option<String>,
    /// Override the p-ratio (p%) rule, e.g. 0.1.
    #[arg(long)]
    pub p_ratio: Option<f64>,
    /// Override the (n,k) rules: `N:K`, e.g. `2:0.9` (repeatable).
    #[arg(long)]
    pub nk: Vec<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Report format for people.
    #[arg(long, default_value = "text", value_parser = ["text", "markdown", "html"])]
    pub format: String,
    /// Write the safe version of the table here (same format as the input).
    #[arg(long)]
    pub apply: Option<PathBuf>,
}

fn overrides(a: &Args) -> anyhow::Result<Overrides> {
    let rounding = match a.round.as_deref() {
        None => None,
        Some("none") => Some(Rounding {
            method: RoundingMethod::None,
            base: 0,
        }),
        Some("midpoint6") => Some(Rounding {
            method: RoundingMethod::Midpoint,
            base: 6,
        }),
        Some(b) => Some(Rounding {
            method: RoundingMethod::Nearest,
            base: b.parse().with_context(|| {
                format!("--round {b:?}: expected none, midpoint6 or a base such as 5")
            })?,
        }),
    };
    let nk = if a.nk.is_empty() {
        None
    } else {
        Some(
            a.nk.iter()
                .map(|s| {
                    let (n, k) = s
                        .split_once(':')
                        .ok_or_else(|| anyhow!("--nk {s:?}: expected N:K, e.g. 2:0.9"))?;
                    Ok(NkRule {
                        n: n.parse()
                            .with_context(|| format!("--nk {s:?}: N is not a whole number"))?,
                        k: k.parse()
                            .with_context(|| format!("--nk {s:?}: K is not a number"))?,
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?,
        )
    };
    Ok(Overrides {
        min_count: a.threshold,
        zeros_disclosive: if a.zeros_disclosive {
            Some(true)
        } else if a.zeros_safe {
            Some(false)
        } else {
            None
        },
        secondary: a.no_secondary.then_some(false),
        rounding,
        p_ratio: a.p_ratio,
        nk,
    })
}

fn role_spec(a: &Args) -> anyhow::Result<RoleSpec> {
    let opt = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    let contributors = a
        .contributors
        .iter()
        .map(|s| {
            let (m, cs) = s
                .split_once('=')
                .ok_or_else(|| anyhow!("--contributors {s:?}: expected MAG=TOP1,TOP2"))?;
            Ok((
                m.to_string(),
                cs.split(',').map(|c| c.trim().to_string()).collect(),
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(RoleSpec {
        dims: opt(&a.dims),
        counts: opt(&a.counts),
        magnitudes: opt(&a.magnitudes),
        contributors,
        margins: if a.margins {
            Some(true)
        } else if a.no_margins {
            Some(false)
        } else {
            None
        },
        total_labels: a.total_labels.clone(),
        ..RoleSpec::default()
    })
}

fn write_table(
    path: &Path,
    batch: &arrow::record_batch::RecordBatch,
    parquet_out: bool,
) -> anyhow::Result<()> {
    use tre_pipeline::durable::{AtomicFile, Mode};
    let file = AtomicFile::create(path, Mode::Shared)?;
    let file = if parquet_out {
        // Each value column's per-cell status (published / hidden / rounded(b) / midpoint6),
        // never the reason, as Parquet key-value metadata.
        let kv: Vec<parquet::file::metadata::KeyValue> = batch
            .schema()
            .metadata()
            .iter()
            .map(|(k, v)| parquet::file::metadata::KeyValue::new(k.clone(), v.clone()))
            .collect();
        let props = parquet::file::properties::WriterProperties::builder()
            .set_key_value_metadata(Some(kv))
            .build();
        let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), Some(props))?;
        w.write(batch)?;
        w.into_inner()?
    } else {
        let mut w = arrow::csv::WriterBuilder::new()
            .with_header(true)
            .build(file);
        w.write(batch)?;
        w.into_inner()
    };
    file.commit()?;
    Ok(())
}

/// Run.
pub fn run(args: Args, _ctx: &Ctx) -> CmdResult {
    let rules = Rules::resolve(&args.rules)
        .and_then(|r| {
            overrides(&args)
                .map_err(|e| disclosure::DisclosureError::Rules {
                    origin: args.rules.clone(),
                    message: e.to_string(),
                })
                .and_then(|o| r.with_overrides(&o))
        })
        .map_err(|e| CmdError::Failed(e.into()))?;
    let spec = role_spec(&args).map_err(CmdError::Failed)?;
    let batches = disclosure::read_table(&args.table).map_err(|e| CmdError::Failed(e.into()))?;
    let report = disclosure::check(&batches, &spec, &rules).map_err(|e| {
        CmdError::Failed(
            anyhow::Error::new(e).context(format!("checking {}", args.table.display())),
        )
    })?;
    let out = if args.json {
        serde_json::to_string_pretty(&report).map_err(|e| CmdError::Failed(e.into()))? + "\n"
    } else {
        report.render(match args.format.as_str() {
            "markdown" => Format::Markdown,
            "html" => Format::Html,
            _ => Format::Text,
        })
    };
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_all(out.as_bytes())
        .and_then(|_| stdout.flush());
    if let Some(path) = &args.apply {
        let safe = report.apply().map_err(CmdError::classified)?;
        write_table(path, &safe, disclosure::is_parquet(&args.table)).map_err(CmdError::Failed)?;
    }
    // The verdict does not depend on anyone reading the report (`tre check ... | head`):
    // a table that may not leave exits 1 even then; main treats a closed stdout as done.
    if !report.releasable() {
        return Ok(ExitCode::from(1));
    }
    written.context("writing the report to stdout")?;
    Ok(ExitCode::SUCCESS)
}
