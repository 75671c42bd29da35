//! Writing one row: its faults, the form of its NHS number, and every column's value.
//!
//! Owns how a drawn row becomes fields in a [`Sink`], and the fault counts. Faults are
//! drawn only where the row allows them (never on Type 1 rows).

use super::super::format::push_u64;
use super::super::nhs::{NhsOut, wrong_check};
use super::super::reference::Weighted;
use super::super::sink::{Fault, Sink};
use super::World;
use super::patient::Patient;
use super::plan::{Col, FaultKind, TablePlan};
use super::rows::{Row, RowGen};
use crate::schema::ColumnType;

impl<'a> RowGen<'a> {
    /// Draw the row's fault and NHS number form, then write every column.
    pub(super) fn emit<S: Sink>(&mut self, sink: &mut S, p: &Patient, row: &Row<'_>, faults: bool) {
        let w: &'a World = self.w;
        let rates = &w.reference.rates;
        let (mut nhs, fault) = if faults && self.w.faults {
            self.draw_fault(p.nhs)
        } else {
            (NhsOut::Plain(p.nhs), None)
        };
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
            if let Some(keys) = self.keys.as_deref_mut() {
                keys.push(row.date_a);
            }
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

    /// One draw decides between an invalid NHS number, a missing one, a malformed row, or
    /// none of these.
    fn draw_fault(&mut self, nhs: u64) -> (NhsOut, Option<Fault<'a>>) {
        let w: &'a World = self.w;
        let rates = &w.reference.rates;
        let u = self.rng.unit();
        let (inv, miss) = if self.plan.has_nhs {
            (rates.invalid_nhs_share, rates.missing_nhs_share)
        } else {
            (0.0, 0.0)
        };
        if u < inv {
            let bad = match self.rng.below(4) {
                0 => NhsOut::BadCheck(nhs, wrong_check(nhs, self.rng.next_u64())),
                1 => NhsOut::NineDigits(nhs),
                2 => {
                    let letter = b"OIXl"[self.rng.index(4)];
                    NhsOut::Letter(nhs, self.rng.below(10) as u8, letter)
                }
                _ => NhsOut::ElevenDigits(nhs, self.rng.below(10) as u8),
            };
            (bad, None)
        } else if u < inv + miss {
            (NhsOut::Missing, None)
        } else if u < inv + miss + rates.malformed_share {
            (NhsOut::Plain(nhs), Some(self.draw_malformed()))
        } else {
            (NhsOut::Plain(nhs), None)
        }
    }

    /// How a malformed row is broken, from the table's possible fault kinds.
    fn draw_malformed(&mut self) -> Fault<'a> {
        let w: &'a World = self.w;
        let r = &w.reference;
        let rates = &r.rates;
        let plan: &'a TablePlan = self.plan;
        let kinds = &plan.fault_kinds;
        match kinds[self.rng.index(kinds.len())] {
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
        match col {
            Col::Nhs => sink.nhs(nhs),
            Col::Name => self.write_name(sink, p),
            Col::Postcode | Col::Lsoa => self.write_place(sink, col, p),
            Col::Dob | Col::Sex | Col::Ethnicity | Col::Death => self.write_person(sink, col, p),
            Col::Generic {
                ty,
                nullable,
                allowed,
            } => self.write_generic(sink, (*ty, *nullable, allowed.as_ref()), p, row),
            _ => self.write_row_value(sink, col, row),
        }
    }

    fn write_name<S: Sink>(&mut self, sink: &mut S, p: &Patient) {
        let w: &'a World = self.w;
        let r = &w.reference;
        if p.name.style == 2 {
            sink.null();
            return;
        }
        let fore = if p.name.female {
            &r.female[p.name.forename]
        } else {
            &r.male[p.name.forename]
        };
        let name = &mut self.scratch.name;
        name.clear();
        if p.name.style == 1 {
            name.push_str(&r.surnames_upper[p.name.surname]);
            name.push_str(", ");
            name.push_str(fore);
        } else {
            name.push_str(fore);
            name.push(' ');
            name.push_str(&r.surnames[p.name.surname]);
        }
        sink.text(name);
    }

    /// The patient's own columns other than name and address.
    fn write_person<S: Sink>(&self, sink: &mut S, col: &Col, p: &Patient) {
        let r = &self.w.reference;
        match (col, p.ethnicity, p.death) {
            (Col::Dob, ..) => sink.date(p.dob),
            (Col::Sex, ..) => sink.token(r.sex.items[p.sex].as_bytes()),
            (Col::Ethnicity, Some(e), _) => sink.token(r.ethnicity.items[e].as_bytes()),
            (Col::Death, _, Some(d)) => sink.date(d),
            _ => sink.null(),
        }
    }

    /// Postcode and LSOA, both in the area of the patient's practice.
    fn write_place<S: Sink>(&self, sink: &mut S, col: &Col, p: &Patient) {
        let area = &self.w.reference.areas.items[self.w.practices[p.practice].area];
        match (col, p.postcode) {
            (Col::Postcode, Some((outward, inward))) => {
                let mut b = [0u8; 12];
                let o = area.outward[outward].as_bytes();
                let n = o.len().min(8);
                b[..n].copy_from_slice(&o[..n]);
                b[n] = b' ';
                b[n + 1..n + 4].copy_from_slice(&inward);
                sink.token(&b[..n + 4]);
            }
            (Col::Lsoa, _) => {
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
            _ => sink.null(),
        }
    }

    /// The row's own values (dates, code, value, unit, practice, status, mode).
    fn write_row_value<S: Sink>(&self, sink: &mut S, col: &Col, row: &Row<'_>) {
        match col {
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
            // Patient and generic columns are written by their own methods.
            _ => sink.null(),
        }
    }

    /// A column the model does not know: null by the schema's share, an allowed value,
    /// or a value of its type.
    fn write_generic<S: Sink>(
        &mut self,
        sink: &mut S,
        (ty, nullable, allowed): (ColumnType, bool, Option<&Weighted<String>>),
        p: &Patient,
        row: &Row<'_>,
    ) {
        if nullable && self.rng.chance(self.w.reference.rates.null_share) {
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
