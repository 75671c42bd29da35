//! One file per command. Each holds a clap `Args` struct (its doc comments are the help
//! page) and a short `run` that calls the library and maps its outcome to an exit code.

use std::io::IsTerminal;
use std::process::ExitCode;

use tre_pipeline::error::{Classify, ErrorKind};

pub mod admin;
pub mod audit;
pub mod check;
#[cfg(feature = "cluster")]
pub mod cluster;
pub mod demo;
pub mod extract;
pub mod generate;
pub mod internal;
pub mod job;
pub mod keygen;
pub mod purge;
pub mod register;
pub mod release;
pub mod run_job;
pub mod serve;

/// Options shared by every command.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// `--quiet`: no progress, no chatter.
    pub quiet: bool,
}

impl Ctx {
    /// Whether to draw progress bars: not quiet and stderr is a terminal.
    #[allow(dead_code)]
    pub fn progress(&self) -> bool {
        !self.quiet && std::io::stderr().is_terminal()
    }
}

/// A command's failure, already classified for the exit status.
#[derive(Debug)]
pub enum CmdError {
    /// Refused by a rule (exit 1): stale list, weak key, policy violation.
    Refused(anyhow::Error),
    /// Bad usage or unreadable input (exit 2).
    Failed(anyhow::Error),
}

impl CmdError {
    /// Refused (exit 1) when the library's error is a refusal by a rule, otherwise failed
    /// (exit 2); the kind is decided once, by the error's own [`Classify`] impl.
    pub fn classified<E>(e: E) -> Self
    where
        E: Classify + std::error::Error + Send + Sync + 'static,
    {
        match e.kind() {
            ErrorKind::Refused => CmdError::Refused(e.into()),
            ErrorKind::Failed => CmdError::Failed(e.into()),
            ErrorKind::Bug => CmdError::Failed(
                anyhow::Error::new(e).context("this is a bug in tre; please report it"),
            ),
        }
    }

    /// Whether the failure is only a closed stdout (a reader that went away).
    pub fn is_broken_pipe(&self) -> bool {
        let (CmdError::Refused(e) | CmdError::Failed(e)) = self;
        e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        })
    }

    /// Print the error chain to stderr and return the exit code.
    pub fn report(self) -> ExitCode {
        let (code, err) = match self {
            CmdError::Refused(e) => (1, e),
            CmdError::Failed(e) => (2, e),
        };
        let label = if code == 1 { "refused" } else { "error" };
        let top = err.to_string();
        eprintln!("tre: {label}: {top}");
        for cause in err.chain().skip(1) {
            let c = cause.to_string();
            if !top.contains(&c) {
                eprintln!("  caused by: {c}");
            }
        }
        ExitCode::from(code)
    }
}

impl From<anyhow::Error> for CmdError {
    fn from(e: anyhow::Error) -> Self {
        CmdError::Failed(e)
    }
}

/// What every `run` returns.
pub type CmdResult = Result<ExitCode, CmdError>;

/// Logs go to stderr; `RUST_LOG` selects the level (default `warn`, `error` with `--quiet`).
pub fn init_logging(quiet: bool) {
    let default = if quiet { "error" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
