//! Integration tests.
mod audit;
mod check;
mod determinism;
mod extract;
mod generate;
mod lineage;
mod tre;
mod util;
