//! The sender loop: batches queued envelopes and hands them to a transport.
//!
//! It knows nothing of gRPC: a [`Transport`] opens streams and starts unary
//! sends, so the batching, deadline and flush logic is tested here with
//! in-memory fakes.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, at, never, select_biased};
use protobuf::rt::WireType;
use protobuf::{CodedOutputStream, Message};

use crate::LOG_TARGET;
use crate::error::{Error, Result};
use crate::proto::envelope as pb;
use crate::stats::{Counters, DropReason};

/// An envelope on its way to the sender thread.
pub(crate) struct Queued {
    pub envelope: pb::Envelope,
}

/// Requests from the handle, on their own channel so they are never stuck
/// behind a full data queue.
pub(crate) enum Control {
    /// Write everything queued before this request, then reply.
    Flush(Sender<Result<()>>),
    /// Write everything queued, end the stream cleanly by `deadline`, then stop.
    Close {
        deadline: Instant,
        reply: Sender<Result<()>>,
    },
    /// Start a unary send of an encoded `EnvelopeBatch` unless `deadline`
    /// has passed; the caller waits for it.
    Send {
        batch: Vec<u8>,
        deadline: Instant,
        reply: Sender<Result<PendingSend>>,
    },
}

/// A unary send under way; calling it waits for the agent's answer.
pub(crate) type PendingSend = Box<dyn FnOnce() -> Result<()> + Send>;

/// Opens `BatchSender` streams and starts unary sends.
pub(crate) trait Transport {
    /// The stream type; dropping one without [`BatchStream::finish`] cancels it.
    type Stream: BatchStream;

    /// Opens a new stream.
    fn open(&mut self) -> Result<Self::Stream>;

    /// Starts a unary `Send` of an encoded `EnvelopeBatch`.
    fn send(&mut self, batch: &[u8], timeout: Duration) -> Result<PendingSend>;
}

/// Why a write failed, which decides whether it may be tried again.
#[derive(Debug)]
pub(crate) enum WriteError {
    /// The stream had already ended: the agent never got the batch.
    StreamEnded(Error),
    /// The write was cut short (timeout, abort): the agent may have it.
    Uncertain(Error),
}

impl WriteError {
    fn into_error(self) -> Error {
        match self {
            WriteError::StreamEnded(error) | WriteError::Uncertain(error) => error,
        }
    }
}

/// One client stream of encoded `EnvelopeBatch` messages.
pub(crate) trait BatchStream {
    /// Writes one encoded batch; returns once the transport accepted it.
    fn write(&mut self, batch: &[u8]) -> std::result::Result<(), WriteError>;

    /// Half-closes the stream and waits, until `deadline`, for the agent to
    /// end the call after reading everything.
    fn finish(self, deadline: Instant) -> Result<()>;
}

/// What the loop needs to know from the builder.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub batch_max_envelopes: usize,
    pub batch_max_bytes: usize,
    pub flush_interval: Duration,
    pub global_tags: Vec<(String, String)>,
}

/// The longest any setting or timeout is honoured, so deadlines never overflow.
pub(crate) const LONGEST_WAIT: Duration = Duration::from_secs(24 * 60 * 60);

/// `now + wait`, with waits beyond [`LONGEST_WAIT`] shortened to it.
pub(crate) fn deadline_after(wait: Duration) -> Instant {
    Instant::now() + wait.min(LONGEST_WAIT)
}

/// The encoded size of `len` as a protobuf varint.
pub(crate) fn varint_len(len: u64) -> usize {
    (64 - (len | 1).leading_zeros() as usize).div_ceil(7)
}

/// The bytes an envelope of encoded size `size` takes inside an `EnvelopeBatch`.
pub(crate) fn framed_len(size: usize) -> usize {
    1 + varint_len(size as u64) + size
}

pub(crate) struct Worker<T: Transport> {
    transport: T,
    stream: Option<T::Stream>,
    streams_opened: u64,
    data: Receiver<Queued>,
    control: Receiver<Control>,
    settings: Settings,
    counters: Arc<Counters>,
    /// The `EnvelopeBatch` being built, already encoded.
    batch: Vec<u8>,
    batch_len: usize,
    batch_started: Option<Instant>,
    /// False from the first failure of an outage until a write succeeds again.
    healthy: bool,
}

impl<T: Transport> Worker<T> {
    pub(crate) fn new(
        transport: T,
        data: Receiver<Queued>,
        control: Receiver<Control>,
        settings: Settings,
        counters: Arc<Counters>,
    ) -> Worker<T> {
        Worker {
            transport,
            stream: None,
            streams_opened: 0,
            data,
            control,
            batch: Vec::with_capacity(settings.batch_max_bytes.min(1 << 20)),
            settings,
            counters,
            batch_len: 0,
            batch_started: None,
            healthy: true,
        }
    }

    /// Runs until a close request (or until every handle is gone).
    pub(crate) fn run(mut self) {
        loop {
            let batch_due = match self.batch_started {
                Some(started) => at(started + self.settings.flush_interval.min(LONGEST_WAIT)),
                None => never(),
            };
            select_biased! {
                recv(self.control) -> request => match request {
                    Ok(Control::Flush(reply)) => {
                        let result = self.flush();
                        let _ = reply.send(result);
                    }
                    Ok(Control::Close { deadline, reply }) => {
                        let result = self.close(deadline);
                        let _ = reply.send(result);
                        return;
                    }
                    Ok(Control::Send { batch, deadline, reply }) => {
                        // A caller that gave up has already counted its error.
                        let left = deadline.saturating_duration_since(Instant::now());
                        if !left.is_zero() {
                            let pending = self.transport.send(&batch, left);
                            if let Err(error) = &pending {
                                self.counters.record_error(error);
                            }
                            let _ = reply.send(pending);
                        }
                    }
                    Err(_) => {
                        let _ = self.close(deadline_after(Duration::from_secs(1)));
                        return;
                    }
                },
                recv(self.data) -> queued => match queued {
                    Ok(queued) => {
                        self.push(queued);
                        // Take what else is waiting without going back to select.
                        while self.batch_len > 0 {
                            match self.data.try_recv() {
                                Ok(queued) => self.push(queued),
                                Err(_) => break,
                            }
                        }
                    }
                    Err(_) => {
                        let _ = self.close(deadline_after(Duration::from_secs(1)));
                        return;
                    }
                },
                recv(batch_due) -> _ => self.write_batch(),
            }
        }
    }

    /// Writes everything that was queued when the request arrived.
    fn flush(&mut self) -> Result<()> {
        // Envelopes emitted before the request are already in the queue, in
        // order; later ones may follow them, so take only as many as were there.
        for _ in 0..self.data.len() {
            match self.data.try_recv() {
                Ok(queued) => self.push(queued),
                Err(_) => break,
            }
        }
        self.write_batch();
        Ok(())
    }

    fn close(&mut self, deadline: Instant) -> Result<()> {
        while let Ok(queued) = self.data.try_recv() {
            self.push(queued);
        }
        self.write_batch();
        let finished = match self.stream.take() {
            Some(stream) => stream.finish(deadline),
            None => Ok(()),
        };
        if let Err(error) = &finished {
            self.counters.record_error(error);
        }
        finished
    }

    /// Adds one envelope to the batch, writing the batch first if the
    /// envelope would not fit and afterwards if the batch is full.
    fn push(&mut self, queued: Queued) {
        // In flight from now until its batch is written or dropped.
        self.counters.in_flight.fetch_add(1, Relaxed);
        let mut envelope = queued.envelope;
        let size = self.merge_tags(&mut envelope);
        if self.batch_len > 0 && self.batch.len() + framed_len(size) > self.settings.batch_max_bytes
        {
            self.write_batch();
        }
        self.append(envelope, size);
    }

    /// Adds the client-wide tags the envelope lacks; returns its encoded size.
    fn merge_tags(&self, envelope: &mut pb::Envelope) -> usize {
        for (key, value) in &self.settings.global_tags {
            if !envelope.tags.contains_key(key) {
                envelope.tags.insert(key.clone(), value.clone());
            }
        }
        envelope.compute_size() as usize
    }

    fn append(&mut self, envelope: pb::Envelope, size: usize) {
        let before = self.batch.len();
        if encode_framed(&envelope, size, &mut self.batch).is_err() {
            // Encoding into memory only fails on an inconsistent size; count it
            // rather than send a corrupt batch.
            self.batch.truncate(before);
            self.counters.in_flight.fetch_sub(1, Relaxed);
            self.counters.drop_envelopes(DropReason::WriteFailed, 1);
            return;
        }
        self.batch_len += 1;
        if self.batch_started.is_none() {
            self.batch_started = Some(Instant::now());
        }
        if self.batch_len >= self.settings.batch_max_envelopes
            || self.batch.len() >= self.settings.batch_max_bytes
        {
            self.write_batch();
        }
    }

    /// Writes the batch. A write that finds a stream that had worked already
    /// ended is tried once more on a new stream (the agent never got it); a
    /// write that fails otherwise drops the batch and counts it.
    fn write_batch(&mut self) {
        if self.batch_len == 0 {
            return;
        }
        let count = self.batch_len as u64;
        loop {
            let reused = self.stream.is_some();
            match self.write_on_stream() {
                Ok(()) => {
                    self.counters.sent.fetch_add(count, Relaxed);
                    self.counters.batches.fetch_add(1, Relaxed);
                    if !self.healthy {
                        self.healthy = true;
                        log::info!(target: LOG_TARGET, "the agent accepts envelopes again");
                    }
                    break;
                }
                Err(failure) => {
                    self.stream = None;
                    let retry = reused && matches!(failure, WriteError::StreamEnded(_));
                    let error = failure.into_error();
                    self.counters.record_error(&error);
                    if self.healthy {
                        self.healthy = false;
                        log::warn!(target: LOG_TARGET, "cannot deliver envelopes: {error}");
                    }
                    if !retry {
                        self.counters.drop_envelopes(DropReason::WriteFailed, count);
                        break;
                    }
                }
            }
        }
        self.counters.in_flight.fetch_sub(count, Relaxed);
        self.batch.clear();
        self.batch_len = 0;
        self.batch_started = None;
    }

    fn write_on_stream(&mut self) -> std::result::Result<(), WriteError> {
        let stream = match &mut self.stream {
            Some(stream) => stream,
            None => {
                let stream = self.transport.open().map_err(WriteError::StreamEnded)?;
                if self.streams_opened > 0 {
                    self.counters.reconnects.fetch_add(1, Relaxed);
                }
                self.streams_opened += 1;
                self.stream.insert(stream)
            }
        };
        stream.write(&self.batch)
    }
}

/// Appends `envelope` to an encoded `EnvelopeBatch` as one `batch` field.
fn encode_framed(envelope: &pb::Envelope, size: usize, out: &mut Vec<u8>) -> protobuf::Result<()> {
    let size = u32::try_from(size)
        .map_err(|_| protobuf::Error::from(std::io::Error::other("envelope too large")))?;
    let mut stream = CodedOutputStream::vec(out);
    stream.write_tag(1, WireType::LengthDelimited)?;
    stream.write_raw_varint32(size)?;
    envelope.write_to_with_cached_sizes(&mut stream)?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::{bounded, unbounded};
    use parking_lot::Mutex;

    /// What the fake agent saw, sent to the test as it happens.
    #[derive(Debug)]
    enum Seen {
        Opened,
        /// A write is waiting at the script's gate.
        AtGate,
        Batch(Vec<pb::Envelope>),
        Finished,
    }

    /// Decides what the next write does.
    #[derive(Clone, Default)]
    struct Script {
        /// Results for the next writes, front first; `Ok` once empty.
        writes: Arc<Mutex<Vec<std::result::Result<(), WriteError>>>>,
        /// When set, every write waits for a message here first.
        gate: Option<Receiver<()>>,
    }

    struct FakeTransport {
        seen: Sender<Seen>,
        script: Script,
    }

    struct FakeStream {
        seen: Sender<Seen>,
        script: Script,
    }

    impl Transport for FakeTransport {
        type Stream = FakeStream;

        fn open(&mut self) -> Result<FakeStream> {
            self.seen.send(Seen::Opened).unwrap();
            Ok(FakeStream {
                seen: self.seen.clone(),
                script: self.script.clone(),
            })
        }

        fn send(&mut self, _batch: &[u8], _timeout: Duration) -> Result<PendingSend> {
            Ok(Box::new(|| Ok(())))
        }
    }

    impl BatchStream for FakeStream {
        fn write(&mut self, batch: &[u8]) -> std::result::Result<(), WriteError> {
            if let Some(gate) = &self.script.gate {
                self.seen.send(Seen::AtGate).unwrap();
                gate.recv().unwrap();
            }
            let scripted = {
                let mut writes = self.script.writes.lock();
                if writes.is_empty() {
                    Ok(())
                } else {
                    writes.remove(0)
                }
            };
            scripted?;
            let decoded = pb::EnvelopeBatch::parse_from_bytes(batch).unwrap();
            self.seen.send(Seen::Batch(decoded.batch)).unwrap();
            Ok(())
        }

        fn finish(self, _deadline: Instant) -> Result<()> {
            self.seen.send(Seen::Finished).unwrap();
            Ok(())
        }
    }

    struct Harness {
        data: Sender<Queued>,
        control: Sender<Control>,
        seen: Receiver<Seen>,
        counters: Arc<Counters>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    const WAIT: Duration = Duration::from_secs(10);

    fn settings() -> Settings {
        Settings {
            batch_max_envelopes: 3,
            batch_max_bytes: 1 << 20,
            flush_interval: Duration::from_secs(3600),
            global_tags: vec![],
        }
    }

    fn start(settings: Settings, script: Script) -> Harness {
        let (data_tx, data_rx) = bounded(1000);
        let (control_tx, control_rx) = unbounded();
        let (seen_tx, seen_rx) = unbounded();
        let counters = Arc::new(Counters::default());
        let transport = FakeTransport {
            seen: seen_tx,
            script,
        };
        let worker = Worker::new(transport, data_rx, control_rx, settings, counters.clone());
        Harness {
            data: data_tx,
            control: control_tx,
            seen: seen_rx,
            counters,
            thread: Some(std::thread::spawn(move || worker.run())),
        }
    }

    fn log(n: usize) -> Queued {
        let mut envelope = crate::Envelope::log(format!("{n}")).build().into_proto();
        envelope.timestamp = n as i64;
        Queued { envelope }
    }

    impl Harness {
        fn emit(&self, n: usize) {
            self.data.send(log(n)).unwrap();
        }

        fn flush(&self) -> Result<()> {
            let (reply, result) = bounded(1);
            self.control.send(Control::Flush(reply)).unwrap();
            result.recv_timeout(WAIT).unwrap()
        }

        fn close(mut self) -> Vec<Seen> {
            let (reply, result) = bounded(1);
            self.control
                .send(Control::Close {
                    deadline: Instant::now() + WAIT,
                    reply,
                })
                .unwrap();
            result.recv_timeout(WAIT).unwrap().unwrap();
            self.thread.take().unwrap().join().unwrap();
            self.seen.try_iter().collect()
        }

        /// The next batch the fake agent saw, as timestamps.
        fn next_batch(&self) -> Vec<i64> {
            loop {
                match self.seen.recv_timeout(WAIT).unwrap() {
                    Seen::Batch(batch) => return batch.iter().map(|e| e.timestamp).collect(),
                    Seen::Opened | Seen::AtGate | Seen::Finished => continue,
                }
            }
        }
    }

    #[test]
    fn a_batch_closes_at_the_envelope_count() {
        let harness = start(settings(), Script::default());
        for n in 0..7 {
            harness.emit(n);
        }
        assert_eq!(harness.next_batch(), vec![0, 1, 2]);
        assert_eq!(harness.next_batch(), vec![3, 4, 5]);
        harness.flush().unwrap();
        assert_eq!(harness.next_batch(), vec![6]);
        harness.close();
    }

    #[test]
    fn a_batch_closes_before_it_would_exceed_the_byte_limit() {
        let one = framed_len(log(0).envelope.compute_size() as usize);
        let settings = Settings {
            batch_max_envelopes: 100,
            batch_max_bytes: one * 2 + one / 2,
            ..settings()
        };
        let harness = start(settings, Script::default());
        for n in 0..5 {
            harness.emit(n);
        }
        harness.flush().unwrap();
        assert_eq!(harness.next_batch(), vec![0, 1]);
        assert_eq!(harness.next_batch(), vec![2, 3]);
        assert_eq!(harness.next_batch(), vec![4]);
        harness.close();
    }

    #[test]
    fn a_partial_batch_is_written_when_the_flush_interval_passes() {
        let settings = Settings {
            batch_max_envelopes: 100,
            flush_interval: Duration::from_millis(20),
            ..settings()
        };
        let harness = start(settings, Script::default());
        harness.emit(1);
        // No flush: only the interval can write it.
        assert_eq!(harness.next_batch(), vec![1]);
        harness.close();
    }

    #[test]
    fn flush_replies_only_after_the_write_was_accepted() {
        let (release, gate) = bounded(0);
        let script = Script {
            gate: Some(gate),
            ..Script::default()
        };
        let harness = start(settings(), script);
        harness.emit(1);
        let (reply, result) = bounded(1);
        harness.control.send(Control::Flush(reply)).unwrap();
        assert!(matches!(harness.seen.recv_timeout(WAIT), Ok(Seen::Opened)));
        assert!(matches!(harness.seen.recv_timeout(WAIT), Ok(Seen::AtGate)));
        // The write is held at the gate: the flush cannot have replied yet.
        assert!(result.try_recv().is_err());
        assert_eq!(harness.counters.snapshot(0).in_flight, 1);
        release.send(()).unwrap();
        result.recv_timeout(WAIT).unwrap().unwrap();
        assert_eq!(harness.next_batch(), vec![1]);
        assert_eq!(harness.counters.sent.load(Relaxed), 1);
        drop(release);
        harness.close();
    }

    #[test]
    fn a_failed_write_on_a_used_stream_is_retried_once_on_a_new_stream() {
        let script = Script::default();
        let harness = start(settings(), script.clone());
        harness.emit(1);
        harness.flush().unwrap();
        script
            .writes
            .lock()
            .push(Err(WriteError::StreamEnded(Error::Closed)));
        harness.emit(2);
        harness.flush().unwrap();
        let seen = harness.close();
        let opened = seen.iter().filter(|s| matches!(s, Seen::Opened)).count();
        assert_eq!(opened, 2, "{seen:?}");
        let batches: Vec<_> = seen
            .iter()
            .filter_map(|s| match s {
                Seen::Batch(b) => Some(b[0].timestamp),
                _ => None,
            })
            .collect();
        assert_eq!(batches, vec![1, 2]);
    }

    #[test]
    fn a_failed_write_on_a_new_stream_drops_and_counts_the_batch() {
        let script = Script::default();
        script
            .writes
            .lock()
            .push(Err(WriteError::StreamEnded(Error::Closed)));
        let harness = start(settings(), script);
        harness.emit(1);
        harness.emit(2);
        harness.flush().unwrap();
        let stats = harness.counters.snapshot(0);
        assert_eq!(
            (stats.dropped.write_failed, stats.in_flight, stats.sent),
            (2, 0, 0)
        );
        assert_eq!(stats.errors, 1);
        assert_eq!(stats.last_error.as_deref(), Some("the client is closed"));
        harness.emit(3);
        harness.flush().unwrap();
        assert_eq!(harness.next_batch(), vec![3]);
        assert_eq!(harness.counters.snapshot(0).reconnects, 1);
        harness.close();
    }

    #[test]
    fn a_write_that_may_have_reached_the_agent_is_not_retried() {
        let script = Script::default();
        let harness = start(settings(), script.clone());
        harness.emit(1);
        harness.flush().unwrap();
        script
            .writes
            .lock()
            .push(Err(WriteError::Uncertain(Error::Closed)));
        harness.emit(2);
        harness.flush().unwrap();
        assert_eq!(harness.counters.snapshot(0).dropped.write_failed, 1);
        let seen = harness.close();
        let opened = seen.iter().filter(|s| matches!(s, Seen::Opened)).count();
        assert_eq!(opened, 1, "{seen:?}");
    }

    #[test]
    fn global_tags_are_merged_and_envelope_tags_win() {
        let settings = Settings {
            global_tags: vec![
                ("deployment".into(), "cf".into()),
                ("k".into(), "global".into()),
            ],
            ..settings()
        };
        let harness = start(settings, Script::default());
        let mut queued = log(1);
        queued.envelope.tags.insert("k".into(), "mine".into());
        harness.data.send(queued).unwrap();
        harness.flush().unwrap();
        let seen = harness.close();
        let batch = seen.iter().find_map(|s| match s {
            Seen::Batch(b) => Some(b.clone()),
            _ => None,
        });
        let tags = &batch.unwrap()[0].tags;
        assert_eq!(tags["deployment"], "cf");
        assert_eq!(tags["k"], "mine");
    }

    #[test]
    fn close_writes_what_is_queued_then_finishes_the_stream() {
        let harness = start(settings(), Script::default());
        harness.emit(1);
        let seen = harness.close();
        assert!(
            matches!(
                seen.as_slice(),
                [Seen::Opened, Seen::Batch(_), Seen::Finished]
            ),
            "{seen:?}"
        );
    }

    #[test]
    fn varint_lengths() {
        assert_eq!(varint_len(0), 1);
        assert_eq!(varint_len(127), 1);
        assert_eq!(varint_len(128), 2);
        assert_eq!(varint_len(16_383), 2);
        assert_eq!(varint_len(16_384), 3);
        assert_eq!(varint_len(u64::MAX), 10);
    }
}
