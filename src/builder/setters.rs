//! One setter a setting, grouped by what the settings govern; each says
//! its default and its limits, which `build()` checks.

use std::time::Duration;

use crate::policy::{Delivery, Overflow};
use crate::source::SourceInfo;
use crate::tls::TlsConfig;

use super::IngressClientBuilder;
// Named in the setters' docs.
#[cfg(doc)]
use super::defaults::{
    AGENT_MAX_MESSAGE_BYTES, DEFAULT_ADDR, DEFAULT_BATCH_MAX_BYTES, DEFAULT_BATCH_MAX_ENVELOPES,
    DEFAULT_CLOSE_ON_DROP_TIMEOUT, DEFAULT_CONFIRM_INTERVAL, DEFAULT_FLUSH_INTERVAL,
    DEFAULT_KEEPALIVE, DEFAULT_PULSE_INTERVAL, DEFAULT_QUEUE_CAPACITY, DEFAULT_QUEUE_MAX_BYTES,
    DEFAULT_RECONNECT_BACKOFF_INITIAL, DEFAULT_RECONNECT_BACKOFF_MAX, DEFAULT_REPLAY_BUFFER_BYTES,
    DEFAULT_STREAMS, DEFAULT_WRITE_TIMEOUT, MAX_QUEUE_CAPACITY, MAX_STREAMS, MIN_KEEPALIVE,
};

/// Where the envelopes go, and what each of them carries.
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
}

/// What may be held between `emit` and the agent, and how it is batched.
impl IngressClientBuilder {
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
    /// its own bound, `replay_buffer_bytes`. The client holds at most
    /// `queue_max_bytes + replay_buffer_bytes + 2 × batch_max_bytes`
    /// beyond what it holds idle (gRPC's copy of the message in flight and
    /// room for the next batch), plus a few hundred bytes per queued
    /// envelope and at most 1 MiB + 32 KiB of small spare buffers (32 KiB
    /// more per emitting thread). glibc's `malloc` can keep freed large
    /// buffers resident beyond that: `MALLOC_MMAP_THRESHOLD_=131072` in the
    /// environment has them returned (docs/delivery.md).
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
}

/// What delivery promises, and how the connection is kept.
impl IngressClientBuilder {
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
    /// confirm what it carried (default [`DEFAULT_CONFIRM_INTERVAL`], 1 s);
    /// a stream that carries half of
    /// [`replay_buffer_bytes`](Self::replay_buffer_bytes) is ended sooner.
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
    /// `batch_max_bytes`). A stream is ended to confirm it once it carries
    /// half of this, and the next one is written meanwhile; when the buffer
    /// is full the client waits for confirmations.
    ///
    /// ```
    /// let builder = loggregator::IngressClient::builder().replay_buffer_bytes(32 << 20);
    /// ```
    pub fn replay_buffer_bytes(mut self, bytes: usize) -> Self {
        self.replay_buffer_bytes = bytes;
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
}

/// The client's own reports: pulse metrics and its health.
impl IngressClientBuilder {
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
}
