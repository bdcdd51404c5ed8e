//! The sender thread's loop ([`SenderLoop`]). It drives parts that each
//! own their state:
//! - [`Batcher`] (batcher.rs): takes envelopes from the queue and seals
//!   them into batches;
//! - [`Streams`] (streams.rs): writes sealed batches on `BatchSender`
//!   streams and settles each write. It drives parts of its own: the
//!   outbox of sealed batches (outbox.rs), the open streams and whose turn
//!   it is (slots.rs), streams waiting for their end (ends.rs), the
//!   backoff (retry.rs), the [`Ledger`](ledger::Ledger) (ledger.rs), the
//!   one place where envelopes and bytes move between in flight, sent and
//!   dropped, and [`Health`](health::Health) (health.rs), what the
//!   operator is told; and its work is split by job: a failed write
//!   (failures.rs), rotation and confirmation (rotation.rs), leaving a
//!   connection and close's give-up (leaving.rs);
//! - [`Unary`] (unary.rs): the unary `Send` calls of `IngressClient::send`,
//!   whose bytes it keeps in the same ledger;
//!
//! and owns only what the handle asked of it: flushes waiting for their
//! envelopes to be written, and close. Requests come on a control channel
//! of their own, so a full queue never holds them up.
//!
//! Nothing here knows gRPC: a [`Transport`] (transport.rs) opens streams and
//! starts unary calls, so the loop is tested with in-memory fakes (tests/).

mod batcher;
mod ends;
mod failures;
mod health;
mod leaving;
mod ledger;
mod outbox;
mod retry;
mod rotation;
mod slots;
mod streams;
mod transport;
mod unary;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, at, never, select_biased};

use crate::batch::Stamp;
use crate::error::{Error, Result};
use crate::policy::{Backoff, Delivery};
pub(crate) use crate::policy::{LONGEST_WAIT, deadline_after};
use crate::queue::{QueueReceiver, Reservation, Room};
use crate::stats::Counters;

use batcher::Batcher;
use streams::Streams;
pub(crate) use transport::{
    BatchStream, ChannelWaker, Closing, Stall, Transport, UnaryCall, WriteError,
};
use unary::Unary;

/// Requests from the handle.
pub(crate) enum Control {
    /// Reply once everything queued before this request has been written;
    /// the caller stops waiting at `deadline`.
    Flush {
        deadline: Instant,
        reply: Sender<Result<()>>,
    },
    /// Write everything queued, end every stream cleanly, and stop; give up on
    /// whatever is left at `deadline`.
    Close {
        deadline: Instant,
        reply: Sender<Result<()>>,
    },
    /// Start a unary send of an encoded `EnvelopeBatch` unless `deadline`
    /// has passed, and reply with the agent's answer. Its bytes stay
    /// reserved in the byte budget until the call ends.
    Send {
        batch: Vec<u8>,
        reservation: Reservation,
        deadline: Instant,
        reply: Sender<Result<()>>,
    },
}

/// What the loop needs to know from the builder.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// The agent's address, for error messages.
    pub addr: String,
    pub batch_max_envelopes: usize,
    pub batch_max_bytes: usize,
    pub flush_interval: Duration,
    pub delivery: Delivery,
    /// At least once: how long a stream is used before it is closed to confirm it.
    pub confirm_interval: Duration,
    /// At least once: the most bytes written but not yet confirmed.
    pub replay_buffer_bytes: usize,
    /// How long the agent may take to end a half-closed stream.
    pub confirm_timeout: Duration,
    /// How long one write may wait to be accepted before the stream is dropped.
    pub write_timeout: Duration,
    pub backoff: Backoff,
    /// How many streams may be open at once, each with a write in flight.
    pub streams: usize,
}

/// A flush waiting for every envelope up to number `through` to be written.
struct Flush {
    through: u64,
    /// When its caller stops waiting.
    deadline: Instant,
    reply: Sender<Result<()>>,
}

/// The sender thread: it drives the parts, answers the handle's requests,
/// and sleeps until one of them has something to do.
pub(crate) struct SenderLoop<T: Transport> {
    batcher: Batcher,
    streams: Streams<T>,
    unary: Unary<T::Call>,
    control: Receiver<Control>,
    /// Emitters' signal that a batch's worth is waiting in the queue.
    nudges: Receiver<()>,
    room: Arc<Room>,
    counters: Arc<Counters>,
    /// The transport's wake-ups, and the queue's (a drop to log).
    wakeups: Receiver<()>,
    flushes: Vec<Flush>,
    closing: Option<(Instant, Sender<Result<()>>)>,
}

impl<T: Transport> SenderLoop<T> {
    /// `wake`/`wakeups` is the channel that wakes the loop; the queue holds
    /// a clone of `wake`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        transport: T,
        queue: QueueReceiver,
        control: Receiver<Control>,
        stamp: Arc<Stamp>,
        settings: Settings,
        counters: Arc<Counters>,
        wake: Sender<()>,
        wakeups: Receiver<()>,
    ) -> SenderLoop<T> {
        let waker = Waker::from(Arc::new(ChannelWaker(wake)));
        SenderLoop {
            unary: Unary::new(waker.clone()),
            batcher: Batcher::new(queue.data, queue.spares, stamp, &settings),
            streams: Streams::new(
                transport,
                &settings,
                queue.room.clone(),
                counters.clone(),
                waker,
            ),
            control,
            nudges: queue.nudges,
            room: queue.room,
            counters,
            wakeups,
            flushes: Vec::new(),
            closing: None,
        }
    }

    /// Runs until a close request is done (or every handle is gone).
    pub(crate) fn run(mut self) {
        loop {
            let now = Instant::now();
            let accepting = self.accepting();
            self.batcher
                .on_time(now, accepting, &mut self.streams.intake());
            self.take_for_flushes();
            self.streams
                .step(now, self.closing.is_some() && self.batcher.is_empty());
            self.unary.poll(self.streams.ledger(), now);
            self.answer_flushes();
            if self.finish_close_if_done() {
                return;
            }
            if self.streams.has_write_to_start() || self.flush_can_take_more() {
                // A failed confirmation put batches back, or a write was
                // accepted at once and a flush waits for more: no wake-up
                // is coming for either.
                continue;
            }
            // The first drop is logged here, on the client's own thread.
            self.counters.log_first_drop();
            self.streams.publish_held();
            self.room
                .wake_if_half_free(self.batcher.queued(), self.batcher.capacity());
            self.wait();
        }
    }

    /// Sleeps until a request, envelopes to take, a wake-up, or the next deadline.
    fn wait(&mut self) {
        let accepting = self.accepting();
        // With a batch open, the loop does not wake for each envelope (that
        // would cost the emitting thread a wake-up each): it drains the
        // queue when emitters say a batch's worth is waiting, or when the
        // batch's time is up.
        let no_data = never();
        let data = if accepting && self.batcher.is_empty() {
            self.batcher.queue().clone()
        } else {
            no_data
        };
        let no_nudges = never();
        let nudges = if accepting { &self.nudges } else { &no_nudges };
        let timer = self.next_deadline().map_or_else(never, at);
        select_biased! {
            recv(self.control) -> request => match request {
                Ok(request) => self.handle(request),
                Err(_) => {
                    // Every handle is gone: wind down once, and stop listening.
                    self.control = never();
                    if self.closing.is_none() {
                        self.begin_close(deadline_after(Duration::from_secs(1)), None);
                    }
                }
            },
            recv(data) -> queued => {
                if let Ok(queued) = queued {
                    self.batcher.take(queued, &mut self.streams.intake());
                    self.batcher.take_waiting(usize::MAX, &mut self.streams.intake());
                }
            },
            recv(nudges) -> _ => {
                self.batcher.take_waiting(usize::MAX, &mut self.streams.intake());
            }
            recv(self.wakeups) -> _ => {},
            recv(timer) -> _ => {},
        }
    }

    /// Whether the loop takes envelopes from the queue now.
    fn accepting(&self) -> bool {
        self.closing.is_none() && self.streams.wants_more()
    }

    fn next_deadline(&self) -> Option<Instant> {
        let close = self.closing.as_ref().map(|(deadline, _)| *deadline);
        [
            self.batcher.due(),
            self.streams.next_deadline(),
            self.unary.next_deadline(),
            close,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn handle(&mut self, request: Control) {
        match request {
            Control::Flush { deadline, reply } => {
                // Envelopes emitted before the request are already in the
                // queue, in order: the flush waits for just as many.
                let through = self.batcher.taken() + self.batcher.queued() as u64;
                let now = Instant::now();
                // Callers that stopped waiting need no answer.
                self.flushes.retain(|flush| flush.deadline > now);
                self.flushes.push(Flush {
                    through,
                    deadline,
                    reply,
                });
            }
            Control::Close { deadline, reply } => self.begin_close(deadline, Some(reply)),
            Control::Send {
                batch,
                reservation,
                deadline,
                reply,
            } => {
                let (transport, ledger) = self.streams.transport_and_ledger();
                self.unary
                    .start(transport, ledger, batch, reservation, deadline, reply);
            }
        }
    }

    /// While the stream side wants more, takes what pending flushes wait
    /// for, and seals it. A flush never takes more than that: while the
    /// agent is away its envelopes stay in the queue, under its bounds.
    fn take_for_flushes(&mut self) {
        let Some(through) = self.flushes.iter().map(|flush| flush.through).max() else {
            return;
        };
        if !self.accepting() {
            return;
        }
        let reached = self
            .batcher
            .take_through(through, &mut self.streams.intake());
        for flush in &mut self.flushes {
            flush.through = flush.through.min(reached);
        }
    }

    /// A flush waits for envelopes still queued or in the open batch, and
    /// the stream side would take them now.
    fn flush_can_take_more(&self) -> bool {
        let (taken, building_from) = (self.batcher.taken(), self.batcher.building_from());
        self.accepting()
            && self.flushes.iter().any(|flush| {
                flush.through > taken || building_from.is_some_and(|from| from < flush.through)
            })
    }

    fn begin_close(&mut self, deadline: Instant, reply: Option<Sender<Result<()>>>) {
        self.batcher.take_all(&mut self.streams.intake());
        // The queue is empty: every flush waits for no more than was taken.
        let taken = self.batcher.taken();
        for flush in &mut self.flushes {
            flush.through = flush.through.min(taken);
        }
        let reply = reply.unwrap_or_else(|| crossbeam_channel::bounded(1).0);
        self.closing = Some((deadline, reply));
    }

    /// Every envelope numbered up to this has been written or dropped.
    fn written_through(&self) -> u64 {
        [self.streams.unwritten_from(), self.batcher.building_from()]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.batcher.taken())
    }

    fn answer_flushes(&mut self) {
        if self.flushes.is_empty() {
            return;
        }
        let written = self.written_through();
        self.flushes.retain(|flush| {
            if flush.through <= written {
                let _ = flush.reply.send(Ok(()));
                false
            } else {
                true
            }
        });
    }

    /// Replies to close and returns true once everything is written and
    /// confirmed, or once the close deadline has passed.
    fn finish_close_if_done(&mut self) -> bool {
        let Some((deadline, _)) = &self.closing else {
            return false;
        };
        let idle = self.batcher.is_empty() && self.streams.is_idle() && self.unary.is_idle();
        if !idle && Instant::now() < *deadline {
            return false;
        }
        self.batcher.seal(&mut self.streams.intake());
        let (undelivered, close_error) = self.streams.give_up_all();
        self.unary.give_up_all(self.streams.ledger());
        self.answer_flushes();
        let result = match close_error {
            _ if undelivered > 0 => Err(Error::Timeout {
                waited: Duration::ZERO,
                undelivered,
            }),
            Some(error) => Err(error),
            None => Ok(()),
        };
        self.counters.log_first_drop();
        if let Some((_, reply)) = self.closing.take() {
            let _ = reply.send(result);
        }
        true
    }
}
