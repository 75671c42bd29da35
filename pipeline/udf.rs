//! The extract's stage kernels as DataFusion scalar functions, for running the same
//! extract as SQL (and, later, on DataFusion Ballista across machines).
//!
//! Owns only the adaptation: each function wraps the plain Arrow kernel the extract uses
//! (NHS number validation, opt-out membership, pseudonymisation), so SQL and `tre
//! extract` cannot drift apart. Danger: the pseudonym function holds the keyed HMAC
//! state; it must never expose the key, and is registered only in a session the
//! operator controls, never in an analyst's query session.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, StringArray, UInt64Array};
use arrow::datatypes::DataType;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};

use crate::nhs_number;
use crate::optout::OptOutSet;
use crate::pseudonym::Pseudonymiser;

fn one_array(args: &[ColumnarValue], name: &str) -> Result<ArrayRef, DataFusionError> {
    match args {
        [a] => Ok(a.to_array(1)?),
        _ => Err(DataFusionError::Plan(format!("{name} takes one argument"))),
    }
}

fn downcast<'a, T: 'static>(a: &'a ArrayRef, name: &str) -> Result<&'a T, DataFusionError> {
    a.as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| DataFusionError::Plan(format!("{name}: unexpected argument type")))
}

/// `tre_nhs_number(text) -> uint64`: the validated NHS number, NULL when missing or invalid.
pub fn nhs_number_udf() -> ScalarUDF {
    const NAME: &str = "tre_nhs_number";
    create_udf(
        NAME,
        vec![DataType::Utf8],
        DataType::UInt64,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let a = one_array(args, NAME)?;
            let (valid, _faults) = nhs_number::validate_array(downcast::<StringArray>(&a, NAME)?);
            Ok(ColumnarValue::Array(Arc::new(valid)))
        }),
    )
}

/// `tre_opted_out(uint64) -> boolean`: whether the number is on the given opt-out set.
pub fn opted_out_udf(set: Arc<OptOutSet>) -> ScalarUDF {
    const NAME: &str = "tre_opted_out";
    create_udf(
        NAME,
        vec![DataType::UInt64],
        DataType::Boolean,
        Volatility::Immutable,
        Arc::new(move |args: &[ColumnarValue]| {
            let a = one_array(args, NAME)?;
            Ok(ColumnarValue::Array(Arc::new(set.member_mask(downcast::<
                UInt64Array,
            >(
                &a, NAME
            )?))))
        }),
    )
}

/// `tre_pseudonym(uint64) -> text`: the pseudonym of docs/contracts.md under the project
/// key.
pub fn pseudonym_udf(p: Pseudonymiser) -> ScalarUDF {
    const NAME: &str = "tre_pseudonym";
    create_udf(
        NAME,
        vec![DataType::UInt64],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(move |args: &[ColumnarValue]| {
            let a = one_array(args, NAME)?;
            let out: StringArray = p.hex_array(downcast::<UInt64Array>(&a, NAME)?);
            Ok(ColumnarValue::Array(Arc::new(out) as ArrayRef))
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pseudonym::ProjectKey;
    use arrow::datatypes::{Field, Schema};
    use arrow::record_batch::RecordBatch;
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn sql_extract_equals_the_kernels() {
        let nhs = StringArray::from(vec![
            Some("943 476 5919"),
            Some("9434765870"),
            Some("9434765918"),
            None,
            Some("9434765870"),
        ]);
        let schema = Arc::new(Schema::new(vec![Field::new("nhs", DataType::Utf8, true)]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(nhs.clone())]).expect("batch");
        let key = ProjectKey::from_bytes(std::array::from_fn(|i| i as u8));
        let opted = Arc::new(OptOutSet::from_numbers(vec![9434765870]));
        let ctx = SessionContext::new();
        ctx.register_batch("events", batch).expect("register");
        ctx.register_udf(nhs_number_udf());
        ctx.register_udf(opted_out_udf(Arc::clone(&opted)));
        ctx.register_udf(pseudonym_udf(key.pseudonymiser()));
        let got = ctx
            .sql(
                "SELECT tre_pseudonym(n) AS p FROM \
                 (SELECT tre_nhs_number(nhs) AS n FROM events) \
                 WHERE n IS NOT NULL AND NOT tre_opted_out(n)",
            )
            .await
            .expect("plan")
            .collect()
            .await
            .expect("run");
        let got: Vec<String> = got
            .iter()
            .flat_map(|b| {
                let c = b
                    .column(0)
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .expect("text");
                c.iter().flatten().map(str::to_string).collect::<Vec<_>>()
            })
            .collect();
        // The same through the kernels directly: only 9434765919 survives.
        let (valid, faults) = nhs_number::validate_array(&nhs);
        assert_eq!(faults.len(), 2, "one bad check digit, one missing");
        let n = nhs_number::NhsNumber::from_u64(9434765919).expect("valid");
        assert!(valid.iter().flatten().any(|v| v == 9434765919));
        assert_eq!(got, vec![key.pseudonymiser().pseudonym(n)]);
    }
}
