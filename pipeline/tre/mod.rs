//! The trusted research environment: workspaces, approved projects and users, query jobs.
//!
//! Owns what happens after an extract lands inside the TRE. A [`workspace::Workspace`]
//! holds, per approved project, its policy, its pseudonymised datasets (the output of
//! `tre extract`), job results and release requests; [`query`] runs analyst SQL over one
//! project's datasets only and puts every result through the disclosure checks. Danger:
//! this is where analysts touch data, so access is decided here from the project policy
//! (approved users, readable datasets) and refused otherwise; nothing in this module
//! prints row-level results.

pub mod purge;
pub mod query;
pub mod release;
pub mod workspace;
