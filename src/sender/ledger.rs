//! The sender's books. Every envelope the sender thread takes from the
//! queue is in flight until it is sent or dropped, and its encoded bytes
//! are counted in exactly one place: the queue's byte budget ([`Room`])
//! until gRPC accepts the batch that carries it, then (at least once) the
//! replay buffer until the stream that carried it is confirmed or it is
//! given up. The [`Ledger`]'s methods are the only way an envelope or a
//! byte moves on the sender's side, so what `stats()` adds up holds here:
//!
//! - emitted = sent + dropped + queued + in flight;
//! - the bytes the sender holds in the budget are at most what the budget
//!   has reserved, which is at most `queue_max_bytes`;
//! - a unary send's bytes stay in the budget from its caller's
//!   reservation until its call ends, and `DropOldest` knows they cannot
//!   be evicted ([`Ledger::send_started`], [`Ledger::send_ended`]);
//! - the replay buffer holds at most `replay_buffer_bytes` (the stream
//!   side writes nothing fresh that would overfill it, see
//!   [`Ledger::replay_has_room`]).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use crate::batch::Batch;
use crate::policy::Delivery;
use crate::queue::{Reservation, Room};
use crate::stats::{Counters, DropReason};

pub(crate) struct Ledger {
    room: Arc<Room>,
    counters: Arc<Counters>,
    delivery: Delivery,
    /// Bytes of envelopes taken from the queue and not yet accepted by
    /// gRPC (nor dropped): reserved in the budget, and beyond the reach of
    /// `DropOldest`, which can only evict what is still queued.
    held: usize,
    /// At least once: bytes accepted by gRPC and not yet confirmed or
    /// given up.
    replay_bytes: usize,
    replay_max_bytes: usize,
    /// Bytes of unary calls under way.
    sends: usize,
}

/// The bytes of a unary call under way, reserved in the budget; only
/// [`Ledger::send_ended`] gives them back.
pub(crate) struct SendBytes(Reservation);

/// What became of a batch gRPC accepted.
#[derive(Debug, PartialEq)]
pub(crate) enum Accepted {
    /// At most once: it counts as sent.
    Sent,
    /// At least once: it waits for its stream's confirmation.
    Unconfirmed,
}

impl Ledger {
    pub(crate) fn new(
        room: Arc<Room>,
        counters: Arc<Counters>,
        delivery: Delivery,
        replay_max_bytes: usize,
    ) -> Ledger {
        Ledger {
            room,
            counters,
            delivery,
            held: 0,
            replay_bytes: 0,
            replay_max_bytes,
            sends: 0,
        }
    }

    /// An envelope of `framed` bytes (reserved when it was emitted) was
    /// taken from the queue: it is in flight from now on.
    pub(crate) fn taken(&mut self, framed: usize) {
        self.counters.in_flight.fetch_add(1, Relaxed);
        self.held += framed;
    }

    /// gRPC accepted `batch`: its bytes leave the budget (the first time it
    /// is written); at most once it is sent, at least once it moves to the
    /// replay buffer until its stream is confirmed.
    pub(crate) fn accepted(&mut self, batch: &mut Batch) -> Accepted {
        self.counters.batches.fetch_add(1, Relaxed);
        let bytes = batch.bytes.len();
        if !batch.replay {
            self.leave_budget(bytes);
        }
        match self.delivery {
            Delivery::AtMostOnce => {
                self.settle(batch.len());
                self.counters.sent.fetch_add(batch.len(), Relaxed);
                Accepted::Sent
            }
            Delivery::AtLeastOnce => {
                if !batch.replay {
                    batch.replay = true;
                    self.replay_bytes += bytes;
                }
                Accepted::Unconfirmed
            }
        }
    }

    /// The stream that carried `batch` was confirmed: it is sent.
    pub(crate) fn confirmed(&mut self, batch: Batch) {
        self.replay_bytes -= batch.bytes.len();
        self.settle(batch.len());
        self.counters.sent.fetch_add(batch.len(), Relaxed);
    }

    /// `batch` is dropped for good; how many envelopes it held.
    pub(crate) fn dropped(&mut self, batch: Batch, reason: DropReason) -> u64 {
        if batch.replay {
            self.replay_bytes -= batch.bytes.len();
        } else {
            self.leave_budget(batch.bytes.len());
        }
        let count = batch.len();
        self.settle(count);
        self.counters.drop_envelopes(reason, count);
        self.counters.count_lost(count);
        count
    }

    /// A unary call started with the bytes its caller reserved.
    pub(crate) fn send_started(&mut self, reservation: Reservation) -> SendBytes {
        self.sends += reservation.bytes();
        SendBytes(reservation)
    }

    /// A unary call ended (or never started): its bytes go back to the
    /// budget, before its caller hears, so what the caller reads next is
    /// settled.
    pub(crate) fn send_ended(&mut self, bytes: SendBytes) {
        self.sends -= bytes.0.bytes();
        drop(bytes);
    }

    /// At least once: whether `fresh` more bytes written now would still
    /// fit the replay buffer, counting `unsettled` fresh bytes already in
    /// writes that gRPC has not accepted yet. A buffer with nothing in it
    /// takes any batch (a batch is never larger than the buffer).
    pub(crate) fn replay_has_room(&self, unsettled: usize, fresh: Option<usize>) -> bool {
        if self.delivery != Delivery::AtLeastOnce {
            return true;
        }
        let committed = self.replay_bytes + unsettled;
        if committed == 0 {
            return true;
        }
        match fresh {
            Some(bytes) => committed + bytes <= self.replay_max_bytes,
            None => committed < self.replay_max_bytes,
        }
    }

    /// Tells the queue how many reserved bytes the sender holds, for
    /// `DropOldest` to know what evicting can free.
    pub(crate) fn publish(&self) {
        self.room.set_held_by_sender(self.held);
    }

    /// Bytes held in the budget by the stream side, and in the replay buffer.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> (usize, usize) {
        (self.held, self.replay_bytes)
    }

    /// Bytes held in the budget by unary calls under way.
    #[cfg(test)]
    pub(crate) fn send_bytes(&self) -> usize {
        self.sends
    }

    fn leave_budget(&mut self, bytes: usize) {
        self.held -= bytes;
        self.room.release(bytes);
    }

    fn settle(&self, count: u64) {
        self.counters.in_flight.fetch_sub(count, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BatchBuilder, Stamp};
    use crate::policy::Overflow;
    use crate::queue::{Queue, QueueReceiver, QueueSettings};

    const MAX_BYTES: usize = 1 << 16;
    const REPLAY_BYTES: usize = 1 << 12;

    /// A ledger behind a real queue: envelopes are emitted and taken as the
    /// client does, so the invariants are read from the queue's own counts.
    struct Books {
        ledger: Ledger,
        queue: Queue,
        receiver: QueueReceiver,
    }

    impl Books {
        fn new(delivery: Delivery) -> Books {
            Books::with(delivery, Overflow::DropNewest)
        }

        fn with(delivery: Delivery, overflow: Overflow) -> Books {
            let settings = QueueSettings {
                capacity: 64,
                max_bytes: MAX_BYTES,
                nudge_at: 64,
                batch_max_bytes: MAX_BYTES,
                overflow,
            };
            let counters = Arc::new(Counters::default());
            let (wake, _) = crossbeam_channel::unbounded();
            let (queue, receiver) = Queue::new(settings, Arc::default(), counters.clone(), wake);
            Books {
                ledger: Ledger::new(receiver.room.clone(), counters, delivery, REPLAY_BYTES),
                queue,
                receiver,
            }
        }

        /// Emits `count` logs, then takes them into one batch as the
        /// batcher does, checking the books after every move.
        fn batch(&mut self, count: i64) -> Batch {
            for n in 0..count {
                self.queue
                    .emit(crate::Envelope::log(format!("{n}")).build());
                self.check();
            }
            let mut builder = BatchBuilder::default();
            for queued in self.receiver.data.try_iter().take(count as usize) {
                self.ledger.taken(queued.framed());
                builder.push(&queued.envelope, &Stamp::default(), 0);
                self.check();
            }
            builder.seal(1_000)
        }

        /// The invariants, as `stats()` reads them, between any two moves.
        fn check(&self) {
            let stats = self.queue.stats();
            assert_eq!(
                stats.emitted,
                stats.sent + stats.dropped.total() + stats.queued + stats.in_flight,
                "{stats:?}"
            );
            let (held, replay) = self.ledger.bytes();
            let reserved = self.receiver.room.bytes();
            assert!(
                held + self.ledger.send_bytes() <= reserved,
                "{held} of {reserved}"
            );
            assert!(reserved <= MAX_BYTES);
            assert!(replay <= REPLAY_BYTES);
        }

        fn stats(&self) -> crate::Stats {
            self.queue.stats()
        }
    }

    #[test]
    fn at_most_once_a_batch_is_sent_once_accepted_and_its_bytes_go_back() {
        let mut books = Books::new(Delivery::AtMostOnce);
        let mut batch = books.batch(3);
        assert_eq!(books.ledger.bytes().0, batch.bytes.len());
        assert_eq!(books.stats().queued_bytes, batch.bytes.len() as u64);
        assert_eq!(books.ledger.accepted(&mut batch), Accepted::Sent);
        books.check();
        let stats = books.stats();
        assert_eq!((stats.sent, stats.in_flight, stats.batches), (3, 0, 1));
        assert_eq!((stats.queued_bytes, books.ledger.bytes()), (0, (0, 0)));
    }

    #[test]
    fn at_least_once_bytes_move_to_the_replay_buffer_until_confirmed() {
        let mut books = Books::new(Delivery::AtLeastOnce);
        let mut batch = books.batch(3);
        let len = batch.bytes.len();
        assert_eq!(books.ledger.accepted(&mut batch), Accepted::Unconfirmed);
        books.check();
        assert_eq!(
            (books.stats().queued_bytes, books.ledger.bytes()),
            (0, (0, len))
        );
        assert_eq!(books.stats().sent, 0);
        // Written again after its stream failed: counted once.
        books.ledger.accepted(&mut batch);
        assert_eq!(books.ledger.bytes(), (0, len));
        books.ledger.confirmed(batch);
        books.check();
        assert_eq!(books.ledger.bytes(), (0, 0));
        assert_eq!(books.stats().sent, 3);
    }

    #[test]
    fn a_dropped_batch_gives_its_bytes_back_wherever_they_are() {
        let mut books = Books::new(Delivery::AtLeastOnce);
        let fresh = books.batch(2);
        assert_eq!(books.ledger.dropped(fresh, DropReason::GaveUp), 2);
        books.check();
        let mut written = books.batch(2);
        books.ledger.accepted(&mut written);
        let (first, second) = written.split().unwrap();
        books.ledger.dropped(first, DropReason::TooLarge);
        books.check();
        books.ledger.confirmed(second);
        books.check();
        let stats = books.stats();
        assert_eq!((stats.sent, stats.dropped.total()), (1, 3));
        assert_eq!((stats.queued_bytes, books.ledger.bytes()), (0, (0, 0)));
    }

    #[test]
    fn the_replay_buffer_takes_a_batch_only_while_it_fits() {
        let mut books = Books::new(Delivery::AtLeastOnce);
        assert!(books.ledger.replay_has_room(0, Some(REPLAY_BYTES)));
        let mut batch = books.batch(10);
        let len = batch.bytes.len();
        books.ledger.accepted(&mut batch);
        assert!(books.ledger.replay_has_room(0, Some(REPLAY_BYTES - len)));
        assert!(
            !books
                .ledger
                .replay_has_room(0, Some(REPLAY_BYTES - len + 1))
        );
        assert!(!books.ledger.replay_has_room(REPLAY_BYTES - len, None));
        let at_most_once = Books::new(Delivery::AtMostOnce);
        assert!(at_most_once.ledger.replay_has_room(usize::MAX / 2, Some(1)));
    }

    #[test]
    fn a_unary_send_holds_its_bytes_until_it_ends_and_drop_oldest_knows() {
        let mut books = Books::with(Delivery::AtMostOnce, Overflow::DropOldest);
        let send_bytes = MAX_BYTES - 4_096;
        let reservation = books
            .queue
            .reserve_until(send_bytes, std::time::Instant::now())
            .unwrap();
        let held = books.ledger.send_started(reservation);
        books.check();
        for n in 0..10 {
            books
                .queue
                .emit(crate::Envelope::log(format!("{n}")).build());
        }
        books.check();
        // Evicting the ten queued logs cannot make the room the send
        // holds: the log that does not fit drops itself alone.
        books
            .queue
            .emit(crate::Envelope::log(vec![b'x'; 8_192]).build());
        books.check();
        let stats = books.stats();
        assert_eq!(
            (stats.dropped.queue_full, stats.queued),
            (1, 10),
            "{stats:?}"
        );
        books.ledger.send_ended(held);
        books.check();
        assert_eq!(books.ledger.send_bytes(), 0);
        books
            .queue
            .emit(crate::Envelope::log(vec![b'x'; 8_192]).build());
        assert_eq!(books.stats().queued, 11);
    }
}
