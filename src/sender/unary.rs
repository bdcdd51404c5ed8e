//! Unary `Send` calls: started by the loop for a caller of
//! `IngressClient::send`, polled with everything else the loop waits on,
//! and answered to that caller when the agent does. Each call's bytes stay
//! reserved in the byte budget until it ends, since gRPC holds its copy;
//! the [`Ledger`] holds them meanwhile, and gives them back before the
//! caller hears, whichever way the call ends.

use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::error::{Error, Result};
use crate::queue::Reservation;

use super::ledger::{Ledger, SendBytes};
use super::transport::{Transport, UnaryCall};

/// How long past its caller's deadline a call may stay unanswered before
/// the loop cancels it: the call carries the same deadline, so this only
/// covers an answer lost in the transport. Shorter than the
/// `CLOSE_MARGIN` its caller waits past the deadline, so the caller hears
/// only once the call's bytes are back.
const OVERDUE: Duration = Duration::from_millis(150);

/// One unary call under way.
struct Pending<C> {
    call: C,
    reply: Sender<Result<()>>,
    deadline: Instant,
    held: SendBytes,
}

impl<C> Pending<C> {
    /// Ends the call (gRPC lets go of its batch) and gives its bytes back
    /// before its caller hears, so what the caller sees next is settled.
    fn answer(self, ledger: &mut Ledger, outcome: Result<()>) {
        let Pending {
            call, reply, held, ..
        } = self;
        drop(call);
        answer(ledger, held, &reply, outcome);
    }
}

/// Gives a call's bytes back, then tells its caller.
fn answer(ledger: &mut Ledger, held: SendBytes, reply: &Sender<Result<()>>, outcome: Result<()>) {
    ledger.send_ended(held);
    let _ = reply.send(outcome);
}

pub(crate) struct Unary<C> {
    calls: Vec<Pending<C>>,
    waker: Waker,
}

impl<C: UnaryCall> Unary<C> {
    pub(crate) fn new(waker: Waker) -> Unary<C> {
        Unary {
            calls: Vec::new(),
            waker,
        }
    }

    /// Starts a call of an encoded `EnvelopeBatch` unless `deadline` has
    /// passed; `reply` gets its outcome.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start<T: Transport<Call = C>>(
        &mut self,
        transport: &mut T,
        ledger: &mut Ledger,
        batch: Vec<u8>,
        reservation: Reservation,
        deadline: Instant,
        reply: Sender<Result<()>>,
    ) {
        let held = ledger.send_started(reservation);
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            // Its caller has stopped waiting, and counts its own timeout.
            let timeout = Error::Timeout {
                waited: Duration::ZERO,
                undelivered: 0,
            };
            answer(ledger, held, &reply, Err(timeout));
            return;
        }
        match transport.send(batch, left) {
            Ok(call) => {
                self.calls.push(Pending {
                    call,
                    reply,
                    deadline: deadline + OVERDUE,
                    held,
                });
                // A first poll asks to be woken when the answer comes.
                self.poll(ledger, Instant::now());
            }
            Err(error) => answer(ledger, held, &reply, Err(error)),
        }
    }

    /// Answers the calls that ended, and cancels those long overdue.
    pub(crate) fn poll(&mut self, ledger: &mut Ledger, now: Instant) {
        let mut context = Context::from_waker(&self.waker);
        let mut index = 0;
        while index < self.calls.len() {
            let pending = &mut self.calls[index];
            let outcome = match pending.call.poll_done(&mut context) {
                Poll::Ready(outcome) => outcome,
                Poll::Pending if now >= pending.deadline => Err(Error::Timeout {
                    waited: Duration::ZERO,
                    undelivered: 0,
                }),
                Poll::Pending => {
                    index += 1;
                    continue;
                }
            };
            self.calls.swap_remove(index).answer(ledger, outcome);
        }
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.calls.iter().map(|pending| pending.deadline).min()
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.calls.is_empty()
    }

    /// Close's deadline: the calls left are cancelled, and their callers
    /// told.
    pub(crate) fn give_up_all(&mut self, ledger: &mut Ledger) {
        for pending in std::mem::take(&mut self.calls) {
            pending.answer(
                ledger,
                Err(Error::Timeout {
                    waited: Duration::ZERO,
                    undelivered: 0,
                }),
            );
        }
    }
}
