//! `cargo bench --bench memory`: what the client holds. One queued log
//! envelope; emitters outrunning an agent ten to one under each overflow
//! policy; and the agent away while a service emits large logs, or small
//! ones with a flush per request. Each in a process of its own, so its
//! resident memory is its alone.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use loggregator::{Envelope, IngressClient};

use common::{
    Agent, Figures, Flags, MIB, Outage, Resident, current_rss_bytes, emit_for, log_envelope,
    measure, peak_rss_bytes, tls, warm_up,
};

/// How long the memory runs outrun the agent.
const LONG_RUN: Duration = Duration::from_secs(10);
/// How fast the agent reads in the memory runs; emitters go ten times faster.
const SLOW_AGENT_RATE: u64 = 20_000;

fn main() {
    common::run(scenario, report);
}

fn scenario(name: &str, flags: &Flags) -> Figures {
    match name {
        "footprint" => footprint(),
        "memory" => memory(flags),
        "outage" => outage(flags),
        _ => common::unknown(name),
    }
}

fn report(_flags: &Flags, agent: &mut Agent) {
    let footprint = measure(agent, "footprint", &[]);
    let queue_bytes = footprint["queue_bytes"];
    println!(
        "memory: one queued log envelope takes {:.0} bytes; a full queue ({}) {:.1} MiB",
        footprint["envelope_bytes"],
        loggregator::DEFAULT_QUEUE_CAPACITY,
        queue_bytes / MIB
    );
    // docs/delivery.md's bound at most once, two emitting threads: the
    // budget, gRPC's copy and the next batch, spare buffers, and (counted
    // whole, encodings included) a full queue's envelopes.
    let spares = (1024.0 + 32.0 + 2.0 * 32.0) * 1024.0;
    let bound = (loggregator::DEFAULT_QUEUE_MAX_BYTES + 2 * loggregator::DEFAULT_BATCH_MAX_BYTES)
        as f64
        + spares
        + queue_bytes;
    println!(
        "  emitters outrun an agent reading {SLOW_AGENT_RATE} env/s 10:1 for {LONG_RUN:?}; bound = queue_max_bytes + 2 x batch_max_bytes + spare buffers + a full queue = {:.1} MiB",
        bound / MIB
    );
    agent.set_rate(SLOW_AGENT_RATE);
    let emit_rate = (SLOW_AGENT_RATE * 10).to_string();
    let long = format!("{}s", LONG_RUN.as_secs());
    for policy in ["drop-newest", "drop-oldest", "block", "block-for"] {
        let figures = measure(
            agent,
            "memory",
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

    // One emitting thread: its stash beside the sender's spare buffers.
    let bound = (loggregator::DEFAULT_QUEUE_MAX_BYTES + 2 * loggregator::DEFAULT_BATCH_MAX_BYTES)
        as f64
        + (1024.0 + 32.0 + 32.0) * 1024.0;
    let bound_with_replay = bound + loggregator::DEFAULT_REPLAY_BUFFER_BYTES as f64;
    println!(
        "memory while the agent is away, default settings: bound = queue_max_bytes + 2 x batch_max_bytes + spare buffers = {:.1} MiB over the idle client ({:.1} MiB with the at-least-once replay buffer)",
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
        let figures = measure(agent, "outage", &["--outage", outage]);
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
