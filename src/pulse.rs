//! Pulse metrics: counters and gauges updated lock-free on the caller's
//! thread and sent once per pulse interval.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, Ordering::Relaxed, fence};

use parking_lot::Mutex;

use crate::envelope::Envelope;

/// A counter: `add` and `inc` are one atomic add on the caller's thread;
/// once per pulse interval the client sends the interval's delta with the
/// running total. An interval with nothing added sends nothing, so the
/// agent's total is never reset by accident.
///
/// Handles with the same name and tags share one series; the series stops
/// pulsing once every handle is dropped (after sending what was added).
///
/// ```no_run
/// # let client: loggregator::IngressClient = unimplemented!();
/// let requests = client.counter("requests");
/// requests.inc();
/// requests.add(5);
/// ```
#[derive(Clone, Debug)]
pub struct Counter {
    series: Arc<CounterSeries>,
}

#[derive(Debug)]
struct CounterSeries {
    name: String,
    tags: Vec<(String, String)>,
    pending: AtomicU64,
    total: AtomicU64,
}

impl Counter {
    /// Adds `n` to the counter.
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// client.counter("bytes_sent").add(1024);
    /// ```
    pub fn add(&self, n: u64) {
        self.series.pending.fetch_add(n, Relaxed);
    }

    /// Adds 1 to the counter.
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// client.counter("requests").inc();
    /// ```
    pub fn inc(&self) {
        self.add(1);
    }
}

/// A gauge: `set` keeps the latest value (one atomic store); once per pulse
/// interval the client sends every gauge that has a value, all in one Gauge
/// envelope.
///
/// ```no_run
/// # let client: loggregator::IngressClient = unimplemented!();
/// let memory = client.gauge("memory", "bytes");
/// memory.set(1.5e8);
/// ```
#[derive(Clone, Debug)]
pub struct Gauge {
    series: Arc<GaugeSeries>,
}

#[derive(Debug)]
struct GaugeSeries {
    name: String,
    unit: String,
    bits: AtomicU64,
    set: AtomicBool,
}

impl Gauge {
    /// Sets the value; negative and fractional values are sent exactly.
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// client.gauge("temperature", "celsius").set(-3.25);
    /// ```
    pub fn set(&self, value: f64) {
        self.series.bits.store(value.to_bits(), Relaxed);
        self.series.set.store(true, Ordering::Release);
    }
}

/// A counter series is identified by its name and its sorted tags.
type CounterKey = (String, Vec<(String, String)>);

/// Every live series, for the pulse.
#[derive(Default)]
pub(crate) struct Registry {
    counters: Mutex<HashMap<CounterKey, Arc<CounterSeries>>>,
    /// Running totals of series whose handles are all gone, so a series
    /// made again (say by `client.counter(name).inc()` each time) goes on
    /// from its total instead of restarting at 0.
    retired_totals: Mutex<HashMap<CounterKey, u64>>,
    gauges: Mutex<HashMap<String, Arc<GaugeSeries>>>,
}

impl Registry {
    pub(crate) fn counter(&self, name: &str, tags: &[(&str, &str)]) -> Counter {
        let mut tags: Vec<(String, String)> = tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        tags.sort();
        tags.dedup_by(|a, b| a.0 == b.0);
        let key = (name.to_string(), tags);
        let mut counters = self.counters.lock();
        let series = counters.entry(key).or_insert_with_key(|key| {
            let total = self.retired_totals.lock().remove(key).unwrap_or(0);
            Arc::new(CounterSeries {
                name: key.0.clone(),
                tags: key.1.clone(),
                pending: AtomicU64::new(0),
                total: AtomicU64::new(total),
            })
        });
        Counter {
            series: series.clone(),
        }
    }

    pub(crate) fn gauge(&self, name: &str, unit: &str) -> Gauge {
        let mut gauges = self.gauges.lock();
        let series = gauges.entry(name.to_string()).or_insert_with(|| {
            Arc::new(GaugeSeries {
                name: name.to_string(),
                unit: unit.to_string(),
                bits: AtomicU64::new(0),
                set: AtomicBool::new(false),
            })
        });
        Gauge {
            series: series.clone(),
        }
    }

    /// The envelopes for one pulse: a counter per series that moved, and one
    /// gauge envelope holding every gauge with a value. Series nobody holds
    /// any more are sent a last time and forgotten.
    pub(crate) fn pulse(&self) -> Vec<Envelope> {
        let mut envelopes = Vec::new();
        let mut retired = Vec::new();
        self.counters.lock().retain(|key, series| {
            // No handle is left (none can be made while the lock is held):
            // after this last look the series is forgotten. Checked before
            // reading, so an add made just before the last drop is seen.
            let orphaned = Arc::strong_count(series) == 1;
            fence(Ordering::Acquire);
            let delta = series.pending.swap(0, Relaxed);
            if delta > 0 {
                let total = series.total.fetch_add(delta, Relaxed).wrapping_add(delta);
                let mut counter = Envelope::counter(series.name.as_str()).delta(delta);
                for (key, value) in &series.tags {
                    counter = counter.tag(key.as_str(), value.as_str());
                }
                let mut envelope = counter.build().into_proto();
                if let Some(crate::proto::envelope::envelope::Message::Counter(c)) =
                    &mut envelope.message
                {
                    c.total = total;
                }
                envelopes.push(Envelope::from_proto(envelope));
            }
            if orphaned {
                retired.push((key.clone(), series.total.load(Relaxed)));
            }
            !orphaned
        });
        self.retired_totals.lock().extend(retired);
        let mut gauge = Envelope::gauge();
        let mut any = false;
        self.gauges.lock().retain(|_, series| {
            let orphaned = Arc::strong_count(series) == 1;
            fence(Ordering::Acquire);
            if series.set.load(Ordering::Acquire) {
                let value = f64::from_bits(series.bits.load(Relaxed));
                gauge = std::mem::replace(&mut gauge, Envelope::gauge()).metric(
                    series.name.as_str(),
                    value,
                    series.unit.as_str(),
                );
                any = true;
            }
            !orphaned
        });
        if any {
            envelopes.push(gauge.build());
        }
        envelopes
    }

    /// True when no series is live (retired totals are kept).
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.counters.lock().is_empty() && self.gauges.lock().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(envelopes: &[Envelope]) -> Vec<(String, u64, u64)> {
        envelopes
            .iter()
            .filter_map(|e| {
                let p = e.as_proto();
                p.has_counter().then(|| {
                    (
                        p.counter().name.clone(),
                        p.counter().delta,
                        p.counter().total,
                    )
                })
            })
            .collect()
    }

    #[test]
    fn a_counter_sends_its_interval_delta_and_running_total_and_nothing_when_idle() {
        let registry = Registry::default();
        let requests = registry.counter("requests", &[]);
        requests.add(3);
        requests.inc();
        assert_eq!(counters(&registry.pulse()), vec![("requests".into(), 4, 4)]);
        assert!(
            registry.pulse().is_empty(),
            "an idle interval sends nothing"
        );
        requests.add(2);
        assert_eq!(counters(&registry.pulse()), vec![("requests".into(), 2, 6)]);
    }

    #[test]
    fn handles_with_the_same_name_and_tags_share_a_series() {
        let registry = Registry::default();
        let a = registry.counter("hits", &[("route", "/a"), ("az", "z1")]);
        let b = registry.counter("hits", &[("az", "z1"), ("route", "/a")]);
        let other = registry.counter("hits", &[("route", "/b")]);
        a.inc();
        b.inc();
        other.inc();
        let mut sent = counters(&registry.pulse());
        sent.sort();
        assert_eq!(sent, vec![("hits".into(), 1, 1), ("hits".into(), 2, 2)]);
    }

    #[test]
    fn a_series_is_sent_a_last_time_then_forgotten_when_its_handles_are_gone() {
        let registry = Registry::default();
        let requests = registry.counter("requests", &[]);
        requests.add(7);
        drop(requests);
        assert_eq!(counters(&registry.pulse()), vec![("requests".into(), 7, 7)]);
        assert!(registry.is_empty());
    }

    #[test]
    fn a_counter_made_anew_each_time_keeps_its_running_total() {
        let registry = Registry::default();
        registry.counter("requests", &[]).add(4);
        assert_eq!(counters(&registry.pulse()), vec![("requests".into(), 4, 4)]);
        registry.counter("requests", &[]).add(2);
        assert_eq!(counters(&registry.pulse()), vec![("requests".into(), 2, 6)]);
    }

    #[test]
    fn gauges_of_a_pulse_share_one_envelope_and_keep_exact_values() {
        let registry = Registry::default();
        let memory = registry.gauge("memory", "bytes");
        let temperature = registry.gauge("temperature", "celsius");
        let _unset = registry.gauge("unset", "things");
        memory.set(1.5e8);
        temperature.set(-3.25);
        let sent = registry.pulse();
        assert_eq!(sent.len(), 1);
        let metrics = &sent[0].as_proto().gauge().metrics;
        assert_eq!(metrics.len(), 2);
        assert_eq!(
            (metrics["memory"].value, metrics["memory"].unit.as_str()),
            (1.5e8, "bytes")
        );
        assert_eq!(metrics["temperature"].value, -3.25);
    }
}
