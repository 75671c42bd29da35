//! The plan walker: column lineage through DataFusion's optimized `LogicalPlan`.
//!
//! Computes, bottom-up, one lineage per output field of every plan node (scan columns are
//! row-level values of their source column; aggregates turn them into counts, sums,
//! means, order statistics; projections combine them through expressions). Danger: any
//! node or expression not understood is an error or an `Unclassified` column, so the
//! result is blocked rather than waved through.

use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::logical_expr::expr::{AggregateFunction, ScalarFunction, WindowFunction};
use datafusion::logical_expr::utils::{grouping_set_to_exprlist, split_conjunction};
use datafusion::logical_expr::{
    Aggregate, BinaryExpr, Distinct, Expr, Join, JoinType, LogicalPlan, Operator,
    WindowFunctionDefinition,
};

use super::kinds::{
    KIND_PRESERVING, Kind, Lin, STRING_FUNCTIONS, aggregate_kind, arithmetic, cast, combine_case,
    concat_transform, literal_text, plain, predicate, scalar_transform, strip_alias,
};
use super::{
    LineageError, OutputColumn, PopulationLineage, Role, SourceCatalog, SourceColumn,
    ValueTransform,
};

/// Walks one plan against a catalog.
pub(super) struct Walker<'a> {
    catalog: &'a SourceCatalog,
}

/// Population facts gathered on the way down.
#[derive(Default)]
struct PopAcc {
    tables: Vec<String>,
    filters: Vec<String>,
    identifier_filters: Vec<String>,
    joins: Vec<String>,
    group_keys: Option<Vec<String>>,
}

impl PopAcc {
    /// Record one filter conjunct. A conjunct that compares an identifier with a literal
    /// singles patients out: it is recorded with its literals replaced by their SHA-256
    /// (so the lineage never stores a pseudonym) and flagged.
    fn filter(&mut self, e: &Expr, find: &dyn Fn(&Column) -> Option<Lin>) {
        let singles_out = mentions_identifier(e, find) && has_literal(e);
        let text = normalise_with(e, find, singles_out);
        if singles_out {
            self.identifier_filters.push(text.clone());
        }
        self.filters.push(text);
    }
}

fn by_schema(c: &Column, schema: &DFSchema, input: &[Lin]) -> Option<Lin> {
    schema
        .maybe_index_of_column(c)
        .and_then(|i| input.get(i))
        .cloned()
}

fn mentions_identifier(e: &Expr, find: &dyn Fn(&Column) -> Option<Lin>) -> bool {
    use datafusion::common::tree_node::TreeNode;
    e.exists(|x| {
        Ok(matches!(x, Expr::Column(c)
            if find(c).is_some_and(|l| !l.kind.is_aggregate()
                && l.sources.iter().any(|s| s.class.identifies()))))
    })
    .unwrap_or(true)
}

fn has_literal(e: &Expr) -> bool {
    use datafusion::common::tree_node::TreeNode;
    e.exists(|x| Ok(matches!(x, Expr::Literal(v, _) if !v.is_null())))
        .unwrap_or(true)
}

impl<'a> Walker<'a> {
    pub(super) fn new(catalog: &'a SourceCatalog) -> Self {
        Walker { catalog }
    }

    /// Output columns of the plan with roles and lineage.
    pub(super) fn classify(&self, plan: &LogicalPlan) -> Result<Vec<OutputColumn>, LineageError> {
        let lins = self.lineage(plan)?;
        let names: Vec<String> = plan
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let mut cols: Vec<OutputColumn> = names
            .iter()
            .zip(&lins)
            .map(|(n, l)| to_output(n, l))
            .collect();
        name_operands(&mut cols, &names, &lins);
        Ok(cols)
    }

    /// Lineage of every output field of `plan`, in schema order.
    fn lineage(&self, plan: &LogicalPlan) -> Result<Vec<Lin>, LineageError> {
        let out = match plan {
            LogicalPlan::TableScan(scan) => {
                let table = scan.table_name.table().to_string();
                scan.projected_schema
                    .fields()
                    .iter()
                    .map(|f| self.scan_column(&table, f.name()))
                    .collect()
            }
            LogicalPlan::Projection(p) => {
                let input = self.lineage(&p.input)?;
                p.expr
                    .iter()
                    .map(|e| self.expr(e, p.input.schema(), &input))
                    .collect::<Result<_, _>>()?
            }
            LogicalPlan::Filter(f) => self.lineage(&f.input)?,
            LogicalPlan::Sort(s) => self.lineage(&s.input)?,
            LogicalPlan::Limit(l) => self.lineage(&l.input)?,
            LogicalPlan::Repartition(r) => self.lineage(&r.input)?,
            LogicalPlan::SubqueryAlias(a) => self.lineage(&a.input)?,
            LogicalPlan::Subquery(s) => self.lineage(&s.subquery)?,
            LogicalPlan::Aggregate(a) => self.aggregate(a)?,
            LogicalPlan::Window(w) => {
                let input = self.lineage(&w.input)?;
                let mut out = input.clone();
                let id = std::ptr::from_ref(w) as usize;
                for e in &w.window_expr {
                    let mut l = self.window(e, w.input.schema(), &input)?;
                    l.origin = None;
                    out.push(l.at(id));
                }
                out
            }
            LogicalPlan::Join(j) => self.join(j)?,
            LogicalPlan::Union(u) => self.union(&u.inputs)?,
            LogicalPlan::Distinct(Distinct::All(input)) => self
                .lineage(input)?
                .into_iter()
                .map(|l| l.with_kind(Kind::Key))
                .collect(),
            LogicalPlan::Distinct(Distinct::On(d)) => {
                let input = self.lineage(&d.input)?;
                let schema = d.input.schema();
                d.select_expr
                    .iter()
                    .map(|e| {
                        let l = self.expr(e, schema, &input)?;
                        let kind = if d.on_expr.contains(e) {
                            Kind::Key
                        } else {
                            l.kind.clone()
                        };
                        Ok(l.with_kind(kind))
                    })
                    .collect::<Result<_, LineageError>>()?
            }
            LogicalPlan::Values(_) | LogicalPlan::EmptyRelation(_) => plan
                .schema()
                .fields()
                .iter()
                .map(|_| Lin::constant(None))
                .collect(),
            other => {
                return Err(LineageError::UnsupportedPlan {
                    node: node_name(other),
                });
            }
        };
        if out.len() != plan.schema().fields().len() {
            return Err(LineageError::UnsupportedPlan {
                node: node_name(plan),
            });
        }
        Ok(out)
    }

    fn scan_column(&self, table: &str, column: &str) -> Lin {
        let mut l = Lin::constant(Some(ValueTransform::Source)).with_kind(Kind::Row);
        l.sources.insert(SourceColumn {
            table: table.to_string(),
            column: column.to_string(),
            class: self.catalog.class(table, column),
        });
        l
    }

    fn aggregate(&self, a: &Aggregate) -> Result<Vec<Lin>, LineageError> {
        let input = self.lineage(&a.input)?;
        let schema = a.input.schema();
        let groups =
            grouping_set_to_exprlist(&a.group_expr).map_err(|_| LineageError::UnsupportedExpr {
                expr: "this GROUP BY form".into(),
            })?;
        let mut out = Vec::new();
        for g in groups {
            out.push(self.expr(g, schema, &input)?.with_kind(Kind::Key));
        }
        if matches!(a.group_expr.as_slice(), [Expr::GroupingSet(_)]) {
            out.push(Lin::constant(None).with_kind(Kind::Key).via("grouping_id"));
        }
        let id = std::ptr::from_ref(a) as usize;
        for e in &a.aggr_expr {
            out.push(self.expr(e, schema, &input)?.at(id));
        }
        Ok(out)
    }

    fn join(&self, j: &Join) -> Result<Vec<Lin>, LineageError> {
        let left = self.lineage(&j.left)?;
        let right = self.lineage(&j.right)?;
        let mark = |side: &[Lin]| Lin::merge(side, Kind::Row).via("join mark");
        Ok(match j.join_type {
            JoinType::LeftSemi | JoinType::LeftAnti => left,
            JoinType::RightSemi | JoinType::RightAnti => right,
            JoinType::LeftMark => {
                let m = mark(&right);
                left.into_iter().chain(std::iter::once(m)).collect()
            }
            JoinType::RightMark => {
                let m = mark(&left);
                right.into_iter().chain(std::iter::once(m)).collect()
            }
            _ => left.into_iter().chain(right).collect(),
        })
    }

    fn union(&self, inputs: &[std::sync::Arc<LogicalPlan>]) -> Result<Vec<Lin>, LineageError> {
        let mut acc: Option<Vec<Lin>> = None;
        for i in inputs {
            let l = self.lineage(i)?;
            acc = Some(match acc {
                None => l,
                Some(prev) => prev
                    .iter()
                    .zip(&l)
                    .map(|(a, b)| {
                        let kind = match (&a.kind, &b.kind) {
                            (x, y) if x == y => x.clone(),
                            (Kind::Count { distinct: x }, Kind::Count { distinct: y }) => {
                                Kind::Count { distinct: *x || *y }
                            }
                            (x, y) if !x.is_aggregate() && !y.is_aggregate() => {
                                plain(&[a.clone(), b.clone()])
                            }
                            _ => Kind::Mixed,
                        };
                        Lin::merge(&[a.clone(), b.clone()], kind)
                    })
                    .collect(),
            });
        }
        Ok(acc.unwrap_or_default())
    }

    fn window(&self, e: &Expr, schema: &DFSchema, input: &[Lin]) -> Result<Lin, LineageError> {
        let inner = strip_alias(e);
        let Expr::WindowFunction(w) = inner else {
            return self.expr(e, schema, input);
        };
        let WindowFunction { fun, params } = w.as_ref();
        let args = self.args(&params.args, schema, input)?;
        let name = fun.to_string().to_lowercase();
        // An aggregate over aggregated rows (SUM(n) OVER ()) is a statistic of the
        // statistics; anything over raw rows (or ROW_NUMBER, LAG, ...) is row-level.
        let over_aggregates = !args.is_empty() && args.iter().all(|a| a.kind.is_aggregate());
        match fun {
            WindowFunctionDefinition::AggregateUDF(_) if over_aggregates => {
                Ok(aggregate_kind(&name, &args, params.distinct).via(&name))
            }
            _ => Ok(Lin::merge(&args, Kind::Row).via(&name)),
        }
    }

    fn args(
        &self,
        args: &[Expr],
        schema: &DFSchema,
        input: &[Lin],
    ) -> Result<Vec<Lin>, LineageError> {
        args.iter().map(|a| self.expr(a, schema, input)).collect()
    }

    /// Lineage of one expression over an input with lineage `input` and schema `schema`.
    fn expr(&self, e: &Expr, schema: &DFSchema, input: &[Lin]) -> Result<Lin, LineageError> {
        match e {
            Expr::Alias(a) => self.expr(&a.expr, schema, input),
            Expr::Column(c) => resolve(c, schema, input),
            Expr::Literal(v, _) => Ok(Lin::constant(literal_text(v))),
            Expr::Cast(c) => Ok(cast(
                self.expr(&c.expr, schema, input)?,
                c.field.data_type(),
            )),
            Expr::TryCast(c) => Ok(cast(
                self.expr(&c.expr, schema, input)?,
                c.field.data_type(),
            )),
            Expr::Negative(x) => {
                let mut l = self.expr(x, schema, input)?.via("negate");
                l.transform = None;
                Ok(l)
            }
            Expr::BinaryExpr(b) => self.binary(b, schema, input),
            Expr::ScalarFunction(f) => self.scalar(f, schema, input),
            Expr::AggregateFunction(a) => self.aggregate_fn(a, schema, input),
            Expr::Case(c) => {
                let mut parts = Vec::new();
                for x in c.expr.iter().chain(c.else_expr.iter()) {
                    parts.push(self.expr(x, schema, input)?);
                }
                for (w, t) in &c.when_then_expr {
                    parts.push(self.expr(w, schema, input)?);
                    parts.push(self.expr(t, schema, input)?);
                }
                Ok(combine_case(&parts).via("case"))
            }
            Expr::Not(x)
            | Expr::IsNull(x)
            | Expr::IsNotNull(x)
            | Expr::IsTrue(x)
            | Expr::IsFalse(x)
            | Expr::IsUnknown(x)
            | Expr::IsNotTrue(x)
            | Expr::IsNotFalse(x)
            | Expr::IsNotUnknown(x) => {
                let l = self.expr(x, schema, input)?;
                Ok(predicate(&[l]).via("predicate"))
            }
            Expr::Between(b) => {
                let parts = self.args(
                    &[(*b.expr).clone(), (*b.low).clone(), (*b.high).clone()],
                    schema,
                    input,
                )?;
                Ok(predicate(&parts).via("between"))
            }
            Expr::Like(l) | Expr::SimilarTo(l) => {
                let parts = self.args(&[(*l.expr).clone(), (*l.pattern).clone()], schema, input)?;
                Ok(predicate(&parts).via("like"))
            }
            Expr::InList(l) => {
                let mut parts = vec![self.expr(&l.expr, schema, input)?];
                parts.extend(self.args(&l.list, schema, input)?);
                Ok(predicate(&parts).via("in list"))
            }
            Expr::ScalarSubquery(s) => {
                let l = self.lineage(&s.subquery)?;
                l.into_iter()
                    .next()
                    .ok_or_else(|| LineageError::UnsupportedExpr {
                        expr: "a scalar subquery without columns".into(),
                    })
            }
            Expr::WindowFunction(_) => self.window(e, schema, input),
            other => Err(LineageError::UnsupportedExpr {
                expr: other.variant_name().to_string(),
            }),
        }
    }

    fn binary(
        &self,
        b: &BinaryExpr,
        schema: &DFSchema,
        input: &[Lin],
    ) -> Result<Lin, LineageError> {
        let l = self.expr(&b.left, schema, input)?;
        let r = self.expr(&b.right, schema, input)?;
        let op = b.op.to_string();
        if b.op == Operator::StringConcat {
            let mut out = if l.kind.is_aggregate() || r.kind.is_aggregate() {
                Lin::merge(&[l.clone(), r.clone()], Kind::Mixed)
            } else {
                Lin::merge(&[l.clone(), r.clone()], plain(&[l.clone(), r.clone()]))
            };
            out.string_fn = true;
            out.transform = concat_transform(&[&l, &r], &out);
            return Ok(out.via("concat"));
        }
        let arith = matches!(
            b.op,
            Operator::Plus | Operator::Minus | Operator::Multiply | Operator::Divide
        );
        let kind = match (&l.kind, &r.kind) {
            (x, y) if !x.is_aggregate() && !y.is_aggregate() => plain(&[l.clone(), r.clone()]),
            _ if !arith => Kind::Mixed,
            (x, Kind::Constant) => x.clone(),
            (Kind::Constant, y) if b.op != Operator::Divide => y.clone(),
            (x, y) => arithmetic(b.op, x, y, &l, &r),
        };
        let mut out = Lin::merge(&[l, r], kind).via(&op);
        out.transform = None;
        Ok(out)
    }

    fn scalar(
        &self,
        f: &ScalarFunction,
        schema: &DFSchema,
        input: &[Lin],
    ) -> Result<Lin, LineageError> {
        let name = f.func.name().to_lowercase();
        let args = self.args(&f.args, schema, input)?;
        let aggs: Vec<&Lin> = args.iter().filter(|a| a.kind.is_aggregate()).collect();
        let string_fn = STRING_FUNCTIONS.contains(&name.as_str());
        let kind = if aggs.is_empty() {
            plain(&args)
        } else if aggs.len() == 1
            && !string_fn
            && KIND_PRESERVING.contains(&name.as_str())
            && args
                .iter()
                .all(|a| a.kind.is_aggregate() || a.kind == Kind::Constant)
        {
            aggs[0].kind.clone()
        } else {
            Kind::Mixed
        };
        let mut out = Lin::merge(&args, kind).via(&name);
        out.string_fn |= string_fn;
        out.transform = scalar_transform(&name, &f.args, &args, &out);
        Ok(out)
    }

    fn aggregate_fn(
        &self,
        a: &AggregateFunction,
        schema: &DFSchema,
        input: &[Lin],
    ) -> Result<Lin, LineageError> {
        let name = a.func.name().to_lowercase();
        let args = self.args(&a.params.args, schema, input)?;
        Ok(aggregate_kind(&name, &args, a.params.distinct).via(&name))
    }

    /// The population of a plan.
    pub(super) fn population(&self, plan: &LogicalPlan) -> Result<PopulationLineage, LineageError> {
        let mut acc = PopAcc::default();
        self.collect(plan, &mut acc)?;
        let mut p = PopulationLineage::new(
            acc.tables,
            acc.filters,
            acc.joins,
            acc.group_keys.unwrap_or_default(),
        );
        acc.identifier_filters.sort();
        acc.identifier_filters.dedup();
        p.identifier_filters = acc.identifier_filters;
        Ok(p)
    }

    /// Pre-order walk gathering tables, filters, joins and the outermost group keys.
    fn collect(&self, plan: &LogicalPlan, acc: &mut PopAcc) -> Result<(), LineageError> {
        match plan {
            LogicalPlan::TableScan(scan) => {
                let table = scan.table_name.table().to_string();
                acc.tables.push(table.clone());
                let find = |c: &Column| Some(self.scan_column(&table, &c.name));
                for f in &scan.filters {
                    for c in split_conjunction(f) {
                        acc.filter(c, &find);
                    }
                }
            }
            LogicalPlan::Filter(f) => {
                let input = self.lineage(&f.input)?;
                let find = |c: &Column| by_schema(c, f.input.schema(), &input);
                for c in split_conjunction(&f.predicate) {
                    acc.filter(c, &find);
                }
            }
            LogicalPlan::Join(j) => {
                let left = self.lineage(&j.left)?;
                let right = self.lineage(&j.right)?;
                // A join condition's columns come from either side.
                let find = |c: &Column| {
                    by_schema(c, j.left.schema(), &left)
                        .or_else(|| by_schema(c, j.right.schema(), &right))
                };
                for (l, r) in &j.on {
                    acc.joins.push(format!(
                        "{} = {}",
                        normalise_with(l, &find, false),
                        normalise_with(r, &find, false)
                    ));
                }
                if let Some(f) = &j.filter {
                    for c in split_conjunction(f) {
                        acc.filter(c, &find);
                    }
                }
            }
            LogicalPlan::Aggregate(a) if acc.group_keys.is_none() => {
                let input = self.lineage(&a.input)?;
                let groups = grouping_set_to_exprlist(&a.group_expr).unwrap_or_default();
                acc.group_keys = Some(
                    groups
                        .into_iter()
                        .map(|g| normalise(g, a.input.schema(), &input))
                        .collect(),
                );
                for e in &a.aggr_expr {
                    if let Expr::AggregateFunction(f) = strip_alias(e)
                        && let Some(filter) = &f.params.filter
                    {
                        let find = |c: &Column| by_schema(c, a.input.schema(), &input);
                        for c in split_conjunction(filter) {
                            acc.filter(c, &find);
                        }
                    }
                }
            }
            _ => {}
        }
        for child in plan.inputs() {
            self.collect(child, acc)?;
        }
        Ok(())
    }
}

fn node_name(plan: &LogicalPlan) -> String {
    plan.display()
        .to_string()
        .split([':', ' ', '('])
        .next()
        .unwrap_or("unknown")
        .to_string()
}

fn resolve(c: &Column, schema: &DFSchema, input: &[Lin]) -> Result<Lin, LineageError> {
    schema
        .maybe_index_of_column(c)
        .and_then(|i| input.get(i))
        .cloned()
        .ok_or_else(|| LineageError::Unresolved {
            column: c.flat_name(),
        })
}

fn role_of(kind: &Kind) -> Role {
    let operand = |l: &Lin| super::Operand {
        role: Box::new(role_of(&l.kind)),
        sources: l.sources.iter().cloned().collect(),
        column: None,
    };
    match kind {
        Kind::Row => Role::RowLevel,
        Kind::Constant => Role::Constant,
        Kind::Key => Role::GroupKey,
        Kind::Count { distinct } => Role::Count {
            distinct: *distinct,
        },
        Kind::Magnitude => Role::Magnitude,
        Kind::Mean { num, den } => Role::Mean {
            numerator: operand(num),
            denominator: operand(den),
        },
        Kind::Ratio { num, den } => Role::Ratio {
            numerator: operand(num),
            denominator: operand(den),
        },
        Kind::MinMax(f) => Role::MinMax {
            function: f.clone(),
        },
        Kind::Mixed => Role::Unclassified,
    }
}

fn to_output(name: &str, l: &Lin) -> OutputColumn {
    OutputColumn {
        name: name.to_string(),
        role: role_of(&l.kind),
        sources: l.sources.iter().cloned().collect(),
        through: l.through.clone(),
        string_function: l.string_fn,
        transform: match l.kind {
            Kind::Row | Kind::Key if l.sources.len() == 1 => l.transform.clone(),
            _ => None,
        },
    }
}

/// Name the output columns that carry a mean's or ratio's numerator and denominator.
fn name_operands(cols: &mut [OutputColumn], names: &[String], lins: &[Lin]) {
    let find = |target: &Lin| -> Option<String> {
        names
            .iter()
            .zip(lins)
            .find(|(_, l)| {
                l.kind == target.kind && l.sources == target.sources && l.origin == target.origin
            })
            .map(|(n, _)| n.clone())
    };
    for (c, l) in cols.iter_mut().zip(lins) {
        let (Kind::Mean { num, den } | Kind::Ratio { num, den }) = &l.kind else {
            continue;
        };
        if let Role::Mean {
            numerator,
            denominator,
        }
        | Role::Ratio {
            numerator,
            denominator,
        } = &mut c.role
        {
            numerator.column = find(num);
            denominator.column = find(den);
        }
    }
}

/// A filter or key expression with every column that is a plain source column written as
/// `table.column` (so aliases and subqueries do not change it).
fn normalise(e: &Expr, schema: &DFSchema, input: &[Lin]) -> String {
    normalise_with(e, &|c: &Column| by_schema(c, schema, input), false)
}

/// [`normalise`] with a column lookup; `redact` replaces every literal by its SHA-256.
fn normalise_with(e: &Expr, find: &dyn Fn(&Column) -> Option<Lin>, redact: bool) -> String {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    let rewritten = e.clone().transform_up(|x| match &x {
        Expr::Column(c) => {
            let Some(l) = find(c) else {
                return Ok(Transformed::no(x));
            };
            match l.sources.iter().next() {
                Some(s) if l.sources.len() == 1 && l.through.is_empty() => Ok(Transformed::yes(
                    Expr::Column(Column::new(Some(s.table.clone()), s.column.clone())),
                )),
                _ => Ok(Transformed::no(x)),
            }
        }
        Expr::Literal(v, _) if redact && !v.is_null() => {
            let digest = crate::digest::sha256_hex(v.to_string().as_bytes());
            Ok(Transformed::yes(Expr::Literal(
                ScalarValue::Utf8(Some(format!("sha256:{digest}"))),
                None,
            )))
        }
        _ => Ok(Transformed::no(x)),
    });
    match rewritten {
        Ok(t) => strip_alias(&t.data).to_string(),
        Err(_) => strip_alias(e).to_string(),
    }
}
