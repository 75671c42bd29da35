//! Integration tests.
mod audit;
mod check;
mod extract;
mod generate;
mod interop;
mod lineage;
mod tre;
mod util;
