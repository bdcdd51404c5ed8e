//! Closing: `close`, and dropping the last handle, which closes with a
//! bounded wait on the thread that drops it.

use std::time::{Duration, Instant};

use crossbeam_channel::bounded;

use crate::LOG_TARGET;
use crate::error::{Error, Result};
use crate::sender::{Control, deadline_after};

use super::start::Inner;

/// The most `close` (and dropping the last handle) takes beyond its
/// timeout: the sender thread's answer may arrive this late, and a sender
/// thread that has not answered by then is cancelled and waited for until
/// then. On its own, the sender thread stops at the timeout.
pub const CLOSE_MARGIN: Duration = Duration::from_millis(250);
/// How long after its deadline close waits for the sender thread's own
/// account of what it gave up, before cancelling it; part of [`CLOSE_MARGIN`].
const REPLY_GRACE: Duration = Duration::from_millis(100);

impl Inner {
    /// `Error::Undelivered` for the envelopes `emit` accepted and the
    /// client lost since the last flush or close that reported losses;
    /// each loss is reported once, whichever handle asks first.
    pub(super) fn report_losses(&self) -> Result<()> {
        match self.counters.claim_unreported_losses() {
            0 => Ok(()),
            count => Err(self.undelivered(count)),
        }
    }

    fn undelivered(&self, count: u64) -> Error {
        let cause = self.counters.snapshot(0, 0).last_error;
        Error::Undelivered {
            count,
            cause: cause.unwrap_or_else(|| "unknown".to_string()),
        }
    }

    pub(super) fn close(&self, timeout: Duration) -> Result<()> {
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
        let (reply, replied) = bounded(1);
        let _ = self.control.send(Control::Close { deadline, reply });
        let replied = replied.recv_deadline(deadline + REPLY_GRACE);
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
        // What emitters blocked for room when close began were holding,
        // and what is still queued, is lost: counted before the answer, so
        // that this close reports it. (Released by `queue.close()`, a
        // blocked emitter either counted its envelope or queued it, which
        // `stopped` then counts.)
        self.queue
            .wait_for_blocked_emitters(deadline + CLOSE_MARGIN);
        self.queue.stopped();
        let lost = self.counters.claim_unreported_losses();
        let waited = started.elapsed();
        let result = match replied {
            // Everything lost and not reported before, what close gave up
            // on included.
            Ok(Err(Error::Timeout { .. })) => Err(Error::Timeout {
                waited,
                undelivered: lost,
            }),
            Ok(_) if lost > 0 => Err(self.undelivered(lost)),
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                waited,
                undelivered: self.queue.undelivered() + lost,
            }),
        };
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
