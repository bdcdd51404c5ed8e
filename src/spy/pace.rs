//! Holding the spy's readers to a rate, as an agent that cannot keep up:
//! the whole agent's rate ([`Pacer`], which sleeps the server's one
//! thread, so every stream waits), or each stream's own ([`StreamPace`],
//! which delays only its stream, so streams are read side by side, as a
//! real agent reads each stream in a goroutine of its own).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, unbounded};
use parking_lot::Mutex;

/// The rates in force, the whole agent's and each stream's, which every
/// call reads.
#[derive(Default)]
pub(super) struct Pacing {
    pacer: Mutex<Option<Pacer>>,
    /// Each stream reads at most this many envelopes a second.
    stream_rate: Mutex<Option<u64>>,
    /// Wakes streams held to their rate; started with the first.
    timer: OnceLock<Timer>,
}

impl Pacing {
    /// Holds every reader, together, to `per_second` from now on; `None`
    /// (or 0) reads as fast as it can.
    pub(super) fn set_rate(&self, per_second: Option<u64>) {
        *self.pacer.lock() = per_second.filter(|&rate| rate > 0).map(Pacer::new);
    }

    /// Holds each stream to `per_second` of its own; `None` (or 0) reads as
    /// fast as it can.
    pub(super) fn set_stream_rate(&self, per_second: Option<u64>) {
        *self.stream_rate.lock() = per_second.filter(|&rate| rate > 0);
        // Streams waiting at the old rate read on at the new one.
        self.release_delayed();
    }

    /// Holds the reader (and with it the server's one thread) until reading
    /// `envelopes` more keeps to the read rate, if one is set.
    pub(super) fn pace(&self, envelopes: u64) {
        let wake_at = {
            let mut pacer = self.pacer.lock();
            let Some(pacer) = pacer.as_mut() else { return };
            pacer.due(envelopes)
        };
        let now = Instant::now();
        if wake_at > now {
            std::thread::sleep(wake_at - now);
        }
    }

    /// Holds a stream that has just read `envelopes` more until it may read
    /// again, if streams are held to a rate of their own.
    pub(super) async fn stream_pace(&self, pace: &mut StreamPace, envelopes: u64) {
        if self.stream_rate.lock().is_none() {
            return;
        }
        // Read before the rate: a change of rate made after this releases
        // the delay below, and one made before is seen in the rate.
        let generation = self.timer().generation();
        let Some(per_second) = *self.stream_rate.lock() else {
            return;
        };
        let due = pace.due(envelopes, per_second);
        if due > Instant::now() {
            self.timer().delay(due, generation).await;
        }
    }

    fn timer(&self) -> &Timer {
        self.timer.get_or_init(Timer::start)
    }

    /// Ends the wait of every stream held to its rate.
    pub(super) fn release_delayed(&self) {
        if let Some(timer) = self.timer.get() {
            timer.release_all();
        }
    }
}

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
    /// The rate, when it was set, and what was read at it since.
    rate: u64,
    since: Option<Instant>,
    read: u64,
}

impl StreamPace {
    /// When this stream may read again after `envelopes` more, at
    /// `per_second`; a new rate counts from now.
    pub(super) fn due(&mut self, envelopes: u64, per_second: u64) -> Instant {
        if per_second != self.rate {
            *self = StreamPace {
                rate: per_second,
                ..StreamPace::default()
            };
        }
        let since = *self.since.get_or_insert_with(Instant::now);
        self.read += envelopes;
        since + Duration::from_secs_f64(self.read as f64 / per_second.max(1) as f64)
    }
}

/// What the timer thread is asked.
enum Request {
    /// Wake this at that time.
    At(Instant, Waker),
    /// Wake every delayed reader now: the rate changed, or the agent stops.
    All,
}

/// Wakes delayed readers on time, from a thread of its own; the thread ends
/// when every handle is gone.
#[derive(Clone)]
pub(super) struct Timer {
    requests: Sender<Request>,
    /// Bumped by [`release_all`](Self::release_all): a delay made before
    /// is over.
    generation: Arc<AtomicU64>,
}

impl Timer {
    pub(super) fn start() -> Timer {
        let (requests, received) = unbounded();
        let _ = std::thread::Builder::new()
            .name("spy-agent-timer".to_string())
            .spawn(move || run_timer(&received));
        Timer {
            requests,
            generation: Arc::default(),
        }
    }

    /// How many times [`release_all`](Self::release_all) has been called:
    /// read it before deciding to wait, and pass it to [`delay`](Self::delay).
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// A future that is ready at `at`, or once [`release_all`](Self::release_all)
    /// is called after `generation` was read.
    pub(super) fn delay(&self, at: Instant, generation: u64) -> Delay {
        Delay {
            at,
            generation,
            timer: self.clone(),
            registered: false,
        }
    }

    /// Ends every delay now, so a stream never waits past a change of rate
    /// or the agent's shutdown.
    pub(super) fn release_all(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let _ = self.requests.send(Request::All);
    }
}

fn run_timer(requests: &Receiver<Request>) {
    let mut waiting: Vec<(Instant, Waker)> = Vec::new();
    loop {
        let next = waiting.iter().map(|(at, _)| *at).min();
        let received = match next {
            Some(at) => requests.recv_deadline(at),
            None => requests.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let release_all = match received {
            Ok(Request::At(at, waker)) => {
                waiting.push((at, waker));
                false
            }
            Ok(Request::All) => true,
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let now = Instant::now();
        waiting.retain(|(at, waker)| {
            let due = release_all || *at <= now;
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
    generation: u64,
    timer: Timer,
    registered: bool,
}

impl Future for Delay {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<()> {
        let released = self.timer.generation.load(Ordering::SeqCst) != self.generation;
        if released || Instant::now() >= self.at {
            return Poll::Ready(());
        }
        if !self.registered {
            self.registered = true;
            let request = Request::At(self.at, context.waker().clone());
            if self.timer.requests.send(request).is_err() {
                return Poll::Ready(());
            }
            // A release between the check above and the request: the
            // timer thread may have woken everything before this arrived.
            if self.timer.generation.load(Ordering::SeqCst) != self.generation {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}
