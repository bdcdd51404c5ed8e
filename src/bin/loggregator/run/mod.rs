//! `loggregator run [FLAGS] -- COMMAND [ARGS...]`: runs a service that
//! cannot call `emit()`, its stdout lines as `OUT` logs and its stderr
//! lines as `ERR`, each stream joined on its own; the signals a
//! supervisor sends reach it, and its exit code is ours.
//!
//! The child never waits on the agent unless `--block` says so: a full
//! queue drops and counts, as the library does. When it exits, its last
//! lines are delivered within `--close-timeout`.

mod child;
mod signals;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use loggregator::Envelope;

use crate::connection::ConnectionArgs;
use crate::forward::{Forwarded, MultilineArgs, forward, read_lines};

const PROGRAM: &str = "loggregator run";

/// Runs a command, its stdout and stderr lines sent to the agent as logs.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Also copy the child's stdout and stderr to ours, byte for byte (so
    /// bpm's log files still get them).
    #[arg(long)]
    pub tee: bool,
    /// Wait for room when the agent falls behind instead of dropping lines
    /// (this slows the child, whose writes then wait).
    #[arg(long)]
    pub block: bool,
    /// How long to wait, once the child has exited, for its last lines to
    /// be read and delivered.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub close_timeout: Duration,
    #[command(flatten)]
    pub multiline: MultilineArgs,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// Runs the child to its end; the exit code is the child's, 128 + the
/// signal that ended it, 127 or 126 when it could not be started, and 2
/// when our own flags or files are wrong (the child is then not started).
pub fn run(args: &RunArgs) -> ExitCode {
    match run_child(args) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("{PROGRAM}: {error}");
            ExitCode::from(2)
        }
    }
}

fn run_child(args: &RunArgs) -> Result<u8, Box<dyn std::error::Error>> {
    let client = args.connection.client(args.block)?;
    let source = args.connection.source()?;
    // Taken before the child starts, so that none sent meanwhile is lost.
    let forwarding = signals::Forwarding::start()?;
    let mut child = match child::spawn(&args.command) {
        Ok(child) => child,
        Err(cannot) => {
            forwarding.stop();
            eprintln!("{PROGRAM}: {}", cannot.message);
            let _ = client.close(args.close_timeout);
            return Ok(cannot.exit_code);
        }
    };
    let forwarding = forwarding.to(child.id());
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let (ended, streams) = crossbeam_channel::bounded::<(bool, Forwarded)>(2);
    std::thread::scope(|scope| -> Result<u8, Box<dyn std::error::Error>> {
        for (is_stderr, lines) in [
            (false, read_lines("child stdout", stdout)?),
            (true, read_lines("child stderr", stderr)?),
        ] {
            let (ended, client, source) = (ended.clone(), &client, &source);
            let joiner = args.multiline.joiner();
            let tee = args.tee;
            // Never joined: the process exits before the scope ends, so a
            // grandchild that keeps a pipe open cannot keep us past
            // --close-timeout.
            std::thread::Builder::new()
                .name(
                    if is_stderr {
                        "forward stderr"
                    } else {
                        "forward stdout"
                    }
                    .into(),
                )
                .spawn_scoped(scope, move || {
                    let send = |payload: &[u8]| {
                        let log = Envelope::log(payload);
                        let log = if is_stderr { log } else { log.stdout() };
                        client.emit(log.source(source.source_id(), source.instance_id()));
                    };
                    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
                    let copy: Option<&mut dyn Write> = match (tee, is_stderr) {
                        (false, _) => None,
                        (true, false) => Some(&mut out),
                        (true, true) => Some(&mut err),
                    };
                    let forwarded = forward(PROGRAM, lines, joiner, copy, &send);
                    let _ = ended.send((is_stderr, forwarded));
                })?;
        }
        drop(ended);
        let status = match child.wait() {
            Ok(status) => status,
            Err(error) => {
                // Not returned: the scope would wait for the streams.
                eprintln!("{PROGRAM}: waiting for the child: {error}");
                std::process::exit(1);
            }
        };
        forwarding.stop();
        let deadline = Instant::now() + args.close_timeout;
        let (mut out, mut err) = (None, None);
        while out.is_none() || err.is_none() {
            match streams.recv_deadline(deadline) {
                Ok((true, forwarded)) => err = Some(forwarded),
                Ok((false, forwarded)) => out = Some(forwarded),
                Err(_) => break,
            }
        }
        let closed = client.close(deadline.saturating_duration_since(Instant::now()));
        let stats = client.stats();
        let summary = |name: &str, stream: &Option<Forwarded>| match stream {
            Some(forwarded) => format!("{name} {}", forwarded.summary()),
            None => format!("{name} still open"),
        };
        // The exit line.
        eprintln!(
            "{PROGRAM}: {}; {}; {stats}; {}",
            summary("stdout", &out),
            summary("stderr", &err),
            child::describe(status)
        );
        if let Err(error) = &closed {
            eprintln!("{PROGRAM}: close: {error}");
        }
        // Our exit does not wait for a stream a grandchild still holds.
        std::process::exit(i32::from(child::exit_code(status)));
    })
}
