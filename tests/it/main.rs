//! Integration tests.
mod audit;
mod check;
mod crash;
mod determinism;
mod extract;
mod generate;
mod hardening;
mod lineage;
mod runtime;
mod service;
mod util;
mod web;
