//! The gRPC side: an mTLS grpcio channel (built anew when the loop abandons
//! a connection), the Ingress method descriptors and unary calls
//! (`mod.rs`); grpcio's futures as the polled streams the sender loop
//! drives, and what a stream's end says of its writes (`stream.rs`); what
//! the operator is told of a failed call or a wait that ran out
//! (`describe.rs`).

mod describe;
mod stream;

use std::collections::VecDeque;
use std::future::Future;
use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use grpcio::{
    CallOption, Channel, ChannelBuilder, ChannelCredentialsBuilder, Client, ClientUnaryReceiver,
    EnvBuilder, Environment, GrpcSlice, Marshaller, MessageReader, Method, MethodType,
};

use crate::error::{Error, Result};
use crate::proto::ingress::{BatchSenderResponse, SendResponse};
use crate::sender::{LONGEST_WAIT, Stall, Transport, UnaryCall};
use crate::tls::TlsConfig;

use describe::{LEFT_REMEMBERED, LeftConnection, agent_error};
use stream::GrpcStream;

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
        // stream at least once opens to confirm the last.
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
        self.describe_stall(stall, connection)
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
