//! `tre generate`: write a realistic synthetic GP extract and its opt-out list.
//!
//! Bin-only: parses flags into a [`GenerateConfig`], refuses to write into a non-empty
//! directory unless `--overwrite`, and calls [`tre_pipeline::generate`]. It prints one
//! summary line per table (counts only, never a generated value).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tre_pipeline::generate::{
    GenerateConfig, GenerateFormat, OPT_OUTS_FILE, RowOrder, generate_with_progress,
};
use tre_pipeline::schema::SchemaSet;

use super::{CmdError, CmdResult, Ctx};

/// Output format of the generated tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// CSV with a header row; carries malformed rows too.
    Csv,
    /// Parquet (zstd), typed by the schema; malformed rows are left out.
    Parquet,
}

/// Row order of the generated event tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Order {
    /// Each patient's rows together, patient after patient.
    Patient,
    /// By date, patients interleaved, as many GP system exports are (sorted within blocks
    /// of 160,000 patients).
    Event,
}

/// Write a realistic synthetic GP extract: one file per table in schemas/, plus the
/// matching National Data Opt-out list as DIR/opt_outs.txt.
///
/// Every NHS number is synthetic (ranges beginning with 9, never issued to patients),
/// with a valid Modulus 11 check digit, except for a known small share of rows that carry
/// invalid or empty NHS numbers or are malformed, as real extracts do. About 3% of
/// patients have Type 1 opt-out codes in clinical_events. The same seed gives the same
/// bytes.
///
/// Examples:
///
///   tre generate --patients 1000 --out /tmp/gp
///
///   tre generate --patients 1000000 --seed 7 --out /tmp/gp1m --format parquet
///
///   tre generate --patients 1000000 --order event --out /tmp/gp1m-by-date
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of patients to generate.
    #[arg(long, value_name = "N")]
    pub patients: u64,
    /// Random seed; the same seed and options give the same bytes.
    #[arg(long, value_name = "S", default_value_t = 1)]
    pub seed: u64,
    /// Output directory (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Csv)]
    pub format: Format,
    /// Average clinical events per patient (older patients have more).
    #[arg(long, value_name = "F", default_value_t = 10.0)]
    pub events_per_patient: f64,
    /// Share of patients on the National Data Opt-out list.
    #[arg(long, value_name = "F", default_value_t = 0.05)]
    pub opt_out_share: f64,
    /// Write into DIR even if it is not empty (replacing the generated files).
    #[arg(long)]
    pub overwrite: bool,
    /// Leave out the injected faults (invalid or missing NHS numbers, malformed rows):
    /// clean input for benchmarks that compare tools on the same rows.
    #[arg(long)]
    pub no_faults: bool,
    /// Row order of every table but patients: `patient` keeps each patient's rows
    /// together; `event` sorts rows by their date, patients interleaved.
    #[arg(long, value_enum, default_value_t = Order::Patient)]
    pub order: Order,
}

/// Run `tre generate`.
pub fn run(args: Args, ctx: &Ctx) -> CmdResult {
    let cfg = GenerateConfig {
        patients: args.patients,
        seed: args.seed,
        format: match args.format {
            Format::Csv => GenerateFormat::Csv,
            Format::Parquet => GenerateFormat::Parquet,
        },
        events_per_patient: args.events_per_patient,
        opt_out_share: args.opt_out_share,
        faults: !args.no_faults,
        order: match args.order {
            Order::Patient => RowOrder::Patient,
            Order::Event => RowOrder::Event,
        },
        ..GenerateConfig::default()
    };
    cfg.validate().map_err(CmdError::classified)?;
    let schemas = SchemaSet::builtin();
    prepare_out(&args.out, args.overwrite, &schemas)?;

    let bar = ctx.progress().then(|| {
        let bar = indicatif::ProgressBar::new(args.patients);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} patients ({eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let started = std::time::Instant::now();
    let summary = generate_with_progress(&schemas, &cfg, &args.out, &mut |done, _| {
        if let Some(b) = &bar {
            b.set_position(done);
        }
    })
    .with_context(|| format!("tre generate into {} failed", args.out.display()))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if !ctx.quiet {
        for (name, t) in &summary.tables {
            println!(
                "{name}: {} rows ({} invalid NHS numbers, {} missing, {} malformed) -> {}",
                t.rows,
                t.invalid_nhs,
                t.missing_nhs,
                t.malformed,
                t.files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        println!(
            "{OPT_OUTS_FILE}: {} NHS numbers; Type 1: {} dissenters ({} also on the list), {} withdrawn -> {}",
            summary.opt_outs,
            summary.type1_dissenters,
            summary.type1_dissenters_on_opt_out_list,
            summary.type1_withdrawn,
            summary.opt_outs_path.display()
        );
        println!(
            "{} patients in {:.1}s",
            summary.patients,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Refuse a non-empty output directory unless `--overwrite`; with it, remove the files a
/// previous run of either format left for these tables, so a reader never sees both
/// `<table>.csv` and `<table>.parquet`.
fn prepare_out(
    out: &std::path::Path,
    overwrite: bool,
    schemas: &SchemaSet,
) -> Result<(), CmdError> {
    let non_empty = match std::fs::read_dir(out) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            return Err(CmdError::Failed(anyhow::Error::new(e).context(format!(
                "cannot read output directory {}",
                out.display()
            ))));
        }
    };
    if !non_empty {
        return Ok(());
    }
    if !overwrite {
        return Err(CmdError::Failed(anyhow::anyhow!(
            "output directory {} is not empty; choose another --out or pass --overwrite",
            out.display()
        )));
    }
    for table in schemas.names() {
        for ext in ["csv", "parquet"] {
            let path = out.join(format!("{table}.{ext}"));
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(CmdError::Failed(
                        anyhow::Error::new(e).context(format!("cannot replace {}", path.display())),
                    ));
                }
            }
        }
    }
    Ok(())
}
