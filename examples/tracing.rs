//! A small request handler instrumented with `tracing`, sending its spans
//! (as Timer envelopes with W3C trace ids) and its events (as logs) to the
//! spy agent, then printing what arrived. A Forwarder Agent feeding an
//! OpenTelemetry Collector turns each Timer into a span: here `handle` is a
//! SERVER span named `/v2/orders`, `load_order` an INTERNAL one inside it.
//!
//! Run with `cargo run --example tracing`.

use std::time::Duration;

use loggregator::spy::{SpyAgent, TestCerts};
use loggregator::{Envelope, IngressClient, SourceInfo, TracingLayer};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Handles one request; `traceparent` is the caller's W3C header, if any.
fn handle(order_id: u32, traceparent: Option<&str>) -> u16 {
    let span = tracing::info_span!(
        "handle",
        uri = "/v2/orders",
        peer_type = "Server",
        order_id,
        traceparent = traceparent.unwrap_or(""),
        status = tracing::field::Empty
    );
    let _entered = span.enter();
    // What this service would send on to the next one.
    let onward = loggregator::current_traceparent();
    tracing::info!(
        onward = onward.as_deref().unwrap_or("none"),
        "request received"
    );
    let found = load_order(order_id);
    let status = if found { 200 } else { 404 };
    if !found {
        tracing::warn!(order_id, "no such order");
    }
    span.record("status", status);
    status
}

#[tracing::instrument]
fn load_order(order_id: u32) -> bool {
    std::thread::sleep(Duration::from_millis(2));
    order_id % 2 == 0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let certs = TestCerts::generate()?;
    let agent = SpyAgent::start(&certs)?;
    let client = IngressClient::builder()
        .addr(agent.addr())
        .tls(certs.client_tls()?)
        .build()?;
    tracing_subscriber::registry()
        .with(TracingLayer::new(client.clone()).source(SourceInfo::new("orders", "0")))
        .init();

    handle(42, None);
    handle(
        7,
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );

    client.close(Duration::from_secs(5))?;
    for envelope in agent.proto_envelopes() {
        println!("  {}", Envelope::from_proto(envelope));
    }
    let stats = client.stats();
    println!(
        "received {} envelopes; dropped {}",
        agent.proto_envelopes().len(),
        stats.dropped.total()
    );
    Ok(())
}
