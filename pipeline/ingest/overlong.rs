//! Records past the limits: a CSV record longer than the maximum record size is streamed
//! to its end with flat memory (quote state tracked byte by byte, lines counted, watched
//! byte strings searched across reads) and kept only as a bounded prefix, which becomes
//! one quarantined row noting the record's true length.
//!
//! Sits inside the CSV chunker ([`super::CsvChunker`]). Danger: the prefix is raw patient
//! data (quarantine only), and the part of the record that is not kept must still count
//! where it matters: the Type 1 scan watches for dissent codes in the whole record, so a
//! dissent past the cut is never lost.

pub use crate::quarantine::KEPT_PREFIX_BYTES;
use crate::quarantine::RejectReason;

/// A record cut down to a prefix because it passed a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlong {
    /// Which limit: [`RejectReason::RecordTooLong`] or [`RejectReason::TooManyFields`].
    pub reason: RejectReason,
    /// The record's full length in bytes.
    pub bytes: u64,
    /// Whether one of the chunker's watched byte strings occurs anywhere in the record.
    pub watched: bool,
}

impl Overlong {
    /// The note written in the quarantine row's `column` slot: the true size and the cut.
    pub fn note(&self, kept: usize) -> String {
        format!(
            "(record of {} bytes, cut to its first {kept} bytes)",
            self.bytes
        )
    }
}

/// Quote state of a record read forward from its first byte, with the csv crate's rules
/// (a quote opens a quoted field only as the field's first byte; `""` inside is an
/// escaped quote; a lone `"` closes it).
#[derive(Debug, Clone)]
pub(super) struct RecordStream {
    in_quotes: bool,
    at_field_start: bool,
    just_closed: bool,
    /// Bytes seen so far.
    pub bytes: u64,
    /// Newlines seen so far (inside quotes too).
    pub newlines: u64,
    /// Watched byte strings, and whether one was seen.
    watch: Vec<memchr::memmem::Finder<'static>>,
    pub watched: bool,
    /// The last bytes of the previous piece, so a watched string cut by a read is found.
    tail: Vec<u8>,
}

impl RecordStream {
    pub(super) fn new(watch: &[memchr::memmem::Finder<'static>]) -> Self {
        RecordStream {
            in_quotes: false,
            at_field_start: true,
            just_closed: false,
            bytes: 0,
            newlines: 0,
            watch: watch.to_vec(),
            watched: false,
            tail: Vec::new(),
        }
    }

    /// Whether the stream is inside a quoted field.
    pub(super) fn in_quotes(&self) -> bool {
        self.in_quotes
    }

    /// Feed the next piece of the record; `Some(i)` when the record ends at the newline
    /// `piece[i]` (the bytes after it belong to the next record).
    pub(super) fn feed(&mut self, piece: &[u8]) -> Option<usize> {
        let mut end = None;
        for (i, &b) in piece.iter().enumerate() {
            let closed_before = std::mem::take(&mut self.just_closed);
            match b {
                b'"' if self.in_quotes => {
                    self.in_quotes = false;
                    self.just_closed = true;
                }
                b'"' if self.at_field_start || closed_before => self.in_quotes = true,
                b'\n' => {
                    self.newlines += 1;
                    if !self.in_quotes {
                        end = Some(i);
                        break;
                    }
                }
                _ => {}
            }
            self.at_field_start = b == b',' && !self.in_quotes;
        }
        let seen = end.map_or(piece, |e| &piece[..e]);
        self.bytes += seen.len() as u64 + u64::from(end.is_some());
        self.search(seen);
        end
    }

    fn search(&mut self, seen: &[u8]) {
        let longest = self.watch.iter().map(|f| f.needle().len()).max();
        let Some(longest) = longest else {
            return;
        };
        if !self.watched {
            let mut window = std::mem::take(&mut self.tail);
            window.extend_from_slice(seen);
            self.watched = self.watch.iter().any(|f| f.find(&window).is_some());
            let keep = longest.saturating_sub(1).min(window.len());
            window.drain(..window.len() - keep);
            self.tail = window;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(watch: &[&str]) -> RecordStream {
        let f: Vec<memchr::memmem::Finder<'static>> = watch
            .iter()
            .map(|w| memchr::memmem::Finder::new(w.as_bytes()).into_owned())
            .collect();
        RecordStream::new(&f)
    }

    #[test]
    fn ends_at_the_first_newline_outside_quotes() {
        let mut s = stream(&[]);
        assert_eq!(s.feed(b"a,\"x\ny\",5'11\"z"), None);
        assert_eq!(s.feed(b"q\nnext"), Some(1));
        assert_eq!(s.newlines, 2);
        assert_eq!(s.bytes, 16);
    }

    #[test]
    fn escaped_quotes_stay_inside() {
        let mut s = stream(&[]);
        assert_eq!(s.feed(b"\"a\"\"\nb\",c\nd"), Some(9));
    }

    #[test]
    fn a_watched_string_cut_by_a_read_is_found() {
        let mut s = stream(&["827241000000103"]);
        assert_eq!(s.feed(b"9434765919,x,8272410"), None);
        assert!(!s.watched);
        assert_eq!(s.feed(b"00000103,y\n"), Some(10));
        assert!(s.watched);
        // After the end, nothing counts.
        let mut s = stream(&["827241000000103"]);
        assert_eq!(s.feed(b"a\n827241000000103"), Some(1));
        assert!(!s.watched);
    }
}
