//! What the client does when the queue is full, how much it promises about
//! delivery, and how it waits between reconnects.

use std::time::{Duration, Instant};

/// What `emit` does when the queue is full.
///
/// ```
/// use loggregator::{IngressClient, Overflow};
/// use std::time::Duration;
///
/// let builder = IngressClient::builder().overflow(Overflow::BlockFor(Duration::from_millis(5)));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Overflow {
    /// Drop the new envelope and count it (`queue_full`); `emit` returns at
    /// once. The default.
    #[default]
    DropNewest,
    /// Drop the oldest queued envelope to make room and count it
    /// (`queue_full`), like the agent's own ring buffer; `emit` returns at once.
    DropOldest,
    /// Wait for room, as the Go client does. `emit` can then block for as
    /// long as the agent is slow or away (until `close`).
    Block,
    /// Wait at most this long for room, then drop the new envelope and count it.
    BlockFor(Duration),
}

/// How much the client promises about envelopes it has written.
///
/// ```
/// use loggregator::{Delivery, IngressClient};
///
/// let builder = IngressClient::builder().delivery(Delivery::AtLeastOnce);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Delivery {
    /// A batch counts as sent once gRPC accepts it on the stream; nothing
    /// from the agent acknowledges it later. A batch whose write finds the
    /// stream already ended is written again on a new stream; a write under
    /// way on a working stream when it breaks is given up (`gave_up`), since
    /// the agent may have read it. No duplicates. The default.
    ///
    /// What a stream had accepted before the agent ended it may be lost and
    /// stays counted in `sent`: when the agent goes away, at most what fits
    /// in the HTTP/2 window and socket buffers; when it ends the stream with
    /// RESOURCE_EXHAUSTED (a message over its size limit), the refused batch
    /// and what followed it on that stream. The real agents accept messages
    /// up to 10 MiB, which `batch_max_bytes` cannot exceed, so only an agent
    /// configured with a lower limit refuses; `errors` and `last_error`
    /// record it, and `close` returns it when it ends the last stream.
    #[default]
    AtMostOnce,
    /// Every `confirm_interval` the client ends its stream cleanly and opens
    /// the next; the agent ends a stream only after reading all of it, which
    /// confirms its batches. Batches written but not yet confirmed are kept
    /// (up to `replay_buffer_bytes`) and written again if their stream fails,
    /// so nothing written is lost before the agent has read it, and
    /// duplicates are possible (counted in `replayed`). `sent` counts only
    /// what the agent confirmed; a batch it refuses as too large is written
    /// again in halves until the one envelope too large is found
    /// (`too_large`). When the replay buffer is full the client waits for
    /// confirmations and the queue absorbs the wait.
    AtLeastOnce,
}

/// The longest any setting or timeout is honoured, so deadlines never overflow.
pub(crate) const LONGEST_WAIT: Duration = Duration::from_secs(24 * 60 * 60);

/// `now + wait`, with waits beyond [`LONGEST_WAIT`] shortened to it.
pub(crate) fn deadline_after(wait: Duration) -> Instant {
    Instant::now() + wait.min(LONGEST_WAIT)
}

/// Exponential backoff with jitter between attempts to reach the agent.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    current: Option<Duration>,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            current: None,
        }
    }

    /// The wait before the next attempt: doubling from `initial` up to
    /// `max`, each drawn from its upper half so clients do not retry in step.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = match self.current {
            None => self.initial,
            Some(previous) => (previous * 2).min(self.max),
        };
        self.current = Some(base);
        base.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    /// Back to `initial` after a success.
    pub(crate) fn reset(&mut self) {
        self.current = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum_with_jitter_and_resets() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_millis(1000);
        let mut backoff = Backoff::new(initial, max);
        for base in [100, 200, 400, 800, 1000, 1000] {
            let delay = backoff.next_delay();
            let base = Duration::from_millis(base);
            assert!(delay >= base / 2 && delay <= base, "{delay:?} for {base:?}");
        }
        backoff.reset();
        assert!(backoff.next_delay() <= initial);
    }
}
