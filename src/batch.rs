//! `EnvelopeBatch` messages encoded as envelopes arrive, so a batch's size is
//! known exactly and a batch can be written again (or split) without
//! re-encoding.

use std::time::Instant;

use protobuf::Message;
use protobuf::rt::WireType;

use crate::envelope::Encoded;
use crate::proto::envelope as pb;
use crate::source::SourceInfo;
use crate::wire::{framed_len, put_varint};

/// Adds the client-wide tags an envelope lacks; its own tags win. The
/// reference [`Stamp`] is tested against.
#[cfg(feature = "testing")]
pub(crate) fn merge_global_tags(envelope: &mut pb::Envelope, global_tags: &[(String, String)]) {
    for (key, value) in global_tags {
        if !envelope.tags.contains_key(key) {
            envelope.tags.insert(key.clone(), value.clone());
        }
    }
}

/// What the client adds to every envelope it batches, encoded once: the
/// client-wide tags an envelope lacks, and the default source's ids where
/// it names none. Appending these encoded fields to an envelope's own
/// encoding gives the same message as merging them in, without copying a
/// string per envelope. A map entry is a repeated field and a string field
/// missing from the envelope's encoding is empty, so order does not matter.
#[derive(Clone, Debug, Default)]
pub(crate) struct Stamp {
    /// Each tag's key and its encoded `tags` map entry (field 9).
    tags: Vec<(String, Vec<u8>)>,
    /// Encoded `source_id` (field 2), if the default source has one.
    source_id: Option<Vec<u8>>,
    /// Encoded `instance_id` (field 8), if the default source has one.
    instance_id: Option<Vec<u8>>,
}

impl Stamp {
    pub(crate) fn new(global_tags: &[(String, String)], source: Option<&SourceInfo>) -> Stamp {
        let mut tags: Vec<(String, Vec<u8>)> = Vec::with_capacity(global_tags.len());
        for (key, value) in global_tags {
            // The first of two equal keys wins, as in `merge_global_tags`.
            if tags.iter().all(|(seen, _)| seen != key) {
                let mut entry = pb::Envelope::new();
                entry.tags.insert(key.clone(), value.clone());
                tags.push((key.clone(), encode(&entry)));
            }
        }
        let string_field = |set: fn(&mut pb::Envelope, String), value: &str| {
            (!value.is_empty()).then(|| {
                let mut field = pb::Envelope::new();
                set(&mut field, value.to_string());
                encode(&field)
            })
        };
        Stamp {
            tags,
            source_id: source.and_then(|s| string_field(|e, v| e.source_id = v, s.source_id())),
            instance_id: source
                .and_then(|s| string_field(|e, v| e.instance_id = v, s.instance_id())),
        }
    }

    /// The encoded fields `envelope` gets, in order.
    fn fields<'a>(&'a self, envelope: &'a Encoded) -> impl Iterator<Item = &'a [u8]> + 'a {
        let source_id = self
            .source_id
            .as_deref()
            .filter(|_| !envelope.has_source_id);
        let instance_id = self
            .instance_id
            .as_deref()
            .filter(|_| !envelope.has_instance_id);
        let own_keys = if self.tags.is_empty() {
            Vec::new()
        } else {
            envelope.tag_keys()
        };
        let tags = self
            .tags
            .iter()
            .filter(move |(key, _)| !own_keys.contains(&key.as_bytes()))
            .map(|(_, entry)| entry.as_slice());
        source_id.into_iter().chain(instance_id).chain(tags)
    }

    /// How many bytes the fields add to `envelope`'s encoding.
    pub(crate) fn added_len(&self, envelope: &Encoded) -> usize {
        if self.is_empty() {
            return 0;
        }
        self.fields(envelope).map(<[u8]>::len).sum()
    }

    fn is_empty(&self) -> bool {
        self.tags.is_empty() && self.source_id.is_none() && self.instance_id.is_none()
    }
}

fn encode(message: &pb::Envelope) -> Vec<u8> {
    // Encoding into memory cannot fail for a message this small.
    message.write_to_bytes().unwrap_or_default()
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
    /// Written before, at least once: its bytes count in the replay buffer
    /// (until it is confirmed or given up), no longer in the queue's budget.
    pub replay: bool,
}

impl Batch {
    /// How many envelopes it holds.
    pub(crate) fn len(&self) -> u64 {
        self.ends.len() as u64
    }

    /// How many envelopes were taken from the queue before its first.
    pub(crate) fn first_seq(&self) -> u64 {
        self.last_seq - self.len()
    }

    /// Splits a batch of two or more envelopes into two halves; a batch of
    /// one comes back whole as `Err`.
    pub(crate) fn split(self) -> Result<(Batch, Batch), Batch> {
        if self.ends.len() < 2 {
            return Err(self);
        }
        let half = self.ends.len() / 2;
        let cut = self.ends[half - 1];
        let first_seq = self.first_seq();
        let first = Batch {
            bytes: self.bytes[..cut].to_vec(),
            ends: self.ends[..half].to_vec(),
            last_seq: first_seq + half as u64,
            isolate: self.isolate,
            replay: self.replay,
        };
        let second = Batch {
            bytes: self.bytes[cut..].to_vec(),
            ends: self.ends[half..].iter().map(|end| end - cut).collect(),
            last_seq: self.last_seq,
            isolate: self.isolate,
            replay: self.replay,
        };
        Ok((first, second))
    }
}

/// The batch being filled.
#[derive(Debug)]
pub(crate) struct BatchBuilder {
    bytes: Vec<u8>,
    ends: Vec<usize>,
    /// The most bytes a batch holds but for one envelope that passes it.
    max_bytes: usize,
    /// When the first envelope went in: the flush interval counts from here.
    pub started: Option<Instant>,
}

impl Default for BatchBuilder {
    fn default() -> BatchBuilder {
        BatchBuilder::new(usize::MAX)
    }
}

impl BatchBuilder {
    /// A builder for batches of up to about `max_bytes`.
    pub(crate) fn new(max_bytes: usize) -> BatchBuilder {
        BatchBuilder {
            bytes: Vec::new(),
            ends: Vec::new(),
            max_bytes,
            started: None,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub(crate) fn encoded_len(&self) -> usize {
        self.bytes.len()
    }

    /// Appends an envelope, with the stamp's fields adding `added` bytes.
    pub(crate) fn push(&mut self, envelope: &Encoded, stamp: &Stamp, added: usize) {
        let needed = framed_len(envelope.bytes.len() + added);
        if self.bytes.capacity() - self.bytes.len() < needed {
            // Grow by doubling (few copies) but never past what the batch
            // will hold: the byte budget counts lengths, so a capacity far
            // beyond the length is memory nobody counts.
            let wanted = (self.bytes.capacity() * 2)
                .min(self.max_bytes)
                .max(self.bytes.len() + needed);
            self.bytes.reserve_exact(wanted - self.bytes.len());
        }
        encode_framed(envelope, stamp, added, &mut self.bytes);
        self.ends.push(self.bytes.len());
        self.started.get_or_insert_with(Instant::now);
    }

    /// The encoded batch, for a unary send: no spare room beyond an
    /// eighth, as `seal` keeps.
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        let mut bytes = self.bytes;
        if bytes.capacity() - bytes.len() > bytes.len() / 8 {
            bytes.shrink_to_fit();
        }
        bytes
    }

    /// Takes the batch, leaving this empty; `last_seq` numbers its last envelope.
    pub(crate) fn seal(&mut self, last_seq: u64) -> Batch {
        self.started = None;
        // The next batch is likely as big: reserve that much rather than
        // grow into it.
        let bytes = Vec::with_capacity(self.bytes.len());
        let ends = Vec::with_capacity(self.ends.len());
        let mut sealed = std::mem::replace(&mut self.bytes, bytes);
        // Sealed batches wait (and, at least once, stay until confirmed)
        // counted by their length: hold no more than that. Shrinking gives
        // the tail back in place.
        if sealed.capacity() - sealed.len() > sealed.len() / 8 {
            sealed.shrink_to_fit();
        }
        Batch {
            bytes: sealed,
            ends: std::mem::replace(&mut self.ends, ends),
            last_seq,
            isolate: false,
            replay: false,
        }
    }
}

/// Appends `envelope`, stamped, to an encoded `EnvelopeBatch` as one
/// `batch` field: a copy of bytes, with no protobuf work.
fn encode_framed(envelope: &Encoded, stamp: &Stamp, added: usize, out: &mut Vec<u8>) {
    let len = envelope.bytes.len() + added;
    out.reserve(framed_len(len));
    out.push((1 << 3) | WireType::LengthDelimited as u8);
    put_varint(out, len as u64);
    out.extend_from_slice(&envelope.bytes);
    if added > 0 {
        for field in stamp.fields(envelope) {
            out.extend_from_slice(field);
        }
    }
}

/// One envelope as the sender thread frames it into a batch, stamped, and
/// as merging the stamp in and encoding would: the two must decode alike.
#[cfg(feature = "testing")]
pub(crate) fn stamped_both_ways(
    envelope: &crate::Envelope,
    global_tags: &[(String, String)],
    source: Option<&SourceInfo>,
) -> (Vec<u8>, Vec<u8>) {
    let stamp = Stamp::new(global_tags, source);
    let encoded = envelope.clone().into_encoded();
    let mut fast = Vec::new();
    encode_framed(&encoded, &stamp, stamp.added_len(&encoded), &mut fast);
    let mut merged = envelope.as_proto().clone();
    if let Some(source) = source {
        source.stamp(&mut merged);
    }
    merge_global_tags(&mut merged, global_tags);
    let merged = crate::Envelope::from_proto(merged).into_encoded();
    let mut reference = Vec::new();
    encode_framed(&merged, &Stamp::default(), 0, &mut reference);
    (fast, reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(n: i64) -> Encoded {
        crate::Envelope::log(format!("{n}"))
            .timestamp(n)
            .build()
            .into_encoded()
    }

    fn batch_of(count: i64) -> Batch {
        let mut builder = BatchBuilder::default();
        for n in 0..count {
            builder.push(&envelope(n), &Stamp::default(), 0);
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
        let expected: usize = (0..3).map(|n| framed_len(envelope(n).bytes.len())).sum();
        assert_eq!(batch.bytes.len(), expected);
    }

    #[test]
    fn a_sealed_batch_holds_about_what_it_counts_and_the_builder_never_passes_its_cap() {
        let envelope = crate::Envelope::log(vec![b'x'; 3_000])
            .build()
            .into_encoded();
        let framed = framed_len(envelope.bytes.len());
        let max_bytes = 64 * framed + framed / 2;
        let mut builder = BatchBuilder::new(max_bytes);
        for round in 0..3 {
            // Sizes that doubling would overshoot: 3, then 40, then 64 envelopes.
            for _ in 0..[3, 40, 64][round] {
                builder.push(&envelope, &Stamp::default(), 0);
                assert!(builder.bytes.capacity() <= max_bytes.max(builder.bytes.len()));
            }
            let sealed = builder.seal(100);
            let (len, capacity) = (sealed.bytes.len(), sealed.bytes.capacity());
            assert!(
                capacity <= len + len / 8,
                "round {round}: {capacity} for {len}"
            );
        }
    }

    #[test]
    fn splitting_keeps_every_envelope_in_order_and_numbers_both_halves() {
        let (first, second) = batch_of(5).split().unwrap();
        assert_eq!(timestamps(&first), vec![0, 1]);
        assert_eq!(timestamps(&second), vec![2, 3, 4]);
        assert_eq!((first.last_seq, second.last_seq), (97, 100));
        assert!(batch_of(1).split().is_err());
    }
}
