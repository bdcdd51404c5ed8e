//! Faults of the connection under gRPC, made by a proxy between the client
//! and the spy agent: resets, a stalled peer, a peer that vanished without a
//! word (half-open), refused connections, and a peer that never answers TLS.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use loggregator::spy::{SpyAgent, TestCerts};
use loggregator::{Delivery, Envelope, Error, IngressClient, IngressClientBuilder, Overflow};

use crate::common::{
    LOADED_MACHINE, WAIT, assert_closed_accounting, capture_logs, join_within, logged,
    wait_for_stats,
};
use crate::fault_proxy::{FaultProxy, Mode, SilentServer};
use crate::faults::{FAST_RETRY, assert_every_one_received, numbered, seqs};

/// Short, so that a dead connection is noticed quickly.
const WRITE_TIMEOUT: Duration = Duration::from_millis(500);
const CONFIRM_INTERVAL: Duration = Duration::from_millis(100);

/// How long a client on a half-open connection may take to deliver again
/// on a new one. Nothing but the client's own timers can end such a
/// connection before keepalive (6 minutes): the confirmation it waits for
/// never comes (a stream is ended to be confirmed every `CONFIRM_INTERVAL`,
/// and waited for `WRITE_TIMEOUT`), then a backoff step and a new
/// connection, well under a second. No bound is promised, so the test waits
/// as long as for any event; a client that relies on keepalive still fails.
const RECOVERY: Duration = WAIT;

/// The spy agent behind a fault proxy.
struct Proxied {
    certs: TestCerts,
    agent: SpyAgent,
    proxy: FaultProxy,
}

impl Proxied {
    fn start() -> Proxied {
        capture_logs();
        let certs = TestCerts::generate().unwrap();
        let agent = SpyAgent::start(&certs).unwrap();
        let proxy = FaultProxy::start(agent.addr());
        Proxied {
            certs,
            agent,
            proxy,
        }
    }

    /// A client that dials the proxy and notices a dead connection quickly.
    fn builder(&self) -> IngressClientBuilder {
        IngressClient::builder()
            .addr(self.proxy.addr())
            .tls(self.certs.client_tls().unwrap())
            .write_timeout(WRITE_TIMEOUT)
            .reconnect_backoff(FAST_RETRY.0, FAST_RETRY.1)
    }

    fn at_least_once(&self) -> IngressClient {
        self.builder()
            .delivery(Delivery::AtLeastOnce)
            .overflow(Overflow::Block)
            .confirm_interval(CONFIRM_INTERVAL)
            .build()
            .unwrap()
    }

    /// Waits until the spy has read more than it has now: the client
    /// delivers through the proxy.
    fn wait_for_progress(&self, within: Duration, client: &IngressClient) {
        let read = self.agent.counts().envelopes;
        let now = self.agent.wait_for_count(read + 1, within).envelopes;
        assert!(
            now > read,
            "nothing delivered within {within:?}: {:?}",
            client.stats()
        );
    }
}

/// Emits numbered envelopes from another thread at a steady pace, so that
/// faults land mid-stream, until stopped.
struct Emitter {
    stop: Arc<AtomicBool>,
    emitted: Arc<AtomicU64>,
    thread: JoinHandle<()>,
}

impl Emitter {
    fn start(client: &IngressClient) -> Emitter {
        let stop = Arc::new(AtomicBool::new(false));
        let emitted = Arc::new(AtomicU64::new(0));
        let thread = {
            let (client, stop, emitted) = (client.clone(), stop.clone(), emitted.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    client.emit(numbered(n));
                    n += 1;
                    emitted.store(n, Ordering::SeqCst);
                    if n % 20 == 0 {
                        // About 10,000 a second: a steady rate, not one burst.
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
            })
        };
        Emitter {
            stop,
            emitted,
            thread,
        }
    }

    /// Stops; returns how many it emitted.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        join_within(self.thread, WAIT);
        self.emitted.load(Ordering::SeqCst)
    }
}

/// Switches the proxy to `fault` and waits for what shows the client met it.
fn inject(proxied: &Proxied, client: &IngressClient, fault: Mode) {
    let (proxy, accepted, errors) = (
        &proxied.proxy,
        proxied.proxy.accepted(),
        client.stats().errors,
    );
    proxy.set_mode(fault);
    match fault {
        // The client found its connection gone and tried a new one, which
        // met the fault too.
        Mode::Reset | Mode::Refuse => assert!(
            proxy.wait_for_accepted(accepted + 1, WAIT),
            "{fault:?}: no new connection: {:?}",
            client.stats()
        ),
        // A stall lasts until the client gave up a write or a confirmation.
        Mode::Stall => {
            wait_for_stats(client, |stats| stats.errors > errors);
        }
        // Nothing tells the client: it must find out by itself, leave the
        // connection for a new one (which the proxy forwards) and deliver.
        Mode::HalfOpen => {
            assert!(
                proxy.wait_for_accepted(accepted + 1, RECOVERY),
                "no new connection within {RECOVERY:?} after the half-open one: {:?}",
                client.stats()
            );
            proxied.wait_for_progress(RECOVERY, client);
        }
        Mode::Pass => {}
    }
}

/// How faults follow one another.
#[derive(Clone, Copy, PartialEq)]
enum Between {
    /// The proxy forwards until the client delivers again, so that every
    /// fault meets a connection that carries envelopes.
    Recovery,
    /// The next fault meets whatever the last one left.
    Nothing,
}

/// At least once, envelopes emitted all along through `faults`, one after
/// the other, and then a proxy that forwards again, all arrive.
fn at_least_once_through(faults: &[Mode], between: Between) {
    let proxied = Proxied::start();
    let client = proxied.at_least_once();
    let emitter = Emitter::start(&client);
    proxied.wait_for_progress(WAIT, &client);
    for &fault in faults {
        inject(&proxied, &client, fault);
        if between == Between::Recovery {
            proxied.proxy.set_mode(Mode::Pass);
            let sent = client.stats().sent;
            proxied.wait_for_progress(WAIT, &client);
            // Confirmed too: the connection works end to end.
            wait_for_stats(&client, |stats| stats.sent > sent);
        }
    }
    proxied.proxy.set_mode(Mode::Pass);
    proxied.wait_for_progress(WAIT, &client);
    let total = emitter.stop();
    client.close(WAIT).unwrap();
    assert_every_one_received(&proxied.agent, total);
    let stats = client.stats();
    assert_eq!((stats.sent, stats.dropped.total()), (total, 0), "{stats:?}");
    assert!(stats.errors >= faults.len() as u64, "{stats:?}");
    assert_closed_accounting(&stats);
}

#[test]
fn at_least_once_every_envelope_survives_connections_reset() {
    at_least_once_through(&[Mode::Reset], Between::Recovery);
}

#[test]
fn at_least_once_every_envelope_survives_a_stalled_connection() {
    at_least_once_through(&[Mode::Stall], Between::Recovery);
}

#[test]
fn at_least_once_every_envelope_survives_a_half_open_connection() {
    at_least_once_through(&[Mode::HalfOpen], Between::Recovery);
}

#[test]
fn at_least_once_every_envelope_survives_refused_connections() {
    at_least_once_through(&[Mode::Refuse], Between::Recovery);
}

#[test]
fn at_least_once_every_envelope_survives_reset_stall_half_open_and_refusal_in_turn() {
    at_least_once_through(
        &[Mode::Reset, Mode::Stall, Mode::HalfOpen, Mode::Refuse],
        Between::Recovery,
    );
}

/// Here the half-open connections are the ones the stall left, on which
/// the TLS handshake never ended.
#[test]
fn at_least_once_every_envelope_survives_reset_stall_half_open_and_refusal_one_upon_another() {
    at_least_once_through(
        &[Mode::Reset, Mode::Stall, Mode::HalfOpen, Mode::Refuse],
        Between::Nothing,
    );
}

#[test]
fn at_most_once_a_reset_or_closed_connection_loses_at_most_a_batch_or_two_a_stream() {
    const STREAMS: u64 = 2;
    const BATCH: u64 = 100;
    const BEFORE: u64 = 1_000;
    // What the agent had not read when the connection died is what the
    // client had written on it since: the test reaches the fault with
    // nothing unread, so that is what it writes until it notices. Each
    // stream can lose a batch that gRPC took before it read the reset (or
    // the FIN), counted sent, and then the batch whose write met the ended
    // call, given up (it may have gone out). A stream learns of the end on
    // its own next write, so a stream not yet written on since loses its
    // batch after the client first noticed, within one batch a stream.
    const LOSS_BOUND: u64 = 2 * STREAMS * BATCH;
    for fault in [Mode::Reset, Mode::Refuse] {
        let proxied = Proxied::start();
        let client = proxied
            .builder()
            .streams(STREAMS as usize)
            .batch_max_envelopes(BATCH as usize)
            .build()
            .unwrap();
        for n in 0..BEFORE {
            client.emit(numbered(n));
        }
        client.flush(WAIT).unwrap();
        proxied
            .agent
            .wait_for_proto_envelopes(BEFORE as usize, WAIT);
        proxied.proxy.set_mode(fault);
        let mut n = BEFORE;
        while client.stats().errors == 0 {
            for _ in 0..BATCH {
                client.emit(numbered(n));
                n += 1;
            }
            // Given up or written again, whatever its write met; a batch
            // written again waits in backoff until the proxy forwards.
            let _ = client.flush(Duration::from_secs(1));
            assert!(n < BEFORE + 100 * BATCH, "{fault:?} never noticed");
        }
        let noticed = n;
        proxied.proxy.set_mode(Mode::Pass);
        for _ in 0..10 * BATCH {
            client.emit(numbered(n));
            n += 1;
        }
        let _ = client.close(WAIT);
        let received = seqs(&proxied.agent);
        let unique: HashSet<u64> = received.iter().copied().collect();
        assert_eq!(unique.len(), received.len(), "{fault:?}: duplicates");
        let stats = client.stats();
        let missing: Vec<u64> = (0..n).filter(|k| !unique.contains(k)).collect();
        assert!(
            missing.len() as u64 <= LOSS_BOUND
                && missing
                    .iter()
                    .all(|&k| (BEFORE..noticed + STREAMS * BATCH).contains(&k)),
            "{fault:?}: lost {} of {n}, noticed at {noticed}: {:?}… {stats:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        eprintln!(
            "at most once, {fault:?}: lost {} ({} given up), noticed after {}",
            missing.len(),
            stats.dropped.gave_up,
            noticed - BEFORE
        );
        assert!(stats.errors >= 1, "{stats:?}");
        assert_eq!(stats.sent + stats.dropped.total(), n, "{stats:?}");
        assert_closed_accounting(&stats);
    }
}

/// Within `within` of `since`, the client made a new connection after the
/// `accepted` the proxy had seen when it made theirs half-open, and every
/// envelope numbered below `total` arrived.
fn assert_half_open_left_within(
    proxied: &Proxied,
    client: &IngressClient,
    accepted: u64,
    (since, within): (Instant, Duration),
    total: u64,
) {
    assert!(
        proxied.proxy.wait_for_accepted(accepted + 1, within),
        "no new connection within {within:?} after the half-open one: {:?}",
        client.stats()
    );
    let deadline = since + within;
    loop {
        let received: HashSet<u64> = seqs(&proxied.agent).into_iter().collect();
        if (0..total).all(|n| received.contains(&n)) {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "not all of {total} within {within:?} of the half-open connection: {} missing, {:?}",
            (0..total).filter(|n| !received.contains(n)).count(),
            client.stats()
        );
        proxied
            .agent
            .wait_for_proto_envelopes(proxied.agent.proto_envelopes().len() + 1, left);
    }
    eprintln!("left a half-open connection after {:?}", since.elapsed());
}

#[test]
fn at_least_once_a_half_open_connection_is_left_when_its_confirmation_never_comes() {
    let proxied = Proxied::start();
    let client = proxied.at_least_once();
    for n in 0..100 {
        client.emit(numbered(n));
    }
    // Confirmed: the connection worked end to end.
    wait_for_stats(&client, |stats| stats.sent == 100);
    let accepted = proxied.proxy.accepted();
    proxied.proxy.set_mode(Mode::HalfOpen);
    let since = Instant::now();
    // Small enough for gRPC to take at once: only the confirmation shows
    // the connection is dead.
    for n in 100..200 {
        client.emit(numbered(n));
    }
    assert_half_open_left_within(&proxied, &client, accepted, (since, RECOVERY), 200);
    // Left by the client's own timer, at its `write_timeout`, not by
    // anything slower that happened to come within RECOVERY.
    let timer = format!("the agent did not end a half-closed stream within {WRITE_TIMEOUT:?}");
    let warned = logged(proxied.proxy.addr());
    assert!(
        warned.iter().any(|line| line.contains(&timer)),
        "{timer:?} in {warned:?}"
    );
    client.close(WAIT).unwrap();
    let stats = client.stats();
    assert_eq!((stats.sent, stats.dropped.total()), (200, 0), "{stats:?}");
    assert!(stats.errors >= 1, "{stats:?}");
    assert_closed_accounting(&stats);
}

#[test]
fn at_least_once_a_half_open_connection_is_left_when_a_write_is_held() {
    const PAYLOAD: usize = 64 * 1024;
    let proxied = Proxied::start();
    // Confirmations far apart, and room for whatever gRPC's windows take,
    // so that only a held write can show the connection is dead.
    let client = proxied
        .builder()
        .delivery(Delivery::AtLeastOnce)
        .overflow(Overflow::Block)
        .confirm_interval(Duration::from_secs(60))
        .replay_buffer_bytes(256 << 20)
        .queue_max_bytes(256 << 20)
        .build()
        .unwrap();
    let big = |n: u64| {
        Envelope::log(vec![b'b'; PAYLOAD])
            .timestamp(n as i64)
            .build()
    };
    client.emit(big(0));
    client.flush(WAIT).unwrap();
    proxied.agent.wait_for_proto_envelopes(1, WAIT);
    let accepted = proxied.proxy.accepted();
    proxied.proxy.set_mode(Mode::HalfOpen);
    // Until a write is held: HTTP/2 flow control stops it once the windows
    // the agent granted before are used up, as no new grant comes.
    let mut n = 1;
    let deadline = Instant::now() + WAIT;
    loop {
        for _ in 0..16 {
            client.emit(big(n));
            n += 1;
        }
        if let Err(Error::Timeout { .. }) = client.flush(Duration::from_millis(250)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no write held: {:?}",
            client.stats()
        );
    }
    // The held write began before the flush gave up.
    let since = Instant::now();
    let within = WRITE_TIMEOUT + FAST_RETRY.1 + Duration::from_millis(1_100);
    assert_half_open_left_within(&proxied, &client, accepted, (since, within), n);
    client.close(WAIT).unwrap();
    let stats = client.stats();
    assert_eq!((stats.sent, stats.dropped.total()), (n, 0), "{stats:?}");
    assert_closed_accounting(&stats);
}

#[test]
fn a_peer_that_never_answers_tls_is_named_in_the_last_error() {
    let certs = TestCerts::generate().unwrap();
    let silent = SilentServer::start();
    let client = IngressClient::builder()
        .addr(silent.addr())
        .tls(certs.client_tls().unwrap())
        .write_timeout(WRITE_TIMEOUT)
        .reconnect_backoff(FAST_RETRY.0, FAST_RETRY.1)
        .build()
        .unwrap();
    client.emit(numbered(0));
    assert!(
        silent.wait_for_accepted(1, WAIT),
        "the client never connected"
    );
    let timeout = Duration::from_secs(2);
    let started = Instant::now();
    let closed = client.close(timeout);
    let took = started.elapsed();
    assert!(closed.is_err(), "{closed:?}");
    // Its promise, on a loaded machine.
    assert!(
        took < timeout + loggregator::CLOSE_MARGIN + LOADED_MACHINE,
        "close took {took:?}"
    );
    let stats = client.stats();
    let last_error = stats.last_error.as_deref().unwrap_or_default();
    // Named with the connection it waited on, and how old that was.
    assert!(
        last_error.contains("no TLS handshake from") && last_error.contains(" old"),
        "last error {last_error:?}, {stats:?}"
    );
    assert_closed_accounting(&stats);
}

#[test]
fn at_most_once_a_half_open_connection_loses_only_what_was_written_on_it_and_is_left() {
    const PAYLOAD: usize = 16 * 1024;
    let proxied = Proxied::start();
    let client = proxied.builder().batch_max_envelopes(16).build().unwrap();
    let log = |n: u64| {
        Envelope::log(vec![b'm'; PAYLOAD])
            .timestamp(n as i64)
            .build()
    };
    const BEFORE: u64 = 100;
    for n in 0..BEFORE {
        client.emit(log(n));
    }
    client.flush(WAIT).unwrap();
    proxied
        .agent
        .wait_for_proto_envelopes(BEFORE as usize, WAIT);
    let accepted = proxied.proxy.accepted();
    proxied.proxy.set_mode(Mode::HalfOpen);
    // Written into windows the agent will never read, until a write is
    // held, times out and is given up: the client has noticed.
    let mut n = BEFORE;
    let deadline = Instant::now() + WAIT;
    // Envelopes given up, as flush and close report them: each once.
    let mut reported = 0;
    let mut count_reported = |answer| match answer {
        Ok(()) | Err(Error::Timeout { .. }) => {}
        Err(Error::Undelivered { count, .. }) => reported += count,
        Err(other) => panic!("{other:?}"),
    };
    while client.stats().dropped.gave_up == 0 {
        for _ in 0..16 {
            client.emit(log(n));
            n += 1;
        }
        count_reported(client.flush(Duration::from_millis(100)));
        assert!(
            Instant::now() < deadline,
            "never noticed: {:?}",
            client.stats()
        );
    }
    let noticed = n;
    // A new connection carries what follows.
    assert!(
        proxied.proxy.wait_for_accepted(accepted + 1, WAIT),
        "{:?}",
        client.stats()
    );
    for _ in 0..100 {
        client.emit(log(n));
        n += 1;
    }
    count_reported(client.close(WAIT));
    assert_eq!(reported, client.stats().dropped.gave_up);
    let received = seqs(&proxied.agent);
    let unique: HashSet<u64> = received.iter().copied().collect();
    assert_eq!(
        unique.len(),
        received.len(),
        "at most once never duplicates"
    );
    // Lost: what gRPC took on the silent connection (counted sent: at most
    // once cannot know) and the held write (given up). Nothing from before
    // the fault, nothing emitted after the client noticed.
    let missing: Vec<u64> = (0..n).filter(|k| !unique.contains(k)).collect();
    let stats = client.stats();
    assert!(
        !missing.is_empty() && missing.iter().all(|&k| (BEFORE..noticed).contains(&k)),
        "lost {} of {n}, noticed at {noticed}: {:?}… {stats:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(stats.sent + stats.dropped.total(), n, "{stats:?}");
    assert!(
        stats
            .last_error
            .as_deref()
            .unwrap()
            .contains("write not accepted"),
        "{stats:?}"
    );
    eprintln!(
        "at most once, half open: lost {} ({} given up), noticed after {}",
        missing.len(),
        stats.dropped.gave_up,
        noticed - BEFORE
    );
    assert_closed_accounting(&stats);
}
