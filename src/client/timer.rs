//! Timing an operation: [`IngressClient::timer`] and the guard it returns,
//! which sends a Timer envelope when it is stopped or dropped.

use std::time::SystemTime;

use crate::envelope::Envelope;

use super::handle::IngressClient;

impl IngressClient {
    /// Starts timing `name`; the returned guard sends a Timer envelope with
    /// the real start and stop times when it is dropped or stopped, and
    /// nothing if cancelled.
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// {
    ///     let _timer = client.timer("db_query");
    ///     // ... the query ...
    /// } // the Timer envelope is emitted here
    /// ```
    pub fn timer(&self, name: &str) -> TimerGuard {
        TimerGuard {
            client: self.clone(),
            name: name.to_string(),
            start: SystemTime::now(),
            armed: true,
        }
    }
}

/// Times one operation; made by [`IngressClient::timer`].
///
/// ```no_run
/// # let client: loggregator::IngressClient = unimplemented!();
/// let timer = client.timer("upload");
/// let uploaded = true;
/// if uploaded { timer.stop() } else { timer.cancel() }
/// ```
#[must_use = "the timer stops, and is sent, when this guard is dropped"]
#[derive(Debug)]
pub struct TimerGuard {
    client: IngressClient,
    name: String,
    start: SystemTime,
    armed: bool,
}

impl TimerGuard {
    /// Stops the timer now and sends it.
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// client.timer("step").stop();
    /// ```
    pub fn stop(mut self) {
        self.send();
    }

    /// Drops the timer without sending anything.
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// client.timer("step").cancel();
    /// ```
    pub fn cancel(mut self) {
        self.armed = false;
    }

    fn send(&mut self) {
        if std::mem::take(&mut self.armed) {
            self.client
                .emit(Envelope::timer_until_now(&self.name, self.start));
        }
    }
}

impl Drop for TimerGuard {
    fn drop(&mut self) {
        self.send();
    }
}
