//! `send`: a unary `Send` call beside the queue, held within the same byte
//! budget, encoded on the caller's thread and answered through the sender
//! thread.

use std::time::{Duration, Instant};

use crossbeam_channel::bounded;

use crate::batch::BatchBuilder;
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::sender::{Control, deadline_after};
use crate::stats::DropReason;

use super::CLOSE_MARGIN;
use super::handle::IngressClient;
use super::start::Inner;
// Named in the docs of `send`.
#[cfg(doc)]
use crate::stats::Stats;

impl IngressClient {
    /// Sends envelopes at once with the unary `Send` call and waits for the
    /// agent to confirm them, at most `timeout`. Client-wide tags are added.
    ///
    /// It does not wait for envelopes queued by `emit`, and it is not part of
    /// emit's counts in [`Stats`]; a failure counts in `errors`. It returns
    /// within `timeout` plus [`CLOSE_MARGIN`]: past its deadline it waits
    /// that much more for gRPC to let go of the batch, so the bytes it held
    /// are back in `queued_bytes` when it returns. gRPC does not retry it:
    /// a call that meets the agent restarting fails (`UNAVAILABLE`), and
    /// sending it again is the caller's choice, since the agent may have
    /// read it.
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// use loggregator::Envelope;
    /// use std::time::Duration;
    ///
    /// client.send(vec![Envelope::event("deploy", "v42").into()], Duration::from_secs(2))?;
    /// # Ok::<(), loggregator::Error>(())
    /// ```
    pub fn send(&self, envelopes: Vec<Envelope>, timeout: Duration) -> Result<()> {
        let inner = &*self.inner;
        let started = Instant::now();
        let deadline = deadline_after(timeout);
        if inner.queue.is_closed() {
            return Err(Error::Closed);
        }
        let count = envelopes.len() as u64;
        let timed_out = || Error::Timeout {
            waited: started.elapsed(),
            undelivered: count,
        };
        let (batch, size) = inner.prepare_batch(envelopes)?;
        // Held within the byte budget, like emitted envelopes, from before
        // gRPC copies it until the call ends: concurrent sends cannot grow
        // memory past it. Waiting for room, the caller holds the batch in
        // place of its envelopes, no more.
        let Some(reservation) = inner.queue.reserve_until(size, deadline) else {
            let error = if inner.queue.is_closed() {
                Error::Closed
            } else {
                timed_out()
            };
            inner.counters.record_error(&error);
            return Err(error);
        };
        let (reply, replied) = bounded(1);
        inner
            .control
            .send(Control::Send {
                batch,
                reservation,
                deadline,
                reply,
            })
            .map_err(|_| Error::Closed)?;
        // The sender thread answers when the agent does; the call carries
        // the same deadline. Past it the sender thread ends the call and
        // gives its bytes back before it answers: waiting for that answer a
        // little longer leaves nothing held on return.
        let answer = replied
            .recv_deadline(deadline)
            .or_else(|_| replied.recv_timeout(CLOSE_MARGIN));
        let result = match answer {
            Ok(Err(Error::Timeout { .. })) => Err(timed_out()),
            // gRPC's own deadline, the same: said as the caller's timeout.
            Ok(Err(Error::Agent { status, .. })) if status.starts_with("DEADLINE_EXCEEDED") => {
                Err(timed_out())
            }
            Ok(answer) => answer,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(timed_out()),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return Err(Error::Closed),
        };
        result.inspect_err(|error| inner.counters.record_error(error))
    }
}

impl Inner {
    /// The `EnvelopeBatch` a unary send writes, encoded, and its size. Each
    /// envelope's own encoding is framed with what the client adds to it
    /// (the default source where it names none, the client's tags), as the
    /// sender thread frames emitted envelopes: nothing is decoded or
    /// encoded again.
    fn prepare_batch(&self, envelopes: Vec<Envelope>) -> Result<(Vec<u8>, usize)> {
        // Grown by doubling up to the cap, no further.
        let mut builder = BatchBuilder::new(self.batch_max_bytes);
        for envelope in envelopes {
            let encoded = envelope.into_encoded();
            if encoded.accidental_reset {
                return Err(Error::Rejected(
                    DropReason::ZeroCounter.describe().to_string(),
                ));
            }
            if encoded.unencodable {
                return Err(Error::Rejected(
                    "an envelope is larger than protobuf can encode".to_string(),
                ));
            }
            let added = self.stamp.added_len(&encoded);
            builder.push(&encoded, &self.stamp, added);
        }
        let size = builder.encoded_len();
        if size > self.batch_max_bytes {
            return Err(Error::Rejected(format!(
                "the batch encodes to {size} bytes, more than batch_max_bytes ({})",
                self.batch_max_bytes
            )));
        }
        Ok((builder.into_bytes(), size))
    }

    /// The bytes `envelope` takes in a unary send's batch once the client's
    /// tags and source are added.
    pub(super) fn framed_for_send(&self, envelope: &Envelope) -> usize {
        let encoded = envelope.encoded();
        crate::wire::framed_len(encoded.bytes.len() + self.stamp.added_len(encoded))
    }
}
