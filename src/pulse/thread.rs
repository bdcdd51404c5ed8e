//! The pulse thread: a pulse every interval and, once asked, process
//! metrics and the sources' upkeep, until the client closes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, at, select, unbounded};

use crate::policy::Overflow;
use crate::process::ProcessMeter;

use super::Pulses;

/// Requests to the pulse thread.
pub(crate) enum PulseCommand {
    /// Also send process metrics, this often.
    ProcessMetrics(Duration),
    /// Also let the sources do their upkeep, this often.
    #[cfg(feature = "metrics")]
    Upkeep(Duration),
}

/// Starts the pulse thread: it sends a pulse every `interval` and, once
/// asked, process metrics, until `closing` disconnects. It holds the queue,
/// never a client handle, so the last handle is always dropped (and the
/// client closed) on the caller's thread.
pub(crate) fn start_thread(
    pulses: Arc<Pulses>,
    closing: Receiver<()>,
    interval: Duration,
) -> std::io::Result<Sender<PulseCommand>> {
    let (commands, received) = unbounded();
    std::thread::Builder::new()
        .name(format!("{}pulse", crate::THREAD_PREFIX))
        .spawn(move || {
            crate::mark_own_thread();
            run(&pulses, &received, &closing, interval)
        })?;
    Ok(commands)
}

/// Something the pulse thread does every `every`, next at `at`.
struct Every {
    every: Duration,
    at: Instant,
}

impl Every {
    fn new(every: Duration) -> Every {
        Every {
            every,
            at: Instant::now() + every,
        }
    }

    /// True if due at `now`, and then schedules the next time (skipping
    /// the times missed while the thread was busy).
    fn due(&mut self, now: Instant) -> bool {
        if now < self.at {
            return false;
        }
        self.at += self.every;
        if self.at <= now {
            self.at = now + self.every;
        }
        true
    }
}

fn run(
    pulses: &Pulses,
    commands: &Receiver<PulseCommand>,
    closing: &Receiver<()>,
    interval: Duration,
) {
    let mut pulse = Every::new(interval);
    let mut process: Option<(Every, ProcessMeter)> = None;
    // Only the metrics recorder asks for upkeep.
    #[cfg_attr(not(feature = "metrics"), allow(unused_mut))]
    let mut upkeep: Option<Every> = None;
    loop {
        let next = [
            Some(pulse.at),
            upkeep.as_ref().map(|u| u.at),
            process.as_ref().map(|(p, _)| p.at),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(pulse.at);
        if pulses.is_waiting() {
            pulses.queue_waiting(next);
        }
        select! {
            recv(closing) -> _ => return,
            recv(commands) -> command => match command {
                Ok(PulseCommand::ProcessMetrics(interval)) => {
                    process = Some((Every::new(interval), ProcessMeter::new()));
                }
                #[cfg(feature = "metrics")]
                Ok(PulseCommand::Upkeep(interval)) => upkeep = Some(Every::new(interval)),
                Err(_) => return,
            },
            recv(at(next)) -> _ => {
                let now = Instant::now();
                if pulse.due(now) {
                    pulses.send(None);
                }
                if upkeep.as_mut().is_some_and(|u| u.due(now)) {
                    pulses.upkeep();
                }
                if let Some((due, meter)) = &mut process {
                    if due.due(now) {
                        if let Some(envelope) = meter.read() {
                            pulses.queue.push(envelope, Overflow::DropNewest);
                        }
                    }
                }
            },
        }
    }
}
