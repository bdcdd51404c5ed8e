//! A small threaded service instrumented from the README alone: four
//! workers emit every kind through the client, log with `log`, trace with
//! `tracing`, record `metrics`, under the panic hook, against the spy
//! agent; `tracing-subscriber` with its default features.
//!
//! Run with `cargo run --example first_hour`.

use std::time::{Duration, SystemTime};

use loggregator::spy::{SpyAgent, TestCerts};
use loggregator::{Envelope, IngressClient, MetricsRecorder, PanicHook, TracingLayer};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::prelude::*;

const WORKERS: usize = 4;
const JOBS: usize = 25;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let certs = TestCerts::generate()?;
    let agent = SpyAgent::start(&certs)?;
    let client = IngressClient::builder()
        .addr(agent.addr())
        .tls(certs.client_tls()?)
        .tag("deployment", "first-hour")
        .build()?;

    tracing_subscriber::registry()
        .with(TracingLayer::new(client.clone()).with_filter(LevelFilter::INFO))
        .init();
    MetricsRecorder::new(client.clone()).install()?;
    PanicHook::new(client.clone()).install()?;

    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let client = client.clone();
            std::thread::spawn(move || {
                let span = tracing::info_span!("worker", worker);
                let _entered = span.enter();
                for job in 0..JOBS {
                    let start = SystemTime::now();
                    log::info!(target: "legacy_dep", "job {worker}/{job} picked up");
                    tracing::info!(job, "job {worker}/{job} done");
                    metrics::counter!("jobs", "worker" => worker.to_string()).increment(1);
                    metrics::histogram!("job_seconds").record(0.012);
                    client.emit(Envelope::timer("job", start, SystemTime::now()));
                }
                client.emit(Envelope::gauge().metric("backlog", 0.0, "count"));
                client.emit(Envelope::event(
                    "worker finished",
                    format!("worker {worker}"),
                ));
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("no worker panics");
    }
    client.close(Duration::from_secs(5))?;

    let stats = client.stats();
    println!("client: {stats}");
    let counts = agent.kind_counts();
    println!(
        "received {} envelopes: {counts}; dropped {}",
        counts.total(),
        stats.dropped.total()
    );
    Ok(())
}
