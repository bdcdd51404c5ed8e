//! The loggregator-pipe command, end to end against the spy agent.

use std::io::Write;
use std::process::{Command, Stdio};

use loggregator::proto::envelope::log::Type;

use crate::common::{Setup, WAIT, setup, wait_child};

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
    let output = wait_child(child, WAIT);
    // The child is gone: the writer has written all, or met a closed pipe.
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

    let received = setup.agent.proto_envelopes();
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
    let received = setup.agent.proto_envelopes();
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
    // No input: the program exits before it would read any.
    let output = pipe(&setup, &[], b"", &[]);
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

/// What Rust's own hook prints for a panic with `RUST_BACKTRACE=1`, with a
/// real backtrace of this test.
fn rust_panic_trace() -> String {
    let backtrace = std::backtrace::Backtrace::force_capture().to_string();
    format!(
        "thread 'main' panicked at src/main.rs:10:5:\nindex out of bounds: the len is 0 but the index is 3\nstack backtrace:\n{}\nnote: Some details are omitted, run with `RUST_BACKTRACE=full` for a verbose backtrace.",
        backtrace.trim_end()
    )
}

const JAVA_TRACE: &str = "\
2024-05-01 12:00:01.123 ERROR [main] c.e.Orders - request failed
java.lang.IllegalStateException: order 42 has no lines
\tat com.example.Orders.place(Orders.java:42)
\tat com.example.Api.handle(Api.java:17)
Caused by: java.lang.NullPointerException: Cannot invoke \"List.size()\"
\tat com.example.Orders.lines(Orders.java:88)
\t... 2 more";

#[test]
fn with_multiline_start_a_rust_panic_and_a_java_stack_trace_each_arrive_as_one_log() {
    let setup = setup();
    let rust = rust_panic_trace();
    let records = [
        "2024-05-01 12:00:00.000 INFO  [main] c.e.Main - started".to_string(),
        JAVA_TRACE.to_string(),
        rust.clone(),
        "2024-05-01 12:00:02.000 INFO  [main] c.e.Main - next\r".to_string(),
        "2024-05-01 12:00:03.000 INFO  [main] c.e.Main - last, no newline".to_string(),
    ];
    let input = records.join("\n");
    let output = pipe(
        &setup,
        &[
            "--source-id",
            "java-svc",
            "--multiline-start",
            r"^(\d{4}-\d{2}-\d{2} |thread '.*' panicked at )",
            "--tee",
        ],
        input.as_bytes(),
        &[],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let lines = input.lines().count();
    assert!(
        stderr.contains(&format!("lines {lines} records 5 split 0 sent 5 dropped 0")),
        "{stderr}"
    );
    assert_eq!(
        output.stdout,
        input.as_bytes(),
        "--tee copies the input unchanged"
    );
    let payloads: Vec<String> = setup
        .agent
        .proto_envelopes()
        .iter()
        .map(|e| String::from_utf8(e.log().payload.clone()).unwrap())
        .collect();
    let mut expected = records.to_vec();
    expected[3].pop(); // the line's \r
    assert_eq!(payloads, expected);
}

#[test]
fn a_joined_log_is_sent_after_the_timeout_while_the_input_stays_open() {
    let setup = setup();
    let mut child = Command::new(env!("CARGO_BIN_EXE_loggregator-pipe"))
        .args(setup.connection_args())
        .args(["--source-id", "s", "--multiline-start", "^START"])
        .args(["--multiline-timeout", "50ms"])
        .env_remove("VCAP_APPLICATION")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"START one\n  more\n").unwrap();
    stdin.flush().unwrap();
    // No next line comes: the record is complete after the timeout alone.
    let received = setup.agent.wait_for_proto_envelopes(1, WAIT);
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].log().payload, b"START one\n  more");
    stdin
        .write_all(b"  late, a record of its own\nSTART two\n")
        .unwrap();
    drop(stdin);
    let output = wait_child(child, WAIT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let payloads: Vec<Vec<u8>> = setup
        .agent
        .proto_envelopes()
        .iter()
        .map(|e| e.log().payload.clone())
        .collect();
    assert_eq!(
        payloads,
        [
            &b"START one\n  more"[..],
            b"  late, a record of its own",
            b"START two"
        ]
    );
}

#[test]
fn a_joined_log_stops_at_its_size_limit_and_the_split_is_counted() {
    let setup = setup();
    let mut input = b"START\n".to_vec();
    for n in 0..100 {
        input.extend(format!("\tat frame {n:03} of a very deep stack\n").as_bytes());
    }
    let output = pipe(
        &setup,
        &[
            "--source-id",
            "s",
            "--multiline-start",
            "^START",
            "--multiline-max-bytes",
            "1000",
        ],
        &input,
        &[],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let received = setup.agent.proto_envelopes();
    assert!(received.len() > 1, "{}", received.len());
    assert!(received.iter().all(|e| e.log().payload.len() <= 1000));
    let joined: Vec<u8> = received
        .iter()
        .map(|e| e.log().payload.clone())
        .collect::<Vec<_>>()
        .join(&b'\n');
    assert_eq!(joined, input.strip_suffix(b"\n").unwrap(), "nothing lost");
    let split = received.len() - 1;
    assert!(
        stderr.contains(&format!(
            "lines 101 records {} split {split} ",
            received.len()
        )),
        "{stderr}"
    );
}

#[test]
fn multiline_flags_are_checked() {
    let setup = setup();
    for (args, problem) in [
        (&["--multiline-start", "("][..], "--multiline-start"),
        (&["--multiline-timeout", "1s"][..], "--multiline-start"),
        (
            &["--multiline-start", "x", "--multiline-max-bytes", "0"][..],
            "is not a number of bytes from 1 to 1000000",
        ),
    ] {
        // No input: the program exits before it would read any.
        let output = pipe(
            &setup,
            &[&["--source-id", "s"][..], args].concat(),
            b"",
            &[],
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(problem), "{args:?}: {stderr}");
    }
}
