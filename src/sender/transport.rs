//! What the sender loop asks of the network, and nothing more: open a
//! `BatchSender` stream, write encoded batches on it one at a time,
//! half-close it and learn how it ended, start a unary `Send`, and leave a
//! connection that stopped answering. The gRPC
//! implementation is `crate::grpc`; the loop's tests use in-memory fakes.

use std::sync::Arc;
use std::task::{Context, Poll, Wake};
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::error::{Error, Result};

/// Opens `BatchSender` streams and starts unary sends.
pub(crate) trait Transport {
    /// The stream type; dropping one cancels its call.
    type Stream: BatchStream;

    /// A unary call under way; dropping one cancels it.
    type Call: UnaryCall;

    /// Opens a new stream.
    fn open(&mut self) -> Result<Self::Stream>;

    /// Starts a unary `Send` of an encoded `EnvelopeBatch`, which gives up
    /// after `timeout`; the call owns the batch (no copy of it is made).
    fn send(&mut self, batch: Vec<u8>, timeout: Duration) -> Result<Self::Call>;

    /// Leaves the connection: streams opened from now on use a new one.
    /// Ending a call keeps its connection, so a connection that went silent
    /// (a peer that vanished, lost NAT state) would carry every new stream.
    fn abandon_connection(&mut self);

    /// What a wait that ran out says, for the operator: which wait it was,
    /// and the connection it waited on, numbered from 0 by the connections
    /// left before it (the one in use, or one already left).
    fn stalled(&self, stall: Stall, connection: u64) -> Error;
}

/// A wait on the agent that ran out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Stall {
    /// A write was not accepted within the write timeout.
    Write(Duration),
    /// A half-closed stream did not end within the confirm timeout.
    Confirmation(Duration),
    /// Close's deadline came while a write had waited this long, less
    /// than the write timeout: the write did not fail, close ran out.
    Close { waited: Duration },
}

/// Why a write (or a stream's end) failed, which decides what happens to
/// its batches.
#[derive(Debug)]
pub(crate) enum WriteError {
    /// The stream had already ended: the agent never got the batch.
    StreamEnded(Error),
    /// The agent refused a message as too large (RESOURCE_EXHAUSTED).
    TooLarge(Error),
    /// The write was cut short (timeout, abort): the agent may have it.
    Uncertain(Error),
}

impl WriteError {
    pub(crate) fn error(&self) -> &Error {
        match self {
            WriteError::StreamEnded(error)
            | WriteError::TooLarge(error)
            | WriteError::Uncertain(error) => error,
        }
    }

    pub(crate) fn into_error(self) -> Error {
        match self {
            WriteError::StreamEnded(error)
            | WriteError::TooLarge(error)
            | WriteError::Uncertain(error) => error,
        }
    }
}

/// One client stream of encoded `EnvelopeBatch` messages.
///
/// One write is in flight at a time: the loop starts a write, builds the
/// next batch while the transport sends it, and starts the next write once
/// [`poll_written`](Self::poll_written) says the last one was accepted.
pub(crate) trait BatchStream {
    /// Half-closing a stream yields this; it resolves when the call ends.
    type Closing: Closing;

    /// Starts writing one encoded batch, without waiting for it; the
    /// previous write has been accepted.
    fn start_write(&mut self, batch: &[u8]) -> std::result::Result<(), WriteError>;

    /// Ready once the write in flight has been accepted by the transport, or
    /// has failed.
    fn poll_written(
        &mut self,
        context: &mut Context<'_>,
    ) -> Poll<std::result::Result<(), WriteError>>;

    /// Starts a half-close without waiting for the agent's answer.
    fn half_close(self) -> Self::Closing;

    /// After a failed write: resolves with the status the call ended with,
    /// which may say more than the write's error (a message refused as too
    /// large). The loop polls it; it never waits for it.
    fn into_end(self) -> Self::Closing;
}

/// A unary call waiting for the agent's answer.
pub(crate) trait UnaryCall {
    /// Ready once the agent answered, or the call failed or timed out.
    fn poll_done(&mut self, context: &mut Context<'_>) -> Poll<Result<()>>;
}

/// A half-closed stream waiting for the agent to end the call.
pub(crate) trait Closing {
    /// Ready with `Ok` once the agent ended the call cleanly (after reading
    /// everything), or with the error it ended it with.
    fn poll_end(&mut self, context: &mut Context<'_>) -> Poll<std::result::Result<(), WriteError>>;
}

/// Turns the transport's wake-ups into messages a `select!` can wait on.
pub(crate) struct ChannelWaker(pub Sender<()>);

impl Wake for ChannelWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // A full channel already holds a wake-up.
        let _ = self.0.try_send(());
    }
}
