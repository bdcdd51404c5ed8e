//! The pulse: counters and gauges, their series, and what reaches the queue.

use super::*;

use crate::series::all_taken as sent;

fn counters(envelopes: &[Envelope]) -> Vec<(String, u64, u64)> {
    envelopes
        .iter()
        .filter_map(|e| {
            let p = e.as_proto();
            p.has_counter().then(|| {
                (
                    p.counter().name.clone(),
                    p.counter().delta,
                    p.counter().total,
                )
            })
        })
        .collect()
}

#[test]
fn a_counter_sends_its_interval_delta_with_total_0_and_nothing_when_idle() {
    let registry = Registry::default();
    let requests = registry.counter("requests", &[]);
    requests.add(3);
    requests.inc();
    assert_eq!(
        counters(&sent(registry.pulse())),
        vec![("requests".into(), 4, 0)]
    );
    assert!(
        sent(registry.pulse()).is_empty(),
        "an idle interval sends nothing"
    );
    requests.add(2);
    assert_eq!(
        counters(&sent(registry.pulse())),
        vec![("requests".into(), 2, 0)]
    );
}

#[test]
fn handles_with_the_same_name_and_tags_share_a_series() {
    let registry = Registry::default();
    let a = registry.counter("hits", &[("route", "/a"), ("az", "z1")]);
    let b = registry.counter("hits", &[("az", "z1"), ("route", "/a")]);
    let other = registry.counter("hits", &[("route", "/b")]);
    a.inc();
    b.inc();
    other.inc();
    let mut pulsed = counters(&sent(registry.pulse()));
    pulsed.sort();
    assert_eq!(pulsed, vec![("hits".into(), 1, 0), ("hits".into(), 2, 0)]);
}

#[test]
fn a_series_is_sent_a_last_time_then_forgotten_when_its_handles_are_gone() {
    let registry = Registry::default();
    let requests = registry.counter("requests", &[]);
    requests.add(7);
    drop(requests);
    assert_eq!(
        counters(&sent(registry.pulse())),
        vec![("requests".into(), 7, 0)]
    );
    assert!(sent(registry.pulse()).is_empty());
    assert!(registry.is_empty());
}

#[test]
fn a_delta_the_queue_drops_goes_out_with_the_next_pulse() {
    let registry = Registry::default();
    let requests = registry.counter("requests", &[]);
    requests.add(3);
    drop(registry.pulse());
    requests.add(2);
    assert_eq!(
        counters(&sent(registry.pulse())),
        vec![("requests".into(), 5, 0)]
    );
}

#[test]
fn a_series_is_kept_while_a_delta_of_it_may_come_back() {
    let registry = Registry::default();
    let requests = registry.counter("requests", &[]);
    requests.add(4);
    drop(requests);
    let queued = registry.pulse();
    assert!(sent(registry.pulse()).is_empty());
    assert!(!registry.is_empty(), "its delta is still in the queue");
    drop(queued);
    assert_eq!(
        counters(&sent(registry.pulse())),
        vec![("requests".into(), 4, 0)]
    );
    assert!(sent(registry.pulse()).is_empty());
    assert!(registry.is_empty());
}

#[test]
fn a_counter_made_anew_each_time_sends_each_delta() {
    let registry = Registry::default();
    registry.counter("requests", &[]).add(4);
    assert_eq!(
        counters(&sent(registry.pulse())),
        vec![("requests".into(), 4, 0)]
    );
    registry.counter("requests", &[]).add(2);
    assert_eq!(
        counters(&sent(registry.pulse())),
        vec![("requests".into(), 2, 0)]
    );
}

#[test]
fn gauges_of_a_pulse_share_one_envelope_and_keep_exact_values() {
    let registry = Registry::default();
    let memory = registry.gauge("memory", "bytes");
    let temperature = registry.gauge("temperature", "celsius");
    let _unset = registry.gauge("unset", "things");
    memory.set(1.5e8);
    temperature.set(-3.25);
    let gauges = sent(registry.pulse());
    assert_eq!(gauges.len(), 1);
    let metrics = &gauges[0].as_proto().gauge().metrics;
    assert_eq!(metrics.len(), 2);
    assert_eq!(
        (metrics["memory"].value, metrics["memory"].unit.as_str()),
        (1.5e8, "bytes")
    );
    assert_eq!(metrics["temperature"].value, -3.25);
}
