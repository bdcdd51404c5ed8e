//! The stream side: sealed batches are written on `BatchSender` streams
//! (up to `streams` of them, one write in flight on each), and what
//! follows a write is settled: counted sent (at most once) or kept until
//! its stream is confirmed (at least once).
//!
//! [`Streams`] drives parts that each own their state: the [`Outbox`]
//! (outbox.rs) of batches waiting, the [`Slots`] (slots.rs) of open
//! streams, [`Ends`] (ends.rs) for streams waiting for their end,
//! [`Retry`] (retry.rs) for the backoff, the [`Ledger`] (ledger.rs) where
//! envelopes and bytes move, and [`Health`] (health.rs), what the operator
//! is told. Its own work is split by job: this file writes batches and
//! settles the writes; failures.rs settles a failed write (split, replay
//! or give up); rotation.rs ends streams to confirm them; leaving.rs
//! leaves a connection that stopped answering, and gives up at close.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::batch::Batch;
use crate::error::Error;
use crate::policy::Delivery;
use crate::queue::Room;
use crate::stats::Counters;

use super::batcher::Intake;
use super::ends::Ends;
use super::health::Health;
use super::ledger::{Accepted, Ledger};
use super::outbox::Outbox;
use super::retry::Retry;
use super::slots::{Slots, Writing};
use super::transport::{BatchStream, Stall, Transport, WriteError};
use super::{LONGEST_WAIT, Settings, deadline_after};

pub(super) type ClosingOf<T> = <<T as Transport>::Stream as BatchStream>::Closing;

pub(crate) struct Streams<T: Transport> {
    pub(super) transport: T,
    pub(super) addr: String,
    pub(super) delivery: Delivery,
    pub(super) write_timeout: Duration,
    pub(super) confirm_interval: Duration,
    /// At least once: what a stream carries unconfirmed before it is
    /// ended to be confirmed, half the replay buffer (see rotation.rs).
    pub(super) confirm_at_bytes: usize,
    pub(super) confirm_timeout: Duration,
    pub(super) ledger: Ledger,
    pub(super) health: Health,
    pub(super) counters: Arc<Counters>,
    pub(super) waker: Waker,
    pub(super) outbox: Outbox,
    pub(super) slots: Slots<T::Stream>,
    pub(super) ends: Ends<ClosingOf<T>>,
    pub(super) retry: Retry,
    /// At most once: how the last stream ended, when it ended badly during close.
    pub(super) close_error: Option<Error>,
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
            confirm_at_bytes: settings.replay_buffer_bytes.div_ceil(2),
            confirm_timeout: settings.confirm_timeout,
            ledger: Ledger::new(
                room,
                counters.clone(),
                settings.delivery,
                settings.replay_buffer_bytes,
            ),
            health: Health::new(counters.clone()),
            slots: Slots::new(settings.streams, counters.clone()),
            counters,
            waker: waker.clone(),
            outbox: Outbox::default(),
            ends: Ends::new(waker),
            retry: Retry::new(settings.backoff.clone()),
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
        self.outbox.is_empty() && self.slots.all_empty() && self.ends.is_idle()
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
        let write = self.slots.in_flight().map(|writing| writing.deadline).min();
        // A stream with a write in flight rotates once the write settles,
        // which wakes the loop: its rotation is no deadline to wait for.
        let rotation = (0..self.slots.len())
            .filter(|&slot| self.slots.is_idle(slot))
            .filter_map(|slot| self.rotation_due(slot))
            .min();
        [self.retry.due(), rotation, ends, write]
            .into_iter()
            .flatten()
            .min()
    }

    /// One pass: ends a backoff that ran out, starts and settles writes,
    /// rotates the stream when due (or, `closing` with nothing left to
    /// write, to end it), and settles confirmations.
    pub(crate) fn step(&mut self, now: Instant, closing: bool) {
        self.retry.expire(now);
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

    pub(super) fn error(&self, status: &str, hint: Option<&str>) -> Error {
        Error::Agent {
            addr: self.addr.clone(),
            status: status.to_string(),
            hint: hint.map(str::to_string),
        }
    }

    /// Not backing off, and (at least once) room in the replay buffer for
    /// the next batch.
    fn can_write(&self) -> bool {
        !self.retry.is_waiting() && !self.replay_full()
    }

    /// At least once: the next batch written fresh would overfill the
    /// replay buffer. A batch written before is already counted in it, and
    /// fresh writes in flight will be once gRPC accepts them.
    pub(super) fn replay_full(&self) -> bool {
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

    /// Batches handed to the transport and not yet settled: the writes in
    /// flight, and those of failed streams waiting for their status.
    fn unsettled(&self) -> impl Iterator<Item = &Batch> {
        self.slots
            .in_flight()
            .map(|writing| &writing.batch)
            .chain(self.ends.failed_writes())
    }

    fn writing(&self) -> bool {
        self.unsettled().next().is_some()
    }

    /// The slot the next write goes to. A failed stream's slot waits for
    /// its status; a stream due to be confirmed takes no more writes (or a
    /// steady backlog would keep it from ever being idle to rotate).
    fn slot_for(&self, isolate: bool) -> Option<usize> {
        let now = Instant::now();
        self.slots.pick(isolate, |slot| {
            !self.ends.awaits_status(slot) && self.rotation_due(slot).is_none_or(|due| now < due)
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
            let reused = self.slots.get(slot).is_some();
            self.slots.took_turn(slot);
            if let Err(error) = self.slots.open(slot, &mut self.transport) {
                self.health.failed(&error);
                self.retry.back_off();
                continue;
            }
            let Some(open) = self.slots.get_mut(slot) else {
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
        if self.settle_if_done(slot, true) {
            return;
        }
        let Some(open) = self.slots.get(slot) else {
            return;
        };
        if open.writing.as_ref().is_none_or(|w| now < w.deadline) {
            return;
        }
        let connection = open.connection;
        let error = self
            .transport
            .stalled(Stall::Write(self.write_timeout), connection);
        self.health.failed(&error);
        let taken = self.slots.take_carried(slot);
        let Some(writing) = taken.writing else {
            return;
        };
        self.settle_failure(
            WriteError::Uncertain(error),
            writing.reused,
            Some(writing.batch),
            taken.unconfirmed,
            taken.proven,
        );
        self.abandon_connection(connection);
    }

    /// Settles the write in flight on a slot if the transport has accepted
    /// or failed it, whatever its deadline; whether it did. A write settled
    /// while its connection is being left (`says_healthy` false) is counted
    /// but says nothing of the agent's health.
    pub(super) fn settle_if_done(&mut self, slot: usize, says_healthy: bool) -> bool {
        let Some(open) = self.slots.get_mut(slot) else {
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
            Ok(()) => self.written(slot, writing.batch, says_healthy),
            Err(failure) => self.begin_ending(slot, failure, writing.batch, true, writing.reused),
        }
        true
    }

    /// gRPC accepted the batch: its bytes leave the queue's budget; at most
    /// once it is sent, at least once it waits for its stream's confirmation.
    /// `says_healthy`: the agent is reading (the backoff starts over).
    fn written(&mut self, slot: usize, mut batch: Batch, says_healthy: bool) {
        let proven = self.slots.get(slot).is_some_and(|open| open.proven());
        if says_healthy {
            if proven && self.delivery == Delivery::AtMostOnce {
                self.retry.reset();
            }
            self.health.succeeded();
        }
        if self.ledger.accepted(&mut batch) == Accepted::Sent {
            return;
        }
        let Some(stream) = self.slots.get_mut(slot) else {
            // No stream left to confirm it: written again, as a replay.
            self.outbox.replay(vec![batch], false, &self.counters);
            return;
        };
        let isolate = batch.isolate;
        stream.carried(batch);
        if isolate {
            self.rotate(slot);
        }
    }
}
