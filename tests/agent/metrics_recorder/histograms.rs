//! Histograms through the recorder: count, sum and quantiles or cumulative
//! buckets, a pulse of a thousand histograms larger than the queue, the sum
//! running on after its series was forgotten, and infinite values.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ::metrics::{Unit, describe_histogram, histogram};
use loggregator::{MetricsRecorder, SourceInfo};

use super::{counters_named, gauges_with, key, live_series, wait_until};
use crate::common::{POLL, WAIT, setup};
use crate::pulse_metrics::agent_totals;

fn within(actual: f64, expected: f64, relative: f64) -> bool {
    (actual - expected).abs() <= expected.abs() * relative
}

/// One report, at close: the values recorded below are all in it.
#[test]
fn histograms_send_count_sum_and_quantiles_or_cumulative_buckets() {
    let setup = setup();
    let client = setup
        .builder()
        .pulse_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let recorder = MetricsRecorder::new(client.clone())
        .quantiles(&[0.5, 0.9, 0.99, 1.0])
        .buckets_for_prefix("mr_bucketed", &[0.5, 0.1, 0.25]);
    let values: Vec<f64> = (1..=1000).map(|n| f64::from(n) / 1000.0).collect();
    ::metrics::with_local_recorder(&recorder, || {
        describe_histogram!("mr_latency", Unit::Seconds, "how long");
        for &value in &values {
            histogram!("mr_latency", "route" => "/a").record(value);
            histogram!("mr_bucketed_seconds").record(value);
        }
    });
    client.close(WAIT).unwrap();
    let received = setup.agent.proto_envelopes();

    let count = counters_named(&received, "mr_latency_count");
    assert_eq!(count.len(), 1, "{received:?}");
    assert_eq!(
        (count[0].counter().delta, count[0].counter().total),
        (1000, 0)
    );
    assert_eq!(count[0].tags["route"], "/a");
    let sum = gauges_with(&received, "mr_latency_sum");
    let expected_sum: f64 = values.iter().sum();
    let sum = &sum[0].gauge().metrics["mr_latency_sum"];
    assert!(within(sum.value, expected_sum, 1e-9), "{sum:?}");
    assert_eq!(sum.unit, "seconds");

    let mut sorted = values.clone();
    sorted.sort_by(f64::total_cmp);
    let quantiles = gauges_with(&received, "mr_latency");
    assert_eq!(quantiles.len(), 4, "one gauge per quantile: {quantiles:?}");
    for q in [0.5, 0.9, 0.99, 1.0] {
        let tag = q.to_string();
        let gauge = quantiles
            .iter()
            .find(|e| e.tags.get("quantile") == Some(&tag))
            .unwrap_or_else(|| panic!("quantile {tag}: {quantiles:?}"));
        assert_eq!(gauge.tags["route"], "/a");
        let expected = sorted[((sorted.len() - 1) as f64 * q) as usize];
        let metric = &gauge.gauge().metrics["mr_latency"];
        assert!(
            within(metric.value, expected, 0.01),
            "quantile {q}: {} for {expected}",
            metric.value
        );
        assert_eq!(metric.unit, "seconds");
    }

    let buckets = counters_named(&received, "mr_bucketed_seconds_bucket");
    let by_le: HashMap<&str, u64> = buckets
        .iter()
        .map(|e| (e.tags["le"].as_str(), e.counter().delta))
        .collect();
    let at_or_below = |bound: f64| values.iter().filter(|v| **v <= bound).count() as u64;
    let expected: HashMap<&str, u64> = [
        ("0.1", at_or_below(0.1)),
        ("0.25", at_or_below(0.25)),
        ("0.5", at_or_below(0.5)),
        ("+Inf", values.len() as u64),
    ]
    .into();
    assert_eq!(by_le, expected);
    assert!(buckets.iter().all(|e| e.counter().total == 0));
    assert!(
        gauges_with(&received, "mr_bucketed_seconds").is_empty(),
        "buckets instead of quantiles"
    );
    assert_eq!(
        counters_named(&received, "mr_bucketed_seconds_count")[0]
            .counter()
            .delta,
        1000
    );
}

/// About 13,000 envelopes in one pulse (a count, 11 buckets and a sum per
/// histogram, each histogram its own label set), more than the default
/// queue holds: the pulse waits for room instead of dropping its tail.
/// Labels of 2 KB make the pulse (26 MB) more than the queue's byte budget
/// (16 MiB) and what gRPC takes in while the agent reads nothing together,
/// so the queue fills whatever the timing.
#[test]
fn a_pulse_larger_than_the_queue_arrives_whole_with_default_settings() {
    let setup = setup();
    let client = setup
        .builder()
        .source(SourceInfo::new("mr-thousand", "0"))
        .build()
        .unwrap();
    let bounds: Vec<f64> = (1..=10).map(|n| f64::from(n) / 10.0).collect();
    let recorder = MetricsRecorder::new(client.clone()).buckets(&bounds);
    let label = |n: usize| format!("{n:0>2000}");
    setup.agent.pause_reading();
    ::metrics::with_local_recorder(&recorder, || {
        for n in 0..1_000 {
            histogram!("mr_thousand", "n" => label(n)).record(0.05);
        }
    });
    // The first pulse (after the default 10 s) fills the queue while the
    // agent reads nothing.
    let full = |s: &loggregator::Stats| {
        s.queued as usize >= loggregator::DEFAULT_QUEUE_CAPACITY
            || s.queued_bytes as usize + 4096 > loggregator::DEFAULT_QUEUE_MAX_BYTES
    };
    let deadline = Instant::now() + loggregator::DEFAULT_PULSE_INTERVAL + WAIT;
    while !full(&client.stats()) && client.stats().dropped.total() == 0 {
        assert!(Instant::now() < deadline, "{:?}", client.stats());
        std::thread::sleep(POLL);
    }
    setup.agent.resume_reading();
    let received = setup.agent.wait_for_proto_envelopes(13_000, WAIT);
    let stats = client.stats();
    assert_eq!(stats.dropped.total(), 0, "{stats:?}");
    let totals = agent_totals(&received);
    for n in 0..1_000 {
        let n = label(n);
        let tags = [("n", n.as_str())];
        assert_eq!(
            totals.get(&key("mr_thousand_count", "mr-thousand", &tags)),
            Some(&1)
        );
        for le in bounds
            .iter()
            .map(f64::to_string)
            .chain(["+Inf".to_string()])
        {
            let tags = [("n", n.as_str()), ("le", le.as_str())];
            assert_eq!(
                totals.get(&key("mr_thousand_bucket", "mr-thousand", &tags)),
                Some(&1),
                "le {le}"
            );
        }
        assert!(
            gauges_with(&received, "mr_thousand_sum")
                .iter()
                .any(|e| e.tags["n"] == n),
            "the sum of {n}"
        );
    }
    client.close(WAIT).unwrap();
}

#[test]
fn the_sum_runs_on_after_its_series_was_forgotten() {
    let setup = setup();
    let client = setup
        .builder()
        .pulse_interval(Duration::from_millis(5))
        .build()
        .unwrap();
    let recorder = MetricsRecorder::new(client.clone()).idle_timeout(Duration::from_millis(50));
    let record = |value: f64| {
        ::metrics::with_local_recorder(&recorder, || histogram!("mr_forgotten").record(value));
    };
    let sums = || -> Vec<f64> {
        gauges_with(&setup.agent.proto_envelopes(), "mr_forgotten_sum")
            .iter()
            .map(|e| e.gauge().metrics["mr_forgotten_sum"].value)
            .collect()
    };
    record(2.0);
    wait_until(|| sums().contains(&2.0));
    wait_until(|| live_series(&recorder) == Some(0));
    record(3.0);
    client.close(WAIT).unwrap();
    let received = setup.agent.proto_envelopes();
    assert_eq!(sums().last(), Some(&5.0), "{:?}", sums());
    let counts: Vec<u64> = counters_named(&received, "mr_forgotten_count")
        .iter()
        .map(|e| e.counter().delta)
        .collect();
    assert_eq!(counts, vec![1, 1]);
}

#[test]
fn infinite_values_are_counted_but_stay_out_of_the_sum() {
    let setup = setup();
    let client = setup
        .builder()
        .source(SourceInfo::new("mr-infinite", "0"))
        .pulse_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let recorder = MetricsRecorder::new(client.clone()).buckets(&[1.0]);
    ::metrics::with_local_recorder(&recorder, || {
        for value in [0.5, f64::INFINITY, f64::NEG_INFINITY, f64::NAN, 2.0] {
            histogram!("mr_infinite").record(value);
        }
    });
    client.close(WAIT).unwrap();
    let received = setup.agent.proto_envelopes();
    let sum = &gauges_with(&received, "mr_infinite_sum")[0].gauge().metrics["mr_infinite_sum"];
    assert_eq!(sum.value, 2.5, "{sum:?}");
    let totals = agent_totals(&received);
    let total =
        |name: &str, tags: &[(&str, &str)]| totals.get(&key(name, "mr-infinite", tags)).copied();
    assert_eq!(
        total("mr_infinite_count", &[]),
        Some(4),
        "NaN alone is ignored"
    );
    assert_eq!(total("mr_infinite_bucket", &[("le", "1")]), Some(2));
    assert_eq!(total("mr_infinite_bucket", &[("le", "+Inf")]), Some(4));
}
