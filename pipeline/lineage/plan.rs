//! The plan walker: column lineage through DataFusion's optimized `LogicalPlan`.
//!
//! Computes, bottom-up, one lineage per output field of every plan node (scan columns are
//! row-level values of their source column; aggregates turn them into counts, sums,
//! means, order statistics; projections combine them through expressions). Danger: any
//! node or expression not understood is an error or an `Unclassified` column, so the
//! result is blocked rather than waved through.

use std::collections::BTreeSet;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::logical_expr::expr::{AggregateFunction, ScalarFunction, WindowFunction};
use datafusion::logical_expr::utils::{grouping_set_to_exprlist, split_conjunction};
use datafusion::logical_expr::{
    Aggregate, BinaryExpr, Distinct, Expr, Join, JoinType, LogicalPlan, Operator,
    WindowFunctionDefinition,
};

use super::{
    LineageError, OutputColumn, PopulationLineage, Role, SourceCatalog, SourceColumn,
    ValueTransform,
};

/// What a value is, while walking.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Row,
    Constant,
    Key,
    Count { distinct: bool },
    Magnitude,
    Mean { num: Box<Lin>, den: Box<Lin> },
    Ratio { num: Box<Lin>, den: Box<Lin> },
    MinMax(String),
    Mixed,
}

impl Kind {
    fn is_aggregate(&self) -> bool {
        matches!(
            self,
            Kind::Count { .. }
                | Kind::Magnitude
                | Kind::Mean { .. }
                | Kind::Ratio { .. }
                | Kind::MinMax(_)
                | Kind::Mixed
        )
    }
}

/// One value's lineage.
#[derive(Debug, Clone, PartialEq)]
struct Lin {
    kind: Kind,
    sources: BTreeSet<SourceColumn>,
    through: Vec<String>,
    string_fn: bool,
    transform: Option<ValueTransform>,
    /// The plan node (aggregate or window) that computed this statistic: two counts with
    /// the same sources from different nodes (a group's count and a grand total) differ.
    origin: Option<usize>,
}

impl Lin {
    fn constant(transform: Option<ValueTransform>) -> Self {
        Lin {
            kind: Kind::Constant,
            sources: BTreeSet::new(),
            through: Vec::new(),
            string_fn: false,
            transform,
            origin: None,
        }
    }

    /// Mark this statistic (and its operands) as computed by node `id`.
    fn at(mut self, id: usize) -> Self {
        self.origin.get_or_insert(id);
        if let Kind::Mean { num, den } | Kind::Ratio { num, den } = &mut self.kind {
            num.origin.get_or_insert(id);
            den.origin.get_or_insert(id);
        }
        self
    }

    fn with_kind(mut self, kind: Kind) -> Self {
        self.kind = kind;
        self
    }

    fn via(mut self, name: &str) -> Self {
        self.through.push(name.to_string());
        self
    }

    /// Merge several lineages into one value of `kind` (sources and functions united).
    fn merge(parts: &[Lin], kind: Kind) -> Lin {
        let mut out = Lin::constant(None).with_kind(kind);
        for p in parts {
            out.sources.extend(p.sources.iter().cloned());
            for t in &p.through {
                if !out.through.contains(t) {
                    out.through.push(t.clone());
                }
            }
            out.string_fn |= p.string_fn;
        }
        let mut origins = parts.iter().filter_map(|p| p.origin);
        out.origin = match (origins.next(), origins.next()) {
            (Some(o), None) => Some(o),
            (Some(a), Some(b)) if a == b && origins.all(|c| c == a) => Some(a),
            _ => None,
        };
        out
    }

    fn count(distinct: bool, sources: &Lin) -> Lin {
        Lin::merge(std::slice::from_ref(sources), Kind::Count { distinct })
    }
}

/// Kind of a non-aggregate combination (row values, keys, constants).
fn plain(parts: &[Lin]) -> Kind {
    if parts.iter().any(|p| p.kind == Kind::Row) {
        Kind::Row
    } else if parts.iter().any(|p| p.kind == Kind::Key) {
        Kind::Key
    } else {
        Kind::Constant
    }
}

/// Functions that change a value's text: their output may carry an identifier.
const STRING_FUNCTIONS: &[&str] = &[
    "concat",
    "concat_ws",
    "substr",
    "substring",
    "left",
    "right",
    "upper",
    "lower",
    "initcap",
    "lpad",
    "rpad",
    "trim",
    "btrim",
    "ltrim",
    "rtrim",
    "replace",
    "reverse",
    "repeat",
    "translate",
    "overlay",
    "split_part",
    "substr_index",
    "substring_index",
    "to_hex",
    "md5",
    "sha224",
    "sha256",
    "sha384",
    "sha512",
    "digest",
    "encode",
    "regexp_replace",
    "regexp_match",
    "to_char",
    "chr",
    "ascii",
    "strpos",
    "instr",
    "character_length",
    "char_length",
    "length",
    "octet_length",
    "bit_length",
    "starts_with",
    "ends_with",
    "make_array",
    "named_struct",
    "struct",
    "to_json",
];

/// Functions that keep an aggregate what it is (a rounded count is still a count).
const KIND_PRESERVING: &[&str] = &[
    "abs",
    "round",
    "ceil",
    "floor",
    "trunc",
    "coalesce",
    "nullif",
    "arrow_cast",
];

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

fn strip_alias(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => strip_alias(&a.expr),
        other => other,
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

fn literal_text(v: &ScalarValue) -> Option<ValueTransform> {
    match v {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => Some(ValueTransform::Literal { text: s.clone() }),
        _ => None,
    }
}

fn literal_int(e: &Expr) -> Option<i64> {
    match strip_alias(e) {
        Expr::Literal(v, _) => match v {
            ScalarValue::Int64(Some(n)) => Some(*n),
            ScalarValue::Int32(Some(n)) => Some(i64::from(*n)),
            ScalarValue::UInt64(Some(n)) => i64::try_from(*n).ok(),
            _ => None,
        },
        Expr::Cast(c) => literal_int(&c.expr),
        Expr::TryCast(c) => literal_int(&c.expr),
        _ => None,
    }
}

fn cast(l: Lin, to: &DataType) -> Lin {
    let textual = matches!(
        to,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    );
    let mut l = l.via("cast");
    if !textual {
        l.transform = None;
    }
    l
}

/// A value is "one source, recomputable" when it has at most one source column.
fn single_source(out: &Lin) -> bool {
    out.sources.len() <= 1 && !out.kind.is_aggregate()
}

fn concat_transform(parts: &[&Lin], out: &Lin) -> Option<ValueTransform> {
    if !single_source(out) {
        return None;
    }
    let mut flat = Vec::new();
    for p in parts {
        match p.transform.clone()? {
            ValueTransform::Concat { parts } => flat.extend(parts),
            t => flat.push(t),
        }
    }
    Some(ValueTransform::Concat { parts: flat })
}

fn scalar_transform(name: &str, exprs: &[Expr], args: &[Lin], out: &Lin) -> Option<ValueTransform> {
    if !single_source(out) {
        return None;
    }
    let first = || args.first().and_then(|a| a.transform.clone()).map(Box::new);
    match name {
        "upper" => Some(ValueTransform::Upper { arg: first()? }),
        "lower" => Some(ValueTransform::Lower { arg: first()? }),
        "concat" => concat_transform(&args.iter().collect::<Vec<_>>(), out),
        "substr" | "substring" => Some(ValueTransform::Substr {
            arg: first()?,
            start: literal_int(exprs.get(1)?)?,
            len: match exprs.get(2) {
                Some(e) => Some(literal_int(e)?),
                None => None,
            },
        }),
        "left" => Some(ValueTransform::Substr {
            arg: first()?,
            start: 1,
            len: Some(literal_int(exprs.get(1)?)?),
        }),
        "right" => Some(ValueTransform::Right {
            arg: first()?,
            n: literal_int(exprs.get(1)?)?,
        }),
        "arrow_cast" => args.first().and_then(|a| a.transform.clone()),
        _ => None,
    }
}

/// Combine a boolean test: over aggregates it is a thresholded statistic (unclassified).
fn predicate(parts: &[Lin]) -> Lin {
    let kind = if parts.iter().any(|p| p.kind.is_aggregate()) {
        Kind::Mixed
    } else {
        plain(parts)
    };
    Lin::merge(parts, kind)
}

/// CASE over counts only (e.g. an analyst's own suppression) is a count; other mixes of
/// aggregates are unclassified.
fn combine_case(parts: &[Lin]) -> Lin {
    let aggs: Vec<&Lin> = parts.iter().filter(|p| p.kind.is_aggregate()).collect();
    let kind = if aggs.is_empty() {
        plain(parts)
    } else if aggs.iter().all(|a| matches!(a.kind, Kind::Count { .. }))
        && parts
            .iter()
            .all(|p| p.kind.is_aggregate() || p.kind == Kind::Constant)
    {
        Kind::Count {
            distinct: aggs
                .iter()
                .any(|a| matches!(a.kind, Kind::Count { distinct: true })),
        }
    } else {
        Kind::Mixed
    };
    Lin::merge(parts, kind)
}

/// Two aggregates combined by arithmetic.
fn arithmetic(op: Operator, x: &Kind, y: &Kind, l: &Lin, r: &Lin) -> Kind {
    let ratio = |num: &Lin, den: &Lin| Kind::Ratio {
        num: Box::new(num.clone()),
        den: Box::new(den.clone()),
    };
    match (op, x, y) {
        (
            Operator::Plus | Operator::Minus,
            Kind::Count { distinct: a },
            Kind::Count { distinct: b },
        ) => Kind::Count { distinct: *a || *b },
        (
            Operator::Plus | Operator::Minus,
            Kind::Magnitude | Kind::Count { .. },
            Kind::Magnitude | Kind::Count { .. },
        ) => Kind::Magnitude,
        (Operator::Divide, Kind::Magnitude, Kind::Count { .. }) => Kind::Mean {
            num: Box::new(l.clone()),
            den: Box::new(r.clone()),
        },
        (
            Operator::Divide,
            Kind::Magnitude | Kind::Count { .. },
            Kind::Magnitude | Kind::Count { .. },
        ) => ratio(l, r),
        (
            Operator::Plus | Operator::Minus | Operator::Divide,
            Kind::Mean { num, den } | Kind::Ratio { num, den },
            Kind::Mean { .. } | Kind::Ratio { .. },
        ) => ratio(num, den),
        _ => Kind::Mixed,
    }
}

/// The kind of an aggregate function's result, from its name and its arguments' kinds.
fn aggregate_kind(name: &str, args: &[Lin], distinct: bool) -> Lin {
    let arg = Lin::merge(args, plain(args));
    let arg_kind = args
        .first()
        .map(|a| a.kind.clone())
        .unwrap_or(Kind::Constant);
    match name {
        // Counting a GROUP BY key of an inner aggregate counts distinct values (this is
        // how the optimizer rewrites a single COUNT(DISTINCT x)).
        "count" => Lin::count(distinct || arg_kind == Kind::Key, &arg),
        "approx_distinct" => Lin::count(true, &arg),
        "sum" => match arg_kind {
            Kind::Count { distinct } => Lin::count(distinct, &arg),
            Kind::Constant => Lin::count(false, &arg),
            Kind::Mixed => arg.with_kind(Kind::Mixed),
            _ => arg.with_kind(Kind::Magnitude),
        },
        "avg" | "mean" => match arg_kind {
            Kind::Constant => arg.with_kind(Kind::Constant),
            Kind::Mixed => arg.with_kind(Kind::Mixed),
            Kind::Count { distinct } => {
                let num = Lin::count(distinct, &arg);
                let den = Lin::count(false, &Lin::constant(None));
                arg.with_kind(Kind::Mean {
                    num: Box::new(num),
                    den: Box::new(den),
                })
            }
            _ => {
                let num = arg.clone().with_kind(Kind::Magnitude).via("sum");
                let den = Lin::count(false, &arg);
                arg.with_kind(Kind::Mean {
                    num: Box::new(num),
                    den: Box::new(den),
                })
            }
        },
        "min"
        | "max"
        | "median"
        | "approx_median"
        | "first_value"
        | "last_value"
        | "nth_value"
        | "approx_percentile_cont"
        | "approx_percentile_cont_with_weight"
        | "percentile_cont"
        | "bool_and"
        | "bool_or"
        | "bit_and"
        | "bit_or"
        | "bit_xor" => match arg_kind {
            Kind::Constant => arg,
            _ => arg.with_kind(Kind::MinMax(name.to_string())),
        },
        "array_agg" | "string_agg" | "listagg" | "group_concat" => arg.with_kind(Kind::Row),
        "stddev" | "stddev_pop" | "stddev_samp" | "var" | "var_pop" | "var_samp"
        | "var_population" | "var_sample" | "covar" | "covar_pop" | "covar_samp" | "corr" => {
            arg.with_kind(Kind::Magnitude)
        }
        "grouping" => arg.with_kind(Kind::Key),
        _ => arg.with_kind(Kind::Mixed),
    }
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
