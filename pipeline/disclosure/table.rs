//! Aggregate tables: reading CSV or Parquet into Arrow, and deciding each column's role.
//!
//! A table has dimension columns (categories), count columns (frequencies), magnitude
//! columns (sums, means) and, for dominance checks, shadow columns holding each magnitude
//! cell's largest contributions (`<magnitude>_top1`, `<magnitude>_top2`, ...), which are
//! never published. Roles come from a [`RoleSpec`] or are inferred from names and types;
//! [`ResolvedRoles`] records which, for the report. This module never judges a cell and
//! never echoes a cell's value in an error (row numbers only).

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, Int64Array, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use serde::Serialize;

use super::DisclosureError;

/// What the caller says about column roles; anything left `None` is inferred.
#[derive(Debug, Clone, Default)]
pub struct RoleSpec {
    /// Dimension (category) columns.
    pub dims: Option<Vec<String>>,
    /// Count (frequency) columns.
    pub counts: Option<Vec<String>>,
    /// Magnitude columns (sums, means).
    pub magnitudes: Option<Vec<String>>,
    /// For a magnitude column, the columns holding its largest contributions, largest first.
    pub contributors: Vec<(String, Vec<String>)>,
    /// `Some(true)`: the table includes margins (total rows), and it is an error if none are
    /// found; `Some(false)`: it has none; `None`: infer from the total labels.
    pub margins: Option<bool>,
    /// Dimension values that mark a margin ("Total", "All"), compared case-insensitively.
    pub total_labels: Vec<String>,
}

impl RoleSpec {
    /// The default total labels.
    pub fn default_total_labels() -> Vec<String> {
        vec!["Total".to_string(), "All".to_string()]
    }
}

/// One column's role and how it was decided.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ColumnRole {
    /// Column name.
    pub name: String,
    /// `dimension`, `count`, `magnitude`, `contributor`, `marker`.
    pub role: String,
    /// `given` (flag or caller) or the inference rule that chose it.
    pub how: String,
}

/// The roles used for a check, for the report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ResolvedRoles {
    /// Every column in table order.
    pub columns: Vec<ColumnRole>,
    /// Whether margins (total rows) are present in the table, and how that was decided.
    pub margins_present: bool,
    /// How `margins_present` was decided.
    pub margins_how: String,
}

/// A numeric column as plain values (None = missing).
#[derive(Debug, Clone)]
pub(crate) struct NumCol {
    pub name: String,
    pub values: Vec<Option<f64>>,
}

/// A table with resolved roles, ready for the checks.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    pub nrows: usize,
    pub dims: Vec<(String, Vec<String>)>,
    pub counts: Vec<NumCol>,
    pub magnitudes: Vec<NumCol>,
    /// Per magnitude (same index): its contributor columns, largest first.
    pub contributors: Vec<Vec<NumCol>>,
    /// Per count (same index): rows already suppressed by an earlier `--apply`.
    pub already_suppressed: Vec<Vec<bool>>,
    /// Per magnitude (same index): rows already suppressed by an earlier `--apply`.
    pub mag_already_suppressed: Vec<Vec<bool>>,
    /// Whether each row is a margin in some dimension (any dim value is a total label).
    pub total_labels: Vec<String>,
    pub roles: ResolvedRoles,
}

/// Read a CSV or Parquet table (by extension: `.parquet`/`.pq` is Parquet, anything else CSV).
pub fn read_table(path: &Path) -> Result<Vec<RecordBatch>, DisclosureError> {
    let io = |e: std::io::Error| DisclosureError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    if is_parquet(path) {
        let file = File::open(path).map_err(io)?;
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.build())
            .map_err(|e| DisclosureError::Malformed {
                message: format!("{}: not a readable Parquet file: {e}", path.display()),
            })?;
        let mut out = Vec::new();
        for b in reader {
            out.push(b.map_err(|e| DisclosureError::Malformed {
                message: format!("{}: Parquet read error: {e}", path.display()),
            })?);
        }
        Ok(out)
    } else {
        let file = File::open(path).map_err(io)?;
        read_csv(file, &path.display().to_string()).map(|b| vec![b])
    }
}

/// Whether a path names a Parquet file.
pub fn is_parquet(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()),
        Some(ref e) if e == "parquet" || e == "pq"
    )
}

/// Read CSV with a header; each column becomes Int64 if every non-empty value is an integer,
/// Float64 if every one is a number, Utf8 otherwise. Empty fields are nulls.
pub fn read_csv<R: std::io::Read>(reader: R, origin: &str) -> Result<RecordBatch, DisclosureError> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(reader);
    let headers: Vec<String> = rdr
        .headers()
        .map_err(|e| DisclosureError::Malformed {
            message: format!("{origin}: cannot read the header line: {}", csv_err(&e)),
        })?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    if headers.is_empty() || headers.iter().all(|h| h.is_empty()) {
        return Err(DisclosureError::Malformed {
            message: format!("{origin}: the table has no header line"),
        });
    }
    let mut seen = HashMap::new();
    for (i, h) in headers.iter().enumerate() {
        if let Some(j) = seen.insert(h.clone(), i) {
            return Err(DisclosureError::Malformed {
                message: format!(
                    "{origin}: column {h:?} appears twice (columns {} and {})",
                    j + 1,
                    i + 1
                ),
            });
        }
    }
    let mut cols: Vec<Vec<String>> = vec![Vec::new(); headers.len()];
    let mut rec = csv::StringRecord::new();
    let mut line = 1usize;
    loop {
        match rdr.read_record(&mut rec) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                return Err(DisclosureError::Malformed {
                    message: format!("{origin}: {}", csv_err(&e)),
                });
            }
        }
        line += 1;
        if rec.len() != headers.len() {
            return Err(DisclosureError::Malformed {
                message: format!(
                    "{origin}: line {line} has {} fields, the header has {}",
                    rec.len(),
                    headers.len()
                ),
            });
        }
        for (c, f) in rec.iter().enumerate() {
            cols[c].push(f.trim().to_string());
        }
    }
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    for (name, vals) in headers.iter().zip(cols) {
        let all_int = vals
            .iter()
            .all(|v| v.is_empty() || v.parse::<i64>().is_ok());
        let any = vals.iter().any(|v| !v.is_empty());
        let all_num = vals
            .iter()
            .all(|v| v.is_empty() || v.parse::<f64>().is_ok_and(|x| x.is_finite()));
        let arr: ArrayRef = if any && all_int {
            Arc::new(
                vals.iter()
                    .map(|v| v.parse::<i64>().ok())
                    .collect::<Int64Array>(),
            )
        } else if any && all_num {
            Arc::new(
                vals.iter()
                    .map(|v| v.parse::<f64>().ok())
                    .collect::<Float64Array>(),
            )
        } else {
            Arc::new(
                vals.iter()
                    .map(|v| if v.is_empty() { None } else { Some(v.as_str()) })
                    .collect::<StringArray>(),
            )
        };
        fields.push(Field::new(name, arr.data_type().clone(), true));
        arrays.push(arr);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).map_err(|e| {
        DisclosureError::Malformed {
            message: format!("{origin}: {e}"),
        }
    })
}

/// A csv error without the record contents.
fn csv_err(e: &csv::Error) -> String {
    match e.position() {
        Some(p) => format!("malformed CSV at line {}", p.line()),
        None => "malformed CSV".to_string(),
    }
}

fn is_count_name(n: &str) -> bool {
    let n = n.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "n" | "count"
            | "counts"
            | "freq"
            | "frequency"
            | "numerator"
            | "denominator"
            | "population"
    ) || n.ends_with("_count")
        || n.ends_with("_n")
        || n.starts_with("n_")
        || n.starts_with("count_")
        || n.ends_with("_midpoint6")
}

fn is_magnitude_name(n: &str) -> bool {
    let n = n.to_ascii_lowercase();
    [
        "sum", "total", "mean", "avg", "average", "median", "value", "amount", "rate",
    ]
    .iter()
    .any(|k| n == *k || n.starts_with(&format!("{k}_")) || n.ends_with(&format!("_{k}")))
}

/// `<mag>_top<k>` or `<mag>_max<k>` -> (mag, k).
fn contributor_of(n: &str) -> Option<(String, usize)> {
    let (base, tail) = n.rsplit_once('_')?;
    let digits = tail
        .strip_prefix("top")
        .or_else(|| tail.strip_prefix("max"))?;
    let k: usize = digits.parse().ok()?;
    (k >= 1).then(|| (base.to_string(), k))
}

fn numeric(col: &ArrayRef, name: &str) -> Result<Vec<Option<f64>>, DisclosureError> {
    let bad = |row: Option<usize>| DisclosureError::Malformed {
        message: match row {
            Some(r) => format!(
                "column {name:?} must be numeric, but data row {} is not a number; fix the value or give the column another role",
                r + 1
            ),
            None => format!(
                "column {name:?} must be numeric but has type {}",
                col.data_type()
            ),
        },
    };
    match col.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let s = cast(col, &DataType::Utf8).map_err(|_| bad(None))?;
            let s = s
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| bad(None))?;
            (0..s.len())
                .map(|i| {
                    if s.is_null(i) || s.value(i).trim().is_empty() {
                        Ok(None)
                    } else {
                        s.value(i)
                            .trim()
                            .parse::<f64>()
                            .ok()
                            .filter(|x| x.is_finite())
                            .map(Some)
                            .ok_or_else(|| bad(Some(i)))
                    }
                })
                .collect()
        }
        dt if dt.is_numeric() => {
            let f = cast(col, &DataType::Float64).map_err(|_| bad(None))?;
            let f = f
                .as_any()
                .downcast_ref::<Float64Array>()
                .ok_or_else(|| bad(None))?;
            Ok((0..f.len())
                .map(|i| (!f.is_null(i)).then(|| f.value(i)).filter(|x| !x.is_nan()))
                .collect())
        }
        _ => Err(bad(None)),
    }
}

fn strings(col: &ArrayRef) -> Result<Vec<String>, DisclosureError> {
    let s = cast(col, &DataType::Utf8).map_err(|e| DisclosureError::Malformed {
        message: format!("a dimension column cannot be read as text: {e}"),
    })?;
    let s = s
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| DisclosureError::Internal("cast to Utf8 gave another type".into()))?;
    Ok((0..s.len())
        .map(|i| {
            if s.is_null(i) {
                String::new()
            } else {
                s.value(i).to_string()
            }
        })
        .collect())
}

fn concat(batches: &[RecordBatch]) -> Result<RecordBatch, DisclosureError> {
    let Some(first) = batches.first() else {
        return Err(DisclosureError::Malformed {
            message: "the table is empty (no batches)".to_string(),
        });
    };
    arrow::compute::concat_batches(&first.schema(), batches).map_err(|e| {
        DisclosureError::Malformed {
            message: format!("batches do not share a schema: {e}"),
        }
    })
}

/// Resolve roles and extract a [`Table`].
pub(crate) fn resolve(batches: &[RecordBatch], spec: &RoleSpec) -> Result<Table, DisclosureError> {
    let batch = concat(batches)?;
    let schema = batch.schema();
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let col = |n: &str| -> Result<ArrayRef, DisclosureError> {
        schema
            .index_of(n)
            .map(|i| batch.column(i).clone())
            .map_err(|_| DisclosureError::Malformed {
                message: format!("no column named {n:?}; the table has {}", names.join(", ")),
            })
    };
    let lower: Vec<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
    let mut roles: HashMap<String, (String, String)> = HashMap::new();
    let set = |roles: &mut HashMap<String, (String, String)>, n: &str, r: &str, how: &str| {
        roles.insert(n.to_string(), (r.to_string(), how.to_string()));
    };
    // Given roles first.
    for (list, r) in [
        (&spec.dims, "dimension"),
        (&spec.counts, "count"),
        (&spec.magnitudes, "magnitude"),
    ] {
        if let Some(list) = list {
            for n in list {
                col(n)?;
                if let Some((prev, _)) = roles.get(n) {
                    return Err(DisclosureError::Malformed {
                        message: format!("column {n:?} is given two roles ({prev} and {r})"),
                    });
                }
                set(&mut roles, n, r, "given");
            }
        }
    }
    let mut contributors: HashMap<String, Vec<String>> = HashMap::new();
    for (mag, cols) in &spec.contributors {
        col(mag)?;
        for c in cols {
            col(c)?;
            set(&mut roles, c, "contributor", "given");
        }
        contributors.insert(mag.clone(), cols.clone());
    }
    // Markers from an earlier --apply.
    for n in &names {
        if let Some(base) = n.strip_suffix("_sdc")
            && names.iter().any(|m| m == base)
            && !roles.contains_key(n)
        {
            set(
                &mut roles,
                n,
                "marker",
                "inferred: `<column>_sdc` marker from an earlier --apply",
            );
        }
    }
    // Inferred contributor columns.
    let mut inferred_contrib: HashMap<String, Vec<(usize, String)>> = HashMap::new();
    for n in &names {
        if roles.contains_key(n) {
            continue;
        }
        if let Some((base, k)) = contributor_of(n)
            && names.contains(&base)
            && !contributors.contains_key(&base)
        {
            inferred_contrib
                .entry(base)
                .or_default()
                .push((k, n.clone()));
        }
    }
    for (base, mut v) in inferred_contrib {
        v.sort();
        for (_, c) in &v {
            set(
                &mut roles,
                c,
                "contributor",
                "inferred: named `<magnitude>_top<k>`",
            );
        }
        contributors.insert(base, v.into_iter().map(|(_, c)| c).collect());
    }
    for (i, n) in names.iter().enumerate() {
        if roles.contains_key(n) {
            continue;
        }
        let dt = schema.field(i).data_type();
        let integer = dt.is_integer();
        let float = dt.is_floating();
        let given_counts = spec.counts.is_some();
        let given_mags = spec.magnitudes.is_some();
        let given_dims = spec.dims.is_some();
        let (r, how) = if contributors.contains_key(n) && !given_mags {
            ("magnitude", "inferred: has contributor columns")
        } else if integer && !given_counts && is_count_name(n) {
            (
                "count",
                "inferred: integer column named like a count (n, count, *_count, ...)",
            )
        } else if (integer || float) && !given_mags && is_magnitude_name(n) {
            (
                "magnitude",
                "inferred: numeric column named like a sum or mean",
            )
        } else if float && !given_mags {
            ("magnitude", "inferred: non-integer numeric column")
        } else if !given_dims {
            (
                "dimension",
                if integer {
                    "inferred: integer column not named like a count"
                } else {
                    "inferred: non-numeric column"
                },
            )
        } else {
            (
                "ignored",
                "not listed in the given roles; not published by --apply",
            )
        };
        let _ = &lower;
        set(&mut roles, n, r, how);
    }
    let role_of = |n: &str| roles.get(n).map(|(r, _)| r.as_str()).unwrap_or("");
    let ordered: Vec<&String> = names.iter().collect();
    let pick = |r: &str| -> Vec<String> {
        ordered
            .iter()
            .filter(|n| role_of(n) == r)
            .map(|n| n.to_string())
            .collect()
    };
    let dim_names = match &spec.dims {
        Some(d) => d.clone(),
        None => pick("dimension"),
    };
    let count_names = match &spec.counts {
        Some(c) => c.clone(),
        None => pick("count"),
    };
    let mag_names = match &spec.magnitudes {
        Some(m) => m.clone(),
        None => pick("magnitude"),
    };
    if count_names.is_empty() {
        return Err(DisclosureError::Malformed {
            message: format!(
                "no count column: name one with --counts COL (columns are {}); integer columns named n, count or *_count are taken as counts",
                names.join(", ")
            ),
        });
    }
    let nrows = batch.num_rows();
    let mut dims = Vec::new();
    for d in &dim_names {
        dims.push((d.clone(), strings(&col(d)?)?));
    }
    let mut counts = Vec::new();
    let mut already = Vec::new();
    for c in &count_names {
        let values = numeric(&col(c)?, c)?;
        for (i, v) in values.iter().enumerate() {
            if let Some(v) = v
                && v.fract() != 0.0
            {
                return Err(DisclosureError::Malformed {
                    message: format!(
                        "count column {c:?} has a non-integer value at data row {}; counts must be whole numbers (use --magnitudes for sums or means)",
                        i + 1
                    ),
                });
            }
        }
        already.push(markers(&batch, &names, c, nrows)?);
        counts.push(NumCol {
            name: c.clone(),
            values,
        });
    }
    let mut magnitudes = Vec::new();
    let mut contrib_cols = Vec::new();
    let mut mag_already = Vec::new();
    for m in &mag_names {
        magnitudes.push(NumCol {
            name: m.clone(),
            values: numeric(&col(m)?, m)?,
        });
        mag_already.push(markers(&batch, &names, m, nrows)?);
        let mut cs = Vec::new();
        for c in contributors.get(m).cloned().unwrap_or_default() {
            cs.push(NumCol {
                values: numeric(&col(&c)?, &c)?,
                name: c,
            });
        }
        contrib_cols.push(cs);
    }
    let total_labels: Vec<String> = if spec.total_labels.is_empty() {
        RoleSpec::default_total_labels()
    } else {
        spec.total_labels.clone()
    };
    let is_total = |v: &str| total_labels.iter().any(|t| t.eq_ignore_ascii_case(v));
    let found = dims
        .iter()
        .any(|(_, vals)| vals.iter().any(|v| is_total(v)));
    let (margins_present, margins_how) = match spec.margins {
        Some(true) if !found => {
            return Err(DisclosureError::Malformed {
                message: format!(
                    "margins were claimed present, but no dimension value is a total label ({}); add the total rows, pass --total-label, or drop --margins",
                    total_labels.join(", ")
                ),
            });
        }
        Some(true) => (true, "given".to_string()),
        Some(false) if found => {
            return Err(DisclosureError::Malformed {
                message: format!(
                    "margins were declared absent, but some dimension values are total labels ({})",
                    total_labels.join(", ")
                ),
            });
        }
        Some(false) => (false, "given".to_string()),
        None if found => (
            true,
            format!(
                "inferred: dimension values labelled {}",
                total_labels.join("/")
            ),
        ),
        None => (
            false,
            "inferred: no dimension value is a total label".to_string(),
        ),
    };
    let columns = names
        .iter()
        .map(|n| {
            let (r, how) = roles.get(n).cloned().unwrap_or_default();
            let r = if dim_names.contains(n) {
                "dimension".to_string()
            } else if count_names.contains(n) {
                "count".to_string()
            } else if mag_names.contains(n) {
                "magnitude".to_string()
            } else {
                r
            };
            ColumnRole {
                name: n.clone(),
                role: r,
                how,
            }
        })
        .collect();
    Ok(Table {
        nrows,
        dims,
        counts,
        magnitudes,
        contributors: contrib_cols,
        already_suppressed: already,
        mag_already_suppressed: mag_already,
        total_labels,
        roles: ResolvedRoles {
            columns,
            margins_present,
            margins_how,
        },
    })
}

/// Rows that an earlier `--apply` marked suppressed (`<col>_sdc` starting with "suppressed").
fn markers(
    batch: &RecordBatch,
    names: &[String],
    col: &str,
    nrows: usize,
) -> Result<Vec<bool>, DisclosureError> {
    let m = format!("{col}_sdc");
    if !names.contains(&m) {
        return Ok(vec![false; nrows]);
    }
    let idx = batch
        .schema()
        .index_of(&m)
        .map_err(|e| DisclosureError::Internal(e.to_string()))?;
    let s = strings(batch.column(idx))?;
    Ok(s.iter().map(|v| v.starts_with("suppressed")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(csv: &str, spec: &RoleSpec) -> Result<Table, String> {
        let b = read_csv(csv.as_bytes(), "t").map_err(|e| e.to_string())?;
        resolve(&[b], spec).map_err(|e| e.to_string())
    }

    #[test]
    fn infers_counts_dims_and_contributors() {
        let tb = t(
            "region,year,n,cost_sum,cost_sum_top1,cost_sum_top2\nA,2020,12,5.5,2,1\n",
            &RoleSpec::default(),
        );
        let Ok(tb) = tb else { panic!("{tb:?}") };
        assert_eq!(tb.dims.len(), 2);
        assert_eq!(tb.counts[0].name, "n");
        assert_eq!(tb.magnitudes[0].name, "cost_sum");
        assert_eq!(tb.contributors[0].len(), 2);
    }

    #[test]
    fn no_count_column_is_an_error() {
        let e = t("region,value\nA,1.5\n", &RoleSpec::default()).err();
        assert!(e.is_some_and(|m| m.contains("no count column")));
    }

    #[test]
    fn non_numeric_count_is_an_error_with_row() {
        let spec = RoleSpec {
            counts: Some(vec!["n".into()]),
            ..Default::default()
        };
        let e = t("region,n\nA,3\nB,abc\n", &spec).err();
        assert!(e.is_some_and(|m| m.contains("data row 2") && !m.contains("abc")));
    }

    #[test]
    fn claimed_margins_must_exist() {
        let spec = RoleSpec {
            margins: Some(true),
            ..Default::default()
        };
        let e = t("region,n\nA,3\nB,4\n", &spec).err();
        assert!(e.is_some_and(|m| m.contains("margins were claimed")));
    }

    #[test]
    fn ragged_csv_is_an_error() {
        let e = t("region,n\nA,3,4\n", &RoleSpec::default()).err();
        assert!(e.is_some_and(|m| m.contains("line 2")));
    }
}
