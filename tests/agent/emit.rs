//! `emit` from many threads: every envelope arrives exactly once and in
//! each thread's order; the handle is Send + Sync + Clone; after close,
//! emits are dropped and counted and the calls answer `Closed`.

use std::collections::HashMap;
use std::sync::Arc;

use loggregator::{Envelope, Error};

use crate::common::{WAIT, join_within, setup};

#[test]
fn eight_threads_of_ten_thousand_arrive_exactly_once_in_order() {
    const THREADS: usize = 8;
    const EACH: i64 = 10_000;
    let setup = setup();
    let client = setup.builder().queue_capacity(100_000).build().unwrap();
    let barrier = Arc::new(std::sync::Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (client, barrier) = (client.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for n in 0..EACH {
                    client.emit(
                        Envelope::log("x")
                            .source_id(format!("thread-{t}"))
                            .timestamp(n),
                    );
                }
            })
        })
        .collect();
    for thread in threads {
        join_within(thread, WAIT);
    }
    client.close(WAIT).unwrap();
    let stats = client.stats();
    assert_eq!(
        (stats.emitted, stats.sent, stats.dropped.total()),
        (80_000, 80_000, 0)
    );

    let mut seen: HashMap<String, Vec<i64>> = HashMap::new();
    for envelope in setup.agent.proto_envelopes() {
        seen.entry(envelope.source_id.clone())
            .or_default()
            .push(envelope.timestamp);
    }
    assert_eq!(seen.len(), THREADS);
    for (source, timestamps) in seen {
        assert_eq!(timestamps, (0..EACH).collect::<Vec<_>>(), "{source}");
    }
}

#[test]
fn after_close_emits_are_dropped_and_counted_and_calls_say_closed() {
    let setup = setup();
    let client = setup.client();
    client.emit(Envelope::log("before"));
    client.close(WAIT).unwrap();
    client.emit(Envelope::log("after"));
    assert!(matches!(client.flush(WAIT), Err(Error::Closed)));
    assert!(matches!(
        client.send(vec![Envelope::log("x").into()], WAIT),
        Err(Error::Closed)
    ));
    client.close(WAIT).unwrap();
    let stats = client.stats();
    assert_eq!((stats.emitted, stats.sent, stats.dropped.closed), (2, 1, 1));
    assert_eq!(setup.agent.proto_envelopes().len(), 1);
}

#[test]
fn the_handle_is_send_sync_and_clone() {
    fn assert_traits<T: Send + Sync + Clone + 'static>() {}
    assert_traits::<loggregator::IngressClient>();
}
