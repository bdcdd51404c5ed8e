//! The documented alternative for a program that needs its `log` records'
//! key-values as tags: `LogBridge` first, then the `tracing` subscriber
//! set with `set_global_default`, which leaves `log` alone. In a test
//! binary of its own: it sets the process's logger and subscriber.

use std::collections::HashMap;
use std::time::Duration;

use loggregator::spy::{SpyAgent, TestCerts};
use loggregator::{IngressClient, LogBridge, TracingLayer};
use tracing_subscriber::layer::SubscriberExt;

const WAIT: Duration = Duration::from_secs(20);
const THREADS: usize = 4;
const PER_THREAD: usize = 100;

#[test]
fn a_bridge_and_a_layer_set_without_init_send_each_record_once_with_its_key_values() {
    let certs = TestCerts::generate().unwrap();
    let agent = SpyAgent::start(&certs).unwrap();
    let client = IngressClient::builder()
        .addr(agent.addr())
        .tls(certs.client_tls().unwrap())
        .build()
        .unwrap();
    LogBridge::new(client.clone()).install().unwrap();
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(TracingLayer::new(client.clone())),
    )
    .unwrap();

    let workers: Vec<_> = (0..THREADS)
        .map(|thread| {
            std::thread::spawn(move || {
                for seq in 0..PER_THREAD {
                    log::info!(target: "dep", thread, seq; "log {thread} {seq}");
                    tracing::info!(seq, "tracing {thread} {seq}");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    client.close(WAIT).unwrap();

    let received = agent.envelopes();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for envelope in &received {
        *seen
            .entry(envelope.text().unwrap_or_default().into_owned())
            .or_default() += 1;
    }
    for thread in 0..THREADS {
        for seq in 0..PER_THREAD {
            for text in [
                format!("log {thread} {seq}"),
                format!("tracing {thread} {seq}"),
            ] {
                assert_eq!(seen.get(&text), Some(&1), "{text}");
            }
        }
    }
    assert_eq!(received.len(), 2 * THREADS * PER_THREAD);
    let record = received
        .iter()
        .find(|e| e.text().as_deref() == Some("log 3 7"))
        .unwrap();
    assert_eq!(
        (
            record.tag("thread"),
            record.tag("seq"),
            record.tag("target")
        ),
        (Some("3"), Some("7"), Some("dep"))
    );
    let stats = client.stats();
    assert_eq!(stats.dropped.total(), 0, "{stats}");
}
