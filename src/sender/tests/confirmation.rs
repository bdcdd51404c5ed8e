//! At least once: streams ended to be confirmed, and what a failed
//! confirmation replays.

use super::*;

#[test]
fn at_least_once_envelopes_count_as_sent_only_when_their_stream_is_confirmed() {
    let settings = Settings {
        delivery: Delivery::AtLeastOnce,
        ..settings()
    };
    let harness = start(settings, Script::default());
    for n in 0..3 {
        harness.emit(n);
    }
    harness.flush().unwrap();
    let stats = harness.counters.snapshot(0, 0);
    assert_eq!((stats.sent, stats.in_flight), (0, 3));
    let (seen, stats) = harness.close();
    assert_eq!(count(&seen, |s| matches!(s, Seen::HalfClosed)), 1);
    assert_eq!((stats.sent, stats.replayed), (3, 0));
}

#[test]
fn at_least_once_a_stream_that_fails_to_confirm_is_replayed_on_the_next() {
    let settings = Settings {
        delivery: Delivery::AtLeastOnce,
        confirm_interval: Duration::from_millis(1),
        ..settings()
    };
    let script = Script::default();
    script.ends.lock().push_back(Err(stream_ended()));
    let harness = start(settings, script);
    for n in 0..3 {
        harness.emit(n);
    }
    let (seen, stats) = harness.close();
    assert_eq!(batches(&seen), vec![vec![0, 1, 2], vec![0, 1, 2]]);
    assert_eq!((stats.sent, stats.replayed, stats.errors), (3, 3, 1));
}

#[test]
fn at_least_once_a_write_error_replays_what_the_stream_had_not_confirmed() {
    let settings = Settings {
        delivery: Delivery::AtLeastOnce,
        ..settings()
    };
    let script = Script::default();
    let harness = start(settings, script.clone());
    for n in 0..3 {
        harness.emit(n);
    }
    harness.flush().unwrap();
    script.fail_write(Err(stream_ended()));
    for n in 3..6 {
        harness.emit(n);
    }
    let (seen, stats) = harness.close();
    assert_eq!(
        batches(&seen),
        vec![vec![0, 1, 2], vec![0, 1, 2], vec![3, 4, 5]]
    );
    assert_eq!((stats.sent, stats.replayed), (6, 3));
}

#[test]
fn at_least_once_a_full_replay_buffer_confirms_at_once_instead_of_waiting() {
    let settings = Settings {
        delivery: Delivery::AtLeastOnce,
        batch_max_envelopes: 1,
        // Full after one batch: each must be confirmed before the next.
        batch_max_bytes: one_log_bytes(),
        replay_buffer_bytes: one_log_bytes(),
        ..settings()
    };
    let harness = start(settings, Script::default());
    for n in 0..5 {
        harness.emit(n);
    }
    harness.flush().unwrap();
    let (seen, stats) = harness.close();
    assert_eq!(
        count(&seen, |s| matches!(s, Seen::HalfClosed)),
        5,
        "{seen:?}"
    );
    assert_eq!((stats.sent, stats.replayed), (5, 0));
}

#[test]
fn at_least_once_a_stream_carrying_half_the_replay_buffer_is_confirmed_while_the_next_is_written() {
    // Confirmations never come: what is written is written while they wait.
    let (_hold, script) = held_ends();
    let settings = Settings {
        delivery: Delivery::AtLeastOnce,
        batch_max_envelopes: 1,
        replay_buffer_bytes: 4 * one_log_bytes(),
        ..settings()
    };
    let harness = start(settings, script);
    // Numbered from 1: every one encodes to the same size.
    for n in 1..=6 {
        harness.emit(n);
    }
    let seen = harness.until_writes(4);
    // Two batches, half the buffer, then a new stream takes the other half
    // while the first waits to be confirmed; the rest waits for room.
    assert_eq!(
        seen.iter()
            .filter(|s| !matches!(s, Seen::AtGate))
            .collect::<Vec<_>>(),
        [
            &Seen::Opened,
            &Seen::Batch(vec![1]),
            &Seen::Batch(vec![2]),
            &Seen::HalfClosed,
            &Seen::Opened,
            &Seen::Batch(vec![3]),
            &Seen::Batch(vec![4]),
        ],
    );
    // The buffer full, nothing more was written until close gave up.
    let (_, rest, stats) = harness.close_within(Duration::from_millis(50));
    assert_eq!(batches(&rest), Vec::<Vec<i64>>::new(), "{rest:?}");
    assert_eq!((stats.sent, stats.dropped.gave_up), (0, 6), "{stats:?}");
}

#[test]
fn at_least_once_close_gives_up_on_a_stream_whose_end_never_comes() {
    let (_hold, script) = held_ends();
    let settings = Settings {
        delivery: Delivery::AtLeastOnce,
        ..settings()
    };
    let harness = start(settings, script);
    for n in 0..3 {
        harness.emit(n);
    }
    harness.flush().unwrap();
    let (result, seen, stats) = harness.close_within(Duration::from_millis(50));
    assert_eq!(count(&seen, |s| matches!(s, Seen::HalfClosed)), 1);
    assert!(
        matches!(result, Err(Error::Timeout { undelivered: 3, .. })),
        "{result:?}"
    );
    assert_eq!((stats.sent, stats.dropped.gave_up), (0, 3), "{stats:?}");
    assert!(stats.last_error.is_some(), "{stats:?}");
}

#[test]
fn at_most_once_close_says_so_when_the_last_stream_never_ends() {
    let (_hold, script) = held_ends();
    let harness = start(settings(), script);
    for n in 0..3 {
        harness.emit(n);
    }
    harness.flush().unwrap();
    let (result, _, stats) = harness.close_within(Duration::from_millis(50));
    assert!(
        matches!(&result, Err(Error::Agent { status, .. }) if status.contains("did not end")),
        "{result:?}"
    );
    assert_eq!(stats.sent, 3, "{stats:?}");
}

#[test]
fn at_least_once_under_a_steady_backlog_a_stream_is_confirmed_once_its_interval_is_up() {
    let (hold, script) = held();
    let settings = Settings {
        delivery: Delivery::AtLeastOnce,
        confirm_interval: Duration::from_millis(2),
        ..settings()
    };
    let harness = start(settings, script);
    for n in 0..30 {
        harness.emit(n);
    }
    let seen = harness.until(|s| matches!(s, Seen::Batch(_)));
    assert_eq!(batches(&seen), vec![vec![0, 1, 2]]);
    // The stream's interval must be over, by definition of the test: time
    // passing is the point, and a sleep never ends early.
    std::thread::sleep(Duration::from_millis(4));
    // More is sealed and waiting; once the write in flight is accepted, the
    // stream is confirmed before it takes another.
    Hold::permit(&hold);
    let seen = harness.until(|s| matches!(s, Seen::Batch(_)));
    assert_eq!(
        count(&seen, |s| matches!(s, Seen::HalfClosed)),
        1,
        "{seen:?}"
    );
    Hold::release(&hold);
    harness.flush().unwrap();
    let (_, stats) = harness.close();
    assert_eq!((stats.sent, stats.replayed), (30, 0), "{stats:?}");
}
