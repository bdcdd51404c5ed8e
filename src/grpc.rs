//! The gRPC side: an mTLS grpcio channel, the Ingress method descriptors, and
//! blocking waits on grpcio's futures that give up at a deadline or on abort.

use std::future::Future;
use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, at, bounded, select};
use futures::Sink;
use grpcio::{
    CallOption, ChannelBuilder, ChannelCredentialsBuilder, Client, ClientCStreamReceiver,
    ClientCStreamSender, EnvBuilder, Environment, GrpcSlice, Marshaller, MessageReader, Method,
    MethodType, RpcStatusCode, WriteFlags,
};

use crate::error::{Error, Result};
use crate::proto::ingress::{BatchSenderResponse, SendResponse};
use crate::sender::{
    BatchStream, ChannelWaker, Closing, LONGEST_WAIT, PendingSend, Transport, WriteError,
    deadline_after,
};
use crate::tls::TlsConfig;

/// Requests are `EnvelopeBatch` messages the sender thread has already
/// encoded; they pass through as bytes.
const RAW: Marshaller<GrpcSlice> = Marshaller {
    ser: raw_ser,
    de: raw_de,
};

fn raw_ser(message: &GrpcSlice, out: &mut GrpcSlice) -> grpcio::Result<()> {
    *out = message.clone();
    Ok(())
}

fn raw_de(mut reader: MessageReader) -> grpcio::Result<GrpcSlice> {
    let mut bytes = Vec::new();
    reader
        .read_to_end(&mut bytes)
        .map_err(|e| grpcio::Error::Codec(Box::new(e)))?;
    Ok(GrpcSlice::from(bytes))
}

/// `loggregator.v2.Ingress/BatchSender`, client side.
const BATCH_SENDER: Method<GrpcSlice, BatchSenderResponse> = Method {
    ty: MethodType::ClientStreaming,
    name: "/loggregator.v2.Ingress/BatchSender",
    req_mar: RAW,
    resp_mar: Marshaller {
        ser: grpcio::pb_ser,
        de: grpcio::pb_de,
    },
};

/// `loggregator.v2.Ingress/Send`, client side.
const SEND: Method<GrpcSlice, SendResponse> = Method {
    ty: MethodType::Unary,
    name: "/loggregator.v2.Ingress/Send",
    req_mar: RAW,
    resp_mar: Marshaller {
        ser: grpcio::pb_ser,
        de: grpcio::pb_de,
    },
};

/// What the channel is built from.
#[derive(Clone, Debug)]
pub(crate) struct ChannelSettings {
    pub addr: String,
    pub tls: TlsConfig,
    pub keepalive: Option<Duration>,
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
}

/// How long the agent may take to answer a keepalive ping.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

pub(crate) struct GrpcTransport {
    client: Client,
    waiter: Waiter,
    addr: String,
    server_name: String,
    // Declared last so it is dropped after the channel that uses it.
    _env: Arc<Environment>,
}

impl GrpcTransport {
    /// Builds the channel; it connects on the first call. `abort` ends every
    /// wait at once when it receives or disconnects.
    pub(crate) fn new(settings: &ChannelSettings, abort: Receiver<()>) -> GrpcTransport {
        let env = Arc::new(
            EnvBuilder::new()
                .cq_count(1)
                .name_prefix(format!("{}grpc", crate::THREAD_PREFIX))
                .build(),
        );
        let tls = &settings.tls;
        let credentials = ChannelCredentialsBuilder::new()
            .root_cert(tls.ca_pem().to_vec())
            .cert(tls.cert_pem().to_vec(), tls.key_pem().to_vec())
            .build();
        // The channel reconnects on the client's own schedule, so a retry
        // after our backoff finds a connection attempt made, not one pending.
        let mut channel = ChannelBuilder::new(env.clone())
            .override_ssl_target(tls.verified_name())
            .initial_reconnect_backoff(settings.reconnect_initial)
            .max_reconnect_backoff(settings.reconnect_max)
            .set_credentials(credentials);
        if let Some(interval) = settings.keepalive {
            channel = channel
                .keepalive_time(interval)
                .keepalive_timeout(KEEPALIVE_TIMEOUT)
                .keepalive_permit_without_calls(false);
        }
        let channel = channel.connect(&settings.addr);
        GrpcTransport {
            client: Client::new(channel),
            waiter: Waiter::new(abort),
            addr: settings.addr.clone(),
            server_name: tls.verified_name().to_string(),
            _env: env,
        }
    }

    fn error(&self, error: grpcio::Error) -> Error {
        agent_error(&self.addr, &self.server_name, &error)
    }
}

impl Transport for GrpcTransport {
    type Stream = GrpcStream;

    fn open(&mut self) -> Result<GrpcStream> {
        let (sink, response) = self
            .client
            .client_streaming(&BATCH_SENDER, CallOption::default())
            .map_err(|e| self.error(e))?;
        Ok(GrpcStream {
            sink,
            response,
            waiter: self.waiter.clone(),
            addr: self.addr.clone(),
            server_name: self.server_name.clone(),
        })
    }

    fn send(&mut self, batch: &[u8], timeout: Duration) -> Result<PendingSend> {
        let request = GrpcSlice::from(batch);
        let response = self
            .client
            .unary_call_async(
                &SEND,
                &request,
                CallOption::default().timeout(timeout.min(LONGEST_WAIT)),
            )
            .map_err(|e| self.error(e))?;
        let (addr, server_name) = (self.addr.clone(), self.server_name.clone());
        // The call carries its own deadline, so this wait ends by then.
        Ok(Box::new(move || {
            futures::executor::block_on(response)
                .map(drop)
                .map_err(|e| agent_error(&addr, &server_name, &e))
        }))
    }
}

pub(crate) struct GrpcStream {
    sink: ClientCStreamSender<GrpcSlice>,
    response: ClientCStreamReceiver<BatchSenderResponse>,
    waiter: Waiter,
    addr: String,
    server_name: String,
}

/// How long to wait for the status of a call that has already ended.
const END_STATUS_WAIT: Duration = Duration::from_secs(1);

impl GrpcStream {
    /// A write failed because the call ended: sorts it by the call's status.
    /// On error the caller drops the stream, which cancels the call.
    fn failed(&mut self, error: grpcio::Error) -> WriteError {
        let error = self.ended(error);
        classify(agent_error(&self.addr, &self.server_name, &error), &error)
    }

    /// The call has ended: its status (from the response side) says why,
    /// which is more useful than the sink's "call finished".
    fn ended(&mut self, fallback: grpcio::Error) -> grpcio::Error {
        match self
            .waiter
            .wait(&mut self.response, deadline_after(END_STATUS_WAIT))
        {
            Ok(Err(error)) => error,
            Ok(Ok(_)) | Err(_) => fallback,
        }
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
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(error)) => Poll::Ready(Err(self.failed(error))),
        }
    }

    fn half_close(self) -> GrpcClosing {
        GrpcClosing {
            stream: self,
            half_closed: None,
        }
    }
}

/// A half-closed stream, polled by the sender loop until the agent ends it.
pub(crate) struct GrpcClosing {
    stream: GrpcStream,
    /// Set once the half-close is done, with the error it met if the call
    /// had already ended.
    half_closed: Option<Option<grpcio::Error>>,
}

impl Closing for GrpcClosing {
    fn poll_end(&mut self, context: &mut Context<'_>) -> Poll<std::result::Result<(), WriteError>> {
        let stream = &mut self.stream;
        if self.half_closed.is_none() {
            match Pin::new(&mut stream.sink).poll_close(context) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(result) => self.half_closed = Some(result.err()),
            }
        }
        let ended = match Pin::new(&mut stream.response).poll(context) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(ended) => ended,
        };
        let error = match ended {
            Ok(_) => return Poll::Ready(Ok(())),
            Err(error) => error,
        };
        if is_clean_end(&error) {
            return Poll::Ready(Ok(()));
        }
        let described = agent_error(&stream.addr, &stream.server_name, &error);
        Poll::Ready(Err(classify(described, &error)))
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

fn agent_error(addr: &str, server_name: &str, error: &grpcio::Error) -> Error {
    let status = match error {
        grpcio::Error::RpcFailure(status) | grpcio::Error::RpcFinished(Some(status)) => {
            let code = format!("{:?}", status.code());
            let code = code.split_once('-').map_or(code.as_str(), |(_, name)| name);
            if status.message().is_empty() {
                code.to_string()
            } else {
                format!("{code}: {}", status.message())
            }
        }
        other => other.to_string(),
    };
    let hint = hint_for(&status, addr, server_name);
    Error::Agent {
        addr: addr.to_string(),
        status,
        hint,
    }
}

/// Recognises the usual causes in gRPC's status text and says what to check.
fn hint_for(status: &str, addr: &str, server_name: &str) -> Option<String> {
    let lower = status.to_ascii_lowercase();
    let hint = if lower.contains("peer name") {
        format!(
            "the agent's certificate is not valid for `{server_name}`, the name the client \
             verified; set TlsConfig::server_name to a name the certificate holds"
        )
    } else if [
        "certificate verify failed",
        "certificate_verify_failed",
        "unable to get local issuer",
        "self-signed certificate",
        "self signed certificate",
        "bad signature",
        "invalid padding",
    ]
    .iter()
    .any(|sign| lower.contains(sign))
    {
        "the agent's certificate is not signed by the CA the client trusts (ca file)".to_string()
    } else if lower.contains("socket closed") || lower.contains("handshake") {
        "the agent closed the connection during the TLS handshake: it probably refused the \
         client certificate (not signed by the agent's CA, or without clientAuth usage)"
            .to_string()
    } else if lower.contains("connection refused") {
        format!("no agent is listening at {addr}")
    } else {
        return None;
    };
    Some(hint)
}

/// Why a wait ended without the future completing.
#[derive(Debug)]
pub(crate) enum Interrupted {
    Deadline,
    Aborted,
}

/// Blocks the sender thread on one grpcio future at a time, waking when
/// gRPC signals progress, at a deadline, or when the handle aborts.
#[derive(Clone)]
pub(crate) struct Waiter {
    abort: Receiver<()>,
}

impl Waiter {
    pub(crate) fn new(abort: Receiver<()>) -> Waiter {
        Waiter { abort }
    }

    pub(crate) fn wait<F: Future + Unpin>(
        &self,
        mut future: F,
        deadline: Instant,
    ) -> std::result::Result<F::Output, Interrupted> {
        let (wake_tx, woken) = bounded(1);
        let waker = Waker::from(Arc::new(ChannelWaker(wake_tx)));
        let mut context = Context::from_waker(&waker);
        let timer = at(deadline);
        loop {
            if let Poll::Ready(output) = Pin::new(&mut future).poll(&mut context) {
                return Ok(output);
            }
            select! {
                recv(woken) -> _ => {}
                recv(self.abort) -> _ => return Err(Interrupted::Aborted),
                recv(timer) -> _ => return Err(Interrupted::Deadline),
            }
        }
    }
}
