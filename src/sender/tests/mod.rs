//! The loop against in-memory fakes of the transport, which report what
//! they see on a channel and do what a script says; tests synchronise on
//! what the fake saw, never on sleeps.

mod batching;
mod confirmation;
mod connection;
mod failures;
mod fakes;
mod several_streams;
mod stalls;

use super::*;
use crate::queue::Queued;
use crate::wire::framed_len;
use crossbeam_channel::{bounded, unbounded};
use fakes::*;
use parking_lot::Mutex;
use std::sync::atomic::Ordering::Relaxed;

struct Harness {
    data: Sender<Queued>,
    nudge: Sender<()>,
    room: Arc<Room>,
    control: Sender<Control>,
    seen: Receiver<Seen>,
    counters: Arc<Counters>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const WAIT: Duration = Duration::from_secs(10);

fn flush_request(reply: Sender<Result<()>>) -> Control {
    Control::Flush {
        deadline: Instant::now() + WAIT,
        reply,
    }
}

const HOUR: Duration = Duration::from_secs(3600);

fn settings() -> Settings {
    Settings {
        addr: "fake".to_string(),
        batch_max_envelopes: 3,
        batch_max_bytes: 1 << 20,
        flush_interval: HOUR,
        delivery: Delivery::AtMostOnce,
        confirm_interval: HOUR,
        replay_buffer_bytes: 8 << 20,
        confirm_timeout: WAIT,
        write_timeout: WAIT,
        backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(2)),
        streams: 1,
    }
}

fn start(settings: Settings, script: Script) -> Harness {
    let (data_tx, data_rx) = bounded(1000);
    let (nudge_tx, nudge_rx) = bounded(1);
    let (control_tx, control_rx) = unbounded();
    let (seen_tx, seen_rx) = unbounded();
    let (wake, wakeups) = bounded(1);
    let counters = Arc::new(Counters::default());
    let room = Arc::new(Room::new(64 << 20));
    let transport = FakeTransport {
        seen: seen_tx,
        script,
        opened: 0,
    };
    let queue = QueueReceiver {
        data: data_rx,
        nudges: nudge_rx,
        room: room.clone(),
        spares: Arc::default(),
    };
    let worker = SenderLoop::new(
        transport,
        queue,
        control_rx,
        Arc::default(),
        settings,
        counters.clone(),
        wake,
        wakeups,
    );
    Harness {
        data: data_tx,
        nudge: nudge_tx,
        room,
        control: control_tx,
        seen: seen_rx,
        counters,
        thread: Some(std::thread::spawn(move || worker.run())),
    }
}

fn log(n: i64) -> Queued {
    log_tagged(n, &[])
}

fn log_tagged(n: i64, tags: &[(&str, &str)]) -> Queued {
    let mut builder = crate::Envelope::log(format!("{n}")).timestamp(n);
    for (key, value) in tags {
        builder = builder.tag(*key, *value);
    }
    Queued {
        envelope: builder.build().into_encoded(),
        added: 0,
        carried: None,
    }
}

impl Harness {
    fn emit(&self, n: i64) {
        self.emit_quietly(n);
        // As the client does once a batch's worth may be waiting.
        let _ = self.nudge.try_send(());
    }

    /// As the client emits below a batch's worth: no nudge.
    fn emit_quietly(&self, n: i64) {
        let _ = self.counters.emitted.add(1);
        let queued = log(n);
        assert!(self.room.reserve(queued.framed()));
        self.data.send(queued).unwrap();
    }

    /// Waits until the loop holds this many envelopes taken from the
    /// queue and not yet written.
    fn wait_taken(&self, in_flight: u64) {
        let give_up = Instant::now() + WAIT;
        while self.counters.in_flight.load(Relaxed) < in_flight {
            assert!(Instant::now() < give_up, "the loop never took them");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn flush(&self) -> Result<()> {
        let (reply, result) = bounded(1);
        self.control.send(flush_request(reply)).unwrap();
        result.recv_timeout(WAIT).unwrap()
    }

    /// Closes, checks the accounting invariant, and returns everything seen.
    fn close_within(mut self, wait: Duration) -> (Result<()>, Vec<Seen>, crate::Stats) {
        let (reply, result) = bounded(1);
        self.control
            .send(Control::Close {
                deadline: Instant::now() + wait,
                reply,
            })
            .unwrap();
        let result = result
            .recv_timeout(WAIT + wait)
            .expect("the loop never answered close");
        join_after_close(self.thread.take().unwrap());
        let stats = self.counters.snapshot(0, self.room.bytes());
        assert_eq!(
            stats.emitted,
            stats.sent + stats.dropped.total(),
            "{stats:?}"
        );
        assert_eq!(stats.in_flight, 0, "{stats:?}");
        assert_eq!(stats.queued_bytes, 0, "every byte given back: {stats:?}");
        (result, self.seen.try_iter().collect(), stats)
    }

    fn close(self) -> (Vec<Seen>, crate::Stats) {
        let (result, seen, stats) = self.close_within(WAIT);
        result.unwrap();
        (seen, stats)
    }

    /// The next batch the fake agent saw, as timestamps.
    fn next_batch(&self) -> Vec<i64> {
        loop {
            if let Seen::Batch(batch) = self.seen.recv_timeout(WAIT).unwrap() {
                return batch;
            }
        }
    }
}

/// Joins the loop's thread, which ends right after it answers close: a
/// loop that goes on fails the test within `WAIT` rather than hang it.
fn join_after_close(thread: std::thread::JoinHandle<()>) {
    let give_up = Instant::now() + WAIT;
    while !thread.is_finished() {
        assert!(Instant::now() < give_up, "the loop did not end after close");
        std::thread::sleep(Duration::from_millis(1));
    }
    thread.join().unwrap();
}

/// The framed size of one test log numbered 1 to 9 (0, its timestamp
/// left out as protobuf's default, is smaller).
fn one_log_bytes() -> usize {
    framed_len(log(1).envelope.bytes.len())
}

fn batches(seen: &[Seen]) -> Vec<Vec<i64>> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Batch(b) => Some(b.clone()),
            _ => None,
        })
        .collect()
}

fn count(seen: &[Seen], what: fn(&Seen) -> bool) -> usize {
    seen.iter().filter(|s| what(s)).count()
}

fn stream_ended() -> WriteError {
    WriteError::StreamEnded(Error::Closed)
}

impl Harness {
    /// Everything the fake sees until it has started `writes` more writes.
    fn until_writes(&self, writes: usize) -> Vec<Seen> {
        let mut seen = Vec::new();
        while count(&seen, |s| matches!(s, Seen::Batch(_))) < writes {
            seen.push(self.seen.recv_timeout(WAIT).unwrap());
        }
        seen
    }
}

fn held() -> (Arc<Mutex<Hold>>, Script) {
    let hold = Arc::new(Mutex::new(Hold::default()));
    let script = Script {
        hold: Some(hold.clone()),
        ..Script::default()
    };
    (hold, script)
}

impl Harness {
    /// Everything the fake sees up to and including the first `what`.
    fn until(&self, what: fn(&Seen) -> bool) -> Vec<Seen> {
        let mut seen = Vec::new();
        loop {
            let next = self.seen.recv_timeout(WAIT).unwrap();
            let done = what(&next);
            seen.push(next);
            if done {
                return seen;
            }
        }
    }
}

/// Like [`held`], for the ends of half-closed (or failed) streams.
fn held_ends() -> (Arc<Mutex<Hold>>, Script) {
    let (hold, mut script) = held();
    script.hold_ends = script.hold.take();
    (hold, script)
}

/// Starts the loop and emits six logs: batches of three on two writes,
/// which `script` may hold.
fn two_writes_started(settings: Settings, script: Script) -> Harness {
    let harness = start(settings, script);
    for n in 0..6 {
        harness.emit(n);
    }
    let seen = harness.until_writes(2);
    assert_eq!(batches(&seen), vec![vec![0, 1, 2], vec![3, 4, 5]]);
    harness
}
