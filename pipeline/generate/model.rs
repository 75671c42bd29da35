//! The synthetic population and its rows: patients, registrations, clinical events,
//! medications, appointments, and schema-driven rows for tables it does not know.
//!
//! Owns what a row says. A chunk of patients is generated from its own streams
//! (seed, chunk index, table name), so every chunk can be made on any thread in any order
//! and the bytes stay the same. Columns are matched by name and type to what this module
//! knows; any other column, or any other table, gets generic values from its schema type.
//! Faults (invalid or missing NHS numbers, malformed rows) are drawn here and recorded in
//! the counts, but never on Type 1 opt-out rows, so the opt-out ground truth stays exact.

use arrow::datatypes::SchemaRef;

use super::format::push_u64;
use super::nhs::{NhsAllocator, NhsOut, wrong_check};
use super::reference::{Reference, Type1Kind, Weighted};
use super::rng::{Rng, name_hash};
use super::sink::{Fault, Sink};
use super::{CHUNK_PATIENTS, GenerateConfig};
use crate::schema::{ColumnSchema, ColumnType, IdentifierClass, TableSchema};

const YEAR: i32 = 365;

/// What a column holds.
#[derive(Debug, Clone)]
enum Col {
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
enum Kind {
    Patients,
    Registrations,
    ClinicalEvents,
    Medications,
    Appointments,
    Generic,
}

/// How a malformed row may be broken in this table.
#[derive(Debug, Clone, Copy)]
enum FaultKind {
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
    kind: Kind,
    cols: Vec<Col>,
    has_nhs: bool,
    fault_kinds: Vec<FaultKind>,
    stream: u64,
    past_status: Weighted<String>,
    future_status: Weighted<String>,
    mode: Weighted<String>,
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

impl TablePlan {
    /// Resolve a table schema against what the generator knows.
    pub(crate) fn new(schema: &TableSchema, reference: &Reference) -> Self {
        let kind = match schema.name.as_str() {
            "patients" => Kind::Patients,
            "registrations" => Kind::Registrations,
            "clinical_events" => Kind::ClinicalEvents,
            "medications" => Kind::Medications,
            "appointments" => Kind::Appointments,
            _ => Kind::Generic,
        };
        let mut status_allowed = None;
        let mut mode_allowed = None;
        let cols: Vec<Col> = schema
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
        let mut fault_kinds = vec![FaultKind::Extra, FaultKind::Missing];
        let first = |pred: &dyn Fn(&ColumnSchema) -> bool| schema.columns.iter().position(pred);
        if let Some(i) = first(&|c| c.ty == ColumnType::Date) {
            fault_kinds.push(FaultKind::BadDate(i));
        }
        if let Some(i) = first(&|c| matches!(c.ty, ColumnType::Float64 | ColumnType::Int64)) {
            fault_kinds.push(FaultKind::BadNumber(i));
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
            fault_kinds.push(FaultKind::BadUtf8(i, is_name));
        }
        let past_status = allowed_weights(&reference.past_status, status_allowed.as_ref());
        let mut future_status = allowed_weights(&reference.future_status, None);
        if let Some(allowed) = &status_allowed {
            let keep: Vec<(String, u64)> = reference
                .future_status
                .iter()
                .filter(|(v, _)| allowed.contains(v))
                .cloned()
                .collect();
            future_status = allowed_weights(&keep, None);
        }
        if future_status.is_empty() {
            future_status = past_status.clone();
        }
        TablePlan {
            name: schema.name.clone(),
            types: schema.columns.iter().map(|c| c.ty).collect(),
            headers: schema.columns.iter().map(|c| c.name.clone()).collect(),
            arrow_schema: schema.arrow_schema(),
            kind,
            has_nhs: cols.iter().any(|c| matches!(c, Col::Nhs)),
            cols,
            fault_kinds,
            stream: name_hash(&schema.name),
            past_status,
            future_status,
            mode: allowed_weights(&reference.mode, mode_allowed.as_ref()),
        }
    }
}

/// A GP practice.
#[derive(Debug, Clone)]
pub(crate) struct Practice {
    code: [u8; 6],
    area: usize,
}

/// Everything shared by all chunks: read-only.
#[derive(Debug)]
pub(crate) struct World {
    pub reference: Reference,
    pub plans: Vec<TablePlan>,
    pub patients: u64,
    pub seed: u64,
    pub faults: bool,
    pub opt_out_share: f64,
    nhs: NhsAllocator,
    practices: Vec<Practice>,
    registrations_cum: Vec<u64>,
    extract_day: i32,
    event_mean: f64,
    med_mean: f64,
    appt_mean: f64,
}

impl World {
    /// Build the shared state; `None` when there are too many patients to number.
    pub(crate) fn new(
        reference: Reference,
        plans: Vec<TablePlan>,
        cfg: &GenerateConfig,
        extract_day: i32,
    ) -> Option<Self> {
        let nhs = NhsAllocator::new(cfg.patients, cfg.seed)?;
        let practices = make_practices(&reference, cfg.patients, cfg.seed);
        let rates = &reference.rates;
        let registrations_cum = reference
            .registrations
            .iter()
            .scan(0u64, |acc, &x| {
                *acc += x;
                Some(*acc)
            })
            .collect();
        Some(World {
            registrations_cum,
            event_mean: cfg.events_per_patient,
            med_mean: cfg.events_per_patient * rates.medications_per_event,
            appt_mean: cfg.events_per_patient * rates.appointments_per_event,
            reference,
            plans,
            patients: cfg.patients,
            seed: cfg.seed,
            faults: cfg.faults,
            opt_out_share: cfg.opt_out_share,
            nhs,
            practices,
            extract_day,
        })
    }

    /// How many chunks the population splits into.
    pub(crate) fn chunks(&self) -> u64 {
        self.patients.div_ceil(CHUNK_PATIENTS)
    }
}

/// Practices: about one per `patients_per_practice` patients, spread over the areas by
/// weight, each with a unique ODS-shaped code.
fn make_practices(reference: &Reference, patients: u64, seed: u64) -> Vec<Practice> {
    let areas = &reference.areas;
    let n_areas = areas.items.len();
    let wanted = patients
        .div_ceil(reference.rates.patients_per_practice)
        .max(n_areas as u64);
    let wanted = wanted.min(999 * n_areas as u64) as usize;
    let mut used = vec![0u32; n_areas];
    let mut rng = Rng::new(seed, u64::MAX, name_hash("practices"));
    let mut out = Vec::with_capacity(wanted);
    for _ in 0..wanted {
        let mut area = rng.weighted(&areas.cumulative);
        while used[area] >= 999 {
            area = (area + 1) % n_areas;
        }
        used[area] += 1;
        let mut code = [b'0'; 6];
        code[..3].copy_from_slice(&areas.items[area].ods_prefix.as_bytes()[..3]);
        let seq = used[area];
        code[3] = b'0' + (seq / 100) as u8;
        code[4] = b'0' + (seq / 10 % 10) as u8;
        code[5] = b'0' + (seq % 10) as u8;
        out.push(Practice { code, area });
    }
    out
}

/// A patient's Type 1 opt-out history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type1Story {
    None,
    /// A dissent on this date: opted out.
    DissentOnly(i32),
    /// A dissent, later withdrawn: not opted out.
    DissentThenWithdrawal(i32, i32),
    /// A withdrawal (of an earlier, unrecorded dissent), then a fresh dissent: opted out.
    WithdrawalThenDissent(i32, i32),
}

impl Type1Story {
    fn is_dissenter(self) -> bool {
        matches!(
            self,
            Type1Story::DissentOnly(_) | Type1Story::WithdrawalThenDissent(..)
        )
    }
}

#[derive(Debug, Clone, Copy)]
struct Registration {
    practice: usize,
    start: i32,
    end: Option<i32>,
}

/// One synthetic patient.
#[derive(Debug, Clone)]
struct Patient {
    nhs: u64,
    sex: usize,
    dob: i32,
    death: Option<i32>,
    ethnicity: Option<usize>,
    female_name: bool,
    forename: usize,
    surname: usize,
    /// 0 "Forename Surname", 1 "SURNAME, Forename", 2 missing.
    name_style: u8,
    practice: usize,
    postcode: Option<(usize, [u8; 3])>,
    lsoa: u32,
    regs: [Registration; 3],
    n_regs: usize,
    activity: f64,
    record_start: i32,
    record_end: i32,
    type1: Type1Story,
    type1_legacy: bool,
    on_list: bool,
}

impl Patient {
    fn registrations(&self) -> &[Registration] {
        &self.regs[..self.n_regs]
    }

    fn practice_at(&self, day: i32) -> usize {
        self.registrations()
            .iter()
            .rev()
            .find(|r| r.start <= day)
            .map_or(self.practice, |r| r.practice)
    }
}

const POSTCODE_LETTERS: &[u8] = b"ABDEFGHJLNPQRSTUWXYZ";

fn make_patient(w: &World, rng: &mut Rng, index: u64) -> Patient {
    let r = &w.reference;
    let rates = &r.rates;
    let today = w.extract_day;
    let band = &r.age_bands.items[rng.weighted(&r.age_bands.cumulative)];
    let age_lo = (band.from as i32) * 36525 / 100;
    let age_hi = ((band.to as i32 + 1) * 36525 / 100 - 1).max(age_lo);
    let dob = today - rng.range_i32(age_lo, age_hi);
    let sex = rng.weighted(&r.sex.cumulative);
    let female_name = match r.sex.items.get(sex).map(String::as_str) {
        Some("F") => true,
        Some("M") => false,
        _ => rng.chance(0.5),
    };
    let forename = rng.index(if female_name {
        r.female.len()
    } else {
        r.male.len()
    });
    let surname = rng.index(r.surnames.len());
    let name_style = if rng.chance(rates.missing_name_share) {
        2
    } else {
        u8::from(rng.chance(rates.surname_first_share))
    };
    let ethnicity = if rng.chance(rates.missing_ethnicity_share) {
        None
    } else {
        Some(rng.weighted(&r.ethnicity.cumulative))
    };
    let practice = rng.index(w.practices.len());
    let area = &r.areas.items[w.practices[practice].area];
    let postcode = if rng.chance(rates.missing_postcode_share) {
        None
    } else {
        let outward = rng.index(area.outward.len());
        let inward = [
            b'0' + rng.below(10) as u8,
            POSTCODE_LETTERS[rng.index(POSTCODE_LETTERS.len())],
            POSTCODE_LETTERS[rng.index(POSTCODE_LETTERS.len())],
        ];
        Some((outward, inward))
    };
    let lsoa = rng.range_i32(area.lsoa_from as i32, area.lsoa_to as i32) as u32;
    let death = if rng.chance(band.death_share) {
        Some(rng.range_i32((dob + 1).max(today - 5 * YEAR), today))
    } else {
        None
    };
    let record_end = death.unwrap_or(today);
    let record_start = dob
        .max(today - rates.history_years as i32 * YEAR)
        .min(record_end);
    let mut n_regs = (rng.weighted(&w.registrations_cum) + 1).min(3);
    if record_end - record_start < 2 * YEAR {
        n_regs = 1;
    }
    let mut cuts = [record_start; 3];
    for c in cuts.iter_mut().take(n_regs).skip(1) {
        *c = rng.range_i32(record_start + 30, record_end - 30);
    }
    cuts[..n_regs].sort_unstable();
    let mut regs = [Registration {
        practice,
        start: record_start,
        end: None,
    }; 3];
    for i in 0..n_regs {
        let last = i + 1 == n_regs;
        let start = cuts[i];
        let end = if last {
            death
        } else {
            Some((cuts[i + 1] - 1 - rng.range_i32(0, 28)).max(start))
        };
        let p = if last {
            practice
        } else {
            rng.index(w.practices.len())
        };
        regs[i] = Registration {
            practice: p,
            start,
            end,
        };
    }
    let activity = band.activity / r.mean_activity;
    let mut type1 = Type1Story::None;
    let mut type1_legacy = false;
    if rng.chance(rates.type1_share) {
        let lo = record_start.max(today - 10 * YEAR);
        let hi = record_end;
        if hi - lo >= 2 {
            let first = rng.range_i32(lo, hi - 1);
            let second = rng.range_i32(first + 1, hi);
            let u = rng.unit();
            type1 = if u < rates.type1_dissent_only {
                Type1Story::DissentOnly(first)
            } else if u < rates.type1_dissent_only + rates.type1_dissent_then_withdrawal {
                Type1Story::DissentThenWithdrawal(first, second)
            } else {
                Type1Story::WithdrawalThenDissent(first, second)
            };
            type1_legacy = rng.chance(rates.type1_legacy_code_share);
        }
    }
    Patient {
        nhs: w.nhs.number(index),
        sex,
        dob,
        death,
        ethnicity,
        female_name,
        forename,
        surname,
        name_style,
        practice,
        postcode,
        lsoa,
        regs,
        n_regs,
        activity,
        record_start,
        record_end,
        type1,
        type1_legacy,
        on_list: false,
    }
}

/// Per-table counts for one chunk (summed into the summary).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TableStats {
    pub rows: u64,
    pub invalid_nhs: u64,
    pub missing_nhs: u64,
    pub malformed: u64,
}

/// Type 1 and opt-out counts for one chunk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct OptOutStats {
    pub opt_outs: u64,
    pub type1_patients: u64,
    pub type1_dissenters: u64,
    pub type1_withdrawn: u64,
    pub dissenters_on_list: u64,
}

/// One chunk's output.
#[derive(Debug)]
pub(crate) struct ChunkOut<S> {
    pub sinks: Vec<S>,
    pub stats: Vec<TableStats>,
    pub opt_out_lines: Vec<u8>,
    pub opt_outs: OptOutStats,
}

/// The values of one row that are not the patient's own.
#[derive(Debug, Clone, Copy, Default)]
struct Row<'a> {
    date_a: i32,
    date_b: Option<i32>,
    code: &'a [u8],
    value: Option<(i64, u8)>,
    unit: Option<&'a str>,
    practice: usize,
    status: &'a str,
    mode: Option<&'a str>,
}

/// Generate chunk `chunk`: its patients, every table's rows, and its opt-out lines.
pub(crate) fn generate_chunk<S: Sink>(
    w: &World,
    chunk: u64,
    make_sink: &dyn Fn(&TablePlan, usize) -> S,
) -> ChunkOut<S> {
    let start = chunk * CHUNK_PATIENTS;
    let end = (start + CHUNK_PATIENTS).min(w.patients);
    let mut rng = Rng::new(w.seed, chunk, name_hash("patients-core"));
    let mut patients: Vec<Patient> = (start..end).map(|i| make_patient(w, &mut rng, i)).collect();
    let (opt_out_lines, opt_outs) = choose_opt_outs(w, chunk, start, end, &mut patients);
    let mut sinks = Vec::with_capacity(w.plans.len());
    let mut stats = Vec::with_capacity(w.plans.len());
    let mut scratch = Scratch::default();
    for plan in &w.plans {
        let per_patient = match plan.kind {
            Kind::Patients => 1.0,
            Kind::Registrations => 1.6,
            Kind::ClinicalEvents => w.event_mean,
            Kind::Medications => w.med_mean,
            Kind::Appointments => w.appt_mean,
            Kind::Generic => w.reference.rates.generic_rows_per_patient,
        };
        let hint = (per_patient * patients.len() as f64 * 1.1) as usize + 16;
        let mut sink = make_sink(plan, hint);
        let mut st = TableStats::default();
        let mut rng = Rng::new(w.seed, chunk, plan.stream);
        let mut g = RowGen {
            w,
            plan,
            rng: &mut rng,
            stats: &mut st,
            scratch: &mut scratch,
        };
        for p in &patients {
            g.patient_rows(&mut sink, p);
        }
        sinks.push(sink);
        stats.push(st);
    }
    ChunkOut {
        sinks,
        stats,
        opt_out_lines,
        opt_outs,
    }
}

/// Pick this chunk's National Data Opt-out list members: exactly
/// `round(share * end) - round(share * start)` patients, so the whole list has
/// `round(share * patients)` entries, preferring Type 1 dissenters with the reference
/// overlap share.
fn choose_opt_outs(
    w: &World,
    chunk: u64,
    start: u64,
    end: u64,
    patients: &mut [Patient],
) -> (Vec<u8>, OptOutStats) {
    let share = w.opt_out_share.clamp(0.0, 1.0);
    let target = ((share * end as f64).round() as u64)
        .saturating_sub((share * start as f64).round() as u64)
        .min(patients.len() as u64);
    let mut rng = Rng::new(w.seed, chunk, name_hash("opt-outs"));
    let overlap = w.reference.rates.opt_out_share_of_type1_dissenters;
    let mut chosen = 0u64;
    for p in patients.iter_mut() {
        if p.type1.is_dissenter() && rng.chance(overlap) && chosen < target {
            p.on_list = true;
            chosen += 1;
        }
    }
    let mut candidates: Vec<usize> = (0..patients.len())
        .filter(|&i| !patients[i].on_list)
        .collect();
    let need = (target - chosen) as usize;
    for j in 0..need.min(candidates.len()) {
        let k = j + rng.index(candidates.len() - j);
        candidates.swap(j, k);
        patients[candidates[j]].on_list = true;
    }
    let mut stats = OptOutStats::default();
    let mut lines = Vec::with_capacity(target as usize * 13);
    let spaced = w.reference.rates.opt_out_list_spaced_share;
    for p in patients.iter() {
        if p.type1 != Type1Story::None {
            stats.type1_patients += 1;
        }
        if p.type1.is_dissenter() {
            stats.type1_dissenters += 1;
        }
        if matches!(p.type1, Type1Story::DissentThenWithdrawal(..)) {
            stats.type1_withdrawn += 1;
        }
        if p.on_list {
            stats.opt_outs += 1;
            if p.type1.is_dissenter() {
                stats.dissenters_on_list += 1;
            }
            let out = if rng.chance(spaced) {
                NhsOut::Spaced(p.nhs)
            } else {
                NhsOut::Plain(p.nhs)
            };
            let mut b = [0u8; 16];
            let n = out.write(&mut b);
            lines.extend_from_slice(&b[..n]);
            lines.push(b'\n');
        }
    }
    (lines, stats)
}

/// Reusable buffers.
#[derive(Debug, Default)]
struct Scratch {
    name: String,
    /// (date, code index or Type 1 marker, quantity index).
    items: Vec<(i32, u32, u32)>,
    repeats: Vec<usize>,
}

const TYPE1_DISSENT: u32 = 1 << 30;
const TYPE1_WITHDRAWAL: u32 = (1 << 30) + 1;

struct RowGen<'a> {
    w: &'a World,
    plan: &'a TablePlan,
    rng: &'a mut Rng,
    stats: &'a mut TableStats,
    scratch: &'a mut Scratch,
}

impl RowGen<'_> {
    fn patient_rows<S: Sink>(&mut self, sink: &mut S, p: &Patient) {
        let r = &self.w.reference;
        match self.plan.kind {
            Kind::Patients => self.emit(sink, p, &Row::default(), true),
            Kind::Registrations => {
                for reg in p.registrations() {
                    let row = Row {
                        date_a: reg.start,
                        date_b: reg.end,
                        practice: reg.practice,
                        ..Row::default()
                    };
                    self.emit(sink, p, &row, true);
                }
            }
            Kind::ClinicalEvents => {
                let n = self.rng.skewed_count(self.w.event_mean * p.activity);
                let mut items = std::mem::take(&mut self.scratch.items);
                items.clear();
                for _ in 0..n {
                    let day = self.rng.range_i32(p.record_start, p.record_end);
                    let code = self.rng.weighted(&r.snomed.cumulative) as u32;
                    items.push((day, code, 0));
                }
                match p.type1 {
                    Type1Story::None => {}
                    Type1Story::DissentOnly(d) => items.push((d, TYPE1_DISSENT, 0)),
                    Type1Story::DissentThenWithdrawal(d, x) => {
                        items.push((d, TYPE1_DISSENT, 0));
                        items.push((x, TYPE1_WITHDRAWAL, 0));
                    }
                    Type1Story::WithdrawalThenDissent(x, d) => {
                        items.push((x, TYPE1_WITHDRAWAL, 0));
                        items.push((d, TYPE1_DISSENT, 0));
                    }
                }
                items.sort_unstable();
                for &(day, code, _) in &items {
                    if code >= TYPE1_DISSENT {
                        let kind = if code == TYPE1_DISSENT {
                            Type1Kind::Dissent
                        } else {
                            Type1Kind::Withdrawal
                        };
                        let t = &r.type1;
                        let list = match (kind, p.type1_legacy) {
                            (Type1Kind::Dissent, false) => &t.snomed_dissent,
                            (Type1Kind::Withdrawal, false) => &t.snomed_withdrawal,
                            (Type1Kind::Dissent, true) => &t.legacy_dissent,
                            (Type1Kind::Withdrawal, true) => &t.legacy_withdrawal,
                        };
                        let c = &list[self.rng.index(list.len())];
                        let row = Row {
                            date_a: day,
                            code: c.as_bytes(),
                            ..Row::default()
                        };
                        self.emit(sink, p, &row, false);
                        continue;
                    }
                    let s = &r.snomed.items[code as usize];
                    let value = s.unit.as_ref().map(|_| {
                        let v = self.rng.triangular(s.min, s.max);
                        let scaled = (v * 10f64.powi(i32::from(s.decimals))).round() as i64;
                        (scaled, s.decimals)
                    });
                    let row = Row {
                        date_a: day,
                        code: s.code.as_bytes(),
                        value,
                        unit: s.unit.as_deref(),
                        ..Row::default()
                    };
                    self.emit(sink, p, &row, true);
                }
                self.scratch.items = items;
            }
            Kind::Medications => {
                let n = self.rng.skewed_count(self.w.med_mean * p.activity);
                if n == 0 {
                    return;
                }
                let mut repeats = std::mem::take(&mut self.scratch.repeats);
                repeats.clear();
                for _ in 0..1 + self.rng.below(4) {
                    repeats.push(self.rng.weighted(&r.dmd.cumulative));
                }
                let mut items = std::mem::take(&mut self.scratch.items);
                items.clear();
                let lo = p.record_start.max(p.record_end - 10 * YEAR);
                for _ in 0..n {
                    let day = self.rng.range_i32(lo, p.record_end);
                    let code = repeats[self.rng.index(repeats.len())];
                    let q = self.rng.index(r.dmd.items[code].quantities.len());
                    items.push((day, code as u32, q as u32));
                }
                items.sort_unstable();
                for &(day, code, q) in &items {
                    let d = &r.dmd.items[code as usize];
                    let qty = d.quantities.get(q as usize).copied().unwrap_or(1);
                    let row = Row {
                        date_a: day,
                        code: d.code.as_bytes(),
                        value: Some((i64::from(qty), 0)),
                        ..Row::default()
                    };
                    self.emit(sink, p, &row, true);
                }
                self.scratch.items = items;
                self.scratch.repeats = repeats;
            }
            Kind::Appointments => {
                let n = self.rng.skewed_count(self.w.appt_mean * p.activity);
                let today = self.w.extract_day;
                let lo = p.record_start.max(p.record_end - 3 * YEAR);
                for _ in 0..n {
                    let future =
                        p.death.is_none() && self.rng.chance(r.rates.future_appointment_share);
                    let (appt, booked, statuses) = if future {
                        let appt = self.rng.range_i32(today + 1, today + 28);
                        let booked = self.rng.range_i32(today - 27, today);
                        (appt, booked, &self.plan.future_status)
                    } else {
                        let appt = self.rng.range_i32(lo, p.record_end);
                        let booked = appt - self.rng.range_i32(0, 28.min(appt - lo).max(0));
                        (appt, booked, &self.plan.past_status)
                    };
                    let status = statuses
                        .items
                        .get(self.rng.weighted(&statuses.cumulative))
                        .map_or("", String::as_str);
                    let mode = if self.rng.chance(r.rates.missing_mode_share)
                        || self.plan.mode.is_empty()
                    {
                        None
                    } else {
                        self.plan
                            .mode
                            .items
                            .get(self.rng.weighted(&self.plan.mode.cumulative))
                            .map(String::as_str)
                    };
                    let row = Row {
                        date_a: booked,
                        date_b: Some(appt),
                        practice: p.practice_at(appt),
                        status,
                        mode,
                        ..Row::default()
                    };
                    self.emit(sink, p, &row, true);
                }
            }
            Kind::Generic => {
                let n = self.rng.skewed_count(r.rates.generic_rows_per_patient);
                for _ in 0..n {
                    let day = self.rng.range_i32(p.record_start, p.record_end);
                    let row = Row {
                        date_a: day,
                        practice: p.practice_at(day),
                        ..Row::default()
                    };
                    self.emit(sink, p, &row, true);
                }
            }
        }
    }

    /// Draw the row's fault and NHS number form, then write every column.
    fn emit<S: Sink>(&mut self, sink: &mut S, p: &Patient, row: &Row<'_>, faults: bool) {
        let r = &self.w.reference;
        let rates = &r.rates;
        let mut nhs = NhsOut::Plain(p.nhs);
        let mut fault = None;
        if faults && self.w.faults {
            let u = self.rng.unit();
            let inv = if self.plan.has_nhs {
                rates.invalid_nhs_share
            } else {
                0.0
            };
            let miss = if self.plan.has_nhs {
                rates.missing_nhs_share
            } else {
                0.0
            };
            if u < inv {
                nhs = match self.rng.below(4) {
                    0 => NhsOut::BadCheck(p.nhs, wrong_check(p.nhs, self.rng.next_u64())),
                    1 => NhsOut::NineDigits(p.nhs),
                    2 => {
                        let letter = b"OIXl"[self.rng.index(4)];
                        NhsOut::Letter(p.nhs, self.rng.below(10) as u8, letter)
                    }
                    _ => NhsOut::ElevenDigits(p.nhs, self.rng.below(10) as u8),
                };
            } else if u < inv + miss {
                nhs = NhsOut::Missing;
            } else if u < inv + miss + rates.malformed_share {
                let kinds = &self.plan.fault_kinds;
                fault = Some(match kinds[self.rng.index(kinds.len())] {
                    FaultKind::Extra => Fault::ExtraField,
                    FaultKind::Missing => Fault::MissingField,
                    FaultKind::BadDate(col) => {
                        let b = &rates.bad_dates[self.rng.index(rates.bad_dates.len())];
                        Fault::Replace {
                            col,
                            bytes: b.as_bytes(),
                        }
                    }
                    FaultKind::BadNumber(col) => {
                        let b = &rates.bad_numbers[self.rng.index(rates.bad_numbers.len())];
                        Fault::Replace {
                            col,
                            bytes: b.as_bytes(),
                        }
                    }
                    FaultKind::BadUtf8(col, is_name) => {
                        let list = if is_name { &r.latin1 } else { &r.latin1_text };
                        let b = &list[self.rng.index(list.len())];
                        Fault::Replace {
                            col,
                            bytes: b.as_slice(),
                        }
                    }
                });
            }
        }
        if nhs == NhsOut::Plain(p.nhs) {
            let u = self.rng.unit();
            if u < rates.spaced_nhs_share {
                nhs = NhsOut::Spaced(p.nhs);
            } else if u < rates.spaced_nhs_share + rates.hyphenated_nhs_share {
                nhs = NhsOut::Hyphenated(p.nhs);
            }
        }
        sink.begin_row(fault);
        for col in &self.plan.cols {
            self.write_col(sink, col, p, row, nhs);
        }
        if sink.end_row() {
            self.stats.rows += 1;
            if fault.is_some() {
                self.stats.malformed += 1;
            } else if nhs == NhsOut::Missing {
                self.stats.missing_nhs += 1;
            } else if !nhs.is_valid() {
                self.stats.invalid_nhs += 1;
            }
        }
    }

    fn write_col<S: Sink>(
        &mut self,
        sink: &mut S,
        col: &Col,
        p: &Patient,
        row: &Row<'_>,
        nhs: NhsOut,
    ) {
        let r = &self.w.reference;
        match col {
            Col::Nhs => sink.nhs(nhs),
            Col::Name => {
                if p.name_style == 2 {
                    sink.null();
                    return;
                }
                let fore = if p.female_name {
                    &r.female[p.forename]
                } else {
                    &r.male[p.forename]
                };
                let name = &mut self.scratch.name;
                name.clear();
                if p.name_style == 1 {
                    name.push_str(&r.surnames_upper[p.surname]);
                    name.push_str(", ");
                    name.push_str(fore);
                } else {
                    name.push_str(fore);
                    name.push(' ');
                    name.push_str(&r.surnames[p.surname]);
                }
                sink.text(name);
            }
            Col::Dob => sink.date(p.dob),
            Col::Sex => sink.token(r.sex.items[p.sex].as_bytes()),
            Col::Ethnicity => match p.ethnicity {
                Some(e) => sink.token(r.ethnicity.items[e].as_bytes()),
                None => sink.null(),
            },
            Col::Postcode => match p.postcode {
                Some((outward, inward)) => {
                    let area = &r.areas.items[self.w.practices[p.practice].area];
                    let mut b = [0u8; 12];
                    let o = area.outward[outward].as_bytes();
                    let n = o.len().min(8);
                    b[..n].copy_from_slice(&o[..n]);
                    b[n] = b' ';
                    b[n + 1..n + 4].copy_from_slice(&inward);
                    sink.token(&b[..n + 4]);
                }
                None => sink.null(),
            },
            Col::Lsoa => {
                let area = &r.areas.items[self.w.practices[p.practice].area];
                let mut b = [b'0'; 16];
                let prefix = area.lsoa_prefix.as_bytes();
                let n = prefix.len().min(9);
                b[..n].copy_from_slice(&prefix[..n]);
                let mut v = p.lsoa % 1_000_000;
                for d in b[n..n + 6].iter_mut().rev() {
                    *d = b'0' + (v % 10) as u8;
                    v /= 10;
                }
                sink.token(&b[..n + 6]);
            }
            Col::Death => match p.death {
                Some(d) => sink.date(d),
                None => sink.null(),
            },
            Col::Practice => sink.token(&self.w.practices[row.practice].code),
            Col::DateA => sink.date(row.date_a),
            Col::DateB => match row.date_b {
                Some(d) => sink.date(d),
                None => sink.null(),
            },
            Col::Code => sink.token(row.code),
            Col::Value => match row.value {
                Some((v, d)) => sink.decimal(v, d),
                None => sink.null(),
            },
            Col::Unit => match row.unit {
                Some(u) => sink.text(u),
                None => sink.null(),
            },
            Col::Status => sink.text(row.status),
            Col::Mode => match row.mode {
                Some(m) => sink.text(m),
                None => sink.null(),
            },
            Col::Generic {
                ty,
                nullable,
                allowed,
            } => {
                if *nullable && self.rng.chance(r.rates.null_share) {
                    sink.null();
                    return;
                }
                if let Some(a) = allowed {
                    match a.items.get(self.rng.weighted(&a.cumulative)) {
                        Some(v) => sink.text(v),
                        None => sink.null(),
                    }
                    return;
                }
                match ty {
                    ColumnType::String => {
                        let mut b = Vec::with_capacity(8);
                        b.push(b'G');
                        push_u64(&mut b, 100_000 + self.rng.below(900_000));
                        sink.token(&b);
                    }
                    ColumnType::Int64 => sink.int(self.rng.below(1000) as i64),
                    ColumnType::Float64 => sink.decimal(self.rng.below(100_000) as i64, 2),
                    ColumnType::Date => {
                        let d = if row.date_a != 0 {
                            row.date_a
                        } else {
                            self.rng.range_i32(p.record_start, p.record_end)
                        };
                        sink.date(d);
                    }
                    ColumnType::Boolean => sink.boolean(self.rng.chance(0.5)),
                }
            }
        }
    }
}
