//! What every bench shares: the flags, the spy agent in a child process,
//! `measure` (one scenario in a child process of its own, its count checked
//! against the agent's), the client and envelopes the scenarios use, and
//! the probes (CPU time, resident memory, latency histograms).
//!
//! Each bench is one program in two roles: run by `cargo bench`, it starts
//! the agent, runs its scenarios each in a child process (itself again, with
//! `--scenario NAME`) and prints its report; run with `--scenario`, it
//! measures one thing and prints `result key=value ...` for its parent.

// Each bench uses part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use loggregator::{Delivery, Envelope, IngressClient, Overflow, TlsConfig};
use nix::sys::resource::{UsageWho, getrusage};

/// Samples per latency histogram.
pub const LATENCY_SAMPLES: u64 = 400_000;
/// A 100-byte log line.
pub const PAYLOAD: &[u8; 100] =
    b"GET /v2/apps/9d7d2b7c-2f4b-4d1a-9b1e-0c2f3a4b5c6d/stats 200 0.0042s \
      ua=curl/8.5 vcap_request=abcdefg";
pub const MIB: f64 = 1024.0 * 1024.0;
/// Rounds of the headline figures, of which the median is shown: this runs
/// on shared machines, where one round can land in a neighbour's burst.
pub const ROUNDS: usize = 5;

/// The flags of every bench; each reads those of its scenarios.
#[derive(Parser, Debug, Clone)]
pub struct Flags {
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    pub bench: bool,
    /// Also measure batch sizes from 100 to 2,000 envelopes (throughput).
    #[arg(long)]
    pub sweep: bool,
    /// Also measure at least once with replay buffers of 2, 8 and 32 MiB
    /// (throughput).
    #[arg(long)]
    pub replay_sweep: bool,
    /// Run one measurement and print its result (used by the bench's own run).
    #[arg(long)]
    pub scenario: Option<String>,
    #[arg(long, default_value = "")]
    pub addr: String,
    #[arg(long)]
    pub certs: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    #[arg(long, value_enum, default_value_t = Workload::Logs)]
    pub workload: Workload,
    #[arg(long, value_enum, default_value_t = Policy::Block)]
    pub policy: Policy,
    #[arg(long)]
    pub at_least_once: bool,
    /// The client's `replay_buffer_bytes` (its default if not given).
    #[arg(long)]
    pub replay_buffer_bytes: Option<usize>,
    /// Envelopes per second to emit, in all (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    #[arg(long, default_value_t = loggregator::DEFAULT_BATCH_MAX_ENVELOPES)]
    pub batch: usize,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
    pub seconds: Duration,
    /// `BatchSender` streams: the client's `streams`, or the ceiling's.
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// What the caller does while the agent is away (`--scenario outage`).
    #[arg(long, value_enum, default_value_t = Outage::LargeLogs)]
    pub outage: Outage,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outage {
    /// 2,000 logs of 512 KiB.
    LargeLogs,
    /// 200,000 logs of 1 KiB, with `flush(1 ms)` after every 100.
    FlushPerRequest,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Logs,
    Mixed,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    DropNewest,
    DropOldest,
    Block,
    BlockFor,
}

impl Policy {
    pub fn overflow(self) -> Overflow {
        match self {
            Policy::DropNewest => Overflow::DropNewest,
            Policy::DropOldest => Overflow::DropOldest,
            Policy::Block => Overflow::Block,
            Policy::BlockFor => Overflow::BlockFor(Duration::from_millis(1)),
        }
    }
}

pub type Figures = BTreeMap<String, f64>;

/// A bench's `main`: with `--scenario`, measures it with `scenario` and
/// prints the result for the parent; otherwise starts the agent and prints
/// the bench's report with `report`.
pub fn run(scenario: fn(&str, &Flags) -> Figures, report: fn(&Flags, &mut Agent)) {
    let flags = Flags::parse();
    match &flags.scenario {
        Some(name) => {
            let figures = scenario(name, &flags);
            let line: Vec<String> = figures.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!("result {}", line.join(" "));
        }
        None => {
            let mut agent = Agent::start();
            println!("machine: {}", machine());
            println!(
                "agent: loggregator-spy-agent --count-only (child process), mTLS on loopback; load average {}",
                load_average()
            );
            report(&flags, &mut agent);
        }
    }
}

/// The scenario `name` is not this bench's.
pub fn unknown(name: &str) -> ! {
    panic!("no scenario {name:?} in this bench")
}

/// The run with the median rate.
pub fn median(runs: Vec<Figures>) -> Figures {
    median_by(runs, "rate")
}

/// The run with the median `key`.
pub fn median_by(mut runs: Vec<Figures>, key: &str) -> Figures {
    runs.sort_by(|a, b| a[key].total_cmp(&b[key]));
    runs.swap_remove(runs.len() / 2)
}

pub fn machine() -> String {
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

/// The machine's load when the bench starts: other work on its cores moves
/// every figure.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

pub struct Agent {
    pub child: Child,
    pub stdin: ChildStdin,
    pub stdout: BufReader<ChildStdout>,
    pub addr: String,
    pub certs: PathBuf,
}

impl Agent {
    pub fn start() -> Agent {
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

    pub fn command(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").expect("agent stdin");
        self.stdin.flush().expect("agent stdin");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("agent output");
        line
    }

    pub fn envelopes(&mut self) -> u64 {
        parse_counts(&self.command("counts"))
    }

    pub fn set_rate(&mut self, per_second: u64) {
        self.command(&format!("rate {per_second}"));
    }

    pub fn set_stream_rate(&mut self, per_second: u64) {
        self.command(&format!("stream-rate {per_second}"));
    }

    /// Whether the agent decodes every envelope it reads, as a real one does.
    pub fn set_decoding(&mut self, on: bool) {
        self.command(if on { "decode on" } else { "decode off" });
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn parse_counts(line: &str) -> u64 {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix("envelopes="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("agent printed {line:?}"))
}

/// Runs one scenario in a child process; checks the agent read what the
/// client says it delivered.
pub fn measure(agent: &mut Agent, scenario: &str, extra: &[&str]) -> Figures {
    let before = agent.envelopes();
    let output = Command::new(std::env::current_exe().expect("own path"))
        .args(["--scenario", scenario, "--addr", &agent.addr])
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

pub fn certs_dir(flags: &Flags) -> &PathBuf {
    flags.certs.as_ref().expect("--certs")
}

pub fn tls(flags: &Flags) -> TlsConfig {
    let file = |name| certs_dir(flags).join(name);
    TlsConfig::from_files(file("ca.crt"), file("client.crt"), file("client.key"))
        .expect("the agent's certificates")
}

pub fn client(flags: &Flags) -> IngressClient {
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
        .replay_buffer_bytes(
            flags
                .replay_buffer_bytes
                .unwrap_or(loggregator::DEFAULT_REPLAY_BUFFER_BYTES),
        )
        .build()
        .expect("a client")
}

/// A log as a program would emit it: 100-byte payload, source, three tags.
pub fn log_envelope() -> Envelope {
    Envelope::log(&PAYLOAD[..])
        .source("bench-app", "0")
        .tag("deployment", "cf")
        .tag("job", "api")
        .tag("index", "3")
        .into()
}

pub fn mixed_envelope(n: u64) -> Envelope {
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
pub fn cpu_time() -> Duration {
    let usage = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let micros = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
    Duration::from_micros(micros(usage.user_time()) + micros(usage.system_time()))
}

pub fn peak_rss_bytes() -> f64 {
    getrusage(UsageWho::RUSAGE_SELF)
        .expect("getrusage")
        .max_rss() as f64
        * 1024.0
}

pub fn current_rss_bytes() -> f64 {
    Resident::now().total()
}

/// Resident memory in two parts: pages the process allocated (heap, stacks)
/// and pages of mapped files (the program and its libraries, shared with
/// every process that maps them).
#[derive(Clone, Copy, Default)]
pub struct Resident {
    pub anon: f64,
    pub file: f64,
}

impl Resident {
    pub fn total(&self) -> f64 {
        self.anon + self.file
    }

    pub fn now() -> Resident {
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
    pub fn peak_until(stop: Arc<AtomicBool>) -> thread::JoinHandle<Resident> {
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
pub fn warm_up(client: &IngressClient) {
    client.emit(log_envelope());
    client
        .flush(Duration::from_secs(10))
        .expect("reach the agent");
}

/// Emits from `threads` threads for `seconds` (each at `rate / threads`
/// envelopes a second if a rate is set); returns how many were emitted.
pub fn emit_for(client: &IngressClient, flags: &Flags, make: fn(u64) -> Envelope) -> u64 {
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

pub fn throughput(flags: &Flags) -> Figures {
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

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

pub fn percentiles(figures: &mut Figures, name: &str, histogram: &Histogram<u64>) {
    for (suffix, quantile) in [("p50", 0.5), ("p99", 0.99), ("p999", 0.999)] {
        figures.insert(
            format!("{name}_{suffix}"),
            histogram.value_at_quantile(quantile) as f64,
        );
    }
}

/// Times `op` on each of `LATENCY_SAMPLES` envelopes from `make`, made
/// outside the timing, at `rate` a second.
pub fn time_each(rate: u64, make: impl Fn() -> Envelope, op: impl Fn(Envelope)) -> Histogram<u64> {
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
