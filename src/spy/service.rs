//! The Ingress service over grpcio with mutual TLS: `Sender`, `BatchSender`
//! (decoded, or in count-only mode only counted) and `Send`, each call
//! recording into the state it shares with the [`SpyAgent`](super::SpyAgent)
//! handle and steered by the faults and rates set there.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::TryStreamExt;
use grpcio::{
    CertificateRequestType, ChannelBuilder, ClientStreamingSink, Environment, Marshaller,
    MessageReader, Method, MethodType, RequestStream, RpcContext, RpcStatus, RpcStatusCode, Server,
    ServerBuilder, ServerCredentialsBuilder, Service, ServiceBuilder, UnarySink,
};
use protobuf::Message;

use crate::proto::envelope::{Envelope, EnvelopeBatch};
use crate::proto::ingress::{BatchSenderResponse, IngressResponse, SendResponse};

use super::faults::Faults;
use super::pace::{Pacing, StreamPace};
use super::record::{Recorder, Rpc};

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

/// What every call of the service shares with the handle.
#[derive(Default)]
pub(super) struct State {
    pub(super) record: Recorder,
    pub(super) faults: Faults,
    pub(super) pacing: Pacing,
    pub(super) count_only: bool,
    /// Count-only: decode each batch too (see `SpyAgent::set_decoding`).
    pub(super) decode: AtomicBool,
}

/// What a (re)started server is built from.
pub(super) struct ServerConfig {
    pub(super) ca_pem: Vec<u8>,
    pub(super) cert_pem: Vec<u8>,
    pub(super) key_pem: Vec<u8>,
    pub(super) max_message_bytes: Option<usize>,
}

pub(super) fn stop(mut server: Server, state: &State) {
    let shutdown = server.shutdown();
    server.cancel_all_calls();
    // Paused and delayed readers must run to see their calls cancelled.
    state.faults.set_paused(false);
    state.pacing.release_delayed();
    let _ = futures::executor::block_on(shutdown);
}

/// Builds, binds and starts a server; returns it with its port.
pub(super) fn serve(
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
                    let envelopes = if state.decode.load(Ordering::Relaxed) {
                        // Decoded as a real agent does, then dropped; one
                        // that does not decode ends the stream, as there.
                        EnvelopeBatch::parse_from_bytes(&batch.bytes)
                            .ok()?
                            .batch
                            .len() as u64
                    } else {
                        batch.envelopes
                    };
                    state.record.count(envelopes, batch.bytes.len());
                    Some(envelopes)
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
                    state
                        .record
                        .read(Rpc::BatchSender, call, batch.batch, bytes);
                    Some(count)
                })
            }
        })
    };
    builder = builder.add_client_streaming_handler(&SENDER, {
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
                    state.record.read(Rpc::Sender, call, vec![envelope], bytes);
                    Some(1)
                },
            )
        }
    });
    add_send(builder, state).build()
}

/// `Send`: recorded, or in count-only mode counted as `BatchSender`
/// batches are (and decoded only when told to).
fn add_send(builder: ServiceBuilder, state: &Arc<State>) -> ServiceBuilder {
    let state = state.clone();
    if state.count_only {
        return builder.add_unary_handler(
            &COUNTED_SEND,
            move |ctx: RpcContext<'_>, batch: CountedBatch, sink: UnarySink<SendResponse>| {
                state.record.start_call();
                let envelopes = if state.decode.load(Ordering::Relaxed) {
                    match EnvelopeBatch::parse_from_bytes(&batch.bytes) {
                        Ok(decoded) => decoded.batch.len() as u64,
                        Err(_) => {
                            let status = RpcStatus::with_message(
                                RpcStatusCode::INVALID_ARGUMENT,
                                "a batch that does not decode".into(),
                            );
                            ctx.spawn(async move {
                                let _ = sink.fail(status).await;
                            });
                            return;
                        }
                    }
                } else {
                    batch.envelopes
                };
                state.record.count(envelopes, batch.bytes.len());
                ctx.spawn(async move {
                    let _ = sink.success(SendResponse::new()).await;
                });
            },
        );
    }
    builder.add_unary_handler(
        &SEND,
        move |ctx: RpcContext<'_>, batch: EnvelopeBatch, sink: UnarySink<SendResponse>| {
            let stream = state.record.start_call();
            let bytes = batch.compute_size() as usize;
            state.record.read(Rpc::Send, stream, batch.batch, bytes);
            ctx.spawn(async move {
                let _ = sink.success(SendResponse::new()).await;
            });
        },
    )
}

/// Reads a client stream to its end, recording each message with `record`
/// (which returns how many envelopes it held, or `None` for a message it
/// could not read, which ends the call with INVALID_ARGUMENT), then ends
/// the call as the spy is told to.
fn serve_stream<Req, Resp>(
    ctx: &RpcContext<'_>,
    state: Arc<State>,
    mut stream: RequestStream<Req>,
    sink: ClientStreamingSink<Resp>,
    record: fn(&State, u64, Req) -> Option<u64>,
) where
    Req: Send + 'static,
    Resp: Message + Send + 'static,
{
    let call = state.record.start_call();
    ctx.spawn(async move {
        let mut pace = StreamPace::default();
        loop {
            futures::future::poll_fn(|context| state.faults.poll_reading(context)).await;
            match stream.try_next().await {
                Ok(Some(message)) => {
                    if let Some(status) = state.faults.take_failure() {
                        let _ = sink.fail(status).await;
                        state.record.end_stream();
                        return;
                    }
                    let Some(envelopes) = record(&state, call, message) else {
                        let status = RpcStatus::with_message(
                            RpcStatusCode::INVALID_ARGUMENT,
                            "a batch that does not decode".into(),
                        );
                        let _ = sink.fail(status).await;
                        state.record.end_stream();
                        return;
                    };
                    state.pacing.pace(envelopes);
                    state.pacing.stream_pace(&mut pace, envelopes).await;
                }
                Ok(None) => break,
                // The client cancelled or the connection broke: nobody to answer.
                Err(_) => return,
            }
        }
        let _ = match state.faults.end_of_stream() {
            None => sink.success(Resp::new()).await,
            Some(status) => sink.fail(status).await,
        };
        state.record.end_stream();
    });
}

/// An `EnvelopeBatch` read only as far as counting its envelopes.
struct CountedBatch {
    envelopes: u64,
    bytes: Vec<u8>,
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

/// `loggregator.v2.Ingress/Send`, server side, counting only.
const COUNTED_SEND: Method<CountedBatch, SendResponse> = Method {
    ty: MethodType::Unary,
    name: "/loggregator.v2.Ingress/Send",
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
    let envelopes = count_envelopes(&bytes)?;
    Ok(CountedBatch { envelopes, bytes })
}

fn count_envelopes(bytes: &[u8]) -> grpcio::Result<u64> {
    let mut input = protobuf::CodedInputStream::from_bytes(bytes);
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
    Ok(envelopes)
}
