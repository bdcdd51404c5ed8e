//! Sealed batches waiting to be written, in the order of their envelopes:
//! fresh ones from the batcher, and those put back after a failure (to be
//! written again, replayed, or split because the agent refused them as too
//! large).

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;

use crate::batch::Batch;
use crate::stats::Counters;

#[derive(Default)]
pub(crate) struct Outbox {
    batches: VecDeque<Batch>,
}

impl Outbox {
    pub(crate) fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// The batch written next.
    pub(crate) fn front(&self) -> Option<&Batch> {
        self.batches.front()
    }

    pub(crate) fn pop_front(&mut self) -> Option<Batch> {
        self.batches.pop_front()
    }

    /// A batch the batcher sealed: it comes after every other.
    pub(crate) fn push_sealed(&mut self, batch: Batch) {
        self.batches.push_back(batch);
    }

    /// Puts a batch back, in order of its envelopes.
    pub(crate) fn put_back(&mut self, batch: Batch) {
        let at = self
            .batches
            .partition_point(|waiting| waiting.last_seq < batch.last_seq);
        self.batches.insert(at, batch);
    }

    /// The agent refused this batch as too large: it goes back in halves,
    /// or, a single envelope, is returned to be dropped.
    pub(crate) fn split(&mut self, batch: Batch) -> Option<Batch> {
        match batch.split() {
            Ok((first, second)) => {
                self.put_back(second);
                self.put_back(first);
                None
            }
            Err(single) => Some(single),
        }
    }

    /// Puts batches written on a failed stream back, in order, counted as
    /// replayed; `split` when the agent refused a message as too large,
    /// maybe one of these: each goes back in halves, each half to be the
    /// first message of a stream of its own, until a refusal points at a
    /// single envelope.
    pub(crate) fn replay(&mut self, batches: Vec<Batch>, split: bool, counters: &Counters) {
        if batches.is_empty() {
            return;
        }
        for batch in batches {
            counters.replayed.fetch_add(batch.len(), Relaxed);
            if !split {
                self.batches.push_back(batch);
                continue;
            }
            match batch.split() {
                Ok((mut first, mut second)) => {
                    first.isolate = true;
                    second.isolate = true;
                    self.batches.extend([first, second]);
                }
                Err(mut single) => {
                    single.isolate = true;
                    self.batches.push_back(single);
                }
            }
        }
        self.batches
            .make_contiguous()
            .sort_by_key(|batch| batch.last_seq);
    }

    /// Takes every batch, for close's deadline.
    pub(crate) fn take_all(&mut self) -> VecDeque<Batch> {
        std::mem::take(&mut self.batches)
    }
}

#[cfg(test)]
impl Outbox {
    pub(crate) fn len(&self) -> usize {
        self.batches.len()
    }

    pub(crate) fn clear(&mut self) {
        self.batches.clear();
    }
}

#[cfg(test)]
impl std::ops::Index<usize> for Outbox {
    type Output = Batch;

    fn index(&self, index: usize) -> &Batch {
        &self.batches[index]
    }
}
