//! A `tracing` layer (feature `tracing`): each closed span becomes a Timer
//! envelope carrying W3C trace ids, which a Forwarder Agent feeding an
//! OpenTelemetry Collector turns into a span; each event becomes a Log
//! envelope tagged with its span's ids.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::client::IngressClient;
use crate::envelope::{Envelope, EnvelopeBuilder};
use crate::field_tags::FieldTags;
use crate::source::SourceInfo;

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

    fn emit(&self, envelope: Envelope) {
        self.client.emit_never_waiting(envelope);
    }
}

/// Tells apart the layers on one registry, which all keep their records in
/// the same span extensions (a type map holding one value per type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LayerId(u64);

impl LayerId {
    fn next() -> LayerId {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        LayerId(NEXT.fetch_add(1, Relaxed))
    }
}

/// A span's place in its trace.
#[derive(Clone, Copy, Debug)]
struct SpanIds {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent_span_id: Option<[u8; 8]>,
}

impl SpanIds {
    fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-01",
            Hex::new(&self.trace_id).as_str(),
            Hex::new(&self.span_id).as_str()
        )
    }
}

/// What the layers on one registry keep about a span, once in its
/// extensions: the ids and start are the span's own, so every layer sends
/// the same W3C identity for it; the fields each layer recorded are that
/// layer's until it sends them at close.
struct SpanState {
    ids: SpanIds,
    start: SystemTime,
    /// The first layer's record inline, so the usual single layer costs no
    /// allocation beyond the state itself.
    first: Option<(LayerId, Fields)>,
    others: Vec<(LayerId, Fields)>,
}

impl SpanState {
    fn new(ids: SpanIds, layer: LayerId, fields: Fields) -> SpanState {
        SpanState {
            ids,
            start: SystemTime::now(),
            first: Some((layer, fields)),
            others: Vec::new(),
        }
    }

    fn add(&mut self, layer: LayerId, fields: Fields) {
        if let Some(mine) = self.fields_mut(layer) {
            *mine = fields;
        } else if self.first.is_none() {
            self.first = Some((layer, fields));
        } else {
            self.others.push((layer, fields));
        }
    }

    fn fields_mut(&mut self, layer: LayerId) -> Option<&mut Fields> {
        self.first
            .iter_mut()
            .chain(self.others.iter_mut())
            .find(|(id, _)| *id == layer)
            .map(|(_, fields)| fields)
    }

    fn take(&mut self, layer: LayerId) -> Option<Fields> {
        if self.first.as_ref().is_some_and(|(id, _)| *id == layer) {
            return self.first.take().map(|(_, fields)| fields);
        }
        let at = self.others.iter().position(|(id, _)| *id == layer)?;
        Some(self.others.swap_remove(at).1)
    }
}

/// Field values as tags, capped in number and length.
#[derive(Default)]
struct Fields {
    tags: FieldTags,
    /// The event's `message`, kept apart from the tags and whole: it is the
    /// log's payload.
    message: Option<String>,
    keep_message: bool,
    /// Recording a callsite's own fields, each named once: a value put
    /// now replaces none.
    fresh: bool,
}

/// The tags a span's ids are sent in: fields of these names are left off
/// a span's Timer, whose ids they would contradict.
const ID_TAGS: [&str; 3] = ["trace_id", "span_id", "parent_span_id"];

impl Fields {
    /// For a span's fields, as it is created.
    fn for_span() -> Fields {
        Fields {
            fresh: true,
            ..Fields::default()
        }
    }

    fn for_event() -> Fields {
        Fields {
            keep_message: true,
            fresh: true,
            ..Fields::default()
        }
    }

    fn put(&mut self, name: &'static str, value: &str) {
        if self.keep_message && name == "message" {
            self.message = Some(value.to_string());
        } else if !self.keep_message && ID_TAGS.contains(&name) {
        } else if self.fresh {
            self.tags.put_new(name, value);
        } else {
            self.tags.put(name, value);
        }
    }

    /// Puts the value `write` writes.
    fn put_with(&mut self, name: &'static str, write: impl FnOnce(&mut dyn fmt::Write)) {
        if self.keep_message && name == "message" {
            let mut message = String::new();
            write(&mut message);
            self.message = Some(message);
            return;
        }
        if !self.keep_message && ID_TAGS.contains(&name) {
            return;
        }
        if self.fresh {
            self.tags.put_new_with(name, write);
        } else {
            self.tags.put_with(name, write);
        }
    }

    /// Counts in the client's stats what was left off or cut.
    fn count_losses(&self, client: &IngressClient) {
        self.tags.count_losses(client);
    }

    fn value(&self, name: &str) -> Option<&str> {
        self.tags.value(name)
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field.name(), value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put_with(field.name(), |text| push_decimal(text, value, false));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put_with(field.name(), |text| {
            push_decimal(text, value.unsigned_abs(), value < 0)
        });
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field.name(), if value { "true" } else { "false" });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put_with(field.name(), |text| {
            let _ = write!(text, "{value:?}");
        });
    }
}

/// Writes an integer in decimal, as `Display` would, without the
/// formatting machinery: numbers are the most common fields.
fn push_decimal(text: &mut dyn fmt::Write, mut value: u64, negative: bool) {
    let mut digits = [0u8; 21];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    if negative {
        start -= 1;
        digits[start] = b'-';
    }
    // Only ASCII was written.
    let _ = text.write_str(std::str::from_utf8(&digits[start..]).unwrap_or_default());
}

/// An id in lowercase hex, on the stack: ids are written on every span and
/// event, where an allocation and a formatter call per byte would show.
struct Hex {
    digits: [u8; 32],
    len: usize,
}

/// Each byte's two lowercase hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        pairs[byte] = [DIGITS[byte >> 4], DIGITS[byte & 0xf]];
        byte += 1;
    }
    pairs
};

impl Hex {
    fn new(bytes: &[u8]) -> Hex {
        let mut digits = [0u8; 32];
        for (pair, &byte) in digits.chunks_exact_mut(2).zip(bytes) {
            pair.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
        }
        Hex {
            digits,
            len: bytes.len().min(16) * 2,
        }
    }

    fn as_str(&self) -> &str {
        // Only ASCII digits were written.
        std::str::from_utf8(self.digits()).unwrap_or_default()
    }

    /// The digits, ASCII, as a tag takes them.
    fn digits(&self) -> &[u8] {
        &self.digits[..self.len]
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

/// Random non-zero ids (all-zero ids are invalid in W3C trace context).
fn random_id<const N: usize>() -> [u8; N] {
    loop {
        let mut id = [0u8; N];
        fastrand::fill(&mut id);
        if id.iter().any(|&b| b != 0) {
            return id;
        }
    }
}

fn is_lower_hex(text: &str, digits: usize) -> bool {
    text.len() == digits && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// An id of `N` bytes from lowercase hex; `None` if malformed or all zero.
fn parse_id<const N: usize>(text: &str) -> Option<[u8; N]> {
    if !is_lower_hex(text, N * 2) {
        return None;
    }
    let mut id = [0u8; N];
    for (index, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[index * 2..index * 2 + 2], 16).ok()?;
    }
    id.iter().any(|&b| b != 0).then_some(id)
}

/// The trace id and parent span id of a W3C `traceparent` header
/// (`00-<32 hex>-<16 hex>-<2 hex>`), or `None` if it is malformed.
fn parse_traceparent(header: &str) -> Option<([u8; 16], [u8; 8])> {
    let mut parts = header.trim().split('-');
    let (version, trace_id, span_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || version != "00" || !is_lower_hex(flags, 2) {
        return None;
    }
    Some((parse_id(trace_id)?, parse_id(span_id)?))
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
        let metadata = event.metadata();
        if crate::is_internal(metadata.target()) {
            return;
        }
        let mut fields = Fields::for_event();
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
        fields.count_losses(&self.client);
        self.emit(log.build_in_place());
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
        fields.count_losses(&self.client);
        self.emit(timer.build_in_place());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field_tags::MAX_FIELD_BYTES;

    #[test]
    fn traceparent_headers_are_read_strictly() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let span = "00f067aa0ba902b7";
        let (trace_id, parent) = parse_traceparent(&format!("00-{trace}-{span}-01")).unwrap();
        assert_eq!(
            (Hex::new(&trace_id).as_str(), Hex::new(&parent).as_str()),
            (trace, span)
        );
        for bad in [
            String::new(),
            "garbage".to_string(),
            format!("01-{trace}-{span}-01"),
            format!("00-{}-{span}-01", "0".repeat(32)),
            format!("00-{trace}-{}-01", "0".repeat(16)),
            format!("00-{}-{span}-01", trace.to_uppercase()),
            format!("00-{trace}-{span}"),
            format!("00-{trace}-{span}-01-extra"),
            format!("00-{}-{span}-01", &trace[..31]),
            format!("00-{trace}-{span}-zz"),
            "00-é-é-é".to_string(),
        ] {
            assert_eq!(parse_traceparent(&bad), None, "{bad}");
        }
    }

    #[test]
    fn an_events_message_is_its_payload_kept_whole_and_a_spans_is_a_tag() {
        let long = "x".repeat(MAX_FIELD_BYTES + 1);
        let mut event = Fields::for_event();
        event.put("message", &long.repeat(8));
        assert_eq!(event.message.as_deref(), Some(long.repeat(8).as_str()));
        assert_eq!(event.value("message"), None);
        let mut span = Fields::default();
        span.put("message", &long);
        assert_eq!(span.value("message").map(str::len), Some(MAX_FIELD_BYTES));
    }

    #[test]
    fn each_layer_keeps_its_own_record_of_a_span() {
        let ids = SpanIds {
            trace_id: random_id(),
            span_id: random_id(),
            parent_span_id: None,
        };
        let (a, b, c) = (LayerId::next(), LayerId::next(), LayerId::next());
        let record = |value: &str| {
            let mut fields = Fields::default();
            fields.put("layer", value);
            fields
        };
        let mut state = SpanState::new(ids, a, record("a"));
        state.add(b, record("b"));
        state.add(c, record("c"));
        let seen = |fields: Option<Fields>| fields.and_then(|f| f.value("layer").map(String::from));
        assert_eq!(seen(state.take(b)), Some("b".into()));
        assert_eq!(seen(state.take(b)), None);
        assert_eq!(seen(state.take(a)), Some("a".into()));
        state.add(a, record("a again"));
        assert_eq!(seen(state.take(c)), Some("c".into()));
        assert_eq!(seen(state.take(a)), Some("a again".into()));
        assert!(state.first.is_none() && state.others.is_empty());
    }
}
