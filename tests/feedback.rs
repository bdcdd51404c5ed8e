//! A logger that is not the client's `LogBridge`, in a test binary of its
//! own (it is the process's one global logger): it forwards every record
//! into a client, the client's own included, as a `tracing-log` bridge or a
//! hand-written one would, and it can be made to block, as a logger
//! writing to a full pipe does. `emit` must never wait on it, and the
//! client must never wait on itself through it.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};
use loggregator::spy::{SpyAgent, TestCerts};
use loggregator::{Envelope, IngressClient, Overflow};

const WAIT: Duration = Duration::from_secs(20);

/// One record as the logger saw it: the thread it ran on and its text.
#[derive(Clone, Debug)]
struct Seen {
    thread: String,
    message: String,
}

#[derive(Default)]
struct Feedback {
    /// Where every record is forwarded, when set.
    client: Mutex<Option<IngressClient>>,
    /// When set, every record waits here until the test sends or hangs up.
    blocked: Mutex<Option<Receiver<()>>>,
    /// When set, every record is also relayed as a `tracing` event of
    /// another target, as a logger bridging into `tracing` would.
    relay: Mutex<Option<tracing::Dispatch>>,
    /// When set, every record is also counted through this `metrics`
    /// recorder, as a program counting its log lines would.
    count: Mutex<Option<Arc<loggregator::MetricsRecorder>>>,
    /// When set, every record is also counted on this handle, taken
    /// beforehand on a program thread.
    count_on: Mutex<Option<metrics::Counter>>,
    seen: Mutex<Vec<Seen>>,
}

impl log::Log for Feedback {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let thread = std::thread::current().name().unwrap_or("").to_string();
        let message = record.args().to_string();
        self.seen.lock().unwrap().push(Seen {
            thread,
            message: message.clone(),
        });
        let blocked = self.blocked.lock().unwrap().clone();
        if let Some(release) = blocked {
            let _ = release.recv();
        }
        let relay = self.relay.lock().unwrap().clone();
        if let Some(relay) = relay {
            tracing::dispatcher::with_default(&relay, || {
                tracing::warn!(target: "relayed", "{message}");
            });
        }
        let count = self.count.lock().unwrap().clone();
        if let Some(recorder) = count {
            metrics::with_local_recorder(&*recorder, || {
                metrics::counter!("records_counted").increment(1);
            });
        }
        let count_on = self.count_on.lock().unwrap().clone();
        if let Some(handle) = count_on {
            handle.increment(1);
        }
        let client = self.client.lock().unwrap().clone();
        if let Some(client) = client {
            client.emit(Envelope::log(message));
        }
    }

    fn flush(&self) {}
}

/// The logger, installed once; each test takes the lock for its whole run.
fn logger() -> (MutexGuard<'static, ()>, &'static Feedback) {
    static LOGGER: OnceLock<&'static Feedback> = OnceLock::new();
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let logger = *LOGGER.get_or_init(|| {
        let logger: &'static Feedback = Box::leak(Box::default());
        log::set_logger(logger).unwrap();
        log::set_max_level(log::LevelFilter::Info);
        logger
    });
    *logger.client.lock().unwrap() = None;
    *logger.blocked.lock().unwrap() = None;
    *logger.relay.lock().unwrap() = None;
    *logger.count.lock().unwrap() = None;
    *logger.count_on.lock().unwrap() = None;
    logger.seen.lock().unwrap().clear();
    (turn, logger)
}

/// Ports handed out by `unused_addr`, each held by a socket that is bound
/// but not listening until `start_agent` starts an agent there.
static RESERVED: Mutex<Vec<(String, socket2::Socket)>> = Mutex::new(Vec::new());

/// A loopback address where nothing listens: a connection is refused. The
/// port stays bound (not listening) until `start_agent` takes it, so that
/// no other socket takes it meanwhile.
fn unused_addr() -> String {
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

/// Starts an agent at an address from `unused_addr`.
fn start_agent(certs: &TestCerts, addr: &str) -> SpyAgent {
    RESERVED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .retain(|(reserved, _)| reserved != addr);
    let port: u16 = addr.rsplit_once(':').unwrap().1.parse().unwrap();
    SpyAgent::builder().port(port).start(certs).unwrap()
}

/// A client whose agent is away: its sender thread warns that it cannot
/// deliver as soon as it is given an envelope.
fn away_client(certs: &TestCerts) -> IngressClient {
    IngressClient::builder()
        .addr(unused_addr())
        .tls(certs.client_tls().unwrap())
        .build()
        .unwrap()
}

/// Has `away`'s sender thread log that it cannot deliver, and waits for it.
fn warn_from_the_sender_thread(away: &IngressClient, logger: &Feedback) {
    away.emit(Envelope::log("undeliverable"));
    wait_for_sender_warning(logger);
}

/// Waits (bounded) until a client's sender thread has logged that it cannot
/// deliver.
fn wait_for_sender_warning(logger: &Feedback) {
    let deadline = Instant::now() + WAIT;
    let warned = |seen: &Seen| {
        seen.message.starts_with("cannot deliver envelopes") && seen.thread == "loggregator-sender"
    };
    while !logger.seen.lock().unwrap().iter().any(warned) {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            logger.seen.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Runs `work` on a thread of its own and fails if it has not returned
/// within `limit`: a deadlock shows as a failure, not a hung test.
fn within<T: Send + 'static>(limit: Duration, work: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, finished) = bounded(1);
    std::thread::Builder::new()
        .name("within".to_string())
        .spawn(move || {
            let _ = done.send(work());
        })
        .unwrap();
    finished
        .recv_timeout(limit)
        .unwrap_or_else(|_| panic!("still running after {limit:?}"))
}

#[test]
fn a_logger_feeding_the_client_under_block_never_deadlocks_its_threads() {
    let (_turn, logger) = logger();
    let certs = TestCerts::generate().unwrap();
    let addr = unused_addr();
    let client = IngressClient::builder()
        .addr(&addr)
        .tls(certs.client_tls().unwrap())
        .overflow(Overflow::Block)
        .queue_capacity(4)
        .batch_max_envelopes(1)
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .build()
        .unwrap();
    *logger.client.lock().unwrap() = Some(client.clone());
    // The sender thread takes the first envelope and cannot write it; the
    // warning it logs comes back into the queue through the logger.
    client.emit(Envelope::log("first"));
    let deadline = Instant::now() + WAIT;
    while client.stats().emitted < 2 {
        assert!(Instant::now() < deadline, "{:?}", client.stats());
        std::thread::sleep(Duration::from_millis(1));
    }
    // Fill the queue while the sender thread backs off.
    while client.stats().queued < 4 {
        client.emit(Envelope::log("filler"));
    }
    // When the agent appears, the sender thread logs its recovery into a
    // full queue under `Block`: waiting there would wait on itself.
    let agent = start_agent(&certs, &addr);
    let recovered = |seen: &Seen| {
        seen.message.contains("accepts envelopes again") && seen.thread == "loggregator-sender"
    };
    while !logger.seen.lock().unwrap().iter().any(recovered) {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            logger.seen.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // The sender thread is not waiting on itself: it writes what is queued.
    let flushing = client.clone();
    within(WAIT + Duration::from_secs(5), move || flushing.flush(WAIT)).unwrap();
    let closing = client.clone();
    within(WAIT + Duration::from_secs(5), move || closing.close(WAIT)).unwrap();
    *logger.client.lock().unwrap() = None;
    let stats = client.stats();
    assert!(stats.dropped.queue_full >= 1, "{stats:?}");
    assert_eq!(
        stats.emitted,
        stats.sent + stats.dropped.total(),
        "{stats:?}"
    );
    assert_eq!(agent.proto_envelopes().len() as u64, stats.sent);
}

#[test]
fn emit_never_runs_the_logger_and_the_first_drop_is_logged_by_the_client() {
    let (_turn, logger) = logger();
    let certs = TestCerts::generate().unwrap();
    let client = IngressClient::builder()
        .addr(unused_addr())
        .tls(certs.client_tls().unwrap())
        .queue_capacity(2)
        .batch_max_envelopes(1)
        .build()
        .unwrap();
    // A logger that blocks, as one writing to a full pipe does.
    let (release, blocked): (Sender<()>, Receiver<()>) = bounded(0);
    *logger.blocked.lock().unwrap() = Some(blocked);
    let emitter = client.clone();
    within(WAIT, move || {
        for _ in 0..1_000 {
            emitter.emit(Envelope::log("dropped mostly"));
        }
    });
    let stats = client.stats();
    assert!(stats.dropped.queue_full >= 990, "{stats:?}");
    drop(release);
    let closing = client.clone();
    let _ = within(WAIT, move || closing.close(Duration::from_millis(300)));
    let seen = logger.seen.lock().unwrap().clone();
    let drops: Vec<&Seen> = seen
        .iter()
        .filter(|seen| {
            seen.message
                .starts_with("dropping envelopes: the queue is full")
        })
        .collect();
    assert_eq!(drops.len(), 1, "{seen:?}");
    assert_eq!(drops[0].thread, "loggregator-sender");
    // Only the client's threads and close's caller logged anything.
    assert!(
        seen.iter()
            .all(|seen| seen.thread.starts_with("loggregator-")
                || seen.message.starts_with("closed the client")),
        "{seen:?}"
    );
}

#[test]
fn dropping_the_last_handle_closes_on_the_callers_thread_within_its_timeout() {
    let (_turn, logger) = logger();
    let certs = TestCerts::generate().unwrap();
    let addr = unused_addr();
    let timeout = Duration::from_millis(300);
    let client = IngressClient::builder()
        .addr(&addr)
        .tls(certs.client_tls().unwrap())
        .close_on_drop_timeout(timeout)
        .pulse_interval(Duration::from_millis(1))
        .build()
        .unwrap();
    // The pulse thread runs every millisecond while the last handle goes.
    let counter = client.counter("ticks");
    for _ in 0..100 {
        counter.inc();
        client.emit(Envelope::log("undeliverable"));
    }
    drop(counter);
    let dropper = std::thread::Builder::new()
        .name("the-dropper".to_string())
        .spawn(move || {
            let started = Instant::now();
            drop(client);
            started.elapsed()
        })
        .unwrap();
    let took = dropper.join().unwrap();
    assert!(
        // Its promise, and what a loaded machine adds to a thread woken
        // at its deadline.
        took < timeout + loggregator::CLOSE_MARGIN + Duration::from_secs(1),
        "dropping the last handle took {took:?}"
    );
    let seen = logger.seen.lock().unwrap().clone();
    let summary = format!("closed the client for {addr}");
    let closed: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.message.starts_with(&summary))
        .collect();
    assert_eq!(closed.len(), 1, "{seen:?}");
    assert_eq!(closed[0].thread, "the-dropper");
}

#[test]
fn the_tracing_layer_sends_nothing_recorded_on_the_clients_threads_but_a_user_thread_of_the_same_name_is_sent()
 {
    use tracing_subscriber::layer::SubscriberExt;

    let (_turn, logger) = logger();
    let certs = TestCerts::generate().unwrap();
    let agent = SpyAgent::start(&certs).unwrap();
    let traced = IngressClient::builder()
        .addr(agent.addr())
        .tls(certs.client_tls().unwrap())
        .build()
        .unwrap();
    let dispatch = tracing::Dispatch::new(
        tracing_subscriber::registry().with(loggregator::TracingLayer::new(traced.clone())),
    );
    *logger.relay.lock().unwrap() = Some(dispatch.clone());
    // Another client's sender thread warns that it cannot deliver; the
    // logger relays it under a target of its own, on that thread.
    let away = away_client(&certs);
    warn_from_the_sender_thread(&away, logger);
    *logger.relay.lock().unwrap() = None;
    // A thread of the program's that only shares the client's prefix.
    let impostor = dispatch.clone();
    std::thread::Builder::new()
        .name("loggregator-sender".to_string())
        .spawn(move || {
            tracing::dispatcher::with_default(&impostor, || {
                tracing::info!("from a program thread named like the client's");
            })
        })
        .unwrap()
        .join()
        .unwrap();
    let _ = away.close(Duration::from_millis(100));
    traced.close(WAIT).unwrap();
    let payloads: Vec<String> = agent
        .proto_envelopes()
        .iter()
        .map(|e| String::from_utf8_lossy(&e.log().payload).into_owned())
        .collect();
    assert_eq!(
        payloads,
        vec!["from a program thread named like the client's".to_string()]
    );
}

#[test]
fn the_metrics_recorder_keeps_nothing_recorded_on_the_clients_threads_but_a_user_thread_of_the_same_name_is_sent()
 {
    let (_turn, logger) = logger();
    let certs = TestCerts::generate().unwrap();
    let agent = SpyAgent::start(&certs).unwrap();
    let counted = IngressClient::builder()
        .addr(agent.addr())
        .tls(certs.client_tls().unwrap())
        .pulse_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let recorder = Arc::new(loggregator::MetricsRecorder::new(counted.clone()));
    // Another client's sender thread warns that it cannot deliver; the
    // logger counts the record on that thread.
    let away = away_client(&certs);
    *logger.count.lock().unwrap() = Some(recorder.clone());
    warn_from_the_sender_thread(&away, logger);
    *logger.count.lock().unwrap() = None;
    // A thread of the program's that only shares the client's prefix.
    let impostor = recorder.clone();
    std::thread::Builder::new()
        .name("loggregator-sender".to_string())
        .spawn(move || {
            metrics::with_local_recorder(&*impostor, || {
                metrics::counter!("from_a_program_thread").increment(1);
            })
        })
        .unwrap()
        .join()
        .unwrap();
    let _ = away.close(Duration::from_millis(100));
    counted.close(WAIT).unwrap();
    let names: Vec<String> = agent
        .proto_envelopes()
        .iter()
        .map(|e| e.counter().name.clone())
        .collect();
    assert_eq!(names, vec!["from_a_program_thread".to_string()]);
}

#[test]
fn a_metrics_handle_taken_on_a_program_thread_records_nothing_on_the_clients_threads() {
    let (_turn, logger) = logger();
    let certs = TestCerts::generate().unwrap();
    let agent = SpyAgent::start(&certs).unwrap();
    let counted = IngressClient::builder()
        .addr(agent.addr())
        .tls(certs.client_tls().unwrap())
        .pulse_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let recorder = loggregator::MetricsRecorder::new(counted.clone());
    let handle = metrics::with_local_recorder(&recorder, || {
        metrics::counter!("records_counted_on_a_handle")
    });
    handle.increment(1);
    let away = away_client(&certs);
    // Another client's sender thread warns that it cannot deliver; the
    // logger counts the record on the handle, on that thread.
    *logger.count_on.lock().unwrap() = Some(handle.clone());
    warn_from_the_sender_thread(&away, logger);
    *logger.count_on.lock().unwrap() = None;
    let _ = away.close(Duration::from_millis(100));
    counted.close(WAIT).unwrap();
    let deltas: Vec<u64> = agent
        .proto_envelopes()
        .iter()
        .map(|e| e.counter().delta)
        .collect();
    assert_eq!(deltas, vec![1], "the program thread's increment alone");
}
