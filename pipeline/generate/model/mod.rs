//! The synthetic population and its rows: patients, registrations, clinical events,
//! medications, appointments, and schema-driven rows for tables it does not know.
//!
//! Owns what a row says. A chunk of patients is generated from its own streams
//! (seed, chunk index, table name), so every chunk can be made on any thread in any order
//! and the bytes stay the same. Columns are matched by name and type to what this module
//! knows; any other column, or any other table, gets generic values from its schema type.
//! Faults (invalid or missing NHS numbers, malformed rows) are drawn here and recorded in
//! the counts, but never on Type 1 opt-out rows, so the opt-out ground truth stays exact.

mod emit;
mod optouts;
mod patient;
mod plan;
mod rows;

use super::nhs::NhsAllocator;
use super::reference::Reference;
use super::rng::{Rng, name_hash};
use super::sink::Sink;
use super::{CHUNK_PATIENTS, GenerateConfig, RowOrder};
use optouts::choose_opt_outs;
use patient::{Patient, make_patient};
use plan::Kind;
pub(crate) use plan::TablePlan;
use rows::{RowGen, Scratch};

const YEAR: i32 = 365;

/// A GP practice.
#[derive(Debug, Clone)]
pub(crate) struct Practice {
    code: [u8; 6],
    pub(super) area: usize,
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
    pub order: RowOrder,
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
            order: cfg.order,
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

/// Per-table counts for one chunk (summed into the summary).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TableStats {
    pub rows: u64,
    pub invalid_nhs: u64,
    pub missing_nhs: u64,
    pub malformed: u64,
}

impl TableStats {
    /// Add another chunk's counts.
    pub(crate) fn add(&mut self, o: &TableStats) {
        self.rows += o.rows;
        self.invalid_nhs += o.invalid_nhs;
        self.missing_nhs += o.missing_nhs;
        self.malformed += o.malformed;
    }
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

impl OptOutStats {
    /// Add another chunk's counts.
    pub(crate) fn add(&mut self, o: &OptOutStats) {
        self.opt_outs += o.opt_outs;
        self.type1_patients += o.type1_patients;
        self.type1_dissenters += o.type1_dissenters;
        self.type1_withdrawn += o.type1_withdrawn;
        self.dissenters_on_list += o.dissenters_on_list;
    }
}

/// One chunk's output.
#[derive(Debug)]
pub(crate) struct ChunkOut<S> {
    pub sinks: Vec<S>,
    pub stats: Vec<TableStats>,
    pub opt_out_lines: Vec<u8>,
    pub opt_outs: OptOutStats,
    /// Per table, each kept row's main date, when rows are to be put in event order
    /// (empty otherwise, and for the patients table).
    pub keys: Vec<Vec<i32>>,
}

impl World {
    /// Expected rows per patient in a table of this kind (for buffer sizes).
    fn rows_per_patient(&self, kind: Kind) -> f64 {
        match kind {
            Kind::Patients => 1.0,
            Kind::Registrations => 1.6,
            Kind::ClinicalEvents => self.event_mean,
            Kind::Medications => self.med_mean,
            Kind::Appointments => self.appt_mean,
            Kind::Generic => self.reference.rates.generic_rows_per_patient,
        }
    }
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
    let mut out = ChunkOut {
        sinks: Vec::with_capacity(w.plans.len()),
        stats: Vec::with_capacity(w.plans.len()),
        opt_out_lines,
        opt_outs,
        keys: Vec::with_capacity(w.plans.len()),
    };
    let mut scratch = Scratch::default();
    for plan in &w.plans {
        let hint = (w.rows_per_patient(plan.kind) * patients.len() as f64 * 1.1) as usize + 16;
        let mut sink = make_sink(plan, hint);
        let mut st = TableStats::default();
        let mut keys = Vec::new();
        let reorder = w.order == RowOrder::Event && plan.kind != Kind::Patients;
        let mut rng = Rng::new(w.seed, chunk, plan.stream);
        let mut g = RowGen {
            w,
            plan,
            rng: &mut rng,
            stats: &mut st,
            scratch: &mut scratch,
            keys: reorder.then_some(&mut keys),
        };
        for p in &patients {
            g.patient_rows(&mut sink, p);
        }
        out.sinks.push(sink);
        out.stats.push(st);
        out.keys.push(keys);
    }
    out
}

/// A small world over the built-in schemas, for the unit tests of this folder.
#[cfg(test)]
pub(super) fn test_world(patients: u64, order: RowOrder) -> World {
    let reference = Reference::builtin().expect("built-in reference data loads");
    let schemas = crate::schema::SchemaSet::builtin();
    let plans = schemas
        .tables()
        .map(|t| TablePlan::new(t, &reference))
        .collect();
    let cfg = GenerateConfig {
        patients,
        order,
        ..GenerateConfig::default()
    };
    World::new(reference, plans, &cfg, 20_000).expect("enough synthetic numbers")
}

#[cfg(test)]
mod tests {
    use super::super::sink::CsvSink;
    use super::*;

    fn chunk(w: &World, c: u64) -> ChunkOut<CsvSink> {
        generate_chunk(w, c, &|_, hint| CsvSink::with_capacity(hint * 48))
    }

    fn table(w: &World, name: &str) -> usize {
        w.plans
            .iter()
            .position(|p| p.name == name)
            .expect("built-in table")
    }

    #[test]
    fn a_chunk_is_the_same_on_every_call_and_differs_from_the_next() {
        let w = test_world(25_000, RowOrder::Patient);
        let t = table(&w, "clinical_events");
        let (a, b, c) = (chunk(&w, 1), chunk(&w, 1), chunk(&w, 2));
        assert_eq!(a.sinks[t].buf, b.sinks[t].buf);
        assert_eq!(a.opt_out_lines, b.opt_out_lines);
        assert_ne!(a.sinks[t].buf, c.sinks[t].buf);
    }

    #[test]
    fn stats_count_every_written_row() {
        let w = test_world(2_000, RowOrder::Patient);
        let out = chunk(&w, 0);
        for (sink, st) in out.sinks.iter().zip(&out.stats) {
            let lines = sink.buf.iter().filter(|&&b| b == b'\n').count() as u64;
            assert_eq!(st.rows, lines);
            assert_eq!(sink.rows(), lines);
        }
        let patients = out.stats[table(&w, "patients")].rows;
        assert_eq!(patients, 2_000);
    }

    #[test]
    fn keys_are_kept_only_for_event_order_and_never_for_patients() {
        let by_patient = chunk(&test_world(1_000, RowOrder::Patient), 0);
        assert!(by_patient.keys.iter().all(Vec::is_empty));
        let w = test_world(1_000, RowOrder::Event);
        let by_event = chunk(&w, 0);
        for (i, plan) in w.plans.iter().enumerate() {
            let expected = if plan.name == "patients" {
                0
            } else {
                by_event.stats[i].rows
            };
            assert_eq!(by_event.keys[i].len() as u64, expected, "{}", plan.name);
        }
        // Recording keys draws no randomness: the rows are the same.
        let t = table(&w, "clinical_events");
        assert_eq!(by_patient.sinks[t].buf, by_event.sinks[t].buf);
    }

    #[test]
    fn added_stats_sum_field_by_field() {
        let mut a = TableStats {
            rows: 1,
            invalid_nhs: 2,
            missing_nhs: 3,
            malformed: 4,
        };
        let copy = a;
        a.add(&copy);
        assert_eq!(
            (a.rows, a.invalid_nhs, a.missing_nhs, a.malformed),
            (2, 4, 6, 8)
        );
        let mut o = OptOutStats {
            opt_outs: 1,
            ..OptOutStats::default()
        };
        o.add(&OptOutStats {
            dissenters_on_list: 5,
            ..OptOutStats::default()
        });
        assert_eq!((o.opt_outs, o.dissenters_on_list), (1, 5));
    }
}
