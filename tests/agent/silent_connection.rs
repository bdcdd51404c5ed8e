//! A connection that goes silent is left within its bound: a half-open
//! connection (confirmation never comes, or a write is held) at least once
//! and at most once, and a peer that never answers TLS, named in the last
//! error.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use loggregator::spy::TestCerts;
use loggregator::{Delivery, Envelope, Error, IngressClient, Overflow};

use crate::common::{
    FAST_RETRY, LOADED_MACHINE, WAIT, assert_closed_accounting, logged, numbered, seqs,
    wait_for_stats,
};
use crate::fault_proxy::{Mode, SilentServer};
use crate::proxied::{Proxied, RECOVERY, WRITE_TIMEOUT};

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
