//! Ordering under concurrency, flush, close and drop.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use loggregator::spy::{StatusCode, StreamEnd};
use loggregator::{Envelope, Error};

use crate::common::{WAIT, join_within, setup, wait_for_stats};

const HOUR: Duration = Duration::from_secs(3600);

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
fn flush_writes_everything_emitted_before_it() {
    let setup = setup();
    let client = setup
        .builder()
        .batch_max_envelopes(1000)
        .flush_interval(HOUR)
        .build()
        .unwrap();
    for n in 0..5 {
        client.emit(Envelope::log(format!("{n}")));
    }
    client.flush(WAIT).unwrap();
    // The batch never fills and the interval is an hour: the agent can only
    // have these because flush wrote them.
    assert_eq!(setup.agent.wait_for_proto_envelopes(5, WAIT).len(), 5);
    let stats = client.stats();
    assert_eq!((stats.sent, stats.queued, stats.in_flight), (5, 0, 0));
    client.close(WAIT).unwrap();
}

#[test]
fn close_confirms_the_stream_when_the_agent_answers_eof_or_ok() {
    for end in [StreamEnd::Eof, StreamEnd::Ok] {
        let setup = setup();
        setup.agent.set_stream_end(end.clone());
        let client = setup.client();
        client.emit(Envelope::log("last words"));
        client
            .close(WAIT)
            .unwrap_or_else(|e| panic!("{end:?}: {e}"));
        assert!(setup.agent.wait_for_streams_ended(1, WAIT), "{end:?}");
        assert_eq!(setup.agent.proto_envelopes().len(), 1, "{end:?}");
    }
}

#[test]
fn close_reports_an_agent_that_ends_the_stream_with_an_error() {
    let setup = setup();
    setup
        .agent
        .set_stream_end(StreamEnd::Status(StatusCode::Internal, "disk full".into()));
    let client = setup.client();
    client.emit(Envelope::log("x"));
    match client.close(WAIT) {
        Err(Error::Agent { status, .. }) => {
            assert!(status.contains("INTERNAL: disk full"), "{status}")
        }
        other => panic!("expected an agent error, got {other:?}"),
    }
    assert!(client.stats().last_error.unwrap().contains("disk full"));
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
fn dropping_a_clone_does_nothing_and_dropping_the_last_handle_delivers() {
    let setup = setup();
    let client = setup
        .builder()
        .batch_max_envelopes(1000)
        .flush_interval(HOUR)
        .build()
        .unwrap();
    let clone = client.clone();
    clone.emit(Envelope::log("from the clone"));
    drop(clone);
    client.emit(Envelope::log("from the original"));
    client.flush(WAIT).unwrap();
    assert_eq!(setup.agent.wait_for_proto_envelopes(2, WAIT).len(), 2);

    client.emit(Envelope::log("queued at drop"));
    drop(client);
    // Drop closed the client: the last envelope was written and the stream ended.
    assert_eq!(setup.agent.proto_envelopes().len(), 3);
    assert!(setup.agent.wait_for_streams_ended(1, WAIT));
}

#[test]
fn the_handle_is_send_sync_and_clone() {
    fn assert_traits<T: Send + Sync + Clone + 'static>() {}
    assert_traits::<loggregator::IngressClient>();
}

#[test]
fn while_the_agent_is_down_flush_times_out_and_close_gives_up_and_counts() {
    let setup = setup();
    let client = loggregator::IngressClient::builder()
        .addr(crate::common::unused_addr())
        .tls(setup.certs.client_tls().unwrap())
        .batch_max_envelopes(10)
        .build()
        .unwrap();
    for n in 0..25 {
        client.emit(Envelope::log(format!("{n}")));
    }
    match client.flush(Duration::from_millis(300)) {
        Err(Error::Timeout {
            undelivered: 25, ..
        }) => {}
        other => panic!("{other:?}"),
    }
    // The flush timed out on its own deadline; the refusal may be told a
    // little later on a loaded machine.
    wait_for_stats(&client, |s| {
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("no agent is listening"))
    });
    match client.close(Duration::from_millis(300)) {
        Err(Error::Timeout {
            undelivered: 25, ..
        }) => {}
        other => panic!("{other:?}"),
    }
    let stats = client.stats();
    assert_eq!(
        (
            stats.emitted,
            stats.dropped.gave_up,
            stats.sent,
            stats.in_flight
        ),
        (25, 25, 0, 0)
    );
}

#[test]
fn the_longest_timeouts_are_accepted_without_overflow() {
    let setup = setup();
    let client = setup.client();
    // The calls may wait forever by their timeouts: they run on a thread
    // of their own, and a hang fails the test within WAIT.
    let (done, finished) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        client.emit(Envelope::log("x"));
        let flushed = client.flush(Duration::MAX);
        let sent = client.send(vec![Envelope::log("y").into()], Duration::MAX);
        let closed = client.close(Duration::MAX);
        let _ = done.send((flushed, sent, closed));
    });
    let (flushed, sent, closed) = finished
        .recv_timeout(WAIT)
        .expect("the calls with Duration::MAX panicked, or did not return within WAIT");
    flushed.unwrap();
    sent.unwrap();
    closed.unwrap();
    assert_eq!(setup.agent.proto_envelopes().len(), 2);
}
