//! Integration tests.
mod audit;
mod check;
mod extract;
mod generate;
mod hardening;
mod interop;
mod tre;
mod util;
