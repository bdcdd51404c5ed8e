//! The overflow policies when the queue is full, by count or by bytes:
//! DropNewest keeps the queue, DropOldest evicts the oldest (as many as a
//! large envelope needs, never in vain for bytes the sender holds), Block
//! waits for room on any thread and loses nothing, BlockFor waits then
//! drops and counts.

use std::time::{Duration, Instant};

use loggregator::spy::TestCerts;
use loggregator::{Envelope, IngressClient, Overflow};

use crate::common::{
    MIB, WAIT, absent_agent, assert_closed_accounting, assert_still_accounting, fast_retry_builder,
    join_within, numbered, seqs, start_agent, unused_addr, wait_for_stats,
};
use crate::fault_proxy::Mode;
use crate::proxied::stalling;

/// An agent that is down until started: the first envelope's batch is
/// stuck in backoff, so the queue holds exactly what the test emits next.
struct StuckClient {
    certs: TestCerts,
    addr: String,
    client: IngressClient,
}

fn stuck_client(overflow: Overflow) -> StuckClient {
    let certs = TestCerts::generate().unwrap();
    let addr = unused_addr();
    let client = fast_retry_builder(&certs, &addr)
        .overflow(overflow)
        .queue_capacity(4)
        .batch_max_envelopes(1)
        .build()
        .unwrap();
    client.emit(numbered(0));
    wait_for_stats(&client, |s| s.errors >= 1 && s.in_flight == 1);
    for n in 1..=4 {
        client.emit(numbered(n));
    }
    StuckClient {
        certs,
        addr,
        client,
    }
}

impl StuckClient {
    fn deliver(self) -> (Vec<u64>, loggregator::Stats) {
        // The sender is backing off with envelope 0: nothing moves.
        assert_still_accounting(&self.client.stats());
        let agent = start_agent(&self.certs, &self.addr);
        self.client.close(WAIT).unwrap();
        let stats = self.client.stats();
        assert_closed_accounting(&stats);
        (seqs(&agent), stats)
    }
}

/// Emits envelopes 5 to 7 into the full queue under `overflow`, then lets
/// the agent start.
fn overflow_three(overflow: Overflow) -> (Vec<u64>, loggregator::Stats) {
    let stuck = stuck_client(overflow);
    for n in 5..=7 {
        stuck.client.emit(numbered(n));
    }
    stuck.deliver()
}

#[test]
fn drop_newest_keeps_the_queue_and_drops_the_new_envelopes() {
    let (received, stats) = overflow_three(Overflow::DropNewest);
    assert_eq!(received, vec![0, 1, 2, 3, 4]);
    assert_eq!(stats.dropped.queue_full, 3);
}

#[test]
fn drop_oldest_makes_room_by_dropping_the_oldest_queued() {
    let (received, stats) = overflow_three(Overflow::DropOldest);
    assert_eq!(received, vec![0, 4, 5, 6, 7]);
    assert_eq!(stats.dropped.queue_full, 3);
}

#[test]
fn block_waits_for_room_and_loses_nothing() {
    let stuck = stuck_client(Overflow::Block);
    let emitter = {
        let client = stuck.client.clone();
        std::thread::spawn(move || {
            for n in 5..=7 {
                client.emit(numbered(n));
            }
        })
    };
    // The emitter is blocked on envelope 5 until the agent appears.
    wait_for_stats(&stuck.client, |s| s.emitted == 6);
    assert!(!emitter.is_finished());
    let agent = start_agent(&stuck.certs, &stuck.addr);
    join_within(emitter, WAIT);
    stuck.client.close(WAIT).unwrap();
    assert_eq!(seqs(&agent), (0..=7).collect::<Vec<_>>());
    let stats = stuck.client.stats();
    assert_eq!(stats.dropped.total(), 0);
    assert_closed_accounting(&stats);
}

#[test]
fn block_for_waits_then_drops_and_counts() {
    let (received, stats) = overflow_three(Overflow::BlockFor(Duration::from_millis(20)));
    assert_eq!(received, vec![0, 1, 2, 3, 4]);
    assert_eq!(stats.dropped.queue_full, 3);
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
    proxy.set_mode(Mode::Pass);
    join_within(sending, WAIT).unwrap();
    client.close(WAIT).unwrap();
    assert_closed_accounting(&client.stats());
    // Nothing was evicted: every small log arrives, and the large one alone
    // was dropped. (Counted by what arrives, not by what the client held:
    // a write gRPC still had room for may complete meanwhile.)
    let payloads: Vec<Vec<u8>> = agent
        .proto_envelopes()
        .iter()
        .map(|e| e.log().payload.clone())
        .collect();
    let smalls = payloads.iter().filter(|p| p.starts_with(b"small ")).count();
    assert_eq!(smalls, 11, "{after:?}");
    assert!(!payloads.iter().any(|p| p.first() == Some(&b'l')));
}
