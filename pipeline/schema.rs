//! Extract table schemas: the typed description of every GP extract table.
//!
//! A schema is data (`schemas/<table>.toml`), loaded strictly and validated once into a
//! [`TableSchema`]; adding a table means adding a file, never code. This module owns the
//! column names, Arrow types, nullability and the identifier class of every column, which
//! the policy loader uses to refuse unsafe transforms (a `direct` identifier can never be
//! kept). It never reads data and never decides what leaves: that is the policy's job.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::Deserialize;

/// Errors loading a schema file or directory.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The schema directory or a file in it could not be read.
    #[error("cannot read schema {path}: {source}")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid schema TOML (unknown key, wrong type, ...).
    #[error("invalid schema {path}: {message}")]
    Parse {
        /// The schema file.
        path: PathBuf,
        /// What is wrong, with line and column from the TOML parser.
        message: String,
    },
    /// The file parsed but is inconsistent.
    #[error("invalid schema {path}: {message}")]
    Invalid {
        /// The schema file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl crate::error::Classify for SchemaError {
    fn kind(&self) -> crate::error::ErrorKind {
        // A schema folder given on the command line that cannot be used is bad input.
        crate::error::ErrorKind::Failed
    }
}

/// The value type of a column, as written in a schema file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    /// UTF-8 text.
    String,
    /// 64-bit signed integer.
    Int64,
    /// 64-bit float.
    Float64,
    /// Calendar date, `YYYY-MM-DD` in CSV.
    Date,
    /// `true`/`false`.
    Boolean,
}

impl ColumnType {
    /// The Arrow type this column is ingested as.
    pub fn arrow_type(self) -> DataType {
        match self {
            ColumnType::String => DataType::Utf8,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::Date => DataType::Date32,
            ColumnType::Boolean => DataType::Boolean,
        }
    }

    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            ColumnType::String => "string",
            ColumnType::Int64 => "int64",
            ColumnType::Float64 => "float64",
            ColumnType::Date => "date",
            ColumnType::Boolean => "boolean",
        }
    }
}

/// How identifying a column is; drives what a policy may do with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentifierClass {
    /// The NHS number: validated, used for opt-outs, only ever pseudonymised.
    NhsNumber,
    /// A direct identifier (name, address, postcode, phone, email): never kept raw.
    Direct,
    /// A quasi-identifier (date of birth, sex, ethnicity, LSOA, practice).
    Quasi,
    /// Clinical content.
    Clinical,
    /// Free text, which may contain anything: never kept raw.
    FreeText,
}

impl IdentifierClass {
    /// The name used in schema files and messages.
    pub fn name(self) -> &'static str {
        match self {
            IdentifierClass::NhsNumber => "nhs_number",
            IdentifierClass::Direct => "direct",
            IdentifierClass::Quasi => "quasi",
            IdentifierClass::Clinical => "clinical",
            IdentifierClass::FreeText => "free_text",
        }
    }
}

/// One column of a table schema.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSchema {
    /// Column name as it appears in the extract header.
    pub name: String,
    /// Value type.
    #[serde(rename = "type")]
    pub ty: ColumnType,
    /// Whether an empty value is allowed.
    #[serde(default)]
    pub nullable: bool,
    /// Identifier class.
    pub class: IdentifierClass,
    /// Human description.
    #[serde(default)]
    pub description: String,
    /// For string columns: the only values allowed (others are rejected to quarantine).
    #[serde(default)]
    pub allowed: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTableSchema {
    table: String,
    #[serde(default)]
    description: String,
    version: u32,
    #[serde(default)]
    type1_codes: Option<Type1Columns>,
    columns: Vec<ColumnSchema>,
}

/// Where a table records Type 1 opt-out codes: its code and date columns.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Type1Columns {
    /// Column holding clinical codes (SNOMED CT, Read, CTV3).
    pub code: String,
    /// Column holding the date the code was recorded.
    pub date: String,
}

/// A validated extract table schema.
#[derive(Debug, Clone)]
pub struct TableSchema {
    /// Table name (also the input file stem).
    pub name: String,
    /// Human description.
    pub description: String,
    /// Schema version.
    pub version: u32,
    /// Columns in canonical order.
    pub columns: Vec<ColumnSchema>,
    /// Where Type 1 opt-out codes are recorded, if this table carries them.
    pub type1_codes: Option<Type1Columns>,
    /// File the schema was loaded from.
    pub source: PathBuf,
}

impl TableSchema {
    /// Parse and validate one schema from TOML text; `path` is used in messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, SchemaError> {
        let raw: RawTableSchema = toml::from_str(text).map_err(|e| SchemaError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let invalid = |message: String| SchemaError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        if raw.table.is_empty()
            || !raw
                .table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(invalid(format!(
                "table name {:?} must be non-empty ASCII letters, digits or _",
                raw.table
            )));
        }
        if raw.columns.is_empty() {
            return Err(invalid("a table needs at least one column".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for c in &raw.columns {
            if !seen.insert(c.name.as_str()) {
                return Err(invalid(format!("column {:?} is declared twice", c.name)));
            }
            if c.allowed.is_some() && c.ty != ColumnType::String {
                return Err(invalid(format!(
                    "column {:?}: `allowed` values only apply to string columns",
                    c.name
                )));
            }
            if c.class == IdentifierClass::NhsNumber && c.ty != ColumnType::String {
                return Err(invalid(format!(
                    "column {:?}: an nhs_number column must have type \"string\"",
                    c.name
                )));
            }
        }
        let nhs = raw
            .columns
            .iter()
            .filter(|c| c.class == IdentifierClass::NhsNumber)
            .count();
        if nhs > 1 {
            return Err(invalid(
                "a table may have at most one nhs_number column".into(),
            ));
        }
        if let Some(t) = &raw.type1_codes {
            let find = |n: &str| raw.columns.iter().find(|c| c.name == n);
            match (find(&t.code), find(&t.date)) {
                (Some(c), Some(d)) if c.ty == ColumnType::String && d.ty == ColumnType::Date => {}
                _ => {
                    return Err(invalid(format!(
                        "type1_codes must name a string code column and a date column of this table (got {:?}, {:?})",
                        t.code, t.date
                    )));
                }
            }
            if nhs == 0 {
                return Err(invalid(
                    "a table with type1_codes needs an nhs_number column".into(),
                ));
            }
        }
        Ok(TableSchema {
            type1_codes: raw.type1_codes,
            name: raw.table,
            description: raw.description,
            version: raw.version,
            columns: raw.columns,
            source: path.to_path_buf(),
        })
    }

    /// Load one schema file.
    pub fn load(path: &Path) -> Result<Self, SchemaError> {
        let text = std::fs::read_to_string(path).map_err(|source| SchemaError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Index of a column by name.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// A column by name.
    pub fn column(&self, name: &str) -> Option<&ColumnSchema> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Index of the NHS number column, if the table has one.
    pub fn nhs_number_index(&self) -> Option<usize> {
        self.columns
            .iter()
            .position(|c| c.class == IdentifierClass::NhsNumber)
    }

    /// The Arrow schema of ingested batches (all columns nullable in Arrow; the schema's
    /// nullability is enforced row by row at ingest).
    pub fn arrow_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|c| Field::new(&c.name, c.ty.arrow_type(), true))
                .collect::<Vec<_>>(),
        ))
    }
}

/// Every table schema in a directory, by table name.
#[derive(Debug, Clone, Default)]
pub struct SchemaSet {
    tables: BTreeMap<String, TableSchema>,
}

impl SchemaSet {
    /// Load every `*.toml` in `dir`. The file stem must equal the table name.
    pub fn load_dir(dir: &Path) -> Result<Self, SchemaError> {
        let io = |source| SchemaError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|e| e == "toml") {
                paths.push(path);
            }
        }
        paths.sort();
        let mut tables = BTreeMap::new();
        for path in paths {
            let schema = TableSchema::load(&path)?;
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            if stem != schema.name {
                return Err(SchemaError::Invalid {
                    path,
                    message: format!(
                        "file name must match its table: expected {}.toml",
                        schema.name
                    ),
                });
            }
            tables.insert(schema.name.clone(), schema);
        }
        if tables.is_empty() {
            return Err(SchemaError::Invalid {
                path: dir.to_path_buf(),
                message: "no *.toml schema files found".into(),
            });
        }
        Ok(SchemaSet { tables })
    }

    /// The built-in schemas shipped in `schemas/`, compiled into the binary so `tre`
    /// works from any directory.
    pub fn builtin() -> Self {
        let mut tables = BTreeMap::new();
        for (file, text) in BUILTIN {
            // The built-in files are tested in this module; a failure here is a bug.
            match TableSchema::from_toml(text, Path::new(file)) {
                Ok(s) => {
                    tables.insert(s.name.clone(), s);
                }
                Err(e) => panic!("bug: built-in schema {file} is invalid: {e}"),
            }
        }
        SchemaSet { tables }
    }

    /// Look a table up by name.
    pub fn get(&self, name: &str) -> Option<&TableSchema> {
        self.tables.get(name)
    }

    /// All tables in name order.
    pub fn tables(&self) -> impl Iterator<Item = &TableSchema> {
        self.tables.values()
    }

    /// Table names in order.
    pub fn names(&self) -> Vec<&str> {
        self.tables.keys().map(String::as_str).collect()
    }
}

const BUILTIN: &[(&str, &str)] = &[
    (
        "schemas/appointments.toml",
        include_str!("../schemas/appointments.toml"),
    ),
    (
        "schemas/clinical_events.toml",
        include_str!("../schemas/clinical_events.toml"),
    ),
    (
        "schemas/medications.toml",
        include_str!("../schemas/medications.toml"),
    ),
    (
        "schemas/patients.toml",
        include_str!("../schemas/patients.toml"),
    ),
    (
        "schemas/registrations.toml",
        include_str!("../schemas/registrations.toml"),
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_matches_schemas_dir() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        let loaded = SchemaSet::load_dir(&dir).expect("schemas/ loads");
        let builtin = SchemaSet::builtin();
        assert_eq!(
            loaded.names(),
            builtin.names(),
            "add new schemas/ files to BUILTIN"
        );
        for t in [
            "patients",
            "registrations",
            "clinical_events",
            "medications",
            "appointments",
        ] {
            let s = builtin.get(t).expect("required table");
            assert!(
                s.nhs_number_index().is_some(),
                "{t} has an nhs_number column"
            );
        }
    }

    #[test]
    fn unknown_key_is_refused_with_line() {
        let text = "table = \"t\"\nversion = 1\ncolour = 3\n[[columns]]\nname=\"a\"\ntype=\"string\"\nclass=\"quasi\"\n";
        let err = TableSchema::from_toml(text, Path::new("t.toml"))
            .expect_err("refused")
            .to_string();
        assert!(err.contains("colour"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn duplicate_column_is_refused() {
        let text = "table = \"t\"\nversion = 1\n[[columns]]\nname=\"a\"\ntype=\"string\"\nclass=\"quasi\"\n[[columns]]\nname=\"a\"\ntype=\"date\"\nclass=\"quasi\"\n";
        let err = TableSchema::from_toml(text, Path::new("t.toml"))
            .expect_err("refused")
            .to_string();
        assert!(err.contains("declared twice"), "{err}");
    }
}
