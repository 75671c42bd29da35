//! Integration tests.
mod audit;
mod check;
#[cfg(feature = "cluster")]
mod cluster;
mod crash;
mod determinism;
mod extract;
mod generate;
mod hardening;
mod lineage;
mod records;
mod refresh;
mod release_gate;
mod review;
mod runtime;
mod service;
mod service_crash;
mod transparency;
mod util;
mod web;
