//! The examples, run as a user would run them.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use crate::common::{WAIT, setup, wait_child};

/// Examples are built next to the test binaries by `cargo test`.
fn example(name: &str) -> Command {
    let deps = std::env::current_exe().unwrap();
    let path: PathBuf = deps
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run through cargo test",
        path.display()
    );
    Command::new(path)
}

/// Runs `command` to its end, bounded: a hung example fails the test with
/// what it printed.
fn run(command: &mut Command) -> Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_child(child, WAIT)
}

/// Runs an example with no arguments; what it printed, once it succeeded.
pub(crate) fn successful_stdout(name: &str) -> String {
    let output = run(&mut example(name));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn the_demo_receives_every_kind_and_drops_nothing() {
    let stdout = successful_stdout("demo");
    assert_eq!(
        stdout.lines().last(),
        Some("received 7 envelopes: log=2 counter=1 gauge=1 timer=1 event=2; dropped 0")
    );
}

#[test]
fn the_tracing_example_sends_its_spans_and_events() {
    let stdout = successful_stdout("tracing");
    assert_eq!(stdout.matches(" timer orders/0 ").count(), 4, "{stdout}");
    assert_eq!(stdout.matches(" log orders/0 ").count(), 3, "{stdout}");
    // The second request continues its caller's trace.
    assert!(
        stdout.contains("parent_span_id=00f067aa0ba902b7"),
        "{stdout}"
    );
    assert_eq!(
        stdout.lines().last(),
        Some("received 7 envelopes; dropped 0")
    );
}

#[test]
fn the_agent_example_reports_a_bad_certificate_path_and_fails() {
    let output = run(example("agent_example").args([
        "--ca-file",
        "/nonexistent/ca.crt",
        "--cert-file",
        "c.crt",
        "--key-file",
        "c.key",
    ]));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot read /nonexistent/ca.crt"),
        "{stderr}"
    );
}

#[test]
fn the_agent_example_sends_logs_and_metrics_until_its_duration_ends() {
    let setup = setup();
    let output = run(example("agent_example")
        .args(setup.connection_args())
        .args(["--source-id", "example-test", "--metric-count", "7"])
        // Metrics every tenth of the run: several rounds, not one 5 s tick
        // racing the end of a 5.5 s run.
        .args([
            "--log-interval",
            "100ms",
            "--metric-interval",
            "200ms",
            "--duration",
            "2s",
        ]));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let received = setup.agent.proto_envelopes();
    assert!(received.iter().all(|e| e.source_id == "example-test"));
    let logs = received.iter().filter(|e| e.has_log()).count();
    assert!(logs >= 2, "{logs} logs");
    let counter = received
        .iter()
        .find(|e| e.has_counter())
        .expect("a counter");
    assert_eq!(counter.counter().delta, 7);
    let gauge = received.iter().find(|e| e.has_gauge()).expect("a gauge");
    assert_eq!(gauge.gauge().metrics["memory"].unit, "bytes");
    assert_eq!(gauge.gauge().metrics["cpu"].unit, "percentage");
    assert!(received.iter().any(|e| e.has_event()));
    let stats_line = stdout
        .lines()
        .find(|l| l.starts_with("emitted"))
        .expect("stats");
    assert!(
        stats_line.contains(&format!("sent {}", received.len())),
        "{stats_line}"
    );
    assert!(stats_line.contains("dropped 0"), "{stats_line}");
}

#[test]
fn the_metrics_example_sends_counters_gauges_and_both_histogram_shapes() {
    let stdout = successful_stdout("metrics");
    for line in [
        "  counter worker/0 jobs_total delta=16 total=0 {outcome=ok}",
        "  counter worker/0 jobs_total delta=4 total=0 {outcome=empty}",
        "  counter worker/0 job_duration_count delta=20 total=0",
        "  counter worker/0 job_payload_bytes_bucket delta=4 total=0 {le=1024}",
        "  counter worker/0 job_payload_bytes_bucket delta=16 total=0 {le=65536}",
        "  counter worker/0 job_payload_bytes_bucket delta=20 total=0 {le=+Inf}",
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line:?} in {stdout}");
    }
    assert_eq!(stdout.matches("{quantile=").count(), 3, "{stdout}");
    assert!(
        stdout.contains("worker_backlog=0[count] worker_threads=1[]"),
        "one gauge envelope for the unlabelled gauges: {stdout}"
    );
    assert_eq!(
        stdout.lines().last(),
        Some("received 11 envelopes; dropped 0")
    );
}

#[test]
fn the_panic_example_finds_the_panic_at_the_agent_as_soon_as_it_is_over() {
    let stdout = successful_stdout("panic");
    for line in [
        "  log panic-example/0:",
        "    | index out of bounds: the len is 0 but the index is 3",
        "    | stack backtrace:",
        "  counter panic-example/0 panics delta=1 total=0",
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line:?} in {stdout}");
    }
    assert!(
        stdout.contains("    | thread 'order-worker' panicked at examples/panic.rs:"),
        "{stdout}"
    );
    assert!(stdout.contains("panic::main::{{closure}}"), "{stdout}");
    assert_eq!(
        stdout.lines().last(),
        Some("received 2 envelopes: log=1 counter=1; dropped 0")
    );
}
