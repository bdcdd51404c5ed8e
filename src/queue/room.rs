//! The byte budget every envelope is reserved in from `emit` until gRPC
//! accepts it ([`Room`]), where emitters wait for room, and the
//! reservations unary sends hold outside the queue ([`Reservation`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;
use parking_lot::{Condvar, Mutex};

/// Room for more: the byte budget, and where emitters wait for room
/// (`Overflow::Block` and `BlockFor`). The sender thread wakes waiting
/// emitters once the queue is down to half full in envelopes and in bytes,
/// not once per envelope it takes, which would cost a wake-up (a system
/// call) per envelope, and per emitting thread, just when the client is
/// busiest.
pub(crate) struct Room {
    /// Encoded bytes reserved by emitters and not yet given back.
    pub(super) bytes: CachePadded<AtomicUsize>,
    pub(super) max_bytes: usize,
    /// Of `bytes`, those the sender thread holds (taken from the channel,
    /// not yet accepted by gRPC), as of its last pass: evicting queued
    /// envelopes cannot make this room.
    pub(super) held_by_sender: AtomicUsize,
    /// Of `bytes`, those unary sends hold, from the moment their caller
    /// reserves them until their call ends: evicting cannot make this room
    /// either.
    pub(super) held_for_sends: AtomicUsize,
    /// Set when bytes are given back, cleared when waiters are woken: a
    /// waiter that still does not fit is not woken again until more is freed.
    pub(super) released: AtomicBool,
    /// Emitters waiting, or about to; read by the sender thread without the lock.
    pub(super) waiting: AtomicUsize,
    /// Emitters in `Block` or `BlockFor` that have not yet queued or
    /// counted their envelope; close waits for them before it answers.
    pub(super) blocked_emitters: AtomicUsize,
    pub(super) lock: Mutex<()>,
    pub(super) freed: Condvar,
}

impl Room {
    pub(crate) fn new(max_bytes: usize) -> Room {
        Room {
            bytes: CachePadded::new(AtomicUsize::new(0)),
            max_bytes,
            held_by_sender: AtomicUsize::new(0),
            held_for_sends: AtomicUsize::new(0),
            released: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            blocked_emitters: AtomicUsize::new(0),
            lock: Mutex::new(()),
            freed: Condvar::new(),
        }
    }

    /// Takes `bytes` from the budget if they fit. Never over the bound,
    /// even for a moment, so a reservation that fits is never refused.
    pub(crate) fn reserve(&self, bytes: usize) -> bool {
        self.bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                (held + bytes <= self.max_bytes).then_some(held + bytes)
            })
            .is_ok()
    }

    /// Gives back what a reservation took.
    pub(crate) fn release(&self, bytes: usize) {
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
        if !self.released.load(Ordering::Relaxed) {
            self.released.store(true, Ordering::Relaxed);
        }
    }

    /// The sender thread says how many of the reserved bytes it holds.
    pub(crate) fn set_held_by_sender(&self, bytes: usize) {
        self.held_by_sender.store(bytes, Ordering::Relaxed);
    }

    /// Whether evicting queued envelopes could ever make room for `bytes`.
    pub(super) fn evicting_can_fit(&self, bytes: usize) -> bool {
        let unevictable = self.held_by_sender.load(Ordering::Relaxed)
            + self.held_for_sends.load(Ordering::Relaxed);
        unevictable + bytes <= self.max_bytes
    }

    /// The bytes reserved now.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Wakes waiting emitters, if any, once `queued` of `capacity` envelopes
    /// and the bytes are both down to half, and bytes were given back since
    /// they were last woken (one that needs more than half the budget
    /// would otherwise be woken, and nudge back, in a loop).
    pub(crate) fn wake_if_half_free(&self, queued: usize, capacity: usize) {
        if queued <= capacity / 2
            && self.bytes() <= self.max_bytes / 2
            && self.waiting.load(Ordering::SeqCst) > 0
            && self.released.swap(false, Ordering::Relaxed)
        {
            self.wake_all();
        }
    }

    /// Wakes every waiting emitter, if any.
    pub(crate) fn wake_all(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            let _locked = self.lock.lock();
            self.freed.notify_all();
        }
    }
}

/// Bytes taken from the budget outside the queue (a unary send's batch),
/// beyond `DropOldest`'s reach, given back when this is dropped.
pub(crate) struct Reservation {
    pub(super) bytes: usize,
    pub(super) room: Arc<Room>,
}

impl Reservation {
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.room.release(self.bytes);
        self.room
            .held_for_sends
            .fetch_sub(self.bytes, Ordering::Relaxed);
        self.room.wake_all();
    }
}
