//! Opt-outs: the National Data Opt-out list and Type 1 (GP-recorded) dissent.
//!
//! Owns loading the opt-out list in its two forms: the deny-list (one NHS number per
//! line, optional header, spaces allowed: everyone on it is removed) and the allow-list
//! the NHS "Check for National Data Opt-outs" service returns (strict format, parsed in
//! [`allow`]: everyone *not* on it is removed); their staleness rule, the Type 1 codelist, working out each patient's latest
//! Type 1 code, and the filter kernel that drops opted-out rows from a batch. Danger:
//! this is the stage that keeps dissenting patients out of research data, so it fails
//! closed: an unreadable or stale list, or an entry that is not a valid NHS number, is an
//! error, never an empty set (nor, for an allow-list, a file that is not the service's
//! allow-list). It never logs or reports a number.

mod allow;

pub use allow::AllowLineProblem;

use crate::digest::sha256_hex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use arrow::array::{Array, BooleanArray, Date32Array, StringArray, UInt64Array};
use chrono::NaiveDate;

use crate::nhs_number;

/// Errors loading opt-out material.
#[derive(Debug, thiserror::Error)]
pub enum OptOutError {
    /// The list or codelist could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An entry is not a valid NHS number.
    #[error(
        "opt-out list {path}, line {line}: entry is not a valid NHS number ({reason}); the list must be corrected before any extract can run"
    )]
    BadEntry {
        /// The list.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Why (never the value).
        reason: &'static str,
    },
    /// The list is older than the policy allows.
    #[error(
        "opt-out list {path} is stale: as of {as_of}, {age_days} days old, but the policy allows at most {max_age_days} days; fetch a current list"
    )]
    Stale {
        /// The list.
        path: PathBuf,
        /// Its as-of date.
        as_of: NaiveDate,
        /// Its age.
        age_days: i64,
        /// The policy's limit.
        max_age_days: u32,
    },
    /// The list claims a date in the future.
    #[error("opt-out list {path} is dated {as_of}, after today ({today}); check --opt-outs-as-of")]
    Future {
        /// The list.
        path: PathBuf,
        /// Its as-of date.
        as_of: NaiveDate,
        /// Today.
        today: NaiveDate,
    },
    /// Not a regular file of ours, or too large.
    #[error("opt-out list: {0}")]
    Untrusted(#[from] crate::trusted_file::TrustedFileError),
    /// The list names nobody.
    #[error(
        "opt-out list {path} has no entries (empty, blank or header only); a real list is never empty: check the file, or pass --allow-empty-opt-outs if nobody has opted out"
    )]
    Empty {
        /// The list.
        path: PathBuf,
    },
    /// An allow-list line is not in the service's format (or the file is its reply
    /// listing invalid numbers).
    #[error(
        "National Data Opt-out allow-list {path}, line {line}, column {column}: {problem}; no extract can run on it"
    )]
    AllowListLine {
        /// The allow-list.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// 1-based column (byte) of the fault.
        column: usize,
        /// What is wrong (never the value).
        problem: AllowLineProblem,
    },
    /// The allow-list names nobody.
    #[error(
        "National Data Opt-out allow-list {path} has no entries (empty or blank); an allow-list that names nobody would remove every patient: check that this is the service's reply"
    )]
    AllowListEmpty {
        /// The allow-list.
        path: PathBuf,
    },
    /// A Type 1 codelist line is malformed.
    #[error("Type 1 codelist {path}, line {line}: {message}")]
    Codelist {
        /// The codelist.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

impl crate::error::Classify for OptOutError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        // A stale list or a bad entry is refused by a rule; I/O fails.
        match self {
            OptOutError::Io { .. } => ErrorKind::Failed,
            OptOutError::Untrusted(e) => crate::error::Classify::kind(e),
            _ => ErrorKind::Refused,
        }
    }
}

/// The largest opt-out list read (the national list is about 40 MB as text).
pub const MAX_LIST_BYTES: u64 = 1 << 30;

/// A set of NHS numbers, sorted, with a radix index for fast membership tests.
#[derive(Clone, Default)]
pub struct OptOutSet {
    sorted: Vec<u64>,
    /// `sorted[starts[b]..starts[b + 1]]` are the numbers `n` with `n >> shift == b`: a
    /// lookup reads one index slot and about one number instead of a binary search's
    /// ~log2(len) cache misses (8% of an extract's time on a 50,000-number list).
    starts: Vec<u32>,
    shift: u32,
    /// One bit per hashed number, about eight bits per member: most rows belong to no
    /// list, and one probe of this small table (cache-resident) answers them.
    filter: Vec<u64>,
    /// `64 - log2(filter bits)`: a number's bit is `mix(n) >> filter_shift`.
    filter_shift: u32,
}

/// Spreads numbers over the filter's bits (the high bits of one multiply).
#[inline]
fn mix(n: u64) -> u64 {
    n.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

impl std::fmt::Debug for OptOutSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OptOutSet({} entries)", self.sorted.len())
    }
}

impl OptOutSet {
    /// Build from numbers (duplicates removed).
    pub fn from_numbers(mut v: Vec<u64>) -> Self {
        v.sort_unstable();
        v.dedup();
        let Some(&max) = v.last() else {
            return OptOutSet::default();
        };
        // About one number per bucket: the fewest buckets of width 2^shift covering
        // 0..=max with at least as many buckets as numbers.
        let mut shift = 0u32;
        while shift < 63 && (max >> (shift + 1)) as usize + 1 >= v.len() {
            shift += 1;
        }
        let buckets = (max >> shift) as usize + 1;
        let mut starts = Vec::with_capacity(buckets + 1);
        let mut i = 0usize;
        for b in 0..buckets {
            while i < v.len() && ((v[i] >> shift) as usize) < b {
                i += 1;
            }
            starts.push(u32::try_from(i).unwrap_or(u32::MAX));
        }
        starts.push(u32::try_from(v.len()).unwrap_or(u32::MAX));
        let bits = (v.len() * 8).next_power_of_two().max(64);
        let filter_shift = 64 - bits.trailing_zeros();
        let mut filter = vec![0u64; bits / 64];
        for &n in &v {
            let h = (mix(n) >> filter_shift) as usize;
            filter[h / 64] |= 1 << (h % 64);
        }
        OptOutSet {
            sorted: v,
            starts,
            shift,
            filter,
            filter_shift,
        }
    }

    /// Number of distinct patients.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// Membership: one probe of the bit filter answers most non-members; the rest read
    /// one radix index slot and about one number.
    #[inline]
    pub fn contains(&self, n: u64) -> bool {
        let h = (mix(n) >> self.filter_shift) as usize;
        match self.filter.get(h / 64) {
            Some(word) if word & (1 << (h % 64)) != 0 => {}
            _ => return false,
        }
        let b = (n >> self.shift) as usize;
        match (self.starts.get(b), self.starts.get(b + 1)) {
            (Some(&lo), Some(&hi)) => self
                .sorted
                .get(lo as usize..hi as usize)
                .is_some_and(|bucket| bucket.binary_search(&n).is_ok()),
            _ => false,
        }
    }

    /// The numbers, sorted.
    pub fn numbers(&self) -> &[u64] {
        &self.sorted
    }

    /// Kernel: `true` for rows whose (valid) number is in the set; nulls are `false`.
    /// The same row decision as the extract's ([`OptOutRules::decisions`]), with this set
    /// as the only list and no exemption.
    pub fn member_mask(&self, numbers: &UInt64Array) -> BooleanArray {
        let none = OptOutSet::default();
        let rules = OptOutRules {
            ndoo: self,
            ndoo_kind: ListKind::Deny,
            ndoo_exempt: false,
            type1: &none,
            type1_exempt: false,
        };
        rules
            .decisions(numbers)
            .into_iter()
            .map(|d| Some(d.removes()))
            .collect()
    }
}

/// What the opt-out rules decide for one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowDecision {
    /// Not opted out (or no valid number: such rows never reach this stage).
    Keep,
    /// Opted out, but kept under the policy's declared exemption.
    KeepExempt,
    /// Removed: on the National Data Opt-out deny-list, or missing from its allow-list
    /// (even if also a Type 1 dissenter).
    RemoveNdoo,
    /// Removed: the patient's latest Type 1 code is a dissent.
    RemoveType1,
}

impl RowDecision {
    /// Whether the row leaves the data.
    pub fn removes(self) -> bool {
        matches!(self, RowDecision::RemoveNdoo | RowDecision::RemoveType1)
    }
}

/// The opt-out rules of a run: the two lists and their exemptions. The one kernel that
/// decides a row's fate, shared by the extract and the SQL functions.
#[derive(Debug, Clone, Copy)]
pub struct OptOutRules<'a> {
    /// The National Data Opt-out set.
    pub ndoo: &'a OptOutSet,
    /// Whether `ndoo` lists the patients to remove (deny) or the only ones to keep
    /// (allow). With no list at all it is an empty deny-list.
    pub ndoo_kind: ListKind,
    /// Whether the policy declares an NDOO exemption.
    pub ndoo_exempt: bool,
    /// Type 1 dissenters.
    pub type1: &'a OptOutSet,
    /// Whether the policy declares a Type 1 exemption.
    pub type1_exempt: bool,
}

impl OptOutRules<'_> {
    /// One decision per row; a null number is kept (validation removed those rows).
    /// Rows come clustered by patient, so each run of one number is looked up once.
    pub fn decisions(&self, nhs: &UInt64Array) -> Vec<RowDecision> {
        let mut last: Option<(u64, RowDecision)> = None;
        (0..nhs.len())
            .map(|i| {
                if nhs.is_null(i) {
                    return RowDecision::Keep;
                }
                let v = nhs.value(i);
                match last {
                    Some((p, d)) if p == v => d,
                    _ => {
                        let d = self.decide(v);
                        last = Some((v, d));
                        d
                    }
                }
            })
            .collect()
    }

    fn decide(&self, n: u64) -> RowDecision {
        // An allow-list is a set of its own: a patient is opted out when missing from it.
        let opted_out = match self.ndoo_kind {
            ListKind::Deny => self.ndoo.contains(n),
            ListKind::Allow => !self.ndoo.contains(n),
        };
        let (on_ndoo, exempt) = if opted_out {
            (RowDecision::RemoveNdoo, self.ndoo_exempt)
        } else if self.type1.contains(n) {
            (RowDecision::RemoveType1, self.type1_exempt)
        } else {
            return RowDecision::Keep;
        };
        if exempt {
            RowDecision::KeepExempt
        } else {
            on_ndoo
        }
    }
}

/// Which form a National Data Opt-out list takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    /// Everyone on the list has opted out (`--opt-outs`).
    Deny,
    /// Only the patients on the list may be used: the NHS "Check for National Data
    /// Opt-outs" service's reply (`--ndoo-allow-list`).
    Allow,
}

impl ListKind {
    /// The manifest's name for it: `deny` or `allow`.
    pub fn as_str(self) -> &'static str {
        match self {
            ListKind::Deny => "deny",
            ListKind::Allow => "allow",
        }
    }
}

/// A loaded National Data Opt-out list.
#[derive(Debug, Clone)]
pub struct OptOutList {
    /// Deny-list or allow-list.
    pub kind: ListKind,
    /// The patients on the list.
    pub set: OptOutSet,
    /// Lines holding an entry (duplicates included).
    pub entries: u64,
    /// SHA-256 of the file's bytes.
    pub sha256: String,
    /// The list's as-of date.
    pub as_of: NaiveDate,
    /// The file.
    pub path: PathBuf,
}

impl OptOutList {
    /// Parse list content. Only a first line naming the NHS number column (`nhs_number`,
    /// `NHS number`, any case) is a header; anything else must be a valid NHS number.
    pub fn parse(bytes: &[u8], path: &Path, as_of: NaiveDate) -> Result<Self, OptOutError> {
        let mut numbers = Vec::new();
        let mut entries = 0u64;
        for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            let line = raw.strip_suffix(b"\r").unwrap_or(raw);
            // One number per line; a CSV list's number is its first field.
            let field = line.split(|&b| b == b',').next().unwrap_or(line);
            let field = trim_quotes(field);
            if field.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            match nhs_number::parse_bytes(field) {
                Ok(n) => {
                    numbers.push(n.get());
                    entries += 1;
                }
                Err(_) if i == 0 && is_header(field) => {}
                Err(e) => {
                    return Err(OptOutError::BadEntry {
                        path: path.to_path_buf(),
                        line: i + 1,
                        reason: e.reason(),
                    });
                }
            }
        }
        Ok(OptOutList {
            kind: ListKind::Deny,
            set: OptOutSet::from_numbers(numbers),
            entries,
            sha256: sha256_hex(bytes),
            as_of,
            path: path.to_path_buf(),
        })
    }

    /// Parse the allow-list the NHS "Check for National Data Opt-outs" service returns:
    /// one 10-digit NHS number per line, each followed by a comma, LF endings. Anything
    /// else (a header, the service's reply listing invalid numbers, CR LF, a missing
    /// comma, spaces, a number failing Modulus 11, no entries) is refused, naming line
    /// and column. Duplicates are fine.
    pub fn parse_allow(bytes: &[u8], path: &Path, as_of: NaiveDate) -> Result<Self, OptOutError> {
        let (numbers, entries) = allow::parse(bytes, path)?;
        Ok(OptOutList {
            kind: ListKind::Allow,
            set: OptOutSet::from_numbers(numbers),
            entries,
            sha256: sha256_hex(bytes),
            as_of,
            path: path.to_path_buf(),
        })
    }

    /// Load a deny-list; `as_of` defaults to the file's modification date.
    pub fn load(path: &Path, as_of: Option<NaiveDate>) -> Result<Self, OptOutError> {
        let (bytes, as_of) = read_list(path, as_of)?;
        Self::parse(&bytes, path, as_of)
    }

    /// Load an allow-list (see [`OptOutList::parse_allow`]); `as_of` defaults to the
    /// file's modification date.
    pub fn load_allow(path: &Path, as_of: Option<NaiveDate>) -> Result<Self, OptOutError> {
        let (bytes, as_of) = read_list(path, as_of)?;
        Self::parse_allow(&bytes, path, as_of)
    }

    /// The list's file name, as the manifest records it.
    pub fn file_name(&self) -> String {
        self.path.file_name().map_or_else(
            || self.path.to_string_lossy().into_owned(),
            |n| n.to_string_lossy().into_owned(),
        )
    }

    /// Refuse a list with no entries (unless `allow_empty`): a list that removes
    /// nobody is far more often a wrong file than a true empty list. An allow-list with
    /// no entries is refused whatever `allow_empty` says (it would remove everyone);
    /// its parser already refuses one.
    pub fn check_not_empty(&self, allow_empty: bool) -> Result<(), OptOutError> {
        if self.entries == 0 && self.kind == ListKind::Allow {
            return Err(OptOutError::AllowListEmpty {
                path: self.path.clone(),
            });
        }
        if self.entries == 0 && !allow_empty {
            return Err(OptOutError::Empty {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    /// Refuse a list older than `max_age_days` (or dated in the future) relative to `today`.
    pub fn check_fresh(&self, today: NaiveDate, max_age_days: u32) -> Result<(), OptOutError> {
        let age = (today - self.as_of).num_days();
        if age < 0 {
            return Err(OptOutError::Future {
                path: self.path.clone(),
                as_of: self.as_of,
                today,
            });
        }
        if age > i64::from(max_age_days) {
            return Err(OptOutError::Stale {
                path: self.path.clone(),
                as_of: self.as_of,
                age_days: age,
                max_age_days,
            });
        }
        Ok(())
    }
}

/// A list's bytes (a regular file of ours, within [`MAX_LIST_BYTES`]) and its as-of
/// date: the one given, else the file's modification date.
fn read_list(path: &Path, as_of: Option<NaiveDate>) -> Result<(Vec<u8>, NaiveDate), OptOutError> {
    let bytes = crate::trusted_file::read(path, MAX_LIST_BYTES)?;
    let as_of = match as_of {
        Some(d) => d,
        None => {
            let modified =
                std::fs::metadata(path)
                    .and_then(|m| m.modified())
                    .map_err(|source| OptOutError::Io {
                        path: path.to_path_buf(),
                        source,
                    })?;
            chrono::DateTime::<chrono::Utc>::from(modified).date_naive()
        }
    };
    Ok((bytes, as_of))
}

/// A header line names the column: `nhs_number`, `nhs number`, `nhsnumber` (any case).
fn is_header(field: &[u8]) -> bool {
    let name: Vec<u8> = field
        .iter()
        .filter(|b| !matches!(b, b' ' | b'_' | b'-' | b'\xEF' | b'\xBB' | b'\xBF'))
        .map(u8::to_ascii_lowercase)
        .collect();
    name == b"nhsnumber"
}

fn trim_quotes(s: &[u8]) -> &[u8] {
    let s = s.trim_ascii();
    s.strip_prefix(b"\"")
        .and_then(|s| s.strip_suffix(b"\""))
        .unwrap_or(s)
}

/// What a Type 1 code means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type1Kind {
    /// The patient dissents from secondary use.
    Dissent,
    /// A previous dissent is withdrawn.
    Withdrawal,
}

/// The Type 1 opt-out codelist (SNOMED CT, Read v2 and CTV3 codes).
#[derive(Debug, Clone)]
pub struct Type1Codelist {
    codes: HashMap<String, Type1Kind>,
    /// SHA-256 of the codelist file.
    pub sha256: String,
    /// Where it came from.
    pub path: PathBuf,
}

impl Type1Codelist {
    /// Parse a `code,system,kind,term` CSV.
    pub fn parse(text: &str, path: &Path) -> Result<Self, OptOutError> {
        let err = |line: usize, message: String| OptOutError::Codelist {
            path: path.to_path_buf(),
            line,
            message,
        };
        let mut rdr = csv::ReaderBuilder::new().from_reader(text.as_bytes());
        let headers = rdr.headers().map_err(|e| err(1, e.to_string()))?.clone();
        let col = |name: &str| {
            headers
                .iter()
                .position(|h| h == name)
                .ok_or_else(|| err(1, format!("missing column {name:?} (need code,kind)")))
        };
        let (ci, ki) = (col("code")?, col("kind")?);
        let mut codes = HashMap::new();
        for rec in rdr.records() {
            let rec =
                rec.map_err(|e| err(e.position().map_or(0, |p| p.line() as usize), e.to_string()))?;
            let line = rec.position().map_or(0, |p| p.line() as usize);
            let code = rec.get(ci).unwrap_or("").trim();
            let kind = match rec.get(ki).unwrap_or("").trim() {
                "dissent" => Type1Kind::Dissent,
                "withdrawal" => Type1Kind::Withdrawal,
                other => {
                    return Err(err(
                        line,
                        format!("kind {other:?} must be \"dissent\" or \"withdrawal\""),
                    ));
                }
            };
            if code.is_empty() {
                return Err(err(line, "empty code".into()));
            }
            codes.insert(code.to_string(), kind);
        }
        if !codes.values().any(|k| *k == Type1Kind::Dissent) {
            return Err(err(1, "the codelist has no dissent code".into()));
        }
        Ok(Type1Codelist {
            codes,
            sha256: sha256_hex(text.as_bytes()),
            path: path.to_path_buf(),
        })
    }

    /// Load from a file.
    pub fn load(path: &Path) -> Result<Self, OptOutError> {
        let text = std::fs::read_to_string(path).map_err(|source| OptOutError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// What a code means, if it is a Type 1 code.
    pub fn kind(&self, code: &str) -> Option<Type1Kind> {
        self.codes.get(code.trim()).copied()
    }

    /// The codes themselves (for a fast raw pre-scan of input bytes).
    pub fn codes(&self) -> impl Iterator<Item = &str> {
        self.codes.keys().map(String::as_str)
    }
}

/// Works out each patient's latest Type 1 code across a stream of event batches.
#[derive(Debug, Default)]
pub struct Type1Tracker {
    /// Per patient: (date as days since epoch, kind). An undated code sorts last.
    latest: HashMap<u64, (i64, Type1Kind)>,
}

impl Type1Tracker {
    /// Record one coded event. Same-day dissent and withdrawal: dissent wins (fail closed).
    /// An event with no usable date counts as the latest (fail closed for a dissent).
    pub fn observe(&mut self, nhs: u64, date: Option<i32>, kind: Type1Kind) {
        let d = date.map_or(i64::MAX, i64::from);
        let e = self.latest.entry(nhs).or_insert((d, kind));
        if d > e.0 || (d == e.0 && kind == Type1Kind::Dissent) {
            *e = (d, kind);
        }
    }

    /// Observe a batch of events: valid numbers, event dates and codes.
    pub fn observe_arrays(
        &mut self,
        codelist: &Type1Codelist,
        nhs: &UInt64Array,
        dates: &Date32Array,
        codes: &StringArray,
    ) {
        for i in 0..codes.len() {
            if codes.is_null(i) || nhs.is_null(i) {
                continue;
            }
            if let Some(kind) = codelist.kind(codes.value(i)) {
                let date = dates.is_valid(i).then(|| dates.value(i));
                self.observe(nhs.value(i), date, kind);
            }
        }
    }

    /// Patients whose latest Type 1 code is a dissent.
    pub fn dissenters(&self) -> OptOutSet {
        OptOutSet::from_numbers(
            self.latest
                .iter()
                .filter(|(_, (_, k))| *k == Type1Kind::Dissent)
                .map(|(n, _)| *n)
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The radix index answers exactly as a search of the sorted numbers, for
        /// members, their neighbours, bucket edges and numbers past the largest.
        #[test]
        fn indexed_membership_equals_search(
            numbers in proptest::collection::vec(0u64..20_000_000_000, 0..300),
            dense in proptest::collection::vec(9_000_000_000u64..9_000_000_100, 0..50),
            probes in proptest::collection::vec(proptest::prelude::any::<u64>(), 0..50),
        ) {
            let all: Vec<u64> = numbers.iter().chain(&dense).copied().collect();
            let set = OptOutSet::from_numbers(all.clone());
            let mut sorted = all.clone();
            sorted.sort_unstable();
            sorted.dedup();
            proptest::prop_assert_eq!(set.numbers(), &sorted[..]);
            let near = all.iter().flat_map(|&n| [n.saturating_sub(1), n, n + 1]);
            let edges = (0..64).map(|s| 1u64 << s).flat_map(|e| [e - 1, e]);
            for q in near.chain(edges).chain(probes).chain([0, u64::MAX]) {
                proptest::prop_assert_eq!(set.contains(q), sorted.binary_search(&q).is_ok(), "{}", q);
            }
        }
    }

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("date")
    }

    #[test]
    fn list_with_header_spaces_and_crlf() {
        let l = OptOutList::parse(
            b"nhs_number\r\n943 476 5919\r\n\r\n9434765870\r\n",
            Path::new("l"),
            d("2026-01-01"),
        )
        .expect("parses");
        assert_eq!(l.entries, 2);
        assert!(l.set.contains(9434765919));
        assert!(l.set.contains(9434765870));
    }

    #[test]
    fn bad_entry_names_line_not_value() {
        let e = OptOutList::parse(
            b"nhs_number\n9434765919\n9434765918\n",
            Path::new("l.txt"),
            d("2026-01-01"),
        )
        .expect_err("refused");
        let m = e.to_string();
        assert!(m.contains("line 3"), "{m}");
        assert!(!m.contains("9434765918"), "{m}");
    }

    #[test]
    fn staleness() {
        let l = OptOutList::parse(b"9434765919\n", Path::new("l"), d("2026-01-01")).expect("ok");
        assert!(l.check_fresh(d("2026-01-31"), 30).is_ok());
        assert!(matches!(
            l.check_fresh(d("2026-02-01"), 30),
            Err(OptOutError::Stale { .. })
        ));
        assert!(matches!(
            l.check_fresh(d("2025-12-31"), 30),
            Err(OptOutError::Future { .. })
        ));
    }

    #[test]
    fn allow_list_removes_everyone_missing_from_it() {
        let allow = OptOutSet::from_numbers(vec![9434765919]);
        let type1 = OptOutSet::from_numbers(vec![9434765919, 4010232137]);
        let rules = |ndoo_exempt| OptOutRules {
            ndoo: &allow,
            ndoo_kind: ListKind::Allow,
            ndoo_exempt,
            type1: &type1,
            type1_exempt: false,
        };
        let nhs = UInt64Array::from(vec![
            Some(9434765919),
            Some(9434765870),
            None,
            Some(4010232137),
        ]);
        assert_eq!(
            rules(false).decisions(&nhs),
            [
                RowDecision::RemoveType1,
                RowDecision::RemoveNdoo,
                RowDecision::Keep,
                RowDecision::RemoveNdoo
            ]
        );
        assert_eq!(
            rules(true).decisions(&nhs),
            [
                RowDecision::RemoveType1,
                RowDecision::KeepExempt,
                RowDecision::Keep,
                RowDecision::KeepExempt
            ]
        );
    }

    #[test]
    fn an_empty_allow_list_is_refused_even_with_allow_empty() {
        let l = OptOutList {
            kind: ListKind::Allow,
            set: OptOutSet::default(),
            entries: 0,
            sha256: String::new(),
            as_of: d("2026-01-01"),
            path: PathBuf::from("reply.dat"),
        };
        assert!(matches!(
            l.check_not_empty(true),
            Err(OptOutError::AllowListEmpty { .. })
        ));
    }

    #[test]
    fn latest_type1_code_wins() {
        let mut t = Type1Tracker::default();
        // dissent then withdrawal: not opted out
        t.observe(1, Some(10), Type1Kind::Dissent);
        t.observe(1, Some(20), Type1Kind::Withdrawal);
        // withdrawal then dissent: opted out (observed out of order)
        t.observe(2, Some(30), Type1Kind::Dissent);
        t.observe(2, Some(5), Type1Kind::Withdrawal);
        // same day: dissent wins
        t.observe(3, Some(7), Type1Kind::Withdrawal);
        t.observe(3, Some(7), Type1Kind::Dissent);
        // undated dissent beats a dated withdrawal
        t.observe(4, None, Type1Kind::Dissent);
        t.observe(4, Some(99), Type1Kind::Withdrawal);
        assert_eq!(t.dissenters().numbers(), &[2, 3, 4]);
    }

    #[test]
    fn shipped_codelist_loads() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/codelists/type1-opt-out.csv");
        let c = Type1Codelist::load(&path).expect("loads");
        assert_eq!(c.kind("827241000000103"), Some(Type1Kind::Dissent));
        assert_eq!(c.kind("827261000000102"), Some(Type1Kind::Withdrawal));
        assert_eq!(c.kind("XaZ89"), Some(Type1Kind::Dissent));
        assert_eq!(c.kind("38341003"), None);
    }
}
