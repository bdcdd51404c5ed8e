//! Pulse counters: a delta with total 0 and silence when idle, two clients
//! counting one counter, and deltas carried through an outage with the
//! queue full under every overflow policy.

use std::time::{Duration, Instant};

use loggregator::proto::envelope as pb;
use loggregator::spy::TestCerts;
use loggregator::{Envelope, IngressClient, Overflow, SourceInfo};

use super::{CounterKey, agent_totals, fill_queue, waiting_emitters};
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
