//! A recorder for the `metrics` facade (feature `metrics`): what programs
//! record with `counter!`, `gauge!` and `histogram!` goes out with each
//! pulse, in the shapes Cloud Foundry's prom-scraper gives Prometheus
//! metrics, so dashboards and nozzles see what they already know.
//!
//! Recording costs what the facade's own building blocks cost
//! (metrics-util's sharded registry to find a series, then an atomic add,
//! max or store, or a push into a lock-free bucket): nothing on the
//! caller's thread builds an envelope or touches the queue. The pulse does
//! that, on the pulse thread (and on the closing thread for the last one),
//! and hands each counter delta to the queue with the token that carries it
//! back if the queue drops it.
//!
//! The rooms: this file holds the public options; `recorder.rs` the
//! facade's `Recorder`; `cells.rs` what each series stores and how it is
//! made; `labels.rs` how labels become tags, source and instance;
//! `state.rs` what the recorder and the pulses share; `gather.rs` one
//! pulse's report; `forget.rs` idle series and what is remembered of them;
//! `fold.rs` a histogram's values between pulses; `gauges.rs` gauges
//! packed by label set; `clash.rs` the gauges two series would both send.

use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::client::IngressClient;
use crate::error::{Error, Result};

mod cells;
mod clash;
mod fold;
mod forget;
mod gather;
mod gauges;
mod labels;
mod recorder;
mod state;
#[cfg(test)]
mod tests;

use state::State;

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
/// minute or two keeps its value on dashboards; short enough that series
/// named by ever-changing labels (a request id, a connection) leave within
/// minutes. What a forgotten `absolute` counter or histogram sum had
/// reached is remembered (see [`MetricsRecorder`]), so it goes on from
/// there when the series comes back.
///
/// ```
/// assert_eq!(loggregator::DEFAULT_IDLE_TIMEOUT.as_secs(), 300);
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// The most live series by default: 1,000. A pulse sends at most one
/// counter per counter series, one gauge envelope per label set, and for a
/// histogram its count, its sum and one envelope per quantile or bucket:
/// 1,000 histograms with 11 buckets, each with labels of its own, make
/// about 13,000 envelopes, more than the default queue holds
/// ([`DEFAULT_QUEUE_CAPACITY`](crate::DEFAULT_QUEUE_CAPACITY), 10,000). A
/// pulse larger than the queue waits on the pulse thread for the room the
/// sender thread makes, so it arrives whole, until the next pulse at most:
/// what waits is one pulse (some 150 bytes an envelope with short labels,
/// 2 MB for those 13,000), and what finds no room by then (the agent away,
/// or reading less than a pulse an interval) is dropped and counted, a
/// counter's delta carried to the next pulse.
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
///   `absolute(v)` sets the counter to *at least* `v`, as the facade
///   defines it: it sends the rise above the counter's highest value so
///   far (a series' first reading counts in full), and a smaller reading,
///   one that another thread reported late, changes nothing. A counter
///   that did not move sends nothing. A delta the queue refuses or evicts,
///   whatever the overflow policy, goes out with the next pulse, as for
///   pulse counters; a counter whose name and tags alone are larger than
///   `batch_max_bytes` is counted once in `dropped.too_large` and sends
///   nothing more.
/// - **Gauges**: `set`, `increment` and `decrement` keep a value; every
///   interval, the gauges that share a label set go out in one Gauge
///   envelope (up to 500 metrics each), with the unit given to
///   `describe_gauge!` (the facade's [`Unit`](metrics::Unit) names:
///   `bytes`, `seconds`, `percent`, `count`, ...; none is an empty unit). A
///   gauge is sent every interval from its first value while it is live
///   (see idle series below).
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
///   NaN values are ignored. Infinite values count in `<name>_count` and
///   in the buckets (`+Inf` in the `+Inf` bucket alone, `-Inf` in every
///   one) but stay out of the sum and the quantiles, which one infinity
///   would leave infinite, or NaN, for good.
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
/// [`Stats::series_dropped`](crate::Stats::series_dropped). A series that
/// exists is never refused: new series are made one at a time, and a
/// registration that finds its series missing looks again once it is its
/// turn. A histogram's gauges and a gauge never overwrite each other: a
/// gauge named `h_sum` with the labels of a live histogram `h` (or named
/// like one of its quantile gauges), or the histogram beside such a gauge,
/// would overwrite the other's metric in every pulse, so the one
/// registered second is refused and counted there too. Of forgotten
/// series the recorder remembers the value of `absolute` counters and the
/// running sum of histograms (whose counts go on adding up at the agent),
/// up to `max_series` of each, the longest forgotten let go first: a
/// series that comes back goes on from there instead of from 0. A
/// histogram holds the values recorded on it for about a second at most
/// (8 bytes each): the pulse thread folds them into the interval's count,
/// sum and buckets or sketch (at most 32 KiB) every second.
///
/// **What waits, and where.** Recording on a handle is one atomic
/// operation (a histogram: a push into a lock-free bucket) and never
/// waits, whatever the client's overflow policy: it never touches the
/// queue. Finding a series by its key, which every macro call without a
/// kept handle does, takes a read lock on one of the registry's shards:
/// it waits only while another thread makes a new series in that shard or
/// a pulse forgets idle series there (microseconds: no envelope is built
/// under it). `describe_*!` takes a lock the pulse holds while it copies
/// the units. Nothing recorded on the client's own threads is kept (no
/// feedback loop), even on a handle taken elsewhere, and once the client
/// has sent its last pulse nothing more is.
///
/// Holding the client, an installed recorder keeps it open: close it
/// yourself at exit ([`IngressClient::close`]), which sends the last
/// pulse. A recorder dropped while its client lives (a local one, as with
/// `metrics::with_local_recorder`) sends what it gathered with the next
/// pulse and then leaves the pulse; handles kept past it record nothing.
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
    /// [`Stats::series_dropped`](crate::Stats::series_dropped). It also
    /// bounds what is remembered of forgotten series.
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
    /// Returns [`Error::AlreadyInstalled`] when one is installed already
    /// (the facade takes one per process), saying whether it is a
    /// `MetricsRecorder` and what to do instead; what is recorded before
    /// this call is lost, as with any recorder.
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// loggregator::MetricsRecorder::new(client).install()?;
    /// # Ok::<(), loggregator::Error>(())
    /// ```
    pub fn install(self) -> Result<()> {
        // Whether the slot is ours, for the error of a second install.
        static INSTALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if metrics::set_global_recorder(self).is_err() {
            return Err(if INSTALLED.load(std::sync::atomic::Ordering::Acquire) {
                Error::AlreadyInstalled {
                    slot: crate::GlobalSlot::MetricsRecorder,
                    holder: "a MetricsRecorder installed before",
                    instead: "the facade takes one recorder per process: install one \
                              MetricsRecorder, or use another with `metrics::with_local_recorder`",
                }
            } else {
                Error::AlreadyInstalled {
                    slot: crate::GlobalSlot::MetricsRecorder,
                    holder: "another recorder",
                    instead: "the facade takes one recorder per process: install the \
                              MetricsRecorder instead of the other one, or both behind \
                              metrics-util's `FanoutBuilder`",
                }
            });
        }
        INSTALLED.store(true, std::sync::atomic::Ordering::Release);
        Ok(())
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

impl Drop for MetricsRecorder {
    /// Its next report is its last, and then it leaves the pulse.
    fn drop(&mut self) {
        if let Some(state) = self.state.get() {
            state.dropped.store(true, Relaxed);
        }
    }
}
