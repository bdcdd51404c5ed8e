//! Idle series: forgetting those nobody holds, and remembering of them
//! what the agent would otherwise see start again from 0.
//!
//! The agent adds up counter deltas across a series' forgetting, so an
//! `increment` counter needs nothing remembered. Two things do: an
//! `absolute` counter's value (without it, its next reading would count in
//! full once more) and a histogram's running sum (a Gauge, which the agent
//! replaces, while its count goes on adding up). Both are kept per key, at
//! most `max_series` of each, the longest forgotten let go first: memory
//! stays bounded however many labels a program makes up, and what is let
//! go is what has been away longest.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use metrics::Key;

use super::state::State;

/// Values of forgotten series by key, at most `capacity`, oldest let go
/// first.
#[derive(Debug)]
struct Remembered<T> {
    by_key: HashMap<Key, (T, u64)>,
    /// Keys by when they were forgotten.
    order: BTreeMap<u64, Key>,
    next: u64,
    capacity: usize,
}

impl<T> Remembered<T> {
    fn new(capacity: usize) -> Remembered<T> {
        Remembered {
            by_key: HashMap::new(),
            order: BTreeMap::new(),
            next: 0,
            capacity,
        }
    }

    fn remember(&mut self, key: &Key, value: T) {
        if self.capacity == 0 {
            return;
        }
        self.recall(key);
        while self.by_key.len() >= self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.by_key.remove(&oldest);
        }
        self.by_key.insert(key.clone(), (value, self.next));
        self.order.insert(self.next, key.clone());
        self.next += 1;
    }

    /// Takes out what is remembered of `key`: the live series holds it now.
    fn recall(&mut self, key: &Key) -> Option<T> {
        let (value, at) = self.by_key.remove(key)?;
        self.order.remove(&at);
        Some(value)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_key.len()
    }

    fn clear(&mut self) {
        self.by_key.clear();
        self.order.clear();
    }
}

/// What is remembered of forgotten series.
#[derive(Debug)]
pub(super) struct Memory {
    /// The value an `absolute` counter had reached.
    absolute: Remembered<u64>,
    /// Counters whose envelope never fits a batch, so that one made again
    /// is not offered (and counted as too large) again.
    never_fits: Remembered<()>,
    /// A histogram's running sum.
    sums: Remembered<f64>,
}

impl Memory {
    pub(super) fn new(capacity: usize) -> Memory {
        Memory {
            absolute: Remembered::new(capacity),
            never_fits: Remembered::new(capacity),
            sums: Remembered::new(capacity),
        }
    }

    /// A counter made again: the value it resumes at, if it was an
    /// `absolute` one, and whether it never fits a batch.
    pub(super) fn recall_counter(&mut self, key: &Key) -> (Option<u64>, bool) {
        (
            self.absolute.recall(key),
            self.never_fits.recall(key).is_some(),
        )
    }

    /// A histogram made again: the sum it resumes at.
    pub(super) fn recall_sum(&mut self, key: &Key) -> Option<f64> {
        self.sums.recall(key)
    }

    /// How many series something is remembered of, of each kind at most
    /// `max_series`.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.absolute.len() + self.never_fits.len() + self.sums.len()
    }

    pub(super) fn clear(&mut self) {
        self.absolute.clear();
        self.never_fits.clear();
        self.sums.clear();
    }
}

impl State {
    /// Forgets the series nobody holds that are idle with nothing pending,
    /// and at once a counter that never fits a batch. Under the registry's
    /// write lock no handle can be made, so one found unheld stays unheld
    /// while it goes.
    pub(super) fn forget_idle(&self, now: Instant) {
        let forgotten = AtomicUsize::new(0);
        let forget = |keep: bool| {
            if !keep {
                forgotten.fetch_add(1, Relaxed);
            }
            keep
        };
        self.registry.retain_counters(|key, cell| {
            let series = &cell.series;
            let forgettable = Arc::strong_count(cell) == 1
                && series.is_settled()
                && (series.never_fits()
                    || (!cell.touched.load(Relaxed) && self.idle(&cell.pulse.lock(), now)));
            if forgettable {
                let mut memory = self.memory.lock();
                if series.never_fits() {
                    memory.never_fits.remember(key, ());
                } else if cell.absolute.load(Relaxed) {
                    memory.absolute.remember(key, series.value());
                }
            }
            forget(!forgettable)
        });
        self.registry.retain_gauges(|_, cell| {
            let idle = Arc::strong_count(cell) == 1
                && !cell.touched.load(Relaxed)
                && self.idle(&cell.pulse.lock(), now);
            forget(!idle)
        });
        self.registry.retain_histograms(|key, cell| {
            if Arc::strong_count(cell) > 1 || !cell.values.is_empty() || cell.counting() {
                return true;
            }
            let pulse = cell.pulse.lock();
            let forgettable =
                pulse.folded.as_ref().is_none_or(|f| f.count == 0) && self.idle(&pulse, now);
            if forgettable && pulse.valued {
                self.memory.lock().sums.remember(key, pulse.sum);
            }
            forget(!forgettable)
        });
        self.live.fetch_sub(forgotten.into_inner(), Relaxed);
    }
}
