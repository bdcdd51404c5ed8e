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

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use grpcio::{
    CertificateRequestType, ClientStreamingSink, EnvBuilder, Environment, Marshaller, Method,
    MethodType, RequestStream, RpcContext, RpcStatus, RpcStatusCode, Server, ServerBuilder,
    ServerCredentialsBuilder, ServiceBuilder, UnarySink,
};
use parking_lot::{Condvar, Mutex};
use protobuf::Message;

pub use certs::TestCerts;

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
    /// Status INTERNAL with this message, an agent that failed.
    Internal(String),
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
    calls_started: u64,
    streams_ended: u64,
}

#[derive(Default)]
struct State {
    record: Mutex<Record>,
    changed: Condvar,
    stream_end: Mutex<StreamEnd>,
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
        record.envelopes.extend(envelopes);
        self.changed.notify_all();
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
    server: Server,
    addr: String,
    state: Arc<State>,
    _env: Arc<Environment>,
}

impl std::fmt::Debug for SpyAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpyAgent")
            .field("addr", &self.addr)
            .finish()
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
        let env = Arc::new(
            EnvBuilder::new()
                .cq_count(1)
                .name_prefix("spy-agent")
                .build(),
        );
        let state = Arc::new(State::default());
        let service = ServiceBuilder::new()
            .add_client_streaming_handler(&BATCH_SENDER, {
                let state = state.clone();
                move |ctx: RpcContext<'_>,
                      stream: RequestStream<EnvelopeBatch>,
                      sink: ClientStreamingSink<BatchSenderResponse>| {
                    serve_stream(
                        &ctx,
                        state.clone(),
                        Rpc::BatchSender,
                        stream,
                        sink,
                        |batch| batch.batch,
                    )
                }
            })
            .add_client_streaming_handler(&SENDER, {
                let state = state.clone();
                move |ctx: RpcContext<'_>,
                      stream: RequestStream<Envelope>,
                      sink: ClientStreamingSink<IngressResponse>| {
                    serve_stream(&ctx, state.clone(), Rpc::Sender, stream, sink, |envelope| {
                        vec![envelope]
                    })
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
            .build();
        let mut server = ServerBuilder::new(env.clone())
            .register_service(service)
            .build()
            .map_err(io::Error::other)?;
        let credentials = ServerCredentialsBuilder::new()
            .root_cert(
                certs.ca_pem().to_vec(),
                CertificateRequestType::RequestAndRequireClientCertificateAndVerify,
            )
            .add_cert(
                certs.server_cert_pem().to_vec(),
                certs.server_key_pem().to_vec(),
            )
            .build();
        let port = server
            .add_listening_port("127.0.0.1:0", credentials)
            .map_err(io::Error::other)?;
        server.start();
        Ok(SpyAgent {
            server,
            addr: format!("127.0.0.1:{port}"),
            state,
            _env: env,
        })
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
        let shutdown = self.server.shutdown();
        self.server.cancel_all_calls();
        let _ = futures::executor::block_on(shutdown);
    }
}

/// Reads a client stream to its end, recording each message, then ends the
/// call as the spy is told to.
fn serve_stream<Req, Resp>(
    ctx: &RpcContext<'_>,
    state: Arc<State>,
    rpc: Rpc,
    mut stream: RequestStream<Req>,
    sink: ClientStreamingSink<Resp>,
    envelopes: fn(Req) -> Vec<Envelope>,
) where
    Req: Message + Send + 'static,
    Resp: Message + Send + 'static,
{
    let call = state.start_call();
    ctx.spawn(async move {
        loop {
            match stream.try_next().await {
                Ok(Some(message)) => {
                    let bytes = message.compute_size() as usize;
                    state.read(rpc, call, envelopes(message), bytes);
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
            StreamEnd::Internal(message) => {
                sink.fail(RpcStatus::with_message(RpcStatusCode::INTERNAL, message))
                    .await
            }
        };
        state.end_stream();
    });
}
