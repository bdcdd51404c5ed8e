//! A small worker instrumented with the `metrics` facade, sending what it
//! records through `loggregator::MetricsRecorder` to the spy agent, then
//! printing what arrived: counters as deltas, gauges of one label set in one
//! envelope with their units, a histogram as `_count`, `_sum` and quantiles
//! (a summary), another as cumulative `_bucket` counters.
//!
//! Run with `cargo run --example metrics`.

use std::time::Duration;

use loggregator::spy::{SpyAgent, TestCerts};
use loggregator::{Envelope, IngressClient, MetricsRecorder, SourceInfo};
use metrics::{Unit, counter, describe_gauge, describe_histogram, gauge, histogram};

/// Works through `jobs`, each `(size in bytes, seconds it took)`, counting
/// them as a program instrumented with `metrics` does: it knows nothing of
/// Loggregator.
fn work(jobs: &[(u64, f64)]) {
    describe_gauge!("worker_backlog", Unit::Count, "jobs waiting");
    describe_histogram!("job_duration", Unit::Seconds, "time per job");
    for (done, &(bytes, seconds)) in jobs.iter().enumerate() {
        let outcome = if bytes > 0 { "ok" } else { "empty" };
        counter!("jobs_total", "outcome" => outcome).increment(1);
        histogram!("job_duration").record(seconds);
        histogram!("job_payload_bytes").record(bytes as f64);
        gauge!("worker_backlog").set((jobs.len() - done - 1) as f64);
    }
    gauge!("worker_threads").set(1.0);
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let certs = TestCerts::generate()?;
    let agent = SpyAgent::start(&certs)?;
    let client = IngressClient::builder()
        .addr(agent.addr())
        .tls(certs.client_tls()?)
        .source(SourceInfo::new("worker", "0"))
        .build()?;
    MetricsRecorder::new(client.clone())
        .buckets_for_prefix("job_payload", &[1024.0, 65536.0])
        .install()?;

    let jobs: Vec<(u64, f64)> = (0..20)
        .map(|n| ((n % 5) * 20_000, 0.01 * f64::from(n as u32 + 1)))
        .collect();
    work(&jobs);

    // Close sends the last pulse: everything recorded since the previous one.
    client.close(Duration::from_secs(5))?;
    let mut lines: Vec<String> = agent
        .proto_envelopes()
        .into_iter()
        .map(|envelope| Envelope::from_proto(envelope).to_string())
        .collect();
    lines.sort();
    for line in &lines {
        println!("  {line}");
    }
    println!(
        "received {} envelopes; dropped {}",
        lines.len(),
        client.stats().dropped.total()
    );
    Ok(())
}
