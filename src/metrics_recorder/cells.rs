//! What each series stores: the cells the facade's handles record into
//! (atomics on the caller's thread), what only the pulse reads and writes
//! of them, and the storage that makes them for the registry.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use metrics::{CounterFn, GaugeFn, HistogramFn, Key};
use metrics_util::registry::Storage;
use metrics_util::storage::AtomicBucket;
use parking_lot::Mutex;

use super::Settings;
use super::fold::Folded;
use super::forget::Memory;
use super::labels::{labels_of, with_tag};
use crate::series::{CounterSeries, SeriesLabels};

thread_local! {
    /// Set by the storage when it makes a series on this thread: the
    /// registry does not say whether `get_or_create` found or made one,
    /// and the cap must count only what was made.
    pub(super) static MADE_SERIES: Cell<bool> = const { Cell::new(false) };
}

/// Set by the recorder's last report, and shared by every cell: a handle
/// kept past it, or taken while the last report was being gathered,
/// records nothing.
#[derive(Clone, Debug, Default)]
pub(super) struct Ended(Arc<AtomicBool>);

impl Ended {
    pub(super) fn set(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub(super) fn is_set(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether a value recorded now is dropped: after the last report, or on
    /// one of the client's own threads (a thread-local flag), where keeping
    /// it could feed the client's own work back into it.
    #[inline]
    fn drops_now(&self) -> bool {
        self.0.load(Relaxed) || crate::on_own_thread()
    }
}

/// What only the pulse reads and writes about a series.
#[derive(Debug)]
pub(super) struct PulseSide {
    /// The last pulse that saw it move (or when it was made).
    pub active_at: Instant,
    /// A gauge has been set, or a histogram recorded on, at least once.
    pub valued: bool,
    /// A histogram's running sum (finite values only).
    pub sum: f64,
    /// A histogram's values of this interval folded so far.
    pub folded: Option<Folded>,
}

impl PulseSide {
    fn new(sum: f64) -> Mutex<PulseSide> {
        Mutex::new(PulseSide {
            active_at: Instant::now(),
            valued: false,
            sum,
            folded: None,
        })
    }
}

/// A counter series: its value and delta live in a [`CounterSeries`],
/// which the queue's tokens hold and give deltas back to.
#[derive(Debug)]
pub(super) struct CounterCell {
    pub series: Arc<CounterSeries>,
    /// `absolute` was called: its value is remembered when it is forgotten.
    pub absolute: AtomicBool,
    /// `absolute` was called (an unchanged value still keeps it live).
    pub touched: AtomicBool,
    ended: Ended,
    pub pulse: Mutex<PulseSide>,
}

impl CounterFn for CounterCell {
    fn increment(&self, value: u64) {
        if !self.ended.drops_now() {
            self.series.add(value);
        }
    }

    fn absolute(&self, value: u64) {
        if self.ended.drops_now() {
            return;
        }
        if !self.absolute.load(Relaxed) {
            self.absolute.store(true, Relaxed);
        }
        self.series.raise_to(value);
        self.touched.store(true, Relaxed);
    }
}

/// A gauge series: its value, and whether anything touched it.
#[derive(Debug)]
pub(super) struct GaugeCell {
    pub bits: AtomicU64,
    pub touched: AtomicBool,
    pub name: String,
    pub labels: Arc<SeriesLabels>,
    ended: Ended,
    pub pulse: Mutex<PulseSide>,
}

impl GaugeCell {
    fn change(&self, by: f64) {
        if self.ended.drops_now() {
            return;
        }
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
        if self.ended.drops_now() {
            return;
        }
        self.bits.store(value.to_bits(), Relaxed);
        self.touched.store(true, Relaxed);
    }
}

/// A histogram series: the values recorded since the last fold, and the
/// counters its count and buckets go out through.
#[derive(Debug)]
pub(super) struct HistogramCell {
    pub values: AtomicBucket<f64>,
    ended: Ended,
    pub name: String,
    pub sum_name: String,
    pub labels: Arc<SeriesLabels>,
    pub count: Arc<CounterSeries>,
    /// Upper bounds and their `<name>_bucket` counters, `+Inf` last;
    /// empty for a summary.
    pub buckets: Vec<(f64, Arc<CounterSeries>)>,
    /// Each quantile and the label set of its gauge.
    pub quantiles: Vec<(f64, Arc<SeriesLabels>)>,
    pub pulse: Mutex<PulseSide>,
}

impl HistogramFn for HistogramCell {
    fn record(&self, value: f64) {
        // Nobody folds it after the last report: it must not grow for ever.
        if !self.ended.drops_now() {
            self.values.push(value);
        }
    }
}

impl HistogramCell {
    /// Its count's and buckets' series.
    pub(super) fn counter_series(&self) -> impl Iterator<Item = &Arc<CounterSeries>> {
        std::iter::once(&self.count).chain(self.buckets.iter().map(|(_, series)| series))
    }

    /// Whether a delta of its count or buckets is pending or in the queue.
    pub(super) fn counting(&self) -> bool {
        self.counter_series().any(|series| !series.is_settled())
    }
}

/// Makes the series the registry asks for, resuming what is remembered of
/// a forgotten one.
pub(super) struct SeriesStorage {
    pub settings: Settings,
    pub ended: Ended,
    pub memory: Arc<Mutex<Memory>>,
}

impl Storage<Key> for SeriesStorage {
    type Counter = Arc<CounterCell>;
    type Gauge = Arc<GaugeCell>;
    type Histogram = Arc<HistogramCell>;

    fn counter(&self, key: &Key) -> Arc<CounterCell> {
        MADE_SERIES.with(|made| made.set(true));
        let mut series = CounterSeries::labelled(key.name().to_string(), labels_of(key));
        let (absolute, never_fits) = self.memory.lock().recall_counter(key);
        if let Some(value) = absolute {
            series = series.resuming_at(value);
        }
        if never_fits {
            series = series.never_fitting();
        }
        Arc::new(CounterCell {
            series: Arc::new(series),
            absolute: AtomicBool::new(absolute.is_some()),
            touched: AtomicBool::new(false),
            ended: self.ended.clone(),
            pulse: PulseSide::new(0.0),
        })
    }

    fn gauge(&self, key: &Key) -> Arc<GaugeCell> {
        MADE_SERIES.with(|made| made.set(true));
        Arc::new(GaugeCell {
            bits: AtomicU64::new(0f64.to_bits()),
            touched: AtomicBool::new(false),
            name: key.name().to_string(),
            labels: Arc::new(labels_of(key)),
            ended: self.ended.clone(),
            pulse: PulseSide::new(0.0),
        })
    }

    fn histogram(&self, key: &Key) -> Arc<HistogramCell> {
        MADE_SERIES.with(|made| made.set(true));
        let name = key.name();
        let labels = labels_of(key);
        let bounds = self.settings.buckets_for(name);
        let buckets = bounds
            .map(|bounds| {
                let bucket = |le: String| {
                    Arc::new(CounterSeries::labelled(
                        format!("{name}_bucket"),
                        with_tag(&labels, "le", le),
                    ))
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
                .map(|&q| (q, Arc::new(with_tag(&labels, "quantile", q.to_string()))))
                .collect(),
        };
        let sum = self.memory.lock().recall_sum(key).unwrap_or(0.0);
        Arc::new(HistogramCell {
            values: AtomicBucket::new(),
            ended: self.ended.clone(),
            name: name.to_string(),
            sum_name: format!("{name}_sum"),
            count: Arc::new(CounterSeries::labelled(
                format!("{name}_count"),
                labels.clone(),
            )),
            buckets,
            quantiles,
            labels: Arc::new(labels),
            pulse: PulseSide::new(sum),
        })
    }
}
