//! `loggregator tail` with real files against the spy agent: rotation by
//! rename and by copy-and-truncate (the file regrown past the old offset,
//! the lines before the cut read from `<name>.1`), a `kill -9` between two
//! runs, a glob picking up a new file, a corrupt state file, and an agent
//! away while lines are written (the state file stays where it was).
//!
//! The tailer is paused with SIGSTOP while a test rotates a file, so the
//! rotation happens whole between two of its looks, as it does when
//! logrotate runs between two polls.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Instant;

use crossbeam_channel::Receiver;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::common::{Setup, WAIT, setup};

/// A running `loggregator tail`, killed if a test fails before it ends.
struct Tailer {
    pid: Pid,
    exited: Receiver<ExitStatus>,
    stderr: Receiver<String>,
    told: Vec<String>,
    status: Option<ExitStatus>,
}

fn tail(setup: &Setup, state: &Path, flags: &[&str], files: &[&Path]) -> Tailer {
    let mut child = Command::new(env!("CARGO_BIN_EXE_loggregator"))
        .arg("tail")
        .args(setup.connection_args())
        .args(["--source-id", "legacy", "--poll-interval", "20ms"])
        .arg("--state-file")
        .arg(state)
        .args(flags)
        .args(files)
        .env_remove("VCAP_APPLICATION")
        .env_remove("LOGGREGATOR_TAIL_STATE_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn loggregator tail");
    let (line, stderr) = crossbeam_channel::unbounded();
    let output = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for text in BufReader::new(output).lines().map_while(Result::ok) {
            let _ = line.send(text);
        }
    });
    let pid = Pid::from_raw(child.id() as i32);
    let (exit, exited) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = exit.send(child.wait().expect("wait"));
    });
    Tailer {
        pid,
        exited,
        stderr,
        told: Vec::new(),
        status: None,
    }
}

impl Tailer {
    /// Waits (bounded) for a line of its stderr containing `needle`.
    fn wait_told(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(line) = self.told.iter().find(|line| line.contains(needle)) {
                return line.clone();
            }
            match self.stderr.recv_deadline(deadline) {
                Ok(line) => self.told.push(line),
                Err(_) => panic!("never told {needle:?}; told:\n{}", self.told.join("\n")),
            }
        }
    }

    fn signal(&self, signal: Signal) {
        kill(self.pid, signal).expect("signal the tailer");
    }

    /// Waits (bounded) for it to exit after `signal`; returns its status.
    fn end(&mut self, signal: Signal) -> ExitStatus {
        self.signal(signal);
        let status = self
            .exited
            .recv_timeout(WAIT)
            .expect("the tailer exits within WAIT");
        self.status = Some(status);
        status
    }

    /// Everything it wrote to stderr, once it has exited.
    fn stderr(&mut self) -> String {
        while let Ok(line) = self.stderr.recv_timeout(WAIT) {
            self.told.push(line);
        }
        self.told.join("\n")
    }
}

impl Drop for Tailer {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = kill(self.pid, Signal::SIGCONT);
            let _ = kill(self.pid, Signal::SIGKILL);
            let _ = self.exited.recv_timeout(WAIT);
        }
    }
}

/// Appends `lines` to `path`, each with a newline.
fn append(path: &Path, lines: impl IntoIterator<Item = String>) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let text: String = lines.into_iter().map(|line| line + "\n").collect();
    file.write_all(text.as_bytes()).unwrap();
}

fn numbered(prefix: &str, range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|n| format!("{prefix} {n:05}")).collect()
}

/// The texts received from the tailer, in order.
fn texts(setup: &Setup) -> Vec<String> {
    setup
        .agent
        .envelopes()
        .iter()
        .filter(|log| log.source_id() == "legacy")
        .map(|log| log.text().unwrap().into_owned())
        .collect()
}

/// Waits (bounded) until every one of `expected` was received at least
/// once; returns how often each text came.
fn wait_for_all(setup: &Setup, expected: &[String]) -> BTreeMap<String, usize> {
    let deadline = Instant::now() + WAIT;
    loop {
        let received = setup.agent.envelopes().len();
        let mut counts = BTreeMap::new();
        for text in texts(setup) {
            *counts.entry(text).or_insert(0) += 1;
        }
        if expected.iter().all(|line| counts.contains_key(line)) {
            return counts;
        }
        let missing: Vec<&String> = expected
            .iter()
            .filter(|l| !counts.contains_key(*l))
            .collect();
        assert!(
            Instant::now() < deadline,
            "{} lines never arrived, the first {:?}",
            missing.len(),
            missing[0]
        );
        setup
            .agent
            .wait_for_envelopes(received + 1, deadline - Instant::now());
    }
}

/// A bounded poll of something only the file system shows.
fn wait_until(ready: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !ready() {
        assert!(Instant::now() < deadline, "never ready within {WAIT:?}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The state file's confirmed offset of `path` (0 before it is written).
fn confirmed_offset(state: &Path, path: &Path) -> u64 {
    let Ok(text) = std::fs::read(state) else {
        return 0;
    };
    let state: serde_json::Value = serde_json::from_slice(&text).unwrap();
    state["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|file| file["path"] == path.to_str().unwrap())
        .and_then(|file| file["confirmed_offset"].as_u64())
        .unwrap_or(0)
}

struct Folder {
    dir: tempfile::TempDir,
}

impl Folder {
    fn new() -> Folder {
        Folder {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

#[test]
fn rotation_by_rename_reads_the_old_file_to_its_end_then_the_new_one_from_its_start() {
    let setup = setup();
    let folder = Folder::new();
    let log = folder.path("job.log");
    append(&log, numbered("before", 0..3));
    let mut tailer = tail(&setup, &folder.path("state"), &["--from-start"], &[&log]);
    wait_for_all(&setup, &numbered("before", 0..3));
    tailer.signal(Signal::SIGSTOP);
    append(&log, numbered("old", 0..5));
    std::fs::rename(&log, folder.path("job.log.1")).unwrap();
    append(&log, numbered("new", 0..5));
    tailer.signal(Signal::SIGCONT);
    let expected: Vec<String> = [
        numbered("before", 0..3),
        numbered("old", 0..5),
        numbered("new", 0..5),
    ]
    .concat();
    wait_for_all(&setup, &expected);
    assert!(tailer.end(Signal::SIGTERM).success(), "{}", tailer.stderr());
    assert_eq!(texts(&setup), expected, "in order, each once");
}

#[test]
fn copytruncate_is_noticed_when_the_file_regrew_past_the_old_offset_and_the_lines_before_the_cut_come_from_the_copy()
 {
    let setup = setup();
    let folder = Folder::new();
    let log = folder.path("job.log");
    append(&log, numbered("first", 0..3));
    let mut tailer = tail(&setup, &folder.path("state"), &["--from-start"], &[&log]);
    wait_for_all(&setup, &numbered("first", 0..3));
    tailer.signal(Signal::SIGSTOP);
    // Written after the tailer's last read, before logrotate's copy.
    append(&log, numbered("unread", 0..4));
    std::fs::copy(&log, folder.path("job.log.1")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    // More than was there before the cut: the size alone says nothing.
    let regrown = numbered("regrown", 0..20);
    append(&log, regrown.clone());
    assert!(
        std::fs::metadata(&log).unwrap().len()
            > std::fs::metadata(folder.path("job.log.1")).unwrap().len()
    );
    tailer.signal(Signal::SIGCONT);
    let expected: Vec<String> =
        [numbered("first", 0..3), numbered("unread", 0..4), regrown].concat();
    wait_for_all(&setup, &expected);
    assert!(tailer.end(Signal::SIGTERM).success(), "{}", tailer.stderr());
    assert_eq!(
        texts(&setup),
        expected,
        "in order, each once, nothing of the new content at the old offset"
    );
}

#[test]
fn after_a_kill_9_every_line_arrives_and_only_unconfirmed_ones_twice() {
    let setup = setup();
    let folder = Folder::new();
    let log = folder.path("job.log");
    let state = folder.path("state");
    let first = numbered("first", 0..2000);
    append(&log, first[..1000].to_vec());
    let mut tailer = tail(&setup, &state, &["--from-start"], &[&log]);
    // Lines still being written while it is killed.
    let writer = {
        let (log, rest) = (log.clone(), first[1000..].to_vec());
        std::thread::spawn(move || {
            for chunk in rest.chunks(50) {
                append(&log, chunk.to_vec());
            }
        })
    };
    setup.agent.wait_for_envelopes(1000, WAIT);
    tailer.end(Signal::SIGKILL);
    writer.join().unwrap();
    // What the state file says the agent confirmed: those lines must not
    // come twice.
    let offset = confirmed_offset(&state, &log) as usize;
    let written = std::fs::read_to_string(&log).unwrap();
    let confirmed_lines = written[..offset].lines().count();
    let while_down = numbered("while down", 0..500);
    append(&log, while_down.clone());
    let mut tailer = tail(&setup, &state, &[], &[&log]);
    let expected = [first, while_down].concat();
    let counts = wait_for_all(&setup, &expected);
    assert!(tailer.end(Signal::SIGTERM).success(), "{}", tailer.stderr());
    for (index, line) in expected.iter().enumerate() {
        let times = counts[line];
        if index < confirmed_lines {
            assert_eq!(
                times, 1,
                "{line:?} was confirmed before the kill, yet came {times} times"
            );
        } else {
            assert!(times <= 2, "{line:?} came {times} times");
        }
    }
}

#[test]
fn a_glob_picks_up_a_file_created_later_tagged_with_its_name_and_typed_by_pattern() {
    let setup = setup();
    let folder = Folder::new();
    let pattern = folder.path("*.log");
    let mut tailer = tail(
        &setup,
        &folder.path("state"),
        &["--stderr-glob", "*.stderr.log", "--file-tag", "path"],
        &[&pattern],
    );
    // Once the files there at the start are known, what comes is new,
    // read from its start.
    tailer.wait_told("following 0 files");
    let out = folder.path("web.stdout.log");
    let err = folder.path("web.stderr.log");
    append(&out, vec!["to stdout".to_string()]);
    append(&err, vec!["to stderr".to_string()]);
    let received = setup.agent.wait_for_envelopes(2, WAIT);
    assert!(tailer.end(Signal::SIGTERM).success(), "{}", tailer.stderr());
    let mut got: Vec<(String, bool, String)> = received
        .iter()
        .map(|log| {
            (
                log.text().unwrap().into_owned(),
                log.is_stderr().unwrap(),
                log.tag("path").unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("to stderr".into(), true, err.display().to_string()),
            ("to stdout".into(), false, out.display().to_string()),
        ]
    );
}

#[test]
fn a_corrupt_foreign_unwritable_or_busy_state_file_stops_it_with_the_name_and_is_left_as_it_was() {
    let setup = setup();
    let folder = Folder::new();
    let log = folder.path("job.log");
    append(&log, numbered("line", 0..3));
    let state = folder.path("state");
    for text in [
        "{\"format\": \"loggregator tail state\", \"version\": 1, \"fi",
        "{\"some\": \"other program's\"}",
    ] {
        std::fs::write(&state, text).unwrap();
        let mut tailer = tail(&setup, &state, &["--from-start"], &[&log]);
        let status = tailer.exited.recv_timeout(WAIT).expect("exits by itself");
        tailer.status = Some(status);
        let stderr = tailer.stderr();
        assert_eq!(status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("state file {}", state.display())),
            "{stderr}"
        );
        assert!(
            stderr.contains("not a loggregator tail state file"),
            "{stderr}"
        );
        assert_eq!(std::fs::read_to_string(&state).unwrap(), text);
    }
    // A second tailer of a state file in use.
    std::fs::remove_file(&state).unwrap();
    let mut first = tail(&setup, &state, &[], &[&log]);
    wait_until(|| state.exists());
    let mut second = tail(&setup, &state, &["--from-start"], &[&log]);
    let status = second.exited.recv_timeout(WAIT).expect("exits by itself");
    second.status = Some(status);
    let stderr = second.stderr();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "another loggregator tail is using state file {}",
            state.display()
        )),
        "{stderr}"
    );
    assert!(first.end(Signal::SIGTERM).success(), "{}", first.stderr());
    let unwritable = folder.path("no such folder").join("state");
    let mut tailer = tail(&setup, &unwritable, &["--from-start"], &[&log]);
    let status = tailer.exited.recv_timeout(WAIT).expect("exits by itself");
    tailer.status = Some(status);
    let stderr = tailer.stderr();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot write state file {}", unwritable.display())),
        "{stderr}"
    );
    assert!(texts(&setup).is_empty(), "nothing sent");
}

#[test]
fn while_the_agent_is_away_the_state_file_stays_at_what_it_confirmed() {
    let setup = setup();
    let folder = Folder::new();
    let log = folder.path("job.log");
    let state = folder.path("state");
    append(&log, numbered("before", 0..10));
    let mut first = tail(&setup, &state, &["--from-start"], &[&log]);
    wait_for_all(&setup, &numbered("before", 0..10));
    assert!(first.end(Signal::SIGTERM).success(), "{}", first.stderr());
    let confirmed = std::fs::metadata(&log).unwrap().len();
    assert_eq!(confirmed_offset(&state, &log), confirmed);
    // Away before the next run's first send: no batch of it can have
    // reached the agent.
    setup.agent.shutdown();
    let while_away = numbered("while away", 0..300);
    append(&log, while_away.clone());
    let mut tailer = tail(&setup, &state, &[], &[&log]);
    tailer.wait_told("trying again, the state file stays at what the agent confirmed");
    assert_eq!(confirmed_offset(&state, &log), confirmed);
    setup.agent.restart().unwrap();
    tailer.wait_told("the agent confirmed again");
    wait_for_all(&setup, &while_away);
    assert!(tailer.end(Signal::SIGTERM).success(), "{}", tailer.stderr());
    assert_eq!(
        confirmed_offset(&state, &log),
        std::fs::metadata(&log).unwrap().len()
    );
}

#[test]
fn bytes_go_as_they_are_a_long_line_is_cut_and_counted_and_a_deleted_file_is_read_to_its_end() {
    let setup = setup();
    let folder = Folder::new();
    let log = folder.path("job.log");
    let long = vec![b'x'; 150_000];
    let mut bytes = b"caf\xc3\xa9 \xff\xfe\n".to_vec();
    bytes.extend_from_slice(&long);
    bytes.push(b'\n');
    std::fs::write(&log, &bytes).unwrap();
    let mut tailer = tail(&setup, &folder.path("state"), &["--from-start"], &[&log]);
    // 61,440 bytes at most (--multiline-max-bytes' default): two cuts.
    setup.agent.wait_for_envelopes(4, WAIT);
    tailer.signal(Signal::SIGSTOP);
    append(&log, vec!["last of the deleted".to_string()]);
    std::fs::remove_file(&log).unwrap();
    tailer.signal(Signal::SIGCONT);
    tailer.wait_told("was deleted or moved");
    append(&log, vec!["in the new file".to_string()]);
    let received = setup.agent.wait_for_envelopes(6, WAIT);
    assert!(tailer.end(Signal::SIGTERM).success(), "{}", tailer.stderr());
    let payloads: Vec<&[u8]> = received.iter().map(|log| log.payload().unwrap()).collect();
    assert_eq!(
        payloads,
        [
            &b"caf\xc3\xa9 \xff\xfe"[..],
            &long[..61_440],
            &long[61_440..122_880],
            &long[122_880..],
            b"last of the deleted",
            b"in the new file",
        ]
    );
    let stderr = tailer.stderr();
    assert!(
        stderr.contains("files 1 lines 6 split 2 confirmed 6"),
        "{stderr}"
    );
}

#[test]
fn a_file_rotated_while_the_tailer_was_down_is_read_on_from_its_copy_then_the_new_one() {
    let setup = setup();
    let folder = Folder::new();
    let log = folder.path("job.log");
    let state = folder.path("state");
    append(&log, numbered("first", 0..5));
    let mut tailer = tail(&setup, &state, &["--from-start"], &[&log]);
    wait_for_all(&setup, &numbered("first", 0..5));
    let size = std::fs::metadata(&log).unwrap().len();
    wait_until(|| confirmed_offset(&state, &log) == size);
    tailer.end(Signal::SIGKILL);
    // While it is down: more lines, BOSH's copytruncate, then lines in
    // the cut file, more than there were before.
    append(&log, numbered("unread", 0..5));
    std::fs::copy(&log, folder.path("job.log.1")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    append(&log, numbered("after the cut", 0..20));
    let mut tailer = tail(&setup, &state, &[], &[&log]);
    let expected = [
        numbered("first", 0..5),
        numbered("unread", 0..5),
        numbered("after the cut", 0..20),
    ]
    .concat();
    wait_for_all(&setup, &expected);
    assert!(tailer.end(Signal::SIGTERM).success(), "{}", tailer.stderr());
    assert_eq!(texts(&setup), expected, "in order, each once");
}

#[test]
fn a_missing_file_is_told_once_the_others_are_followed_and_it_is_read_whole_when_it_appears() {
    let setup = setup();
    let folder = Folder::new();
    let present = folder.path("present.log");
    let missing = folder.path("later.log");
    append(&present, numbered("present", 0..3));
    let mut tailer = tail(
        &setup,
        &folder.path("state"),
        &["--from-start"],
        &[&present, &missing],
    );
    tailer.wait_told(&format!("{}: No such file", missing.display()));
    wait_for_all(&setup, &numbered("present", 0..3));
    append(&missing, numbered("later", 0..3));
    tailer.wait_told(&format!("{} is there now", missing.display()));
    let expected = [numbered("present", 0..3), numbered("later", 0..3)].concat();
    wait_for_all(&setup, &expected);
    assert!(tailer.end(Signal::SIGTERM).success(), "{}", tailer.stderr());
    assert_eq!(texts(&setup), expected);
    let told = tailer.stderr();
    assert_eq!(told.matches("No such file").count(), 1, "{told}");
}

#[test]
fn a_joined_record_still_open_at_a_stop_is_read_again_and_joined_whole_after_the_restart() {
    let setup = setup();
    let folder = Folder::new();
    let log = folder.path("job.log");
    let state = folder.path("state");
    // A timeout no loaded machine reaches: only a start line or the end
    // of the file ends a record here.
    let flags = [
        "--from-start",
        "--multiline-start",
        "^START",
        "--multiline-timeout",
        "60s",
    ];
    append(
        &log,
        ["START 1", "  at one", "START 2", "  at two"].map(String::from),
    );
    let mut first = tail(&setup, &state, &flags, &[&log]);
    setup.agent.wait_for_envelopes(1, WAIT);
    assert!(first.end(Signal::SIGTERM).success(), "{}", first.stderr());
    append(&log, ["  at two again", "START 3"].map(String::from));
    let mut second = tail(&setup, &state, &flags, &[&log]);
    setup.agent.wait_for_envelopes(2, WAIT);
    assert!(second.end(Signal::SIGTERM).success(), "{}", second.stderr());
    assert_eq!(
        texts(&setup),
        ["START 1\n  at one", "START 2\n  at two\n  at two again"]
    );
}

#[test]
fn several_files_are_sent_side_by_side_each_file_in_order_every_line_once() {
    let setup = setup();
    let folder = Folder::new();
    let names = ["a", "b", "c", "d", "e"];
    let paths = names.map(|name| folder.path(&format!("{name}.log")));
    // More lines than a batch holds (10,000): each file takes several
    // sends, and a file's next batch may not pass its first.
    const LINES: u32 = 25_000;
    for (path, name) in paths.iter().zip(names) {
        append(path, numbered(name, 0..LINES));
    }
    let state = folder.path("state");
    let files: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let mut tailer = tail(&setup, &state, &["--from-start"], &files);
    let total = paths.len() * LINES as usize;
    let received = setup.agent.wait_for_envelopes(total, WAIT);
    for path in &paths {
        let size = std::fs::metadata(path).unwrap().len();
        wait_until(|| confirmed_offset(&state, path) == size);
    }
    assert!(tailer.end(Signal::SIGTERM).success(), "{}", tailer.stderr());
    let mut by_file: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for log in &received {
        by_file
            .entry(log.tag("file").unwrap().to_string())
            .or_default()
            .push(log.text().unwrap().into_owned());
    }
    for (path, name) in paths.iter().zip(names) {
        let got = &by_file[&path.display().to_string()];
        assert!(
            *got == numbered(name, 0..LINES),
            "{name}.log: {} logs, not each line once in order",
            got.len()
        );
    }
    let stderr = tailer.stderr();
    assert!(
        stderr.contains(&format!("files 5 lines {total} split 0 confirmed {total}")),
        "{stderr}"
    );
}

#[test]
fn a_log_too_large_for_any_batch_is_refused_alone_and_counted_and_the_lines_around_it_arrive() {
    let setup = setup();
    let folder = Folder::new();
    let log = folder.path("job.log");
    let state = folder.path("state");
    // A record of 999,000 bytes, each line its own record, and a client
    // tag of 60,000 bytes: that log alone passes the client's 1 MiB.
    let long = "L".repeat(999_000);
    append(&log, ["before".to_string(), long, "after".to_string()]);
    let tag = format!("big={}", "v".repeat(60_000));
    let flags = [
        "--from-start",
        "--multiline-start",
        "^",
        "--multiline-max-bytes",
        "1000000",
        "--tag",
        &tag,
    ];
    let mut tailer = tail(&setup, &state, &flags, &[&log]);
    wait_for_all(&setup, &["before".to_string(), "after".to_string()]);
    let size = std::fs::metadata(&log).unwrap().len();
    wait_until(|| confirmed_offset(&state, &log) == size);
    let status = tailer.end(Signal::SIGTERM);
    let stderr = tailer.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(texts(&setup), ["before", "after"]);
    assert!(
        stderr.contains("a log was refused and is not sent"),
        "{stderr}"
    );
    assert!(
        stderr.contains("lines 3 split 0 confirmed 2 refused 1"),
        "{stderr}"
    );
}
