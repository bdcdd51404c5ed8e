//! What a test reads off an envelope the spy received, without the
//! generated protobuf types, and the envelopes counted by kind.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::envelope::EnvelopeKind;
use crate::proto::envelope::{self as pb, envelope::Message};

/// One envelope the spy agent received, read field by field.
///
/// Each kind's accessor gives `None` on an envelope of another kind, so a
/// test says what it expects in one line. [`proto`](Self::proto) gives the
/// generated protobuf message, for a field not shown here (the deprecated
/// tags). Displays as one line: kind, source, the message, the tags.
///
/// ```
/// use loggregator::spy::{SpyAgent, TestCerts};
/// use loggregator::{Envelope, EnvelopeKind, IngressClient};
/// use std::time::Duration;
///
/// let certs = TestCerts::generate()?;
/// let agent = SpyAgent::start(&certs)?;
/// let client = IngressClient::builder().addr(agent.addr()).tls(certs.client_tls()?).build()?;
/// client.emit(Envelope::log("hello").source("my-app", "0").tag("k", "v"));
/// client.emit(Envelope::counter("requests").delta(5));
/// client.close(Duration::from_secs(5))?;
///
/// let received = agent.wait_for_envelopes(2, Duration::from_secs(5));
/// let log = &received[0];
/// assert_eq!(log.kind(), Some(EnvelopeKind::Log));
/// assert_eq!((log.source_id(), log.instance_id()), ("my-app", "0"));
/// assert_eq!(log.text().as_deref(), Some("hello"));
/// assert_eq!(log.is_stderr(), Some(true));
/// assert_eq!(log.tag("k"), Some("v"));
/// let counter = received[1].counter().expect("a counter");
/// assert_eq!((counter.name, counter.delta, counter.total), ("requests", 5, 0));
/// assert_eq!(received[1].to_string(), "counter / requests delta=5 total=0");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedEnvelope {
    proto: pb::Envelope,
}

/// A received counter's numbers, from [`ReceivedEnvelope::counter`].
///
/// ```
/// let counter = loggregator::spy::ReceivedCounter { name: "requests", delta: 1, total: 0 };
/// assert_eq!(counter.delta, 1);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceivedCounter<'a> {
    /// The counter's name.
    pub name: &'a str,
    /// What to add to the agent's total (used when `total` is 0).
    pub delta: u64,
    /// The total to set, or 0 to add `delta`.
    pub total: u64,
}

/// A received gauge metric, from [`ReceivedEnvelope::metric`] and
/// [`ReceivedEnvelope::metrics`].
///
/// ```
/// let cpu = loggregator::spy::ReceivedMetric { value: 35.5, unit: "percentage" };
/// assert_eq!(cpu.unit, "percentage");
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReceivedMetric<'a> {
    /// The metric's value.
    pub value: f64,
    /// Its unit, as sent (`bytes`, `percentage`, ...).
    pub unit: &'a str,
}

/// A received timer, from [`ReceivedEnvelope::timer`].
///
/// ```
/// let timer = loggregator::spy::ReceivedTimer { name: "db", start: 1_000, stop: 4_000 };
/// assert_eq!(timer.nanos(), 3_000);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceivedTimer<'a> {
    /// The timer's name.
    pub name: &'a str,
    /// When it started, Unix nanoseconds.
    pub start: i64,
    /// When it stopped, Unix nanoseconds.
    pub stop: i64,
}

impl ReceivedTimer<'_> {
    /// Nanoseconds from start to stop (0 when stop is before start).
    ///
    /// ```
    /// let timer = loggregator::spy::ReceivedTimer { name: "db", start: 5, stop: 2 };
    /// assert_eq!(timer.nanos(), 0);
    /// ```
    pub fn nanos(&self) -> u64 {
        u64::try_from(self.stop.saturating_sub(self.start)).unwrap_or(0)
    }
}

/// A received event, from [`ReceivedEnvelope::event`].
///
/// ```
/// let event = loggregator::spy::ReceivedEvent { title: "deploy", body: "v42" };
/// assert_eq!(event.body, "v42");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceivedEvent<'a> {
    /// The event's title.
    pub title: &'a str,
    /// The event's body.
    pub body: &'a str,
}

impl ReceivedEnvelope {
    pub(super) fn new(proto: pb::Envelope) -> ReceivedEnvelope {
        ReceivedEnvelope { proto }
    }

    /// Its kind; `None` for an envelope without a message.
    ///
    /// ```no_run
    /// # let received: loggregator::spy::ReceivedEnvelope = unimplemented!();
    /// if received.kind() == Some(loggregator::EnvelopeKind::Gauge) { /* … */ }
    /// ```
    pub fn kind(&self) -> Option<EnvelopeKind> {
        kind_of(&self.proto)
    }

    /// Its source id (empty when none was set).
    ///
    /// ```no_run
    /// # let received: loggregator::spy::ReceivedEnvelope = unimplemented!();
    /// assert_eq!(received.source_id(), "my-app");
    /// ```
    pub fn source_id(&self) -> &str {
        &self.proto.source_id
    }

    /// Its instance id (empty when none was set).
    ///
    /// ```no_run
    /// # let received: loggregator::spy::ReceivedEnvelope = unimplemented!();
    /// assert_eq!(received.instance_id(), "0");
    /// ```
    pub fn instance_id(&self) -> &str {
        &self.proto.instance_id
    }

    /// Its timestamp, Unix nanoseconds.
    ///
    /// ```no_run
    /// # let received: loggregator::spy::ReceivedEnvelope = unimplemented!();
    /// assert!(received.timestamp() > 0);
    /// ```
    pub fn timestamp(&self) -> i64 {
        self.proto.timestamp
    }

    /// One tag's value.
    ///
    /// ```no_run
    /// # let received: loggregator::spy::ReceivedEnvelope = unimplemented!();
    /// assert_eq!(received.tag("deployment"), Some("cf"));
    /// ```
    pub fn tag(&self, name: &str) -> Option<&str> {
        self.proto.tags.get(name).map(String::as_str)
    }

    /// Every tag, in key order.
    ///
    /// ```no_run
    /// # let received: loggregator::spy::ReceivedEnvelope = unimplemented!();
    /// let names: Vec<&str> = received.tags().into_keys().collect();
    /// ```
    pub fn tags(&self) -> BTreeMap<&str, &str> {
        sorted(&self.proto.tags)
    }

    /// A log's payload bytes; `None` for another kind.
    ///
    /// ```no_run
    /// # let received: loggregator::spy::ReceivedEnvelope = unimplemented!();
    /// assert_eq!(received.payload(), Some(&b"hello"[..]));
    /// ```
    pub fn payload(&self) -> Option<&[u8]> {
        match &self.proto.message {
            Some(Message::Log(log)) => Some(&log.payload),
            _ => None,
        }
    }

    /// A log's payload as text (bytes that are not UTF-8 replaced by `�`);
    /// `None` for another kind.
    ///
    /// ```no_run
    /// # let received: loggregator::spy::ReceivedEnvelope = unimplemented!();
    /// assert_eq!(received.text().as_deref(), Some("hello"));
    /// ```
    pub fn text(&self) -> Option<Cow<'_, str>> {
        self.payload().map(String::from_utf8_lossy)
    }

    /// Whether a log goes to stderr (`ERR`) rather than stdout (`OUT`);
    /// `None` for another kind.
    ///
    /// ```no_run
    /// # let received: loggregator::spy::ReceivedEnvelope = unimplemented!();
    /// assert_eq!(received.is_stderr(), Some(false));
    /// ```
    pub fn is_stderr(&self) -> Option<bool> {
        match &self.proto.message {
            Some(Message::Log(log)) => Some(log.type_.enum_value() != Ok(pb::log::Type::OUT)),
            _ => None,
        }
    }

    /// A counter's name and numbers; `None` for another kind.
    ///
    /// ```no_run
    /// # let received: loggregator::spy::ReceivedEnvelope = unimplemented!();
    /// assert_eq!(received.counter().map(|c| c.delta), Some(1));
    /// ```
    pub fn counter(&self) -> Option<ReceivedCounter<'_>> {
        match &self.proto.message {
            Some(Message::Counter(counter)) => Some(ReceivedCounter {
                name: &counter.name,
                delta: counter.delta,
                total: counter.total,
            }),
            _ => None,
        }
    }

    /// A gauge's metrics by name, in name order; `None` for another kind.
    ///
    /// ```no_run
    /// # let received: loggregator::spy::ReceivedEnvelope = unimplemented!();
    /// for (name, metric) in received.metrics().unwrap_or_default() {
    ///     println!("{name} = {} {}", metric.value, metric.unit);
    /// }
    /// ```
    pub fn metrics(&self) -> Option<BTreeMap<&str, ReceivedMetric<'_>>> {
        match &self.proto.message {
            Some(Message::Gauge(gauge)) => Some(
                gauge
                    .metrics
                    .iter()
                    .map(|(name, metric)| (name.as_str(), received_metric(metric)))
                    .collect(),
            ),
            _ => None,
        }
    }

    /// One gauge metric; `None` for another kind or a metric the gauge
    /// does not carry.
    ///
    /// ```no_run
    /// # let received: loggregator::spy::ReceivedEnvelope = unimplemented!();
    /// assert_eq!(received.metric("cpu").map(|m| m.value), Some(35.5));
    /// ```
    pub fn metric(&self, name: &str) -> Option<ReceivedMetric<'_>> {
        match &self.proto.message {
            Some(Message::Gauge(gauge)) => gauge.metrics.get(name).map(received_metric),
            _ => None,
        }
    }

    /// A timer's name, start and stop; `None` for another kind.
    ///
    /// ```no_run
    /// # let received: loggregator::spy::ReceivedEnvelope = unimplemented!();
    /// assert_eq!(received.timer().map(|t| t.name), Some("db_query"));
    /// ```
    pub fn timer(&self) -> Option<ReceivedTimer<'_>> {
        match &self.proto.message {
            Some(Message::Timer(timer)) => Some(ReceivedTimer {
                name: &timer.name,
                start: timer.start,
                stop: timer.stop,
            }),
            _ => None,
        }
    }

    /// An event's title and body; `None` for another kind.
    ///
    /// ```no_run
    /// # let received: loggregator::spy::ReceivedEnvelope = unimplemented!();
    /// assert_eq!(received.event().map(|e| e.title), Some("deploy"));
    /// ```
    pub fn event(&self) -> Option<ReceivedEvent<'_>> {
        match &self.proto.message {
            Some(Message::Event(event)) => Some(ReceivedEvent {
                title: &event.title,
                body: &event.body,
            }),
            _ => None,
        }
    }

    /// The generated protobuf message, for a field not shown above.
    ///
    /// ```no_run
    /// # let received: loggregator::spy::ReceivedEnvelope = unimplemented!();
    /// assert!(received.proto().deprecated_tags.is_empty());
    /// ```
    pub fn proto(&self) -> &pb::Envelope {
        &self.proto
    }

    /// The generated protobuf message, owned.
    ///
    /// ```no_run
    /// # let received: loggregator::spy::ReceivedEnvelope = unimplemented!();
    /// let raw: loggregator::proto::envelope::Envelope = received.into_proto();
    /// ```
    pub fn into_proto(self) -> pb::Envelope {
        self.proto
    }
}

impl fmt::Display for ReceivedEnvelope {
    /// The line [`Envelope`](crate::Envelope)'s `Display` writes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::envelope::describe(&self.proto, f)
    }
}

fn received_metric(metric: &pb::GaugeValue) -> ReceivedMetric<'_> {
    ReceivedMetric {
        value: metric.value,
        unit: &metric.unit,
    }
}

fn sorted(tags: &HashMap<String, String>) -> BTreeMap<&str, &str> {
    tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn kind_of(envelope: &pb::Envelope) -> Option<EnvelopeKind> {
    Some(match envelope.message.as_ref()? {
        Message::Log(_) => EnvelopeKind::Log,
        Message::Counter(_) => EnvelopeKind::Counter,
        Message::Gauge(_) => EnvelopeKind::Gauge,
        Message::Timer(_) => EnvelopeKind::Timer,
        Message::Event(_) => EnvelopeKind::Event,
    })
}

/// How many envelopes of each kind the spy received, from
/// [`SpyAgent::kind_counts`](super::SpyAgent::kind_counts); displays as
/// `log=2 counter=1 gauge=1 timer=1 event=2`.
///
/// ```
/// let counts = loggregator::spy::KindCounts::default();
/// assert_eq!(counts.total(), 0);
/// assert_eq!(counts.to_string(), "log=0 counter=0 gauge=0 timer=0 event=0");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KindCounts {
    /// Logs.
    pub log: u64,
    /// Counters.
    pub counter: u64,
    /// Gauges.
    pub gauge: u64,
    /// Timers.
    pub timer: u64,
    /// Events.
    pub event: u64,
    /// Envelopes without a message.
    pub empty: u64,
}

impl KindCounts {
    /// Every envelope counted, of any kind or none.
    ///
    /// ```
    /// let mut counts = loggregator::spy::KindCounts::default();
    /// counts.log = 2;
    /// counts.event = 1;
    /// assert_eq!(counts.total(), 3);
    /// ```
    pub fn total(&self) -> u64 {
        self.log + self.counter + self.gauge + self.timer + self.event + self.empty
    }

    /// How many of `kind`.
    ///
    /// ```
    /// let counts = loggregator::spy::KindCounts::default();
    /// assert_eq!(counts.of(loggregator::EnvelopeKind::Timer), 0);
    /// ```
    pub fn of(&self, kind: EnvelopeKind) -> u64 {
        match kind {
            EnvelopeKind::Log => self.log,
            EnvelopeKind::Counter => self.counter,
            EnvelopeKind::Gauge => self.gauge,
            EnvelopeKind::Timer => self.timer,
            EnvelopeKind::Event => self.event,
        }
    }

    pub(super) fn count(&mut self, envelope: &pb::Envelope) {
        let slot = match kind_of(envelope) {
            Some(EnvelopeKind::Log) => &mut self.log,
            Some(EnvelopeKind::Counter) => &mut self.counter,
            Some(EnvelopeKind::Gauge) => &mut self.gauge,
            Some(EnvelopeKind::Timer) => &mut self.timer,
            Some(EnvelopeKind::Event) => &mut self.event,
            None => &mut self.empty,
        };
        *slot += 1;
    }
}

impl fmt::Display for KindCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "log={} counter={} gauge={} timer={} event={}",
            self.log, self.counter, self.gauge, self.timer, self.event
        )?;
        if self.empty > 0 {
            write!(f, " empty={}", self.empty)?;
        }
        Ok(())
    }
}
