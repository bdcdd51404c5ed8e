//! The builder: every setting, its default, and the checks `build()` makes
//! before anything starts.

use std::time::Duration;

use crate::batch::Stamp;
use crate::client::{Config, IngressClient};
use crate::error::{Error, Result};
use crate::grpc::ChannelSettings;
use crate::policy::{Backoff, Delivery, Overflow};
use crate::queue::QueueSettings;
use crate::sender::{LONGEST_WAIT, Settings};
use crate::source::SourceInfo;
use crate::tls::TlsConfig;

/// Where the agent listens on every BOSH-deployed Cloud Foundry VM.
pub const DEFAULT_ADDR: &str = "localhost:3458";
/// Envelopes that may wait for the sender thread before `emit` starts dropping.
pub const DEFAULT_QUEUE_CAPACITY: usize = 10_000;
/// Encoded bytes that may be held between `emit` and gRPC (the queue, the
/// batch being built, sealed batches, the write in flight) before the
/// overflow policy applies: 16 MiB, room for the default queue of
/// 10,000 envelopes at up to 1.6 KiB each.
pub const DEFAULT_QUEUE_MAX_BYTES: usize = 16 * 1024 * 1024;
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

/// `BatchSender` streams written side by side by default: one, which keeps
/// every envelope in the order it was emitted.
pub const DEFAULT_STREAMS: usize = 1;
/// The most streams a client writes side by side.
pub const MAX_STREAMS: usize = 16;

/// The largest `queue_capacity`: the queue's slots are allocated up front.
pub const MAX_QUEUE_CAPACITY: usize = 1_000_000;

impl IngressClient {
    /// Starts configuring a client.
    ///
    /// ```
    /// let builder = loggregator::IngressClient::builder().queue_capacity(1_000);
    /// ```
    pub fn builder() -> IngressClientBuilder {
        IngressClientBuilder::default()
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
    queue_max_bytes: usize,
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
    self_metrics: bool,
    streams: usize,
}

impl Default for IngressClientBuilder {
    fn default() -> IngressClientBuilder {
        IngressClientBuilder {
            addr: DEFAULT_ADDR.to_string(),
            tls: None,
            global_tags: Vec::new(),
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            queue_max_bytes: DEFAULT_QUEUE_MAX_BYTES,
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
            self_metrics: false,
            streams: DEFAULT_STREAMS,
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

    /// How many encoded bytes may be held between `emit` and gRPC: in the
    /// queue, the batch being built, sealed batches and the write in flight
    /// (default [`DEFAULT_QUEUE_MAX_BYTES`], 16 MiB; at least
    /// `batch_max_bytes`). Beyond it the overflow policy applies exactly as
    /// for a full queue: the envelope is dropped and counted (`queue_full`),
    /// or `Block`/`BlockFor` wait for bytes as for room. With
    /// `queue_capacity`, it bounds what an outage can cost in memory,
    /// whatever the envelopes' sizes; the at-least-once replay buffer has
    /// its own bound, `replay_buffer_bytes`.
    ///
    /// ```
    /// let builder = loggregator::IngressClient::builder().queue_max_bytes(64 << 20);
    /// ```
    pub fn queue_max_bytes(mut self, bytes: usize) -> Self {
        self.queue_max_bytes = bytes;
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
    /// envelope larger than this is dropped (reason `too_large`) by `emit`,
    /// on the emitting thread, which knows its encoded size once it is built.
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
    /// [`DEFAULT_WRITE_TIMEOUT`], 10 s).
    ///
    /// Past it the client takes the connection for dead (a peer that
    /// vanished, lost NAT state, an agent wedged on it: nothing tells TCP
    /// or gRPC so before keepalive would) and leaves it: every stream on it
    /// ends, and the next one opens a new connection. At most once, the
    /// writes held are counted as `gave_up` (the agent may have them); at
    /// least once, whatever the streams carried unconfirmed is written
    /// again. An agent that is alive but reads a stream slower than one
    /// batch per `write_timeout` is treated the same way, so keep it well
    /// above the time the agent takes to read a batch.
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

    /// Sends the client's own health through itself (default off): every
    /// `pulse_interval`, and once more at close, counters with the deltas
    /// since the last report (total 0, so the agent adds them up)
    /// `loggregator_client_emitted`, `_sent`, `_errors`, `_reconnects`,
    /// `_replayed`, and `loggregator_client_dropped` once per reason that
    /// moved (tag `reason`), and a gauge with `loggregator_client_queued`
    /// (envelopes) and `loggregator_client_queued_bytes`. The source is the
    /// client's default source, or else the program's file name as source
    /// id. A delta the queue drops is carried into the next report, as a
    /// pulse counter's is ([`Counter`](crate::Counter)). An interval in
    /// which only the reports themselves can have moved the counts sends
    /// nothing, so an idle client goes quiet under either delivery; the
    /// last report, at close, covers everything but itself. These
    /// envelopes count in `stats()` like any other.
    ///
    /// ```
    /// let builder = loggregator::IngressClient::builder().self_metrics(true);
    /// ```
    pub fn self_metrics(mut self, enabled: bool) -> Self {
        self.self_metrics = enabled;
        self
    }

    /// How many `BatchSender` streams the client writes side by side, on its
    /// one connection (default [`DEFAULT_STREAMS`], 1; at most
    /// [`MAX_STREAMS`], 16). Each sealed batch goes to a stream that can
    /// take a write, so up to this many writes are in flight.
    ///
    /// A real agent reads each stream on its own, about as fast as one
    /// core decodes it (a Forwarder Agent on 2 cores read about 340,000
    /// small envelopes a second from one stream, and about as much again
    /// from a second), so a client that emits more than one stream carries,
    /// and has the CPU to spare, delivers more with 2 or 4.
    /// Envelopes in different batches can then reach the agent out of the
    /// order they were emitted in; within a batch the order holds. The
    /// default stays 1 for that order, and because below that rate a
    /// second stream only adds a call for the agent to keep.
    ///
    /// The byte and count bounds, backoff and the replay buffer are the
    /// client's, shared by every stream, not per stream; flush waits for
    /// everything emitted before it to be written on some stream, close ends
    /// every stream, and at least once each stream is confirmed and replayed
    /// on its own. gRPC keeps a copy of each message in flight, so the
    /// memory bound's `2 × batch_max_bytes` becomes
    /// `(streams + 1) × batch_max_bytes`.
    ///
    /// ```
    /// let builder = loggregator::IngressClient::builder().streams(2);
    /// ```
    pub fn streams(mut self, streams: usize) -> Self {
        self.streams = streams;
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
        let batch_max_envelopes = self.batch_envelopes();
        let config = Config {
            sender: Settings {
                addr: self.addr.clone(),
                batch_max_envelopes,
                batch_max_bytes: self.batch_max_bytes,
                flush_interval: self.flush_interval,
                delivery: self.delivery,
                confirm_interval: self.confirm_interval,
                replay_buffer_bytes: self.replay_buffer_bytes,
                confirm_timeout: self.write_timeout,
                write_timeout: self.write_timeout,
                backoff: Backoff::new(self.reconnect_initial, self.reconnect_max),
                streams: self.streams,
            },
            channel: ChannelSettings {
                addr: self.addr.clone(),
                tls,
                keepalive: self.keepalive,
                reconnect_initial: self.reconnect_initial,
                reconnect_max: self.reconnect_max,
            },
            queue: QueueSettings {
                capacity: self.queue_capacity,
                max_bytes: self.queue_max_bytes,
                nudge_at: batch_max_envelopes.min(self.queue_capacity / 2).max(1),
                batch_max_bytes: self.batch_max_bytes,
                overflow: self.overflow,
            },
            stamp: Stamp::new(&self.global_tags, source.as_ref()),
            addr: self.addr,
            source,
            global_tags: self.global_tags,
            pulse_interval: self.pulse_interval,
            self_metrics: self.self_metrics,
            close_on_drop_timeout: self.close_on_drop_timeout,
        };
        IngressClient::start(config)
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
        if self.streams == 0 || self.streams > MAX_STREAMS {
            return Err(invalid(
                "streams",
                &format!("must be from 1 to {MAX_STREAMS}"),
            ));
        }
        if self.queue_max_bytes < self.batch_max_bytes {
            return Err(invalid(
                "queue_max_bytes",
                &format!(
                    "{} is less than batch_max_bytes ({}); an envelope that fits a batch could never be queued",
                    self.queue_max_bytes, self.batch_max_bytes
                ),
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
