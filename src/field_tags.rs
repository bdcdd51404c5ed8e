//! Tags made from other crates' structured data (a `tracing` span's or
//! event's fields, a `log` record's key-values), capped in number and in
//! length the same way for every bridge, and what the caps cost counted in
//! [`Stats`](crate::Stats).

use std::fmt;
use std::ops::Range;

use crate::client::IngressClient;
use crate::wire::{Reader, framed_len, put_tag_entry, put_tag_entry_head, put_varint};

/// The most tags a span's or an event's fields (`tracing`), or a record's
/// key-values (`log`), add to one envelope; the rest are left off and
/// counted in [`Stats::tags_dropped`](crate::Stats::tags_dropped). The tags
/// a bridge sets itself (`level`, `target`, the trace ids) are not counted.
///
/// ```
/// assert_eq!(loggregator::MAX_FIELD_TAGS, 16);
/// ```
pub const MAX_FIELD_TAGS: usize = 16;

/// The longest field or key-value kept as a tag, in bytes; longer ones are
/// cut at a character boundary, end with `…` and are counted in
/// [`Stats::values_cut`](crate::Stats::values_cut). An event's or a
/// record's message is not a tag but the log's payload, and is sent whole.
///
/// ```
/// assert_eq!(loggregator::MAX_FIELD_BYTES, 1024);
/// ```
pub const MAX_FIELD_BYTES: usize = 1024;

/// What the first tag reserves: room for a few short ones.
const ENCODED_ROOM: usize = 128;

/// Tags in the order they were put, at most [`MAX_FIELD_TAGS`], each
/// value at most [`MAX_FIELD_BYTES`], kept encoded as the envelope's `tags`
/// map entries: a span's or an event's fields cost one allocation, each
/// value is written once, where it is formatted, and the envelope takes
/// them all in one copy. A key put again replaces its value (a span's
/// field recorded twice), which moves to the end, and costs no second
/// slot; one put with `put_new` is not looked for (a key a callsite names
/// twice is then sent twice, the last value winning where it is read).
#[derive(Default)]
pub(crate) struct FieldTags {
    encoded: Vec<u8>,
    count: usize,
    /// Tags left off, beyond [`MAX_FIELD_TAGS`] or refused by the bridge.
    dropped: u64,
    /// Values cut to [`MAX_FIELD_BYTES`].
    cut: u64,
}

/// Where a value is written: the end of the encoded tags.
struct ValueText<'a>(&'a mut Vec<u8>);

impl fmt::Write for ValueText<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        self.0.extend_from_slice(text.as_bytes());
        Ok(())
    }
}

impl FieldTags {
    pub(crate) fn put(&mut self, key: &str, value: &str) {
        if let Some(old) = self.slot(key, false) {
            self.write_str(old, key, value);
        }
    }

    /// As [`put`](Self::put), for a key the caller knows is not here yet
    /// (the fields of one callsite): no looking for it.
    #[cfg(feature = "tracing")]
    pub(crate) fn put_new(&mut self, key: &str, value: &str) {
        if let Some(old) = self.slot(key, true) {
            self.write_str(old, key, value);
        }
    }

    /// Puts the value that `write` writes.
    pub(crate) fn put_with(&mut self, key: &str, write: impl FnOnce(&mut dyn fmt::Write)) {
        if let Some(old) = self.slot(key, false) {
            self.write_with(old, key, write);
        }
    }

    /// As [`put_with`](Self::put_with), for a key known not to be here yet.
    #[cfg(feature = "tracing")]
    pub(crate) fn put_new_with(&mut self, key: &str, write: impl FnOnce(&mut dyn fmt::Write)) {
        if let Some(old) = self.slot(key, true) {
            self.write_with(old, key, write);
        }
    }

    /// Where a value of `key` goes: in place of the entry it had (`Some`
    /// of it), or, if there is room for one more, new (`Some(None)`);
    /// `None` when it is left off, and counted.
    fn slot(&mut self, key: &str, known_new: bool) -> Option<Option<Range<usize>>> {
        let old = if known_new {
            None
        } else {
            self.find(key.as_bytes()).map(|(entry, _)| entry)
        };
        if old.is_none() && self.count >= MAX_FIELD_TAGS {
            self.dropped += 1;
            return None;
        }
        if self.encoded.capacity() == 0 {
            self.encoded.reserve(ENCODED_ROOM);
        }
        Some(old)
    }

    /// A value whose length is known: written with its lengths, once.
    fn write_str(&mut self, old: Option<Range<usize>>, key: &str, value: &str) {
        if value.len() > MAX_FIELD_BYTES {
            return self.write_with(old, key, |text| {
                let _ = text.write_str(value);
            });
        }
        put_tag_entry(&mut self.encoded, key.as_bytes(), value.as_bytes());
        self.added(old);
    }

    /// A value `write` formats: written in place, its lengths after it.
    fn write_with(
        &mut self,
        old: Option<Range<usize>>,
        key: &str,
        write: impl FnOnce(&mut dyn fmt::Write),
    ) {
        // The entry's header, with lengths of one byte each, which short
        // keys and values need; longer ones are mended below.
        let start = self.encoded.len();
        self.encoded
            .extend_from_slice(&[(9 << 3) | 2, 0, (1 << 3) | 2]);
        put_varint(&mut self.encoded, key.len() as u64);
        self.encoded.extend_from_slice(key.as_bytes());
        self.encoded.extend_from_slice(&[(2 << 3) | 2, 0]);
        let value_at = self.encoded.len();
        write(&mut ValueText(&mut self.encoded));
        if cut_from(&mut self.encoded, value_at) {
            self.cut += 1;
        }
        let value_len = self.encoded.len() - value_at;
        let entry_len = framed_len(key.len()) + framed_len(value_len);
        if value_len < 0x80 && entry_len < 0x80 {
            self.encoded[value_at - 1] = value_len as u8;
            self.encoded[start + 1] = entry_len as u8;
        } else {
            let mut header = Vec::with_capacity(value_at - start + 8);
            put_tag_entry_head(&mut header, key.as_bytes(), value_len);
            self.encoded.splice(start..value_at, header);
        }
        self.added(old);
    }

    /// A new entry was written last: the one it replaces leaves.
    fn added(&mut self, old: Option<Range<usize>>) {
        match old {
            Some(entry) => {
                self.encoded.drain(entry);
            }
            None => self.count += 1,
        }
    }

    /// The entry of `key` (its range in the encoding) and its value.
    fn find(&self, key: &[u8]) -> Option<(Range<usize>, &[u8])> {
        self.entries()
            .find(|entry| entry.key == key)
            .map(|entry| (entry.range, entry.value))
    }

    /// The entries, read the way `put_with` writes them: a walk that
    /// skips from key to key, where a general reader would decode every
    /// field of every entry at each put.
    fn entries(&self) -> impl Iterator<Item = Entry<'_>> {
        let encoded = &self.encoded[..];
        let mut at = 0;
        std::iter::from_fn(move || {
            let start = at;
            // The tag (1 byte), the entry's length, the key's tag (1 byte),
            // the key's length, the key, the value's tag and length, the value.
            let (entry_len, body) = varint_at(encoded, start + 1)?;
            let end = body.checked_add(usize::try_from(entry_len).ok()?)?;
            let (key_len, key_at) = varint_at(encoded, body + 1)?;
            let key_end = key_at + usize::try_from(key_len).ok()?;
            let (_, value_at) = varint_at(encoded, key_end + 1)?;
            at = end;
            Some(Entry {
                range: start..end,
                key: encoded.get(key_at..key_end)?,
                value: encoded.get(value_at..end)?,
            })
        })
    }

    /// Counts a tag the bridge refused (a key it sets itself).
    pub(crate) fn refuse(&mut self) {
        self.dropped += 1;
    }

    /// The value kept for `key`, if any.
    #[cfg(feature = "tracing")]
    pub(crate) fn value(&self, key: &str) -> Option<&str> {
        let (_, value) = self.find(key.as_bytes())?;
        std::str::from_utf8(value).ok()
    }

    /// The tags, encoded as `tags` map entries, for an envelope to take.
    pub(crate) fn encoded(&self) -> &[u8] {
        &self.encoded
    }

    /// Each tag's key and value, in order.
    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let text = |bytes| std::str::from_utf8(bytes).unwrap_or_default();
        self.entries()
            .map(move |entry| (text(entry.key), text(entry.value)))
    }

    /// Counts in the client's stats what was left off or cut.
    pub(crate) fn count_losses(&self, client: &IngressClient) {
        client.count_dropped_tags(self.dropped);
        client.count_cut_values(self.cut);
    }
}

/// One encoded tag.
struct Entry<'a> {
    range: Range<usize>,
    key: &'a [u8],
    value: &'a [u8],
}

/// The varint at `at` in `bytes`, and where what follows it starts.
fn varint_at(bytes: &[u8], at: usize) -> Option<(u64, usize)> {
    let mut reader = Reader(bytes.get(at..)?);
    let value = reader.varint()?;
    Some((value, bytes.len() - reader.0.len()))
}

/// Cuts the text `bytes` holds from `start` on to [`MAX_FIELD_BYTES`] at a
/// character boundary, ending it with `…`; true if it was longer.
fn cut_from(bytes: &mut Vec<u8>, start: usize) -> bool {
    if bytes.len() - start <= MAX_FIELD_BYTES {
        return false;
    }
    let mut cut = start + MAX_FIELD_BYTES - '…'.len_utf8();
    // Back to the first byte of a character: never a continuation byte.
    while bytes[cut] & 0xc0 == 0x80 {
        cut -= 1;
    }
    bytes.truncate(cut);
    bytes.extend_from_slice("…".as_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_at_a_character_boundary() {
        let mut value = "é".repeat(MAX_FIELD_BYTES).into_bytes();
        assert!(cut_from(&mut value, 0));
        let value = String::from_utf8(value).unwrap();
        assert!(value.len() <= MAX_FIELD_BYTES);
        assert!(value.ends_with('…'));
        let mut short = b"short".to_vec();
        assert!(!cut_from(&mut short, 0));
        assert_eq!(short, b"short");
    }

    #[test]
    fn tags_beyond_the_cap_are_counted_and_a_key_put_again_takes_no_slot() {
        let mut tags = FieldTags::default();
        for n in 0..MAX_FIELD_TAGS + 5 {
            tags.put(&format!("f{n}"), "v");
        }
        tags.put("f0", "again");
        tags.refuse();
        assert_eq!((tags.iter().count(), tags.dropped), (MAX_FIELD_TAGS, 6));
        assert_eq!(tags.value("f0"), Some("again"));
    }

    #[test]
    fn long_values_are_counted_as_cut_only_when_kept() {
        let long = "x".repeat(MAX_FIELD_BYTES + 1);
        let mut tags = FieldTags::default();
        tags.put("long", &long);
        tags.put("long", &long);
        for n in 1..MAX_FIELD_TAGS {
            tags.put(&format!("f{n}"), "v");
        }
        tags.put("left_off", &long);
        assert_eq!((tags.cut, tags.dropped), (2, 1));
        assert_eq!(tags.value("long").map(str::len), Some(MAX_FIELD_BYTES));
    }

    #[test]
    fn the_tags_decode_as_the_envelope_tags_they_are_whatever_their_lengths() {
        use protobuf::Message as _;
        let mut tags = FieldTags::default();
        let long_key = "k".repeat(200);
        let medium = "m".repeat(120);
        tags.put("a", "1");
        tags.put(&long_key, "short");
        tags.put("b", &medium);
        tags.put_with("c", |text| {
            let _ = write!(text, "{:?}", "quoted");
        });
        tags.put("a", &"x".repeat(MAX_FIELD_BYTES + 10));
        let decoded = crate::proto::envelope::Envelope::parse_from_bytes(tags.encoded()).unwrap();
        assert_eq!(decoded.tags.len(), 4);
        assert_eq!(decoded.tags[&long_key], "short");
        assert_eq!(decoded.tags["b"], medium);
        assert_eq!(decoded.tags["c"], "\"quoted\"");
        assert_eq!(decoded.tags["a"].len(), MAX_FIELD_BYTES);
        let order: Vec<_> = tags.iter().map(|(key, _)| key.len()).collect();
        assert_eq!(order, [200, 1, 1, 1], "a replaced value comes last");
    }
}
