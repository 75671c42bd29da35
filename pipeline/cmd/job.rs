//! `tre job`: an analyst's client for query jobs (HTTP API only).
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use tre_pipeline::client::{Client, default_token_file, read_token_file};

use super::{CmdError, CmdResult, Ctx};

/// Where the server is and who you are: shared by `tre job` and `tre release`.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// The TRE server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Your token file (mode 0600); default $XDG_CONFIG_HOME/tre/token or
    /// ~/.config/tre/token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

impl Connection {
    /// A client for this server, with the token from the (private) token file.
    pub fn client(&self) -> Result<Client, CmdError> {
        let path = match &self.token_file {
            Some(p) => p.clone(),
            None => default_token_file(
                std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from),
                std::env::var_os("HOME").map(PathBuf::from),
            )
            .ok_or_else(|| CmdError::Failed(anyhow!("no token file: pass --token-file")))?,
        };
        let token = read_token_file(&path).map_err(CmdError::classified)?;
        Ok(Client::new(&self.server, token))
    }
}

/// Submit SQL jobs to the research environment and read their outcome: the job's
/// state, its disclosure report and its safe (suppressed and rounded) table. Results
/// stay in the TRE; row-level data is never shown.
///
/// Examples:
///   tre job submit --server http://127.0.0.1:8080 --project demo --sql counts.sql --purpose "age-sex counts" --wait
///   tre job status --project demo job-0123456789abcdef
///   tre job safe --project demo job-0123456789abcdef > counts.csv
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Queue a job; prints its id.
    Submit {
        #[command(flatten)]
        conn: Connection,
        /// The project.
        #[arg(long)]
        project: String,
        /// File holding one SQL query: one aggregate (SELECT keys, COUNT(DISTINCT
        /// patient_pseudonym), COUNT(*), COUNT(x), SUM(x), AVG(x), ratios such as
        /// SUM(x) / COUNT(*), shares such as 100.0 * COUNT(*) / SUM(COUNT(*)) OVER (), and
        /// MIN/MAX/MEDIAN where the rules allow; GROUP BY the keys) over rows that are each
        /// one patient's own data (docs/service.md, Job request format).
        #[arg(long)]
        sql: PathBuf,
        /// Why the job is run (recorded in the audit log).
        #[arg(long)]
        purpose: String,
        /// Wait for the job to end and print its status.
        #[arg(long)]
        wait: bool,
    },
    /// A job's state, verdict and disclosure report (JSON).
    Status {
        #[command(flatten)]
        conn: Connection,
        /// The project.
        #[arg(long)]
        project: String,
        /// The job id.
        job: String,
    },
    /// A job's safe table as CSV (hidden cells empty).
    Safe {
        #[command(flatten)]
        conn: Connection,
        /// The project.
        #[arg(long)]
        project: String,
        /// The job id.
        job: String,
    },
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// Run.
pub fn run(args: Args, _ctx: &Ctx) -> CmdResult {
    match args.command {
        Command::Submit {
            conn,
            project,
            sql,
            purpose,
            wait,
        } => {
            let client = conn.client()?;
            let text = std::fs::read_to_string(&sql)
                .map_err(|e| CmdError::Failed(anyhow!("cannot read {}: {e}", sql.display())))?;
            let v = client
                .submit(&project, &text, &purpose)
                .map_err(CmdError::classified)?;
            let job = v["job"].as_str().unwrap_or_default().to_string();
            if !wait {
                println!("{job}");
                return Ok(ExitCode::SUCCESS);
            }
            let v = client
                .wait(&project, &job, Duration::from_secs(24 * 3600))
                .map_err(CmdError::classified)?;
            println!("{}", pretty(&v));
            Ok(if v["state"] == "succeeded" {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Status { conn, project, job } => {
            let v = conn
                .client()?
                .job(&project, &job)
                .map_err(CmdError::classified)?;
            println!("{}", pretty(&v));
            Ok(ExitCode::SUCCESS)
        }
        Command::Safe { conn, project, job } => {
            let t = conn
                .client()?
                .safe(&project, &job)
                .map_err(CmdError::classified)?;
            print!("{t}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
