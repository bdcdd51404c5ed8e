//! `EnvelopeBatch` messages encoded as envelopes arrive, so a batch's size is
//! known exactly and a batch can be written again (or split) without
//! re-encoding.

use std::time::Instant;

use protobuf::rt::WireType;
use protobuf::{CodedOutputStream, Message};

use crate::proto::envelope as pb;

/// The encoded size of `len` as a protobuf varint.
pub(crate) fn varint_len(len: u64) -> usize {
    (64 - (len | 1).leading_zeros() as usize).div_ceil(7)
}

/// The bytes an envelope of encoded size `size` takes inside an `EnvelopeBatch`.
pub(crate) fn framed_len(size: usize) -> usize {
    1 + varint_len(size as u64) + size
}

/// Adds the client-wide tags an envelope lacks; its own tags win.
pub(crate) fn merge_global_tags(envelope: &mut pb::Envelope, global_tags: &[(String, String)]) {
    for (key, value) in global_tags {
        if !envelope.tags.contains_key(key) {
            envelope.tags.insert(key.clone(), value.clone());
        }
    }
}

/// The most bytes the client-wide tags can add to one encoded envelope: each
/// is a `tags` map entry (field 9) of a key and a value string.
pub(crate) fn global_tags_len(global_tags: &[(String, String)]) -> usize {
    global_tags
        .iter()
        .map(|(key, value)| framed_len(framed_len(key.len()) + framed_len(value.len())))
        .sum()
}

/// The most an envelope of encoded size `size` can take in a batch once
/// client-wide tags adding at most `global_tags_len` bytes are merged in.
pub(crate) fn accounted_len(size: usize, global_tags_len: usize) -> usize {
    framed_len(size + global_tags_len)
}

/// A complete encoded `EnvelopeBatch`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Batch {
    /// The encoded message.
    pub bytes: Vec<u8>,
    /// Where each envelope's field ends in `bytes`, for splitting.
    ends: Vec<usize>,
    /// The number of envelopes taken from the queue up to and including this
    /// batch's last one; flushes wait on it.
    pub last_seq: u64,
    /// Written on a stream of its own, so that if the agent refuses it as
    /// too large the refusal points at it alone.
    pub isolate: bool,
}

impl Batch {
    /// How many envelopes it holds.
    pub(crate) fn len(&self) -> u64 {
        self.ends.len() as u64
    }

    /// Splits a batch of two or more envelopes into two halves; a batch of
    /// one comes back whole as `Err`.
    pub(crate) fn split(self) -> Result<(Batch, Batch), Batch> {
        if self.ends.len() < 2 {
            return Err(self);
        }
        let half = self.ends.len() / 2;
        let cut = self.ends[half - 1];
        let first_seq = self.last_seq - self.len();
        let first = Batch {
            bytes: self.bytes[..cut].to_vec(),
            ends: self.ends[..half].to_vec(),
            last_seq: first_seq + half as u64,
            isolate: self.isolate,
        };
        let second = Batch {
            bytes: self.bytes[cut..].to_vec(),
            ends: self.ends[half..].iter().map(|end| end - cut).collect(),
            last_seq: self.last_seq,
            isolate: self.isolate,
        };
        Ok((first, second))
    }
}

/// The batch being filled.
#[derive(Debug, Default)]
pub(crate) struct BatchBuilder {
    bytes: Vec<u8>,
    ends: Vec<usize>,
    /// When the first envelope went in: the flush interval counts from here.
    pub started: Option<Instant>,
}

impl BatchBuilder {
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub(crate) fn encoded_len(&self) -> usize {
        self.bytes.len()
    }

    /// Appends an envelope whose `compute_size()` was `size`.
    pub(crate) fn push(&mut self, envelope: &pb::Envelope, size: usize) -> protobuf::Result<()> {
        let before = self.bytes.len();
        if let Err(error) = encode_framed(envelope, size, &mut self.bytes) {
            self.bytes.truncate(before);
            return Err(error);
        }
        self.ends.push(self.bytes.len());
        self.started.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// Takes the batch, leaving this empty; `last_seq` numbers its last envelope.
    pub(crate) fn seal(&mut self, last_seq: u64) -> Batch {
        self.started = None;
        Batch {
            bytes: std::mem::take(&mut self.bytes),
            ends: std::mem::take(&mut self.ends),
            last_seq,
            isolate: false,
        }
    }
}

/// Appends `envelope` to an encoded `EnvelopeBatch` as one `batch` field.
fn encode_framed(envelope: &pb::Envelope, size: usize, out: &mut Vec<u8>) -> protobuf::Result<()> {
    let size = u32::try_from(size)
        .map_err(|_| protobuf::Error::from(std::io::Error::other("envelope too large")))?;
    let mut stream = CodedOutputStream::vec(out);
    stream.write_tag(1, WireType::LengthDelimited)?;
    stream.write_raw_varint32(size)?;
    envelope.write_to_with_cached_sizes(&mut stream)?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(n: i64) -> pb::Envelope {
        let mut envelope = crate::Envelope::log(format!("{n}")).build().into_proto();
        envelope.timestamp = n;
        envelope
    }

    fn batch_of(count: i64) -> Batch {
        let mut builder = BatchBuilder::default();
        for n in 0..count {
            let envelope = envelope(n);
            let size = envelope.compute_size() as usize;
            builder.push(&envelope, size).unwrap();
        }
        builder.seal(100)
    }

    fn timestamps(batch: &Batch) -> Vec<i64> {
        let decoded = pb::EnvelopeBatch::parse_from_bytes(&batch.bytes).unwrap();
        decoded.batch.iter().map(|e| e.timestamp).collect()
    }

    #[test]
    fn a_built_batch_decodes_as_an_envelope_batch_of_the_exact_size() {
        let batch = batch_of(3);
        assert_eq!(timestamps(&batch), vec![0, 1, 2]);
        let expected: usize = (0..3)
            .map(|n| framed_len(envelope(n).compute_size() as usize))
            .sum();
        assert_eq!(batch.bytes.len(), expected);
    }

    #[test]
    fn splitting_keeps_every_envelope_in_order_and_numbers_both_halves() {
        let (first, second) = batch_of(5).split().unwrap();
        assert_eq!(timestamps(&first), vec![0, 1]);
        assert_eq!(timestamps(&second), vec![2, 3, 4]);
        assert_eq!((first.last_seq, second.last_seq), (97, 100));
        assert!(batch_of(1).split().is_err());
    }

    #[test]
    fn varint_lengths() {
        assert_eq!(varint_len(0), 1);
        assert_eq!(varint_len(127), 1);
        assert_eq!(varint_len(128), 2);
        assert_eq!(varint_len(16_383), 2);
        assert_eq!(varint_len(16_384), 3);
        assert_eq!(varint_len(u64::MAX), 10);
    }
}
