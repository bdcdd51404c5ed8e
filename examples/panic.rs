//! A service's last words: starts the spy agent, installs the panic hook,
//! lets a worker thread panic, and prints what the agent had by the time
//! the panic was over: the panic's message, location, thread and
//! backtrace as one log (what `cf logs` shows), and the `panics` counter.
//!
//! Run with `cargo run --example panic`.

use std::time::Duration;

use loggregator::spy::{SpyAgent, TestCerts};
use loggregator::{Envelope, IngressClient, PanicHook, SourceInfo};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let certs = TestCerts::generate()?;
    let agent = SpyAgent::start(&certs)?;
    let client = IngressClient::builder()
        .addr(agent.addr())
        .tls(certs.client_tls()?)
        .source(SourceInfo::new("panic-example", "0"))
        .build()?;
    PanicHook::new(client.clone()).install()?;

    let worker = std::thread::Builder::new()
        .name("order-worker".into())
        .spawn(|| {
            let orders: Vec<u32> = Vec::new();
            println!("order {}", orders[3]);
        })?;
    // Rust's own hook, which the panic hook called after it sent, has printed
    // the usual message to stderr by now.
    assert!(worker.join().is_err());

    // The hook returned only once the agent had confirmed the log: it is
    // there now, without a flush or a close.
    let received = agent.proto_envelopes();
    for envelope in &received {
        match &envelope.message {
            Some(loggregator::proto::envelope::envelope::Message::Log(log)) => {
                println!("  log {}/{}:", envelope.source_id, envelope.instance_id);
                for line in String::from_utf8_lossy(&log.payload).lines() {
                    println!("    | {line}");
                }
            }
            _ => println!("  {}", Envelope::from_proto(envelope.clone())),
        }
    }
    let logs = received.iter().filter(|e| e.has_log()).count();
    let counters = received.iter().filter(|e| e.has_counter()).count();
    client.close(Duration::from_secs(5))?;
    println!(
        "received {} envelopes: log={logs} counter={counters}; dropped {}",
        received.len(),
        client.stats().dropped.total()
    );
    Ok(())
}
