//! Envelope builders: one constructor per kind, shared setters for source and tags.
//!
//! Here is the [`Envelope`] itself; `kinds.rs` has the constructors and the
//! setters of one kind, `message.rs` the encoding of each kind's message,
//! `builder.rs` the setters every kind shares and `build`, `encoded.rs`
//! the encoding an envelope carries.

mod builder;
mod encoded;
mod kinds;
mod message;

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use protobuf::Message;

use crate::proto::envelope as pb;

pub use builder::EnvelopeBuilder;
pub(crate) use encoded::Encoded;
pub use kinds::{CounterEnvelope, EventEnvelope, GaugeEnvelope, LogEnvelope, TimerEnvelope, kind};

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
    #[inline]
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

impl EnvelopeKind {
    /// Every kind, in the order of their discriminants.
    pub(crate) const ALL: [EnvelopeKind; 5] = [
        EnvelopeKind::Log,
        EnvelopeKind::Counter,
        EnvelopeKind::Gauge,
        EnvelopeKind::Timer,
        EnvelopeKind::Event,
    ];
}
impl Envelope {
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

/// One readable line: kind, source, the message's fields, then the tags in
/// key order. Non-UTF-8 log bytes are shown escaped.
///
/// ```
/// let env = loggregator::Envelope::counter("requests").delta(5).source("app", "0").tag("k", "v");
/// assert_eq!(env.build().to_string(), "counter app/0 requests delta=5 total=0 {k=v}");
/// ```
impl std::fmt::Display for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        describe(self.as_proto(), f)
    }
}

/// An envelope's one readable line, for [`Envelope`]'s and the spy's
/// received envelopes' `Display`.
pub(crate) fn describe(env: &pb::Envelope, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    use pb::envelope::Message;
    let kind = match &env.message {
        None => "empty",
        Some(Message::Log(_)) => "log",
        Some(Message::Counter(_)) => "counter",
        Some(Message::Gauge(_)) => "gauge",
        Some(Message::Timer(_)) => "timer",
        Some(Message::Event(_)) => "event",
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
        Some(Message::Counter(c)) => write!(f, " {} delta={} total={}", c.name, c.delta, c.total)?,
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
