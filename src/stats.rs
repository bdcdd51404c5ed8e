//! Delivery counters shared by the handle and the sender thread, and their snapshot.

use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering::Relaxed};

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

/// A snapshot of what the client has done, from [`IngressClient::stats`](crate::IngressClient::stats).
///
/// Every envelope passed to `emit` is counted once in `emitted` and ends up
/// in exactly one of `sent`, `dropped`, `queued`, `in_flight` or (its
/// emitter waiting for room) `blocked_emitters`; after `close`,
/// `emitted == sent + dropped.total()`.
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
    /// Envelopes delivered. At most once: accepted by gRPC on a stream (a
    /// stream the agent ends with an error afterwards may still lose some,
    /// see [`Delivery::AtMostOnce`](crate::Delivery::AtMostOnce)). At least
    /// once: on a stream the agent confirmed it read.
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
    /// Encoded bytes held between `emit` and gRPC (the queue, batches being
    /// built or written); at most `queue_max_bytes`.
    pub queued_bytes: u64,
    /// Envelopes taken from the queue by the sender thread and not yet sent or dropped.
    pub in_flight: u64,
    /// Emitting threads waiting for room now (`Overflow::Block` or
    /// `BlockFor`); their envelopes are counted in `emitted` and not yet
    /// in any other count. Those still waiting when `close` begins are
    /// counted `dropped.closed` and reported by that close.
    ///
    /// ```
    /// assert_eq!(loggregator::Stats::default().blocked_emitters, 0);
    /// ```
    pub blocked_emitters: u64,
    /// Tags the tracing layer and the `log` bridge left off envelopes:
    /// fields or key-values beyond `MAX_FIELD_TAGS` on one span, event or
    /// record, and key-values named like a tag the bridge sets itself
    /// (`level`, `target`). Counted only for envelopes that went into the
    /// queue: one that was dropped counts in `dropped` alone.
    pub tags_dropped: u64,
    /// Field values and key-values the tracing layer and the `log` bridge
    /// cut to `MAX_FIELD_BYTES` (they end with `…`), and panic logs the
    /// panic hook cut to fit an envelope (they say so). An event's or a
    /// record's message is never cut. Counted only for envelopes that went
    /// into the queue (or, a panic's log, were sent): one that was dropped
    /// counts in `dropped` alone.
    ///
    /// ```
    /// assert_eq!(loggregator::Stats::default().values_cut, 0);
    /// ```
    pub values_cut: u64,
    /// New series the metrics recorder (feature `metrics`) refused because
    /// it already held `max_series` live ones, or because they would send a
    /// gauge a live series sends (a gauge `h_sum` beside a histogram `h`
    /// with the same labels, or the histogram beside the gauge); what was
    /// recorded on them was not sent. One count per refused registration.
    ///
    /// ```
    /// assert_eq!(loggregator::Stats::default().series_dropped, 0);
    /// ```
    pub series_dropped: u64,
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
    /// The queue was full, in envelopes (`queue_capacity`) or in bytes
    /// (`queue_max_bytes`), when `emit` was called, and the overflow policy
    /// dropped this envelope (or, `DropOldest`, evicted it).
    pub queue_full: u64,
    /// The envelope alone encodes larger than `batch_max_bytes` (refused
    /// by `emit`), or the agent refused it as too large (RESOURCE_EXHAUSTED
    /// on a message that held it alone; the next flush or close reports it).
    pub too_large: u64,
    /// Emitted after `close` began; or emitted before and still queued
    /// when the sender thread stopped, or waiting for room (`Block`,
    /// `BlockFor`) when close began: those `close` reports as
    /// [`Error::Undelivered`](crate::Error::Undelivered) (or in its
    /// `Error::Timeout`).
    pub closed: u64,
    /// The client gave up on it: it was still unwritten or unconfirmed when
    /// `close` ran out of time, or (at most once) a write holding it was cut
    /// short and might have reached the agent. The next flush or close
    /// reports it.
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

impl Dropped {
    /// Each reason with its count, named as the self-metrics' `reason` tag.
    fn by_reason(&self) -> [(&'static str, u64); 5] {
        [
            ("queue_full", self.queue_full),
            ("too_large", self.too_large),
            ("closed", self.closed),
            ("gave_up", self.gave_up),
            ("zero_counter", self.zero_counter),
        ]
    }
}

/// The total, then the reasons that are not zero:
/// `3 (queue_full 2, too_large 1)`, or `0`.
///
/// ```
/// let mut dropped = loggregator::Dropped::default();
/// assert_eq!(dropped.to_string(), "0");
/// dropped.queue_full = 2;
/// dropped.too_large = 1;
/// assert_eq!(dropped.to_string(), "3 (queue_full 2, too_large 1)");
/// ```
impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.total())?;
        let mut reasons = self.by_reason().into_iter().filter(|(_, n)| *n > 0);
        if let Some((reason, count)) = reasons.next() {
            write!(f, " ({reason} {count}")?;
            for (reason, count) in reasons {
                write!(f, ", {reason} {count}")?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// A short summary on one line: what was sent, what was dropped and why
/// (the reasons that are not zero), what is queued, then what is not zero
/// of in flight, errors, reconnects and replayed, and the last error.
/// `{:?}` shows every field.
///
/// ```
/// let mut stats = loggregator::Stats::default();
/// stats.emitted = 125;
/// stats.sent = 120;
/// stats.dropped.queue_full = 5;
/// assert_eq!(stats.to_string(), "sent 120 dropped 5 (queue_full 5) queued 0");
/// stats.errors = 1;
/// stats.last_error = Some("agent at localhost:3458: UNAVAILABLE".into());
/// assert_eq!(
///     stats.to_string(),
///     "sent 120 dropped 5 (queue_full 5) queued 0 errors 1; last error: agent at localhost:3458: UNAVAILABLE"
/// );
/// ```
impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sent {} dropped {} queued {}",
            self.sent, self.dropped, self.queued
        )?;
        let rare = [
            ("in flight", self.in_flight),
            ("errors", self.errors),
            ("reconnects", self.reconnects),
            ("replayed", self.replayed),
        ];
        for (name, count) in rare {
            if count > 0 {
                write!(f, " {name} {count}")?;
            }
        }
        if let Some(error) = &self.last_error {
            write!(f, "; last error: {error}")?;
        }
        Ok(())
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

const REASONS: [DropReason; 5] = [
    DropReason::QueueFull,
    DropReason::TooLarge,
    DropReason::Closed,
    DropReason::GaveUp,
    DropReason::ZeroCounter,
];

/// `drop_warning` before the first drop.
const NO_DROP_YET: u8 = 0;
/// `drop_warning` once the first drop has been logged.
const DROP_LOGGED: u8 = u8::MAX;

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
    /// Envelopes `emit` accepted and the client lost afterwards: given up,
    /// refused by the agent as too large, or left behind by close (still
    /// queued, or waiting for room, when it began). Flush and close report
    /// these, each once ([`claim_unreported_losses`](Self::claim_unreported_losses)).
    lost: AtomicU64,
    /// How many of `lost` a flush or close has reported; only ever raised.
    lost_reported: AtomicU64,
    pub tags_dropped: AtomicU64,
    pub values_cut: AtomicU64,
    pub series_dropped: AtomicU64,
    /// Emitting threads count these, on their own shards.
    dropped_queue_full: Sharded,
    dropped_too_large: AtomicU64,
    dropped_closed: AtomicU64,
    dropped_gave_up: AtomicU64,
    dropped_zero_counter: AtomicU64,
    /// [`NO_DROP_YET`], then the first drop's reason (its index in
    /// [`REASONS`] plus one) until the sender thread logs it, then [`DROP_LOGGED`].
    drop_warning: AtomicU8,
    last_error: Mutex<Option<String>>,
}

impl Counters {
    /// Counts `count` envelopes as dropped; returns true for the first drop
    /// ever, which the sender thread logs ([`unlogged_drop`](Self::unlogged_drop)).
    pub(crate) fn drop_envelopes(&self, reason: DropReason, count: u64) -> bool {
        let counter = match reason {
            DropReason::QueueFull => {
                self.dropped_queue_full.add(count);
                return self.first_drop(reason);
            }
            DropReason::TooLarge => &self.dropped_too_large,
            DropReason::Closed => &self.dropped_closed,
            DropReason::GaveUp => &self.dropped_gave_up,
            DropReason::ZeroCounter => &self.dropped_zero_counter,
        };
        counter.fetch_add(count, Relaxed);
        self.first_drop(reason)
    }

    /// True once only. Reads before writing, so that threads dropping under
    /// overload do not all write one cache line.
    fn first_drop(&self, reason: DropReason) -> bool {
        let index = REASONS.iter().position(|r| *r == reason).unwrap_or(0) as u8;
        self.drop_warning.load(Relaxed) == NO_DROP_YET
            && self
                .drop_warning
                .compare_exchange(NO_DROP_YET, index + 1, Relaxed, Relaxed)
                .is_ok()
    }

    /// Logs the first drop, once, if it has not been logged yet. Called by
    /// the client's own threads only, never by an emitting one.
    pub(crate) fn log_first_drop(&self) {
        if let Some(reason) = self.unlogged_drop() {
            log::warn!(
                target: crate::LOG_TARGET,
                "dropping envelopes: {}; further drops are only counted in stats()",
                reason.describe()
            );
        }
    }

    /// The reason of the first drop, once, if it has not been logged yet.
    fn unlogged_drop(&self) -> Option<DropReason> {
        let state = self.drop_warning.load(Relaxed);
        if state == NO_DROP_YET || state == DROP_LOGGED {
            return None;
        }
        self.drop_warning.swap(DROP_LOGGED, Relaxed);
        REASONS.get(usize::from(state) - 1).copied()
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

    /// Counts `count` envelopes that `emit` accepted as lost: a flush or
    /// close will report them. Drops `emit` itself makes by the overflow
    /// policy, or of envelopes it refuses, are the caller's own and are not
    /// counted here.
    pub(crate) fn count_lost(&self, count: u64) {
        self.lost.fetch_add(count, Relaxed);
    }

    /// The losses no flush or close has reported yet, now reported: every
    /// loss is claimed by exactly one caller, however many handles flush or
    /// close at once, because the mark only rises and each caller takes
    /// what lies between the mark it raised from and the one it raised to.
    pub(crate) fn claim_unreported_losses(&self) -> u64 {
        let lost = self.lost.load(Relaxed);
        let reported_before = self.lost_reported.fetch_max(lost, Relaxed);
        lost.saturating_sub(reported_before)
    }

    pub(crate) fn record_error(&self, error: &crate::Error) {
        self.errors.fetch_add(1, Relaxed);
        *self.last_error.lock() = Some(error.to_string());
    }

    pub(crate) fn snapshot(&self, queued: usize, queued_bytes: usize) -> Stats {
        Stats {
            emitted: self.emitted.sum(),
            sent: self.sent.load(Relaxed),
            dropped: self.dropped(),
            batches: self.batches.load(Relaxed),
            errors: self.errors.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            replayed: self.replayed.load(Relaxed),
            queued: queued as u64,
            queued_bytes: queued_bytes as u64,
            in_flight: self.in_flight.load(Relaxed),
            blocked_emitters: 0,
            tags_dropped: self.tags_dropped.load(Relaxed),
            values_cut: self.values_cut.load(Relaxed),
            series_dropped: self.series_dropped.load(Relaxed),
            last_error: self.last_error.lock().clone(),
        }
    }
}
