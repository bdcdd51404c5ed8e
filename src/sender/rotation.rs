//! At least once, streams are ended to be confirmed: a clean end says the
//! agent read everything they carried. A stream is rotated once it has
//! been used for `confirm_interval`, once it carries half the replay
//! buffer, or at once when the replay buffer is full, and, at close, every
//! stream is ended for good. What a failed confirmation carried is
//! replayed.

use std::time::Instant;

use crate::batch::Batch;
use crate::policy::Delivery;
use crate::stats::DropReason;

use super::deadline_after;
use super::ends::{Confirmation, Confirming};
use super::streams::Streams;
use super::transport::{BatchStream, Stall, Transport, WriteError};

impl<T: Transport> Streams<T> {
    /// At least once: when a slot's stream is to be ended to confirm it.
    pub(super) fn rotation_due(&self, slot: usize) -> Option<Instant> {
        if self.delivery != Delivery::AtLeastOnce {
            return None;
        }
        let stream = self.slots.get(slot)?;
        if stream.unconfirmed.is_empty() {
            return None;
        }
        if self.replay_full() || stream.unconfirmed_bytes() >= self.confirm_at_bytes {
            // Due already: confirming is the only way to make room. Half
            // the buffer is a stream's share: under a steady backlog the
            // next stream is written while this one is confirmed, where
            // waiting for the buffer to fill would stop writing for every
            // confirmation (4% of the time in `cargo bench --bench
            // throughput`, at twice as many rotations as it saves).
            return Some(stream.opened);
        }
        Some(stream.opened + self.confirm_interval)
    }

    /// Rotates every stream that is due; `closing_idle` (close, with
    /// nothing left to write) ends every idle stream for good.
    pub(super) fn rotate_if_due(&mut self, now: Instant, closing_idle: bool) {
        for slot in 0..self.slots.len() {
            if closing_idle {
                if self.slots.is_idle(slot) {
                    self.end_stream(slot, true);
                }
            } else {
                self.rotate_if_due_slot(slot, now);
            }
        }
    }

    /// Rotates a slot's stream if it is due and has no write in flight (its
    /// acceptance or failure wakes the loop, which comes back here).
    pub(super) fn rotate_if_due_slot(&mut self, slot: usize, now: Instant) {
        if self.slots.is_idle(slot) && self.rotation_due(slot).is_some_and(|due| now >= due) {
            self.rotate(slot);
        }
    }

    /// Half-closes a slot's stream mid-life; its end is awaited with the
    /// other confirmations, which the loop polls next.
    pub(super) fn rotate(&mut self, slot: usize) {
        self.end_stream(slot, false);
    }

    /// Half-closes a slot's stream; `last` when close ends it.
    fn end_stream(&mut self, slot: usize, last: bool) {
        if let Some(open) = self.slots.take(slot) {
            self.ends.confirm(Confirming {
                closing: open.stream.half_close(),
                batches: open.unconfirmed,
                deadline: deadline_after(self.confirm_timeout),
                connection: open.connection,
                last,
            });
        }
    }

    pub(super) fn poll_confirmations(&mut self, now: Instant) {
        for confirmation in self.ends.poll_confirmations(now) {
            match confirmation {
                Confirmation::Confirmed(batches) => {
                    if !batches.is_empty() {
                        self.retry.reset();
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
                        // Named by its own connection: an earlier
                        // confirmation timed out in this pass may have
                        // left it already.
                        WriteError::Uncertain(
                            self.transport
                                .stalled(Stall::Confirmation(self.confirm_timeout), connection),
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
    pub(super) fn confirmation_failed(
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
                self.ledger.dropped(batch, DropReason::TooLarge);
            }
        } else if batches.is_empty() {
            // At most once, the final stream: its end is close's result.
            if last {
                self.close_error = Some(failure.into_error());
            }
        } else {
            self.outbox.replay(batches, too_large, &self.counters);
            self.retry.back_off();
        }
    }
}
