//! Every setting's default, and the limits `build()` holds settings to; each
//! is documented on the setter that changes it.

use std::time::Duration;

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
