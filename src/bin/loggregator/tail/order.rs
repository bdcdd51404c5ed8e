//! The delivering thread's bookkeeping: batches go to the sending
//! threads, one per file at a time so that each file's lines reach the
//! agent in order, several files at once; positions are recorded in the
//! order the reading thread asked for them, each once everything asked
//! before it is confirmed, so the state file never passes a batch the
//! agent has not answered for.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;

use crossbeam_channel::{Receiver, Sender, never};
use loggregator::Envelope;

use super::PROGRAM;
use super::state::{Position, StateFile};

/// Batches sent at once, each by a thread of its own, each of another
/// file: the agent's answer to one overlaps the sending of the others.
pub const IN_FLIGHT: usize = 4;

/// We were told to stop while a batch was not confirmed.
#[derive(Debug)]
pub struct Stopped;

/// What the delivering thread does, in order.
pub enum Job {
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

/// A batch for a sending thread, numbered in the order it was asked for.
pub type Numbered = (u64, Vec<Envelope>);

/// A sending thread's answer for the batch of that number.
pub type Answer = (u64, Result<(), Stopped>);

/// Where a batch is.
enum Sent {
    /// Behind another batch of its file.
    Waiting(Vec<Envelope>),
    /// With a sending thread.
    Sending,
    Confirmed,
}

/// What waits to be recorded, in the order it was asked for.
enum Step {
    /// A batch; its position is recorded once it and every step before
    /// it are done.
    Batch {
        number: u64,
        path: PathBuf,
        then: Position,
        sent: Sent,
    },
    Position(PathBuf, Position),
    Save,
}

/// The delivering thread's state: the state file, its positions and the
/// steps not yet recorded.
pub struct Worker {
    state: StateFile,
    positions: BTreeMap<PathBuf, Position>,
    state_failing: bool,
    steps: VecDeque<Step>,
    /// Files with a batch at a sending thread.
    sending: BTreeSet<PathBuf>,
    /// Batches waiting behind another of their file.
    waiting: usize,
    numbered: u64,
}

impl Worker {
    pub fn new(state: StateFile, positions: BTreeMap<PathBuf, Position>) -> Worker {
        Worker {
            state,
            positions,
            state_failing: false,
            steps: VecDeque::new(),
            sending: BTreeSet::new(),
            waiting: 0,
            numbered: 0,
        }
    }

    /// Runs until the reading thread is done and every step recorded, or
    /// a sending thread was stopped. It takes the next job only while a
    /// sending thread is free and no batch waits: the reading thread
    /// waits meanwhile, which bounds the batches held.
    pub fn run(
        &mut self,
        jobs: &Receiver<Job>,
        batches: &Sender<Numbered>,
        answers: &Receiver<Answer>,
    ) -> Result<(), Stopped> {
        let mut reading = true;
        let full = never();
        while reading || !self.steps.is_empty() {
            let room = reading && self.sending.len() < IN_FLIGHT && self.waiting == 0;
            crossbeam_channel::select! {
                recv(if room { jobs } else { &full }) -> job => match job {
                    Ok(job) => self.take(job, batches)?,
                    Err(_) => reading = false,
                },
                recv(answers) -> answer => {
                    let (number, answer) = answer.map_err(|_| Stopped)?;
                    answer?;
                    self.confirmed(number, batches)?;
                },
            }
            self.record(jobs);
        }
        Ok(())
    }

    fn take(&mut self, job: Job, batches: &Sender<Numbered>) -> Result<(), Stopped> {
        let step = match job {
            Job::Batch {
                envelopes,
                path,
                then,
            } => {
                self.numbered += 1;
                let sent = if self.sending.contains(&path) {
                    self.waiting += 1;
                    Sent::Waiting(envelopes)
                } else {
                    self.hand(self.numbered, envelopes, path.clone(), batches)?;
                    Sent::Sending
                };
                Step::Batch {
                    number: self.numbered,
                    path,
                    then,
                    sent,
                }
            }
            Job::Position(path, position) => Step::Position(path, position),
            Job::Save => Step::Save,
        };
        self.steps.push_back(step);
        Ok(())
    }

    /// Gives a batch to a sending thread; one is free, so this does not
    /// wait.
    fn hand(
        &mut self,
        number: u64,
        envelopes: Vec<Envelope>,
        path: PathBuf,
        batches: &Sender<Numbered>,
    ) -> Result<(), Stopped> {
        batches.send((number, envelopes)).map_err(|_| Stopped)?;
        self.sending.insert(path);
        Ok(())
    }

    /// The batch `number` is confirmed: the next batch of its file, if
    /// one waits, goes.
    fn confirmed(&mut self, number: u64, batches: &Sender<Numbered>) -> Result<(), Stopped> {
        let mut file = None;
        let mut next = None;
        for step in &mut self.steps {
            let Step::Batch {
                number: n,
                path,
                sent,
                ..
            } = step
            else {
                continue;
            };
            if *n == number {
                *sent = Sent::Confirmed;
                file = Some(path.clone());
            } else if file.as_ref() == Some(path) && matches!(sent, Sent::Waiting(_)) {
                if let Sent::Waiting(envelopes) = std::mem::replace(sent, Sent::Sending) {
                    next = Some((*n, envelopes));
                }
                break;
            }
        }
        let Some(file) = file else {
            return Ok(());
        };
        self.sending.remove(&file);
        if let Some((number, envelopes)) = next {
            self.waiting -= 1;
            self.hand(number, envelopes, file, batches)?;
        }
        Ok(())
    }

    /// Records the steps done, in order, and writes the state file after
    /// a batch, an asked-for save, or positions with nothing more asked
    /// (those asked one after another, files opened at start, make one
    /// write).
    fn record(&mut self, jobs: &Receiver<Job>) {
        let mut save = false;
        let mut recorded = false;
        while let Some(step) = self.steps.front() {
            match step {
                Step::Batch {
                    sent: Sent::Waiting(_) | Sent::Sending,
                    ..
                } => break,
                Step::Batch { .. } | Step::Save => save = true,
                Step::Position(..) => {}
            }
            recorded = true;
            if let Some(Step::Batch { path, then, .. } | Step::Position(path, then)) =
                self.steps.pop_front()
            {
                self.positions.insert(path, then);
            }
        }
        if save || (recorded && jobs.is_empty()) {
            self.save();
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

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::path::Path;

    use super::*;
    use crate::tail::state::Identity;

    fn position(path: &Path, confirmed: u64) -> Position {
        let identity = Identity::new(&File::open(path).unwrap(), b"x").unwrap();
        Position {
            identity,
            confirmed,
        }
    }

    fn batch(path: &Path, confirmed: u64) -> Job {
        Job::Batch {
            envelopes: vec![Envelope::log("x").build()],
            path: path.to_path_buf(),
            then: position(path, confirmed),
        }
    }

    fn handed(batches: &Receiver<Numbered>) -> Vec<u64> {
        batches.try_iter().map(|(number, _)| number).collect()
    }

    fn saved(state: &StateFile) -> Vec<(PathBuf, u64)> {
        let positions = state.load().unwrap();
        positions
            .into_iter()
            .map(|(path, position)| (path, position.confirmed))
            .collect()
    }

    #[test]
    fn a_file_has_one_batch_out_at_a_time_and_positions_wait_for_every_batch_asked_before() {
        let folder = tempfile::tempdir().unwrap();
        let [a, b] = ["a.log", "b.log"].map(|name| folder.path().join(name));
        for path in [&a, &b] {
            std::fs::write(path, b"x\n").unwrap();
        }
        let state = StateFile::new(&folder.path().join("state.json"));
        let mut worker = Worker::new(StateFile::new(state.path()), BTreeMap::new());
        let (to_send, batches) = crossbeam_channel::bounded(IN_FLIGHT);
        let (_asks, jobs) = crossbeam_channel::bounded::<Job>(1);

        for job in [batch(&a, 10), batch(&b, 20), batch(&a, 30)] {
            worker.take(job, &to_send).unwrap();
        }
        assert_eq!(
            handed(&batches),
            [1, 2],
            "a's second batch waits for its first"
        );

        // b's batch is answered first: a's first, asked before it, is not.
        worker.confirmed(2, &to_send).unwrap();
        worker.record(&jobs);
        assert_eq!(
            saved(&state),
            [],
            "nothing is recorded past an unanswered batch"
        );
        assert!(handed(&batches).is_empty());

        worker.confirmed(1, &to_send).unwrap();
        assert_eq!(
            handed(&batches),
            [3],
            "a's next batch goes once its first is answered"
        );
        worker.record(&jobs);
        assert_eq!(saved(&state), [(a.clone(), 10), (b.clone(), 20)]);

        worker.confirmed(3, &to_send).unwrap();
        worker.record(&jobs);
        assert_eq!(saved(&state), [(a, 30), (b, 20)]);
        assert!(worker.steps.is_empty());
    }
}
