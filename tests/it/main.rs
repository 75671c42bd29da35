//! Integration tests.
mod audit;
mod check;
mod extract;
mod generate;
mod interop;
mod tre;
mod web;
mod util;
