//! Reading an append-only log incrementally: each call hands over only the complete lines
//! appended since the previous one.
//!
//! Owns [`LogTail`], the position a reader has reached in a log (the file's identity, the
//! offset of the next unread byte and the last line read). Before reading on it checks
//! that it is still the same log: the same file (device and inode), no shorter, and the
//! last line read still in its place; otherwise the log was replaced, cut or rewritten,
//! and the reader is told to start again from the beginning. A line not yet ended by a
//! newline (an append in progress, or a torn tail) is left for the next call. Danger:
//! this is a reading aid, never a check: whether the log can be trusted is
//! [`super::verify`]'s question, and a reader that starts again must drop everything it
//! built from the old log.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// How far a reader has read a log (see the module docs).
#[derive(Debug, Default, Clone)]
pub struct LogTail {
    file: Option<(u64, u64)>,
    /// The last line read (its start and bytes).
    last: Option<(u64, Vec<u8>)>,
    offset: u64,
}

/// What [`LogTail::read_new`] hands over, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailEvent<'a> {
    /// The log is not the one read before (replaced, cut or rewritten): whatever was
    /// built from the old one must go; the lines that follow are the new log's.
    Restart,
    /// A complete line (without its newline).
    Line(&'a [u8]),
}

impl LogTail {
    /// Whether nothing has been read yet.
    pub fn is_empty(&self) -> bool {
        self.offset == 0
    }

    /// Hand each complete line appended since the last call to `each`, in order, after
    /// [`TailEvent::Restart`] when the log is not the one read before. A missing log
    /// reads as empty.
    pub fn read_new(
        &mut self,
        log: &Path,
        mut each: impl FnMut(TailEvent<'_>),
    ) -> std::io::Result<()> {
        let mut f = match crate::durable::open_nofollow(log) {
            Ok(f) => f,
            Err(crate::durable::NoFollow::Io(_, e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(());
            }
            Err(e) => return Err(e.into_io()),
        };
        let meta = f.metadata()?;
        let len = meta.len();
        let file = {
            use std::os::unix::fs::MetadataExt;
            Some((meta.dev(), meta.ino()))
        };
        let same_tail = match &self.last {
            None => true,
            Some((start, line)) => {
                let mut b = vec![0u8; line.len()];
                f.seek(SeekFrom::Start(*start)).is_ok()
                    && f.read_exact(&mut b).is_ok()
                    && b == *line
            }
        };
        if len < self.offset || file != self.file || !same_tail {
            if !self.is_empty() {
                each(TailEvent::Restart);
            }
            *self = LogTail {
                file,
                ..LogTail::default()
            };
        }
        if len == self.offset {
            return Ok(());
        }
        f.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        f.take(len - self.offset).read_to_end(&mut buf)?;
        let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
            return Ok(());
        };
        let mut start = self.offset;
        for line in buf[..end].split(|&b| b == b'\n') {
            each(TailEvent::Line(line));
            self.last = Some((start, line.to_vec()));
            start += line.len() as u64 + 1;
        }
        self.offset += end as u64 + 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the read restarted, and the lines handed over.
    fn lines(t: &mut LogTail, log: &Path) -> (bool, Vec<String>) {
        let mut out = Vec::new();
        let mut restarted = false;
        t.read_new(log, |e| match e {
            TailEvent::Restart => restarted = true,
            TailEvent::Line(l) => out.push(String::from_utf8_lossy(l).into_owned()),
        })
        .expect("read");
        (restarted, out)
    }

    #[test]
    fn only_new_complete_lines_are_handed_over_and_a_rewritten_log_restarts() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = dir.path().join("audit.jsonl");
        let mut t = LogTail::default();
        assert_eq!(lines(&mut t, &log), (false, vec![]));
        std::fs::write(&log, "a\nb\nhalf").expect("write");
        assert_eq!(lines(&mut t, &log), (false, vec!["a".into(), "b".into()]));
        std::fs::write(&log, "a\nb\nhalf-done\nc\n").expect("append");
        assert_eq!(
            lines(&mut t, &log),
            (false, vec!["half-done".into(), "c".into()])
        );
        assert_eq!(lines(&mut t, &log), (false, vec![]));
        // The same length, another last line: rewritten in place.
        std::fs::write(&log, "a\nb\nhalf-done\nX\n").expect("rewrite");
        let (r, l) = lines(&mut t, &log);
        assert!(r);
        assert_eq!(l.len(), 4);
        // Cut shorter.
        std::fs::write(&log, "a\n").expect("cut");
        assert_eq!(lines(&mut t, &log), (true, vec!["a".into()]));
    }
}
