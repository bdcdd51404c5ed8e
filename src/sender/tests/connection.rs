//! Leaving a connection that stopped answering, and every stream on it.

use super::*;

#[test]
fn leaving_a_connection_counts_a_write_grpc_had_accepted_on_another_stream_as_sent() {
    let (hold, mut script) = held();
    let write_timeout = Duration::from_millis(300);
    // The second stream's write is accepted well before the first one's
    // times out, and nothing wakes the loop for it: it learns of it only
    // when it leaves the connection.
    script.accepted_from = Some((1, Instant::now() + write_timeout / 3));
    let settings = Settings {
        streams: 2,
        write_timeout,
        ..settings()
    };
    let harness = two_writes_started(settings, script);
    while !matches!(harness.seen.recv_timeout(WAIT).unwrap(), Seen::Abandoned) {}
    Hold::release(&hold);
    let (_, stats) = harness.close();
    assert_eq!((stats.sent, stats.dropped.gave_up), (3, 3), "{stats:?}");
}

#[test]
fn at_least_once_a_write_held_past_its_timeout_leaves_the_connection_and_is_written_again() {
    let (hold, script) = held();
    let settings = Settings {
        delivery: Delivery::AtLeastOnce,
        write_timeout: Duration::from_millis(20),
        ..settings()
    };
    let harness = start(settings, script);
    for n in 0..3 {
        harness.emit(n);
    }
    assert_eq!(harness.next_batch(), vec![0, 1, 2]);
    // Only the timeout ends this write. A connection that went silent
    // would carry every new stream too: the loop leaves it first.
    let seen = harness.until(|s| matches!(s, Seen::Abandoned | Seen::Opened));
    assert!(matches!(seen.last(), Some(Seen::Abandoned)), "{seen:?}");
    Hold::release(&hold);
    harness.flush().unwrap();
    let (seen, stats) = harness.close();
    assert!(batches(&seen).contains(&vec![0, 1, 2]), "{seen:?}");
    assert_eq!(stats.sent, 3, "{stats:?}");
    assert!(stats.replayed >= 3 && stats.errors >= 1, "{stats:?}");
    assert!(
        stats.last_error.as_deref().unwrap().contains("stalled"),
        "the transport says why: {stats:?}"
    );
}

#[test]
fn at_least_once_a_stream_end_held_past_the_confirm_timeout_leaves_the_connection_and_replays() {
    let (hold, script) = held_ends();
    let settings = Settings {
        delivery: Delivery::AtLeastOnce,
        confirm_interval: Duration::from_millis(1),
        confirm_timeout: Duration::from_millis(20),
        ..settings()
    };
    let harness = start(settings, script);
    for n in 0..3 {
        harness.emit(n);
    }
    assert_eq!(harness.next_batch(), vec![0, 1, 2]);
    let seen = harness.until(|s| matches!(s, Seen::HalfClosed));
    assert!(matches!(seen.last(), Some(Seen::HalfClosed)), "{seen:?}");
    // Nothing confirms it while its end is pending.
    assert_eq!(harness.counters.snapshot(0, 0).sent, 0);
    let seen = harness.until(|s| matches!(s, Seen::Abandoned));
    assert!(matches!(seen.last(), Some(Seen::Abandoned)), "{seen:?}");
    Hold::release(&hold);
    let (seen, stats) = harness.close();
    assert!(
        batches(&seen).contains(&vec![0, 1, 2]),
        "replayed: {seen:?}"
    );
    assert_eq!(stats.sent, 3, "{stats:?}");
    assert!(stats.replayed >= 3, "{stats:?}");
}
