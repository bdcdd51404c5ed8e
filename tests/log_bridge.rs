//! The `log` bridge, in a test binary of its own: it installs the process's
//! one global logger.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use log::{Log, Metadata, Record};
use loggregator::proto::envelope::log::Type;
use loggregator::spy::{SpyAgent, TestCerts};
use loggregator::{Envelope, IngressClient, LogBridge, SourceInfo};

const WAIT: Duration = Duration::from_secs(20);

/// The process's logger: the bridge under test, which sees every record,
/// and a note of the client's own records, so that the test knows the
/// warnings it must not get back did fire.
struct Tee {
    bridge: LogBridge,
    own: Mutex<Vec<String>>,
}

impl Log for Tee {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.bridge.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if record.target().starts_with("loggregator") && self.enabled(record.metadata()) {
            let line = format!("{} {}: {}", record.level(), record.target(), record.args());
            self.own.lock().unwrap().push(line);
        }
        self.bridge.log(record);
    }

    fn flush(&self) {
        self.bridge.flush();
    }
}

impl Tee {
    /// Waits (bounded) until one of the client's own records holds `needle`.
    fn wait_for_own(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self
            .own
            .lock()
            .unwrap()
            .iter()
            .any(|line| line.contains(needle))
        {
            assert!(
                Instant::now() < deadline,
                "never logged {needle:?}: {:?}",
                self.own.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// A loopback address where nothing listens, held (bound, not listening)
/// while the socket lives so that no other socket takes the port.
fn refusing_addr() -> (socket2::Socket, String) {
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
    (socket, addr)
}

#[test]
fn records_become_log_envelopes_and_the_clients_own_never_feed_back() {
    let certs = TestCerts::generate().unwrap();
    let agent = SpyAgent::start(&certs).unwrap();
    let client = IngressClient::builder()
        .addr(agent.addr())
        .tls(certs.client_tls().unwrap())
        .batch_max_bytes(4096)
        .build()
        .unwrap();
    let bridge = LogBridge::new(client.clone())
        .level(log::LevelFilter::Info)
        .source(SourceInfo::new("bridge-test", "0"))
        .with_location(true)
        .echo_to_stderr(true);
    let tee: &'static Tee = Box::leak(Box::new(Tee {
        bridge,
        own: Mutex::new(Vec::new()),
    }));
    log::set_logger(tee).unwrap();
    log::set_max_level(log::LevelFilter::Info);
    // One logger per process: a second bridge says so.
    assert!(LogBridge::new(client.clone()).install().is_err());

    log::error!(target: "app::db", "connection lost");
    log::warn!("disk at {}%", 91);
    log::info!("started");
    log::debug!("below the level: not sent");
    let peer = std::net::Ipv4Addr::new(10, 0, 0, 7);
    log::info!(
        user = "alice", attempts = 3, ratio = 0.5, admin = true, peer:% = peer, last:? = Some("x");
        "login"
    );
    // The bridge's own tags say what the record's metadata says.
    log::warn!(level = "spoofed", target = "spoofed", line = 1, kept = "yes"; "own tags win");
    let long = "é".repeat(1000);
    log::info!(
        k00 = 0, k01 = 1, k02 = 2, k03 = 3, k04 = 4, k05 = 5, k06 = 6, k07 = 7, k08 = 8,
        k09 = 9, k10 = 10, k11 = 11, k12 = 12, k13 = 13, k14 = 14, long = long.as_str(),
        k16 = 16, k17 = 17, k18 = 18;
        "many"
    );

    // The client's own warnings (a dropped envelope, an agent that is down),
    // logged on its threads and on this one, must not come back.
    client.emit(Envelope::log(vec![b'x'; 10_000]));
    let (_held, nobody) = refusing_addr();
    let unreachable = IngressClient::builder()
        .addr(&nobody)
        .tls(certs.client_tls().unwrap())
        .build()
        .unwrap();
    unreachable.emit(Envelope::log("never delivered"));
    tee.wait_for_own(&format!("cannot deliver envelopes: agent at {nobody}"));
    let _ = unreachable.close(Duration::from_millis(300));
    tee.wait_for_own(&format!("closed the client for {nobody}"));

    client.close(WAIT).unwrap();
    tee.wait_for_own("dropping envelopes: it is larger than batch_max_bytes");
    let received = agent.proto_envelopes();
    let payloads: Vec<String> = received
        .iter()
        .map(|e| String::from_utf8_lossy(&e.log().payload).into_owned())
        .collect();
    assert_eq!(
        payloads,
        vec![
            "connection lost",
            "disk at 91%",
            "started",
            "login",
            "own tags win",
            "many"
        ],
        "{received:?}"
    );
    let types: Vec<Type> = received
        .iter()
        .map(|e| e.log().type_.enum_value().unwrap())
        .collect();
    assert_eq!(types[..3], [Type::ERR, Type::ERR, Type::OUT]);
    assert_eq!(received[0].tags["level"], "error");
    assert_eq!(received[0].tags["target"], "app::db");
    assert_eq!(received[2].tags["level"], "info");
    assert!(received[2].tags["file"].ends_with("log_bridge.rs"));
    assert!(received[2].tags["line"].parse::<u32>().is_ok());
    assert!(received.iter().all(|e| e.source_id == "bridge-test"));

    let login = &received[3].tags;
    for (key, value) in [
        ("user", "alice"),
        ("attempts", "3"),
        ("ratio", "0.5"),
        ("admin", "true"),
        ("peer", "10.0.0.7"),
        ("last", "Some(\"x\")"),
        ("level", "info"),
    ] {
        assert_eq!(
            login.get(key).map(String::as_str),
            Some(value),
            "{key}: {login:?}"
        );
    }
    let own = &received[4].tags;
    assert_eq!(
        (
            own["level"].as_str(),
            own["target"].as_str(),
            own["kept"].as_str()
        ),
        ("warn", "log_bridge", "yes")
    );
    assert_ne!(own["line"], "1", "{own:?}");
    let many = &received[5].tags;
    let keys = many.keys().filter(|k| k.starts_with('k') || *k == "long");
    assert_eq!(keys.count(), loggregator::MAX_FIELD_TAGS, "{many:?}");
    assert!(
        !many.contains_key("k16") && many.contains_key("k14"),
        "{many:?}"
    );
    assert!(many["long"].len() <= loggregator::MAX_FIELD_BYTES);
    assert!(many["long"].ends_with('…'));

    let stats = client.stats();
    assert_eq!(stats.dropped.too_large, 1);
    // level, target and line of "own tags win"; k16, k17 and k18 of "many".
    assert_eq!((stats.tags_dropped, stats.values_cut), (6, 1), "{stats:?}");
}
