//! The public handle, [`IngressClient`], and its builder.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded, unbounded};
use parking_lot::Mutex;
use protobuf::Message;

use crate::LOG_TARGET;
use crate::batch::merge_global_tags;
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::policy::{Backoff, Delivery, Overflow};
use crate::process::ProcessMeter;
use crate::proto::envelope as pb;
use crate::pulse::{Counter, Gauge, Registry};
use crate::source::SourceInfo;
use crate::stats::{Counters, DropReason, Stats};
use crate::tls::TlsConfig;
use crate::transport::{ChannelSettings, GrpcTransport};
use crate::worker::{Control, LONGEST_WAIT, Queued, Room, Settings, Worker, deadline_after};

/// Where the agent listens on every Cloud Foundry VM and container.
pub const DEFAULT_ADDR: &str = "localhost:3458";
/// Envelopes that may wait for the sender thread before `emit` starts dropping.
pub const DEFAULT_QUEUE_CAPACITY: usize = 10_000;
/// Envelopes per `EnvelopeBatch`. The agent pays per gRPC message as much
/// as per envelope, and so does gRPC here: in `cargo bench --bench
/// throughput` gRPC spends about a fifth of the CPU per envelope in batches
/// of 1,000 that it spends in batches of 100. Latency is bounded by the
/// flush interval, not by this cap.
pub const DEFAULT_BATCH_MAX_ENVELOPES: usize = 1000;
/// Encoded bytes per `EnvelopeBatch`; also the largest envelope accepted.
pub const DEFAULT_BATCH_MAX_BYTES: usize = 1024 * 1024;
/// The agent's limit on one gRPC message; `batch_max_bytes` may not exceed it.
pub const AGENT_MAX_MESSAGE_BYTES: usize = 10 * 1024 * 1024;
/// The longest an envelope waits in a partial batch.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// How long one batch write may wait for the agent before the stream is dropped.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long dropping the last handle waits for queued envelopes to be written.
pub const DEFAULT_CLOSE_ON_DROP_TIMEOUT: Duration = Duration::from_secs(5);
/// The first wait before reconnecting after a failure; it doubles each time.
pub const DEFAULT_RECONNECT_BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// The longest wait between reconnect attempts.
pub const DEFAULT_RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often an idle connection is checked with an HTTP/2 ping. The
/// Forwarder and Syslog agents close connections that ping more often than
/// every 5 minutes.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(6 * 60);
/// The shortest keepalive any agent accepts (the Loggregator Agent's 10 s).
pub const MIN_KEEPALIVE: Duration = Duration::from_secs(10);
/// How often counters and gauges are sent.
pub const DEFAULT_PULSE_INTERVAL: Duration = Duration::from_secs(10);
/// At least once: how long a stream is used before it is ended to confirm it.
pub const DEFAULT_CONFIRM_INTERVAL: Duration = Duration::from_secs(1);
/// At least once: the most bytes written but not yet confirmed.
pub const DEFAULT_REPLAY_BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// The largest `queue_capacity`: the queue's slots are allocated up front.
pub const MAX_QUEUE_CAPACITY: usize = 1_000_000;

/// How long a timed-out close waits for the cancelled sender thread to exit.
const ABORT_GRACE: Duration = Duration::from_millis(500);
/// How long after its deadline close waits for the sender's own account of
/// what it gave up, before cancelling it.
const REPLY_GRACE: Duration = Duration::from_millis(200);
/// How many envelopes one `DropOldest` emit evicts at most before it drops
/// its own (other emitters may keep taking the room it makes).
const MAX_EVICTIONS: usize = 8;
/// How often (in emits per thread) `emit` checks whether a batch's worth is
/// waiting for the sender thread: often enough that a full batch waits for
/// a few dozen more emits at most, rarely enough to cost nothing.
const NUDGE_SAMPLE: u64 = 32;

/// Sends envelopes to a Loggregator agent from any thread.
///
/// `emit` never blocks and never fails: it queues the envelope for the
/// sender thread, or drops and counts it (see [`Stats::dropped`]). The handle
/// is cheap to clone; the sender thread stops when [`close`](Self::close) is
/// called or the last clone is dropped, which flushes with a bounded wait
/// ([`DEFAULT_CLOSE_ON_DROP_TIMEOUT`]).
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

struct Inner {
    addr: String,
    data: Sender<Queued>,
    /// Wakes the sender thread when a batch's worth is waiting.
    nudge: Sender<()>,
    /// How many queued envelopes make a batch's worth.
    nudge_at: usize,
    /// Kept so envelopes that slip in after the sender thread stopped can be
    /// counted instead of vanishing with the channel.
    leftovers: Receiver<Queued>,
    control: Sender<Control>,
    counters: Arc<Counters>,
    /// Set when close begins: later emits are dropped.
    closed: AtomicBool,
    /// Set when the sender thread has stopped: a racing emit counts its own envelope.
    stopped: AtomicBool,
    overflow: Overflow,
    registry: Registry,
    pulse_interval: Duration,
    /// Stamped on envelopes that name no source.
    source: Option<SourceInfo>,
    /// Commands to the pulse thread, once started.
    aux: Mutex<Option<Sender<AuxCommand>>>,
    /// Where emitters wait for room in a full queue.
    room: Arc<Room>,
    /// Disconnects when close begins, stopping the pulse thread.
    closing: Receiver<()>,
    close_signal: Mutex<Option<Sender<()>>>,
    batch_max_bytes: usize,
    global_tags: Vec<(String, String)>,
    close_on_drop_timeout: Duration,
    sender_thread: Mutex<Option<SenderThread>>,
}

struct SenderThread {
    handle: JoinHandle<()>,
    /// Disconnects when the thread exits.
    exited: Receiver<()>,
    /// Dropping it cancels whatever gRPC call the thread is waiting on.
    abort: Sender<()>,
}

impl IngressClient {
    /// Starts configuring a client.
    ///
    /// ```
    /// let builder = loggregator::IngressClient::builder().queue_capacity(1_000);
    /// ```
    pub fn builder() -> IngressClientBuilder {
        IngressClientBuilder::default()
    }

    /// Queues an envelope for the sender thread; returns at once.
    ///
    /// The envelope is dropped and counted instead when the queue is full,
    /// when it is a counter with delta and total 0 not made with `reset()`,
    /// or after `close`; the sender thread drops and counts it if it alone
    /// encodes larger than `batch_max_bytes`. The first drop logs one
    /// warning (target `loggregator`).
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// client.emit(loggregator::Envelope::log("hello").source("my-app", "0"));
    /// ```
    pub fn emit(&self, envelope: impl Into<Envelope>) {
        self.inner.emit(envelope.into());
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
        self.start_aux_thread();
        self.inner.registry.counter(name, tags)
    }

    /// A gauge handle for `name` in `unit`; see [`Gauge`]. All gauges set
    /// in an interval go out in one Gauge envelope.
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// client.gauge("memory", "bytes").set(1.5e8);
    /// ```
    pub fn gauge(&self, name: &str, unit: &str) -> Gauge {
        self.start_aux_thread();
        self.inner.registry.gauge(name, unit)
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
        self.start_aux_thread();
        let sent = match &*self.inner.aux.lock() {
            Some(aux) => aux.send(AuxCommand::ProcessMetrics(interval)).is_ok(),
            None => false,
        };
        if sent { Ok(()) } else { Err(Error::Closed) }
    }

    /// Starts the thread behind pulse metrics and process metrics, once.
    fn start_aux_thread(&self) {
        let mut aux = self.inner.aux.lock();
        if aux.is_some() || self.inner.closed.load(Ordering::Acquire) {
            return;
        }
        let (commands, received) = unbounded();
        let inner = Arc::downgrade(&self.inner);
        let closing = self.inner.closing.clone();
        let interval = self.inner.pulse_interval;
        let spawned = std::thread::Builder::new()
            .name("loggregator-pulse".to_string())
            .spawn(move || run_aux(inner, received, closing, interval));
        match spawned {
            Ok(_) => *aux = Some(commands),
            Err(error) => log::error!(target: LOG_TARGET, "cannot start the pulse thread: {error}"),
        }
    }
}

/// Requests to the pulse thread.
enum AuxCommand {
    ProcessMetrics(Duration),
}

/// The pulse thread: sends pulse metrics every `pulse_interval` and, once
/// asked, process metrics; stops when close begins or the client is gone.
fn run_aux(
    inner: std::sync::Weak<Inner>,
    commands: Receiver<AuxCommand>,
    closing: Receiver<()>,
    pulse_interval: Duration,
) {
    let pulse = crossbeam_channel::tick(pulse_interval);
    let mut process: Option<(Receiver<Instant>, ProcessMeter)> = None;
    loop {
        let process_due = process
            .as_ref()
            .map_or_else(crossbeam_channel::never, |(due, _)| due.clone());
        crossbeam_channel::select! {
            recv(closing) -> _ => return,
            recv(commands) -> command => match command {
                Ok(AuxCommand::ProcessMetrics(interval)) => {
                    process = Some((crossbeam_channel::tick(interval), ProcessMeter::new()));
                }
                Err(_) => return,
            },
            recv(pulse) -> _ => {
                let Some(inner) = inner.upgrade() else { return };
                // Never waiting for room: this thread must stay free to stop.
                for envelope in inner.registry.pulse() {
                    inner.emit_with(envelope, Overflow::DropNewest);
                }
            },
            recv(process_due) -> _ => {
                let Some(inner) = inner.upgrade() else { return };
                if let Some(envelope) = process.as_mut().and_then(|(_, meter)| meter.read()) {
                    inner.emit_with(envelope, Overflow::DropNewest);
                }
            },
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
        if inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let count = envelopes.len() as u64;
        let batch = inner.encode_batch(envelopes)?;
        let (reply, replied) = bounded(1);
        inner
            .control
            .send(Control::Send {
                batch,
                deadline,
                reply,
            })
            .map_err(|_| Error::Closed)?;
        let timed_out = || Error::Timeout {
            waited: started.elapsed(),
            undelivered: count,
        };
        let result = match replied.recv_deadline(deadline) {
            // The sender thread got to it too late.
            Ok(Err(Error::Timeout { .. })) => Err(timed_out()),
            // The call carries the same deadline, so this wait ends by then too.
            Ok(pending) => pending.and_then(|pending| pending()),
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
        if inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let failed_before = inner.counters.undeliverable();
        let (reply, replied) = bounded(1);
        inner
            .control
            .send(Control::Flush(reply))
            .map_err(|_| Error::Closed)?;
        match replied.recv_deadline(deadline_after(timeout)) {
            Ok(result) => result.and_then(|()| inner.undelivered_since(failed_before)),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(Error::Timeout {
                waited: started.elapsed(),
                undelivered: inner.undelivered(),
            }),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(Error::Closed),
        }
    }

    /// Writes everything queued, half-closes the stream, waits for the agent
    /// to end the call (its confirmation that it read everything) and stops
    /// the sender thread, all within about `timeout`.
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
        self.inner.counters.snapshot(self.inner.data.len())
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
    fn emit(&self, envelope: Envelope) {
        self.emit_with(envelope, self.overflow);
    }

    fn emit_with(&self, envelope: Envelope, overflow: Overflow) {
        let inner = self;
        let counted_before = inner.counters.emitted.add(1);
        if inner.closed.load(Ordering::Acquire) {
            return inner.drop_envelopes(DropReason::Closed, 1);
        }
        if envelope.is_accidental_reset() {
            return inner.drop_envelopes(DropReason::ZeroCounter, 1);
        }
        // Its size is measured once, by the sender thread as it encodes it,
        // which also drops it if it can never fit a batch.
        let queued = Queued {
            envelope: envelope.into_encoded(),
        };
        let queued = match inner.data.try_send(queued) {
            Ok(()) => {
                if counted_before % NUDGE_SAMPLE == 0 {
                    inner.nudge_if_batch_waiting();
                }
                return inner.queued();
            }
            Err(TrySendError::Full(queued)) => {
                let _ = inner.nudge.try_send(());
                queued
            }
            Err(TrySendError::Disconnected(_)) => {
                return inner.drop_envelopes(DropReason::Closed, 1);
            }
        };
        match overflow {
            Overflow::DropNewest => inner.drop_envelopes(DropReason::QueueFull, 1),
            Overflow::DropOldest => inner.evict_oldest_for(queued),
            Overflow::Block => inner.block_for(queued, None),
            Overflow::BlockFor(wait) => inner.block_for(queued, Some(wait)),
        }
    }

    /// Tells the sender thread, which does not wake for every envelope
    /// while it fills a batch, that a batch's worth is waiting.
    fn nudge_if_batch_waiting(&self) {
        if self.data.len() >= self.nudge_at {
            let _ = self.nudge.try_send(());
        }
    }

    fn drop_envelopes(&self, reason: DropReason, count: u64) {
        if self.counters.drop_envelopes(reason, count) {
            log::warn!(
                target: LOG_TARGET,
                "dropping envelopes: {}; further drops are only counted in stats()",
                reason.describe()
            );
        }
    }

    /// After an envelope went into the queue.
    fn queued(&self) {
        // Pairs with the fence in `close`: either the closer's last drain
        // sees this envelope, or this sees `stopped`.
        fence(Ordering::SeqCst);
        if self.stopped.load(Ordering::Relaxed) {
            self.drain_leftovers();
        }
    }

    fn evict_oldest_for(&self, mut queued: Queued) {
        for _ in 0..MAX_EVICTIONS {
            if self.leftovers.try_recv().is_ok() {
                self.drop_envelopes(DropReason::QueueFull, 1);
            }
            queued = match self.data.try_send(queued) {
                Ok(()) => return self.queued(),
                Err(TrySendError::Full(queued)) => queued,
                Err(TrySendError::Disconnected(_)) => {
                    return self.drop_envelopes(DropReason::Closed, 1);
                }
            };
        }
        self.drop_envelopes(DropReason::QueueFull, 1);
    }

    /// Waits for room, at most `wait`, and never past the start of close.
    fn block_for(&self, mut queued: Queued, wait: Option<Duration>) {
        let deadline = wait.map(deadline_after);
        let room = &*self.room;
        let mut locked = room.lock.lock();
        loop {
            // Counted as waiting before the last look at the queue, so the
            // sender thread's next pass cannot miss this thread.
            room.waiting.fetch_add(1, Ordering::SeqCst);
            let outcome = self.data.try_send(queued);
            let timed_out = match outcome {
                Err(TrySendError::Full(_)) if !self.closed.load(Ordering::SeqCst) => {
                    let _ = self.nudge.try_send(());
                    match deadline {
                        Some(deadline) => room.freed.wait_until(&mut locked, deadline).timed_out(),
                        None => {
                            room.freed.wait(&mut locked);
                            false
                        }
                    }
                }
                _ => false,
            };
            room.waiting.fetch_sub(1, Ordering::SeqCst);
            // The lock is let go before anything that may log: a logger
            // that emits into this client must not wait on it.
            let reason = match outcome {
                Ok(()) => None,
                Err(TrySendError::Disconnected(_)) => Some(DropReason::Closed),
                Err(TrySendError::Full(_)) if self.closed.load(Ordering::SeqCst) => {
                    Some(DropReason::Closed)
                }
                Err(TrySendError::Full(_)) if timed_out => Some(DropReason::QueueFull),
                Err(TrySendError::Full(again)) => {
                    queued = again;
                    continue;
                }
            };
            drop(locked);
            return match reason {
                None => self.queued(),
                Some(reason) => self.drop_envelopes(reason, 1),
            };
        }
    }

    fn undelivered(&self) -> u64 {
        self.data.len() as u64 + self.counters.in_flight.load(Ordering::Relaxed)
    }

    /// `Error::Undelivered` if batches were dropped since `failed_before`
    /// was read; a flush or close covers everything queued before it, so any
    /// such drop may be one of its envelopes.
    fn undelivered_since(&self, failed_before: u64) -> Result<()> {
        let count = self.counters.undeliverable() - failed_before;
        if count == 0 {
            return Ok(());
        }
        let cause = self.counters.snapshot(0).last_error;
        Err(Error::Undelivered {
            count,
            cause: cause.unwrap_or_else(|| "unknown".to_string()),
        })
    }

    fn drain_leftovers(&self) {
        let count = self.leftovers.try_iter().count() as u64;
        if count > 0 {
            self.drop_envelopes(DropReason::Closed, count);
        }
    }

    /// Encodes envelopes for a unary send, with the global tags merged.
    fn encode_batch(&self, envelopes: Vec<Envelope>) -> Result<Vec<u8>> {
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
        batch
            .write_to_bytes()
            .map_err(|e| Error::Rejected(format!("cannot encode the batch: {e}")))
    }

    fn close(&self, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        let deadline = deadline_after(timeout);
        // Another close may be under way: wait for it no longer than our own timeout.
        let Some(mut sender_thread) = self.sender_thread.try_lock_until(deadline) else {
            return Err(Error::Timeout {
                waited: started.elapsed(),
                undelivered: self.undelivered(),
            });
        };
        let Some(thread) = sender_thread.take() else {
            return Ok(());
        };
        // What the counters and gauges gathered since the last pulse; never
        // waiting for room, whatever the overflow policy.
        for envelope in self.registry.pulse() {
            self.emit_with(envelope, Overflow::DropNewest);
        }
        // SeqCst, paired with `block_for`: a waiting emitter either sees
        // this or is counted in `waiting` and woken next.
        self.closed.store(true, Ordering::SeqCst);
        self.room.wake_all();
        drop(self.aux.lock().take());
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
                let undelivered = self.undelivered();
                drop(thread.abort);
                Err(Error::Timeout {
                    waited: started.elapsed(),
                    undelivered,
                })
            }
        };
        // The thread ends right after replying, or promptly once aborted.
        let exited = thread
            .exited
            .recv_deadline(Instant::now().max(deadline) + ABORT_GRACE);
        let stopped = matches!(
            exited,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected)
        );
        if !stopped || thread.handle.join().is_err() {
            log::error!(target: LOG_TARGET, "the sender thread did not stop; leaving it behind");
        }
        self.stopped.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        self.drain_leftovers();
        let stats = self.counters.snapshot(self.data.len());
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

/// Configures and starts an [`IngressClient`]; made by [`IngressClient::builder`].
///
/// Every setting has a default (the `DEFAULT_*` constants) except
/// [`tls`](Self::tls): the agents accept only mutual TLS.
///
/// ```no_run
/// use loggregator::{IngressClient, TlsConfig};
/// use std::time::Duration;
///
/// let client = IngressClient::builder()
///     .tls(TlsConfig::from_files("ca.crt", "client.crt", "client.key")?)
///     .queue_capacity(50_000)
///     .batch_max_envelopes(500)
///     .flush_interval(Duration::from_millis(250))
///     .build()?;
/// # Ok::<(), loggregator::Error>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until build() is called"]
pub struct IngressClientBuilder {
    addr: String,
    tls: Option<TlsConfig>,
    global_tags: Vec<(String, String)>,
    queue_capacity: usize,
    /// `None`: the default, shortened to a smaller queue.
    batch_max_envelopes: Option<usize>,
    batch_max_bytes: usize,
    flush_interval: Duration,
    write_timeout: Duration,
    close_on_drop_timeout: Duration,
    overflow: Overflow,
    delivery: Delivery,
    confirm_interval: Duration,
    replay_buffer_bytes: usize,
    reconnect_initial: Duration,
    reconnect_max: Duration,
    keepalive: Option<Duration>,
    source: Option<SourceInfo>,
    source_from_cf_env: bool,
    pulse_interval: Duration,
}

impl Default for IngressClientBuilder {
    fn default() -> IngressClientBuilder {
        IngressClientBuilder {
            addr: DEFAULT_ADDR.to_string(),
            tls: None,
            global_tags: Vec::new(),
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            batch_max_envelopes: None,
            batch_max_bytes: DEFAULT_BATCH_MAX_BYTES,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            close_on_drop_timeout: DEFAULT_CLOSE_ON_DROP_TIMEOUT,
            overflow: Overflow::default(),
            delivery: Delivery::default(),
            confirm_interval: DEFAULT_CONFIRM_INTERVAL,
            replay_buffer_bytes: DEFAULT_REPLAY_BUFFER_BYTES,
            reconnect_initial: DEFAULT_RECONNECT_BACKOFF_INITIAL,
            reconnect_max: DEFAULT_RECONNECT_BACKOFF_MAX,
            keepalive: Some(DEFAULT_KEEPALIVE),
            source: None,
            source_from_cf_env: false,
            pulse_interval: DEFAULT_PULSE_INTERVAL,
        }
    }
}

impl IngressClientBuilder {
    /// The agent's address, `host:port` (default [`DEFAULT_ADDR`],
    /// `localhost:3458`). The name verified on its certificate is set on the
    /// [`TlsConfig`], not here.
    ///
    /// ```
    /// let builder = loggregator::IngressClient::builder().addr("127.0.0.1:3459");
    /// ```
    pub fn addr(mut self, addr: impl Into<String>) -> Self {
        self.addr = addr.into();
        self
    }

    /// The certificates for mutual TLS; required.
    ///
    /// ```no_run
    /// let tls = loggregator::TlsConfig::from_files("ca.crt", "client.crt", "client.key")?;
    /// let builder = loggregator::IngressClient::builder().tls(tls);
    /// # Ok::<(), loggregator::Error>(())
    /// ```
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Adds a tag to every envelope; an envelope's own tag of the same key wins.
    ///
    /// ```
    /// let builder = loggregator::IngressClient::builder().tag("deployment", "cf").tag("az", "z1");
    /// ```
    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let key = key.into();
        self.global_tags.retain(|(existing, _)| *existing != key);
        self.global_tags.push((key, value.into()));
        self
    }

    /// How many envelopes may wait for the sender thread (default
    /// [`DEFAULT_QUEUE_CAPACITY`], 10,000); beyond it `emit` drops and counts.
    /// Must be at least `batch_max_envelopes` and at most
    /// [`MAX_QUEUE_CAPACITY`]; the queue's memory is reserved up front.
    ///
    /// ```
    /// let builder = loggregator::IngressClient::builder().queue_capacity(100_000);
    /// ```
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity;
        self
    }

    /// The most envelopes in one `EnvelopeBatch` (default
    /// [`DEFAULT_BATCH_MAX_ENVELOPES`], 1,000, or `queue_capacity` if that
    /// is smaller). At most `queue_capacity`.
    ///
    /// ```
    /// let builder = loggregator::IngressClient::builder().batch_max_envelopes(1_000);
    /// ```
    pub fn batch_max_envelopes(mut self, count: usize) -> Self {
        self.batch_max_envelopes = Some(count);
        self
    }

    /// The batch cap in force: as set, or the default fitted to the queue.
    fn batch_envelopes(&self) -> usize {
        self.batch_max_envelopes
            .unwrap_or(DEFAULT_BATCH_MAX_ENVELOPES.min(self.queue_capacity))
    }

    /// The most encoded bytes in one `EnvelopeBatch` (default
    /// [`DEFAULT_BATCH_MAX_BYTES`], 1 MiB; at most
    /// [`AGENT_MAX_MESSAGE_BYTES`], the agent's 10 MiB limit). A single
    /// envelope larger than this is dropped (reason `too_large`) by the
    /// sender thread, which measures each envelope once, as it encodes it.
    ///
    /// ```
    /// let builder = loggregator::IngressClient::builder().batch_max_bytes(4 << 20);
    /// ```
    pub fn batch_max_bytes(mut self, bytes: usize) -> Self {
        self.batch_max_bytes = bytes;
        self
    }

    /// The longest an envelope waits in a partial batch (default
    /// [`DEFAULT_FLUSH_INTERVAL`], 100 ms).
    ///
    /// ```
    /// let builder = loggregator::IngressClient::builder()
    ///     .flush_interval(std::time::Duration::from_millis(500));
    /// ```
    pub fn flush_interval(mut self, interval: std::time::Duration) -> Self {
        self.flush_interval = interval;
        self
    }

    /// How long one batch write may wait for the agent to take it, and how
    /// long the agent may take to end a closed stream (default
    /// [`DEFAULT_WRITE_TIMEOUT`], 10 s). Past it the stream is cancelled; at
    /// most once, the batch is counted as `gave_up` (the agent may have it),
    /// at least once it is written again.
    ///
    /// ```
    /// let builder = loggregator::IngressClient::builder()
    ///     .write_timeout(std::time::Duration::from_secs(2));
    /// ```
    pub fn write_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// How long dropping the last handle waits to deliver what is queued
    /// (default [`DEFAULT_CLOSE_ON_DROP_TIMEOUT`], 5 s).
    ///
    /// ```
    /// let builder = loggregator::IngressClient::builder()
    ///     .close_on_drop_timeout(std::time::Duration::from_secs(1));
    /// ```
    pub fn close_on_drop_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.close_on_drop_timeout = timeout;
        self
    }

    /// What `emit` does when the queue is full (default
    /// [`Overflow::DropNewest`]).
    ///
    /// ```
    /// let builder = loggregator::IngressClient::builder().overflow(loggregator::Overflow::DropOldest);
    /// ```
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.overflow = overflow;
        self
    }

    /// How much delivery is promised (default [`Delivery::AtMostOnce`]).
    ///
    /// ```
    /// let builder = loggregator::IngressClient::builder().delivery(loggregator::Delivery::AtLeastOnce);
    /// ```
    pub fn delivery(mut self, delivery: Delivery) -> Self {
        self.delivery = delivery;
        self
    }

    /// At least once: how long a stream is used before it is ended to
    /// confirm what it carried (default [`DEFAULT_CONFIRM_INTERVAL`], 1 s).
    ///
    /// ```
    /// let builder = loggregator::IngressClient::builder()
    ///     .confirm_interval(std::time::Duration::from_millis(500));
    /// ```
    pub fn confirm_interval(mut self, interval: Duration) -> Self {
        self.confirm_interval = interval;
        self
    }

    /// At least once: the most encoded bytes written but not yet confirmed
    /// (default [`DEFAULT_REPLAY_BUFFER_BYTES`], 8 MiB; at least
    /// `batch_max_bytes`). When it is full the client ends the stream to
    /// confirm it and waits.
    ///
    /// ```
    /// let builder = loggregator::IngressClient::builder().replay_buffer_bytes(32 << 20);
    /// ```
    pub fn replay_buffer_bytes(mut self, bytes: usize) -> Self {
        self.replay_buffer_bytes = bytes;
        self
    }

    /// The wait before the first reconnect attempt after a failure, and the
    /// longest wait it doubles up to (defaults
    /// [`DEFAULT_RECONNECT_BACKOFF_INITIAL`], 100 ms, and
    /// [`DEFAULT_RECONNECT_BACKOFF_MAX`], 5 s). Each wait is drawn at random
    /// from its upper half. Meanwhile envelopes wait in the queue.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let builder = loggregator::IngressClient::builder()
    ///     .reconnect_backoff(Duration::from_millis(50), Duration::from_secs(30));
    /// ```
    pub fn reconnect_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.reconnect_initial = initial;
        self.reconnect_max = max;
        self
    }

    /// How often the connection is checked with an HTTP/2 ping while a
    /// stream is open, or `None` for never (default [`DEFAULT_KEEPALIVE`],
    /// 6 minutes: the Forwarder and Syslog agents close connections that ping
    /// more often than every 5 minutes; at least [`MIN_KEEPALIVE`]).
    ///
    /// ```
    /// let builder = loggregator::IngressClient::builder()
    ///     .keepalive(Some(std::time::Duration::from_secs(30)));
    /// ```
    pub fn keepalive(mut self, interval: Option<Duration>) -> Self {
        self.keepalive = interval;
        self
    }

    /// The source and instance ids of every envelope that does not set its
    /// own (default: none).
    ///
    /// ```
    /// let builder = loggregator::IngressClient::builder()
    ///     .source(loggregator::SourceInfo::new("my-component", "0"));
    /// ```
    pub fn source(mut self, source: SourceInfo) -> Self {
        self.source = Some(source);
        self
    }

    /// Uses the app instance's identity in Cloud Foundry
    /// ([`SourceInfo::from_cf_env`]) as the default source; `build()` then
    /// fails outside Cloud Foundry, saying which variable is missing.
    ///
    /// ```
    /// let builder = loggregator::IngressClient::builder().source_from_cf_env();
    /// ```
    pub fn source_from_cf_env(mut self) -> Self {
        self.source_from_cf_env = true;
        self
    }

    /// How often counters and gauges are sent (default
    /// [`DEFAULT_PULSE_INTERVAL`], 10 s).
    ///
    /// ```
    /// let builder = loggregator::IngressClient::builder()
    ///     .pulse_interval(std::time::Duration::from_secs(60));
    /// ```
    pub fn pulse_interval(mut self, interval: Duration) -> Self {
        self.pulse_interval = interval;
        self
    }

    /// Checks the settings and starts the sender thread. It does not connect:
    /// an agent that is down now is tried again with each batch.
    ///
    /// ```
    /// use loggregator::{Error, IngressClient};
    ///
    /// let err = IngressClient::builder().build().unwrap_err();
    /// assert!(matches!(err, Error::Config { setting: "tls", .. }));
    /// ```
    pub fn build(self) -> Result<IngressClient> {
        let tls = self.validate()?;
        let source = match (&self.source, self.source_from_cf_env) {
            (_, true) => Some(SourceInfo::from_cf_env()?),
            (source, false) => source.clone(),
        };
        let counters = Arc::new(Counters::default());
        let nudge_at = self.batch_envelopes().min(self.queue_capacity / 2).max(1);
        let (data_tx, data_rx) = bounded(self.queue_capacity);
        let (nudge_tx, nudge_rx) = bounded(1);
        let room = Arc::new(Room::default());
        let worker_room = room.clone();
        let (control_tx, control_rx) = unbounded();
        let (abort_tx, abort_rx) = bounded(0);
        let (exited_tx, exited_rx) = bounded::<()>(0);
        let settings = Settings {
            addr: self.addr.clone(),
            source: source.clone(),
            batch_max_envelopes: self.batch_envelopes(),
            batch_max_bytes: self.batch_max_bytes,
            flush_interval: self.flush_interval,
            global_tags: self.global_tags.clone(),
            delivery: self.delivery,
            confirm_interval: self.confirm_interval,
            replay_buffer_bytes: self.replay_buffer_bytes,
            confirm_timeout: self.write_timeout,
            write_timeout: self.write_timeout,
            backoff: Backoff::new(self.reconnect_initial, self.reconnect_max),
        };
        let channel = ChannelSettings {
            addr: self.addr.clone(),
            tls,
            keepalive: self.keepalive,
            reconnect_initial: self.reconnect_initial,
            reconnect_max: self.reconnect_max,
        };
        let (close_signal, closing) = bounded::<()>(0);
        let worker_counters = counters.clone();
        let worker_data = data_rx.clone();
        let handle = std::thread::Builder::new()
            .name("loggregator-sender".to_string())
            .spawn(move || {
                let _exited = exited_tx;
                let transport = GrpcTransport::new(&channel, abort_rx);
                Worker::new(
                    transport,
                    worker_data,
                    nudge_rx,
                    worker_room,
                    control_rx,
                    settings,
                    worker_counters,
                )
                .run();
            })
            .map_err(Error::Spawn)?;
        Ok(IngressClient {
            inner: Arc::new(Inner {
                addr: self.addr,
                data: data_tx,
                nudge: nudge_tx,
                nudge_at,
                room,
                leftovers: data_rx,
                control: control_tx,
                counters,
                closed: AtomicBool::new(false),
                stopped: AtomicBool::new(false),
                overflow: self.overflow,
                registry: Registry::default(),
                pulse_interval: self.pulse_interval,
                aux: Mutex::new(None),
                source,
                closing,
                close_signal: Mutex::new(Some(close_signal)),
                batch_max_bytes: self.batch_max_bytes,
                global_tags: self.global_tags,
                close_on_drop_timeout: self.close_on_drop_timeout,
                sender_thread: Mutex::new(Some(SenderThread {
                    handle,
                    exited: exited_rx,
                    abort: abort_tx,
                })),
            }),
        })
    }

    fn validate(&self) -> Result<TlsConfig> {
        let invalid = |setting: &'static str, problem: &str| Error::Config {
            setting,
            problem: problem.to_string(),
        };
        let Some(tls) = self.tls.clone() else {
            return Err(invalid(
                "tls",
                "is required: the agents accept only mutual TLS (see TlsConfig::from_files)",
            ));
        };
        check_addr(&self.addr).map_err(|problem| invalid("addr", &problem))?;
        let name = tls.verified_name();
        if name.is_empty() || name.contains(|c: char| c == '\0' || c.is_whitespace()) {
            return Err(invalid(
                "server_name",
                &format!("{name:?} is not a host name"),
            ));
        }
        if self.queue_capacity == 0 || self.queue_capacity > MAX_QUEUE_CAPACITY {
            return Err(invalid(
                "queue_capacity",
                &format!("must be from 1 to {MAX_QUEUE_CAPACITY}"),
            ));
        }
        let batch = self.batch_envelopes();
        if batch == 0 {
            return Err(invalid("batch_max_envelopes", "must be at least 1"));
        }
        if batch > self.queue_capacity {
            return Err(invalid(
                "batch_max_envelopes",
                &format!(
                    "{batch} is more than queue_capacity ({}); a batch could never fill",
                    self.queue_capacity
                ),
            ));
        }
        if self.batch_max_bytes < 1024 || self.batch_max_bytes > AGENT_MAX_MESSAGE_BYTES {
            return Err(invalid(
                "batch_max_bytes",
                &format!(
                    "{} is outside 1 KiB to {AGENT_MAX_MESSAGE_BYTES} bytes (the agent's message limit)",
                    self.batch_max_bytes
                ),
            ));
        }
        for (setting, value) in [
            ("flush_interval", self.flush_interval),
            ("write_timeout", self.write_timeout),
            ("close_on_drop_timeout", self.close_on_drop_timeout),
            ("confirm_interval", self.confirm_interval),
            ("pulse_interval", self.pulse_interval),
            ("reconnect_backoff", self.reconnect_initial),
            ("reconnect_backoff", self.reconnect_max),
        ] {
            if value.is_zero() || value > LONGEST_WAIT {
                return Err(invalid(
                    setting,
                    "must be longer than zero and at most a day",
                ));
            }
        }
        if self.reconnect_initial > self.reconnect_max {
            return Err(invalid(
                "reconnect_backoff",
                "the initial wait is longer than the maximum",
            ));
        }
        if self.replay_buffer_bytes < self.batch_max_bytes {
            return Err(invalid(
                "replay_buffer_bytes",
                &format!(
                    "must hold at least one batch ({} bytes)",
                    self.batch_max_bytes
                ),
            ));
        }
        if self
            .keepalive
            .is_some_and(|k| k < MIN_KEEPALIVE || k > LONGEST_WAIT)
        {
            return Err(invalid(
                "keepalive",
                "must be from 10 s (the agents' limit) to a day",
            ));
        }
        if let Overflow::BlockFor(wait) = self.overflow {
            if wait > LONGEST_WAIT {
                return Err(invalid("overflow", "BlockFor waits at most a day"));
            }
        }
        if self.global_tags.iter().any(|(key, _)| key.is_empty()) {
            return Err(invalid("tag", "a tag key must not be empty"));
        }
        Ok(tls)
    }
}

/// Accepts `host:port` (host a name, an IPv4 address or a bracketed IPv6
/// address) and `unix:/path`.
fn check_addr(addr: &str) -> std::result::Result<(), String> {
    if addr.contains(|c: char| c == '\0' || c.is_whitespace()) {
        return Err(format!("{addr:?} contains a NUL byte or white space"));
    }
    if let Some(path) = addr.strip_prefix("unix:") {
        return if path.is_empty() {
            Err(format!("{addr:?} names no socket path"))
        } else {
            Ok(())
        };
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("{addr:?} is not host:port"));
    };
    if host.is_empty() || (host.contains(':') && !(host.starts_with('[') && host.ends_with(']'))) {
        return Err(format!(
            "{addr:?} is not host:port (write IPv6 as [::1]:3458)"
        ));
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(()),
        _ => Err(format!("{addr:?} has no valid port (1 to 65535)")),
    }
}

#[cfg(test)]
mod tests {
    use super::check_addr;

    #[test]
    fn addresses() {
        for good in [
            "localhost:3458",
            "127.0.0.1:3459",
            "[::1]:3458",
            "metron:1",
            "unix:/tmp/a.sock",
        ] {
            assert_eq!(check_addr(good), Ok(()), "{good}");
        }
        for bad in [
            "localhost",
            ":3458",
            "localhost:0",
            "localhost:70000",
            "host:port",
            "::1:3458",
            "a b:1",
            "unix:",
            "x\0:1",
        ] {
            assert!(check_addr(bad).is_err(), "{bad}");
        }
    }
}
