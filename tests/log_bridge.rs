//! The `log` bridge, in a test binary of its own: it installs the process's
//! one global logger.

use std::time::Duration;

use loggregator::proto::envelope::log::Type;
use loggregator::spy::{SpyAgent, TestCerts};
use loggregator::{Envelope, IngressClient, LogBridge, SourceInfo};

const WAIT: Duration = Duration::from_secs(20);

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
    LogBridge::new(client.clone())
        .level(log::LevelFilter::Info)
        .source(SourceInfo::new("bridge-test", "0"))
        .with_location(true)
        .echo_to_stderr(true)
        .install()
        .unwrap();

    log::error!(target: "app::db", "connection lost");
    log::warn!("disk at {}%", 91);
    log::info!("started");
    log::debug!("below the level: not sent");

    // The client's own warnings (a dropped envelope, logged on this thread)
    // and a sender thread's warnings (an agent that is down) must not come back.
    client.emit(Envelope::log(vec![b'x'; 10_000]));
    let unreachable = IngressClient::builder()
        .addr({
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().to_string()
        })
        .tls(certs.client_tls().unwrap())
        .build()
        .unwrap();
    unreachable.emit(Envelope::log("never delivered"));
    let _ = unreachable.flush(Duration::from_millis(300));
    let _ = unreachable.close(Duration::from_millis(300));

    client.close(WAIT).unwrap();
    let received = agent.envelopes();
    let payloads: Vec<String> = received
        .iter()
        .map(|e| String::from_utf8_lossy(&e.log().payload).into_owned())
        .collect();
    assert_eq!(
        payloads,
        vec!["connection lost", "disk at 91%", "started"],
        "{received:?}"
    );
    let types: Vec<Type> = received
        .iter()
        .map(|e| e.log().type_.enum_value().unwrap())
        .collect();
    assert_eq!(types, vec![Type::ERR, Type::ERR, Type::OUT]);
    assert_eq!(received[0].tags["level"], "error");
    assert_eq!(received[0].tags["target"], "app::db");
    assert_eq!(received[2].tags["level"], "info");
    assert!(received[2].tags["file"].ends_with("log_bridge.rs"));
    assert!(received[2].tags["line"].parse::<u32>().is_ok());
    assert!(received.iter().all(|e| e.source_id == "bridge-test"));
    assert_eq!(client.stats().dropped.too_large, 1);
}
