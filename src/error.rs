//! The one error type of the crate.

use std::path::PathBuf;
use std::time::Duration;

/// What went wrong, with enough detail to act on.
///
/// ```
/// use loggregator::{Error, TlsConfig};
///
/// match TlsConfig::from_files("/nonexistent/ca.crt", "client.crt", "client.key") {
///     Err(Error::Io { path, .. }) => assert!(path.ends_with("ca.crt")),
///     other => panic!("unexpected: {other:?}"),
/// }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A certificate or key file is missing or unreadable.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file that could not be read.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },

    /// A certificate or key is not usable PEM: not PEM at all, a NUL byte,
    /// no certificate in a CA bundle, or text OpenSSL cannot parse.
    #[error("{origin}: {problem}")]
    Pem {
        /// Where it came from: the file path, or which PEM argument.
        origin: String,
        /// What is wrong with it.
        problem: String,
    },

    /// The private key does not belong to the certificate.
    #[error("the private key {key} does not match the certificate {certificate}")]
    KeyMismatch {
        /// Where the certificate came from.
        certificate: String,
        /// Where the key came from.
        key: String,
    },

    /// The TLS library refused the configuration.
    #[error("TLS configuration rejected: {0}")]
    Tls(String),

    /// A builder setting is out of range or malformed.
    #[error("invalid setting `{setting}`: {problem}")]
    Config {
        /// The setting's name, as the builder method is called.
        setting: &'static str,
        /// What is wrong with the value.
        problem: String,
    },

    /// The agent could not be reached, refused the connection, or ended a call
    /// with an error status.
    #[error("agent at {addr}: {status}{hint}", hint = hint_suffix(hint))]
    Agent {
        /// The address the client connects to.
        addr: String,
        /// The gRPC status and message, for example `UNAVAILABLE: failed to connect`.
        status: String,
        /// What to check, when the cause is recognisable (TLS names, CAs, no listener).
        hint: Option<String>,
    },

    /// Envelopes that `emit` had accepted were lost afterwards, since the
    /// last flush or close that reported losses: given up (`gave_up`),
    /// refused by the agent as too large (`too_large`), or left behind by
    /// close (`closed`: still queued when the sender thread stopped, or
    /// waiting for room under `Block`/`BlockFor` when close began). Each
    /// such loss is reported once, by the first `flush` or `close` to
    /// return after it, whichever handle calls it (a flush that times out
    /// leaves it to the next; a close that times out counts it in its
    /// `Error::Timeout`). Drops `emit` makes itself by the overflow policy
    /// or because it refuses the envelope (`queue_full`, `too_large` at
    /// emit, `zero_counter`, emitted after close) are the caller's own and
    /// are only counted in `stats()`, which has every count by reason.
    ///
    /// ```
    /// let error = loggregator::Error::Undelivered { count: 2, cause: "RESOURCE_EXHAUSTED".into() };
    /// assert_eq!(error.to_string(), "2 envelopes were not delivered: RESOURCE_EXHAUSTED");
    /// ```
    #[error("{count} envelopes were not delivered: {cause}")]
    Undelivered {
        /// How many envelopes were lost and not reported before.
        count: u64,
        /// The last error seen (from the agent, or the client's own), or
        /// "unknown".
        cause: String,
    },

    /// The operation did not finish within its timeout.
    #[error("timed out after {waited:?} with {undelivered} envelopes not yet delivered")]
    Timeout {
        /// How long the caller waited.
        waited: Duration,
        /// From `flush` or `send`: envelopes still queued or being written
        /// when the time ran out (not lost: they stay queued). From
        /// `close`: every envelope `emit` accepted that will not be
        /// delivered and that no earlier flush or close reported, those
        /// close gave up on included.
        undelivered: u64,
    },

    /// An envelope or batch given to `send` cannot be sent: too large, or a
    /// counter that would reset the agent's total.
    #[error("rejected: {0}")]
    Rejected(String),

    /// The sender thread could not be started.
    #[error("cannot start the sender thread: {0}")]
    Spawn(#[source] std::io::Error),

    /// An install found its process-wide slot taken: the `log` crate's
    /// logger ([`LogBridge::install`](crate::LogBridge::install)) or the
    /// `metrics` facade's recorder (`MetricsRecorder::install`, feature
    /// `metrics`). Each takes one per process, so this one was not
    /// installed; the message says what holds the slot, as far as the
    /// crate can tell, and what to do instead.
    ///
    /// ```
    /// use loggregator::{Error, GlobalSlot};
    ///
    /// struct Other;
    /// impl log::Log for Other {
    ///     fn enabled(&self, _: &log::Metadata<'_>) -> bool { false }
    ///     fn log(&self, _: &log::Record<'_>) {}
    ///     fn flush(&self) {}
    /// }
    /// log::set_logger(&Other).unwrap();
    ///
    /// let certs = loggregator::spy::TestCerts::generate()?;
    /// let client = loggregator::IngressClient::builder().tls(certs.client_tls()?).build()?;
    /// match loggregator::LogBridge::new(client).install() {
    ///     Err(Error::AlreadyInstalled { slot: GlobalSlot::Logger, .. }) => {}
    ///     other => panic!("unexpected: {other:?}"),
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[error("{slot} is already set, by {holder}, so this one was not installed: {instead}")]
    AlreadyInstalled {
        /// The slot that was taken.
        slot: GlobalSlot,
        /// What holds it, as far as the crate can tell.
        holder: &'static str,
        /// What to do instead.
        instead: &'static str,
    },

    /// The client was closed; nothing more can be sent with it.
    #[error("the client is closed")]
    Closed,
}

/// A process-wide slot that one of the crate's integrations installs
/// itself in, named by [`Error::AlreadyInstalled`].
///
/// ```
/// assert_eq!(loggregator::GlobalSlot::Logger.to_string(), "the `log` crate's logger");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GlobalSlot {
    /// The `log` crate's logger, which `log::set_logger` sets once per
    /// process.
    Logger,
    /// The `metrics` facade's global recorder, which
    /// `metrics::set_global_recorder` sets once per process.
    MetricsRecorder,
}

impl std::fmt::Display for GlobalSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GlobalSlot::Logger => "the `log` crate's logger",
            GlobalSlot::MetricsRecorder => "the `metrics` facade's global recorder",
        })
    }
}

fn hint_suffix(hint: &Option<String>) -> String {
    match hint {
        Some(hint) => format!(" (hint: {hint})"),
        None => String::new(),
    }
}

/// The crate's result type.
///
/// ```
/// fn connect() -> loggregator::Result<()> {
///     Ok(())
/// }
/// # connect().unwrap();
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;
