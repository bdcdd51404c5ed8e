//! `cargo bench --bench latency`: what one `emit` costs the calling thread,
//! a pre-built envelope and one built in the call, beside a bare crossbeam
//! `try_send` into a channel of the queue's capacity, at half the 1-thread
//! throughput; and building a log envelope alone, outside the pipeline.

mod common;

use std::thread;
use std::time::{Duration, Instant, SystemTime};

use common::{
    Agent, Figures, Flags, LATENCY_SAMPLES, ROUNDS, client, histogram, log_envelope, measure,
    median, median_by, percentiles, time_each, warm_up,
};

/// Envelopes built in a row to time building alone: long enough that the
/// loop's own cost and the clock's resolution vanish.
const BUILDS: u32 = 5_000_000;

fn main() {
    common::run(scenario, report);
}

fn scenario(name: &str, flags: &Flags) -> Figures {
    match name {
        "throughput" => common::throughput(flags),
        "latency" => latency(flags),
        "build" => build(),
        _ => common::unknown(name),
    }
}

fn report(_flags: &Flags, agent: &mut Agent) {
    // The pace of the latency rounds: half what one thread delivers here
    // and now, so the queue neither fills nor idles.
    let one_thread = median(
        (0..3)
            .map(|_| measure(agent, "throughput", &["--threads", "1"]))
            .collect(),
    )["rate"];
    let rate = ((one_thread / 2.0) as u64).to_string();
    let latency = median_by(
        (0..ROUNDS)
            .map(|_| {
                measure(
                    agent,
                    "latency",
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

    let build = median_by(
        (0..ROUNDS).map(|_| measure(agent, "build", &[])).collect(),
        "build_ns",
    );
    println!(
        "building alone, one thread, {BUILDS} in a loop, the round of median of {ROUNDS}: a log envelope (100-byte payload, source, three tags) {:.1} ns; SystemTime::now alone (its timestamp) {:.1} ns",
        build["build_ns"], build["clock_ns"]
    );
}

/// Building a log envelope alone, and the clock read it takes, in ns each.
fn build() -> Figures {
    let started = Instant::now();
    for _ in 0..BUILDS {
        std::hint::black_box(log_envelope());
    }
    let build_ns = started.elapsed().as_nanos() as f64 / f64::from(BUILDS);
    let started = Instant::now();
    for _ in 0..BUILDS {
        std::hint::black_box(SystemTime::now());
    }
    let clock_ns = started.elapsed().as_nanos() as f64 / f64::from(BUILDS);
    Figures::from([("build_ns".into(), build_ns), ("clock_ns".into(), clock_ns)])
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
