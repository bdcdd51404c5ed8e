//! A `tracing` layer (feature `tracing`): each closed span becomes a Timer
//! envelope carrying W3C trace ids, which a Forwarder Agent feeding an
//! OpenTelemetry Collector turns into a span; each event becomes a Log
//! envelope tagged with its span's ids.
//!
//! Here is the layer and what it does at each of a span's and an event's
//! steps; `span.rs` is a span's identity (its W3C ids, `traceparent`) and
//! what the layers on one registry keep about it; `fields.rs` the fields
//! they record, as capped tags.

mod fields;
mod span;

use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::client::IngressClient;
use crate::envelope::{Envelope, EnvelopeBuilder};
use crate::queue::Pushed;
use crate::source::SourceInfo;

use fields::Fields;
use span::{Hex, LayerId, SpanIds, SpanState, parse_traceparent, random_id};

/// Sends spans and events recorded with `tracing` to Loggregator.
///
/// - A span, when it closes, becomes one Timer envelope: its name, the
///   times it was created and closed, the tags `trace_id` (32 lowercase hex
///   digits), `span_id` (16), `parent_span_id` (16, when it has a parent)
///   and each recorded field as a tag. A root span starts a new random
///   trace; its children inherit it. A span with a field `traceparent`
///   holding a W3C header (`00-<32 hex>-<16 hex>-<2 hex>`) continues that
///   trace, with the header's span as its parent; a malformed header is
///   ignored. A Forwarder Agent feeding an OpenTelemetry Collector turns
///   each such Timer into a span (kind SERVER with a field `peer_type =
///   "Server"`, named by a `uri` field when there is one).
/// - An event becomes one Log envelope: its message, whole, as payload
///   (a log larger than `batch_max_bytes` is dropped and counted in
///   [`Dropped::too_large`](crate::Dropped::too_large), as any log), ERROR
///   and WARN to stderr (`ERR`), the rest `OUT`, tagged `level`, `target`,
///   each field, and its span's `trace_id` and `span_id`.
/// - A `log` record that tracing-log made an event (as
///   `tracing-subscriber`'s `init()` does with its default features) is
///   sent as [`LogBridge`](crate::LogBridge) sends it: tagged with the
///   record's own `level` and `target`, without tracing-log's `log.*`
///   fields, plus its span's ids. So with `init()` one layer sends both
///   facades and no `LogBridge` is installed (tracing-log does not carry a
///   record's key-values).
/// - Field tags are capped: [`MAX_FIELD_TAGS`](crate::MAX_FIELD_TAGS) per
///   envelope and [`MAX_FIELD_BYTES`](crate::MAX_FIELD_BYTES) per value;
///   what is left off or cut is counted in
///   [`Stats::tags_dropped`](crate::Stats::tags_dropped) and
///   [`Stats::values_cut`](crate::Stats::values_cut), as the `log`
///   bridge's key-values are.
///
/// Any number of layers can share one registry: layers of several clients,
/// or copies of one (a clone is a layer of its own), each with its own
/// filter. Each sends every span and event it sees. A span has one identity
/// however many layers send it: the first layer to see it (layers see a
/// span in the order they were added) picks its ids, its parent being the
/// nearest enclosing span that layer sees, and the others send those ids.
///
/// Its emits never wait for room, whatever the client's overflow policy:
/// when the queue is full they are dropped and counted. Nothing recorded on
/// the client's own threads, and none of its own diagnostics (target
/// `loggregator`, `grpcio`), is sent back.
///
/// ```no_run
/// use tracing_subscriber::layer::SubscriberExt;
/// use tracing_subscriber::util::SubscriberInitExt;
///
/// # let client: loggregator::IngressClient = unimplemented!();
/// tracing_subscriber::registry()
///     .with(loggregator::TracingLayer::new(client.clone()))
///     .init();
/// let span = tracing::info_span!("handle", uri = "/v2/apps", peer_type = "Server");
/// let _entered = span.enter();
/// tracing::info!(status = 200, "handled");
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "tracing")))]
#[derive(Debug)]
pub struct TracingLayer {
    client: IngressClient,
    source: Option<SourceInfo>,
    /// Which of a span's per-layer records is this layer's.
    id: LayerId,
}

impl Clone for TracingLayer {
    /// A copy is a layer of its own: installed beside the original (with
    /// another filter, say), each sends what it sees.
    fn clone(&self) -> TracingLayer {
        TracingLayer {
            client: self.client.clone(),
            source: self.source.clone(),
            id: LayerId::next(),
        }
    }
}

impl TracingLayer {
    /// A layer sending through `client`, with the client's default source.
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// let layer = loggregator::TracingLayer::new(client);
    /// ```
    pub fn new(client: IngressClient) -> TracingLayer {
        TracingLayer {
            client,
            source: None,
            id: LayerId::next(),
        }
    }

    /// The source and instance ids of the envelopes (default: the client's
    /// default source, if any).
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// let layer = loggregator::TracingLayer::new(client)
    ///     .source(loggregator::SourceInfo::new("my-service", "0"));
    /// ```
    pub fn source(mut self, source: SourceInfo) -> TracingLayer {
        self.source = Some(source);
        self
    }

    fn stamp<K>(&self, mut builder: EnvelopeBuilder<K>) -> EnvelopeBuilder<K> {
        if let Some(source) = &self.source {
            builder = builder.source(source.source_id(), source.instance_id());
        }
        builder
    }

    /// Queues the envelope; counts what its fields lost only if it went
    /// in (a dropped envelope is counted dropped, whole).
    fn emit(&self, envelope: Envelope, fields: &Fields) {
        if self.client.emit_never_waiting(envelope) == Pushed::Queued {
            fields.count_losses(&self.client);
        }
    }
}

/// The `level` tag's value.
fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        _ => "trace",
    }
}

impl<S> tracing_subscriber::Layer<S> for TracingLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if crate::is_internal(attrs.metadata().target()) {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Fields::for_span();
        attrs.record(&mut fields);
        // Values recorded later replace these.
        fields.fresh = false;
        let mut extensions = span.extensions_mut();
        if let Some(state) = extensions.get_mut::<SpanState>() {
            // Another layer on this registry numbered the span first.
            state.add(self.id, fields);
            return;
        }
        let inherited = span
            .parent()
            .and_then(|parent| parent.extensions().get::<SpanState>().map(|s| s.ids));
        let continued = attrs
            .metadata()
            .fields()
            .field("traceparent")
            .and_then(|_| fields.value("traceparent"))
            .and_then(parse_traceparent);
        let ids = match (continued, inherited) {
            (Some((trace_id, parent)), _) => SpanIds {
                trace_id,
                span_id: random_id(),
                parent_span_id: Some(parent),
            },
            (None, Some(parent)) => SpanIds {
                trace_id: parent.trace_id,
                span_id: random_id(),
                parent_span_id: Some(parent.span_id),
            },
            (None, None) => SpanIds {
                trace_id: random_id(),
                span_id: random_id(),
                parent_span_id: None,
            },
        };
        // `replace`, not `insert`, which asserts: it was just seen absent.
        extensions.replace(SpanState::new(ids, self.id, fields));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        let mine = extensions
            .get_mut::<SpanState>()
            .and_then(|state| state.fields_mut(self.id));
        if let Some(fields) = mine {
            values.record(fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        // A `log` record that tracing-log made an event (as
        // tracing-subscriber's `init()` arranges) carries tracing-log's
        // metadata, target `log`; the record's own target and level are
        // what the tags and the check for our own diagnostics must see.
        let log_record = event.normalized_metadata();
        let metadata = log_record.as_ref().unwrap_or_else(|| event.metadata());
        if crate::is_internal(metadata.target()) {
            return;
        }
        let mut fields = match log_record {
            Some(_) => Fields::for_log_record(),
            None => Fields::for_event(),
        };
        event.record(&mut fields);
        let ids = ctx
            .event_span(event)
            .and_then(|span| span.extensions().get::<SpanState>().map(|s| s.ids));
        let log = Envelope::log(fields.message.take().unwrap_or_default());
        let log = match *metadata.level() {
            Level::ERROR | Level::WARN => log,
            _ => log.stdout(),
        };
        let mut log = self.stamp(log);
        log.push_tag(b"level", level_name(metadata.level()).as_bytes());
        log.push_tag(b"target", metadata.target().as_bytes());
        // The ids come after the fields: a field named like one loses.
        log.push_tags(fields.tags.encoded());
        if let Some(ids) = ids {
            log.push_tag(b"trace_id", Hex::new(&ids.trace_id).digits());
            log.push_tag(b"span_id", Hex::new(&ids.span_id).digits());
        }
        self.emit(log.build_in_place(), &fields);
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let (ids, start, fields) = {
            let mut extensions = span.extensions_mut();
            let Some(state) = extensions.get_mut::<SpanState>() else {
                return;
            };
            let Some(fields) = state.take(self.id) else {
                return;
            };
            (state.ids, state.start, fields)
        };
        let mut timer = self.stamp(Envelope::timer_until_now(span.name(), start));
        timer.push_tags(fields.tags.encoded());
        timer.push_tag(b"trace_id", Hex::new(&ids.trace_id).digits());
        timer.push_tag(b"span_id", Hex::new(&ids.span_id).digits());
        if let Some(parent) = &ids.parent_span_id {
            timer.push_tag(b"parent_span_id", Hex::new(parent).digits());
        }
        self.emit(timer.build_in_place(), &fields);
    }
}

/// The W3C `traceparent` header of the current span, as the
/// [`TracingLayer`]s numbered it (several layers on one registry agree on a
/// span's ids), to put on outgoing requests; `None` outside a span, or when
/// no layer is installed on a `tracing_subscriber` registry.
///
/// ```no_run
/// let span = tracing::info_span!("call-upstream");
/// let _entered = span.enter();
/// if let Some(header) = loggregator::current_traceparent() {
///     // request.header("traceparent", header)
/// }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "tracing")))]
pub fn current_traceparent() -> Option<String> {
    tracing::Span::current()
        .with_subscriber(|(id, dispatch)| {
            let registry = dispatch.downcast_ref::<tracing_subscriber::Registry>()?;
            let span = registry.span(id)?;
            let extensions = span.extensions();
            extensions
                .get::<SpanState>()
                .map(|state| state.ids.traceparent())
        })
        .flatten()
}
