//! Pulse metrics: counters and gauges updated lock-free on the caller's
//! thread, and the pulse thread that sends them (and process metrics) once
//! per interval.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, Ordering::Relaxed, fence};
use std::time::Instant;

use parking_lot::Mutex;

use crate::envelope::Envelope;
use crate::policy::Overflow;
use crate::queue::Queue;
use crate::self_metrics::SelfMetrics;
use crate::series::{Carried, CounterSeries};

#[cfg(test)]
mod tests;
mod thread;

pub(crate) use thread::{PulseCommand, start_thread};

/// A counter: `add` and `inc` are one atomic add on the caller's thread;
/// once per pulse interval the client sends what was added in the interval
/// as a delta with total 0. The agent keeps the running total itself, one
/// per name, source id and tags, and adds every sender's deltas to it, so
/// several processes (or instances, or a restarted process) counting the
/// same counter add up. An interval with nothing added sends nothing:
/// a counter with delta and total 0 would reset the agent's total.
///
/// A delta is never lost to a full queue, under any overflow policy: when
/// the queue refuses its envelope, or `DropOldest` evicts it before the
/// sender thread takes it, the delta goes out with the next pulse (the
/// envelope still counts in `dropped.queue_full`). A delta can be lost only
/// with an envelope the client counts lost anyway: at most once, one in
/// flight when the agent went away (see
/// [`Delivery::AtMostOnce`](crate::Delivery::AtMostOnce)); at close, one
/// close could not deliver before its timeout (`gave_up` or `closed`, or
/// `queue_full` if the last pulse found no room in time or an emit racing
/// close evicted it).
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

impl Counter {
    /// Adds `n` to the counter.
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// client.counter("bytes_sent").add(1024);
    /// ```
    pub fn add(&self, n: u64) {
        self.series.add(n);
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
        let series = counters
            .entry(key)
            .or_insert_with_key(|key| Arc::new(CounterSeries::new(key.0.clone(), key.1.clone())));
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

    /// The envelopes for one pulse: a counter per series that moved, with
    /// its delta and total 0 and the token that carries the delta back if
    /// the queue drops it, and one gauge envelope holding every gauge with a
    /// value. A series nobody holds any more is forgotten once nothing of
    /// it is pending or on its way (a token holds the series too).
    pub(crate) fn pulse(&self) -> Vec<(Envelope, Option<Carried>)> {
        let mut envelopes = Vec::new();
        self.counters.lock().retain(|_, series| {
            // No handle or token is left (none can be made while the lock
            // is held). Checked before reading, so an add or a give-back
            // made just before the last drop is seen.
            let orphaned = Arc::strong_count(series) == 1;
            fence(Ordering::Acquire);
            match series.take() {
                Some((envelope, carried)) => {
                    envelopes.push((envelope, Some(carried)));
                    true
                }
                None => !orphaned,
            }
        });
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
            envelopes.push((gauge.build(), None));
        }
        envelopes
    }

    /// True when no series is live.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.counters.lock().is_empty() && self.gauges.lock().is_empty()
    }
}

/// Something besides the pulse counters that reports with each pulse (the
/// `metrics` recorder): it hands over what it gathered and never touches
/// the queue itself, so its callers' threads never wait for room.
#[cfg(feature = "metrics")]
pub(crate) trait PulseSource: Send + Sync {
    /// The envelopes for one pulse, each counter with the token that carries
    /// its delta back if the queue drops it. `last`: close's pulse, after
    /// which this source is never asked again.
    fn report(&self, last: bool) -> Vec<(Envelope, Option<Carried>)>;

    /// Between pulses, at the interval asked with
    /// [`PulseCommand::Upkeep`]: work that bounds what the source holds.
    fn upkeep(&self);

    /// True once it has nothing more to report, ever (its owner is gone and
    /// its last deltas are delivered or counted): it leaves the pulse.
    fn finished(&self) -> bool;
}

/// The pulse's other sources, and whether the last pulse has asked them.
#[cfg(feature = "metrics")]
#[derive(Default)]
struct Sources {
    list: Vec<Arc<dyn PulseSource>>,
    asked_last: bool,
}

/// A pulse's envelopes on their way into the queue, and whether the last
/// pulse has been sent.
#[derive(Default)]
struct Sending {
    /// Gathered, not yet queued: the queue had no room for them yet.
    waiting: VecDeque<(Envelope, Option<Carried>)>,
    /// The client's own health is reported once the pulse's other
    /// envelopes are queued, so it counts them.
    report_self: bool,
    /// Set by the last pulse.
    over: bool,
}

impl Sending {
    fn is_waiting(&self) -> bool {
        !self.waiting.is_empty() || self.report_self
    }
}

/// Sends what the counters and gauges gathered, through the queue. Shared
/// by the pulse thread and `close`, which sends the last pulse: none
/// follows it, so no delta is lost to a pulse racing close.
///
/// A pulse larger than the queue (a thousand bucketed histograms make
/// thirteen thousand envelopes) waits on the pulse thread for room, as the
/// sender thread makes it, rather than lose its tail; it waits until the
/// next pulse at most, so what waits is never more than one pulse, and an
/// absent agent costs what it did before pulses waited: at each pulse, the
/// envelopes that find no room are dropped and counted (counter deltas
/// come back with the next).
pub(crate) struct Pulses {
    registry: Registry,
    queue: Arc<Queue>,
    /// The client's own health, when asked for (`self_metrics`).
    self_metrics: Option<Mutex<SelfMetrics>>,
    /// Apart from `sending`, which is held while a pulse waits for room:
    /// adding a source must not wait behind close's last pulse.
    #[cfg(feature = "metrics")]
    sources: Mutex<Sources>,
    sending: Mutex<Sending>,
    /// Set when close begins: the pulse thread stops waiting for room and
    /// lets close's last pulse take what still waits.
    closing: AtomicBool,
}

impl Pulses {
    pub(crate) fn new(queue: Arc<Queue>, self_metrics: Option<SelfMetrics>) -> Pulses {
        Pulses {
            registry: Registry::default(),
            queue,
            self_metrics: self_metrics.map(Mutex::new),
            #[cfg(feature = "metrics")]
            sources: Mutex::new(Sources::default()),
            sending: Mutex::new(Sending::default()),
            closing: AtomicBool::new(false),
        }
    }

    /// Adds a source to every later pulse; false once the last pulse has
    /// been sent, when it would never be asked.
    #[cfg(feature = "metrics")]
    pub(crate) fn add_source(&self, source: Arc<dyn PulseSource>) -> bool {
        let mut sources = self.sources.lock();
        if sources.asked_last {
            return false;
        }
        sources.list.push(source);
        true
    }

    /// The sources still asked at every pulse.
    #[cfg(all(test, feature = "metrics"))]
    pub(crate) fn source_count(&self) -> usize {
        self.sources.lock().list.len()
    }

    pub(crate) fn counter(&self, name: &str, tags: &[(&str, &str)]) -> Counter {
        self.registry.counter(name, tags)
    }

    pub(crate) fn gauge(&self, name: &str, unit: &str) -> Gauge {
        self.registry.gauge(name, unit)
    }

    /// Lets every source do its upkeep between pulses.
    fn upkeep(&self) {
        #[cfg(feature = "metrics")]
        for source in &self.sources.lock().list {
            source.upkeep();
        }
    }

    /// Sends one pulse, unless the last has been sent. `last`, the close's
    /// deadline, makes it the last. Otherwise (the pulse thread) it only
    /// gathers the pulse, which [`queue_waiting`](Self::queue_waiting)
    /// then queues.
    pub(crate) fn send(&self, last: Option<Instant>) {
        let Some(deadline) = last else {
            // The pulse thread does not wait behind close's last pulse,
            // which covers what it would have sent.
            let Some(mut sending) = self.sending.try_lock() else {
                return;
            };
            if sending.over {
                return;
            }
            if sending.is_waiting() {
                // The previous pulse found no room for a whole interval
                // (the agent is away, or slower than a pulse an interval):
                // what is left goes in as pulses did before they waited,
                // dropped and counted if there is still no room, a counter's
                // delta back in its series for the pulse gathered next.
                self.queue_without_waiting(&mut sending);
            }
            let report = self.gather(false);
            sending.waiting.extend(report);
            sending.report_self = true;
            return;
        };
        // The pulse thread lets go at once, whatever it waits for.
        self.closing.store(true, Ordering::SeqCst);
        self.queue.wake_waiters();
        let mut sending = self.sending.lock();
        if sending.over {
            return;
        }
        // The last pulse has no next one: it waits for room as long as
        // close may take, and close is on the caller's thread.
        let push = |(envelope, carried): (Envelope, Option<Carried>)| {
            let wait = deadline.saturating_duration_since(Instant::now());
            self.queue
                .push_carried(envelope, Overflow::BlockFor(wait), carried);
        };
        // What an earlier pulse has not queued yet goes first.
        std::mem::take(&mut sending.waiting)
            .into_iter()
            .for_each(push);
        self.gather(true).into_iter().for_each(push);
        if let Some(self_metrics) = &self.self_metrics {
            let report = self_metrics.lock().report(self.queue.stats(), true);
            report.into_iter().for_each(push);
        }
        sending.over = true;
    }

    /// Queues what a pulse gathered as the queue makes room, until `until`
    /// or close begins; what is left waits for the next call, or the next
    /// pulse.
    pub(crate) fn queue_waiting(&self, until: Instant) {
        let Some(mut sending) = self.sending.try_lock() else {
            return;
        };
        let keep_waiting = || !self.closing.load(Ordering::SeqCst);
        loop {
            while let Some((envelope, carried)) = sending.waiting.pop_front() {
                if !self.queue.wait_for_room_for(&envelope, until, keep_waiting) {
                    sending.waiting.push_front((envelope, carried));
                    return;
                }
                // An emitter may take the room first: the envelope is then
                // dropped and counted, its delta carried back.
                self.queue
                    .push_carried(envelope, Overflow::DropNewest, carried);
            }
            if !std::mem::take(&mut sending.report_self) {
                return;
            }
            if let Some(self_metrics) = &self.self_metrics {
                let report = self_metrics.lock().report(self.queue.stats(), false);
                sending.waiting.extend(report);
            }
        }
    }

    /// Queues what still waits, or drops and counts it, without waiting.
    fn queue_without_waiting(&self, sending: &mut Sending) {
        let push = |(envelope, carried): (Envelope, Option<Carried>)| {
            self.queue
                .push_carried(envelope, Overflow::DropNewest, carried);
        };
        std::mem::take(&mut sending.waiting)
            .into_iter()
            .for_each(push);
        if std::mem::take(&mut sending.report_self) {
            if let Some(self_metrics) = &self.self_metrics {
                let report = self_metrics.lock().report(self.queue.stats(), false);
                report.into_iter().for_each(push);
            }
        }
    }

    /// True while a pulse's envelopes wait for room.
    fn is_waiting(&self) -> bool {
        self.sending
            .try_lock()
            .is_some_and(|sending| sending.is_waiting())
    }

    /// One pulse's envelopes but the client's own health: the counters and
    /// gauges, and the sources'. Sources that have finished leave.
    fn gather(&self, last: bool) -> Vec<(Envelope, Option<Carried>)> {
        #[cfg_attr(not(feature = "metrics"), allow(unused_mut))]
        let mut envelopes = self.registry.pulse();
        #[cfg(feature = "metrics")]
        {
            let mut sources = self.sources.lock();
            sources.asked_last |= last;
            for source in &sources.list {
                envelopes.extend(source.report(last));
            }
            sources.list.retain(|source| !source.finished());
        }
        #[cfg(not(feature = "metrics"))]
        let _ = last;
        envelopes
    }
}
