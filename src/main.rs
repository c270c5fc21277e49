//! The `daena-trace-agent` binary: parses the command line and hands over to the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    cli::limit_malloc_arenas();
    cli::Cli::parse().execute()
}
