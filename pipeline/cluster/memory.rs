//! A TRE job's memory limit on the cluster's executors (only with the `cluster` feature).
//!
//! Owns the one session option that carries a job's memory limit from the job's process
//! to the executors (`tre.job_memory_bytes`, [`TreJobOptions`]), and the executor's memory
//! pools: one executor-wide pool (`--memory-pool-size`, or 70% of the machine) that every
//! task draws from, and, for a session that carries a job limit, a [`JobCappedPool`] on
//! top of it that all that session's tasks on this executor share, so a job's operators
//! on one executor never hold more than the job's limit. Danger: the option is a number of
//! bytes and nothing else; no key, path or patient value ever goes into a session option.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::common::config::{ConfigEntry, ConfigExtension, ExtensionOptions};
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::{
    FairSpillPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::SessionConfig;

use super::ClusterError;

/// The `tre.*` session options: set by a job's process, read by the executors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreJobOptions {
    /// The job's memory pool in bytes (its `QueryLimits::pool_bytes`); 0 = no job
    /// limit (the extract's pseudonym jobs), the executor's pool only.
    pub job_memory_bytes: u64,
}

impl ConfigExtension for TreJobOptions {
    const PREFIX: &'static str = "tre";
}

impl ExtensionOptions for TreJobOptions {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn cloned(&self) -> Box<dyn ExtensionOptions> {
        Box::new(self.clone())
    }

    fn set(&mut self, key: &str, value: &str) -> datafusion::error::Result<()> {
        match key {
            "job_memory_bytes" => {
                self.job_memory_bytes = value.parse().map_err(|_| {
                    DataFusionError::Configuration(format!(
                        "tre.job_memory_bytes must be a number of bytes, not {value:?}"
                    ))
                })?;
                Ok(())
            }
            _ => Err(DataFusionError::Configuration(format!(
                "tre.{key} is not a tre session option (there is only tre.job_memory_bytes)"
            ))),
        }
    }

    // Keys in full: Ballista sends `entries()` as they are and sets them back by key.
    fn entries(&self) -> Vec<ConfigEntry> {
        vec![ConfigEntry {
            key: format!("{}.job_memory_bytes", Self::PREFIX),
            value: Some(self.job_memory_bytes.to_string()),
            description: "a TRE job's memory limit on each executor, bytes (0: none)",
        }]
    }
}

/// A session config that knows the `tre.*` options: what the scheduler and the executors
/// start every session from (an option a role does not know is silently dropped there).
pub fn config_with_tre_options() -> SessionConfig {
    ballista_core::utils::default_config_producer().with_option_extension(TreJobOptions::default())
}

/// `config` carrying the job's memory limit of `bytes` to the executors.
pub fn with_job_memory(config: SessionConfig, bytes: u64) -> SessionConfig {
    config.with_option_extension(TreJobOptions {
        job_memory_bytes: bytes,
    })
}

/// The job memory limit a session carries, if any.
pub fn job_memory(config: &SessionConfig) -> Option<usize> {
    config
        .options()
        .extensions
        .get::<TreJobOptions>()
        .map(|o| o.job_memory_bytes)
        .filter(|&b| b > 0)
        .map(|b| usize::try_from(b).unwrap_or(usize::MAX))
}

/// The executor's own budget when `--memory-pool-size` is not given: 70% of the
/// machine's memory (`MemTotal`), as Ballista's default.
pub fn default_executor_budget() -> Result<u64, ClusterError> {
    let text = std::fs::read_to_string("/proc/meminfo").map_err(|e| ClusterError::Io {
        what: "read /proc/meminfo for the executor's memory budget (or pass --memory-pool-size)"
            .into(),
        source: e,
    })?;
    let kib = text
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| ClusterError::Start {
            role: "executor",
            message:
                "cannot read the machine's memory from /proc/meminfo; pass --memory-pool-size BYTES"
                    .into(),
        })?;
    Ok(kib.saturating_mul(1024) / 10 * 7)
}

/// How an executor builds the runtime of a session (Ballista calls it once per session
/// and shares the result among the session's tasks on this executor): every session draws
/// from `shared`, the executor-wide pool; a session that carries a job limit is capped
/// at that limit on top. Spill files go to `temp_dir`.
pub fn runtime_producer(
    shared: Arc<dyn MemoryPool>,
    temp_dir: std::path::PathBuf,
) -> ballista_core::RuntimeProducer {
    Arc::new(move |config: &SessionConfig| {
        let pool: Arc<dyn MemoryPool> = match job_memory(config) {
            Some(cap) => {
                eprintln!(
                    "tre cluster executor: a job's session here shares a memory pool of at most {cap} bytes (the job's limit)"
                );
                Arc::new(JobCappedPool::new(cap, Arc::clone(&shared)))
            }
            None => Arc::clone(&shared),
        };
        RuntimeEnvBuilder::new()
            .with_temp_file_path(temp_dir.clone())
            .with_memory_pool(pool)
            .build_arc()
    })
}

/// The executor-wide pool of `bytes`.
pub fn executor_pool(bytes: u64) -> Arc<dyn MemoryPool> {
    Arc::new(FairSpillPool::new(
        usize::try_from(bytes).unwrap_or(usize::MAX),
    ))
}

/// A pool that lets its reservations grow only while their total stays under `cap`, and
/// only as far as the executor-wide pool beneath it allows.
#[derive(Debug)]
pub struct JobCappedPool {
    cap: usize,
    used: AtomicUsize,
    inner: Arc<dyn MemoryPool>,
}

impl JobCappedPool {
    /// A pool of at most `cap` bytes drawn from `inner`.
    pub fn new(cap: usize, inner: Arc<dyn MemoryPool>) -> Self {
        JobCappedPool {
            cap,
            used: AtomicUsize::new(0),
            inner,
        }
    }
}

impl std::fmt::Display for JobCappedPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tre job pool: {} of {} bytes used, within {}",
            self.used.load(Ordering::Relaxed),
            self.cap,
            self.inner
        )
    }
}

impl MemoryPool for JobCappedPool {
    fn name(&self) -> &str {
        "tre-job-capped"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.inner.register(consumer);
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.inner.unregister(consumer);
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.inner.grow(reservation, additional);
        self.used.fetch_add(additional, Ordering::Relaxed);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.inner.shrink(reservation, shrink);
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(shrink))
            });
    }

    fn try_grow(
        &self,
        reservation: &MemoryReservation,
        additional: usize,
    ) -> datafusion::error::Result<()> {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                u.checked_add(additional).filter(|&n| n <= self.cap)
            })
            .map_err(|_| {
                DataFusionError::ResourcesExhausted(format!(
                    "the job's memory limit on this executor ({} bytes) is used up: cannot reserve {additional} more bytes for {}",
                    self.cap,
                    reservation.consumer().name()
                ))
            })?;
        if let Err(e) = self.inner.try_grow(reservation, additional) {
            self.shrink_count(additional);
            return Err(e);
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.cap)
    }
}

impl JobCappedPool {
    fn shrink_count(&self, n: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(n))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballista_core::extension::SessionConfigHelperExt;

    #[test]
    fn the_job_limit_travels_as_a_session_option_and_caps_the_session_pool() {
        let client = with_job_memory(SessionConfig::new(), 4096);
        // What the scheduler and the executor do with the client's settings.
        let received =
            config_with_tre_options().update_from_key_value_pair(&client.to_key_value_pairs());
        assert_eq!(job_memory(&received), Some(4096));
        // A role that does not know the option drops it (so every role must know it).
        let unaware = ballista_core::utils::default_config_producer()
            .update_from_key_value_pair(&client.to_key_value_pairs());
        assert_eq!(job_memory(&unaware), None);

        let shared = executor_pool(1 << 20);
        let producer = runtime_producer(Arc::clone(&shared), std::env::temp_dir());
        let rt = producer(&received).expect("runtime");
        assert!(matches!(
            rt.memory_pool.memory_limit(),
            MemoryLimit::Finite(4096)
        ));
        let r = MemoryConsumer::new("test").register(&rt.memory_pool);
        r.try_grow(4000).expect("under the job's limit");
        let err = r.try_grow(200).expect_err("over the job's limit");
        assert!(
            matches!(err, DataFusionError::ResourcesExhausted(_)),
            "{err}"
        );
        assert!(err.to_string().contains("4096 bytes"), "{err}");
        // The executor-wide pool saw the job's reservation.
        assert_eq!(shared.reserved(), 4000);
        r.shrink(1000);
        assert_eq!(shared.reserved(), 3000);
        r.try_grow(1000).expect("room again");
        drop(r);
        assert_eq!(shared.reserved(), 0);

        // Without a job limit, the executor's pool alone.
        let rt = producer(&config_with_tre_options()).expect("runtime");
        assert!(matches!(
            rt.memory_pool.memory_limit(),
            MemoryLimit::Finite(n) if n == 1 << 20
        ));
    }

    #[test]
    fn a_job_limit_above_the_executors_pool_is_held_to_the_executors_pool() {
        let shared = executor_pool(1000);
        let pool: Arc<dyn MemoryPool> = Arc::new(JobCappedPool::new(1 << 30, Arc::clone(&shared)));
        let r = MemoryConsumer::new("test").register(&pool);
        assert!(r.try_grow(2000).is_err());
        assert_eq!(pool.reserved(), 0, "a refused reservation is not counted");
        r.try_grow(900).expect("within both");
        assert_eq!(pool.reserved(), 900);
    }
}
