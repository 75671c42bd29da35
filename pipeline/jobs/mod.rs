//! Query jobs run by the server in child processes.
//!
//! [`runner`] holds the queue and the workers; [`child`] is the body of the job's child
//! process (the `tre` binary itself), which applies its rlimits before any work. The job
//! records and their states live in [`crate::tre::job`] (re-exported here), so the TRE's
//! release path never depends on the process machinery. Danger: a job's result may be
//! row-level; nothing here shows result rows, and the reason a job failed is already
//! reduced (no DataFusion text that may quote values).

pub mod child;
pub mod runner;

pub use crate::tre::job::{JobError, JobRecord, JobState, commit, create, load};
