//! Gauges two series would both send: a histogram `h`'s `h_sum` (or one
//! of its quantile gauges `h`) and a gauge of that name with the same
//! labels would go out as one metric of one Gauge envelope, the later
//! overwriting the earlier in every pulse. The series registered second
//! is refused instead, and counted.

use metrics::Key;

use super::labels::{labels_of, with_tag};
use super::state::State;
use crate::series::SeriesLabels;

/// What a registration asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SeriesKind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric of a Gauge envelope: its name and the envelope's labels.
type GaugeMetric = (String, SeriesLabels);

impl State {
    /// Whether a new series for `key` would send a gauge metric that a live
    /// series already sends, where a histogram takes part (two gauges with
    /// one key are one series). Counters send none.
    pub(super) fn clashes(&self, key: &Key, kind: SeriesKind) -> bool {
        // A gauge can only be a histogram's sum or quantile by its name or
        // its labels: most new gauges look at no other series.
        let maybe_histograms =
            key.name().ends_with("_sum") || key.labels().any(|label| label.key() == "quantile");
        if kind == SeriesKind::Gauge && !maybe_histograms {
            return false;
        }
        let wanted = self.gauge_metrics(key, kind);
        if wanted.is_empty() {
            return false;
        }
        let taken = |name: &str, labels: &SeriesLabels| {
            wanted.iter().any(|(n, l)| n == name && l == labels)
        };
        let mut clash = false;
        self.registry.visit_gauges(|_, cell| {
            clash |= taken(&cell.name, &cell.labels);
        });
        self.registry.visit_histograms(|_, cell| {
            clash |= taken(&cell.sum_name, &cell.labels)
                || cell
                    .quantiles
                    .iter()
                    .any(|(_, labels)| taken(&cell.name, labels));
        });
        clash
    }

    /// The gauge metrics a series for `key` sends, as the storage makes it
    /// (cells.rs).
    fn gauge_metrics(&self, key: &Key, kind: SeriesKind) -> Vec<GaugeMetric> {
        let name = key.name();
        let labels = labels_of(key);
        match kind {
            SeriesKind::Counter => Vec::new(),
            SeriesKind::Gauge => vec![(name.to_string(), labels)],
            SeriesKind::Histogram => {
                let mut metrics = vec![(format!("{name}_sum"), labels.clone())];
                if self.settings.buckets_for(name).is_none() {
                    metrics.extend(self.settings.quantiles.iter().map(|q| {
                        (
                            name.to_string(),
                            with_tag(&labels, "quantile", q.to_string()),
                        )
                    }));
                }
                metrics
            }
        }
    }
}
