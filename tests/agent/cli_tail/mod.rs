//! `loggregator tail` with real files against the spy agent: rotation by
//! rename and by copy-and-truncate (the file regrown past the old offset,
//! the lines before the cut read from `<name>.1`), a `kill -9` between two
//! runs, a glob picking up a new file, a corrupt state file, and an agent
//! away while lines are written (the state file stays where it was).
//!
//! The tailer is paused with SIGSTOP while a test rotates a file, so the
//! rotation happens whole between two of its looks, as it does when
//! logrotate runs between two polls.
//!
//! Here are the helpers; the tests are in `rotation.rs`, `restart.rs` and
//! `files.rs`.

mod files;
mod restart;
mod rotation;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Instant;

use crossbeam_channel::Receiver;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::common::{Setup, WAIT};

/// A running `loggregator tail`, killed if a test fails before it ends.
pub(super) struct Tailer {
    pid: Pid,
    exited: Receiver<ExitStatus>,
    stderr: Receiver<String>,
    told: Vec<String>,
    status: Option<ExitStatus>,
}

pub(super) fn tail(setup: &Setup, state: &Path, flags: &[&str], files: &[&Path]) -> Tailer {
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
    pub(super) fn wait_told(&mut self, needle: &str) -> String {
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

    pub(super) fn signal(&self, signal: Signal) {
        kill(self.pid, signal).expect("signal the tailer");
    }

    /// Waits (bounded) for it to exit after `signal`; returns its status.
    pub(super) fn end(&mut self, signal: Signal) -> ExitStatus {
        self.signal(signal);
        let status = self
            .exited
            .recv_timeout(WAIT)
            .expect("the tailer exits within WAIT");
        self.status = Some(status);
        status
    }

    /// Everything it wrote to stderr, once it has exited.
    pub(super) fn stderr(&mut self) -> String {
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
pub(super) fn append(path: &Path, lines: impl IntoIterator<Item = String>) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let text: String = lines.into_iter().map(|line| line + "\n").collect();
    file.write_all(text.as_bytes()).unwrap();
}

pub(super) fn numbered(prefix: &str, range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|n| format!("{prefix} {n:05}")).collect()
}

/// The texts received from the tailer, in order.
pub(super) fn texts(setup: &Setup) -> Vec<String> {
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
pub(super) fn wait_for_all(setup: &Setup, expected: &[String]) -> BTreeMap<String, usize> {
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
pub(super) fn wait_until(ready: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !ready() {
        assert!(Instant::now() < deadline, "never ready within {WAIT:?}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The state file's confirmed offset of `path` (0 before it is written).
pub(super) fn confirmed_offset(state: &Path, path: &Path) -> u64 {
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

pub(super) struct Folder {
    dir: tempfile::TempDir,
}

impl Folder {
    pub(super) fn new() -> Folder {
        Folder {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}
