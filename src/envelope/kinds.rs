//! One constructor a kind (log, counter, gauge, timer, event), the marker
//! types that name the kinds, and the setters only one kind has.

use super::builder::EnvelopeBuilder;
use super::message;
use super::{Envelope, EnvelopeKind, UnixNanos};
// Named in the docs of `Envelope::timer`.
#[cfg(doc)]
use std::time::SystemTime;

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
    #[inline]
    pub fn log(payload: impl AsRef<[u8]>) -> LogEnvelope {
        let payload = payload.as_ref();
        EnvelopeBuilder::new(EnvelopeKind::Log, payload.len(), |out| {
            message::start_log(out, payload)
        })
    }

    /// A counter named `name` with a delta of 1; the agent adds deltas up into
    /// a total per name, source and tags.
    ///
    /// ```
    /// let env = loggregator::Envelope::counter("requests").delta(5).build();
    /// assert_eq!(env.as_proto().counter().delta, 5);
    /// ```
    pub fn counter(name: impl AsRef<str>) -> CounterEnvelope {
        let name = name.as_ref().as_bytes();
        EnvelopeBuilder::new(EnvelopeKind::Counter, name.len(), |out| {
            message::start_counter(out, name, 1)
        })
    }

    /// A gauge with no metrics yet; add them with
    /// [`metric`](GaugeEnvelope::metric).
    ///
    /// ```
    /// let env = loggregator::Envelope::gauge().metric("cpu", 35.5, "percentage").build();
    /// assert_eq!(env.as_proto().gauge().metrics["cpu"].value, 35.5);
    /// ```
    pub fn gauge() -> GaugeEnvelope {
        EnvelopeBuilder::new(EnvelopeKind::Gauge, 64, message::start_gauge)
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
        name: impl AsRef<str>,
        start: impl Into<UnixNanos>,
        stop: impl Into<UnixNanos>,
    ) -> TimerEnvelope {
        let (start, stop) = (start.into(), stop.into());
        timer_at(name.as_ref(), start, stop, UnixNanos::now())
    }

    /// A timer from `start` until now, stamped now: one clock read for the
    /// stop and the timestamp, for timers that end as they are sent (a
    /// span closing, a timer guard dropped).
    pub(crate) fn timer_until_now(name: &str, start: impl Into<UnixNanos>) -> TimerEnvelope {
        let now = UnixNanos::now();
        timer_at(name, start.into(), now, now)
    }

    /// An event with a title and a body.
    ///
    /// ```
    /// let env = loggregator::Envelope::event("Application Status", "healthy").build();
    /// assert_eq!(env.as_proto().event().title, "Application Status");
    /// ```
    pub fn event(title: impl AsRef<str>, body: impl AsRef<str>) -> EventEnvelope {
        let (title, body) = (title.as_ref().as_bytes(), body.as_ref().as_bytes());
        EnvelopeBuilder::new(EnvelopeKind::Event, title.len() + body.len(), |out| {
            message::start_event(out, title, body)
        })
    }
}

/// A timer envelope stamped at `timestamp`.
fn timer_at(name: &str, start: UnixNanos, stop: UnixNanos, timestamp: UnixNanos) -> TimerEnvelope {
    let name = name.as_bytes();
    EnvelopeBuilder::new_at(EnvelopeKind::Timer, name.len(), timestamp, |out| {
        message::start_timer(out, name, start.as_i64(), stop.as_i64())
    })
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
    #[inline(always)]
    pub fn stdout(self) -> Self {
        self.log_stderr(false)
    }

    /// Marks the log as written to stderr (`ERR`), the default.
    ///
    /// ```
    /// use loggregator::proto::envelope::log::Type;
    ///
    /// let env = loggregator::Envelope::log("x").stdout().stderr().build();
    /// assert_eq!(env.as_proto().log().type_.enum_value(), Ok(Type::ERR));
    /// ```
    #[inline(always)]
    pub fn stderr(self) -> Self {
        self.log_stderr(true)
    }

    fn log_stderr(mut self, stderr: bool) -> Self {
        self.draft.set_log_stderr(stderr);
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
        self.set_numbers(|_, total| (delta, total));
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
        self.set_numbers(|_, _| (0, total));
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
        self.set_numbers(|_, _| (0, 0));
        self.draft.set_reset();
        self
    }

    fn set_numbers(&mut self, numbers: impl FnOnce(u64, u64) -> (u64, u64)) {
        let draft = &mut self.draft;
        message::set_counter_numbers(&mut draft.message, &mut draft.bytes, numbers);
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
    pub fn metric(mut self, name: impl AsRef<str>, value: f64, unit: impl AsRef<str>) -> Self {
        let draft = &mut self.draft;
        message::put_gauge_metric(
            &mut draft.message,
            &mut draft.bytes,
            name.as_ref().as_bytes(),
            value,
            unit.as_ref().as_bytes(),
        );
        self
    }
}
