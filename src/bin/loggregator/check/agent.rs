//! The agent: something listens at the address, the TLS handshake (the
//! agent's certificate against our CA and `--server-name`, ours against
//! the agent), then one event sent with the unary `Send` and confirmed.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use loggregator::Envelope;
use openssl::ssl::{HandshakeError, SslConnector, SslFiletype, SslMethod, SslVerifyMode};
use openssl::x509::X509;

use super::{Check, CheckArgs};

/// What OpenSSL says when a certificate's names do not match
/// (`X509_V_ERR_HOSTNAME_MISMATCH`).
const HOSTNAME_MISMATCH: i32 = 62;
/// HTTP/2's client preface and an empty SETTINGS frame: what the agent
/// answers only once it has accepted our certificate.
const HTTP2_PREFACE: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

pub fn check_agent(args: &CheckArgs, files_usable: bool) -> Vec<Check> {
    let connection = &args.connection;
    let addr = connection.agent_addr.as_str();
    let mut checks = Vec::new();
    let stream = match connect(addr, args) {
        Ok(stream) => {
            checks.push(Check::ok("agent listening", format!("connected to {addr}")));
            stream
        }
        Err(check) => {
            checks.push(check);
            for name in [
                "agent certificate",
                "server name",
                "our certificate",
                "send",
            ] {
                checks.push(Check::skip(name, "nothing to connect to"));
            }
            return checks;
        }
    };
    if !files_usable {
        for name in [
            "agent certificate",
            "server name",
            "our certificate",
            "send",
        ] {
            checks.push(Check::skip(name, "the files above cannot be used"));
        }
        return checks;
    }
    let handshake = handshake(stream, args);
    let delivered_possible = handshake
        .iter()
        .all(|check| check.status == super::Status::Ok);
    checks.extend(handshake);
    checks.push(if delivered_possible {
        send(args)
    } else {
        Check::skip("send", "the handshake FAILed")
    });
    checks
}

fn connect(addr: &str, args: &CheckArgs) -> Result<TcpStream, Check> {
    const NAME: &str = "agent listening";
    let resolved: Vec<SocketAddr> = match addr.to_socket_addrs() {
        Ok(resolved) => resolved.collect(),
        Err(error) => {
            return Err(Check::fail(
                NAME,
                format!("{addr} does not resolve: {error}"),
                "give --agent-addr as host:port (the agent listens at localhost:3458)",
            ));
        }
    };
    let mut last_error = None;
    for socket in &resolved {
        match TcpStream::connect_timeout(socket, args.timeout) {
            Ok(stream) => return Ok(stream),
            Err(error) => last_error = Some(error),
        }
    }
    let detail = match last_error {
        Some(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
            format!("nothing listens at {addr}; is the agent running?")
        }
        Some(error) => format!("cannot connect to {addr}: {error}"),
        None => format!("{addr} resolves to no address"),
    };
    Err(Check::fail(
        NAME,
        detail,
        "start the agent (monit summary / bpm list on the VM), or give its --agent-addr",
    ))
}

/// Every verification error OpenSSL met, kept while the handshake goes
/// on, so that one probe can tell all that is wrong.
type Verifications = Arc<Mutex<Vec<(i32, i32, String)>>>;

fn handshake(stream: TcpStream, args: &CheckArgs) -> Vec<Check> {
    let connection = &args.connection;
    let failure = |detail: String| {
        vec![Check::fail(
            "agent certificate",
            detail,
            "check that the address is the Loggregator agent's",
        )]
    };
    let errors: Verifications = Arc::default();
    let connector = (|| -> Result<SslConnector, openssl::error::ErrorStack> {
        let mut builder = SslConnector::builder(SslMethod::tls_client())?;
        builder.set_ca_file(&connection.ca_file)?;
        builder.set_certificate_chain_file(&connection.cert_file)?;
        builder.set_private_key_file(&connection.key_file, SslFiletype::PEM)?;
        builder.set_alpn_protos(b"\x02h2")?;
        Ok(builder.build())
    })();
    let connector = match connector {
        Ok(connector) => connector,
        Err(error) => return failure(format!("TLS set-up: {error}")),
    };
    let mut config = match connector.configure() {
        Ok(config) => config,
        Err(error) => return failure(format!("TLS set-up: {error}")),
    };
    let recorded = Arc::clone(&errors);
    config.set_verify_callback(SslVerifyMode::PEER, move |ok, context| {
        if !ok {
            let error = context.error();
            recorded.lock().unwrap().push((
                error.as_raw(),
                context.error_depth() as i32,
                error.error_string().to_string(),
            ));
        }
        // Go on whatever it is: the probe reports, the client refuses.
        true
    });
    let _ = stream.set_read_timeout(Some(args.timeout));
    let _ = stream.set_write_timeout(Some(args.timeout));
    let mut tls = match config.connect(&connection.server_name, stream) {
        Ok(tls) => tls,
        Err(HandshakeError::SetupFailure(error)) => return failure(format!("TLS set-up: {error}")),
        Err(HandshakeError::WouldBlock(_)) => {
            return vec![no_handshake(
                args,
                format!("none within {:?}", args.timeout),
            )];
        }
        Err(HandshakeError::Failure(broken)) if broken.error().ssl_error().is_none() => {
            // No TLS alert: the peer closed or broke the connection.
            return vec![no_handshake(
                args,
                handshake_reason(&broken.error().to_string()),
            )];
        }
        Err(HandshakeError::Failure(refused)) => {
            return vec![Check::fail(
                "our certificate",
                format!(
                    "the agent refused the TLS handshake: {}",
                    handshake_reason(&refused.error().to_string())
                ),
                "give the certificate and key the Loggregator CA signed for clients",
            )];
        }
    };
    let mut checks = Vec::new();
    let errors = errors.lock().unwrap().clone();
    let names = tls
        .ssl()
        .peer_certificate()
        .map(|cert| names(&cert))
        .unwrap_or_default();
    let trust_errors: Vec<&(i32, i32, String)> = errors
        .iter()
        .filter(|(code, ..)| *code != HOSTNAME_MISMATCH)
        .collect();
    checks.push(match trust_errors.first() {
        None => Check::ok("agent certificate", "signed by the CA in --ca-file"),
        Some((_, _, reason)) => Check::fail(
            "agent certificate",
            format!("the agent's certificate is not signed by the CA in --ca-file: {reason}"),
            "give the Loggregator CA the agent's certificate was signed by (loggregator_ca)",
        ),
    });
    let server_name = connection.server_name.as_str();
    checks.push(
        if errors.iter().any(|(code, ..)| *code == HOSTNAME_MISMATCH) {
            Check::fail(
                "server name",
                format!(
                    "the agent's certificate is not valid for {server_name}; it holds: {}",
                    names.join(", ")
                ),
                "give --server-name one of the names it holds (usually metron)",
            )
        } else {
            Check::ok(
                "server name",
                format!(
                    "{server_name} is on the agent's certificate ({})",
                    names.join(", ")
                ),
            )
        },
    );
    // With TLS 1.3 the agent judges our certificate after our side of
    // the handshake is done: its answer to HTTP/2's preface tells.
    // SSL_write writes the whole buffer unless partial writes are enabled.
    let answer = tls
        .ssl_write(HTTP2_PREFACE)
        .and_then(|_| tls.ssl_read(&mut [0; 64]));
    let refused_fix = "check that the certificate is signed by the CA the agent trusts, valid, with clientAuth usage";
    checks.push(match answer {
        Ok(read) if read > 0 => Check::ok("our certificate", "accepted by the agent"),
        Ok(_) => Check::fail(
            "our certificate",
            "refused by the agent: it closed the connection after the handshake",
            refused_fix,
        ),
        Err(error) if error.io_error().is_some_and(is_timeout) => Check::fail(
            "our certificate",
            format!("the agent did not answer within {:?}", args.timeout),
            "check the agent's health (its own log); a stalled agent takes no logs either",
        ),
        Err(error) => Check::fail(
            "our certificate",
            format!(
                "refused by the agent: {}",
                handshake_reason(&error.to_string())
            ),
            refused_fix,
        ),
    });
    checks
}

fn no_handshake(args: &CheckArgs, why: String) -> Check {
    Check::fail(
        "agent certificate",
        format!(
            "no TLS handshake from {}: {why}",
            args.connection.agent_addr
        ),
        "check that the address is the agent's gRPC port (3458, or 3459 behind a Forwarder Agent)",
    )
}

fn is_timeout(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// OpenSSL's reason, without the error stack's plumbing.
fn handshake_reason(error: &str) -> String {
    for known in ["alert", "certificate", "wrong version", "unknown ca"] {
        if let Some(position) = error.find(known) {
            let rest = &error[position..];
            let end = rest.find(':').unwrap_or(rest.len());
            return rest[..end].to_string();
        }
    }
    first_line(error).to_string()
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

/// The names a certificate holds: its DNS and IP alternative names, else
/// its common name.
fn names(cert: &X509) -> Vec<String> {
    let mut names = Vec::new();
    if let Some(alternatives) = cert.subject_alt_names() {
        for name in &alternatives {
            if let Some(dns) = name.dnsname() {
                names.push(dns.to_string());
            } else if let Some(ip) = name.ipaddress() {
                match ip.len() {
                    4 => names.push(
                        std::net::Ipv4Addr::from(<[u8; 4]>::try_from(ip).unwrap()).to_string(),
                    ),
                    16 => names.push(
                        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(ip).unwrap()).to_string(),
                    ),
                    _ => {}
                }
            }
        }
    }
    if names.is_empty() {
        for entry in cert
            .subject_name()
            .entries_by_nid(openssl::nid::Nid::COMMONNAME)
        {
            if let Ok(name) = entry.data().to_string() {
                names.push(name.to_string());
            }
        }
    }
    names
}

fn send(args: &CheckArgs) -> Check {
    const NAME: &str = "send";
    let connection = &args.connection;
    let fix = "see the checks above; then the agent's own log";
    // The client the other subcommands make, tags included.
    let client = match connection.client(false) {
        Ok(client) => client,
        Err(error) => return Check::fail(NAME, format!("client: {error}"), fix),
    };
    let source_id = connection
        .source_id
        .as_deref()
        .unwrap_or("loggregator-check");
    let instance_id = connection.instance_id.as_deref().unwrap_or("0");
    let event = Envelope::event(
        "loggregator check",
        "a test event sent by loggregator check",
    )
    .source(source_id, instance_id);
    let started = Instant::now();
    let sent = client.send(vec![event.into()], args.timeout);
    let round_trip = started.elapsed();
    let _ = client.close(args.timeout);
    match sent {
        Ok(()) => Check::ok(
            NAME,
            format!(
                "the agent confirmed an event titled \"loggregator check\" in {} ms",
                round_trip.as_millis()
            ),
        ),
        Err(error) => Check::fail(NAME, format!("not confirmed: {error}"), fix),
    }
}
