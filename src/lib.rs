//! A blocking client for Cloud Foundry's Loggregator v2 Ingress API.
//!
//! Every BOSH-deployed Cloud Foundry VM (Diego cells included) runs a
//! Loggregator agent on `localhost:3458` that takes logs and metrics over
//! gRPC with mutual TLS from processes holding a certificate signed by the
//! Loggregator CA: platform jobs, add-ons, service brokers, sidecars given
//! the certificates. (Apps in containers normally log through stdout and
//! stderr, which the platform forwards.) This crate lets threaded and
//! synchronous Rust programs send to it with one non-blocking call,
//! [`IngressClient::emit`], from any thread: no async runtime in your code.
//! A dedicated sender thread batches envelopes and writes them on a
//! `BatchSender` stream; what the client holds is bounded in envelopes and
//! in bytes.
//!
//! ```no_run
//! use loggregator::{Envelope, IngressClient, TlsConfig};
//! use std::time::Duration;
//!
//! let tls = TlsConfig::from_files("ca.crt", "client.crt", "client.key")?; // verifies "metron"
//! let client = IngressClient::builder().tls(tls).tag("deployment", "cf").build()?;
//! client.emit(Envelope::log("hello").source("my-app", "0"));
//! client.emit(Envelope::counter("requests").delta(5));
//! client.close(Duration::from_secs(5))?;
//! # Ok::<(), loggregator::Error>(())
//! ```
//!
//! # Features
//!
//! None is on by default; the client, the envelope builders, pulse
//! counters and gauges, process metrics, [`LogBridge`] (which sends `log`
//! records, their key-values as tags) and [`PanicHook`] (which sends a
//! panic's message and backtrace and waits for the agent to have them
//! before the process can die) need none.
//!
//! - `tracing`: [`TracingLayer`], a `tracing-subscriber` layer that sends
//!   each closed span as a Timer envelope carrying W3C trace ids (which a
//!   Forwarder Agent turns into an OpenTelemetry span) and each event as a
//!   log tagged with its span's ids, and [`current_traceparent`], the
//!   current span's `traceparent` header for outgoing requests.
//! - `metrics`: [`MetricsRecorder`], a recorder for the `metrics` facade
//!   that sends what `counter!`, `gauge!` and `histogram!` record with each
//!   pulse, in the shapes Cloud Foundry's prom-scraper gives Prometheus
//!   metrics.
//! - `testing`: the [`spy`] module, a real Ingress server with mutual TLS
//!   that records what it reads, and throwaway certificates for it and the
//!   client, for integration tests without a Cloud Foundry.
//! - `cli`: the `loggregator-pipe` program, which sends each line of its
//!   standard input as a log (or joins a stack trace's lines into one,
//!   `--multiline-start`); with `testing` too, the
//!   `loggregator-spy-agent` program, the spy agent on its own.
//!
//! On docs.rs, which is built with every feature, each item that needs one
//! says which.
//!
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]
// Without its feature an item is not in the crate, so the list above links to
// its page on docs.rs, which is built with every feature.
#![cfg_attr(
    not(feature = "tracing"),
    doc = "[`TracingLayer`]: https://docs.rs/loggregator/latest/loggregator/struct.TracingLayer.html",
    doc = "[`current_traceparent`]: https://docs.rs/loggregator/latest/loggregator/fn.current_traceparent.html"
)]
#![cfg_attr(
    not(feature = "metrics"),
    doc = "[`MetricsRecorder`]: https://docs.rs/loggregator/latest/loggregator/struct.MetricsRecorder.html"
)]
#![cfg_attr(
    not(feature = "testing"),
    doc = "[`spy`]: https://docs.rs/loggregator/latest/loggregator/spy/index.html"
)]

mod batch;
mod builder;
mod client;
mod envelope;
mod error;
mod field_tags;
mod grpc;
mod log_bridge;
#[cfg(feature = "metrics")]
mod metrics_recorder;
mod panic_hook;
mod policy;
mod process;
pub mod proto;
mod pulse;
mod queue;
mod self_metrics;
mod sender;
mod series;
mod source;
mod spares;
mod stats;
mod tls;
#[cfg(feature = "tracing")]
mod tracing_layer;
mod wire;

#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod spy;

// The complete programs in the README and docs/integrations.md run as doc
// tests, so the docs cannot drift from the code; their fragments, which
// need a client from the text around them, are marked `ignore`.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;

#[cfg(doctest)]
#[doc = include_str!("../docs/integrations.md")]
struct IntegrationsExamples;

pub use builder::{
    AGENT_MAX_MESSAGE_BYTES, DEFAULT_ADDR, DEFAULT_BATCH_MAX_BYTES, DEFAULT_BATCH_MAX_ENVELOPES,
    DEFAULT_CLOSE_ON_DROP_TIMEOUT, DEFAULT_CONFIRM_INTERVAL, DEFAULT_FLUSH_INTERVAL,
    DEFAULT_KEEPALIVE, DEFAULT_PULSE_INTERVAL, DEFAULT_QUEUE_CAPACITY, DEFAULT_QUEUE_MAX_BYTES,
    DEFAULT_RECONNECT_BACKOFF_INITIAL, DEFAULT_RECONNECT_BACKOFF_MAX, DEFAULT_REPLAY_BUFFER_BYTES,
    DEFAULT_STREAMS, DEFAULT_WRITE_TIMEOUT, IngressClientBuilder, MAX_QUEUE_CAPACITY, MAX_STREAMS,
    MIN_KEEPALIVE,
};
pub use client::{CLOSE_MARGIN, IngressClient, TimerGuard};
pub use envelope::{
    CounterEnvelope, Envelope, EnvelopeBuilder, EnvelopeKind, EventEnvelope, GaugeEnvelope,
    LogEnvelope, TimerEnvelope, UnixNanos, kind,
};
pub use error::{Error, GlobalSlot, Result};
pub use field_tags::{MAX_FIELD_BYTES, MAX_FIELD_TAGS};
pub use log_bridge::LogBridge;
#[cfg(feature = "metrics")]
pub use metrics_recorder::{
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_SERIES, DEFAULT_QUANTILES, MetricsRecorder,
};
pub use panic_hook::{DEFAULT_PANIC_FLUSH_TIMEOUT, MAX_PANIC_LOG_BYTES, PANIC_COUNTER, PanicHook};
pub use policy::{Delivery, Overflow};
pub use pulse::{Counter, Gauge};
pub use source::SourceInfo;
pub use stats::{Dropped, Stats};
pub use tls::{DEFAULT_SERVER_NAME, TlsConfig};
#[cfg(feature = "tracing")]
pub use tracing_layer::{TracingLayer, current_traceparent};

/// Internals exposed for the fuzz targets and property tests; not a stable API.
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod fuzzing {
    /// One envelope encoded into a batch as the sender thread does it, with
    /// client-wide tags and a default source appended as encoded fields, and
    /// as merging them into the envelope and encoding would; both decode alike.
    ///
    /// ```
    /// use loggregator::proto::envelope::EnvelopeBatch;
    /// use protobuf::Message;
    ///
    /// let env = loggregator::Envelope::log("x").build();
    /// let tags = [("deployment".to_string(), "cf".to_string())];
    /// let (fast, reference) = loggregator::fuzzing::stamped_both_ways(&env, &tags, None);
    /// let decode = |bytes: &[u8]| EnvelopeBatch::parse_from_bytes(bytes).unwrap();
    /// assert_eq!(decode(&fast), decode(&reference));
    /// ```
    pub fn stamped_both_ways(
        envelope: &crate::Envelope,
        global_tags: &[(String, String)],
        source: Option<&crate::SourceInfo>,
    ) -> (Vec<u8>, Vec<u8>) {
        crate::batch::stamped_both_ways(envelope, global_tags, source)
    }
}

/// The `log` target of the crate's own diagnostics, so they can be filtered
/// (and kept out of any logger that forwards to Loggregator).
pub const LOG_TARGET: &str = "loggregator";

/// Every thread the client starts (the sender, the pulse, gRPC's) has a
/// name that starts with this, so it can be told apart in a debugger or `top`.
pub(crate) const THREAD_PREFIX: &str = "loggregator-";

thread_local! {
    /// Set on the client's own threads as they start: a user thread that
    /// happens to share the prefix is not one of them.
    static OWN_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the calling thread as one of the client's own; every thread the
/// client starts calls this first.
pub(crate) fn mark_own_thread() {
    OWN_THREAD.with(|own| own.set(true));
}

/// True on one of the client's own threads: there, `emit` never waits for
/// room (it would wait on itself), and the log bridge sends nothing.
pub(crate) fn on_own_thread() -> bool {
    OWN_THREAD.with(std::cell::Cell::get)
}

/// True for a record the client itself caused: its own diagnostics (target
/// `loggregator`), gRPC's, and whatever runs on its threads. A bridge from
/// another logging crate that sent those back could loop or deadlock.
pub(crate) fn is_internal(target: &str) -> bool {
    let within = |module: &str| {
        target == module
            || target
                .strip_prefix(module)
                .is_some_and(|rest| rest.starts_with("::"))
    };
    within(LOG_TARGET) || within("grpcio") || within("grpcio_sys") || on_own_thread()
}
