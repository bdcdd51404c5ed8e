//! Reads lines from standard input and sends each to the Loggregator agent
//! as a log, so a program whose output cannot be changed can still log:
//!
//! ```text
//! legacy-daemon 2>&1 | loggregator-pipe --source-id my-svc --ca-file … --cert-file … --key-file …
//! ```
//!
//! With `--multiline-start REGEX` a line that matches begins a log and the
//! lines after it join it, so a stack trace arrives as one log.
//!
//! At the end of input it closes the client, prints the stats to stderr, and
//! exits non-zero if anything was dropped.

mod multiline;

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use crossbeam_channel::RecvTimeoutError;
use loggregator::{Envelope, IngressClient, Overflow, SourceInfo, TlsConfig};
use regex::bytes::Regex;

use multiline::Multiline;

/// The default `--multiline-max-bytes`: the size of the largest log
/// envelope Diego sends, which every agent and reader downstream takes.
const DEFAULT_MULTILINE_MAX_BYTES: usize = 61_440;
/// The largest `--multiline-max-bytes`: what fits the client's batches
/// (1 MiB) with room left for the envelope's tags.
const MAX_MULTILINE_MAX_BYTES: usize = 1_000_000;
/// Lines read ahead of the sender: a bound on what the reader holds.
const LINES_AHEAD: usize = 64;

/// Sends each line of standard input to a Loggregator agent as a log.
#[derive(Parser, Debug)]
#[command(name = "loggregator-pipe", version)]
struct Args {
    /// The agent's gRPC address.
    #[arg(long, default_value = "localhost:3458")]
    agent_addr: String,
    /// The Loggregator CA certificate (PEM).
    #[arg(long)]
    ca_file: PathBuf,
    /// The client certificate (PEM), signed by the CA, with clientAuth usage.
    #[arg(long)]
    cert_file: PathBuf,
    /// The client private key (PEM).
    #[arg(long)]
    key_file: PathBuf,
    /// The name verified on the agent's certificate.
    #[arg(long, default_value = "metron")]
    server_name: String,
    /// The source id of every log (default in a Cloud Foundry app container:
    /// the app's id from VCAP_APPLICATION).
    #[arg(long)]
    source_id: Option<String>,
    /// The instance id of every log (default: CF_INSTANCE_INDEX in Cloud
    /// Foundry, otherwise 0).
    #[arg(long)]
    instance_id: Option<String>,
    /// A tag on every log, as key=value; may be repeated.
    #[arg(long = "tag", value_parser = parse_tag)]
    tags: Vec<(String, String)>,
    /// Mark the logs as stderr (ERR) instead of stdout (OUT).
    #[arg(long)]
    stderr: bool,
    /// Also copy every line to standard output, to sit inside a pipeline.
    #[arg(long)]
    tee: bool,
    /// Wait for room when the agent falls behind instead of dropping lines
    /// (this slows the program writing to the pipe).
    #[arg(long)]
    block: bool,
    /// How long to wait at the end of input for the last lines to be delivered.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    close_timeout: Duration,
    /// A line matching this regular expression begins a new log; every
    /// other line joins the log before it, after a newline (for example
    /// `'^\d{4}-\d{2}-\d{2} '` for lines that begin with a date).
    #[arg(long, value_name = "REGEX")]
    multiline_start: Option<Regex>,
    /// How long a log waits for its next line before it is sent.
    #[arg(
        long,
        default_value = "1s",
        value_parser = humantime::parse_duration,
        requires = "multiline_start"
    )]
    multiline_timeout: Duration,
    /// The longest a joined log grows, in bytes; the line that would make
    /// it longer begins the next log (counted as split at exit).
    #[arg(
        long,
        default_value_t = DEFAULT_MULTILINE_MAX_BYTES,
        value_parser = parse_max_bytes,
        requires = "multiline_start"
    )]
    multiline_max_bytes: usize,
}

fn parse_tag(tag: &str) -> Result<(String, String), String> {
    match tag.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("{tag:?} is not key=value")),
    }
}

fn parse_max_bytes(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(bytes) if (1..=MAX_MULTILINE_MAX_BYTES).contains(&bytes) => Ok(bytes),
        _ => Err(format!(
            "{text:?} is not a number of bytes from 1 to {MAX_MULTILINE_MAX_BYTES}"
        )),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("loggregator-pipe: {error}");
            ExitCode::from(2)
        }
    }
}

/// Returns whether every line was delivered.
fn run(args: &Args) -> Result<bool, Box<dyn std::error::Error>> {
    let tls = TlsConfig::from_files(&args.ca_file, &args.cert_file, &args.key_file)?
        .server_name(args.server_name.as_str());
    let mut builder = IngressClient::builder()
        .addr(args.agent_addr.as_str())
        .tls(tls)
        .overflow(if args.block {
            Overflow::Block
        } else {
            Overflow::DropNewest
        });
    for (key, value) in &args.tags {
        builder = builder.tag(key.as_str(), value.as_str());
    }
    let client = builder.build()?;
    let source = match (&args.source_id, SourceInfo::from_cf_env()) {
        (Some(id), cf) => {
            let cf_index = cf.ok().map(|cf| cf.instance_id().to_string());
            let instance = args
                .instance_id
                .clone()
                .or(cf_index)
                .unwrap_or_else(|| "0".into());
            SourceInfo::new(id.as_str(), instance)
        }
        (None, Ok(cf)) => match &args.instance_id {
            Some(instance) => SourceInfo::new(cf.source_id(), instance.as_str()),
            None => cf,
        },
        (None, Err(error)) => {
            return Err(format!("--source-id is required outside Cloud Foundry ({error})").into());
        }
    };

    let send = |payload: &[u8]| {
        let log = Envelope::log(payload);
        let log = if args.stderr { log } else { log.stdout() };
        client.emit(log.source(source.source_id(), source.instance_id()));
    };
    let mut joiner = args
        .multiline_start
        .clone()
        .map(|start| Multiline::new(start, args.multiline_timeout, args.multiline_max_bytes));
    let lines = read_lines();
    let mut stdout = std::io::stdout().lock();
    let mut tee = args.tee;
    let mut input_ok = true;
    let mut line_count: u64 = 0;
    let mut records: u64 = 0;
    loop {
        let next = match joiner.as_ref().and_then(Multiline::deadline) {
            Some(deadline) => lines.recv_deadline(deadline),
            None => lines.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let (mut line, read_at) = match next {
            Ok(Ok(read)) => read,
            Ok(Err(error)) => {
                // Still close and report: what was read is not lost.
                eprintln!("loggregator-pipe: reading input: {error}");
                input_ok = false;
                break;
            }
            Err(RecvTimeoutError::Timeout) => {
                if let Some(record) = joiner.as_mut().and_then(|j| j.expire(Instant::now())) {
                    records += 1;
                    send(&record);
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        line_count += 1;
        if tee && stdout.write_all(&line).is_err() {
            // The reader downstream went away (for example `| head`): keep
            // sending, stop copying.
            tee = false;
        }
        strip_line_ending(&mut line);
        match &mut joiner {
            Some(joiner) => {
                // Timed by when it was read, not when this loop got to it:
                // a blocked emit must not make a late line join the record
                // its timeout had already ended.
                let ended = joiner.expire(read_at);
                let completed = joiner.push(line, read_at);
                for record in ended.into_iter().chain(completed) {
                    records += 1;
                    send(&record);
                }
            }
            None => send(&line),
        }
    }
    if let Some(record) = joiner.as_mut().and_then(Multiline::finish) {
        records += 1;
        send(&record);
    }
    if tee {
        let _ = stdout.flush();
    }
    let closed = client.close(args.close_timeout);
    let stats = client.stats();
    let joined = match &joiner {
        Some(joiner) => format!(" records {records} split {}", joiner.split),
        None => String::new(),
    };
    eprintln!("loggregator-pipe: lines {line_count}{joined} {stats}");
    if let Err(error) = &closed {
        eprintln!("loggregator-pipe: close: {error}");
    }
    Ok(input_ok && closed.is_ok() && stats.dropped.total() == 0)
}

/// Reads standard input on a thread of its own, so that a joined log can
/// be sent when its time is up while no line comes, and so that each line
/// is timed when it is read (up to [`LINES_AHEAD`] lines ahead of an emit
/// that waits for room). Each line keeps its line ending (for `--tee`);
/// the channel ends with the input, after an error if reading failed.
fn read_lines() -> crossbeam_channel::Receiver<std::io::Result<(Vec<u8>, Instant)>> {
    let (lines, received) = crossbeam_channel::bounded(LINES_AHEAD);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        loop {
            let mut line = Vec::new();
            let read = match input.read_until(b'\n', &mut line) {
                Ok(0) => return,
                Ok(_) => Ok((line, Instant::now())),
                Err(error) => Err(error),
            };
            let failed = read.is_err();
            if lines.send(read).is_err() || failed {
                return;
            }
        }
    });
    received
}

fn strip_line_ending(line: &mut Vec<u8>) {
    for ending in [b'\n', b'\r'] {
        if line.last() == Some(&ending) {
            line.pop();
        }
    }
}
