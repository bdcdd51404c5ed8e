//! At least once, nothing is lost: through agent restarts, streams the
//! agent ended with an error or before the client half-closed them,
//! batches over the agent's message limit (split until they fit), and
//! connections reset, stalled, half-open or refused.

use std::collections::HashSet;
use std::time::Duration;

use loggregator::spy::{SpyAgent, StatusCode, TestCerts};
use loggregator::{Delivery, Envelope, Error};

use crate::common::{
    WAIT, assert_closed_accounting, assert_every_one_received, close_naming_one_undelivered,
    emit_through_restarts, fast_retry_builder, flush_naming_one_undelivered, numbered, seqs,
    sorted_seqs,
};
use crate::fault_proxy::Mode;
use crate::proxied::{Between, at_least_once_through};

#[test]
fn at_least_once_every_envelope_survives_three_agent_restarts() {
    const TOTAL: u64 = 50_000;
    let certs = TestCerts::generate().unwrap();
    let agent = SpyAgent::start(&certs).unwrap();
    let client = fast_retry_builder(&certs, agent.addr())
        .delivery(Delivery::AtLeastOnce)
        .confirm_interval(Duration::from_millis(200))
        .queue_capacity(TOTAL as usize)
        .build()
        .unwrap();
    let _ = emit_through_restarts(&client, &agent, TOTAL);
    client.close(WAIT).unwrap();
    assert_every_one_received(&agent, TOTAL);
    let stats = client.stats();
    assert_eq!((stats.sent, stats.dropped.total()), (TOTAL, 0), "{stats:?}");
    assert!(stats.reconnects >= 3, "{stats:?}");
    eprintln!(
        "at least once through 3 restarts: received {} for {TOTAL}, replayed {}",
        agent.proto_envelopes().len(),
        stats.replayed
    );
    assert_closed_accounting(&stats);
}

#[test]
fn a_stream_ended_with_an_error_is_replayed_at_least_once() {
    for code in [StatusCode::Unavailable, StatusCode::ResourceExhausted] {
        let certs = TestCerts::generate().unwrap();
        let agent = SpyAgent::start(&certs).unwrap();
        let client = fast_retry_builder(&certs, agent.addr())
            .delivery(Delivery::AtLeastOnce)
            .build()
            .unwrap();
        agent.fail_next_stream(code, "injected");
        client.emit(numbered(0));
        flush_naming_one_undelivered(&client);
        client.emit(numbered(1));
        close_naming_one_undelivered(&client);
        let received: HashSet<u64> = seqs(&agent).into_iter().collect();
        let stats = client.stats();
        // Envelope 0 is written again either as a replay (its write had
        // succeeded) or as a retry (its write already saw the stream end) -
        // unless the refusal came on its own new stream as too large, which
        // names it the culprit.
        if stats.dropped.too_large == 1 {
            assert_eq!(
                (code, received),
                (StatusCode::ResourceExhausted, HashSet::from([1]))
            );
        } else {
            assert_eq!(received, HashSet::from([0, 1]), "{code:?}");
        }
        assert!(stats.errors >= 1, "{stats:?}");
        assert_closed_accounting(&stats);
    }
}

#[test]
fn at_least_once_a_stream_the_agent_ended_early_with_eof_is_replayed() {
    let certs = TestCerts::generate().unwrap();
    let agent = SpyAgent::start(&certs).unwrap();
    let client = fast_retry_builder(&certs, agent.addr())
        .delivery(Delivery::AtLeastOnce)
        .confirm_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    // The agent ends the stream that brings envelope 1 as the real agents
    // end a half-closed one, without reading it; it reads nothing until
    // the client has seen gRPC accept the write, so the write itself
    // cannot fail.
    agent.fail_next_stream(StatusCode::Unknown, "EOF");
    agent.pause_reading();
    client.emit(numbered(1));
    client.flush(WAIT).unwrap();
    agent.resume_reading();
    assert!(agent.wait_for_streams_ended(1, WAIT));
    // A unary call on the same connection, answered after the agent ended
    // the stream: by then the client has the stream's end, so the
    // half-close that close makes finds the call over.
    client
        .send(vec![Envelope::event("after", "the end").into()], WAIT)
        .unwrap();
    assert_eq!(client.stats().errors, 0, "no write met the end");
    client.close(WAIT).unwrap();
    let stats = client.stats();
    let received: Vec<u64> = sorted_seqs(&agent)
        .into_iter()
        .filter(|n| *n == 1)
        .collect();
    assert_eq!(received, vec![1], "{stats:?}");
    // Written again on a stream of its own.
    assert_eq!(stats.reconnects, 1, "{stats:?}");
    assert_eq!(stats.sent, 1, "{stats:?}");
    assert_closed_accounting(&stats);
}

#[test]
fn at_least_once_batches_over_the_agents_message_limit_are_split_until_they_fit() {
    let certs = TestCerts::generate().unwrap();
    let agent = SpyAgent::builder()
        .max_message_bytes(16 * 1024)
        .start(&certs)
        .unwrap();
    let client = fast_retry_builder(&certs, agent.addr())
        .delivery(Delivery::AtLeastOnce)
        .batch_max_envelopes(1000)
        .build()
        .unwrap();
    for n in 0..40 {
        client.emit(Envelope::log(vec![b'x'; 1000]).timestamp(n).build());
    }
    client.emit(Envelope::log(vec![b'y'; 20_000]).timestamp(40).build());
    // Close says what could not be delivered, and why.
    match client.close(WAIT) {
        Err(Error::Undelivered { count: 1, cause }) => {
            assert!(cause.contains("RESOURCE_EXHAUSTED"), "{cause}")
        }
        other => panic!("{other:?}"),
    }
    let stats = client.stats();
    let received: HashSet<u64> = seqs(&agent).into_iter().collect();
    assert_eq!(received, (0..40).collect::<HashSet<_>>());
    assert_eq!((stats.sent, stats.dropped.too_large), (40, 1), "{stats:?}");
    assert!(stats.last_error.unwrap().contains("RESOURCE_EXHAUSTED"));
    assert_closed_accounting(&client.stats());
}

#[test]
fn at_least_once_every_envelope_survives_connections_reset() {
    at_least_once_through(&[Mode::Reset], Between::Recovery);
}

#[test]
fn at_least_once_every_envelope_survives_a_stalled_connection() {
    at_least_once_through(&[Mode::Stall], Between::Recovery);
}

#[test]
fn at_least_once_every_envelope_survives_a_half_open_connection() {
    at_least_once_through(&[Mode::HalfOpen], Between::Recovery);
}

#[test]
fn at_least_once_every_envelope_survives_refused_connections() {
    at_least_once_through(&[Mode::Refuse], Between::Recovery);
}

#[test]
fn at_least_once_every_envelope_survives_reset_stall_half_open_and_refusal_in_turn() {
    at_least_once_through(
        &[Mode::Reset, Mode::Stall, Mode::HalfOpen, Mode::Refuse],
        Between::Recovery,
    );
}

/// Here the half-open connections are the ones the stall left, on which
/// the TLS handshake never ended.
#[test]
fn at_least_once_every_envelope_survives_reset_stall_half_open_and_refusal_one_upon_another() {
    at_least_once_through(
        &[Mode::Reset, Mode::Stall, Mode::HalfOpen, Mode::Refuse],
        Between::Nothing,
    );
}
