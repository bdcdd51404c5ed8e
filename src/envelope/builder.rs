//! [`EnvelopeBuilder`]: the setters every kind shares (source, instance,
//! tags, timestamp), each encoding its field as it is set, and `build`,
//! which adds the timestamp. The message is encoded by the constructor
//! (message.rs).

use std::marker::PhantomData;
use std::sync::OnceLock;

use crate::wire::{framed_len, put_bytes, put_tag, put_varint};

use super::encoded::Encoded;
use super::message::Message;
use super::{Envelope, EnvelopeKind, UnixNanos};
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
    /// The envelope's encoding so far: the message at the front, written
    /// by the constructor and re-encoded in place by the setters of one
    /// kind, then the source ids and tags in the order they were set (the
    /// last of a repeated field or map key wins when decoded, as the
    /// setters promise); `build` adds the timestamp.
    pub(super) bytes: Vec<u8>,
    pub(super) message: Message,
    pub(super) kind: EnvelopeKind,
    timestamp: i64,
    has_source_id: bool,
    has_instance_id: bool,
    has_tags: bool,
    /// A counter's numbers, which its setters re-encode.
    pub(super) counter: CounterNumbers,
    /// Made with [`CounterEnvelope::reset`], the only way to send a counter
    /// with `delta == 0 && total == 0`.
    pub(super) reset: bool,
    kind_marker: PhantomData<K>,
}

/// A counter's delta and total, and where they begin in its message.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct CounterNumbers {
    pub name_len: usize,
    pub delta: u64,
    pub total: u64,
}

/// Room for the usual source ids, tags and timestamp after the message,
/// so that an envelope is built in one allocation.
const FIELDS_ROOM: usize = 160;

impl<K> EnvelopeBuilder<K> {
    /// A builder whose message `start` writes into its empty buffer, which
    /// has room for `message_bytes` more than the usual fields.
    pub(super) fn new(
        kind: EnvelopeKind,
        message_bytes: usize,
        start: impl FnOnce(&mut Vec<u8>) -> Message,
    ) -> EnvelopeBuilder<K> {
        let mut bytes = Vec::with_capacity(message_bytes + FIELDS_ROOM);
        let message = start(&mut bytes);
        EnvelopeBuilder {
            bytes,
            message,
            kind,
            timestamp: UnixNanos::now().as_i64(),
            has_source_id: false,
            has_instance_id: false,
            has_tags: false,
            counter: CounterNumbers::default(),
            reset: false,
            kind_marker: PhantomData,
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
        put_bytes(&mut self.bytes, 2, source_id.as_bytes());
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
        put_bytes(&mut self.bytes, 8, instance_id.as_bytes());
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
        put_tag(&mut self.bytes, 9, 2);
        put_varint(&mut self.bytes, entry_len as u64);
        put_bytes(&mut self.bytes, 1, key);
        put_bytes(&mut self.bytes, 2, value);
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
        let mut bytes = self.bytes;
        if self.timestamp != 0 {
            put_tag(&mut bytes, 1, 0);
            put_varint(&mut bytes, self.timestamp as u64);
        }
        let accidental_reset = self.kind == EnvelopeKind::Counter
            && self.counter.delta == 0
            && self.counter.total == 0
            && !self.reset;
        Envelope {
            encoded: Encoded {
                // Protobuf refuses messages of 2 GiB or more.
                unencodable: bytes.len() > i32::MAX as usize,
                bytes,
                kind: Some(self.kind),
                accidental_reset,
                has_source_id: self.has_source_id,
                has_instance_id: self.has_instance_id,
                has_tags: self.has_tags,
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
