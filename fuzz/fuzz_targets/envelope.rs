//! Envelopes built from arbitrary strings, bytes and numbers: building,
//! describing and encoding never panic, and stamping client-wide tags on as
//! encoded fields decodes the same as merging them in.

#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use loggregator::Envelope;
use loggregator::proto::envelope::EnvelopeBatch;
use protobuf::Message;

#[derive(Arbitrary, Debug)]
enum Kind {
    Log { payload: Vec<u8>, stdout: bool },
    Counter { name: String, delta: Option<u64>, total: Option<u64>, reset: bool },
    Gauge { metrics: Vec<(String, f64, String)> },
    Timer { name: String, start: i64, stop: i64 },
    Event { title: String, body: String },
}

#[derive(Arbitrary, Debug)]
struct Input {
    kind: Kind,
    source_id: String,
    instance_id: String,
    timestamp: Option<i64>,
    tags: Vec<(String, String)>,
    global_tags: Vec<(String, String)>,
}

fn with_common<K>(builder: loggregator::EnvelopeBuilder<K>, input: &Input) -> Envelope {
    let mut builder = builder.source(input.source_id.as_str(), input.instance_id.as_str());
    for (key, value) in &input.tags {
        builder = builder.tag(key.as_str(), value.as_str());
    }
    if let Some(timestamp) = input.timestamp {
        builder = builder.timestamp(timestamp);
    }
    builder.build()
}

fuzz_target!(|input: Input| {
    let envelope = match &input.kind {
        Kind::Log { payload, stdout } => {
            let log = Envelope::log(payload.clone());
            with_common(if *stdout { log.stdout() } else { log }, &input)
        }
        Kind::Counter { name, delta, total, reset } => {
            let mut counter = Envelope::counter(name.as_str());
            if let Some(delta) = delta {
                counter = counter.delta(*delta);
            }
            if let Some(total) = total {
                counter = counter.total(*total);
            }
            if *reset {
                counter = counter.reset();
            }
            with_common(counter, &input)
        }
        Kind::Gauge { metrics } => {
            let mut gauge = Envelope::gauge();
            for (name, value, unit) in metrics {
                gauge = gauge.metric(name.as_str(), *value, unit.as_str());
            }
            with_common(gauge, &input)
        }
        Kind::Timer { name, start, stop } => with_common(Envelope::timer(name.as_str(), *start, *stop), &input),
        Kind::Event { title, body } => with_common(Envelope::event(title.as_str(), body.as_str()), &input),
    };
    let _ = envelope.to_string();
    let (fast, reference) = loggregator::fuzzing::stamped_both_ways(&envelope, &input.global_tags, None);
    let decode = |bytes: &[u8]| EnvelopeBatch::parse_from_bytes(bytes).unwrap().batch;
    let (fast, reference) = (decode(&fast), decode(&reference));
    assert_eq!(fast[0].tags, reference[0].tags);
    assert_eq!(fast[0].source_id, reference[0].source_id);
});
