//! Delivery counters shared by the handle and the sender thread, and their snapshot.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

/// A snapshot of what the client has done, from [`IngressClient::stats`](crate::IngressClient::stats).
///
/// Every envelope passed to `emit` is counted once in `emitted` and ends up
/// in exactly one of `sent`, `dropped`, `queued` or `in_flight`; after
/// `close`, `emitted == sent + dropped.total()`.
///
/// ```
/// use loggregator::Stats;
///
/// let stats = Stats::default();
/// assert_eq!(stats.emitted, stats.sent + stats.dropped.total() + stats.queued + stats.in_flight);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Envelopes passed to `emit`.
    pub emitted: u64,
    /// Envelopes written to a stream and accepted by gRPC.
    pub sent: u64,
    /// Envelopes given up on, by reason.
    pub dropped: Dropped,
    /// Batches written.
    pub batches: u64,
    /// Failed stream opens, writes, closes and unary sends.
    pub errors: u64,
    /// Streams opened after the first one.
    pub reconnects: u64,
    /// Envelopes written again after their stream failed before confirming
    /// them (at least once); the agent may have them twice.
    pub replayed: u64,
    /// Envelopes waiting in the queue.
    pub queued: u64,
    /// Envelopes taken from the queue by the sender thread and not yet sent or dropped.
    pub in_flight: u64,
    /// The last error seen, if any.
    pub last_error: Option<String>,
}

/// Dropped envelopes, one count per reason.
///
/// ```
/// let dropped = loggregator::Dropped::default();
/// assert_eq!(dropped.total(), 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Dropped {
    /// The queue was full when `emit` was called.
    pub queue_full: u64,
    /// The envelope alone encodes larger than `batch_max_bytes`.
    pub too_large: u64,
    /// Emitted after `close`, or still queued when close gave up.
    pub closed: u64,
    /// The client gave up on it: it was still unwritten or unconfirmed when
    /// `close` ran out of time, or (at most once) a write holding it was cut
    /// short and might have reached the agent.
    pub gave_up: u64,
    /// A counter with `delta == 0 && total == 0` not made with `reset()`.
    pub zero_counter: u64,
}

impl Dropped {
    /// The sum of all reasons.
    ///
    /// ```
    /// let mut dropped = loggregator::Dropped::default();
    /// dropped.queue_full = 2;
    /// dropped.closed = 1;
    /// assert_eq!(dropped.total(), 3);
    /// ```
    pub fn total(&self) -> u64 {
        self.queue_full + self.too_large + self.closed + self.gave_up + self.zero_counter
    }
}

/// Why an envelope was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DropReason {
    QueueFull,
    TooLarge,
    Closed,
    GaveUp,
    ZeroCounter,
}

impl DropReason {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            DropReason::QueueFull => "the queue is full",
            DropReason::TooLarge => "it is larger than batch_max_bytes",
            DropReason::Closed => "the client is closed",
            DropReason::GaveUp => "the agent could not be reached in time",
            DropReason::ZeroCounter => {
                "a counter with delta 0 and total 0 would reset the agent's total"
            }
        }
    }
}

/// A counter that many threads add to, each on a cache line of its own
/// (shared only when there are more threads than shards), so emitting
/// threads never wait on each other to count.
pub(crate) struct Sharded {
    shards: Box<[CachePadded<AtomicU64>]>,
}

/// Shards per counter; a power of two.
const SHARDS: usize = 16;

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard, handed out in turn.
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Relaxed) % SHARDS;
}

impl Default for Sharded {
    fn default() -> Sharded {
        Sharded {
            shards: (0..SHARDS)
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
        }
    }
}

impl Sharded {
    /// Adds `count`; returns what this thread's shard held before.
    pub(crate) fn add(&self, count: u64) -> u64 {
        // A thread being torn down counts on the first shard.
        let shard = SHARD.try_with(|shard| *shard).unwrap_or(0);
        self.shards[shard].fetch_add(count, Relaxed)
    }

    pub(crate) fn sum(&self) -> u64 {
        self.shards.iter().map(|shard| shard.load(Relaxed)).sum()
    }
}

/// The live counters behind [`Stats`].
///
/// `emitted` is written by every emitting thread and the rest almost only
/// by the sender thread: they live on different cache lines so that neither
/// side slows the other down.
#[derive(Default)]
pub(crate) struct Counters {
    pub emitted: Sharded,
    pub sent: CachePadded<AtomicU64>,
    pub batches: AtomicU64,
    pub errors: AtomicU64,
    pub reconnects: AtomicU64,
    pub replayed: AtomicU64,
    pub in_flight: AtomicU64,
    /// Envelopes the sender thread dropped after taking them (given up, or
    /// refused as too large); flush and close report these.
    pub undeliverable: AtomicU64,
    /// Emitting threads count these, on their own shards.
    dropped_queue_full: Sharded,
    dropped_too_large: AtomicU64,
    dropped_closed: AtomicU64,
    dropped_gave_up: AtomicU64,
    dropped_zero_counter: AtomicU64,
    warned_about_drops: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl Counters {
    /// Counts `count` envelopes as dropped; returns true for the first drop
    /// ever, so the caller can warn once.
    pub(crate) fn drop_envelopes(&self, reason: DropReason, count: u64) -> bool {
        let counter = match reason {
            DropReason::QueueFull => return self.drop_queue_full(count),
            DropReason::TooLarge => &self.dropped_too_large,
            DropReason::Closed => &self.dropped_closed,
            DropReason::GaveUp => &self.dropped_gave_up,
            DropReason::ZeroCounter => &self.dropped_zero_counter,
        };
        counter.fetch_add(count, Relaxed);
        self.first_drop()
    }

    fn drop_queue_full(&self, count: u64) -> bool {
        self.dropped_queue_full.add(count);
        self.first_drop()
    }

    /// True once only. Reads before writing, so that threads dropping under
    /// overload do not all write one cache line.
    fn first_drop(&self) -> bool {
        !self.warned_about_drops.load(Relaxed) && !self.warned_about_drops.swap(true, Relaxed)
    }

    fn dropped(&self) -> Dropped {
        Dropped {
            queue_full: self.dropped_queue_full.sum(),
            too_large: self.dropped_too_large.load(Relaxed),
            closed: self.dropped_closed.load(Relaxed),
            gave_up: self.dropped_gave_up.load(Relaxed),
            zero_counter: self.dropped_zero_counter.load(Relaxed),
        }
    }

    pub(crate) fn undeliverable(&self) -> u64 {
        self.undeliverable.load(Relaxed)
    }

    pub(crate) fn record_error(&self, error: &crate::Error) {
        self.errors.fetch_add(1, Relaxed);
        *self.last_error.lock() = Some(error.to_string());
    }

    pub(crate) fn snapshot(&self, queued: usize) -> Stats {
        Stats {
            emitted: self.emitted.sum(),
            sent: self.sent.load(Relaxed),
            dropped: self.dropped(),
            batches: self.batches.load(Relaxed),
            errors: self.errors.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            replayed: self.replayed.load(Relaxed),
            queued: queued as u64,
            in_flight: self.in_flight.load(Relaxed),
            last_error: self.last_error.lock().clone(),
        }
    }
}
