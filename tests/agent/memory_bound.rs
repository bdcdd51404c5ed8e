//! The byte budget: what an outage can make the client hold, whatever the
//! envelopes' sizes and whatever the caller does meanwhile (flush per
//! request, unary sends), against an agent that is absent and then starts
//! or stalls.

use std::time::{Duration, Instant};

use loggregator::spy::{SpyAgent, TestCerts};
use loggregator::{Envelope, Error, IngressClient, Overflow, Stats};

use crate::common::{MIB, WAIT, absent_agent, assert_closed_accounting, start_agent};
use crate::fault_proxy::Mode;
use crate::proxied::stalling;

/// Envelopes the client holds: emitted, and neither sent nor dropped.
fn held(stats: &Stats) -> u64 {
    stats.emitted - stats.sent - stats.dropped.total()
}

#[test]
fn large_envelopes_during_an_outage_are_held_up_to_queue_max_bytes() {
    let certs = TestCerts::generate().unwrap();
    let (addr, builder) = absent_agent(&certs);
    let client = builder.queue_max_bytes(4 * MIB).build().unwrap();
    let payload = vec![b'x'; 256 * 1024];
    let mut most_bytes = 0;
    for _ in 0..100 {
        client.emit(Envelope::log(payload.clone()));
        most_bytes = most_bytes.max(client.stats().queued_bytes);
    }
    let stats = client.stats();
    assert!(most_bytes <= 4 * MIB as u64, "{most_bytes} {stats:?}");
    // 15 fit in 4 MiB (each is a little over 256 KiB encoded); the rest
    // are dropped and counted, not held.
    assert_eq!(held(&stats), 15, "{stats:?}");
    assert_eq!(stats.dropped.queue_full, 85, "{stats:?}");
    let agent = start_agent(&certs, &addr);
    client.close(WAIT).unwrap();
    assert_eq!(agent.proto_envelopes().len(), 15);
    let stats = client.stats();
    assert_eq!(stats.queued_bytes, 0, "{stats:?}");
    assert_closed_accounting(&stats);
}

#[test]
fn flushing_per_request_during_an_outage_holds_no_more_than_the_queue() {
    let certs = TestCerts::generate().unwrap();
    let (addr, builder) = absent_agent(&certs);
    let (capacity, batch) = (2_000, 100);
    let client = builder
        .queue_capacity(capacity)
        .batch_max_envelopes(batch)
        .build()
        .unwrap();
    let payload = vec![b'r'; 1024];
    let mut most_held = 0;
    for request in 0..100 {
        for _ in 0..100 {
            client.emit(Envelope::log(payload.clone()));
        }
        // Nothing can be written: the flush times out and moves nothing.
        match client.flush(Duration::from_millis(1)) {
            Err(Error::Timeout { .. }) => {}
            other => panic!("request {request}: {other:?}"),
        }
        most_held = most_held.max(held(&client.stats()));
    }
    let stats = client.stats();
    // The queue, plus at most the batch the sender took before the outage
    // stopped it and the one it was building.
    assert!(
        most_held <= (capacity + 2 * batch) as u64,
        "held {most_held}: {stats:?}"
    );
    assert!(stats.dropped.queue_full >= 10_000 - (capacity + 2 * batch) as u64);
    let agent = start_agent(&certs, &addr);
    client.flush(WAIT).unwrap();
    client.close(WAIT).unwrap();
    let stats = client.stats();
    assert_eq!(agent.proto_envelopes().len() as u64, stats.sent);
    assert_closed_accounting(&stats);
}

#[test]
fn unary_sends_wait_for_room_in_the_byte_budget_and_give_it_back() {
    let certs = TestCerts::generate().unwrap();
    let agent = SpyAgent::start(&certs).unwrap();
    let client = IngressClient::builder()
        .addr(agent.addr())
        .tls(certs.client_tls().unwrap())
        .queue_max_bytes(MIB)
        .batch_max_bytes(MIB)
        .build()
        .unwrap();
    let big = || vec![Envelope::log(vec![b'u'; 600 * 1024]).build()];
    // Sends hold their bytes only while they run: one after another, each fits.
    for _ in 0..3 {
        client.send(big(), WAIT).unwrap();
    }
    assert_eq!(client.stats().queued_bytes, 0);
    // With the budget taken by what a stalled agent does not read, a send
    // cannot fit: it waits, then times out, instead of growing memory
    // (the spy would answer the unary call itself).
    agent.pause_reading();
    let started = Instant::now();
    // Until HTTP/2 flow control holds a write: then nothing more is accepted.
    loop {
        for _ in 0..10 {
            client.emit(Envelope::log(vec![b'q'; 60 * 1024]));
        }
        if client.flush(Duration::from_millis(100)).is_err() {
            break;
        }
        assert!(started.elapsed() < WAIT, "{:?}", client.stats());
    }
    while client.stats().queued_bytes < 500 * 1024 {
        client.emit(Envelope::log(vec![b'q'; 60 * 1024]));
    }
    match client.send(big(), Duration::from_millis(300)) {
        Err(Error::Timeout { undelivered: 1, .. }) => {}
        other => panic!("{other:?}"),
    }
    assert!(client.stats().queued_bytes <= MIB as u64);
    assert_eq!(unary_sends(&agent), 3);
    agent.resume_reading();
    client.flush(WAIT).unwrap();
    client.send(big(), WAIT).unwrap();
    assert_eq!(unary_sends(&agent), 4);
    client.close(WAIT).unwrap();
    assert_closed_accounting(&client.stats());
}

fn unary_sends(agent: &SpyAgent) -> usize {
    agent
        .batches()
        .iter()
        .filter(|batch| batch.rpc == loggregator::spy::Rpc::Send)
        .count()
}

#[test]
fn a_send_that_times_out_has_given_its_bytes_back_when_it_returns() {
    let (_agent, proxy, client) = stalling(Overflow::DropNewest);
    let log = || vec![Envelope::log(vec![b't'; 100 * 1024]).build()];
    // Its deadline passed before the sender thread started it.
    for _ in 0..20 {
        let _ = client.send(log(), Duration::ZERO);
        assert_eq!(client.stats().queued_bytes, 0);
    }
    // The agent does not answer before the deadline.
    proxy.set_mode(Mode::Stall);
    for _ in 0..3 {
        match client.send(log(), Duration::from_millis(200)) {
            Err(Error::Timeout { .. }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(client.stats().queued_bytes, 0, "{:?}", client.stats());
    }
    proxy.set_mode(Mode::Pass);
    client.close(WAIT).unwrap();
}
