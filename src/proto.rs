//! The Loggregator v2 messages, generated from `proto/` by `build.rs`.
//!
//! [`Envelope`](crate::Envelope) builders cover everyday use; these types are
//! here for programs that need a field the builders do not set, and for tests
//! that inspect what an agent received.
//!
//! ```
//! use loggregator::proto::envelope::{envelope::Message, Envelope};
//!
//! let raw: Envelope = loggregator::Envelope::event("deploy", "v42").build().into_proto();
//! assert!(matches!(raw.message, Some(Message::Event(_))));
//! ```

#![allow(missing_docs, clippy::all)]

include!(concat!(env!("OUT_DIR"), "/proto/mod.rs"));
