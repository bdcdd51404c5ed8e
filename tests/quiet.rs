//! Waiting costs no CPU: measured on the whole process, in a test binary
//! of its own so that no other test runs beside it.

use std::time::Duration;

use loggregator::spy::{SpyAgent, TestCerts};
use loggregator::{Envelope, IngressClient, Overflow};
use nix::sys::resource::{UsageWho, getrusage};

fn cpu_time() -> Duration {
    let usage = getrusage(UsageWho::RUSAGE_SELF).unwrap();
    let micros = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
    Duration::from_micros(micros(usage.user_time()) + micros(usage.system_time()))
}

#[test]
fn an_emitter_waiting_for_more_than_half_the_byte_budget_does_not_make_the_client_spin() {
    let certs = TestCerts::generate().unwrap();
    let agent = SpyAgent::start(&certs).unwrap();
    let client = IngressClient::builder()
        .addr(agent.addr())
        .tls(certs.client_tls().unwrap())
        .overflow(Overflow::Block)
        .queue_max_bytes(100_000)
        .batch_max_bytes(100_000)
        // Never by itself: the test flushes when it has measured.
        .flush_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    client.emit(Envelope::log("connect"));
    client.flush(Duration::from_secs(20)).unwrap();
    // 40 kB wait in an open batch; 70 kB more do not fit,
    // though the budget is less than half used.
    client.emit(Envelope::log(vec![b'a'; 40_000]));
    let emitter = {
        let client = client.clone();
        std::thread::spawn(move || client.emit(Envelope::log(vec![b'b'; 70_000])))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while client.stats().emitted < 3 {
        assert!(std::time::Instant::now() < deadline, "{:?}", client.stats());
        std::thread::sleep(Duration::from_millis(1));
    }
    // A window to measure, not a wait for something to happen.
    let before = cpu_time();
    std::thread::sleep(Duration::from_millis(1000));
    let spent = cpu_time() - before;
    assert!(!emitter.is_finished(), "{:?}", client.stats());
    // A loop waking the emitter, which nudges it back, takes a whole core.
    assert!(
        spent < Duration::from_millis(300),
        "{spent:?} of CPU in 1 s"
    );
    // Writing the open batch makes room: the emitter goes on.
    client.flush(Duration::from_secs(20)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !emitter.is_finished() {
        assert!(std::time::Instant::now() < deadline, "{:?}", client.stats());
        std::thread::sleep(Duration::from_millis(1));
    }
    emitter.join().unwrap();
    client.close(Duration::from_secs(20)).unwrap();
    assert_eq!(agent.proto_envelopes().len(), 3);
}
