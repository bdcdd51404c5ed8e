//! Starts the spy agent, sends every envelope kind to it over mutual TLS,
//! and prints what the agent received.
//!
//! Run with `cargo run --example demo`.

use std::time::{Duration, SystemTime};

use loggregator::spy::{SpyAgent, TestCerts};
use loggregator::{Envelope, IngressClient};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let certs = TestCerts::generate()?;
    let agent = SpyAgent::start(&certs)?;
    println!(
        "spy agent listening on {} (mutual TLS, server name metron)",
        agent.addr()
    );

    let client = IngressClient::builder()
        .addr(agent.addr())
        .tls(certs.client_tls()?)
        .tag("deployment", "demo")
        .build()?;

    let start = SystemTime::now();
    client.emit(
        Envelope::log("hello from Rust")
            .source("demo-app", "0")
            .stdout()
            .tag("k", "v"),
    );
    client.emit(Envelope::log("something went wrong").source("demo-app", "0"));
    client.emit(
        Envelope::counter("requests")
            .source("demo-app", "0")
            .delta(5),
    );
    client.emit(
        Envelope::gauge()
            .source("demo-app", "0")
            .metric("cpu", 35.5, "percentage")
            .metric("memory", 1.0e8, "bytes"),
    );
    client.emit(Envelope::timer("db_query", start, SystemTime::now()).source("demo-app", "0"));
    client.emit(
        Envelope::event("Application Status", "Application is healthy").source("demo-app", "0"),
    );
    client.send(
        vec![
            Envelope::event("deploy", "v42")
                .source("demo-app", "0")
                .into(),
        ],
        Duration::from_secs(5),
    )?;
    client.close(Duration::from_secs(5))?;
    let stats = client.stats();

    for envelope in agent.envelopes() {
        println!("  {envelope}");
    }
    println!("client: {stats}");
    let counts = agent.kind_counts();
    println!(
        "received {} envelopes: {counts}; dropped {}",
        counts.total(),
        stats.dropped.total()
    );
    Ok(())
}
