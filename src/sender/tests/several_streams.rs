//! Several streams side by side: turns, held writes, and failures on one.

use super::*;

#[test]
fn with_two_streams_a_batch_goes_to_a_second_stream_while_the_first_write_is_held() {
    let (hold, script) = held();
    let settings = Settings {
        streams: 2,
        ..settings()
    };
    let harness = start(settings, script);
    for n in 0..9 {
        harness.emit(n);
    }
    // Each write is held: the second batch needs a stream of its own (the
    // fake panics on a second write in flight on one stream), and the
    // third waits for one of them.
    let seen = harness.until_writes(2);
    assert_eq!(count(&seen, |s| matches!(s, Seen::Opened)), 2, "{seen:?}");
    assert_eq!(batches(&seen), vec![vec![0, 1, 2], vec![3, 4, 5]]);
    let (reply, result) = bounded(1);
    harness.control.send(flush_request(reply)).unwrap();
    assert_eq!(harness.counters.snapshot(0, 0).sent, 0);
    Hold::release(&hold);
    result.recv_timeout(WAIT).unwrap().unwrap();
    assert_eq!(harness.next_batch(), vec![6, 7, 8]);
    let (seen, stats) = harness.close();
    assert_eq!(count(&seen, |s| matches!(s, Seen::Opened)), 0, "{seen:?}");
    assert_eq!(
        count(&seen, |s| matches!(s, Seen::HalfClosed)),
        2,
        "{seen:?}"
    );
    assert_eq!((stats.sent, stats.batches), (9, 3));
}

#[test]
fn at_least_once_with_two_streams_one_failing_to_confirm_is_replayed_on_another() {
    let (hold, script) = held();
    script.ends.lock().push_back(Err(stream_ended()));
    let settings = Settings {
        streams: 2,
        delivery: Delivery::AtLeastOnce,
        ..settings()
    };
    let harness = two_writes_started(settings, script);
    Hold::release(&hold);
    harness.flush().unwrap();
    // Close ends both streams; the first to end fails, and what it carried
    // is written again on a new stream and confirmed there.
    let (seen, stats) = harness.close();
    assert_eq!(batches(&seen), vec![vec![0, 1, 2]], "{seen:?}");
    assert_eq!(
        count(&seen, |s| matches!(s, Seen::HalfClosed)),
        3,
        "{seen:?}"
    );
    assert_eq!((stats.sent, stats.replayed, stats.errors), (6, 3, 1));
}

#[test]
fn at_most_once_with_two_streams_a_write_held_past_its_timeout_is_given_up_and_the_other_sent() {
    let (hold, script) = held();
    let settings = Settings {
        streams: 2,
        write_timeout: Duration::from_millis(20),
        ..settings()
    };
    let harness = two_writes_started(settings, script);
    // The first write to pass its timeout leaves the connection, and with
    // it the other stream: both batches are given up, since the agent may
    // have them.
    harness.flush().unwrap();
    Hold::release(&hold);
    harness.emit(6);
    harness.flush().unwrap();
    let (seen, stats) = harness.close();
    assert_eq!(batches(&seen), vec![vec![6]]);
    assert_eq!(
        count(&seen, |s| matches!(s, Seen::Abandoned)),
        1,
        "{seen:?}"
    );
    assert_eq!((stats.sent, stats.dropped.gave_up, stats.errors), (1, 6, 1));
}

#[test]
fn at_least_once_writes_in_flight_on_several_streams_count_against_the_replay_buffer() {
    let (hold, script) = held();
    let settings = Settings {
        streams: 2,
        delivery: Delivery::AtLeastOnce,
        // One batch fills it: the second may start only once the first is
        // confirmed, though a second stream is free.
        batch_max_bytes: 3 * one_log_bytes(),
        replay_buffer_bytes: 3 * one_log_bytes(),
        ..settings()
    };
    let harness = start(settings, script.clone());
    for n in 0..6 {
        harness.emit(n);
    }
    assert_eq!(batches(&harness.until_writes(1)), vec![vec![0, 1, 2]]);
    Hold::release(&hold);
    harness.flush().unwrap();
    let (seen, stats) = harness.close();
    assert_eq!(batches(&seen), vec![vec![3, 4, 5]]);
    assert_eq!(script.in_flight.lock().1, 1, "one write at a time");
    assert_eq!((stats.sent, stats.replayed), (6, 0));
}

#[test]
fn a_batch_refused_on_a_stream_that_carried_others_goes_first_on_a_new_stream() {
    let script = Script::default();
    let settings = Settings {
        streams: 2,
        ..settings()
    };
    let harness = start(settings, script.clone());
    // One batch on each stream.
    for n in 0..6 {
        harness.emit(n);
        if n % 3 == 2 {
            harness.flush().unwrap();
        }
    }
    // The third goes to the first stream again, which finds it refused as
    // too large: it may be the culprit. Not the other working stream, which
    // the agent would end too, but a new one carries it next, first.
    script.fail_write(Err(WriteError::TooLarge(Error::Closed)));
    for n in 6..9 {
        harness.emit(n);
    }
    harness.flush().unwrap();
    let (seen, stats) = harness.close();
    let opened_then_written: Vec<bool> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Opened => Some(true),
            Seen::Batch(_) => Some(false),
            _ => None,
        })
        .collect();
    assert_eq!(
        opened_then_written,
        [true, false, true, false, true, false],
        "{seen:?}"
    );
    assert_eq!(batches(&seen)[2], vec![6, 7, 8]);
    assert_eq!((stats.sent, stats.dropped.total()), (9, 0));
}
