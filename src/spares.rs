//! Envelope buffers handed back from the sender thread to the emitting
//! threads, so that building an envelope takes no trip to the allocator.
//!
//! Each envelope is encoded into a buffer of its own on the thread that
//! builds it, and the sender thread is done with that buffer once it has
//! copied the envelope into a batch. Freeing it there and allocating the
//! next one on the emitting thread costs the allocator a lock and cache
//! lines that travel between the cores, for every envelope: about a tenth
//! of the client's CPU in `cargo bench --bench throughput`. Instead, the
//! sender thread gathers small buffers into magazines and leaves them in
//! its client's [`Spares`]; an emitting thread whose own stash has run out
//! takes a whole magazine when it emits, and the builder takes buffers
//! from that stash. One lock is taken per magazine, not per envelope.
//!
//! What is kept is bounded: buffers of at most [`MAX_SPARE_CAPACITY`]
//! bytes, [`MAGAZINE`] of them in a thread's stash, [`SPARE_MAGAZINES`]
//! magazines waiting in a client's spares and the one the sender thread is
//! filling (fewer than [`MAGAZINE`]): 1 MiB + 32 KiB, and 32 KiB a thread,
//! as the memory bound of docs/delivery.md counts them; the rest are freed
//! as before.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use parking_lot::Mutex;

/// The largest buffer handed back: an envelope of a typical log line with
/// its tags fits in far less.
pub(crate) const MAX_SPARE_CAPACITY: usize = 1024;
/// Buffers in a magazine, and the most a thread's stash holds.
pub(crate) const MAGAZINE: usize = 32;
/// Magazines a client keeps waiting for its emitting threads: a batch's
/// worth of buffers (the sender thread hands them back a batch at a time).
pub(crate) const SPARE_MAGAZINES: usize = 32;

thread_local! {
    /// This thread's buffers, from one magazine.
    static STASH: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for `capacity` bytes: the one on top of this
/// thread's stash if it fits, else a new one. A spare fits when it holds
/// `capacity` but not twice as much: a queued envelope's buffer is memory
/// the byte budget (which counts encoded bytes) does not see, so a small
/// envelope never keeps a large buffer. A spare that does not fit is let
/// go, so that the stash keeps turning over.
#[inline]
pub(crate) fn buffer(capacity: usize) -> Vec<u8> {
    let spare = STASH
        .try_with(|stash| stash.borrow_mut().pop())
        .ok()
        .flatten()
        .filter(|spare| (capacity..=2 * capacity).contains(&spare.capacity()));
    spare.unwrap_or_else(|| Vec::with_capacity(capacity))
}

/// Magazines of buffers the sender thread is done with, waiting for the
/// client's emitting threads.
#[derive(Default)]
pub(crate) struct Spares {
    magazines: Mutex<Vec<Vec<Vec<u8>>>>,
    /// How many magazines wait, read without the lock: a thread whose
    /// stash stays empty (its envelopes are too large to come back) takes
    /// no lock at each emit.
    waiting: AtomicUsize,
}

impl Spares {
    /// After an emit: fills this thread's stash with a magazine, if it is
    /// empty and one is waiting.
    #[inline]
    pub(crate) fn refill_stash(&self) {
        let _ = STASH.try_with(|stash| {
            if !stash.borrow().is_empty() || self.waiting.load(Relaxed) == 0 {
                return;
            }
            let mut magazines = self.magazines.lock();
            if let Some(magazine) = magazines.pop() {
                self.waiting.store(magazines.len(), Relaxed);
                *stash.borrow_mut() = magazine;
            }
        });
    }

    fn put(&self, magazine: Vec<Vec<u8>>) {
        let mut magazines = self.magazines.lock();
        if magazines.len() < SPARE_MAGAZINES {
            magazines.push(magazine);
            self.waiting.store(magazines.len(), Relaxed);
        }
    }

    /// Buffers waiting, for tests.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.magazines.lock().iter().map(Vec::len).sum()
    }
}

/// The sender thread's side: buffers it is done with, gathered into a
/// magazine and left in the client's spares once it is full.
pub(crate) struct Returns {
    magazine: Vec<Vec<u8>>,
    spares: Arc<Spares>,
}

impl Returns {
    pub(crate) fn new(spares: Arc<Spares>) -> Returns {
        Returns {
            magazine: Vec::new(),
            spares,
        }
    }

    /// Hands `buffer` back if it is small enough; frees it otherwise.
    #[inline]
    pub(crate) fn give(&mut self, mut buffer: Vec<u8>) {
        if buffer.capacity() > MAX_SPARE_CAPACITY {
            return;
        }
        buffer.clear();
        if self.magazine.capacity() == 0 {
            self.magazine.reserve_exact(MAGAZINE);
        }
        self.magazine.push(buffer);
        if self.magazine.len() == MAGAZINE {
            self.spares.put(std::mem::take(&mut self.magazine));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_go_back_to_emitting_threads_a_magazine_at_a_time_and_within_bounds() {
        let spares = Arc::new(Spares::default());
        let mut returns = Returns::new(spares.clone());
        // Too large to keep.
        returns.give(Vec::with_capacity(MAX_SPARE_CAPACITY + 1));
        for _ in 0..MAGAZINE - 1 {
            returns.give(Vec::with_capacity(300));
        }
        assert_eq!(spares.waiting(), 0, "a magazine goes once full");
        returns.give(Vec::with_capacity(300));
        assert_eq!(spares.waiting(), MAGAZINE);
        for _ in 0..MAGAZINE * (SPARE_MAGAZINES + 2) {
            returns.give(Vec::with_capacity(300));
        }
        assert_eq!(
            spares.waiting(),
            MAGAZINE * SPARE_MAGAZINES,
            "the rest are freed"
        );

        std::thread::spawn(move || {
            spares.refill_stash();
            assert_eq!(spares.waiting(), MAGAZINE * (SPARE_MAGAZINES - 1));
            // A stash that is not empty takes no more.
            spares.refill_stash();
            assert_eq!(spares.waiting(), MAGAZINE * (SPARE_MAGAZINES - 1));
            let reused = buffer(300);
            assert!(reused.is_empty() && reused.capacity() == 300);
            // Larger than what a spare holds, or less than half: a new one
            // (the spare is let go).
            assert!(buffer(5_000).capacity() >= 5_000);
            assert_eq!(buffer(100).capacity(), 100);
            for _ in 3..MAGAZINE {
                assert_eq!(buffer(200).capacity(), 300);
            }
            spares.refill_stash();
            assert_eq!(spares.waiting(), MAGAZINE * (SPARE_MAGAZINES - 2));
        })
        .join()
        .unwrap();
    }
}
