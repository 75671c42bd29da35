//! tre-pipeline: pseudonymisation and trusted-research-environment pipeline for NHS GP
//! (primary-care) data.
//!
//! Data flows one way: ingest → validate → opt-out → transform/pseudonymise → write;
//! query → check → release. Each module owns one stage; stages talk through Arrow
//! `RecordBatch`es and small typed structs. Nothing in this library reads the clock or
//! the environment inside a stage: the command line passes those in.
#![deny(missing_docs)]

pub mod audit;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod digest;
pub mod disclosure;
pub mod durable;
pub mod error;
pub mod extract;
pub mod generate;
pub mod hmac_sha256;
pub mod ingest;
pub mod intern;
pub mod jobs;
pub mod key_file;
#[cfg(test)]
mod layers;
pub mod lineage;
pub mod manifest;
pub mod nhs_number;
pub mod optout;
pub mod ordered;
pub mod output;
pub mod policy;
pub mod pseudonym;
pub mod quarantine;
pub mod received;
pub mod schema;
pub mod server;
pub mod transform;
pub mod transparency;
pub mod tre;
pub mod trusted_file;
pub mod udf;
pub mod web;
