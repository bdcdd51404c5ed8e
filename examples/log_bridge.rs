//! Sends the program's `log` records to Loggregator: starts the spy agent,
//! installs the bridge, logs a few lines and prints what arrived.
//!
//! Run with `cargo run --example log_bridge`.

use std::time::Duration;

use loggregator::spy::{SpyAgent, TestCerts};
use loggregator::{Envelope, IngressClient, LogBridge, SourceInfo};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let certs = TestCerts::generate()?;
    let agent = SpyAgent::start(&certs)?;
    let client = IngressClient::builder()
        .addr(agent.addr())
        .tls(certs.client_tls()?)
        .build()?;
    LogBridge::new(client.clone())
        .level(log::LevelFilter::Info)
        .source(SourceInfo::new("log-bridge-example", "0"))
        .install()?;

    log::info!("service started on port {}", 8080);
    log::warn!(target: "cache", "cache miss rate {}%", 42);
    log::error!("payment provider unreachable");
    log::debug!("not sent: below the level");

    // The bridge keeps a handle to the client: close it to deliver the rest.
    client.close(Duration::from_secs(5))?;
    for envelope in agent.proto_envelopes() {
        println!("  {}", Envelope::from_proto(envelope));
    }
    Ok(())
}
