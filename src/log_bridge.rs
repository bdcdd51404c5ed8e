//! A `log::Log` implementation that sends every record as a Log envelope,
//! its key-values as tags.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use log::kv::{Key, Value, VisitSource};
use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::client::IngressClient;
use crate::envelope::Envelope;
use crate::error::{Error, GlobalSlot};
use crate::field_tags::FieldTags;
use crate::queue::Pushed;
use crate::source::SourceInfo;

/// The tags the bridge sets itself; with [`LogBridge::with_location`], also
/// [`LOCATION_TAGS`].
const OWN_TAGS: [&str; 2] = ["level", "target"];
const LOCATION_TAGS: [&str; 3] = ["module", "file", "line"];

/// Sends `log` records to Loggregator: error and warn go to stderr (`ERR`),
/// the rest to stdout (`OUT`), each tagged with its `level` and `target`
/// (and `module`, `file` and `line` when asked).
///
/// A record's key-values (`log::info!(user = id, ok = true; "login")`)
/// become tags, as OpenTelemetry's log appender makes them attributes:
/// strings as they are, numbers and booleans formatted (`42`, `1.5`,
/// `true`), anything else by its `Display` (or `Debug`, captured with
/// `:?`). They are capped as the tracing layer's fields are: at most
/// [`MAX_FIELD_TAGS`](crate::MAX_FIELD_TAGS) per record, values cut to
/// [`MAX_FIELD_BYTES`](crate::MAX_FIELD_BYTES), counted in
/// [`Stats::tags_dropped`](crate::Stats::tags_dropped) and
/// [`Stats::values_cut`](crate::Stats::values_cut). A key-value named like
/// a tag the bridge sets (`level`, `target`, and `module`, `file`, `line`
/// with [`with_location`](Self::with_location)) is left off and counted in
/// `tags_dropped`: those tags always say what the record's metadata says,
/// so filters on them can be trusted.
///
/// Records from this crate itself, and anything logged on the client's own
/// threads (the sender, gRPC's, the pulse), are never sent: they could loop
/// or deadlock. They still reach stderr when [`echo_to_stderr`](Self::echo_to_stderr) is on.
///
/// The installed bridge keeps a handle to the client for the rest of the
/// process, so dropping your handles does not close it: call
/// [`IngressClient::close`] before exiting to deliver what is queued.
///
/// ```no_run
/// use loggregator::{IngressClient, LogBridge, SourceInfo, TlsConfig};
///
/// let tls = TlsConfig::from_files("ca.crt", "client.crt", "client.key")?;
/// let client = IngressClient::builder().tls(tls).build()?;
/// LogBridge::new(client)
///     .level(log::LevelFilter::Info)
///     .source(SourceInfo::new("my-app", "0"))
///     .echo_to_stderr(true)
///     .install()?; // Error::AlreadyInstalled when another logger is set
/// log::info!("hello from the log crate");
/// # Ok::<(), loggregator::Error>(())
/// ```
#[derive(Debug)]
pub struct LogBridge {
    client: IngressClient,
    level: LevelFilter,
    source: Option<SourceInfo>,
    echo: bool,
    location: bool,
}

impl LogBridge {
    /// A bridge sending through `client` at level `Info`.
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// let bridge = loggregator::LogBridge::new(client);
    /// ```
    pub fn new(client: IngressClient) -> LogBridge {
        LogBridge {
            client,
            level: LevelFilter::Info,
            source: None,
            echo: false,
            location: false,
        }
    }

    /// The most verbose level sent (default `Info`).
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// let bridge = loggregator::LogBridge::new(client).level(log::LevelFilter::Debug);
    /// ```
    pub fn level(mut self, level: LevelFilter) -> Self {
        self.level = level;
        self
    }

    /// The source and instance ids of the envelopes (default: the client's
    /// default source, if any).
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// let bridge = loggregator::LogBridge::new(client).source(loggregator::SourceInfo::new("svc", "1"));
    /// ```
    pub fn source(mut self, source: SourceInfo) -> Self {
        self.source = Some(source);
        self
    }

    /// Also writes each record to stderr, so local output is not lost.
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// let bridge = loggregator::LogBridge::new(client).echo_to_stderr(true);
    /// ```
    pub fn echo_to_stderr(mut self, echo: bool) -> Self {
        self.echo = echo;
        self
    }

    /// Adds `module`, `file` and `line` tags when the record has them.
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// let bridge = loggregator::LogBridge::new(client).with_location(true);
    /// ```
    pub fn with_location(mut self, location: bool) -> Self {
        self.location = location;
        self
    }

    /// Installs the bridge as the process's logger and sets `log`'s maximum
    /// level. `log` takes one logger per process: when one is set already
    /// this fails with [`Error::AlreadyInstalled`], naming the slot, what
    /// holds it as far as can be told, and what to do instead. A program
    /// that also uses `tracing` with `tracing-subscriber`'s default
    /// features installs no `LogBridge`: its `init()` sets tracing-log's
    /// logger, which hands `log` records to the
    /// [`TracingLayer`](https://docs.rs/loggregator/latest/loggregator/struct.TracingLayer.html)
    /// (docs/integrations.md, "`log` and `tracing` in one program").
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// loggregator::LogBridge::new(client).install()?;
    /// # Ok::<(), loggregator::Error>(())
    /// ```
    pub fn install(self) -> Result<(), Error> {
        // Whether the slot is ours, for the error of a second install.
        static INSTALLED: AtomicBool = AtomicBool::new(false);
        let level = self.level;
        // The logger lives for the rest of the process, as `log` requires;
        // a refused one is dropped, and its handle with it, so the client
        // can still close when the program drops its own handles.
        if log::set_boxed_logger(Box::new(self)).is_err() {
            return Err(logger_taken(INSTALLED.load(Ordering::Acquire)));
        }
        INSTALLED.store(true, Ordering::Release);
        log::set_max_level(level);
        Ok(())
    }

    /// The envelope for a record, and what its key-values lost.
    fn envelope(&self, record: &Record<'_>) -> (Envelope, FieldTags) {
        // A message without arguments is copied once, into the envelope.
        let log = match record.args().as_str() {
            Some(message) => Envelope::log(message),
            None => Envelope::log(record.args().to_string()),
        };
        let log = match record.level() {
            Level::Error | Level::Warn => log.stderr(),
            _ => log.stdout(),
        };
        let mut log = log
            .tag("level", record.level().as_str().to_ascii_lowercase())
            .tag("target", record.target());
        if let Some(source) = &self.source {
            log = log.source(source.source_id(), source.instance_id());
        }
        if self.location {
            if let Some(module) = record.module_path() {
                log = log.tag("module", module);
            }
            if let Some(file) = record.file() {
                log = log.tag("file", file);
            }
            if let Some(line) = record.line() {
                log = log.tag("line", line.to_string());
            }
        }
        let mut key_values = KeyValues {
            tags: FieldTags::default(),
            location: self.location,
        };
        // The visitor never fails: a source that does is sent with what it gave.
        let _ = record.key_values().visit(&mut key_values);
        log.push_tags(key_values.tags.encoded());
        (log.build_in_place(), key_values.tags)
    }
}

impl Log for LogBridge {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        if self.echo {
            let _ = writeln!(
                std::io::stderr().lock(),
                "{} {}: {}",
                record.level(),
                record.target(),
                record.args()
            );
        }
        if !crate::is_internal(record.target()) {
            let (envelope, tags) = self.envelope(record);
            // What a dropped record lost is not counted: it is counted
            // dropped, whole.
            if self.client.emit_reporting(envelope) == Pushed::Queued {
                tags.count_losses(&self.client);
            }
        }
    }

    fn flush(&self) {}
}

/// The error of an install that found `log`'s logger set: by a bridge of
/// ours, or by another logger, most often tracing-log's, which
/// `tracing-subscriber`'s `init()` sets with its default features.
fn logger_taken(by_a_bridge: bool) -> Error {
    if by_a_bridge {
        return Error::AlreadyInstalled {
            slot: GlobalSlot::Logger,
            holder: "a LogBridge installed before",
            instead: "a process has one `log` logger: install one LogBridge",
        };
    }
    let tracing_set = tracing_dispatcher_set();
    Error::AlreadyInstalled {
        slot: GlobalSlot::Logger,
        holder: if tracing_set {
            "another logger, most likely tracing-log's, which tracing-subscriber's `init()` sets \
             with its default features"
        } else {
            "another logger"
        },
        instead: "with tracing-subscriber's `init()` and a TracingLayer, `log` records already \
                  reach the client through the layer: leave the LogBridge out; otherwise \
                  install the LogBridge before any other logger",
    }
}

#[cfg(feature = "tracing")]
fn tracing_dispatcher_set() -> bool {
    tracing::dispatcher::has_been_set()
}

#[cfg(not(feature = "tracing"))]
fn tracing_dispatcher_set() -> bool {
    false
}

/// A record's key-values as capped tags.
struct KeyValues {
    tags: FieldTags,
    /// Whether the location tags are the bridge's own.
    location: bool,
}

impl<'kvs> VisitSource<'kvs> for KeyValues {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let key = key.as_str();
        let own = OWN_TAGS.contains(&key) || (self.location && LOCATION_TAGS.contains(&key));
        if own {
            self.tags.refuse();
            return Ok(());
        }
        match value.to_borrowed_str() {
            Some(text) => self.tags.put(key, text),
            None => self.tags.put_with(key, |text| {
                let _ = write!(text, "{value}");
            }),
        }
        Ok(())
    }
}
