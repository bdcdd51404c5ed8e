//! The gRPC side: an mTLS grpcio channel (built anew when the loop abandons
//! a connection), the Ingress method descriptors, and grpcio's futures as
//! the polled streams the sender loop drives.

use std::collections::VecDeque;
use std::future::Future;
use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures::Sink;
use grpcio::{
    CallOption, Channel, ChannelBuilder, ChannelCredentialsBuilder, Client, ClientCStreamReceiver,
    ClientCStreamSender, ClientUnaryReceiver, ConnectivityState, EnvBuilder, Environment,
    GrpcSlice, Marshaller, MessageReader, Method, MethodType, RpcStatusCode, WriteFlags,
};

use crate::error::{Error, Result};
use crate::proto::ingress::{BatchSenderResponse, SendResponse};
use crate::sender::{BatchStream, Closing, LONGEST_WAIT, Stall, Transport, UnaryCall, WriteError};
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
    /// Shared with every stream and call, which need them for their errors.
    settings: Arc<ChannelSettings>,
    channel: Channel,
    /// When the channel in use was built, and how many were left before it.
    channel_built: Instant,
    channels_left: u64,
    /// Set once a write is accepted on the channel in use: it connected.
    was_connected: Arc<AtomicBool>,
    /// The last connections left, newest last, for a wait that ran out on
    /// one of them to be described as it was, not as the one in use.
    left: VecDeque<LeftConnection>,
    client: Client,
    // Declared last so it is dropped after the channels that use it.
    env: Arc<Environment>,
}

/// A connection the client left because it stopped answering.
struct LeftConnection {
    /// Its number, counted as the sender loop counts connections.
    number: u64,
    /// How old it was when it was left, and when that was.
    age: Duration,
    left_at: Instant,
    was_connected: bool,
}

/// How many left connections are remembered: a wait outlives its
/// connection by at most one write or confirm timeout.
const LEFT_REMEMBERED: usize = 8;

impl GrpcTransport {
    /// Builds the channel; it connects on the first call.
    pub(crate) fn new(settings: &ChannelSettings) -> GrpcTransport {
        let env = Arc::new(
            EnvBuilder::new()
                .cq_count(1)
                .name_prefix(format!("{}grpc", crate::THREAD_PREFIX))
                .after_start(crate::mark_own_thread)
                .build(),
        );
        let channel = build_channel(&env, settings);
        GrpcTransport {
            settings: Arc::new(settings.clone()),
            client: Client::new(channel.clone()),
            channel,
            channel_built: Instant::now(),
            channels_left: 0,
            was_connected: Arc::default(),
            left: VecDeque::new(),
            env,
        }
    }

    fn error(&self, error: grpcio::Error) -> Error {
        agent_error(&self.settings, &error)
    }
}

/// A channel of its own: with a local subchannel pool, a new channel never
/// shares a connection with one that was abandoned.
fn build_channel(env: &Arc<Environment>, settings: &ChannelSettings) -> Channel {
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
        .use_local_subchannel_pool(true)
        // The loop writes again what a failed stream carried itself. gRPC's
        // own retries would also keep a copy of each new stream's first
        // 256 KiB of messages, unseen by the byte budget, and cost every
        // stream at least once opens to confirm the last (a tenth of its
        // CPU per envelope in `cargo bench --bench throughput`).
        .enable_retry(false)
        .set_credentials(credentials);
    if let Some(interval) = settings.keepalive {
        channel = channel
            .keepalive_time(interval)
            .keepalive_timeout(KEEPALIVE_TIMEOUT)
            .keepalive_permit_without_calls(false);
    }
    channel.connect(&settings.addr)
}

impl Transport for GrpcTransport {
    type Stream = GrpcStream;
    type Call = GrpcCall;

    fn open(&mut self) -> Result<GrpcStream> {
        let (sink, response) = self
            .client
            .client_streaming(&BATCH_SENDER, CallOption::default())
            .map_err(|e| self.error(e))?;
        Ok(GrpcStream {
            sink,
            response,
            settings: self.settings.clone(),
            connected: self.was_connected.clone(),
        })
    }

    fn send(&mut self, mut batch: Vec<u8>, timeout: Duration) -> Result<GrpcCall> {
        // A vector with no spare capacity becomes the slice as it is.
        batch.shrink_to_fit();
        let request = GrpcSlice::from(batch);
        let response = self
            .client
            .unary_call_async(
                &SEND,
                &request,
                CallOption::default().timeout(timeout.min(LONGEST_WAIT)),
            )
            .map_err(|e| self.error(e))?;
        Ok(GrpcCall {
            response,
            settings: self.settings.clone(),
        })
    }

    fn abandon_connection(&mut self) {
        if self.left.len() == LEFT_REMEMBERED {
            self.left.pop_front();
        }
        self.left.push_back(LeftConnection {
            number: self.channels_left,
            age: self.channel_built.elapsed(),
            left_at: Instant::now(),
            was_connected: self.was_connected.load(Ordering::Relaxed),
        });
        // Calls still open on the old channel keep it until they end; the
        // loop ends them, and its connection closes with the last one.
        self.channel = build_channel(&self.env, &self.settings);
        self.client = Client::new(self.channel.clone());
        self.channel_built = Instant::now();
        self.channels_left += 1;
        self.was_connected = Arc::default();
    }

    fn stalled(&self, stall: Stall, connection: u64) -> Error {
        let addr = &self.settings.addr;
        let (what, waited) = match stall {
            Stall::Write(waited) => ("write not accepted", waited),
            Stall::Confirmation(waited) => ("the agent did not end a half-closed stream", waited),
            Stall::Close { waited } => {
                ("close's deadline passed: a write not yet accepted", waited)
            }
        };
        if connection != self.channels_left {
            return self.stalled_on_left(what, waited, connection);
        }
        // Named by how old it is, and whether it replaced one that was
        // left: a wait on a fresh connection says little about the agent.
        let age = self.channel_built.elapsed();
        let connection = match self.channels_left {
            0 => format!("a connection {age:.0?} old"),
            _ => format!("a connection {age:.0?} old, made after the one before stopped answering"),
        };
        let ready =
            self.channel.check_connectivity_state(false) == ConnectivityState::GRPC_CHANNEL_READY;
        let (status, hint) = if ready {
            (
                format!("{what} within {waited:?} on {connection}"),
                Some("the agent is not reading; it may be overloaded or stuck".to_string()),
            )
        } else if self.was_connected.load(Ordering::Relaxed) {
            (
                format!(
                    "{what} within {waited:?}: the connection to {addr} is down ({connection})"
                ),
                Some(
                    "it carried writes before: the agent may have restarted, or the network \
                     failed"
                        .to_string(),
                ),
            )
        } else {
            (
                format!("{what}: no TLS handshake from {addr} within {waited:?} ({connection})"),
                Some(format!(
                    "the connection was never established: whatever listens at {addr} does not \
                     complete a TLS handshake (not the agent's gRPC port, or a stuck agent)"
                )),
            )
        };
        Error::Agent {
            addr: addr.clone(),
            status,
            hint,
        }
    }
}

impl GrpcTransport {
    /// A wait that ran out on a connection already left (another wait on
    /// it ran out first): described as that connection was, never as the
    /// one in use, which it says nothing about.
    fn stalled_on_left(&self, what: &str, waited: Duration, connection: u64) -> Error {
        let addr = &self.settings.addr;
        let left = self.left.iter().find(|left| left.number == connection);
        let status = match left {
            Some(left) => {
                let (age, ago) = (left.age, left.left_at.elapsed());
                let carried = if left.was_connected {
                    "it had carried writes"
                } else {
                    "it never carried a write"
                };
                format!(
                    "{what} within {waited:?} on a connection {age:.0?} old that stopped \
                     answering ({carried}) and was left {ago:.0?} ago"
                )
            }
            None => format!(
                "{what} within {waited:?} on a connection that stopped answering and was left"
            ),
        };
        Error::Agent {
            addr: addr.clone(),
            status,
            hint: Some("the agent is not reading; it may be overloaded or stuck".to_string()),
        }
    }
}

/// A unary `Send` under way; it carries its own deadline.
pub(crate) struct GrpcCall {
    response: ClientUnaryReceiver<SendResponse>,
    settings: Arc<ChannelSettings>,
}

impl UnaryCall for GrpcCall {
    fn poll_done(&mut self, context: &mut Context<'_>) -> Poll<Result<()>> {
        Pin::new(&mut self.response).poll(context).map(|answer| {
            answer
                .map(drop)
                .map_err(|e| agent_error(&self.settings, &e))
        })
    }
}

pub(crate) struct GrpcStream {
    sink: ClientCStreamSender<GrpcSlice>,
    response: ClientCStreamReceiver<BatchSenderResponse>,
    settings: Arc<ChannelSettings>,
    /// Its channel's: a write accepted means the connection was made.
    connected: Arc<AtomicBool>,
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

fn agent_error(settings: &ChannelSettings, error: &grpcio::Error) -> Error {
    let (addr, server_name) = (settings.addr.as_str(), settings.tls.verified_name());
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
