//! Faults injected into the real mTLS spy agent: absence, restarts, a
//! stalled reader, streams ended with errors, overflow, drop while down.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use loggregator::spy::{SpyAgent, StatusCode, TestCerts};
use loggregator::{Delivery, Envelope, Error, IngressClient, IngressClientBuilder, Overflow};

use crate::common::{
    LOADED_MACHINE, WAIT, assert_closed_accounting, assert_still_accounting, capture_logs,
    join_within, logged, start_agent, unused_addr, wait_for_stats,
};

pub const FAST_RETRY: (Duration, Duration) =
    (Duration::from_millis(10), Duration::from_millis(100));

fn builder(certs: &TestCerts, addr: &str) -> IngressClientBuilder {
    IngressClient::builder()
        .addr(addr)
        .tls(certs.client_tls().unwrap())
        .reconnect_backoff(FAST_RETRY.0, FAST_RETRY.1)
}

pub fn numbered(n: u64) -> Envelope {
    Envelope::log("n").timestamp(n as i64).build()
}

pub fn seqs(agent: &SpyAgent) -> Vec<u64> {
    agent
        .proto_envelopes()
        .iter()
        .map(|e| e.timestamp as u64)
        .collect()
}

#[test]
fn an_agent_absent_at_build_gets_everything_once_it_starts() {
    capture_logs();
    let certs = TestCerts::generate().unwrap();
    let addr = unused_addr();
    let client = builder(&certs, &addr).build().unwrap();
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

/// What one restart of the agent can have cost an at most once client.
#[derive(Debug, Clone, Copy)]
pub struct Restart {
    /// One past the highest envelope the agent had read just before it
    /// was shut down: everything below had reached it or was lost earlier.
    pub read_before: u64,
    /// Envelopes the client had finished with (`sent` or `gave_up`) once it
    /// had met the agent's absence: everything below went to the dying
    /// stream or earlier, nothing above ever did.
    pub handled: u64,
}

impl Restart {
    /// The envelopes the dying stream may have lost: those gRPC had
    /// accepted (or the client gave up) beyond what the agent had read.
    pub fn may_have_lost(&self, n: u64) -> bool {
        (self.read_before..self.handled).contains(&n)
    }
}

/// Emits `total` numbered envelopes from another thread while the agent is
/// restarted three times mid-stream; returns, for each restart, what the
/// client can have had in flight on the stream it killed.
pub fn emit_through_restarts(client: &IngressClient, agent: &SpyAgent, total: u64) -> Vec<Restart> {
    let emitter = {
        let client = client.clone();
        std::thread::spawn(move || {
            for n in 0..total {
                client.emit(numbered(n));
                if n % 64 == 63 {
                    // A steady rate rather than one burst, so restarts land mid-stream.
                    std::thread::sleep(Duration::from_micros(500));
                }
            }
        })
    };
    let mut restarts = Vec::new();
    for round in 1..=3 {
        agent.wait_for_proto_envelopes((total as usize / 4) * round, WAIT);
        let read_before = seqs(agent).into_iter().max().map_or(0, |n| n + 1);
        let errors = client.stats().errors;
        agent.shutdown();
        // The second failure since is a reconnection refused: by then the
        // dying stream's last write has been counted, sent or given up,
        // and with no agent nothing more can be. A client that has every
        // envelope behind it writes nothing more, and fails no more.
        let stats = wait_for_stats(client, |s| {
            s.errors >= errors + 2 || s.sent + s.dropped.gave_up == total
        });
        restarts.push(Restart {
            read_before,
            handled: stats.sent + stats.dropped.gave_up,
        });
        agent.restart().unwrap();
    }
    join_within(emitter, WAIT);
    // At most once, a write a restart cut short is given up, and this
    // flush reports it; callers check the counts.
    match client.flush(WAIT) {
        Ok(()) | Err(Error::Undelivered { .. }) => {}
        other => panic!("{other:?}"),
    }
    restarts
}

/// Every envelope numbered below `total` reached the agent.
pub fn assert_every_one_received(agent: &SpyAgent, total: u64) {
    let received: HashSet<u64> = seqs(agent).into_iter().collect();
    let missing: Vec<u64> = (0..total).filter(|n| !received.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "{} missing, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}

#[test]
fn at_least_once_every_envelope_survives_three_agent_restarts() {
    const TOTAL: u64 = 50_000;
    let certs = TestCerts::generate().unwrap();
    let agent = SpyAgent::start(&certs).unwrap();
    let client = builder(&certs, agent.addr())
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
fn at_most_once_loses_only_what_dying_streams_had_accepted() {
    const TOTAL: u64 = 50_000;
    let certs = TestCerts::generate().unwrap();
    let agent = SpyAgent::start(&certs).unwrap();
    let client = builder(&certs, agent.addr())
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
fn a_stalled_agent_never_blocks_emit_and_flush_and_close_keep_their_timeouts() {
    let certs = TestCerts::generate().unwrap();
    let agent = SpyAgent::start(&certs).unwrap();
    let client = builder(&certs, agent.addr())
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
fn a_stream_ended_with_an_error_is_replaced_and_the_cause_kept_at_most_once() {
    for (code, name) in [
        (StatusCode::Unavailable, "UNAVAILABLE"),
        (StatusCode::ResourceExhausted, "RESOURCE_EXHAUSTED"),
    ] {
        let certs = TestCerts::generate().unwrap();
        let agent = SpyAgent::start(&certs).unwrap();
        let client = builder(&certs, agent.addr()).build().unwrap();
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
fn a_stream_ended_with_an_error_is_replayed_at_least_once() {
    for code in [StatusCode::Unavailable, StatusCode::ResourceExhausted] {
        let certs = TestCerts::generate().unwrap();
        let agent = SpyAgent::start(&certs).unwrap();
        let client = builder(&certs, agent.addr())
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
fn at_least_once_batches_over_the_agents_message_limit_are_split_until_they_fit() {
    let certs = TestCerts::generate().unwrap();
    let agent = SpyAgent::builder()
        .max_message_bytes(16 * 1024)
        .start(&certs)
        .unwrap();
    let client = builder(&certs, agent.addr())
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
fn at_most_once_an_envelope_over_the_agents_limit_is_counted_or_reported() {
    let certs = TestCerts::generate().unwrap();
    let agent = SpyAgent::builder()
        .max_message_bytes(16 * 1024)
        .start(&certs)
        .unwrap();
    let client = builder(&certs, agent.addr()).build().unwrap();
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

/// Flushes; a RESOURCE_EXHAUSTED injected on a stream's first message may
/// name that envelope too large, and at most once gives up an envelope
/// whose write gRPC had taken when an injected error ended the call; flush
/// reports either.
fn flush_naming_one_undelivered(client: &IngressClient) {
    match client.flush(WAIT) {
        Ok(()) => {}
        Err(Error::Undelivered { count: 1, .. })
            if client.stats().dropped.too_large + client.stats().dropped.gave_up == 1 => {}
        other => panic!("{other:?}"),
    }
}

/// Closes; the one envelope [`flush_naming_one_undelivered`] allows for
/// may be lost after the last flush, and then close reports it.
fn close_naming_one_undelivered(client: &IngressClient) {
    match client.close(WAIT) {
        Ok(()) => {}
        Err(Error::Undelivered { count: 1, .. })
            if client.stats().dropped.too_large + client.stats().dropped.gave_up == 1 => {}
        other => panic!("{other:?}"),
    }
}

/// An agent that is down until started: the first envelope's batch is
/// stuck in backoff, so the queue holds exactly what the test emits next.
struct StuckClient {
    certs: TestCerts,
    addr: String,
    client: IngressClient,
}

fn stuck_client(overflow: Overflow) -> StuckClient {
    let certs = TestCerts::generate().unwrap();
    let addr = unused_addr();
    let client = builder(&certs, &addr)
        .overflow(overflow)
        .queue_capacity(4)
        .batch_max_envelopes(1)
        .build()
        .unwrap();
    client.emit(numbered(0));
    wait_for_stats(&client, |s| s.errors >= 1 && s.in_flight == 1);
    for n in 1..=4 {
        client.emit(numbered(n));
    }
    StuckClient {
        certs,
        addr,
        client,
    }
}

impl StuckClient {
    fn deliver(self) -> (Vec<u64>, loggregator::Stats) {
        // The sender is backing off with envelope 0: nothing moves.
        assert_still_accounting(&self.client.stats());
        let agent = start_agent(&self.certs, &self.addr);
        self.client.close(WAIT).unwrap();
        let stats = self.client.stats();
        assert_closed_accounting(&stats);
        (seqs(&agent), stats)
    }
}

/// Emits envelopes 5 to 7 into the full queue under `overflow`, then lets
/// the agent start.
fn overflow_three(overflow: Overflow) -> (Vec<u64>, loggregator::Stats) {
    let stuck = stuck_client(overflow);
    for n in 5..=7 {
        stuck.client.emit(numbered(n));
    }
    stuck.deliver()
}

#[test]
fn drop_newest_keeps_the_queue_and_drops_the_new_envelopes() {
    let (received, stats) = overflow_three(Overflow::DropNewest);
    assert_eq!(received, vec![0, 1, 2, 3, 4]);
    assert_eq!(stats.dropped.queue_full, 3);
}

#[test]
fn drop_oldest_makes_room_by_dropping_the_oldest_queued() {
    let (received, stats) = overflow_three(Overflow::DropOldest);
    assert_eq!(received, vec![0, 4, 5, 6, 7]);
    assert_eq!(stats.dropped.queue_full, 3);
}

#[test]
fn block_waits_for_room_and_loses_nothing() {
    let stuck = stuck_client(Overflow::Block);
    let emitter = {
        let client = stuck.client.clone();
        std::thread::spawn(move || {
            for n in 5..=7 {
                client.emit(numbered(n));
            }
        })
    };
    // The emitter is blocked on envelope 5 until the agent appears.
    wait_for_stats(&stuck.client, |s| s.emitted == 6);
    assert!(!emitter.is_finished());
    let agent = start_agent(&stuck.certs, &stuck.addr);
    join_within(emitter, WAIT);
    stuck.client.close(WAIT).unwrap();
    assert_eq!(seqs(&agent), (0..=7).collect::<Vec<_>>());
    let stats = stuck.client.stats();
    assert_eq!(stats.dropped.total(), 0);
    assert_closed_accounting(&stats);
}

#[test]
fn block_for_waits_then_drops_and_counts() {
    let (received, stats) = overflow_three(Overflow::BlockFor(Duration::from_millis(20)));
    assert_eq!(received, vec![0, 1, 2, 3, 4]);
    assert_eq!(stats.dropped.queue_full, 3);
}

#[test]
fn dropping_the_last_handle_while_the_agent_is_down_gives_up_at_the_bound() {
    capture_logs();
    let certs = TestCerts::generate().unwrap();
    let addr = unused_addr();
    let bound = Duration::from_millis(300);
    let client = builder(&certs, &addr)
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
