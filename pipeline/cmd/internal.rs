//! `tre internal ...`: hidden helpers the `tre` binary runs as its own child processes.
use std::path::PathBuf;
use std::process::ExitCode;

use super::{CmdResult, Ctx};

/// Internal helpers (not for people: their interface may change without notice).
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Internal,
}

#[derive(Debug, clap::Subcommand)]
enum Internal {
    /// Decode an untrusted Parquet file under resource limits; Arrow IPC to stdout.
    ParquetRead {
        /// Rows per batch.
        #[arg(long, default_value_t = 65536)]
        batch_rows: usize,
        /// The file.
        file: PathBuf,
    },
}

/// Run.
pub fn run(args: Args, _ctx: &Ctx) -> CmdResult {
    match args.command {
        Internal::ParquetRead { batch_rows, file } => {
            // A panic inside the decoder says only that the file is malformed.
            std::panic::set_hook(Box::new(|_| {
                eprintln!("the Parquet decoder crashed on this file: its metadata is malformed");
            }));
            let out = std::io::stdout().lock();
            match tre_pipeline::ingest::decoder::serve(&file, batch_rows, out) {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(msg) => {
                    eprintln!("{msg}");
                    Ok(ExitCode::from(2))
                }
            }
        }
    }
}
