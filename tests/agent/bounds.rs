//! The byte budget: what an outage can make the client hold, whatever the
//! envelopes' sizes and whatever the caller does meanwhile (flush per
//! request, block, send), against an agent that is absent and then starts.

use std::time::{Duration, Instant};

use loggregator::spy::{SpyAgent, TestCerts};
use loggregator::{Envelope, Error, IngressClient, Overflow, Stats};

use crate::common::{
    WAIT, absent_agent, assert_closed_accounting, join_within, start_agent, wait_for_stats,
};
use crate::fault_proxy::{FaultProxy, Mode};

const MIB: usize = 1024 * 1024;

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
fn block_waits_for_bytes_as_for_room_and_loses_nothing() {
    let certs = TestCerts::generate().unwrap();
    let (addr, builder) = absent_agent(&certs);
    let client = builder
        .overflow(Overflow::Block)
        .queue_max_bytes(MIB)
        .batch_max_bytes(MIB)
        .build()
        .unwrap();
    let payload = vec![b'b'; 300 * 1024];
    // Three fit in 1 MiB; the count bound (10,000) is far away.
    for _ in 0..3 {
        client.emit(Envelope::log(payload.clone()));
    }
    let emitter = {
        let (client, payload) = (client.clone(), payload.clone());
        std::thread::spawn(move || {
            for _ in 0..3 {
                client.emit(Envelope::log(payload.clone()));
            }
        })
    };
    wait_for_stats(&client, |s| s.emitted == 4);
    assert!(
        !emitter.is_finished(),
        "waits for bytes: {:?}",
        client.stats()
    );
    assert!(client.stats().queued_bytes <= MIB as u64);
    let agent = start_agent(&certs, &addr);
    join_within(emitter, WAIT);
    client.close(WAIT).unwrap();
    assert_eq!(agent.proto_envelopes().len(), 6);
    let stats = client.stats();
    assert_eq!(stats.dropped.total(), 0, "{stats:?}");
    assert_closed_accounting(&stats);
}

#[test]
fn drop_oldest_evicts_as_many_small_envelopes_as_a_large_one_needs() {
    let certs = TestCerts::generate().unwrap();
    let (addr, builder) = absent_agent(&certs);
    let client = builder
        .overflow(Overflow::DropOldest)
        .queue_max_bytes(64 * 1024)
        .batch_max_bytes(64 * 1024)
        .batch_max_envelopes(1)
        .build()
        .unwrap();
    // The first is taken by the sender thread and stuck there with the
    // agent away; the rest wait in the queue.
    client.emit(Envelope::log("first").timestamp(0));
    wait_for_stats(&client, |s| s.in_flight == 1 && s.errors >= 1);
    for n in 1..=40 {
        client.emit(Envelope::log(vec![b's'; 1000]).timestamp(n));
    }
    client.emit(Envelope::log(vec![b'L'; 30 * 1024]).timestamp(100));
    let stats = client.stats();
    assert!(stats.queued_bytes <= 64 * 1024, "{stats:?}");
    // 40 small ones fit in 64 KiB; the large one needs 7 of their places.
    let evicted = stats.dropped.queue_full as i64;
    assert!((6..=8).contains(&evicted), "{stats:?}");
    let agent = start_agent(&certs, &addr);
    client.close(WAIT).unwrap();
    let received: Vec<i64> = agent
        .proto_envelopes()
        .iter()
        .map(|e| e.timestamp)
        .collect();
    // The first, then the newest small ones, then the large one: the oldest went.
    let mut expected = vec![0];
    expected.extend(evicted + 1..=40);
    expected.push(100);
    assert_eq!(received, expected);
    assert_closed_accounting(&client.stats());
}

#[test]
fn drop_oldest_keeps_the_queue_when_the_room_is_held_by_the_sender() {
    let certs = TestCerts::generate().unwrap();
    let (addr, builder) = absent_agent(&certs);
    let client = builder
        .overflow(Overflow::DropOldest)
        .queue_max_bytes(100 * 1000)
        .batch_max_bytes(100 * 1000)
        .batch_max_envelopes(1)
        .build()
        .unwrap();
    // The sender thread holds the first, 60 kB, while the agent is away;
    // a second failed attempt means it has passed the loop since.
    client.emit(Envelope::log(vec![b'h'; 60 * 1000]).timestamp(0));
    wait_for_stats(&client, |s| s.in_flight == 1 && s.errors >= 2);
    for n in 1..=30 {
        client.emit(Envelope::log(vec![b's'; 1000]).timestamp(n));
    }
    // 60 kB held plus 50 kB never fit, however many small ones went: only
    // the new one is dropped.
    client.emit(Envelope::log(vec![b'L'; 50 * 1000]).timestamp(100));
    let stats = client.stats();
    assert_eq!(stats.dropped.queue_full, 1, "{stats:?}");
    let agent = start_agent(&certs, &addr);
    client.close(WAIT).unwrap();
    let received: Vec<i64> = agent
        .proto_envelopes()
        .iter()
        .map(|e| e.timestamp)
        .collect();
    assert_eq!(received, (0..=30).collect::<Vec<_>>());
    assert_closed_accounting(&client.stats());
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
fn block_waits_on_a_program_thread_whatever_its_name() {
    let certs = TestCerts::generate().unwrap();
    let (_addr, builder) = absent_agent(&certs);
    let client = builder
        .overflow(Overflow::Block)
        .batch_max_bytes(1_024)
        .queue_max_bytes(1_024)
        .build()
        .unwrap();
    // Named like the client's own threads, where `emit` never waits; it is
    // not one of them, so it waits as the policy says.
    let (returned, emits_returned) = crossbeam_channel::bounded(1);
    let emitter = {
        let client = client.clone();
        std::thread::Builder::new()
            .name("loggregator-app".to_string())
            .spawn(move || {
                // The budget holds two; nothing is accepted while the
                // agent is away.
                for _ in 0..3 {
                    client.emit(Envelope::log(vec![b'b'; 400]));
                }
                let _ = returned.send(());
            })
            .unwrap()
    };
    // Two held, and the third waiting for room.
    wait_for_stats(&client, |stats| {
        stats.emitted == 3 && stats.queued + stats.in_flight == 2
    });
    // A window in which a thread that drops instead would have returned.
    assert!(
        emits_returned
            .recv_timeout(Duration::from_millis(300))
            .is_err(),
        "{:?}",
        client.stats()
    );
    let _ = client.close(Duration::from_millis(200));
    join_within(emitter, WAIT);
    let stats = client.stats();
    assert_eq!(stats.dropped.queue_full, 0, "{stats:?}");
    assert_closed_accounting(&stats);
}

/// A client through a proxy that can stall the connection, with a 1 MiB
/// budget, at most once and a write timeout long enough that it never
/// leaves the connection during a test.
fn stalling(overflow: Overflow) -> (SpyAgent, FaultProxy, IngressClient) {
    let certs = TestCerts::generate().unwrap();
    let agent = SpyAgent::start(&certs).unwrap();
    let proxy = FaultProxy::start(agent.addr());
    let client = IngressClient::builder()
        .addr(proxy.addr())
        .tls(certs.client_tls().unwrap())
        .queue_max_bytes(MIB)
        .batch_max_bytes(MIB)
        .batch_max_envelopes(1)
        .write_timeout(WAIT)
        .overflow(overflow)
        .build()
        .unwrap();
    // Connected before the stall.
    client.emit(Envelope::log("hello"));
    client.flush(WAIT).unwrap();
    (agent, proxy, client)
}

#[test]
fn drop_oldest_does_not_evict_in_vain_for_bytes_a_stalled_send_holds() {
    let (agent, proxy, client) = stalling(Overflow::DropOldest);
    proxy.set_mode(Mode::Stall);
    let sending = {
        let client = client.clone();
        std::thread::spawn(move || {
            client.send(vec![Envelope::log(vec![b's'; 900 * 1024]).build()], WAIT)
        })
    };
    wait_for_stats(&client, |stats| stats.queued_bytes >= 900 * 1024);
    // Until the stream's write is held too: then envelopes stay queued.
    let started = Instant::now();
    loop {
        client.emit(Envelope::log(vec![b'w'; 8 * 1024]));
        if client.flush(Duration::from_millis(50)).is_err() {
            break;
        }
        assert!(started.elapsed() < WAIT, "{:?}", client.stats());
    }
    let before = client.stats();
    // The sender thread takes one more batch at most, to write next.
    for n in 0..11 {
        client.emit(Envelope::log(format!("small {n}")));
    }
    wait_for_stats(&client, |stats| stats.queued >= 10);
    let before_large = client.stats();
    assert_eq!(
        before_large.dropped.total(),
        before.dropped.total(),
        "{before_large:?}"
    );
    // The send's 900 KiB cannot be evicted: the large log cannot fit,
    // whatever leaves the queue, and it alone is dropped.
    client.emit(Envelope::log(vec![b'l'; 200 * 1024]));
    let after = client.stats();
    assert_eq!(
        after.dropped.queue_full,
        before_large.dropped.queue_full + 1,
        "{after:?}"
    );
    // Nothing was evicted: what the client holds is what it held.
    assert_eq!(
        after.queued + after.in_flight,
        before_large.queued + before_large.in_flight,
        "{after:?}"
    );
    proxy.set_mode(Mode::Pass);
    join_within(sending, WAIT).unwrap();
    client.close(WAIT).unwrap();
    assert_closed_accounting(&client.stats());
    drop(agent);
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
