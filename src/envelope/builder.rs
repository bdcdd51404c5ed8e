//! [`EnvelopeBuilder`]: the setters every kind shares (source, instance,
//! tags, timestamp), each encoding its field as it is set, and `build`,
//! which adds the timestamp. The message is encoded by the constructor
//! (message.rs).

use std::marker::PhantomData;
use std::sync::OnceLock;

use crate::wire::{put_bytes, put_tag, put_tag_entry, put_varint};

use super::encoded::Encoded;
use super::message::{self, Message};
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
    pub(super) draft: Draft,
    kind: PhantomData<K>,
}

/// What a builder holds, whatever its kind. The setters are thin generic
/// wrappers, inlined where they are called, around this one's methods:
/// a chain of setters then works on one value in place, where setters
/// taking and returning the builder by value would copy it at each call.
#[derive(Clone, Debug)]
pub(super) struct Draft {
    /// The envelope's encoding so far: the message at the front, written
    /// by the constructor and re-encoded in place by the setters of one
    /// kind, then the source ids and tags in the order they were set (the
    /// last of a repeated field or map key wins when decoded, as the
    /// setters promise); `build` adds the timestamp.
    pub bytes: Vec<u8>,
    pub message: Message,
    timestamp: i64,
    /// The kind and what was set ([`HAS_SOURCE_ID`], ...), in one word:
    /// see [`Message`] for why.
    flags: usize,
}

const HAS_SOURCE_ID: usize = 1;
const HAS_INSTANCE_ID: usize = 1 << 1;
const HAS_TAGS: usize = 1 << 2;
/// Made with [`CounterEnvelope::reset`], the only way to send a counter
/// with `delta == 0 && total == 0`.
const RESET: usize = 1 << 3;
/// A log sent to stdout: its type field was taken out.
const LOG_STDOUT: usize = 1 << 4;
const KIND_SHIFT: u32 = 8;

/// Room for the usual source ids, tags and timestamp after the message,
/// so that an envelope is built in one allocation.
const FIELDS_ROOM: usize = 192;

impl Draft {
    /// A draft whose message `start` writes into its empty buffer, which
    /// has room for `message_bytes` more than the usual fields.
    #[inline]
    pub(super) fn new(
        kind: EnvelopeKind,
        message_bytes: usize,
        timestamp: UnixNanos,
        start: impl FnOnce(&mut Vec<u8>) -> Message,
    ) -> Draft {
        let mut bytes = crate::spares::buffer(message_bytes + FIELDS_ROOM);
        let message = start(&mut bytes);
        Draft {
            bytes,
            message,
            timestamp: timestamp.as_i64(),
            flags: (kind as usize) << KIND_SHIFT,
        }
    }

    fn kind(&self) -> EnvelopeKind {
        EnvelopeKind::ALL[self.flags >> KIND_SHIFT]
    }

    fn set(&mut self, flag: usize, on: bool) {
        if on {
            self.flags |= flag;
        } else {
            self.flags &= !flag;
        }
    }

    fn has(&self, flag: usize) -> bool {
        self.flags & flag != 0
    }

    /// Marks a counter as a deliberate reset.
    pub(super) fn set_reset(&mut self) {
        self.flags |= RESET;
    }

    /// Sends a log to stderr (`ERR`) or stdout (`OUT`).
    pub(super) fn set_log_stderr(&mut self, stderr: bool) {
        let was_stderr = !self.has(LOG_STDOUT);
        message::set_log_stderr(&mut self.message, &mut self.bytes, was_stderr, stderr);
        self.set(LOG_STDOUT, !stderr);
    }

    #[inline(always)]
    fn source_id(&mut self, source_id: &str) {
        put_bytes(&mut self.bytes, 2, source_id.as_bytes());
        self.set(HAS_SOURCE_ID, !source_id.is_empty());
    }

    #[inline(always)]
    fn instance_id(&mut self, instance_id: &str) {
        put_bytes(&mut self.bytes, 8, instance_id.as_bytes());
        self.set(HAS_INSTANCE_ID, !instance_id.is_empty());
    }

    fn tags(&mut self, encoded: &[u8]) {
        if !encoded.is_empty() {
            self.bytes.extend_from_slice(encoded);
            self.flags |= HAS_TAGS;
        }
    }

    #[inline(always)]
    fn tag(&mut self, key: &[u8], value: &[u8]) {
        put_tag_entry(&mut self.bytes, key, value);
        self.flags |= HAS_TAGS;
    }

    /// Takes the envelope out, leaving the draft empty.
    #[inline(always)]
    fn build(&mut self) -> Envelope {
        let kind = self.kind();
        let accidental_reset = kind == EnvelopeKind::Counter && !self.has(RESET) && {
            let (delta, total, _) = message::counter_numbers(&self.message, &self.bytes);
            delta == 0 && total == 0
        };
        let mut bytes = std::mem::take(&mut self.bytes);
        if self.timestamp != 0 {
            put_tag(&mut bytes, 1, 0);
            put_varint(&mut bytes, self.timestamp as u64);
        }
        Envelope {
            encoded: Encoded {
                // Protobuf refuses messages of 2 GiB or more.
                unencodable: bytes.len() > i32::MAX as usize,
                bytes,
                kind: Some(kind),
                accidental_reset,
                has_source_id: self.flags & HAS_SOURCE_ID != 0,
                has_instance_id: self.flags & HAS_INSTANCE_ID != 0,
                has_tags: self.flags & HAS_TAGS != 0,
            },
            decoded: OnceLock::new(),
        }
    }
}

impl<K> EnvelopeBuilder<K> {
    /// A builder whose message `start` writes, stamped now; see [`Draft::new`].
    #[inline]
    pub(super) fn new(
        kind: EnvelopeKind,
        message_bytes: usize,
        start: impl FnOnce(&mut Vec<u8>) -> Message,
    ) -> EnvelopeBuilder<K> {
        EnvelopeBuilder::new_at(kind, message_bytes, UnixNanos::now(), start)
    }

    /// The same, stamped at `timestamp`.
    #[inline]
    pub(super) fn new_at(
        kind: EnvelopeKind,
        message_bytes: usize,
        timestamp: UnixNanos,
        start: impl FnOnce(&mut Vec<u8>) -> Message,
    ) -> EnvelopeBuilder<K> {
        EnvelopeBuilder {
            draft: Draft::new(kind, message_bytes, timestamp, start),
            kind: PhantomData,
        }
    }

    /// Sets the source id (the app GUID or component name) and instance id.
    ///
    /// ```
    /// let env = loggregator::Envelope::log("x").source("app-guid", "2").build();
    /// assert_eq!(env.as_proto().source_id, "app-guid");
    /// ```
    #[inline(always)]
    pub fn source(mut self, source_id: impl AsRef<str>, instance_id: impl AsRef<str>) -> Self {
        self.draft.source_id(source_id.as_ref());
        self.draft.instance_id(instance_id.as_ref());
        self
    }

    /// Sets the source id alone.
    ///
    /// ```
    /// let env = loggregator::Envelope::log("x").source_id("app-guid").build();
    /// assert_eq!(env.as_proto().source_id, "app-guid");
    /// ```
    #[inline(always)]
    pub fn source_id(mut self, source_id: impl AsRef<str>) -> Self {
        self.draft.source_id(source_id.as_ref());
        self
    }

    /// Sets the instance id alone.
    ///
    /// ```
    /// let env = loggregator::Envelope::log("x").instance_id("7").build();
    /// assert_eq!(env.as_proto().instance_id, "7");
    /// ```
    #[inline(always)]
    pub fn instance_id(mut self, instance_id: impl AsRef<str>) -> Self {
        self.draft.instance_id(instance_id.as_ref());
        self
    }

    /// Adds a tag; it wins over a client-wide tag of the same key.
    ///
    /// ```
    /// let env = loggregator::Envelope::log("x").tag("a", "1").tag("a", "2").build();
    /// assert_eq!(env.as_proto().tags["a"], "2");
    /// ```
    #[inline(always)]
    pub fn tag(mut self, key: impl AsRef<str>, value: impl AsRef<str>) -> Self {
        self.draft
            .tag(key.as_ref().as_bytes(), value.as_ref().as_bytes());
        self
    }

    /// Adds a tag in place, for the bridges that add many in a loop: a
    /// chain of setters moves the builder at each one.
    #[cfg(feature = "tracing")]
    #[inline]
    pub(crate) fn push_tag(&mut self, key: &[u8], value: &[u8]) {
        self.draft.tag(key, value);
    }

    /// Adds tags already encoded as `tags` map entries, in one copy.
    #[inline]
    pub(crate) fn push_tags(&mut self, encoded: &[u8]) {
        self.draft.tags(encoded);
    }

    /// Replaces the timestamp taken when the builder was made.
    ///
    /// ```
    /// let env = loggregator::Envelope::log("x").timestamp(42).build();
    /// assert_eq!(env.as_proto().timestamp, 42);
    /// ```
    #[inline(always)]
    pub fn timestamp(mut self, at: impl Into<UnixNanos>) -> Self {
        self.draft.timestamp = at.into().as_i64();
        self
    }

    /// Finishes the envelope.
    ///
    /// ```
    /// let env = loggregator::Envelope::counter("c").build();
    /// assert_eq!(env.as_proto().counter().name, "c");
    /// ```
    #[inline(always)]
    pub fn build(mut self) -> Envelope {
        self.draft.build()
    }

    /// Finishes the envelope in place, for the bridges, which add tags in
    /// place: moving the builder into `build` would copy it once more.
    #[inline]
    pub(crate) fn build_in_place(&mut self) -> Envelope {
        self.draft.build()
    }
}

impl<K> From<EnvelopeBuilder<K>> for Envelope {
    #[inline(always)]
    fn from(builder: EnvelopeBuilder<K>) -> Envelope {
        builder.build()
    }
}
