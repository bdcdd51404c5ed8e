//! Which series the metrics recorder makes: a series that exists is never
//! refused at the cap because threads registered it at once, and two
//! series never send the same gauge metric (a histogram's `_sum` and a gauge of
//! that name with the same labels): the one registered second is refused
//! and counted.

use std::sync::Barrier;
use std::time::Duration;

use ::metrics::{counter, gauge, histogram};
use loggregator::proto::envelope as pb;
use loggregator::{MetricsRecorder, SourceInfo};

use crate::common::{WAIT, setup};
use crate::pulse_metrics::agent_totals;

const THREADS: usize = 8;
const ROUNDS: usize = 300;

/// Each round a recorder with room for one series more, and threads that
/// all register the same new counter at once: every one of them must get
/// the series (the one that makes it, and those that find it made), so the
/// agent counts one per thread and nothing is refused.
#[test]
fn threads_registering_one_new_series_at_the_cap_all_get_it() {
    let setup = setup();
    let client = setup
        .builder()
        .source(SourceInfo::new("mr-race", "0"))
        .pulse_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    // Kept until close: their last report goes with the client's last pulse.
    let recorders: Vec<MetricsRecorder> = (0..ROUNDS)
        .map(|_| MetricsRecorder::new(client.clone()).max_series(1))
        .collect();
    for (round, recorder) in recorders.iter().enumerate() {
        let start = Barrier::new(THREADS);
        let name = format!("mr_race_{round}");
        std::thread::scope(|scope| {
            for _ in 0..THREADS {
                scope.spawn(|| {
                    ::metrics::with_local_recorder(recorder, || {
                        start.wait();
                        counter!(name.clone()).increment(1);
                    });
                });
            }
        });
    }
    let refused = client.stats().series_dropped;
    client.close(WAIT).unwrap();
    assert_eq!(refused, 0, "registrations refused at the cap");
    let totals = agent_totals(&setup.agent.proto_envelopes());
    for round in 0..ROUNDS {
        let key = (format!("mr_race_{round}"), "mr-race".to_string(), vec![]);
        assert_eq!(totals.get(&key), Some(&(THREADS as u64)), "round {round}");
    }
}

fn gauge_values(envelopes: &[pb::Envelope], name: &str) -> Vec<f64> {
    envelopes
        .iter()
        .filter_map(|e| e.gauge().metrics.get(name).map(|m| m.value))
        .collect()
}

fn has_counter(envelopes: &[pb::Envelope], name: &str) -> bool {
    envelopes
        .iter()
        .any(|e| e.has_counter() && e.counter().name == name)
}

/// A histogram `h` sends `h_sum`: a gauge named `h_sum` with the same
/// labels would overwrite it (or be overwritten) in every pulse. Whichever
/// of the two comes second is refused and counted; with other labels both
/// are kept.
#[test]
fn a_gauge_named_like_a_histograms_sum_and_the_histogram_never_overwrite_each_other() {
    let setup = setup();
    let client = setup
        .builder()
        .pulse_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let recorder = MetricsRecorder::new(client.clone());
    ::metrics::with_local_recorder(&recorder, || {
        // The histogram first: the gauge is refused.
        histogram!("mr_clash_a", "route" => "/x").record(2.0);
        histogram!("mr_clash_a", "route" => "/x").record(3.0);
        gauge!("mr_clash_a_sum", "route" => "/x").set(99.0);
        // Named like one of its quantiles: refused too.
        gauge!("mr_clash_a", "route" => "/x", "quantile" => "0.5").set(99.0);
        // The gauge first: the histogram is refused.
        gauge!("mr_clash_b_sum", "route" => "/x").set(7.0);
        histogram!("mr_clash_b", "route" => "/x").record(1000.0);
        // Other labels, other metrics: both kept.
        gauge!("mr_clash_a_sum", "route" => "/y").set(6.0);
    });
    let refused = client.stats().series_dropped;
    client.close(WAIT).unwrap();
    assert_eq!(refused, 3, "the second of each pair");
    let received = setup.agent.proto_envelopes();
    let on = |route: &str| -> Vec<pb::Envelope> {
        received
            .iter()
            .filter(|e| e.tags.get("route").map(String::as_str) == Some(route))
            .cloned()
            .collect()
    };
    let (x, y) = (on("/x"), on("/y"));
    assert_eq!(gauge_values(&x, "mr_clash_a_sum"), vec![5.0], "{x:?}");
    assert!(has_counter(&x, "mr_clash_a_count"), "{x:?}");
    let median: Vec<&pb::Envelope> = x
        .iter()
        .filter(|e| e.tags.get("quantile").map(String::as_str) == Some("0.5"))
        .collect();
    assert_eq!(median.len(), 1, "{x:?}");
    let median = median[0].gauge().metrics["mr_clash_a"].value;
    assert!((2.0..=3.0).contains(&median), "{median}");
    assert_eq!(gauge_values(&x, "mr_clash_b_sum"), vec![7.0], "{x:?}");
    assert!(!has_counter(&x, "mr_clash_b_count"), "{x:?}");
    assert_eq!(gauge_values(&y, "mr_clash_a_sum"), vec![6.0], "{y:?}");
}
