//! A key's labels as its envelopes carry them: tags, and the labels
//! `source_id` and `instance_id` as the envelope's ids, as prom-scraper
//! maps Prometheus labels.

use metrics::Key;

use crate::series::SeriesLabels;

/// Tags sorted by key; of repeated keys the last wins, as in an envelope.
pub(super) fn labels_of(key: &Key) -> SeriesLabels {
    let mut labels = SeriesLabels::default();
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

/// The same labels with one more tag (a bucket's `le`, a quantile's
/// `quantile`), replacing a label of that name.
pub(super) fn with_tag(labels: &SeriesLabels, key: &str, value: String) -> SeriesLabels {
    let mut labels = labels.clone();
    labels.tags.retain(|(k, _)| k != key);
    labels.tags.push((key.to_string(), value));
    labels.tags.sort();
    labels
}
