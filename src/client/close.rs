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
    /// `Error::Undelivered` if batches were dropped since `failed_before`
    /// was read; a flush or close covers everything queued before it, so any
    /// such drop may be one of its envelopes.
    pub(super) fn undelivered_since(&self, failed_before: u64) -> Result<()> {
        let count = self.counters.undeliverable() - failed_before;
        if count == 0 {
            return Ok(());
        }
        let cause = self.counters.snapshot(0, 0).last_error;
        Err(Error::Undelivered {
            count,
            cause: cause.unwrap_or_else(|| "unknown".to_string()),
        })
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
                let undelivered = self.queue.undelivered();
                Err(Error::Timeout {
                    waited: started.elapsed(),
                    undelivered,
                })
            }
        };
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
        self.queue.stopped();
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
