//! The fields a layer records on a span or an event, kept as capped tags
//! (see `FieldTags`); an event's `message` kept apart, whole, as its log's
//! payload.

use std::fmt;

use tracing::field::{Field, Visit};

use crate::client::IngressClient;
use crate::field_tags::FieldTags;

/// Field values as tags, capped in number and length.
#[derive(Default)]
pub(super) struct Fields {
    pub tags: FieldTags,
    /// The event's `message`, kept apart from the tags and whole: it is the
    /// log's payload.
    pub message: Option<String>,
    keep_message: bool,
    /// Recording a `log` record that tracing-log made an event: its
    /// `log.target`, `log.module_path`, `log.file` and `log.line` fields
    /// are the record's metadata, not tags.
    log_record: bool,
    /// Recording a callsite's own fields, each named once: a value put
    /// now replaces none.
    pub fresh: bool,
}

/// The tags a span's ids are sent in: fields of these names are left off
/// a span's Timer, whose ids they would contradict.
const ID_TAGS: [&str; 3] = ["trace_id", "span_id", "parent_span_id"];

impl Fields {
    /// For a span's fields, as it is created.
    pub(super) fn for_span() -> Fields {
        Fields {
            fresh: true,
            ..Fields::default()
        }
    }

    pub(super) fn for_event() -> Fields {
        Fields {
            keep_message: true,
            fresh: true,
            ..Fields::default()
        }
    }

    /// For a `log` record that tracing-log made an event.
    pub(super) fn for_log_record() -> Fields {
        Fields {
            log_record: true,
            ..Fields::for_event()
        }
    }

    /// Whether a field is a `log` record's metadata, which tracing-log
    /// passes as fields named `log.*`.
    fn is_log_metadata(&self, name: &str) -> bool {
        self.log_record && name.starts_with("log.")
    }

    pub(super) fn put(&mut self, name: &'static str, value: &str) {
        if self.is_log_metadata(name) {
        } else if self.keep_message && name == "message" {
            self.message = Some(value.to_string());
        } else if !self.keep_message && ID_TAGS.contains(&name) {
        } else if self.fresh {
            self.tags.put_new(name, value);
        } else {
            self.tags.put(name, value);
        }
    }

    /// Puts the value `write` writes.
    fn put_with(&mut self, name: &'static str, write: impl FnOnce(&mut dyn fmt::Write)) {
        if self.is_log_metadata(name) {
            return;
        }
        if self.keep_message && name == "message" {
            let mut message = String::new();
            write(&mut message);
            self.message = Some(message);
            return;
        }
        if !self.keep_message && ID_TAGS.contains(&name) {
            return;
        }
        if self.fresh {
            self.tags.put_new_with(name, write);
        } else {
            self.tags.put_with(name, write);
        }
    }

    /// Counts in the client's stats what was left off or cut.
    pub(super) fn count_losses(&self, client: &IngressClient) {
        self.tags.count_losses(client);
    }

    pub(super) fn value(&self, name: &str) -> Option<&str> {
        self.tags.value(name)
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field.name(), value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put_with(field.name(), |text| push_decimal(text, value, false));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put_with(field.name(), |text| {
            push_decimal(text, value.unsigned_abs(), value < 0)
        });
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field.name(), if value { "true" } else { "false" });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put_with(field.name(), |text| {
            let _ = write!(text, "{value:?}");
        });
    }
}

/// Writes an integer in decimal, as `Display` would, without the
/// formatting machinery: numbers are the most common fields.
fn push_decimal(text: &mut dyn fmt::Write, mut value: u64, negative: bool) {
    let mut digits = [0u8; 21];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    if negative {
        start -= 1;
        digits[start] = b'-';
    }
    // Only ASCII was written.
    let _ = text.write_str(std::str::from_utf8(&digits[start..]).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field_tags::MAX_FIELD_BYTES;

    #[test]
    fn an_events_message_is_its_payload_kept_whole_and_a_spans_is_a_tag() {
        let long = "x".repeat(MAX_FIELD_BYTES + 1);
        let mut event = Fields::for_event();
        event.put("message", &long.repeat(8));
        assert_eq!(event.message.as_deref(), Some(long.repeat(8).as_str()));
        assert_eq!(event.value("message"), None);
        let mut span = Fields::default();
        span.put("message", &long);
        assert_eq!(span.value("message").map(str::len), Some(MAX_FIELD_BYTES));
    }
}
