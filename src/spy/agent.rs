//! The handle a test holds, [`SpyAgent`], and its options: starting,
//! stopping and restarting the server, what it read, and the faults and
//! rates it is told to show.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use grpcio::{EnvBuilder, Environment, Server};
use parking_lot::Mutex;

use crate::proto::envelope::Envelope;

use super::certs::TestCerts;
use super::faults::{StatusCode, StreamEnd};
use super::received::{KindCounts, ReceivedEnvelope};
use super::record::{ReceivedBatch, SpyCounts};
use super::service::{ServerConfig, State, serve, stop};

/// A Loggregator agent for tests: a real mTLS gRPC server on loopback that
/// records what it reads. It stops when dropped.
///
/// Faults can be injected: stop reading ([`pause_reading`](Self::pause_reading)),
/// go away and come back on the same port ([`shutdown`](Self::shutdown),
/// [`restart`](Self::restart)), end a stream with an error
/// ([`fail_next_stream`](Self::fail_next_stream)), or refuse large messages
/// ([`SpyAgentBuilder::max_message_bytes`]).
///
/// ```
/// use loggregator::spy::{SpyAgent, StreamEnd, TestCerts};
///
/// let certs = TestCerts::generate()?;
/// let agent = SpyAgent::start(&certs)?;
/// agent.set_stream_end(StreamEnd::Ok);
/// assert!(agent.addr().starts_with("127.0.0.1:"));
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct SpyAgent {
    server: Mutex<Option<Server>>,
    addr: String,
    state: Arc<State>,
    config: ServerConfig,
    env: Arc<Environment>,
}

impl std::fmt::Debug for SpyAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpyAgent")
            .field("addr", &self.addr)
            .finish()
    }
}

/// Options for a [`SpyAgent`]; made by [`SpyAgent::builder`].
///
/// ```
/// let certs = loggregator::spy::TestCerts::generate()?;
/// let agent = loggregator::spy::SpyAgent::builder().max_message_bytes(64 * 1024).start(&certs)?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Default, Clone)]
pub struct SpyAgentBuilder {
    max_message_bytes: Option<usize>,
    port: u16,
    count_only: bool,
}

impl SpyAgentBuilder {
    /// Refuses gRPC messages larger than this with RESOURCE_EXHAUSTED, as the
    /// real agents do above 10 MiB.
    ///
    /// ```
    /// let builder = loggregator::spy::SpyAgent::builder().max_message_bytes(1 << 20);
    /// ```
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = Some(bytes);
        self
    }

    /// Only counts what it reads ([`SpyAgent::counts`]) on `BatchSender`
    /// streams and `Send` calls, keeping no envelopes and decoding no more
    /// than each batch's outer framing (unless decoding is turned on), so
    /// that it keeps up with a client under load and stays small.
    /// [`SpyAgent::envelopes`] and [`SpyAgent::batches`] stay empty.
    ///
    /// ```
    /// let builder = loggregator::spy::SpyAgent::builder().count_only();
    /// ```
    pub fn count_only(mut self) -> Self {
        self.count_only = true;
        self
    }

    /// Listens on this port of 127.0.0.1 instead of a free one.
    ///
    /// ```
    /// let builder = loggregator::spy::SpyAgent::builder().port(3458);
    /// ```
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Starts the spy with the server certificate of `certs`, requiring
    /// client certificates signed by its CA.
    ///
    /// ```
    /// let certs = loggregator::spy::TestCerts::generate()?;
    /// let agent = loggregator::spy::SpyAgent::builder().start(&certs)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn start(self, certs: &TestCerts) -> io::Result<SpyAgent> {
        let env = Arc::new(
            EnvBuilder::new()
                .cq_count(1)
                .name_prefix("spy-agent")
                .build(),
        );
        let state = Arc::new(State {
            count_only: self.count_only,
            ..State::default()
        });
        let config = ServerConfig {
            ca_pem: certs.ca_pem().to_vec(),
            cert_pem: certs.server_cert_pem().to_vec(),
            key_pem: certs.server_key_pem().to_vec(),
            max_message_bytes: self.max_message_bytes,
        };
        let (server, port) = serve(&env, &state, &config, self.port)?;
        Ok(SpyAgent {
            server: Mutex::new(Some(server)),
            addr: format!("127.0.0.1:{port}"),
            state,
            config,
            env,
        })
    }
}

impl SpyAgent {
    /// Starts a spy on a free port of 127.0.0.1, with the server certificate
    /// of `certs` and requiring client certificates signed by its CA.
    ///
    /// ```
    /// let certs = loggregator::spy::TestCerts::generate()?;
    /// let agent = loggregator::spy::SpyAgent::start(&certs)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn start(certs: &TestCerts) -> io::Result<SpyAgent> {
        SpyAgentBuilder::default().start(certs)
    }

    /// Options beyond [`start`](Self::start)'s defaults.
    ///
    /// ```
    /// let builder = loggregator::spy::SpyAgent::builder();
    /// ```
    pub fn builder() -> SpyAgentBuilder {
        SpyAgentBuilder::default()
    }

    /// Stops serving: open calls are cancelled and new connections refused.
    /// What was recorded is kept.
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// # let agent = loggregator::spy::SpyAgent::start(&certs)?;
    /// agent.shutdown();
    /// agent.restart()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn shutdown(&self) {
        if let Some(server) = self.server.lock().take() {
            stop(server, &self.state);
        }
    }

    /// Serves again on the same port after [`shutdown`](Self::shutdown)
    /// (a no-op while serving).
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// # let agent = loggregator::spy::SpyAgent::start(&certs)?;
    /// agent.restart()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn restart(&self) -> io::Result<()> {
        let mut server = self.server.lock();
        if server.is_none() {
            let port = self
                .addr
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse().ok())
                .unwrap_or(0);
            *server = Some(serve(&self.env, &self.state, &self.config, port)?.0);
        }
        Ok(())
    }

    /// Stops reading streams, holding them open: the client's writes stall
    /// once HTTP/2 flow control fills, as with an overloaded agent.
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// # let agent = loggregator::spy::SpyAgent::start(&certs)?;
    /// agent.pause_reading();
    /// agent.resume_reading();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn pause_reading(&self) {
        self.state.faults.set_paused(true);
    }

    /// Reads streams again after [`pause_reading`](Self::pause_reading).
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// # let agent = loggregator::spy::SpyAgent::start(&certs)?;
    /// agent.resume_reading();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn resume_reading(&self) {
        self.state.faults.set_paused(false);
    }

    /// Ends the stream that delivers the next message with this status; the
    /// message is not recorded.
    ///
    /// ```
    /// use loggregator::spy::StatusCode;
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// # let agent = loggregator::spy::SpyAgent::start(&certs)?;
    /// agent.fail_next_stream(StatusCode::Unavailable, "going away");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn fail_next_stream(&self, code: StatusCode, message: impl Into<String>) {
        self.state.faults.fail_next_stream(code, message.into());
    }

    /// How many calls (streams and unary sends) clients have started.
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// # let agent = loggregator::spy::SpyAgent::start(&certs)?;
    /// assert_eq!(agent.calls_started(), 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn calls_started(&self) -> u64 {
        self.state.record.look(|record| record.calls_started)
    }

    /// `127.0.0.1:PORT`, for [`IngressClientBuilder::addr`](crate::IngressClientBuilder::addr).
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// # let agent = loggregator::spy::SpyAgent::start(&certs)?;
    /// println!("agent at {}", agent.addr());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Chooses how streams end from now on (default [`StreamEnd::Eof`]).
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// # let agent = loggregator::spy::SpyAgent::start(&certs)?;
    /// agent.set_stream_end(loggregator::spy::StreamEnd::Ok);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_stream_end(&self, end: StreamEnd) {
        self.state.faults.set_stream_end(end);
    }

    /// Every envelope read so far, in order, to read field by field (see
    /// [`ReceivedEnvelope`]); [`proto_envelopes`](Self::proto_envelopes)
    /// gives the generated protobuf messages.
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// # let agent = loggregator::spy::SpyAgent::start(&certs)?;
    /// assert!(agent.envelopes().is_empty());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn envelopes(&self) -> Vec<ReceivedEnvelope> {
        self.state.record.look(|record| {
            record
                .envelopes
                .iter()
                .cloned()
                .map(ReceivedEnvelope::new)
                .collect()
        })
    }

    /// How many envelopes of each kind were read so far (none are kept in
    /// [`count_only`](SpyAgentBuilder::count_only) mode: all zero there).
    ///
    /// ```
    /// use loggregator::spy::{SpyAgent, TestCerts};
    /// use loggregator::{Envelope, IngressClient};
    ///
    /// let certs = TestCerts::generate()?;
    /// let agent = SpyAgent::start(&certs)?;
    /// let client = IngressClient::builder().addr(agent.addr()).tls(certs.client_tls()?).build()?;
    /// client.emit(Envelope::log("hello"));
    /// client.emit(Envelope::event("deploy", "v42"));
    /// client.close(std::time::Duration::from_secs(5))?;
    /// let counts = agent.kind_counts();
    /// assert_eq!((counts.log, counts.event, counts.total()), (1, 1, 2));
    /// assert_eq!(counts.to_string(), "log=1 counter=0 gauge=0 timer=0 event=1");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn kind_counts(&self) -> KindCounts {
        self.state.record.look(|record| {
            let mut counts = KindCounts::default();
            for envelope in &record.envelopes {
                counts.count(envelope);
            }
            counts
        })
    }

    /// Every envelope read so far, in order, as the generated protobuf
    /// messages: for a field the readable envelopes do not show.
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// # let agent = loggregator::spy::SpyAgent::start(&certs)?;
    /// assert!(agent.proto_envelopes().is_empty());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn proto_envelopes(&self) -> Vec<Envelope> {
        self.state.record.look(|record| record.envelopes.clone())
    }

    /// Every message read so far, in order.
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// # let agent = loggregator::spy::SpyAgent::start(&certs)?;
    /// assert!(agent.batches().is_empty());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn batches(&self) -> Vec<ReceivedBatch> {
        self.state.record.look(|record| record.batches.clone())
    }

    /// How many `Sender`/`BatchSender` streams the client half-closed and the
    /// spy then ended.
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// # let agent = loggregator::spy::SpyAgent::start(&certs)?;
    /// assert_eq!(agent.streams_ended(), 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn streams_ended(&self) -> u64 {
        self.state.record.look(|record| record.streams_ended)
    }

    /// Waits until at least `count` envelopes have been read, at most
    /// `timeout`; returns all read so far either way, so a test can compare.
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// # let agent = loggregator::spy::SpyAgent::start(&certs)?;
    /// let got = agent.wait_for_envelopes(0, std::time::Duration::from_secs(1));
    /// assert!(got.is_empty());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn wait_for_envelopes(&self, count: usize, timeout: Duration) -> Vec<ReceivedEnvelope> {
        self.state
            .record
            .wait_until(timeout, |record| record.envelopes.len() >= count);
        self.envelopes()
    }

    /// Waits as [`wait_for_envelopes`](Self::wait_for_envelopes) does;
    /// returns the generated protobuf messages.
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// # let agent = loggregator::spy::SpyAgent::start(&certs)?;
    /// let got = agent.wait_for_proto_envelopes(0, std::time::Duration::from_secs(1));
    /// assert!(got.is_empty());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn wait_for_proto_envelopes(&self, count: usize, timeout: Duration) -> Vec<Envelope> {
        self.state
            .record
            .wait_until(timeout, |record| record.envelopes.len() >= count);
        self.proto_envelopes()
    }

    /// How much has been read so far.
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// # let agent = loggregator::spy::SpyAgent::start(&certs)?;
    /// assert_eq!(agent.counts().envelopes, 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn counts(&self) -> SpyCounts {
        self.state.record.look(|record| record.counts)
    }

    /// Waits until at least `envelopes` envelopes have been read, at most
    /// `timeout`; returns the counts then, so a caller can compare.
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// # let agent = loggregator::spy::SpyAgent::builder().count_only().start(&certs)?;
    /// let counts = agent.wait_for_count(0, std::time::Duration::from_secs(1));
    /// assert_eq!(counts.envelopes, 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn wait_for_count(&self, envelopes: u64, timeout: Duration) -> SpyCounts {
        self.state
            .record
            .wait_until(timeout, |record| record.counts.envelopes >= envelopes);
        self.counts()
    }

    /// Reads at most `per_second` envelopes a second from now on, as an agent
    /// that cannot keep up; `None` reads as fast as it can. The spy sleeps
    /// on its one server thread to keep the rate, so the client's writes
    /// back up behind HTTP/2 flow control just as they do against a slow agent.
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// # let agent = loggregator::spy::SpyAgent::start(&certs)?;
    /// agent.set_read_rate(Some(10_000));
    /// agent.set_read_rate(None);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_read_rate(&self, per_second: Option<u64>) {
        self.state.pacing.set_rate(per_second);
    }

    /// Reads each stream at most `per_second` envelopes a second, each at
    /// its own pace and side by side, as a real agent does (it reads each
    /// stream in a goroutine of its own); `None` reads as fast as it can.
    /// A client writing on two streams can then deliver twice as much as on
    /// one. The streams wait without holding the server's thread, and
    /// HTTP/2 flow control backs up the client's writes on each.
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// # let agent = loggregator::spy::SpyAgent::start(&certs)?;
    /// agent.set_stream_read_rate(Some(300_000));
    /// agent.set_stream_read_rate(None);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_stream_read_rate(&self, per_second: Option<u64>) {
        self.state.pacing.set_stream_rate(per_second);
    }

    /// Count-only: whether each batch is also decoded, every envelope of
    /// it, and dropped, as a real agent decodes what it reads (it then
    /// forwards it, which costs it more). Off by default: counting alone
    /// leaves the machine's CPU to the client being measured; on, the
    /// agent reads at a pace closer to a real one's.
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// let agent = loggregator::spy::SpyAgent::builder().count_only().start(&certs)?;
    /// agent.set_decoding(true);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_decoding(&self, decode: bool) {
        self.state.decode.store(decode, Ordering::Relaxed);
    }

    /// Waits until at least `count` streams have ended, at most `timeout`;
    /// returns whether they had.
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// # let agent = loggregator::spy::SpyAgent::start(&certs)?;
    /// assert!(agent.wait_for_streams_ended(0, std::time::Duration::from_secs(1)));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn wait_for_streams_ended(&self, count: u64, timeout: Duration) -> bool {
        self.state
            .record
            .wait_until(timeout, |record| record.streams_ended >= count)
    }
}

impl Drop for SpyAgent {
    fn drop(&mut self) {
        self.shutdown();
    }
}
