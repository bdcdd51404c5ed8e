//! The public handle, [`IngressClient`]: `emit`, the metric helpers,
//! `send`, `flush`, `close` and `stats`, and the threads it starts.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use parking_lot::Mutex;
use protobuf::Message;

use crate::LOG_TARGET;
use crate::batch::{Stamp, merge_global_tags};
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::grpc::{ChannelSettings, GrpcTransport};
use crate::process::ProcessMeter;
use crate::proto::envelope as pb;
use crate::pulse::{Counter, Gauge, PulseCommand, Pulses};
use crate::queue::{Queue, QueueSettings};
use crate::self_metrics::SelfMetrics;
use crate::sender::{Control, LONGEST_WAIT, SenderLoop, Settings, deadline_after};
use crate::source::SourceInfo;
use crate::stats::{Counters, DropReason, Stats};

/// The most `close` (and dropping the last handle) takes beyond its
/// timeout: the sender thread's answer may arrive this late, and a sender
/// thread that has not answered by then is cancelled and waited for until
/// then. On its own, the sender thread stops at the timeout.
pub const CLOSE_MARGIN: Duration = Duration::from_millis(250);
/// How long after its deadline close waits for the sender thread's own
/// account of what it gave up, before cancelling it; part of [`CLOSE_MARGIN`].
const REPLY_GRACE: Duration = Duration::from_millis(100);

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
    inner: Arc<Inner>,
}

/// What every clone of the handle shares. Dropping the last handle closes
/// the client; no thread of the client's holds one, so that happens on the
/// caller's thread.
struct Inner {
    addr: String,
    /// The emitting side of the queue; the pulse thread holds it too.
    queue: Arc<Queue>,
    counters: Arc<Counters>,
    pulses: Arc<Pulses>,
    pulse_interval: Duration,
    control: Sender<Control>,
    /// Commands to the pulse thread, once started.
    pulse_thread: Mutex<Option<Sender<PulseCommand>>>,
    /// Disconnects when close begins, stopping the pulse thread.
    closing: Receiver<()>,
    close_signal: Mutex<Option<Sender<()>>>,
    /// Stamped on envelopes of unary sends that name no source.
    source: Option<SourceInfo>,
    global_tags: Vec<(String, String)>,
    batch_max_bytes: usize,
    close_on_drop_timeout: Duration,
    sender_thread: Mutex<Option<SenderThread>>,
}

struct SenderThread {
    handle: JoinHandle<()>,
    /// Disconnects when the thread exits.
    exited: Receiver<()>,
}

/// Everything `build()` checked, to start a client from.
pub(crate) struct Config {
    pub addr: String,
    pub sender: Settings,
    pub channel: ChannelSettings,
    pub queue: QueueSettings,
    pub stamp: Stamp,
    pub source: Option<SourceInfo>,
    pub global_tags: Vec<(String, String)>,
    pub pulse_interval: Duration,
    pub self_metrics: bool,
    pub close_on_drop_timeout: Duration,
}

impl IngressClient {
    /// Starts the sender thread; the channel connects on the first write.
    pub(crate) fn start(config: Config) -> Result<IngressClient> {
        let counters = Arc::new(Counters::default());
        let stamp = Arc::new(config.stamp);
        let (wake, wakeups) = bounded(1);
        let batch_max_bytes = config.queue.batch_max_bytes;
        let (queue, receiver) =
            Queue::new(config.queue, stamp.clone(), counters.clone(), wake.clone());
        let (control, control_rx) = unbounded();
        let (exited_tx, exited) = bounded::<()>(0);
        let (settings, channel) = (config.sender, config.channel);
        let worker_counters = counters.clone();
        let handle = std::thread::Builder::new()
            .name(format!("{}sender", crate::THREAD_PREFIX))
            .spawn(move || {
                crate::mark_own_thread();
                let _exited = exited_tx;
                let transport = GrpcTransport::new(&channel);
                SenderLoop::new(
                    transport,
                    receiver,
                    control_rx,
                    stamp,
                    settings,
                    worker_counters,
                    wake,
                    wakeups,
                )
                .run();
            })
            .map_err(Error::Spawn)?;
        let queue = Arc::new(queue);
        let (close_signal, closing) = bounded::<()>(0);
        let self_metrics = config.self_metrics;
        let client = IngressClient {
            inner: Arc::new(Inner {
                addr: config.addr,
                pulses: Arc::new(Pulses::new(
                    queue.clone(),
                    config
                        .self_metrics
                        .then(|| SelfMetrics::new(config.source.is_some())),
                )),
                queue,
                counters,
                pulse_interval: config.pulse_interval,
                control,
                pulse_thread: Mutex::new(None),
                closing,
                close_signal: Mutex::new(Some(close_signal)),
                source: config.source,
                global_tags: config.global_tags,
                batch_max_bytes,
                close_on_drop_timeout: config.close_on_drop_timeout,
                sender_thread: Mutex::new(Some(SenderThread { handle, exited })),
            }),
        };
        if self_metrics {
            client.start_pulse_thread();
        }
        Ok(client)
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
        self.inner.queue.emit(envelope.into());
    }

    /// Queues an envelope, or drops and counts it, but never waits for
    /// room: `Block` and `BlockFor` act as `DropNewest`. For emits made
    /// from inside other code's callbacks (a tracing layer).
    #[cfg(feature = "tracing")]
    pub(crate) fn emit_never_waiting(&self, envelope: Envelope) {
        self.inner.queue.emit_never_waiting(envelope);
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
        self.start_pulse_thread();
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
    pub(crate) fn counters(&self) -> Arc<Counters> {
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
    pub(crate) fn emit_as(&self, envelope: Envelope, overflow: crate::policy::Overflow) {
        self.inner.queue.push(envelope, overflow);
    }

    /// The bytes `envelope` takes in a batch once the client's tags and
    /// source are added, and the most a batch may take (`batch_max_bytes`).
    pub(crate) fn batch_room(&self, envelope: &Envelope) -> (usize, usize) {
        let inner = &*self.inner;
        let mut proto = envelope.as_proto().clone();
        if let Some(source) = &inner.source {
            source.stamp(&mut proto);
        }
        merge_global_tags(&mut proto, &inner.global_tags);
        let framed = crate::wire::framed_len(proto.compute_size() as usize);
        (framed, inner.batch_max_bytes)
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
        self.start_pulse_thread();
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
        self.start_pulse_thread();
        self.inner.pulses.gauge(name, unit)
    }

    /// Starts timing `name`; the returned guard sends a Timer envelope with
    /// the real start and stop times when it is dropped or stopped, and
    /// nothing if cancelled.
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// {
    ///     let _timer = client.timer("db_query");
    ///     // ... the query ...
    /// } // the Timer envelope is emitted here
    /// ```
    pub fn timer(&self, name: &str) -> TimerGuard {
        TimerGuard {
            client: self.clone(),
            name: name.to_string(),
            start: SystemTime::now(),
            armed: true,
        }
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
        self.start_pulse_thread();
        let sent = match &*self.inner.pulse_thread.lock() {
            Some(commands) => commands
                .send(PulseCommand::ProcessMetrics(interval))
                .is_ok(),
            None => false,
        };
        if sent { Ok(()) } else { Err(Error::Closed) }
    }

    /// Starts the thread behind pulse metrics and process metrics, once.
    fn start_pulse_thread(&self) {
        let mut thread = self.inner.pulse_thread.lock();
        if thread.is_some() || self.inner.queue.is_closed() {
            return;
        }
        let pulses = self.inner.pulses.clone();
        let closing = self.inner.closing.clone();
        match crate::pulse::start_thread(pulses, closing, self.inner.pulse_interval) {
            Ok(commands) => *thread = Some(commands),
            Err(error) => log::error!(target: LOG_TARGET, "cannot start the pulse thread: {error}"),
        }
    }
}

/// Times one operation; made by [`IngressClient::timer`].
///
/// ```no_run
/// # let client: loggregator::IngressClient = unimplemented!();
/// let timer = client.timer("upload");
/// let uploaded = true;
/// if uploaded { timer.stop() } else { timer.cancel() }
/// ```
#[must_use = "the timer stops, and is sent, when this guard is dropped"]
#[derive(Debug)]
pub struct TimerGuard {
    client: IngressClient,
    name: String,
    start: SystemTime,
    armed: bool,
}

impl TimerGuard {
    /// Stops the timer now and sends it.
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// client.timer("step").stop();
    /// ```
    pub fn stop(mut self) {
        self.send();
    }

    /// Drops the timer without sending anything.
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// client.timer("step").cancel();
    /// ```
    pub fn cancel(mut self) {
        self.armed = false;
    }

    fn send(&mut self) {
        if std::mem::take(&mut self.armed) {
            let name = std::mem::take(&mut self.name);
            self.client
                .emit(Envelope::timer(name, self.start, SystemTime::now()));
        }
    }
}

impl Drop for TimerGuard {
    fn drop(&mut self) {
        self.send();
    }
}

impl IngressClient {
    /// Sends envelopes at once with the unary `Send` call and waits for the
    /// agent to confirm them, at most `timeout`. Client-wide tags are added.
    ///
    /// It does not wait for envelopes queued by `emit`, and it is not part of
    /// emit's counts in [`Stats`]; a failure counts in `errors`.
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// use loggregator::Envelope;
    /// use std::time::Duration;
    ///
    /// client.send(vec![Envelope::event("deploy", "v42").into()], Duration::from_secs(2))?;
    /// # Ok::<(), loggregator::Error>(())
    /// ```
    pub fn send(&self, envelopes: Vec<Envelope>, timeout: Duration) -> Result<()> {
        let inner = &*self.inner;
        let started = Instant::now();
        let deadline = deadline_after(timeout);
        if inner.queue.is_closed() {
            return Err(Error::Closed);
        }
        let count = envelopes.len() as u64;
        let timed_out = || Error::Timeout {
            waited: started.elapsed(),
            undelivered: count,
        };
        let (batch, size) = inner.prepare_batch(envelopes)?;
        // Held within the byte budget, like emitted envelopes, from before
        // it is encoded until the call ends: concurrent sends cannot grow
        // memory past it.
        let Some(reservation) = inner.queue.reserve_until(size, deadline) else {
            let error = if inner.queue.is_closed() {
                Error::Closed
            } else {
                timed_out()
            };
            inner.counters.record_error(&error);
            return Err(error);
        };
        let encoded = batch.write_to_bytes();
        // The envelopes are encoded: the caller holds them no longer while
        // it waits for the agent.
        drop(batch);
        let batch =
            encoded.map_err(|e| Error::Rejected(format!("cannot encode the batch: {e}")))?;
        let (reply, replied) = bounded(1);
        inner
            .control
            .send(Control::Send {
                batch,
                reservation,
                deadline,
                reply,
            })
            .map_err(|_| Error::Closed)?;
        // The sender thread answers when the agent does; the call carries
        // the same deadline.
        let result = match replied.recv_deadline(deadline) {
            Ok(Err(Error::Timeout { .. })) => Err(timed_out()),
            Ok(answer) => answer,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(timed_out()),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return Err(Error::Closed),
        };
        result.inspect_err(|error| inner.counters.record_error(error))
    }

    /// Waits until everything emitted before this call has been written to
    /// the agent's stream, at most `timeout`.
    ///
    /// Returns [`Error::Undelivered`] when some of it was dropped because the
    /// agent did not accept it, [`Error::Timeout`] when time ran out (the
    /// envelopes stay queued), and [`Error::Closed`] after `close`.
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
        let failed_before = inner.counters.undeliverable();
        let deadline = deadline_after(timeout);
        let (reply, replied) = bounded(1);
        inner
            .control
            .send(Control::Flush { deadline, reply })
            .map_err(|_| Error::Closed)?;
        match replied.recv_deadline(deadline) {
            Ok(result) => result.and_then(|()| inner.undelivered_since(failed_before)),
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
    /// On timeout the pending gRPC call is cancelled, the thread stops, and
    /// [`Error::Timeout`] says how many envelopes were not delivered. Later
    /// emits are dropped (reason `closed`); closing again returns `Ok`.
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

impl Inner {
    /// `Error::Undelivered` if batches were dropped since `failed_before`
    /// was read; a flush or close covers everything queued before it, so any
    /// such drop may be one of its envelopes.
    fn undelivered_since(&self, failed_before: u64) -> Result<()> {
        let count = self.counters.undeliverable() - failed_before;
        if count == 0 {
            return Ok(());
        }
        let cause = self.counters.snapshot(0, 0).last_error;
        Err(Error::Undelivered {
            count,
            cause: cause.unwrap_or_else(|| "unknown".to_string()),
        })
    }

    /// Encodes envelopes for a unary send, with the global tags merged.
    /// The `EnvelopeBatch` a unary send writes, and its encoded size.
    fn prepare_batch(&self, envelopes: Vec<Envelope>) -> Result<(pb::EnvelopeBatch, usize)> {
        let mut batch = pb::EnvelopeBatch::new();
        for envelope in envelopes {
            if envelope.is_accidental_reset() {
                return Err(Error::Rejected(
                    DropReason::ZeroCounter.describe().to_string(),
                ));
            }
            let mut envelope = envelope.into_proto();
            if let Some(source) = &self.source {
                source.stamp(&mut envelope);
            }
            merge_global_tags(&mut envelope, &self.global_tags);
            batch.batch.push(envelope);
        }
        let size = batch.compute_size() as usize;
        if size > self.batch_max_bytes {
            return Err(Error::Rejected(format!(
                "the batch encodes to {size} bytes, more than batch_max_bytes ({})",
                self.batch_max_bytes
            )));
        }
        Ok((batch, size))
    }

    fn close(&self, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        let deadline = deadline_after(timeout);
        // Another close may be under way: wait for it no longer than our own timeout.
        let Some(mut sender_thread) = self.sender_thread.try_lock_until(deadline) else {
            return Err(Error::Timeout {
                waited: started.elapsed(),
                undelivered: self.queue.undelivered(),
            });
        };
        let Some(thread) = sender_thread.take() else {
            return Ok(());
        };
        // What the counters and gauges gathered since the last pulse.
        self.pulses.send(Some(deadline));
        self.queue.close();
        drop(self.pulse_thread.lock().take());
        drop(self.close_signal.lock().take());
        let failed_before = self.counters.undeliverable();
        let (reply, replied) = bounded(1);
        let _ = self.control.send(Control::Close { deadline, reply });
        let result = match replied.recv_deadline(deadline + REPLY_GRACE) {
            Ok(Err(Error::Timeout { undelivered, .. })) => Err(Error::Timeout {
                waited: started.elapsed(),
                undelivered,
            }),
            Ok(result) => self.undelivered_since(failed_before).and(result),
            Err(_) => {
                let undelivered = self.queue.undelivered();
                Err(Error::Timeout {
                    waited: started.elapsed(),
                    undelivered,
                })
            }
        };
        // The thread ends right after replying: it never waits on gRPC.
        let exited = thread
            .exited
            .recv_deadline(Instant::now().max(deadline) + (CLOSE_MARGIN - REPLY_GRACE));
        let stopped = matches!(
            exited,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected)
        );
        if !stopped || thread.handle.join().is_err() {
            log::error!(target: LOG_TARGET, "the sender thread did not stop; leaving it behind");
        }
        self.queue.stopped();
        // A first drop the sender thread did not live to log.
        self.counters.log_first_drop();
        let stats = self.counters.snapshot(self.queue.len(), self.queue.bytes());
        log::info!(
            target: LOG_TARGET,
            "closed the client for {}: emitted {}, sent {}, dropped {} ({:?})",
            self.addr,
            stats.emitted,
            stats.sent,
            stats.dropped.total(),
            stats.dropped
        );
        result
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(error) = self.close(self.close_on_drop_timeout) {
            log::warn!(target: LOG_TARGET, "closing on drop: {error}");
        }
    }
}
