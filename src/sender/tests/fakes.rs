//! In-memory fakes of the transport: they report what they see on a channel
//! and do what a script says.

use super::*;
use crate::proto::envelope as pb;
use parking_lot::Mutex;
use protobuf::Message;
use std::collections::VecDeque;
use std::task::{Context, Poll};

/// What the fake agent saw, sent to the test as it happens.
#[derive(Debug, PartialEq)]
pub(super) enum Seen {
    Opened,
    /// A write is waiting at the script's gate.
    AtGate,
    Batch(Vec<i64>),
    HalfClosed,
    /// The loop left the connection.
    Abandoned,
    /// The loop asked what a wait that ran out on this connection says.
    Stalled(u64),
}

pub(super) type Outcome = std::result::Result<(), WriteError>;

/// Decides what the fake's next writes and stream ends do.
#[derive(Clone, Default)]
pub(super) struct Script {
    /// Results for the next writes, front first; `Ok` once empty.
    pub(super) writes: Arc<Mutex<VecDeque<Outcome>>>,
    /// Results for the next stream ends, front first; `Ok` once empty.
    pub(super) ends: Arc<Mutex<VecDeque<Outcome>>>,
    /// When set, every write waits for a message here first.
    pub(super) gate: Option<Receiver<()>>,
    /// When set, writes stay in flight (never accepted) until released.
    pub(super) hold: Option<Arc<Mutex<Hold>>>,
    /// When set, half-closed streams do not end until released.
    pub(super) hold_ends: Option<Arc<Mutex<Hold>>>,
    /// Writes in flight on every stream now, and the most there ever were.
    pub(super) in_flight: Arc<Mutex<(usize, usize)>>,
    /// When set, the writes of the stream opened at this index (from 0)
    /// are accepted from this instant on, hold or not, and nothing wakes
    /// the loop for it: as gRPC accepts a write the loop has not polled.
    pub(super) accepted_from: Option<(usize, Instant)>,
    /// When each stream was opened, in order.
    pub(super) opened_at: Arc<Mutex<Vec<Instant>>>,
}

/// Writes (or stream ends) held pending, and the worker's waker to call on
/// release.
#[derive(Default)]
pub(super) struct Hold {
    pub(super) released: bool,
    /// How many more may finish before `released`.
    pub(super) permits: usize,
    pub(super) waker: Option<Waker>,
}

impl Hold {
    pub(super) fn release(hold: &Mutex<Hold>) {
        let mut hold = hold.lock();
        hold.released = true;
        if let Some(waker) = hold.waker.take() {
            waker.wake();
        }
    }

    /// Lets one more finish.
    pub(super) fn permit(hold: &Mutex<Hold>) {
        let mut hold = hold.lock();
        hold.permits += 1;
        if let Some(waker) = hold.waker.take() {
            waker.wake();
        }
    }

    /// Whether one may finish now; if not, the waker is kept for later.
    pub(super) fn passes(hold: &Mutex<Hold>, context: &Context<'_>) -> bool {
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
    pub(super) fn fail_write(&self, outcome: Outcome) {
        self.writes.lock().push_back(outcome);
    }
}

pub(super) struct FakeTransport {
    pub(super) seen: Sender<Seen>,
    pub(super) script: Script,
    pub(super) opened: usize,
}

pub(super) struct FakeStream {
    pub(super) seen: Sender<Seen>,
    pub(super) script: Script,
    /// How many streams were opened before this one.
    pub(super) index: usize,
    /// How the write in flight ends.
    pub(super) writing: Option<Outcome>,
}

pub(super) struct FakeClosing {
    pub(super) outcome: Option<Outcome>,
    pub(super) hold: Option<Arc<Mutex<Hold>>>,
}

/// A unary call the fake agent answers at once.
pub(super) struct FakeCall;

impl UnaryCall for FakeCall {
    fn poll_done(&mut self, _context: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Transport for FakeTransport {
    type Stream = FakeStream;
    type Call = FakeCall;

    fn open(&mut self) -> Result<FakeStream> {
        self.script.opened_at.lock().push(Instant::now());
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

    fn stalled(&self, stall: Stall, connection: u64) -> Error {
        self.seen.send(Seen::Stalled(connection)).unwrap();
        Error::Agent {
            addr: "fake".to_string(),
            status: format!("stalled: {stall:?} on connection {connection}"),
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
