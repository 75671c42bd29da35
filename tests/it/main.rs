//! Integration tests.
mod audit;
mod check;
mod determinism;
mod extract;
mod generate;
mod lineage;
mod hardening;
mod service;
mod web;
mod util;
