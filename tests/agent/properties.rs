//! Property tests over arbitrary input: certificates and envelopes never
//! panic, and every envelope encodes within the size emit accounts it at.

use std::sync::OnceLock;
use std::time::Duration;

use loggregator::proto::envelope as pb;
use loggregator::spy::TestCerts;
use loggregator::{Envelope, Error, IngressClient, SourceInfo, TlsConfig};
use proptest::prelude::*;
use protobuf::Message;

use crate::common::unused_addr;

/// What each argument of `TlsConfig::from_pem` is called in its errors.
const PEM_ARGUMENTS: [&str; 3] = ["CA certificate", "client certificate", "client key"];

/// Certificates that make a config, generated once.
fn valid_certs() -> &'static TestCerts {
    static CERTS: OnceLock<TestCerts> = OnceLock::new();
    CERTS.get_or_init(|| TestCerts::generate().unwrap())
}

/// The error says which argument is wrong, and what is wrong with it.
fn assert_names_argument(
    result: Result<TlsConfig, Error>,
    wrong: &str,
) -> Result<(), TestCaseError> {
    match result {
        Err(Error::Pem { origin, problem }) => {
            prop_assert_eq!(origin.as_str(), wrong);
            prop_assert!(!problem.trim().is_empty(), "no problem named");
        }
        other => prop_assert!(false, "{wrong}: {other:?}"),
    }
    Ok(())
}

fn any_pem_ish() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        // Text that looks like PEM on the outside, with anything inside.
        (
            proptest::collection::vec(any::<u8>(), 0..256),
            "(CERTIFICATE|PRIVATE KEY|RSA PRIVATE KEY)"
        )
            .prop_map(|(body, label)| {
                let mut pem = format!("-----BEGIN {label}-----\n").into_bytes();
                pem.extend(body);
                pem.extend(format!("\n-----END {label}-----\n").into_bytes());
                pem
            }),
    ]
}

fn tags() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::vec((".{0,20}", ".{0,40}"), 0..5)
}

#[derive(Debug, Clone)]
enum Kind {
    Log(Vec<u8>, bool),
    Counter(String, u64, Option<u64>),
    Gauge(Vec<(String, f64, String)>),
    Timer(String, i64, i64),
    Event(String, String),
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        (
            proptest::collection::vec(any::<u8>(), 0..300),
            any::<bool>()
        )
            .prop_map(|(p, o)| Kind::Log(p, o)),
        (".{0,30}", any::<u64>(), any::<Option<u64>>())
            .prop_map(|(n, d, t)| Kind::Counter(n, d, t)),
        proptest::collection::vec((".{0,10}", any::<f64>(), ".{0,10}"), 0..4).prop_map(Kind::Gauge),
        (".{0,30}", any::<i64>(), any::<i64>()).prop_map(|(n, a, b)| Kind::Timer(n, a, b)),
        (".{0,30}", ".{0,60}").prop_map(|(t, b)| Kind::Event(t, b)),
    ]
}

fn build(kind: Kind, source: &str, tags: &[(String, String)], timestamp: i64) -> Envelope {
    fn common<K>(
        b: loggregator::EnvelopeBuilder<K>,
        source: &str,
        tags: &[(String, String)],
        at: i64,
    ) -> Envelope {
        let mut b = b.source(source, "0").timestamp(at);
        for (k, v) in tags {
            b = b.tag(k.as_str(), v.as_str());
        }
        b.build()
    }
    match kind {
        Kind::Log(payload, stdout) => {
            let log = Envelope::log(payload);
            common(
                if stdout { log.stdout() } else { log },
                source,
                tags,
                timestamp,
            )
        }
        Kind::Counter(name, delta, total) => {
            let counter = Envelope::counter(name).delta(delta);
            common(
                match total {
                    Some(t) => counter.total(t),
                    None => counter,
                },
                source,
                tags,
                timestamp,
            )
        }
        Kind::Gauge(metrics) => {
            let mut gauge = Envelope::gauge();
            for (name, value, unit) in metrics {
                gauge = gauge.metric(name, value, unit);
            }
            common(gauge, source, tags, timestamp)
        }
        Kind::Timer(name, start, stop) => {
            common(Envelope::timer(name, start, stop), source, tags, timestamp)
        }
        Kind::Event(title, body) => common(Envelope::event(title, body), source, tags, timestamp),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_pem_gives_a_typed_error_naming_the_ca_first(ca in any_pem_ish(), cert in any_pem_ish(), key in any_pem_ish()) {
        assert_names_argument(TlsConfig::from_pem(ca, cert, key), PEM_ARGUMENTS[0])?;
    }

    #[test]
    fn arbitrary_pem_in_one_argument_is_named_in_the_error(wrong in 0..3usize, junk in any_pem_ish()) {
        let certs = valid_certs();
        let mut pems = [
            certs.ca_pem().to_vec(),
            certs.client_cert_pem().to_vec(),
            certs.client_key_pem().to_vec(),
        ];
        pems[wrong] = junk;
        let [ca, cert, key] = pems;
        assert_names_argument(TlsConfig::from_pem(ca, cert, key), PEM_ARGUMENTS[wrong])?;
    }

    #[test]
    fn stamped_envelopes_decode_as_merged_ones_and_round_trip(
        kind in kind(),
        source in ".{0,40}",
        own_tags in tags(),
        global_tags in tags(),
        default_source in proptest::option::of((".{0,20}", ".{0,5}")),
        timestamp in any::<i64>(),
    ) {
        let kind_set = kind.clone();
        let envelope = build(kind, &source, &own_tags, timestamp);
        let _ = envelope.to_string();
        let default_source = default_source.map(|(id, instance)| loggregator::SourceInfo::new(id, instance));
        let (fast, reference) =
            loggregator::fuzzing::stamped_both_ways(&envelope, &global_tags, default_source.as_ref());
        let decode = |bytes: &[u8]| pb::EnvelopeBatch::parse_from_bytes(bytes).unwrap().batch;
        let (fast, reference) = (decode(&fast), decode(&reference));
        prop_assert_eq!(fast.len(), 1);
        prop_assert_eq!(&fast[0].tags, &reference[0].tags);
        prop_assert_eq!(&fast[0].source_id, &reference[0].source_id);
        prop_assert_eq!(&fast[0].instance_id, &reference[0].instance_id);
        prop_assert_eq!(fast[0].timestamp, reference[0].timestamp);
        // The builder encodes as it goes: what it built decodes to what was set.
        let built = envelope.as_proto();
        let expected_tags: std::collections::HashMap<String, String> = own_tags.into_iter().collect();
        prop_assert_eq!(&built.tags, &expected_tags);
        prop_assert_eq!(&built.source_id, &source);
        prop_assert_eq!(built.instance_id.as_str(), "0");
        prop_assert_eq!(built.timestamp, timestamp);
        assert_message_is(&kind_set, built)?;
        // And it round-trips through its encoding.
        let bytes = built.write_to_bytes().unwrap();
        let decoded = pb::Envelope::parse_from_bytes(&bytes).unwrap();
        prop_assert_eq!(&decoded.tags, &built.tags);
        prop_assert_eq!(&decoded.source_id, &built.source_id);
        prop_assert_eq!(&decoded.instance_id, &built.instance_id);
        prop_assert_eq!(decoded.timestamp, built.timestamp);
        assert_message_is(&kind_set, &decoded)?;
    }
}

proptest! {
    // A client per case: fewer cases.
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn emit_accounts_an_envelope_at_least_at_the_bytes_the_sender_writes(
        kind in kind(),
        source in ".{0,40}",
        own_tags in tags(),
        global_tags in tags(),
        default_source in proptest::option::of((".{0,20}", ".{0,5}")),
        timestamp in any::<i64>(),
    ) {
        // Emit stamps a zero timestamp with the time: not this test's matter.
        let envelope = build(kind, &source, &own_tags, timestamp.max(1));
        let default_source = default_source.map(|(id, instance)| SourceInfo::new(id, instance));
        let mut builder = IngressClient::builder()
            .addr(unused_addr())
            .tls(valid_certs().client_tls().unwrap())
            .flush_interval(Duration::from_secs(3600));
        for (key, value) in &global_tags {
            builder = builder.tag(key.as_str(), value.as_str());
        }
        if let Some(source) = &default_source {
            builder = builder.source(source.clone());
        }
        // Some arbitrary tags are no valid configuration: refused, typed.
        let client = match builder.build() {
            Ok(client) => client,
            Err(Error::Config { .. }) => return Ok(()),
            Err(other) => return Err(TestCaseError::fail(format!("{other:?}"))),
        };
        client.emit(envelope.clone());
        // Nobody listens: the envelope's bytes stay held from emit on.
        let stats = client.stats();
        let _ = client.close(Duration::ZERO);
        prop_assume!(stats.dropped.total() == 0, "dropped at emit: {:?}", stats);
        let (written, _) =
            loggregator::fuzzing::stamped_both_ways(&envelope, &global_tags, default_source.as_ref());
        prop_assert!(
            written.len() as u64 <= stats.queued_bytes,
            "{} bytes written, {} accounted: {stats:?}",
            written.len(),
            stats.queued_bytes
        );
    }
}

/// The envelope carries the message `kind` says, as it was set.
fn assert_message_is(kind: &Kind, envelope: &pb::Envelope) -> Result<(), TestCaseError> {
    use pb::envelope::Message as M;
    match (kind, envelope.message.as_ref()) {
        (Kind::Log(payload, stdout), Some(M::Log(log))) => {
            prop_assert_eq!(&log.payload, payload);
            let expected = if *stdout {
                pb::log::Type::OUT
            } else {
                pb::log::Type::ERR
            };
            prop_assert_eq!(log.type_.enum_value(), Ok(expected));
        }
        (Kind::Counter(name, delta, total), Some(M::Counter(counter))) => {
            prop_assert_eq!(&counter.name, name);
            // A total set after the delta replaces it with 0, as the Go
            // client's total helper does.
            let expected = match total {
                Some(total) => (0, *total),
                None => (*delta, 0),
            };
            prop_assert_eq!((counter.delta, counter.total), expected);
        }
        (Kind::Gauge(metrics), Some(M::Gauge(gauge))) => {
            // The last value set under a name wins, as with a map.
            let mut expected = std::collections::HashMap::new();
            for (name, value, unit) in metrics {
                expected.insert(name.clone(), (*value, unit.clone()));
            }
            prop_assert_eq!(gauge.metrics.len(), expected.len(), "{:?}", gauge);
            for (name, (value, unit)) in expected {
                let got = gauge.metrics.get(&name);
                prop_assert!(got.is_some(), "{name} missing: {gauge:?}");
                let got = got.unwrap();
                prop_assert_eq!(&got.unit, &unit);
                // NaN equals no NaN; -0.0 is left out (as protobuf does) and reads 0.0.
                prop_assert!(
                    got.value == value || (got.value.is_nan() && value.is_nan()),
                    "{name}: {} for {value}",
                    got.value
                );
            }
        }
        (Kind::Timer(name, start, stop), Some(M::Timer(timer))) => {
            prop_assert_eq!(
                (&timer.name, timer.start, timer.stop),
                (name, *start, *stop)
            );
        }
        (Kind::Event(title, body), Some(M::Event(event))) => {
            prop_assert_eq!((&event.title, &event.body), (title, body));
        }
        (kind, message) => prop_assert!(false, "{kind:?} built {message:?}"),
    }
    Ok(())
}
