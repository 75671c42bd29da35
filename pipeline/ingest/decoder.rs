//! Untrusted Parquet is decoded in a child process under resource limits.
//!
//! The parquet crate (59, pinned by DataFusion 55) aborts, panics or allocates without
//! bound on hostile metadata (a 31-byte file asks for 206 GB). So the extract never
//! decodes an input Parquet file itself: it runs `tre internal parquet-read FILE`, which
//! sets `RLIMIT_AS` and `RLIMIT_CPU`, decodes the file and streams the batches to its
//! stdout as Arrow IPC. The parent reads that stream (written by our own code, so safe to
//! read) and turns any failure of the child (an error, a crash, a limit hit) into a
//! clear error naming the file. Danger: the child's stderr is shown to the user, so the
//! child writes only its own messages there, never a value from the file.

use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};

use arrow::array::RecordBatchReader;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;

use super::IngestError;

/// Address space allowed to the decoding child.
pub const DECODER_ADDRESS_SPACE: u64 = 512 << 20;
/// CPU seconds allowed to the decoding child.
pub const DECODER_CPU_SECONDS: u64 = 3600;
/// The hidden subcommand that decodes one file.
pub const SUBCOMMAND: [&str; 2] = ["internal", "parquet-read"];

/// The child side: limit this process, decode `path` and write its batches to `out` as
/// an Arrow IPC stream. Errors are Parquet messages (never values).
pub fn serve(path: &Path, batch_rows: usize, out: impl Write) -> Result<(), String> {
    limit_self().map_err(|e| format!("cannot set resource limits: {e}"))?;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| format!("not a readable Parquet file ({e})"))?
        .with_batch_size(batch_rows.max(1))
        .build()
        .map_err(|e| format!("cannot read ({e})"))?;
    let schema = reader.schema();
    let mut w = StreamWriter::try_new(std::io::BufWriter::new(out), &schema)
        .map_err(|e| format!("cannot stream ({e})"))?;
    for b in reader {
        let b = b.map_err(|e| format!("cannot decode row group ({e})"))?;
        w.write(&b).map_err(|e| format!("cannot stream ({e})"))?;
    }
    w.finish().map_err(|e| format!("cannot stream ({e})"))?;
    Ok(())
}

fn limit_self() -> std::io::Result<()> {
    use rustix::process::{Resource, Rlimit, setrlimit};
    for (res, n) in [
        (Resource::As, DECODER_ADDRESS_SPACE),
        (Resource::Cpu, DECODER_CPU_SECONDS),
    ] {
        setrlimit(
            res,
            Rlimit {
                current: Some(n),
                maximum: Some(n),
            },
        )?;
    }
    Ok(())
}

/// The parent side: a running decoder and its stream.
pub(super) struct Decoder {
    child: Child,
    stderr: Option<ChildStderr>,
    pub(super) stream: StreamReader<BufReader<ChildStdout>>,
    path: PathBuf,
}

impl Decoder {
    /// Start the decoder for `path` and read the file's schema from it.
    pub(super) fn start(path: &Path, batch_rows: usize) -> Result<Self, IngestError> {
        let io = |source| IngestError::Io {
            path: path.to_path_buf(),
            source,
        };
        let exe = std::env::current_exe().map_err(io)?;
        let mut child = Command::new(exe)
            .args(SUBCOMMAND)
            .arg("--batch-rows")
            .arg(batch_rows.to_string())
            .arg(path)
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io)?;
        let (Some(stdout), stderr) = (child.stdout.take(), child.stderr.take()) else {
            return Err(io(std::io::Error::other("the decoder has no stdout")));
        };
        let stream = match StreamReader::try_new(BufReader::new(stdout), None) {
            Ok(s) => s,
            Err(_) => return Err(failed(path, child, stderr)),
        };
        Ok(Decoder {
            child,
            stderr,
            stream,
            path: path.to_path_buf(),
        })
    }

    /// The next batch, or the child's failure.
    pub(super) fn next(&mut self) -> Result<Option<arrow::array::RecordBatch>, IngestError> {
        match self.stream.next() {
            Some(Ok(b)) => Ok(Some(b)),
            Some(Err(_)) => Err(self.failure()),
            None => match self.child.wait() {
                Ok(s) if s.success() => Ok(None),
                _ => Err(self.failure()),
            },
        }
    }

    fn failure(&mut self) -> IngestError {
        let _ = self.child.kill();
        let status = self.child.wait().ok();
        describe(&self.path, status, self.stderr.take())
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn failed(path: &Path, mut child: Child, stderr: Option<ChildStderr>) -> IngestError {
    let status = child.wait().ok();
    describe(path, status, stderr)
}

/// The child's own message (bounded), or what killed it.
fn describe(
    path: &Path,
    status: Option<std::process::ExitStatus>,
    stderr: Option<ChildStderr>,
) -> IngestError {
    let mut msg = String::new();
    if let Some(e) = stderr {
        let _ = e.take(4096).read_to_string(&mut msg);
    }
    // Its first line: the message, never a backtrace.
    let msg = msg.lines().next().unwrap_or("").trim();
    let message = if !msg.is_empty() {
        msg.to_string()
    } else {
        use std::os::unix::process::ExitStatusExt;
        match status.and_then(|s| s.signal()) {
            Some(sig) => format!(
                "the Parquet decoder stopped (signal {sig}): the file's metadata asks for more memory or time than any real extract needs ({} MiB, {} s); the file is malformed or hostile",
                DECODER_ADDRESS_SPACE >> 20,
                DECODER_CPU_SECONDS
            ),
            None => "the Parquet decoder failed without a message: the file is malformed".into(),
        }
    };
    IngestError::Parquet {
        path: path.to_path_buf(),
        message,
    }
}
