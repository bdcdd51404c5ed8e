//! Holding the spy's readers to a rate, as an agent that cannot keep up:
//! the whole agent's rate ([`Pacer`], which sleeps the server's one
//! thread, so every stream waits), or each stream's own ([`StreamPace`],
//! which delays only its stream, so streams are read side by side, as a
//! real agent reads each stream in a goroutine of its own).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, unbounded};

/// Holds readers back to a number of envelopes per second, in all.
pub(super) struct Pacer {
    per_second: u64,
    since: Instant,
    read: u64,
}

impl Pacer {
    pub(super) fn new(per_second: u64) -> Pacer {
        Pacer {
            per_second,
            since: Instant::now(),
            read: 0,
        }
    }

    /// When reading `envelopes` more keeps to the rate.
    pub(super) fn due(&mut self, envelopes: u64) -> Instant {
        self.read += envelopes;
        self.since + Duration::from_secs_f64(self.read as f64 / self.per_second as f64)
    }
}

/// One stream's reading, held to a number of envelopes per second.
#[derive(Default)]
pub(super) struct StreamPace {
    since: Option<Instant>,
    read: u64,
}

impl StreamPace {
    /// When this stream may read again after `envelopes` more, at `per_second`.
    pub(super) fn due(&mut self, envelopes: u64, per_second: u64) -> Instant {
        let since = *self.since.get_or_insert_with(Instant::now);
        self.read += envelopes;
        since + Duration::from_secs_f64(self.read as f64 / per_second.max(1) as f64)
    }
}

/// Wakes delayed readers on time, from a thread of its own; the thread ends
/// when every handle is gone.
#[derive(Clone)]
pub(super) struct Timer {
    requests: Sender<(Instant, Waker)>,
}

impl Timer {
    pub(super) fn start() -> Timer {
        let (requests, received) = unbounded();
        let _ = std::thread::Builder::new()
            .name("spy-agent-timer".to_string())
            .spawn(move || run_timer(&received));
        Timer { requests }
    }

    /// A future that is ready at `at`.
    pub(super) fn delay(&self, at: Instant) -> Delay {
        Delay {
            at,
            timer: self.clone(),
            registered: false,
        }
    }
}

fn run_timer(requests: &Receiver<(Instant, Waker)>) {
    let mut waiting: Vec<(Instant, Waker)> = Vec::new();
    loop {
        let next = waiting.iter().map(|(at, _)| *at).min();
        let received = match next {
            Some(at) => requests.recv_deadline(at),
            None => requests.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match received {
            Ok(request) => waiting.push(request),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        waiting.retain(|(at, waker)| {
            let due = *at <= now;
            if due {
                waker.wake_by_ref();
            }
            !due
        });
    }
}

/// Ready at its instant; see [`Timer::delay`].
pub(super) struct Delay {
    at: Instant,
    timer: Timer,
    registered: bool,
}

impl Future for Delay {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.at {
            return Poll::Ready(());
        }
        if !self.registered {
            self.registered = true;
            let request = (self.at, context.waker().clone());
            if self.timer.requests.send(request).is_err() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}
