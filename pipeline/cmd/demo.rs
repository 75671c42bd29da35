//! `tre demo`: the whole story on freshly generated synthetic data.
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use tre_pipeline::client::Client;
use tre_pipeline::clock::{Clock, SystemClock};
use tre_pipeline::generate::{GenerateConfig, generate};
use tre_pipeline::pseudonym::ProjectKey;
use tre_pipeline::schema::SchemaSet;
use tre_pipeline::server::{self, ServeOptions};
use tre_pipeline::tre::actions::admin::Admin;

use super::{CmdError, CmdResult, Ctx};

const DEMO_POLICY: &str = include_str!("../../policies/demo.toml");
const MARKER: &str = ".tre-demo";
const DEMO_SQL: &str =
    "SELECT age_band, COUNT(*) AS n FROM patients GROUP BY age_band ORDER BY age_band";

/// Run the whole flow on synthetic data in a local folder: generate a GP extract and
/// opt-out list, make a project key, extract with policies/demo.toml, create a TRE
/// workspace, start the server on a loopback port, submit a job as the analyst, request
/// its release, approve it as two output checkers (which exports it to the outbox), and
/// verify the audit log. Everything it makes stays in DIR.
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

/// Step 1: synthetic data, a key, and the extract.
fn extract(args: &Args, ctx: &Ctx, clock: &SystemClock) -> Result<PathBuf, CmdError> {
    let dir = &args.dir;
    let input = dir.join("gp-extract");
    let cfg = GenerateConfig {
        patients: args.patients,
        seed: args.seed,
        extract_date: clock.today(),
        ..GenerateConfig::default()
    };
    say(
        ctx,
        format!(
            "1/5 generating {} synthetic patients in {}",
            args.patients,
            input.display()
        ),
    );
    generate(&SchemaSet::builtin(), &cfg, &input).map_err(CmdError::classified)?;
    let key_file = dir.join("project.key");
    let key = ProjectKey::generate().map_err(|e| CmdError::Failed(e.into()))?;
    key.write_new(&key_file)
        .map_err(|e| CmdError::Failed(e.into()))?;
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, DEMO_POLICY).map_err(|e| CmdError::Failed(e.into()))?;
    say(
        ctx,
        format!(
            "2/5 extracting with {} (key fingerprint {})",
            policy.display(),
            key.fingerprint()
        ),
    );
    let out = dir.join("extract");
    let eargs = super::extract::Args {
        policy,
        input: input.clone(),
        opt_outs: Some(input.join("opt_outs.txt")),
        ndoo_allow_list: None,
        opt_outs_as_of: Some(clock.today()),
        key_file,
        out: out.clone(),
        quarantine: None,
        overwrite: false,
        allow_empty_opt_outs: false,
        threads: 0,
        max_record_bytes: tre_pipeline::ingest::MAX_RECORD_BYTES,
        max_fields: tre_pipeline::ingest::MAX_FIELDS,
        schemas: None,
        scheduler: None,
        cluster_scratch: None,
        cluster_timeout: 600,
    };
    let quiet = Ctx { quiet: true };
    super::extract::execute(&eargs, &quiet, clock)?;
    Ok(out)
}

fn say(ctx: &Ctx, s: String) {
    if !ctx.quiet {
        eprintln!("{s}");
    }
}

/// Step 2: the workspace, three people, the project, its outbox and dataset.
fn workspace(dir: &Path, extract: &Path) -> Result<(PathBuf, PathBuf, [String; 3]), CmdError> {
    let ws = dir.join("workspace");
    let outbox = dir.join("outbox");
    std::fs::create_dir_all(&outbox).map_err(|e| CmdError::Failed(e.into()))?;
    let admin = Admin::init(&ws, Arc::new(SystemClock)).map_err(CmdError::classified)?;
    let tokens = ["analyst", "checker1", "checker2"]
        .map(|u| admin.add_user(u, 1).map(|t| t.expose().to_string()));
    let [a, b, c] = tokens;
    let tokens = [
        a.map_err(CmdError::classified)?,
        b.map_err(CmdError::classified)?,
        c.map_err(CmdError::classified)?,
    ];
    admin
        .add_project(&dir.join("policy.toml"), &SchemaSet::builtin())
        .map_err(CmdError::classified)?;
    admin
        .set_outbox("demo", &outbox)
        .map_err(CmdError::classified)?;
    admin
        .add_dataset("demo", extract)
        .map_err(CmdError::classified)?;
    Ok((ws, outbox, tokens))
}

/// Step 3: the analyst's job, the request and two approvals, over HTTP.
fn story(base: &str, tokens: &[String; 3], ctx: &Ctx) -> anyhow::Result<serde_json::Value> {
    let client = |i: usize| {
        Client::new(
            base,
            tre_pipeline::tre::users::Token::new(tokens[i].clone()),
        )
    };
    let analyst = client(0);
    let job = analyst.submit("demo", DEMO_SQL, "demo: patients by sex and age band")?;
    let job = job["job"].as_str().unwrap_or_default().to_string();
    say(
        ctx,
        format!("4/5 analyst submitted job {job}; waiting for it"),
    );
    let status = analyst.wait("demo", &job, Duration::from_secs(60))?;
    if status["state"] != "succeeded" {
        return Err(anyhow!(
            "the demo job ended {}: {}",
            status["state"],
            status["reason"]
        ));
    }
    say(
        ctx,
        format!("    {}", status["verdict"].as_str().unwrap_or_default()),
    );
    let r = analyst.request(
        "demo",
        &job,
        "demo: the table for the paper",
        "patients by sex and age band",
    )?;
    let release = r["release"].as_str().unwrap_or_default().to_string();
    client(1).review(
        "demo",
        &release,
        true,
        "small counts suppressed and rounded",
    )?;
    let v = client(2).review("demo", &release, true, "agree: safe to release")?;
    say(
        ctx,
        format!("5/5 release {release}: {} after two approvals", v["state"]),
    );
    Ok(v)
}

/// Run.
pub fn run(args: Args, ctx: &Ctx) -> CmdResult {
    let started = std::time::Instant::now();
    fresh_dir(&args.dir).map_err(CmdError::Failed)?;
    let clock = SystemClock;
    let extract = extract(&args, ctx, &clock)?;
    let (ws, outbox, tokens) = workspace(&args.dir, &extract)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the server runtime")?;
    let opts = ServeOptions {
        workspace: ws.clone(),
        workers: 1,
        exe: std::env::current_exe().context("cannot find the tre binary")?,
        scheduler: None,
        audit: tre_pipeline::tre::auditor::AuditorOptions {
            every: 100,
            ..Default::default()
        },
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (base, server) = rt.block_on(async {
        let app = server::start(&opts, Arc::new(SystemClock)).map_err(CmdError::classified)?;
        let listener = server::bind("127.0.0.1:0")
            .await
            .map_err(CmdError::classified)?;
        let addr = listener.local_addr().context("local address")?;
        let handle = tokio::spawn(server::serve(
            app.clone(),
            super::serve::service(&app, tre_pipeline::web::WebOptions::default()),
            listener,
            async {
                let _ = stopped.await;
            },
        ));
        Ok::<_, CmdError>((format!("http://{addr}"), handle))
    })?;
    say(
        ctx,
        format!("3/5 workspace {} served at {base}", ws.display()),
    );
    let outcome = story(&base, &tokens, ctx);
    let _ = stop.send(());
    rt.block_on(server)
        .context("the server task failed")?
        .map_err(CmdError::classified)?;
    let v = outcome.map_err(CmdError::Failed)?;
    let report = tre_pipeline::audit::verify(&tre_pipeline::audit::workspace_log_path(&ws))
        .map_err(CmdError::classified)?;
    if !ctx.quiet {
        println!();
        println!("released files (in {}):", outbox.display());
        for f in v["files"].as_array().into_iter().flatten() {
            println!(
                "  {}  sha256 {}",
                f["path"].as_str().unwrap_or_default(),
                f["sha256"].as_str().unwrap_or_default()
            );
        }
        println!(
            "audit log: {} ({} entries, {})",
            tre_pipeline::audit::workspace_log_path(&ws).display(),
            report.lines,
            if report.problem.is_none() {
                "verifies"
            } else {
                "DOES NOT VERIFY"
            }
        );
        println!("extract: {}", extract.display());
        println!(
            "try: tre audit show --log {}",
            tre_pipeline::audit::workspace_log_path(&ws).display()
        );
        println!("done in {:.1}s", started.elapsed().as_secs_f64());
    }
    if report.problem.is_some() {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
