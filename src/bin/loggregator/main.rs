//! The `loggregator` command: a service that cannot call `emit()` still
//! logs through the agent on its VM.
//!
//! - `loggregator pipe`: each line of standard input as a log.
//! - `loggregator run -- COMMAND`: a service's stdout and stderr lines as
//!   OUT and ERR logs, its signals forwarded, its exit code kept.
//! - `loggregator tail --state-file PATH FILE_OR_GLOB...`: log files
//!   followed through rotation, a line a log, resumed after a restart
//!   where the agent's confirmation left off.
//! - `loggregator check`: the certificates, the agent and one delivery,
//!   checked one by one, each problem with what to do.
//!
//! Every subcommand takes the connection flags of [`connection`], each
//! also from a `LOGGREGATOR_*` environment variable.

#![forbid(unsafe_code)]

mod check;
mod connection;
mod forward;
mod multiline;
mod pipe;
mod run;
mod tail;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Sends a legacy service's output to the Loggregator agent on its VM.
#[derive(Parser, Debug)]
#[command(name = "loggregator", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Sends each line of standard input to the agent as a log.
    Pipe(pipe::PipeArgs),
    /// Runs a command, its stdout lines sent as OUT logs and its stderr
    /// lines as ERR; forwards signals to it and exits with its code.
    Run(run::RunArgs),
    /// Follows log files as `tail -F` does, each line sent as a log;
    /// resumes after a restart where the agent's confirmation left off.
    Tail(tail::TailArgs),
    /// Checks the certificate files, the agent and one confirmed delivery;
    /// exits 1 when a check FAILed.
    Check(check::CheckArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Pipe(args) => {
            const PROGRAM: &str = "loggregator pipe";
            match pipe::pipe(PROGRAM, &args) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(error) => {
                    eprintln!("{PROGRAM}: {error}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Run(args) => run::run(&args),
        Command::Tail(args) => tail::tail(&args),
        Command::Check(args) => {
            if check::check(&args) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
    }
}
