//! `tre generate` (placeholder until implemented).
use super::{CmdResult, Ctx};

/// Arguments.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Run.
pub fn run(_args: Args, _ctx: &Ctx) -> CmdResult {
    Err(super::CmdError::Failed(anyhow::anyhow!("tre generate is not implemented yet")))
}
