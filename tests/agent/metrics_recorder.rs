//! The `metrics` facade recorder against the spy agent. Each test records
//! through its own recorder with `with_local_recorder`, so tests run side by
//! side; one installs the global recorder.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ::metrics::{Unit, counter, describe_gauge, describe_histogram, gauge, histogram};
use loggregator::proto::envelope as pb;
use loggregator::spy::TestCerts;
use loggregator::{
    Envelope, Error, GlobalSlot, IngressClient, MetricsRecorder, Overflow, SourceInfo,
};

use crate::common::{
    POLL, WAIT, absent_agent, assert_closed_accounting, join_within, setup, start_agent,
    wait_for_stats,
};
use crate::pulse_metrics::{agent_totals, fill_queue, waiting_emitters};

fn key(name: &str, source: &str, tags: &[(&str, &str)]) -> crate::pulse_metrics::CounterKey {
    let mut tags: Vec<(String, String)> = tags
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tags.sort();
    (name.to_string(), source.to_string(), tags)
}

fn counters_named<'a>(envelopes: &'a [pb::Envelope], name: &str) -> Vec<&'a pb::Envelope> {
    envelopes
        .iter()
        .filter(|e| e.has_counter() && e.counter().name == name)
        .collect()
}

/// The gauge envelopes carrying a metric `name`.
fn gauges_with<'a>(envelopes: &'a [pb::Envelope], name: &str) -> Vec<&'a pb::Envelope> {
    envelopes
        .iter()
        .filter(|e| e.has_gauge() && e.gauge().metrics.contains_key(name))
        .collect()
}

fn within(actual: f64, expected: f64, relative: f64) -> bool {
    (actual - expected).abs() <= expected.abs() * relative
}

#[test]
fn two_recorders_sharing_a_counter_add_up_in_the_agent() {
    let setup = setup();
    let client = |instance: &str| {
        setup
            .builder()
            .source(SourceInfo::new("mr-shared", instance))
            .pulse_interval(Duration::from_millis(5))
            .build()
            .unwrap()
    };
    let (first, second) = (client("0"), client("1"));
    let recorders = [
        (MetricsRecorder::new(first.clone()), 2),
        (MetricsRecorder::new(second.clone()), 3),
    ];
    for round in 0..20 {
        for (recorder, by) in &recorders {
            ::metrics::with_local_recorder(recorder, || {
                counter!("mr_shared", "route" => "/a").increment(*by);
            });
        }
        if round % 5 == 0 {
            // Several pulses of each client, interleaved.
            setup.agent.wait_for_proto_envelopes(round / 5 + 1, WAIT);
        }
    }
    first.close(WAIT).unwrap();
    second.close(WAIT).unwrap();
    let received = setup.agent.proto_envelopes();
    let shared = counters_named(&received, "mr_shared");
    assert!(shared.len() > 2, "several pulses: {received:?}");
    assert!(shared.iter().all(|e| e.counter().total == 0), "{shared:?}");
    let totals = agent_totals(&received);
    assert_eq!(
        totals.get(&key("mr_shared", "mr-shared", &[("route", "/a")])),
        Some(&100),
        "{totals:?}"
    );
}

#[test]
fn absolute_sends_each_rise_and_a_smaller_reading_changes_nothing() {
    let setup = setup();
    let client = setup
        .builder()
        .source(SourceInfo::new("mr-absolute", "0"))
        .pulse_interval(Duration::from_millis(5))
        .build()
        .unwrap();
    let recorder = MetricsRecorder::new(client.clone());
    let absolute = |value: u64| {
        ::metrics::with_local_recorder(&recorder, || counter!("mr_absolute").absolute(value));
    };
    let sent = |count: usize| {
        let deadline = Instant::now() + WAIT;
        loop {
            let received = setup.agent.proto_envelopes();
            let deltas: Vec<u64> = counters_named(&received, "mr_absolute")
                .iter()
                .map(|e| e.counter().delta)
                .collect();
            if deltas.len() >= count || Instant::now() > deadline {
                return deltas;
            }
            std::thread::sleep(POLL);
        }
    };
    absolute(10);
    assert_eq!(sent(1), vec![10], "the first value counts in full");
    absolute(15);
    assert_eq!(sent(2), vec![10, 5]);
    absolute(15);
    // A late reading of the same external counter: the facade's "at least".
    absolute(4);
    absolute(20);
    client.close(WAIT).unwrap();
    let received = setup.agent.proto_envelopes();
    assert_eq!(sent(3), vec![10, 5, 5], "{received:?}");
    assert_eq!(
        agent_totals(&received).get(&key("mr_absolute", "mr-absolute", &[])),
        Some(&20)
    );
}

/// Readings of one external counter reported by several threads in any
/// order, and one reported less often than `idle_timeout`: the agent's
/// total is the highest reading.
#[test]
fn absolute_totals_the_highest_reading_across_threads_and_idle_forgetting() {
    let setup = setup();
    let client = setup
        .builder()
        .source(SourceInfo::new("mr-absolute-max", "0"))
        .pulse_interval(Duration::from_millis(5))
        .build()
        .unwrap();
    let recorder = MetricsRecorder::new(client.clone()).idle_timeout(Duration::from_millis(50));
    let absolute = |name: &'static str, value: u64| {
        ::metrics::with_local_recorder(&recorder, || counter!(name).absolute(value));
    };
    let total = |name: &str| {
        agent_totals(&setup.agent.proto_envelopes())
            .get(&key(name, "mr-absolute-max", &[]))
            .copied()
    };
    std::thread::scope(|scope| {
        for thread in 0..4u64 {
            let absolute = &absolute;
            scope.spawn(move || {
                // Each thread reads the external counter at its own moments.
                for reading in (1..=1_000u64).filter(|r| r % 4 == thread).rev() {
                    absolute("mr_absolute_threads", reading);
                }
            });
        }
    });
    for reading in [10, 99, 100, 99] {
        absolute("mr_absolute_rare", reading);
    }
    wait_until(|| total("mr_absolute_rare") >= Some(100));
    // Forgotten once idle (no handle is kept) ...
    wait_until(|| live_series(&recorder) == Some(0));
    // ... and read again later.
    absolute("mr_absolute_rare", 120);
    client.close(WAIT).unwrap();
    assert_eq!(total("mr_absolute_rare"), Some(120));
    assert_eq!(total("mr_absolute_threads"), Some(1_000));
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

#[test]
fn labels_become_tags_ids_and_gauges_of_a_label_set_share_an_envelope_with_units() {
    let setup = setup();
    let client = setup
        .builder()
        .source(SourceInfo::new("mr-default", "0"))
        .tag("deployment", "cf")
        .pulse_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let recorder = MetricsRecorder::new(client.clone());
    ::metrics::with_local_recorder(&recorder, || {
        describe_gauge!("mr_memory", Unit::Bytes, "resident");
        describe_gauge!("mr_cpu", Unit::Percent, "of one core");
        gauge!("mr_memory", "pool" => "a").set(1.5e8);
        gauge!("mr_cpu", "pool" => "a").set(12.5);
        let threads = gauge!("mr_threads", "pool" => "a");
        threads.increment(5.0);
        threads.decrement(2.0);
        gauge!("mr_memory", "pool" => "b").set(7.0);
        counter!(
            "mr_labeled",
            "source_id" => "svc",
            "instance_id" => "7",
            "route" => "/x"
        )
        .increment(1);
        counter!("mr_unlabeled").increment(1);
    });
    client.close(WAIT).unwrap();
    let received = setup.agent.proto_envelopes();

    let labeled = counters_named(&received, "mr_labeled")[0];
    assert_eq!(
        (labeled.source_id.as_str(), labeled.instance_id.as_str()),
        ("svc", "7")
    );
    let tags: HashMap<&str, &str> = labeled
        .tags
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(tags, [("route", "/x"), ("deployment", "cf")].into());
    let unlabeled = counters_named(&received, "mr_unlabeled")[0];
    assert_eq!(
        (unlabeled.source_id.as_str(), unlabeled.instance_id.as_str()),
        ("mr-default", "0"),
        "the client's default source"
    );

    let gauges: Vec<&pb::Envelope> = received.iter().filter(|e| e.has_gauge()).collect();
    assert_eq!(gauges.len(), 2, "one per label set: {gauges:?}");
    let pool = |name: &str| {
        *gauges
            .iter()
            .find(|e| e.tags["pool"] == name)
            .unwrap_or_else(|| panic!("pool {name}: {gauges:?}"))
    };
    let a = &pool("a").gauge().metrics;
    assert_eq!(a.len(), 3, "{a:?}");
    assert_eq!(
        (a["mr_memory"].value, a["mr_memory"].unit.as_str()),
        (1.5e8, "bytes")
    );
    assert_eq!(
        (a["mr_cpu"].value, a["mr_cpu"].unit.as_str()),
        (12.5, "percent")
    );
    assert_eq!(
        (a["mr_threads"].value, a["mr_threads"].unit.as_str()),
        (3.0, "")
    );
    assert_eq!(pool("a").tags["deployment"], "cf");
    assert_eq!(pool("b").gauge().metrics["mr_memory"].value, 7.0);
}

#[test]
fn an_idle_series_stops_being_sent_and_a_live_one_goes_on() {
    let setup = setup();
    let idle_timeout = Duration::from_millis(400);
    let client = setup
        .builder()
        .pulse_interval(Duration::from_millis(10))
        .build()
        .unwrap();
    let recorder = MetricsRecorder::new(client.clone()).idle_timeout(idle_timeout);
    let set = |name: &'static str, value: f64| {
        ::metrics::with_local_recorder(&recorder, || gauge!(name, "set" => "mr_idle").set(value));
    };
    // Read before the set: the series can be idle no sooner than this
    // plus `idle_timeout`, and a pulse envelope is stamped after the pulse
    // decided what it holds.
    let set_at = loggregator::UnixNanos::now().as_i64();
    set("mr_idle_once", 1.0);
    // The live gauge shares the idle one's label set, so each envelope
    // says whether the idle one was still in it.
    let mut rounds = 0;
    let mut gone_at = None;
    let deadline = Instant::now() + WAIT;
    loop {
        set("mr_idle_live", f64::from(rounds));
        let seen = setup.agent.proto_envelopes().len();
        let received = setup.agent.wait_for_proto_envelopes(seen + 1, WAIT);
        let last = received.last().unwrap();
        let with_idle = last.gauge().metrics.contains_key("mr_idle_once");
        match (with_idle, gone_at) {
            (false, None) => gone_at = Some(received.len()),
            (true, Some(_)) => panic!("sent again after it stopped: {last:?}"),
            _ => {}
        }
        rounds += 1;
        if gone_at.is_some_and(|at| received.len() >= at + 5) {
            break;
        }
        assert!(Instant::now() < deadline, "never stopped: {last:?}");
    }
    // The first pulse without it came only once it had been idle so long,
    // and it was sent until then: a pulse in the second half of the
    // timeout still had it (pulses come every 10 ms; a pulse thread held
    // up for longer than half the timeout is not a loaded machine, it is a
    // stopped one).
    let received = setup.agent.proto_envelopes();
    let since_set = |e: &pb::Envelope| Duration::from_nanos((e.timestamp - set_at).max(0) as u64);
    let first_without = received
        .iter()
        .find(|e| !e.gauge().metrics.contains_key("mr_idle_once"))
        .unwrap();
    assert!(
        since_set(first_without) >= idle_timeout,
        "it stopped after {:?} idle, before {idle_timeout:?}",
        since_set(first_without)
    );
    let last_with = received
        .iter()
        .rev()
        .find(|e| e.gauge().metrics.contains_key("mr_idle_once"))
        .unwrap();
    assert!(
        since_set(last_with) >= idle_timeout / 2,
        "last sent {:?} after it was set, with {idle_timeout:?} to go idle",
        since_set(last_with)
    );
    client.close(WAIT).unwrap();
    let received = setup.agent.proto_envelopes();
    let with_idle = gauges_with(&received, "mr_idle_once");
    assert!(
        with_idle.len() >= 2,
        "sent every interval while live: {with_idle:?}"
    );
    assert!(
        with_idle
            .iter()
            .all(|e| e.gauge().metrics["mr_idle_once"].value == 1.0)
    );
}

#[test]
fn the_series_cap_counts_every_registration_it_refuses() {
    let setup = setup();
    let client = setup
        .builder()
        .pulse_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let recorder = MetricsRecorder::new(client.clone()).max_series(3);
    ::metrics::with_local_recorder(&recorder, || {
        counter!("mr_cap_a").increment(1);
        gauge!("mr_cap_b").set(1.0);
        histogram!("mr_cap_c").record(1.0);
        // Existing series are still found at the cap.
        counter!("mr_cap_a").increment(1);
        counter!("mr_cap_d").increment(1);
        counter!("mr_cap_d").increment(1);
        gauge!("mr_cap_e").set(1.0);
    });
    assert_eq!(client.stats().series_dropped, 3);
    client.close(WAIT).unwrap();
    let received = setup.agent.proto_envelopes();
    assert_eq!(counters_named(&received, "mr_cap_a")[0].counter().delta, 2);
    assert_eq!(gauges_with(&received, "mr_cap_b").len(), 1);
    assert_eq!(counters_named(&received, "mr_cap_c_count").len(), 1);
    assert!(counters_named(&received, "mr_cap_d").is_empty());
    assert!(gauges_with(&received, "mr_cap_e").is_empty());
}

/// The agent away while the program keeps the queue full of logs and counts
/// on a counter and a bucketed histogram, one pulse at least after each
/// round; then the agent comes back and the program counts as many again.
/// Every delta the queue refused goes out later: the agent's totals hold
/// every count.
fn counts_through_an_outage_with_the_queue_full(overflow: Overflow, source: &str) {
    let certs = TestCerts::generate().unwrap();
    let (addr, builder) = absent_agent(&certs);
    let client = builder
        .source(SourceInfo::new(source, "0"))
        .queue_capacity(8)
        .batch_max_envelopes(2)
        .overflow(overflow)
        .pulse_interval(Duration::from_millis(5))
        .build()
        .unwrap();
    let recorder = MetricsRecorder::new(client.clone()).buckets(&[1.0]);
    let count = || {
        ::metrics::with_local_recorder(&recorder, || {
            counter!("mr_outage").increment(1);
            histogram!("mr_outage_seconds").record(0.5);
        });
    };
    client.emit(Envelope::log("first"));
    // Once the sender thread has failed to write twice it takes no more:
    // only the test and the pulses fill the queue.
    wait_for_stats(&client, |s| s.errors >= 2);
    let waiting = if overflow == Overflow::Block {
        while client.stats().queued < 8 {
            client.emit(Envelope::log("filler"));
        }
        let emitter = client.clone();
        let waiting = std::thread::spawn(move || emitter.emit(Envelope::log("waits")));
        wait_for_stats(&client, |s| waiting_emitters(s) == 1);
        Some(waiting)
    } else {
        None
    };
    for _ in 0..30 {
        if waiting.is_none() {
            fill_queue(&client, overflow);
        }
        // Never waits, though an emitter does under `Block`.
        count();
        let before = client.stats().emitted;
        wait_for_stats(&client, |s| s.emitted > before);
    }
    let during = client.stats();
    assert_eq!(during.sent, 0, "{during:?}");
    if let Some(waiting) = &waiting {
        assert!(!waiting.is_finished(), "{during:?}");
    }
    let agent = start_agent(&certs, &addr);
    if let Some(waiting) = waiting {
        join_within(waiting, WAIT);
    }
    wait_for_stats(&client, |s| s.queued + s.in_flight == 0 && s.sent > 0);
    for _ in 0..30 {
        count();
    }
    client.close(WAIT).unwrap();
    let stats = client.stats();
    assert_closed_accounting(&stats);
    let received = agent.proto_envelopes();
    let totals = agent_totals(&received);
    let total = |name: &str, tags: &[(&str, &str)]| totals.get(&key(name, source, tags)).copied();
    assert_eq!(total("mr_outage", &[]), Some(60), "{totals:?} {stats:?}");
    assert_eq!(
        total("mr_outage_seconds_count", &[]),
        Some(60),
        "{totals:?}"
    );
    assert_eq!(total("mr_outage_seconds_bucket", &[("le", "1")]), Some(60));
    assert_eq!(
        total("mr_outage_seconds_bucket", &[("le", "+Inf")]),
        Some(60)
    );
    let largest = counters_named(&received, "mr_outage")
        .iter()
        .map(|e| e.counter().delta)
        .max();
    assert!(
        largest >= Some(30),
        "the outage's deltas were refused and carried: {largest:?}"
    );
}

#[test]
fn a_full_queue_during_pulses_loses_no_count_drop_newest() {
    counts_through_an_outage_with_the_queue_full(Overflow::DropNewest, "mr-outage-newest");
}

#[test]
fn a_full_queue_during_pulses_loses_no_count_drop_oldest() {
    counts_through_an_outage_with_the_queue_full(Overflow::DropOldest, "mr-outage-oldest");
}

#[test]
fn a_full_queue_during_pulses_loses_no_count_and_recording_never_waits_block() {
    counts_through_an_outage_with_the_queue_full(Overflow::Block, "mr-outage-block");
}

/// The one test in this binary that installs the global recorder.
#[test]
fn install_sets_the_global_recorder_once_and_a_second_is_refused() {
    let setup = setup();
    let client = setup
        .builder()
        .source(SourceInfo::new("mr-global", "0"))
        .pulse_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    MetricsRecorder::new(client.clone())
        .max_series(1)
        .install()
        .unwrap();
    let other = MetricsRecorder::new(client.clone()).install();
    assert!(
        matches!(
            other,
            Err(Error::AlreadyInstalled {
                slot: GlobalSlot::MetricsRecorder,
                holder: "a MetricsRecorder installed before",
                ..
            })
        ),
        "{other:?}"
    );
    let message = other.unwrap_err().to_string();
    assert!(
        message.starts_with("the `metrics` facade's global recorder is already set"),
        "{message}"
    );
    std::thread::spawn(|| counter!("mr_global").increment(3))
        .join()
        .unwrap();
    client.close(WAIT).unwrap();
    let received = setup.agent.proto_envelopes();
    assert_eq!(counters_named(&received, "mr_global")[0].counter().delta, 3);
    // After close nothing is kept: were new series kept, the cap of one
    // would refuse one of them and count it.
    counter!("mr_global_after_close").increment(1);
    counter!("mr_global_after_close_too").increment(1);
    assert_eq!(client.stats().series_dropped, 0);
}

#[test]
fn nothing_is_recorded_once_the_client_has_closed() {
    let setup = setup();
    let client: IngressClient = setup.client();
    let recorder = MetricsRecorder::new(client.clone()).max_series(1);
    let kept = ::metrics::with_local_recorder(&recorder, || histogram!("mr_after_close"));
    kept.record(1.0);
    client.close(WAIT).unwrap();
    for _ in 0..1_000 {
        kept.record(2.0);
    }
    ::metrics::with_local_recorder(&recorder, || {
        counter!("mr_after_close_counter").increment(1);
        gauge!("mr_after_close_gauge").set(1.0);
    });
    let received = setup.agent.proto_envelopes();
    assert_eq!(
        counters_named(&received, "mr_after_close_count")[0]
            .counter()
            .delta,
        1
    );
    // Were series kept after close, the cap of one would refuse one of
    // them and count it.
    assert_eq!(client.stats().series_dropped, 0);
    assert_eq!(
        live_series(&recorder),
        Some(0),
        "nothing held: {recorder:?}"
    );
}

/// A recorder dropped while its client lives (as tests with
/// `with_local_recorder` do, thousands of times): what it gathered goes out
/// with the next pulse, then it is gone, and a handle kept past it records
/// nothing.
#[test]
fn a_dropped_recorder_sends_what_it_gathered_then_nothing() {
    let setup = setup();
    let client = setup
        .builder()
        .source(SourceInfo::new("mr-dropped", "0"))
        .pulse_interval(Duration::from_millis(5))
        .build()
        .unwrap();
    let beat = client.gauge("mr_dropped_beat", "");
    beat.set(1.0);
    let beats = || gauges_with(&setup.agent.proto_envelopes(), "mr_dropped_beat").len();
    for _ in 0..10_000 {
        let recorder = MetricsRecorder::new(client.clone());
        ::metrics::with_local_recorder(&recorder, || counter!("mr_dropped_many").increment(1));
    }
    let recorder = MetricsRecorder::new(client.clone());
    let (kept, latency) = ::metrics::with_local_recorder(&recorder, || {
        (counter!("mr_dropped"), histogram!("mr_dropped_seconds"))
    });
    kept.increment(2);
    latency.record(1.0);
    drop(recorder);
    let total = |name: &str| {
        agent_totals(&setup.agent.proto_envelopes())
            .get(&key(name, "mr-dropped", &[]))
            .copied()
    };
    wait_until(|| total("mr_dropped") == Some(2) && total("mr_dropped_seconds_count") == Some(1));
    kept.increment(5);
    latency.record(2.0);
    // Pulses after the recorder's last.
    let seen = beats();
    wait_until(|| beats() >= seen + 3);
    client.close(WAIT).unwrap();
    assert_eq!(total("mr_dropped"), Some(2));
    assert_eq!(total("mr_dropped_seconds_count"), Some(1));
    assert_eq!(total("mr_dropped_many"), Some(10_000));
    assert_eq!(client.stats().dropped.total(), 0, "{:?}", client.stats());
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

/// A counter whose name and tags alone exceed `batch_max_bytes` can never
/// be sent: it is counted once as too large and its series let go.
#[test]
fn a_counter_too_large_for_any_batch_is_counted_once_and_let_go() {
    let setup = setup();
    let client = setup
        .builder()
        .source(SourceInfo::new("mr-too-large", "0"))
        .batch_max_bytes(1_024)
        .pulse_interval(Duration::from_millis(5))
        .build()
        .unwrap();
    let beat = client.gauge("mr_too_large_beat", "");
    beat.set(1.0);
    let beats = || gauges_with(&setup.agent.proto_envelopes(), "mr_too_large_beat").len();
    let recorder = MetricsRecorder::new(client.clone()).max_series(1);
    let blob = "x".repeat(2_000);
    ::metrics::with_local_recorder(&recorder, || {
        counter!("mr_too_large", "blob" => blob.clone()).increment(1)
    });
    wait_for_stats(&client, |s| s.dropped.too_large > 0);
    let seen = beats();
    wait_until(|| beats() >= seen + 5);
    assert_eq!(client.stats().dropped.too_large, 1, "{:?}", client.stats());
    // Its slot under the cap is free again.
    ::metrics::with_local_recorder(&recorder, || counter!("mr_fits").increment(1));
    client.close(WAIT).unwrap();
    let stats = client.stats();
    assert_eq!(
        (stats.dropped.too_large, stats.series_dropped),
        (1, 0),
        "{stats:?}"
    );
    let totals = agent_totals(&setup.agent.proto_envelopes());
    assert_eq!(totals.get(&key("mr_fits", "mr-too-large", &[])), Some(&1));
}

/// The live series a recorder holds, as its `Debug` shows them.
fn live_series(recorder: &MetricsRecorder) -> Option<usize> {
    let shown = format!("{recorder:?}");
    let (_, after) = shown.split_once("live_series: Some(")?;
    after.split(')').next()?.parse().ok()
}

/// Waits (bounded) until `ready` holds.
fn wait_until(ready: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !ready() {
        assert!(Instant::now() < deadline, "never got there");
        std::thread::sleep(POLL);
    }
}
