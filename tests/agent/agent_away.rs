//! An agent that is away: absent when the client is built (everything
//! arrives once it starts), stalled (emit never blocks, flush and close keep
//! their timeouts), or down while flush and close are called (flush times
//! out, close gives up and counts); each outage logs one warning.

use std::time::{Duration, Instant};

use loggregator::spy::{SpyAgent, TestCerts};
use loggregator::{Envelope, Error};

use crate::common::{
    LOADED_MACHINE, WAIT, assert_closed_accounting, capture_logs, fast_retry_builder, logged,
    numbered, seqs, setup, start_agent, unused_addr, wait_for_stats,
};

#[test]
fn an_agent_absent_at_build_gets_everything_once_it_starts() {
    capture_logs();
    let certs = TestCerts::generate().unwrap();
    let addr = unused_addr();
    let client = fast_retry_builder(&certs, &addr).build().unwrap();
    for n in 0..500 {
        client.emit(numbered(n));
    }
    // Nobody listens yet: nothing can be written.
    assert!(matches!(
        client.flush(Duration::from_millis(200)),
        Err(Error::Timeout { .. })
    ));
    let agent = start_agent(&certs, &addr);
    client.flush(WAIT).unwrap();
    agent.wait_for_proto_envelopes(500, WAIT);
    assert_eq!(seqs(&agent), (0..500).collect::<Vec<_>>());
    client.close(WAIT).unwrap();
    let stats = client.stats();
    assert!(stats.errors >= 1, "{stats:?}");
    assert_eq!(stats.sent, 500);
    assert_closed_accounting(&stats);
}

#[test]
fn a_stalled_agent_never_blocks_emit_and_flush_and_close_keep_their_timeouts() {
    let certs = TestCerts::generate().unwrap();
    let agent = SpyAgent::start(&certs).unwrap();
    let client = fast_retry_builder(&certs, agent.addr())
        .queue_capacity(100)
        .build()
        .unwrap();
    agent.pause_reading();
    let payload = vec![b'x'; 10_000];
    // Emit until HTTP/2 flow control holds the sender's write: then a flush
    // cannot finish, and nothing more is accepted, flush after flush (a
    // busy machine can make one flush time out while writes still go on).
    let mut rounds = 0;
    let mut held_for = 0;
    while held_for < 3 {
        for _ in 0..100 {
            client.emit(Envelope::log(payload.clone()));
        }
        let sent = client.stats().sent;
        match client.flush(Duration::from_millis(100)) {
            Err(Error::Timeout { .. }) if client.stats().sent == sent => held_for += 1,
            Err(Error::Timeout { .. }) => held_for = 0,
            other => other.unwrap(),
        }
        rounds += 1;
        assert!(rounds < 10_000, "the writes never stalled");
    }
    // The sender is stuck: emit still returns at once, dropping what does not
    // fit (the queue's 100, and one more batch the sender builds while a
    // write is in flight).
    let mut slowest = Duration::ZERO;
    for _ in 0..1_000 {
        let started = Instant::now();
        client.emit(Envelope::log(payload.clone()));
        slowest = slowest.max(started.elapsed());
    }
    // An emit that waited for the stuck writer would wait until close.
    assert!(slowest < LOADED_MACHINE, "an emit took {slowest:?}");
    assert!(
        client.stats().dropped.queue_full >= 700,
        "{:?}",
        client.stats()
    );
    let timeout = Duration::from_millis(500);
    let started = Instant::now();
    match client.close(timeout) {
        Err(Error::Timeout { undelivered, .. }) => assert!(undelivered > 0),
        other => panic!("{other:?}"),
    }
    let took = started.elapsed();
    assert!(
        took < timeout + loggregator::CLOSE_MARGIN + LOADED_MACHINE,
        "close took {took:?}"
    );
    let stats = client.stats();
    assert!(stats.dropped.gave_up > 0, "{stats:?}");
    assert_closed_accounting(&stats);
    agent.resume_reading();
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

/// However many attempts an outage fails, it logs one warning with its
/// cause (naming the agent): a warning per attempt would flood the log of
/// a service whose agent is away for hours. The agent's return ends the
/// outage, and the next outage warns again.
#[test]
fn each_outage_logs_one_warning_however_many_attempts_fail() {
    capture_logs();
    let certs = TestCerts::generate().unwrap();
    let addr = unused_addr();
    let client = fast_retry_builder(&certs, &addr).build().unwrap();
    let warning = format!("cannot deliver envelopes: agent at {addr}");
    client.emit(numbered(0));
    wait_for_stats(&client, |s| s.errors >= 5);
    assert_eq!(logged(&warning).len(), 1, "{:?}", logged(&addr));

    let agent = start_agent(&certs, &addr);
    client.flush(WAIT).unwrap();
    // A flush returns once gRPC took the write; the agent reads it after.
    agent.wait_for_proto_envelopes(1, WAIT);
    assert_eq!(seqs(&agent), vec![0]);
    agent.shutdown();
    client.emit(numbered(1));
    let errors = client.stats().errors;
    wait_for_stats(&client, |s| s.errors >= errors + 5);
    assert_eq!(logged(&warning).len(), 2, "{:?}", logged(&addr));
    let _ = client.close(Duration::from_millis(100));
    assert_closed_accounting(&client.stats());
}
