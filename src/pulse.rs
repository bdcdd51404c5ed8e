//! Pulse metrics: counters and gauges updated lock-free on the caller's
//! thread, and the pulse thread that sends them (and process metrics) once
//! per interval.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, Ordering::Relaxed, fence};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, never, select, tick, unbounded};
use parking_lot::Mutex;

use crate::envelope::Envelope;
use crate::policy::Overflow;
use crate::process::ProcessMeter;
use crate::queue::Queue;
use crate::self_metrics::SelfMetrics;
use crate::series::{Carried, CounterSeries};

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
}

/// The pulse's other sources, and whether the last pulse has asked them.
#[cfg(feature = "metrics")]
#[derive(Default)]
struct Sources {
    list: Vec<Arc<dyn PulseSource>>,
    asked_last: bool,
}

/// Sends what the counters and gauges gathered, through the queue. Shared
/// by the pulse thread and `close`, which sends the last pulse: none
/// follows it, so no delta is lost to a pulse racing close.
pub(crate) struct Pulses {
    registry: Registry,
    queue: Arc<Queue>,
    /// The client's own health, when asked for (`self_metrics`).
    self_metrics: Option<Mutex<SelfMetrics>>,
    /// Apart from `over`, which is held while a pulse waits for room: adding
    /// a source must not wait behind close's last pulse.
    #[cfg(feature = "metrics")]
    sources: Mutex<Sources>,
    /// Set by the last pulse.
    over: Mutex<bool>,
}

impl Pulses {
    pub(crate) fn new(queue: Arc<Queue>, self_metrics: Option<SelfMetrics>) -> Pulses {
        Pulses {
            registry: Registry::default(),
            queue,
            self_metrics: self_metrics.map(Mutex::new),
            #[cfg(feature = "metrics")]
            sources: Mutex::new(Sources::default()),
            over: Mutex::new(false),
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
    /// deadline, makes it the last.
    pub(crate) fn send(&self, last: Option<Instant>) {
        // The pulse thread does not wait behind close's last pulse, which
        // covers what it would have sent.
        let over = match last {
            None => self.over.try_lock(),
            Some(_) => Some(self.over.lock()),
        };
        let Some(mut over) = over else {
            return;
        };
        if *over {
            return;
        }
        // The pulse thread never waits for room, whatever the overflow
        // policy: it must stay free to stop, and a delta the queue refuses
        // comes back for the next pulse. The last pulse has no next one: it
        // waits for room as long as close may take, and close is on the
        // caller's thread.
        let overflow = || match last {
            None => Overflow::DropNewest,
            Some(deadline) => {
                Overflow::BlockFor(deadline.saturating_duration_since(Instant::now()))
            }
        };
        for (envelope, carried) in self.registry.pulse() {
            self.queue.push_carried(envelope, overflow(), carried);
        }
        #[cfg(feature = "metrics")]
        {
            // Gathered under the lock, queued after it: the last pulse may
            // wait for room.
            let reports: Vec<_> = {
                let mut sources = self.sources.lock();
                sources.asked_last |= last.is_some();
                let last = last.is_some();
                sources
                    .list
                    .iter()
                    .flat_map(|source| source.report(last))
                    .collect()
            };
            for (envelope, carried) in reports {
                self.queue.push_carried(envelope, overflow(), carried);
            }
        }
        if let Some(self_metrics) = &self.self_metrics {
            let report = self_metrics
                .lock()
                .report(self.queue.stats(), last.is_some());
            for (envelope, carried) in report {
                self.queue.push_carried(envelope, overflow(), carried);
            }
        }
        *over = last.is_some();
    }
}

/// Requests to the pulse thread.
pub(crate) enum PulseCommand {
    /// Also send process metrics, this often.
    ProcessMetrics(Duration),
    /// Also let the sources do their upkeep, this often.
    #[cfg(feature = "metrics")]
    Upkeep(Duration),
}

/// Starts the pulse thread: it sends a pulse every `interval` and, once
/// asked, process metrics, until `closing` disconnects. It holds the queue,
/// never a client handle, so the last handle is always dropped (and the
/// client closed) on the caller's thread.
pub(crate) fn start_thread(
    pulses: Arc<Pulses>,
    closing: Receiver<()>,
    interval: Duration,
) -> std::io::Result<Sender<PulseCommand>> {
    let (commands, received) = unbounded();
    std::thread::Builder::new()
        .name(format!("{}pulse", crate::THREAD_PREFIX))
        .spawn(move || {
            crate::mark_own_thread();
            run(&pulses, &received, &closing, interval)
        })?;
    Ok(commands)
}

fn run(
    pulses: &Pulses,
    commands: &Receiver<PulseCommand>,
    closing: &Receiver<()>,
    interval: Duration,
) {
    let pulse = tick(interval);
    let mut process: Option<(Receiver<Instant>, ProcessMeter)> = None;
    // Only the metrics recorder asks for upkeep.
    #[cfg_attr(not(feature = "metrics"), allow(unused_mut))]
    let mut upkeep_due: Receiver<Instant> = never();
    loop {
        let process_due = process.as_ref().map_or_else(never, |(due, _)| due.clone());
        select! {
            recv(closing) -> _ => return,
            recv(commands) -> command => match command {
                Ok(PulseCommand::ProcessMetrics(interval)) => {
                    process = Some((tick(interval), ProcessMeter::new()));
                }
                #[cfg(feature = "metrics")]
                Ok(PulseCommand::Upkeep(interval)) => upkeep_due = tick(interval),
                Err(_) => return,
            },
            recv(pulse) -> _ => pulses.send(None),
            recv(upkeep_due) -> _ => pulses.upkeep(),
            recv(process_due) -> _ => {
                if let Some(envelope) = process.as_mut().and_then(|(_, meter)| meter.read()) {
                    pulses.queue.push(envelope, Overflow::DropNewest);
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::series::all_taken as sent;

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
    fn a_counter_sends_its_interval_delta_with_total_0_and_nothing_when_idle() {
        let registry = Registry::default();
        let requests = registry.counter("requests", &[]);
        requests.add(3);
        requests.inc();
        assert_eq!(
            counters(&sent(registry.pulse())),
            vec![("requests".into(), 4, 0)]
        );
        assert!(
            sent(registry.pulse()).is_empty(),
            "an idle interval sends nothing"
        );
        requests.add(2);
        assert_eq!(
            counters(&sent(registry.pulse())),
            vec![("requests".into(), 2, 0)]
        );
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
        let mut pulsed = counters(&sent(registry.pulse()));
        pulsed.sort();
        assert_eq!(pulsed, vec![("hits".into(), 1, 0), ("hits".into(), 2, 0)]);
    }

    #[test]
    fn a_series_is_sent_a_last_time_then_forgotten_when_its_handles_are_gone() {
        let registry = Registry::default();
        let requests = registry.counter("requests", &[]);
        requests.add(7);
        drop(requests);
        assert_eq!(
            counters(&sent(registry.pulse())),
            vec![("requests".into(), 7, 0)]
        );
        assert!(sent(registry.pulse()).is_empty());
        assert!(registry.is_empty());
    }

    #[test]
    fn a_delta_the_queue_drops_goes_out_with_the_next_pulse() {
        let registry = Registry::default();
        let requests = registry.counter("requests", &[]);
        requests.add(3);
        drop(registry.pulse());
        requests.add(2);
        assert_eq!(
            counters(&sent(registry.pulse())),
            vec![("requests".into(), 5, 0)]
        );
    }

    #[test]
    fn a_series_is_kept_while_a_delta_of_it_may_come_back() {
        let registry = Registry::default();
        let requests = registry.counter("requests", &[]);
        requests.add(4);
        drop(requests);
        let queued = registry.pulse();
        assert!(sent(registry.pulse()).is_empty());
        assert!(!registry.is_empty(), "its delta is still in the queue");
        drop(queued);
        assert_eq!(
            counters(&sent(registry.pulse())),
            vec![("requests".into(), 4, 0)]
        );
        assert!(sent(registry.pulse()).is_empty());
        assert!(registry.is_empty());
    }

    #[test]
    fn a_counter_made_anew_each_time_sends_each_delta() {
        let registry = Registry::default();
        registry.counter("requests", &[]).add(4);
        assert_eq!(
            counters(&sent(registry.pulse())),
            vec![("requests".into(), 4, 0)]
        );
        registry.counter("requests", &[]).add(2);
        assert_eq!(
            counters(&sent(registry.pulse())),
            vec![("requests".into(), 2, 0)]
        );
    }

    #[test]
    fn gauges_of_a_pulse_share_one_envelope_and_keep_exact_values() {
        let registry = Registry::default();
        let memory = registry.gauge("memory", "bytes");
        let temperature = registry.gauge("temperature", "celsius");
        let _unset = registry.gauge("unset", "things");
        memory.set(1.5e8);
        temperature.set(-3.25);
        let gauges = sent(registry.pulse());
        assert_eq!(gauges.len(), 1);
        let metrics = &gauges[0].as_proto().gauge().metrics;
        assert_eq!(metrics.len(), 2);
        assert_eq!(
            (metrics["memory"].value, metrics["memory"].unit.as_str()),
            (1.5e8, "bytes")
        );
        assert_eq!(metrics["temperature"].value, -3.25);
    }
}
