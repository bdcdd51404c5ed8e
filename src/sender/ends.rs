//! Streams waiting for their end: half-closed ones, whose clean end
//! confirms what they carried, and failed ones, whose call's status says
//! why their write failed. [`Ends`] owns them and polls them with the
//! loop's waker, never waiting on any; the stream side decides what each
//! outcome means for its batches.

use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::batch::Batch;

use super::transport::{Closing, WriteError};

/// A half-closed stream and the batches its clean end will confirm.
pub(super) struct Confirming<C> {
    pub closing: C,
    pub batches: Vec<Batch>,
    pub deadline: Instant,
    /// The connection it rode.
    pub connection: u64,
    /// Ended by close: at most once, how it ends is close's result.
    pub last: bool,
}

/// A stream whose write failed, waiting for its call's status; its slot
/// takes no write meanwhile.
pub(super) struct Ending<C> {
    pub closing: C,
    pub slot: usize,
    /// What the write's own error said.
    pub failure: WriteError,
    /// The write that met the failure.
    pub batch: Batch,
    /// The failure came after the transport took the write: the agent
    /// may have read it.
    pub started: bool,
    pub reused: bool,
    pub unconfirmed: Vec<Batch>,
    pub proven: bool,
    /// When the write's own error is taken for the status.
    pub deadline: Instant,
}

/// How a half-closed stream ended.
pub(super) enum Confirmation {
    /// Cleanly: its batches are confirmed.
    Confirmed(Vec<Batch>),
    /// Badly, or (`failure` is `None`) not before its deadline.
    Failed {
        batches: Vec<Batch>,
        last: bool,
        connection: u64,
        failure: Option<WriteError>,
    },
}

pub(super) struct Ends<C> {
    confirming: Vec<Confirming<C>>,
    ending: Vec<Ending<C>>,
    waker: Waker,
}

impl<C: Closing> Ends<C> {
    pub(super) fn new(waker: Waker) -> Ends<C> {
        Ends {
            confirming: Vec::new(),
            ending: Vec::new(),
            waker,
        }
    }

    pub(super) fn confirm(&mut self, confirming: Confirming<C>) {
        self.confirming.push(confirming);
    }

    pub(super) fn await_status(&mut self, ending: Ending<C>) {
        self.ending.push(ending);
    }

    /// Failed streams whose status has come (with it, when it ended the
    /// call with an error) or was waited for long enough (without).
    pub(super) fn poll_statuses(&mut self, now: Instant) -> Vec<(Ending<C>, Option<WriteError>)> {
        let mut context = Context::from_waker(&self.waker);
        take_settled(&mut self.ending, |ending| {
            match ending.closing.poll_end(&mut context) {
                Poll::Ready(Err(status)) => Some(Some(status)),
                Poll::Ready(Ok(())) => Some(None),
                Poll::Pending if now >= ending.deadline => Some(None),
                Poll::Pending => None,
            }
        })
    }

    /// Half-closed streams that ended, or passed their deadline (dropping
    /// one cancels its call).
    pub(super) fn poll_confirmations(&mut self, now: Instant) -> Vec<Confirmation> {
        let mut context = Context::from_waker(&self.waker);
        let settled = take_settled(&mut self.confirming, |confirming| {
            match confirming.closing.poll_end(&mut context) {
                Poll::Ready(outcome) => Some(Some(outcome)),
                Poll::Pending if now >= confirming.deadline => Some(None),
                Poll::Pending => None,
            }
        });
        settled
            .into_iter()
            .map(|(done, outcome)| match outcome {
                Some(Ok(())) => Confirmation::Confirmed(done.batches),
                failed => Confirmation::Failed {
                    batches: done.batches,
                    last: done.last,
                    connection: done.connection,
                    failure: failed.and_then(|outcome| outcome.err()),
                },
            })
            .collect()
    }

    /// Takes the half-closed streams that rode `connection`.
    pub(super) fn take_on(&mut self, connection: u64) -> Vec<Confirming<C>> {
        let (on, others) = std::mem::take(&mut self.confirming)
            .into_iter()
            .partition(|confirming| confirming.connection == connection);
        self.confirming = others;
        on
    }

    /// Takes everything, for close's deadline.
    pub(super) fn take_all(&mut self) -> (Vec<Ending<C>>, Vec<Confirming<C>>) {
        (
            std::mem::take(&mut self.ending),
            std::mem::take(&mut self.confirming),
        )
    }

    /// Whether the stream of `slot` failed and waits for its status.
    pub(super) fn awaits_status(&self, slot: usize) -> bool {
        self.ending.iter().any(|ending| ending.slot == slot)
    }

    /// The writes of failed streams, not yet settled.
    pub(super) fn failed_writes(&self) -> impl Iterator<Item = &Batch> {
        self.ending.iter().map(|ending| &ending.batch)
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let confirmation = self.confirming.iter().map(|c| c.deadline);
        let status = self.ending.iter().map(|e| e.deadline);
        confirmation.chain(status).min()
    }

    pub(super) fn is_idle(&self) -> bool {
        self.confirming.is_empty() && self.ending.is_empty()
    }
}

/// Takes out, in order, the entries that `settled` finds done, each with
/// what it found; the others stay, in order.
fn take_settled<E, R>(
    entries: &mut Vec<E>,
    mut settled: impl FnMut(&mut E) -> Option<R>,
) -> Vec<(E, R)> {
    let mut done = Vec::new();
    let mut index = 0;
    while index < entries.len() {
        match settled(&mut entries[index]) {
            Some(found) => done.push((entries.remove(index), found)),
            None => index += 1,
        }
    }
    done
}
