//! Batching and flushing: when a batch is sealed, and when a flush is answered.

use super::*;

#[test]
fn a_batch_closes_at_the_envelope_count() {
    let harness = start(settings(), Script::default());
    for n in 0..7 {
        harness.emit(n);
    }
    assert_eq!(harness.next_batch(), vec![0, 1, 2]);
    assert_eq!(harness.next_batch(), vec![3, 4, 5]);
    harness.flush().unwrap();
    assert_eq!(harness.next_batch(), vec![6]);
    harness.close();
}

#[test]
fn a_flush_covers_every_batch_queued_before_it_when_writes_are_accepted_at_once() {
    let harness = start(settings(), Script::default());
    for n in 0..8 {
        harness.emit_quietly(n);
    }
    // No nudge, no interval: only the flush takes them, a batch at a time,
    // and each write is accepted before the loop would wait for it.
    harness.flush().unwrap();
    let (seen, stats) = harness.close();
    assert_eq!(
        batches(&seen),
        vec![vec![0, 1, 2], vec![3, 4, 5], vec![6, 7]]
    );
    assert_eq!(stats.sent, 8);
}

#[test]
fn a_batch_closes_before_it_would_exceed_the_byte_limit() {
    let one = framed_len(log(0).envelope.bytes.len());
    let settings = Settings {
        batch_max_envelopes: 100,
        batch_max_bytes: one * 2 + one / 2,
        ..settings()
    };
    let harness = start(settings, Script::default());
    for n in 0..5 {
        harness.emit(n);
    }
    harness.flush().unwrap();
    let (seen, _) = harness.close();
    assert_eq!(batches(&seen), vec![vec![0, 1], vec![2, 3], vec![4]]);
}

#[test]
fn envelopes_queued_behind_an_open_batch_go_with_it_when_its_time_is_up() {
    let settings = Settings {
        batch_max_envelopes: 100,
        flush_interval: Duration::from_secs(1),
        ..settings()
    };
    let harness = start(settings, Script::default());
    harness.emit_quietly(1);
    // The first opens a batch; the loop no longer listens to the queue.
    harness.wait_taken(1);
    harness.emit_quietly(2);
    harness.emit_quietly(3);
    // Sealed on time with the first, not left for the next interval.
    assert_eq!(harness.next_batch(), vec![1, 2, 3]);
    harness.close();
}

#[test]
fn a_partial_batch_is_written_when_the_flush_interval_passes() {
    let settings = Settings {
        batch_max_envelopes: 100,
        flush_interval: Duration::from_millis(20),
        ..settings()
    };
    let harness = start(settings, Script::default());
    harness.emit(1);
    // No flush: only the interval can write it.
    assert_eq!(harness.next_batch(), vec![1]);
    harness.close();
}

#[test]
fn flush_replies_only_after_the_write_was_accepted() {
    let (release, gate) = bounded(0);
    let script = Script {
        gate: Some(gate),
        ..Script::default()
    };
    let harness = start(settings(), script);
    harness.emit(1);
    let (reply, result) = bounded(1);
    harness.control.send(flush_request(reply)).unwrap();
    assert!(matches!(harness.seen.recv_timeout(WAIT), Ok(Seen::Opened)));
    assert!(matches!(harness.seen.recv_timeout(WAIT), Ok(Seen::AtGate)));
    // The write is held at the gate: the flush cannot have replied yet.
    assert!(result.try_recv().is_err());
    assert_eq!(harness.counters.snapshot(0, 0).in_flight, 1);
    release.send(()).unwrap();
    result.recv_timeout(WAIT).unwrap().unwrap();
    assert_eq!(harness.next_batch(), vec![1]);
    drop(release);
    harness.close();
}

#[test]
fn the_next_batch_is_built_while_a_write_is_in_flight_and_written_after_it() {
    let hold = Arc::new(Mutex::new(Hold::default()));
    let script = Script {
        hold: Some(hold.clone()),
        ..Script::default()
    };
    let harness = start(settings(), script);
    for n in 0..3 {
        harness.emit(n);
    }
    assert_eq!(harness.next_batch(), vec![0, 1, 2]);
    for n in 3..6 {
        harness.emit(n);
    }
    // The flush is answered only once both batches are written; while
    // the first is held the second is built but not started (the fake
    // panics on two writes in flight).
    let (reply, result) = bounded(1);
    harness.control.send(flush_request(reply)).unwrap();
    assert!(result.try_recv().is_err());
    assert_eq!(harness.counters.snapshot(0, 0).sent, 0);
    Hold::release(&hold);
    result.recv_timeout(WAIT).unwrap().unwrap();
    assert_eq!(harness.next_batch(), vec![3, 4, 5]);
    let (_, stats) = harness.close();
    assert_eq!((stats.sent, stats.batches), (6, 2));
}

#[test]
fn what_the_real_queue_hands_over_keeps_its_bytes_counted_until_the_write_is_accepted() {
    use crate::queue::{Queue, QueueSettings};

    let (hold, script) = held();
    let (seen_tx, seen) = unbounded();
    let (wake, wakeups) = bounded(1);
    let (control, control_rx) = unbounded();
    let counters = Arc::new(Counters::default());
    // A budget of exactly one batch of three logs.
    let (queue, receiver) = Queue::new(
        QueueSettings {
            capacity: 100,
            max_bytes: 3 * one_log_bytes(),
            nudge_at: 3,
            batch_max_bytes: 3 * one_log_bytes(),
            overflow: crate::Overflow::DropNewest,
        },
        Arc::default(),
        counters.clone(),
        wake.clone(),
    );
    let sender = SenderLoop::new(
        FakeTransport {
            seen: seen_tx,
            script,
            opened: 0,
        },
        receiver,
        control_rx,
        Arc::default(),
        settings(),
        counters.clone(),
        wake,
        wakeups,
    );
    let emit = |n: i64| queue.emit(crate::Envelope::log(format!("{n}")).timestamp(n).build());
    // Queued before the loop starts, so it takes all three at once: one
    // taken alone would open a batch that waits for its interval (an hour).
    for n in 1..=3 {
        emit(n);
    }
    let thread = std::thread::spawn(move || sender.run());
    let next_batch = || loop {
        if let Seen::Batch(batch) = seen.recv_timeout(WAIT).unwrap() {
            return batch;
        }
    };
    assert_eq!(next_batch(), vec![1, 2, 3]);
    // Taken from the queue, but not yet accepted by gRPC: still counted,
    // so there is no room for a fourth.
    assert_eq!(queue.bytes(), 3 * one_log_bytes());
    emit(4);
    assert_eq!(queue.stats().dropped.queue_full, 1);
    Hold::release(&hold);
    let (reply, flushed) = bounded(1);
    control.send(flush_request(reply)).unwrap();
    flushed.recv_timeout(WAIT).unwrap().unwrap();
    assert_eq!(queue.bytes(), 0);
    emit(5);
    let (reply, closed) = bounded(1);
    control
        .send(Control::Close {
            deadline: Instant::now() + WAIT,
            reply,
        })
        .unwrap();
    closed.recv_timeout(WAIT).unwrap().unwrap();
    join_after_close(thread);
    assert_eq!(next_batch(), vec![5]);
    let stats = queue.stats();
    assert_eq!(
        (stats.emitted, stats.sent, stats.dropped.total()),
        (5, 4, 1),
        "{stats:?}"
    );
    assert_eq!((stats.in_flight, stats.queued_bytes), (0, 0), "{stats:?}");
}
