//! A failed write: its stream waits (polled) for the status its call
//! ended with, and then the failure decides what becomes of the write's
//! batch (written again, split because the agent refused it as too large,
//! or, when the agent may have it, given up at most once and replayed at
//! least once) and of what the stream carried unconfirmed (replayed).

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::batch::Batch;
use crate::policy::Delivery;
use crate::stats::DropReason;

use super::deadline_after;
use super::ends::Ending;
use super::streams::Streams;
use super::transport::{BatchStream, Transport, WriteError};

/// How long a failed stream may take to say why (its call's status) before
/// the write's own error is taken for it.
const END_STATUS_WAIT: Duration = Duration::from_secs(1);

impl<T: Transport> Streams<T> {
    /// A write failed: the stream leaves its slot and waits, polled, for
    /// the status its call ended with.
    pub(super) fn begin_ending(
        &mut self,
        slot: usize,
        failure: WriteError,
        batch: Batch,
        started: bool,
        reused: bool,
    ) {
        let Some(open) = self.slots.take(slot) else {
            // No stream to ask: the write goes back to be written again.
            self.outbox.put_back(batch);
            return;
        };
        self.ends.await_status(Ending {
            proven: open.proven(),
            closing: open.stream.into_end(),
            slot,
            failure,
            batch,
            started,
            reused,
            unconfirmed: open.unconfirmed,
            deadline: deadline_after(END_STATUS_WAIT),
        });
    }

    /// Settles failed streams whose status has come (or was waited for
    /// long enough): the status, when it says more, decides for the write.
    pub(super) fn poll_endings(&mut self, now: Instant) {
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

    /// A stream failed at a write (it has been taken out of its slot,
    /// which cancels its call): what it carried unconfirmed goes back to be
    /// written again, and the failure says what becomes of `batch`, the
    /// write that met it.
    pub(super) fn settle_failure(
        &mut self,
        failure: WriteError,
        reused: bool,
        batch: Option<Batch>,
        unconfirmed: Vec<Batch>,
        proven: bool,
    ) {
        let too_large = matches!(failure, WriteError::TooLarge(_));
        self.outbox.replay(unconfirmed, too_large, &self.counters);
        let Some(mut batch) = batch else {
            return;
        };
        match failure {
            // The first message of a new stream was refused: it is the culprit.
            WriteError::TooLarge(_) if !reused => {
                if let Some(single) = self.outbox.split(batch) {
                    self.ledger.dropped(single, DropReason::TooLarge);
                }
            }
            WriteError::StreamEnded(_) | WriteError::TooLarge(_) => {
                // Refused on a stream that had carried others, it may be the
                // culprit or an earlier one was: written next as the first
                // message of a new stream, a refusal will name it, and it
                // cannot end another working stream meanwhile.
                batch.isolate |= too_large;
                self.outbox.put_back(batch);
                if proven {
                    // A stream that had worked may just have ended (the
                    // agent restarted, or refused an earlier message as too
                    // large): try a new one at once.
                    self.retry.reset();
                } else {
                    self.retry.back_off();
                }
            }
            WriteError::Uncertain(_) => match self.delivery {
                // The agent may have it: writing it again could duplicate it.
                Delivery::AtMostOnce => {
                    self.ledger.dropped(batch, DropReason::GaveUp);
                }
                Delivery::AtLeastOnce => {
                    self.counters.replayed.fetch_add(batch.len(), Relaxed);
                    self.retry.back_off();
                    self.outbox.put_back(batch);
                }
            },
        }
    }
}
