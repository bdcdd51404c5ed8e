//! A recorder for the `metrics` facade (feature `metrics`): what programs
//! record with `counter!`, `gauge!` and `histogram!` goes out with each
//! pulse, in the shapes Cloud Foundry's prom-scraper gives Prometheus
//! metrics, so dashboards and nozzles see what they already know.
//!
//! Recording costs what the facade's own building blocks cost
//! (metrics-util's sharded registry to find a series, then an atomic add,
//! a store, or a push into a lock-free bucket): nothing on the caller's
//! thread builds an envelope or touches the queue. The pulse does that, on
//! the pulse thread (and on the closing thread for the last one), and
//! hands each counter delta to the queue with the token that carries it
//! back if the queue drops it.

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use metrics_util::registry::{Registry, Storage};
use metrics_util::storage::{AtomicBucket, Summary};
use parking_lot::Mutex;

use crate::client::IngressClient;
use crate::envelope::{Envelope, EnvelopeBuilder, GaugeEnvelope};
use crate::error::{Error, Result};
use crate::pulse::PulseSource;
use crate::series::{Carried, CounterSeries};
use crate::stats::Counters;

/// The quantiles a histogram reports by default, as Gauges tagged
/// `quantile` "0.5", "0.9" and "0.99".
///
/// ```
/// assert_eq!(loggregator::DEFAULT_QUANTILES, [0.5, 0.9, 0.99]);
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub const DEFAULT_QUANTILES: [f64; 3] = [0.5, 0.9, 0.99];

/// How long a series nobody holds a handle to may go untouched before it
/// stops being sent and is forgotten: 5 minutes, thirty pulses at the
/// default 10 s interval. Long enough that a gauge set by a job every
/// minute or two keeps its value on dashboards and an `absolute` counter
/// updated every few minutes keeps its last value (a forgotten one counts
/// its next value in full, as after a restart); short enough that series
/// named by ever-changing labels (a request id, a connection) leave within
/// minutes.
///
/// ```
/// assert_eq!(loggregator::DEFAULT_IDLE_TIMEOUT.as_secs(), 300);
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// The most live series by default: 1,000. A pulse sends at most one
/// counter per counter series, one gauge envelope per label set, and for a
/// histogram its count, its sum and one envelope per quantile (or bucket),
/// so 1,000 series stay well within the default queue
/// ([`DEFAULT_QUEUE_CAPACITY`](crate::DEFAULT_QUEUE_CAPACITY), 10,000) and
/// the agent's 10,000-envelope ring, beside the program's own logs.
///
/// ```
/// assert_eq!(loggregator::DEFAULT_MAX_SERIES, 1_000);
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub const DEFAULT_MAX_SERIES: usize = 1_000;

/// How often the values recorded on histograms are folded into their
/// interval's count, sum and buckets or sketch, between pulses: a histogram
/// holds at most about this long's values, whatever the pulse interval.
const FOLD_INTERVAL: Duration = Duration::from_secs(1);

/// The most metrics one Gauge envelope carries: a label set shared by more
/// gauges is sent in several envelopes, so none grows past what one batch
/// may hold.
const MAX_GAUGES_PER_ENVELOPE: usize = 500;

/// Sends what the `metrics` facade records (`counter!`, `gauge!`,
/// `histogram!`) through an [`IngressClient`], every `pulse_interval` and
/// once more when the client closes.
///
/// What each call becomes at the agent:
///
/// - **Counters**: one Counter envelope per series that moved in the
///   interval, with the interval's delta and total 0, exactly as
///   [`Counter`](crate::Counter)s do, so every process counting the same
///   name, tags and source adds up at the agent. `increment(n)` adds `n`;
///   `absolute(v)` adds the rise since the series' last absolute value (its
///   first counts in full), and a fall means the source restarted, so it
///   adds `v`. A counter that did not move sends nothing. A delta the queue
///   refuses or evicts, whatever the overflow policy, goes out with the next
///   pulse, as for pulse counters.
/// - **Gauges**: `set`, `increment` and `decrement` keep a value; every
///   interval, the gauges that share a label set go out in one Gauge
///   envelope (up to 500 metrics each), with the unit given to
///   `describe_gauge!` (the facade's [`Unit`] names: `bytes`, `seconds`,
///   `percent`, `count`, ...; none is an empty unit). A gauge is sent every
///   interval from its first value while it is live (see idle series below).
/// - **Histograms**, under the names prom-scraper gives Prometheus
///   histograms and summaries: `<name>_count`, a Counter with the number of
///   values recorded in the interval (carried like any counter delta);
///   `<name>_sum`, a Gauge with the running sum of every value recorded
///   since the series began, sent every interval while live; and either
///   - by default a summary: one Gauge `<name>` per quantile
///     ([`DEFAULT_QUANTILES`], set with [`quantiles`](Self::quantiles)),
///     tagged `quantile` (`"0.5"`), **over the values recorded in the
///     interval** (since the previous pulse), estimated by metrics-util's
///     DDSketch-based `Summary` within 0.5% relative error; an interval
///     with no values sends no quantiles;
///   - or, with [`buckets`](Self::buckets) (or
///     [`buckets_for_prefix`](Self::buckets_for_prefix)), Counters
///     `<name>_bucket` tagged `le` with each bound and `"+Inf"`,
///     cumulative as Prometheus buckets are, with the interval's deltas.
///
///   `describe_histogram!`'s unit goes on the sum and quantile gauges.
///   NaN values are ignored: they would poison the running sum for good.
///
/// Labels become tags, except `source_id` and `instance_id`, which set the
/// envelope's source and instance ids as prom-scraper does; the client's
/// tags and default source then apply as to any envelope. Descriptions
/// have no field on the wire: units are kept, text dropped.
///
/// **Idle series and the cap.** A series nobody holds a handle to and
/// untouched for [`idle_timeout`](Self::idle_timeout) (default
/// [`DEFAULT_IDLE_TIMEOUT`], 5 minutes, checked at each pulse) stops being
/// sent and is forgotten, so a program with ever-changing labels does not
/// grow for ever; a handle kept by the caller (`let c = counter!("x")`)
/// keeps its series live. At most [`max_series`](Self::max_series)
/// (default [`DEFAULT_MAX_SERIES`]) series are live at once: beyond it a
/// new series is not kept, what is recorded on it is not sent, and every
/// such registration counts in
/// [`Stats::series_dropped`](crate::Stats::series_dropped). A histogram
/// holds the values recorded on it for about a second at most (8 bytes
/// each): the pulse thread folds them into the interval's count, sum and
/// buckets or sketch (at most 32 KiB) every second.
///
/// **Never waits, never loops.** Recording never waits for room in the
/// queue, whatever the client's overflow policy: it never touches the
/// queue. Nothing recorded on the client's own threads is kept (no feedback
/// loop), and once the client has sent its last pulse nothing more is.
///
/// Holding the client, an installed recorder keeps it open: close it
/// yourself at exit ([`IngressClient::close`]), which sends the last pulse.
///
/// ```no_run
/// # let client: loggregator::IngressClient = unimplemented!();
/// loggregator::MetricsRecorder::new(client.clone()).install()?;
/// metrics::counter!("requests", "route" => "/v2/apps").increment(1);
/// metrics::describe_gauge!("queue_bytes", metrics::Unit::Bytes, "bytes waiting");
/// metrics::gauge!("queue_bytes").set(4096.0);
/// metrics::histogram!("latency_seconds").record(0.012);
/// client.close(std::time::Duration::from_secs(5))?;
/// # Ok::<(), loggregator::Error>(())
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub struct MetricsRecorder {
    client: IngressClient,
    settings: Settings,
    /// Made at the first registration, when the settings are final.
    state: OnceLock<Arc<State>>,
}

/// The options, as given and normalized.
#[derive(Clone, Debug)]
struct Settings {
    quantiles: Vec<f64>,
    /// Bucket bounds for every histogram; `None`: summaries.
    buckets: Option<Vec<f64>>,
    /// Bounds for the histograms whose names start with a prefix; the
    /// longest matching prefix wins.
    prefix_buckets: Vec<(String, Vec<f64>)>,
    idle_timeout: Duration,
    max_series: usize,
}

impl Settings {
    fn buckets_for(&self, name: &str) -> Option<&[f64]> {
        self.prefix_buckets
            .iter()
            .filter(|(prefix, _)| name.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, bounds)| bounds.as_slice())
            .or(self.buckets.as_deref())
    }
}

/// Sorted, without NaN, infinities (`+Inf` is always sent) or repeats.
fn normalized_bounds(bounds: &[f64]) -> Vec<f64> {
    let mut bounds: Vec<f64> = bounds.iter().copied().filter(|b| b.is_finite()).collect();
    bounds.sort_by(f64::total_cmp);
    bounds.dedup();
    bounds
}

impl MetricsRecorder {
    /// A recorder sending through `client`, with the default options.
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// let recorder = loggregator::MetricsRecorder::new(client);
    /// ```
    pub fn new(client: IngressClient) -> MetricsRecorder {
        MetricsRecorder {
            client,
            settings: Settings {
                quantiles: DEFAULT_QUANTILES.to_vec(),
                buckets: None,
                prefix_buckets: Vec::new(),
                idle_timeout: DEFAULT_IDLE_TIMEOUT,
                max_series: DEFAULT_MAX_SERIES,
            },
            state: OnceLock::new(),
        }
    }

    /// The quantiles a histogram without buckets reports (default
    /// [`DEFAULT_QUANTILES`]): values are clamped to `0.0..=1.0` (0 is the
    /// interval's minimum, 1 its maximum), NaN and repeats ignored; none
    /// sends only `<name>_count` and `<name>_sum`.
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// let recorder = loggregator::MetricsRecorder::new(client).quantiles(&[0.5, 0.95, 0.999]);
    /// ```
    pub fn quantiles(mut self, quantiles: &[f64]) -> MetricsRecorder {
        let mut kept: Vec<f64> = Vec::new();
        for q in quantiles.iter().filter(|q| !q.is_nan()) {
            let q = q.clamp(0.0, 1.0);
            if !kept.contains(&q) {
                kept.push(q);
            }
        }
        self.settings.quantiles = kept;
        self
    }

    /// Every histogram reports `<name>_bucket` counters with these upper
    /// bounds (and `+Inf`) instead of quantiles. Bounds are sorted; NaN,
    /// infinite and repeated ones are ignored.
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// let recorder = loggregator::MetricsRecorder::new(client)
    ///     .buckets(&[0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]);
    /// ```
    pub fn buckets(mut self, bounds: &[f64]) -> MetricsRecorder {
        self.settings.buckets = Some(normalized_bounds(bounds));
        self
    }

    /// Histograms whose names start with `prefix` report buckets with these
    /// bounds; the longest matching prefix wins over shorter ones and over
    /// [`buckets`](Self::buckets).
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// let recorder = loggregator::MetricsRecorder::new(client)
    ///     .buckets_for_prefix("http_", &[0.01, 0.1, 1.0])
    ///     .buckets_for_prefix("payload_bytes", &[1024.0, 65536.0, 1048576.0]);
    /// ```
    pub fn buckets_for_prefix(mut self, prefix: &str, bounds: &[f64]) -> MetricsRecorder {
        let bounds = normalized_bounds(bounds);
        self.settings.prefix_buckets.retain(|(p, _)| p != prefix);
        self.settings
            .prefix_buckets
            .push((prefix.to_string(), bounds));
        self
    }

    /// How long a series nobody holds may go untouched before it stops
    /// being sent and is forgotten (default [`DEFAULT_IDLE_TIMEOUT`], 5
    /// minutes); checked at each pulse, so a series goes at the first pulse
    /// this long after its last update.
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// let recorder = loggregator::MetricsRecorder::new(client)
    ///     .idle_timeout(std::time::Duration::from_secs(60));
    /// ```
    pub fn idle_timeout(mut self, timeout: Duration) -> MetricsRecorder {
        self.settings.idle_timeout = timeout;
        self
    }

    /// The most series live at once (default [`DEFAULT_MAX_SERIES`]):
    /// counters, gauges and histograms together. Registrations of new
    /// series beyond it are refused and counted in
    /// [`Stats::series_dropped`](crate::Stats::series_dropped).
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// let recorder = loggregator::MetricsRecorder::new(client).max_series(5_000);
    /// ```
    pub fn max_series(mut self, max: usize) -> MetricsRecorder {
        self.settings.max_series = max;
        self
    }

    /// Installs the recorder as the `metrics` facade's global recorder.
    /// Returns [`Error::RecorderAlreadySet`] when one is installed already
    /// (the facade takes one per process); what is recorded before this
    /// call is lost, as with any recorder.
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// loggregator::MetricsRecorder::new(client).install()?;
    /// # Ok::<(), loggregator::Error>(())
    /// ```
    pub fn install(self) -> Result<()> {
        metrics::set_global_recorder(self).map_err(|_| Error::RecorderAlreadySet)
    }

    /// The state behind every series, made once: it joins the client's
    /// pulses then.
    fn state(&self) -> &Arc<State> {
        self.state.get_or_init(|| {
            let state = Arc::new(State::new(self.settings.clone(), self.client.counters()));
            if !self.client.add_pulse_source(state.clone(), FOLD_INTERVAL) {
                state.closed.store(true, Relaxed);
            }
            state
        })
    }

    /// The state, unless nothing should be recorded now: on the client's own
    /// threads, or once the client has sent its last pulse.
    fn recording(&self) -> Option<&State> {
        if crate::on_own_thread() {
            return None;
        }
        let state = self.state();
        (!state.closed.load(Relaxed)).then_some(&**state)
    }
}

impl fmt::Debug for MetricsRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsRecorder")
            .field("client", &self.client)
            .field("settings", &self.settings)
            .field(
                "live_series",
                &self.state.get().map(|s| s.live.load(Relaxed)),
            )
            .finish()
    }
}

impl Recorder for MetricsRecorder {
    fn describe_counter(&self, _key: KeyName, _unit: Option<Unit>, _description: SharedString) {
        // A Counter envelope has no unit, and no envelope a description.
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, _description: SharedString) {
        if let (Some(state), Some(unit)) = (self.recording(), unit) {
            state.describe(key, unit);
        }
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, _description: SharedString) {
        if let (Some(state), Some(unit)) = (self.recording(), unit) {
            state.describe(key, unit);
        }
    }

    fn register_counter(&self, key: &Key, _metadata: &Metadata<'_>) -> Counter {
        let Some(state) = self.recording() else {
            return Counter::noop();
        };
        if let Some(cell) = state.registry.get_counter(key) {
            return Counter::from_arc(cell);
        }
        state
            .admit(|| state.registry.get_or_create_counter(key, Arc::clone))
            .map_or_else(Counter::noop, Counter::from_arc)
    }

    fn register_gauge(&self, key: &Key, _metadata: &Metadata<'_>) -> Gauge {
        let Some(state) = self.recording() else {
            return Gauge::noop();
        };
        if let Some(cell) = state.registry.get_gauge(key) {
            return Gauge::from_arc(cell);
        }
        state
            .admit(|| state.registry.get_or_create_gauge(key, Arc::clone))
            .map_or_else(Gauge::noop, Gauge::from_arc)
    }

    fn register_histogram(&self, key: &Key, _metadata: &Metadata<'_>) -> Histogram {
        let Some(state) = self.recording() else {
            return Histogram::noop();
        };
        if let Some(cell) = state.registry.get_histogram(key) {
            return Histogram::from_arc(cell);
        }
        state
            .admit(|| state.registry.get_or_create_histogram(key, Arc::clone))
            .map_or_else(Histogram::noop, Histogram::from_arc)
    }
}

thread_local! {
    /// Set by the storage when it makes a series on this thread: the
    /// registry does not say whether `get_or_create` found or made one,
    /// and the cap must count only what was made.
    static MADE_SERIES: Cell<bool> = const { Cell::new(false) };
}

/// A series' labels as its envelopes carry them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct LabelSet {
    /// Sorted by key; of repeated keys the last wins, as in an envelope.
    tags: Vec<(String, String)>,
    source_id: Option<String>,
    instance_id: Option<String>,
}

impl LabelSet {
    fn of(key: &Key) -> LabelSet {
        let mut labels = LabelSet {
            tags: Vec::new(),
            source_id: None,
            instance_id: None,
        };
        for label in key.labels() {
            match label.key() {
                "source_id" => labels.source_id = Some(label.value().to_string()),
                "instance_id" => labels.instance_id = Some(label.value().to_string()),
                name => {
                    labels.tags.retain(|(k, _)| k != name);
                    labels
                        .tags
                        .push((name.to_string(), label.value().to_string()));
                }
            }
        }
        labels.tags.sort();
        labels
    }

    fn with_tag(&self, key: &str, value: String) -> LabelSet {
        let mut labels = self.clone();
        labels.tags.retain(|(k, _)| k != key);
        labels.tags.push((key.to_string(), value));
        labels.tags.sort();
        labels
    }

    fn counter_series(&self, name: String) -> Arc<CounterSeries> {
        Arc::new(
            CounterSeries::new(name, self.tags.clone())
                .with_source(self.source_id.clone(), self.instance_id.clone()),
        )
    }

    fn stamp<K>(&self, mut builder: EnvelopeBuilder<K>) -> EnvelopeBuilder<K> {
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

/// What only the pulse reads and writes about a series.
#[derive(Debug)]
struct PulseSide {
    /// The last pulse that saw it move (or when it was made).
    active_at: Instant,
    /// A gauge has been set, or a histogram recorded on, at least once.
    valued: bool,
    /// A histogram's running sum.
    sum: f64,
    /// A histogram's values of this interval folded so far.
    folded: Option<Folded>,
}

impl PulseSide {
    fn new() -> Mutex<PulseSide> {
        Mutex::new(PulseSide {
            active_at: Instant::now(),
            valued: false,
            sum: 0.0,
            folded: None,
        })
    }
}

/// A counter series: its delta waits in a [`CounterSeries`], which the
/// queue's tokens hold and give deltas back to.
#[derive(Debug)]
struct CounterCell {
    series: Arc<CounterSeries>,
    last_absolute: AtomicU64,
    /// `absolute` was called (an unchanged value still keeps it live).
    touched: AtomicBool,
    pulse: Mutex<PulseSide>,
}

impl CounterFn for CounterCell {
    fn increment(&self, value: u64) {
        self.series.add(value);
    }

    fn absolute(&self, value: u64) {
        let before = self.last_absolute.swap(value, Relaxed);
        // A fall: the source restarted from 0 and has counted `value` since.
        self.series.add(value.checked_sub(before).unwrap_or(value));
        self.touched.store(true, Relaxed);
    }
}

/// A gauge series: its value, and whether anything touched it.
#[derive(Debug)]
struct GaugeCell {
    bits: AtomicU64,
    touched: AtomicBool,
    name: String,
    labels: Arc<LabelSet>,
    pulse: Mutex<PulseSide>,
}

impl GaugeCell {
    fn change(&self, by: f64) {
        let _ = self.bits.fetch_update(Relaxed, Relaxed, |bits| {
            Some((f64::from_bits(bits) + by).to_bits())
        });
        self.touched.store(true, Relaxed);
    }
}

impl GaugeFn for GaugeCell {
    fn increment(&self, value: f64) {
        self.change(value);
    }

    fn decrement(&self, value: f64) {
        self.change(-value);
    }

    fn set(&self, value: f64) {
        self.bits.store(value.to_bits(), Relaxed);
        self.touched.store(true, Relaxed);
    }
}

/// A histogram series: the values recorded since the last pulse, and the
/// counters its count and buckets go out through.
#[derive(Debug)]
struct HistogramCell {
    values: AtomicBucket<f64>,
    /// Set by the last pulse: a handle kept past close must not grow the
    /// bucket for ever.
    retired: AtomicBool,
    name: String,
    sum_name: String,
    labels: Arc<LabelSet>,
    count: Arc<CounterSeries>,
    /// Upper bounds and their `<name>_bucket` counters, `+Inf` last;
    /// empty for a summary.
    buckets: Vec<(f64, Arc<CounterSeries>)>,
    /// Each quantile and the label set of its gauge.
    quantiles: Vec<(f64, Arc<LabelSet>)>,
    pulse: Mutex<PulseSide>,
}

impl HistogramFn for HistogramCell {
    fn record(&self, value: f64) {
        if !self.retired.load(Relaxed) {
            self.values.push(value);
        }
    }
}

impl HistogramCell {
    /// Whether a delta of its count or buckets is pending or in the queue.
    fn counting(&self) -> bool {
        std::iter::once(&self.count)
            .chain(self.buckets.iter().map(|(_, series)| series))
            .any(|series| Arc::strong_count(series) > 1 || !series.is_idle())
    }
}

/// Makes the series the registry asks for.
struct SeriesStorage {
    settings: Settings,
}

impl Storage<Key> for SeriesStorage {
    type Counter = Arc<CounterCell>;
    type Gauge = Arc<GaugeCell>;
    type Histogram = Arc<HistogramCell>;

    fn counter(&self, key: &Key) -> Arc<CounterCell> {
        MADE_SERIES.with(|made| made.set(true));
        Arc::new(CounterCell {
            series: LabelSet::of(key).counter_series(key.name().to_string()),
            last_absolute: AtomicU64::new(0),
            touched: AtomicBool::new(false),
            pulse: PulseSide::new(),
        })
    }

    fn gauge(&self, key: &Key) -> Arc<GaugeCell> {
        MADE_SERIES.with(|made| made.set(true));
        Arc::new(GaugeCell {
            bits: AtomicU64::new(0f64.to_bits()),
            touched: AtomicBool::new(false),
            name: key.name().to_string(),
            labels: Arc::new(LabelSet::of(key)),
            pulse: PulseSide::new(),
        })
    }

    fn histogram(&self, key: &Key) -> Arc<HistogramCell> {
        MADE_SERIES.with(|made| made.set(true));
        let name = key.name();
        let labels = LabelSet::of(key);
        let bounds = self.settings.buckets_for(name);
        let buckets = bounds
            .map(|bounds| {
                let bucket = |le: String| {
                    Arc::new(
                        CounterSeries::new(
                            format!("{name}_bucket"),
                            labels.with_tag("le", le).tags,
                        )
                        .with_source(labels.source_id.clone(), labels.instance_id.clone()),
                    )
                };
                bounds
                    .iter()
                    .map(|&bound| (bound, bucket(bound.to_string())))
                    .chain(std::iter::once((f64::INFINITY, bucket("+Inf".into()))))
                    .collect()
            })
            .unwrap_or_default();
        let quantiles = match bounds {
            Some(_) => Vec::new(),
            None => self
                .settings
                .quantiles
                .iter()
                .map(|&q| (q, Arc::new(labels.with_tag("quantile", q.to_string()))))
                .collect(),
        };
        Arc::new(HistogramCell {
            values: AtomicBucket::new(),
            retired: AtomicBool::new(false),
            name: name.to_string(),
            sum_name: format!("{name}_sum"),
            count: labels.counter_series(format!("{name}_count")),
            buckets,
            quantiles,
            labels: Arc::new(labels),
            pulse: PulseSide::new(),
        })
    }
}

/// Every series, and what the recorder counts; shared by the recorder (its
/// callers register series) and the client's pulses (which report them).
struct State {
    registry: Registry<Key, SeriesStorage>,
    /// Units from `describe_gauge!` and `describe_histogram!`, by name.
    units: Mutex<HashMap<String, Unit>>,
    /// Series in the registry, or reserved by a registration making one.
    live: AtomicUsize,
    counters: Arc<Counters>,
    /// Set by the last pulse.
    closed: AtomicBool,
    idle_timeout: Duration,
    max_series: usize,
}

impl State {
    fn new(settings: Settings, counters: Arc<Counters>) -> State {
        State {
            idle_timeout: settings.idle_timeout,
            max_series: settings.max_series,
            registry: Registry::new(SeriesStorage { settings }),
            units: Mutex::new(HashMap::new()),
            live: AtomicUsize::new(0),
            counters,
            closed: AtomicBool::new(false),
        }
    }

    fn describe(&self, key: KeyName, unit: Unit) {
        let mut units = self.units.lock();
        // Bounded like the series: names may come from data too.
        if units.len() < self.max_series || units.contains_key(key.as_str()) {
            units.insert(key.as_str().to_string(), unit);
        }
    }

    /// Runs `create` (a registry's `get_or_create`) if a series may be made,
    /// and counts the refusal otherwise. The slot is taken before and given
    /// back if another thread made the series first, so the cap is exact
    /// however many threads register at once.
    fn admit<T>(&self, create: impl FnOnce() -> T) -> Option<T> {
        let reserved = self
            .live
            .fetch_update(Relaxed, Relaxed, |live| {
                (live < self.max_series).then_some(live + 1)
            })
            .is_ok();
        if !reserved {
            self.counters.series_dropped.fetch_add(1, Relaxed);
            return None;
        }
        MADE_SERIES.with(|made| made.set(false));
        let series = create();
        if !MADE_SERIES.with(|made| made.replace(false)) {
            self.live.fetch_sub(1, Relaxed);
        }
        Some(series)
    }

    fn idle(&self, pulse: &PulseSide, now: Instant) -> bool {
        now.saturating_duration_since(pulse.active_at) >= self.idle_timeout
    }

    fn unit_of(units: &HashMap<String, Unit>, name: &str) -> &'static str {
        units.get(name).map_or("", Unit::as_str)
    }

    /// One pulse's envelopes; see [`MetricsRecorder`] for what each series
    /// sends. Reads under the registry's read locks; takes its write locks
    /// only when some series may be forgotten.
    fn gather(&self, last: bool) -> Vec<(Envelope, Option<Carried>)> {
        let now = Instant::now();
        let units = self.units.lock().clone();
        let mut envelopes: Vec<(Envelope, Option<Carried>)> = Vec::new();
        let mut gauges = Gauges::default();
        let mut forgettable = false;

        self.registry.visit_counters(|_, cell| {
            let mut pulse = cell.pulse.lock();
            let mut moved = cell.touched.swap(false, Relaxed);
            if let Some((envelope, carried)) = cell.series.take() {
                envelopes.push((envelope, Some(carried)));
                moved = true;
            }
            if moved {
                pulse.active_at = now;
            }
            forgettable |= Arc::strong_count(cell) == 1 && self.idle(&pulse, now);
        });

        self.registry.visit_gauges(|_, cell| {
            let mut pulse = cell.pulse.lock();
            if cell.touched.swap(false, Relaxed) {
                pulse.active_at = now;
                pulse.valued = true;
            }
            let held = Arc::strong_count(cell) > 1;
            let idle = self.idle(&pulse, now);
            if pulse.valued && (held || !idle) {
                let value = f64::from_bits(cell.bits.load(Relaxed));
                let unit = Self::unit_of(&units, &cell.name);
                gauges.add(&cell.labels, &cell.name, value, unit);
            }
            forgettable |= !held && idle;
        });

        self.registry.visit_histograms(|_, cell| {
            let mut pulse = cell.pulse.lock();
            let mut drained = pulse.folded.take().unwrap_or_else(|| Folded::new(cell));
            drained.fold(cell);
            if drained.count > 0 {
                pulse.active_at = now;
                pulse.valued = true;
                pulse.sum += drained.sum;
                cell.count.add(drained.count);
                for ((_, series), count) in cell.buckets.iter().zip(drained.cumulative()) {
                    series.add(count);
                }
            }
            let counts = std::iter::once(&cell.count).chain(cell.buckets.iter().map(|(_, s)| s));
            for series in counts {
                if let Some((envelope, carried)) = series.take() {
                    envelopes.push((envelope, Some(carried)));
                }
            }
            let held = Arc::strong_count(cell) > 1;
            let idle = self.idle(&pulse, now);
            let unit = Self::unit_of(&units, &cell.name);
            if pulse.valued && (held || !idle) {
                gauges.add(&cell.labels, &cell.sum_name, pulse.sum, unit);
            }
            if let Some(summary) = &drained.summary {
                for (q, labels) in &cell.quantiles {
                    if let Some(value) = summary.quantile(*q) {
                        gauges.add(labels, &cell.name, value, unit);
                    }
                }
            }
            if last {
                cell.retired.store(true, Relaxed);
            }
            forgettable |= !held && idle;
        });

        envelopes.extend(gauges.into_envelopes().map(|envelope| (envelope, None)));
        if last {
            self.closed.store(true, Relaxed);
            // Nothing is recorded or reported any more: an installed
            // recorder outlives its client.
            self.registry.clear();
            return envelopes;
        }
        if forgettable {
            self.forget_idle(now);
        }
        envelopes
    }

    /// Forgets the series nobody holds that are idle with nothing pending.
    /// Under the registry's write lock no handle can be made, so one found
    /// unheld stays unheld while it goes.
    /// Folds every histogram's values since the last fold, between pulses.
    fn fold_histograms(&self) {
        self.registry.visit_histograms(|_, cell| {
            let mut pulse = cell.pulse.lock();
            pulse
                .folded
                .get_or_insert_with(|| Folded::new(cell))
                .fold(cell);
        });
    }

    fn forget_idle(&self, now: Instant) {
        let forgotten = AtomicUsize::new(0);
        let forget = |keep: bool| {
            if !keep {
                forgotten.fetch_add(1, Relaxed);
            }
            keep
        };
        self.registry.retain_counters(|_, cell| {
            let idle = Arc::strong_count(cell) == 1
                && Arc::strong_count(&cell.series) == 1
                && cell.series.is_idle()
                && !cell.touched.load(Relaxed)
                && self.idle(&cell.pulse.lock(), now);
            forget(!idle)
        });
        self.registry.retain_gauges(|_, cell| {
            let idle = Arc::strong_count(cell) == 1
                && !cell.touched.load(Relaxed)
                && self.idle(&cell.pulse.lock(), now);
            forget(!idle)
        });
        self.registry.retain_histograms(|_, cell| {
            let idle = Arc::strong_count(cell) == 1
                && cell.values.is_empty()
                && cell
                    .pulse
                    .lock()
                    .folded
                    .as_ref()
                    .is_none_or(|f| f.count == 0)
                && !cell.counting()
                && self.idle(&cell.pulse.lock(), now);
            forget(!idle)
        });
        self.live.fetch_sub(forgotten.into_inner(), Relaxed);
    }
}

impl PulseSource for State {
    fn report(&self, last: bool) -> Vec<(Envelope, Option<Carried>)> {
        self.gather(last)
    }

    fn upkeep(&self) {
        if !self.closed.load(Relaxed) {
            self.fold_histograms();
        }
    }
}

/// Relative error of the quantiles: 0.5%, at most 4,096 bins (32 KiB)
/// however many values, which spans values from nanoseconds to hours
/// before the lowest bins merge. A sketch is made per histogram and
/// interval: metrics-util's default (0.01%) spends up to 256 KiB on it.
fn interval_summary() -> Summary {
    Summary::new(0.005, 4096, 1.0e-9)
}

/// What a histogram's values of the interval add up to, so far.
#[derive(Debug)]
struct Folded {
    count: u64,
    sum: f64,
    /// Per bound (`+Inf` last), the values above the bound before it and
    /// at or below this one.
    buckets: Vec<u64>,
    /// For the quantiles, when the histogram has no buckets and some values.
    summary: Option<Summary>,
}

impl Folded {
    fn new(cell: &HistogramCell) -> Folded {
        Folded {
            count: 0,
            sum: 0.0,
            buckets: vec![0; cell.buckets.len()],
            summary: None,
        }
    }

    /// Takes in the values recorded since the last fold.
    fn fold(&mut self, cell: &HistogramCell) {
        let wants_summary = cell.buckets.is_empty() && !cell.quantiles.is_empty();
        cell.values.clear_with(|values| {
            for &value in values.iter().filter(|v| !v.is_nan()) {
                self.count += 1;
                self.sum += value;
                if !cell.buckets.is_empty() {
                    // The first bound at or above the value; `+Inf` takes the rest.
                    let at = cell.buckets.partition_point(|(bound, _)| *bound < value);
                    self.buckets[at.min(cell.buckets.len() - 1)] += 1;
                } else if wants_summary {
                    self.summary.get_or_insert_with(interval_summary).add(value);
                }
            }
        });
    }

    /// Per bound, the values at or below it, as Prometheus counts buckets.
    fn cumulative(&self) -> impl Iterator<Item = u64> + '_ {
        self.buckets.iter().scan(0, |below, count| {
            *below += count;
            Some(*below)
        })
    }
}

/// The gauges of one pulse, one envelope per label set.
#[derive(Default)]
struct Gauges {
    by_labels: HashMap<Arc<LabelSet>, Vec<(GaugeEnvelope, usize)>>,
}

impl Gauges {
    fn add(&mut self, labels: &Arc<LabelSet>, name: &str, value: f64, unit: &str) {
        let envelopes = self.by_labels.entry(labels.clone()).or_default();
        match envelopes.last_mut() {
            Some((envelope, count)) if *count < MAX_GAUGES_PER_ENVELOPE => {
                *envelope =
                    std::mem::replace(envelope, Envelope::gauge()).metric(name, value, unit);
                *count += 1;
            }
            _ => envelopes.push((Envelope::gauge().metric(name, value, unit), 1)),
        }
    }

    fn into_envelopes(self) -> impl Iterator<Item = Envelope> {
        self.by_labels.into_iter().flat_map(|(labels, envelopes)| {
            envelopes
                .into_iter()
                .map(move |(envelope, _)| labels.stamp(envelope).build())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            quantiles: DEFAULT_QUANTILES.to_vec(),
            buckets: None,
            prefix_buckets: Vec::new(),
            idle_timeout: Duration::from_secs(60),
            max_series: 3,
        }
    }

    fn state(settings: Settings) -> State {
        State::new(settings, Arc::new(Counters::default()))
    }

    use crate::series::all_taken as sent;

    fn record(state: &State, key: &Key) -> Option<Arc<HistogramCell>> {
        if let Some(cell) = state.registry.get_histogram(key) {
            return Some(cell);
        }
        state.admit(|| state.registry.get_or_create_histogram(key, Arc::clone))
    }

    fn quantile(envelopes: &[Envelope], q: &str) -> Option<f64> {
        envelopes.iter().find_map(|e| {
            let p = e.as_proto();
            (p.has_gauge() && p.tags.get("quantile").map(String::as_str) == Some(q))
                .then(|| p.gauge().metrics["latency"].value)
        })
    }

    #[test]
    fn quantiles_cover_the_interval_and_the_sum_runs_on() {
        let mut settings = settings();
        settings.quantiles = vec![0.5, 1.0];
        let state = state(settings);
        let cell = record(&state, &Key::from_name("latency")).unwrap();
        (1..=100).for_each(|n| cell.record(f64::from(n)));
        let first = sent(state.gather(false));
        assert!((quantile(&first, "1").unwrap() - 100.0).abs() < 0.1);
        (1001..=1100).for_each(|n| cell.record(f64::from(n)));
        let second = sent(state.gather(false));
        let median = quantile(&second, "0.5").unwrap();
        assert!((1044.0..=1056.0).contains(&median), "{median}");
        let sum = second.iter().find_map(|e| {
            e.as_proto()
                .gauge()
                .metrics
                .get("latency_sum")
                .map(|m| m.value)
        });
        assert_eq!(sum, Some(5050.0 + 105_050.0));
        let third = sent(state.gather(false));
        assert_eq!(quantile(&third, "0.5"), None, "no values, no quantiles");
        assert_eq!(third.len(), 1, "the running sum alone: {third:?}");
    }

    #[test]
    fn values_folded_between_pulses_are_let_go_and_reported_with_the_rest() {
        let mut settings = settings();
        settings.quantiles = vec![1.0];
        let state = state(settings);
        let cell = record(&state, &Key::from_name("latency")).unwrap();
        (1..=3).for_each(|n| cell.record(f64::from(n)));
        state.upkeep();
        assert!(cell.values.is_empty(), "folded, not held");
        (4..=5).for_each(|n| cell.record(f64::from(n)));
        let report = sent(state.gather(false));
        let count = report.iter().find_map(|e| {
            let p = e.as_proto();
            (p.counter().name == "latency_count").then(|| p.counter().delta)
        });
        assert_eq!(count, Some(5));
        assert!((quantile(&report, "1").unwrap() - 5.0).abs() < 0.05);
        let sum = report.iter().find_map(|e| {
            e.as_proto()
                .gauge()
                .metrics
                .get("latency_sum")
                .map(|m| m.value)
        });
        assert_eq!(sum, Some(15.0));
    }

    #[test]
    fn labels_become_sorted_tags_and_ids() {
        let key = Key::from_parts(
            "x",
            vec![
                metrics::Label::new("z", "1"),
                metrics::Label::new("source_id", "app"),
                metrics::Label::new("a", "2"),
                metrics::Label::new("instance_id", "3"),
            ],
        );
        let labels = LabelSet::of(&key);
        assert_eq!(
            labels.tags,
            vec![("a".into(), "2".into()), ("z".into(), "1".into())]
        );
        assert_eq!(labels.source_id.as_deref(), Some("app"));
        assert_eq!(labels.instance_id.as_deref(), Some("3"));
    }

    #[test]
    fn buckets_are_cumulative_with_inf_and_the_longest_prefix_wins() {
        let mut settings = settings();
        settings.buckets = Some(vec![10.0]);
        settings.prefix_buckets = vec![
            ("http".into(), vec![1.0]),
            ("http_latency".into(), vec![1.0, 2.0]),
        ];
        assert_eq!(
            settings.buckets_for("http_latency_seconds"),
            Some(&[1.0, 2.0][..])
        );
        assert_eq!(settings.buckets_for("http_bytes"), Some(&[1.0][..]));
        assert_eq!(settings.buckets_for("db"), Some(&[10.0][..]));
        let state = state(settings);
        let cell = record(&state, &Key::from_name("http_latency_seconds")).unwrap();
        let mut folded = Folded::new(&cell);
        for value in [0.5, 1.0, 1.5] {
            cell.record(value);
        }
        folded.fold(&cell);
        for value in [3.0, f64::NAN] {
            cell.record(value);
        }
        folded.fold(&cell);
        assert_eq!((folded.count, folded.sum), (4, 6.0));
        assert_eq!(folded.cumulative().collect::<Vec<_>>(), vec![2, 3, 4]);
    }

    #[test]
    fn the_cap_counts_each_refused_registration_and_makes_room_when_series_go() {
        let state = state(settings());
        for name in ["a", "b", "c"] {
            assert!(record(&state, &Key::from_name(name)).is_some());
        }
        assert!(record(&state, &Key::from_name("a")).is_some(), "existing");
        assert!(record(&state, &Key::from_name("d")).is_none());
        assert!(record(&state, &Key::from_name("e")).is_none());
        assert_eq!(state.counters.series_dropped.load(Relaxed), 2);
        assert_eq!(state.live.load(Relaxed), 3);
        state.forget_idle(Instant::now() + Duration::from_secs(61));
        assert_eq!(state.live.load(Relaxed), 0);
        assert!(record(&state, &Key::from_name("d")).is_some());
    }

    #[test]
    fn an_idle_series_is_kept_while_its_delta_may_come_back_or_a_handle_is_held() {
        let state = state(settings());
        let key = Key::from_name("hits");
        let cell = state
            .admit(|| state.registry.get_or_create_counter(&key, Arc::clone))
            .unwrap();
        cell.increment(2);
        let queued = state.gather(false);
        let later = || Instant::now() + Duration::from_secs(61);
        state.forget_idle(later());
        assert_eq!(state.live.load(Relaxed), 1, "held");
        drop(cell);
        state.forget_idle(later());
        assert_eq!(state.live.load(Relaxed), 1, "its delta is in the queue");
        drop(queued);
        let again = sent(state.gather(false));
        assert_eq!(again[0].as_proto().counter().delta, 2, "given back");
        state.forget_idle(later());
        assert_eq!(state.live.load(Relaxed), 0);
    }
}
