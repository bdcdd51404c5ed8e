//! The faults a test can have the spy show: how it ends a stream, a stream
//! it fails at its next message, and reading paused. (Reading slowly is in
//! `pace.rs`; going away and coming back is the agent's `shutdown` and
//! `restart`.)

use std::task::{Context, Poll, Waker};

use grpcio::{RpcStatus, RpcStatusCode};
use parking_lot::Mutex;

/// How the spy ends a stream once the client half-closes it.
///
/// ```
/// use loggregator::spy::StreamEnd;
///
/// assert_eq!(StreamEnd::default(), StreamEnd::Eof);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StreamEnd {
    /// Status UNKNOWN with message "EOF", as the real agents answer.
    #[default]
    Eof,
    /// Status OK with the empty response.
    Ok,
    /// An error status with this message, an agent that failed.
    Status(StatusCode, String),
}

/// gRPC status codes the spy can end a call with.
///
/// ```
/// use loggregator::spy::StatusCode;
///
/// assert_ne!(StatusCode::Unavailable, StatusCode::ResourceExhausted);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusCode {
    /// UNKNOWN.
    Unknown,
    /// INTERNAL.
    Internal,
    /// UNAVAILABLE, as from an agent shutting down.
    Unavailable,
    /// RESOURCE_EXHAUSTED, as for a message over the agent's size limit.
    ResourceExhausted,
}

impl StatusCode {
    fn status(self, message: String) -> RpcStatus {
        let code = match self {
            StatusCode::Unknown => RpcStatusCode::UNKNOWN,
            StatusCode::Internal => RpcStatusCode::INTERNAL,
            StatusCode::Unavailable => RpcStatusCode::UNAVAILABLE,
            StatusCode::ResourceExhausted => RpcStatusCode::RESOURCE_EXHAUSTED,
        };
        RpcStatus::with_message(code, message)
    }
}

impl StreamEnd {
    /// The status that ends a stream this way, or `None` for OK.
    fn failure(self) -> Option<RpcStatus> {
        match self {
            StreamEnd::Ok => None,
            StreamEnd::Eof => Some(RpcStatus::with_message(
                RpcStatusCode::UNKNOWN,
                "EOF".into(),
            )),
            StreamEnd::Status(code, message) => Some(code.status(message)),
        }
    }
}

/// The faults in force, which every call reads.
#[derive(Default)]
pub(super) struct Faults {
    stream_end: Mutex<StreamEnd>,
    /// Ends the stream that reads the next message, instead of recording it.
    fail_next: Mutex<Option<(StatusCode, String)>>,
    reading: Mutex<Gate>,
}

/// Holds stream readers while reading is paused.
#[derive(Default)]
struct Gate {
    paused: bool,
    waiting: Vec<Waker>,
}

impl Faults {
    pub(super) fn set_stream_end(&self, end: StreamEnd) {
        *self.stream_end.lock() = end;
    }

    /// How a stream the client half-closed ends now: `None` for OK, or
    /// the status it fails with.
    pub(super) fn end_of_stream(&self) -> Option<RpcStatus> {
        let end = self.stream_end.lock().clone();
        end.failure()
    }

    pub(super) fn fail_next_stream(&self, code: StatusCode, message: String) {
        *self.fail_next.lock() = Some((code, message));
    }

    /// The status to fail the stream that has just read a message with,
    /// once: the next stream to read one is failed no more.
    pub(super) fn take_failure(&self) -> Option<RpcStatus> {
        let failure = self.fail_next.lock().take();
        failure.map(|(code, text)| code.status(text))
    }

    pub(super) fn poll_reading(&self, context: &mut Context<'_>) -> Poll<()> {
        let mut gate = self.reading.lock();
        if gate.paused {
            gate.waiting.push(context.waker().clone());
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }

    pub(super) fn set_paused(&self, paused: bool) {
        let mut gate = self.reading.lock();
        gate.paused = paused;
        if !paused {
            gate.waiting.drain(..).for_each(Waker::wake);
        }
    }
}
