//! At most once, what may be lost and nothing more: what dying streams
//! had accepted at agent restarts, at most a batch or two a stream on a
//! reset or closed connection, a stream ended with an error (replaced, the
//! cause kept), and an envelope over the agent's limit (counted or
//! reported).

use std::collections::HashSet;
use std::time::Duration;

use loggregator::spy::{SpyAgent, StatusCode, TestCerts};
use loggregator::{Envelope, Error};

use crate::common::{
    WAIT, assert_closed_accounting, close_naming_one_undelivered, emit_through_restarts,
    fast_retry_builder, flush_naming_one_undelivered, numbered, seqs,
};
use crate::fault_proxy::Mode;
use crate::proxied::Proxied;

#[test]
fn at_most_once_loses_only_what_dying_streams_had_accepted() {
    const TOTAL: u64 = 50_000;
    let certs = TestCerts::generate().unwrap();
    let agent = SpyAgent::start(&certs).unwrap();
    let client = fast_retry_builder(&certs, agent.addr())
        .queue_capacity(TOTAL as usize)
        .build()
        .unwrap();
    let restarts = emit_through_restarts(&client, &agent, TOTAL);
    match client.close(WAIT) {
        Ok(()) => {}
        // The last stream was one the last restart cut: close reports it.
        Err(Error::Agent { status, .. }) if status.starts_with("UNAVAILABLE") => {}
        other => panic!("{other:?}"),
    }
    let received = seqs(&agent);
    let unique: HashSet<u64> = received.iter().copied().collect();
    assert_eq!(
        unique.len(),
        received.len(),
        "at most once never duplicates"
    );
    let missing: Vec<u64> = (0..TOTAL).filter(|n| !unique.contains(n)).collect();
    // Each restart can only have lost what its dying stream carried
    // unread: every missing envelope is one of those, and each restart
    // lost no more than it had in flight.
    for (round, restart) in restarts.iter().enumerate() {
        let lost = missing
            .iter()
            .filter(|&&n| restart.may_have_lost(n))
            .count();
        eprintln!(
            "at most once, restart {}: lost {lost} of the {} in flight {restart:?}",
            round + 1,
            restart.handled.saturating_sub(restart.read_before)
        );
        assert!(
            restart.read_before <= restart.handled,
            "the agent read more than the client wrote: {restart:?}"
        );
    }
    let unexplained: Vec<u64> = missing
        .iter()
        .copied()
        .filter(|&n| !restarts.iter().any(|r| r.may_have_lost(n)))
        .collect();
    assert!(
        unexplained.is_empty(),
        "{} lost that no dying stream carried, first {:?}; restarts {restarts:?}",
        unexplained.len(),
        &unexplained[..unexplained.len().min(10)]
    );
    let stats = client.stats();
    // A write cut short by a restart may have reached the agent: at most
    // once gives it up rather than risk a duplicate.
    assert_eq!(
        stats.sent + stats.dropped.gave_up,
        TOTAL,
        "lost envelopes were accepted by gRPC or given up, {stats:?}"
    );
    assert_eq!(stats.dropped.total(), stats.dropped.gave_up, "{stats:?}");
    assert!(
        missing.len() as u64 >= stats.dropped.gave_up,
        "what was given up never arrives: {stats:?}"
    );
    assert_closed_accounting(&stats);
}

#[test]
fn at_most_once_a_reset_or_closed_connection_loses_at_most_a_batch_or_two_a_stream() {
    const STREAMS: u64 = 2;
    const BATCH: u64 = 100;
    const BEFORE: u64 = 1_000;
    // What the agent had not read when the connection died is what the
    // client had written on it since: the test reaches the fault with
    // nothing unread, so that is what it writes until it notices. Each
    // stream can lose a batch that gRPC took before it read the reset (or
    // the FIN), counted sent, and then the batch whose write met the ended
    // call, given up (it may have gone out). A stream learns of the end on
    // its own next write, so a stream not yet written on since loses its
    // batch after the client first noticed, within one batch a stream.
    const LOSS_BOUND: u64 = 2 * STREAMS * BATCH;
    for fault in [Mode::Reset, Mode::Refuse] {
        let proxied = Proxied::start();
        let client = proxied
            .builder()
            .streams(STREAMS as usize)
            .batch_max_envelopes(BATCH as usize)
            .build()
            .unwrap();
        for n in 0..BEFORE {
            client.emit(numbered(n));
        }
        client.flush(WAIT).unwrap();
        proxied
            .agent
            .wait_for_proto_envelopes(BEFORE as usize, WAIT);
        proxied.proxy.set_mode(fault);
        let mut n = BEFORE;
        while client.stats().errors == 0 {
            for _ in 0..BATCH {
                client.emit(numbered(n));
                n += 1;
            }
            // Given up or written again, whatever its write met; a batch
            // written again waits in backoff until the proxy forwards.
            let _ = client.flush(Duration::from_secs(1));
            assert!(n < BEFORE + 100 * BATCH, "{fault:?} never noticed");
        }
        let noticed = n;
        proxied.proxy.set_mode(Mode::Pass);
        for _ in 0..10 * BATCH {
            client.emit(numbered(n));
            n += 1;
        }
        let _ = client.close(WAIT);
        let received = seqs(&proxied.agent);
        let unique: HashSet<u64> = received.iter().copied().collect();
        assert_eq!(unique.len(), received.len(), "{fault:?}: duplicates");
        let stats = client.stats();
        let missing: Vec<u64> = (0..n).filter(|k| !unique.contains(k)).collect();
        assert!(
            missing.len() as u64 <= LOSS_BOUND
                && missing
                    .iter()
                    .all(|&k| (BEFORE..noticed + STREAMS * BATCH).contains(&k)),
            "{fault:?}: lost {} of {n}, noticed at {noticed}: {:?}… {stats:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        eprintln!(
            "at most once, {fault:?}: lost {} ({} given up), noticed after {}",
            missing.len(),
            stats.dropped.gave_up,
            noticed - BEFORE
        );
        assert!(stats.errors >= 1, "{stats:?}");
        assert_eq!(stats.sent + stats.dropped.total(), n, "{stats:?}");
        assert_closed_accounting(&stats);
    }
}

#[test]
fn a_stream_ended_with_an_error_is_replaced_and_the_cause_kept_at_most_once() {
    for (code, name) in [
        (StatusCode::Unavailable, "UNAVAILABLE"),
        (StatusCode::ResourceExhausted, "RESOURCE_EXHAUSTED"),
    ] {
        let certs = TestCerts::generate().unwrap();
        let agent = SpyAgent::start(&certs).unwrap();
        let client = fast_retry_builder(&certs, agent.addr()).build().unwrap();
        agent.fail_next_stream(code, "injected");
        client.emit(numbered(0));
        flush_naming_one_undelivered(&client);
        assert!(agent.wait_for_streams_ended(1, WAIT));
        // The client learns the stream is gone on its next write, which is
        // then made again on a new stream.
        let mut n = 1;
        while client.stats().errors == 0 {
            client.emit(numbered(n));
            flush_naming_one_undelivered(&client);
            n += 1;
            assert!(n < 1000, "the failure was never noticed");
        }
        client.emit(numbered(n));
        close_naming_one_undelivered(&client);
        let stats = client.stats();
        assert!(
            stats
                .last_error
                .as_deref()
                .unwrap()
                .contains(&format!("{name}: injected")),
            "{stats:?}"
        );
        assert!(stats.reconnects >= 1, "{stats:?}");
        let received = seqs(&agent);
        // The envelope whose write met the ended stream is written again,
        // unless the refusal came on its own new stream and named it too
        // large, or gRPC had already taken the write when the call ended, so
        // that the agent might have read it: at most once then gives it up.
        let expected: &[u64] = if stats.dropped.too_large == 1 || stats.dropped.gave_up == 1 {
            &[n]
        } else {
            &[n - 1, n]
        };
        assert!(
            received.ends_with(expected),
            "{name}: {received:?} {stats:?}"
        );
        assert_closed_accounting(&stats);
    }
}

#[test]
fn at_most_once_an_envelope_over_the_agents_limit_is_counted_or_reported() {
    let certs = TestCerts::generate().unwrap();
    let agent = SpyAgent::builder()
        .max_message_bytes(16 * 1024)
        .start(&certs)
        .unwrap();
    let client = fast_retry_builder(&certs, agent.addr()).build().unwrap();
    client.emit(Envelope::log(vec![b'y'; 20_000]));
    let closed = client.close(WAIT);
    let stats = client.stats();
    // Either its own write saw the refusal (dropped as too large), or gRPC had
    // accepted it (counted sent, as `Delivery::AtMostOnce` says) and the end
    // of the stream carries the refusal.
    match closed {
        Err(Error::Undelivered { count: 1, .. }) => {
            assert_eq!((stats.sent, stats.dropped.too_large), (0, 1), "{stats:?}")
        }
        Err(Error::Agent { status, .. }) => {
            assert!(status.starts_with("RESOURCE_EXHAUSTED"), "{status}");
            assert_eq!((stats.sent, stats.dropped.total()), (1, 0), "{stats:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(stats.errors >= 1, "{stats:?}");
    assert!(stats.last_error.unwrap().contains("RESOURCE_EXHAUSTED"));
    assert!(agent.proto_envelopes().is_empty());
    assert_closed_accounting(&client.stats());
}
