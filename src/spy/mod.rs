//! A real Loggregator Ingress server for tests (feature `testing`).
//!
//! [`SpyAgent`] is a grpcio server on `127.0.0.1` with mutual TLS (a client
//! certificate is required and verified), serving `Sender`, `BatchSender`
//! and `Send`, and recording every envelope and batch it reads. Tests wait
//! for what they expect with the `wait_for_*` methods instead of sleeping.
//! [`TestCerts`] makes the certificates it and the client use.
//!
//! ```
//! use loggregator::spy::{SpyAgent, TestCerts};
//! use loggregator::{Envelope, IngressClient};
//! use std::time::Duration;
//!
//! let certs = TestCerts::generate()?;
//! let agent = SpyAgent::start(&certs)?;
//! let client = IngressClient::builder().addr(agent.addr()).tls(certs.client_tls()?).build()?;
//! client.emit(Envelope::log("hello"));
//! client.close(Duration::from_secs(5))?;
//! assert_eq!(agent.envelopes().len(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod certs;
mod pace;

use std::io::{self, Read};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use grpcio::{
    CertificateRequestType, ChannelBuilder, ClientStreamingSink, EnvBuilder, Environment,
    Marshaller, MessageReader, Method, MethodType, RequestStream, RpcContext, RpcStatus,
    RpcStatusCode, Server, ServerBuilder, ServerCredentialsBuilder, Service, ServiceBuilder,
    UnarySink,
};
use parking_lot::{Condvar, Mutex};
use protobuf::Message;

pub use certs::TestCerts;

use pace::{Pacer, StreamPace, Timer};

use crate::proto::envelope::{Envelope, EnvelopeBatch};
use crate::proto::ingress::{BatchSenderResponse, IngressResponse, SendResponse};

const fn pb<T: Message>() -> Marshaller<T> {
    Marshaller {
        ser: grpcio::pb_ser,
        de: grpcio::pb_de,
    }
}

/// `loggregator.v2.Ingress/Sender`, server side.
const SENDER: Method<Envelope, IngressResponse> = Method {
    ty: MethodType::ClientStreaming,
    name: "/loggregator.v2.Ingress/Sender",
    req_mar: pb(),
    resp_mar: pb(),
};

/// `loggregator.v2.Ingress/BatchSender`, server side.
const BATCH_SENDER: Method<EnvelopeBatch, BatchSenderResponse> = Method {
    ty: MethodType::ClientStreaming,
    name: "/loggregator.v2.Ingress/BatchSender",
    req_mar: pb(),
    resp_mar: pb(),
};

/// `loggregator.v2.Ingress/Send`, server side.
const SEND: Method<EnvelopeBatch, SendResponse> = Method {
    ty: MethodType::Unary,
    name: "/loggregator.v2.Ingress/Send",
    req_mar: pb(),
    resp_mar: pb(),
};

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

#[derive(Default)]
struct Record {
    envelopes: Vec<Envelope>,
    batches: Vec<ReceivedBatch>,
    counts: SpyCounts,
    calls_started: u64,
    streams_ended: u64,
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

#[derive(Default)]
struct State {
    record: Mutex<Record>,
    changed: Condvar,
    stream_end: Mutex<StreamEnd>,
    /// Ends the stream that reads the next message, instead of recording it.
    fail_next: Mutex<Option<(StatusCode, String)>>,
    reading: Mutex<Gate>,
    pacer: Mutex<Option<Pacer>>,
    /// Each stream reads at most this many envelopes a second.
    stream_rate: Mutex<Option<u64>>,
    /// Wakes streams held to their rate; started with the first.
    timer: std::sync::OnceLock<Timer>,
    count_only: bool,
}

/// Holds stream readers while reading is paused.
#[derive(Default)]
struct Gate {
    paused: bool,
    waiting: Vec<Waker>,
}

impl State {
    fn start_call(&self) -> u64 {
        let mut record = self.record.lock();
        record.calls_started += 1;
        record.calls_started
    }

    fn read(&self, rpc: Rpc, stream: u64, envelopes: Vec<Envelope>, encoded_bytes: usize) {
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
    fn count(&self, envelopes: u64, encoded_bytes: usize) {
        let mut record = self.record.lock();
        record.counts.envelopes += envelopes;
        record.counts.messages += 1;
        record.counts.bytes += encoded_bytes as u64;
        self.changed.notify_all();
    }

    /// Holds the reader (and with it the server's one thread) until reading
    /// `envelopes` more keeps to the read rate, if one is set.
    fn pace(&self, envelopes: u64) {
        let wake_at = {
            let mut pacer = self.pacer.lock();
            let Some(pacer) = pacer.as_mut() else { return };
            pacer.due(envelopes)
        };
        let now = Instant::now();
        if wake_at > now {
            std::thread::sleep(wake_at - now);
        }
    }

    /// Holds a stream that has just read `envelopes` more until it may read
    /// again, if streams are held to a rate of their own.
    async fn stream_pace(&self, pace: &mut StreamPace, envelopes: u64) {
        if self.stream_rate.lock().is_none() {
            return;
        }
        // Read before the rate: a change of rate made after this releases
        // the delay below, and one made before is seen in the rate.
        let generation = self.timer().generation();
        let Some(per_second) = *self.stream_rate.lock() else {
            return;
        };
        let due = pace.due(envelopes, per_second);
        if due > Instant::now() {
            self.timer().delay(due, generation).await;
        }
    }

    fn timer(&self) -> &Timer {
        self.timer.get_or_init(Timer::start)
    }

    /// Ends the wait of every stream held to its rate.
    fn release_delayed(&self) {
        if let Some(timer) = self.timer.get() {
            timer.release_all();
        }
    }

    fn poll_reading(&self, context: &mut Context<'_>) -> Poll<()> {
        let mut gate = self.reading.lock();
        if gate.paused {
            gate.waiting.push(context.waker().clone());
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }

    fn set_paused(&self, paused: bool) {
        let mut gate = self.reading.lock();
        gate.paused = paused;
        if !paused {
            gate.waiting.drain(..).for_each(Waker::wake);
        }
    }

    fn end_stream(&self) {
        self.record.lock().streams_ended += 1;
        self.changed.notify_all();
    }

    /// Waits until `done` holds for the record or the timeout passes;
    /// returns whether it held.
    fn wait_until(&self, timeout: Duration, done: impl Fn(&Record) -> bool) -> bool {
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

/// A Loggregator agent for tests: a real mTLS gRPC server on loopback that
/// records what it reads. It stops when dropped.
///
/// Faults can be injected: stop reading ([`pause_reading`](Self::pause_reading)),
/// go away and come back on the same port ([`shutdown`](Self::shutdown),
/// [`restart`](Self::restart)), end a stream with an error
/// ([`fail_next_stream`](Self::fail_next_stream)), or refuse large messages
/// ([`SpyAgentBuilder::max_message_bytes`]).
///
/// ```
/// use loggregator::spy::{SpyAgent, StreamEnd, TestCerts};
///
/// let certs = TestCerts::generate()?;
/// let agent = SpyAgent::start(&certs)?;
/// agent.set_stream_end(StreamEnd::Ok);
/// assert!(agent.addr().starts_with("127.0.0.1:"));
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct SpyAgent {
    server: Mutex<Option<Server>>,
    addr: String,
    state: Arc<State>,
    config: ServerConfig,
    env: Arc<Environment>,
}

/// What a (re)started server is built from.
struct ServerConfig {
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    max_message_bytes: Option<usize>,
}

impl std::fmt::Debug for SpyAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpyAgent")
            .field("addr", &self.addr)
            .finish()
    }
}

/// Options for a [`SpyAgent`]; made by [`SpyAgent::builder`].
///
/// ```
/// let certs = loggregator::spy::TestCerts::generate()?;
/// let agent = loggregator::spy::SpyAgent::builder().max_message_bytes(64 * 1024).start(&certs)?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Default, Clone)]
pub struct SpyAgentBuilder {
    max_message_bytes: Option<usize>,
    port: u16,
    count_only: bool,
}

impl SpyAgentBuilder {
    /// Refuses gRPC messages larger than this with RESOURCE_EXHAUSTED, as the
    /// real agents do above 10 MiB.
    ///
    /// ```
    /// let builder = loggregator::spy::SpyAgent::builder().max_message_bytes(1 << 20);
    /// ```
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = Some(bytes);
        self
    }

    /// Only counts what it reads ([`SpyAgent::counts`]), keeping no
    /// envelopes and decoding no more than each batch's outer framing, so
    /// that it keeps up with a client under load and stays small.
    /// [`SpyAgent::envelopes`] and [`SpyAgent::batches`] stay empty.
    ///
    /// ```
    /// let builder = loggregator::spy::SpyAgent::builder().count_only();
    /// ```
    pub fn count_only(mut self) -> Self {
        self.count_only = true;
        self
    }

    /// Listens on this port of 127.0.0.1 instead of a free one.
    ///
    /// ```
    /// let builder = loggregator::spy::SpyAgent::builder().port(3458);
    /// ```
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Starts the spy with the server certificate of `certs`, requiring
    /// client certificates signed by its CA.
    ///
    /// ```
    /// let certs = loggregator::spy::TestCerts::generate()?;
    /// let agent = loggregator::spy::SpyAgent::builder().start(&certs)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn start(self, certs: &TestCerts) -> io::Result<SpyAgent> {
        let env = Arc::new(
            EnvBuilder::new()
                .cq_count(1)
                .name_prefix("spy-agent")
                .build(),
        );
        let state = Arc::new(State {
            count_only: self.count_only,
            ..State::default()
        });
        let config = ServerConfig {
            ca_pem: certs.ca_pem().to_vec(),
            cert_pem: certs.server_cert_pem().to_vec(),
            key_pem: certs.server_key_pem().to_vec(),
            max_message_bytes: self.max_message_bytes,
        };
        let (server, port) = serve(&env, &state, &config, self.port)?;
        Ok(SpyAgent {
            server: Mutex::new(Some(server)),
            addr: format!("127.0.0.1:{port}"),
            state,
            config,
            env,
        })
    }
}

impl SpyAgent {
    /// Starts a spy on a free port of 127.0.0.1, with the server certificate
    /// of `certs` and requiring client certificates signed by its CA.
    ///
    /// ```
    /// let certs = loggregator::spy::TestCerts::generate()?;
    /// let agent = loggregator::spy::SpyAgent::start(&certs)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn start(certs: &TestCerts) -> io::Result<SpyAgent> {
        SpyAgentBuilder::default().start(certs)
    }

    /// Options beyond [`start`](Self::start)'s defaults.
    ///
    /// ```
    /// let builder = loggregator::spy::SpyAgent::builder();
    /// ```
    pub fn builder() -> SpyAgentBuilder {
        SpyAgentBuilder::default()
    }

    /// Stops serving: open calls are cancelled and new connections refused.
    /// What was recorded is kept.
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// # let agent = loggregator::spy::SpyAgent::start(&certs)?;
    /// agent.shutdown();
    /// agent.restart()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn shutdown(&self) {
        if let Some(server) = self.server.lock().take() {
            stop(server, &self.state);
        }
    }

    /// Serves again on the same port after [`shutdown`](Self::shutdown)
    /// (a no-op while serving).
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// # let agent = loggregator::spy::SpyAgent::start(&certs)?;
    /// agent.restart()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn restart(&self) -> io::Result<()> {
        let mut server = self.server.lock();
        if server.is_none() {
            let port = self
                .addr
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse().ok())
                .unwrap_or(0);
            *server = Some(serve(&self.env, &self.state, &self.config, port)?.0);
        }
        Ok(())
    }

    /// Stops reading streams, holding them open: the client's writes stall
    /// once HTTP/2 flow control fills, as with an overloaded agent.
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// # let agent = loggregator::spy::SpyAgent::start(&certs)?;
    /// agent.pause_reading();
    /// agent.resume_reading();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn pause_reading(&self) {
        self.state.set_paused(true);
    }

    /// Reads streams again after [`pause_reading`](Self::pause_reading).
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// # let agent = loggregator::spy::SpyAgent::start(&certs)?;
    /// agent.resume_reading();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn resume_reading(&self) {
        self.state.set_paused(false);
    }

    /// Ends the stream that delivers the next message with this status; the
    /// message is not recorded.
    ///
    /// ```
    /// use loggregator::spy::StatusCode;
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// # let agent = loggregator::spy::SpyAgent::start(&certs)?;
    /// agent.fail_next_stream(StatusCode::Unavailable, "going away");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn fail_next_stream(&self, code: StatusCode, message: impl Into<String>) {
        *self.state.fail_next.lock() = Some((code, message.into()));
    }

    /// How many calls (streams and unary sends) clients have started.
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// # let agent = loggregator::spy::SpyAgent::start(&certs)?;
    /// assert_eq!(agent.calls_started(), 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn calls_started(&self) -> u64 {
        self.state.record.lock().calls_started
    }

    /// `127.0.0.1:PORT`, for [`IngressClientBuilder::addr`](crate::IngressClientBuilder::addr).
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// # let agent = loggregator::spy::SpyAgent::start(&certs)?;
    /// println!("agent at {}", agent.addr());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Chooses how streams end from now on (default [`StreamEnd::Eof`]).
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// # let agent = loggregator::spy::SpyAgent::start(&certs)?;
    /// agent.set_stream_end(loggregator::spy::StreamEnd::Ok);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_stream_end(&self, end: StreamEnd) {
        *self.state.stream_end.lock() = end;
    }

    /// Every envelope read so far, in order.
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// # let agent = loggregator::spy::SpyAgent::start(&certs)?;
    /// assert!(agent.envelopes().is_empty());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn envelopes(&self) -> Vec<Envelope> {
        self.state.record.lock().envelopes.clone()
    }

    /// Every message read so far, in order.
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// # let agent = loggregator::spy::SpyAgent::start(&certs)?;
    /// assert!(agent.batches().is_empty());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn batches(&self) -> Vec<ReceivedBatch> {
        self.state.record.lock().batches.clone()
    }

    /// How many `Sender`/`BatchSender` streams the client half-closed and the
    /// spy then ended.
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// # let agent = loggregator::spy::SpyAgent::start(&certs)?;
    /// assert_eq!(agent.streams_ended(), 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn streams_ended(&self) -> u64 {
        self.state.record.lock().streams_ended
    }

    /// Waits until at least `count` envelopes have been read, at most
    /// `timeout`; returns all read so far either way, so a test can compare.
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// # let agent = loggregator::spy::SpyAgent::start(&certs)?;
    /// let got = agent.wait_for_envelopes(0, std::time::Duration::from_secs(1));
    /// assert!(got.is_empty());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn wait_for_envelopes(&self, count: usize, timeout: Duration) -> Vec<Envelope> {
        self.state
            .wait_until(timeout, |record| record.envelopes.len() >= count);
        self.envelopes()
    }

    /// How much has been read so far.
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// # let agent = loggregator::spy::SpyAgent::start(&certs)?;
    /// assert_eq!(agent.counts().envelopes, 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn counts(&self) -> SpyCounts {
        self.state.record.lock().counts
    }

    /// Waits until at least `envelopes` envelopes have been read, at most
    /// `timeout`; returns the counts then, so a caller can compare.
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// # let agent = loggregator::spy::SpyAgent::builder().count_only().start(&certs)?;
    /// let counts = agent.wait_for_count(0, std::time::Duration::from_secs(1));
    /// assert_eq!(counts.envelopes, 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn wait_for_count(&self, envelopes: u64, timeout: Duration) -> SpyCounts {
        self.state
            .wait_until(timeout, |record| record.counts.envelopes >= envelopes);
        self.counts()
    }

    /// Reads at most `per_second` envelopes a second from now on, as an agent
    /// that cannot keep up; `None` reads as fast as it can. The spy sleeps
    /// on its one server thread to keep the rate, so the client's writes
    /// back up behind HTTP/2 flow control just as they do against a slow agent.
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// # let agent = loggregator::spy::SpyAgent::start(&certs)?;
    /// agent.set_read_rate(Some(10_000));
    /// agent.set_read_rate(None);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_read_rate(&self, per_second: Option<u64>) {
        *self.state.pacer.lock() = per_second.filter(|&rate| rate > 0).map(Pacer::new);
    }

    /// Reads each stream at most `per_second` envelopes a second, each at
    /// its own pace and side by side, as a real agent does (it reads each
    /// stream in a goroutine of its own); `None` reads as fast as it can.
    /// A client writing on two streams can then deliver twice as much as on
    /// one. The streams wait without holding the server's thread, and
    /// HTTP/2 flow control backs up the client's writes on each.
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// # let agent = loggregator::spy::SpyAgent::start(&certs)?;
    /// agent.set_stream_read_rate(Some(300_000));
    /// agent.set_stream_read_rate(None);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_stream_read_rate(&self, per_second: Option<u64>) {
        *self.state.stream_rate.lock() = per_second.filter(|&rate| rate > 0);
        // Streams waiting at the old rate read on at the new one.
        self.state.release_delayed();
    }

    /// Waits until at least `count` streams have ended, at most `timeout`;
    /// returns whether they had.
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// # let agent = loggregator::spy::SpyAgent::start(&certs)?;
    /// assert!(agent.wait_for_streams_ended(0, std::time::Duration::from_secs(1)));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn wait_for_streams_ended(&self, count: u64, timeout: Duration) -> bool {
        self.state
            .wait_until(timeout, |record| record.streams_ended >= count)
    }
}

impl Drop for SpyAgent {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn stop(mut server: Server, state: &State) {
    let shutdown = server.shutdown();
    server.cancel_all_calls();
    // Paused and delayed readers must run to see their calls cancelled.
    state.set_paused(false);
    state.release_delayed();
    let _ = futures::executor::block_on(shutdown);
}

/// Builds, binds and starts a server; returns it with its port.
fn serve(
    env: &Arc<Environment>,
    state: &Arc<State>,
    config: &ServerConfig,
    port: u16,
) -> io::Result<(Server, u16)> {
    let mut builder = ServerBuilder::new(env.clone()).register_service(service(state));
    if let Some(bytes) = config.max_message_bytes {
        let limit = i32::try_from(bytes).unwrap_or(i32::MAX);
        let args = ChannelBuilder::new(env.clone())
            .max_receive_message_len(limit)
            .build_args();
        builder = builder.channel_args(args);
    }
    let mut server = builder.build().map_err(io::Error::other)?;
    let credentials = ServerCredentialsBuilder::new()
        .root_cert(
            config.ca_pem.clone(),
            CertificateRequestType::RequestAndRequireClientCertificateAndVerify,
        )
        .add_cert(config.cert_pem.clone(), config.key_pem.clone())
        .build();
    let port = server
        .add_listening_port(format!("127.0.0.1:{port}"), credentials)
        .map_err(io::Error::other)?;
    server.start();
    Ok((server, port))
}

/// The Ingress service, recording into `state`.
fn service(state: &Arc<State>) -> Service {
    let mut builder = ServiceBuilder::new();
    builder = if state.count_only {
        builder.add_client_streaming_handler(&COUNTED_BATCH_SENDER, {
            let state = state.clone();
            move |ctx: RpcContext<'_>,
                  stream: RequestStream<CountedBatch>,
                  sink: ClientStreamingSink<BatchSenderResponse>| {
                serve_stream(&ctx, state.clone(), stream, sink, |state, _, batch| {
                    state.count(batch.envelopes, batch.bytes);
                    batch.envelopes
                })
            }
        })
    } else {
        builder.add_client_streaming_handler(&BATCH_SENDER, {
            let state = state.clone();
            move |ctx: RpcContext<'_>,
                  stream: RequestStream<EnvelopeBatch>,
                  sink: ClientStreamingSink<BatchSenderResponse>| {
                serve_stream(&ctx, state.clone(), stream, sink, |state, call, batch| {
                    let bytes = batch.compute_size() as usize;
                    let count = batch.batch.len() as u64;
                    state.read(Rpc::BatchSender, call, batch.batch, bytes);
                    count
                })
            }
        })
    };
    builder
        .add_client_streaming_handler(&SENDER, {
            let state = state.clone();
            move |ctx: RpcContext<'_>,
                  stream: RequestStream<Envelope>,
                  sink: ClientStreamingSink<IngressResponse>| {
                serve_stream(
                    &ctx,
                    state.clone(),
                    stream,
                    sink,
                    |state, call, envelope| {
                        let bytes = envelope.compute_size() as usize;
                        state.read(Rpc::Sender, call, vec![envelope], bytes);
                        1
                    },
                )
            }
        })
        .add_unary_handler(&SEND, {
            let state = state.clone();
            move |ctx: RpcContext<'_>, batch: EnvelopeBatch, sink: UnarySink<SendResponse>| {
                let stream = state.start_call();
                let bytes = batch.compute_size() as usize;
                state.read(Rpc::Send, stream, batch.batch, bytes);
                ctx.spawn(async move {
                    let _ = sink.success(SendResponse::new()).await;
                });
            }
        })
        .build()
}

/// Reads a client stream to its end, recording each message with `record`
/// (which returns how many envelopes it held), then ends the call as the spy
/// is told to.
fn serve_stream<Req, Resp>(
    ctx: &RpcContext<'_>,
    state: Arc<State>,
    mut stream: RequestStream<Req>,
    sink: ClientStreamingSink<Resp>,
    record: fn(&State, u64, Req) -> u64,
) where
    Req: Send + 'static,
    Resp: Message + Send + 'static,
{
    let call = state.start_call();
    ctx.spawn(async move {
        let mut pace = StreamPace::default();
        loop {
            futures::future::poll_fn(|context| state.poll_reading(context)).await;
            match stream.try_next().await {
                Ok(Some(message)) => {
                    let failure = state.fail_next.lock().take();
                    if let Some((code, text)) = failure {
                        let _ = sink.fail(code.status(text)).await;
                        state.end_stream();
                        return;
                    }
                    let envelopes = record(&state, call, message);
                    state.pace(envelopes);
                    state.stream_pace(&mut pace, envelopes).await;
                }
                Ok(None) => break,
                // The client cancelled or the connection broke: nobody to answer.
                Err(_) => return,
            }
        }
        let end = state.stream_end.lock().clone();
        let _ = match end {
            StreamEnd::Ok => sink.success(Resp::new()).await,
            StreamEnd::Eof => {
                sink.fail(RpcStatus::with_message(
                    RpcStatusCode::UNKNOWN,
                    "EOF".into(),
                ))
                .await
            }
            StreamEnd::Status(code, message) => sink.fail(code.status(message)).await,
        };
        state.end_stream();
    });
}

/// An `EnvelopeBatch` read only as far as counting its envelopes.
struct CountedBatch {
    envelopes: u64,
    bytes: usize,
}

/// `loggregator.v2.Ingress/BatchSender`, server side, counting only.
const COUNTED_BATCH_SENDER: Method<CountedBatch, BatchSenderResponse> = Method {
    ty: MethodType::ClientStreaming,
    name: "/loggregator.v2.Ingress/BatchSender",
    req_mar: Marshaller {
        ser: |_, _| Err(grpcio::Error::Codec("the spy only reads batches".into())),
        de: count_batch,
    },
    resp_mar: pb(),
};

/// Counts the `batch` fields (1, length-delimited) of an encoded
/// `EnvelopeBatch`, skipping over each envelope without decoding it.
fn count_batch(mut reader: MessageReader) -> grpcio::Result<CountedBatch> {
    let mut bytes = Vec::new();
    reader
        .read_to_end(&mut bytes)
        .map_err(|e| grpcio::Error::Codec(Box::new(e)))?;
    let mut input = protobuf::CodedInputStream::from_bytes(&bytes);
    let mut envelopes = 0;
    let malformed = |e: protobuf::Error| grpcio::Error::Codec(Box::new(e));
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(malformed)? {
        if tag == (1 << 3) | 2 {
            envelopes += 1;
        }
        let wire_type = protobuf::rt::WireType::new(tag & 7)
            .ok_or_else(|| grpcio::Error::Codec("a malformed EnvelopeBatch".into()))?;
        input.skip_field(wire_type).map_err(malformed)?;
    }
    Ok(CountedBatch {
        envelopes,
        bytes: bytes.len(),
    })
}
