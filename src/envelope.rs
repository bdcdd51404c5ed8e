//! Envelope builders: one constructor per kind, shared setters for source and tags.

use std::marker::PhantomData;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use protobuf::Message;

use crate::proto::envelope as pb;
use crate::wire::{Reader, framed_len, put_bytes, put_tag, put_varint};

/// One Loggregator v2 envelope, ready to emit.
///
/// Made with [`Envelope::log`], [`Envelope::counter`], [`Envelope::gauge`],
/// [`Envelope::timer`] or [`Envelope::event`]; each returns a builder whose
/// setters chain and which converts into an `Envelope` with `.into()` or
/// [`build`](EnvelopeBuilder::build). The timestamp is set when the builder
/// is made.
///
/// ```
/// use loggregator::Envelope;
///
/// let env: Envelope = Envelope::log("hello").source("my-app", "0").stdout().tag("k", "v").into();
/// assert_eq!(env.as_proto().source_id, "my-app");
/// ```
///
/// An envelope is encoded once, when it is built, on the thread that builds
/// it: `emit` then hands the sender thread one buffer instead of a tree of
/// strings and maps (which another core would have to read and free).
/// [`as_proto`](Envelope::as_proto) decodes it on first use.
#[derive(Clone)]
pub struct Envelope {
    encoded: Encoded,
    /// Decoded on first use of `as_proto`.
    decoded: OnceLock<Box<pb::Envelope>>,
}

/// An envelope's protobuf encoding, with what the client needs to know of
/// it without decoding it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Encoded {
    pub bytes: Vec<u8>,
    pub kind: Option<EnvelopeKind>,
    /// A counter with delta and total 0 not made with `reset()`.
    pub accidental_reset: bool,
    pub has_source_id: bool,
    pub has_instance_id: bool,
    pub has_tags: bool,
    /// It could not be encoded (larger than protobuf allows).
    pub unencodable: bool,
}

impl Encoded {
    fn new(envelope: &pb::Envelope, reset: bool) -> Encoded {
        let (bytes, unencodable) = match envelope.write_to_bytes() {
            Ok(bytes) => (bytes, false),
            Err(_) => (Vec::new(), true),
        };
        let accidental_reset = match &envelope.message {
            Some(pb::envelope::Message::Counter(c)) => c.delta == 0 && c.total == 0 && !reset,
            _ => false,
        };
        Encoded {
            bytes,
            kind: kind_of(envelope),
            accidental_reset,
            has_source_id: !envelope.source_id.is_empty(),
            has_instance_id: !envelope.instance_id.is_empty(),
            has_tags: !envelope.tags.is_empty(),
            unencodable,
        }
    }

    /// The keys of the envelope's tags, read from its encoding.
    pub(crate) fn tag_keys(&self) -> Vec<&[u8]> {
        let mut keys = Vec::new();
        if !self.has_tags {
            return keys;
        }
        let mut input = Reader(&self.bytes);
        while let Some((field, value)) = input.field() {
            if field == (9 << 3) | 2 {
                let mut entry = Reader(value);
                while let Some((field, key)) = entry.field() {
                    if field == (1 << 3) | 2 {
                        keys.push(key);
                    }
                }
            }
        }
        keys
    }
}

fn kind_of(envelope: &pb::Envelope) -> Option<EnvelopeKind> {
    envelope.message.as_ref().map(kind_of_message)
}

fn kind_of_message(message: &pb::envelope::Message) -> EnvelopeKind {
    use pb::envelope::Message;
    match message {
        Message::Log(_) => EnvelopeKind::Log,
        Message::Counter(_) => EnvelopeKind::Counter,
        Message::Gauge(_) => EnvelopeKind::Gauge,
        Message::Timer(_) => EnvelopeKind::Timer,
        Message::Event(_) => EnvelopeKind::Event,
    }
}

/// Appends the envelope's message (the `message` oneof) as its field.
fn put_message(out: &mut Vec<u8>, message: &pb::envelope::Message) -> protobuf::Result<()> {
    use pb::envelope::Message as M;
    let (field, nested): (u32, &dyn protobuf::MessageDyn) = match message {
        M::Log(m) => (4, m),
        M::Counter(m) => (5, m),
        M::Gauge(m) => (6, m),
        M::Timer(m) => (7, m),
        M::Event(m) => (10, m),
    };
    let size = nested.compute_size_dyn();
    let size = u32::try_from(size)
        .map_err(|_| protobuf::Error::from(std::io::Error::other("message too large")))?;
    put_tag(out, field, 2);
    put_varint(out, u64::from(size));
    let mut stream = protobuf::CodedOutputStream::vec(out);
    nested.write_to_with_cached_sizes_dyn(&mut stream)?;
    stream.flush()
}

/// Marker types naming the kind an [`EnvelopeBuilder`] builds.
pub mod kind {
    /// A log line.
    #[derive(Debug, Clone, Copy)]
    pub enum Log {}
    /// A counter increment or total.
    #[derive(Debug, Clone, Copy)]
    pub enum Counter {}
    /// A set of gauge metrics.
    #[derive(Debug, Clone, Copy)]
    pub enum Gauge {}
    /// A timed span.
    #[derive(Debug, Clone, Copy)]
    pub enum Timer {}
    /// A titled event.
    #[derive(Debug, Clone, Copy)]
    pub enum Event {}
}

/// Builds a log envelope; see [`Envelope::log`].
pub type LogEnvelope = EnvelopeBuilder<kind::Log>;
/// Builds a counter envelope; see [`Envelope::counter`].
pub type CounterEnvelope = EnvelopeBuilder<kind::Counter>;
/// Builds a gauge envelope; see [`Envelope::gauge`].
pub type GaugeEnvelope = EnvelopeBuilder<kind::Gauge>;
/// Builds a timer envelope; see [`Envelope::timer`].
pub type TimerEnvelope = EnvelopeBuilder<kind::Timer>;
/// Builds an event envelope; see [`Envelope::event`].
pub type EventEnvelope = EnvelopeBuilder<kind::Event>;

/// A point in time as Unix nanoseconds, the unit of envelope timestamps.
///
/// Converts from [`SystemTime`] (saturating far outside the years 1678 to
/// 2262) and from `i64` nanoseconds.
///
/// ```
/// use loggregator::UnixNanos;
/// use std::time::{Duration, UNIX_EPOCH};
///
/// assert_eq!(UnixNanos::from(UNIX_EPOCH + Duration::from_secs(2)).as_i64(), 2_000_000_000);
/// assert_eq!(UnixNanos::from(5).as_i64(), 5);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixNanos(i64);

impl UnixNanos {
    /// The current time.
    ///
    /// ```
    /// assert!(loggregator::UnixNanos::now().as_i64() > 0);
    /// ```
    pub fn now() -> UnixNanos {
        SystemTime::now().into()
    }

    /// Nanoseconds since the Unix epoch.
    ///
    /// ```
    /// assert_eq!(loggregator::UnixNanos::from(-1).as_i64(), -1);
    /// ```
    pub fn as_i64(self) -> i64 {
        self.0
    }
}

impl From<SystemTime> for UnixNanos {
    fn from(time: SystemTime) -> UnixNanos {
        let nanos = match time.duration_since(UNIX_EPOCH) {
            Ok(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
            Err(before) => i64::try_from(before.duration().as_nanos())
                .map(|n| -n)
                .unwrap_or(i64::MIN),
        };
        UnixNanos(nanos)
    }
}

impl From<i64> for UnixNanos {
    fn from(nanos: i64) -> UnixNanos {
        UnixNanos(nanos)
    }
}

/// The kind of an envelope.
///
/// ```
/// use loggregator::{Envelope, EnvelopeKind};
///
/// assert_eq!(Envelope::gauge().build().kind(), Some(EnvelopeKind::Gauge));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EnvelopeKind {
    /// A log line.
    Log,
    /// A counter.
    Counter,
    /// A set of gauge metrics.
    Gauge,
    /// A timer.
    Timer,
    /// An event.
    Event,
}

impl Envelope {
    /// A log line; `payload` may be any bytes. It goes to stderr (`ERR`) like
    /// the Go client's logs, unless [`stdout`](LogEnvelope::stdout) is called.
    ///
    /// ```
    /// use loggregator::Envelope;
    ///
    /// let env = Envelope::log(&b"\xff raw bytes"[..]).stdout().build();
    /// assert_eq!(env.as_proto().log().payload, b"\xff raw bytes");
    /// ```
    pub fn log(payload: impl Into<Vec<u8>>) -> LogEnvelope {
        let mut log = pb::Log::new();
        log.payload = payload.into();
        log.type_ = pb::log::Type::ERR.into();
        EnvelopeBuilder::new(pb::envelope::Message::Log(log))
    }

    /// A counter named `name` with a delta of 1; the agent adds deltas up into
    /// a total per name, source and tags.
    ///
    /// ```
    /// let env = loggregator::Envelope::counter("requests").delta(5).build();
    /// assert_eq!(env.as_proto().counter().delta, 5);
    /// ```
    pub fn counter(name: impl Into<String>) -> CounterEnvelope {
        let mut counter = pb::Counter::new();
        counter.name = name.into();
        counter.delta = 1;
        EnvelopeBuilder::new(pb::envelope::Message::Counter(counter))
    }

    /// A gauge with no metrics yet; add them with
    /// [`metric`](GaugeEnvelope::metric).
    ///
    /// ```
    /// let env = loggregator::Envelope::gauge().metric("cpu", 35.5, "percentage").build();
    /// assert_eq!(env.as_proto().gauge().metrics["cpu"].value, 35.5);
    /// ```
    pub fn gauge() -> GaugeEnvelope {
        EnvelopeBuilder::new(pb::envelope::Message::Gauge(pb::Gauge::new()))
    }

    /// A timer from `start` to `stop`, each a [`SystemTime`] or Unix nanoseconds.
    ///
    /// ```
    /// use std::time::SystemTime;
    ///
    /// let start = SystemTime::now();
    /// let env = loggregator::Envelope::timer("db_query", start, SystemTime::now()).build();
    /// assert!(env.as_proto().timer().stop >= env.as_proto().timer().start);
    /// ```
    pub fn timer(
        name: impl Into<String>,
        start: impl Into<UnixNanos>,
        stop: impl Into<UnixNanos>,
    ) -> TimerEnvelope {
        let mut timer = pb::Timer::new();
        timer.name = name.into();
        timer.start = start.into().as_i64();
        timer.stop = stop.into().as_i64();
        EnvelopeBuilder::new(pb::envelope::Message::Timer(timer))
    }

    /// An event with a title and a body.
    ///
    /// ```
    /// let env = loggregator::Envelope::event("Application Status", "healthy").build();
    /// assert_eq!(env.as_proto().event().title, "Application Status");
    /// ```
    pub fn event(title: impl Into<String>, body: impl Into<String>) -> EventEnvelope {
        let mut event = pb::Event::new();
        event.title = title.into();
        event.body = body.into();
        EnvelopeBuilder::new(pb::envelope::Message::Event(event))
    }

    /// Wraps a raw protobuf envelope, for fields the builders do not cover.
    /// A zero timestamp is sent as it is: the agent does not fill it in.
    ///
    /// ```
    /// use loggregator::{proto::envelope as pb, Envelope};
    ///
    /// let mut raw = pb::Envelope::new();
    /// raw.timestamp = 1;
    /// assert_eq!(Envelope::from_proto(raw).as_proto().timestamp, 1);
    /// ```
    pub fn from_proto(inner: pb::Envelope) -> Envelope {
        Envelope::encode(inner, false)
    }

    /// Encodes `inner`, dropping it here, on the building thread.
    fn encode(inner: pb::Envelope, reset: bool) -> Envelope {
        Envelope {
            encoded: Encoded::new(&inner, reset),
            decoded: OnceLock::new(),
        }
    }

    /// Its encoding, for the queue to measure before queueing it.
    pub(crate) fn encoded(&self) -> &Encoded {
        &self.encoded
    }

    /// What `emit` queues.
    pub(crate) fn into_encoded(self) -> Encoded {
        self.encoded
    }

    /// Decoding an envelope the client encoded cannot fail; an envelope too
    /// large to encode decodes as empty.
    fn decode(&self) -> pb::Envelope {
        pb::Envelope::parse_from_bytes(&self.encoded.bytes).unwrap_or_default()
    }

    /// The protobuf message that will be sent (before the client's global tags
    /// are merged in).
    ///
    /// ```
    /// let env = loggregator::Envelope::event("t", "b").build();
    /// assert!(env.as_proto().timestamp > 0);
    /// ```
    pub fn as_proto(&self) -> &pb::Envelope {
        self.decoded.get_or_init(|| Box::new(self.decode()))
    }

    /// The protobuf message, by value.
    ///
    /// ```
    /// let raw = loggregator::Envelope::event("t", "b").build().into_proto();
    /// assert_eq!(raw.event().body, "b");
    /// ```
    pub fn into_proto(mut self) -> pb::Envelope {
        match self.decoded.take() {
            Some(decoded) => *decoded,
            None => self.decode(),
        }
    }

    /// Which kind of envelope this is, or `None` for a raw envelope without a
    /// message.
    ///
    /// ```
    /// use loggregator::{Envelope, EnvelopeKind};
    ///
    /// assert_eq!(Envelope::counter("c").build().kind(), Some(EnvelopeKind::Counter));
    /// ```
    pub fn kind(&self) -> Option<EnvelopeKind> {
        self.encoded.kind
    }

    /// True for a counter with `delta == 0 && total == 0` that was not made
    /// with [`CounterEnvelope::reset`]: the agent would reset its total.
    pub(crate) fn is_accidental_reset(&self) -> bool {
        self.encoded.accidental_reset
    }
}

impl PartialEq for Envelope {
    /// Equal when they decode to equal messages (map entries may be encoded
    /// in any order) and agree on being a deliberate reset.
    fn eq(&self, other: &Envelope) -> bool {
        self.encoded.accidental_reset == other.encoded.accidental_reset
            && self.as_proto() == other.as_proto()
    }
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope")
            .field("proto", self.as_proto())
            .field("encoded_len", &self.encoded.bytes.len())
            .finish()
    }
}

impl From<pb::Envelope> for Envelope {
    fn from(inner: pb::Envelope) -> Envelope {
        Envelope::from_proto(inner)
    }
}

/// Builds one envelope of kind `K`; made by the constructors on [`Envelope`].
///
/// The setters shared by every kind live here; kind-specific ones are on
/// [`LogEnvelope`], [`CounterEnvelope`] and [`GaugeEnvelope`].
///
/// ```
/// use loggregator::{Envelope, EnvelopeBuilder};
///
/// let builder = Envelope::event("deploy", "v42").source("my-app", "3").tag("env", "prod");
/// let env = builder.build();
/// assert_eq!(env.as_proto().instance_id, "3");
/// assert_eq!(env.as_proto().tags["env"], "prod");
/// ```
#[derive(Clone, Debug)]
#[must_use = "an envelope builder does nothing until it is emitted"]
pub struct EnvelopeBuilder<K> {
    /// Source ids and tags, encoded as they are set (the last of a repeated
    /// field or map key wins when decoded, as the setters promise); the
    /// timestamp and message are added by `build`.
    fields: Vec<u8>,
    timestamp: i64,
    message: pb::envelope::Message,
    has_source_id: bool,
    has_instance_id: bool,
    has_tags: bool,
    /// Made with [`CounterEnvelope::reset`], the only way to send a counter
    /// with `delta == 0 && total == 0`.
    reset: bool,
    kind: PhantomData<K>,
}

impl<K> EnvelopeBuilder<K> {
    fn new(message: pb::envelope::Message) -> EnvelopeBuilder<K> {
        // Room for the usual ids and tags and the message, so that the
        // envelope is built in one allocation.
        let payload = match &message {
            pb::envelope::Message::Log(log) => log.payload.len(),
            _ => 0,
        };
        EnvelopeBuilder {
            fields: Vec::with_capacity(192 + payload),
            timestamp: UnixNanos::now().as_i64(),
            message,
            has_source_id: false,
            has_instance_id: false,
            has_tags: false,
            reset: false,
            kind: PhantomData,
        }
    }

    /// Sets the source id (the app GUID or component name) and instance id.
    ///
    /// ```
    /// let env = loggregator::Envelope::log("x").source("app-guid", "2").build();
    /// assert_eq!(env.as_proto().source_id, "app-guid");
    /// ```
    pub fn source(self, source_id: impl AsRef<str>, instance_id: impl AsRef<str>) -> Self {
        self.source_id(source_id).instance_id(instance_id)
    }

    /// Sets the source id alone.
    ///
    /// ```
    /// let env = loggregator::Envelope::log("x").source_id("app-guid").build();
    /// assert_eq!(env.as_proto().source_id, "app-guid");
    /// ```
    pub fn source_id(mut self, source_id: impl AsRef<str>) -> Self {
        let source_id = source_id.as_ref();
        put_bytes(&mut self.fields, 2, source_id.as_bytes());
        self.has_source_id = !source_id.is_empty();
        self
    }

    /// Sets the instance id alone.
    ///
    /// ```
    /// let env = loggregator::Envelope::log("x").instance_id("7").build();
    /// assert_eq!(env.as_proto().instance_id, "7");
    /// ```
    pub fn instance_id(mut self, instance_id: impl AsRef<str>) -> Self {
        let instance_id = instance_id.as_ref();
        put_bytes(&mut self.fields, 8, instance_id.as_bytes());
        self.has_instance_id = !instance_id.is_empty();
        self
    }

    /// Adds a tag; it wins over a client-wide tag of the same key.
    ///
    /// ```
    /// let env = loggregator::Envelope::log("x").tag("a", "1").tag("a", "2").build();
    /// assert_eq!(env.as_proto().tags["a"], "2");
    /// ```
    pub fn tag(mut self, key: impl AsRef<str>, value: impl AsRef<str>) -> Self {
        let (key, value) = (key.as_ref().as_bytes(), value.as_ref().as_bytes());
        // A map entry: a message of the key (1) and the value (2).
        let entry_len = framed_len(key.len()) + framed_len(value.len());
        put_tag(&mut self.fields, 9, 2);
        put_varint(&mut self.fields, entry_len as u64);
        put_bytes(&mut self.fields, 1, key);
        put_bytes(&mut self.fields, 2, value);
        self.has_tags = true;
        self
    }

    /// Replaces the timestamp taken when the builder was made.
    ///
    /// ```
    /// let env = loggregator::Envelope::log("x").timestamp(42).build();
    /// assert_eq!(env.as_proto().timestamp, 42);
    /// ```
    pub fn timestamp(mut self, at: impl Into<UnixNanos>) -> Self {
        self.timestamp = at.into().as_i64();
        self
    }

    /// Finishes the envelope.
    ///
    /// ```
    /// let env = loggregator::Envelope::counter("c").build();
    /// assert_eq!(env.as_proto().counter().name, "c");
    /// ```
    pub fn build(self) -> Envelope {
        let mut bytes = self.fields;
        if self.timestamp != 0 {
            put_tag(&mut bytes, 1, 0);
            put_varint(&mut bytes, self.timestamp as u64);
        }
        let unencodable = put_message(&mut bytes, &self.message).is_err();
        let accidental_reset = match &self.message {
            pb::envelope::Message::Counter(c) => c.delta == 0 && c.total == 0 && !self.reset,
            _ => false,
        };
        Envelope {
            encoded: Encoded {
                bytes,
                kind: Some(kind_of_message(&self.message)),
                accidental_reset,
                has_source_id: self.has_source_id,
                has_instance_id: self.has_instance_id,
                has_tags: self.has_tags,
                unencodable,
            },
            decoded: OnceLock::new(),
        }
    }
}

impl<K> From<EnvelopeBuilder<K>> for Envelope {
    fn from(builder: EnvelopeBuilder<K>) -> Envelope {
        builder.build()
    }
}

impl EnvelopeBuilder<kind::Log> {
    /// Marks the log as written to stdout (`OUT`).
    ///
    /// ```
    /// use loggregator::proto::envelope::log::Type;
    ///
    /// let env = loggregator::Envelope::log("x").stdout().build();
    /// assert_eq!(env.as_proto().log().type_.enum_value(), Ok(Type::OUT));
    /// ```
    pub fn stdout(self) -> Self {
        self.log_type(pb::log::Type::OUT)
    }

    /// Marks the log as written to stderr (`ERR`), the default.
    ///
    /// ```
    /// use loggregator::proto::envelope::log::Type;
    ///
    /// let env = loggregator::Envelope::log("x").stdout().stderr().build();
    /// assert_eq!(env.as_proto().log().type_.enum_value(), Ok(Type::ERR));
    /// ```
    pub fn stderr(self) -> Self {
        self.log_type(pb::log::Type::ERR)
    }

    fn log_type(mut self, log_type: pb::log::Type) -> Self {
        if let pb::envelope::Message::Log(log) = &mut self.message {
            log.type_ = log_type.into();
        }
        self
    }
}

impl EnvelopeBuilder<kind::Counter> {
    /// Sets the increment since the last envelope for this counter.
    ///
    /// A counter with both delta and total 0 makes the agent reset its total,
    /// so the client refuses to send one (counted as dropped, reason
    /// `zero_counter`) unless it was made with [`reset`](Self::reset).
    ///
    /// ```
    /// let env = loggregator::Envelope::counter("bytes").delta(1024).build();
    /// assert_eq!(env.as_proto().counter().delta, 1024);
    /// ```
    pub fn delta(mut self, delta: u64) -> Self {
        self.with_counter(|counter| counter.delta = delta);
        self
    }

    /// Reports an absolute total instead of an increment: sets `total` and,
    /// like the Go client's total helper, a delta of 0.
    ///
    /// The agent keeps one running total per counter name, source id and
    /// tags (instance id aside) and adds every sender's deltas to it; a
    /// counter with a total *replaces* it, for every sender of that name,
    /// source and tags. Use it only for a counter this process alone
    /// reports; [`delta`](Self::delta) (or [`IngressClient::counter`](crate::IngressClient::counter))
    /// adds up across processes and instances.
    ///
    /// ```
    /// let env = loggregator::Envelope::counter("restarts").total(3).build();
    /// let counter = env.as_proto().counter();
    /// assert_eq!((counter.delta, counter.total), (0, 3));
    /// ```
    pub fn total(mut self, total: u64) -> Self {
        self.with_counter(|counter| {
            counter.total = total;
            counter.delta = 0;
        });
        self
    }

    /// Asks the agent to reset this counter's total to 0 (`delta == 0 &&
    /// total == 0`), the one way to send that combination on purpose.
    ///
    /// ```
    /// let env = loggregator::Envelope::counter("requests").reset().build();
    /// let counter = env.as_proto().counter();
    /// assert_eq!((counter.delta, counter.total), (0, 0));
    /// ```
    pub fn reset(mut self) -> Self {
        self.with_counter(|counter| {
            counter.total = 0;
            counter.delta = 0;
        });
        self.reset = true;
        self
    }

    fn with_counter(&mut self, change: impl FnOnce(&mut pb::Counter)) {
        if let pb::envelope::Message::Counter(counter) = &mut self.message {
            change(counter);
        }
    }
}

impl EnvelopeBuilder<kind::Gauge> {
    /// Adds (or replaces) a metric: its value and unit, for example
    /// `("memory", 1.0e8, "bytes")`.
    ///
    /// ```
    /// let env = loggregator::Envelope::gauge()
    ///     .metric("cpu", 35.5, "percentage")
    ///     .metric("memory", 1.0e8, "bytes")
    ///     .build();
    /// assert_eq!(env.as_proto().gauge().metrics["memory"].unit, "bytes");
    /// ```
    pub fn metric(mut self, name: impl Into<String>, value: f64, unit: impl Into<String>) -> Self {
        if let pb::envelope::Message::Gauge(gauge) = &mut self.message {
            let mut metric = pb::GaugeValue::new();
            metric.value = value;
            metric.unit = unit.into();
            gauge.metrics.insert(name.into(), metric);
        }
        self
    }
}

/// One readable line: kind, source, the message's fields, then the tags in
/// key order. Non-UTF-8 log bytes are shown escaped.
///
/// ```
/// let env = loggregator::Envelope::counter("requests").delta(5).source("app", "0").tag("k", "v");
/// assert_eq!(env.build().to_string(), "counter app/0 requests delta=5 total=0 {k=v}");
/// ```
impl std::fmt::Display for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use pb::envelope::Message;
        let env = self.as_proto();
        let kind = match self.kind() {
            Some(kind) => format!("{kind:?}").to_lowercase(),
            None => "empty".to_string(),
        };
        write!(f, "{kind} {}/{}", env.source_id, env.instance_id)?;
        match &env.message {
            Some(Message::Log(log)) => {
                let stream = match log.type_.enum_value() {
                    Ok(pb::log::Type::OUT) => "OUT",
                    _ => "ERR",
                };
                write!(f, " {stream} \"{}\"", log.payload.escape_ascii())?;
            }
            Some(Message::Counter(c)) => {
                write!(f, " {} delta={} total={}", c.name, c.delta, c.total)?
            }
            Some(Message::Gauge(g)) => {
                let mut metrics: Vec<_> = g.metrics.iter().collect();
                metrics.sort_by(|a, b| a.0.cmp(b.0));
                for (name, metric) in metrics {
                    write!(f, " {name}={}[{}]", metric.value, metric.unit)?;
                }
            }
            Some(Message::Timer(t)) => {
                write!(f, " {} {}ns", t.name, t.stop.saturating_sub(t.start))?;
            }
            Some(Message::Event(e)) => write!(f, " \"{}\": \"{}\"", e.title, e.body)?,
            None => {}
        }
        let mut tags: Vec<_> = env.tags.iter().collect();
        tags.sort();
        if !tags.is_empty() {
            let tags: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
            write!(f, " {{{}}}", tags.join(", "))?;
        }
        Ok(())
    }
}
