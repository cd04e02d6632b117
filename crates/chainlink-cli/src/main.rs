//! `chainlink`: run a chain of containers from a YAML or JSON file.

mod args;
mod commands;
mod ending;
mod input;
mod render;
mod signals;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let ending = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime.block_on(commands::dispatch(cli.command)),
        Err(e) => ending::Ending::Input(format!("cannot start the async runtime: {e}")),
    };
    if let Some(message) = ending.message() {
        // Not eprintln!, which panics when standard error is gone (a closed terminal: SIGHUP).
        let _ = writeln!(std::io::stderr(), "chainlink: error: {message}");
    }
    ExitCode::from(ending::exit_code(&ending))
}
