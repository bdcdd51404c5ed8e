//! An envelope's message (the `message` oneof: log, counter, gauge, timer,
//! event), encoded straight into the builder's buffer when the builder is
//! made, at its front, and re-encoded in place by the setters of one kind.
//!
//! No protobuf types and no copy of a payload or a name: the constructor
//! writes its arguments once, into the bytes that will be sent. A setter
//! that changes the message (`stdout`, `delta`, `metric`, ...) splices the
//! part it changes and rewrites the message's length in front of it.
//! Encodings are protobuf's canonical ones (fields in number order, zero
//! and empty values left out), so that sizes match what protobuf encodes.

use std::ops::Range;

use crate::wire::{Reader, framed_len, put_bytes, put_tag, put_varint, varint_len, write_varint};

/// The envelope's field numbers of each kind of message.
pub(super) const LOG: u32 = 4;
pub(super) const COUNTER: u32 = 5;
pub(super) const GAUGE: u32 = 6;
pub(super) const TIMER: u32 = 7;
pub(super) const EVENT: u32 = 10;

/// The `type` field of a `Log` holding `ERR` (1); `OUT` (0) is left out.
const LOG_TYPE_ERR: [u8; 2] = [(2 << 3), 1];

/// Where the message lies in the builder's buffer: from its start, a tag
/// and the body's length (the header), then the body. Word-sized fields
/// only: a builder is moved at every setter, and a move that reads what a
/// narrower store just wrote waits for it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Message {
    header: usize,
    body: usize,
}

impl Message {
    /// Writes the message's header for a body of `body` bytes at the front
    /// of the empty `out`; the caller writes the body next.
    pub(super) fn start(out: &mut Vec<u8>, field: u32, body: usize) -> Message {
        debug_assert!(out.is_empty() && field < 16);
        put_tag(out, field, 2);
        put_varint(out, body as u64);
        Message {
            header: out.len(),
            body,
        }
    }

    /// The body's length.
    pub(super) fn body_len(&self) -> usize {
        self.body
    }

    /// The body, within the builder's buffer.
    pub(super) fn body<'a>(&self, bytes: &'a [u8]) -> &'a [u8] {
        &bytes[self.header..self.header + self.body]
    }

    /// Replaces `range` of the body with `with`, and the length in the
    /// header with the new one.
    pub(super) fn splice(&mut self, bytes: &mut Vec<u8>, range: Range<usize>, with: &[u8]) {
        let body = self.body - range.len() + with.len();
        let at = self.header + range.start..self.header + range.end;
        if at.end == bytes.len() {
            // The message is all there is and this is its end: the usual
            // `Envelope::log(..).stdout()`.
            bytes.truncate(at.start);
            bytes.extend_from_slice(with);
        } else {
            bytes.splice(at, with.iter().copied());
        }
        let mut encoded = [0u8; 10];
        let written = write_varint(&mut encoded, body as u64);
        let length = &encoded[..written];
        if 1 + length.len() == self.header {
            bytes[1..self.header].copy_from_slice(length);
        } else {
            // The tag: one byte, every message's field number being below 16.
            let tag = bytes[0];
            let header = std::iter::once(tag).chain(length.iter().copied());
            bytes.splice(..self.header, header);
        }
        self.header = 1 + length.len();
        self.body = body;
    }

    /// Appends `with` to the end of the body.
    pub(super) fn append(&mut self, bytes: &mut Vec<u8>, with: &[u8]) {
        let end = self.body;
        self.splice(bytes, end..end, with);
    }
}

/// The bytes a length-delimited field takes, or 0 when it is empty (and
/// left out).
fn string_len(value: &[u8]) -> usize {
    if value.is_empty() {
        0
    } else {
        framed_len(value.len())
    }
}

/// Appends a length-delimited field unless it is empty.
fn put_string(out: &mut Vec<u8>, field: u32, value: &[u8]) {
    if !value.is_empty() {
        put_bytes(out, field, value);
    }
}

/// The bytes a varint field takes, or 0 when it is zero.
fn number_len(value: u64) -> usize {
    if value == 0 { 0 } else { 1 + varint_len(value) }
}

fn put_number(out: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        put_tag(out, field, 0);
        put_varint(out, value);
    }
}

/// A `Log`: the payload, then the type (ERR; `OUT` is left out).
pub(super) fn start_log(out: &mut Vec<u8>, payload: &[u8]) -> Message {
    let body = string_len(payload) + LOG_TYPE_ERR.len();
    let message = Message::start(out, LOG, body);
    put_string(out, 1, payload);
    out.extend_from_slice(&LOG_TYPE_ERR);
    message
}

/// Sets a log's type, which is `was_stderr` now: `stderr` (ERR) is a
/// field at the end of the body, `OUT` none. The caller keeps the type:
/// the body's last bytes may be the payload's, whatever they look like.
pub(super) fn set_log_stderr(
    message: &mut Message,
    bytes: &mut Vec<u8>,
    was_stderr: bool,
    stderr: bool,
) {
    let body = message.body_len();
    match (was_stderr, stderr) {
        (false, true) => message.append(bytes, &LOG_TYPE_ERR),
        (true, false) => message.splice(bytes, body - LOG_TYPE_ERR.len()..body, &[]),
        _ => {}
    }
}

/// A `Counter`: its name, then its delta and total.
pub(super) fn start_counter(out: &mut Vec<u8>, name: &[u8], delta: u64) -> Message {
    let message = Message::start(out, COUNTER, string_len(name) + number_len(delta));
    put_string(out, 1, name);
    put_number(out, 2, delta);
    message
}

/// A counter's delta and total, read off its body, and where they begin.
pub(super) fn counter_numbers(message: &Message, bytes: &[u8]) -> (u64, u64, usize) {
    let body = message.body(bytes);
    let (mut delta, mut total, mut name_len) = (0, 0, 0);
    let mut fields = Reader(body);
    while let Some((tag, value)) = fields.field() {
        let number = || Reader(value).varint().unwrap_or(0);
        match tag >> 3 {
            1 => name_len = body.len() - fields.0.len(),
            2 => delta = number(),
            3 => total = number(),
            _ => {}
        }
    }
    (delta, total, name_len)
}

/// Re-encodes a counter's delta and total, which follow its name.
/// `numbers` makes the new ones of the present delta and total.
pub(super) fn set_counter_numbers(
    message: &mut Message,
    bytes: &mut Vec<u8>,
    numbers: impl FnOnce(u64, u64) -> (u64, u64),
) {
    let (delta, total, name_len) = counter_numbers(message, bytes);
    let (delta, total) = numbers(delta, total);
    let mut numbers = Vec::with_capacity(22);
    put_number(&mut numbers, 2, delta);
    put_number(&mut numbers, 3, total);
    let body = message.body_len();
    message.splice(bytes, name_len..body, &numbers);
}

/// A `Gauge` with no metrics yet.
pub(super) fn start_gauge(out: &mut Vec<u8>) -> Message {
    Message::start(out, GAUGE, 0)
}

/// Adds a metric to a gauge's `metrics` map, replacing one of the same
/// name (a map keeps one value per key).
pub(super) fn put_gauge_metric(
    message: &mut Message,
    bytes: &mut Vec<u8>,
    name: &[u8],
    value: f64,
    unit: &[u8],
) {
    // The map's entries: fields 1, each a message of the key (1) and the
    // value (2), a `GaugeValue` of the unit (1) and the value (2, a double).
    let body = message.body(bytes);
    let mut entries = Reader(body);
    let mut replaced = None;
    loop {
        let start = body.len() - entries.0.len();
        let Some((_, entry)) = entries.field() else {
            break;
        };
        let mut fields = Reader(entry);
        while let Some((tag, key)) = fields.field() {
            if tag == (1 << 3) | 2 && key == name {
                replaced = Some(start..body.len() - entries.0.len());
            }
        }
    }
    // Zero is left out, as protobuf leaves it out (-0.0 with it).
    let value_len = string_len(unit) + if value == 0.0 { 0 } else { 9 };
    let entry_len = 1 + varint_len(name.len() as u64) + name.len() + framed_len(value_len);
    let mut entry = Vec::with_capacity(1 + varint_len(entry_len as u64) + entry_len);
    put_tag(&mut entry, 1, 2);
    put_varint(&mut entry, entry_len as u64);
    put_bytes(&mut entry, 1, name);
    put_tag(&mut entry, 2, 2);
    put_varint(&mut entry, value_len as u64);
    put_string(&mut entry, 1, unit);
    if value != 0.0 {
        put_tag(&mut entry, 2, 1);
        entry.extend_from_slice(&value.to_le_bytes());
    }
    if let Some(range) = replaced {
        message.splice(bytes, range, &[]);
    }
    message.append(bytes, &entry);
}

/// A `Timer`: its name, start and stop (Unix nanoseconds).
pub(super) fn start_timer(out: &mut Vec<u8>, name: &[u8], start: i64, stop: i64) -> Message {
    let (start, stop) = (start as u64, stop as u64);
    let body = string_len(name) + number_len(start) + number_len(stop);
    let message = Message::start(out, TIMER, body);
    put_string(out, 1, name);
    put_number(out, 2, start);
    put_number(out, 3, stop);
    message
}

/// An `Event`: its title and body.
pub(super) fn start_event(out: &mut Vec<u8>, title: &[u8], text: &[u8]) -> Message {
    let body = string_len(title) + string_len(text);
    let message = Message::start(out, EVENT, body);
    put_string(out, 1, title);
    put_string(out, 2, text);
    message
}

#[cfg(test)]
mod tests {
    use protobuf::Message as _;

    use crate::Envelope;
    use crate::proto::envelope as pb;

    /// The message as protobuf encodes it, canonically, from what it decodes to.
    fn canonical(envelope: &Envelope) -> Vec<u8> {
        let mut message = envelope.as_proto().clone();
        (message.timestamp, message.source_id, message.tags) =
            (0, String::new(), Default::default());
        message.write_to_bytes().unwrap()
    }

    /// What the builder encoded, for an envelope of a message alone (a
    /// zero timestamp is left out).
    fn built(envelope: Envelope) -> Vec<u8> {
        envelope.into_encoded().bytes
    }

    #[test]
    fn each_kind_encodes_as_protobuf_does_whatever_its_setters_change() {
        let sizes = [
            0, 1, 120, 123, 124, 125, 126, 127, 128, 16_379, 16_380, 16_381, 16_382,
        ];
        for size in sizes {
            let payload = vec![b'x'; size];
            let logs = [
                Envelope::log(&payload).timestamp(0),
                Envelope::log(&payload).stdout().timestamp(0),
                Envelope::log(&payload).stdout().stderr().timestamp(0),
                Envelope::log(&payload)
                    .stderr()
                    .stdout()
                    .stdout()
                    .timestamp(0),
            ];
            for log in logs {
                let log = log.build();
                assert_eq!(built(log.clone()), canonical(&log), "log of {size}");
            }
            let name = "n".repeat(size);
            let others = [
                Envelope::counter(&name).timestamp(0).build(),
                Envelope::counter(&name).delta(0).timestamp(0).build(),
                Envelope::counter(&name)
                    .delta(u64::MAX)
                    .timestamp(0)
                    .build(),
                Envelope::counter(&name)
                    .total(300)
                    .delta(7)
                    .timestamp(0)
                    .build(),
                Envelope::counter(&name)
                    .delta(7)
                    .total(1 << 40)
                    .timestamp(0)
                    .build(),
                Envelope::counter(&name).reset().timestamp(0).build(),
                Envelope::timer(&name, -1, i64::MAX).timestamp(0).build(),
                Envelope::timer(&name, 0, 0).timestamp(0).build(),
                Envelope::event(&name, "").timestamp(0).build(),
                Envelope::event("", &name).timestamp(0).build(),
            ];
            for envelope in others {
                assert_eq!(built(envelope.clone()), canonical(&envelope), "{envelope}");
            }
        }
    }

    #[test]
    fn a_payload_that_ends_like_a_log_type_is_left_whole() {
        // The bytes of the type field ERR, as a payload.
        let payload = [2 << 3, 1];
        let logs = [
            Envelope::log(payload).stdout().stdout(),
            Envelope::log(payload).stdout().stderr(),
            Envelope::log(payload).stderr().stdout().stdout().stderr(),
            Envelope::log(b"\x0a\x02\x10\x01").stdout(),
        ];
        for log in logs {
            let log = log.timestamp(0).build();
            assert_eq!(built(log.clone()), canonical(&log), "{log}");
        }
        let out = Envelope::log(payload).stdout().stdout().build();
        assert_eq!(out.as_proto().log().payload, payload);
        assert_eq!(
            out.as_proto().log().type_.enum_value(),
            Ok(pb::log::Type::OUT)
        );
        let err = Envelope::log(payload).stdout().stderr().build();
        assert_eq!(
            err.as_proto().log().type_.enum_value(),
            Ok(pb::log::Type::ERR)
        );
    }

    #[test]
    fn tags_set_before_a_kind_setter_stay_where_they_are() {
        let log = Envelope::log("x")
            .tag("k", "v")
            .source("s", "0")
            .stdout()
            .build();
        assert_eq!(
            log.as_proto().log().type_.enum_value(),
            Ok(pb::log::Type::OUT)
        );
        assert_eq!(log.as_proto().tags["k"], "v");
        let counter = Envelope::counter("c").tag("k", "v").total(1 << 30).build();
        assert_eq!(counter.as_proto().counter().total, 1 << 30);
        assert_eq!(counter.as_proto().tags["k"], "v");
        assert_eq!(counter.as_proto().source_id, "");
    }

    #[test]
    fn a_gauge_metric_set_again_replaces_the_first() {
        let gauge = Envelope::gauge()
            .metric("cpu", 1.0, "percentage")
            .metric("memory", 2.0, "bytes")
            .metric("cpu", 0.0, "")
            .metric("m".repeat(200), -0.5, "u")
            .tag("k", "v")
            .metric("memory", 3.0, "bytes")
            .build();
        let metrics = &gauge.as_proto().gauge().metrics;
        assert_eq!(metrics.len(), 3);
        assert_eq!(
            (metrics["cpu"].value, metrics["cpu"].unit.as_str()),
            (0.0, "")
        );
        assert_eq!(metrics["memory"].value, 3.0);
        assert_eq!(metrics[&"m".repeat(200)].value, -0.5);
        // Each metric is in the encoding once.
        let encoded = gauge.into_encoded().bytes;
        let count = encoded.windows(6).filter(|w| w == b"memory").count();
        assert_eq!(count, 1);
    }
}
