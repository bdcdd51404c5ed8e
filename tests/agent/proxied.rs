//! A client that reaches the spy agent through the fault proxy, a thread
//! that keeps emitting through it, and the faults the connection tests
//! inject with it (shared by at_least_once, at_most_once, silent_connection),
//! and a client whose sends the proxy stalls (overflow, memory_bound).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use loggregator::spy::{SpyAgent, TestCerts};
use loggregator::{Delivery, Envelope, IngressClient, IngressClientBuilder, Overflow};

use crate::common::{
    FAST_RETRY, MIB, WAIT, assert_closed_accounting, assert_every_one_received, capture_logs,
    join_within, numbered, wait_for_stats,
};
use crate::fault_proxy::{FaultProxy, Mode};

/// Short, so that a dead connection is noticed quickly.
pub const WRITE_TIMEOUT: Duration = Duration::from_millis(500);

pub const CONFIRM_INTERVAL: Duration = Duration::from_millis(100);

/// How long a client on a half-open connection may take to deliver again
/// on a new one. Nothing but the client's own timers can end such a
/// connection before keepalive (6 minutes): the confirmation it waits for
/// never comes (a stream is ended to be confirmed every `CONFIRM_INTERVAL`,
/// and waited for `WRITE_TIMEOUT`), then a backoff step and a new
/// connection, well under a second. No bound is promised, so the test waits
/// as long as for any event; a client that relies on keepalive still fails.
pub const RECOVERY: Duration = WAIT;

/// The spy agent behind a fault proxy.
pub struct Proxied {
    pub certs: TestCerts,
    pub agent: SpyAgent,
    pub proxy: FaultProxy,
}

impl Proxied {
    pub fn start() -> Proxied {
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
    pub fn builder(&self) -> IngressClientBuilder {
        IngressClient::builder()
            .addr(self.proxy.addr())
            .tls(self.certs.client_tls().unwrap())
            .write_timeout(WRITE_TIMEOUT)
            .reconnect_backoff(FAST_RETRY.0, FAST_RETRY.1)
    }

    pub fn at_least_once(&self) -> IngressClient {
        self.builder()
            .delivery(Delivery::AtLeastOnce)
            .overflow(Overflow::Block)
            .confirm_interval(CONFIRM_INTERVAL)
            .build()
            .unwrap()
    }

    /// Waits until the spy has read more than it has now: the client
    /// delivers through the proxy.
    pub fn wait_for_progress(&self, within: Duration, client: &IngressClient) {
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
pub struct Emitter {
    pub stop: Arc<AtomicBool>,
    pub emitted: Arc<AtomicU64>,
    pub thread: JoinHandle<()>,
}

impl Emitter {
    pub fn start(client: &IngressClient) -> Emitter {
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
    pub fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        join_within(self.thread, WAIT);
        self.emitted.load(Ordering::SeqCst)
    }
}

/// Switches the proxy to `fault` and waits for what shows the client met it.
pub fn inject(proxied: &Proxied, client: &IngressClient, fault: Mode) {
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
pub enum Between {
    /// The proxy forwards until the client delivers again, so that every
    /// fault meets a connection that carries envelopes.
    Recovery,
    /// The next fault meets whatever the last one left.
    Nothing,
}

/// At least once, envelopes emitted all along through `faults`, one after
/// the other, and then a proxy that forwards again, all arrive.
pub fn at_least_once_through(faults: &[Mode], between: Between) {
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

/// A client through a proxy that can stall the connection, with a 1 MiB
/// budget, at most once and a write timeout long enough that it never
/// leaves the connection during a test.
pub fn stalling(overflow: Overflow) -> (SpyAgent, FaultProxy, IngressClient) {
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
