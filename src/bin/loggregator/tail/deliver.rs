//! Records to the agent with the unary `Send`, which returns only once
//! the agent has answered for the whole batch: the one confirmation the
//! Ingress API gives for a known set of envelopes (a stream confirms only
//! when it ends, and `flush` only says gRPC took the bytes). A failed
//! send is tried again, with a growing pause, until it is confirmed or we
//! are told to stop, so the state file never passes what the agent has.
//!
//! The sends and the state file's writes happen on a thread of their
//! own, in the order the reading thread asked for them, so that reading
//! the next batch overlaps the agent's answer and the fsync; at most one
//! batch waits behind the one being sent.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
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

/// What the delivering thread does, in order.
enum Job {
    /// Send, then record the position past the batch.
    Batch {
        envelopes: Vec<Envelope>,
        path: PathBuf,
        then: Position,
    },
    /// Record a position that needs no send (a file opened, one ended).
    Position(PathBuf, Position),
    /// Write the state file.
    Save,
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
        let mut worker = Worker {
            client,
            stop: stop.clone(),
            state,
            positions: positions.clone(),
            state_failing: false,
            delivered: Delivered::default(),
        };
        let worker = std::thread::Builder::new()
            .name("deliver".into())
            .spawn(move || {
                worker.run(&queued);
                let _ = worker.client.close(close_timeout);
                (worker.delivered, worker.client.stats())
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
        let envelopes = records
            .iter()
            .map(|(payload, _)| self.envelope(path, stderr, payload))
            .collect();
        self.ask(Job::Batch {
            envelopes,
            path: path.to_path_buf(),
            then,
        })
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

/// The delivering thread: the client, the state file and its positions.
struct Worker {
    client: IngressClient,
    stop: Stop,
    state: StateFile,
    positions: BTreeMap<PathBuf, Position>,
    state_failing: bool,
    delivered: Delivered,
}

impl Worker {
    fn run(&mut self, jobs: &Receiver<Job>) {
        while let Ok(job) = jobs.recv() {
            let sent = matches!(job, Job::Batch { .. });
            match job {
                Job::Batch {
                    envelopes,
                    path,
                    then,
                } => {
                    if self.send(envelopes).is_err() {
                        return;
                    }
                    self.positions.insert(path, then);
                }
                Job::Position(path, position) => {
                    self.positions.insert(path, position);
                }
                Job::Save => {}
            }
            // Positions asked one after another (files opened at start)
            // make one write.
            if sent || jobs.is_empty() {
                self.save();
            }
        }
    }

    /// Sends `envelopes` until the agent confirms them.
    fn send(&mut self, envelopes: Vec<Envelope>) -> Result<(), Stopped> {
        let mut pause = RETRY_FIRST;
        let mut warned = false;
        let count = envelopes.len() as u64;
        loop {
            match self.client.send(envelopes.clone(), SEND_TIMEOUT) {
                Ok(()) => {
                    if warned {
                        eprintln!("{PROGRAM}: the agent confirmed again");
                    }
                    self.delivered.confirmed += count;
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
                    if wait_for_stop(&self.stop, pause) {
                        return Err(Stopped);
                    }
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// Writes the state file; a failure is told once, then once more when
    /// it works again (the positions stay in memory meanwhile).
    fn save(&mut self) {
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
}
