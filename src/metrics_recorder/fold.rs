//! A histogram's values between pulses: folded every second into the
//! interval's count, sum and buckets or sketch, so a histogram holds about
//! a second's values at most whatever the pulse interval.

use metrics_util::storage::Summary;

use super::cells::HistogramCell;
use super::state::State;

/// Relative error of the quantiles: 0.5%, at most 4,096 bins (32 KiB)
/// however many values, which spans values from nanoseconds to hours
/// before the lowest bins merge. A sketch is made per histogram and
/// interval: metrics-util's default (0.01%) spends up to 256 KiB on it.
fn interval_summary() -> Summary {
    Summary::new(0.005, 4096, 1.0e-9)
}

/// What a histogram's values of the interval add up to, so far.
#[derive(Debug)]
pub(super) struct Folded {
    /// Every value but NaN, infinities included.
    pub count: u64,
    /// Finite values only: one infinity would leave the running sum
    /// infinite, and one of each sign NaN, for good.
    pub sum: f64,
    /// Per bound (`+Inf` last), the values above the bound before it and
    /// at or below this one.
    buckets: Vec<u64>,
    /// For the quantiles, when the histogram has no buckets and some values
    /// (the sketch leaves infinities out).
    pub summary: Option<Summary>,
}

impl Folded {
    pub(super) fn new(cell: &HistogramCell) -> Folded {
        Folded {
            count: 0,
            sum: 0.0,
            buckets: vec![0; cell.buckets.len()],
            summary: None,
        }
    }

    /// Takes in the values recorded since the last fold.
    pub(super) fn fold(&mut self, cell: &HistogramCell) {
        let wants_summary = cell.buckets.is_empty() && !cell.quantiles.is_empty();
        cell.values.clear_with(|values| {
            for &value in values.iter().filter(|v| !v.is_nan()) {
                self.count += 1;
                if value.is_finite() {
                    self.sum += value;
                }
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
    pub(super) fn cumulative(&self) -> impl Iterator<Item = u64> + '_ {
        self.buckets.iter().scan(0, |below, count| {
            *below += count;
            Some(*below)
        })
    }
}

impl State {
    /// Folds every histogram's values since the last fold, between pulses.
    pub(super) fn fold_histograms(&self) {
        self.registry.visit_histograms(|_, cell| {
            let mut pulse = cell.pulse.lock();
            pulse
                .folded
                .get_or_insert_with(|| Folded::new(cell))
                .fold(cell);
        });
    }
}
