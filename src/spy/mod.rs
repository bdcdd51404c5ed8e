//! A real Loggregator Ingress server for tests (feature `testing`).
//!
//! [`SpyAgent`] is a grpcio server on `127.0.0.1` with mutual TLS (a client
//! certificate is required and verified), serving `Sender`, `BatchSender`
//! and `Send`, and recording every envelope and batch it reads. Tests wait
//! for what they expect with the `wait_for_*` methods instead of sleeping.
//! [`TestCerts`] makes the certificates it and the client use.
//!
//! ```
//! use loggregator::spy::{SpyAgent, TestCerts};
//! use loggregator::{Envelope, IngressClient};
//! use std::time::Duration;
//!
//! let certs = TestCerts::generate()?;
//! let agent = SpyAgent::start(&certs)?;
//! let client = IngressClient::builder().addr(agent.addr()).tls(certs.client_tls()?).build()?;
//! client.emit(Envelope::log("hello"));
//! client.close(Duration::from_secs(5))?;
//! let received = agent.envelopes();
//! assert_eq!(received.len(), 1);
//! assert_eq!(received[0].text().as_deref(), Some("hello"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod agent;
mod certs;
mod faults;
mod pace;
mod received;
mod record;
mod service;

pub use agent::{SpyAgent, SpyAgentBuilder};
pub use certs::TestCerts;
pub use faults::{StatusCode, StreamEnd};
pub use received::{
    KindCounts, ReceivedCounter, ReceivedEnvelope, ReceivedEvent, ReceivedMetric, ReceivedTimer,
};
pub use record::{ReceivedBatch, Rpc, SpyCounts};
