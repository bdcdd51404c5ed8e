//! Batches close at the envelope count, the byte limit and the interval, as
//! the agent sees them.

use std::time::Duration;

use loggregator::Envelope;
use loggregator::spy::Rpc;

use crate::common::{WAIT, setup};

const HOUR: Duration = Duration::from_secs(3600);

#[test]
fn a_batch_closes_at_the_envelope_count() {
    let setup = setup();
    let client = setup
        .builder()
        .batch_max_envelopes(10)
        .flush_interval(HOUR)
        .build()
        .unwrap();
    for n in 0..25 {
        client.emit(Envelope::log(format!("{n}")));
    }
    client.flush(WAIT).unwrap();
    setup.agent.wait_for_proto_envelopes(25, WAIT);
    let sizes: Vec<usize> = setup.agent.batches().iter().map(|b| b.envelopes).collect();
    assert_eq!(sizes, vec![10, 10, 5]);
    assert!(
        setup
            .agent
            .batches()
            .iter()
            .all(|b| b.rpc == Rpc::BatchSender && b.stream == 1)
    );
    client.close(WAIT).unwrap();
}

#[test]
fn a_batch_closes_before_it_would_pass_the_byte_limit() {
    let setup = setup();
    let limit = 4096;
    let client = setup
        .builder()
        .batch_max_envelopes(1000)
        .batch_max_bytes(limit)
        .flush_interval(HOUR)
        .build()
        .unwrap();
    for n in 0..20 {
        client.emit(Envelope::log(vec![b'a' + n as u8; 1100]));
    }
    client.flush(WAIT).unwrap();
    let received = setup.agent.wait_for_proto_envelopes(20, WAIT);
    assert_eq!(received.len(), 20);
    let batches = setup.agent.batches();
    // Each envelope takes 1,121 bytes in a batch: three fit in 4 KiB, four do not.
    let sizes: Vec<usize> = batches.iter().map(|b| b.envelopes).collect();
    assert_eq!(sizes, vec![3, 3, 3, 3, 3, 3, 2]);
    for batch in &batches {
        assert!(batch.encoded_bytes <= limit, "{batch:?}");
    }
    client.close(WAIT).unwrap();
}

#[test]
fn an_envelope_larger_than_the_byte_limit_is_dropped_at_emit() {
    let setup = setup();
    let client = setup.builder().batch_max_bytes(4096).build().unwrap();
    client.emit(Envelope::log(vec![b'x'; 5000]));
    client.emit(Envelope::log("small"));
    client.close(WAIT).unwrap();
    let received = setup.agent.proto_envelopes();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].log().payload, b"small");
    let stats = client.stats();
    assert_eq!(stats.dropped.too_large, 1);
    assert_eq!(stats.emitted, stats.sent + stats.dropped.total());
    assert!(
        setup
            .agent
            .batches()
            .iter()
            .all(|b| b.encoded_bytes <= 4096)
    );
}

#[test]
fn a_partial_batch_is_sent_when_the_interval_passes() {
    let setup = setup();
    let client = setup
        .builder()
        .batch_max_envelopes(1000)
        .flush_interval(Duration::from_millis(50))
        .build()
        .unwrap();
    // Neither flush nor close is called, and the batch never fills: only the
    // interval can send these, one after the other.
    for n in 1..=3 {
        client.emit(Envelope::log(format!("{n}")));
        let received = setup.agent.wait_for_proto_envelopes(n, WAIT);
        assert_eq!(received.len(), n, "envelope {n} was held");
    }
    assert_eq!(setup.agent.batches().len(), 3);
    client.close(WAIT).unwrap();
}
