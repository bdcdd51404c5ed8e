//! `loggregator pipe`, the subcommand `loggregator-pipe` is another name
//! for (tests/agent/pipe.rs tests that name), with its flags from the
//! environment as a bpm config sets them.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::common::{setup, wait_within_wait};

#[test]
fn pipe_takes_its_connection_and_tags_from_the_environment_and_a_flag_wins() {
    let setup = setup();
    let (ca, cert, key) = (
        setup.certs.ca_file(),
        setup.certs.client_cert_file(),
        setup.certs.client_key_file(),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_loggregator"))
        .args(["pipe", "--tag", "team=core"])
        .env_remove("VCAP_APPLICATION")
        .env_remove("CF_INSTANCE_INDEX")
        .env("LOGGREGATOR_AGENT_ADDR", setup.agent.addr())
        .env("LOGGREGATOR_CA_FILE", &ca)
        .env("LOGGREGATOR_CERT_FILE", &cert)
        .env("LOGGREGATOR_KEY_FILE", &key)
        .env("LOGGREGATOR_SOURCE_ID", "from-env")
        .env("LOGGREGATOR_INSTANCE_ID", "7")
        .env("LOGGREGATOR_TAGS", "deployment=cf,team=env")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"one\ntwo\n")
        .unwrap();
    let output = wait_within_wait(child);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("loggregator pipe: lines 2 sent 2 dropped 0"),
        "{stderr}"
    );
    let received = setup.agent.envelopes();
    assert_eq!(received.len(), 2);
    for log in &received {
        assert_eq!((log.source_id(), log.instance_id()), ("from-env", "7"));
        assert_eq!(log.tag("deployment"), Some("cf"));
        assert_eq!(log.tag("team"), Some("core"), "the flag wins");
    }
    assert_eq!(received[1].text().unwrap(), "two");
}

#[test]
fn a_bad_tag_in_the_environment_is_named() {
    let setup = setup();
    let mut child = Command::new(env!("CARGO_BIN_EXE_loggregator"))
        .arg("pipe")
        .args(setup.connection_args())
        .args(["--source-id", "s"])
        .env("LOGGREGATOR_TAGS", "deployment=cf,oops")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdin.take());
    let output = wait_within_wait(child);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("LOGGREGATOR_TAGS: \"oops\" is not key=value"),
        "{stderr}"
    );
}
