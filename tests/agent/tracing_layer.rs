//! The tracing layer, against the spy agent. Each test installs its
//! subscriber on its own thread (`with_default`), so tests run side by side.

use std::collections::HashMap;
use std::time::Duration;

use loggregator::proto::envelope as pb;
use loggregator::proto::envelope::log::Type;
use loggregator::{
    IngressClient, MAX_FIELD_BYTES, MAX_FIELD_TAGS, Overflow, SourceInfo, TracingLayer,
};
use tracing::dispatcher::{self, Dispatch};
use tracing_subscriber::layer::SubscriberExt;

use crate::common::{WAIT, setup, unused_addr};

fn dispatch(client: &IngressClient) -> Dispatch {
    Dispatch::new(tracing_subscriber::registry().with(TracingLayer::new(client.clone())))
}

fn timers(envelopes: &[pb::Envelope]) -> Vec<&pb::Envelope> {
    envelopes.iter().filter(|e| e.has_timer()).collect()
}

fn logs(envelopes: &[pb::Envelope]) -> Vec<&pb::Envelope> {
    envelopes.iter().filter(|e| e.has_log()).collect()
}

fn is_hex(text: &str, digits: usize) -> bool {
    text.len() == digits && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The span an OpenTelemetry Collector gets from a Forwarder Agent for a
/// Timer envelope, by the agent's rule: only with `trace_id` (32 hex) and
/// `span_id` (16 hex) tags and a `peer_type` that is not `Client`; named by
/// the path of a `uri` tag or else the timer's name; SERVER when
/// `peer_type` is `Server`, else INTERNAL; every other tag an attribute.
#[derive(Debug, PartialEq)]
struct OtelSpan {
    name: String,
    kind: &'static str,
    trace_id: String,
    span_id: String,
    start: i64,
    end: i64,
    attributes: HashMap<String, String>,
}

fn otel_span(envelope: &pb::Envelope) -> Option<OtelSpan> {
    let timer = envelope.timer();
    let tags = &envelope.tags;
    let (trace_id, span_id) = (tags.get("trace_id")?, tags.get("span_id")?);
    if !is_hex(trace_id, 32) || !is_hex(span_id, 16) {
        return None;
    }
    let peer_type = tags.get("peer_type").map(String::as_str);
    if peer_type == Some("Client") {
        return None;
    }
    let name = match tags.get("uri") {
        Some(uri) => {
            let path = uri.split_once("://").map_or(uri.as_str(), |(_, rest)| {
                rest.find('/').map_or("/", |at| &rest[at..])
            });
            path.split('?').next().unwrap_or(path).to_string()
        }
        None => timer.name.clone(),
    };
    let attributes = tags
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "trace_id" | "span_id"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Some(OtelSpan {
        name,
        kind: if peer_type == Some("Server") {
            "SERVER"
        } else {
            "INTERNAL"
        },
        trace_id: trace_id.clone(),
        span_id: span_id.clone(),
        start: timer.start,
        end: timer.stop,
        attributes,
    })
}

#[test]
fn spans_become_timers_with_w3c_ids_that_link_children_to_parents() {
    let setup = setup();
    let client = setup.client();
    dispatcher::with_default(&dispatch(&client), || {
        let request = tracing::info_span!(
            "request",
            uri = "https://api.example.com/v2/apps?page=1",
            peer_type = "Server",
            status = tracing::field::Empty
        );
        let _request = request.enter();
        {
            let query = tracing::info_span!("db_query", table = "apps");
            let _query = query.enter();
        }
        request.record("status", 200);
    });
    client.close(WAIT).unwrap();
    let received = setup.agent.envelopes();
    let timers = timers(&received);
    assert_eq!(timers.len(), 2, "{received:?}");
    let (query, request) = (timers[0], timers[1]);
    assert_eq!(
        (query.timer().name.as_str(), request.timer().name.as_str()),
        ("db_query", "request")
    );
    for timer in [query, request] {
        assert!(is_hex(&timer.tags["trace_id"], 32), "{timer:?}");
        assert!(is_hex(&timer.tags["span_id"], 16), "{timer:?}");
        assert!(timer.timer().start > 0 && timer.timer().start <= timer.timer().stop);
    }
    assert_eq!(query.tags["trace_id"], request.tags["trace_id"]);
    assert_eq!(query.tags["parent_span_id"], request.tags["span_id"]);
    assert!(!request.tags.contains_key("parent_span_id"));
    assert!(
        request.timer().start <= query.timer().start && query.timer().stop <= request.timer().stop
    );
    assert_eq!(request.tags["status"], "200");
    assert_eq!(query.tags["table"], "apps");

    // What an OpenTelemetry Collector gets through a Forwarder Agent.
    let server = otel_span(request).expect("a span");
    assert_eq!((server.name.as_str(), server.kind), ("/v2/apps", "SERVER"));
    assert_eq!(server.trace_id, request.tags["trace_id"]);
    assert_eq!(server.attributes["status"], "200");
    let internal = otel_span(query).expect("a span");
    assert_eq!(
        (internal.name.as_str(), internal.kind),
        ("db_query", "INTERNAL")
    );
    assert_eq!(internal.attributes["parent_span_id"], server.span_id);
}

#[test]
fn a_traceparent_field_continues_its_trace_and_a_malformed_one_starts_a_new_one() {
    let setup = setup();
    let client = setup.client();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let header = format!("00-{trace}-{parent}-01");
    dispatcher::with_default(&dispatch(&client), || {
        tracing::info_span!("continued", traceparent = header.as_str()).in_scope(|| {
            tracing::info_span!("child").in_scope(|| {});
        });
        for bad in [
            "00-xyz-abc-01",
            "",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            tracing::info_span!("fresh", traceparent = bad).in_scope(|| {});
        }
    });
    client.close(WAIT).unwrap();
    let received = setup.agent.envelopes();
    let by_name = |name: &str| -> Vec<&pb::Envelope> {
        timers(&received)
            .into_iter()
            .filter(|t| t.timer().name == name)
            .collect()
    };
    let continued = by_name("continued")[0];
    assert_eq!(continued.tags["trace_id"], trace);
    assert_eq!(continued.tags["parent_span_id"], parent);
    assert_ne!(continued.tags["span_id"], parent);
    let child = by_name("child")[0];
    assert_eq!(child.tags["trace_id"], trace);
    assert_eq!(child.tags["parent_span_id"], continued.tags["span_id"]);
    let fresh = by_name("fresh");
    assert_eq!(fresh.len(), 3);
    for span in fresh {
        assert!(is_hex(&span.tags["trace_id"], 32));
        assert_ne!(span.tags["trace_id"], trace);
        assert!(!span.tags.contains_key("parent_span_id"), "{span:?}");
    }
}

#[test]
fn events_become_logs_tagged_with_their_spans_ids_and_current_traceparent_names_the_span() {
    let setup = setup();
    let client = setup.client();
    let mut header = None;
    dispatcher::with_default(&dispatch(&client), || {
        assert_eq!(loggregator::current_traceparent(), None, "outside a span");
        tracing::info_span!("work").in_scope(|| {
            header = loggregator::current_traceparent();
            tracing::warn!(target: "app::db", attempt = 3, "retrying");
            tracing::info!(user = "ana", "signed in");
        });
        tracing::error!("outside any span");
    });
    client.close(WAIT).unwrap();
    let received = setup.agent.envelopes();
    let span = timers(&received)[0];
    let logs = logs(&received);
    assert_eq!(logs.len(), 3, "{received:?}");
    let payloads: Vec<String> = logs
        .iter()
        .map(|e| String::from_utf8_lossy(&e.log().payload).into_owned())
        .collect();
    assert_eq!(payloads, ["retrying", "signed in", "outside any span"]);
    let types: Vec<Type> = logs
        .iter()
        .map(|e| e.log().type_.enum_value().unwrap())
        .collect();
    assert_eq!(types, [Type::ERR, Type::OUT, Type::ERR]);
    assert_eq!(logs[0].tags["level"], "warn");
    assert_eq!(logs[0].tags["target"], "app::db");
    assert_eq!(logs[0].tags["attempt"], "3");
    assert_eq!(logs[1].tags["user"], "ana");
    for log in &logs[..2] {
        assert_eq!(log.tags["trace_id"], span.tags["trace_id"]);
        assert_eq!(log.tags["span_id"], span.tags["span_id"]);
    }
    assert!(!logs[2].tags.contains_key("trace_id"));
    assert_eq!(
        header,
        Some(format!(
            "00-{}-{}-01",
            span.tags["trace_id"], span.tags["span_id"]
        ))
    );
}

#[test]
fn fields_are_capped_in_number_and_length_and_what_is_left_off_is_counted() {
    let setup = setup();
    let client = setup
        .builder()
        .source(SourceInfo::new("tracing-test", "4"))
        .build()
        .unwrap();
    let long = "é".repeat(MAX_FIELD_BYTES);
    dispatcher::with_default(&dispatch(&client), || {
        tracing::info!(
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
            f18 = 18,
            f19 = 19,
            f20 = 20,
            long = long.as_str(),
            "many fields"
        );
    });
    client.close(WAIT).unwrap();
    let received = setup.agent.envelopes();
    let log = logs(&received)[0];
    let fields = log.tags.keys().filter(|k| k.starts_with('f')).count();
    assert_eq!(fields, MAX_FIELD_TAGS);
    assert_eq!(client.stats().tags_dropped, 21 - MAX_FIELD_TAGS as u64);
    assert!(!log.tags.contains_key("long"), "the 21st field is left off");
    assert_eq!(
        (log.source_id.as_str(), log.instance_id.as_str()),
        ("tracing-test", "4")
    );

    // A long value is cut, at a character boundary.
    let client = setup.client();
    dispatcher::with_default(&dispatch(&client), || {
        tracing::info!(long = long.as_str(), "one long field");
    });
    client.close(WAIT).unwrap();
    let received = setup.agent.envelopes();
    let cut = &logs(&received).last().unwrap().tags["long"];
    assert!(
        cut.len() <= MAX_FIELD_BYTES && cut.ends_with('…'),
        "{}",
        cut.len()
    );
}

#[test]
fn nothing_from_the_clients_threads_or_diagnostics_comes_back_and_the_layer_never_waits() {
    let setup = setup();
    let client = setup.client();
    let dispatch = dispatch(&client);
    dispatcher::with_default(&dispatch, || {
        tracing::warn!(target: "loggregator", "the client's own diagnostic");
        tracing::warn!(target: "grpcio::call", "gRPC's");
        tracing::info!("sent");
    });
    let own = dispatch.clone();
    std::thread::Builder::new()
        .name("loggregator-sender".to_string())
        .spawn(move || {
            dispatcher::with_default(&own, || {
                tracing::info_span!("on the client's thread").in_scope(|| {
                    tracing::info!("on the client's thread");
                });
            })
        })
        .unwrap()
        .join()
        .unwrap();
    client.close(WAIT).unwrap();
    let received = setup.agent.envelopes();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].log().payload, b"sent");

    // Under `Block`, with the agent away and the queue full, the layer's
    // emits drop and count instead of waiting.
    let stuck = IngressClient::builder()
        .addr(unused_addr())
        .tls(setup.certs.client_tls().unwrap())
        .overflow(Overflow::Block)
        .queue_capacity(2)
        .batch_max_envelopes(1)
        .build()
        .unwrap();
    let dispatch = self::dispatch(&stuck);
    let (done, finished) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        dispatcher::with_default(&dispatch, || {
            for n in 0..100 {
                tracing::info!(n, "into a full queue");
            }
        });
        done.send(()).unwrap();
    });
    finished.recv_timeout(WAIT).expect("the layer never waits");
    assert!(
        stuck.stats().dropped.queue_full >= 90,
        "{:?}",
        stuck.stats()
    );
    let _ = stuck.close(Duration::from_millis(200));
}
