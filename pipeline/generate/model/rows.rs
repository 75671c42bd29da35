//! The rows of each table for one patient: how many, on which days, with which codes.
//!
//! Owns the per-table row generators and the order of their random draws (events and
//! issues are written in date order within a patient). Columns are written by `emit`.

use super::super::reference::Type1Kind;
use super::super::rng::Rng;
use super::super::sink::Sink;
use super::patient::{Patient, Type1Story};
use super::plan::{Kind, TablePlan};
use super::{TableStats, World, YEAR};

/// The values of one row that are not the patient's own.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Row<'a> {
    pub(super) date_a: i32,
    pub(super) date_b: Option<i32>,
    pub(super) code: &'a [u8],
    pub(super) value: Option<(i64, u8)>,
    pub(super) unit: Option<&'a str>,
    pub(super) practice: usize,
    pub(super) status: &'a str,
    pub(super) mode: Option<&'a str>,
}

/// Reusable buffers.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    pub(super) name: String,
    /// (date, code index or Type 1 marker, quantity index).
    items: Vec<(i32, u32, u32)>,
    repeats: Vec<usize>,
}

const TYPE1_DISSENT: u32 = 1 << 30;
const TYPE1_WITHDRAWAL: u32 = (1 << 30) + 1;

/// Writes one table's rows for a chunk's patients.
pub(super) struct RowGen<'a> {
    pub(super) w: &'a World,
    pub(super) plan: &'a TablePlan,
    pub(super) rng: &'a mut Rng,
    pub(super) stats: &'a mut TableStats,
    pub(super) scratch: &'a mut Scratch,
    /// Each kept row's main date, in output order (only when rows are to be reordered).
    pub(super) keys: Option<&'a mut Vec<i32>>,
}

impl RowGen<'_> {
    /// Every row of this table for patient `p`.
    pub(super) fn patient_rows<S: Sink>(&mut self, sink: &mut S, p: &Patient) {
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
            Kind::ClinicalEvents => self.clinical_events(sink, p),
            Kind::Medications => self.medications(sink, p),
            Kind::Appointments => self.appointments(sink, p),
            Kind::Generic => self.generic(sink, p),
        }
    }

    /// Coded events in date order, with the patient's Type 1 codes among them.
    fn clinical_events<S: Sink>(&mut self, sink: &mut S, p: &Patient) {
        let r = &self.w.reference;
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
                self.type1_event(sink, p, day, code == TYPE1_DISSENT);
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

    /// A Type 1 dissent or withdrawal code (never faulty: the ground truth stays exact).
    fn type1_event<S: Sink>(&mut self, sink: &mut S, p: &Patient, day: i32, dissent: bool) {
        let t = &self.w.reference.type1;
        let kind = if dissent {
            Type1Kind::Dissent
        } else {
            Type1Kind::Withdrawal
        };
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
    }

    /// Repeat prescriptions over the last ten years, in date order.
    fn medications<S: Sink>(&mut self, sink: &mut S, p: &Patient) {
        let r = &self.w.reference;
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

    /// Past appointments over three years, and some booked for the next four weeks.
    fn appointments<S: Sink>(&mut self, sink: &mut S, p: &Patient) {
        let r = &self.w.reference;
        let n = self.rng.skewed_count(self.w.appt_mean * p.activity);
        let today = self.w.extract_day;
        let lo = p.record_start.max(p.record_end - 3 * YEAR);
        for _ in 0..n {
            let future = p.death.is_none() && self.rng.chance(r.rates.future_appointment_share);
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
            let mode = if self.rng.chance(r.rates.missing_mode_share) || self.plan.mode.is_empty() {
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

    /// Rows of a table the model does not know: a date within the record, else generic.
    fn generic<S: Sink>(&mut self, sink: &mut S, p: &Patient) {
        let n = self
            .rng
            .skewed_count(self.w.reference.rates.generic_rows_per_patient);
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

#[cfg(test)]
mod tests {
    use super::super::super::sink::CsvSink;
    use super::super::patient::make_patient;
    use super::super::{RowOrder, test_world};
    use super::*;

    /// Every row of `table` for one patient, as CSV lines, and the recorded keys.
    fn rows_of(table: &str, faults: bool) -> Vec<(Vec<String>, Vec<i32>)> {
        let mut w = test_world(400, RowOrder::Event);
        w.faults = faults;
        let plan = w.plans.iter().find(|p| p.name == table).expect("table");
        let mut core = Rng::new(1, 0, 2);
        let patients: Vec<Patient> = (0..400).map(|i| make_patient(&w, &mut core, i)).collect();
        let mut rng = Rng::new(1, 0, plan.stream);
        let (mut stats, mut scratch) = (TableStats::default(), Scratch::default());
        patients
            .iter()
            .map(|p| {
                let mut sink = CsvSink::default();
                let mut keys = Vec::new();
                let mut g = RowGen {
                    w: &w,
                    plan,
                    rng: &mut rng,
                    stats: &mut stats,
                    scratch: &mut scratch,
                    keys: Some(&mut keys),
                };
                g.patient_rows(&mut sink, p);
                let text = String::from_utf8_lossy(&sink.buf).into_owned();
                (text.lines().map(str::to_string).collect(), keys)
            })
            .collect()
    }

    #[test]
    fn a_patients_events_come_in_date_order() {
        for (lines, keys) in rows_of("clinical_events", false) {
            assert_eq!(lines.len(), keys.len());
            assert!(keys.windows(2).all(|k| k[0] <= k[1]));
        }
    }

    #[test]
    fn type1_rows_are_never_faulty() {
        let type1 = &test_world(1, RowOrder::Patient).reference.type1;
        let codes: Vec<&String> = type1
            .snomed_dissent
            .iter()
            .chain(&type1.snomed_withdrawal)
            .chain(&type1.legacy_dissent)
            .chain(&type1.legacy_withdrawal)
            .collect();
        let mut seen = 0;
        for (lines, _) in rows_of("clinical_events", true) {
            for l in lines {
                let fields: Vec<&str> = l.split(',').collect();
                if codes.iter().any(|c| fields.contains(&c.as_str())) {
                    seen += 1;
                    let nhs = fields[0].replace([' ', '-'], "");
                    let valid = nhs.len() == 10
                        && nhs.parse().is_ok_and(super::super::super::nhs::is_valid);
                    assert!(valid, "a Type 1 row has a faulty NHS number");
                }
            }
        }
        assert!(seen > 0, "400 patients include some Type 1 codes");
    }

    #[test]
    fn appointments_are_booked_before_they_happen() {
        for (_, keys) in rows_of("appointments", false) {
            // The key is the booking date; appointments are at most four weeks ahead.
            assert!(keys.iter().all(|&k| k <= 20_000));
        }
    }
}
