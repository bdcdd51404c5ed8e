//! `cargo bench --bench tracing_layer`: what a span and an event cost with
//! `TracingLayer` installed, beside a layer that does nothing, on a
//! `tracing_subscriber` registry.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::{
    Agent, Figures, Flags, LATENCY_SAMPLES, ROUNDS, client, histogram, measure, median_by,
    percentiles, warm_up,
};

fn main() {
    common::run(scenario, report);
}

fn scenario(name: &str, flags: &Flags) -> Figures {
    match name {
        "tracing" => tracing_cost(flags),
        _ => common::unknown(name),
    }
}

fn report(_flags: &Flags, agent: &mut Agent) {
    let tracing = median_by(
        (0..ROUNDS)
            .map(|_| measure(agent, "tracing", &[]))
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
