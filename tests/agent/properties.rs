//! Property tests over arbitrary input: certificates and envelopes never
//! panic, and every envelope encodes within the size emit accounts it at.

use loggregator::Envelope;
use loggregator::proto::envelope as pb;
use proptest::prelude::*;
use protobuf::Message;

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
    fn arbitrary_pem_gives_a_config_or_a_typed_error(ca in any_pem_ish(), cert in any_pem_ish(), key in any_pem_ish()) {
        if let Err(error) = loggregator::TlsConfig::from_pem(ca, cert, key) {
            prop_assert!(!error.to_string().is_empty());
        }
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
        prop_assert_eq!(built.message.is_some(), true);
        let bytes = built.write_to_bytes().unwrap();
        let decoded = pb::Envelope::parse_from_bytes(&bytes).unwrap();
        // NaN gauge values never compare equal; compare the encodings instead.
        prop_assert_eq!(decoded.write_to_bytes().unwrap().len(), bytes.len());
    }
}
