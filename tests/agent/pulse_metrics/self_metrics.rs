//! Gauges, timers, process metrics, the default source, and the client's
//! self-metrics: quiet when idle, adding up, carrying an outage's drops.

use std::time::{Duration, Instant, SystemTime};

use loggregator::proto::envelope as pb;
use loggregator::spy::TestCerts;
use loggregator::{Delivery, Envelope, IngressClient, Overflow, SourceInfo, Stats, UnixNanos};

use super::{agent_totals, fill_queue};
use crate::common::{
    WAIT, absent_agent, assert_closed_accounting, setup, start_agent, wait_for_stats,
};

#[test]
fn gauges_of_one_interval_share_an_envelope_with_exact_values() {
    let setup = setup();
    let client = setup
        .builder()
        .pulse_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    client.gauge("memory", "bytes").set(1.5e8);
    let temperature = client.gauge("temperature", "celsius");
    temperature.set(-3.25);
    client.close(WAIT).unwrap();
    let received = setup.agent.proto_envelopes();
    assert_eq!(received.len(), 1, "{received:?}");
    let metrics = &received[0].gauge().metrics;
    assert_eq!(
        (metrics["memory"].value, metrics["memory"].unit.as_str()),
        (1.5e8, "bytes")
    );
    assert_eq!(
        (
            metrics["temperature"].value,
            metrics["temperature"].unit.as_str()
        ),
        (-3.25, "celsius")
    );
}

#[test]
fn a_timer_guard_sends_real_start_and_stop_times_unless_cancelled() {
    let setup = setup();
    let client = setup.client();
    let before = UnixNanos::now().as_i64();
    {
        let _timer = client.timer("db_query");
        std::thread::sleep(Duration::from_millis(5)); // the timed work
    }
    client.timer("stopped").stop();
    client.timer("cancelled").cancel();
    let after = UnixNanos::from(SystemTime::now()).as_i64();
    client.close(WAIT).unwrap();
    let received = setup.agent.proto_envelopes();
    let names: Vec<&str> = received.iter().map(|e| e.timer().name.as_str()).collect();
    assert_eq!(names, vec!["db_query", "stopped"]);
    let timer = received[0].timer();
    assert!(
        before <= timer.start && timer.start < timer.stop && timer.stop <= after,
        "{timer:?}"
    );
    assert!(timer.stop - timer.start >= 5_000_000);
}

#[test]
fn process_metrics_report_memory_cpu_threads_and_descriptors() {
    let setup = setup();
    let client = setup.client();
    client.process_metrics(Duration::from_millis(20)).unwrap();
    let received = setup.agent.wait_for_proto_envelopes(2, WAIT);
    client.close(WAIT).unwrap();
    let metrics = &received[0].gauge().metrics;
    for (name, unit) in [
        ("memory", "bytes"),
        ("cpu", "percentage"),
        ("threads", "count"),
        ("file_descriptors", "count"),
    ] {
        assert_eq!(metrics[name].unit, unit);
    }
    assert!(
        metrics["memory"].value > 1e6 && metrics["threads"].value >= 3.0,
        "{metrics:?}"
    );
    assert!(
        client.process_metrics(Duration::from_millis(20)).is_err(),
        "stopped with the client"
    );
}

#[test]
fn the_default_source_fills_in_envelopes_that_name_none() {
    let setup = setup();
    let client = setup
        .builder()
        .source(SourceInfo::new("my-app-guid", "7"))
        .build()
        .unwrap();
    client.emit(loggregator::Envelope::log("mine").source("other", "1"));
    client.emit(loggregator::Envelope::log("default"));
    client.counter("hits").inc();
    client.close(WAIT).unwrap();
    let ids: Vec<(String, String)> = setup
        .agent
        .proto_envelopes()
        .iter()
        .map(|e| (e.source_id.clone(), e.instance_id.clone()))
        .collect();
    let default = ("my-app-guid".to_string(), "7".to_string());
    assert_eq!(
        ids,
        vec![("other".into(), "1".into()), default.clone(), default]
    );
}

/// What the agent's totals say of the client, from the self-metrics it
/// received: emitted, sent, and dropped with reason `queue_full`.
fn self_reported(received: &[pb::Envelope], source: &str) -> (u64, u64, u64) {
    let totals = agent_totals(received);
    let total = |name: &str, tags: Vec<(String, String)>| {
        let key = (
            format!("loggregator_client_{name}"),
            source.to_string(),
            tags,
        );
        totals.get(&key).copied().unwrap_or(0)
    };
    let queue_full = vec![("reason".to_string(), "queue_full".to_string())];
    (
        total("emitted", vec![]),
        total("sent", vec![]),
        total("dropped", queue_full),
    )
}

/// Waits (bounded) until the client has emitted nothing for `still`
/// (a window to measure, not a wait for something to happen: no event
/// marks a report that does not happen) with nothing queued or in flight.
fn wait_until_quiet(client: &IngressClient, still: Duration) -> Stats {
    let deadline = Instant::now() + WAIT;
    loop {
        let before = client.stats();
        std::thread::sleep(still);
        let after = client.stats();
        let settled = |s: &Stats| s.queued + s.in_flight == 0;
        if before == after && settled(&after) {
            return after;
        }
        assert!(
            Instant::now() < deadline,
            "the client never went quiet: {after:?}"
        );
    }
}

/// An idle client's self-metrics stop, under either delivery; at close the
/// last report brings the agent's totals to the client's counts exactly.
fn self_metrics_go_quiet_and_add_up(delivery: Delivery, source: &str) {
    let setup = setup();
    let client = setup
        .builder()
        .source(SourceInfo::new(source, "0"))
        .self_metrics(true)
        .delivery(delivery)
        .pulse_interval(Duration::from_millis(5))
        .confirm_interval(Duration::from_millis(20))
        .build()
        .unwrap();
    for n in 0..5 {
        client.emit(Envelope::log(format!("{n}")));
    }
    // Longer than several confirmations and many pulses.
    let quiet = wait_until_quiet(&client, Duration::from_millis(200));
    client.close(WAIT).unwrap();
    let closed = client.stats();
    assert_closed_accounting(&closed);
    let received = setup.agent.proto_envelopes();
    assert_eq!(received.len() as u64, closed.sent, "{closed:?}");
    assert_eq!(
        self_reported(&received, source),
        (quiet.emitted, quiet.sent, 0),
        "the last report covers everything but itself: {quiet:?} {closed:?}"
    );
    assert!(
        received
            .iter()
            .filter(|e| e.has_counter())
            .all(|c| c.counter().total == 0 && c.counter().delta > 0)
    );
    let gauge = received.iter().rev().find(|e| e.has_gauge()).unwrap();
    assert_eq!(gauge.source_id, source);
    assert_eq!(
        gauge.gauge().metrics["loggregator_client_queued_bytes"].unit,
        "bytes"
    );
}

#[test]
fn self_metrics_of_an_idle_client_go_quiet_at_most_once() {
    self_metrics_go_quiet_and_add_up(Delivery::AtMostOnce, "quiet-most");
}

#[test]
fn self_metrics_of_an_idle_client_go_quiet_at_least_once() {
    self_metrics_go_quiet_and_add_up(Delivery::AtLeastOnce, "quiet-least");
}

/// `loggregator_client_dropped{reason=queue_full}` reported while the agent
/// is away reaches it once it is back, with the exact count.
#[test]
fn self_metrics_carry_the_drops_of_an_outage_to_the_agent() {
    let certs = TestCerts::generate().unwrap();
    let source = "self-outage";
    let (addr, builder) = absent_agent(&certs);
    let client = builder
        .source(SourceInfo::new(source, "0"))
        .self_metrics(true)
        .queue_capacity(8)
        .batch_max_envelopes(2)
        .pulse_interval(Duration::from_millis(5))
        .build()
        .unwrap();
    let mut logs = 0;
    // Reports during the outage, each finding the queue full.
    for _ in 0..10 {
        logs += fill_queue(&client, Overflow::DropNewest);
        let before = client.stats().emitted;
        wait_for_stats(&client, |s| s.emitted > before);
    }
    let during = client.stats();
    assert!(
        during.emitted - logs >= 10 && during.sent == 0,
        "reports during the outage: {during:?}"
    );
    let agent = start_agent(&certs, &addr);
    let quiet = wait_until_quiet(&client, Duration::from_millis(100));
    client.close(WAIT).unwrap();
    assert_closed_accounting(&client.stats());
    let (emitted, sent, queue_full) = self_reported(&agent.proto_envelopes(), source);
    assert!(quiet.dropped.queue_full > 10, "{quiet:?}");
    assert_eq!(
        (emitted, sent, queue_full),
        (quiet.emitted, quiet.sent, quiet.dropped.queue_full),
        "{quiet:?}"
    );
}
