use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use metrics::{CounterFn, HistogramFn, Key};

use super::cells::HistogramCell;
use super::clash::SeriesKind;
use super::fold::Folded;
use super::labels::labels_of;
use super::state::{Ending, State};
use super::{DEFAULT_QUANTILES, Settings};
use crate::envelope::Envelope;
use crate::pulse::PulseSource;
use crate::series::all_taken as sent;
use crate::stats::Counters;

fn settings() -> Settings {
    Settings {
        quantiles: DEFAULT_QUANTILES.to_vec(),
        buckets: None,
        prefix_buckets: Vec::new(),
        idle_timeout: Duration::from_secs(60),
        max_series: 3,
    }
}

fn state(settings: Settings) -> State {
    State::new(settings, Arc::new(Counters::default()))
}

fn later() -> Instant {
    Instant::now() + Duration::from_secs(61)
}

fn record(state: &State, key: &Key) -> Option<Arc<HistogramCell>> {
    if let Some(cell) = state.registry.get_histogram(key) {
        return Some(cell);
    }
    state.admit(
        key,
        SeriesKind::Histogram,
        || None,
        || state.registry.get_or_create_histogram(key, Arc::clone),
    )
}

fn quantile(envelopes: &[Envelope], q: &str) -> Option<f64> {
    envelopes.iter().find_map(|e| {
        let p = e.as_proto();
        (p.has_gauge() && p.tags.get("quantile").map(String::as_str) == Some(q))
            .then(|| p.gauge().metrics["latency"].value)
    })
}

fn sum(envelopes: &[Envelope], name: &str) -> Option<f64> {
    envelopes
        .iter()
        .find_map(|e| e.as_proto().gauge().metrics.get(name).map(|m| m.value))
}

#[test]
fn quantiles_cover_the_interval_and_the_sum_runs_on() {
    let mut settings = settings();
    settings.quantiles = vec![0.5, 1.0];
    let state = state(settings);
    let cell = record(&state, &Key::from_name("latency")).unwrap();
    (1..=100).for_each(|n| cell.record(f64::from(n)));
    let first = sent(state.gather(Ending::No));
    assert!((quantile(&first, "1").unwrap() - 100.0).abs() < 0.1);
    (1001..=1100).for_each(|n| cell.record(f64::from(n)));
    let second = sent(state.gather(Ending::No));
    let median = quantile(&second, "0.5").unwrap();
    assert!((1044.0..=1056.0).contains(&median), "{median}");
    assert_eq!(sum(&second, "latency_sum"), Some(5050.0 + 105_050.0));
    let third = sent(state.gather(Ending::No));
    assert_eq!(quantile(&third, "0.5"), None, "no values, no quantiles");
    assert_eq!(third.len(), 1, "the running sum alone: {third:?}");
}

#[test]
fn values_folded_between_pulses_are_let_go_and_reported_with_the_rest() {
    let mut settings = settings();
    settings.quantiles = vec![1.0];
    let state = state(settings);
    let cell = record(&state, &Key::from_name("latency")).unwrap();
    (1..=3).for_each(|n| cell.record(f64::from(n)));
    state.upkeep();
    assert!(cell.values.is_empty(), "folded, not held");
    (4..=5).for_each(|n| cell.record(f64::from(n)));
    let report = sent(state.gather(Ending::No));
    let count = report.iter().find_map(|e| {
        let p = e.as_proto();
        (p.counter().name == "latency_count").then(|| p.counter().delta)
    });
    assert_eq!(count, Some(5));
    assert!((quantile(&report, "1").unwrap() - 5.0).abs() < 0.05);
    assert_eq!(sum(&report, "latency_sum"), Some(15.0));
}

#[test]
fn labels_become_sorted_tags_and_ids() {
    let key = Key::from_parts(
        "x",
        vec![
            metrics::Label::new("z", "1"),
            metrics::Label::new("source_id", "app"),
            metrics::Label::new("a", "2"),
            metrics::Label::new("instance_id", "3"),
        ],
    );
    let labels = labels_of(&key);
    assert_eq!(
        labels.tags,
        vec![("a".into(), "2".into()), ("z".into(), "1".into())]
    );
    assert_eq!(labels.source_id.as_deref(), Some("app"));
    assert_eq!(labels.instance_id.as_deref(), Some("3"));
}

#[test]
fn buckets_are_cumulative_with_inf_and_the_longest_prefix_wins() {
    let mut settings = settings();
    settings.buckets = Some(vec![10.0]);
    settings.prefix_buckets = vec![
        ("http".into(), vec![1.0]),
        ("http_latency".into(), vec![1.0, 2.0]),
    ];
    assert_eq!(
        settings.buckets_for("http_latency_seconds"),
        Some(&[1.0, 2.0][..])
    );
    assert_eq!(settings.buckets_for("http_bytes"), Some(&[1.0][..]));
    assert_eq!(settings.buckets_for("db"), Some(&[10.0][..]));
    let state = state(settings);
    let cell = record(&state, &Key::from_name("http_latency_seconds")).unwrap();
    let mut folded = Folded::new(&cell);
    for value in [0.5, 1.0, 1.5] {
        cell.record(value);
    }
    folded.fold(&cell);
    for value in [3.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        cell.record(value);
    }
    folded.fold(&cell);
    assert_eq!(
        (folded.count, folded.sum),
        (6, 6.0),
        "infinities out of the sum"
    );
    assert_eq!(folded.cumulative().collect::<Vec<_>>(), vec![3, 4, 6]);
}

#[test]
fn the_cap_counts_each_refused_registration_and_makes_room_when_series_go() {
    let state = state(settings());
    for name in ["a", "b", "c"] {
        assert!(record(&state, &Key::from_name(name)).is_some());
    }
    assert!(record(&state, &Key::from_name("a")).is_some(), "existing");
    assert!(record(&state, &Key::from_name("d")).is_none());
    assert!(record(&state, &Key::from_name("e")).is_none());
    assert_eq!(state.counters.series_dropped.load(Relaxed), 2);
    assert_eq!(state.live.load(Relaxed), 3);
    state.forget_idle(later());
    assert_eq!(state.live.load(Relaxed), 0);
    assert!(record(&state, &Key::from_name("d")).is_some());
}

#[test]
fn an_idle_series_is_kept_while_its_delta_may_come_back_or_a_handle_is_held() {
    let state = state(settings());
    let key = Key::from_name("hits");
    let cell = state
        .admit(
            &key,
            SeriesKind::Counter,
            || None,
            || state.registry.get_or_create_counter(&key, Arc::clone),
        )
        .unwrap();
    cell.increment(2);
    let queued = state.gather(Ending::No);
    state.forget_idle(later());
    assert_eq!(state.live.load(Relaxed), 1, "held");
    drop(cell);
    state.forget_idle(later());
    assert_eq!(state.live.load(Relaxed), 1, "its delta is in the queue");
    drop(queued);
    let again = sent(state.gather(Ending::No));
    assert_eq!(again[0].as_proto().counter().delta, 2, "given back");
    state.forget_idle(later());
    assert_eq!(state.live.load(Relaxed), 0);
}

/// A registration that passed the recorder's check just before the last
/// report and made its series after the report looked at the registry:
/// the handle it returns must not grow, nor the registry keep it.
#[test]
fn a_histogram_made_while_the_last_report_is_gathered_holds_nothing() {
    let state = state(settings());
    let kept = record(&state, &Key::from_name("before")).unwrap();
    kept.record(1.0);
    sent(state.gather(Ending::Close));
    let late = record(&state, &Key::from_name("during")).unwrap();
    for value in 0..10_000 {
        late.record(f64::from(value));
        kept.record(f64::from(value));
    }
    assert!(late.values.is_empty() && kept.values.is_empty());
    assert_eq!(state.registry.get_histogram_handles().len(), 0);
    assert_eq!(state.live.load(Relaxed), 0);
    assert_eq!(state.memory.lock().len(), 0);
}

/// Of forgotten series, at most `max_series` of each kind are remembered,
/// the longest forgotten let go first.
#[test]
fn what_is_remembered_of_forgotten_series_is_bounded() {
    let state = state(settings());
    for round in 0..10u64 {
        let key = Key::from_name(format!("absolute_{round}"));
        let cell = state
            .admit(
                &key,
                SeriesKind::Counter,
                || None,
                || state.registry.get_or_create_counter(&key, Arc::clone),
            )
            .unwrap();
        cell.absolute(100 + round);
        drop(cell);
        sent(state.gather(Ending::No));
        state.forget_idle(later());
    }
    assert_eq!(state.memory.lock().len(), 3, "max_series of them");
    let resumed = |round: u64| {
        let key = Key::from_name(format!("absolute_{round}"));
        let cell = state
            .admit(
                &key,
                SeriesKind::Counter,
                || None,
                || state.registry.get_or_create_counter(&key, Arc::clone),
            )
            .unwrap();
        cell.absolute(200);
        let report = sent(state.gather(Ending::No));
        drop(cell);
        state.forget_idle(later());
        report[0].as_proto().counter().delta
    };
    assert_eq!(resumed(9), 200 - 109, "the latest are remembered");
    assert_eq!(resumed(0), 200, "the oldest was let go");
}

#[test]
fn a_dropped_recorder_reports_once_then_only_deltas_that_come_back_then_finishes() {
    let state = state(settings());
    let key = Key::from_name("hits");
    let cell = state
        .admit(
            &key,
            SeriesKind::Counter,
            || None,
            || state.registry.get_or_create_counter(&key, Arc::clone),
        )
        .unwrap();
    cell.increment(3);
    state.dropped.store(true, Relaxed);
    let refused = state.report(false);
    assert_eq!(refused.len(), 1);
    assert!(!state.finished(), "its delta may come back");
    cell.increment(5);
    drop(refused);
    let again = sent(state.report(false));
    assert_eq!(again.len(), 1);
    assert_eq!(
        again[0].as_proto().counter().delta,
        3,
        "what came back alone"
    );
    assert!(state.report(false).is_empty());
    assert!(state.finished());
}

/// As 10,000 tests with `with_local_recorder` do: each recorder dropped
/// after counting once leaves the pulse once its count is sent.
#[test]
fn dropped_recorders_leave_the_pulse() {
    use crate::policy::Overflow;
    use crate::pulse::Pulses;
    use crate::queue::{Queue, QueueSettings};

    let settings = QueueSettings {
        capacity: 100_000,
        max_bytes: 1 << 26,
        nudge_at: 100_000,
        batch_max_bytes: 1 << 20,
        overflow: Overflow::DropNewest,
    };
    let (wake, _) = crossbeam_channel::unbounded();
    let (queue, receiver) = Queue::new(settings, Arc::default(), Arc::default(), wake);
    let pulses = Pulses::new(Arc::new(queue), None);
    for _ in 0..10_000 {
        let state = Arc::new(state(settings_with_room()));
        pulses.add_source(state.clone());
        let key = Key::from_name("hits");
        let cell = state
            .admit(
                &key,
                SeriesKind::Counter,
                || None,
                || state.registry.get_or_create_counter(&key, Arc::clone),
            )
            .unwrap();
        cell.increment(1);
        state.dropped.store(true, Relaxed);
    }
    assert_eq!(pulses.source_count(), 10_000);
    pulses.send(None);
    assert_eq!(pulses.source_count(), 10_000, "their counts are on the way");
    pulses.queue_waiting(Instant::now());
    let queued: Vec<_> = receiver.data.try_iter().collect();
    assert_eq!(queued.len(), 10_000);
    for queued in queued {
        queued.carried.unwrap().taken();
    }
    pulses.send(None);
    assert_eq!(pulses.source_count(), 0);
}

fn settings_with_room() -> Settings {
    Settings {
        max_series: 10,
        ..settings()
    }
}
