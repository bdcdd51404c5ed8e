//! The `metrics` facade recorder against the spy agent. Each test records
//! through its own recorder with `with_local_recorder`, so tests run side by
//! side; one installs the global recorder.
//!
//! Here are the helpers; the tests are in `counters.rs`, `histograms.rs` and
//! `series.rs`.

mod counters;
mod histograms;
mod series;

use std::time::Instant;

use loggregator::MetricsRecorder;
use loggregator::proto::envelope as pb;

use crate::common::{POLL, WAIT};

pub(super) fn key(
    name: &str,
    source: &str,
    tags: &[(&str, &str)],
) -> crate::pulse_metrics::CounterKey {
    let mut tags: Vec<(String, String)> = tags
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tags.sort();
    (name.to_string(), source.to_string(), tags)
}

pub(super) fn counters_named<'a>(
    envelopes: &'a [pb::Envelope],
    name: &str,
) -> Vec<&'a pb::Envelope> {
    envelopes
        .iter()
        .filter(|e| e.has_counter() && e.counter().name == name)
        .collect()
}

/// The gauge envelopes carrying a metric `name`.
pub(super) fn gauges_with<'a>(envelopes: &'a [pb::Envelope], name: &str) -> Vec<&'a pb::Envelope> {
    envelopes
        .iter()
        .filter(|e| e.has_gauge() && e.gauge().metrics.contains_key(name))
        .collect()
}

/// The live series a recorder holds, as its `Debug` shows them.
pub(super) fn live_series(recorder: &MetricsRecorder) -> Option<usize> {
    let shown = format!("{recorder:?}");
    let (_, after) = shown.split_once("live_series: Some(")?;
    after.split(')').next()?.parse().ok()
}

/// Waits (bounded) until `ready` holds.
pub(super) fn wait_until(ready: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !ready() {
        assert!(Instant::now() < deadline, "never got there");
        std::thread::sleep(POLL);
    }
}
