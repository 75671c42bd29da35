//! Sanitising a draft into what may be stored: no input can make an action unauditable.
//!
//! Owns the rules every string in an entry passes through, in this order: control and
//! bidirectional-formatting characters are escaped (`\u{1b}`), anything that looks like
//! an NHS number is replaced by [`REDACTED`], and text longer than its limit is stored as
//! a prefix plus the SHA-256 of the whole sanitised text (so whoever holds the original
//! can show, by sanitising it the same way, that it is the text recorded). Every change is
//! noted in `detail._sanitised` by field. If an entry is still over
//! [`super::MAX_ENTRY_BYTES`], [`shrink_to_fit`] replaces `detail`, then the file lists,
//! by their hashes. It sits inside [`super::AuditLog::append`], before numbering.
//! Danger: this is the last guard between a careless caller and a permanent record; it
//! must never fail on content, and it must never store a redacted value in any form
//! (not even as a hash, which ten digits could be brute-forced from). JSON numbers in
//! `detail` are kept as they are (counts can pass a billion): callers must never put an
//! identifier in a number.

use std::borrow::Cow;
use std::ops::Range;

use serde_json::{Map, Value};

use super::entry::{AuditEntry, EntryDraft, HashRef};
use super::error::{AuditError, ser_err};
use crate::digest::sha256_hex;

/// What replaces a string that looks like an NHS number.
pub const REDACTED: &str = "[redacted]";

/// The longest free text (purpose, comment, justification, reason, path) stored as it is,
/// in bytes after escaping; longer text keeps a prefix and the SHA-256 of the whole.
pub const MAX_TEXT_BYTES: usize = 1024;

/// Characters of a long text kept before its hash.
pub const PREFIX_CHARS: usize = 160;

/// The longest actor, project or `detail` key stored as it is.
const MAX_NAME_BYTES: usize = 128;

/// Deeper `detail` values are replaced by a note.
const MAX_DEPTH: usize = 16;

/// At most this many notes in `detail._sanitised`.
const MAX_NOTES: usize = 32;

/// The `detail` key that lists what sanitising changed.
pub const NOTES_KEY: &str = "_sanitised";

/// Whether `c` must not reach a terminal or a reader raw: C0 and C1 controls, DEL, and
/// the invisible formatting characters that reorder or hide text (bidi overrides and
/// isolates, zero-width characters, line and paragraph separators).
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
        )
}

/// `s` with every [`is_unsafe_char`] written as `\u{hex}`; borrowed when nothing changes.
pub fn escape_control(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe_char(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Byte ranges of `s` that look like NHS numbers: ten digits in a row, or digits grouped
/// 3-3-4 by single spaces or hyphens, not part of a longer run of digits. Runs of 16 or
/// more hex characters that contain a letter (hashes, pseudonyms, key fingerprints) are
/// skipped, so a pseudonym never trips it; the check digit is not tested, because an
/// invalid number is still a patient's identifier.
pub fn nhs_number_spans(s: &str) -> Vec<Range<usize>> {
    let masked = mask_hex_runs(s.as_bytes());
    let digits_at = |from: usize| {
        masked[from.min(masked.len())..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count()
    };
    let sep = |at: usize| matches!(masked.get(at), Some(b' ' | b'-'));
    let mut spans = Vec::new();
    let mut i = 0;
    while i < masked.len() {
        if !masked[i].is_ascii_digit() || (i > 0 && masked[i - 1].is_ascii_digit()) {
            i += 1;
            continue;
        }
        let first = digits_at(i);
        if first == 10 {
            spans.push(i..i + 10);
        } else if first == 3 {
            let a = i + 3;
            if sep(a) && digits_at(a + 1) == 3 && sep(a + 4) && digits_at(a + 5) == 4 {
                spans.push(i..i + 12);
                i += 12;
                continue;
            }
        }
        i += first;
    }
    spans
}

/// `b` with runs of 16+ hex characters that contain a letter overwritten by `x`.
fn mask_hex_runs(b: &[u8]) -> Vec<u8> {
    let mut masked = b.to_vec();
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_hexdigit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && b[i].is_ascii_hexdigit() {
            i += 1;
        }
        if i - start >= 16 && b[start..i].iter().any(u8::is_ascii_alphabetic) {
            masked[start..i].fill(b'x');
        }
    }
    masked
}

/// Whether `s` contains something that looks like an NHS number (see [`nhs_number_spans`]).
pub fn looks_like_nhs_number(s: &str) -> bool {
    !nhs_number_spans(s).is_empty()
}

/// `s` with every NHS-number lookalike replaced by [`REDACTED`].
fn redact(s: &str) -> Cow<'_, str> {
    let spans = nhs_number_spans(s);
    if spans.is_empty() {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut at = 0;
    for r in spans {
        out.push_str(&s[at..r.start]);
        out.push_str(REDACTED);
        at = r.end;
    }
    out.push_str(&s[at..]);
    Cow::Owned(out)
}

/// What sanitising did to one string.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Changes {
    /// Unsafe characters were escaped.
    pub escaped: bool,
    /// Something that looks like an NHS number was replaced.
    pub redacted: bool,
    /// The text was too long and is stored as a prefix and a hash.
    pub shortened: bool,
}

impl Changes {
    fn any(self) -> bool {
        self.escaped || self.redacted || self.shortened
    }

    fn describe(self) -> String {
        let mut what = Vec::new();
        for (done, word) in [
            (self.escaped, "escaped"),
            (self.redacted, "redacted"),
            (self.shortened, "shortened"),
        ] {
            if done {
                what.push(word);
            }
        }
        what.join("+")
    }
}

/// Escape, redact, and shorten past `limit` bytes: the stored form of one string.
pub fn clean_text(s: &str, limit: usize) -> (String, Changes) {
    let escaped = escape_control(s);
    let redacted = redact(&escaped);
    let mut changes = Changes {
        escaped: matches!(escaped, Cow::Owned(_)),
        redacted: matches!(redacted, Cow::Owned(_)),
        shortened: false,
    };
    if redacted.len() <= limit {
        return (redacted.into_owned(), changes);
    }
    changes.shortened = true;
    let keep = PREFIX_CHARS.min(limit / 2);
    let prefix: String = redacted.chars().take(keep).collect();
    // Cutting can leave ten digits at the end of the prefix: redact again.
    let prefix = redact(&prefix);
    let out = format!(
        "{prefix}… [sha256:{} of {} bytes]",
        sha256_hex(redacted.as_bytes()),
        redacted.len()
    );
    (out, changes)
}

/// Collects notes on what was changed, by field.
#[derive(Default)]
struct Notes {
    notes: Vec<Value>,
    more: usize,
}

impl Notes {
    fn text(&mut self, field: &str, s: &str, limit: usize) -> String {
        let (out, changes) = clean_text(s, limit);
        self.note(field, changes);
        out
    }

    fn note(&mut self, field: &str, changes: Changes) {
        if !changes.any() {
            return;
        }
        if self.notes.len() < MAX_NOTES {
            let (field, _) = clean_text(field, MAX_NAME_BYTES);
            self.notes
                .push(Value::String(format!("{field}: {}", changes.describe())));
        } else {
            self.more += 1;
        }
    }

    fn value(&mut self, field: &str, v: &Value, depth: usize) -> Value {
        match v {
            Value::String(s) => Value::String(self.text(field, s, MAX_TEXT_BYTES)),
            Value::Null | Value::Bool(_) | Value::Number(_) => v.clone(),
            _ if depth >= MAX_DEPTH => {
                self.note_omitted(field);
                Value::String(format!("[omitted: nested more than {MAX_DEPTH} levels]"))
            }
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.value(&format!("{field}[{i}]"), item, depth + 1))
                    .collect(),
            ),
            Value::Object(map) => Value::Object(self.map(field, map, depth + 1)),
        }
    }

    fn note_omitted(&mut self, field: &str) {
        if self.notes.len() < MAX_NOTES {
            self.notes
                .push(Value::String(format!("{field}: omitted (too deep)")));
        } else {
            self.more += 1;
        }
    }

    fn map(&mut self, field: &str, map: &Map<String, Value>, depth: usize) -> Map<String, Value> {
        let mut out = Map::new();
        for (k, v) in map {
            let (mut key, changes) = clean_text(k, MAX_NAME_BYTES);
            if changes.any() {
                self.note(&format!("a key of {field}"), changes);
            }
            let base = key.clone();
            let mut n = 2;
            while out.contains_key(&key) {
                key = format!("{base}~{n}");
                n += 1;
            }
            let value = self.value(&format!("{field}.{key}"), v, depth);
            out.insert(key, value);
        }
        out
    }

    fn into_value(mut self) -> Option<Value> {
        if self.notes.is_empty() {
            return None;
        }
        if self.more > 0 {
            self.notes
                .push(Value::String(format!("and {} more fields", self.more)));
        }
        Some(Value::Array(self.notes))
    }
}

/// The storable form of a draft that passed [`EntryDraft::check`]: every string escaped,
/// redacted and shortened, with what changed listed in `detail._sanitised`. Never fails.
pub fn sanitise(draft: EntryDraft) -> EntryDraft {
    let mut notes = Notes::default();
    let actor = notes.text("actor", &draft.actor, MAX_NAME_BYTES);
    let project = draft
        .project
        .as_deref()
        .map(|p| notes.text("project", p, MAX_NAME_BYTES));
    let purpose = draft
        .purpose
        .as_deref()
        .map(|p| notes.text("purpose", p, MAX_TEXT_BYTES));
    let mut detail = notes.map("detail", &draft.detail, 0);
    let files = |notes: &mut Notes, name: &str, files: &[HashRef]| -> Vec<HashRef> {
        files
            .iter()
            .enumerate()
            .map(|(i, f)| HashRef {
                path: notes.text(&format!("{name}[{i}].path"), &f.path, MAX_TEXT_BYTES),
                sha256: f.sha256.clone(),
            })
            .collect()
    };
    let inputs = files(&mut notes, "inputs", &draft.inputs);
    let outputs = files(&mut notes, "outputs", &draft.outputs);
    if let Some(v) = notes.into_value() {
        detail.insert(NOTES_KEY.to_string(), v);
    }
    EntryDraft {
        actor,
        action: draft.action,
        outcome: draft.outcome,
        project,
        purpose,
        detail,
        inputs,
        outputs,
    }
}

/// Bring an entry's body under `limit` bytes by replacing, in turn, `detail` (keeping
/// `reason` and the notes) and then each file list by a summary that carries the SHA-256
/// of what it replaces. Returns the body that fits.
pub fn shrink_to_fit(entry: &mut AuditEntry, limit: usize) -> Result<String, AuditError> {
    let mut body = entry.body()?;
    if body.len() <= limit {
        return Ok(body);
    }
    if let Value::Object(detail) = &entry.detail {
        let whole = serde_json::to_string(detail).map_err(ser_err("an entry's detail"))?;
        let mut kept = Map::new();
        for key in ["reason", NOTES_KEY] {
            if let Some(v) = detail.get(key) {
                kept.insert(key.to_string(), v.clone());
            }
        }
        kept.insert(
            "_omitted".to_string(),
            serde_json::json!({"detail": {"sha256": sha256_hex(whole.as_bytes()), "bytes": whole.len()}}),
        );
        entry.detail = Value::Object(kept);
        body = entry.body()?;
    }
    for outputs in [false, true] {
        if body.len() <= limit {
            break;
        }
        let files = if outputs {
            &mut entry.outputs
        } else {
            &mut entry.inputs
        };
        *files = vec![summarise_files(files)?];
        body = entry.body()?;
    }
    if body.len() > limit {
        return Err(AuditError::StillTooLarge {
            bytes: body.len(),
            limit,
        });
    }
    Ok(body)
}

/// One stand-in for a list of files: its length, and the SHA-256 of its JSON.
fn summarise_files(files: &[HashRef]) -> Result<HashRef, AuditError> {
    let whole = serde_json::to_string(files).map_err(ser_err("an entry's file list"))?;
    Ok(HashRef {
        path: format!(
            "[{} files omitted: sha256 is of their JSON list, {} bytes]",
            files.len(),
            whole.len()
        ),
        sha256: sha256_hex(whole.as_bytes()),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::audit::testutil::H;
    use proptest::prelude::*;

    #[test]
    fn nhs_number_lookalikes() {
        for yes in [
            "9434765919",
            "x 943 476 5919.",
            "943-476-5919",
            "id=9434765870;",
        ] {
            assert!(looks_like_nhs_number(yes), "{yes}");
        }
        for no in [
            H,
            "dd5c602eeb31d60c7c0d662c897231dda00e13cdf945b14cad185a4a7125826c",
            "ad3e1ee3fff41f02",
            "94347659190",
            "943476591",
            "2024-04-24T23:06:40.000Z",
            "rows 1234 of 56789",
            "123e4567-e89b-12d3-a456-426614174000",
        ] {
            assert!(!looks_like_nhs_number(no), "{no}");
        }
    }

    #[test]
    fn redaction_replaces_every_lookalike_and_nothing_else() {
        let (out, c) = clean_text("patients 9434765919 and 943 476 5870, 12 rows", 1024);
        assert_eq!(out, "patients [redacted] and [redacted], 12 rows");
        assert_eq!(
            c,
            Changes {
                redacted: true,
                ..Changes::default()
            }
        );
        let (out, c) = clean_text(H, 1024);
        assert_eq!((out.as_str(), c.any()), (H, false));
    }

    #[test]
    fn control_and_bidi_characters_are_escaped() {
        let (out, c) = clean_text("a\x1b[2Jb\u{7f}c\u{9b}d\u{202e}e\nf\u{2066}", 1024);
        assert_eq!(
            out,
            "a\\u{1b}[2Jb\\u{7f}c\\u{9b}d\\u{202e}e\\u{a}f\\u{2066}"
        );
        assert!(c.escaped && !c.redacted && !c.shortened);
        assert!(!out.chars().any(is_unsafe_char));
    }

    #[test]
    fn long_text_keeps_a_prefix_and_the_hash_of_the_whole() {
        let comment = "looks fine to me. ".repeat(1000); // 18 KB
        let (out, c) = clean_text(&comment, MAX_TEXT_BYTES);
        assert!(c.shortened && !c.redacted);
        assert!(out.len() < 400, "{}", out.len());
        assert!(out.starts_with("looks fine to me. looks"));
        assert!(out.contains(&sha256_hex(comment.as_bytes())), "{out}");
        assert!(out.contains(&format!("of {} bytes", comment.len())));
    }

    #[test]
    fn a_cut_that_makes_ten_digits_is_redacted() {
        let s = format!("{}12345678901234", "a".repeat(PREFIX_CHARS - 10));
        let long = format!("{s}{}", " ".repeat(2000));
        let (out, _) = clean_text(&long, MAX_TEXT_BYTES);
        assert!(!looks_like_nhs_number(&out), "{out}");
    }

    #[test]
    fn sanitise_notes_every_change_by_field() {
        let d = EntryDraft::new("ali\x1bce", "query")
            .purpose("for patient 9434765919")
            .detail("comment", "x".repeat(17 * 1024))
            .detail(
                "nested",
                serde_json::json!({"943 476 5919": ["ok", "\u{202e}"]}),
            )
            .input(HashRef::new("in/9434765919.csv", H));
        let s = sanitise(d);
        assert_eq!(s.actor, "ali\\u{1b}ce");
        assert_eq!(s.purpose.as_deref(), Some("for patient [redacted]"));
        assert_eq!(s.inputs[0].path, "in/[redacted].csv");
        let notes: Vec<String> = s.detail[NOTES_KEY]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert!(notes.contains(&"actor: escaped".to_string()), "{notes:?}");
        assert!(
            notes.contains(&"purpose: redacted".to_string()),
            "{notes:?}"
        );
        assert!(
            notes.contains(&"detail.comment: shortened".to_string()),
            "{notes:?}"
        );
        assert!(
            notes.contains(&"a key of detail.nested: redacted".to_string()),
            "{notes:?}"
        );
        assert!(
            notes.contains(&"detail.nested.[redacted][1]: escaped".to_string()),
            "{notes:?}"
        );
        let all = serde_json::to_string(&s.detail).unwrap();
        assert!(!looks_like_nhs_number(&all), "{all}");
    }

    #[test]
    fn colliding_keys_are_all_kept() {
        let d = EntryDraft::new("a", "query")
            .detail("9434765919", 1)
            .detail("9434765870", 2);
        let s = sanitise(d);
        // Keys are sorted, so which one gets the suffix follows the original order.
        let mut got = vec![
            s.detail["[redacted]"].clone(),
            s.detail["[redacted]~2"].clone(),
        ];
        got.sort_by_key(|v| v.as_i64());
        assert_eq!(got, vec![serde_json::json!(1), serde_json::json!(2)]);
    }

    #[test]
    fn deep_values_are_cut_off() {
        let mut v = serde_json::json!("leaf");
        for _ in 0..100 {
            v = serde_json::json!([v]);
        }
        let s = sanitise(EntryDraft::new("a", "query").detail("deep", v));
        let text = serde_json::to_string(&s.detail).unwrap();
        assert!(text.contains("[omitted: nested"), "{text}");
    }

    proptest! {
        #[test]
        fn pseudonyms_and_hashes_never_look_like_nhs_numbers(bytes in any::<[u8; 32]>()) {
            prop_assert!(!looks_like_nhs_number(&crate::digest::hex(&bytes)));
        }

        #[test]
        fn clean_text_output_is_always_safe(s in any::<String>(), digits in "[0-9 -]{0,40}") {
            let text = format!("{s}{digits}{s}");
            for limit in [16usize, MAX_TEXT_BYTES] {
                let (out, _) = clean_text(&text, limit);
                prop_assert!(!out.chars().any(is_unsafe_char));
                prop_assert!(!looks_like_nhs_number(&out), "{}", out);
                prop_assert!(out.len() <= limit.max(PREFIX_CHARS * 4 + 120));
            }
        }
    }
}
