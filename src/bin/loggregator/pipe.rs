//! `loggregator pipe`: each line of standard input to the agent as a log,
//! so a program whose output cannot be changed can still log:
//!
//! ```text
//! legacy-daemon 2>&1 | loggregator pipe --source-id my-svc --ca-file … --cert-file … --key-file …
//! ```
//!
//! At the end of input it closes the client, prints the stats to stderr, and
//! exits non-zero if anything was dropped.

use std::time::Duration;

use loggregator::Envelope;

use crate::connection::ConnectionArgs;
use crate::forward::{MultilineArgs, forward, read_lines};

/// Sends each line of standard input to a Loggregator agent as a log.
#[derive(clap::Args, Debug)]
pub struct PipeArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Mark the logs as stderr (ERR) instead of stdout (OUT).
    #[arg(long)]
    pub stderr: bool,
    /// Also copy every line to standard output, to sit inside a pipeline.
    #[arg(long)]
    pub tee: bool,
    /// Wait for room when the agent falls behind instead of dropping lines
    /// (this slows the program writing to the pipe).
    #[arg(long)]
    pub block: bool,
    /// How long to wait at the end of input for the last lines to be delivered.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub close_timeout: Duration,
    #[command(flatten)]
    pub multiline: MultilineArgs,
}

/// Returns whether every line was delivered; `program` begins each
/// message (`loggregator pipe` or its alias `loggregator-pipe`).
pub fn pipe(program: &str, args: &PipeArgs) -> Result<bool, Box<dyn std::error::Error>> {
    let client = args.connection.client(args.block)?;
    let source = args.connection.source()?;
    let send = |payload: &[u8]| {
        let log = Envelope::log(payload);
        let log = if args.stderr { log } else { log.stdout() };
        client.emit(log.source(source.source_id(), source.instance_id()));
    };
    let lines = read_lines("stdin", std::io::stdin())?;
    let mut stdout = std::io::stdout();
    let tee: Option<&mut dyn std::io::Write> = if args.tee { Some(&mut stdout) } else { None };
    let forwarded = forward(program, lines, args.multiline.joiner(), tee, &send);
    let closed = client.close(args.close_timeout);
    let stats = client.stats();
    // The exit line.
    eprintln!("{program}: {} {stats}", forwarded.summary());
    if let Err(error) = &closed {
        eprintln!("{program}: close: {error}");
    }
    Ok(forwarded.read_ok && closed.is_ok() && stats.dropped.total() == 0)
}
