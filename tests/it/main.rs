//! Integration tests.
mod check;
mod extract;
mod generate;
mod interop;
mod util;
mod tre;
