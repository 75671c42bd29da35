//! Whose data each population row carries: the check that closes amplification.
//!
//! Owns [`check`]. The gate attributes every population row to the patient whose
//! `patient_pseudonym` it carries (checked by value in `cells`). That is sound only if the
//! row's other values (its group keys, its measure arguments) and its very presence come
//! from THAT patient's rows. SQL can break it: a cross join pairs one patient's rows with
//! other real pseudonyms (one patient's events counted as many patients), a scalar
//! subquery puts one patient's value into every row, a filter keeps or drops everyone
//! depending on one patient's value. This module follows the information flow through
//! the optimised plan of the population, node by node, as a closed allow-list: each row
//! of a dataset with a `patient_pseudonym` column belongs to that patient; a value stays
//! the patient's own through expressions over the same row, joins ON patient equality,
//! aggregates and windows per patient (`GROUP BY` / `PARTITION BY patient_pseudonym`);
//! reference data (a table without patients, `VALUES`) is public. Anything that mixes
//! patients (a join not on patient equality, an aggregate or window over many patients, a
//! subquery over patient data, a `LIMIT` that ranks patients against each other) taints
//! what it touches, and a population with a tainted value or a tainted row is refused
//! with a message that says how to write it. Unknown plan nodes are refused (fail
//! closed). Danger: this module reads only the plan, never data; a mistake here can
//! refuse a good job, and must never let a mixed row through as one patient's.

use std::collections::BTreeSet;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, JoinType};
use datafusion::logical_expr::{Distinct, Expr, LogicalPlan};
use datafusion::prelude::Column;

use super::spec::PATIENT_COLUMN;

/// How to write a population the TRE can attribute (said with every refusal).
pub const PATIENT_WISE: &str = "each row must carry only its own patient's data: join tables that hold patients ON their patient_pseudonym (reference tables and VALUES lists may be joined on anything), aggregate or rank per patient (GROUP BY / PARTITION BY patient_pseudonym) before combining, and do not feed one patient's values, other patients' pseudonyms or statistics over many patients (a subquery, an aggregate or window over everyone, LIMIT) into another patient's rows";

/// What a value (or a row's presence) depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Taint {
    /// No patient data.
    Public,
    /// Only the row's own patient's data.
    Own,
    /// Other patients' data too.
    Cross,
}

/// The flow facts of one plan node's output.
#[derive(Debug, Clone)]
struct Flow {
    /// The rows hold patient data (each row one patient's, unless a column is `Cross`).
    patient_rows: bool,
    /// Output columns whose value is the row's owner's `patient_pseudonym`.
    owner: BTreeSet<usize>,
    /// Per output column.
    cols: Vec<Taint>,
    /// What a row's presence depends on.
    presence: Taint,
}

impl Flow {
    fn public(width: usize) -> Flow {
        Flow {
            patient_rows: false,
            owner: BTreeSet::new(),
            cols: vec![Taint::Public; width],
            presence: Taint::Public,
        }
    }

    /// Rows that mix patients: every value depends on many patients.
    fn mixed(width: usize) -> Flow {
        Flow {
            patient_rows: false,
            owner: BTreeSet::new(),
            cols: vec![Taint::Cross; width],
            presence: Taint::Cross,
        }
    }

    fn is_public(&self) -> bool {
        !self.patient_rows
            && self.presence == Taint::Public
            && self.cols.iter().all(|t| *t == Taint::Public)
    }
}

/// Why a population cannot be attributed to its patients.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// The rows mix patients' data.
    #[error("the rows counted are not each one patient's: {what}; {PATIENT_WISE}")]
    Mixed {
        /// What mixes them (no value).
        what: String,
    },
    /// The plan holds something the check does not know.
    #[error("the query uses {what}, which the TRE cannot attribute to patients; {PATIENT_WISE}")]
    Unsupported {
        /// The plan node.
        what: String,
    },
}

/// Check that every row of `population` (columns `k..`, `a..` and `p`, as `spec` built
/// it; pass the OPTIMISED plan, where subqueries are joins) carries only the data of the
/// patient whose pseudonym is its `p`, and that which rows exist depends on no other
/// patient. `p` is the last column.
pub fn check(population: &LogicalPlan) -> Result<(), FlowError> {
    let f = flow(population)?;
    let p = f.cols.len().saturating_sub(1);
    if !f.patient_rows || !f.owner.contains(&p) {
        return Err(FlowError::Mixed {
            what: "the patient_pseudonym counted is not the pseudonym of the rows' own patient (it comes from another table or column than the rows' data, or a join that is not on patient_pseudonym)".into(),
        });
    }
    if f.presence == Taint::Cross {
        return Err(FlowError::Mixed {
            what: "which rows are counted depends on other patients' data".into(),
        });
    }
    if f.cols.contains(&Taint::Cross) {
        return Err(FlowError::Mixed {
            what: "a group key or measure is computed from other patients' data".into(),
        });
    }
    Ok(())
}

fn unsupported(what: &str) -> FlowError {
    FlowError::Unsupported { what: what.into() }
}

fn flow(plan: &LogicalPlan) -> Result<Flow, FlowError> {
    match plan {
        LogicalPlan::TableScan(s) => {
            let width = s.projected_schema.fields().len();
            if s.source.schema().field_with_name(PATIENT_COLUMN).is_err() {
                return Ok(Flow::public(width));
            }
            let owner = s
                .projected_schema
                .fields()
                .iter()
                .enumerate()
                .filter(|(_, f)| f.name() == PATIENT_COLUMN)
                .map(|(i, _)| i)
                .collect();
            let mut presence = Taint::Own;
            if s.fetch.is_some() {
                presence = Taint::Cross;
            }
            Ok(Flow {
                patient_rows: true,
                owner,
                cols: vec![Taint::Own; width],
                presence,
            })
        }
        LogicalPlan::EmptyRelation(e) => Ok(Flow::public(e.schema.fields().len())),
        LogicalPlan::Values(v) => Ok(Flow::public(v.schema.fields().len())),
        LogicalPlan::SubqueryAlias(a) => flow(&a.input),
        LogicalPlan::Subquery(s) => flow(&s.subquery),
        LogicalPlan::Repartition(r) => flow(&r.input),
        LogicalPlan::Distinct(Distinct::All(input)) => flow(input),
        LogicalPlan::Projection(p) => {
            let input = flow(&p.input)?;
            let schema = p.input.schema();
            let mut out = Flow {
                patient_rows: input.patient_rows,
                owner: BTreeSet::new(),
                cols: Vec::with_capacity(p.expr.len()),
                presence: input.presence,
            };
            for (i, e) in p.expr.iter().enumerate() {
                out.cols.push(expr_taint(e, &[(schema, &input)])?);
                if let Some(c) = owner_column(e)
                    && let Some(at) = index_of(schema, c)
                    && input.owner.contains(&at)
                {
                    out.owner.insert(i);
                }
            }
            Ok(out)
        }
        LogicalPlan::Filter(f) => {
            let mut input = flow(&f.input)?;
            let t = expr_taint(&f.predicate, &[(f.input.schema(), &input)])?;
            input.presence = input.presence.max(t);
            Ok(input)
        }
        LogicalPlan::Sort(s) => {
            let mut input = flow(&s.input)?;
            if s.fetch.is_some() && input.patient_rows {
                input.presence = Taint::Cross;
            }
            Ok(input)
        }
        LogicalPlan::Limit(l) => {
            let mut input = flow(&l.input)?;
            if input.patient_rows {
                input.presence = Taint::Cross;
            }
            Ok(input)
        }
        LogicalPlan::Aggregate(a) => {
            let input = flow(&a.input)?;
            let schema = a.input.schema();
            let width = a.schema.fields().len();
            if !input.patient_rows {
                if input.is_public() {
                    return Ok(Flow::public(width));
                }
                return Ok(Flow::mixed(width));
            }
            let owner: BTreeSet<usize> = a
                .group_expr
                .iter()
                .enumerate()
                .filter(|(_, e)| {
                    owner_column(e)
                        .and_then(|c| index_of(schema, c))
                        .is_some_and(|at| input.owner.contains(&at))
                })
                .map(|(i, _)| i)
                .collect();
            if owner.is_empty()
                || a.group_expr
                    .iter()
                    .any(|e| matches!(e, Expr::GroupingSet(_)))
            {
                // Over many patients: every output mixes them.
                return Ok(Flow::mixed(width));
            }
            let mut cols = Vec::with_capacity(width);
            for e in a.group_expr.iter().chain(&a.aggr_expr) {
                cols.push(expr_taint(e, &[(schema, &input)])?);
            }
            Ok(Flow {
                patient_rows: true,
                owner,
                cols,
                presence: input.presence,
            })
        }
        LogicalPlan::Window(w) => {
            let mut out = flow(&w.input)?;
            let schema = w.input.schema();
            for e in &w.window_expr {
                let mut t = expr_taint(e, &[(schema, &out)])?;
                if out.patient_rows && !partitioned_by_owner(e, schema, &out) {
                    t = Taint::Cross;
                }
                out.cols.push(t);
            }
            Ok(out)
        }
        LogicalPlan::Union(u) => {
            let mut flows = u.inputs.iter().map(|i| flow(i));
            let Some(first) = flows.next() else {
                return Ok(Flow::public(u.schema.fields().len()));
            };
            let mut out = first?;
            for f in flows {
                let f = f?;
                out.patient_rows |= f.patient_rows;
                out.owner = out.owner.intersection(&f.owner).copied().collect();
                for (a, b) in out.cols.iter_mut().zip(&f.cols) {
                    *a = (*a).max(*b);
                }
                out.presence = out.presence.max(f.presence);
            }
            Ok(out)
        }
        LogicalPlan::Join(j) => join(j),
        LogicalPlan::Distinct(Distinct::On(_)) => Err(unsupported("DISTINCT ON")),
        LogicalPlan::Unnest(_) => Err(unsupported("UNNEST")),
        LogicalPlan::RecursiveQuery(_) => Err(unsupported("a recursive query")),
        other => Err(unsupported(other.display().to_string().as_str())),
    }
}

/// A join: patient rows meet patient rows only on patient equality.
fn join(j: &datafusion::logical_expr::Join) -> Result<Flow, FlowError> {
    let l = flow(&j.left)?;
    let r = flow(&j.right)?;
    let (ls, rs) = (j.left.schema(), j.right.schema());
    let lw = ls.fields().len();
    let sides = [(ls.as_ref(), &l), (rs.as_ref(), &r)];
    // Do the two sides' rows belong to one patient?
    let same_patient = j.on.iter().any(|(a, b)| {
        let pair = |x: &Expr, y: &Expr| {
            let lx = owner_column(x).and_then(|c| index_of(ls, c));
            let ry = owner_column(y).and_then(|c| index_of(rs, c));
            matches!((lx, ry), (Some(i), Some(k)) if l.owner.contains(&i) && r.owner.contains(&k))
        };
        pair(a, b) || pair(b, a)
    });
    // Patient rows paired with other patient rows without patient equality, or with
    // rows that depend on patients (aggregates over many, rows kept by a patient's
    // data): one output row then holds more than one patient's data.
    let mixes = |a: &Flow, b: &Flow| {
        a.patient_rows
            && if b.patient_rows {
                !same_patient
            } else {
                !b.is_public()
            }
    };
    let crossed = mixes(&l, &r) || mixes(&r, &l);
    // What a match depends on.
    let mut matching = if crossed { Taint::Cross } else { Taint::Public };
    for (a, b) in &j.on {
        matching = matching
            .max(expr_taint(a, &sides)?)
            .max(expr_taint(b, &sides)?);
    }
    if let Some(f) = &j.filter {
        matching = matching.max(expr_taint(f, &sides)?);
    }
    let presence = l.presence.max(r.presence).max(matching);
    let all = |s: &Flow| -> Vec<Taint> {
        if crossed {
            vec![Taint::Cross; s.cols.len()]
        } else {
            s.cols.clone()
        }
    };
    // A semi, anti or mark join keeps one side's rows as they are: only which rows (or
    // the mark) depend on the other side.
    let kept = |s: &Flow, other: &Flow| Flow {
        patient_rows: s.patient_rows,
        owner: s.owner.clone(),
        cols: s.cols.clone(),
        presence: s.presence.max(other.presence).max(matching),
    };
    let flow = match j.join_type {
        JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full => {
            let mut cols = all(&l);
            cols.extend(all(&r));
            let owner = if crossed {
                BTreeSet::new()
            } else {
                l.owner
                    .iter()
                    .copied()
                    .chain(r.owner.iter().map(|i| i + lw))
                    .collect()
            };
            Flow {
                patient_rows: l.patient_rows || r.patient_rows,
                owner,
                cols,
                presence,
            }
        }
        JoinType::LeftSemi | JoinType::LeftAnti => kept(&l, &r),
        JoinType::RightSemi | JoinType::RightAnti => kept(&r, &l),
        JoinType::LeftMark => {
            let mut out = l.clone();
            out.cols.push(r.presence.max(matching));
            out
        }
        #[allow(unreachable_patterns)]
        _ => return Err(unsupported("this kind of join")),
    };
    if flow.cols.len() != j.schema.fields().len() {
        return Err(unsupported("a join whose output the TRE cannot follow"));
    }
    Ok(flow)
}

/// The column an expression passes through unchanged (through aliases and casts to text).
fn owner_column(e: &Expr) -> Option<&Column> {
    match e {
        Expr::Column(c) => Some(c),
        Expr::Alias(a) => owner_column(&a.expr),
        Expr::Cast(c) if is_text(c.field.data_type()) => owner_column(&c.expr),
        _ => None,
    }
}

fn is_text(t: &datafusion::arrow::datatypes::DataType) -> bool {
    use datafusion::arrow::datatypes::DataType::{LargeUtf8, Utf8, Utf8View};
    matches!(t, Utf8 | LargeUtf8 | Utf8View)
}

fn index_of(schema: &DFSchema, c: &Column) -> Option<usize> {
    schema.index_of_column(c).ok()
}

/// Whether a window expression is partitioned by the row's owner.
fn partitioned_by_owner(e: &Expr, schema: &DFSchema, f: &Flow) -> bool {
    let mut e = e;
    while let Expr::Alias(a) = e {
        e = &a.expr;
    }
    let Expr::WindowFunction(w) = e else {
        return false;
    };
    w.params.partition_by.iter().any(|p| {
        owner_column(p)
            .and_then(|c| index_of(schema, c))
            .is_some_and(|at| f.owner.contains(&at))
    })
}

/// The most any column or subquery of `e` depends on; `inputs` are the schemas the
/// expression's columns may refer to, with their flows (a join's two sides).
fn expr_taint(e: &Expr, inputs: &[(&DFSchema, &Flow)]) -> Result<Taint, FlowError> {
    let mut t = Taint::Public;
    for c in e.column_refs() {
        let found = inputs.iter().find_map(|(s, f)| {
            index_of(s, c).map(|i| f.cols.get(i).copied().unwrap_or(Taint::Cross))
        });
        // A column the check cannot place is treated as other patients' data.
        t = t.max(found.unwrap_or(Taint::Cross));
    }
    let mut failed = None;
    e.apply(|x| {
        let plan = match x {
            Expr::ScalarSubquery(s) => &s.subquery,
            Expr::Exists(s) => &s.subquery.subquery,
            Expr::InSubquery(s) => &s.subquery.subquery,
            Expr::OuterReferenceColumn(..) => {
                t = Taint::Cross;
                return Ok(TreeNodeRecursion::Continue);
            }
            _ => return Ok(TreeNodeRecursion::Continue),
        };
        // A subquery left in the optimised plan: public only over public data.
        match flow(plan) {
            Ok(f) if f.is_public() => {}
            Ok(_) => t = Taint::Cross,
            Err(e) => failed = Some(e),
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .map_err(|_| unsupported("an expression the TRE cannot follow"))?;
    match failed {
        Some(e) => Err(e),
        None => Ok(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::prelude::SessionContext;
    use std::sync::Arc;

    async fn context() -> SessionContext {
        let ctx = SessionContext::new();
        let events = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("patient_pseudonym", DataType::Utf8, false),
                Field::new("snomed_code", DataType::Utf8, false),
                Field::new("numeric_value", DataType::Float64, true),
            ])),
            vec![
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(StringArray::from(vec!["x", "y"])),
                Arc::new(Float64Array::from(vec![Some(1.0), None])),
            ],
        )
        .expect("batch");
        let patients = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("patient_pseudonym", DataType::Utf8, false),
                Field::new("sex", DataType::Utf8, false),
                Field::new("lsoa", DataType::Utf8, false),
            ])),
            vec![
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(StringArray::from(vec!["F", "M"])),
                Arc::new(StringArray::from(vec!["L1", "L2"])),
            ],
        )
        .expect("batch");
        let codes = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("code", DataType::Utf8, false),
                Field::new("label", DataType::Utf8, false),
            ])),
            vec![
                Arc::new(StringArray::from(vec!["x"])),
                Arc::new(StringArray::from(vec!["X"])),
            ],
        )
        .expect("batch");
        ctx.register_batch("clinical_events", events).expect("reg");
        ctx.register_batch("patients", patients).expect("reg");
        ctx.register_batch("codelist", codes).expect("reg");
        ctx
    }

    async fn verdict(sql: &str) -> Result<(), String> {
        let ctx = context().await;
        let df = ctx.sql(sql).await.map_err(|e| format!("plan: {e}"))?;
        let spec = super::super::spec::recognise(df.logical_plan(), true)
            .map_err(|e| format!("spec: {e}"))?;
        let plan = ctx
            .state()
            .optimize(&spec.population)
            .map_err(|e| format!("optimise: {e}"))?;
        check(&plan).map_err(|e| e.to_string())
    }

    fn run(sql: &str) -> Result<(), String> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt")
            .block_on(verdict(sql))
    }

    #[test]
    fn patient_wise_populations_pass() {
        for sql in [
            "SELECT sex, COUNT(*) FROM patients GROUP BY sex",
            "SELECT p.sex, e.snomed_code, COUNT(DISTINCT e.patient_pseudonym), AVG(e.numeric_value) FROM clinical_events e JOIN patients p ON e.patient_pseudonym = p.patient_pseudonym GROUP BY p.sex, e.snomed_code",
            "SELECT p.sex, COUNT(*) FROM patients p, clinical_events e WHERE p.patient_pseudonym = e.patient_pseudonym GROUP BY p.sex",
            "SELECT c.label, COUNT(*) FROM clinical_events e JOIN codelist c ON e.snomed_code = c.code GROUP BY c.label",
            "SELECT sex, COUNT(*) FROM patients WHERE patient_pseudonym IN (SELECT patient_pseudonym FROM clinical_events WHERE snomed_code = 'x') GROUP BY sex",
            "SELECT sex, COUNT(*) FROM patients p WHERE NOT EXISTS (SELECT 1 FROM clinical_events e WHERE e.patient_pseudonym = p.patient_pseudonym) GROUP BY sex",
            "SELECT n, COUNT(*) FROM (SELECT patient_pseudonym, COUNT(*) AS n FROM clinical_events GROUP BY patient_pseudonym) GROUP BY n",
            "SELECT snomed_code, COUNT(*) FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY patient_pseudonym ORDER BY snomed_code) AS k FROM clinical_events) WHERE k = 1 GROUP BY snomed_code",
            "SELECT e.snomed_code, COUNT(*) FROM clinical_events e JOIN (VALUES ('a'), ('b')) AS v(pp) ON e.patient_pseudonym = v.pp GROUP BY e.snomed_code",
            // Public rows (a series) paired with each patient's row: still that patient's.
            "SELECT SUM(LENGTH(p.patient_pseudonym || p.sex) + g.value) AS n FROM patients p CROSS JOIN generate_series(1, 10) g",
            "SELECT sex, COUNT(*) FROM (SELECT patient_pseudonym, sex FROM patients UNION ALL SELECT patient_pseudonym, 'U' FROM clinical_events) GROUP BY sex",
        ] {
            assert_eq!(run(sql), Ok(()), "{sql}");
        }
    }

    #[test]
    fn populations_that_mix_patients_are_refused() {
        for sql in [
            // Amplification: one patient's events paired with every other pseudonym.
            "SELECT e.snomed_code, COUNT(DISTINCT o.patient_pseudonym), SUM(e.numeric_value) FROM clinical_events e CROSS JOIN patients o WHERE e.patient_pseudonym = 'a' GROUP BY e.snomed_code",
            "SELECT e.snomed_code, COUNT(DISTINCT o.patient_pseudonym) FROM clinical_events e JOIN patients o ON e.snomed_code <> o.sex WHERE e.patient_pseudonym = 'a' GROUP BY e.snomed_code",
            "SELECT o.lsoa, COUNT(*) FROM patients p JOIN patients o ON p.lsoa = o.lsoa GROUP BY o.lsoa",
            // One patient's value in everyone's row.
            "SELECT sex, (SELECT MAX(numeric_value) FROM clinical_events WHERE patient_pseudonym = 'a') AS v, COUNT(*) FROM patients GROUP BY sex, v",
            "SELECT sex, CASE WHEN (SELECT MAX(numeric_value) FROM clinical_events WHERE patient_pseudonym = 'a') > 5 THEN 'hi' ELSE 'lo' END AS b, COUNT(*) FROM patients GROUP BY sex, b",
            // Everyone kept or dropped on one patient's value.
            "SELECT sex, COUNT(*) FROM patients WHERE (SELECT MAX(numeric_value) FROM clinical_events WHERE patient_pseudonym = 'a') > 5 GROUP BY sex",
            "SELECT sex, COUNT(*) FROM patients WHERE EXISTS (SELECT 1 FROM clinical_events WHERE patient_pseudonym = 'a' AND numeric_value > 5) GROUP BY sex",
            "SELECT sex, COUNT(*) FROM patients WHERE lsoa IN (SELECT lsoa FROM patients WHERE patient_pseudonym = 'a') GROUP BY sex",
            // Statistics over many patients in a row.
            "SELECT sex, COUNT(*) FROM clinical_events e JOIN patients p ON e.patient_pseudonym = p.patient_pseudonym WHERE numeric_value > (SELECT AVG(numeric_value) FROM clinical_events) GROUP BY sex",
            "SELECT r, COUNT(*) FROM (SELECT patient_pseudonym, ROW_NUMBER() OVER (ORDER BY patient_pseudonym) AS r FROM patients) GROUP BY r",
            "SELECT sex, COUNT(*) FROM (SELECT * FROM patients ORDER BY lsoa LIMIT 1) GROUP BY sex",
            // A pseudonym that is not the rows' own.
            "SELECT sex, COUNT(DISTINCT patient_pseudonym) FROM (SELECT lsoa AS patient_pseudonym, sex FROM patients) GROUP BY sex",
            "SELECT o.sex, COUNT(DISTINCT o.patient_pseudonym) FROM clinical_events e JOIN patients o ON e.snomed_code = o.lsoa GROUP BY o.sex",
        ] {
            let got = run(sql);
            assert!(
                matches!(&got, Err(m) if m.starts_with("the rows counted are not each one patient's")),
                "{sql}: {got:?}"
            );
        }
    }
}
