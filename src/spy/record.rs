//! What the spy read: every envelope and batch (or, counting only, how
//! many and how large), the calls started and the streams ended, and the
//! waits of tests for them.

use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::proto::envelope::Envelope;

/// Which RPC carried a batch.
///
/// ```
/// use loggregator::spy::Rpc;
///
/// assert_ne!(Rpc::BatchSender, Rpc::Send);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rpc {
    /// `Sender`: one envelope per message.
    Sender,
    /// `BatchSender`: one `EnvelopeBatch` per message.
    BatchSender,
    /// `Send`: a unary `EnvelopeBatch`.
    Send,
}

/// One message the spy read.
///
/// ```
/// # let certs = loggregator::spy::TestCerts::generate()?;
/// # let agent = loggregator::spy::SpyAgent::start(&certs)?;
/// for batch in agent.batches() {
///     println!("{:?} #{}: {} envelopes, {} bytes", batch.rpc, batch.stream, batch.envelopes, batch.encoded_bytes);
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedBatch {
    /// The RPC it came on.
    pub rpc: Rpc,
    /// Which call it came on, numbered from 1 in the order calls started.
    pub stream: u64,
    /// How many envelopes it held.
    pub envelopes: usize,
    /// Its encoded size.
    pub encoded_bytes: usize,
}

/// Everything the spy read, in order.
#[derive(Default)]
pub(super) struct Record {
    pub(super) envelopes: Vec<Envelope>,
    pub(super) batches: Vec<ReceivedBatch>,
    pub(super) counts: SpyCounts,
    pub(super) calls_started: u64,
    pub(super) streams_ended: u64,
}

/// How much the spy has read, in every mode.
///
/// ```
/// # let certs = loggregator::spy::TestCerts::generate()?;
/// let agent = loggregator::spy::SpyAgent::builder().count_only().start(&certs)?;
/// let counts = agent.counts();
/// assert_eq!((counts.envelopes, counts.messages, counts.bytes), (0, 0, 0));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpyCounts {
    /// Envelopes read.
    pub envelopes: u64,
    /// gRPC messages read (batches, or single envelopes on `Sender`).
    pub messages: u64,
    /// Encoded bytes of those messages.
    pub bytes: u64,
}

/// The record, and the condition that wakes those waiting on it.
#[derive(Default)]
pub(super) struct Recorder {
    record: Mutex<Record>,
    changed: Condvar,
}

impl Recorder {
    /// Numbers a new call, from 1.
    pub(super) fn start_call(&self) -> u64 {
        let mut record = self.record.lock();
        record.calls_started += 1;
        record.calls_started
    }

    /// Records one message and what it held.
    pub(super) fn read(
        &self,
        rpc: Rpc,
        stream: u64,
        envelopes: Vec<Envelope>,
        encoded_bytes: usize,
    ) {
        let mut record = self.record.lock();
        record.batches.push(ReceivedBatch {
            rpc,
            stream,
            envelopes: envelopes.len(),
            encoded_bytes,
        });
        record.counts.envelopes += envelopes.len() as u64;
        record.counts.messages += 1;
        record.counts.bytes += encoded_bytes as u64;
        record.envelopes.extend(envelopes);
        self.changed.notify_all();
    }

    /// Count-only mode: counts a message without keeping it.
    pub(super) fn count(&self, envelopes: u64, encoded_bytes: usize) {
        let mut record = self.record.lock();
        record.counts.envelopes += envelopes;
        record.counts.messages += 1;
        record.counts.bytes += encoded_bytes as u64;
        self.changed.notify_all();
    }

    pub(super) fn end_stream(&self) {
        self.record.lock().streams_ended += 1;
        self.changed.notify_all();
    }

    /// What `look` reads off the record as it stands.
    pub(super) fn look<T>(&self, look: impl FnOnce(&Record) -> T) -> T {
        look(&self.record.lock())
    }

    /// Waits until `done` holds for the record or the timeout passes;
    /// returns whether it held.
    pub(super) fn wait_until(&self, timeout: Duration, done: impl Fn(&Record) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut record = self.record.lock();
        while !done(&record) {
            if self.changed.wait_until(&mut record, deadline).timed_out() {
                return done(&record);
            }
        }
        true
    }
}
