//! grpcio's client-stream futures as the polled streams the sender loop
//! drives, and what a stream's end says of the writes it carried.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use futures::Sink;
use grpcio::{ClientCStreamReceiver, ClientCStreamSender, GrpcSlice, RpcStatusCode, WriteFlags};

use crate::error::Error;
use crate::proto::ingress::BatchSenderResponse;
use crate::sender::{BatchStream, Closing, WriteError};

use super::ChannelSettings;
use super::describe::agent_error;

pub(crate) struct GrpcStream {
    pub(super) sink: ClientCStreamSender<GrpcSlice>,
    pub(super) response: ClientCStreamReceiver<BatchSenderResponse>,
    pub(super) settings: Arc<ChannelSettings>,
    /// Its channel's: a write accepted means the connection was made.
    pub(super) connected: Arc<AtomicBool>,
}

impl GrpcStream {
    /// A write failed: sorted by the call's status if the error carries it.
    /// The loop then polls [`BatchStream::into_end`] for the status itself,
    /// which is more useful than the sink's "call finished".
    fn failed(&self, error: grpcio::Error) -> WriteError {
        classify(agent_error(&self.settings, &error), &error)
    }
}

impl BatchStream for GrpcStream {
    type Closing = GrpcClosing;

    fn start_write(&mut self, batch: &[u8]) -> std::result::Result<(), WriteError> {
        let message = (GrpcSlice::from(batch), WriteFlags::default());
        // The previous write was accepted, so the sink is ready at once.
        let mut context = Context::from_waker(Waker::noop());
        let sink = Pin::new(&mut self.sink);
        let started = match sink.poll_ready(&mut context) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.sink).start_send(message),
            Poll::Ready(Err(error)) => Err(error),
            Poll::Pending => Err(grpcio::Error::RpcFinished(None)),
        };
        started.map_err(|error| self.failed(error))
    }

    fn poll_written(
        &mut self,
        context: &mut Context<'_>,
    ) -> Poll<std::result::Result<(), WriteError>> {
        match Pin::new(&mut self.sink).poll_flush(context) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => {
                self.connected.store(true, Ordering::Relaxed);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(self.failed(error))),
        }
    }

    fn half_close(self) -> GrpcClosing {
        GrpcClosing {
            stream: self,
            half_close: HalfClose::NotSent,
        }
    }

    fn into_end(self) -> GrpcClosing {
        // The call has ended: there is nothing to half-close.
        GrpcClosing {
            stream: self,
            half_close: HalfClose::AfterFailedWrite,
        }
    }
}

/// A half-closed (or failed) stream, polled by the sender loop until the
/// call's status arrives.
pub(crate) struct GrpcClosing {
    stream: GrpcStream,
    half_close: HalfClose,
}

/// Whether the agent heard the client's half-close before it ended the call.
#[derive(Clone, Copy, PartialEq)]
enum HalfClose {
    /// Not started yet.
    NotSent,
    /// Started, and not yet accepted by gRPC.
    InFlight,
    /// Sent: the call's status answers it.
    Sent,
    /// The call had ended before it: whatever the status, the agent ended
    /// the stream without having read to its end.
    CallEndedFirst,
    /// None is sent: a write failed, and its own error stands unless the
    /// status says more.
    AfterFailedWrite,
}

impl Closing for GrpcClosing {
    fn poll_end(&mut self, context: &mut Context<'_>) -> Poll<std::result::Result<(), WriteError>> {
        let stream = &mut self.stream;
        if self.half_close == HalfClose::NotSent {
            // Before the half-close goes out: has the call ended already?
            // Then the agent ended the stream on its own.
            if let Poll::Ready(ended) = Pin::new(&mut stream.response).poll(context) {
                self.half_close = HalfClose::CallEndedFirst;
                return Poll::Ready(self.ended(ended));
            }
            self.half_close = HalfClose::InFlight;
        }
        if self.half_close == HalfClose::InFlight {
            self.half_close = match Pin::new(&mut stream.sink).poll_close(context) {
                Poll::Ready(Ok(())) => HalfClose::Sent,
                // The call ended while the half-close was on its way (the
                // agent may have answered it already): the half-close's
                // own outcome, which wakes the loop, says whether it went
                // out.
                Poll::Pending | Poll::Ready(Err(grpcio::Error::RpcFinished(_))) => {
                    return Poll::Pending;
                }
                // gRPC failed the half-close: the call had ended before it.
                Poll::Ready(Err(_)) => HalfClose::CallEndedFirst,
            };
        }
        match Pin::new(&mut stream.response).poll(context) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(ended) => Poll::Ready(self.ended(ended)),
        }
    }
}

impl GrpcClosing {
    /// What the call's end says of the stream's writes.
    fn ended(
        &self,
        ended: grpcio::Result<BatchSenderResponse>,
    ) -> std::result::Result<(), WriteError> {
        let settings = &self.stream.settings;
        match ended {
            Err(error) if !is_clean_end(&error) => {
                Err(classify(agent_error(settings, &error), &error))
            }
            // OK, or UNKNOWN "EOF", before the agent had the half-close:
            // it did not read to the end, so this confirms nothing, and
            // what the stream carried is written again.
            _ if self.half_close == HalfClose::CallEndedFirst => {
                Err(WriteError::StreamEnded(Error::Agent {
                    addr: settings.addr.clone(),
                    status: "the agent ended the stream cleanly before the client half-closed \
                             it, which confirms none of its writes"
                        .to_string(),
                    hint: None,
                }))
            }
            _ => Ok(()),
        }
    }
}

/// Sorts a failed call by what its status means for the batches it carried.
fn classify(described: Error, error: &grpcio::Error) -> WriteError {
    match status_code(error) {
        Some(RpcStatusCode::RESOURCE_EXHAUSTED) => WriteError::TooLarge(described),
        _ => WriteError::StreamEnded(described),
    }
}

fn status_code(error: &grpcio::Error) -> Option<RpcStatusCode> {
    match error {
        grpcio::Error::RpcFailure(status) | grpcio::Error::RpcFinished(Some(status)) => {
            Some(status.code())
        }
        _ => None,
    }
}

/// The real agents end a half-closed stream with UNKNOWN "EOF" once they
/// have read everything; it confirms the stream just as OK does.
fn is_clean_end(error: &grpcio::Error) -> bool {
    match error {
        grpcio::Error::RpcFailure(status) | grpcio::Error::RpcFinished(Some(status)) => {
            status.code() == RpcStatusCode::OK
                || (status.code() == RpcStatusCode::UNKNOWN && status.message() == "EOF")
        }
        _ => false,
    }
}
