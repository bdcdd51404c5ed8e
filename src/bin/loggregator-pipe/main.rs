//! `loggregator-pipe`: the name `loggregator pipe` had before the
//! `loggregator` command gathered its subcommands; the same flags, the
//! same behaviour, built from the same modules.

#![forbid(unsafe_code)]

#[path = "../loggregator/connection.rs"]
mod connection;
#[path = "../loggregator/forward.rs"]
mod forward;
#[path = "../loggregator/multiline.rs"]
mod multiline;
#[path = "../loggregator/pipe.rs"]
mod pipe;

use std::process::ExitCode;

use clap::Parser;

/// Sends each line of standard input to a Loggregator agent as a log
/// (the same as `loggregator pipe`).
#[derive(Parser, Debug)]
#[command(name = "loggregator-pipe", version)]
struct Cli {
    #[command(flatten)]
    pipe: pipe::PipeArgs,
}

fn main() -> ExitCode {
    const PROGRAM: &str = "loggregator-pipe";
    match pipe::pipe(PROGRAM, &Cli::parse().pipe) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("{PROGRAM}: {error}");
            ExitCode::from(2)
        }
    }
}
