//! Pulse counters and gauges, self-metrics, timers, process metrics and
//! the default source, against the spy agent.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use loggregator::proto::envelope as pb;
use loggregator::spy::TestCerts;
use loggregator::{Delivery, Envelope, IngressClient, Overflow, SourceInfo, Stats, UnixNanos};

use crate::common::{
    POLL, WAIT, absent_agent, assert_closed_accounting, join_within, setup, start_agent,
    wait_for_stats,
};

fn counters(envelopes: &[pb::Envelope]) -> Vec<(String, u64, u64)> {
    envelopes
        .iter()
        .filter(|e| e.has_counter())
        .map(|e| {
            (
                e.counter().name.clone(),
                e.counter().delta,
                e.counter().total,
            )
        })
        .collect()
}

#[test]
fn a_counter_pulses_its_delta_with_total_0_and_stays_silent_when_idle() {
    let setup = setup();
    let client = setup
        .builder()
        .pulse_interval(Duration::from_millis(20))
        .build()
        .unwrap();
    // A gauge reported at every interval, to count intervals by.
    let beat = client.gauge("idle_beat", "");
    beat.set(1.0);
    let beats = |envelopes: &[pb::Envelope]| envelopes.iter().filter(|e| e.has_gauge()).count();
    let requests = client.counter("requests");
    requests.add(3);
    wait_for_envelopes_where(&setup, |e| !counters(e).is_empty());
    requests.add(2);
    wait_for_envelopes_where(&setup, |e| counters(e).len() >= 2);
    requests.inc();
    let received = wait_for_envelopes_where(&setup, |e| counters(e).len() >= 3);
    // Many idle intervals pass before close: none may send `delta 0, total 0`
    // or anything else for this counter.
    let seen = beats(&received);
    wait_for_envelopes_where(&setup, |e| beats(e) >= seen + 5);
    client.flush(WAIT).unwrap();
    let clone = requests.clone();
    clone.add(4);
    drop((requests, clone));
    client.close(WAIT).unwrap();
    let sent = counters(&setup.agent.proto_envelopes());
    assert_eq!(
        sent,
        vec![
            ("requests".into(), 3, 0),
            ("requests".into(), 2, 0),
            ("requests".into(), 1, 0),
            ("requests".into(), 4, 0)
        ]
    );
    // Nor did it try to: a `delta 0, total 0` is dropped at emit, not sent.
    assert_eq!(client.stats().dropped.total(), 0, "{:?}", client.stats());
}

/// Waits (bounded) until what the agent received satisfies `ready`; returns it.
fn wait_for_envelopes_where(
    setup: &crate::common::Setup,
    ready: impl Fn(&[pb::Envelope]) -> bool,
) -> Vec<pb::Envelope> {
    let deadline = Instant::now() + WAIT;
    loop {
        let received = setup.agent.proto_envelopes();
        if ready(&received) {
            return received;
        }
        assert!(Instant::now() < deadline, "never got there: {received:?}");
        std::thread::sleep(POLL);
    }
}

/// A counter's identity in the agent: name, source id, sorted tags.
pub(crate) type CounterKey = (String, String, Vec<(String, String)>);

/// What the agents keep as a counter's total, one per name, source id and
/// tags (not instance id), from the counters they receive in order: a
/// counter with total 0 and a delta adds the delta; any other replaces the
/// total with its own (Forwarder Agent, `CounterAggregator`).
pub(crate) fn agent_totals(envelopes: &[pb::Envelope]) -> HashMap<CounterKey, u64> {
    let mut totals = HashMap::new();
    for envelope in envelopes.iter().filter(|e| e.has_counter()) {
        let counter = envelope.counter();
        let mut tags: Vec<(String, String)> = envelope
            .tags
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        tags.sort();
        let key = (counter.name.clone(), envelope.source_id.clone(), tags);
        let total = totals.entry(key).or_insert(0u64);
        if counter.total == 0 && counter.delta != 0 {
            *total += counter.delta;
        } else {
            *total = counter.total;
        }
    }
    totals
}

#[test]
fn two_clients_counting_one_counter_add_up_in_the_agent() {
    let setup = setup();
    let client = |instance: &str| {
        setup
            .builder()
            .source(SourceInfo::new("shared-source", instance))
            .pulse_interval(Duration::from_millis(5))
            .build()
            .unwrap()
    };
    let (first, second) = (client("0"), client("1"));
    let counters = [
        first.counter_with_tags("acc_pulse", &[("route", "/a")]),
        second.counter_with_tags("acc_pulse", &[("route", "/a")]),
    ];
    for round in 0..50 {
        for counter in &counters {
            counter.inc();
        }
        if round % 10 == 0 {
            // Interleave several pulses of each client.
            setup.agent.wait_for_proto_envelopes(round / 10 + 1, WAIT);
        }
    }
    drop(counters);
    first.close(WAIT).unwrap();
    second.close(WAIT).unwrap();
    let received = setup.agent.proto_envelopes();
    assert!(
        counters_of(&received) > 2,
        "several pulses from each: {received:?}"
    );
    let totals = agent_totals(&received);
    let key = (
        "acc_pulse".to_string(),
        "shared-source".to_string(),
        vec![("route".to_string(), "/a".to_string())],
    );
    assert_eq!(totals.get(&key), Some(&100), "{totals:?}");
    // Through the agent, a counter with a total of its own replaces the
    // sum, and later deltas add to it.
    let third = client("2");
    third.emit(Envelope::counter("acc_pulse").tag("route", "/a").total(7));
    third
        .counter_with_tags("acc_pulse", &[("route", "/a")])
        .add(3);
    third.close(WAIT).unwrap();
    let received = setup.agent.proto_envelopes();
    let totals = agent_totals(&received);
    assert_eq!(totals.get(&key), Some(&10), "{totals:?}");
}

fn counters_of(envelopes: &[pb::Envelope]) -> usize {
    envelopes.iter().filter(|e| e.has_counter()).count()
}

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

/// The agent's key of the counter the outage tests count.
fn acc_pulse(source: &str) -> CounterKey {
    (
        "acc_pulse".to_string(),
        source.to_string(),
        vec![("route".to_string(), "/a".to_string())],
    )
}

/// A client of an agent that is not there yet, whose queue holds 8
/// envelopes (the sender thread takes at most a batch of 2 and seals it
/// while it cannot write), pulsing every 5 ms.
fn outage_client(certs: &TestCerts, source: &str, overflow: Overflow) -> (String, IngressClient) {
    let (addr, builder) = absent_agent(certs);
    let client = builder
        .source(SourceInfo::new(source, "0"))
        .queue_capacity(8)
        .batch_max_envelopes(2)
        .overflow(overflow)
        .pulse_interval(Duration::from_millis(5))
        .build()
        .unwrap();
    (addr, client)
}

/// Emits logs until the queue refuses one (or, `DropOldest`, evicts one,
/// after evicting everything queued before): the next envelope finds it
/// full. Returns how many it emitted.
pub(crate) fn fill_queue(client: &IngressClient, overflow: Overflow) -> u64 {
    let mut emitted = 0;
    if overflow == Overflow::DropOldest {
        // Each evicts one: whatever was queued, a pulse's counter among it, goes.
        for _ in 0..=client.stats().queued {
            client.emit(Envelope::log("filler"));
            emitted += 1;
        }
    }
    let full_before = client.stats().dropped.queue_full;
    while client.stats().dropped.queue_full == full_before {
        client.emit(Envelope::log("filler"));
        emitted += 1;
        assert!(emitted < 1000, "{:?}", client.stats());
    }
    emitted
}

/// Emitted and not yet placed anywhere: emitters waiting for room.
pub(crate) fn waiting_emitters(stats: &Stats) -> u64 {
    stats.emitted - (stats.sent + stats.dropped.total() + stats.queued + stats.in_flight)
}

/// The agent away while the program keeps the queue full of logs and adds
/// 50 to `acc_pulse`, one pulse at least after each; then the agent comes
/// back, the queue drains, and 50 more. Under the agent's rule its total is
/// 100, though the queue refused or evicted a pulse's counter in every
/// round.
fn counter_through_an_outage_with_the_queue_full(overflow: Overflow, source: &str) {
    let certs = TestCerts::generate().unwrap();
    let (addr, client) = outage_client(&certs, source, overflow);
    let counter = client.counter_with_tags("acc_pulse", &[("route", "/a")]);
    client.emit(Envelope::log("first"));
    let mut logs = 1;
    // Once the sender thread has failed to write twice, it holds what it
    // took and takes no more: only the test and the pulses fill the queue.
    wait_for_stats(&client, |s| s.errors >= 2);
    let waiting = if overflow == Overflow::Block {
        // Filled from here, where no emit can wait: each finds room.
        while client.stats().queued < 8 {
            client.emit(Envelope::log("filler"));
            logs += 1;
        }
        let emitter = client.clone();
        let waiting = std::thread::spawn(move || emitter.emit(Envelope::log("waits")));
        logs += 1;
        wait_for_stats(&client, |s| waiting_emitters(s) == 1);
        Some(waiting)
    } else {
        None
    };
    for _ in 0..50 {
        if waiting.is_none() {
            logs += fill_queue(&client, overflow);
        }
        counter.inc();
        // A pulse after the increment: it found the queue full.
        let before = client.stats().emitted;
        wait_for_stats(&client, |s| s.emitted > before);
    }
    let during = client.stats();
    assert_eq!(during.sent, 0, "{during:?}");
    if let Some(waiting) = &waiting {
        assert!(
            !waiting.is_finished(),
            "the emitter waits for room, the pulses never: {during:?}"
        );
    }
    let agent = start_agent(&certs, &addr);
    if let Some(waiting) = waiting {
        join_within(waiting, WAIT);
    }
    wait_for_stats(&client, |s| s.queued + s.in_flight == 0 && s.sent > 0);
    for n in 0..50 {
        counter.inc();
        if n % 10 == 0 {
            let before = client.stats().emitted;
            wait_for_stats(&client, |s| s.emitted > before);
        }
    }
    drop(counter);
    client.close(WAIT).unwrap();
    let stats = client.stats();
    assert_closed_accounting(&stats);
    let received = agent.proto_envelopes();
    let totals = agent_totals(&received);
    assert_eq!(
        totals.get(&acc_pulse(source)),
        Some(&100),
        "{totals:?} {stats:?}"
    );
    let pulsed = stats.emitted - logs;
    let counters_received = counters_of(&received) as u64;
    // `DropOldest` evicts each round's counter in the next round, and may
    // keep the last.
    assert!(
        pulsed - counters_received >= 49,
        "the queue refused or evicted a pulse's counter in every round: \
         {counters_received} received of {pulsed} {stats:?}"
    );
}

#[test]
fn counter_deltas_dropped_on_a_full_queue_are_carried_drop_newest() {
    counter_through_an_outage_with_the_queue_full(Overflow::DropNewest, "outage-newest");
}

#[test]
fn counter_deltas_evicted_from_a_full_queue_are_carried_drop_oldest() {
    counter_through_an_outage_with_the_queue_full(Overflow::DropOldest, "outage-oldest");
}

#[test]
fn counter_deltas_are_carried_and_pulses_never_wait_block() {
    counter_through_an_outage_with_the_queue_full(Overflow::Block, "outage-block");
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
