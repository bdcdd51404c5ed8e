//! What `emit` does when the queue is full, beyond dropping the new
//! envelope: evicting the oldest (`DropOldest`), or waiting for room
//! (`Block`, `BlockFor`, and unary sends reserving their bytes).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::envelope::Envelope;
use crate::stats::DropReason;
use crate::wire::framed_len;

use super::room::Reservation;
use super::{Pushed, Queue, Queued, Refused};

/// How many envelopes one `DropOldest` emit evicts, beyond the bytes it
/// needs, before it drops its own (other emitters may keep taking the room
/// it makes).
const MAX_EVICTIONS: usize = 8;

impl Queue {
    /// Makes room by dropping the oldest queued envelopes: as many as the
    /// new one needs, in bytes, and a few more if other emitters take the
    /// room first. Envelopes the sender thread already holds cannot be
    /// evicted: when they alone leave no room, or none is left in the
    /// queue, the new one is dropped instead.
    pub(super) fn evict_oldest_for(&self, mut queued: Queued) -> Pushed {
        let needed = queued.framed();
        if !self.room.evicting_can_fit(needed) {
            return self.refuse(DropReason::QueueFull);
        }
        let mut evicted_bytes = 0;
        let mut evictions = 0;
        loop {
            let Ok(oldest) = self.leftovers.try_recv() else {
                return self.refuse(DropReason::QueueFull);
            };
            evicted_bytes += oldest.framed();
            self.room.release(oldest.framed());
            self.drop_envelopes(DropReason::QueueFull, 1);
            queued = match self.try_push(queued) {
                Ok(()) => return self.queued(),
                Err(Refused::Full(queued)) => queued,
                Err(Refused::Closed) => return self.refuse(DropReason::Closed),
            };
            evictions += 1;
            if evictions >= MAX_EVICTIONS && evicted_bytes >= needed {
                return self.refuse(DropReason::QueueFull);
            }
        }
    }

    /// Waits for room, at most `wait`, and never past the start of close.
    /// An emitter still waiting when close begins has its envelope counted
    /// lost, for that close to report: it was emitted before close.
    pub(super) fn block_for(&self, queued: Queued, wait: Option<Duration>) -> Pushed {
        // Under the lock close begins with: either this emitter is counted
        // blocked before close begins, and close waits for it, or it sees
        // close begun and its envelope is one emitted after close.
        {
            let _locked = self.room.lock.lock();
            if self.closed.load(Ordering::SeqCst) {
                drop(_locked);
                return self.refuse(DropReason::Closed);
            }
            self.room.blocked_emitters.fetch_add(1, Ordering::SeqCst);
        }
        let mut queued = Some(queued);
        let outcome = self.wait_for_room(wait.map(crate::policy::deadline_after), || {
            // Room close makes is not for this envelope: the sender thread
            // takes nothing queued after close began.
            if self.closed.load(Ordering::SeqCst) {
                return Attempt::Closed;
            }
            match queued.take().map(|q| self.try_push(q)) {
                Some(Ok(())) | None => Attempt::Done,
                Some(Err(Refused::Full(again))) => {
                    queued = Some(again);
                    Attempt::Full
                }
                Some(Err(Refused::Closed)) => Attempt::Closed,
            }
        });
        let pushed = match outcome {
            Waited::Done => self.queued(),
            Waited::Closed => {
                self.drop_envelopes(DropReason::Closed, 1);
                self.counters.count_lost(1);
                Pushed::Dropped
            }
            Waited::TimedOut => self.refuse(DropReason::QueueFull),
        };
        self.unblocked();
        pushed
    }

    /// A blocked emitter has counted or queued its envelope; close, which
    /// waits for every emitter it released, hears of it.
    fn unblocked(&self) {
        let _locked = self.room.lock.lock();
        self.room.blocked_emitters.fetch_sub(1, Ordering::SeqCst);
        if self.closed.load(Ordering::SeqCst) {
            self.room.freed.notify_all();
        }
    }

    /// Close began: waits, until `deadline` at most, for the emitters that
    /// were blocked for room to count or queue their envelopes.
    pub(crate) fn wait_for_blocked_emitters(&self, deadline: Instant) {
        let room = &*self.room;
        let mut locked = room.lock.lock();
        while room.blocked_emitters.load(Ordering::SeqCst) > 0 {
            if room.freed.wait_until(&mut locked, deadline).timed_out() {
                return;
            }
        }
    }

    /// Waits until the queue has room for `envelope`, `until` passes or
    /// `keep_waiting` says to stop; true when there is room now (an emitter
    /// may still take it first). For the pulse thread, which paces a pulse
    /// larger than the queue to the sender thread rather than lose its
    /// tail: it runs no code but the client's and the sender thread never
    /// waits on it, so unlike an emit on the client's own threads it may
    /// wait. An envelope no batch can hold has room at once: the push
    /// refuses it.
    pub(crate) fn wait_for_room_for(
        &self,
        envelope: &Envelope,
        until: Instant,
        keep_waiting: impl Fn() -> bool,
    ) -> bool {
        let encoded = envelope.encoded();
        let bytes = framed_len(encoded.bytes.len() + self.stamp.added_len(encoded));
        let fits = || {
            bytes > self.settings.batch_max_bytes
                || (self.data.len() < self.settings.capacity
                    && self.room.bytes() + bytes <= self.settings.max_bytes)
        };
        if fits() {
            return true;
        }
        let waited = self.wait_for_room(Some(until), || {
            if fits() {
                Attempt::Done
            } else if keep_waiting() {
                Attempt::Full
            } else {
                Attempt::Closed
            }
        });
        matches!(waited, Waited::Done)
    }

    /// Wakes every thread waiting for room, to look again at whether it
    /// should go on waiting.
    pub(crate) fn wake_waiters(&self) {
        self.room.wake_all();
    }

    /// Takes `bytes` from the budget for a unary send, waiting for room
    /// until `deadline`; `None` if there was none by then, or the client closed.
    pub(crate) fn reserve_until(&self, bytes: usize, deadline: Instant) -> Option<Reservation> {
        let room = &self.room;
        let waited = self.wait_for_room(Some(deadline), || {
            // Counted as beyond eviction's reach before they are reserved
            // (and after they are given back): a `DropOldest` emit never
            // takes them for evictable bytes, even for a moment.
            room.held_for_sends.fetch_add(bytes, Ordering::Relaxed);
            if room.reserve(bytes) {
                Attempt::Done
            } else {
                room.held_for_sends.fetch_sub(bytes, Ordering::Relaxed);
                Attempt::Full
            }
        });
        matches!(waited, Waited::Done).then(|| Reservation {
            bytes,
            room: room.clone(),
        })
    }

    /// Tries `attempt` until it succeeds, the client closes, or `deadline`
    /// passes, sleeping between tries until the sender thread makes room.
    fn wait_for_room(
        &self,
        deadline: Option<Instant>,
        mut attempt: impl FnMut() -> Attempt,
    ) -> Waited {
        let room = &*self.room;
        let mut locked = room.lock.lock();
        loop {
            // Counted as waiting before the last look at the queue, so the
            // sender thread's next pass cannot miss this thread.
            room.waiting.fetch_add(1, Ordering::SeqCst);
            let outcome = match attempt() {
                Attempt::Full if self.closed.load(Ordering::SeqCst) => Attempt::Closed,
                other => other,
            };
            let timed_out = match outcome {
                Attempt::Full => {
                    let _ = self.nudge.try_send(());
                    match deadline {
                        Some(deadline) => room.freed.wait_until(&mut locked, deadline).timed_out(),
                        None => {
                            room.freed.wait(&mut locked);
                            false
                        }
                    }
                }
                _ => false,
            };
            room.waiting.fetch_sub(1, Ordering::SeqCst);
            let waited = match outcome {
                Attempt::Done => Waited::Done,
                Attempt::Closed => Waited::Closed,
                // No wake-up says so, but there may be room by now.
                Attempt::Full if timed_out => match attempt() {
                    Attempt::Done => Waited::Done,
                    Attempt::Closed => Waited::Closed,
                    Attempt::Full if self.closed.load(Ordering::SeqCst) => Waited::Closed,
                    Attempt::Full => Waited::TimedOut,
                },
                Attempt::Full => continue,
            };
            // Let go of the lock before the caller counts a drop.
            drop(locked);
            return waited;
        }
    }
}

/// One try at getting room.
enum Attempt {
    Done,
    Full,
    Closed,
}

/// How a wait for room ended.
enum Waited {
    Done,
    Closed,
    TimedOut,
}
