//! The unary `send`: confirmed by the agent, or an error within its timeout.

use std::time::Duration;

use loggregator::spy::Rpc;
use loggregator::{Envelope, Error, IngressClient};

use crate::common::{WAIT, setup, unused_addr};

#[test]
fn send_returns_after_the_agent_has_the_envelopes() {
    let setup = setup();
    let client = setup.builder().tag("deployment", "cf").build().unwrap();
    client
        .send(
            vec![
                Envelope::event("deploy", "v42").into(),
                Envelope::counter("deploys").into(),
            ],
            WAIT,
        )
        .unwrap();
    // No waiting: the answer came after the agent read the batch.
    let received = setup.agent.proto_envelopes();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].event().body, "v42");
    assert_eq!(received[0].tags["deployment"], "cf");
    assert_eq!(setup.agent.batches()[0].rpc, Rpc::Send);
    client.close(WAIT).unwrap();
}

#[test]
fn send_fails_within_its_timeout_when_the_agent_is_down() {
    let setup = setup();
    let client = IngressClient::builder()
        .addr(unused_addr())
        .tls(setup.certs.client_tls().unwrap())
        .build()
        .unwrap();
    let result = client.send(
        vec![Envelope::event("deploy", "v42").into()],
        Duration::from_secs(2),
    );
    match result {
        Err(Error::Agent { status, hint, .. }) => {
            assert!(status.starts_with("UNAVAILABLE"), "{status}");
            assert_eq!(
                hint.unwrap(),
                format!("no agent is listening at {}", client.addr())
            );
        }
        Err(Error::Timeout { undelivered: 1, .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(client.stats().errors, 1);
    client.close(WAIT).unwrap();
}

#[test]
fn send_refuses_a_batch_over_the_byte_limit() {
    let setup = setup();
    let client = setup.builder().batch_max_bytes(4096).build().unwrap();
    let result = client.send(vec![Envelope::log(vec![b'x'; 5000]).into()], WAIT);
    assert!(matches!(result, Err(Error::Rejected(_))), "{result:?}");
    client.close(WAIT).unwrap();
    assert!(setup.agent.proto_envelopes().is_empty());
}
