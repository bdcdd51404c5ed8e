//! [`EnvelopeBuilder`]: the setters every kind shares (source, instance,
//! tags, timestamp), each encoding its field as it is set, and `build`,
//! which adds the timestamp and the message.

use std::marker::PhantomData;
use std::sync::OnceLock;

use crate::proto::envelope as pb;
use crate::wire::{framed_len, put_bytes, put_tag, put_varint};

use super::encoded::{Encoded, kind_of_message, put_message};
use super::{Envelope, UnixNanos};
// Named in the docs of `EnvelopeBuilder`.
#[cfg(doc)]
use super::{CounterEnvelope, GaugeEnvelope, LogEnvelope};

/// Builds one envelope of kind `K`; made by the constructors on [`Envelope`].
///
/// The setters shared by every kind live here; kind-specific ones are on
/// [`LogEnvelope`], [`CounterEnvelope`] and [`GaugeEnvelope`].
///
/// ```
/// use loggregator::{Envelope, EnvelopeBuilder};
///
/// let builder = Envelope::event("deploy", "v42").source("my-app", "3").tag("env", "prod");
/// let env = builder.build();
/// assert_eq!(env.as_proto().instance_id, "3");
/// assert_eq!(env.as_proto().tags["env"], "prod");
/// ```
#[derive(Clone, Debug)]
#[must_use = "an envelope builder does nothing until it is emitted"]
pub struct EnvelopeBuilder<K> {
    /// Source ids and tags, encoded as they are set (the last of a repeated
    /// field or map key wins when decoded, as the setters promise); the
    /// timestamp and message are added by `build`.
    fields: Vec<u8>,
    timestamp: i64,
    pub(super) message: pb::envelope::Message,
    has_source_id: bool,
    has_instance_id: bool,
    has_tags: bool,
    /// Made with [`CounterEnvelope::reset`], the only way to send a counter
    /// with `delta == 0 && total == 0`.
    pub(super) reset: bool,
    kind: PhantomData<K>,
}

impl<K> EnvelopeBuilder<K> {
    pub(super) fn new(message: pb::envelope::Message) -> EnvelopeBuilder<K> {
        // Room for the usual ids and tags and the message, so that the
        // envelope is built in one allocation.
        let payload = match &message {
            pb::envelope::Message::Log(log) => log.payload.len(),
            _ => 0,
        };
        EnvelopeBuilder {
            fields: Vec::with_capacity(192 + payload),
            timestamp: UnixNanos::now().as_i64(),
            message,
            has_source_id: false,
            has_instance_id: false,
            has_tags: false,
            reset: false,
            kind: PhantomData,
        }
    }

    /// Sets the source id (the app GUID or component name) and instance id.
    ///
    /// ```
    /// let env = loggregator::Envelope::log("x").source("app-guid", "2").build();
    /// assert_eq!(env.as_proto().source_id, "app-guid");
    /// ```
    pub fn source(self, source_id: impl AsRef<str>, instance_id: impl AsRef<str>) -> Self {
        self.source_id(source_id).instance_id(instance_id)
    }

    /// Sets the source id alone.
    ///
    /// ```
    /// let env = loggregator::Envelope::log("x").source_id("app-guid").build();
    /// assert_eq!(env.as_proto().source_id, "app-guid");
    /// ```
    pub fn source_id(mut self, source_id: impl AsRef<str>) -> Self {
        let source_id = source_id.as_ref();
        put_bytes(&mut self.fields, 2, source_id.as_bytes());
        self.has_source_id = !source_id.is_empty();
        self
    }

    /// Sets the instance id alone.
    ///
    /// ```
    /// let env = loggregator::Envelope::log("x").instance_id("7").build();
    /// assert_eq!(env.as_proto().instance_id, "7");
    /// ```
    pub fn instance_id(mut self, instance_id: impl AsRef<str>) -> Self {
        let instance_id = instance_id.as_ref();
        put_bytes(&mut self.fields, 8, instance_id.as_bytes());
        self.has_instance_id = !instance_id.is_empty();
        self
    }

    /// Adds a tag; it wins over a client-wide tag of the same key.
    ///
    /// ```
    /// let env = loggregator::Envelope::log("x").tag("a", "1").tag("a", "2").build();
    /// assert_eq!(env.as_proto().tags["a"], "2");
    /// ```
    pub fn tag(mut self, key: impl AsRef<str>, value: impl AsRef<str>) -> Self {
        let (key, value) = (key.as_ref().as_bytes(), value.as_ref().as_bytes());
        // A map entry: a message of the key (1) and the value (2).
        let entry_len = framed_len(key.len()) + framed_len(value.len());
        put_tag(&mut self.fields, 9, 2);
        put_varint(&mut self.fields, entry_len as u64);
        put_bytes(&mut self.fields, 1, key);
        put_bytes(&mut self.fields, 2, value);
        self.has_tags = true;
        self
    }

    /// Replaces the timestamp taken when the builder was made.
    ///
    /// ```
    /// let env = loggregator::Envelope::log("x").timestamp(42).build();
    /// assert_eq!(env.as_proto().timestamp, 42);
    /// ```
    pub fn timestamp(mut self, at: impl Into<UnixNanos>) -> Self {
        self.timestamp = at.into().as_i64();
        self
    }

    /// Finishes the envelope.
    ///
    /// ```
    /// let env = loggregator::Envelope::counter("c").build();
    /// assert_eq!(env.as_proto().counter().name, "c");
    /// ```
    pub fn build(self) -> Envelope {
        let mut bytes = self.fields;
        if self.timestamp != 0 {
            put_tag(&mut bytes, 1, 0);
            put_varint(&mut bytes, self.timestamp as u64);
        }
        let unencodable = put_message(&mut bytes, &self.message).is_err();
        let accidental_reset = match &self.message {
            pb::envelope::Message::Counter(c) => c.delta == 0 && c.total == 0 && !self.reset,
            _ => false,
        };
        Envelope {
            encoded: Encoded {
                bytes,
                kind: Some(kind_of_message(&self.message)),
                accidental_reset,
                has_source_id: self.has_source_id,
                has_instance_id: self.has_instance_id,
                has_tags: self.has_tags,
                unencodable,
            },
            decoded: OnceLock::new(),
        }
    }
}

impl<K> From<EnvelopeBuilder<K>> for Envelope {
    fn from(builder: EnvelopeBuilder<K>) -> Envelope {
        builder.build()
    }
}
