//! `tre demo`: the whole flow on freshly generated synthetic data.
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use tre_pipeline::clock::{Clock, SystemClock};
use tre_pipeline::generate::{GenerateConfig, generate};
use tre_pipeline::pseudonym::ProjectKey;
use tre_pipeline::schema::SchemaSet;

use super::{CmdError, CmdResult, Ctx};

const DEMO_POLICY: &str = include_str!("../../policies/demo.toml");
const MARKER: &str = ".tre-demo";

/// Run the whole extract flow on synthetic data in a local folder: generate a GP extract
/// and opt-out list, make a project key, run `tre extract` with policies/demo.toml, and
/// print what happened to every table. Everything it makes stays in DIR.
///
/// Examples:
///   tre demo
///   tre demo --dir /tmp/demo --patients 100000
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder for the demo (recreated on every run; refused if it holds anything else).
    #[arg(long, default_value = "tre-demo")]
    pub dir: PathBuf,
    /// Synthetic patients to generate.
    #[arg(long, default_value_t = 20_000)]
    pub patients: u64,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

fn fresh_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)?.next().is_none();
        if !empty && !dir.join(MARKER).exists() {
            return Err(anyhow!(
                "{} exists and is not a demo folder; choose another with --dir",
                dir.display()
            ));
        }
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("removing old demo {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(MARKER), "made by `tre demo`; safe to delete\n")?;
    Ok(())
}

/// Run.
pub fn run(args: Args, ctx: &Ctx) -> CmdResult {
    let dir = &args.dir;
    fresh_dir(dir).map_err(CmdError::Failed)?;
    let input = dir.join("gp-extract");
    let clock = SystemClock;
    let cfg = GenerateConfig {
        patients: args.patients,
        seed: args.seed,
        extract_date: clock.today(),
        ..GenerateConfig::default()
    };
    let started = std::time::Instant::now();
    if !ctx.quiet {
        eprintln!(
            "1/3 generating {} synthetic patients in {}",
            args.patients,
            input.display()
        );
    }
    generate(&SchemaSet::builtin(), &cfg, &input).map_err(|e| CmdError::Failed(e.into()))?;
    let key_file = dir.join("project.key");
    let key = ProjectKey::generate().map_err(|e| CmdError::Failed(e.into()))?;
    key.write_new(&key_file)
        .map_err(|e| CmdError::Failed(e.into()))?;
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, DEMO_POLICY).map_err(|e| CmdError::Failed(e.into()))?;
    if !ctx.quiet {
        eprintln!(
            "2/3 new project key {} (fingerprint {})",
            key_file.display(),
            key.fingerprint()
        );
        eprintln!("3/3 extracting with {}", policy.display());
    }
    let out = dir.join("extract");
    let eargs = super::extract::Args {
        policy,
        input: input.clone(),
        opt_outs: Some(input.join("opt_outs.txt")),
        opt_outs_as_of: Some(clock.today()),
        key_file,
        out: out.clone(),
        quarantine: None,
        overwrite: false,
        allow_empty_opt_outs: false,
        threads: 0,
        schemas: None,
    };
    let m = super::extract::execute(&eargs, ctx, &clock)?;
    if !ctx.quiet {
        println!();
        super::extract::print_summary(&m, &out);
        let mut q = out.as_os_str().to_owned();
        q.push(".quarantine");
        println!(
            "rejected rows: {} (mode 0600, with line numbers and reasons)",
            PathBuf::from(q).display()
        );
        println!("done in {:.1}s", started.elapsed().as_secs_f64());
    }
    Ok(ExitCode::SUCCESS)
}
