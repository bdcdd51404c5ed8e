//! A unary `send` that meets an agent restart fails at once with
//! UNAVAILABLE: gRPC's retries are off and the client does not retry a
//! unary call itself, so the caller decides; the next send after the agent
//! is back goes through.

use std::time::{Duration, Instant};

use loggregator::spy::{SpyAgent, TestCerts};
use loggregator::{Envelope, Error};

use crate::common::WAIT;
use crate::common::fast_retry_builder;

fn send_one(client: &loggregator::IngressClient, timeout: Duration) -> loggregator::Result<()> {
    client.send(vec![Envelope::event("deploy", "v42").into()], timeout)
}

#[test]
fn a_send_that_meets_an_agent_restart_fails_with_unavailable_then_the_next_goes_through() {
    let certs = TestCerts::generate().unwrap();
    let agent = SpyAgent::start(&certs).unwrap();
    let client = fast_retry_builder(&certs, agent.addr()).build().unwrap();
    send_one(&client, WAIT).unwrap();
    agent.shutdown();
    // Well within its timeout: a call that fails is not waited on, nor
    // retried behind the caller's back.
    let started = Instant::now();
    match send_one(&client, WAIT) {
        Err(Error::Agent { status, .. }) => assert!(status.starts_with("UNAVAILABLE"), "{status}"),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < WAIT / 2, "{:?}", started.elapsed());
    agent.restart().unwrap();
    // The channel reconnects on its own backoff: until it has, a send
    // fails the same way, at once.
    let deadline = Instant::now() + WAIT;
    loop {
        match send_one(&client, WAIT) {
            Ok(()) => break,
            Err(Error::Agent { status, .. }) if status.starts_with("UNAVAILABLE") => {}
            other => panic!("{other:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "the agent never took a send again"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(agent.proto_envelopes().len(), 2);
    assert!(client.stats().errors >= 1);
    client.close(WAIT).unwrap();
}
