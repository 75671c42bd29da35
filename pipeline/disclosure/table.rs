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
    /// Percentages, ratios and means, with what they are computed from.
    pub derived: Vec<DerivedSpec>,
    /// Columns holding one constant value: published as they are, never counts.
    pub constants: Vec<String>,
    /// Columns that may never be published, with the reason (row-level data, min/max).
    pub refused: Vec<(String, String)>,
    /// MIN/MAX (order statistic) columns the rules allow: published, with their own type,
    /// only where the group's count (the first count column) is published.
    pub order_stats: Vec<String>,
    /// How the given roles were decided (default "given"; the plan says "from the query plan").
    pub how: Option<String>,
    /// For a magnitude or count column, the column holding how many contributors
    /// (patients) give it a non-zero value in each cell: a non-zero cell with fewer than
    /// the threshold is hidden.
    pub holders: Vec<(String, String)>,
}

/// What kind of statistic a derived column is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DerivedKind {
    /// A percentage or proportion of counts.
    Percent,
    /// A ratio or rate of two columns.
    Ratio,
    /// A mean (`AVG`): a sum over a count.
    Mean,
}

/// A derived column and the columns of the same table it is computed from (if known).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DerivedSpec {
    /// The derived column.
    pub column: String,
    /// What it is.
    pub kind: DerivedKind,
    /// Its numerator column, if it is in the table.
    pub numerator: Option<String>,
    /// Its denominator column, if it is in the table (for a mean: its count).
    pub denominator: Option<String>,
}

impl RoleSpec {
    /// The default total labels.
    pub fn default_total_labels() -> Vec<String> {
        vec!["Total".to_string(), "All".to_string()]
    }
}

/// One column's role as the check used it, and how it was decided (for the report).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ResolvedRole {
    /// Column name.
    pub name: String,
    /// `dimension`, `count`, `magnitude`, `mean`, `derived`, `contributor`, `constant`,
    /// `refused`, `marker`, `ignored`.
    pub role: String,
    /// `given` (flag or caller) or the inference rule that chose it.
    pub how: String,
}

/// The roles used for a check, for the report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ResolvedRoles {
    /// Every column in table order.
    pub columns: Vec<ResolvedRole>,
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

/// A derived column's values and how it is computed.
#[derive(Debug, Clone)]
pub(crate) struct DerivedCol {
    pub spec: DerivedSpec,
    pub values: Vec<Option<f64>>,
}

/// A table with resolved roles, ready for the checks.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    pub nrows: usize,
    pub dims: Vec<(String, Vec<String>)>,
    pub counts: Vec<NumCol>,
    pub magnitudes: Vec<NumCol>,
    /// Per magnitude (same index): whether it adds up along lines (a sum, not a mean).
    pub mag_additive: Vec<bool>,
    /// Percentages and ratios.
    pub derived: Vec<DerivedCol>,
    /// Constant columns, published as they are.
    pub constants: Vec<String>,
    /// Columns that may not be published, with why.
    pub refused: Vec<(String, String)>,
    /// Allowed MIN/MAX columns, as they are (hidden with the first count column).
    pub order_stats: Vec<(String, ArrayRef)>,
    /// Per magnitude (same index): its contributor columns, largest first.
    pub contributors: Vec<Vec<NumCol>>,
    /// Per magnitude (same index): its number of non-zero contributors, if given.
    pub holders: Vec<Option<NumCol>>,
    /// Per count column (same index): its number of non-zero contributors, if given.
    pub count_holders: Vec<Option<NumCol>>,
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
        let arr = typed_column(&vals);
        fields.push(Field::new(name, arr.data_type().clone(), true));
        arrays.push(arr);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).map_err(|e| {
        DisclosureError::Malformed {
            message: format!("{origin}: {e}"),
        }
    })
}

/// A column of CSV text as Int64 if every non-empty value is an integer (an all-empty
/// column too, so a count whose every cell is hidden stays a count), Float64 if every one is
/// a number, Utf8 otherwise; empty fields are nulls.
fn typed_column(vals: &[String]) -> ArrayRef {
    let all_int = vals
        .iter()
        .all(|v| v.is_empty() || v.parse::<i64>().is_ok());
    let any = vals.iter().any(|v| !v.is_empty());
    let all_num = vals
        .iter()
        .all(|v| v.is_empty() || v.parse::<f64>().is_ok_and(|x| x.is_finite()));
    if all_int {
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
    }
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
    ["sum", "total", "value", "amount", "cost"]
        .iter()
        .any(|k| n == *k || n.starts_with(&format!("{k}_")) || n.ends_with(&format!("_{k}")))
}

/// Name tokens of percentages and ratios.
const PERCENT_TOKENS: &[&str] = &[
    "pct",
    "percent",
    "percentage",
    "proportion",
    "prop",
    "share",
    "ratio",
    "rate",
];
/// Name tokens of means and other non-additive magnitudes.
const MEAN_TOKENS: &[&str] = &["mean", "avg", "average", "median"];

/// Whether a `_`-separated token of the name is one of `tokens` (so `generated_sum` is not
/// a rate and `registrations_total` is not a ratio).
fn has_token(n: &str, tokens: &[&str]) -> bool {
    n.to_ascii_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|t| tokens.contains(&t))
}

/// Whether a magnitude adds up along lines (a sum), judged by whole name tokens.
pub(crate) fn is_additive_name(n: &str) -> bool {
    !has_token(n, MEAN_TOKENS) && !has_token(n, PERCENT_TOKENS)
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
    let names: Vec<String> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let cols = Cols {
        batch: &batch,
        names: &names,
    };
    let mut roles = given_roles(spec, &cols)?;
    let contributors = contributor_roles(spec, &cols, &mut roles)?;
    infer_roles(spec, &cols, &contributors, &mut roles)?;
    let pick = |r: &str| -> Vec<String> {
        names
            .iter()
            .filter(|n| roles.get(*n).is_some_and(|(x, _)| x == r))
            .cloned()
            .collect()
    };
    let dim_names = spec.dims.clone().unwrap_or_else(|| pick("dimension"));
    let count_names = spec.counts.clone().unwrap_or_else(|| pick("count"));
    let mut mag_names = spec.magnitudes.clone().unwrap_or_else(|| pick("magnitude"));
    let means = pick("mean");
    for m in &means {
        if !mag_names.contains(m) {
            mag_names.push(m.clone());
        }
    }
    if count_names.is_empty() {
        return Err(DisclosureError::Malformed {
            message: format!(
                "no count column: name one with --counts COL (columns are {}); numeric columns of whole numbers named n, count or *_count are taken as counts",
                names.join(", ")
            ),
        });
    }
    let nrows = batch.num_rows();
    let mut dims = Vec::new();
    for d in &dim_names {
        dims.push((d.clone(), strings(&cols.get(d)?)?));
    }
    let mut counts = Vec::new();
    for c in &count_names {
        counts.push(count_column(&cols, c)?);
    }
    let (magnitudes, mag_additive, contrib_cols) =
        magnitude_columns(&cols, &mag_names, &means, &contributors)?;
    let derived = derived_columns(spec, &cols, &roles)?;
    let total_labels: Vec<String> = if spec.total_labels.is_empty() {
        RoleSpec::default_total_labels()
    } else {
        spec.total_labels.clone()
    };
    let (margins_present, margins_how) = margins_of(spec, &dims, &total_labels)?;
    let columns = resolved_roles(&names, &roles, &dim_names, &count_names, &mag_names);
    let holders_of = |m: &NumCol| {
        spec.holders
            .iter()
            .find(|(of, _)| *of == m.name)
            .map(|(_, h)| count_column(&cols, h))
            .transpose()
    };
    let holders = magnitudes
        .iter()
        .map(holders_of)
        .collect::<Result<Vec<_>, _>>()?;
    let count_holders = counts
        .iter()
        .map(holders_of)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Table {
        holders,
        count_holders,
        nrows,
        dims,
        counts,
        magnitudes,
        mag_additive,
        contributors: contrib_cols,
        derived,
        constants: spec.constants.clone(),
        refused: spec.refused.clone(),
        order_stats: order_stat_columns(spec, &cols)?,
        total_labels,
        roles: ResolvedRoles {
            columns,
            margins_present,
            margins_how,
        },
    })
}

/// The allowed MIN/MAX columns as they are.
fn order_stat_columns(
    spec: &RoleSpec,
    cols: &Cols,
) -> Result<Vec<(String, ArrayRef)>, DisclosureError> {
    spec.order_stats
        .iter()
        .map(|n| Ok((n.clone(), cols.get(n)?)))
        .collect()
}

/// Every column's final role for the report: the given or inferred role, with the lists
/// actually used (dimensions, counts, magnitudes) taking precedence.
fn resolved_roles(
    names: &[String],
    roles: &Roles,
    dim_names: &[String],
    count_names: &[String],
    mag_names: &[String],
) -> Vec<ResolvedRole> {
    names
        .iter()
        .map(|n| {
            let (mut r, how) = roles.get(n).cloned().unwrap_or_default();
            if dim_names.contains(n) {
                r = "dimension".into();
            } else if count_names.contains(n) {
                r = "count".into();
            } else if mag_names.contains(n) && r != "mean" {
                r = "magnitude".into();
            }
            ResolvedRole {
                name: n.clone(),
                role: r,
                how,
            }
        })
        .collect()
}

/// Magnitude columns, whether each adds up, and each one's contributor columns.
type Magnitudes = (Vec<NumCol>, Vec<bool>, Vec<Vec<NumCol>>);

fn magnitude_columns(
    cols: &Cols,
    mag_names: &[String],
    means: &[String],
    contributors: &HashMap<String, Vec<String>>,
) -> Result<Magnitudes, DisclosureError> {
    let mut magnitudes = Vec::new();
    let mut contrib_cols = Vec::new();
    let mut mag_additive = Vec::new();
    for m in mag_names {
        magnitudes.push(NumCol {
            name: m.clone(),
            values: numeric(&cols.get(m)?, m)?,
        });
        mag_additive.push(!means.contains(m) && is_additive_name(m));
        let mut cs = Vec::new();
        for c in contributors.get(m).cloned().unwrap_or_default() {
            cs.push(NumCol {
                values: numeric(&cols.get(&c)?, &c)?,
                name: c,
            });
        }
        contrib_cols.push(cs);
    }
    Ok((magnitudes, mag_additive, contrib_cols))
}

/// The table's columns by name.
struct Cols<'a> {
    batch: &'a RecordBatch,
    names: &'a [String],
}

impl Cols<'_> {
    fn get(&self, n: &str) -> Result<ArrayRef, DisclosureError> {
        self.names
            .iter()
            .position(|x| x == n)
            .map(|i| self.batch.column(i).clone())
            .ok_or_else(|| DisclosureError::Malformed {
                message: format!(
                    "no column named {n:?}; the table has {}",
                    self.names.join(", ")
                ),
            })
    }
}

type Roles = HashMap<String, (String, String)>;

fn set(roles: &mut Roles, n: &str, r: &str, how: &str) {
    roles.insert(n.to_string(), (r.to_string(), how.to_string()));
}

/// Roles the caller gave (flags, or the query plan).
fn given_roles(spec: &RoleSpec, cols: &Cols) -> Result<Roles, DisclosureError> {
    let mut roles = Roles::new();
    let how = spec.how.as_deref().unwrap_or("given");
    for (list, r) in [
        (&spec.dims, "dimension"),
        (&spec.counts, "count"),
        (&spec.magnitudes, "magnitude"),
    ] {
        for n in list.iter().flatten() {
            cols.get(n)?;
            if let Some((prev, _)) = roles.get(n) {
                return Err(DisclosureError::Malformed {
                    message: format!("column {n:?} is given two roles ({prev} and {r})"),
                });
            }
            set(&mut roles, n, r, how);
        }
    }
    for d in &spec.derived {
        cols.get(&d.column)?;
        let r = if d.kind == DerivedKind::Mean {
            "mean"
        } else {
            "derived"
        };
        set(&mut roles, &d.column, r, how);
    }
    for n in &spec.constants {
        cols.get(n)?;
        set(&mut roles, n, "constant", how);
    }
    for n in &spec.order_stats {
        cols.get(n)?;
        set(&mut roles, n, "min/max", how);
    }
    for (n, why) in &spec.refused {
        cols.get(n)?;
        set(&mut roles, n, "refused", why.as_str());
    }
    Ok(roles)
}

/// Contributor columns, given or named `<magnitude>_top<k>`; also marks `_sdc` markers.
fn contributor_roles(
    spec: &RoleSpec,
    cols: &Cols,
    roles: &mut Roles,
) -> Result<HashMap<String, Vec<String>>, DisclosureError> {
    let names = cols.names;
    let mut contributors: HashMap<String, Vec<String>> = HashMap::new();
    for (mag, cs) in &spec.contributors {
        cols.get(mag)?;
        for c in cs {
            cols.get(c)?;
            set(roles, c, "contributor", "given");
        }
        contributors.insert(mag.clone(), cs.clone());
    }
    for n in names {
        if let Some(base) = n.strip_suffix("_sdc")
            && names.iter().any(|m| m == base)
            && !roles.contains_key(n)
        {
            set(
                roles,
                n,
                "marker",
                "inferred: `<column>_sdc` marker from an earlier version of --apply",
            );
        }
    }
    let mut inferred: HashMap<String, Vec<(usize, String)>> = HashMap::new();
    for n in names {
        if roles.contains_key(n) {
            continue;
        }
        if let Some((base, k)) = contributor_of(n)
            && names.contains(&base)
            && !contributors.contains_key(&base)
        {
            inferred.entry(base).or_default().push((k, n.clone()));
        }
    }
    for (base, mut v) in inferred {
        v.sort();
        for (_, c) in &v {
            set(
                roles,
                c,
                "contributor",
                "inferred: named `<magnitude>_top<k>`",
            );
        }
        contributors.insert(base, v.into_iter().map(|(_, c)| c).collect());
    }
    Ok(contributors)
}

/// Infer the roles nobody gave, from names and types (the fallback for a file: a query
/// job's result gets its roles from the plan).
fn infer_roles(
    spec: &RoleSpec,
    cols: &Cols,
    contributors: &HashMap<String, Vec<String>>,
    roles: &mut Roles,
) -> Result<(), DisclosureError> {
    for (i, n) in cols.names.iter().enumerate() {
        if roles.contains_key(n) {
            continue;
        }
        let arr = cols.batch.column(i);
        let dt = arr.data_type();
        let numeric_col = dt.is_integer() || dt.is_floating();
        let whole = numeric_col && numeric(arr, n)?.iter().flatten().all(|v| v.fract() == 0.0);
        let (r, how) = if contributors.contains_key(n) && spec.magnitudes.is_none() {
            ("magnitude", "inferred: has contributor columns")
        } else if whole && spec.counts.is_none() && is_count_name(n) {
            (
                "count",
                "inferred: whole-number column named like a count (n, count, *_count, ...)",
            )
        } else if numeric_col && spec.magnitudes.is_none() && has_token(n, PERCENT_TOKENS) {
            (
                "derived",
                "inferred: named like a percentage or ratio; recomputed from the published counts",
            )
        } else if numeric_col && spec.magnitudes.is_none() && has_token(n, MEAN_TOKENS) {
            (
                "mean",
                "inferred: named like a mean; hidden wherever its count is hidden",
            )
        } else if numeric_col && spec.magnitudes.is_none() && is_magnitude_name(n) {
            ("magnitude", "inferred: numeric column named like a sum")
        } else if dt.is_floating() && spec.magnitudes.is_none() {
            ("magnitude", "inferred: non-integer numeric column")
        } else if spec.dims.is_none() {
            let how = if dt.is_integer() {
                "inferred: integer column not named like a count"
            } else {
                "inferred: non-numeric column"
            };
            ("dimension", how)
        } else {
            (
                "ignored",
                "not listed in the given roles; not published by --apply",
            )
        };
        set(roles, n, r, how);
    }
    Ok(())
}

/// Derived columns: given (from the plan) or inferred by name (formula unknown).
fn derived_columns(
    spec: &RoleSpec,
    cols: &Cols,
    roles: &Roles,
) -> Result<Vec<DerivedCol>, DisclosureError> {
    let mut out = Vec::new();
    for d in &spec.derived {
        if d.kind == DerivedKind::Mean {
            continue;
        }
        out.push(DerivedCol {
            values: numeric(&cols.get(&d.column)?, &d.column)?,
            spec: d.clone(),
        });
    }
    for n in cols.names {
        if roles
            .get(n)
            .is_some_and(|(r, h)| r == "derived" && h.starts_with("inferred"))
        {
            out.push(DerivedCol {
                values: numeric(&cols.get(n)?, n)?,
                spec: DerivedSpec {
                    column: n.clone(),
                    kind: DerivedKind::Ratio,
                    numerator: None,
                    denominator: None,
                },
            });
        }
    }
    Ok(out)
}

/// A count column: numeric, whole numbers, never negative (whatever its Arrow type).
fn count_column(cols: &Cols, c: &str) -> Result<NumCol, DisclosureError> {
    let values = numeric(&cols.get(c)?, c)?;
    for (i, v) in values.iter().enumerate() {
        let Some(v) = v else { continue };
        if v.fract() != 0.0 {
            return Err(DisclosureError::Malformed {
                message: format!(
                    "count column {c:?} has a non-integer value at data row {}; counts must be whole numbers (use --magnitudes for sums or means)",
                    i + 1
                ),
            });
        }
        if *v < 0.0 {
            return Err(DisclosureError::Malformed {
                message: format!(
                    "count column {c:?} has a negative value at data row {}; a count is never negative (a negated count is refused, not checked)",
                    i + 1
                ),
            });
        }
    }
    Ok(NumCol {
        name: c.to_string(),
        values,
    })
}

/// Whether margins are present, and how that was decided.
fn margins_of(
    spec: &RoleSpec,
    dims: &[(String, Vec<String>)],
    total_labels: &[String],
) -> Result<(bool, String), DisclosureError> {
    let is_total = |v: &str| total_labels.iter().any(|t| t.eq_ignore_ascii_case(v));
    let found = dims
        .iter()
        .any(|(_, vals)| vals.iter().any(|v| is_total(v)));
    match spec.margins {
        Some(true) if !found => Err(DisclosureError::Malformed {
            message: format!(
                "margins were claimed present, but no dimension value is a total label ({}); add the total rows, pass --total-label, or drop --margins",
                total_labels.join(", ")
            ),
        }),
        Some(true) => Ok((true, "given".to_string())),
        Some(false) if found => Err(DisclosureError::Malformed {
            message: format!(
                "margins were declared absent, but some dimension values are total labels ({})",
                total_labels.join(", ")
            ),
        }),
        Some(false) => Ok((false, "given".to_string())),
        None if found => Ok((
            true,
            format!(
                "inferred: dimension values labelled {}",
                total_labels.join("/")
            ),
        )),
        None => Ok((
            false,
            "inferred: no dimension value is a total label".to_string(),
        )),
    }
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
