//! The allow-list form of the National Data Opt-out: the reply of the NHS "Check for
//! National Data Opt-outs" service (sent and received through MESH).
//!
//! Owns the strict parser of that reply: one 10-digit NHS number per line, each followed
//! by a comma, LF line endings (`9434765919,`), the numbers of the submitted patients who
//! may be used. It sits beside the deny-list parser in [`super`], feeds the same
//! [`super::OptOutSet`], and the extract removes every patient *not* on it. Danger: the
//! service answers a submission holding invalid numbers with a different file, listing
//! those numbers, and that file looks much like an allow-list; read as one, it would let
//! through exactly the wrong patients. So nothing is guessed: a header or any text, a
//! blank line, CR LF endings, a missing comma, spaces, or a number failing Modulus 11
//! refuses the whole file, naming line and column, never the value.

use std::path::Path;

use super::OptOutError;
use crate::nhs_number::NhsNumber;

/// What is wrong with a line of an allow-list. Never holds the line's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AllowLineProblem {
    /// Letters on the line: a header, or the service's reply listing invalid numbers.
    #[error(
        "text, not an NHS number: a header or the service's reply listing invalid NHS numbers, not an allow-list (the allow-list has no header); correct the submission, resubmit it and use the allow-list the service returns"
    )]
    Text,
    /// A number failing Modulus 11: the service returns only valid numbers.
    #[error(
        "the number fails the Modulus 11 check; the service's allow-list holds only valid numbers, so this is probably its reply listing invalid NHS numbers: correct the submission and resubmit it"
    )]
    Modulus11,
    /// The line ends in CR LF.
    #[error(
        "the line ends in CR LF, but the service's format uses LF only; convert the line endings (e.g. dos2unix) rather than have tre guess"
    )]
    CrLf,
    /// An empty line.
    #[error("blank line; the format has one NHS number on every line")]
    Blank,
    /// A space or tab.
    #[error("a space inside or around the number; the format is ten digits and a comma")]
    Whitespace,
    /// Not ten digits at the start of the line.
    #[error("expected a 10-digit NHS number (the format is ten digits and a comma)")]
    NotTenDigits,
    /// The ten digits are not followed by a comma.
    #[error(
        "the number is not followed by a comma; the format is ten digits and a comma on each line"
    )]
    MissingComma,
    /// Something after the comma.
    #[error("unexpected text after the comma; the format is ten digits and a comma")]
    AfterComma,
}

/// Parse an allow-list: the distinct numbers and the count of lines holding one
/// (duplicates included). A file with no entries at all is refused.
pub(super) fn parse(bytes: &[u8], path: &Path) -> Result<(Vec<u64>, u64), OptOutError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(OptOutError::AllowListEmpty {
            path: path.to_path_buf(),
        });
    }
    // The final LF ends the last line; no line follows it.
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let mut numbers = Vec::with_capacity(body.len() / 12 + 1);
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        let n = parse_line(line).map_err(|(column, problem)| OptOutError::AllowListLine {
            path: path.to_path_buf(),
            line: i + 1,
            column,
            problem,
        })?;
        numbers.push(n);
    }
    let entries = numbers.len() as u64;
    Ok((numbers, entries))
}

/// One line (without its LF): the number, or the 1-based column and the problem.
fn parse_line(line: &[u8]) -> Result<u64, (usize, AllowLineProblem)> {
    use AllowLineProblem as P;
    if line.is_empty() {
        return Err((1, P::Blank));
    }
    if let Some(at) = line.iter().position(u8::is_ascii_alphabetic) {
        return Err((at + 1, P::Text));
    }
    if line.ends_with(b"\r") {
        return Err((line.len(), P::CrLf));
    }
    let mut n = 0u64;
    for col in 0..10 {
        match line.get(col) {
            Some(&b) if b.is_ascii_digit() => n = n * 10 + u64::from(b - b'0'),
            Some(b' ' | b'\t') => return Err((col + 1, P::Whitespace)),
            Some(_) | None => return Err((col + 1, P::NotTenDigits)),
        }
    }
    match line.get(10) {
        Some(b',') => {}
        Some(b) if b.is_ascii_digit() => return Err((11, P::NotTenDigits)),
        Some(b' ' | b'\t') => return Err((11, P::Whitespace)),
        Some(_) | None => return Err((11, P::MissingComma)),
    }
    if line.len() > 11 {
        return Err((12, P::AfterComma));
    }
    NhsNumber::from_u64(n)
        .map(NhsNumber::get)
        .ok_or((1, P::Modulus11))
}

#[cfg(test)]
mod tests {
    use super::super::{ListKind, OptOutList};
    use super::*;
    use chrono::NaiveDate;

    fn d() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 1, 1).expect("date")
    }

    fn refused(text: &[u8]) -> (usize, usize, AllowLineProblem, String) {
        match OptOutList::parse_allow(text, Path::new("reply.dat"), d()) {
            Err(
                e @ OptOutError::AllowListLine {
                    line,
                    column,
                    problem,
                    ..
                },
            ) => (line, column, problem, e.to_string()),
            other => panic!("expected a line refusal, got {other:?}"),
        }
    }

    #[test]
    fn valid_list_with_duplicates() {
        let l = OptOutList::parse_allow(
            b"9434765919,\n9434765870,\n9434765919,\n",
            Path::new("reply.dat"),
            d(),
        )
        .expect("parses");
        assert_eq!(l.kind, ListKind::Allow);
        assert_eq!(l.entries, 3);
        assert_eq!(l.set.numbers(), &[9434765870, 9434765919]);
    }

    #[test]
    fn last_line_without_lf_is_accepted() {
        let l = OptOutList::parse_allow(b"9434765919,", Path::new("r"), d()).expect("parses");
        assert_eq!(l.entries, 1);
    }

    #[test]
    fn empty_is_refused() {
        for text in [&b""[..], b"\n", b"  \n\n"] {
            let e = OptOutList::parse_allow(text, Path::new("reply.dat"), d()).expect_err("empty");
            assert!(matches!(e, OptOutError::AllowListEmpty { .. }), "{e}");
            assert!(e.to_string().contains("reply.dat"), "{e}");
        }
    }

    #[test]
    fn header_only_is_refused() {
        let (line, col, p, m) = refused(b"NHS_NUMBER,\n");
        assert_eq!((line, col, p), (1, 1, AllowLineProblem::Text));
        assert!(
            m.contains("reply.dat, line 1, column 1") && m.contains("header"),
            "{m}"
        );
    }

    #[test]
    fn header_then_numbers_is_refused() {
        let (line, _, p, _) = refused(b"nhs_number\n9434765919,\n");
        assert_eq!((line, p), (1, AllowLineProblem::Text));
    }

    #[test]
    fn invalid_numbers_reply_is_refused() {
        // The service's reply to a submission with invalid numbers lists those numbers.
        let (line, col, p, m) = refused(b"Invalid NHS Numbers\n9434765918,\n");
        assert_eq!((line, col, p), (1, 1, AllowLineProblem::Text));
        assert!(m.contains("invalid NHS numbers"), "{m}");
        let (line, col, p, m) = refused(b"9434765919,\n9434765918,\n");
        assert_eq!((line, col, p), (2, 1, AllowLineProblem::Modulus11));
        assert!(m.contains("Modulus 11") && !m.contains("9434765918"), "{m}");
    }

    #[test]
    fn crlf_is_refused() {
        let (line, col, p, _) = refused(b"9434765919,\r\n9434765870,\r\n");
        assert_eq!((line, col, p), (1, 12, AllowLineProblem::CrLf));
        let (line, _, p, _) = refused(b"9434765919,\n9434765870,\r\n");
        assert_eq!((line, p), (2, AllowLineProblem::CrLf));
    }

    #[test]
    fn missing_comma_is_refused() {
        let (line, col, p, m) = refused(b"9434765919,\n9434765870\n");
        assert_eq!((line, col, p), (2, 11, AllowLineProblem::MissingComma));
        assert!(
            m.contains("line 2, column 11") && !m.contains("9434765870"),
            "{m}"
        );
        let (_, col, p, _) = refused(b"9434765919;\n");
        assert_eq!((col, p), (11, AllowLineProblem::MissingComma));
    }

    #[test]
    fn number_with_spaces_is_refused() {
        let (line, col, p, _) = refused(b"943 476 5919,\n");
        assert_eq!((line, col, p), (1, 4, AllowLineProblem::Whitespace));
        let (_, col, p, _) = refused(b"9434765919 ,\n");
        assert_eq!((col, p), (11, AllowLineProblem::Whitespace));
    }

    #[test]
    fn other_malformed_lines_are_refused() {
        assert_eq!(
            refused(b"9434765919,\n\n9434765870,\n").2,
            AllowLineProblem::Blank
        );
        assert_eq!(refused(b"943476591,\n").2, AllowLineProblem::NotTenDigits);
        assert_eq!(refused(b"94347659190,\n").2, AllowLineProblem::NotTenDigits);
        assert_eq!(refused(b"9434765919,x\n").2, AllowLineProblem::Text);
        assert_eq!(refused(b"9434765919,,\n").2, AllowLineProblem::AfterComma);
        assert_eq!(
            refused(b"\"9434765919\",\n").2,
            AllowLineProblem::NotTenDigits
        );
    }

    proptest::proptest! {
        /// Any bytes: no panic; an accepted list holds only valid numbers, one per line;
        /// an error never holds a number.
        #[test]
        fn fuzz_allow_lists(bytes in proptest::collection::vec(
            proptest::sample::select(b"0123456789, \r\n\tNHSx\"".to_vec()), 0..200)
        ) {
            match OptOutList::parse_allow(&bytes, Path::new("r.dat"), d()) {
                Ok(l) => {
                    proptest::prop_assert!(l.entries > 0);
                    for &n in l.set.numbers() {
                        proptest::prop_assert!(NhsNumber::from_u64(n).is_some());
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    let run = msg
                        .split(|c: char| !c.is_ascii_digit())
                        .map(str::len)
                        .max()
                        .unwrap_or(0);
                    proptest::prop_assert!(run < 10, "a number in an error: {}", msg);
                }
            }
        }

        /// Any list of valid numbers written in the service's format is read back exactly.
        #[test]
        fn well_formed_lists_round_trip(ns in proptest::collection::vec(0u64..9_999_999_000, 1..50)) {
            // The first valid number at or after each draw.
            let valid: Vec<u64> = ns
                .into_iter()
                .filter_map(|n| (n..).find_map(NhsNumber::from_u64).map(NhsNumber::get))
                .collect();
            let text: String = valid.iter().map(|n| format!("{n:010},\n")).collect();
            let l = OptOutList::parse_allow(text.as_bytes(), Path::new("r.dat"), d()).expect("parses");
            proptest::prop_assert_eq!(l.entries, valid.len() as u64);
            for n in valid {
                proptest::prop_assert!(l.set.contains(n));
            }
        }
    }
}
