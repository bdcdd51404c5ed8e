//! An envelope's protobuf encoding ([`Encoded`]), what the client reads off
//! it without decoding it, and the encoding of an envelope's message.

use protobuf::Message;

use crate::proto::envelope as pb;
use crate::wire::{Reader, put_tag, put_varint};

use super::EnvelopeKind;

/// An envelope's protobuf encoding, with what the client needs to know of
/// it without decoding it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Encoded {
    pub bytes: Vec<u8>,
    pub kind: Option<EnvelopeKind>,
    /// A counter with delta and total 0 not made with `reset()`.
    pub accidental_reset: bool,
    pub has_source_id: bool,
    pub has_instance_id: bool,
    pub has_tags: bool,
    /// It could not be encoded (larger than protobuf allows).
    pub unencodable: bool,
}

impl Encoded {
    pub(super) fn new(envelope: &pb::Envelope, reset: bool) -> Encoded {
        let (bytes, unencodable) = match envelope.write_to_bytes() {
            Ok(bytes) => (bytes, false),
            Err(_) => (Vec::new(), true),
        };
        let accidental_reset = match &envelope.message {
            Some(pb::envelope::Message::Counter(c)) => c.delta == 0 && c.total == 0 && !reset,
            _ => false,
        };
        Encoded {
            bytes,
            kind: kind_of(envelope),
            accidental_reset,
            has_source_id: !envelope.source_id.is_empty(),
            has_instance_id: !envelope.instance_id.is_empty(),
            has_tags: !envelope.tags.is_empty(),
            unencodable,
        }
    }

    /// The keys of the envelope's tags, read from its encoding.
    pub(crate) fn tag_keys(&self) -> Vec<&[u8]> {
        let mut keys = Vec::new();
        if !self.has_tags {
            return keys;
        }
        let mut input = Reader(&self.bytes);
        while let Some((field, value)) = input.field() {
            if field == (9 << 3) | 2 {
                let mut entry = Reader(value);
                while let Some((field, key)) = entry.field() {
                    if field == (1 << 3) | 2 {
                        keys.push(key);
                    }
                }
            }
        }
        keys
    }
}

fn kind_of(envelope: &pb::Envelope) -> Option<EnvelopeKind> {
    envelope.message.as_ref().map(kind_of_message)
}

pub(super) fn kind_of_message(message: &pb::envelope::Message) -> EnvelopeKind {
    use pb::envelope::Message;
    match message {
        Message::Log(_) => EnvelopeKind::Log,
        Message::Counter(_) => EnvelopeKind::Counter,
        Message::Gauge(_) => EnvelopeKind::Gauge,
        Message::Timer(_) => EnvelopeKind::Timer,
        Message::Event(_) => EnvelopeKind::Event,
    }
}

/// Appends the envelope's message (the `message` oneof) as its field.
pub(super) fn put_message(
    out: &mut Vec<u8>,
    message: &pb::envelope::Message,
) -> protobuf::Result<()> {
    use pb::envelope::Message as M;
    let (field, nested): (u32, &dyn protobuf::MessageDyn) = match message {
        M::Log(m) => (4, m),
        M::Counter(m) => (5, m),
        M::Gauge(m) => (6, m),
        M::Timer(m) => (7, m),
        M::Event(m) => (10, m),
    };
    let size = nested.compute_size_dyn();
    let size = u32::try_from(size)
        .map_err(|_| protobuf::Error::from(std::io::Error::other("message too large")))?;
    put_tag(out, field, 2);
    put_varint(out, u64::from(size));
    let mut stream = protobuf::CodedOutputStream::vec(out);
    nested.write_to_with_cached_sizes_dyn(&mut stream)?;
    stream.flush()
}
