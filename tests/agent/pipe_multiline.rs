//! `loggregator-pipe --block --multiline-start`: a line read after the
//! multi-line timeout begins a new log even while a send waits for room.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{WAIT, setup};

const TIMEOUT: Duration = Duration::from_millis(200);
/// Records of 900 KB: 48 of them (43 MB) are more than the client holds
/// (16 MiB of queue) and HTTP/2 lets through to an agent that does not
/// read, so a send waits; and fewer than the 64 lines the pipe reads ahead
/// of it, so every line is read as soon as it is written.
const FILLERS: usize = 48;
const FILLER_BYTES: usize = 900_000;

/// Waits for the child to exit, at most `WAIT`; kills it past that.
fn wait_bounded(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("loggregator-pipe did not exit within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_line_read_after_the_timeout_begins_a_new_log_while_a_send_waits_for_room() {
    let setup = setup();
    setup.agent.pause_reading();
    let mut child = Command::new(env!("CARGO_BIN_EXE_loggregator-pipe"))
        .args(setup.connection_args())
        .args(["--source-id", "s", "--block", "--multiline-start", "^START"])
        .args(["--multiline-timeout", "200ms"])
        .args(["--multiline-max-bytes", "1000000"])
        .env_remove("VCAP_APPLICATION")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let filler = vec![b'f'; FILLER_BYTES];
    for n in 0..FILLERS {
        stdin
            .write_all(format!("START filler {n:02} ").as_bytes())
            .unwrap();
        stdin.write_all(&filler).unwrap();
        stdin.write_all(b"\n").unwrap();
    }
    // Joins: it comes right after the line it follows.
    stdin.write_all(b"START last\n  joined\n").unwrap();
    stdin.flush().unwrap();
    // The multi-line timeout is what is tested: it must pass with the send
    // still waiting, the agent still not reading.
    std::thread::sleep(TIMEOUT * 5);
    stdin.write_all(b"  late, a log of its own\n").unwrap();
    stdin.flush().unwrap();
    setup.agent.resume_reading();
    drop(stdin);
    let status = wait_bounded(&mut child);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{stderr}");
    let payloads: Vec<Vec<u8>> = setup
        .agent
        .proto_envelopes()
        .iter()
        .map(|e| e.log().payload.clone())
        .collect();
    assert_eq!(payloads.len(), FILLERS + 2, "{stderr}");
    for (n, payload) in payloads.iter().take(FILLERS).enumerate() {
        assert!(
            payload.starts_with(format!("START filler {n:02} ").as_bytes()),
            "{n}"
        );
        assert_eq!(payload.len(), "START filler 00 ".len() + FILLER_BYTES);
    }
    let tail: Vec<&str> = payloads[FILLERS..]
        .iter()
        .map(|p| std::str::from_utf8(p).unwrap())
        .collect();
    assert_eq!(tail, ["START last\n  joined", "  late, a log of its own"]);
}
