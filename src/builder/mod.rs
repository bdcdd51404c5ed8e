//! The builder: every setting, its default, and the checks `build()` makes
//! before anything starts.
//!
//! Here are the settings and `build()`, which turns them into what the
//! client starts from; `defaults.rs` names every default and limit,
//! `setters.rs` holds one setter a setting, and `validate.rs` the checks.

mod defaults;
mod setters;
mod validate;

use std::time::Duration;

use crate::batch::Stamp;
use crate::client::{Config, IngressClient};
use crate::error::Result;
use crate::grpc::ChannelSettings;
use crate::policy::{Backoff, Delivery, Overflow};
use crate::queue::QueueSettings;
use crate::sender::Settings;
use crate::source::SourceInfo;
use crate::tls::TlsConfig;

pub use defaults::{
    AGENT_MAX_MESSAGE_BYTES, DEFAULT_ADDR, DEFAULT_BATCH_MAX_BYTES, DEFAULT_BATCH_MAX_ENVELOPES,
    DEFAULT_CLOSE_ON_DROP_TIMEOUT, DEFAULT_CONFIRM_INTERVAL, DEFAULT_FLUSH_INTERVAL,
    DEFAULT_KEEPALIVE, DEFAULT_PULSE_INTERVAL, DEFAULT_QUEUE_CAPACITY, DEFAULT_QUEUE_MAX_BYTES,
    DEFAULT_RECONNECT_BACKOFF_INITIAL, DEFAULT_RECONNECT_BACKOFF_MAX, DEFAULT_REPLAY_BUFFER_BYTES,
    DEFAULT_STREAMS, DEFAULT_WRITE_TIMEOUT, MAX_QUEUE_CAPACITY, MAX_STREAMS, MIN_KEEPALIVE,
};

impl IngressClient {
    /// Starts configuring a client.
    ///
    /// ```
    /// let builder = loggregator::IngressClient::builder().queue_capacity(1_000);
    /// ```
    pub fn builder() -> IngressClientBuilder {
        IngressClientBuilder::default()
    }
}

/// Configures and starts an [`IngressClient`]; made by [`IngressClient::builder`].
///
/// Every setting has a default (the `DEFAULT_*` constants) except
/// [`tls`](Self::tls): the agents accept only mutual TLS.
///
/// ```no_run
/// use loggregator::{IngressClient, TlsConfig};
/// use std::time::Duration;
///
/// let client = IngressClient::builder()
///     .tls(TlsConfig::from_files("ca.crt", "client.crt", "client.key")?)
///     .queue_capacity(50_000)
///     .batch_max_envelopes(500)
///     .flush_interval(Duration::from_millis(250))
///     .build()?;
/// # Ok::<(), loggregator::Error>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until build() is called"]
pub struct IngressClientBuilder {
    addr: String,
    tls: Option<TlsConfig>,
    global_tags: Vec<(String, String)>,
    queue_capacity: usize,
    queue_max_bytes: usize,
    /// `None`: the default, shortened to a smaller queue.
    batch_max_envelopes: Option<usize>,
    batch_max_bytes: usize,
    flush_interval: Duration,
    write_timeout: Duration,
    close_on_drop_timeout: Duration,
    overflow: Overflow,
    delivery: Delivery,
    confirm_interval: Duration,
    replay_buffer_bytes: usize,
    reconnect_initial: Duration,
    reconnect_max: Duration,
    keepalive: Option<Duration>,
    source: Option<SourceInfo>,
    source_from_cf_env: bool,
    pulse_interval: Duration,
    self_metrics: bool,
    streams: usize,
}

impl Default for IngressClientBuilder {
    fn default() -> IngressClientBuilder {
        IngressClientBuilder {
            addr: DEFAULT_ADDR.to_string(),
            tls: None,
            global_tags: Vec::new(),
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            queue_max_bytes: DEFAULT_QUEUE_MAX_BYTES,
            batch_max_envelopes: None,
            batch_max_bytes: DEFAULT_BATCH_MAX_BYTES,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            close_on_drop_timeout: DEFAULT_CLOSE_ON_DROP_TIMEOUT,
            overflow: Overflow::default(),
            delivery: Delivery::default(),
            confirm_interval: DEFAULT_CONFIRM_INTERVAL,
            replay_buffer_bytes: DEFAULT_REPLAY_BUFFER_BYTES,
            reconnect_initial: DEFAULT_RECONNECT_BACKOFF_INITIAL,
            reconnect_max: DEFAULT_RECONNECT_BACKOFF_MAX,
            keepalive: Some(DEFAULT_KEEPALIVE),
            source: None,
            source_from_cf_env: false,
            pulse_interval: DEFAULT_PULSE_INTERVAL,
            self_metrics: false,
            streams: DEFAULT_STREAMS,
        }
    }
}

impl IngressClientBuilder {
    /// Checks the settings and starts the sender thread. It does not connect:
    /// an agent that is down now is tried again with each batch.
    ///
    /// ```
    /// use loggregator::{Error, IngressClient};
    ///
    /// let err = IngressClient::builder().build().unwrap_err();
    /// assert!(matches!(err, Error::Config { setting: "tls", .. }));
    /// ```
    pub fn build(self) -> Result<IngressClient> {
        let tls = self.validate()?;
        let source = match (&self.source, self.source_from_cf_env) {
            (_, true) => Some(SourceInfo::from_cf_env()?),
            (source, false) => source.clone(),
        };
        let batch_max_envelopes = self.batch_envelopes();
        let config = Config {
            sender: Settings {
                addr: self.addr.clone(),
                batch_max_envelopes,
                batch_max_bytes: self.batch_max_bytes,
                flush_interval: self.flush_interval,
                delivery: self.delivery,
                confirm_interval: self.confirm_interval,
                replay_buffer_bytes: self.replay_buffer_bytes,
                confirm_timeout: self.write_timeout,
                write_timeout: self.write_timeout,
                backoff: Backoff::new(self.reconnect_initial, self.reconnect_max),
                streams: self.streams,
            },
            channel: ChannelSettings {
                addr: self.addr.clone(),
                tls,
                keepalive: self.keepalive,
                reconnect_initial: self.reconnect_initial,
                reconnect_max: self.reconnect_max,
            },
            queue: QueueSettings {
                capacity: self.queue_capacity,
                max_bytes: self.queue_max_bytes,
                nudge_at: batch_max_envelopes.min(self.queue_capacity / 2).max(1),
                batch_max_bytes: self.batch_max_bytes,
                overflow: self.overflow,
            },
            stamp: Stamp::new(&self.global_tags, source.as_ref()),
            addr: self.addr,
            source,
            pulse_interval: self.pulse_interval,
            self_metrics: self.self_metrics,
            close_on_drop_timeout: self.close_on_drop_timeout,
        };
        IngressClient::start(config)
    }

    /// The batch cap in force: as set, or the default fitted to the queue.
    fn batch_envelopes(&self) -> usize {
        self.batch_max_envelopes
            .unwrap_or(DEFAULT_BATCH_MAX_ENVELOPES.min(self.queue_capacity))
    }
}
