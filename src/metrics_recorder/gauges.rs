//! The gauges of one pulse, packed into one envelope per label set.

use std::collections::HashMap;
use std::sync::Arc;

use crate::envelope::{Envelope, GaugeEnvelope};
use crate::series::SeriesLabels;

/// The most metrics one Gauge envelope carries: a label set shared by more
/// gauges is sent in several envelopes, so none grows past what one batch
/// may hold.
const MAX_GAUGES_PER_ENVELOPE: usize = 500;

/// The gauges of one pulse, by label set.
#[derive(Default)]
pub(super) struct Gauges {
    by_labels: HashMap<Arc<SeriesLabels>, Vec<(GaugeEnvelope, usize)>>,
}

impl Gauges {
    pub(super) fn add(&mut self, labels: &Arc<SeriesLabels>, name: &str, value: f64, unit: &str) {
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

    pub(super) fn into_envelopes(self) -> impl Iterator<Item = Envelope> {
        self.by_labels.into_iter().flat_map(|(labels, envelopes)| {
            envelopes
                .into_iter()
                .map(move |(envelope, _)| labels.stamp(envelope).build())
        })
    }
}
