//! What `flush` and `close` answer: every envelope `emit` accepted and the
//! client lost afterwards is reported once, by the first flush or close to
//! return after the loss, whichever handle calls it; drops `emit` made
//! itself are only counted. Emitters blocked for room when close begins are
//! reported by that close.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use loggregator::spy::{SpyAgent, TestCerts};
use loggregator::{Delivery, Envelope, Error, IngressClient, Overflow, Stats};

use crate::common::{
    WAIT, assert_closed_accounting, fast_retry_builder, numbered, sorted_seqs, start_agent,
    unused_addr,
};

/// The most the agent takes in one message, in these tests.
const AGENT_LIMIT: usize = 16 * 1024;

/// Looks at the client's stats every millisecond until `ready` holds; fails
/// after [`WAIT`].
fn poll_stats(client: &IngressClient, ready: impl Fn(&Stats) -> bool) -> Stats {
    let deadline = Instant::now() + WAIT;
    loop {
        let stats = client.stats();
        if ready(&stats) {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "stats never got there: {stats:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A client, at least once, whose one large envelope an agent with a
/// 16 KiB message limit has refused (counted `too_large`) before any
/// flush or close was called.
fn client_that_lost_one() -> (SpyAgent, IngressClient) {
    let certs = TestCerts::generate().unwrap();
    let agent = SpyAgent::builder()
        .max_message_bytes(AGENT_LIMIT)
        .start(&certs)
        .unwrap();
    let client = fast_retry_builder(&certs, agent.addr())
        .delivery(Delivery::AtLeastOnce)
        .build()
        .unwrap();
    client.emit(Envelope::log(vec![b'y'; 20_000]).timestamp(1000).build());
    poll_stats(&client, |s| s.dropped.too_large == 1);
    (agent, client)
}

fn assert_refused_as_too_large(result: Result<(), Error>) {
    match result {
        Err(Error::Undelivered { count: 1, cause }) => {
            assert!(cause.contains("RESOURCE_EXHAUSTED"), "{cause}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_loss_before_a_flush_is_reported_by_that_flush_and_only_once() {
    let (agent, client) = client_that_lost_one();
    client.emit(numbered(1));
    assert_refused_as_too_large(client.flush(WAIT));
    client.emit(numbered(2));
    client.flush(WAIT).unwrap();
    client.close(WAIT).unwrap();
    assert_eq!(sorted_seqs(&agent), vec![1, 2]);
    let stats = client.stats();
    assert_eq!((stats.sent, stats.dropped.too_large), (2, 1), "{stats:?}");
    assert_closed_accounting(&stats);
}

#[test]
fn a_loss_before_close_is_reported_by_close() {
    let (agent, client) = client_that_lost_one();
    client.emit(numbered(1));
    assert_refused_as_too_large(client.close(WAIT));
    assert_eq!(sorted_seqs(&agent), vec![1]);
    assert_closed_accounting(&client.stats());
}

#[test]
fn clones_flushing_at_once_report_a_loss_exactly_once() {
    let (_agent, client) = client_that_lost_one();
    let flushers = 4;
    let start = Arc::new(Barrier::new(flushers));
    let answers: Vec<_> = (0..flushers)
        .map(|_| {
            let (client, start) = (client.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                client.flush(WAIT)
            })
        })
        .collect();
    let mut reported = 0;
    for answer in answers {
        match answer.join().unwrap() {
            Ok(()) => {}
            Err(Error::Undelivered { count, .. }) => reported += count,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(reported, 1);
    client.close(WAIT).unwrap();
}

#[test]
fn drops_emit_makes_itself_are_counted_and_not_reported() {
    let certs = TestCerts::generate().unwrap();
    let agent = SpyAgent::start(&certs).unwrap();
    let client = fast_retry_builder(&certs, agent.addr())
        .batch_max_bytes(4096)
        .build()
        .unwrap();
    client.emit(Envelope::log(vec![b'x'; 5000]));
    client.emit(Envelope::counter("requests").delta(0));
    client.emit(numbered(1));
    client.flush(WAIT).unwrap();
    client.close(WAIT).unwrap();
    let stats = client.stats();
    assert_eq!(
        (stats.dropped.too_large, stats.dropped.zero_counter),
        (1, 1),
        "{stats:?}"
    );
    assert_eq!(sorted_seqs(&agent), vec![1]);
    assert_closed_accounting(&stats);
}

/// An agent that is not there yet: envelope 0 is held by the sender thread
/// in backoff, 1 to 4 fill the queue, and `blocked` threads wait for room
/// with one envelope each (numbered from 5), known blocked by `stats()`.
struct Blocked {
    certs: TestCerts,
    addr: String,
    client: IngressClient,
    emitters: Vec<std::thread::JoinHandle<()>>,
}

fn blocked_emitters(overflow: Overflow, blocked: u64) -> Blocked {
    let certs = TestCerts::generate().unwrap();
    let addr = unused_addr();
    let client = fast_retry_builder(&certs, &addr)
        .overflow(overflow)
        .queue_capacity(4)
        .batch_max_envelopes(1)
        .build()
        .unwrap();
    client.emit(numbered(0));
    poll_stats(&client, |s| s.errors >= 1 && s.in_flight == 1);
    for n in 1..=4 {
        client.emit(numbered(n));
    }
    let emitters = (0..blocked)
        .map(|n| {
            let client = client.clone();
            std::thread::spawn(move || client.emit(numbered(5 + n)))
        })
        .collect();
    poll_stats(&client, |s| s.blocked_emitters == blocked);
    Blocked {
        certs,
        addr,
        client,
        emitters,
    }
}

impl Blocked {
    fn join_emitters(&mut self) {
        for emitter in self.emitters.drain(..) {
            emitter.join().unwrap();
        }
    }
}

#[test]
fn close_reports_what_emitters_blocked_for_room_were_holding() {
    for overflow in [Overflow::Block, Overflow::BlockFor(WAIT)] {
        let mut blocked = blocked_emitters(overflow, 3);
        let closing = {
            let client = blocked.client.clone();
            std::thread::spawn(move || client.close(WAIT))
        };
        // Close released the emitters before the agent could make room.
        poll_stats(&blocked.client, |s| {
            s.blocked_emitters == 0 && s.dropped.closed == 3
        });
        let agent = start_agent(&blocked.certs, &blocked.addr);
        match closing.join().unwrap() {
            Err(Error::Undelivered { count: 3, .. }) => {}
            other => panic!("{overflow:?}: {other:?}"),
        }
        blocked.join_emitters();
        assert_eq!(sorted_seqs(&agent), vec![0, 1, 2, 3, 4], "{overflow:?}");
        let stats = blocked.client.stats();
        assert_eq!((stats.sent, stats.dropped.closed), (5, 3), "{stats:?}");
        assert_closed_accounting(&stats);
    }
}

#[test]
fn close_that_times_out_counts_blocked_emitters_among_the_undelivered() {
    let mut blocked = blocked_emitters(Overflow::Block, 2);
    let timeout = Duration::from_millis(300);
    match blocked.client.close(timeout) {
        // 0 to 4 given up, 5 and 6 released by close.
        Err(Error::Timeout { undelivered: 7, .. }) => {}
        other => panic!("{other:?}"),
    }
    blocked.join_emitters();
    let stats = blocked.client.stats();
    assert_eq!(
        (stats.dropped.gave_up, stats.dropped.closed),
        (5, 2),
        "{stats:?}"
    );
    assert_closed_accounting(&stats);
}

#[test]
fn close_against_a_paused_agent_reports_every_envelope_it_did_not_deliver() {
    let certs = TestCerts::generate().unwrap();
    let agent = SpyAgent::start(&certs).unwrap();
    agent.pause_reading();
    let client = fast_retry_builder(&certs, agent.addr())
        .overflow(Overflow::Block)
        .queue_capacity(8)
        .build()
        .unwrap();
    let emitters: u64 = 3;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads: Vec<_> = (0..emitters)
        .map(|_| {
            let (client, stop) = (client.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    client.emit(Envelope::log(vec![b'p'; 16 * 1024]));
                }
            })
        })
        .collect();
    // The agent reads nothing: the queue fills and the emitters wait for
    // room (until HTTP/2's windows are full, gRPC still takes writes and
    // the sender thread makes room now and then).
    poll_stats(&client, |s| s.blocked_emitters == emitters);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    // Whatever close ran into (its deadline, the last stream not ended),
    // every envelope it leaves undelivered is in its answer.
    let reported = match client.close(Duration::from_millis(500)) {
        Ok(()) | Err(Error::Agent { .. }) => 0,
        Err(Error::Undelivered { count, .. }) => count,
        Err(Error::Timeout { undelivered, .. }) => undelivered,
        Err(other) => panic!("{other:?}"),
    };
    for thread in threads {
        thread.join().unwrap();
    }
    let stats = client.stats();
    assert!(stats.dropped.closed <= emitters, "{stats:?}");
    assert_eq!(reported, stats.dropped.total(), "{stats:?}");
    assert_closed_accounting(&stats);
    agent.resume_reading();
}
