//! Tags made from other crates' structured data (a `tracing` span's or
//! event's fields, a `log` record's key-values), capped in number and in
//! length the same way for every bridge, and what the caps cost counted in
//! [`Stats`](crate::Stats).

use crate::client::IngressClient;

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

/// Tags in the order they were first put, at most [`MAX_FIELD_TAGS`], each
/// value at most [`MAX_FIELD_BYTES`]. A key put again replaces its value
/// (a span's field recorded twice), and costs no second slot.
pub(crate) struct FieldTags<K> {
    tags: Vec<(K, String)>,
    /// Tags left off, beyond [`MAX_FIELD_TAGS`] or refused by the bridge.
    dropped: u64,
    /// Values cut to [`MAX_FIELD_BYTES`].
    cut: u64,
}

impl<K> Default for FieldTags<K> {
    fn default() -> FieldTags<K> {
        FieldTags {
            tags: Vec::new(),
            dropped: 0,
            cut: 0,
        }
    }
}

impl<K: AsRef<str>> FieldTags<K> {
    pub(crate) fn put(&mut self, key: K, mut value: String) {
        let slot = self
            .tags
            .iter()
            .position(|(seen, _)| seen.as_ref() == key.as_ref());
        if slot.is_none() && self.tags.len() >= MAX_FIELD_TAGS {
            self.dropped += 1;
            return;
        }
        if truncate(&mut value) {
            self.cut += 1;
        }
        match slot {
            Some(at) => self.tags[at].1 = value,
            None => self.tags.push((key, value)),
        }
    }

    /// Counts a tag the bridge refused (a key it sets itself).
    pub(crate) fn refuse(&mut self) {
        self.dropped += 1;
    }

    /// The value kept for `key`, if any.
    #[cfg(feature = "tracing")]
    pub(crate) fn value(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(seen, _)| seen.as_ref() == key)
            .map(|(_, value)| value.as_str())
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.tags
            .iter()
            .map(|(key, value)| (key.as_ref(), value.as_str()))
    }

    /// Counts in the client's stats what was left off or cut.
    pub(crate) fn count_losses(&self, client: &IngressClient) {
        client.count_dropped_tags(self.dropped);
        client.count_cut_values(self.cut);
    }
}

/// Cuts `value` to [`MAX_FIELD_BYTES`] at a character boundary, ending it
/// with `…`; true if it was longer.
pub(crate) fn truncate(value: &mut String) -> bool {
    if value.len() <= MAX_FIELD_BYTES {
        return false;
    }
    let mut cut = MAX_FIELD_BYTES - '…'.len_utf8();
    while !value.is_char_boundary(cut) {
        cut -= 1;
    }
    value.truncate(cut);
    value.push('…');
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_at_a_character_boundary() {
        let mut value = "é".repeat(MAX_FIELD_BYTES);
        assert!(truncate(&mut value));
        assert!(value.len() <= MAX_FIELD_BYTES);
        assert!(value.ends_with('…'));
        let mut short = "short".to_string();
        assert!(!truncate(&mut short));
        assert_eq!(short, "short");
    }

    #[test]
    fn tags_beyond_the_cap_are_counted_and_a_key_put_again_takes_no_slot() {
        let mut tags = FieldTags::default();
        for n in 0..MAX_FIELD_TAGS + 5 {
            tags.put(format!("f{n}"), "v".into());
        }
        tags.put("f0".to_string(), "again".into());
        tags.refuse();
        assert_eq!((tags.iter().count(), tags.dropped), (MAX_FIELD_TAGS, 6));
        assert_eq!(tags.value("f0"), Some("again"));
    }

    #[test]
    fn long_values_are_counted_as_cut_only_when_kept() {
        let long = "x".repeat(MAX_FIELD_BYTES + 1);
        let mut tags = FieldTags::default();
        tags.put("long", long.clone());
        tags.put("long", long.clone());
        for n in 1..MAX_FIELD_TAGS {
            tags.put(Box::leak(format!("f{n}").into_boxed_str()), "v".into());
        }
        tags.put("left_off", long);
        assert_eq!((tags.cut, tags.dropped), (2, 1));
        assert_eq!(tags.value("long").map(str::len), Some(MAX_FIELD_BYTES));
    }
}
