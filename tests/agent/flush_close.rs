//! `flush` and `close`: flush writes everything emitted before it, close
//! confirms the stream or reports how the agent ended it, dropping the last
//! handle delivers (and gives up at its bound while the agent is down), and
//! the longest timeouts are accepted. What they answer about losses is in
//! flush_close_answer.rs.

use std::time::{Duration, Instant};

use loggregator::spy::{StatusCode, StreamEnd, TestCerts};
use loggregator::{Envelope, Error};

use crate::common::{
    HOUR, LOADED_MACHINE, WAIT, capture_logs, fast_retry_builder, logged, numbered, setup,
    unused_addr,
};

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
fn dropping_the_last_handle_while_the_agent_is_down_gives_up_at_the_bound() {
    capture_logs();
    let certs = TestCerts::generate().unwrap();
    let addr = unused_addr();
    let bound = Duration::from_millis(300);
    let client = fast_retry_builder(&certs, &addr)
        .close_on_drop_timeout(bound)
        .build()
        .unwrap();
    for n in 0..10 {
        client.emit(numbered(n));
    }
    let started = Instant::now();
    drop(client);
    let took = started.elapsed();
    // Nobody listens: only the bound can end the wait, and drop keeps it
    // as close does (its timeout plus CLOSE_MARGIN, and what a loaded
    // machine adds to a thread woken at its deadline).
    assert!(took >= bound, "gave up before the bound: {took:?}");
    assert!(
        took < bound + loggregator::CLOSE_MARGIN + LOADED_MACHINE,
        "dropping took {took:?}"
    );
    let summary = format!("closed the client for {addr}: emitted 10, sent 0, dropped 10");
    assert_eq!(logged(&summary).len(), 1, "{:?}", logged(&addr));
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
