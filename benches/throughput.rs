//! `cargo bench --bench throughput`: the client against the spy agent over
//! mTLS on loopback, every figure of docs/performance.md in one
//! run.
//!
//! The agent runs as a child process (`loggregator-spy-agent --count-only`),
//! so its CPU is not the client's. Each measurement runs in a child process
//! of its own too (this program again, with `--scenario`), so its CPU time
//! and peak memory are its alone. Add `-- --sweep` to also measure batch
//! sizes from 100 to 2,000. `-- --metrics` runs only the `metrics` facade
//! section (MetricsRecorder beside metrics-exporter-prometheus's recorder),
//! in well under a minute.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use futures::SinkExt;
use grpcio::{
    CallOption, ChannelBuilder, ChannelCredentialsBuilder, Client, EnvBuilder, GrpcSlice,
    Marshaller, Method, MethodType, WriteFlags,
};
use hdrhistogram::Histogram;
use loggregator::proto::envelope::EnvelopeBatch;
use loggregator::proto::ingress::BatchSenderResponse;
use loggregator::{Delivery, Envelope, IngressClient, Overflow, TlsConfig};
use nix::sys::resource::{UsageWho, getrusage};
use protobuf::Message;

/// How long the memory runs outrun the agent, and the idle run idles.
const LONG_RUN: Duration = Duration::from_secs(10);
/// How fast the agent reads in the memory runs; emitters go ten times faster.
const SLOW_AGENT_RATE: u64 = 20_000;
/// What a real agent reads from one stream, about: a Forwarder Agent on 2
/// cores read 342,000 small envelopes a second from one stream.
const STREAM_RATE: u64 = 300_000;
/// Rounds of the CPU-bound streams comparison, whose differences are
/// smaller than one run's noise.
const UNPACED_ROUNDS: usize = 3;
/// Samples per latency histogram.
const LATENCY_SAMPLES: u64 = 400_000;
/// A 100-byte log line.
const PAYLOAD: &[u8; 100] = b"GET /v2/apps/9d7d2b7c-2f4b-4d1a-9b1e-0c2f3a4b5c6d/stats 200 0.0042s \
      ua=curl/8.5 vcap_request=abcdefg";

#[derive(Parser, Debug, Clone)]
struct Flags {
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
    /// Also measure batch sizes from 100 to 2,000 envelopes.
    #[arg(long)]
    sweep: bool,
    /// Only the `metrics` facade section.
    #[arg(long)]
    metrics: bool,
    /// Run one measurement and print its result (used by the main run).
    #[arg(long, value_enum)]
    scenario: Option<Scenario>,
    #[arg(long, default_value = "")]
    addr: String,
    #[arg(long)]
    certs: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[arg(long, value_enum, default_value_t = Workload::Logs)]
    workload: Workload,
    #[arg(long, value_enum, default_value_t = Policy::Block)]
    policy: Policy,
    #[arg(long)]
    at_least_once: bool,
    /// Envelopes per second to emit, in all (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    #[arg(long, default_value_t = loggregator::DEFAULT_BATCH_MAX_ENVELOPES)]
    batch: usize,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
    seconds: Duration,
    /// `BatchSender` streams: the client's `streams`, or the ceiling's.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// What the caller does while the agent is away (`--scenario outage`).
    #[arg(long, value_enum, default_value_t = Outage::LargeLogs)]
    outage: Outage,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Outage {
    /// 2,000 logs of 512 KiB.
    LargeLogs,
    /// 200,000 logs of 1 KiB, with `flush(1 ms)` after every 100.
    FlushPerRequest,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Throughput,
    Ceiling,
    Latency,
    Memory,
    Outage,
    Tracing,
    Footprint,
    Idle,
    Metrics,
    Series,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    Logs,
    Mixed,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    DropNewest,
    DropOldest,
    Block,
    BlockFor,
}

impl Policy {
    fn overflow(self) -> Overflow {
        match self {
            Policy::DropNewest => Overflow::DropNewest,
            Policy::DropOldest => Overflow::DropOldest,
            Policy::Block => Overflow::Block,
            Policy::BlockFor => Overflow::BlockFor(Duration::from_millis(1)),
        }
    }
}

type Figures = BTreeMap<String, f64>;

fn main() {
    let flags = Flags::parse();
    match flags.scenario {
        Some(scenario) => {
            let figures = run_scenario(scenario, &flags);
            let line: Vec<String> = figures.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!("result {}", line.join(" "));
        }
        None => main_run(&flags),
    }
}

// ---------------------------------------------------------------------------
// The main run: starts the agent, runs every scenario, prints the report.

struct Agent {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    addr: String,
    certs: PathBuf,
}

impl Agent {
    fn start() -> Agent {
        let mut child = Command::new(env!("CARGO_BIN_EXE_loggregator-spy-agent"))
            .arg("--count-only")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start loggregator-spy-agent");
        let stdin = child.stdin.take().expect("agent stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("agent stdout"));
        let mut field = |name: &str| {
            let mut line = String::new();
            stdout.read_line(&mut line).expect("agent output");
            line.trim()
                .strip_prefix(name)
                .unwrap_or_else(|| panic!("agent printed {line:?}, not {name}"))
                .trim()
                .to_string()
        };
        let addr = field("addr");
        let certs = PathBuf::from(field("certs"));
        Agent {
            child,
            stdin,
            stdout,
            addr,
            certs,
        }
    }

    fn command(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").expect("agent stdin");
        self.stdin.flush().expect("agent stdin");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("agent output");
        line
    }

    fn envelopes(&mut self) -> u64 {
        parse_counts(&self.command("counts"))
    }

    fn set_rate(&mut self, per_second: u64) {
        self.command(&format!("rate {per_second}"));
    }

    fn set_stream_rate(&mut self, per_second: u64) {
        self.command(&format!("stream-rate {per_second}"));
    }

    /// Whether the agent decodes every envelope it reads, as a real one does.
    fn set_decoding(&mut self, on: bool) {
        self.command(if on { "decode on" } else { "decode off" });
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_counts(line: &str) -> u64 {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix("envelopes="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("agent printed {line:?}"))
}

/// Runs one scenario in a child process; checks the agent read what the
/// client says it delivered.
fn measure(agent: &mut Agent, scenario: Scenario, extra: &[&str]) -> Figures {
    let before = agent.envelopes();
    let scenario_name = format!("{scenario:?}").to_lowercase();
    let output = Command::new(std::env::current_exe().expect("own path"))
        .args(["--scenario", &scenario_name, "--addr", &agent.addr])
        .arg("--certs")
        .arg(&agent.certs)
        .args(extra)
        .stderr(Stdio::inherit())
        .output()
        .expect("run a scenario");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let Some(line) = stdout.lines().find_map(|l| l.strip_prefix("result ")) else {
        panic!("scenario {scenario:?} {extra:?} failed: {stdout}");
    };
    let mut figures: Figures = line
        .split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().expect("a number")))
        .collect();
    if let Some(&delivered) = figures.get("delivered") {
        let read = parse_counts(&agent.command(&format!("wait {} 30", before + delivered as u64)))
            - before;
        assert_eq!(
            read, delivered as u64,
            "{scenario:?} {extra:?}: the agent read {read}, the client delivered {delivered}"
        );
        figures.insert("agent_read".into(), read as f64);
    }
    figures
}

fn main_run(flags: &Flags) {
    let mut agent = Agent::start();
    if flags.metrics {
        println!("machine: {}", machine());
        metrics_section(&mut agent);
        return;
    }
    let batch = flags.batch.to_string();
    let batch_args = ["--batch", batch.as_str()];
    println!("loggregator throughput benchmark");
    println!("machine: {}", machine());
    println!(
        "agent: loggregator-spy-agent --count-only (child process), mTLS on loopback, batch {} envelopes",
        flags.batch
    );
    println!();

    // The headline figures are medians of alternating rounds, each of which
    // measures the ceiling too: this runs on shared machines, where one
    // round can land in a neighbour's burst.
    let mut ceilings = Vec::new();

    let configurations = [
        ("logs, 1 thread", vec!["--threads", "1"]),
        ("logs, 4 threads", vec!["--threads", "4"]),
        ("logs, 16 threads", vec!["--threads", "16"]),
        (
            "mixed, 4 threads",
            vec!["--threads", "4", "--workload", "mixed"],
        ),
        (
            "logs, 1 thread, at least once",
            vec!["--threads", "1", "--at-least-once"],
        ),
    ];
    let mut rounds: Vec<Vec<Figures>> = configurations.iter().map(|_| Vec::new()).collect();
    for _ in 0..ROUNDS {
        ceilings.push(measure(&mut agent, Scenario::Ceiling, &batch_args));
        for ((_, args), figures) in configurations.iter().zip(&mut rounds) {
            let mut args = args.clone();
            args.extend(batch_args);
            figures.push(measure(&mut agent, Scenario::Throughput, &args));
        }
    }
    let ceiling = median(ceilings);
    let ceiling_rate = ceiling["rate"];
    println!("medians of {ROUNDS} alternating rounds, each measuring the ceiling too:");
    println!(
        "transport ceiling (pre-built batches on one BatchSender stream): {:.0} env/s, {:.2} µs CPU/env",
        ceiling_rate, ceiling["cpu_us_per_envelope"]
    );
    let mut runs = Vec::new();
    for ((label, _), figures) in configurations.iter().zip(rounds) {
        let figures = median(figures);
        println!(
            "client {label}: {:.0} env/s ({:.2} of ceiling), {:.2} µs CPU/env ({:.2}x the ceiling's), dropped {}",
            figures["rate"],
            figures["rate"] / ceiling_rate,
            figures["cpu_us_per_envelope"],
            figures["cpu_us_per_envelope"] / ceiling["cpu_us_per_envelope"],
            figures["dropped"]
        );
        runs.push((*label, figures));
    }
    let one_thread = runs[0].1["rate"];
    println!();
    for (label, figures) in &runs[..3] {
        println!(
            "client/ceiling = {:.2} (client {:.0} env/s, ceiling {:.0} env/s) [{label}]",
            figures["rate"] / ceiling_rate,
            figures["rate"],
            ceiling_rate
        );
    }
    println!(
        "at-least-once/at-most-once = {:.2}",
        runs[4].1["rate"] / one_thread
    );
    println!();

    println!(
        "streams, logs, 1 thread, against an agent reading each stream at most {STREAM_RATE} env/s (as a real agent reads each in its own goroutine):"
    );
    agent.set_stream_rate(STREAM_RATE);
    let mut paced = Vec::new();
    for streams in ["1", "2", "4"] {
        let ceiling = measure(&mut agent, Scenario::Ceiling, &["--streams", streams]);
        let client = measure(
            &mut agent,
            Scenario::Throughput,
            &["--streams", streams, "--threads", "1"],
        );
        println!(
            "  streams {streams}: ceiling {:>8.0} env/s, client {:>8.0} env/s ({:.2} of ceiling, {:.2} µs CPU/env)",
            ceiling["rate"],
            client["rate"],
            client["rate"] / ceiling["rate"],
            client["cpu_us_per_envelope"]
        );
        paced.push(client["rate"]);
    }
    agent.set_stream_rate(0);
    println!(
        "  streams(2)/streams(1) = {:.2}, streams(4)/streams(1) = {:.2}",
        paced[1] / paced[0],
        paced[2] / paced[0]
    );
    println!(
        "streams, logs, 1 thread, against the unpaced agent (the client's CPU is the limit), means of {UNPACED_ROUNDS} alternating rounds:"
    );
    let settings = ["1", "2", "4"];
    let mut rates = [0.0; 3];
    let mut ceilings = [0.0; 3];
    let mut cpu = [0.0; 3];
    for _ in 0..UNPACED_ROUNDS {
        for (index, streams) in settings.iter().enumerate() {
            let ceiling = measure(&mut agent, Scenario::Ceiling, &["--streams", streams]);
            let client = measure(
                &mut agent,
                Scenario::Throughput,
                &["--streams", streams, "--threads", "1"],
            );
            ceilings[index] += ceiling["rate"] / UNPACED_ROUNDS as f64;
            rates[index] += client["rate"] / UNPACED_ROUNDS as f64;
            cpu[index] += client["cpu_us_per_envelope"] / UNPACED_ROUNDS as f64;
        }
    }
    for (index, streams) in settings.iter().enumerate() {
        println!(
            "  streams {streams}: ceiling {:>8.0} env/s, client {:>8.0} env/s ({:.2} of ceiling), {:.2} µs CPU/env",
            ceilings[index],
            rates[index],
            rates[index] / ceilings[index],
            cpu[index]
        );
    }
    println!(
        "  streams(2)/streams(1) = {:.2}, streams(4)/streams(1) = {:.2}",
        rates[1] / rates[0],
        rates[2] / rates[0]
    );
    // A real agent decodes what it reads (and forwards it): with the agent
    // paying that on the same two cores, what the client saves shows as
    // it does beside a real agent.
    agent.set_decoding(true);
    let (mut ceiling_decoded, mut client_decoded) = (0.0, 0.0);
    for _ in 0..UNPACED_ROUNDS {
        let ceiling = measure(&mut agent, Scenario::Ceiling, &["--streams", "2"]);
        let client = measure(
            &mut agent,
            Scenario::Throughput,
            &["--streams", "2", "--threads", "1"],
        );
        ceiling_decoded += ceiling["rate"] / UNPACED_ROUNDS as f64;
        client_decoded += client["rate"] / UNPACED_ROUNDS as f64;
    }
    agent.set_decoding(false);
    println!(
        "  streams 2, the agent decoding every envelope: ceiling {ceiling_decoded:>8.0} env/s, client {client_decoded:>8.0} env/s ({:.2} of ceiling)",
        client_decoded / ceiling_decoded
    );
    println!();

    let rate = ((one_thread / 2.0) as u64).to_string();
    let latency = median_by(
        (0..ROUNDS)
            .map(|_| {
                measure(
                    &mut agent,
                    Scenario::Latency,
                    &["--rate", &rate, "--policy", "drop-newest"],
                )
            })
            .collect(),
        "emit_p50",
    );
    println!(
        "emit latency at {rate} env/s (half the 1-thread throughput), ns, the round of median emit p50 of {ROUNDS}:"
    );
    for (name, key) in [
        ("emit(pre-built envelope)", "emit"),
        ("bare crossbeam try_send", "floor"),
        ("build a log envelope + emit", "build_emit"),
    ] {
        println!(
            "  {name:<30} p50 {:>6.0}  p99 {:>6.0}  p99.9 {:>7.0}",
            latency[&format!("{key}_p50")],
            latency[&format!("{key}_p99")],
            latency[&format!("{key}_p999")]
        );
    }
    println!(
        "  emit/try_send at p50 = {:.2}, dropped during the run: {}",
        latency["emit_p50"] / latency["floor_p50"],
        latency["dropped"]
    );
    println!();

    let footprint = measure(&mut agent, Scenario::Footprint, &[]);
    let queue_bytes = footprint["queue_bytes"];
    println!(
        "memory: one queued log envelope takes {:.0} bytes; a full queue ({}) {:.1} MiB",
        footprint["envelope_bytes"],
        loggregator::DEFAULT_QUEUE_CAPACITY,
        queue_bytes / MIB
    );
    println!(
        "  emitters outrun an agent reading {SLOW_AGENT_RATE} env/s 10:1 for {LONG_RUN:?}; bound = queue + 16 MiB = {:.1} MiB",
        (queue_bytes + 16.0 * MIB) / MIB
    );
    agent.set_rate(SLOW_AGENT_RATE);
    let emit_rate = (SLOW_AGENT_RATE * 10).to_string();
    let long = format!("{}s", LONG_RUN.as_secs());
    for policy in ["drop-newest", "drop-oldest", "block", "block-for"] {
        let figures = measure(
            &mut agent,
            Scenario::Memory,
            &[
                "--policy",
                policy,
                "--rate",
                &emit_rate,
                "--seconds",
                &long,
                "--threads",
                "2",
            ],
        );
        println!(
            "  {policy:<12} peak RSS {:.1} MiB: {:.1} MiB before the client, {:.1} MiB once connected, +{:.1} MiB under overload; emitted {}, dropped {}",
            figures["peak_rss_bytes"] / MIB,
            figures["process_rss_bytes"] / MIB,
            figures["start_rss_bytes"] / MIB,
            (figures["peak_rss_bytes"] - figures["start_rss_bytes"]) / MIB,
            figures["emitted"],
            figures["dropped"]
        );
        println!(
            "  {:<12} of which mapped files (program, libraries) {:.1} MiB; anonymous memory at its peak {:.1} MiB: {:.1} before the client, {:.1} once connected, +{:.1} under overload",
            "",
            figures["peak_file_bytes"] / MIB,
            figures["peak_anon_bytes"] / MIB,
            figures["process_anon_bytes"] / MIB,
            figures["start_anon_bytes"] / MIB,
            (figures["peak_anon_bytes"] - figures["start_anon_bytes"]) / MIB,
        );
    }
    agent.set_rate(0);
    println!();

    let bound =
        (loggregator::DEFAULT_QUEUE_MAX_BYTES + 2 * loggregator::DEFAULT_BATCH_MAX_BYTES) as f64;
    let bound_with_replay = bound + loggregator::DEFAULT_REPLAY_BUFFER_BYTES as f64;
    println!(
        "memory while the agent is away, default settings: bound = queue_max_bytes + 2 x batch_max_bytes = {:.1} MiB over the idle client ({:.1} MiB with the at-least-once replay buffer)",
        bound / MIB,
        bound_with_replay / MIB
    );
    for (label, outage) in [
        ("2,000 logs of 512 KiB", "large-logs"),
        (
            "200,000 logs of 1 KiB, flush(1 ms) every 100",
            "flush-per-request",
        ),
    ] {
        let figures = measure(&mut agent, Scenario::Outage, &["--outage", outage]);
        let growth = figures["peak_anon_bytes"] - figures["idle_anon_bytes"];
        println!(
            "  {label:<46} peak anonymous memory +{:.1} MiB over the idle client ({:.2} of the bound; {:.1} MiB before the client, {:.1} MiB idle); held at most {:.1} MiB encoded, emitted {}, dropped (queue_full) {}",
            growth / MIB,
            growth / bound,
            figures["process_anon_bytes"] / MIB,
            figures["idle_anon_bytes"] / MIB,
            figures["most_queued_bytes"] / MIB,
            figures["emitted"],
            figures["queue_full"]
        );
    }
    println!();

    let tracing = median_by(
        (0..ROUNDS)
            .map(|_| measure(&mut agent, Scenario::Tracing, &[]))
            .collect(),
        "span_p50",
    );
    println!(
        "tracing: one span (create, enter, exit, close) and one event, ns, with loggregator::TracingLayer and with a layer that does nothing; the round of median span p50 of {ROUNDS}:"
    );
    for (name, key) in [
        ("span, TracingLayer", "span"),
        ("span, no-op layer", "span_noop"),
        ("event, TracingLayer", "event"),
        ("event, no-op layer", "event_noop"),
    ] {
        println!(
            "  {name:<22} p50 {:>6.0}  p99 {:>6.0}  p99.9 {:>7.0}",
            tracing[&format!("{key}_p50")],
            tracing[&format!("{key}_p99")],
            tracing[&format!("{key}_p999")]
        );
    }
    println!(
        "  layer/no-op at p50: span {:.2}, event {:.2}; dropped during the run: {}",
        tracing["span_p50"] / tracing["span_noop_p50"],
        tracing["event_p50"] / tracing["event_noop_p50"],
        tracing["dropped"]
    );
    println!();

    let idle = measure(&mut agent, Scenario::Idle, &["--seconds", &long]);
    println!(
        "idle: {:.3} ms CPU per second over {LONG_RUN:?} with nothing to send",
        idle["cpu_ms_per_second"]
    );
    println!();
    metrics_section(&mut agent);

    if flags.sweep {
        println!();
        println!("batch size sweep (logs, 1 thread):");
        for size in ["100", "250", "500", "1000", "2000"] {
            let ceiling = measure(&mut agent, Scenario::Ceiling, &["--batch", size]);
            let client = measure(
                &mut agent,
                Scenario::Throughput,
                &["--batch", size, "--threads", "1"],
            );
            println!(
                "  batch {size:>5}: ceiling {:>8.0} env/s ({:.2} µs CPU/env), client {:>8.0} env/s ({:.2} µs CPU/env), client/ceiling {:.2}",
                ceiling["rate"],
                ceiling["cpu_us_per_envelope"],
                client["rate"],
                client["cpu_us_per_envelope"],
                client["rate"] / ceiling["rate"]
            );
        }
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// Rounds of the headline throughput figures, of which the median is shown.
const ROUNDS: usize = 5;

/// The run with the median rate.
fn median(runs: Vec<Figures>) -> Figures {
    median_by(runs, "rate")
}

/// The run with the median `key`.
fn median_by(mut runs: Vec<Figures>, key: &str) -> Figures {
    runs.sort_by(|a, b| a[key].total_cmp(&b[key]));
    runs.swap_remove(runs.len() / 2)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!(
        "{cpu}, {} cores",
        thread::available_parallelism().map_or(0, |n| n.get())
    )
}

// ---------------------------------------------------------------------------
// Scenarios, each in a child process.

fn run_scenario(scenario: Scenario, flags: &Flags) -> Figures {
    match scenario {
        Scenario::Throughput => throughput(flags),
        Scenario::Ceiling => ceiling(flags),
        Scenario::Latency => latency(flags),
        Scenario::Memory => memory(flags),
        Scenario::Outage => outage(flags),
        Scenario::Tracing => tracing_cost(flags),
        Scenario::Footprint => footprint(),
        Scenario::Idle => idle(flags),
        Scenario::Metrics => metrics_calls(flags),
        Scenario::Series => metrics_series(flags),
    }
}

fn certs_dir(flags: &Flags) -> &PathBuf {
    flags.certs.as_ref().expect("--certs")
}

fn tls(flags: &Flags) -> TlsConfig {
    let file = |name| certs_dir(flags).join(name);
    TlsConfig::from_files(file("ca.crt"), file("client.crt"), file("client.key"))
        .expect("the agent's certificates")
}

fn client(flags: &Flags) -> IngressClient {
    IngressClient::builder()
        .addr(&flags.addr)
        .tls(tls(flags))
        .overflow(flags.policy.overflow())
        .batch_max_envelopes(flags.batch)
        .streams(flags.streams)
        .delivery(if flags.at_least_once {
            Delivery::AtLeastOnce
        } else {
            Delivery::AtMostOnce
        })
        .build()
        .expect("a client")
}

/// A log as a program would emit it: 100-byte payload, source, three tags.
fn log_envelope() -> Envelope {
    Envelope::log(&PAYLOAD[..])
        .source("bench-app", "0")
        .tag("deployment", "cf")
        .tag("job", "api")
        .tag("index", "3")
        .into()
}

fn mixed_envelope(n: u64) -> Envelope {
    match n % 3 {
        0 => log_envelope(),
        1 => Envelope::counter("requests")
            .delta(1)
            .source("bench-app", "0")
            .tag("deployment", "cf")
            .tag("job", "api")
            .tag("index", "3")
            .into(),
        _ => Envelope::gauge()
            .metric("cpu", n as f64, "percentage")
            .source("bench-app", "0")
            .tag("deployment", "cf")
            .tag("job", "api")
            .tag("index", "3")
            .into(),
    }
}

/// User + system CPU time of this whole process, all threads.
fn cpu_time() -> Duration {
    let usage = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let micros = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
    Duration::from_micros(micros(usage.user_time()) + micros(usage.system_time()))
}

fn peak_rss_bytes() -> f64 {
    getrusage(UsageWho::RUSAGE_SELF)
        .expect("getrusage")
        .max_rss() as f64
        * 1024.0
}

fn current_rss_bytes() -> f64 {
    Resident::now().total()
}

/// Resident memory in two parts: pages the process allocated (heap, stacks)
/// and pages of mapped files (the program and its libraries, shared with
/// every process that maps them).
#[derive(Clone, Copy, Default)]
struct Resident {
    anon: f64,
    file: f64,
}

impl Resident {
    fn total(&self) -> f64 {
        self.anon + self.file
    }

    fn now() -> Resident {
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        let kib = |field: &str| -> f64 {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
        };
        Resident {
            anon: kib("RssAnon:") * 1024.0,
            file: (kib("RssFile:") + kib("RssShmem:")) * 1024.0,
        }
    }

    /// The largest of each part, sampled every 5 ms until `stop` is set.
    fn peak_until(stop: Arc<AtomicBool>) -> thread::JoinHandle<Resident> {
        thread::spawn(move || {
            let mut peak = Resident::default();
            while !stop.load(Ordering::Relaxed) {
                let now = Resident::now();
                peak.anon = peak.anon.max(now.anon);
                peak.file = peak.file.max(now.file);
                thread::sleep(Duration::from_millis(5));
            }
            peak
        })
    }
}

/// Connects before measuring, so the TLS handshake is not in the figures.
fn warm_up(client: &IngressClient) {
    client.emit(log_envelope());
    client
        .flush(Duration::from_secs(10))
        .expect("reach the agent");
}

/// Emits from `threads` threads for `seconds` (each at `rate / threads`
/// envelopes a second if a rate is set); returns how many were emitted.
fn emit_for(client: &IngressClient, flags: &Flags, make: fn(u64) -> Envelope) -> u64 {
    let stop = Arc::new(AtomicBool::new(false));
    let per_thread_rate = flags.rate as f64 / flags.threads as f64;
    let emitters: Vec<_> = (0..flags.threads)
        .map(|_| {
            let client = client.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                let started = Instant::now();
                let mut emitted = 0;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..64 {
                        client.emit(make(emitted));
                        emitted += 1;
                    }
                    if per_thread_rate > 0.0 {
                        let due =
                            started + Duration::from_secs_f64(emitted as f64 / per_thread_rate);
                        let now = Instant::now();
                        if due > now {
                            thread::sleep(due - now);
                        }
                    }
                }
                emitted
            })
        })
        .collect();
    thread::sleep(flags.seconds);
    stop.store(true, Ordering::Relaxed);
    emitters
        .into_iter()
        .map(|t| t.join().expect("emitter"))
        .sum()
}

fn throughput(flags: &Flags) -> Figures {
    let client = client(flags);
    warm_up(&client);
    let warm = client.stats().sent;
    let cpu_before = cpu_time();
    let started = Instant::now();
    let make = match flags.workload {
        Workload::Logs => |_| log_envelope(),
        Workload::Mixed => mixed_envelope,
    };
    emit_for(&client, flags, make);
    client.close(Duration::from_secs(60)).expect("close");
    let elapsed = started.elapsed();
    let cpu = cpu_time() - cpu_before;
    let stats = client.stats();
    let delivered = stats.sent - warm;
    Figures::from([
        ("rate".into(), delivered as f64 / elapsed.as_secs_f64()),
        ("delivered".into(), stats.sent as f64),
        ("dropped".into(), stats.dropped.total() as f64),
        ("streams_opened".into(), stats.reconnects as f64 + 1.0),
        ("batches".into(), stats.batches as f64),
        (
            "cpu_us_per_envelope".into(),
            cpu.as_secs_f64() * 1e6 / delivered as f64,
        ),
    ])
}

/// Raw requests: the batches are encoded before the clock starts.
const RAW_BATCH_SENDER: Method<GrpcSlice, BatchSenderResponse> = Method {
    ty: MethodType::ClientStreaming,
    name: "/loggregator.v2.Ingress/BatchSender",
    req_mar: Marshaller {
        ser: |message: &GrpcSlice, out: &mut GrpcSlice| {
            *out = message.clone();
            Ok(())
        },
        de: |_| Err(grpcio::Error::Codec("requests are only sent".into())),
    },
    resp_mar: Marshaller {
        ser: grpcio::pb_ser,
        de: grpcio::pb_de,
    },
};

/// Pre-built batches written in a loop on one stream, one write in flight
/// at a time (the most grpcio allows), straight through grpcio.
fn ceiling(flags: &Flags) -> Figures {
    let env = Arc::new(EnvBuilder::new().cq_count(1).build());
    let file = |name| std::fs::read(certs_dir(flags).join(name)).expect("certificate files");
    let credentials = ChannelCredentialsBuilder::new()
        .root_cert(file("ca.crt"))
        .cert(file("client.crt"), file("client.key"))
        .build();
    let channel = ChannelBuilder::new(env)
        .override_ssl_target(loggregator::DEFAULT_SERVER_NAME)
        .set_credentials(credentials)
        .connect(&flags.addr);
    let client = Client::new(channel);
    let mut batch = EnvelopeBatch::new();
    for _ in 0..flags.batch {
        batch.batch.push(log_envelope().into_proto());
    }
    let message = GrpcSlice::from(batch.write_to_bytes().expect("encode"));
    let batch_len = flags.batch as u64;

    // Warm up: connect and write one batch on each stream.
    let mut streams = Vec::new();
    for _ in 0..flags.streams.max(1) {
        let (mut sink, response) = client
            .client_streaming(&RAW_BATCH_SENDER, CallOption::default())
            .expect("open a stream");
        futures::executor::block_on(sink.send((message.clone(), WriteFlags::default())))
            .expect("first write");
        streams.push((sink, response));
    }
    let warm = batch_len * streams.len() as u64;

    let cpu_before = cpu_time();
    let started = Instant::now();
    // Every stream written back to back, side by side on this one thread.
    let writers = streams.into_iter().map(|(mut sink, response)| {
        let message = message.clone();
        async move {
            let mut written = 0;
            while started.elapsed() < flags.seconds {
                for _ in 0..16 {
                    sink.feed((message.clone(), WriteFlags::default()))
                        .await
                        .expect("write");
                    written += batch_len;
                }
            }
            sink.close().await.expect("half-close");
            // The agent ends the call once it has read everything: UNKNOWN "EOF".
            let _ = response.await;
            written
        }
    });
    let written: u64 = futures::executor::block_on(futures::future::join_all(writers))
        .into_iter()
        .sum::<u64>()
        + warm;
    let elapsed = started.elapsed();
    let cpu = cpu_time() - cpu_before;
    let measured = written - warm;
    Figures::from([
        ("rate".into(), measured as f64 / elapsed.as_secs_f64()),
        ("delivered".into(), written as f64),
        (
            "cpu_us_per_envelope".into(),
            cpu.as_secs_f64() * 1e6 / measured as f64,
        ),
    ])
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

fn percentiles(figures: &mut Figures, name: &str, histogram: &Histogram<u64>) {
    for (suffix, quantile) in [("p50", 0.5), ("p99", 0.99), ("p999", 0.999)] {
        figures.insert(
            format!("{name}_{suffix}"),
            histogram.value_at_quantile(quantile) as f64,
        );
    }
}

/// Times `op` on each of `LATENCY_SAMPLES` envelopes from `make`, made
/// outside the timing, at `rate` a second.
fn time_each(rate: u64, make: impl Fn() -> Envelope, op: impl Fn(Envelope)) -> Histogram<u64> {
    let mut histogram = histogram();
    let started = Instant::now();
    for n in 0..LATENCY_SAMPLES {
        let envelope = make();
        let t0 = Instant::now();
        op(envelope);
        histogram.saturating_record(t0.elapsed().as_nanos() as u64);
        if n % 64 == 63 {
            let due = started + Duration::from_secs_f64(n as f64 / rate as f64);
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
        }
    }
    histogram
}

fn latency(flags: &Flags) -> Figures {
    let client = client(flags);
    warm_up(&client);
    let prebuilt = log_envelope();
    let mut figures = Figures::new();

    let emit = time_each(flags.rate, || prebuilt.clone(), |e| client.emit(e));
    percentiles(&mut figures, "emit", &emit);

    let build_emit = {
        let mut histogram = histogram();
        let started = Instant::now();
        for n in 0..LATENCY_SAMPLES {
            let t0 = Instant::now();
            client.emit(log_envelope());
            histogram.saturating_record(t0.elapsed().as_nanos() as u64);
            if n % 64 == 63 {
                let due = started + Duration::from_secs_f64(n as f64 / flags.rate as f64);
                let now = Instant::now();
                if due > now {
                    thread::sleep(due - now);
                }
            }
        }
        histogram
    };
    percentiles(&mut figures, "build_emit", &build_emit);
    client.close(Duration::from_secs(30)).expect("close");
    figures.insert("dropped".into(), client.stats().dropped.total() as f64);

    // The floor: the same envelopes into a bare channel of the same
    // capacity, with a thread taking them off.
    let (sender, receiver) = crossbeam_channel::bounded(loggregator::DEFAULT_QUEUE_CAPACITY);
    let consumer = thread::spawn(move || receiver.iter().count());
    let floor = time_each(
        flags.rate,
        || prebuilt.clone(),
        |e| {
            let _ = sender.try_send(e);
        },
    );
    drop(sender);
    consumer.join().expect("consumer");
    percentiles(&mut figures, "floor", &floor);
    figures
}

fn memory(flags: &Flags) -> Figures {
    let process = Resident::now();
    let client = IngressClient::builder()
        .addr(&flags.addr)
        .tls(tls(flags))
        .overflow(flags.policy.overflow())
        .build()
        .expect("a client");
    warm_up(&client);
    let start = Resident::now();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = Resident::peak_until(stop.clone());
    emit_for(&client, flags, |_| log_envelope());
    stop.store(true, Ordering::Relaxed);
    let sampled = sampler.join().expect("sampler");
    let peak = peak_rss_bytes();
    let _ = client.close(Duration::from_secs(60));
    let stats = client.stats();
    Figures::from([
        ("peak_rss_bytes".into(), peak),
        ("start_rss_bytes".into(), start.total()),
        ("process_rss_bytes".into(), process.total()),
        ("peak_anon_bytes".into(), sampled.anon),
        ("peak_file_bytes".into(), sampled.file),
        ("start_anon_bytes".into(), start.anon),
        ("process_anon_bytes".into(), process.anon),
        ("emitted".into(), stats.emitted as f64),
        ("dropped".into(), stats.dropped.total() as f64),
        ("delivered".into(), stats.sent as f64),
    ])
}

/// Peak memory while the agent is away, as a careless service causes it:
/// large logs, or small ones with a flush after every 100 (one per request).
fn outage(flags: &Flags) -> Figures {
    // Nothing listens at this address: the agent is away for the whole run.
    let away = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .to_string();
    let process = Resident::now();
    let client = IngressClient::builder()
        .addr(away)
        .tls(tls(flags))
        .build()
        .expect("a client");
    let idle = Resident::now();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = Resident::peak_until(stop.clone());
    let mut most_queued_bytes = 0;
    match flags.outage {
        Outage::LargeLogs => {
            let payload = vec![b'x'; 512 * 1024];
            for _ in 0..2_000 {
                client.emit(Envelope::log(payload.as_slice()));
                most_queued_bytes = most_queued_bytes.max(client.stats().queued_bytes);
            }
        }
        Outage::FlushPerRequest => {
            let payload = vec![b'r'; 1024];
            for n in 1..=200_000 {
                client.emit(Envelope::log(payload.as_slice()));
                if n % 100 == 0 {
                    let _ = client.flush(Duration::from_millis(1));
                    most_queued_bytes = most_queued_bytes.max(client.stats().queued_bytes);
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let sampled = sampler.join().expect("sampler");
    let stats = client.stats();
    let _ = client.close(Duration::from_secs(1));
    Figures::from([
        ("process_anon_bytes".into(), process.anon),
        ("idle_anon_bytes".into(), idle.anon),
        ("peak_anon_bytes".into(), sampled.anon),
        ("most_queued_bytes".into(), most_queued_bytes as f64),
        ("emitted".into(), stats.emitted as f64),
        ("queue_full".into(), stats.dropped.queue_full as f64),
    ])
}

/// What a span and an event cost with the tracing layer installed, and with
/// a layer that does nothing, on a registry.
fn tracing_cost(flags: &Flags) -> Figures {
    use tracing_subscriber::layer::SubscriberExt;

    let client = client(flags);
    warm_up(&client);
    let layered = tracing::Dispatch::new(
        tracing_subscriber::registry().with(loggregator::TracingLayer::new(client.clone())),
    );
    let noop = tracing::Dispatch::new(
        tracing_subscriber::registry().with(tracing_subscriber::layer::Identity::new()),
    );
    let mut figures = Figures::new();
    for (dispatch, suffix) in [(&layered, ""), (&noop, "_noop")] {
        tracing::dispatcher::with_default(dispatch, || {
            let mut spans = histogram();
            let mut events = histogram();
            for n in 0..LATENCY_SAMPLES / 4 {
                let t0 = Instant::now();
                tracing::info_span!("handle", uri = "/v2/apps", peer_type = "Server", n)
                    .in_scope(|| {});
                spans.saturating_record(t0.elapsed().as_nanos() as u64);
                let t0 = Instant::now();
                tracing::info!(n, status = 200, "handled");
                events.saturating_record(t0.elapsed().as_nanos() as u64);
                if n % 1024 == 1023 {
                    // At most about a million envelopes a second, which the
                    // agent keeps up with: emits queue rather than drop.
                    thread::sleep(Duration::from_millis(1));
                }
            }
            percentiles(&mut figures, &format!("span{suffix}"), &spans);
            percentiles(&mut figures, &format!("event{suffix}"), &events);
        });
    }
    let _ = client.close(Duration::from_secs(10));
    figures.insert("dropped".into(), client.stats().dropped.total() as f64);
    figures
}

/// What one queued log envelope costs in memory: the resident growth from
/// holding a queue's worth of them.
fn footprint() -> Figures {
    let count = loggregator::DEFAULT_QUEUE_CAPACITY;
    let before = current_rss_bytes();
    let held: Vec<Envelope> = (0..count).map(|_| log_envelope()).collect();
    let after = current_rss_bytes();
    let bytes = after - before;
    drop(held);
    Figures::from([
        ("envelope_bytes".into(), bytes / count as f64),
        ("queue_bytes".into(), bytes),
    ])
}

fn idle(flags: &Flags) -> Figures {
    let client = client(flags);
    warm_up(&client);
    let cpu_before = cpu_time();
    thread::sleep(flags.seconds);
    let cpu = cpu_time() - cpu_before;
    client.close(Duration::from_secs(10)).expect("close");
    Figures::from([(
        "cpu_ms_per_second".into(),
        cpu.as_secs_f64() * 1e3 / flags.seconds.as_secs_f64(),
    )])
}

// ---------------------------------------------------------------------------
// The `metrics` facade: loggregator::MetricsRecorder beside
// metrics-exporter-prometheus's recorder, in the same process and run.

/// Calls per timed batch: one call is shorter than the clock's resolution.
const METRICS_BATCH: u64 = 16;
/// Timed batches per thread, per operation and recorder.
const METRICS_BATCHES: u64 = 40_000;
/// Live series in the per-interval figure, and how they divide.
const SERIES_COUNTERS: usize = 6_000;
const SERIES_GAUGES: usize = 3_000;
const SERIES_HISTOGRAMS: usize = 1_000;
/// Values each histogram takes per interval there.
const VALUES_PER_HISTOGRAM: usize = 10;
const SERIES_INTERVAL: Duration = Duration::from_millis(200);
const SERIES_INTERVALS: u32 = 10;

fn metrics_section(agent: &mut Agent) {
    let calls = median_by(
        (0..ROUNDS)
            .map(|_| measure(agent, Scenario::Metrics, &[]))
            .collect(),
        "loggregator_counter_1_p50",
    );
    println!(
        "metrics facade: ns per call (batches of {METRICS_BATCH}), loggregator::MetricsRecorder vs metrics-exporter-prometheus's recorder in the same process; the round of median counter p50 of {ROUNDS}:"
    );
    for (name, op) in [
        ("counter! + increment, static label", "counter"),
        ("gauge! + set", "gauge"),
        ("histogram! + record", "histogram"),
    ] {
        for threads in ["1", "4"] {
            let ours = |q: &str| calls[&format!("loggregator_{op}_{threads}_{q}")];
            let prom = |q: &str| calls[&format!("prometheus_{op}_{threads}_{q}")];
            println!(
                "  {name:<36} {threads} thread(s): p50 {:>6.1} vs {:>6.1} ({:.2}x)  p99 {:>7.1} vs {:>7.1} ({:.2}x)",
                ours("p50"),
                prom("p50"),
                ours("p50") / prom("p50"),
                ours("p99"),
                prom("p99"),
                ours("p99") / prom("p99"),
            );
        }
    }
    println!(
        "  increment on a kept handle, 1 thread: p50 {:.1} vs {:.1} ({:.2}x)",
        calls["loggregator_kept_1_p50"],
        calls["prometheus_kept_1_p50"],
        calls["loggregator_kept_1_p50"] / calls["prometheus_kept_1_p50"]
    );
    let series = measure(agent, Scenario::Series, &[]);
    println!(
        "  {} live series ({SERIES_COUNTERS} counters, {SERIES_GAUGES} gauges, {SERIES_HISTOGRAMS} histograms of {VALUES_PER_HISTOGRAM} values), all moving: per interval {:.2} ms CPU on the pulse thread (building {:.0} envelopes and queueing them, {:.2} µs each), {:.2} ms on the sender thread (batching and gRPC); dropped {}; Prometheus render of the same series {:.2} ms",
        SERIES_COUNTERS + SERIES_GAUGES + SERIES_HISTOGRAMS,
        series["pulse_ms_per_interval"],
        series["envelopes_per_interval"],
        series["pulse_us_per_envelope"],
        series["sender_ms_per_interval"],
        series["dropped"],
        series["prometheus_render_ms"],
    );
}

/// Runs `op` `METRICS_BATCHES` times in batches of `METRICS_BATCH` on
/// `threads` threads, each with `recorder` as its local recorder; the
/// per-call time of each batch, in tenths of a nanosecond.
fn time_calls(
    recorder: &(dyn metrics::Recorder + Sync),
    threads: usize,
    op: &(dyn Fn(u64) + Sync),
) -> Histogram<u64> {
    let mut all = histogram();
    // All at once, or a thread may be done before the next one starts.
    let start = std::sync::Barrier::new(threads);
    thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    metrics::with_local_recorder(recorder, || {
                        let mut histogram = histogram();
                        start.wait();
                        for batch in 0..METRICS_BATCHES {
                            let t0 = Instant::now();
                            for n in 0..METRICS_BATCH {
                                op(batch * METRICS_BATCH + n);
                            }
                            let tenths = t0.elapsed().as_nanos() as u64 * 10 / METRICS_BATCH;
                            histogram.saturating_record(tenths.max(1));
                        }
                        histogram
                    })
                })
            })
            .collect();
        for handle in handles {
            all.add(handle.join().expect("a timing thread"))
                .expect("same bounds");
        }
    });
    all
}

fn metrics_calls(flags: &Flags) -> Figures {
    let client = IngressClient::builder()
        .addr(&flags.addr)
        .tls(tls(flags))
        // No pulse during the timing: the Prometheus recorder is not
        // rendered either.
        .pulse_interval(Duration::from_secs(3600))
        .build()
        .expect("a client");
    warm_up(&client);
    let ours = loggregator::MetricsRecorder::new(client.clone()).max_series(100);
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .idle_timeout(
            metrics_util::MetricKindMask::ALL,
            Some(loggregator::DEFAULT_IDLE_TIMEOUT),
        )
        .build_recorder();
    let counter = |_: u64| metrics::counter!("bench_requests", "route" => "/v2/apps").increment(1);
    let gauge = |n: u64| metrics::gauge!("bench_in_flight", "route" => "/v2/apps").set(n as f64);
    let record = |n: u64| {
        metrics::histogram!("bench_latency_seconds", "route" => "/v2/apps")
            .record((n % 1000) as f64 * 1e-4)
    };
    let ops: [(&str, &(dyn Fn(u64) + Sync)); 3] = [
        ("counter", &counter),
        ("gauge", &gauge),
        ("histogram", &record),
    ];
    let recorders: [(&str, &(dyn metrics::Recorder + Sync)); 2] =
        [("loggregator", &ours), ("prometheus", &prometheus)];
    let mut figures = Figures::new();
    for (op_name, op) in ops {
        for threads in [1, 4] {
            for (name, recorder) in recorders {
                let histogram = time_calls(recorder, threads, op);
                for (suffix, q) in [("p50", 0.5), ("p99", 0.99)] {
                    figures.insert(
                        format!("{name}_{op_name}_{threads}_{suffix}"),
                        histogram.value_at_quantile(q) as f64 / 10.0,
                    );
                }
            }
        }
    }
    for (name, recorder) in recorders {
        let kept = metrics::with_local_recorder(
            recorder,
            || metrics::counter!("bench_kept", "route" => "/v2/apps"),
        );
        let histogram = time_calls(recorder, 1, &|_| kept.increment(1));
        figures.insert(
            format!("{name}_kept_1_p50"),
            histogram.value_at_quantile(0.5) as f64 / 10.0,
        );
    }
    client.close(Duration::from_secs(10)).expect("close");
    figures
}

/// On-CPU time of this process's threads whose names start with `prefix`
/// (names are cut to 15 bytes), from the scheduler's nanosecond counts.
fn threads_cpu(prefix: &str) -> Duration {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let path = task.expect("a task").path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim_end().starts_with(prefix) {
            let stat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
            total += stat
                .split_whitespace()
                .next()
                .and_then(|ns| ns.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(total)
}

fn metrics_series(flags: &Flags) -> Figures {
    let client = IngressClient::builder()
        .addr(&flags.addr)
        .tls(tls(flags))
        .pulse_interval(SERIES_INTERVAL)
        .queue_capacity(100_000)
        .queue_max_bytes(256 * 1024 * 1024)
        .build()
        .expect("a client");
    warm_up(&client);
    let recorder = loggregator::MetricsRecorder::new(client.clone()).max_series(20_000);
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let prometheus_handle = prometheus.handle();
    let make = |recorder: &dyn metrics::Recorder| {
        metrics::with_local_recorder(recorder, || {
            let label = |n: usize| format!("s{n}");
            (
                (0..SERIES_COUNTERS)
                    .map(|n| metrics::counter!("bench_series_total", "series" => label(n)))
                    .collect::<Vec<_>>(),
                (0..SERIES_GAUGES)
                    .map(|n| metrics::gauge!("bench_series_level", "series" => label(n)))
                    .collect::<Vec<_>>(),
                (0..SERIES_HISTOGRAMS)
                    .map(|n| metrics::histogram!("bench_series_seconds", "series" => label(n)))
                    .collect::<Vec<_>>(),
            )
        })
    };
    let touch = |(counters, gauges, histograms): &(
        Vec<metrics::Counter>,
        Vec<metrics::Gauge>,
        Vec<metrics::Histogram>,
    ),
                 round: u32| {
        counters.iter().for_each(|c| c.increment(1));
        gauges.iter().for_each(|g| g.set(f64::from(round)));
        for h in histograms {
            for v in 0..VALUES_PER_HISTOGRAM {
                h.record(v as f64 * 1e-3);
            }
        }
    };
    let ours = make(&recorder);
    touch(&ours, 0);
    // The first pulse has made every series' label sets.
    let emitted = client.stats().emitted;
    while client.stats().emitted == emitted {
        thread::sleep(Duration::from_millis(5));
    }
    let (pulse_before, sender_before) = (
        threads_cpu("loggregator-pul"),
        threads_cpu("loggregator-sen"),
    );
    let emitted_before = client.stats().emitted;
    let started = Instant::now();
    for round in 1..=SERIES_INTERVALS {
        touch(&ours, round);
        let due = started + SERIES_INTERVAL * round;
        thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    let pulse = threads_cpu("loggregator-pul") - pulse_before;
    let sender = threads_cpu("loggregator-sen") - sender_before;
    let envelopes = (client.stats().emitted - emitted_before) as f64;
    // A pulse of every series sends a counter per counter and histogram, a
    // gauge envelope per label set (the histograms' sums share the gauges'),
    // and one per histogram and quantile. Pulses may land mid-touch or be
    // late, so the figure is per pulse's worth of envelopes.
    let per_pulse = (SERIES_COUNTERS
        + SERIES_HISTOGRAMS
        + SERIES_GAUGES.max(SERIES_HISTOGRAMS)
        + SERIES_HISTOGRAMS * loggregator::DEFAULT_QUANTILES.len()) as f64;
    let intervals = envelopes / per_pulse;
    client.close(Duration::from_secs(30)).expect("close");

    let theirs = make(&prometheus);
    let mut render = Duration::ZERO;
    for round in 0..SERIES_INTERVALS {
        touch(&theirs, round);
        let t0 = Instant::now();
        let text = prometheus_handle.render();
        render += t0.elapsed();
        assert!(text.len() > SERIES_COUNTERS * 20);
    }
    Figures::from([
        (
            "pulse_ms_per_interval".into(),
            pulse.as_secs_f64() * 1e3 / intervals,
        ),
        (
            "sender_ms_per_interval".into(),
            sender.as_secs_f64() * 1e3 / intervals,
        ),
        ("envelopes_per_interval".into(), per_pulse),
        (
            "pulse_us_per_envelope".into(),
            pulse.as_secs_f64() * 1e6 / envelopes,
        ),
        ("dropped".into(), client.stats().dropped.total() as f64),
        (
            "prometheus_render_ms".into(),
            render.as_secs_f64() * 1e3 / f64::from(SERIES_INTERVALS),
        ),
    ])
}
