//! `tre check` (placeholder until implemented).
use super::{CmdResult, Ctx};

/// Arguments.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Run.
pub fn run(_args: Args, _ctx: &Ctx) -> CmdResult {
    Err(super::CmdError::Failed(anyhow::anyhow!("tre check is not implemented yet")))
}
