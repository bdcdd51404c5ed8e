//! The loggregator-pipe command, end to end against the spy agent.

use std::io::Write;
use std::process::{Command, Stdio};

use loggregator::proto::envelope::log::Type;

use crate::common::{Setup, setup};

fn pipe(setup: &Setup, args: &[&str], input: &[u8], env: &[(&str, &str)]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_loggregator-pipe"))
        .args(setup.connection_args())
        .args(args)
        .env_remove("VCAP_APPLICATION")
        .env_remove("CF_INSTANCE_INDEX")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    output
}

#[test]
fn every_line_arrives_in_order_with_its_bytes_tags_and_source() {
    let setup = setup();
    let long = vec![b'L'; 100_000];
    let mut input = Vec::new();
    for n in 0..1000 {
        input.extend(format!("line {n}\n").as_bytes());
    }
    input.extend(b"caf\xc3\xa9 \xff\xfe not utf-8\r\n");
    input.extend(&long);
    input.extend(b"\nno newline at the end");
    let output = pipe(
        &setup,
        &[
            "--source-id",
            "my-svc",
            "--instance-id",
            "3",
            "--tag",
            "az=z1",
            "--tag",
            "team=core",
            "--tee",
        ],
        &input,
        &[],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("lines 1003 sent 1003 dropped 0"),
        "{stderr}"
    );
    assert_eq!(output.stdout, input, "--tee copies the input unchanged");

    let received = setup.agent.envelopes();
    assert_eq!(received.len(), 1003);
    for (n, envelope) in received.iter().take(1000).enumerate() {
        assert_eq!(envelope.log().payload, format!("line {n}").into_bytes());
    }
    assert_eq!(
        received[1000].log().payload,
        b"caf\xc3\xa9 \xff\xfe not utf-8"
    );
    assert_eq!(received[1001].log().payload, long);
    assert_eq!(received[1002].log().payload, b"no newline at the end");
    for envelope in &received {
        assert_eq!(
            (envelope.source_id.as_str(), envelope.instance_id.as_str()),
            ("my-svc", "3")
        );
        assert_eq!(
            (envelope.tags["az"].as_str(), envelope.tags["team"].as_str()),
            ("z1", "core")
        );
        assert_eq!(envelope.log().type_.enum_value(), Ok(Type::OUT));
    }
}

#[test]
fn in_cloud_foundry_the_source_comes_from_the_environment_and_stderr_is_marked() {
    let setup = setup();
    let vcap = r#"{"application_id":"6e0ff0b5-6a2b-4f3c-8a9d-1b2c3d4e5f60","instance_index":9}"#;
    let output = pipe(
        &setup,
        &["--stderr"],
        b"one\ntwo\n",
        &[("VCAP_APPLICATION", vcap), ("CF_INSTANCE_INDEX", "2")],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let received = setup.agent.envelopes();
    assert_eq!(received.len(), 2);
    assert_eq!(
        received[0].source_id,
        "6e0ff0b5-6a2b-4f3c-8a9d-1b2c3d4e5f60"
    );
    assert_eq!(received[0].instance_id, "2");
    assert_eq!(received[1].log().type_.enum_value(), Ok(Type::ERR));
    assert!(output.stdout.is_empty(), "no --tee, no copy");
}

#[test]
fn outside_cloud_foundry_a_source_id_is_required() {
    let setup = setup();
    let output = pipe(&setup, &[], b"x\n", &[]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--source-id is required outside Cloud Foundry"),
        "{stderr}"
    );
}

#[test]
fn dropped_lines_make_the_exit_code_non_zero() {
    let setup = setup();
    // The agent does not read: what gRPC does not take is still queued when
    // close gives up, and counted as dropped.
    setup.agent.pause_reading();
    let line = vec![b'x'; 60_000];
    let mut input = Vec::new();
    for _ in 0..400 {
        input.extend(&line);
        input.push(b'\n');
    }
    let output = pipe(
        &setup,
        &["--source-id", "s", "--close-timeout", "300ms"],
        &input,
        &[],
    );
    setup.agent.resume_reading();
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
