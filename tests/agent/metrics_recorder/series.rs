//! Series and the recorder's life: labels become tags and ids, gauges of a
//! label set share an envelope, an idle series stops, the series cap, the
//! global recorder, a closed client and a dropped recorder.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ::metrics::{Unit, counter, describe_gauge, gauge, histogram};
use loggregator::proto::envelope as pb;
use loggregator::{Error, GlobalSlot, IngressClient, MetricsRecorder, SourceInfo};

use super::{counters_named, gauges_with, key, live_series, wait_until};
use crate::common::{WAIT, setup};
use crate::pulse_metrics::agent_totals;

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
