//! What is taken from the queue and batched. The [`Batcher`] owns the
//! queue's receiving end, the batch being built and the numbering of
//! envelopes (`taken`, which flushes wait on); it seals a batch when it is
//! full in envelopes or bytes, when its `flush_interval` is up, or when a
//! flush or close asks, and appends sealed batches to the outbox it is given.
//!
//! It takes nothing the loop has not asked for: the loop takes from the
//! queue only while the stream side can use more, so that while the agent
//! is away or slow the envelopes stay in the queue, under its bounds. Their
//! bytes stay reserved in the byte budget until the stream side releases them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::batch::{BatchBuilder, Stamp};
use crate::queue::Queued;
use crate::spares::{Returns, Spares};

use super::LONGEST_WAIT;
use super::ledger::Ledger;
use super::outbox::Outbox;

/// Where what the batcher takes goes: sealed batches to the outbox, and
/// every envelope taken into the books, in flight.
pub(crate) struct Intake<'a> {
    pub outbox: &'a mut Outbox,
    pub ledger: &'a mut Ledger,
}

pub(crate) struct Batcher {
    data: Receiver<Queued>,
    stamp: Arc<Stamp>,
    batch_max_envelopes: usize,
    batch_max_bytes: usize,
    flush_interval: Duration,
    building: BatchBuilder,
    /// Envelopes' buffers, once copied into a batch, go back to the
    /// emitting threads.
    returns: Returns,
    /// When the envelopes left in the queue by a batch sealed on time were
    /// already due: the batch they open is due from then, not from when it
    /// opens.
    overdue: Option<Instant>,
    /// Envelopes taken from the queue so far; batches are numbered by it.
    taken: u64,
}

impl Batcher {
    pub(crate) fn new(
        data: Receiver<Queued>,
        spares: Arc<Spares>,
        stamp: Arc<Stamp>,
        settings: &super::Settings,
    ) -> Batcher {
        Batcher {
            data,
            stamp,
            batch_max_envelopes: settings.batch_max_envelopes,
            batch_max_bytes: settings.batch_max_bytes,
            flush_interval: settings.flush_interval.min(LONGEST_WAIT),
            building: BatchBuilder::new(settings.batch_max_bytes),
            returns: Returns::new(spares),
            overdue: None,
            taken: 0,
        }
    }

    /// The queue, for the loop to wait on.
    pub(crate) fn queue(&self) -> &Receiver<Queued> {
        &self.data
    }

    /// Envelopes waiting in the queue.
    pub(crate) fn queued(&self) -> usize {
        self.data.len()
    }

    pub(crate) fn capacity(&self) -> usize {
        self.data.capacity().unwrap_or(usize::MAX)
    }

    /// Envelopes taken from the queue so far.
    pub(crate) fn taken(&self) -> u64 {
        self.taken
    }

    /// True when no batch is being built.
    pub(crate) fn is_empty(&self) -> bool {
        self.building.is_empty()
    }

    /// How many envelopes were taken before the first one still being
    /// batched, if a batch is being built.
    pub(crate) fn building_from(&self) -> Option<u64> {
        (!self.building.is_empty()).then(|| self.taken - self.building.len() as u64)
    }

    /// When the batch being built is due, if one is.
    pub(crate) fn due(&self) -> Option<Instant> {
        self.building
            .started
            .map(|started| started + self.flush_interval)
    }

    /// Adds one envelope to the batch being built, sealing it first if the
    /// envelope would not fit and afterwards if it is full.
    pub(crate) fn take(&mut self, queued: Queued, intake: &mut Intake<'_>) {
        self.taken += 1;
        let framed = queued.framed();
        // In flight from now until it is sent or dropped.
        intake.ledger.taken(framed);
        if !self.building.is_empty() && self.building.encoded_len() + framed > self.batch_max_bytes
        {
            // The new envelope is counted in `taken` but not in this batch.
            intake
                .outbox
                .push_sealed(self.building.seal(self.taken - 1));
        }
        self.building
            .push(&queued.envelope, &self.stamp, queued.added);
        if let Some(carried) = queued.carried {
            carried.taken();
        }
        self.returns.give(queued.envelope.bytes);
        if let Some(due) = self.overdue.take() {
            // Its first envelope has just gone in.
            self.building.started = Some(due);
        }
        if self.building.len() >= self.batch_max_envelopes
            || self.building.encoded_len() >= self.batch_max_bytes
        {
            self.seal(intake);
        }
    }

    /// Takes at most `most` of what is waiting in the queue, up to a sealed
    /// batch; how many it took.
    pub(crate) fn take_waiting(&mut self, most: usize, intake: &mut Intake<'_>) -> usize {
        let mut took = 0;
        while took < most && intake.outbox.is_empty() {
            match self.data.try_recv() {
                Ok(queued) => self.take(queued, intake),
                Err(_) => break,
            }
            took += 1;
        }
        took
    }

    /// Takes envelopes up to number `through` (a flush's), up to a sealed
    /// batch, and seals the batch being built once `through` is in it.
    /// Returns `through`, or less when the queue ran dry first: the
    /// envelopes it counted were evicted by `DropOldest`.
    pub(crate) fn take_through(&mut self, through: u64, intake: &mut Intake<'_>) -> u64 {
        let mut through = through;
        while self.taken < through && intake.outbox.is_empty() {
            match self.data.try_recv() {
                Ok(queued) => self.take(queued, intake),
                Err(_) => through = self.taken,
            }
        }
        if self.taken >= through && self.building_from().is_some_and(|from| from < through) {
            self.seal(intake);
        }
        through
    }

    /// Takes everything left in the queue and seals it, for close.
    pub(crate) fn take_all(&mut self, intake: &mut Intake<'_>) {
        while let Ok(queued) = self.data.try_recv() {
            self.take(queued, intake);
        }
        self.seal(intake);
    }

    pub(crate) fn seal(&mut self, intake: &mut Intake<'_>) {
        if !self.building.is_empty() {
            intake.outbox.push_sealed(self.building.seal(self.taken));
        }
    }

    /// Seals a partial batch whose interval has passed, with what queued
    /// behind it when `accepting`.
    pub(crate) fn on_time(&mut self, now: Instant, accepting: bool, intake: &mut Intake<'_>) {
        let Some(started) = self.building.started else {
            return;
        };
        if now < started + self.flush_interval {
            return;
        }
        // With a batch open the loop does not listen to the queue, so what
        // waits there has waited since before the batch was due: it goes
        // with this batch, up to the batch's caps.
        if accepting {
            let waiting = self.data.len();
            if self.take_waiting(waiting, intake) < waiting {
                // Full: the rest opens a batch that is due already.
                self.overdue = Some(started);
            }
        }
        self.seal(intake);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::envelope as pb;
    use crossbeam_channel::{Sender, bounded};
    use protobuf::Message;

    const HOUR: Duration = Duration::from_secs(3600);

    fn batcher(batch_max_envelopes: usize, stamp: Stamp) -> (Sender<Queued>, Batcher) {
        let (data, receiver) = bounded(10);
        let settings = super::super::Settings {
            addr: String::new(),
            batch_max_envelopes,
            batch_max_bytes: 1 << 20,
            flush_interval: HOUR,
            delivery: crate::Delivery::AtMostOnce,
            confirm_interval: HOUR,
            replay_buffer_bytes: 1 << 20,
            confirm_timeout: HOUR,
            write_timeout: HOUR,
            backoff: crate::policy::Backoff::new(HOUR, HOUR),
            streams: 1,
        };
        let batcher = Batcher::new(receiver, Arc::default(), Arc::new(stamp), &settings);
        (data, batcher)
    }

    /// Sealed batches and the books they are counted in.
    struct Sink {
        outbox: Outbox,
        ledger: Ledger,
    }

    impl Sink {
        fn new() -> Sink {
            Sink {
                outbox: Outbox::default(),
                ledger: Ledger::new(
                    Arc::new(crate::queue::Room::new(1 << 20)),
                    Arc::default(),
                    crate::Delivery::AtMostOnce,
                    1 << 20,
                ),
            }
        }

        fn intake(&mut self) -> Intake<'_> {
            Intake {
                outbox: &mut self.outbox,
                ledger: &mut self.ledger,
            }
        }
    }

    fn log(n: i64, tags: &[(&str, &str)], stamp: &Stamp) -> Queued {
        let mut builder = crate::Envelope::log(format!("{n}")).timestamp(n);
        for (key, value) in tags {
            builder = builder.tag(*key, *value);
        }
        let envelope = builder.build().into_encoded();
        Queued {
            added: stamp.added_len(&envelope),
            envelope,
            carried: None,
        }
    }

    #[test]
    fn what_a_full_batch_on_time_leaves_queued_is_due_at_once() {
        // Driven by hand with a clock of the test's own.
        let (data, mut batcher) = batcher(2, Stamp::default());
        let mut sink = Sink::new();
        batcher.take(log(1, &[], &Stamp::default()), &mut sink.intake());
        let due = batcher.due().unwrap();
        for n in 2..=3 {
            data.send(log(n, &[], &Stamp::default())).unwrap();
        }
        batcher.on_time(due, true, &mut sink.intake());
        assert_eq!(sink.outbox.len(), 1, "the full batch, sealed on time");
        assert!(batcher.is_empty());
        // The one left behind opens a batch already due at the same time.
        batcher.take_waiting(1, &mut Sink::new().intake());
        assert_eq!(batcher.due(), Some(due));
        sink.outbox.clear();
        batcher.on_time(due, true, &mut sink.intake());
        assert_eq!(sink.outbox.len(), 1);
        assert_eq!(sink.outbox[0].len(), 1);
    }

    #[test]
    fn a_flush_takes_what_was_queued_before_it_and_seals_it() {
        let (data, mut batcher) = batcher(100, Stamp::default());
        let mut sink = Sink::new();
        for n in 0..3 {
            data.send(log(n, &[], &Stamp::default())).unwrap();
        }
        assert_eq!(batcher.take_through(2, &mut sink.intake()), 2);
        assert_eq!(sink.outbox.len(), 1);
        assert_eq!((sink.outbox[0].len(), batcher.taken()), (2, 2));
        // A flush counted 10, but 7 were evicted before the sender took
        // them: it waits for no more than the queue still had.
        sink.outbox.clear();
        assert_eq!(batcher.take_through(10, &mut sink.intake()), 3);
        assert_eq!(sink.outbox.len(), 1);
        assert_eq!(sink.outbox[0].len(), 1);
    }

    #[test]
    fn global_tags_are_merged_and_envelope_tags_win() {
        let global = [
            ("deployment".to_string(), "cf".to_string()),
            ("k".to_string(), "global".to_string()),
        ];
        let stamp = Stamp::new(&global, None);
        let (_data, mut batcher) = batcher(10, stamp.clone());
        let mut sink = Sink::new();
        batcher.take(log(1, &[("k", "mine")], &stamp), &mut sink.intake());
        batcher.seal(&mut sink.intake());
        let batch = sink.outbox.pop_front().unwrap();
        let decoded = pb::EnvelopeBatch::parse_from_bytes(&batch.bytes).unwrap();
        let tags = &decoded.batch[0].tags;
        assert_eq!(tags["deployment"], "cf");
        assert_eq!(tags["k"], "mine");
    }
}
