//! The queue between `emit` and the sender thread, and what `emit` does
//! when it is full. This file owns the emitting side; the sender thread
//! holds the other end ([`QueueReceiver`]). room.rs is the byte budget and
//! where emitters wait; overflow.rs is what `DropOldest`, `Block` and
//! `BlockFor` do when the queue is full.
//!
//! Two bounds hold at once: `queue_capacity` envelopes waiting in the
//! channel, and `queue_max_bytes` encoded bytes anywhere from `emit` until
//! gRPC accepts the batch that carries them (the channel, the batch being
//! built, sealed batches, the write in flight). An emitter reserves an
//! envelope's bytes in the [`Room`] before it queues it; the sender thread
//! gives them back once gRPC has accepted their batch, or they were dropped.
//! When either bound is reached the overflow policy decides, and every
//! envelope it drops is counted.
//!
//! `emit` never runs code that is not the client's: drops are counted here
//! and the sender thread logs the first one. On the client's own threads
//! (a logger that feeds records back into the client runs there too) `emit`
//! never waits, whatever the policy.

mod overflow;
mod room;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, fence};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};

use crate::batch::Stamp;
use crate::envelope::{Encoded, Envelope};
use crate::policy::Overflow;
use crate::series::Carried;
use crate::spares::Spares;
use crate::stats::{Counters, DropReason};
use crate::wire::framed_len;

pub(crate) use room::{Reservation, Room};

/// How often (in emits counted on one shard of the emit counter) `emit` checks whether a batch's worth is
/// waiting for the sender thread: often enough that a full batch waits for
/// a few dozen more emits at most, rarely enough to cost nothing.
const NUDGE_SAMPLE: u64 = 32;

/// An envelope on its way to the sender thread.
pub(crate) struct Queued {
    /// Encoded by the thread that built it.
    pub envelope: Encoded,
    /// The bytes the client's stamp (tags, default source) adds to it.
    pub added: usize,
    /// A counter delta (a pulse's or a self-metric's), which comes back to
    /// its series if this is dropped before the sender thread takes it
    /// ([`Carried::taken`]). `None`, and free, for every other envelope.
    pub carried: Option<Carried>,
}

impl Queued {
    /// What it takes in a batch, and in the byte budget.
    pub(crate) fn framed(&self) -> usize {
        framed_len(self.envelope.bytes.len() + self.added)
    }
}

/// The sender thread's end of the queue.
pub(crate) struct QueueReceiver {
    pub data: Receiver<Queued>,
    /// Emitters' signal that a batch's worth is waiting.
    pub nudges: Receiver<()>,
    pub room: Arc<Room>,
    /// Where the sender thread hands buffers back to emitting threads.
    pub spares: Arc<Spares>,
}

/// The settings of the queue.
pub(crate) struct QueueSettings {
    pub capacity: usize,
    pub max_bytes: usize,
    /// How many queued envelopes make a batch's worth.
    pub nudge_at: usize,
    pub batch_max_bytes: usize,
    pub overflow: Overflow,
}

/// The emitting side of the queue, shared by every handle.
pub(crate) struct Queue {
    data: Sender<Queued>,
    /// Kept to evict the oldest (`DropOldest`), and so envelopes that slip
    /// in after the sender thread stopped are counted instead of vanishing
    /// with the channel.
    leftovers: Receiver<Queued>,
    nudge: Sender<()>,
    /// Wakes the sender thread at once, to log the first drop.
    wake: Sender<()>,
    room: Arc<Room>,
    spares: Arc<Spares>,
    stamp: Arc<Stamp>,
    settings: QueueSettings,
    counters: Arc<Counters>,
    /// Set when close begins: later emits are dropped.
    closed: AtomicBool,
    /// Set when the sender thread has stopped: a racing emit counts its own envelope.
    stopped: AtomicBool,
}

/// What became of an envelope handed to the queue: the bridges count what
/// they left off its tags only when it went in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// It is in the queue, the sender thread's to deliver.
    Queued,
    /// It was dropped and counted in `stats().dropped`.
    Dropped,
}

/// Why an envelope did not go into the queue.
enum Refused {
    Full(Queued),
    Closed,
}

impl Queue {
    /// Both ends of a new queue; `wake` wakes the sender thread.
    pub(crate) fn new(
        settings: QueueSettings,
        stamp: Arc<Stamp>,
        counters: Arc<Counters>,
        wake: Sender<()>,
    ) -> (Queue, QueueReceiver) {
        let (data, receiver) = bounded(settings.capacity);
        let (nudge, nudges) = bounded(1);
        let room = Arc::new(Room::new(settings.max_bytes));
        let spares = Arc::new(Spares::default());
        let queue = Queue {
            data,
            leftovers: receiver.clone(),
            nudge,
            wake,
            room: room.clone(),
            spares: spares.clone(),
            stamp,
            settings,
            counters,
            closed: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        };
        let receiver = QueueReceiver {
            data: receiver,
            nudges,
            room,
            spares,
        };
        (queue, receiver)
    }

    /// Queues an envelope, or drops and counts it, as the client's overflow
    /// policy says.
    pub(crate) fn emit(&self, envelope: Envelope) -> Pushed {
        self.push(envelope, self.settings.overflow)
    }

    /// As [`emit`](Self::emit), but `Block` and `BlockFor` drop instead of waiting.
    #[cfg(feature = "tracing")]
    pub(crate) fn emit_never_waiting(&self, envelope: Envelope) -> Pushed {
        let overflow = match self.settings.overflow {
            Overflow::Block | Overflow::BlockFor(_) => Overflow::DropNewest,
            other => other,
        };
        self.push(envelope, overflow)
    }

    /// Queues an envelope, or drops and counts it, as `overflow` says.
    pub(crate) fn push(&self, envelope: Envelope, overflow: Overflow) -> Pushed {
        self.push_carried(envelope, overflow, None)
    }

    /// As [`push`](Self::push), for a counter delta that must survive the
    /// queue: wherever the envelope is dropped before the sender thread
    /// takes it (refused here, evicted by `DropOldest`, left behind at
    /// close), dropping `carried` with it gives the delta back to its
    /// series. Counters are evicted like any envelope rather than spared:
    /// a channel can neither skip its oldest nor put it back, so sparing
    /// them would mean re-queueing behind newer envelopes (and a way to
    /// fail again when another emitter takes the slot). A delta given back
    /// simply goes out with the next pulse.
    pub(crate) fn push_carried(
        &self,
        envelope: Envelope,
        overflow: Overflow,
        carried: Option<Carried>,
    ) -> Pushed {
        let counted_before = self.counters.emitted.add(1);
        if self.closed.load(Ordering::Acquire) {
            return self.refuse(DropReason::Closed);
        }
        if envelope.is_accidental_reset() {
            return self.refuse(DropReason::ZeroCounter);
        }
        let envelope = envelope.into_encoded();
        let queued = Queued {
            added: self.stamp.added_len(&envelope),
            envelope,
            carried,
        };
        if queued.envelope.unencodable || queued.framed() > self.settings.batch_max_bytes {
            // It can never fit a batch: a counter series must not offer it
            // again at every report.
            if let Some(carried) = queued.carried {
                carried.never_fits();
            }
            return self.refuse(DropReason::TooLarge);
        }
        let queued = match self.try_push(queued) {
            Ok(()) => {
                if counted_before % NUDGE_SAMPLE == 0 {
                    self.nudge_if_batch_waiting();
                }
                self.spares.refill_stash();
                return self.queued();
            }
            Err(Refused::Full(queued)) => {
                let _ = self.nudge.try_send(());
                queued
            }
            Err(Refused::Closed) => return self.refuse(DropReason::Closed),
        };
        match overflow {
            Overflow::DropNewest => self.refuse(DropReason::QueueFull),
            Overflow::DropOldest => self.evict_oldest_for(queued),
            // Waiting here could wait on this very thread.
            Overflow::Block | Overflow::BlockFor(_) if crate::on_own_thread() => {
                self.refuse(DropReason::QueueFull)
            }
            Overflow::Block => self.block_for(queued, None),
            Overflow::BlockFor(wait) => self.block_for(queued, Some(wait)),
        }
    }

    /// Reserves its bytes, then a place in the channel.
    fn try_push(&self, queued: Queued) -> Result<(), Refused> {
        let bytes = queued.framed();
        if !self.room.reserve(bytes) {
            return Err(Refused::Full(queued));
        }
        match self.data.try_send(queued) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(queued)) => {
                self.room.release(bytes);
                Err(Refused::Full(queued))
            }
            Err(TrySendError::Disconnected(_)) => {
                self.room.release(bytes);
                Err(Refused::Closed)
            }
        }
    }

    /// Tells the sender thread, which does not wake for every envelope
    /// while it fills a batch, that a batch's worth is waiting.
    fn nudge_if_batch_waiting(&self) {
        if self.data.len() >= self.settings.nudge_at {
            let _ = self.nudge.try_send(());
        }
    }

    /// Counts dropped envelopes; the first drop ever wakes the sender
    /// thread to log it, so that no logger runs on the emitting thread.
    pub(crate) fn drop_envelopes(&self, reason: DropReason, count: u64) {
        if self.counters.drop_envelopes(reason, count) {
            let _ = self.wake.try_send(());
        }
    }

    /// Counts one envelope dropped for `reason`, the one being pushed.
    fn refuse(&self, reason: DropReason) -> Pushed {
        self.drop_envelopes(reason, 1);
        Pushed::Dropped
    }

    /// After an envelope went into the queue: `Dropped` if the sender
    /// thread had stopped, so that it was counted as left behind.
    fn queued(&self) -> Pushed {
        // Pairs with the fence in `stopped`: either the closer's last drain
        // sees this envelope, or this sees `stopped`.
        fence(Ordering::SeqCst);
        if self.stopped.load(Ordering::Relaxed) {
            // An emit racing a close that has answered: no flush or close
            // is left to report it, so it counts as emitted after close.
            self.drain_leftovers(false);
            return Pushed::Dropped;
        }
        Pushed::Queued
    }

    /// Refuses later emits and releases waiting emitters.
    pub(crate) fn close(&self) {
        // SeqCst, paired with `wait_for_room`: a waiting emitter either sees
        // this or is counted in `waiting` and woken next. Under the lock a
        // blocking emitter registers with (`block_for`).
        {
            let _locked = self.room.lock.lock();
            self.closed.store(true, Ordering::SeqCst);
        }
        self.room.wake_all();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The sender thread has stopped: counts what is left as dropped, and
    /// lost (the close under way reports it), and has every later emit
    /// count its own.
    pub(crate) fn stopped(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        self.drain_leftovers(true);
    }

    /// Drops what is left in the channel; `lost` when a close is still to
    /// answer, which reports it.
    fn drain_leftovers(&self, lost: bool) {
        let mut count = 0;
        for queued in self.leftovers.try_iter() {
            self.room.release(queued.framed());
            count += 1;
        }
        if count > 0 {
            self.drop_envelopes(DropReason::Closed, count);
            if lost {
                self.counters.count_lost(count);
            }
        }
    }

    /// Envelopes waiting in the channel.
    pub(crate) fn len(&self) -> usize {
        self.data.len()
    }

    /// Encoded bytes held between `emit` and gRPC.
    pub(crate) fn bytes(&self) -> usize {
        self.room.bytes()
    }

    /// The client's counts now.
    pub(crate) fn stats(&self) -> crate::Stats {
        let mut stats = self.counters.snapshot(self.len(), self.bytes());
        stats.blocked_emitters = self.room.blocked_emitters.load(Ordering::Relaxed) as u64;
        stats
    }

    /// Envelopes emitted and neither sent nor dropped yet.
    pub(crate) fn undelivered(&self) -> u64 {
        self.len() as u64 + self.counters.in_flight.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::series::CounterSeries;

    fn queue(capacity: usize) -> (Queue, QueueReceiver) {
        let settings = QueueSettings {
            capacity,
            max_bytes: 1 << 20,
            nudge_at: capacity,
            batch_max_bytes: 1 << 20,
            overflow: Overflow::DropOldest,
        };
        let (wake, _) = crossbeam_channel::unbounded();
        Queue::new(settings, Arc::default(), Arc::default(), wake)
    }

    /// What went back to the series, taken so it does not come back again.
    fn returned(series: &Arc<CounterSeries>) -> u64 {
        series.take().map_or(0, |(envelope, carried)| {
            carried.taken();
            envelope.as_proto().counter().delta
        })
    }

    #[test]
    fn a_counter_delta_evicted_refused_or_left_behind_comes_back_and_one_taken_does_not() {
        let series = Arc::new(CounterSeries::new("hits".into(), Vec::new()));
        let (queue, receiver) = queue(2);
        let push = |delta, overflow| {
            series.add(delta);
            let (envelope, carried) = series.take().unwrap();
            queue.push_carried(envelope, overflow, Some(carried));
        };
        push(3, Overflow::DropNewest);
        queue.emit(Envelope::log("a").build());
        assert_eq!(returned(&series), 0, "queued");
        queue.emit(Envelope::log("b").build());
        assert_eq!(returned(&series), 3, "evicted by the newer log");
        push(2, Overflow::DropNewest);
        assert_eq!(returned(&series), 2, "refused");
        for _ in 0..2 {
            receiver.data.try_recv().unwrap();
        }
        push(4, Overflow::DropNewest);
        let taken = receiver.data.try_recv().unwrap();
        taken.carried.unwrap().taken();
        assert_eq!(returned(&series), 0, "the sender thread's to deliver");
        push(5, Overflow::DropNewest);
        queue.stopped();
        assert_eq!(returned(&series), 5, "left in the queue");
    }
}
