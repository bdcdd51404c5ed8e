//! The client and the envelopes the scenarios emit, and the throughput
//! scenario (the latency bench paces itself by it).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use loggregator::{Delivery, Envelope, IngressClient, TlsConfig};

use super::probes::cpu_time;
use super::{Figures, Flags, PAYLOAD, Workload};

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
