//! Sends this process's memory, CPU, threads and open files every 200 ms
//! while it does some work, then prints what the spy agent received.
//!
//! Run with `cargo run --example process_metrics`.

use std::time::{Duration, Instant};

use loggregator::spy::{SpyAgent, TestCerts};
use loggregator::{Envelope, IngressClient, SourceInfo};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let certs = TestCerts::generate()?;
    let agent = SpyAgent::start(&certs)?;
    let client = IngressClient::builder()
        .addr(agent.addr())
        .tls(certs.client_tls()?)
        .source(SourceInfo::new("process-metrics-example", "0"))
        .build()?;
    client.process_metrics(Duration::from_millis(200))?;

    // Some work to measure: a second of arithmetic and a growing buffer.
    let started = Instant::now();
    let mut buffer = Vec::new();
    let mut sum = 0u64;
    while started.elapsed() < Duration::from_secs(1) {
        sum = sum.wrapping_add((0..10_000u64).map(|n| n * n).sum::<u64>());
        buffer.extend_from_slice(&[0u8; 4096]);
    }
    println!("worked: sum {sum}, buffer {} KiB", buffer.len() / 1024);

    client.close(Duration::from_secs(5))?;
    for envelope in agent.proto_envelopes() {
        println!("  {}", Envelope::from_proto(envelope));
    }
    Ok(())
}
