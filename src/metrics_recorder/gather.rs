//! One pulse's report: every series that has something to send, as the
//! envelopes [`MetricsRecorder`](super::MetricsRecorder) describes.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::fold::Folded;
use super::gauges::Gauges;
use super::state::{Ending, State};
use crate::envelope::Envelope;
use crate::series::Carried;

impl State {
    /// One pulse's envelopes. Reads under the registry's read locks; takes
    /// its write locks only when some series may be forgotten, or at the
    /// end. A report that ends the recorder sends everything pending and
    /// lets go of every series.
    pub(super) fn gather(&self, ending: Ending) -> Vec<(Envelope, Option<Carried>)> {
        let last = ending != Ending::No;
        if last {
            // Before the last look at the cells: what is recorded from now
            // on is dropped, not left in a cell nobody reads.
            self.ended.set();
        }
        let now = Instant::now();
        let units = self.units.lock().clone();
        let mut envelopes: Vec<(Envelope, Option<Carried>)> = Vec::new();
        let mut gauges = Gauges::default();
        let mut forgettable = false;
        let mut series_left = Vec::new();

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
            let unheld = Arc::strong_count(cell) == 1;
            forgettable |= unheld && (cell.series.never_fits() || self.idle(&pulse, now));
            if ending == Ending::Dropped {
                series_left.push(cell.series.clone());
            }
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
            for series in cell.counter_series() {
                if let Some((envelope, carried)) = series.take() {
                    envelopes.push((envelope, Some(carried)));
                }
                if ending == Ending::Dropped {
                    series_left.push(series.clone());
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
            forgettable |= !held && idle;
        });

        envelopes.extend(gauges.into_envelopes().map(|envelope| (envelope, None)));
        if last {
            // Only a dropped recorder's client pulses again: its deltas
            // that come back go out then.
            series_left.retain(|series| !series.is_settled());
            *self.leftovers.lock() = series_left;
            self.let_go_of_everything();
        } else if forgettable {
            self.forget_idle(now);
        }
        envelopes
    }
}
