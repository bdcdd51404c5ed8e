//! Failed writes: replaced streams, backoff, refusals as too large, what at most
//! once gives up, and close giving up at its deadline.

use super::*;

#[test]
fn at_most_once_a_write_held_past_the_write_timeout_is_given_up_not_repeated() {
    let hold = Arc::new(Mutex::new(Hold::default()));
    let script = Script {
        hold: Some(hold.clone()),
        ..Script::default()
    };
    let settings = Settings {
        write_timeout: Duration::from_millis(20),
        ..settings()
    };
    let harness = start(settings, script);
    for n in 0..3 {
        harness.emit(n);
    }
    assert_eq!(harness.next_batch(), vec![0, 1, 2]);
    // Only the timeout can end this write.
    let flushed = harness.flush();
    assert!(matches!(flushed, Ok(())), "{flushed:?}");
    Hold::release(&hold);
    harness.emit(3);
    harness.flush().unwrap();
    let (seen, stats) = harness.close();
    assert_eq!(count(&seen, |s| matches!(s, Seen::Opened)), 1, "{seen:?}");
    assert_eq!(batches(&seen), vec![vec![3]]);
    assert_eq!((stats.sent, stats.dropped.gave_up, stats.errors), (1, 3, 1));
}

#[test]
fn a_stream_that_ended_is_replaced_and_the_batch_written_on_the_next() {
    let script = Script::default();
    let harness = start(settings(), script.clone());
    harness.emit(1);
    harness.flush().unwrap();
    script.fail_write(Err(stream_ended()));
    harness.emit(2);
    harness.flush().unwrap();
    let (seen, stats) = harness.close();
    assert_eq!(count(&seen, |s| matches!(s, Seen::Opened)), 2, "{seen:?}");
    assert_eq!(batches(&seen), vec![vec![1], vec![2]]);
    assert_eq!((stats.sent, stats.errors, stats.reconnects), (2, 1, 1));
}

#[test]
fn while_the_agent_is_away_batches_wait_with_backoff_and_arrive_when_it_returns() {
    let script = Script::default();
    for _ in 0..3 {
        script.fail_write(Err(stream_ended()));
    }
    let (initial, max) = (Duration::from_millis(20), Duration::from_millis(40));
    let settings = Settings {
        backoff: Backoff::new(initial, max),
        ..settings()
    };
    let harness = start(settings, script.clone());
    harness.emit(1);
    harness.emit(2);
    harness.flush().unwrap();
    let (seen, stats) = harness.close();
    assert_eq!(batches(&seen), vec![vec![1, 2]]);
    assert_eq!(count(&seen, |s| matches!(s, Seen::Opened)), 4);
    assert_eq!((stats.sent, stats.dropped.total(), stats.errors), (2, 0, 3));
    // Each new stream waited its backoff step after the failure before it
    // (doubling from `initial` up to `max`, each drawn from its upper half):
    // timers never fire early, so these are lower bounds on any machine.
    let opened = script.opened_at.lock().clone();
    let waits: Vec<Duration> = opened.windows(2).map(|w| w[1] - w[0]).collect();
    let steps = [initial, max, max];
    for (wait, step) in waits.iter().zip(steps) {
        assert!(*wait >= step / 2, "waited {waits:?} for steps {steps:?}");
    }
}

#[test]
fn at_most_once_a_write_that_may_have_reached_the_agent_is_not_repeated() {
    let script = Script::default();
    let harness = start(settings(), script.clone());
    harness.emit(1);
    harness.flush().unwrap();
    script.fail_write(Err(WriteError::Uncertain(Error::Closed)));
    harness.emit(2);
    harness.flush().unwrap();
    let (seen, stats) = harness.close();
    assert_eq!(batches(&seen), vec![vec![1]]);
    assert_eq!((stats.sent, stats.dropped.gave_up), (1, 1));
}

#[test]
fn a_batch_the_agent_finds_too_large_is_split_and_a_lone_envelope_dropped() {
    let script = Script::default();
    let too_large = || Err(WriteError::TooLarge(Error::Closed));
    // The whole batch, then the lone first half, are refused.
    script.fail_write(too_large());
    script.fail_write(too_large());
    let harness = start(settings(), script);
    for n in 0..3 {
        harness.emit(n);
    }
    harness.flush().unwrap();
    let (seen, stats) = harness.close();
    assert_eq!(batches(&seen), vec![vec![1, 2]]);
    assert_eq!((stats.sent, stats.dropped.too_large), (2, 1));
}

#[test]
fn close_gives_up_at_its_deadline_and_says_how_many_were_not_delivered() {
    let script = Script::default();
    for _ in 0..10_000 {
        script.fail_write(Err(stream_ended()));
    }
    let harness = start(settings(), script);
    harness.emit(1);
    harness.emit(2);
    let (result, _, stats) = harness.close_within(Duration::from_millis(50));
    assert!(
        matches!(result, Err(Error::Timeout { undelivered: 2, .. })),
        "{result:?}"
    );
    assert_eq!(stats.dropped.gave_up, 2);
}

#[test]
fn close_names_its_own_deadline_for_a_write_that_had_not_yet_timed_out() {
    let (_hold, script) = held();
    let harness = start(settings(), script);
    harness.emit(0);
    harness.emit(1);
    harness.emit(2);
    harness.until_writes(1);
    let counters = harness.counters.clone();
    let (result, _, stats) = harness.close_within(Duration::from_millis(50));
    assert!(
        matches!(result, Err(Error::Timeout { undelivered: 3, .. })),
        "{result:?}"
    );
    assert_eq!(stats.dropped.gave_up, 3);
    let last_error = counters.snapshot(0, 0).last_error.unwrap_or_default();
    // The write waited about 50 ms of its 10 s: close ran out, not the write.
    assert!(last_error.contains("stalled: Close"), "{last_error}");
}

#[test]
fn a_failed_stream_waiting_for_its_status_holds_up_no_other_stream() {
    let (hold, script) = held_ends();
    let settings = Settings {
        streams: 2,
        ..settings()
    };
    let harness = start(settings, script.clone());
    for n in 0..3 {
        harness.emit(n);
    }
    harness.flush().unwrap();
    assert_eq!(harness.next_batch(), vec![0, 1, 2]);
    // The next batch goes to the second stream, which finds its call ended;
    // the status that says why does not come yet.
    script.fail_write(Err(stream_ended()));
    for n in 3..6 {
        harness.emit(n);
    }
    harness.until(|s| matches!(s, Seen::Opened));
    // Meanwhile the first stream goes on writing.
    for n in 6..9 {
        harness.emit(n);
    }
    assert_eq!(harness.next_batch(), vec![6, 7, 8]);
    // A flush waits for the batch whose stream failed, until it is written.
    let (reply, flushed) = bounded(1);
    harness.control.send(flush_request(reply)).unwrap();
    Hold::release(&hold);
    flushed.recv_timeout(WAIT).unwrap().unwrap();
    let (seen, stats) = harness.close();
    assert!(batches(&seen).contains(&vec![3, 4, 5]), "{seen:?}");
    assert_eq!((stats.sent, stats.dropped.total()), (9, 0), "{stats:?}");
}
