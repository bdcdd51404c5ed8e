//! The sender loop: batches queued envelopes, writes them through a
//! transport, retries with backoff, and (at least once) replays what a failed
//! stream had not confirmed.
//!
//! It knows nothing of gRPC: a [`Transport`] opens streams and starts unary
//! sends, so batching, deadlines, flushes, retries and confirmations are
//! tested here with in-memory fakes.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, at, bounded, never, select_biased};

use crate::LOG_TARGET;
use crate::batch::{Batch, BatchBuilder, Stamp, framed_len};
use crate::envelope::Encoded;
use crate::error::{Error, Result};
use crate::policy::{Backoff, Delivery};
use crate::stats::{Counters, DropReason};

/// An envelope on its way to the sender thread.
pub(crate) struct Queued {
    /// Encoded by the thread that built it.
    pub envelope: Encoded,
}

/// Where emitters wait for room in a full queue (`Overflow::Block` and
/// `BlockFor`). The sender thread wakes them once the queue is down to half
/// full, not once per envelope it takes, which would cost a wake-up (a
/// system call) per envelope, and per emitting thread, just when the client
/// is busiest.
#[derive(Default)]
pub(crate) struct Room {
    /// Emitters waiting, or about to; read by the sender thread without the lock.
    pub waiting: AtomicUsize,
    pub lock: parking_lot::Mutex<()>,
    pub freed: parking_lot::Condvar,
}

impl Room {
    /// Wakes every waiting emitter, if any.
    pub(crate) fn wake_all(&self) {
        if self.waiting.load(SeqCst) > 0 {
            let _locked = self.lock.lock();
            self.freed.notify_all();
        }
    }
}

/// Requests from the handle, on their own channel so they are never stuck
/// behind a full data queue.
pub(crate) enum Control {
    /// Reply once everything queued before this request has been written.
    Flush(Sender<Result<()>>),
    /// Write everything queued, end the stream cleanly, and stop; give up on
    /// whatever is left at `deadline`.
    Close {
        deadline: Instant,
        reply: Sender<Result<()>>,
    },
    /// Start a unary send of an encoded `EnvelopeBatch` unless `deadline`
    /// has passed; the caller waits for it.
    Send {
        batch: Vec<u8>,
        deadline: Instant,
        reply: Sender<Result<PendingSend>>,
    },
}

/// A unary send under way; calling it waits for the agent's answer.
pub(crate) type PendingSend = Box<dyn FnOnce() -> Result<()> + Send>;

/// Opens `BatchSender` streams and starts unary sends.
pub(crate) trait Transport {
    /// The stream type; dropping one cancels its call.
    type Stream: BatchStream;

    /// Opens a new stream.
    fn open(&mut self) -> Result<Self::Stream>;

    /// Starts a unary `Send` of an encoded `EnvelopeBatch`.
    fn send(&mut self, batch: &[u8], timeout: Duration) -> Result<PendingSend>;
}

/// Why a write (or a stream's end) failed, which decides what happens to
/// its batches.
#[derive(Debug)]
pub(crate) enum WriteError {
    /// The stream had already ended: the agent never got the batch.
    StreamEnded(Error),
    /// The agent refused a message as too large (RESOURCE_EXHAUSTED).
    TooLarge(Error),
    /// The write was cut short (timeout, abort): the agent may have it.
    Uncertain(Error),
}

impl WriteError {
    fn error(&self) -> &Error {
        match self {
            WriteError::StreamEnded(error)
            | WriteError::TooLarge(error)
            | WriteError::Uncertain(error) => error,
        }
    }
}

/// One client stream of encoded `EnvelopeBatch` messages.
///
/// One write is in flight at a time: the loop starts a write, builds the
/// next batch while the transport sends it, and starts the next write once
/// [`poll_written`](Self::poll_written) says the last one was accepted.
pub(crate) trait BatchStream {
    /// Half-closing a stream yields this; it resolves when the call ends.
    type Closing: Closing;

    /// Starts writing one encoded batch, without waiting for it; the
    /// previous write has been accepted.
    fn start_write(&mut self, batch: &[u8]) -> std::result::Result<(), WriteError>;

    /// Ready once the write in flight has been accepted by the transport, or
    /// has failed.
    fn poll_written(
        &mut self,
        context: &mut Context<'_>,
    ) -> Poll<std::result::Result<(), WriteError>>;

    /// Starts a half-close without waiting for the agent's answer.
    fn half_close(self) -> Self::Closing;
}

/// A half-closed stream waiting for the agent to end the call.
pub(crate) trait Closing {
    /// Ready with `Ok` once the agent ended the call cleanly (after reading
    /// everything), or with the error it ended it with.
    fn poll_end(&mut self, context: &mut Context<'_>) -> Poll<std::result::Result<(), WriteError>>;
}

/// A stream that has carried writes this long is working: when it ends, a
/// new one is tried at once and the backoff starts over. A younger stream
/// that ends counts as a failed attempt, so a server that ends every call at
/// once is retried with backoff, not in a loop.
const PROVEN_STREAM_AGE: Duration = Duration::from_secs(1);

/// The longest any setting or timeout is honoured, so deadlines never overflow.
pub(crate) const LONGEST_WAIT: Duration = Duration::from_secs(24 * 60 * 60);

/// `now + wait`, with waits beyond [`LONGEST_WAIT`] shortened to it.
pub(crate) fn deadline_after(wait: Duration) -> Instant {
    Instant::now() + wait.min(LONGEST_WAIT)
}

/// What the loop needs to know from the builder.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// The agent's address, for error messages.
    pub addr: String,
    /// Stamped on envelopes that name no source.
    pub source: Option<crate::source::SourceInfo>,
    pub batch_max_envelopes: usize,
    pub batch_max_bytes: usize,
    pub flush_interval: Duration,
    pub global_tags: Vec<(String, String)>,
    pub delivery: Delivery,
    /// At least once: how long a stream is used before it is closed to confirm it.
    pub confirm_interval: Duration,
    /// At least once: the most bytes written but not yet confirmed.
    pub replay_buffer_bytes: usize,
    /// How long the agent may take to end a half-closed stream.
    pub confirm_timeout: Duration,
    /// How long one write may wait to be accepted before the stream is dropped.
    pub write_timeout: Duration,
    pub backoff: Backoff,
}

/// The stream being written, with what it carried that is not yet confirmed.
struct OpenStream<S> {
    stream: S,
    opened: Instant,
    unconfirmed: Vec<Batch>,
    /// The batch whose write is in flight.
    writing: Option<Writing>,
}

/// A write the transport has not yet accepted.
struct Writing {
    batch: Batch,
    /// When it stops waiting for the transport.
    deadline: Instant,
    /// The stream had carried writes before this one.
    reused: bool,
}

/// A half-closed stream and the batches its clean end will confirm.
struct Confirming<C> {
    closing: C,
    batches: Vec<Batch>,
    deadline: Instant,
}

/// Turns grpc's wake-ups into messages a `select!` can wait on.
pub(crate) struct ChannelWaker(pub Sender<()>);

impl Wake for ChannelWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // A full channel already holds a wake-up.
        let _ = self.0.try_send(());
    }
}

type ClosingOf<T> = <<T as Transport>::Stream as BatchStream>::Closing;

pub(crate) struct Worker<T: Transport> {
    transport: T,
    stream: Option<OpenStream<T::Stream>>,
    streams_opened: u64,
    confirming: Vec<Confirming<ClosingOf<T>>>,
    data: Receiver<Queued>,
    no_data: Receiver<Queued>,
    /// Emitters' signal that a batch's worth is waiting in the queue.
    nudges: Receiver<()>,
    no_nudges: Receiver<()>,
    room: Arc<Room>,
    control: Receiver<Control>,
    waker: Waker,
    wakeups: Receiver<()>,
    settings: Settings,
    counters: Arc<Counters>,
    /// What every envelope gets from the client: tags, default source.
    stamp: Stamp,
    building: BatchBuilder,
    /// When the envelopes left in the queue by a batch sealed on time were
    /// already due: the batch they open is due from then, not from when it
    /// opens.
    overdue: Option<Instant>,
    /// Sealed batches waiting to be written, oldest first.
    outbox: VecDeque<Batch>,
    /// Envelopes taken from the queue so far; batches are numbered by it.
    taken: u64,
    /// Bytes written but not yet confirmed (at least once).
    replay_bytes: usize,
    retry_at: Option<Instant>,
    backoff: Backoff,
    /// Flush replies waiting for every envelope up to their number to be written.
    flushes: Vec<(u64, Sender<Result<()>>)>,
    closing: Option<(Instant, Sender<Result<()>>)>,
    /// How the last stream ended during close, when it ended badly.
    close_error: Option<Error>,
    /// False from the first failure of an outage until a write succeeds again.
    healthy: bool,
    failures_in_outage: u64,
}

impl<T: Transport> Worker<T> {
    pub(crate) fn new(
        transport: T,
        data: Receiver<Queued>,
        nudges: Receiver<()>,
        room: Arc<Room>,
        control: Receiver<Control>,
        settings: Settings,
        counters: Arc<Counters>,
    ) -> Worker<T> {
        let (wake, wakeups) = bounded(1);
        Worker {
            transport,
            stream: None,
            streams_opened: 0,
            confirming: Vec::new(),
            data,
            no_data: never(),
            nudges,
            no_nudges: never(),
            room,
            control,
            waker: Waker::from(Arc::new(ChannelWaker(wake))),
            wakeups,
            backoff: settings.backoff.clone(),
            stamp: Stamp::new(&settings.global_tags, settings.source.as_ref()),
            settings,
            counters,
            building: BatchBuilder::default(),
            overdue: None,
            outbox: VecDeque::new(),
            taken: 0,
            replay_bytes: 0,
            retry_at: None,
            flushes: Vec::new(),
            closing: None,
            close_error: None,
            healthy: true,
            failures_in_outage: 0,
        }
    }

    /// Runs until a close request is done (or every handle is gone).
    pub(crate) fn run(mut self) {
        loop {
            if self.data.len() <= self.data.capacity().unwrap_or(0) / 2 {
                self.room.wake_all();
            }
            let now = Instant::now();
            self.on_time(now);
            self.write_outbox(now);
            self.rotate_if_due(now);
            self.poll_confirmations(now);
            self.answer_flushes();
            if self.finish_close_if_done() {
                return;
            }
            if self.can_write() && !self.outbox.is_empty() && !self.writing() {
                // A failed confirmation put batches back: write them now.
                continue;
            }

            let accepting = self.accepting();
            // With a batch open, the loop does not wake for each envelope
            // (that would cost the emitting thread a wake-up each): it
            // drains the queue when emitters say a batch's worth is waiting,
            // or when the batch's time is up.
            let listening = accepting && self.building.is_empty();
            let data = if listening { &self.data } else { &self.no_data };
            let nudges = if accepting {
                &self.nudges
            } else {
                &self.no_nudges
            };
            let timer = self.next_deadline().map_or_else(never, at);
            select_biased! {
                recv(self.control) -> request => match request {
                    Ok(request) => self.handle(request),
                    Err(_) => {
                        // Every handle is gone: wind down once, and stop listening.
                        self.control = never();
                        if self.closing.is_none() {
                            self.begin_close(deadline_after(Duration::from_secs(1)), None);
                        }
                    }
                },
                recv(data) -> queued => {
                    if let Ok(queued) = queued {
                        self.take(queued);
                        self.take_waiting(usize::MAX);
                    }
                },
                recv(nudges) -> _ => {
                    self.take_waiting(usize::MAX);
                }
                recv(self.wakeups) -> _ => {},
                recv(timer) -> _ => {},
            }
        }
    }

    /// Whether the loop takes envelopes from the queue now. While a write is
    /// in flight the next batch is built, unless the agent is failing: then
    /// the client holds no more than before.
    fn accepting(&self) -> bool {
        self.closing.is_none()
            && self.outbox.is_empty()
            && self.can_write()
            && (self.healthy || !self.writing())
    }

    /// Takes at most `most` of what is waiting in the queue, up to a sealed
    /// batch; how many it took.
    fn take_waiting(&mut self, most: usize) -> usize {
        let mut took = 0;
        while took < most && self.outbox.is_empty() {
            match self.data.try_recv() {
                Ok(queued) => self.take(queued),
                Err(_) => break,
            }
            took += 1;
        }
        took
    }

    fn handle(&mut self, request: Control) {
        match request {
            Control::Flush(reply) => {
                // Envelopes emitted before the request are already in the
                // queue, in order; take just as many as were there.
                for _ in 0..self.data.len() {
                    match self.data.try_recv() {
                        Ok(queued) => self.take(queued),
                        Err(_) => break,
                    }
                }
                self.seal();
                self.flushes.push((self.taken, reply));
            }
            Control::Close { deadline, reply } => self.begin_close(deadline, Some(reply)),
            Control::Send {
                batch,
                deadline,
                reply,
            } => {
                // A caller that gave up has already counted its error.
                let left = deadline.saturating_duration_since(Instant::now());
                let pending = if left.is_zero() {
                    Err(Error::Timeout {
                        waited: Duration::ZERO,
                        undelivered: 0,
                    })
                } else {
                    let pending = self.transport.send(&batch, left);
                    if let Err(error) = &pending {
                        self.counters.record_error(error);
                    }
                    pending
                };
                let _ = reply.send(pending);
            }
        }
    }

    fn begin_close(&mut self, deadline: Instant, reply: Option<Sender<Result<()>>>) {
        while let Ok(queued) = self.data.try_recv() {
            self.take(queued);
        }
        self.seal();
        let reply = reply.unwrap_or_else(|| bounded(1).0);
        self.closing = Some((deadline, reply));
    }

    /// Time-driven steps: a partial batch whose interval passed is sealed
    /// with what queued behind it, a backoff that ran out ends.
    fn on_time(&mut self, now: Instant) {
        if let Some(started) = self.building.started {
            if now >= started + self.settings.flush_interval.min(LONGEST_WAIT) {
                // With a batch open the loop does not listen to the queue, so
                // what waits there has waited since before the batch was due:
                // it goes with this batch, up to the batch's caps.
                if self.accepting() {
                    let waiting = self.data.len();
                    if self.take_waiting(waiting) < waiting {
                        // Full: the rest opens a batch that is due already.
                        self.overdue = Some(started);
                    }
                }
                self.seal();
            }
        }
        if self.retry_at.is_some_and(|at| now >= at) {
            self.retry_at = None;
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let batch_due = self
            .building
            .started
            .map(|started| started + self.settings.flush_interval.min(LONGEST_WAIT));
        let rotation = self.rotation_due();
        let confirmation = self.confirming.iter().map(|c| c.deadline).min();
        let close = self.closing.as_ref().map(|(deadline, _)| *deadline);
        let write = self.in_flight().map(|writing| writing.deadline);
        [
            batch_due,
            self.retry_at,
            rotation,
            confirmation,
            close,
            write,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Adds one envelope to the batch being built, sealing it first if the
    /// envelope would not fit and afterwards if it is full.
    fn take(&mut self, queued: Queued) {
        self.taken += 1;
        // In flight from now until it is sent or dropped.
        self.counters.in_flight.fetch_add(1, Relaxed);
        let envelope = queued.envelope;
        let size = envelope.bytes.len();
        let added = self.stamp.added_len(&envelope);
        let framed = framed_len(size + added);
        if framed > self.settings.batch_max_bytes || envelope.unencodable {
            // It can never fit a batch. Dropped as emit would have dropped
            // it, so not one that flush and close report as undelivered.
            self.counters.in_flight.fetch_sub(1, Relaxed);
            if self.counters.drop_envelopes(DropReason::TooLarge, 1) {
                log::warn!(
                    target: LOG_TARGET,
                    "dropping envelopes: {}; further drops are only counted in stats()",
                    DropReason::TooLarge.describe()
                );
            }
            return;
        }
        if !self.building.is_empty()
            && self.building.encoded_len() + framed > self.settings.batch_max_bytes
        {
            // The new envelope is counted in `taken` but not in this batch.
            let batch = self.building.seal(self.taken - 1);
            self.outbox.push_back(batch);
        }
        self.building.push(&envelope, &self.stamp, added);
        if let Some(due) = self.overdue.take() {
            // Its first envelope has just gone in.
            self.building.started = Some(due);
        }
        if self.building.len() >= self.settings.batch_max_envelopes
            || self.building.encoded_len() >= self.settings.batch_max_bytes
        {
            self.seal();
        }
    }

    fn seal(&mut self) {
        if !self.building.is_empty() {
            let batch = self.building.seal(self.taken);
            self.outbox.push_back(batch);
        }
    }

    /// Every envelope numbered up to this has been written or dropped.
    fn written_through(&self) -> u64 {
        let pending = self.outbox.front().map(|b| b.last_seq - b.len());
        let building = (!self.building.is_empty()).then(|| self.taken - self.building.len() as u64);
        let writing = self.in_flight().map(|w| w.batch.last_seq - w.batch.len());
        [pending, building, writing]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.taken)
    }

    fn answer_flushes(&mut self) {
        let written = self.written_through();
        self.flushes.retain(|(target, reply)| {
            if *target <= written {
                let _ = reply.send(Ok(()));
                false
            } else {
                true
            }
        });
    }

    /// Not backing off, and (at least once) room to write more.
    fn can_write(&self) -> bool {
        self.retry_at.is_none() && !self.replay_full()
    }

    fn replay_full(&self) -> bool {
        self.settings.delivery == Delivery::AtLeastOnce
            && self.replay_bytes >= self.settings.replay_buffer_bytes
    }

    /// The write in flight, if any.
    fn in_flight(&self) -> Option<&Writing> {
        self.stream.as_ref().and_then(|open| open.writing.as_ref())
    }

    fn writing(&self) -> bool {
        self.in_flight().is_some()
    }

    /// Starts writing sealed batches, one in flight at a time, until the
    /// outbox is empty, a write is under way, a failure starts a backoff, or
    /// (at least once) the replay buffer is full.
    fn write_outbox(&mut self, now: Instant) {
        loop {
            self.poll_write(now);
            if self.writing()
                || self.outbox.is_empty()
                || self.retry_at.is_some()
                || self.replay_full()
            {
                return;
            }
            let isolate = self.outbox.front().is_some_and(|batch| batch.isolate);
            if isolate
                && self
                    .stream
                    .as_ref()
                    .is_some_and(|open| !open.unconfirmed.is_empty())
            {
                // A suspect batch goes on a stream of its own.
                self.rotate();
            }
            let reused = self.stream.is_some();
            if let Err(error) = self.open_stream() {
                self.write_failed(WriteError::StreamEnded(error), reused);
                continue;
            }
            let (Some(open), Some(batch)) = (self.stream.as_mut(), self.outbox.pop_front()) else {
                return;
            };
            match open.stream.start_write(&batch.bytes) {
                Ok(()) => {
                    open.writing = Some(Writing {
                        batch,
                        deadline: deadline_after(self.settings.write_timeout),
                        reused,
                    });
                }
                Err(failure) => {
                    self.outbox.push_front(batch);
                    self.write_failed(failure, reused);
                }
            }
        }
    }

    /// Settles the write in flight once the transport accepted it, failed it,
    /// or kept it past the write timeout.
    fn poll_write(&mut self, now: Instant) {
        let Some(open) = self.stream.as_mut() else {
            return;
        };
        let Some(deadline) = open.writing.as_ref().map(|w| w.deadline) else {
            return;
        };
        let mut context = Context::from_waker(&self.waker);
        let outcome = match open.stream.poll_written(&mut context) {
            Poll::Ready(outcome) => outcome,
            Poll::Pending if now >= deadline => Err(WriteError::Uncertain(Error::Agent {
                addr: self.settings.addr.clone(),
                status: format!(
                    "write not accepted within {:?}",
                    self.settings.write_timeout
                ),
                hint: Some("the agent is not reading; it may be overloaded or stuck".to_string()),
            })),
            Poll::Pending => return,
        };
        let Some(writing) = open.writing.take() else {
            return;
        };
        match outcome {
            Ok(()) => self.written(writing.batch),
            Err(failure) => {
                let failure = match failure {
                    // The stream had carried writes, so the connection was
                    // up: the agent may have read this one before the call
                    // ended. At most once must not write it again.
                    WriteError::StreamEnded(error)
                        if writing.reused && self.settings.delivery == Delivery::AtMostOnce =>
                    {
                        WriteError::Uncertain(error)
                    }
                    other => other,
                };
                self.outbox.push_front(writing.batch);
                self.write_failed(failure, writing.reused);
            }
        }
    }

    fn open_stream(&mut self) -> Result<()> {
        if self.stream.is_none() {
            let stream = self.transport.open()?;
            if self.streams_opened > 0 {
                self.counters.reconnects.fetch_add(1, Relaxed);
            }
            self.streams_opened += 1;
            self.stream = Some(OpenStream {
                stream,
                opened: Instant::now(),
                unconfirmed: Vec::new(),
                writing: None,
            });
        }
        Ok(())
    }

    fn written(&mut self, batch: Batch) {
        self.counters.batches.fetch_add(1, Relaxed);
        let proven = self
            .stream
            .as_ref()
            .is_some_and(|open| open.opened.elapsed() >= PROVEN_STREAM_AGE);
        if proven && self.settings.delivery == Delivery::AtMostOnce {
            self.backoff.reset();
        }
        if !self.healthy {
            self.healthy = true;
            log::info!(
                target: LOG_TARGET,
                "the agent accepts envelopes again after {} failed attempts",
                self.failures_in_outage
            );
            self.failures_in_outage = 0;
        }
        match (self.settings.delivery, self.stream.as_mut()) {
            (Delivery::AtLeastOnce, Some(stream)) => {
                self.replay_bytes += batch.bytes.len();
                let isolate = batch.isolate;
                stream.unconfirmed.push(batch);
                if isolate {
                    self.rotate();
                }
            }
            _ => self.resolve(batch.len()),
        }
    }

    /// Counts envelopes as delivered.
    fn resolve(&mut self, count: u64) {
        self.counters.sent.fetch_add(count, Relaxed);
        self.counters.in_flight.fetch_sub(count, Relaxed);
    }

    fn give_up(&mut self, count: u64, reason: DropReason) {
        self.counters.in_flight.fetch_sub(count, Relaxed);
        self.counters.drop_envelopes(reason, count);
        self.counters.undeliverable.fetch_add(count, Relaxed);
    }

    fn note_failure(&mut self, error: &Error) {
        self.counters.record_error(error);
        self.failures_in_outage += 1;
        if self.healthy {
            self.healthy = false;
            log::warn!(target: LOG_TARGET, "cannot deliver envelopes: {error}");
        }
    }

    fn write_failed(&mut self, failure: WriteError, reused: bool) {
        self.note_failure(failure.error());
        let too_large = matches!(failure, WriteError::TooLarge(_));
        let front_len = self.outbox.front().map_or(0, Batch::len);
        // Dropping the stream cancels its call; what it carried unconfirmed
        // goes back to be written again.
        let proven = match self.stream.take() {
            Some(open) => {
                let proven = open.opened.elapsed() >= PROVEN_STREAM_AGE;
                self.replay(open.unconfirmed, too_large);
                proven
            }
            None => false,
        };
        match failure {
            // A stream that had worked may just have ended (the agent
            // restarted, or refused an earlier message as too large): try a
            // new one at once.
            WriteError::StreamEnded(_) | WriteError::TooLarge(_) if proven => self.backoff.reset(),
            // The first message of a new stream was refused: it is the culprit.
            WriteError::TooLarge(_) if !reused => self.split_front(),
            WriteError::StreamEnded(_) | WriteError::TooLarge(_) => self.back_off(),
            WriteError::Uncertain(_) => match self.settings.delivery {
                // The agent may have it: writing it again could duplicate it.
                Delivery::AtMostOnce => {
                    if let Some(batch) = self.outbox.pop_front() {
                        self.give_up(batch.len(), DropReason::GaveUp);
                    }
                }
                Delivery::AtLeastOnce => {
                    self.counters.replayed.fetch_add(front_len, Relaxed);
                    self.back_off();
                }
            },
        }
    }

    fn back_off(&mut self) {
        self.retry_at = Some(Instant::now() + self.backoff.next_delay());
    }

    /// The agent refused the front batch as too large: write it in halves,
    /// or drop it if it is a single envelope.
    fn split_front(&mut self) {
        if let Some(batch) = self.outbox.pop_front() {
            match batch.split() {
                Ok((first, second)) => {
                    self.outbox.push_front(second);
                    self.outbox.push_front(first);
                }
                Err(single) => self.give_up(single.len(), DropReason::TooLarge),
            }
        }
    }

    /// Puts batches written on a failed stream back in the outbox, in order.
    fn replay(&mut self, batches: Vec<Batch>, split: bool) {
        if batches.is_empty() {
            return;
        }
        for batch in batches {
            self.replay_bytes -= batch.bytes.len();
            self.counters.replayed.fetch_add(batch.len(), Relaxed);
            if !split {
                self.outbox.push_back(batch);
                continue;
            }
            // The agent refused a message as too large, maybe one of these:
            // write them in halves, each on its own stream, until the
            // refusal points at a single envelope.
            match batch.split() {
                Ok((mut first, mut second)) => {
                    first.isolate = true;
                    second.isolate = true;
                    self.outbox.extend([first, second]);
                }
                Err(mut single) => {
                    single.isolate = true;
                    self.outbox.push_back(single);
                }
            }
        }
        self.outbox
            .make_contiguous()
            .sort_by_key(|batch| batch.last_seq);
    }

    /// At least once: end the stream to confirm it once it has been used for
    /// `confirm_interval`, or at once when the replay buffer is full.
    fn rotation_due(&self) -> Option<Instant> {
        if self.settings.delivery != Delivery::AtLeastOnce {
            return None;
        }
        let stream = self.stream.as_ref()?;
        if stream.unconfirmed.is_empty() {
            return None;
        }
        if self.replay_full() {
            // Due already: confirming is the only way to make room.
            return Some(stream.opened);
        }
        Some(stream.opened + self.settings.confirm_interval.min(LONGEST_WAIT))
    }

    fn rotate_if_due(&mut self, now: Instant) {
        if self.writing() {
            // Its acceptance (or failure) wakes the loop, which comes back here.
            return;
        }
        let closing_idle =
            self.closing.is_some() && self.outbox.is_empty() && self.building.is_empty();
        let due = self.rotation_due().is_some_and(|due| now >= due);
        if due || closing_idle {
            self.rotate();
        }
    }

    /// Half-closes the stream; its end is awaited with the other
    /// confirmations, which the loop polls next.
    fn rotate(&mut self) {
        if let Some(open) = self.stream.take() {
            self.confirming.push(Confirming {
                closing: open.stream.half_close(),
                batches: open.unconfirmed,
                deadline: deadline_after(self.settings.confirm_timeout),
            });
        }
    }

    fn poll_confirmations(&mut self, now: Instant) {
        let waker = self.waker.clone();
        let mut context = Context::from_waker(&waker);
        let mut index = 0;
        while index < self.confirming.len() {
            let confirming = &mut self.confirming[index];
            let outcome = match confirming.closing.poll_end(&mut context) {
                Poll::Ready(outcome) => outcome,
                Poll::Pending if now >= confirming.deadline => {
                    Err(WriteError::Uncertain(Error::Agent {
                        addr: self.settings.addr.clone(),
                        status: "the agent did not end a closed stream in time".to_string(),
                        hint: Some(
                            "the agent is not reading; it may be overloaded or stuck".to_string(),
                        ),
                    }))
                }
                Poll::Pending => {
                    index += 1;
                    continue;
                }
            };
            // Dropping it cancels a call still pending.
            let done = self.confirming.remove(index);
            match outcome {
                Ok(()) => {
                    if !done.batches.is_empty() {
                        self.backoff.reset();
                    }
                    for batch in done.batches {
                        self.replay_bytes -= batch.bytes.len();
                        self.resolve(batch.len());
                    }
                }
                Err(failure) => {
                    let too_large = matches!(failure, WriteError::TooLarge(_));
                    let lone = done.batches.len() == 1 && done.batches[0].len() == 1;
                    if too_large && lone {
                        // Its stream carried nothing else: this envelope is too large.
                        self.note_failure(failure.error());
                        for batch in done.batches {
                            self.replay_bytes -= batch.bytes.len();
                            self.give_up(batch.len(), DropReason::TooLarge);
                        }
                    } else if done.batches.is_empty() {
                        // At most once, the final stream: its end is close's result.
                        self.counters.record_error(failure.error());
                        self.close_error = Some(failure_into_error(failure));
                    } else {
                        self.note_failure(failure.error());
                        self.replay(done.batches, too_large);
                        self.back_off();
                    }
                }
            }
        }
    }

    /// Replies to close and returns true once everything is written and
    /// confirmed, or once the close deadline has passed.
    fn finish_close_if_done(&mut self) -> bool {
        let Some((deadline, _)) = &self.closing else {
            return false;
        };
        let idle = self.outbox.is_empty()
            && self.building.is_empty()
            && self.stream.is_none()
            && self.confirming.is_empty();
        if !idle && Instant::now() < *deadline {
            return false;
        }
        let mut undelivered = 0;
        for batch in std::mem::take(&mut self.outbox) {
            undelivered += batch.len();
        }
        if let Some(stream) = self.stream.take() {
            undelivered += stream.unconfirmed.iter().map(Batch::len).sum::<u64>();
            undelivered += stream.writing.map_or(0, |writing| writing.batch.len());
        }
        for confirming in std::mem::take(&mut self.confirming) {
            if confirming.batches.is_empty() && self.close_error.is_none() {
                self.close_error = Some(Error::Agent {
                    addr: self.settings.addr.clone(),
                    status: "the agent did not end the stream before close's deadline".to_string(),
                    hint: Some(
                        "the agent is not reading; it may be overloaded or stuck".to_string(),
                    ),
                });
            }
            undelivered += confirming.batches.iter().map(Batch::len).sum::<u64>();
        }
        if undelivered > 0 {
            self.give_up(undelivered, DropReason::GaveUp);
        }
        self.answer_flushes();
        let result = match self.close_error.take() {
            _ if undelivered > 0 => Err(Error::Timeout {
                waited: Duration::ZERO,
                undelivered,
            }),
            Some(error) => Err(error),
            None => Ok(()),
        };
        if let Some((_, reply)) = self.closing.take() {
            let _ = reply.send(result);
        }
        true
    }
}

fn failure_into_error(failure: WriteError) -> Error {
    match failure {
        WriteError::StreamEnded(error)
        | WriteError::TooLarge(error)
        | WriteError::Uncertain(error) => error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::envelope as pb;
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
    }

    /// Writes held in flight, and the worker's waker to call on release.
    #[derive(Default)]
    struct Hold {
        released: bool,
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
    }

    impl Script {
        fn fail_write(&self, outcome: Outcome) {
            self.writes.lock().push_back(outcome);
        }
    }

    struct FakeTransport {
        seen: Sender<Seen>,
        script: Script,
    }

    struct FakeStream {
        seen: Sender<Seen>,
        script: Script,
        /// How the write in flight ends.
        writing: Option<Outcome>,
    }

    struct FakeClosing(Option<Outcome>);

    impl Transport for FakeTransport {
        type Stream = FakeStream;

        fn open(&mut self) -> Result<FakeStream> {
            self.seen.send(Seen::Opened).unwrap();
            Ok(FakeStream {
                seen: self.seen.clone(),
                script: self.script.clone(),
                writing: None,
            })
        }

        fn send(&mut self, _batch: &[u8], _timeout: Duration) -> Result<PendingSend> {
            Ok(Box::new(|| Ok(())))
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
            Ok(())
        }

        fn poll_written(&mut self, context: &mut Context<'_>) -> Poll<Outcome> {
            if let Some(hold) = &self.script.hold {
                let mut hold = hold.lock();
                if !hold.released {
                    hold.waker = Some(context.waker().clone());
                    return Poll::Pending;
                }
            }
            Poll::Ready(self.writing.take().expect("a write in flight"))
        }

        fn half_close(self) -> FakeClosing {
            self.seen.send(Seen::HalfClosed).unwrap();
            FakeClosing(Some(self.script.ends.lock().pop_front().unwrap_or(Ok(()))))
        }
    }

    impl Closing for FakeClosing {
        fn poll_end(&mut self, _context: &mut Context<'_>) -> Poll<Outcome> {
            Poll::Ready(self.0.take().unwrap_or(Ok(())))
        }
    }

    struct Harness {
        data: Sender<Queued>,
        nudge: Sender<()>,
        control: Sender<Control>,
        seen: Receiver<Seen>,
        counters: Arc<Counters>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    const WAIT: Duration = Duration::from_secs(10);
    const HOUR: Duration = Duration::from_secs(3600);

    fn settings() -> Settings {
        Settings {
            addr: "fake".to_string(),
            source: None,
            batch_max_envelopes: 3,
            batch_max_bytes: 1 << 20,
            flush_interval: HOUR,
            global_tags: vec![],
            delivery: Delivery::AtMostOnce,
            confirm_interval: HOUR,
            replay_buffer_bytes: 8 << 20,
            confirm_timeout: WAIT,
            write_timeout: WAIT,
            backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(2)),
        }
    }

    fn start(settings: Settings, script: Script) -> Harness {
        let (data_tx, data_rx) = bounded(1000);
        let (nudge_tx, nudge_rx) = bounded(1);
        let (control_tx, control_rx) = unbounded();
        let (seen_tx, seen_rx) = unbounded();
        let counters = Arc::new(Counters::default());
        let transport = FakeTransport {
            seen: seen_tx,
            script,
        };
        let worker = Worker::new(
            transport,
            data_rx,
            nudge_rx,
            Arc::default(),
            control_rx,
            settings,
            counters.clone(),
        );
        Harness {
            data: data_tx,
            nudge: nudge_tx,
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
        }
    }

    impl Harness {
        fn emit(&self, n: i64) {
            let _ = self.counters.emitted.add(1);
            self.data.send(log(n)).unwrap();
            // As the client does once a batch's worth may be waiting.
            let _ = self.nudge.try_send(());
        }

        /// As the client emits below a batch's worth: no nudge.
        fn emit_quietly(&self, n: i64) {
            let _ = self.counters.emitted.add(1);
            self.data.send(log(n)).unwrap();
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
            self.control.send(Control::Flush(reply)).unwrap();
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
            let stats = self.counters.snapshot(0);
            assert_eq!(
                stats.emitted,
                stats.sent + stats.dropped.total(),
                "{stats:?}"
            );
            assert_eq!(stats.in_flight, 0, "{stats:?}");
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
    fn what_a_full_batch_on_time_leaves_queued_is_due_at_once() {
        // The loop's steps, driven by hand with a clock of the test's own.
        let (data, data_rx) = bounded(10);
        let (seen, _seen_rx) = unbounded();
        let (_control, control_rx) = unbounded();
        let settings = Settings {
            batch_max_envelopes: 2,
            ..settings()
        };
        let transport = FakeTransport {
            seen,
            script: Script::default(),
        };
        let mut worker = Worker::new(
            transport,
            data_rx,
            never(),
            Arc::default(),
            control_rx,
            settings,
            Arc::default(),
        );
        worker.take(log(1));
        let due = worker.building.started.unwrap() + HOUR;
        for n in 2..=3 {
            data.send(log(n)).unwrap();
        }
        worker.on_time(due);
        assert_eq!(worker.outbox.len(), 1, "the full batch, sealed on time");
        assert!(worker.building.is_empty());
        // The one left behind opens a batch already due at the same time.
        let left = worker.data.try_recv().unwrap();
        worker.take(left);
        assert_eq!(worker.next_deadline(), Some(due));
        worker.outbox.clear();
        worker.on_time(due);
        assert_eq!(worker.outbox.len(), 1);
        assert_eq!(worker.outbox[0].len(), 1);
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
        harness.control.send(Control::Flush(reply)).unwrap();
        assert!(matches!(harness.seen.recv_timeout(WAIT), Ok(Seen::Opened)));
        assert!(matches!(harness.seen.recv_timeout(WAIT), Ok(Seen::AtGate)));
        // The write is held at the gate: the flush cannot have replied yet.
        assert!(result.try_recv().is_err());
        assert_eq!(harness.counters.snapshot(0).in_flight, 1);
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
        harness.control.send(Control::Flush(reply)).unwrap();
        assert!(result.try_recv().is_err());
        assert_eq!(harness.counters.snapshot(0).sent, 0);
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
        let stats = harness.counters.snapshot(0);
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
            replay_buffer_bytes: 1,
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

    #[test]
    fn global_tags_are_merged_and_envelope_tags_win() {
        let settings = Settings {
            global_tags: vec![
                ("deployment".into(), "cf".into()),
                ("k".into(), "global".into()),
            ],
            ..settings()
        };
        let (seen_tx, seen) = unbounded();
        let (data_tx, data) = bounded(10);
        let (control_tx, control) = unbounded();
        let counters = Arc::new(Counters::default());
        let mut worker = Worker::new(
            FakeTransport {
                seen: seen_tx,
                script: Script::default(),
            },
            data,
            never(),
            Arc::default(),
            control,
            settings,
            counters,
        );
        worker.take(log_tagged(1, &[("k", "mine")]));
        worker.seal();
        let batch = worker.outbox.pop_front().unwrap();
        let decoded = pb::EnvelopeBatch::parse_from_bytes(&batch.bytes).unwrap();
        let tags = &decoded.batch[0].tags;
        assert_eq!(tags["deployment"], "cf");
        assert_eq!(tags["k"], "mine");
        drop((seen, data_tx, control_tx));
    }
}
