//! Counter series: a name, tags and the delta not yet handed to the
//! queue, for pulse counters and self-metrics alike. A delta goes into the
//! queue with a [`Carried`] that brings it back to its series if the queue
//! drops the envelope before the sender thread takes it, so the next report
//! sends it again. Totals heal with the next report; deltas do not, so none
//! may vanish on a full queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::envelope::Envelope;

/// One counter's identity and what was added since it last went out.
#[derive(Debug)]
pub(crate) struct CounterSeries {
    name: String,
    /// Sorted, so handles made with the same tags in any order agree.
    tags: Vec<(String, String)>,
    /// Added since the last report, plus deltas the queue gave back.
    pending: AtomicU64,
    /// The envelope's source and instance ids, when the series names its
    /// own; otherwise the client's default source applies.
    source_id: Option<String>,
    instance_id: Option<String>,
}

impl CounterSeries {
    pub(crate) fn new(name: String, tags: Vec<(String, String)>) -> CounterSeries {
        CounterSeries {
            name,
            tags,
            pending: AtomicU64::new(0),
            source_id: None,
            instance_id: None,
        }
    }

    /// The series' envelopes name these ids instead of leaving them to the
    /// client's default source.
    #[cfg(feature = "metrics")]
    pub(crate) fn with_source(
        mut self,
        source_id: Option<String>,
        instance_id: Option<String>,
    ) -> CounterSeries {
        self.source_id = source_id;
        self.instance_id = instance_id;
        self
    }

    /// One atomic add: the whole cost of counting on the caller's thread.
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.pending.fetch_add(n, Relaxed);
    }

    /// What is pending, as a counter envelope with that delta and total 0
    /// (which the agent adds to its total), and the token that gives the
    /// delta back unless the sender thread takes the envelope. `None` when
    /// nothing is pending: delta 0 and total 0 would reset the agent's total.
    pub(crate) fn take(self: &Arc<Self>) -> Option<(Envelope, Carried)> {
        let delta = self.pending.swap(0, Relaxed);
        if delta == 0 {
            return None;
        }
        let mut counter = Envelope::counter(self.name.as_str()).delta(delta);
        for (key, value) in &self.tags {
            counter = counter.tag(key.as_str(), value.as_str());
        }
        if let Some(source_id) = &self.source_id {
            counter = counter.source_id(source_id);
        }
        if let Some(instance_id) = &self.instance_id {
            counter = counter.instance_id(instance_id);
        }
        let carried = Carried {
            series: self.clone(),
            delta,
        };
        Some((counter.build(), carried))
    }

    /// True when nothing is pending.
    pub(crate) fn is_idle(&self) -> bool {
        self.pending.load(Relaxed) == 0
    }
}

/// A delta travelling in the queue with its envelope. Dropped anywhere but
/// in the sender thread's hands (refused by a full queue, evicted by
/// `DropOldest`, left in the queue), it adds its delta back to its series.
/// Once the sender thread has taken the envelope, the delta is the
/// sender's to deliver or to count lost, like any envelope's.
///
/// It holds its series, so a series whose handles are all gone is not
/// forgotten while a delta of it may still come back.
#[derive(Debug)]
pub(crate) struct Carried {
    series: Arc<CounterSeries>,
    /// 0 once taken.
    delta: u64,
}

impl Carried {
    /// The sender thread has the envelope: the delta no longer comes back.
    pub(crate) fn taken(mut self) {
        self.delta = 0;
    }
}

/// What the sender thread does with a report's envelopes, for tests: it
/// takes every one.
#[cfg(test)]
pub(crate) fn all_taken(report: Vec<(Envelope, Option<Carried>)>) -> Vec<Envelope> {
    report
        .into_iter()
        .map(|(envelope, carried)| {
            if let Some(carried) = carried {
                carried.taken();
            }
            envelope
        })
        .collect()
}

impl Drop for Carried {
    fn drop(&mut self) {
        if self.delta > 0 {
            self.series.add(self.delta);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(envelope: &Envelope) -> u64 {
        envelope.as_proto().counter().delta
    }

    #[test]
    fn a_dropped_delta_comes_back_and_a_taken_one_does_not() {
        let series = Arc::new(CounterSeries::new("hits".into(), vec![]));
        series.add(3);
        let (envelope, carried) = series.take().unwrap();
        assert_eq!(delta(&envelope), 3);
        assert!(series.take().is_none(), "taken once");
        series.add(2);
        drop(carried);
        let (envelope, carried) = series.take().unwrap();
        assert_eq!(delta(&envelope), 5, "the dropped 3 and the new 2");
        carried.taken();
        assert!(series.take().is_none());
        assert_eq!(Arc::strong_count(&series), 1, "tokens let go of the series");
    }
}
