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
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::LevelFilter;
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
    let received = setup.agent.proto_envelopes();
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
    let received = setup.agent.proto_envelopes();
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
    let received = setup.agent.proto_envelopes();
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
fn fields_are_capped_in_number_and_what_is_left_off_is_counted() {
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
    let received = setup.agent.proto_envelopes();
    let log = logs(&received)[0];
    let fields = log.tags.keys().filter(|k| k.starts_with('f')).count();
    assert_eq!(fields, MAX_FIELD_TAGS);
    assert_eq!(client.stats().tags_dropped, 21 - MAX_FIELD_TAGS as u64);
    assert!(!log.tags.contains_key("long"), "the 21st field is left off");
    assert_eq!(client.stats().values_cut, 0, "left off, not cut");
    assert_eq!(
        (log.source_id.as_str(), log.instance_id.as_str()),
        ("tracing-test", "4")
    );
}

#[test]
fn a_long_field_value_is_cut_at_a_character_boundary_and_counted_on_spans_and_events() {
    let setup = setup();
    let client = setup.client();
    let long = "é".repeat(MAX_FIELD_BYTES);
    assert_eq!(long.len(), 2 * MAX_FIELD_BYTES);
    dispatcher::with_default(&dispatch(&client), || {
        tracing::info_span!("work", long = long.as_str(), short = "kept").in_scope(|| {
            tracing::info!(long = long.as_str(), "one long field");
        });
    });
    client.close(WAIT).unwrap();
    let received = setup.agent.wait_for_proto_envelopes(2, WAIT);
    let (timer, log) = (timers(&received)[0], logs(&received)[0]);
    for cut in [&timer.tags["long"], &log.tags["long"]] {
        assert!(
            cut.len() <= MAX_FIELD_BYTES && cut.ends_with('…'),
            "{}",
            cut.len()
        );
        assert!(long.starts_with(cut.trim_end_matches('…')));
    }
    assert_eq!(timer.tags["short"], "kept");
    assert_eq!(log.log().payload, b"one long field");
    let stats = client.stats();
    assert_eq!((stats.values_cut, stats.tags_dropped), (2, 0), "{stats:?}");
}

#[test]
fn an_event_message_is_the_logs_payload_whole_and_one_too_large_to_send_is_counted() {
    let setup = setup();
    let client = setup.client();
    // A caught panic with its backtrace, as an error event.
    let trace: String = (0..300)
        .map(|n| format!("{n:>4}: app::module::function_{n}\n"))
        .collect();
    let message = format!("panicked at src/main.rs:1:1: boom\n{trace}");
    assert!(message.len() >= 8 * 1024, "{}", message.len());
    dispatcher::with_default(&dispatch(&client), || {
        tracing::error!("{message}");
        tracing::error!(backtrace = trace.as_str(), "with a long field");
    });
    client.close(WAIT).unwrap();
    let received = setup.agent.wait_for_proto_envelopes(2, WAIT);
    let logs = logs(&received);
    assert_eq!(logs.len(), 2, "{received:?}");
    assert_eq!(logs[0].log().payload.len(), message.len());
    assert_eq!(logs[0].log().payload, message.as_bytes());
    assert_eq!(logs[1].log().payload, b"with a long field");
    assert!(logs[1].tags["backtrace"].len() <= MAX_FIELD_BYTES);
    assert_eq!(client.stats().values_cut, 1);

    // Larger than a batch may be: dropped and counted, as any log.
    let small = setup.builder().batch_max_bytes(4096).build().unwrap();
    dispatcher::with_default(&dispatch(&small), || {
        tracing::error!("{message}");
        tracing::info!("after it");
    });
    small.close(WAIT).unwrap();
    let stats = small.stats();
    assert_eq!((stats.dropped.too_large, stats.sent), (1, 1), "{stats:?}");
    assert_eq!(stats.values_cut, 0);
}

/// A request span (info) around a query span (warn), an event in each;
/// returns `current_traceparent()` as seen in the query.
fn several_layers_scenario() -> Option<String> {
    let mut header = None;
    let request = tracing::info_span!("request", peer_type = "Server", uri = "/v2/apps");
    request.in_scope(|| {
        tracing::warn_span!("db_query", table = "apps").in_scope(|| {
            header = loggregator::current_traceparent();
            tracing::warn!(attempt = 2, "slow query");
        });
        tracing::info!("handled");
    });
    header
}

#[test]
fn two_layers_of_two_clients_on_one_registry_each_send_everything_with_one_identity_per_span() {
    let (first, second) = (setup(), setup());
    let (a, b) = (first.client(), second.client());
    let subscriber = tracing_subscriber::registry()
        .with(TracingLayer::new(a.clone()))
        .with(TracingLayer::new(b.clone()).source(SourceInfo::new("second", "1")));
    let header = dispatcher::with_default(&Dispatch::new(subscriber), several_layers_scenario);
    a.close(WAIT).unwrap();
    b.close(WAIT).unwrap();
    let from_a = first.agent.wait_for_proto_envelopes(4, WAIT);
    let from_b = second.agent.wait_for_proto_envelopes(4, WAIT);
    for received in [&from_a, &from_b] {
        let (timers, logs) = (timers(received), logs(received));
        assert_eq!((timers.len(), logs.len()), (2, 2), "{received:?}");
        let (query, request) = (timers[0], timers[1]);
        assert_eq!(
            (query.timer().name.as_str(), request.timer().name.as_str()),
            ("db_query", "request")
        );
        assert_eq!(query.tags["table"], "apps");
        assert_eq!(request.tags["peer_type"], "Server");
        assert_eq!(query.tags["trace_id"], request.tags["trace_id"]);
        assert_eq!(query.tags["parent_span_id"], request.tags["span_id"]);
        assert_eq!(logs[0].log().payload, b"slow query");
        assert_eq!(logs[0].tags["attempt"], "2");
        assert_eq!(logs[0].tags["span_id"], query.tags["span_id"]);
        assert_eq!(logs[1].tags["span_id"], request.tags["span_id"]);
        assert_eq!(
            header,
            Some(format!(
                "00-{}-{}-01",
                query.tags["trace_id"], query.tags["span_id"]
            ))
        );
    }
    // One W3C identity per span, whichever client sends it.
    let ids = |received: &[pb::Envelope]| -> Vec<(String, String)> {
        received
            .iter()
            .map(|e| (e.tags["trace_id"].clone(), e.tags["span_id"].clone()))
            .collect()
    };
    assert_eq!(ids(&from_a), ids(&from_b));
    assert!(from_a.iter().all(|e| e.source_id != "second"));
    assert!(
        from_b
            .iter()
            .all(|e| (e.source_id.as_str(), e.instance_id.as_str()) == ("second", "1"))
    );
    assert_eq!(a.stats().sent, 4);
    assert_eq!(b.stats().sent, 4);
}

#[test]
fn copies_of_one_layer_on_one_registry_each_send_what_their_filter_lets_through() {
    let setup = setup();
    let client = setup.client();
    let layer = TracingLayer::new(client.clone());
    let subscriber = tracing_subscriber::registry()
        .with(layer.clone())
        .with(layer.clone().with_filter(LevelFilter::WARN))
        .with(vec![layer.clone(), layer]);
    let header = dispatcher::with_default(&Dispatch::new(subscriber), several_layers_scenario);
    client.close(WAIT).unwrap();
    // Every copy sends the query and its event; the three unfiltered ones
    // the request and its event too.
    let received = setup.agent.wait_for_proto_envelopes(3 * 4 + 2, WAIT);
    let named = |name: &str| -> Vec<&pb::Envelope> {
        timers(&received)
            .into_iter()
            .filter(|t| t.timer().name == name)
            .collect()
    };
    let (queries, requests) = (named("db_query"), named("request"));
    assert_eq!((queries.len(), requests.len()), (4, 3), "{received:?}");
    let payloads = |payload: &[u8]| {
        logs(&received)
            .into_iter()
            .filter(|l| l.log().payload == payload)
            .count()
    };
    assert_eq!((payloads(b"slow query"), payloads(b"handled")), (4, 3));
    let request = requests[0];
    for timer in queries.iter().chain(&requests) {
        let same = if timer.timer().name == "request" {
            request
        } else {
            queries[0]
        };
        for tag in ["trace_id", "span_id", "parent_span_id"] {
            assert_eq!(timer.tags.get(tag), same.tags.get(tag), "{tag}");
        }
    }
    // The filtered copy never sees the request span, yet links the query
    // to it: the first layer to see the query numbered it, and a span has
    // one identity on one registry.
    assert_eq!(queries[0].tags["parent_span_id"], request.tags["span_id"]);
    assert_eq!(
        header,
        Some(format!(
            "00-{}-{}-01",
            queries[0].tags["trace_id"], queries[0].tags["span_id"]
        ))
    );
    assert_eq!(client.stats().sent, 14);
}

#[test]
fn nothing_from_the_clients_diagnostics_comes_back_and_the_layer_never_waits() {
    let setup = setup();
    let client = setup.client();
    let dispatch = dispatch(&client);
    dispatcher::with_default(&dispatch, || {
        tracing::warn!(target: "loggregator", "the client's own diagnostic");
        tracing::warn!(target: "grpcio::call", "gRPC's");
        tracing::info!("sent");
    });
    client.close(WAIT).unwrap();
    let received = setup.agent.proto_envelopes();
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
