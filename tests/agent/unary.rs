//! The unary `send`: confirmed by the agent, or an error within its timeout.

use std::time::{Duration, Instant};

use loggregator::spy::Rpc;
use loggregator::{CLOSE_MARGIN, Envelope, Error, IngressClient};

use crate::common::{LOADED_MACHINE, Setup, WAIT, setup, unused_addr};
use crate::fault_proxy::SilentServer;

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

/// Sends one event to `addr` with a timeout of `timeout`; the answer and
/// how long it took, checked against `send`'s bound: its timeout plus
/// `CLOSE_MARGIN` (and what a loaded machine adds).
fn send_timed(setup: &Setup, addr: &str, timeout: Duration) -> (IngressClient, Result<(), Error>) {
    let client = IngressClient::builder()
        .addr(addr)
        .tls(setup.certs.client_tls().unwrap())
        .build()
        .unwrap();
    let started = Instant::now();
    let result = client.send(vec![Envelope::event("deploy", "v42").into()], timeout);
    let took = started.elapsed();
    assert!(
        took < timeout + CLOSE_MARGIN + LOADED_MACHINE,
        "send took {took:?}: {result:?}"
    );
    (client, result)
}

#[test]
fn send_fails_within_its_timeout_when_the_agent_is_down() {
    let setup = setup();
    let (client, result) = send_timed(&setup, &unused_addr(), Duration::from_secs(2));
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
fn send_to_an_agent_that_never_answers_times_out_within_its_timeout() {
    let setup = setup();
    let silent = SilentServer::start();
    let timeout = Duration::from_millis(500);
    let (client, result) = send_timed(&setup, silent.addr(), timeout);
    match result {
        Err(Error::Timeout {
            undelivered: 1,
            waited,
        }) => assert!(waited >= timeout, "{waited:?}"),
        other => panic!("{other:?}"),
    }
    assert!(silent.wait_for_accepted(1, WAIT));
    assert_eq!(client.stats().errors, 1, "{:?}", client.stats());
    let _ = client.close(Duration::from_millis(100));
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

#[test]
fn send_adds_the_default_source_and_client_tags_as_emit_does_and_an_envelope_s_own_win() {
    let setup = setup();
    let client = setup
        .builder()
        .source(loggregator::SourceInfo::new("default-app", "7"))
        .tag("deployment", "cf")
        .tag("job", "api")
        .build()
        .unwrap();
    client
        .send(
            vec![
                Envelope::log("plain").into(),
                Envelope::log("own")
                    .source("own-app", "2")
                    .tag("job", "worker")
                    .into(),
            ],
            WAIT,
        )
        .unwrap();
    client.emit(Envelope::log("emitted"));
    client.close(WAIT).unwrap();
    let received = setup.agent.proto_envelopes();
    let seen: Vec<(&str, &str, &str, &str)> = received
        .iter()
        .map(|e| {
            (
                e.source_id.as_str(),
                e.instance_id.as_str(),
                e.tags["deployment"].as_str(),
                e.tags["job"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("default-app", "7", "cf", "api"),
            ("own-app", "2", "cf", "worker"),
            ("default-app", "7", "cf", "api"),
        ]
    );
    // Sent as emit sends them: byte for byte the same envelope but for
    // the text and timestamp.
    let mut sent = received[0].clone();
    let mut emitted = received[2].clone();
    (sent.timestamp, emitted.timestamp) = (0, 0);
    emitted.mut_log().payload = sent.log().payload.clone();
    assert_eq!(sent, emitted);
}

#[test]
fn send_refuses_a_counter_that_would_reset_the_agent_s_total() {
    let setup = setup();
    let client = setup.builder().build().unwrap();
    let result = client.send(
        vec![
            Envelope::log("fine").into(),
            Envelope::counter("c").delta(0).into(),
        ],
        WAIT,
    );
    assert!(matches!(result, Err(Error::Rejected(_))), "{result:?}");
    client.close(WAIT).unwrap();
    assert!(
        setup.agent.proto_envelopes().is_empty(),
        "nothing of the call"
    );
}
