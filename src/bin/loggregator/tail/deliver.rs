//! Records to the agent with the unary `Send`, which returns only once
//! the agent has answered for the whole batch: the one confirmation the
//! Ingress API gives for a known set of envelopes (a stream confirms only
//! when it ends, and `flush` only says gRPC took the bytes). A failed
//! send is tried again, with a growing pause, until it is confirmed or we
//! are told to stop, so the state file never passes what the agent has.
//!
//! Reading overlaps sending: the reading thread hands batches over and
//! goes on; sending threads (one batch of a file at a time, several files
//! at once) wait for the agent, and the delivering thread records the
//! positions in order and writes the state file (`order.rs`).

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use loggregator::{Envelope, Error, IngressClient, SourceInfo};
use protobuf::Message;

use super::PROGRAM;
pub use super::order::Stopped;
use super::order::{IN_FLIGHT, Job, Numbered, Worker};
use super::records::Record;
use super::state::{Position, StateFile};

/// How long one send waits for the agent's answer.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// The first pause after a failed send; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// How each log is marked.
pub struct Marking {
    pub source: SourceInfo,
    /// The tag naming the file a log came from, if any.
    pub file_tag: Option<String>,
    /// What the client's own tags (`--tag`) add to each log, at most.
    pub client_tag_bytes: usize,
}

/// What a payload's length can add to its log's encoding beyond an empty
/// payload's, at most: the length of the payload, of the log message and
/// of the envelope in its batch, each a varint of up to 3 more bytes for
/// anything under 2 MiB, and the batch's field key.
const LENGTHS_BYTES: usize = 16;

/// What was delivered, for the exit line.
#[derive(Debug, Default)]
pub struct Delivered {
    /// Envelopes the agent confirmed.
    pub confirmed: u64,
    /// Sends that failed and were tried again.
    pub failed_sends: u64,
    /// Logs the client refused (larger than a batch may be), not sent.
    pub refused: u64,
}

/// The stop signal: the channel is closed (disconnected) on SIGTERM or
/// SIGINT, which every holder of a receiver sees.
pub type Stop = Receiver<()>;

fn stopped(stop: &Stop) -> bool {
    matches!(stop.try_recv(), Err(TryRecvError::Disconnected))
}

/// Waits at most `timeout` for a stop; returns whether one came.
fn wait_for_stop(stop: &Stop, timeout: Duration) -> bool {
    !matches!(stop.recv_timeout(timeout), Err(RecvTimeoutError::Timeout))
}

/// The reading thread's end: asks for sends and positions, in order.
pub struct Delivery {
    marking: Marking,
    jobs: Option<Sender<Job>>,
    stop: Stop,
    /// The positions the state file held at start.
    loaded: BTreeMap<PathBuf, Position>,
    worker: Option<JoinHandle<(Delivered, loggregator::Stats)>>,
}

impl Delivery {
    pub fn start(
        client: IngressClient,
        marking: Marking,
        stop: Stop,
        state: StateFile,
        positions: BTreeMap<PathBuf, Position>,
        close_timeout: Duration,
    ) -> std::io::Result<Delivery> {
        let (jobs, queued) = crossbeam_channel::bounded(1);
        let sending = Arc::new(Sending {
            client,
            stop: stop.clone(),
            confirmed: AtomicU64::new(0),
            failed_sends: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            failing: Mutex::new(Failing::default()),
        });
        let (batches, to_send) = crossbeam_channel::bounded::<Numbered>(IN_FLIGHT);
        let (answer, answers) = crossbeam_channel::unbounded();
        let mut senders = Vec::with_capacity(IN_FLIGHT);
        for n in 0..IN_FLIGHT {
            let (sending, to_send, answer) = (sending.clone(), to_send.clone(), answer.clone());
            senders.push(
                std::thread::Builder::new()
                    .name(format!("send-{n}"))
                    .spawn(move || {
                        for (number, envelopes) in to_send {
                            // A thread that died unanswered would leave
                            // the delivering thread waiting for ever: a
                            // panic answers as a stop.
                            let answered = std::panic::catch_unwind(AssertUnwindSafe(|| {
                                sending.send(envelopes)
                            }))
                            .unwrap_or(Err(Stopped));
                            let stopped = answered.is_err();
                            if answer.send((number, answered)).is_err() || stopped {
                                return;
                            }
                        }
                    })?,
            );
        }
        let mut worker = Worker::new(state, positions.clone());
        let worker = std::thread::Builder::new()
            .name("deliver".into())
            .spawn(move || {
                let finished = worker.run(&queued, &batches, &answers);
                drop(batches);
                // Done: the sending threads end with the batches' channel.
                // Stopped: one may still be waiting for the agent; closing
                // the client ends its send, and nobody waits for it.
                if finished.is_ok() {
                    for sender in senders {
                        let _ = sender.join();
                    }
                }
                let _ = sending.client.close(close_timeout);
                (sending.delivered(), sending.client.stats())
            })?;
        Ok(Delivery {
            marking,
            jobs: Some(jobs),
            stop,
            loaded: positions,
            worker: Some(worker),
        })
    }

    /// Where the last run left `path`.
    pub fn position(&self, path: &Path) -> Option<&Position> {
        self.loaded.get(path)
    }

    /// Whether a stop was asked for.
    pub fn stopping(&self) -> bool {
        stopped(&self.stop)
    }

    /// Waits at most `timeout` for a stop; returns whether one came.
    pub fn wait_for_stop(&self, timeout: Duration) -> bool {
        wait_for_stop(&self.stop, timeout)
    }

    fn ask(&self, job: Job) -> Result<(), Stopped> {
        let jobs = self.jobs.as_ref().ok_or(Stopped)?;
        crossbeam_channel::select! {
            send(jobs, job) -> sent => sent.map_err(|_| Stopped),
            recv(self.stop) -> _ => Err(Stopped),
        }
    }

    /// Sends `records` of the file at `path`; once the agent confirms
    /// them, `then` is recorded. Waits while a batch is already waiting.
    /// The envelopes are made here, on the reading thread, so that the
    /// delivering thread only sends.
    pub fn send(
        &self,
        path: &Path,
        stderr: bool,
        records: &[Record],
        then: Position,
    ) -> Result<(), Stopped> {
        let file = path.to_string_lossy();
        let envelopes = records
            .iter()
            .map(|(payload, _)| self.envelope(&file, stderr, payload))
            .collect();
        self.ask(Job::Batch {
            envelopes,
            path: path.to_path_buf(),
            then,
        })
    }

    /// What a log of the file at `path` takes in a batch beyond its
    /// payload, at most: an empty log of it as the client sends it.
    pub fn overhead(&self, path: &Path, stderr: bool) -> usize {
        let empty = self.envelope(&path.to_string_lossy(), stderr, b"");
        empty.as_proto().compute_size() as usize + LENGTHS_BYTES + self.marking.client_tag_bytes
    }

    fn envelope(&self, file: &str, stderr: bool, payload: &[u8]) -> Envelope {
        let log = Envelope::log(payload);
        let log = if stderr { log } else { log.stdout() };
        let mut log = log.source(
            self.marking.source.source_id(),
            self.marking.source.instance_id(),
        );
        if let Some(tag) = &self.marking.file_tag {
            log = log.tag(tag, file);
        }
        log.into()
    }

    /// Records `path`'s position after what was asked before.
    pub fn confirm(&self, path: &Path, position: Position) -> Result<(), Stopped> {
        self.ask(Job::Position(path.to_path_buf(), position))
    }

    /// Writes the state file after what was asked before.
    pub fn save(&self) -> Result<(), Stopped> {
        self.ask(Job::Save)
    }

    /// Lets the delivering thread finish what was asked (unless stopped),
    /// closes the client; returns what was delivered.
    pub fn finish(mut self) -> (Delivered, loggregator::Stats) {
        self.jobs = None;
        match self.worker.take().map(JoinHandle::join) {
            Some(Ok(done)) => done,
            _ => (Delivered::default(), loggregator::Stats::default()),
        }
    }
}

/// What the sending threads share with the delivering thread.
struct Sending {
    client: IngressClient,
    stop: Stop,
    /// Envelopes the agent confirmed.
    confirmed: AtomicU64,
    /// Sends that failed and were tried again.
    failed_sends: AtomicU64,
    /// Logs the client refused alone.
    refused: AtomicU64,
    /// Whether the agent is failing us: told once when it starts, once
    /// when it ends, whichever thread sees it.
    failing: Mutex<Failing>,
}

/// The agent's failures as the sending threads saw them.
#[derive(Default)]
struct Failing {
    now: bool,
    /// Failures told so far: a send that began before the last one was
    /// told may still succeed, which says nothing of the agent now.
    told: u64,
}

impl Sending {
    /// Sends `envelopes` until the agent confirms them. A batch the
    /// client refuses (it would never take it, however often tried) goes
    /// in halves; a log refused alone is told and counted, not retried.
    fn send(&self, mut envelopes: Vec<Envelope>) -> Result<(), Stopped> {
        let mut pause = RETRY_FIRST;
        let count = envelopes.len() as u64;
        loop {
            let began = self
                .failing
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .told;
            match self.client.send(envelopes.clone(), SEND_TIMEOUT) {
                Ok(()) => {
                    let mut failing = self.failing.lock().unwrap_or_else(PoisonError::into_inner);
                    if failing.now && failing.told == began {
                        failing.now = false;
                        eprintln!("{PROGRAM}: the agent confirmed again");
                    }
                    self.confirmed.fetch_add(count, Ordering::Relaxed);
                    return Ok(());
                }
                Err(Error::Rejected(_)) if envelopes.len() > 1 => {
                    let second = envelopes.split_off(envelopes.len() / 2);
                    self.send(envelopes)?;
                    return self.send(second);
                }
                Err(Error::Rejected(reason)) => {
                    eprintln!("{PROGRAM}: a log was refused and is not sent: {reason}");
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err(error) => {
                    self.failed_sends.fetch_add(1, Ordering::Relaxed);
                    let mut failing = self.failing.lock().unwrap_or_else(PoisonError::into_inner);
                    if !failing.now {
                        failing.now = true;
                        failing.told += 1;
                        eprintln!(
                            "{PROGRAM}: sending to the agent: {error}; trying again, \
                             the state file stays at what the agent confirmed"
                        );
                    }
                    drop(failing);
                    if wait_for_stop(&self.stop, pause) {
                        return Err(Stopped);
                    }
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
        }
    }

    fn delivered(&self) -> Delivered {
        Delivered {
            confirmed: self.confirmed.load(Ordering::Relaxed),
            failed_sends: self.failed_sends.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }
}
