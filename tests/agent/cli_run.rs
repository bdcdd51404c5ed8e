//! `loggregator run` with real child processes (sh scripts) against the
//! spy agent: the two streams typed and joined apart, `--tee` byte for
//! byte, signals forwarded, exit codes as a shell gives them, stdin
//! inherited, a child that closes stdout and keeps running.

use std::io::Write;
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::common::{Setup, WAIT, setup, wait_within_wait};

fn start(setup: &Setup, flags: &[&str], script: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_loggregator"))
        .arg("run")
        .args(setup.connection_args())
        .args(["--source-id", "legacy"])
        .args(flags)
        .args(["--", "sh", "-c", script])
        .env_remove("VCAP_APPLICATION")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn loggregator run")
}

/// The logs received, as (is ERR, text).
fn logs(setup: &Setup, count: usize) -> Vec<(bool, String)> {
    setup
        .agent
        .wait_for_envelopes(count, WAIT)
        .iter()
        .map(|log| (log.is_stderr().unwrap(), log.text().unwrap().into_owned()))
        .collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn stdout_lines_are_out_stderr_lines_are_err_and_tee_copies_each_byte_for_byte() {
    let setup = setup();
    let script = r#"printf 'out 1\nout 2\r\n'; printf 'err 1\n' >&2; printf 'caf\303\251 \377\n'; printf 'err no newline' >&2; printf 'out no newline'; exit 0"#;
    let output = wait_within_wait(start(&setup, &["--tee"], script));
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(
        output.stdout,
        b"out 1\nout 2\r\ncaf\xc3\xa9 \xff\nout no newline"
    );
    assert!(stderr.starts_with("err 1\nerr no newline"), "{stderr}");
    assert!(
        stderr.contains("loggregator run: stdout lines 4; stderr lines 2; sent 6 dropped 0"),
        "{stderr}"
    );
    assert!(stderr.contains("child exited 0"), "{stderr}");
    let received = setup.agent.proto_envelopes();
    let out: Vec<&[u8]> = received
        .iter()
        .filter(|envelope| {
            envelope.log().type_.enum_value() == Ok(loggregator::proto::envelope::log::Type::OUT)
        })
        .map(|envelope| envelope.log().payload.as_slice())
        .collect();
    let err: Vec<&[u8]> = received
        .iter()
        .filter(|envelope| {
            envelope.log().type_.enum_value() == Ok(loggregator::proto::envelope::log::Type::ERR)
        })
        .map(|envelope| envelope.log().payload.as_slice())
        .collect();
    assert_eq!(
        out,
        [
            &b"out 1"[..],
            b"out 2",
            b"caf\xc3\xa9 \xff",
            b"out no newline"
        ]
    );
    assert_eq!(err, [&b"err 1"[..], b"err no newline"]);
    assert!(
        received
            .iter()
            .all(|envelope| envelope.source_id == "legacy")
    );
}

#[test]
fn each_stream_joins_its_own_lines() {
    let setup = setup();
    // The streams interleave: one joiner for both would mix them.
    let script = "echo 'START out'; echo 'START err' >&2; echo '  out 2'; echo '  err 2' >&2; echo '  out 3'";
    let output = wait_within_wait(start(
        &setup,
        // A timeout no loaded machine reaches between two lines: only the
        // start pattern and the stream's end end a record here.
        &["--multiline-start", "^START", "--multiline-timeout", "60s"],
        script,
    ));
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("stdout lines 3 records 1 split 0; stderr lines 2 records 1 split 0"),
        "{stderr}"
    );
    let mut received = logs(&setup, 2);
    received.sort();
    assert_eq!(
        received,
        [
            (false, "START out\n  out 2\n  out 3".to_string()),
            (true, "START err\n  err 2".to_string()),
        ]
    );
}

#[test]
fn the_exit_code_is_the_childs_or_128_and_the_signal() {
    let setup = setup();
    for (script, code) in [
        ("exit 7", 7),
        ("exit 0", 0),
        ("kill -TERM $$", 143),
        ("kill -KILL $$", 137),
    ] {
        let output = wait_within_wait(start(&setup, &[], script));
        assert_eq!(
            output.status.code(),
            Some(code),
            "{script}: {}",
            text(&output.stderr)
        );
    }
}

#[test]
fn a_command_that_cannot_start_exits_127_or_126_as_a_shell_does() {
    let setup = setup();
    let not_executable = setup.certs.ca_file();
    let missing = setup.certs.dir().join("no-such-command");
    for (command, code, message) in [
        (&missing, 127, "command not found"),
        (&not_executable, 126, "permission denied"),
    ] {
        let output = wait_within_wait(
            Command::new(env!("CARGO_BIN_EXE_loggregator"))
                .arg("run")
                .args(setup.connection_args())
                .args(["--source-id", "legacy", "--"])
                .arg(command)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "loggregator run: {}: {message}",
                command.display()
            )),
            "{stderr}"
        );
    }
}

#[test]
fn every_supervisor_signal_reaches_the_child() {
    let setup = setup();
    let mut script = String::new();
    for name in ["TERM", "INT", "HUP", "QUIT", "USR1", "USR2"] {
        script.push_str(&format!("trap 'echo got {name}' {name}; "));
    }
    // `read` is a builtin that a trapped signal interrupts; stdin stays
    // open (the test holds it), so only signals move the script on.
    script.push_str("echo ready; n=0; while [ $n -lt 6 ]; do read line; n=$((n+1)); done; exit 9");
    let mut child = start(&setup, &[], &script);
    let wrapper = Pid::from_raw(child.id() as i32);
    let mut expected = vec![(false, "ready".to_string())];
    assert_eq!(logs(&setup, 1), expected);
    for (signal, name) in [
        (Signal::SIGTERM, "TERM"),
        (Signal::SIGINT, "INT"),
        (Signal::SIGHUP, "HUP"),
        (Signal::SIGQUIT, "QUIT"),
        (Signal::SIGUSR1, "USR1"),
        (Signal::SIGUSR2, "USR2"),
    ] {
        kill(wrapper, signal).unwrap();
        expected.push((false, format!("got {name}")));
        // The child's answer is the handshake before the next signal.
        assert_eq!(logs(&setup, expected.len()), expected);
    }
    drop(child.stdin.take());
    let output = wait_within_wait(child);
    assert_eq!(output.status.code(), Some(9), "{}", text(&output.stderr));
}

#[test]
fn a_child_that_ignores_sigterm_keeps_the_wrapper_waiting() {
    let setup = setup();
    let mut child = start(
        &setup,
        &[],
        "trap '' TERM; echo ready; read line; echo \"then $line\"; exit 4",
    );
    assert_eq!(logs(&setup, 1), [(false, "ready".to_string())]);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    // Had SIGTERM ended the wrapper, its status would say so whatever the
    // child did next.
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let output = wait_within_wait(child);
    assert_eq!(output.status.code(), Some(4), "{}", text(&output.stderr));
    assert_eq!(logs(&setup, 2)[1], (false, "then go".to_string()));
}

#[test]
fn a_child_that_closes_stdout_keeps_running_and_reads_our_stdin() {
    let setup = setup();
    let mut child = start(
        &setup,
        &[],
        "echo before; exec >&-; read line; echo \"stdin said $line\" >&2; exit 5",
    );
    assert_eq!(logs(&setup, 1), [(false, "before".to_string())]);
    child.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let output = wait_within_wait(child);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(5), "{stderr}");
    assert_eq!(logs(&setup, 2)[1], (true, "stdin said hello".to_string()));
    assert!(
        stderr.contains("stdout lines 1; stderr lines 1;"),
        "{stderr}"
    );
}

#[test]
fn by_default_an_agent_that_does_not_read_never_holds_the_child() {
    let setup = setup();
    setup.agent.pause_reading();
    // 24 MB of output: far more than gRPC and the queue hold.
    let script = "line=$(printf '%060000d' 0); i=0; while [ $i -lt 400 ]; do echo $line; i=$((i+1)); done; exit 3";
    let output = wait_within_wait(start(&setup, &["--close-timeout", "2s"], script));
    setup.agent.resume_reading();
    let stderr = text(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(3),
        "the child's code, drops or not: {stderr}"
    );
    assert!(stderr.contains("stdout lines 400;"), "{stderr}");
    let dropped: u64 = stderr
        .split(" dropped ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(dropped > 0, "{stderr}");
}

#[test]
fn with_block_an_agent_that_reads_nothing_holds_the_child_and_nothing_is_dropped() {
    let setup = setup();
    let folder = tempfile::tempdir().unwrap();
    let (progress, done) = (folder.path().join("progress"), folder.path().join("done"));
    setup.agent.pause_reading();
    // 30 MB in 30,000 lines, telling how far it got every 100: more than
    // the queue holds (10,000 envelopes, 16 MiB), so without --block most
    // would be dropped and the child would finish while nothing is read.
    let script = format!(
        "line=$(printf '%01000d' 0); i=0; while [ $i -lt 30000 ]; do echo $line; i=$((i+1)); \
         [ $((i % 100)) -eq 0 ] && echo $i > {progress}; done; touch {done}; exit 6",
        progress = progress.display(),
        done = done.display()
    );
    let child = start(&setup, &["--block"], &script);
    let shell = child_of(child.id());
    let written = || {
        std::fs::read_to_string(&progress)
            .ok()
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Held: stuck in a write to its stdout, its count unchanged, look
    // after look. A wrapper that drops would read on, and the child go on.
    let deadline = std::time::Instant::now() + WAIT;
    let mut held = 0;
    let mut last = written();
    while held < 20 {
        assert!(
            !done.exists(),
            "the child finished while the agent read nothing: --block did not hold it"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the child was never held"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
        let now = written();
        let writing = std::fs::read_to_string(format!("/proc/{shell}/wchan"))
            .is_ok_and(|wchan| wchan.contains("pipe_write"));
        held = if writing && now == last { held + 1 } else { 0 };
        last = now;
    }
    assert!(last < 30_000, "held with {last} lines written");
    setup.agent.resume_reading();
    let output = wait_within_wait(child);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(6), "{stderr}");
    assert!(
        stderr.contains("stdout lines 30000; stderr lines 0; sent 30000 dropped 0"),
        "{stderr}"
    );
    assert_eq!(setup.agent.counts().envelopes, 30_000);
}

/// The one child of process `pid` (found by its parent in /proc).
fn child_of(pid: u32) -> u32 {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let found = std::fs::read_dir("/proc").unwrap().find_map(|entry| {
            let child: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
            // The parent is the second field after the parenthesised name.
            let after_name = &stat[stat.rfind(')')? + 2..];
            let parent: u32 = after_name.split(' ').nth(1)?.parse().ok()?;
            (parent == pid).then_some(child)
        });
        if let Some(child) = found {
            return child;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{pid} started no child"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
