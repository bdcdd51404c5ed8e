//! What a wait that ran out says: the connection it ran out on, even when
//! an earlier wait in the same pass has left that connection already.

use super::*;

#[test]
fn confirmations_timing_out_together_each_name_the_connection_they_rode() {
    let write_hold = Arc::new(Mutex::new(Hold::default()));
    let end_hold = Arc::new(Mutex::new(Hold::default()));
    let script = Script {
        hold: Some(write_hold.clone()),
        hold_ends: Some(end_hold.clone()),
        ..Script::default()
    };
    // Every confirmation is late as soon as the loop looks at it: close
    // ends both streams in one pass, and the next pass finds both late.
    let settings = Settings {
        streams: 2,
        delivery: Delivery::AtLeastOnce,
        confirm_timeout: Duration::ZERO,
        ..settings()
    };
    let mut harness = two_writes_started(settings, script);
    Hold::release(&write_hold);
    harness.flush().unwrap();
    let (reply, closed) = bounded(1);
    harness
        .control
        .send(Control::Close {
            deadline: Instant::now() + WAIT,
            reply,
        })
        .unwrap();
    let mut stalled = Vec::new();
    let mut seen = Vec::new();
    while stalled.len() < 2 {
        let next = harness.seen.recv_timeout(WAIT).unwrap();
        if let Seen::Stalled(connection) = next {
            stalled.push(connection);
        }
        seen.push(next);
    }
    Hold::release(&end_hold);
    closed.recv_timeout(WAIT).unwrap().unwrap();
    harness.thread.take().unwrap().join().unwrap();
    // The first left connection 0 before the second was described.
    assert!(seen.contains(&Seen::Abandoned), "{seen:?}");
    assert_eq!(stalled, vec![0, 0], "{seen:?}");
    let stats = harness.counters.snapshot(0, 0);
    assert_eq!(stats.sent, 6, "{stats:?}");
}
