//! The public handle, [`IngressClient`]: `emit`, the metric helpers,
//! `flush`, `close` and `stats`. (`send` is in `send.rs`, `timer` in
//! `timer.rs`.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;

use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::process::ProcessMeter;
use crate::pulse::{Counter, Gauge, PulseCommand};
use crate::queue::Pushed;
use crate::sender::{Control, LONGEST_WAIT, deadline_after};
use crate::stats::Stats;

// Named in the docs of `close`.
#[cfg(doc)]
use super::close::CLOSE_MARGIN;
use super::start::{Config, Inner};

/// Sends envelopes to a Loggregator agent from any thread.
///
/// `emit` never fails and, unless the overflow policy is `Block` or
/// `BlockFor`, never waits: it queues the envelope for the sender thread,
/// or drops and counts it (see [`Stats::dropped`]). The handle
/// is cheap to clone; the sender thread stops when [`close`](Self::close) is
/// called or the last clone is dropped, which flushes with a bounded wait
/// ([`DEFAULT_CLOSE_ON_DROP_TIMEOUT`](crate::DEFAULT_CLOSE_ON_DROP_TIMEOUT)).
///
/// ```no_run
/// use loggregator::{Envelope, IngressClient, TlsConfig};
/// use std::time::{Duration, SystemTime};
///
/// let tls = TlsConfig::from_files("ca.crt", "client.crt", "client.key")?.server_name("metron");
/// let client = IngressClient::builder()
///     .addr("localhost:3458")
///     .tls(tls)
///     .tag("deployment", "cf")
///     .build()?;
///
/// let start = SystemTime::now();
/// client.emit(Envelope::log("hello").source("my-app", "0").stdout().tag("k", "v"));
/// client.emit(Envelope::counter("requests").delta(5));
/// client.emit(Envelope::gauge().metric("cpu", 35.5, "percentage").metric("memory", 1.0e8, "bytes"));
/// client.emit(Envelope::timer("db_query", start, SystemTime::now()));
/// client.emit(Envelope::event("Application Status", "Application is healthy"));
/// client.send(vec![Envelope::event("deploy", "v42").into()], Duration::from_secs(2))?;
/// client.flush(Duration::from_secs(5))?;
/// println!("{:?}", client.stats());
/// client.close(Duration::from_secs(5))?;
/// # Ok::<(), loggregator::Error>(())
/// ```
#[derive(Clone)]
pub struct IngressClient {
    pub(super) inner: Arc<Inner>,
}

impl IngressClient {
    /// Starts the client's threads; the channel connects on the first write.
    pub(crate) fn start(config: Config) -> Result<IngressClient> {
        Ok(IngressClient {
            inner: Arc::new(Inner::start(config)?),
        })
    }

    /// Queues an envelope for the sender thread; returns at once, unless
    /// the overflow policy is `Block` or `BlockFor` and the queue is full.
    ///
    /// The envelope is dropped and counted instead when the queue is full
    /// (in envelopes or in bytes) and the policy says so, when it alone
    /// encodes larger than `batch_max_bytes`, when it is a counter with
    /// delta and total 0 not made with `reset()`, or after `close`. `emit`
    /// runs no code but the client's: the first drop is logged once (target
    /// `loggregator`) by the client's own thread. On the client's own
    /// threads (where a logger that feeds records back into the client
    /// runs) it never waits, whatever the policy.
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// client.emit(loggregator::Envelope::log("hello").source("my-app", "0"));
    /// ```
    pub fn emit(&self, envelope: impl Into<Envelope>) {
        // Whether it went in is the bridges' concern only: the caller's
        // `emit` returns nothing, and pays nothing for the answer.
        let _ = self.inner.queue.emit(envelope.into());
    }

    /// As [`emit`](Self::emit), and says whether the envelope went into
    /// the queue: a bridge counts what it left off an envelope's tags only
    /// for envelopes that were queued.
    pub(crate) fn emit_reporting(&self, envelope: Envelope) -> Pushed {
        self.inner.queue.emit(envelope)
    }

    /// Queues an envelope, or drops and counts it, but never waits for
    /// room: `Block` and `BlockFor` act as `DropNewest`. For emits made
    /// from inside other code's callbacks (a tracing layer).
    #[cfg(feature = "tracing")]
    pub(crate) fn emit_never_waiting(&self, envelope: Envelope) -> Pushed {
        self.inner.queue.emit_never_waiting(envelope)
    }

    /// Reports `source` with every pulse, and lets it do its upkeep every
    /// `upkeep` between them, starting the pulse thread; false once the
    /// client has sent its last pulse (it is closing or closed).
    #[cfg(feature = "metrics")]
    pub(crate) fn add_pulse_source(
        &self,
        source: Arc<dyn crate::pulse::PulseSource>,
        upkeep: Duration,
    ) -> bool {
        self.inner.start_pulse_thread();
        if !self.inner.pulses.add_source(source) {
            return false;
        }
        if let Some(commands) = &*self.inner.pulse_thread.lock() {
            let _ = commands.send(PulseCommand::Upkeep(upkeep));
        }
        true
    }

    /// The live counters behind `stats()`, for a recorder to count in.
    #[cfg(feature = "metrics")]
    pub(crate) fn counters(&self) -> Arc<crate::stats::Counters> {
        self.inner.counters.clone()
    }

    /// Counts tags a bridge (tracing, log) left off an envelope.
    pub(crate) fn count_dropped_tags(&self, count: u64) {
        if count > 0 {
            self.inner
                .counters
                .tags_dropped
                .fetch_add(count, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Counts values a bridge cut to `MAX_FIELD_BYTES`, and panic logs cut to fit.
    pub(crate) fn count_cut_values(&self, count: u64) {
        if count > 0 {
            self.inner
                .counters
                .values_cut
                .fetch_add(count, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Queues an envelope as `overflow` says, whatever the client's policy
    /// (the panic hook waits for room within its own time limit).
    pub(crate) fn emit_as(&self, envelope: Envelope, overflow: crate::policy::Overflow) -> Pushed {
        self.inner.queue.push(envelope, overflow)
    }

    /// The bytes `envelope` takes in a unary send's batch once the client's
    /// tags and source are added, and the most a batch may take
    /// (`batch_max_bytes`).
    pub(crate) fn batch_room(&self, envelope: &Envelope) -> (usize, usize) {
        let inner = &*self.inner;
        (inner.framed_for_send(envelope), inner.batch_max_bytes)
    }

    /// A counter handle for `name`; see [`Counter`]. Its first use starts
    /// the pulse, which sends every `pulse_interval`.
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// let requests = client.counter("requests");
    /// requests.inc();
    /// ```
    pub fn counter(&self, name: &str) -> Counter {
        self.counter_with_tags(name, &[])
    }

    /// A counter handle for `name` with tags; handles with the same name and
    /// tags share one series.
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// client.counter_with_tags("responses", &[("status", "200")]).inc();
    /// ```
    pub fn counter_with_tags(&self, name: &str, tags: &[(&str, &str)]) -> Counter {
        self.inner.start_pulse_thread();
        self.inner.pulses.counter(name, tags)
    }

    /// A gauge handle for `name` in `unit`; see [`Gauge`]. All gauges set
    /// in an interval go out in one Gauge envelope.
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// client.gauge("memory", "bytes").set(1.5e8);
    /// ```
    pub fn gauge(&self, name: &str, unit: &str) -> Gauge {
        self.inner.start_pulse_thread();
        self.inner.pulses.gauge(name, unit)
    }

    /// Sends a gauge with this process's resident memory (bytes), CPU
    /// (percentage of one core), threads and open file descriptors every
    /// `interval`, read from /proc, until the client closes. Linux only:
    /// elsewhere it returns [`Error::Config`].
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// client.process_metrics(std::time::Duration::from_secs(30))?;
    /// # Ok::<(), loggregator::Error>(())
    /// ```
    pub fn process_metrics(&self, interval: Duration) -> Result<()> {
        if interval.is_zero() || interval > LONGEST_WAIT {
            return Err(Error::Config {
                setting: "process_metrics",
                problem: "the interval must be longer than zero and at most a day".into(),
            });
        }
        if ProcessMeter::new().read().is_none() {
            return Err(Error::Config {
                setting: "process_metrics",
                problem: "/proc/self cannot be read (process metrics need Linux)".into(),
            });
        }
        self.inner.start_pulse_thread();
        let sent = match &*self.inner.pulse_thread.lock() {
            Some(commands) => commands
                .send(PulseCommand::ProcessMetrics(interval))
                .is_ok(),
            None => false,
        };
        if sent { Ok(()) } else { Err(Error::Closed) }
    }
}

impl IngressClient {
    /// Waits until everything emitted before this call has been written to
    /// the agent's stream, at most `timeout`.
    ///
    /// Returns [`Error::Undelivered`] when envelopes that `emit` accepted
    /// were lost since the last flush or close that reported losses
    /// (whenever they were lost, and whichever handle flushes: each loss is
    /// reported once), [`Error::Timeout`] when time ran out (the envelopes
    /// stay queued, and losses are left for the next flush or close), and
    /// [`Error::Closed`] after `close`. `Ok` means nothing accepted was
    /// lost since the last report. Drops `emit` made itself (a full queue
    /// under the overflow policy, an envelope too large for any batch, a
    /// zero counter) are the caller's own choice and only in
    /// [`stats`](Self::stats).
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// client.flush(std::time::Duration::from_secs(5))?;
    /// # Ok::<(), loggregator::Error>(())
    /// ```
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        let inner = &*self.inner;
        let started = Instant::now();
        if inner.queue.is_closed() {
            return Err(Error::Closed);
        }
        let deadline = deadline_after(timeout);
        let (reply, replied) = bounded(1);
        inner
            .control
            .send(Control::Flush { deadline, reply })
            .map_err(|_| Error::Closed)?;
        match replied.recv_deadline(deadline) {
            Ok(result) => result.and_then(|()| inner.report_losses()),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(Error::Timeout {
                waited: started.elapsed(),
                undelivered: inner.queue.undelivered(),
            }),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(Error::Closed),
        }
    }

    /// Writes everything queued, half-closes the stream, waits for the agent
    /// to end the call (its confirmation that it read everything) and stops
    /// the sender thread. It returns within `timeout` plus at most
    /// [`CLOSE_MARGIN`] (250 ms), and so does dropping the last handle
    /// (with `close_on_drop_timeout`), on the thread that drops it.
    ///
    /// Emitters blocked for room (`Block`, `BlockFor`) when close begins
    /// are released; their envelopes are counted `dropped.closed` and
    /// reported by this close. [`Error::Undelivered`] reports every
    /// envelope `emit` accepted and the client lost that no flush reported
    /// (as [`flush`](Self::flush) does, those included); `Ok` means there
    /// were none. On timeout the pending gRPC call is cancelled, the thread
    /// stops, and [`Error::Timeout`] says how many envelopes were not
    /// delivered, earlier unreported losses included. Later emits are
    /// dropped (reason `closed`, not reported); closing again returns `Ok`.
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// client.close(std::time::Duration::from_secs(5))?;
    /// # Ok::<(), loggregator::Error>(())
    /// ```
    pub fn close(&self, timeout: Duration) -> Result<()> {
        self.inner.close(timeout)
    }

    /// A snapshot of the counters.
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// let stats = client.stats();
    /// println!("sent {} dropped {}", stats.sent, stats.dropped.total());
    /// ```
    pub fn stats(&self) -> Stats {
        self.inner.queue.stats()
    }

    /// The address the client connects to.
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// assert_eq!(client.addr(), "localhost:3458");
    /// ```
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }
}

impl std::fmt::Debug for IngressClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngressClient")
            .field("addr", &self.inner.addr)
            .field("stats", &self.stats())
            .finish()
    }
}
