//! `log` and `tracing` in one program, set up the one way the docs show:
//! tracing-subscriber (default features) `init()` with a `TracingLayer`,
//! which also hands `log` records to the layer through tracing-log. In a
//! test binary of its own: it sets the process's logger and subscriber.

use std::collections::HashMap;
use std::time::Duration;

use loggregator::spy::{SpyAgent, TestCerts};
use loggregator::{Error, GlobalSlot, IngressClient, LogBridge, SourceInfo, TracingLayer};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

const WAIT: Duration = Duration::from_secs(20);
const THREADS: usize = 4;
const PER_THREAD: usize = 200;

#[test]
fn both_facades_from_many_threads_arrive_once_each_without_feedback() {
    let certs = TestCerts::generate().unwrap();
    let agent = SpyAgent::start(&certs).unwrap();
    let client = IngressClient::builder()
        .addr(agent.addr())
        .tls(certs.client_tls().unwrap())
        .source(SourceInfo::new("both-facades", "0"))
        .build()
        .unwrap();
    tracing_subscriber::registry()
        .with(TracingLayer::new(client.clone()).with_filter(LevelFilter::INFO))
        .init();

    // The `log` slot is tracing-log's now: a bridge says so, and what to do.
    let refused = LogBridge::new(client.clone()).install();
    let Err(
        error @ Error::AlreadyInstalled {
            slot: GlobalSlot::Logger,
            ..
        },
    ) = refused
    else {
        panic!("{refused:?}");
    };
    let message = error.to_string();
    assert!(message.contains("tracing-log"), "{message}");
    assert!(message.contains("leave the LogBridge out"), "{message}");

    let workers: Vec<_> = (0..THREADS)
        .map(|thread| {
            std::thread::spawn(move || {
                let span = tracing::info_span!("work", thread);
                let _entered = span.enter();
                for seq in 0..PER_THREAD {
                    log::info!(target: "dep::db", "log {thread} {seq}");
                    tracing::warn!(seq, "tracing {thread} {seq}");
                    log::debug!("below the level: not sent");
                    // What the client's own diagnostics look like when a
                    // program thread logs them (`close` does): never sent.
                    log::warn!(target: "loggregator::sender", "own {thread} {seq}");
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
        if let Some(text) = envelope.text() {
            *seen.entry(text.into_owned()).or_default() += 1;
        }
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
    let counts = agent.kind_counts();
    assert_eq!(counts.log as usize, 2 * THREADS * PER_THREAD, "{counts}");
    assert_eq!(
        counts.timer as usize, THREADS,
        "one span a thread: {counts}"
    );

    // A `log` record reads as the bridge would send it: its own target and
    // level, no tracing-log metadata as tags; and the trace it was in.
    let record = received
        .iter()
        .find(|e| e.text().as_deref() == Some("log 0 0"))
        .unwrap();
    assert_eq!(record.tag("target"), Some("dep::db"));
    assert_eq!(record.tag("level"), Some("info"));
    assert_eq!(record.is_stderr(), Some(false));
    assert_eq!(record.source_id(), "both-facades");
    assert!(
        record.tags().keys().all(|name| !name.starts_with("log.")),
        "{record}"
    );
    assert_eq!(record.tag("trace_id").map(str::len), Some(32), "{record}");
    let event = received
        .iter()
        .find(|e| e.text().as_deref() == Some("tracing 0 0"))
        .unwrap();
    assert_eq!(event.tag("seq"), Some("0"));
    assert_eq!(event.is_stderr(), Some(true));
    assert_eq!(event.tag("trace_id"), record.tag("trace_id"));

    // Nothing of the client's own came back, not even close's last line,
    // logged on this thread after the client stopped taking envelopes.
    let stats = client.stats();
    assert_eq!(stats.dropped.total(), 0, "{stats}");
    assert_eq!(stats.emitted, stats.sent, "{stats}");
    assert_eq!(received.len() as u64, stats.sent, "{stats}");
}
