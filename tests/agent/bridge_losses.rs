//! The bridges count what they left off or cut (`tags_dropped`,
//! `values_cut`) only for envelopes that went into the queue: an envelope
//! that was dropped is counted in `dropped`, whole, and nowhere else.

use loggregator::{IngressClient, MAX_FIELD_BYTES, MAX_FIELD_TAGS, TracingLayer};
use tracing::dispatcher::{self, Dispatch};
use tracing_subscriber::layer::SubscriberExt;

use crate::common::{WAIT, setup};

/// A record with more key-values than a log may carry (3 left off) and a
/// value too long (cut), sent through a bridge that is not installed.
fn log_many_key_values(bridge: &loggregator::LogBridge, message: &str) {
    let long = "x".repeat(2 * MAX_FIELD_BYTES);
    let keys: Vec<String> = (0..MAX_FIELD_TAGS + 2).map(|n| format!("k{n}")).collect();
    let mut pairs: Vec<(&str, &str)> = vec![("long", long.as_str())];
    pairs.extend(keys.iter().map(|key| (key.as_str(), "v")));
    log::Log::log(
        bridge,
        &log::Record::builder()
            .args(format_args!("{message}"))
            .level(log::Level::Info)
            .target("bridge_losses")
            .key_values(&pairs)
            .build(),
    );
}

#[test]
fn the_log_bridge_counts_the_losses_of_a_queued_record_and_not_of_a_dropped_one() {
    let setup = setup();
    let client = setup.client();
    let bridge = loggregator::LogBridge::new(client.clone());
    // Larger than any batch: dropped as too large.
    log_many_key_values(&bridge, &"m".repeat(2 << 20));
    let too_large = client.stats();
    assert_eq!(too_large.dropped.too_large, 1, "{too_large:?}");
    assert_eq!(
        (too_large.tags_dropped, too_large.values_cut),
        (0, 0),
        "{too_large:?}"
    );
    log_many_key_values(&bridge, "many key-values");
    let queued = client.stats();
    assert_eq!(
        (queued.tags_dropped, queued.values_cut),
        (3, 1),
        "{queued:?}"
    );
    client.close(WAIT).unwrap();
    assert_eq!(setup.agent.proto_envelopes().len(), 1);

    // Closed: the record is dropped, and only that is counted.
    log_many_key_values(&bridge, "many key-values");
    let dropped = client.stats();
    assert_eq!(dropped.dropped.closed, 1, "{dropped:?}");
    assert_eq!(
        (dropped.tags_dropped, dropped.values_cut),
        (3, 1),
        "{dropped:?}"
    );
}

fn dispatch(client: &IngressClient) -> Dispatch {
    Dispatch::new(tracing_subscriber::registry().with(TracingLayer::new(client.clone())))
}

/// A span and an event, each with 18 fields (2 left off) and one of them
/// too long (cut).
fn trace_many_fields(client: &IngressClient) {
    let long = "y".repeat(2 * MAX_FIELD_BYTES);
    let long = long.as_str();
    dispatcher::with_default(&dispatch(client), || {
        tracing::info_span!(
            "work",
            long,
            f1 = 1,
            f2 = 2,
            f3 = 3,
            f4 = 4,
            f5 = 5,
            f6 = 6,
            f7 = 7,
            f8 = 8,
            f9 = 9,
            f10 = 10,
            f11 = 11,
            f12 = 12,
            f13 = 13,
            f14 = 14,
            f15 = 15,
            f16 = 16,
            f17 = 17
        )
        .in_scope(|| {
            tracing::info!(
                long,
                f1 = 1,
                f2 = 2,
                f3 = 3,
                f4 = 4,
                f5 = 5,
                f6 = 6,
                f7 = 7,
                f8 = 8,
                f9 = 9,
                f10 = 10,
                f11 = 11,
                f12 = 12,
                f13 = 13,
                f14 = 14,
                f15 = 15,
                f16 = 16,
                f17 = 17,
                "many fields"
            );
        });
    });
}

#[test]
fn the_tracing_layer_counts_the_losses_of_queued_envelopes_and_not_of_dropped_ones() {
    assert_eq!(MAX_FIELD_TAGS, 16, "18 fields leave 2 off");
    let setup = setup();
    let client = setup.client();
    trace_many_fields(&client);
    let queued = client.stats();
    assert_eq!(
        (queued.tags_dropped, queued.values_cut),
        (4, 2),
        "a span and an event: {queued:?}"
    );
    client.close(WAIT).unwrap();
    assert_eq!(setup.agent.proto_envelopes().len(), 2);

    trace_many_fields(&client);
    let dropped = client.stats();
    assert_eq!(dropped.dropped.closed, 2, "{dropped:?}");
    assert_eq!(
        (dropped.tags_dropped, dropped.values_cut),
        (4, 2),
        "{dropped:?}"
    );
}
