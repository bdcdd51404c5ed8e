//! What the recorder (its callers register series) and the client's pulses
//! (which report them) share, and how the recorder takes part in a pulse.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use metrics::{Key, KeyName, Unit};
use metrics_util::registry::Registry;
use parking_lot::Mutex;

use super::Settings;
use super::cells::{Ended, MADE_SERIES, PulseSide, SeriesStorage};
use super::clash::SeriesKind;
use super::forget::Memory;
use crate::envelope::Envelope;
use crate::pulse::PulseSource;
use crate::series::{Carried, CounterSeries};
use crate::stats::Counters;

/// Every series, and what the recorder counts.
pub(super) struct State {
    pub registry: Registry<Key, SeriesStorage>,
    /// Units from `describe_gauge!` and `describe_histogram!`, by name.
    pub units: Mutex<HashMap<String, Unit>>,
    /// Series in the registry, or reserved by a registration making one.
    pub live: AtomicUsize,
    pub counters: Arc<Counters>,
    /// Set by the last report; every cell reads it.
    pub ended: Ended,
    /// The recorder was dropped: the next report is its last.
    pub dropped: AtomicBool,
    /// What is remembered of forgotten series; shared with the storage,
    /// which resumes them.
    pub memory: Arc<Mutex<Memory>>,
    /// After the last report of a dropped recorder, the counter series a
    /// delta may still come back to; reported until none may.
    pub leftovers: Mutex<Vec<Arc<CounterSeries>>>,
    pub idle_timeout: Duration,
    pub max_series: usize,
    /// The histograms' quantiles and buckets, for what a new series sends.
    pub settings: Settings,
    /// Held while a new series is made: the check that it may be (the
    /// cap, a clash) and its making are one step, so a thread that finds a
    /// series missing and the cap reached waits for one making it instead
    /// of refusing it.
    pub making: Mutex<()>,
}

impl State {
    pub(super) fn new(settings: Settings, counters: Arc<Counters>) -> State {
        let ended = Ended::default();
        let memory = Arc::new(Mutex::new(Memory::new(settings.max_series)));
        State {
            idle_timeout: settings.idle_timeout,
            max_series: settings.max_series,
            settings: settings.clone(),
            making: Mutex::new(()),
            registry: Registry::new(SeriesStorage {
                settings,
                ended: ended.clone(),
                memory: memory.clone(),
            }),
            units: Mutex::new(HashMap::new()),
            live: AtomicUsize::new(0),
            counters,
            ended,
            dropped: AtomicBool::new(false),
            memory,
            leftovers: Mutex::new(Vec::new()),
        }
    }

    pub(super) fn describe(&self, key: KeyName, unit: Unit) {
        let mut units = self.units.lock();
        // Bounded like the series: names may come from data too.
        if units.len() < self.max_series || units.contains_key(key.as_str()) {
            units.insert(key.as_str().to_string(), unit);
        }
    }

    /// The series for `key`: the one `existing` finds (a registry's `get`),
    /// or one `create` makes (its `get_or_create`) if a series may be made,
    /// counting the refusal otherwise. New series are made one at a time:
    /// a registration that finds its series missing looks again under the
    /// lock, so a series another thread made meanwhile is found, never
    /// refused at the cap, and the cap stays exact however many threads
    /// register at once.
    pub(super) fn admit<T>(
        &self,
        key: &Key,
        kind: SeriesKind,
        existing: impl FnOnce() -> Option<T>,
        create: impl FnOnce() -> T,
    ) -> Option<T> {
        let _one_at_a_time = self.making.lock();
        if let Some(series) = existing() {
            return Some(series);
        }
        if self.clashes(key, kind) {
            self.counters.series_dropped.fetch_add(1, Relaxed);
            return None;
        }
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
        if self.ended.is_set() {
            // Made while the last report was gathered (it passed the check
            // before): the registry keeps nothing after it. The shard lock
            // the registry took orders this with the report's clearing.
            self.let_go_of_everything();
        }
        Some(series)
    }

    /// Empties the registry and what is remembered: after the last report
    /// nothing the recorder holds may grow, or stay.
    pub(super) fn let_go_of_everything(&self) {
        self.registry.clear();
        self.live.store(0, Relaxed);
        self.memory.lock().clear();
    }

    pub(super) fn idle(&self, pulse: &PulseSide, now: Instant) -> bool {
        now.saturating_duration_since(pulse.active_at) >= self.idle_timeout
    }

    pub(super) fn unit_of(units: &HashMap<String, Unit>, name: &str) -> &'static str {
        units.get(name).map_or("", Unit::as_str)
    }

    /// A dropped recorder's deltas that came back after its last report,
    /// and those still in the queue kept for the next.
    fn report_leftovers(&self) -> Vec<(Envelope, Option<Carried>)> {
        let mut envelopes = Vec::new();
        self.leftovers.lock().retain(|series| {
            if let Some((envelope, carried)) = series.take() {
                envelopes.push((envelope, Some(carried)));
            }
            !series.is_settled()
        });
        envelopes
    }
}

/// How a report ends the recorder, if it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ending {
    /// A pulse like any.
    No,
    /// The recorder was dropped, the client goes on: deltas the queue gives
    /// back go out with later pulses.
    Dropped,
    /// The client's last pulse: none follows.
    Close,
}

impl PulseSource for State {
    fn report(&self, last: bool) -> Vec<(Envelope, Option<Carried>)> {
        if self.ended.is_set() {
            return self.report_leftovers();
        }
        let ending = if last {
            Ending::Close
        } else if self.dropped.load(Relaxed) {
            Ending::Dropped
        } else {
            Ending::No
        };
        self.gather(ending)
    }

    fn upkeep(&self) {
        if !self.ended.is_set() {
            self.fold_histograms();
        }
    }

    fn finished(&self) -> bool {
        self.ended.is_set() && self.leftovers.lock().is_empty()
    }
}
