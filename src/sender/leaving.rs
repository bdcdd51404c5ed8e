//! Letting go: a connection that stopped answering is left, with every
//! stream that rides it, and at close's deadline everything still held is
//! given up and counted.

use std::time::Instant;

use crate::error::Error;
use crate::stats::DropReason;

use super::streams::Streams;
use super::transport::{Stall, Transport, WriteError};

impl<T: Transport> Streams<T> {
    /// A write or a confirmation on `connection` timed out: the connection
    /// is silent, so it is left, and with it every stream that rides it.
    /// Those streams' writes in flight are as uncertain as the one that
    /// timed out; what they carried unconfirmed is replayed.
    pub(super) fn abandon_connection(&mut self, connection: u64) {
        if connection != self.slots.connection() {
            // Already left.
            return;
        }
        // Writes gRPC accepted before the loop polled them are not lost
        // with the connection: settled first, they count as accepted (and,
        // on a connection being left, as no sign of health).
        for slot in self.slots.on_connection(connection) {
            self.settle_if_done(slot, false);
        }
        self.transport.abandon_connection();
        self.slots.leave_connection();
        let left = || "the stream was ended with its connection, which stopped answering";
        for slot in self.slots.on_connection(connection) {
            let taken = self.slots.take_carried(slot);
            let error = self.error(left(), None);
            match taken.writing {
                Some(writing) => self.settle_failure(
                    WriteError::Uncertain(error),
                    writing.reused,
                    Some(writing.batch),
                    taken.unconfirmed,
                    taken.proven,
                ),
                None => self.settle_failure(
                    WriteError::StreamEnded(error),
                    true,
                    None,
                    taken.unconfirmed,
                    taken.proven,
                ),
            }
        }
        for done in self.ends.take_on(connection) {
            let error = self.error(left(), None);
            self.confirmation_failed(done.batches, done.last, WriteError::Uncertain(error), false);
        }
    }

    /// Close's deadline: gives up on everything left, and says how many
    /// envelopes that was and how the last stream ended if it ended badly.
    pub(crate) fn give_up_all(&mut self) -> (u64, Option<Error>) {
        let now = Instant::now();
        // A write held until now may never have met an error: say that
        // close's deadline came while it waited, or the operator sees drops
        // with no cause.
        let longest_write = self
            .slots
            .in_flight()
            .map(|writing| writing.deadline)
            .min()
            .map(|deadline| {
                self.write_timeout
                    .saturating_sub(deadline.saturating_duration_since(now))
            });
        if let Some(waited) = longest_write {
            // Writes in flight ride the connection in use: leaving one
            // ends every write on it.
            let error = self
                .transport
                .stalled(Stall::Close { waited }, self.slots.connection());
            self.health.record(&error);
        }
        let mut given_up = Vec::new();
        let (ending, confirming) = self.ends.take_all();
        for ending in ending {
            given_up.push(ending.batch);
            given_up.extend(ending.unconfirmed);
        }
        given_up.extend(self.outbox.take_all());
        for slot in 0..self.slots.len() {
            let taken = self.slots.take_carried(slot);
            given_up.extend(taken.unconfirmed);
            given_up.extend(taken.writing.map(|writing| writing.batch));
        }
        for confirming in confirming {
            if confirming.last && self.close_error.is_none() {
                let error = self.error(
                    "the agent did not end the stream before close's deadline",
                    Some("the agent is not reading; it may be overloaded or stuck"),
                );
                self.health.record(&error);
                self.close_error = Some(error);
            }
            given_up.extend(confirming.batches);
        }
        let undelivered = given_up
            .into_iter()
            .map(|batch| self.ledger.dropped(batch, DropReason::GaveUp))
            .sum();
        (undelivered, self.close_error.take())
    }
}
