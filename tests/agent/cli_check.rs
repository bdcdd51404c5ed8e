//! `loggregator check` against the spy agent: every failure produced for
//! real (a wrong server name, an untrusted CA, an expired certificate,
//! nothing listening), the all-ok case, and `--json`.

use std::process::{Command, Output};

use loggregator::spy::TestCerts;
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{BasicConstraints, ExtendedKeyUsage};
use openssl::x509::{X509, X509NameBuilder};

use crate::common::{output_within_wait, setup, unused_addr};

fn check(args: &[std::ffi::OsString], env: &[(&str, &str)]) -> (Option<i32>, String, Output) {
    let output = output_within_wait(
        Command::new(env!("CARGO_BIN_EXE_loggregator"))
            .arg("check")
            .args(args)
            .env_remove("VCAP_APPLICATION")
            .envs(env.iter().copied()),
    );
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (output.status.code(), stdout, output)
}

fn connection(
    addr: &str,
    ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Vec<std::ffi::OsString> {
    vec![
        "--agent-addr".into(),
        addr.into(),
        "--ca-file".into(),
        ca.into(),
        "--cert-file".into(),
        cert.into(),
        "--key-file".into(),
        key.into(),
    ]
}

#[test]
fn all_ok_sends_one_confirmed_event_and_exits_zero() {
    let setup = setup();
    let (code, stdout, output) = check(&setup.connection_args(), &[]);
    assert_eq!(
        code,
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for name in [
        "CA file",
        "certificate file",
        "key file",
        "key matches certificate",
        "validity",
        "clientAuth usage",
        "chains to CA",
        "agent listening",
        "agent certificate",
        "server name",
        "our certificate",
        "send",
    ] {
        assert!(
            stdout.contains(&format!("ok    {name}: ")),
            "{name}:\n{stdout}"
        );
    }
    assert!(
        !stdout.contains("FAIL") && !stdout.contains("warn"),
        "{stdout}"
    );
    assert!(
        stdout.contains("metron is on the agent's certificate"),
        "{stdout}"
    );
    assert!(stdout.contains(" ms"), "the round trip is shown: {stdout}");
    let received = setup.agent.envelopes();
    assert_eq!(received.len(), 1, "exactly one event: {stdout}");
    let event = received[0].event().expect("an event");
    assert_eq!(event.title, "loggregator check");
}

#[test]
fn json_from_environment_variables_is_one_object_a_check_each() {
    let setup = setup();
    let ca = setup.certs.ca_file();
    let cert = setup.certs.client_cert_file();
    let key = setup.certs.client_key_file();
    let env = [
        ("LOGGREGATOR_AGENT_ADDR", setup.agent.addr()),
        ("LOGGREGATOR_CA_FILE", ca.to_str().unwrap()),
        ("LOGGREGATOR_CERT_FILE", cert.to_str().unwrap()),
        ("LOGGREGATOR_KEY_FILE", key.to_str().unwrap()),
        ("LOGGREGATOR_SERVER_NAME", "localhost"),
        ("LOGGREGATOR_SOURCE_ID", "from-env"),
        ("LOGGREGATOR_TAGS", "deployment=cf"),
    ];
    let (code, stdout, _) = check(&["--json".into()], &env);
    assert_eq!(code, Some(0), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect(&stdout);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["server_name"], "localhost", "{report}");
    let checks = report["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 12, "{report}");
    for check in checks {
        assert_eq!(check["status"], "ok", "{check}");
        assert!(check["fix"].is_null(), "{check}");
    }
    let received = setup.agent.envelopes();
    assert_eq!(received[0].source_id(), "from-env");
    assert_eq!(received[0].tag("deployment"), Some("cf"));
}

#[test]
fn a_wrong_server_name_fails_and_names_what_the_certificate_holds() {
    let setup = setup();
    let mut args = setup.connection_args();
    args.extend(["--server-name".into(), "doppler".into(), "--json".into()]);
    let (code, stdout, _) = check(&args, &[]);
    assert_eq!(code, Some(1), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect(&stdout);
    let status = |name: &str| {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|check| check["check"] == name)
            .unwrap_or_else(|| panic!("{name} in {report}"))
            .clone()
    };
    let name = status("server name");
    assert_eq!(name["status"], "fail", "{report}");
    assert_eq!(
        name["detail"],
        "the agent's certificate is not valid for doppler; it holds: metron, localhost, 127.0.0.1"
    );
    assert_eq!(status("agent certificate")["status"], "ok", "{report}");
    assert_eq!(status("send")["status"], "skip", "{report}");
    assert!(setup.agent.envelopes().is_empty());
}

#[test]
fn another_ca_fails_the_agent_certificate_and_the_agent_refuses_ours() {
    let setup = setup();
    // A whole other deployment's files: each valid on its own.
    let other = TestCerts::generate().unwrap();
    let args = connection(
        setup.agent.addr(),
        &other.ca_file(),
        &other.client_cert_file(),
        &other.client_key_file(),
    );
    let (code, stdout, _) = check(&args, &[]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("ok    chains to CA: "), "{stdout}");
    assert!(
        stdout.contains(
            "FAIL  agent certificate: the agent's certificate is not signed by the CA in --ca-file"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAIL  our certificate: refused by the agent"),
        "{stdout}"
    );
    assert!(stdout.contains("skip  send: "), "{stdout}");
    assert!(setup.agent.envelopes().is_empty());
}

#[test]
fn an_expired_certificate_fails_with_its_date() {
    let setup = setup();
    let (ca_key, ca) = ca();
    let key = rsa_key();
    let expired = client_cert(&ca, &ca_key, &key, -30, -2);
    let dir = tempfile::tempdir().unwrap();
    let (ca_path, cert_path, key_path) = (
        dir.path().join("ca.crt"),
        dir.path().join("client.crt"),
        dir.path().join("client.key"),
    );
    std::fs::write(&ca_path, ca.to_pem().unwrap()).unwrap();
    std::fs::write(&cert_path, expired.to_pem().unwrap()).unwrap();
    std::fs::write(&key_path, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    let args = connection(setup.agent.addr(), &ca_path, &cert_path, &key_path);
    let (code, stdout, _) = check(&args, &[]);
    assert_eq!(code, Some(1), "{stdout}");
    let date = expired.not_after().to_string();
    assert!(
        stdout.contains(&format!("FAIL  validity: expired on {date}")),
        "{date}: {stdout}"
    );
    assert!(stdout.contains("ok    chains to CA: "), "{stdout}");
    assert!(
        stdout.contains("ok    key matches certificate: "),
        "{stdout}"
    );
    // Still tried: the agent refuses it.
    assert!(
        stdout.contains("FAIL  our certificate: refused by the agent"),
        "{stdout}"
    );

    // One that ends within 30 days is a warning, with its date, and no FAIL.
    let soon = client_cert(&ca, &ca_key, &key, -1, 10);
    std::fs::write(&cert_path, soon.to_pem().unwrap()).unwrap();
    let (_, stdout, _) = check(&args, &[]);
    let date = soon.not_after().to_string();
    assert!(
        stdout.contains(&format!("warn  validity: expires on {date}, in 9 days"))
            || stdout.contains(&format!("warn  validity: expires on {date}, in 10 days")),
        "{date}: {stdout}"
    );
}

#[test]
fn nothing_listening_is_named_with_the_address() {
    let setup = setup();
    let addr = unused_addr();
    let args = connection(
        &addr,
        &setup.certs.ca_file(),
        &setup.certs.client_cert_file(),
        &setup.certs.client_key_file(),
    );
    let (code, stdout, _) = check(&args, &[]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "FAIL  agent listening: nothing listens at {addr}; is the agent running?"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("skip  send: not run: nothing to connect to"),
        "{stdout}"
    );
}

#[test]
fn a_port_that_never_answers_tls_is_told_apart_from_a_refusal() {
    let setup = setup();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let mut args = connection(
        &addr,
        &setup.certs.ca_file(),
        &setup.certs.client_cert_file(),
        &setup.certs.client_key_file(),
    );
    args.extend(["--timeout".into(), "500ms".into()]);
    // The connection waits in the backlog, never accepted: nothing answers.
    let (code, stdout, _) = check(&args, &[]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("ok    agent listening: "), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "FAIL  agent certificate: no TLS handshake from {addr}: none within 500ms"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("skip  send: "), "{stdout}");
    drop(silent);
}

#[test]
fn unreadable_and_foreign_files_fail_by_name() {
    let setup = setup();
    let missing = setup.certs.dir().join("missing.crt");
    let args = connection(
        setup.agent.addr(),
        &setup.certs.client_key_file(),
        &missing,
        &setup.certs.ca_file(),
    );
    let (code, stdout, _) = check(&args, &[]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("FAIL  CA file: "), "{stdout}");
    assert!(
        stdout.contains(&format!("FAIL  certificate file: {}: ", missing.display())),
        "{stdout}"
    );
    assert!(stdout.contains("FAIL  key file: "), "{stdout}");
    assert!(stdout.contains("skip  send: "), "{stdout}");
}

fn rsa_key() -> PKey<Private> {
    PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap()
}

fn ca() -> (PKey<Private>, X509) {
    let key = rsa_key();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "test CA").unwrap();
    let name = name.build();
    let mut builder = X509::builder().unwrap();
    builder.set_version(2).unwrap();
    builder
        .set_serial_number(&BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap())
        .unwrap();
    builder.set_subject_name(&name).unwrap();
    builder.set_issuer_name(&name).unwrap();
    builder.set_pubkey(&key).unwrap();
    builder
        .set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    builder
        .set_not_after(&Asn1Time::days_from_now(365).unwrap())
        .unwrap();
    builder
        .append_extension(BasicConstraints::new().critical().ca().build().unwrap())
        .unwrap();
    builder.sign(&key, MessageDigest::sha256()).unwrap();
    (key, builder.build())
}

/// A client certificate valid from `from_days` to `to_days` from now.
fn client_cert(
    ca: &X509,
    ca_key: &PKey<Private>,
    key: &PKey<Private>,
    from_days: i64,
    to_days: i64,
) -> X509 {
    let at = |days: i64| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        Asn1Time::from_unix(now + days * 86_400).unwrap()
    };
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "client").unwrap();
    let name = name.build();
    let mut builder = X509::builder().unwrap();
    builder.set_version(2).unwrap();
    builder
        .set_serial_number(&BigNum::from_u32(2).unwrap().to_asn1_integer().unwrap())
        .unwrap();
    builder.set_subject_name(&name).unwrap();
    builder.set_issuer_name(ca.subject_name()).unwrap();
    builder.set_pubkey(key).unwrap();
    builder.set_not_before(&at(from_days)).unwrap();
    builder.set_not_after(&at(to_days)).unwrap();
    builder
        .append_extension(ExtendedKeyUsage::new().client_auth().build().unwrap())
        .unwrap();
    builder.sign(ca_key, MessageDigest::sha256()).unwrap();
    builder.build()
}
