//! Table plans: each schema resolved once into the generators of its columns.
//!
//! Owns matching columns by name and type to what the model knows (an NHS number, a date
//! of birth, an event code ...) and the fallbacks for any other column; decides how a
//! malformed row of each table may be broken. Never draws a random value.

use arrow::datatypes::SchemaRef;

use super::super::reference::{Reference, Weighted};
use super::super::rng::name_hash;
use crate::schema::{ColumnSchema, ColumnType, IdentifierClass, TableSchema};

/// What a column holds.
#[derive(Debug, Clone)]
pub(super) enum Col {
    Nhs,
    Name,
    Dob,
    Sex,
    Ethnicity,
    Postcode,
    Lsoa,
    Death,
    Practice,
    /// The row's main date (event, issue, registration start, booking).
    DateA,
    /// The row's second date (registration end, appointment).
    DateB,
    Code,
    Value,
    Unit,
    Status,
    Mode,
    Generic {
        ty: ColumnType,
        nullable: bool,
        allowed: Option<Weighted<String>>,
    },
}

/// Which generator makes a table's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Patients,
    Registrations,
    ClinicalEvents,
    Medications,
    Appointments,
    Generic,
}

/// How a malformed row may be broken in this table.
#[derive(Debug, Clone, Copy)]
pub(super) enum FaultKind {
    Extra,
    Missing,
    BadDate(usize),
    BadNumber(usize),
    /// Invalid UTF-8 in this column; true when it holds a name.
    BadUtf8(usize, bool),
}

/// One table's generation plan, resolved from its schema once.
#[derive(Debug, Clone)]
pub(crate) struct TablePlan {
    /// Table name.
    pub name: String,
    /// Column types in schema order.
    pub types: Vec<ColumnType>,
    /// Column names in schema order.
    pub headers: Vec<String>,
    /// The Arrow schema of the table.
    pub arrow_schema: SchemaRef,
    pub(super) kind: Kind,
    pub(super) cols: Vec<Col>,
    pub(super) has_nhs: bool,
    pub(super) fault_kinds: Vec<FaultKind>,
    pub(super) stream: u64,
    pub(super) past_status: Weighted<String>,
    pub(super) future_status: Weighted<String>,
    pub(super) mode: Weighted<String>,
}

fn pick_known(c: &ColumnSchema, kind: Kind) -> Option<Col> {
    use ColumnType as T;
    let col = match (kind, c.name.as_str(), c.ty) {
        (_, _, T::String) if c.class == IdentifierClass::NhsNumber => Col::Nhs,
        (Kind::Patients, "name", T::String) => Col::Name,
        (Kind::Patients, "date_of_birth", T::Date) => Col::Dob,
        (Kind::Patients, "sex", T::String) => Col::Sex,
        (Kind::Patients, "ethnicity_code", T::String) => Col::Ethnicity,
        (Kind::Patients, "postcode", T::String) => Col::Postcode,
        (Kind::Patients, "lsoa", T::String) => Col::Lsoa,
        (Kind::Patients, "date_of_death", T::Date) => Col::Death,
        (Kind::Registrations | Kind::Appointments, "practice_code", T::String) => Col::Practice,
        (Kind::Registrations, "start_date", T::Date) => Col::DateA,
        (Kind::Registrations, "end_date", T::Date) => Col::DateB,
        (Kind::ClinicalEvents, "event_date", T::Date) => Col::DateA,
        (Kind::ClinicalEvents, "snomed_code", T::String) => Col::Code,
        (Kind::ClinicalEvents, "numeric_value", T::Float64) => Col::Value,
        (Kind::ClinicalEvents, "unit", T::String) => Col::Unit,
        (Kind::Medications, "issue_date", T::Date) => Col::DateA,
        (Kind::Medications, "dmd_code", T::String) => Col::Code,
        (Kind::Medications, "quantity", T::Float64) => Col::Value,
        (Kind::Appointments, "booked_date", T::Date) => Col::DateA,
        (Kind::Appointments, "appointment_date", T::Date) => Col::DateB,
        (Kind::Appointments, "status", T::String) => Col::Status,
        (Kind::Appointments, "mode", T::String) => Col::Mode,
        _ => return None,
    };
    Some(col)
}

/// Weights for the values a schema allows: the reference weight where it has one, 1 for
/// allowed values it does not list; values not allowed are left out.
fn allowed_weights(reference: &[(String, u64)], allowed: Option<&Vec<String>>) -> Weighted<String> {
    let pairs: Vec<(String, u64)> = match allowed {
        None => reference.to_vec(),
        Some(allowed) => allowed
            .iter()
            .map(|v| {
                let w = reference
                    .iter()
                    .find(|(r, _)| r == v)
                    .map_or(1, |(_, w)| *w);
                (v.clone(), w)
            })
            .collect(),
    };
    let mut cumulative = Vec::with_capacity(pairs.len());
    let mut items = Vec::with_capacity(pairs.len());
    let mut total = 0;
    for (v, w) in pairs {
        total += w;
        items.push(v);
        cumulative.push(total);
    }
    Weighted { items, cumulative }
}

impl Kind {
    fn of(table: &str) -> Self {
        match table {
            "patients" => Kind::Patients,
            "registrations" => Kind::Registrations,
            "clinical_events" => Kind::ClinicalEvents,
            "medications" => Kind::Medications,
            "appointments" => Kind::Appointments,
            _ => Kind::Generic,
        }
    }
}

/// Each column's generator, and the values the schema allows for status and mode.
fn resolve_cols(
    schema: &TableSchema,
    kind: Kind,
) -> (Vec<Col>, Option<Vec<String>>, Option<Vec<String>>) {
    let mut status_allowed = None;
    let mut mode_allowed = None;
    let cols = schema
        .columns
        .iter()
        .map(|c| {
            let col = pick_known(c, kind).unwrap_or_else(|| Col::Generic {
                ty: c.ty,
                nullable: c.nullable,
                allowed: c.allowed.as_ref().map(|a| allowed_weights(&[], Some(a))),
            });
            match col {
                Col::Status => status_allowed = c.allowed.clone(),
                Col::Mode => mode_allowed = c.allowed.clone(),
                _ => {}
            }
            col
        })
        .collect();
    (cols, status_allowed, mode_allowed)
}

/// How malformed rows of this table may be broken.
fn fault_kinds(schema: &TableSchema, cols: &[Col]) -> Vec<FaultKind> {
    let mut kinds = vec![FaultKind::Extra, FaultKind::Missing];
    let first = |pred: &dyn Fn(&ColumnSchema) -> bool| schema.columns.iter().position(pred);
    if let Some(i) = first(&|c| c.ty == ColumnType::Date) {
        kinds.push(FaultKind::BadDate(i));
    }
    if let Some(i) = first(&|c| matches!(c.ty, ColumnType::Float64 | ColumnType::Int64)) {
        kinds.push(FaultKind::BadNumber(i));
    }
    // Invalid bytes turn up in free text: a name, a unit or a mode if the table has one.
    let text_col = cols
        .iter()
        .position(|c| matches!(c, Col::Name))
        .map(|i| (i, true))
        .or_else(|| {
            let unit = cols.iter().position(|c| matches!(c, Col::Unit | Col::Mode));
            unit.map(|i| (i, false))
        })
        .or_else(|| {
            first(&|c| c.ty == ColumnType::String && c.class != IdentifierClass::NhsNumber)
                .map(|i| (i, false))
        });
    if let Some((i, is_name)) = text_col {
        kinds.push(FaultKind::BadUtf8(i, is_name));
    }
    kinds
}

/// Appointment statuses for past and for future appointments, limited to those allowed.
fn statuses(
    reference: &Reference,
    allowed: Option<&Vec<String>>,
) -> (Weighted<String>, Weighted<String>) {
    let past = allowed_weights(&reference.past_status, allowed);
    let mut future = allowed_weights(&reference.future_status, None);
    if let Some(allowed) = allowed {
        let keep: Vec<(String, u64)> = reference
            .future_status
            .iter()
            .filter(|(v, _)| allowed.contains(v))
            .cloned()
            .collect();
        future = allowed_weights(&keep, None);
    }
    if future.is_empty() {
        future = past.clone();
    }
    (past, future)
}

impl TablePlan {
    /// Resolve a table schema against what the generator knows.
    pub(crate) fn new(schema: &TableSchema, reference: &Reference) -> Self {
        let kind = Kind::of(&schema.name);
        let (cols, status_allowed, mode_allowed) = resolve_cols(schema, kind);
        let (past_status, future_status) = statuses(reference, status_allowed.as_ref());
        TablePlan {
            name: schema.name.clone(),
            types: schema.columns.iter().map(|c| c.ty).collect(),
            headers: schema.columns.iter().map(|c| c.name.clone()).collect(),
            arrow_schema: schema.arrow_schema(),
            kind,
            has_nhs: cols.iter().any(|c| matches!(c, Col::Nhs)),
            fault_kinds: fault_kinds(schema, &cols),
            cols,
            stream: name_hash(&schema.name),
            past_status,
            future_status,
            mode: allowed_weights(&reference.mode, mode_allowed.as_ref()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(name: &str) -> TablePlan {
        let reference = Reference::builtin().expect("built-in reference data loads");
        let schemas = crate::schema::SchemaSet::builtin();
        TablePlan::new(schemas.get(name).expect("built-in table"), &reference)
    }

    #[test]
    fn known_columns_get_their_generators() {
        let p = plan("clinical_events");
        assert_eq!(p.kind, Kind::ClinicalEvents);
        assert!(p.has_nhs);
        let names: Vec<&str> = p.headers.iter().map(String::as_str).collect();
        let at = |n: &str| names.iter().position(|h| *h == n).expect("column");
        assert!(matches!(p.cols[at("nhs_number")], Col::Nhs));
        assert!(matches!(p.cols[at("event_date")], Col::DateA));
        assert!(matches!(p.cols[at("snomed_code")], Col::Code));
    }

    #[test]
    fn fault_kinds_follow_the_schema() {
        let p = plan("clinical_events");
        assert!(
            p.fault_kinds
                .iter()
                .any(|k| matches!(k, FaultKind::BadDate(_)))
        );
        assert!(
            p.fault_kinds
                .iter()
                .any(|k| matches!(k, FaultKind::BadNumber(_)))
        );
        let names = plan("patients");
        assert!(
            names
                .fault_kinds
                .iter()
                .any(|k| matches!(k, FaultKind::BadUtf8(_, true)))
        );
    }

    #[test]
    fn allowed_weights_keep_reference_weights_and_drop_the_rest() {
        let reference = vec![("a".to_string(), 5), ("b".to_string(), 3)];
        let all = allowed_weights(&reference, None);
        assert_eq!(all.items, vec!["a", "b"]);
        assert_eq!(all.cumulative, vec![5, 8]);
        let allowed = vec!["b".to_string(), "c".to_string()];
        let some = allowed_weights(&reference, Some(&allowed));
        assert_eq!(some.items, vec!["b", "c"]);
        assert_eq!(some.cumulative, vec![3, 4]);
    }

    #[test]
    fn unknown_tables_are_generic() {
        assert_eq!(Kind::of("lab_results"), Kind::Generic);
        assert_eq!(Kind::of("appointments"), Kind::Appointments);
    }
}
