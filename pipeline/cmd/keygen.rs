//! `tre keygen`: a new project key.
use std::path::PathBuf;
use std::process::ExitCode;

use tre_pipeline::pseudonym::ProjectKey;

use super::{CmdError, CmdResult, Ctx};

/// Write a new project key: 32 bytes from the operating system's random source, as 64
/// hex characters, to a new file with mode 0600. Never overwrites an existing file.
/// Prints the key's fingerprint (never the key).
///
/// Examples:
///   tre keygen --out project.key
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The key file to create.
    #[arg(long)]
    pub out: PathBuf,
}

/// Run.
pub fn run(args: Args, ctx: &Ctx) -> CmdResult {
    let key = ProjectKey::generate().map_err(|e| CmdError::Failed(e.into()))?;
    key.write_new(&args.out).map_err(CmdError::classified)?;
    if !ctx.quiet {
        println!(
            "wrote {} (fingerprint {})",
            args.out.display(),
            key.fingerprint()
        );
    }
    Ok(ExitCode::SUCCESS)
}
