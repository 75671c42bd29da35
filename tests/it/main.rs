//! Integration tests.
mod audit;
mod check;
mod crash;
mod determinism;
mod extract;
mod generate;
mod hardening;
mod lineage;
mod records;
mod runtime;
mod service;
mod service_crash;
mod transparency;
mod util;
mod web;
