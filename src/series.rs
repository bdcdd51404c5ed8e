//! Counter series: a name, labels and the delta not yet handed to the
//! queue, for pulse counters, self-metrics and the metrics recorder alike.
//! A delta goes into the queue with a [`Carried`] that brings it back to
//! its series if the queue drops the envelope before the sender thread
//! takes it, so the next report sends it again. Totals heal with the next
//! report; deltas do not, so none may vanish on a full queue.
//!
//! [`SeriesLabels`] is how every series of these stamps its tags, source
//! and instance on an envelope, counters and gauges alike.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};

use crate::envelope::{Envelope, EnvelopeBuilder};

/// What a series' envelopes carry besides its name and value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct SeriesLabels {
    /// Sorted, so handles made with the same tags in any order agree.
    pub tags: Vec<(String, String)>,
    /// The envelope's source and instance ids, when the series names its
    /// own; otherwise the client's default source applies.
    pub source_id: Option<String>,
    pub instance_id: Option<String>,
}

impl SeriesLabels {
    /// Puts the tags, source and instance on an envelope being built.
    pub(crate) fn stamp<K>(&self, mut builder: EnvelopeBuilder<K>) -> EnvelopeBuilder<K> {
        for (key, value) in &self.tags {
            builder = builder.tag(key, value);
        }
        if let Some(source_id) = &self.source_id {
            builder = builder.source_id(source_id);
        }
        if let Some(instance_id) = &self.instance_id {
            builder = builder.instance_id(instance_id);
        }
        builder
    }
}

/// One counter's identity and its value, of which the part not yet handed
/// to the queue goes out with the next report.
///
/// The value only grows: `add` adds to it, `raise_to` sets it to at least
/// a reading (the facade's `absolute`). What was handed to the queue is
/// `taken`; a delta the queue gives back comes off `taken` again. So a
/// report's delta is `value - taken`, and callers pay one atomic operation
/// however the counter is moved.
#[derive(Debug)]
pub(crate) struct CounterSeries {
    name: String,
    labels: SeriesLabels,
    value: AtomicU64,
    taken: AtomicU64,
    /// Deltas of it in the queue, which may still come back.
    outstanding: AtomicUsize,
    /// Its envelope can never fit a batch: it is not sent again.
    never_fits: AtomicBool,
}

impl CounterSeries {
    pub(crate) fn new(name: String, tags: Vec<(String, String)>) -> CounterSeries {
        CounterSeries::labelled(
            name,
            SeriesLabels {
                tags,
                ..SeriesLabels::default()
            },
        )
    }

    /// A series whose envelopes carry `labels`.
    pub(crate) fn labelled(name: String, labels: SeriesLabels) -> CounterSeries {
        CounterSeries {
            name,
            labels,
            value: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            outstanding: AtomicUsize::new(0),
            never_fits: AtomicBool::new(false),
        }
    }

    /// The series resumes at `value`, all of it already sent: a counter
    /// forgotten while idle and made again does not count it again.
    #[cfg(feature = "metrics")]
    pub(crate) fn resuming_at(self, value: u64) -> CounterSeries {
        self.value.store(value, Relaxed);
        self.taken.store(value, Relaxed);
        self
    }

    /// The series is known never to fit a batch: it sends nothing.
    #[cfg(feature = "metrics")]
    pub(crate) fn never_fitting(self) -> CounterSeries {
        self.never_fits.store(true, Relaxed);
        self
    }

    /// One atomic add: the whole cost of counting on the caller's thread.
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.value.fetch_add(n, Relaxed);
    }

    /// Sets the value to at least `reading`, one atomic max: a smaller
    /// reading, reported late by another thread, changes nothing.
    #[cfg(feature = "metrics")]
    #[inline]
    pub(crate) fn raise_to(&self, reading: u64) {
        self.value.fetch_max(reading, Relaxed);
    }

    /// Everything added to the series, sent or not.
    #[cfg(feature = "metrics")]
    pub(crate) fn value(&self) -> u64 {
        self.value.load(Relaxed)
    }

    /// What is pending, as a counter envelope with that delta and total 0
    /// (which the agent adds to its total), and the token that gives the
    /// delta back unless the sender thread takes the envelope. `None` when
    /// nothing is pending (delta 0 and total 0 would reset the agent's
    /// total), or when the series never fits a batch.
    ///
    /// One report takes at a time (every caller holds its pulse's lock);
    /// give-backs may race it, and are kept.
    pub(crate) fn take(self: &Arc<Self>) -> Option<(Envelope, Carried)> {
        if self.never_fits.load(Relaxed) {
            return None;
        }
        let delta = self
            .value
            .load(Relaxed)
            .wrapping_sub(self.taken.load(Relaxed));
        if delta == 0 {
            return None;
        }
        self.taken.fetch_add(delta, Relaxed);
        self.outstanding.fetch_add(1, Relaxed);
        let counter = self
            .labels
            .stamp(Envelope::counter(self.name.as_str()).delta(delta));
        let carried = Carried {
            series: self.clone(),
            delta,
        };
        Some((counter.build(), carried))
    }

    /// True when nothing is pending (or nothing ever will be sent).
    pub(crate) fn is_idle(&self) -> bool {
        self.never_fits.load(Relaxed) || self.value.load(Relaxed) == self.taken.load(Relaxed)
    }

    /// True when nothing is pending and no delta of it is in the queue: it
    /// can be let go without losing a count.
    #[cfg(feature = "metrics")]
    pub(crate) fn is_settled(&self) -> bool {
        self.outstanding.load(Relaxed) == 0 && self.is_idle()
    }

    /// True once the queue found its envelope larger than any batch.
    #[cfg(feature = "metrics")]
    pub(crate) fn never_fits(&self) -> bool {
        self.never_fits.load(Relaxed)
    }

    fn give_back(&self, delta: u64) {
        self.taken.fetch_sub(delta, Relaxed);
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

    /// The queue refused the envelope as larger than any batch: it would be
    /// refused again at every report, so the series stops sending (the
    /// queue counts this one drop) and may be let go.
    pub(crate) fn never_fits(mut self) {
        self.series.never_fits.store(true, Relaxed);
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
            self.series.give_back(self.delta);
        }
        self.series.outstanding.fetch_sub(1, Relaxed);
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

    #[test]
    fn a_series_that_never_fits_stops_sending_and_is_idle() {
        let series = Arc::new(CounterSeries::new("hits".into(), vec![]));
        series.add(3);
        let (_, carried) = series.take().unwrap();
        carried.never_fits();
        series.add(2);
        assert!(series.take().is_none(), "not offered again");
        assert!(series.is_idle());
    }

    #[cfg(feature = "metrics")]
    #[test]
    fn raising_to_a_reading_sends_the_rise_once_whatever_the_order() {
        let series = Arc::new(CounterSeries::new("hits".into(), vec![]).resuming_at(100));
        for reading in [99, 120, 110] {
            series.raise_to(reading);
        }
        let (envelope, carried) = series.take().unwrap();
        assert_eq!(delta(&envelope), 20);
        drop(carried);
        series.add(1);
        let (envelope, carried) = series.take().unwrap();
        assert_eq!(delta(&envelope), 21, "given back");
        assert!(!series.is_settled(), "a delta in the queue");
        carried.taken();
        assert!(series.is_settled());
    }
}
