//! The streams open side by side (up to `streams`), one write in flight on
//! each: which one takes the next batch, opening one where a slot is
//! empty, and the connection each rides. [`Slots`] owns them; what a
//! write's outcome means for its batch is the stream side's.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::batch::Batch;
use crate::error::Result;
use crate::stats::Counters;

use super::transport::Transport;

/// A stream that has carried writes this long is working: when it ends, a
/// new one is tried at once and the backoff starts over. A younger stream
/// that ends counts as a failed attempt, so a server that ends every call at
/// once is retried with backoff, not in a loop.
const PROVEN_STREAM_AGE: Duration = Duration::from_secs(1);

/// The stream being written, with what it carried that is not yet confirmed.
pub(super) struct OpenStream<S> {
    pub stream: S,
    pub opened: Instant,
    /// The connection it rides (see [`Slots::connection`]).
    pub connection: u64,
    pub unconfirmed: Vec<Batch>,
    /// The bytes of `unconfirmed`, kept as it grows: it is read at every
    /// write, and a stream may carry thousands of small batches.
    unconfirmed_bytes: usize,
    /// The batch whose write is in flight.
    pub writing: Option<Writing>,
}

impl<S> OpenStream<S> {
    /// It has lived long enough to count as working.
    pub fn proven(&self) -> bool {
        self.opened.elapsed() >= PROVEN_STREAM_AGE
    }

    pub fn is_idle(&self) -> bool {
        self.writing.is_none()
    }

    /// The bytes of what it carried that is not yet confirmed.
    pub fn unconfirmed_bytes(&self) -> usize {
        self.unconfirmed_bytes
    }

    /// It carried `batch`, which waits for the stream to be confirmed.
    pub fn carried(&mut self, batch: Batch) {
        self.unconfirmed_bytes += batch.bytes.len();
        self.unconfirmed.push(batch);
    }
}

/// A write the transport has not yet accepted.
pub(super) struct Writing {
    pub batch: Batch,
    /// When it stops waiting for the transport.
    pub deadline: Instant,
    /// The stream had carried writes before this one.
    pub reused: bool,
}

/// What a stream taken out of its slot carried, for the stream side to
/// settle.
pub(super) struct Taken {
    pub writing: Option<Writing>,
    pub unconfirmed: Vec<Batch>,
    pub proven: bool,
}

pub(super) struct Slots<S> {
    /// A slot is empty until a batch needs it, and again after its stream
    /// ends.
    slots: Vec<Option<OpenStream<S>>>,
    /// The slot the next batch tries first: batches take turns, so every
    /// stream gets its share even while one's window could take them all.
    next: usize,
    opened: u64,
    /// Counts the connections left: a stream opened before the last one
    /// was left rides a dead connection.
    connection: u64,
    counters: Arc<Counters>,
}

impl<S> Slots<S> {
    pub(super) fn new(streams: usize, counters: Arc<Counters>) -> Slots<S> {
        Slots {
            slots: (0..streams.max(1)).map(|_| None).collect(),
            next: 0,
            opened: 0,
            connection: 0,
            counters,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(super) fn get(&self, slot: usize) -> Option<&OpenStream<S>> {
        self.slots[slot].as_ref()
    }

    pub(super) fn get_mut(&mut self, slot: usize) -> Option<&mut OpenStream<S>> {
        self.slots[slot].as_mut()
    }

    /// Takes a slot's stream out (dropping it cancels its call).
    pub(super) fn take(&mut self, slot: usize) -> Option<OpenStream<S>> {
        self.slots[slot].take()
    }

    /// Takes a slot's stream out, with what it carried.
    pub(super) fn take_carried(&mut self, slot: usize) -> Taken {
        match self.slots[slot].take() {
            Some(open) => Taken {
                proven: open.proven(),
                writing: open.writing,
                unconfirmed: open.unconfirmed,
            },
            None => Taken {
                writing: None,
                unconfirmed: Vec::new(),
                proven: false,
            },
        }
    }

    pub(super) fn all_empty(&self) -> bool {
        self.slots.iter().all(Option::is_none)
    }

    /// Whether the slot holds a stream with no write in flight.
    pub(super) fn is_idle(&self, slot: usize) -> bool {
        self.get(slot).is_some_and(OpenStream::is_idle)
    }

    /// The writes in flight, one at most on each stream.
    pub(super) fn in_flight(&self) -> impl Iterator<Item = &Writing> {
        self.slots
            .iter()
            .flatten()
            .filter_map(|open| open.writing.as_ref())
    }

    /// The connection new streams ride.
    pub(super) fn connection(&self) -> u64 {
        self.connection
    }

    /// The connection was left: streams opened from now on ride the next.
    pub(super) fn leave_connection(&mut self) {
        self.connection += 1;
    }

    /// The slots whose stream rides `connection`.
    pub(super) fn on_connection(&self, connection: u64) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&slot| {
                self.get(slot)
                    .is_some_and(|open| open.connection == connection)
            })
            .collect()
    }

    /// The slot the next write goes to: the first, taking turns, that
    /// `open_to` allows and whose stream has no write in flight or that is
    /// empty (to open one in). A batch to `isolate` needs a new stream: an
    /// empty slot, or one whose idle stream is ended first to free it.
    pub(super) fn pick(&self, isolate: bool, open_to: impl Fn(usize) -> bool) -> Option<usize> {
        let count = self.slots.len();
        let turns = (0..count)
            .map(|offset| (self.next + offset) % count)
            .filter(|&slot| open_to(slot));
        // A suspect batch must be the first message of its stream: only
        // then does a refusal point at it.
        let usable = |slot: usize| match self.get(slot) {
            None => true,
            Some(open) => !isolate && open.is_idle(),
        };
        turns.clone().find(|&slot| usable(slot)).or_else(|| {
            isolate
                .then(|| turns.clone().find(|&slot| self.is_idle(slot)))
                .flatten()
        })
    }

    /// The next batch tries the slot after this one first.
    pub(super) fn took_turn(&mut self, slot: usize) {
        self.next = (slot + 1) % self.slots.len();
    }

    /// Opens a stream in the slot if it is empty; whether it was.
    pub(super) fn open<T: Transport<Stream = S>>(
        &mut self,
        slot: usize,
        transport: &mut T,
    ) -> Result<()> {
        if self.slots[slot].is_none() {
            let stream = transport.open()?;
            if self.opened > 0 {
                self.counters.reconnects.fetch_add(1, Relaxed);
            }
            self.opened += 1;
            self.slots[slot] = Some(OpenStream {
                stream,
                opened: Instant::now(),
                connection: self.connection,
                unconfirmed: Vec::new(),
                unconfirmed_bytes: 0,
                writing: None,
            });
        }
        Ok(())
    }
}
