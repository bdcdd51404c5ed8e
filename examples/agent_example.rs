//! The Loggregator docs' agent integration example, as a blocking Rust program.
//!
//! Every `--log-interval` it emits a log; every `--metric-interval` (5 s) a
//! counter (delta `--metric-count`), a gauge with this process's memory and
//! CPU, and an event. Ctrl-C or the end of `--duration` closes the client and prints its
//! stats.
//!
//! ```text
//! cargo run --example agent_example -- --ca-file ca.crt --cert-file client.crt --key-file client.key
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use crossbeam_channel::{after, bounded, never, select, tick};
use loggregator::{Envelope, IngressClient, TlsConfig};

/// Sends logs and metrics to a Loggregator agent over mutual TLS.
#[derive(Parser, Debug)]
#[command(version)]
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
    /// The source id of every envelope.
    #[arg(long, default_value = "example-app")]
    source_id: String,
    /// How often to emit a log, for example 1s or 250ms.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    log_interval: Duration,
    /// The delta of the counter emitted every metric interval.
    #[arg(long, default_value_t = 10)]
    metric_count: u64,
    /// How often to emit the counter, gauge and event.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    metric_interval: Duration,
    /// Stop after this long, for example 30s; runs until Ctrl-C when absent.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let tls = TlsConfig::from_files(&args.ca_file, &args.cert_file, &args.key_file)?
        .server_name(args.server_name.as_str());
    let client = IngressClient::builder()
        .addr(args.agent_addr.as_str())
        .tls(tls)
        .build()?;

    let (stop_tx, stop) = bounded(1);
    ctrlc::set_handler(move || {
        let _ = stop_tx.try_send(());
    })?;
    let end = args.duration.map_or_else(never, after);
    let logs = tick(args.log_interval);
    let metrics = tick(args.metric_interval);
    let mut cpu = CpuMeter::new();
    let mut sent_logs = 0u64;
    println!(
        "sending to {} as {}; Ctrl-C to stop",
        args.agent_addr, args.source_id
    );
    loop {
        select! {
            recv(stop) -> _ => break,
            recv(end) -> _ => break,
            recv(logs) -> _ => {
                sent_logs += 1;
                client.emit(
                    Envelope::log(format!("log message {sent_logs} from {}", args.source_id))
                        .source_id(args.source_id.as_str())
                        .stdout(),
                );
            }
            recv(metrics) -> _ => {
                client.emit(
                    Envelope::counter("example_counter")
                        .source_id(args.source_id.as_str())
                        .delta(args.metric_count),
                );
                client.emit(
                    Envelope::gauge()
                        .source_id(args.source_id.as_str())
                        .metric("memory", resident_bytes(), "bytes")
                        .metric("cpu", cpu.percentage(), "percentage"),
                );
                client.emit(
                    Envelope::event("Application Status", "Application is healthy")
                        .source_id(args.source_id.as_str()),
                );
            }
        }
    }
    let closed = client.close(Duration::from_secs(5));
    let stats = client.stats();
    println!("emitted {}: {stats}", stats.emitted);
    Ok(closed?)
}

/// Resident memory from /proc (Linux); 0 elsewhere.
fn resident_bytes() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0
}

/// CPU use of this process since the last reading, from /proc (Linux).
struct CpuMeter {
    last_ticks: f64,
    last_at: Instant,
}

impl CpuMeter {
    /// Linux reports CPU time in clock ticks of 1/100 s on every common platform.
    const TICKS_PER_SECOND: f64 = 100.0;

    fn new() -> CpuMeter {
        CpuMeter {
            last_ticks: cpu_ticks(),
            last_at: Instant::now(),
        }
    }

    fn percentage(&mut self) -> f64 {
        let (ticks, now) = (cpu_ticks(), Instant::now());
        let elapsed = now.duration_since(self.last_at).as_secs_f64();
        let used = (ticks - self.last_ticks) / Self::TICKS_PER_SECOND;
        (self.last_ticks, self.last_at) = (ticks, now);
        if elapsed > 0.0 {
            100.0 * used / elapsed
        } else {
            0.0
        }
    }
}

fn cpu_ticks() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    field(11) + field(12) // utime, stime
}
