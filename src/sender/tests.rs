//! The loop against in-memory fakes of the transport, which report what
//! they see on a channel and do what a script says; tests synchronise on
//! what the fake saw, never on sleeps.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};

use super::*;
use crate::proto::envelope as pb;
use crate::queue::Queued;
use crate::wire::framed_len;
use crossbeam_channel::{bounded, unbounded};
use parking_lot::Mutex;
use protobuf::Message;

/// What the fake agent saw, sent to the test as it happens.
#[derive(Debug)]
enum Seen {
    Opened,
    /// A write is waiting at the script's gate.
    AtGate,
    Batch(Vec<i64>),
    HalfClosed,
    /// The loop left the connection.
    Abandoned,
}

type Outcome = std::result::Result<(), WriteError>;

/// Decides what the fake's next writes and stream ends do.
#[derive(Clone, Default)]
struct Script {
    /// Results for the next writes, front first; `Ok` once empty.
    writes: Arc<Mutex<VecDeque<Outcome>>>,
    /// Results for the next stream ends, front first; `Ok` once empty.
    ends: Arc<Mutex<VecDeque<Outcome>>>,
    /// When set, every write waits for a message here first.
    gate: Option<Receiver<()>>,
    /// When set, writes stay in flight (never accepted) until released.
    hold: Option<Arc<Mutex<Hold>>>,
    /// When set, half-closed streams do not end until released.
    hold_ends: Option<Arc<Mutex<Hold>>>,
    /// Writes in flight on every stream now, and the most there ever were.
    in_flight: Arc<Mutex<(usize, usize)>>,
    /// When set, the writes of the stream opened at this index (from 0)
    /// are accepted from this instant on, hold or not, and nothing wakes
    /// the loop for it: as gRPC accepts a write the loop has not polled.
    accepted_from: Option<(usize, Instant)>,
}

/// Writes (or stream ends) held pending, and the worker's waker to call on
/// release.
#[derive(Default)]
struct Hold {
    released: bool,
    /// How many more may finish before `released`.
    permits: usize,
    waker: Option<Waker>,
}

impl Hold {
    fn release(hold: &Mutex<Hold>) {
        let mut hold = hold.lock();
        hold.released = true;
        if let Some(waker) = hold.waker.take() {
            waker.wake();
        }
    }

    /// Lets one more finish.
    fn permit(hold: &Mutex<Hold>) {
        let mut hold = hold.lock();
        hold.permits += 1;
        if let Some(waker) = hold.waker.take() {
            waker.wake();
        }
    }

    /// Whether one may finish now; if not, the waker is kept for later.
    fn passes(hold: &Mutex<Hold>, context: &Context<'_>) -> bool {
        let mut hold = hold.lock();
        if hold.released {
            return true;
        }
        if hold.permits > 0 {
            hold.permits -= 1;
            return true;
        }
        hold.waker = Some(context.waker().clone());
        false
    }
}

impl Script {
    fn fail_write(&self, outcome: Outcome) {
        self.writes.lock().push_back(outcome);
    }
}

struct FakeTransport {
    seen: Sender<Seen>,
    script: Script,
    opened: usize,
}

struct FakeStream {
    seen: Sender<Seen>,
    script: Script,
    /// How many streams were opened before this one.
    index: usize,
    /// How the write in flight ends.
    writing: Option<Outcome>,
}

struct FakeClosing {
    outcome: Option<Outcome>,
    hold: Option<Arc<Mutex<Hold>>>,
}

/// A unary call the fake agent answers at once.
struct FakeCall;

impl UnaryCall for FakeCall {
    fn poll_done(&mut self, _context: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Transport for FakeTransport {
    type Stream = FakeStream;
    type Call = FakeCall;

    fn open(&mut self) -> Result<FakeStream> {
        self.seen.send(Seen::Opened).unwrap();
        self.opened += 1;
        Ok(FakeStream {
            seen: self.seen.clone(),
            script: self.script.clone(),
            index: self.opened - 1,
            writing: None,
        })
    }

    fn send(&mut self, _batch: Vec<u8>, _timeout: Duration) -> Result<FakeCall> {
        Ok(FakeCall)
    }

    fn abandon_connection(&mut self) {
        self.seen.send(Seen::Abandoned).unwrap();
    }

    fn stalled(&self, stall: Stall) -> Error {
        Error::Agent {
            addr: "fake".to_string(),
            status: format!("stalled: {stall:?}"),
            hint: None,
        }
    }
}

impl BatchStream for FakeStream {
    type Closing = FakeClosing;

    fn start_write(&mut self, batch: &[u8]) -> Outcome {
        assert!(self.writing.is_none(), "two writes in flight");
        if let Some(gate) = &self.script.gate {
            self.seen.send(Seen::AtGate).unwrap();
            gate.recv().unwrap();
        }
        // A scripted failure is a stream found already ended.
        let scripted = self.script.writes.lock().pop_front();
        scripted.unwrap_or(Ok(()))?;
        let decoded = pb::EnvelopeBatch::parse_from_bytes(batch).unwrap();
        let timestamps = decoded.batch.iter().map(|e| e.timestamp).collect();
        self.seen.send(Seen::Batch(timestamps)).unwrap();
        self.writing = Some(Ok(()));
        let mut in_flight = self.script.in_flight.lock();
        in_flight.0 += 1;
        in_flight.1 = in_flight.1.max(in_flight.0);
        Ok(())
    }

    fn poll_written(&mut self, context: &mut Context<'_>) -> Poll<Outcome> {
        let accepted = self
            .script
            .accepted_from
            .is_some_and(|(index, from)| index == self.index && Instant::now() >= from);
        if let (Some(hold), false) = (&self.script.hold, accepted) {
            if !Hold::passes(hold, context) {
                return Poll::Pending;
            }
        }
        self.script.in_flight.lock().0 -= 1;
        Poll::Ready(self.writing.take().expect("a write in flight"))
    }

    fn half_close(self) -> FakeClosing {
        self.seen.send(Seen::HalfClosed).unwrap();
        FakeClosing {
            outcome: Some(self.script.ends.lock().pop_front().unwrap_or(Ok(()))),
            hold: self.script.hold_ends.clone(),
        }
    }

    fn into_end(self) -> FakeClosing {
        // The write's own error says it all, once the status comes.
        FakeClosing {
            outcome: Some(Ok(())),
            hold: self.script.hold_ends.clone(),
        }
    }
}

impl Closing for FakeClosing {
    fn poll_end(&mut self, context: &mut Context<'_>) -> Poll<Outcome> {
        if let Some(hold) = &self.hold {
            if !Hold::passes(hold, context) {
                return Poll::Pending;
            }
        }
        Poll::Ready(self.outcome.take().unwrap_or(Ok(())))
    }
}

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
            std::thread::yield_now();
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
        let result = result.recv_timeout(WAIT + wait).unwrap();
        self.thread.take().unwrap().join().unwrap();
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
    let harness = start(settings(), script);
    harness.emit(1);
    harness.emit(2);
    harness.flush().unwrap();
    let (seen, stats) = harness.close();
    assert_eq!(batches(&seen), vec![vec![1, 2]]);
    assert_eq!(count(&seen, |s| matches!(s, Seen::Opened)), 4);
    assert_eq!((stats.sent, stats.dropped.total(), stats.errors), (2, 0, 3));
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
    let harness = start(settings, script);
    for n in 0..6 {
        harness.emit(n);
    }
    let seen = harness.until_writes(2);
    assert_eq!(batches(&seen), vec![vec![0, 1, 2], vec![3, 4, 5]]);
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
    let harness = start(settings, script);
    for n in 0..6 {
        harness.emit(n);
    }
    let seen = harness.until_writes(2);
    assert_eq!(batches(&seen), vec![vec![0, 1, 2], vec![3, 4, 5]]);
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
    let harness = start(settings, script);
    for n in 0..6 {
        harness.emit(n);
    }
    let seen = harness.until_writes(2);
    assert_eq!(batches(&seen), vec![vec![0, 1, 2], vec![3, 4, 5]]);
    while !matches!(harness.seen.recv_timeout(WAIT).unwrap(), Seen::Abandoned) {}
    Hold::release(&hold);
    let (_, stats) = harness.close();
    assert_eq!((stats.sent, stats.dropped.gave_up), (3, 3), "{stats:?}");
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
    // The stream's interval must be over, by definition of the test.
    let opened = Instant::now();
    while opened.elapsed() < Duration::from_millis(4) {
        std::thread::yield_now();
    }
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
    thread.join().unwrap();
    assert_eq!(next_batch(), vec![5]);
    let stats = queue.stats();
    assert_eq!(
        (stats.emitted, stats.sent, stats.dropped.total()),
        (5, 4, 1),
        "{stats:?}"
    );
    assert_eq!((stats.in_flight, stats.queued_bytes), (0, 0), "{stats:?}");
}
