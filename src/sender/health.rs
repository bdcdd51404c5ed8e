//! What the operator is told about the agent's reachability: every failure
//! counts in `errors` and is kept as `last_error`; the first failure of an
//! outage is logged once, with its cause, and the recovery once, with how
//! many attempts failed in between (a warning per failed attempt would
//! flood the log just when the agent is away).

use std::sync::Arc;

use crate::LOG_TARGET;
use crate::error::Error;
use crate::stats::Counters;

pub(crate) struct Health {
    counters: Arc<Counters>,
    /// False from the first failure of an outage until a write succeeds again.
    healthy: bool,
    failures_in_outage: u64,
}

impl Health {
    pub(crate) fn new(counters: Arc<Counters>) -> Health {
        Health {
            counters,
            healthy: true,
            failures_in_outage: 0,
        }
    }

    /// An attempt to reach the agent failed.
    pub(crate) fn failed(&mut self, error: &Error) {
        self.counters.record_error(error);
        self.failures_in_outage += 1;
        if self.healthy {
            self.healthy = false;
            log::warn!(target: LOG_TARGET, "cannot deliver envelopes: {error}");
        }
    }

    /// An error that is no outage of its own (how a closed stream ended,
    /// a unary send): counted and kept, not logged.
    pub(crate) fn record(&self, error: &Error) {
        self.counters.record_error(error);
    }

    /// The agent accepted a write.
    pub(crate) fn succeeded(&mut self) {
        if !self.healthy {
            self.healthy = true;
            log::info!(
                target: LOG_TARGET,
                "the agent accepts envelopes again after {} failed attempts",
                self.failures_in_outage
            );
            self.failures_in_outage = 0;
        }
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy
    }
}
