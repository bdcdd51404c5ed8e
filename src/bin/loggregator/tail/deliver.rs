//! Records to the agent with the unary `Send`, which returns only once
//! the agent has answered for the whole batch: the one confirmation the
//! Ingress API gives for a known set of envelopes (a stream confirms only
//! when it ends, and `flush` only says gRPC took the bytes). A failed
//! send is tried again, with a growing pause, until it is confirmed or we
//! are told to stop, so the state file never passes what the agent has.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crossbeam_channel::Receiver;
use loggregator::{Envelope, IngressClient, SourceInfo};

use super::PROGRAM;
use super::records::Record;
use super::state::{Position, StateFile};

/// How long one send waits for the agent's answer.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// The first pause after a failed send; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// We were told to stop while a batch was not confirmed.
#[derive(Debug)]
pub struct Stopped;

/// How each log is marked.
pub struct Marking {
    pub source: SourceInfo,
    /// The tag naming the file a log came from, if any.
    pub file_tag: Option<String>,
}

/// What was delivered, for the exit line.
#[derive(Debug, Default)]
pub struct Delivered {
    /// Envelopes the agent confirmed.
    pub confirmed: u64,
    /// Sends that failed and were tried again.
    pub failed_sends: u64,
}

/// The client, the state file and the positions it holds.
pub struct Delivery {
    client: IngressClient,
    marking: Marking,
    stop: Receiver<()>,
    state: StateFile,
    positions: BTreeMap<PathBuf, Position>,
    state_failing: bool,
    pub delivered: Delivered,
}

impl Delivery {
    pub fn new(
        client: IngressClient,
        marking: Marking,
        stop: Receiver<()>,
        state: StateFile,
        positions: BTreeMap<PathBuf, Position>,
    ) -> Delivery {
        Delivery {
            client,
            marking,
            stop,
            state,
            positions,
            state_failing: false,
            delivered: Delivered::default(),
        }
    }

    /// Where the last run left `path`.
    pub fn position(&self, path: &Path) -> Option<&Position> {
        self.positions.get(path)
    }

    /// Whether a stop was asked for.
    pub fn stopping(&self) -> bool {
        !self.stop.is_empty()
    }

    /// Waits at most `timeout` for a stop; returns whether one came.
    pub fn wait_for_stop(&self, timeout: Duration) -> bool {
        self.stop.recv_timeout(timeout).is_ok()
    }

    /// Sends `records` of the file at `path` until the agent confirms them.
    pub fn send(&mut self, path: &Path, stderr: bool, records: &[Record]) -> Result<(), Stopped> {
        let mut pause = RETRY_FIRST;
        let mut warned = false;
        loop {
            let envelopes = records
                .iter()
                .map(|(payload, _)| self.envelope(path, stderr, payload))
                .collect();
            match self.client.send(envelopes, SEND_TIMEOUT) {
                Ok(()) => {
                    if warned {
                        eprintln!("{PROGRAM}: the agent confirmed again");
                    }
                    self.delivered.confirmed += records.len() as u64;
                    return Ok(());
                }
                Err(error) => {
                    self.delivered.failed_sends += 1;
                    if !warned {
                        eprintln!(
                            "{PROGRAM}: sending to the agent: {error}; trying again, \
                             the state file stays at what the agent confirmed"
                        );
                        warned = true;
                    }
                    if self.wait_for_stop(pause) {
                        return Err(Stopped);
                    }
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
        }
    }

    fn envelope(&self, path: &Path, stderr: bool, payload: &[u8]) -> Envelope {
        let log = Envelope::log(payload);
        let log = if stderr { log } else { log.stdout() };
        let mut log = log.source(
            self.marking.source.source_id(),
            self.marking.source.instance_id(),
        );
        if let Some(tag) = &self.marking.file_tag {
            log = log.tag(tag, path.to_string_lossy());
        }
        log.into()
    }

    /// Records `path`'s position and writes the state file.
    pub fn confirm(&mut self, path: &Path, position: Position) {
        if self.positions.get(path) == Some(&position) {
            return;
        }
        self.positions.insert(path.to_path_buf(), position);
        self.save();
    }

    /// Writes the state file; a failure is told once, then once more when
    /// it works again (the positions stay in memory meanwhile).
    pub fn save(&mut self) {
        match self.state.save(&self.positions) {
            Ok(()) if self.state_failing => {
                eprintln!(
                    "{PROGRAM}: state file {} written again",
                    self.state.path().display()
                );
                self.state_failing = false;
            }
            Ok(()) => {}
            Err(error) if !self.state_failing => {
                eprintln!(
                    "{PROGRAM}: cannot write state file {}: {error}; lines confirmed \
                     since may be sent again after a restart",
                    self.state.path().display()
                );
                self.state_failing = true;
            }
            Err(_) => {}
        }
    }

    /// Ends the client; what it holds was confirmed already.
    pub fn close(&self, timeout: Duration) -> loggregator::Stats {
        let _ = self.client.close(timeout);
        self.client.stats()
    }
}
