//! Integration tests.
mod audit;
mod check;
mod extract;
mod generate;
mod interop;
mod service;
mod web;
mod util;
