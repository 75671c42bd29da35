//! The pseudonym function of a cluster: `tre_pseudonym_keyed(fingerprint, n)`, keyed by the
//! executor that runs it, never by the plan.
//!
//! Owns the [`KeyRing`] an executor loads from its own key files when started `--trusted`,
//! and the scalar function over it. A plan names the project only by its key fingerprint
//! (16 hex characters of an HMAC of the key, not key-equivalent); the function looks the
//! fingerprint up in the executor's ring and fails the task when the executor does not hold
//! that key, so a task placed anywhere else fails closed instead of computing anything.
//! Danger: the ring holds keyed HMAC state; it never prints it (`Debug` shows fingerprints)
//! and no error quotes a number or a key.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, StringArray, UInt64Array};
use arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};

use crate::pseudonym::{ProjectKey, Pseudonymiser};

/// The function's name in plans and registries.
pub const PSEUDONYM_FUNCTION: &str = "tre_pseudonym_keyed";

/// The project keys one executor holds, by fingerprint. Empty on an untrusted executor, on
/// the scheduler and on a client.
#[derive(Default, Clone)]
pub struct KeyRing {
    keys: BTreeMap<String, Pseudonymiser>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyRing({:?})", self.fingerprints())
    }
}

impl KeyRing {
    /// Add a project's key (keyed once; the key itself is dropped, and zeroed, by the caller).
    pub fn insert(&mut self, key: &ProjectKey) {
        self.keys.insert(key.fingerprint(), key.pseudonymiser());
    }

    /// The fingerprints held.
    pub fn fingerprints(&self) -> Vec<String> {
        self.keys.keys().cloned().collect()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn pseudonymiser(&self, fingerprint: &str) -> Result<&Pseudonymiser, DataFusionError> {
        self.keys.get(fingerprint).ok_or_else(|| {
            DataFusionError::Execution(format!(
                "{PSEUDONYM_FUNCTION}: this process holds no key with fingerprint {fingerprint}; \
                 pseudonyms are computed only on executors started `tre cluster executor --trusted --key-file` \
                 with that project's key"
            ))
        })
    }
}

/// `tre_pseudonym_keyed(fingerprint text, n uint64) -> text`: the pseudonym of
/// docs/contracts.md under the key of that fingerprint, if `ring` holds it; otherwise the
/// call fails. Volatile, so no planner folds or moves it off the executor.
pub fn keyed_pseudonym_udf(ring: Arc<KeyRing>) -> ScalarUDF {
    create_udf(
        PSEUDONYM_FUNCTION,
        vec![DataType::Utf8, DataType::UInt64],
        DataType::Utf8,
        Volatility::Volatile,
        Arc::new(move |args: &[ColumnarValue]| {
            let [fp, n] = args else {
                return Err(DataFusionError::Plan(format!(
                    "{PSEUDONYM_FUNCTION} takes a key fingerprint and a number"
                )));
            };
            let fingerprint = match fp {
                ColumnarValue::Scalar(ScalarValue::Utf8(Some(s))) => s.clone(),
                _ => {
                    return Err(DataFusionError::Plan(format!(
                        "{PSEUDONYM_FUNCTION}: the key fingerprint must be a text literal"
                    )));
                }
            };
            let p = ring.pseudonymiser(&fingerprint)?;
            let a = n.to_array(1)?;
            let numbers = a.as_any().downcast_ref::<UInt64Array>().ok_or_else(|| {
                DataFusionError::Plan(format!("{PSEUDONYM_FUNCTION}: numbers must be uint64"))
            })?;
            let out: StringArray = p.hex_array(numbers);
            Ok(ColumnarValue::Array(Arc::new(out) as ArrayRef))
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Field, Schema};
    use arrow::record_batch::RecordBatch;
    use datafusion::prelude::SessionContext;

    fn key() -> ProjectKey {
        ProjectKey::from_bytes(std::array::from_fn(|i| (i as u8) ^ 0x5a))
    }

    async fn run(ring: KeyRing, fp: &str) -> Result<Vec<RecordBatch>, DataFusionError> {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::UInt64, true)]));
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(UInt64Array::from(vec![Some(9434765919), None]))],
        )?;
        let ctx = SessionContext::new();
        ctx.register_batch("t", batch)?;
        ctx.register_udf(keyed_pseudonym_udf(Arc::new(ring)));
        ctx.sql(&format!("SELECT {PSEUDONYM_FUNCTION}('{fp}', n) FROM t"))
            .await?
            .collect()
            .await
    }

    #[tokio::test]
    async fn the_holder_of_the_key_computes_the_contract_pseudonym() {
        let k = key();
        let mut ring = KeyRing::default();
        ring.insert(&k);
        let got = run(ring, &k.fingerprint()).await.expect("runs");
        let col = got[0]
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("text")
            .clone();
        let n = crate::nhs_number::NhsNumber::from_u64(9434765919).expect("valid");
        assert_eq!(col.value(0), k.pseudonymiser().pseudonym(n));
        assert!(col.is_null(1));
    }

    #[tokio::test]
    async fn anyone_else_fails_closed_without_quoting_the_key() {
        let k = key();
        let err = run(KeyRing::default(), &k.fingerprint())
            .await
            .expect_err("no key, no pseudonym");
        let text = err.to_string();
        assert!(text.contains("holds no key"), "{text}");
        assert!(text.contains(&k.fingerprint()));
        let mut other = KeyRing::default();
        other.insert(&ProjectKey::from_bytes([7; 32]));
        assert!(run(other, &k.fingerprint()).await.is_err());
        assert!(
            !format!("{:?}", {
                let mut r = KeyRing::default();
                r.insert(&k);
                r
            })
            .contains("Pseudonymiser")
        );
    }
}
