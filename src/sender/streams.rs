//! The stream side: sealed batches waiting to be written (the outbox), the
//! `BatchSender` streams they are written on (up to `streams` of them, on
//! one channel, one write in flight on each), and what follows a write:
//! counting it sent (at most once) or keeping it until its stream is
//! confirmed (at least once: streams are half-closed every
//! `confirm_interval` and their batches replayed if the end is not clean),
//! splitting what the agent refuses as too large, waiting (polled, never
//! blocking) for the status of a stream that failed, leaving a connection
//! that stopped answering, and backing off while the agent is away.
//!
//! Where each batch's envelopes and bytes are counted is the [`Ledger`]'s
//! (ledger.rs); what the operator is told is [`Health`]'s (health.rs).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::batch::Batch;
use crate::error::{Error, Result};
use crate::policy::{Backoff, Delivery};
use crate::queue::Room;
use crate::stats::{Counters, DropReason};

use super::batcher::{Intake, Outbox};
use super::ends::{Confirmation, Confirming, Ending, Ends};
use super::health::Health;
use super::ledger::{Accepted, Ledger};
use super::transport::{BatchStream, Stall, Transport, WriteError};
use super::{LONGEST_WAIT, Settings, deadline_after};

/// A stream that has carried writes this long is working: when it ends, a
/// new one is tried at once and the backoff starts over. A younger stream
/// that ends counts as a failed attempt, so a server that ends every call at
/// once is retried with backoff, not in a loop.
const PROVEN_STREAM_AGE: Duration = Duration::from_secs(1);

/// How long a failed stream may take to say why (its call's status) before
/// the write's own error is taken for it.
const END_STATUS_WAIT: Duration = Duration::from_secs(1);

/// The stream being written, with what it carried that is not yet confirmed.
struct OpenStream<S> {
    stream: S,
    opened: Instant,
    /// The connection it rides (see `Streams::connection`).
    connection: u64,
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

type ClosingOf<T> = <<T as Transport>::Stream as BatchStream>::Closing;

pub(crate) struct Streams<T: Transport> {
    transport: T,
    addr: String,
    delivery: Delivery,
    write_timeout: Duration,
    confirm_interval: Duration,
    confirm_timeout: Duration,
    ledger: Ledger,
    health: Health,
    counters: Arc<Counters>,
    waker: Waker,
    outbox: Outbox,
    /// Room for `streams` open streams; a sealed batch goes to one that can
    /// take a write, so up to that many writes are in flight. A slot is
    /// empty until a batch needs it, and again after its stream ends.
    slots: Vec<Option<OpenStream<T::Stream>>>,
    /// The slot the next batch tries first: batches take turns, so every
    /// stream gets its share even while one's window could take them all.
    next_slot: usize,
    streams_opened: u64,
    /// Counts the connections abandoned: a stream opened before the last
    /// one was left rides a dead connection.
    connection: u64,
    ends: Ends<ClosingOf<T>>,
    retry_at: Option<Instant>,
    backoff: Backoff,
    /// At most once: how the last stream ended, when it ended badly during close.
    close_error: Option<Error>,
}

impl<T: Transport> Streams<T> {
    pub(crate) fn new(
        transport: T,
        settings: &Settings,
        room: Arc<Room>,
        counters: Arc<Counters>,
        waker: Waker,
    ) -> Streams<T> {
        Streams {
            transport,
            addr: settings.addr.clone(),
            delivery: settings.delivery,
            write_timeout: settings.write_timeout,
            confirm_interval: settings.confirm_interval.min(LONGEST_WAIT),
            confirm_timeout: settings.confirm_timeout,
            ledger: Ledger::new(
                room,
                counters.clone(),
                settings.delivery,
                settings.replay_buffer_bytes,
            ),
            health: Health::new(counters.clone()),
            counters,
            waker: waker.clone(),
            outbox: Outbox::new(),
            slots: (0..settings.streams.max(1)).map(|_| None).collect(),
            next_slot: 0,
            streams_opened: 0,
            connection: 0,
            ends: Ends::new(waker.clone()),
            retry_at: None,
            backoff: settings.backoff.clone(),
            close_error: None,
        }
    }

    /// Where the batcher puts sealed batches, and counts what it takes.
    pub(crate) fn intake(&mut self) -> Intake<'_> {
        Intake {
            outbox: &mut self.outbox,
            ledger: &mut self.ledger,
        }
    }

    /// Whether the loop should take more from the queue: nothing sealed is
    /// waiting, the next batch could be written, and the agent is reading.
    /// While a write is in flight the next batch is built, unless the agent
    /// is failing: then the client holds no more than before.
    pub(crate) fn wants_more(&self) -> bool {
        self.outbox.is_empty() && self.can_write() && (self.health.is_healthy() || !self.writing())
    }

    /// A sealed batch could be written now on a stream that can take it.
    pub(crate) fn has_write_to_start(&self) -> bool {
        self.can_write()
            && self
                .outbox
                .front()
                .is_some_and(|batch| self.slot_for(batch.isolate).is_some())
    }

    /// Nothing is left to write or confirm.
    pub(crate) fn is_idle(&self) -> bool {
        self.outbox.is_empty() && self.slots.iter().all(Option::is_none) && self.ends.is_idle()
    }

    /// Tells the queue what the sender holds of the byte budget.
    pub(crate) fn publish_held(&self) {
        self.ledger.publish();
    }

    /// How many envelopes were taken before the first one not yet written.
    pub(crate) fn unwritten_from(&self) -> Option<u64> {
        let waiting = self.outbox.front().map(Batch::first_seq);
        let writing = self.unsettled().map(Batch::first_seq);
        waiting.into_iter().chain(writing).min()
    }

    /// The next time something here is due.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let ends = self.ends.next_deadline();
        let write = self.in_flight().map(|writing| writing.deadline).min();
        // A stream with a write in flight rotates once the write settles,
        // which wakes the loop: its rotation is no deadline to wait for.
        let rotation = (0..self.slots.len())
            .filter(|&slot| {
                self.slots[slot]
                    .as_ref()
                    .is_some_and(|open| open.writing.is_none())
            })
            .filter_map(|slot| self.rotation_due(slot))
            .min();
        [self.retry_at, rotation, ends, write]
            .into_iter()
            .flatten()
            .min()
    }

    /// One pass: ends a backoff that ran out, starts and settles writes,
    /// rotates the stream when due (or, `closing` with nothing left to
    /// write, to end it), and settles confirmations.
    pub(crate) fn step(&mut self, now: Instant, closing: bool) {
        if self.retry_at.is_some_and(|at| now >= at) {
            self.retry_at = None;
        }
        self.poll_endings(now);
        self.write_outbox(now);
        // Streams that failed just now: their status may be in already, and
        // a first poll is what asks to be woken when it comes.
        self.poll_endings(now);
        self.rotate_if_due(now, closing && self.outbox.is_empty());
        self.poll_confirmations(now);
    }

    /// The books, which unary sends keep their bytes in too.
    pub(crate) fn ledger(&mut self) -> &mut Ledger {
        &mut self.ledger
    }

    /// The transport, for unary sends to share the channel, and the books.
    pub(crate) fn transport_and_ledger(&mut self) -> (&mut T, &mut Ledger) {
        (&mut self.transport, &mut self.ledger)
    }

    /// Close's deadline: gives up on everything left, and says how many
    /// envelopes that was and how the last stream ended if it ended badly.
    pub(crate) fn give_up_all(&mut self) -> (u64, Option<Error>) {
        let now = Instant::now();
        // A write held until now may never have met an error: say why it
        // waited, or the operator sees drops with no cause.
        let longest_write =
            self.in_flight()
                .map(|writing| writing.deadline)
                .min()
                .map(|deadline| {
                    self.write_timeout
                        .saturating_sub(deadline.saturating_duration_since(now))
                });
        if let Some(waited) = longest_write {
            let error = self.transport.stalled(Stall::Close { waited });
            self.health.record(&error);
        }
        let mut undelivered = 0;
        let (ending, confirming) = self.ends.take_all();
        for ending in ending {
            undelivered += self.give_up(ending.batch, DropReason::GaveUp);
            for batch in ending.unconfirmed {
                undelivered += self.give_up(batch, DropReason::GaveUp);
            }
        }
        for batch in std::mem::take(&mut self.outbox) {
            undelivered += self.give_up(batch, DropReason::GaveUp);
        }
        for slot in 0..self.slots.len() {
            let Some(stream) = self.slots[slot].take() else {
                continue;
            };
            for batch in stream.unconfirmed {
                undelivered += self.give_up(batch, DropReason::GaveUp);
            }
            if let Some(writing) = stream.writing {
                undelivered += self.give_up(writing.batch, DropReason::GaveUp);
            }
        }
        for confirming in confirming {
            if confirming.last && self.close_error.is_none() {
                let error = self.error(
                    "the agent did not end the stream before close's deadline",
                    Some("the agent is not reading; it may be overloaded or stuck"),
                );
                self.health.record(&error);
                self.close_error = Some(error);
            }
            for batch in confirming.batches {
                undelivered += self.give_up(batch, DropReason::GaveUp);
            }
        }
        (undelivered, self.close_error.take())
    }

    fn error(&self, status: &str, hint: Option<&str>) -> Error {
        Error::Agent {
            addr: self.addr.clone(),
            status: status.to_string(),
            hint: hint.map(str::to_string),
        }
    }

    /// Not backing off, and (at least once) room in the replay buffer for
    /// the next batch.
    fn can_write(&self) -> bool {
        self.retry_at.is_none() && !self.replay_full()
    }

    /// At least once: the next batch written fresh would overfill the
    /// replay buffer. A batch written before is already counted in it, and
    /// fresh writes in flight will be once gRPC accepts them.
    fn replay_full(&self) -> bool {
        let unsettled: usize = self
            .unsettled()
            .filter(|batch| !batch.replay)
            .map(|batch| batch.bytes.len())
            .sum();
        match self.outbox.front() {
            Some(batch) if batch.replay => false,
            next => !self
                .ledger
                .replay_has_room(unsettled, next.map(|batch| batch.bytes.len())),
        }
    }

    /// The writes in flight, one at most on each stream.
    fn in_flight(&self) -> impl Iterator<Item = &Writing> {
        self.slots
            .iter()
            .flatten()
            .filter_map(|open| open.writing.as_ref())
    }

    /// Batches handed to the transport and not yet settled: the writes in
    /// flight, and those of failed streams waiting for their status.
    fn unsettled(&self) -> impl Iterator<Item = &Batch> {
        self.in_flight()
            .map(|writing| &writing.batch)
            .chain(self.ends.failed_writes())
    }

    fn writing(&self) -> bool {
        self.unsettled().next().is_some()
    }

    /// The slot the next write goes to: the first, taking turns from
    /// `next_slot`, whose stream has no write in flight or that is empty
    /// (to open one in). A batch to `isolate` needs a new stream: an empty
    /// slot, or one whose idle stream is ended first to free it.
    fn slot_for(&self, isolate: bool) -> Option<usize> {
        let count = self.slots.len();
        let now = Instant::now();
        // A failed stream's slot waits for its status; a stream due to be
        // confirmed takes no more writes (or a steady backlog would keep it
        // from ever being idle to rotate).
        let turns = (0..count)
            .map(|offset| (self.next_slot + offset) % count)
            .filter(|&slot| !self.ends.awaits_status(slot))
            .filter(|&slot| self.rotation_due(slot).is_none_or(|due| now < due));
        // A suspect batch must be the first message of its stream: only
        // then does a refusal point at it.
        let usable = |slot: &Option<OpenStream<T::Stream>>| match slot {
            None => true,
            Some(open) => !isolate && open.writing.is_none(),
        };
        let idle = |slot: &Option<OpenStream<T::Stream>>| {
            slot.as_ref().is_some_and(|open| open.writing.is_none())
        };
        turns
            .clone()
            .find(|&slot| usable(&self.slots[slot]))
            .or_else(|| {
                isolate
                    .then(|| turns.clone().find(|&slot| idle(&self.slots[slot])))
                    .flatten()
            })
    }

    /// Starts writing sealed batches, one in flight on each stream, until
    /// the outbox is empty, every stream has a write in flight, a failure
    /// starts a backoff, or (at least once) the replay buffer is full.
    fn write_outbox(&mut self, now: Instant) {
        loop {
            for slot in 0..self.slots.len() {
                self.poll_write(slot, now);
                self.rotate_if_due_slot(slot, now);
            }
            let Some(isolate) = self.outbox.front().map(|batch| batch.isolate) else {
                return;
            };
            if !self.can_write() {
                return;
            }
            let Some(slot) = self.slot_for(isolate) else {
                return;
            };
            if isolate {
                // A suspect batch goes first on a stream of its own.
                self.rotate(slot);
            }
            let reused = self.slots[slot].is_some();
            self.next_slot = (slot + 1) % self.slots.len();
            if let Err(error) = self.open_stream(slot) {
                self.health.failed(&error);
                self.back_off();
                continue;
            }
            let Some(open) = self.slots[slot].as_mut() else {
                return;
            };
            let Some(batch) = self.outbox.pop_front() else {
                return;
            };
            match open.stream.start_write(&batch.bytes) {
                Ok(()) => {
                    open.writing = Some(Writing {
                        batch,
                        deadline: deadline_after(self.write_timeout),
                        reused,
                    });
                }
                Err(failure) => self.begin_ending(slot, failure, batch, false, reused),
            }
        }
    }

    /// Settles the write in flight on a slot once the transport accepted
    /// it, failed it, or kept it past the write timeout.
    fn poll_write(&mut self, slot: usize, now: Instant) {
        if self.settle_if_done(slot) {
            return;
        }
        let Some(open) = self.slots[slot].as_mut() else {
            return;
        };
        if open.writing.as_ref().is_none_or(|w| now < w.deadline) {
            return;
        }
        let connection = open.connection;
        let Some(writing) = open.writing.take() else {
            return;
        };
        let error = self.transport.stalled(Stall::Write(self.write_timeout));
        self.health.failed(&error);
        let (unconfirmed, proven) = self.take_stream(slot);
        self.settle_failure(
            WriteError::Uncertain(error),
            writing.reused,
            Some(writing.batch),
            unconfirmed,
            proven,
        );
        self.abandon_connection(connection);
    }

    /// Settles the write in flight on a slot if the transport has accepted
    /// or failed it, whatever its deadline; whether it did.
    fn settle_if_done(&mut self, slot: usize) -> bool {
        let Some(open) = self.slots[slot].as_mut() else {
            return false;
        };
        if open.writing.is_none() {
            return false;
        }
        let mut context = Context::from_waker(&self.waker);
        let Poll::Ready(outcome) = open.stream.poll_written(&mut context) else {
            return false;
        };
        let Some(writing) = open.writing.take() else {
            return false;
        };
        match outcome {
            Ok(()) => self.written(slot, writing.batch),
            Err(failure) => self.begin_ending(slot, failure, writing.batch, true, writing.reused),
        }
        true
    }

    /// A write failed: the stream leaves its slot and waits, polled, for
    /// the status its call ended with.
    fn begin_ending(
        &mut self,
        slot: usize,
        failure: WriteError,
        batch: Batch,
        started: bool,
        reused: bool,
    ) {
        let Some(open) = self.slots[slot].take() else {
            // No stream to ask: the write goes back to be written again.
            self.put_back(batch);
            return;
        };
        self.ends.await_status(Ending {
            closing: open.stream.into_end(),
            slot,
            failure,
            batch,
            started,
            reused,
            unconfirmed: open.unconfirmed,
            proven: open.opened.elapsed() >= PROVEN_STREAM_AGE,
            deadline: deadline_after(END_STATUS_WAIT),
        });
    }

    /// Settles failed streams whose status has come (or was waited for
    /// long enough): the status, when it says more, decides for the write.
    fn poll_endings(&mut self, now: Instant) {
        for (ending, status) in self.ends.poll_statuses(now) {
            let failure = status.unwrap_or(ending.failure);
            let failure = match failure {
                // The stream had carried writes, so the connection was up:
                // the agent may have read this one before the call ended.
                // At most once must not write it again.
                WriteError::StreamEnded(error)
                    if ending.started && ending.reused && self.delivery == Delivery::AtMostOnce =>
                {
                    WriteError::Uncertain(error)
                }
                other => other,
            };
            self.health.failed(failure.error());
            self.settle_failure(
                failure,
                ending.reused,
                Some(ending.batch),
                ending.unconfirmed,
                ending.proven,
            );
        }
    }

    /// Takes a slot's stream out (which cancels its call): what it carried
    /// unconfirmed, and whether it had lived long enough to count as working.
    fn take_stream(&mut self, slot: usize) -> (Vec<Batch>, bool) {
        match self.slots[slot].take() {
            Some(open) => (open.unconfirmed, open.opened.elapsed() >= PROVEN_STREAM_AGE),
            None => (Vec::new(), false),
        }
    }

    /// A write or a confirmation on `connection` timed out: the connection
    /// is silent, so it is left, and with it every stream that rides it.
    /// Those streams' writes in flight are as uncertain as the one that
    /// timed out; what they carried unconfirmed is replayed.
    fn abandon_connection(&mut self, connection: u64) {
        if connection != self.connection {
            // Already left.
            return;
        }
        // Writes gRPC accepted before the loop polled them are not lost
        // with the connection: settled first, they count as accepted.
        for slot in 0..self.slots.len() {
            if self.slots[slot]
                .as_ref()
                .is_some_and(|open| open.connection == connection)
            {
                self.settle_if_done(slot);
            }
        }
        self.transport.abandon_connection();
        self.connection += 1;
        for slot in 0..self.slots.len() {
            let Some(open) = self.slots[slot].as_mut() else {
                continue;
            };
            if open.connection != connection {
                continue;
            }
            let writing = open.writing.take();
            let (unconfirmed, proven) = self.take_stream(slot);
            let error = self.error(
                "the stream was ended with its connection, which stopped answering",
                None,
            );
            match writing {
                Some(writing) => self.settle_failure(
                    WriteError::Uncertain(error),
                    writing.reused,
                    Some(writing.batch),
                    unconfirmed,
                    proven,
                ),
                None => self.settle_failure(
                    WriteError::StreamEnded(error),
                    true,
                    None,
                    unconfirmed,
                    proven,
                ),
            }
        }
        for done in self.ends.take_on(connection) {
            let error = self.error(
                "the stream was ended with its connection, which stopped answering",
                None,
            );
            self.confirmation_failed(done.batches, done.last, WriteError::Uncertain(error), false);
        }
    }

    fn open_stream(&mut self, slot: usize) -> Result<()> {
        if self.slots[slot].is_none() {
            let stream = self.transport.open()?;
            if self.streams_opened > 0 {
                self.counters.reconnects.fetch_add(1, Relaxed);
            }
            self.streams_opened += 1;
            self.slots[slot] = Some(OpenStream {
                stream,
                opened: Instant::now(),
                connection: self.connection,
                unconfirmed: Vec::new(),
                writing: None,
            });
        }
        Ok(())
    }

    /// gRPC accepted the batch: its bytes leave the queue's budget; at most
    /// once it is sent, at least once it waits for its stream's confirmation.
    fn written(&mut self, slot: usize, mut batch: Batch) {
        let proven = self.slots[slot]
            .as_ref()
            .is_some_and(|open| open.opened.elapsed() >= PROVEN_STREAM_AGE);
        if proven && self.delivery == Delivery::AtMostOnce {
            self.backoff.reset();
        }
        self.health.succeeded();
        if self.ledger.accepted(&mut batch) == Accepted::Sent {
            return;
        }
        let Some(stream) = self.slots[slot].as_mut() else {
            // No stream left to confirm it: written again, as a replay.
            self.counters.replayed.fetch_add(batch.len(), Relaxed);
            self.put_back(batch);
            return;
        };
        let isolate = batch.isolate;
        stream.unconfirmed.push(batch);
        if isolate {
            self.rotate(slot);
        }
    }

    /// Drops a batch for good; how many envelopes it held.
    fn give_up(&mut self, batch: Batch, reason: DropReason) -> u64 {
        self.ledger.dropped(batch, reason)
    }

    /// A stream failed at a write (it has been taken out of its slot,
    /// which cancels its call): what it carried unconfirmed goes back to be
    /// written again, and the failure says what becomes of `batch`, the
    /// write that met it.
    fn settle_failure(
        &mut self,
        failure: WriteError,
        reused: bool,
        batch: Option<Batch>,
        unconfirmed: Vec<Batch>,
        proven: bool,
    ) {
        let too_large = matches!(failure, WriteError::TooLarge(_));
        self.replay(unconfirmed, too_large);
        let Some(batch) = batch else {
            return;
        };
        match failure {
            // The first message of a new stream was refused: it is the culprit.
            WriteError::TooLarge(_) if !reused => self.split(batch),
            WriteError::StreamEnded(_) | WriteError::TooLarge(_) => {
                let mut batch = batch;
                // Refused on a stream that had carried others, it may be the
                // culprit or an earlier one was: written next as the first
                // message of a new stream, a refusal will name it, and it
                // cannot end another working stream meanwhile.
                batch.isolate |= too_large;
                self.put_back(batch);
                if proven {
                    // A stream that had worked may just have ended (the
                    // agent restarted, or refused an earlier message as too
                    // large): try a new one at once.
                    self.backoff.reset();
                } else {
                    self.back_off();
                }
            }
            WriteError::Uncertain(_) => match self.delivery {
                // The agent may have it: writing it again could duplicate it.
                Delivery::AtMostOnce => {
                    self.give_up(batch, DropReason::GaveUp);
                }
                Delivery::AtLeastOnce => {
                    self.counters.replayed.fetch_add(batch.len(), Relaxed);
                    self.back_off();
                    self.put_back(batch);
                }
            },
        }
    }

    /// Puts a batch back in the outbox, in order of its envelopes.
    fn put_back(&mut self, batch: Batch) {
        let at = self
            .outbox
            .partition_point(|waiting| waiting.last_seq < batch.last_seq);
        self.outbox.insert(at, batch);
    }

    /// Waits before the next attempt; failures of several streams in one
    /// round of attempts step the backoff once.
    fn back_off(&mut self) {
        let now = Instant::now();
        if self.retry_at.is_some_and(|at| at > now) {
            return;
        }
        self.retry_at = Some(now + self.backoff.next_delay());
    }

    /// The agent refused this batch as too large: write it in halves, or
    /// drop it if it is a single envelope.
    fn split(&mut self, batch: Batch) {
        match batch.split() {
            Ok((first, second)) => {
                self.put_back(second);
                self.put_back(first);
            }
            Err(single) => {
                self.give_up(single, DropReason::TooLarge);
            }
        }
    }

    /// Puts batches written on a failed stream back in the outbox, in order;
    /// they stay counted in the replay buffer.
    fn replay(&mut self, batches: Vec<Batch>, split: bool) {
        if batches.is_empty() {
            return;
        }
        for batch in batches {
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

    /// At least once: end a stream to confirm it once it has been used for
    /// `confirm_interval`, or at once when the replay buffer is full.
    fn rotation_due(&self, slot: usize) -> Option<Instant> {
        if self.delivery != Delivery::AtLeastOnce {
            return None;
        }
        let stream = self.slots[slot].as_ref()?;
        if stream.unconfirmed.is_empty() {
            return None;
        }
        if self.replay_full() {
            // Due already: confirming is the only way to make room.
            return Some(stream.opened);
        }
        Some(stream.opened + self.confirm_interval)
    }

    fn rotate_if_due(&mut self, now: Instant, closing_idle: bool) {
        for slot in 0..self.slots.len() {
            if closing_idle {
                if self.slots[slot]
                    .as_ref()
                    .is_some_and(|open| open.writing.is_none())
                {
                    self.end_stream(slot, true);
                }
            } else {
                self.rotate_if_due_slot(slot, now);
            }
        }
    }

    /// Rotates a slot's stream if it is due and has no write in flight (its
    /// acceptance or failure wakes the loop, which comes back here).
    fn rotate_if_due_slot(&mut self, slot: usize, now: Instant) {
        let idle = self.slots[slot]
            .as_ref()
            .is_some_and(|open| open.writing.is_none());
        if idle && self.rotation_due(slot).is_some_and(|due| now >= due) {
            self.rotate(slot);
        }
    }

    /// Half-closes a slot's stream mid-life; its end is awaited with the
    /// other confirmations, which the loop polls next.
    fn rotate(&mut self, slot: usize) {
        self.end_stream(slot, false);
    }

    /// Half-closes a slot's stream; `last` when close ends it.
    fn end_stream(&mut self, slot: usize, last: bool) {
        if let Some(open) = self.slots[slot].take() {
            self.ends.confirm(Confirming {
                closing: open.stream.half_close(),
                batches: open.unconfirmed,
                deadline: deadline_after(self.confirm_timeout),
                connection: open.connection,
                last,
            });
        }
    }

    fn poll_confirmations(&mut self, now: Instant) {
        for confirmation in self.ends.poll_confirmations(now) {
            match confirmation {
                Confirmation::Confirmed(batches) => {
                    if !batches.is_empty() {
                        self.backoff.reset();
                    }
                    for batch in batches {
                        self.ledger.confirmed(batch);
                    }
                }
                Confirmation::Failed {
                    batches,
                    last,
                    connection,
                    failure,
                } => {
                    let timed_out = failure.is_none();
                    let failure = failure.unwrap_or_else(|| {
                        WriteError::Uncertain(
                            self.transport
                                .stalled(Stall::Confirmation(self.confirm_timeout)),
                        )
                    });
                    self.confirmation_failed(batches, last, failure, true);
                    if timed_out {
                        self.abandon_connection(connection);
                    }
                }
            }
        }
    }

    /// A stream ended badly after its half-close: what it carried is
    /// replayed, unless the agent refused its only envelope as too large.
    /// `noted` says whether to count the failure as an error of its own.
    fn confirmation_failed(
        &mut self,
        batches: Vec<Batch>,
        last: bool,
        failure: WriteError,
        noted: bool,
    ) {
        let too_large = matches!(failure, WriteError::TooLarge(_));
        let lone = batches.len() == 1 && batches[0].len() == 1;
        if noted && batches.is_empty() {
            self.health.record(failure.error());
        } else if noted {
            self.health.failed(failure.error());
        }
        if too_large && lone {
            // Its stream carried nothing else: this envelope is too large.
            for batch in batches {
                self.give_up(batch, DropReason::TooLarge);
            }
        } else if batches.is_empty() {
            // At most once, the final stream: its end is close's result.
            if last {
                self.close_error = Some(failure.into_error());
            }
        } else {
            self.replay(batches, too_large);
            self.back_off();
        }
    }
}
