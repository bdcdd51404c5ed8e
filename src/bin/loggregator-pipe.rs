//! Reads lines from standard input and sends each to the Loggregator agent
//! as a log, so a program whose output cannot be changed can still log:
//!
//! ```text
//! legacy-daemon 2>&1 | loggregator-pipe --source-id my-svc --ca-file … --cert-file … --key-file …
//! ```
//!
//! At the end of input it closes the client, prints the stats to stderr, and
//! exits non-zero if anything was dropped.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use loggregator::{Envelope, IngressClient, Overflow, SourceInfo, TlsConfig};

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
}

fn parse_tag(tag: &str) -> Result<(String, String), String> {
    match tag.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("{tag:?} is not key=value")),
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

    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut stdout = std::io::stdout().lock();
    let mut line = Vec::new();
    let mut tee = args.tee;
    let mut input_ok = true;
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) => {
                // Still close and report: what was read is not lost.
                eprintln!("loggregator-pipe: reading input: {error}");
                input_ok = false;
                break;
            }
        }
        if tee && stdout.write_all(&line).is_err() {
            // The reader downstream went away (for example `| head`): keep
            // sending, stop copying.
            tee = false;
        }
        let payload = line.strip_suffix(b"\n").unwrap_or(&line);
        let payload = payload.strip_suffix(b"\r").unwrap_or(payload);
        let log = Envelope::log(payload).source(source.source_id(), source.instance_id());
        client.emit(if args.stderr {
            log.stderr()
        } else {
            log.stdout()
        });
    }
    if tee {
        let _ = stdout.flush();
    }
    let closed = client.close(args.close_timeout);
    let stats = client.stats();
    eprintln!(
        "loggregator-pipe: lines {} sent {} dropped {} ({:?}) errors {}",
        stats.emitted,
        stats.sent,
        stats.dropped.total(),
        stats.dropped,
        stats.errors
    );
    if let Err(error) = &closed {
        eprintln!("loggregator-pipe: close: {error}");
    }
    Ok(input_ok && closed.is_ok() && stats.dropped.total() == 0)
}
