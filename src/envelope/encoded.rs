//! An envelope's protobuf encoding ([`Encoded`]) and what the client reads
//! off it without decoding it.

use protobuf::Message;

use crate::proto::envelope as pb;
use crate::wire::Reader;

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

fn kind_of_message(message: &pb::envelope::Message) -> EnvelopeKind {
    use pb::envelope::Message;
    match message {
        Message::Log(_) => EnvelopeKind::Log,
        Message::Counter(_) => EnvelopeKind::Counter,
        Message::Gauge(_) => EnvelopeKind::Gauge,
        Message::Timer(_) => EnvelopeKind::Timer,
        Message::Event(_) => EnvelopeKind::Event,
    }
}
