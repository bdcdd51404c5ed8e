//! The facade's side: registering series, and where that is refused.

use std::sync::Arc;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

use super::clash::SeriesKind;
use super::state::State;
use super::{FOLD_INTERVAL, MetricsRecorder};

impl MetricsRecorder {
    /// The state behind every series, made once: it joins the client's
    /// pulses then.
    fn state(&self) -> &Arc<State> {
        self.state.get_or_init(|| {
            let state = Arc::new(State::new(self.settings.clone(), self.client.counters()));
            if !self.client.add_pulse_source(state.clone(), FOLD_INTERVAL) {
                state.ended.set();
            }
            state
        })
    }

    /// The state, unless nothing should be recorded now: on the client's own
    /// threads, or once the recorder has sent its last report.
    fn recording(&self) -> Option<&State> {
        if crate::on_own_thread() {
            return None;
        }
        let state = self.state();
        (!state.ended.is_set()).then_some(&**state)
    }
}

impl Recorder for MetricsRecorder {
    fn describe_counter(&self, _key: KeyName, _unit: Option<Unit>, _description: SharedString) {
        // A Counter envelope has no unit, and no envelope a description.
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, _description: SharedString) {
        if let (Some(state), Some(unit)) = (self.recording(), unit) {
            state.describe(key, unit);
        }
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, _description: SharedString) {
        if let (Some(state), Some(unit)) = (self.recording(), unit) {
            state.describe(key, unit);
        }
    }

    fn register_counter(&self, key: &Key, _metadata: &Metadata<'_>) -> Counter {
        let Some(state) = self.recording() else {
            return Counter::noop();
        };
        if let Some(cell) = state.registry.get_counter(key) {
            return Counter::from_arc(cell);
        }
        state
            .admit(
                key,
                SeriesKind::Counter,
                || state.registry.get_counter(key),
                || state.registry.get_or_create_counter(key, Arc::clone),
            )
            .map_or_else(Counter::noop, Counter::from_arc)
    }

    fn register_gauge(&self, key: &Key, _metadata: &Metadata<'_>) -> Gauge {
        let Some(state) = self.recording() else {
            return Gauge::noop();
        };
        if let Some(cell) = state.registry.get_gauge(key) {
            return Gauge::from_arc(cell);
        }
        state
            .admit(
                key,
                SeriesKind::Gauge,
                || state.registry.get_gauge(key),
                || state.registry.get_or_create_gauge(key, Arc::clone),
            )
            .map_or_else(Gauge::noop, Gauge::from_arc)
    }

    fn register_histogram(&self, key: &Key, _metadata: &Metadata<'_>) -> Histogram {
        let Some(state) = self.recording() else {
            return Histogram::noop();
        };
        if let Some(cell) = state.registry.get_histogram(key) {
            return Histogram::from_arc(cell);
        }
        state
            .admit(
                key,
                SeriesKind::Histogram,
                || state.registry.get_histogram(key),
                || state.registry.get_or_create_histogram(key, Arc::clone),
            )
            .map_or_else(Histogram::noop, Histogram::from_arc)
    }
}
