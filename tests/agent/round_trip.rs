//! Every envelope kind arrives with every field exact.

use std::time::{Duration, SystemTime};

use loggregator::Envelope;
use loggregator::proto::envelope as pb;

use crate::common::{WAIT, setup};

#[test]
fn every_kind_round_trips_with_every_field_exact() {
    let setup = setup();
    let client = setup
        .builder()
        .tag("deployment", "cf")
        .tag("k", "global")
        .build()
        .unwrap();
    let start = SystemTime::now() - Duration::from_millis(1500);
    let sent: Vec<Envelope> = vec![
        Envelope::log(&b"caf\xc3\xa9 \xff\xfe not utf-8\n"[..])
            .source("my-app", "0")
            .stdout()
            .tag("k", "v")
            .into(),
        Envelope::log("to stderr by default")
            .source_id("my-app")
            .into(),
        Envelope::counter("requests")
            .delta(5)
            .instance_id("3")
            .into(),
        Envelope::counter("restarts").total(7).into(),
        Envelope::gauge()
            .metric("cpu", 35.5, "percentage")
            .metric("memory", 1.0e8, "bytes")
            .metric("temperature", -12.25, "celsius")
            .into(),
        Envelope::timer("db_query", start, SystemTime::now()).into(),
        Envelope::timer("by_nanos", 1_000i64, 2_500i64)
            .timestamp(99)
            .into(),
        Envelope::event("Application Status", "Application is healthy")
            .tag("deployment", "mine")
            .into(),
    ];
    for envelope in &sent {
        client.emit(envelope.clone());
    }
    client.close(WAIT).unwrap();

    let expected: Vec<pb::Envelope> = sent
        .into_iter()
        .map(|envelope| {
            let mut raw = envelope.into_proto();
            raw.tags
                .entry("deployment".into())
                .or_insert_with(|| "cf".into());
            raw.tags
                .entry("k".into())
                .or_insert_with(|| "global".into());
            raw
        })
        .collect();
    let received = setup.agent.proto_envelopes();
    assert_eq!(received, expected);

    // Spot-check the fields the builders set, so a builder bug cannot hide
    // behind comparing the client with itself.
    let log = received[0].log();
    assert_eq!(log.payload, b"caf\xc3\xa9 \xff\xfe not utf-8\n");
    assert_eq!(log.type_.enum_value(), Ok(pb::log::Type::OUT));
    assert_eq!(
        (
            received[0].source_id.as_str(),
            received[0].instance_id.as_str()
        ),
        ("my-app", "0")
    );
    assert_eq!(received[0].tags["k"], "v");
    assert_eq!(received[0].tags["deployment"], "cf");
    assert_eq!(received[1].log().type_.enum_value(), Ok(pb::log::Type::ERR));
    assert_eq!(received[1].tags["k"], "global");
    assert_eq!(
        (received[2].counter().delta, received[2].counter().total),
        (5, 0)
    );
    assert_eq!(
        (received[3].counter().delta, received[3].counter().total),
        (0, 7)
    );
    let metrics = &received[4].gauge().metrics;
    assert_eq!(
        (metrics["cpu"].value, metrics["cpu"].unit.as_str()),
        (35.5, "percentage")
    );
    assert_eq!(
        (metrics["memory"].value, metrics["memory"].unit.as_str()),
        (1.0e8, "bytes")
    );
    assert_eq!(metrics["temperature"].value, -12.25);
    let timer = received[5].timer();
    assert!(timer.stop - timer.start >= 1_500_000_000, "{timer:?}");
    assert_eq!(
        (
            received[6].timer().start,
            received[6].timer().stop,
            received[6].timestamp
        ),
        (1_000, 2_500, 99)
    );
    assert_eq!(received[7].tags["deployment"], "mine");
    for envelope in &received {
        assert!(envelope.timestamp != 0);
    }
    let stats = client.stats();
    assert_eq!(
        (stats.emitted, stats.sent, stats.dropped.total()),
        (8, 8, 0)
    );
}

#[test]
fn an_accidental_zero_counter_is_dropped_and_an_explicit_reset_is_sent() {
    let setup = setup();
    let client = setup.client();
    client.emit(Envelope::counter("requests").delta(0));
    client.emit(Envelope::counter("requests").reset());
    client.close(WAIT).unwrap();
    let received = setup.agent.proto_envelopes();
    assert_eq!(received.len(), 1);
    assert_eq!(
        (received[0].counter().delta, received[0].counter().total),
        (0, 0)
    );
    let stats = client.stats();
    assert_eq!(stats.dropped.zero_counter, 1);
    assert_eq!(stats.emitted, stats.sent + stats.dropped.total());
}
