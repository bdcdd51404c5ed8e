//! Shared set-up: certificates, a spy agent, a client, a log capture, and
//! the helpers the promise files share (numbered envelopes, agent restarts,
//! the fast-retry client, waits with a bound).

use std::collections::HashSet;
use std::sync::{Mutex, Once};
use std::time::Duration;

use loggregator::spy::{SpyAgent, TestCerts};
use loggregator::{Envelope, Error, IngressClient, IngressClientBuilder};

/// The longest any test waits for something it expects.
pub const WAIT: Duration = Duration::from_secs(20);

/// What a loaded two-core machine may add to a bound the client promises
/// (a thread woken at its deadline waits for a core): asserted bounds are
/// the promise plus this.
pub const LOADED_MACHINE: Duration = Duration::from_secs(1);

/// How often a bounded poll looks again: short beside what it waits for,
/// long enough to leave the cores to the client under test.
pub const POLL: Duration = Duration::from_millis(1);

pub struct Setup {
    pub certs: TestCerts,
    pub agent: SpyAgent,
}

pub fn setup() -> Setup {
    capture_logs();
    let certs = TestCerts::generate().expect("certificates");
    let agent = SpyAgent::start(&certs).expect("spy agent");
    Setup { certs, agent }
}

impl Setup {
    /// A builder pointed at the spy, with its client certificate.
    pub fn builder(&self) -> IngressClientBuilder {
        IngressClient::builder()
            .addr(self.agent.addr())
            .tls(self.certs.client_tls().expect("client TLS"))
    }

    /// The flags the example and the pipe command take to reach the spy.
    pub fn connection_args(&self) -> Vec<std::ffi::OsString> {
        vec![
            "--agent-addr".into(),
            self.agent.addr().into(),
            "--ca-file".into(),
            self.certs.ca_file().into(),
            "--cert-file".into(),
            self.certs.client_cert_file().into(),
            "--key-file".into(),
            self.certs.client_key_file().into(),
        ]
    }

    pub fn client(&self) -> IngressClient {
        self.builder().build().expect("client")
    }
}

/// Ports handed out by `unused_addr`, each held by a socket that is bound
/// but not listening until `start_agent` starts an agent there.
static RESERVED: Mutex<Vec<(String, socket2::Socket)>> = Mutex::new(Vec::new());

/// A loopback address where nothing listens: a connection is refused.
/// The port stays bound (not listening) until `start_agent` takes it, so
/// that neither another test's agent nor an outgoing connection's local
/// port can take it meanwhile (the kernel gives neither a bound port).
pub fn unused_addr() -> String {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let any_port = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    socket.bind(&any_port.into()).unwrap();
    let addr = socket
        .local_addr()
        .unwrap()
        .as_socket()
        .unwrap()
        .to_string();
    RESERVED.lock().unwrap().push((addr.clone(), socket));
    addr
}

/// Frees a port `unused_addr` held, just before an agent binds it.
fn release(addr: &str) {
    RESERVED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .retain(|(reserved, _)| reserved != addr);
}

/// A builder for a client of an agent that is not there yet (see
/// `start_agent`), retrying soon, and the address it dials.
pub fn absent_agent(certs: &TestCerts) -> (String, IngressClientBuilder) {
    let addr = unused_addr();
    let builder = IngressClient::builder()
        .addr(&addr)
        .tls(certs.client_tls().unwrap())
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(50));
    (addr, builder)
}

/// Starts the agent at the address (from `unused_addr`) a client was
/// waiting for.
pub fn start_agent(certs: &TestCerts, addr: &str) -> SpyAgent {
    let port = addr.rsplit_once(':').unwrap().1.parse().unwrap();
    release(addr);
    SpyAgent::builder()
        .port(port)
        .start(certs)
        .unwrap_or_else(|error| panic!("an agent at {addr}: {error}"))
}

static LOGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.target().starts_with("loggregator")
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let line = format!("{} {}: {}", record.level(), record.target(), record.args());
            LOGS.lock().unwrap().push(line);
        }
    }

    fn flush(&self) {}
}

/// Installs a logger that keeps the crate's records for `logged`.
pub fn capture_logs() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        log::set_logger(&Capture).unwrap();
        log::set_max_level(log::LevelFilter::Info);
    });
}

/// Captured records containing `needle` (tests run in parallel, so look for
/// something only the calling test can have caused).
pub fn logged(needle: &str) -> Vec<String> {
    LOGS.lock()
        .unwrap()
        .iter()
        .filter(|line| line.contains(needle))
        .cloned()
        .collect()
}

/// After close, every emitted envelope was sent or dropped, and nothing is left.
pub fn assert_closed_accounting(stats: &loggregator::Stats) {
    assert_eq!(
        stats.emitted,
        stats.sent + stats.dropped.total(),
        "{stats:?}"
    );
    assert_eq!((stats.queued, stats.in_flight), (0, 0), "{stats:?}");
}

/// Waits (bounded) until `ready` holds for the client's stats.
pub fn wait_for_stats(
    client: &IngressClient,
    ready: impl Fn(&loggregator::Stats) -> bool,
) -> loggregator::Stats {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let stats = client.stats();
        if ready(&stats) {
            return stats;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "stats never got there: {stats:?}"
        );
        std::thread::sleep(POLL);
    }
}

/// While the sender is still (every term is read separately, so only when
/// nothing moves): every emitted envelope is in exactly one place.
pub fn assert_still_accounting(stats: &loggregator::Stats) {
    let placed = stats.sent + stats.dropped.total() + stats.queued + stats.in_flight;
    assert_eq!(stats.emitted, placed, "{stats:?}");
}

/// Waits for `child` until `within` is over, reading its stdout and stderr
/// (when piped) meanwhile so that it never blocks on a full pipe. A child
/// that overruns is killed, and the test fails with what it printed.
pub fn wait_child(mut child: std::process::Child, within: Duration) -> std::process::Output {
    use std::io::Read;
    fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = std::time::Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // The pipes end with the child (a grandchild holding them is not ours).
    let stdout = stdout.join().unwrap();
    let stderr = stderr.join().unwrap();
    match status {
        Some(status) => std::process::Output {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "the child did not end within {within:?}: killed\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ),
    }
}

/// Joins `thread`, which must end within `within`: a thread stuck in the
/// client (an emit that never returns) fails the test instead of hanging it.
pub fn join_within<T>(thread: std::thread::JoinHandle<T>, within: Duration) -> T {
    let deadline = std::time::Instant::now() + within;
    while !thread.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "a thread did not end within {within:?}"
        );
        std::thread::sleep(POLL);
    }
    thread.join().unwrap()
}

/// Runs a command of this crate to its end, at most [`WAIT`] (see
/// [`wait_child`]).
pub fn output_within_wait(command: &mut std::process::Command) -> std::process::Output {
    use std::process::Stdio;
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_child(child, WAIT)
}

/// Waits at most [`WAIT`] for a child to end (see [`wait_child`]).
pub fn wait_within_wait(child: std::process::Child) -> std::process::Output {
    wait_child(child, WAIT)
}

/// An hour: an interval or timeout that never comes during a test.
pub const HOUR: Duration = Duration::from_secs(3600);

pub const FAST_RETRY: (Duration, Duration) =
    (Duration::from_millis(10), Duration::from_millis(100));

pub fn fast_retry_builder(certs: &TestCerts, addr: &str) -> IngressClientBuilder {
    IngressClient::builder()
        .addr(addr)
        .tls(certs.client_tls().unwrap())
        .reconnect_backoff(FAST_RETRY.0, FAST_RETRY.1)
}

pub fn numbered(n: u64) -> Envelope {
    Envelope::log("n").timestamp(n as i64).build()
}

pub fn seqs(agent: &SpyAgent) -> Vec<u64> {
    agent
        .proto_envelopes()
        .iter()
        .map(|e| e.timestamp as u64)
        .collect()
}

/// What one restart of the agent can have cost an at most once client.
#[derive(Debug, Clone, Copy)]
pub struct Restart {
    /// One past the highest envelope the agent had read just before it
    /// was shut down: everything below had reached it or was lost earlier.
    pub read_before: u64,
    /// Envelopes the client had finished with (`sent` or `gave_up`) once it
    /// had met the agent's absence: everything below went to the dying
    /// stream or earlier, nothing above ever did.
    pub handled: u64,
}

impl Restart {
    /// The envelopes the dying stream may have lost: those gRPC had
    /// accepted (or the client gave up) beyond what the agent had read.
    pub fn may_have_lost(&self, n: u64) -> bool {
        (self.read_before..self.handled).contains(&n)
    }
}

/// Emits `total` numbered envelopes from another thread while the agent is
/// restarted three times mid-stream; returns, for each restart, what the
/// client can have had in flight on the stream it killed.
pub fn emit_through_restarts(client: &IngressClient, agent: &SpyAgent, total: u64) -> Vec<Restart> {
    let emitter = {
        let client = client.clone();
        std::thread::spawn(move || {
            for n in 0..total {
                client.emit(numbered(n));
                if n % 64 == 63 {
                    // A steady rate rather than one burst, so restarts land mid-stream.
                    std::thread::sleep(Duration::from_micros(500));
                }
            }
        })
    };
    let mut restarts = Vec::new();
    for round in 1..=3 {
        agent.wait_for_proto_envelopes((total as usize / 4) * round, WAIT);
        let read_before = seqs(agent).into_iter().max().map_or(0, |n| n + 1);
        let errors = client.stats().errors;
        agent.shutdown();
        // The second failure since is a reconnection refused: by then the
        // dying stream's last write has been counted, sent or given up,
        // and with no agent nothing more can be. A client that has every
        // envelope behind it writes nothing more, and fails no more.
        let stats = wait_for_stats(client, |s| {
            s.errors >= errors + 2 || s.sent + s.dropped.gave_up == total
        });
        restarts.push(Restart {
            read_before,
            handled: stats.sent + stats.dropped.gave_up,
        });
        agent.restart().unwrap();
    }
    join_within(emitter, WAIT);
    // At most once, a write a restart cut short is given up, and this
    // flush reports it; callers check the counts.
    match client.flush(WAIT) {
        Ok(()) | Err(Error::Undelivered { .. }) => {}
        other => panic!("{other:?}"),
    }
    restarts
}

/// Every envelope numbered below `total` reached the agent.
pub fn assert_every_one_received(agent: &SpyAgent, total: u64) {
    let received: HashSet<u64> = seqs(agent).into_iter().collect();
    let missing: Vec<u64> = (0..total).filter(|n| !received.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "{} missing, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}

/// Flushes; a RESOURCE_EXHAUSTED injected on a stream's first message may
/// name that envelope too large, and at most once gives up an envelope
/// whose write gRPC had taken when an injected error ended the call; flush
/// reports either.
pub fn flush_naming_one_undelivered(client: &IngressClient) {
    match client.flush(WAIT) {
        Ok(()) => {}
        Err(Error::Undelivered { count: 1, .. })
            if client.stats().dropped.too_large + client.stats().dropped.gave_up == 1 => {}
        other => panic!("{other:?}"),
    }
}

/// Closes; the one envelope [`flush_naming_one_undelivered`] allows for
/// may be lost after the last flush, and then close reports it.
pub fn close_naming_one_undelivered(client: &IngressClient) {
    match client.close(WAIT) {
        Ok(()) => {}
        Err(Error::Undelivered { count: 1, .. })
            if client.stats().dropped.too_large + client.stats().dropped.gave_up == 1 => {}
        other => panic!("{other:?}"),
    }
}

pub fn sorted_seqs(agent: &SpyAgent) -> Vec<u64> {
    let mut seqs: Vec<u64> = agent
        .proto_envelopes()
        .iter()
        .map(|e| e.timestamp as u64)
        .collect();
    seqs.sort_unstable();
    seqs
}

pub const MIB: usize = 1024 * 1024;
