//! A test reads what the spy agent received field by field, and counts it
//! by kind, without the generated protobuf types.

use std::time::{Duration, SystemTime};

use loggregator::spy::{ReceivedCounter, ReceivedEvent, ReceivedMetric};
use loggregator::{Envelope, EnvelopeKind};

use crate::common::{WAIT, setup};

#[test]
fn every_kind_reads_field_by_field_and_counts_by_kind() {
    let setup = setup();
    let client = setup.builder().tag("deployment", "cf").build().unwrap();
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1);
    let stop = start + Duration::from_millis(3);
    client.emit(Envelope::log(b"out \xff").source("app", "1").stdout());
    client.emit(Envelope::log("err"));
    client.emit(Envelope::counter("requests").delta(5));
    client.emit(
        Envelope::gauge()
            .metric("cpu", 35.5, "percentage")
            .metric("memory", 1.0e8, "bytes"),
    );
    client.emit(Envelope::timer("db_query", start, stop).tag("k", "v"));
    client.emit(Envelope::event("deploy", "v42"));
    client.close(WAIT).unwrap();

    let received = setup.agent.wait_for_envelopes(6, WAIT);
    let [out, err, counter, gauge, timer, event] = &received[..] else {
        panic!("{received:?}");
    };

    assert_eq!(out.kind(), Some(EnvelopeKind::Log));
    assert_eq!((out.source_id(), out.instance_id()), ("app", "1"));
    assert_eq!(out.payload(), Some(&b"out \xff"[..]));
    assert_eq!(out.text().as_deref(), Some("out \u{fffd}"));
    assert_eq!(out.is_stderr(), Some(false));
    assert_eq!(err.is_stderr(), Some(true));
    assert_eq!(out.tag("deployment"), Some("cf"));
    assert!(out.timestamp() > 0);
    assert_eq!(out.counter(), None);

    assert_eq!(
        counter.counter(),
        Some(ReceivedCounter {
            name: "requests",
            delta: 5,
            total: 0
        })
    );
    assert_eq!((counter.payload(), counter.is_stderr()), (None, None));

    assert_eq!(
        gauge.metric("cpu"),
        Some(ReceivedMetric {
            value: 35.5,
            unit: "percentage"
        })
    );
    let names: Vec<&str> = gauge.metrics().unwrap().into_keys().collect();
    assert_eq!(names, ["cpu", "memory"]);
    assert_eq!(gauge.metric("disk"), None);

    let timer_read = timer.timer().unwrap();
    assert_eq!(timer_read.name, "db_query");
    assert_eq!(timer_read.nanos(), 3_000_000);
    assert_eq!(
        timer.tags().into_iter().collect::<Vec<_>>(),
        [("deployment", "cf"), ("k", "v")]
    );

    assert_eq!(
        event.event(),
        Some(ReceivedEvent {
            title: "deploy",
            body: "v42"
        })
    );
    assert_eq!(
        event.to_string(),
        "event / \"deploy\": \"v42\" {deployment=cf}"
    );
    assert_eq!(event.proto().event().title, "deploy");

    let counts = setup.agent.kind_counts();
    assert_eq!(
        (
            counts.log,
            counts.counter,
            counts.gauge,
            counts.timer,
            counts.event
        ),
        (2, 1, 1, 1, 1)
    );
    assert_eq!(counts.of(EnvelopeKind::Log), 2);
    assert_eq!(counts.total(), 6);
    assert_eq!(
        counts.to_string(),
        "log=2 counter=1 gauge=1 timer=1 event=1"
    );
}
