//! The signals a supervisor sends (bpm and monit stop with SIGTERM, some
//! daemons reopen logs on SIGHUP or SIGUSR1) taken by us and passed to
//! the child's process group; our own ends come from the child's end.

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::{Handle, Signals};

/// The signals passed on.
pub const FORWARDED: [i32; 6] = [SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2];

/// Signals taken, not yet passed on: they wait until the child exists.
pub struct Forwarding {
    signals: Signals,
}

/// Signals passed on to a child by a thread of their own.
pub struct Forwarder {
    handle: Handle,
    thread: std::thread::JoinHandle<()>,
}

impl Forwarding {
    pub fn start() -> std::io::Result<Forwarding> {
        Ok(Forwarding {
            signals: Signals::new(FORWARDED)?,
        })
    }

    /// Passes every signal, those taken so far first, to the group of
    /// the child with this id.
    pub fn to(self, child: u32) -> Forwarder {
        let mut signals = self.signals;
        let handle = signals.handle();
        let group = Pid::from_raw(child as i32);
        let thread = std::thread::Builder::new()
            .name("forward signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    if let Ok(signal) = Signal::try_from(signal) {
                        // ESRCH: the child is gone; its end is on its way.
                        let _ = killpg(group, signal);
                    }
                }
            })
            .expect("a thread for the signals");
        Forwarder { handle, thread }
    }

    pub fn stop(self) {
        self.signals.handle().close();
    }
}

impl Forwarder {
    /// Stops passing signals on: the child has been waited for, and its id
    /// may be another process's soon.
    pub fn stop(self) {
        self.handle.close();
        let _ = self.thread.join();
    }
}
