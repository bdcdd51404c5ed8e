//! A span's identity and what the layers on one registry keep about it:
//! its W3C ids (random, inherited from its parent, or continued from a
//! `traceparent` field), when it started, and each layer's fields.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::SystemTime;

use super::fields::Fields;

/// Tells apart the layers on one registry, which all keep their records in
/// the same span extensions (a type map holding one value per type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct LayerId(u64);

impl LayerId {
    pub(super) fn next() -> LayerId {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        LayerId(NEXT.fetch_add(1, Relaxed))
    }
}

/// A span's place in its trace.
#[derive(Clone, Copy, Debug)]
pub(super) struct SpanIds {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
}

impl SpanIds {
    pub(super) fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-01",
            Hex::new(&self.trace_id).as_str(),
            Hex::new(&self.span_id).as_str()
        )
    }
}

/// What the layers on one registry keep about a span, once in its
/// extensions: the ids and start are the span's own, so every layer sends
/// the same W3C identity for it; the fields each layer recorded are that
/// layer's until it sends them at close.
pub(super) struct SpanState {
    pub ids: SpanIds,
    pub start: SystemTime,
    /// The first layer's record inline, so the usual single layer costs no
    /// allocation beyond the state itself.
    first: Option<(LayerId, Fields)>,
    others: Vec<(LayerId, Fields)>,
}

impl SpanState {
    pub(super) fn new(ids: SpanIds, layer: LayerId, fields: Fields) -> SpanState {
        SpanState {
            ids,
            start: SystemTime::now(),
            first: Some((layer, fields)),
            others: Vec::new(),
        }
    }

    pub(super) fn add(&mut self, layer: LayerId, fields: Fields) {
        if let Some(mine) = self.fields_mut(layer) {
            *mine = fields;
        } else if self.first.is_none() {
            self.first = Some((layer, fields));
        } else {
            self.others.push((layer, fields));
        }
    }

    pub(super) fn fields_mut(&mut self, layer: LayerId) -> Option<&mut Fields> {
        self.first
            .iter_mut()
            .chain(self.others.iter_mut())
            .find(|(id, _)| *id == layer)
            .map(|(_, fields)| fields)
    }

    pub(super) fn take(&mut self, layer: LayerId) -> Option<Fields> {
        if self.first.as_ref().is_some_and(|(id, _)| *id == layer) {
            return self.first.take().map(|(_, fields)| fields);
        }
        let at = self.others.iter().position(|(id, _)| *id == layer)?;
        Some(self.others.swap_remove(at).1)
    }
}

/// An id in lowercase hex, on the stack: ids are written on every span and
/// event, where an allocation and a formatter call per byte would show.
pub(super) struct Hex {
    digits: [u8; 32],
    len: usize,
}

/// Each byte's two lowercase hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        pairs[byte] = [DIGITS[byte >> 4], DIGITS[byte & 0xf]];
        byte += 1;
    }
    pairs
};

impl Hex {
    pub(super) fn new(bytes: &[u8]) -> Hex {
        let mut digits = [0u8; 32];
        for (pair, &byte) in digits.chunks_exact_mut(2).zip(bytes) {
            pair.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
        }
        Hex {
            digits,
            len: bytes.len().min(16) * 2,
        }
    }

    pub(super) fn as_str(&self) -> &str {
        // Only ASCII digits were written.
        std::str::from_utf8(self.digits()).unwrap_or_default()
    }

    /// The digits, ASCII, as a tag takes them.
    pub(super) fn digits(&self) -> &[u8] {
        &self.digits[..self.len]
    }
}

/// Random non-zero ids (all-zero ids are invalid in W3C trace context).
pub(super) fn random_id<const N: usize>() -> [u8; N] {
    loop {
        let mut id = [0u8; N];
        fastrand::fill(&mut id);
        if id.iter().any(|&b| b != 0) {
            return id;
        }
    }
}

fn is_lower_hex(text: &str, digits: usize) -> bool {
    text.len() == digits && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// An id of `N` bytes from lowercase hex; `None` if malformed or all zero.
fn parse_id<const N: usize>(text: &str) -> Option<[u8; N]> {
    if !is_lower_hex(text, N * 2) {
        return None;
    }
    let mut id = [0u8; N];
    for (index, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[index * 2..index * 2 + 2], 16).ok()?;
    }
    id.iter().any(|&b| b != 0).then_some(id)
}

/// The trace id and parent span id of a W3C `traceparent` header
/// (`00-<32 hex>-<16 hex>-<2 hex>`), or `None` if it is malformed.
pub(super) fn parse_traceparent(header: &str) -> Option<([u8; 16], [u8; 8])> {
    let mut parts = header.trim().split('-');
    let (version, trace_id, span_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || version != "00" || !is_lower_hex(flags, 2) {
        return None;
    }
    Some((parse_id(trace_id)?, parse_id(span_id)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_headers_are_read_strictly() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let span = "00f067aa0ba902b7";
        let (trace_id, parent) = parse_traceparent(&format!("00-{trace}-{span}-01")).unwrap();
        assert_eq!(
            (Hex::new(&trace_id).as_str(), Hex::new(&parent).as_str()),
            (trace, span)
        );
        for bad in [
            String::new(),
            "garbage".to_string(),
            format!("01-{trace}-{span}-01"),
            format!("00-{}-{span}-01", "0".repeat(32)),
            format!("00-{trace}-{}-01", "0".repeat(16)),
            format!("00-{}-{span}-01", trace.to_uppercase()),
            format!("00-{trace}-{span}"),
            format!("00-{trace}-{span}-01-extra"),
            format!("00-{}-{span}-01", &trace[..31]),
            format!("00-{trace}-{span}-zz"),
            "00-é-é-é".to_string(),
        ] {
            assert_eq!(parse_traceparent(&bad), None, "{bad}");
        }
    }

    #[test]
    fn each_layer_keeps_its_own_record_of_a_span() {
        let ids = SpanIds {
            trace_id: random_id(),
            span_id: random_id(),
            parent_span_id: None,
        };
        let (a, b, c) = (LayerId::next(), LayerId::next(), LayerId::next());
        let record = |value: &str| {
            let mut fields = Fields::default();
            fields.put("layer", value);
            fields
        };
        let mut state = SpanState::new(ids, a, record("a"));
        state.add(b, record("b"));
        state.add(c, record("c"));
        let seen = |fields: Option<Fields>| fields.and_then(|f| f.value("layer").map(String::from));
        assert_eq!(seen(state.take(b)), Some("b".into()));
        assert_eq!(seen(state.take(b)), None);
        assert_eq!(seen(state.take(a)), Some("a".into()));
        state.add(a, record("a again"));
        assert_eq!(seen(state.take(c)), Some("c".into()));
        assert_eq!(seen(state.take(a)), Some("a again".into()));
        assert!(state.first.is_none() && state.others.is_empty());
    }
}
