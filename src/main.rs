//! The `daena-trace-agent` binary: parses the command line and hands over to the library.

// Everything else forbids unsafe code (`lib.rs`, `cli.rs`); `malloc` alone needs it.
#![deny(unsafe_code)]

mod cli;
#[allow(
    unsafe_code,
    reason = "mallopt and malloc_trim are C calls into glibc's allocator"
)]
mod malloc;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    malloc::limit_malloc_arenas();
    cli::Cli::parse().execute()
}
