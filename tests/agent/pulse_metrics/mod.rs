//! Pulse counters and gauges, self-metrics, timers, process metrics and
//! the default source, against the spy agent.
//!
//! Here are the helpers other test modules use too (`agent_totals`,
//! `fill_queue`, `waiting_emitters`); the tests are in `counters.rs` and
//! `self_metrics.rs`.

mod counters;
mod self_metrics;

use std::collections::HashMap;

use loggregator::proto::envelope as pb;
use loggregator::{Envelope, IngressClient, Overflow, Stats};

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
