//! What every bench shares: the flags, the spy agent in a child process,
//! `measure` (one scenario in a child process of its own, its count checked
//! against the agent's), the client and envelopes the scenarios use, and
//! the probes (CPU time, resident memory, latency histograms).
//!
//! Each bench is one program in two roles: run by `cargo bench`, it starts
//! the agent, runs its scenarios each in a child process (itself again, with
//! `--scenario NAME`) and prints its report; run with `--scenario`, it
//! measures one thing and prints `result key=value ...` for its parent.

// Each bench uses part of this module, and of what it re-exports.
#![allow(dead_code, unused_imports)]

mod agent;
mod client;
mod probes;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use loggregator::Overflow;

pub use agent::{Agent, measure, parse_counts, parse_figures};
pub use client::{
    certs_dir, client, emit_for, log_envelope, mixed_envelope, throughput, tls, warm_up,
};
pub use probes::{
    Resident, children_cpu, cpu_time, current_rss_bytes, histogram, peak_rss_bytes, percentiles,
    time_each,
};

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
    /// The file `tail` and `pipe` read, in MiB (legacy).
    #[arg(long, default_value_t = 1024)]
    pub file_mib: u64,
    /// Lines a second the wrapped child writes to each stream (legacy).
    #[arg(long, default_value_t = 100_000)]
    pub stream_rate: u64,
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
