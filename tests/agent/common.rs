//! Shared set-up: certificates, a spy agent, a client, and a log capture.

use std::sync::{Mutex, Once};
use std::time::Duration;

use loggregator::spy::{SpyAgent, TestCerts};
use loggregator::{IngressClient, IngressClientBuilder};

/// The longest any test waits for something it expects.
pub const WAIT: Duration = Duration::from_secs(20);

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

/// A loopback address where nothing listens.
pub fn unused_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr.to_string()
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

/// Starts the agent at the address a client was waiting for.
pub fn start_agent(certs: &TestCerts, addr: &str) -> SpyAgent {
    let port = addr.rsplit_once(':').unwrap().1.parse().unwrap();
    SpyAgent::builder().port(port).start(certs).unwrap()
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
        std::thread::yield_now();
    }
}

/// While the sender is still (every term is read separately, so only when
/// nothing moves): every emitted envelope is in exactly one place.
pub fn assert_still_accounting(stats: &loggregator::Stats) {
    let placed = stats.sent + stats.dropped.total() + stats.queued + stats.in_flight;
    assert_eq!(stats.emitted, placed, "{stats:?}");
}

/// Runs a command of this crate to its end, at most [`WAIT`] (see
/// [`wait_within_wait`]).
pub fn output_within_wait(command: &mut std::process::Command) -> std::process::Output {
    use std::process::Stdio;
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_within_wait(child)
}

/// Waits at most [`WAIT`] for a child to end: past it the child is killed
/// and the test fails with what it had written.
pub fn wait_within_wait(child: std::process::Child) -> std::process::Output {
    let pid = child.id();
    let (done, finished) = crossbeam_channel::bounded(1);
    let waiter = std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match finished.recv_timeout(WAIT) {
        Ok(output) => {
            waiter.join().unwrap();
            output.expect("wait")
        }
        Err(_) => {
            // The waiter owns the child: kill it by its id, then collect
            // what it wrote.
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            let output = finished.recv_timeout(WAIT).expect("killed child ends");
            let output = output.expect("wait");
            panic!(
                "still running after {WAIT:?}; stdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}
