//! Backing off while the agent is away: when the next attempt may be made,
//! and how long the wait after the next failure is.

use std::time::Instant;

use crate::policy::Backoff;

pub(super) struct Retry {
    at: Option<Instant>,
    backoff: Backoff,
}

impl Retry {
    pub(super) fn new(backoff: Backoff) -> Retry {
        Retry { at: None, backoff }
    }

    /// A backoff is running: nothing is written until it ends.
    pub(super) fn is_waiting(&self) -> bool {
        self.at.is_some()
    }

    /// When the backoff ends.
    pub(super) fn due(&self) -> Option<Instant> {
        self.at
    }

    /// Ends a backoff that ran out by `now`.
    pub(super) fn expire(&mut self, now: Instant) {
        if self.at.is_some_and(|at| now >= at) {
            self.at = None;
        }
    }

    /// Waits before the next attempt; failures of several streams in one
    /// round of attempts step the backoff once.
    pub(super) fn back_off(&mut self) {
        let now = Instant::now();
        if self.at.is_some_and(|at| at > now) {
            return;
        }
        self.at = Some(now + self.backoff.next_delay());
    }

    /// Something worked: the next failure waits the shortest step again.
    pub(super) fn reset(&mut self) {
        self.backoff.reset();
    }
}
