//! Counters through the recorder: two recorders sharing a counter,
//! `absolute` readings, a counter too large for any batch, and a full queue
//! during pulses (an outage) that loses no count under any overflow policy.

use std::time::{Duration, Instant};

use ::metrics::{counter, histogram};
use loggregator::spy::TestCerts;
use loggregator::{Envelope, MetricsRecorder, Overflow, SourceInfo};

use super::{counters_named, gauges_with, key, live_series, wait_until};
use crate::common::{
    POLL, WAIT, absent_agent, assert_closed_accounting, join_within, setup, start_agent,
    wait_for_stats,
};
use crate::pulse_metrics::{agent_totals, fill_queue, waiting_emitters};

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
