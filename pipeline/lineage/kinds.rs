//! Value kinds and how expressions combine them: the algebra under the plan walker.
//!
//! Owns what a value is while the plan is walked (row value, constant, group key, count,
//! magnitude, mean, ratio, order statistic, or an unclassifiable mix), how operators,
//! scalar functions, CASE and aggregate functions combine kinds, and the recomputable
//! transformations of a pseudonym (for purge). Danger: any combination not listed here
//! becomes `Mixed` (unclassified, blocking); widening a rule can let a count escape
//! rounding or an identifier escape the identifier rules.

use std::collections::BTreeSet;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Expr, Operator};

use super::{SourceColumn, ValueTransform};

/// What a value is, while walking.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Kind {
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
    pub(super) fn is_aggregate(&self) -> bool {
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
pub(super) struct Lin {
    pub(super) kind: Kind,
    pub(super) sources: BTreeSet<SourceColumn>,
    pub(super) through: Vec<String>,
    pub(super) string_fn: bool,
    pub(super) transform: Option<ValueTransform>,
    /// The plan node (aggregate or window) that computed this statistic: two counts with
    /// the same sources from different nodes (a group's count and a grand total) differ.
    pub(super) origin: Option<usize>,
}

impl Lin {
    pub(super) fn constant(transform: Option<ValueTransform>) -> Self {
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
    pub(super) fn at(mut self, id: usize) -> Self {
        self.origin.get_or_insert(id);
        if let Kind::Mean { num, den } | Kind::Ratio { num, den } = &mut self.kind {
            num.origin.get_or_insert(id);
            den.origin.get_or_insert(id);
        }
        self
    }

    pub(super) fn with_kind(mut self, kind: Kind) -> Self {
        self.kind = kind;
        self
    }

    pub(super) fn via(mut self, name: &str) -> Self {
        self.through.push(name.to_string());
        self
    }

    /// Merge several lineages into one value of `kind` (sources and functions united).
    pub(super) fn merge(parts: &[Lin], kind: Kind) -> Lin {
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

    pub(super) fn count(distinct: bool, sources: &Lin) -> Lin {
        Lin::merge(std::slice::from_ref(sources), Kind::Count { distinct })
    }
}

/// Kind of a non-aggregate combination (row values, keys, constants).
pub(super) fn plain(parts: &[Lin]) -> Kind {
    if parts.iter().any(|p| p.kind == Kind::Row) {
        Kind::Row
    } else if parts.iter().any(|p| p.kind == Kind::Key) {
        Kind::Key
    } else {
        Kind::Constant
    }
}

/// Functions that change a value's text: their output may carry an identifier.
pub(super) const STRING_FUNCTIONS: &[&str] = &[
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
pub(super) const KIND_PRESERVING: &[&str] = &[
    "abs",
    "round",
    "ceil",
    "floor",
    "trunc",
    "coalesce",
    "nullif",
    "arrow_cast",
];

pub(super) fn strip_alias(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => strip_alias(&a.expr),
        other => other,
    }
}

pub(super) fn literal_text(v: &ScalarValue) -> Option<ValueTransform> {
    match v {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => Some(ValueTransform::Literal { text: s.clone() }),
        _ => None,
    }
}

pub(super) fn literal_int(e: &Expr) -> Option<i64> {
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

pub(super) fn cast(l: Lin, to: &DataType) -> Lin {
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
pub(super) fn single_source(out: &Lin) -> bool {
    out.sources.len() <= 1 && !out.kind.is_aggregate()
}

pub(super) fn concat_transform(parts: &[&Lin], out: &Lin) -> Option<ValueTransform> {
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

pub(super) fn scalar_transform(
    name: &str,
    exprs: &[Expr],
    args: &[Lin],
    out: &Lin,
) -> Option<ValueTransform> {
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
pub(super) fn predicate(parts: &[Lin]) -> Lin {
    let kind = if parts.iter().any(|p| p.kind.is_aggregate()) {
        Kind::Mixed
    } else {
        plain(parts)
    };
    Lin::merge(parts, kind)
}

/// CASE over counts only (e.g. an analyst's own suppression) is a count; other mixes of
/// aggregates are unclassified.
pub(super) fn combine_case(parts: &[Lin]) -> Lin {
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
pub(super) fn arithmetic(op: Operator, x: &Kind, y: &Kind, l: &Lin, r: &Lin) -> Kind {
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
pub(super) fn aggregate_kind(name: &str, args: &[Lin], distinct: bool) -> Lin {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lineage::SourceClass;

    fn row(column: &str) -> Lin {
        let mut l = Lin::constant(Some(ValueTransform::Source)).with_kind(Kind::Row);
        l.sources.insert(SourceColumn {
            table: "t".into(),
            column: column.into(),
            class: SourceClass::Clinical,
        });
        l
    }

    #[test]
    fn sums_of_ones_and_of_counts_are_counts() {
        let one = Lin::constant(None);
        assert_eq!(
            aggregate_kind("sum", &[one], false).kind,
            Kind::Count { distinct: false }
        );
        let n = Lin::count(true, &row("x"));
        assert_eq!(
            aggregate_kind("sum", &[n], false).kind,
            Kind::Count { distinct: true }
        );
        assert_eq!(
            aggregate_kind("sum", &[row("x")], false).kind,
            Kind::Magnitude
        );
    }

    #[test]
    fn packing_and_unknown_aggregates_never_pass() {
        assert_eq!(
            aggregate_kind("string_agg", &[row("x")], false).kind,
            Kind::Row
        );
        assert_eq!(
            aggregate_kind("array_agg", &[row("x")], false).kind,
            Kind::Row
        );
        assert_eq!(
            aggregate_kind("my_udaf", &[row("x")], false).kind,
            Kind::Mixed
        );
        assert!(matches!(
            aggregate_kind("median", &[row("x")], false).kind,
            Kind::MinMax(f) if f == "median"
        ));
    }

    #[test]
    fn means_and_ratios_keep_their_operands() {
        let s = aggregate_kind("sum", &[row("x")], false);
        let n = aggregate_kind("count", &[row("x")], false);
        assert!(matches!(
            arithmetic(Operator::Divide, &s.kind, &n.kind, &s, &n),
            Kind::Mean { .. }
        ));
        assert!(matches!(
            arithmetic(Operator::Divide, &n.kind, &n.kind, &n, &n),
            Kind::Ratio { .. }
        ));
        assert_eq!(
            arithmetic(Operator::Multiply, &n.kind, &n.kind, &n, &n),
            Kind::Mixed
        );
        let avg = aggregate_kind("avg", &[row("x")], false);
        let Kind::Mean { num, den } = avg.kind else {
            panic!("avg is a mean");
        };
        assert_eq!(num.kind, Kind::Magnitude);
        assert_eq!(den.kind, Kind::Count { distinct: false });
    }

    #[test]
    fn case_over_counts_is_a_count_and_tests_of_counts_are_not() {
        let n = Lin::count(false, &row("x"));
        let null = Lin::constant(None);
        assert_eq!(
            combine_case(&[n.clone(), null, n.clone()]).kind,
            Kind::Count { distinct: false }
        );
        assert_eq!(predicate(&[n, Lin::constant(None)]).kind, Kind::Mixed);
        assert_eq!(plain(&[row("x"), Lin::constant(None)]), Kind::Row);
    }
}
