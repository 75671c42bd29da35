//! What one analyst saw of one table: `cells.json` ([`ReceivedTable`]) and the patients
//! behind each cell (`membership.parquet`, read into a [`Membership`]).
//!
//! The gate writes both files beside a job's result when its safe table becomes readable
//! (see `docs/attacker-model.md`, "Differencing between tables", and the contract in the
//! module header of `received`); this module only defines their shape, validates
//! `cells.json` once into typed values, and reads the membership file in bounded batches,
//! interning pseudonyms into small integers shared by every table of one check. Danger: a
//! membership holds patient pseudonyms; nothing here prints one (the `Debug` of
//! [`Membership`] and [`PatientIds`] gives sizes only), and an error names the file and
//! the column, never a value.

use std::path::Path;

use arrow::array::{Array, Float64Array, StringArray, UInt32Array};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};

use super::ReceivedError;

/// The one `format` of `cells.json` this version reads and writes.
pub const FORMAT: u32 = 1;

/// Rows read from a membership file per batch.
const BATCH_ROWS: usize = 8192;

/// The measure every table may carry: distinct patients of a cell (contribution 1).
pub const PATIENTS: &str = "patients";

/// `cells.json`: one released table as the analyst saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceivedTable {
    /// Always [`FORMAT`].
    pub format: u32,
    /// The job whose safe table this is.
    pub table: String,
    /// The threshold of the rules the table was checked under.
    pub threshold: u32,
    /// The additive measures, in order: `patients`, `rows`, `sum:<column>`, ...
    pub measures: Vec<String>,
    /// The cells; a cell's index is its number in the membership file's `cell` column.
    pub cells: Vec<ReceivedCell>,
    /// Published totals over several cells (margins, a grand total), if the safe table
    /// shows any: each is the sum of its cells. Absent in files without totals.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub totals: Vec<ReceivedTotal>,
    /// The relative protection of sums of the rules the table was checked under (their
    /// p%, else 10%); absent in older files (read as 10%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sum_protection: Option<f64>,
}

/// One cell: its key and what was seen of each measure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceivedCell {
    /// The group-key values, as text (published values, not patient data).
    pub key: Vec<String>,
    /// `values[i]` is what was seen of `measures[i]`.
    pub values: Vec<Published>,
}

/// A published total: the sum, over `cells`, of each measure. For `patients` it is the
/// number of distinct patients in any of the cells.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceivedTotal {
    /// The cells it adds up (indices into `cells`).
    pub cells: Vec<u32>,
    /// What was seen of each measure's total.
    pub values: Vec<Published>,
}

/// What the analyst saw of one measure in one cell.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "PublishedRepr", into = "PublishedRepr")]
pub enum Published {
    /// The number itself.
    Exact(f64),
    /// A rounded or perturbed number: the truth lies in `[lo, hi]`.
    Interval(f64, f64),
    /// Nothing.
    Hidden,
}

impl Published {
    /// The interval the truth is known to lie in, or `None` when hidden.
    pub fn bounds(self) -> Option<(f64, f64)> {
        match self {
            Published::Exact(v) => Some((v, v)),
            Published::Interval(lo, hi) => Some((lo, hi)),
            Published::Hidden => None,
        }
    }
}

/// The JSON spelling: `{"exact": 3}`, `{"interval": [0, 5]}`, `{"hidden": null}`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum PublishedRepr {
    Exact(f64),
    Interval([f64; 2]),
    Hidden(()),
}

impl TryFrom<PublishedRepr> for Published {
    type Error = String;
    fn try_from(r: PublishedRepr) -> Result<Self, String> {
        match r {
            PublishedRepr::Exact(v) if v.is_finite() => Ok(Published::Exact(v)),
            PublishedRepr::Interval([lo, hi]) if lo.is_finite() && hi.is_finite() && lo <= hi => {
                Ok(Published::Interval(lo, hi))
            }
            PublishedRepr::Hidden(()) => Ok(Published::Hidden),
            _ => Err(
                "a published value must be finite, and an interval's low end must not \
                      exceed its high end"
                    .into(),
            ),
        }
    }
}

impl From<Published> for PublishedRepr {
    fn from(p: Published) -> Self {
        match p {
            Published::Exact(v) => PublishedRepr::Exact(v),
            Published::Interval(lo, hi) => PublishedRepr::Interval([lo, hi]),
            Published::Hidden => PublishedRepr::Hidden(()),
        }
    }
}

impl ReceivedTable {
    /// Parse and validate `cells.json` text; `what` names the file in errors.
    pub fn parse(text: &str, what: &Path) -> Result<Self, ReceivedError> {
        let t: ReceivedTable = serde_json::from_str(text).map_err(|e| ReceivedError::BadTable {
            path: what.to_path_buf(),
            reason: format!("not a cells.json ({})", e.classify_name()),
        })?;
        t.validate().map_err(|reason| ReceivedError::BadTable {
            path: what.to_path_buf(),
            reason,
        })?;
        Ok(t)
    }

    /// Check the table's shape: format, measure names, one value per measure per cell,
    /// totals over existing cells.
    pub fn validate(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!(
                "format {} is not supported (this version reads format {FORMAT})",
                self.format
            ));
        }
        if self.table.is_empty() {
            return Err("the table has no job id".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for m in &self.measures {
            if m.is_empty() || !seen.insert(m.as_str()) {
                return Err("measure names must be non-empty and distinct".into());
            }
        }
        for (i, c) in self.cells.iter().enumerate() {
            if c.values.len() != self.measures.len() {
                return Err(format!(
                    "cell {i} has {} values for {} measures",
                    c.values.len(),
                    self.measures.len()
                ));
            }
        }
        for (i, t) in self.totals.iter().enumerate() {
            if t.values.len() != self.measures.len() {
                return Err(format!("total {i} has the wrong number of values"));
            }
            if t.cells.iter().any(|c| *c as usize >= self.cells.len()) {
                return Err(format!("total {i} names a cell the table does not have"));
            }
        }
        Ok(())
    }

    /// The index of a measure, if the table has it.
    pub fn measure(&self, name: &str) -> Option<usize> {
        self.measures.iter().position(|m| m == name)
    }
}

trait ClassifyJson {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyJson for serde_json::Error {
    /// A JSON error's kind, never its text (which may quote the input).
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "malformed JSON",
            serde_json::error::Category::Data => "unexpected or missing fields",
            serde_json::error::Category::Eof => "cut short",
        }
    }
}

/// Pseudonyms interned as small numbers, shared by every membership of one check.
#[derive(Default)]
pub struct PatientIds {
    ids: crate::intern::Interner,
    /// The last pseudonym's number: a membership file holds each patient's entries
    /// together, so most lookups are this one.
    last: Option<u32>,
}

impl std::fmt::Debug for PatientIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PatientIds({} patients)", self.ids.len())
    }
}

impl PatientIds {
    /// The number of a pseudonym, given a new one if unseen.
    pub fn intern(&mut self, pseudonym: &str) -> u32 {
        let v = pseudonym.as_bytes();
        if let Some(last) = self.last
            && self.ids.get(last) == v
        {
            return last;
        }
        let id = self.ids.intern(v);
        self.last = Some(id);
        id
    }

    /// The number of a pseudonym, if seen.
    pub fn get(&self, pseudonym: &str) -> Option<u32> {
        self.ids.find(pseudonym.as_bytes())
    }

    /// How many distinct patients have been seen.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether none has.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// The patients behind one table: one entry per (patient, cell) pair, with the patient's
/// contribution to each measure, in the table's measure order.
#[derive(Clone, Default, PartialEq)]
pub struct Membership {
    /// Interned patient per entry.
    pub patient: Vec<u32>,
    /// Cell per entry.
    pub cell: Vec<u32>,
    /// `contribution[m][i]`: entry `i`'s contribution to measure `m`.
    pub contribution: Vec<Vec<f64>>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Membership({} entries, {} measures)",
            self.patient.len(),
            self.contribution.len()
        )
    }
}

impl Membership {
    /// An empty membership for `measures` measures.
    pub fn new(measures: usize) -> Self {
        Membership {
            patient: Vec::new(),
            cell: Vec::new(),
            contribution: vec![Vec::new(); measures],
        }
    }

    /// Add one (patient, cell) entry.
    pub fn push(&mut self, patient: u32, cell: u32, contribution: &[f64]) {
        self.patient.push(patient);
        self.cell.push(cell);
        for (m, c) in self.contribution.iter_mut().zip(contribution) {
            m.push(*c);
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.patient.len()
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.patient.is_empty()
    }

    /// Read `membership.parquet` for `table`, interning pseudonyms in `ids`; refuses a file
    /// of more than `max_entries` entries (the check's memory bound) or whose cells or
    /// columns do not match the table.
    pub fn read(
        path: &Path,
        table: &ReceivedTable,
        ids: &mut PatientIds,
        max_entries: usize,
    ) -> Result<Self, ReceivedError> {
        let bad = |reason: String| ReceivedError::BadMembership {
            path: path.to_path_buf(),
            reason,
        };
        // Never through a symlink: a membership file is patient data.
        let file = crate::durable::open_nofollow(path).map_err(|e| ReceivedError::Io {
            path: path.to_path_buf(),
            source: e.into_io(),
        })?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|_| bad("not a readable Parquet file".into()))?;
        // Sized once from the footer (within the budget): growing by doubling would
        // need half as much again at its peak.
        let rows = usize::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
        let reader = builder
            .with_batch_size(BATCH_ROWS)
            .build()
            .map_err(|_| bad("not a readable Parquet file".into()))?;
        let mut out = Membership::new(table.measures.len());
        if rows <= max_entries {
            out.patient.reserve_exact(rows);
            out.cell.reserve_exact(rows);
            for c in &mut out.contribution {
                c.reserve_exact(rows);
            }
        }
        for batch in reader {
            let batch = batch.map_err(|_| bad("a batch could not be decoded".into()))?;
            if out.len() + batch.num_rows() > max_entries {
                return Err(ReceivedError::Budget {
                    what: format!(
                        "table {} has more than {max_entries} (patient, cell) entries",
                        table.table
                    ),
                });
            }
            let col = |name: &str| {
                batch
                    .column_by_name(name)
                    .ok_or_else(|| bad(format!("column {name} is missing")))
            };
            let pseud = col("patient_pseudonym")?
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| bad("column patient_pseudonym is not Utf8".into()))?;
            let cell = col("cell")?
                .as_any()
                .downcast_ref::<UInt32Array>()
                .ok_or_else(|| bad("column cell is not UInt32".into()))?;
            let mut measures = Vec::with_capacity(table.measures.len());
            for m in &table.measures {
                let a = col(m)?
                    .as_any()
                    .downcast_ref::<Float64Array>()
                    .ok_or_else(|| bad(format!("column {m} is not Float64")))?;
                measures.push(a);
            }
            let nulls = pseud.null_count()
                + cell.null_count()
                + measures.iter().map(|a| a.null_count()).sum::<usize>();
            if nulls > 0 {
                return Err(bad("a column has missing values".into()));
            }
            for i in 0..batch.num_rows() {
                let c = cell.value(i);
                if c as usize >= table.cells.len() {
                    return Err(bad(format!(
                        "a cell number is beyond the table's {} cells",
                        table.cells.len()
                    )));
                }
                out.patient.push(ids.intern(pseud.value(i)));
                out.cell.push(c);
                for (m, a) in measures.iter().enumerate() {
                    let v = a.value(i);
                    if !v.is_finite() {
                        return Err(bad(format!(
                            "column {} has a value that is not a finite number",
                            table.measures[m]
                        )));
                    }
                    out.contribution[m].push(v);
                }
            }
        }
        Ok(out)
    }
}

/// Write a membership file (tests, and any tool that needs the exact layout the gate
/// writes). `pseudonyms[i]` is the pseudonym of interned patient `i`.
#[cfg(test)]
pub(crate) fn write_membership(
    path: &Path,
    table: &ReceivedTable,
    m: &Membership,
    pseudonyms: &[String],
) {
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;
    let mut fields = vec![
        Field::new("patient_pseudonym", DataType::Utf8, false),
        Field::new("cell", DataType::UInt32, false),
    ];
    for name in &table.measures {
        fields.push(Field::new(name, DataType::Float64, false));
    }
    let schema = Arc::new(Schema::new(fields));
    let mut cols: Vec<arrow::array::ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            m.patient.iter().map(|p| pseudonyms[*p as usize].as_str()),
        )),
        Arc::new(UInt32Array::from(m.cell.clone())),
    ];
    for c in &m.contribution {
        cols.push(Arc::new(Float64Array::from(c.clone())));
    }
    let batch = arrow::record_batch::RecordBatch::try_new(schema.clone(), cols).expect("batch");
    let file = std::fs::File::create(path).expect("create");
    let mut w = parquet::arrow::ArrowWriter::try_new(file, schema, None).expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_json_reads_the_contract_example() {
        let text = r#"{ "format": 1, "table": "j1", "threshold": 10,
            "measures": ["patients", "rows", "sum:age"],
            "cells": [ { "key": ["F", "20-29"],
              "values": [ {"exact": 123}, {"hidden": null}, {"interval": [100, 110]} ] } ] }"#;
        let t = ReceivedTable::parse(text, Path::new("cells.json")).expect("parse");
        assert_eq!(
            t.cells[0].values,
            vec![
                Published::Exact(123.0),
                Published::Hidden,
                Published::Interval(100.0, 110.0)
            ]
        );
        let back = serde_json::to_string(&t).expect("json");
        assert!(back.contains(r#"{"hidden":null}"#), "{back}");
        assert_eq!(
            ReceivedTable::parse(&back, Path::new("x")).expect("again"),
            t
        );
    }

    #[test]
    fn a_malformed_table_is_refused_without_quoting_it() {
        let bad = r#"{ "format": 1, "table": "j1", "threshold": 10, "measures": ["patients"],
            "cells": [ { "key": ["secret"], "values": [ {"exact": 1}, {"exact": 2} ] } ] }"#;
        let e = ReceivedTable::parse(bad, Path::new("cells.json"))
            .expect_err("two values for one measure")
            .to_string();
        assert!(e.contains("cell 0 has 2 values for 1 measures"), "{e}");
        let e = ReceivedTable::parse(
            r#"{"format": 1, "table": "secret-value", "extra": 1}"#,
            Path::new("cells.json"),
        )
        .expect_err("unknown field")
        .to_string();
        assert!(!e.contains("secret"), "{e}");
        let inverted = r#"{ "format": 1, "table": "j", "threshold": 1, "measures": ["rows"],
            "cells": [ { "key": [], "values": [ {"interval": [5, 1]} ] } ] }"#;
        assert!(ReceivedTable::parse(inverted, Path::new("c")).is_err());
    }

    #[test]
    fn membership_round_trips_through_parquet_and_debug_hides_pseudonyms() {
        let dir = tempfile::tempdir().expect("tmp");
        let t = ReceivedTable {
            format: 1,
            table: "j1".into(),
            threshold: 10,
            measures: vec!["patients".into(), "sum:age".into()],
            cells: vec![
                ReceivedCell {
                    key: vec!["F".into()],
                    values: vec![Published::Exact(2.0), Published::Exact(70.0)],
                },
                ReceivedCell {
                    key: vec!["M".into()],
                    values: vec![Published::Hidden, Published::Hidden],
                },
            ],
            totals: vec![],
            sum_protection: None,
        };
        let names: Vec<String> = ["p-aaa", "p-bbb", "p-ccc"].map(String::from).to_vec();
        let mut m = Membership::new(2);
        m.push(0, 0, &[1.0, 30.0]);
        m.push(1, 0, &[1.0, 40.0]);
        m.push(2, 1, &[1.0, 50.0]);
        let path = dir.path().join("membership.parquet");
        write_membership(&path, &t, &m, &names);
        let mut ids = PatientIds::default();
        for n in &names {
            ids.intern(n);
        }
        let back = Membership::read(&path, &t, &mut ids, 100).expect("read");
        assert_eq!(back, m);
        assert!(!format!("{back:?} {ids:?}").contains("p-a"));
        let e = Membership::read(&path, &t, &mut ids, 2).expect_err("budget");
        assert!(matches!(e, ReceivedError::Budget { .. }));
        let mut short = t.clone();
        short.cells.pop();
        let e = Membership::read(&path, &short, &mut ids, 100).expect_err("cell out of range");
        assert!(e.to_string().contains("beyond"), "{e}");
    }
}
