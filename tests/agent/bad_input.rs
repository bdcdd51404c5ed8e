//! Bad certificates, keys and settings give typed errors; TLS refusals are
//! reported, never panic and never spin.

use std::time::Duration;

use loggregator::spy::{SpyAgent, TestCerts};
use loggregator::{Envelope, Error, IngressClient, TlsConfig};

use crate::common::{WAIT, logged, setup, wait_for_stats};

fn write(dir: &std::path::Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn a_missing_file_names_the_file() {
    let certs = TestCerts::generate().unwrap();
    let missing = certs.dir().join("nope.key");
    let err =
        TlsConfig::from_files(certs.ca_file(), certs.client_cert_file(), &missing).unwrap_err();
    match &err {
        Error::Io { path, source } => {
            assert_eq!(path, &missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("nope.key"), "{err}");
}

#[test]
fn text_that_is_not_pem_names_the_file_and_the_problem() {
    let certs = TestCerts::generate().unwrap();
    let garbage = write(
        certs.dir(),
        "garbage.crt",
        b"hello, I am not a certificate\n",
    );
    let err = TlsConfig::from_files(&garbage, certs.client_cert_file(), certs.client_key_file())
        .unwrap_err();
    assert!(
        matches!(&err, Error::Pem { origin, .. } if origin.ends_with("garbage.crt")),
        "{err:?}"
    );
    assert!(err.to_string().contains("not PEM"), "{err}");

    let broken = write(
        certs.dir(),
        "broken.crt",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    let err = TlsConfig::from_files(certs.ca_file(), &broken, certs.client_key_file()).unwrap_err();
    assert!(
        matches!(&err, Error::Pem { origin, .. } if origin.ends_with("broken.crt")),
        "{err:?}"
    );

    let err = TlsConfig::from_files(certs.ca_file(), certs.client_cert_file(), certs.ca_file())
        .unwrap_err();
    assert!(
        matches!(&err, Error::Pem { problem, .. } if problem.contains("private key")),
        "{err:?}"
    );
}

#[test]
fn a_pem_with_a_nul_byte_is_refused_before_grpc_sees_it() {
    let certs = TestCerts::generate().unwrap();
    let mut ca = certs.ca_pem().to_vec();
    ca.insert(30, 0);
    let err = TlsConfig::from_pem(ca, certs.client_cert_pem(), certs.client_key_pem()).unwrap_err();
    assert!(
        matches!(&err, Error::Pem { origin, problem } if origin == "CA certificate" && problem.contains("NUL byte at offset 30")),
        "{err:?}"
    );
}

#[test]
fn an_empty_ca_is_refused() {
    let certs = TestCerts::generate().unwrap();
    let empty = write(certs.dir(), "empty.crt", b"\n");
    let err = TlsConfig::from_files(&empty, certs.client_cert_file(), certs.client_key_file())
        .unwrap_err();
    assert!(
        matches!(&err, Error::Pem { problem, .. } if problem == "is empty"),
        "{err:?}"
    );
}

#[test]
fn a_key_that_does_not_match_its_certificate_is_refused() {
    let certs = TestCerts::generate().unwrap();
    let other = TestCerts::generate().unwrap();
    let err = TlsConfig::from_files(
        certs.ca_file(),
        certs.client_cert_file(),
        other.client_key_file(),
    )
    .unwrap_err();
    match &err {
        Error::KeyMismatch { certificate, key } => {
            assert!(certificate.ends_with("client.crt"));
            assert!(key.starts_with(other.dir().to_str().unwrap()));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn pkcs8_keys_work_as_well_as_pkcs1() {
    let certs = TestCerts::generate().unwrap();
    let key = openssl::pkey::PKey::private_key_from_pem(certs.client_key_pem()).unwrap();
    let pkcs8 = key.private_key_to_pem_pkcs8().unwrap();
    assert!(pkcs8.starts_with(b"-----BEGIN PRIVATE KEY-----"));
    TlsConfig::from_pem(certs.ca_pem(), certs.client_cert_pem(), pkcs8).unwrap();
}

#[test]
fn debug_output_never_shows_the_key() {
    let certs = TestCerts::generate().unwrap();
    let tls = certs.client_tls().unwrap();
    let shown = format!("{tls:?} {tls:#?}");
    let key = String::from_utf8(certs.client_key_pem().to_vec()).unwrap();
    let key_body = key.lines().nth(1).unwrap();
    assert!(
        !shown.contains("PRIVATE KEY") && !shown.contains(key_body),
        "{shown}"
    );
    assert!(shown.contains("redacted"));
}

#[test]
fn bad_settings_name_the_setting() {
    let certs = TestCerts::generate().unwrap();
    let tls = certs.client_tls().unwrap();
    let cases: Vec<(&str, loggregator::IngressClientBuilder)> = vec![
        ("addr", IngressClient::builder().addr("localhost")),
        ("addr", IngressClient::builder().addr("localhost:99999")),
        (
            "server_name",
            IngressClient::builder().tls(tls.clone().server_name("me\0tron")),
        ),
        ("queue_capacity", IngressClient::builder().queue_capacity(0)),
        (
            "batch_max_envelopes",
            IngressClient::builder()
                .queue_capacity(10)
                .batch_max_envelopes(11),
        ),
        (
            "batch_max_bytes",
            IngressClient::builder().batch_max_bytes(11 << 20),
        ),
        (
            "flush_interval",
            IngressClient::builder().flush_interval(Duration::ZERO),
        ),
    ];
    for (expected, builder) in cases {
        let builder = if expected == "server_name" {
            builder
        } else {
            builder.tls(tls.clone())
        };
        match builder.build() {
            Err(Error::Config { setting, problem }) => assert_eq!(setting, expected, "{problem}"),
            other => panic!("{expected}: {other:?}"),
        }
    }
}

/// Emits one envelope to an agent that refuses the TLS handshake and checks
/// the refusal is reported, retried with backoff (not in a loop), logged once,
/// and given up on cleanly at close.
fn assert_refused(client: IngressClient, expected_in_error: &str) {
    let warning = format!("cannot deliver envelopes: agent at {}", client.addr());
    client.emit(Envelope::log("refused"));
    let flushed = client.flush(Duration::from_secs(1));
    assert!(
        matches!(flushed, Err(Error::Timeout { undelivered: 1, .. })),
        "{flushed:?}"
    );
    // Told as soon as an attempt failed, however loaded the machine.
    let stats = wait_for_stats(&client, |s| {
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains(expected_in_error))
    });
    // Backoff from 100 ms, doubling, allows a handful of attempts by the
    // time the flush's second is over, not a spin.
    assert!((1..=12).contains(&stats.errors), "{stats:?}");
    match client.close(Duration::from_millis(500)) {
        Err(Error::Timeout { undelivered: 1, .. }) => {}
        other => panic!("{other:?}"),
    }
    let stats = client.stats();
    assert_eq!(
        (stats.dropped.gave_up, stats.sent, stats.in_flight),
        (1, 0, 0)
    );
    assert_eq!(logged(&warning).len(), 1, "one warning per outage");
}

/// A client of the set-up's agent trusting `ca`'s CA and presenting `client`'s certificate.
fn mixed_client(setup: &crate::common::Setup, ca: &TestCerts, client: &TestCerts) -> IngressClient {
    let tls = TlsConfig::from_pem(
        ca.ca_pem(),
        client.client_cert_pem(),
        client.client_key_pem(),
    );
    IngressClient::builder()
        .addr(setup.agent.addr())
        .tls(tls.unwrap())
        .build()
        .unwrap()
}

#[test]
fn a_client_certificate_from_another_ca_is_refused_and_reported() {
    let setup = setup();
    let stranger = TestCerts::generate().unwrap();
    let client = mixed_client(&setup, &setup.certs, &stranger);
    assert_refused(client, "refused the client certificate");
    assert!(setup.agent.proto_envelopes().is_empty());
}

#[test]
fn a_wrong_server_name_is_refused_and_the_hint_names_it() {
    let certs = TestCerts::generate_with_server_names(&["doppler"]).unwrap();
    let agent = SpyAgent::start(&certs).unwrap();
    let client = IngressClient::builder()
        .addr(agent.addr())
        .tls(certs.client_tls().unwrap())
        .build()
        .unwrap();
    assert_refused(client, "`metron`");
    assert!(agent.proto_envelopes().is_empty());

    // The same agent with the right name works.
    let client = IngressClient::builder()
        .addr(agent.addr())
        .tls(certs.client_tls().unwrap().server_name("doppler"))
        .build()
        .unwrap();
    client.emit(Envelope::log("ok"));
    client.close(WAIT).unwrap();
    assert_eq!(agent.proto_envelopes().len(), 1);
}

#[test]
fn an_agent_certificate_from_another_ca_is_refused_and_reported() {
    let setup = setup();
    let stranger = TestCerts::generate().unwrap();
    // The client trusts only the stranger's CA, which did not sign the agent.
    let client = mixed_client(&setup, &stranger, &setup.certs);
    assert_refused(client, "not signed by the CA the client trusts");
    assert!(setup.agent.proto_envelopes().is_empty());
}
