//! What the operator is told: a failed call's status with a hint when its
//! cause is recognisable, and a wait that ran out, named by the connection
//! it ran out on.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use grpcio::ConnectivityState;

use crate::error::Error;
use crate::sender::Stall;

use super::{ChannelSettings, GrpcTransport};

/// A connection the client left because it stopped answering.
pub(super) struct LeftConnection {
    /// Its number, counted as the sender loop counts connections.
    pub(super) number: u64,
    /// How old it was when it was left, and when that was.
    pub(super) age: Duration,
    pub(super) left_at: Instant,
    pub(super) was_connected: bool,
}

/// How many left connections are remembered: a wait outlives its
/// connection by at most one write or confirm timeout.
pub(super) const LEFT_REMEMBERED: usize = 8;

impl GrpcTransport {
    /// What a wait that ran out on `connection` says (see
    /// `Transport::stalled`).
    pub(super) fn describe_stall(&self, stall: Stall, connection: u64) -> Error {
        let addr = &self.settings.addr;
        let (what, waited) = match stall {
            Stall::Write(waited) => ("write not accepted", waited),
            Stall::Confirmation(waited) => ("the agent did not end a half-closed stream", waited),
            Stall::Close { waited } => {
                ("close's deadline passed: a write not yet accepted", waited)
            }
        };
        if connection != self.channels_left {
            return self.stalled_on_left(what, waited, connection);
        }
        // Named by how old it is, and whether it replaced one that was
        // left: a wait on a fresh connection says little about the agent.
        let age = self.channel_built.elapsed();
        let connection = match self.channels_left {
            0 => format!("a connection {age:.0?} old"),
            _ => format!("a connection {age:.0?} old, made after the one before stopped answering"),
        };
        let ready =
            self.channel.check_connectivity_state(false) == ConnectivityState::GRPC_CHANNEL_READY;
        let (status, hint) = if ready {
            (
                format!("{what} within {waited:?} on {connection}"),
                Some("the agent is not reading; it may be overloaded or stuck".to_string()),
            )
        } else if self.was_connected.load(Ordering::Relaxed) {
            (
                format!(
                    "{what} within {waited:?}: the connection to {addr} is down ({connection})"
                ),
                Some(
                    "it carried writes before: the agent may have restarted, or the network \
                     failed"
                        .to_string(),
                ),
            )
        } else {
            (
                format!("{what}: no TLS handshake from {addr} within {waited:?} ({connection})"),
                Some(format!(
                    "the connection was never established: whatever listens at {addr} does not \
                     complete a TLS handshake (not the agent's gRPC port, or a stuck agent)"
                )),
            )
        };
        Error::Agent {
            addr: addr.clone(),
            status,
            hint,
        }
    }

    /// A wait that ran out on a connection already left (another wait on
    /// it ran out first): described as that connection was, never as the
    /// one in use, which it says nothing about.
    fn stalled_on_left(&self, what: &str, waited: Duration, connection: u64) -> Error {
        let addr = &self.settings.addr;
        let left = self.left.iter().find(|left| left.number == connection);
        let status = match left {
            Some(left) => {
                let (age, ago) = (left.age, left.left_at.elapsed());
                let carried = if left.was_connected {
                    "it had carried writes"
                } else {
                    "it never carried a write"
                };
                format!(
                    "{what} within {waited:?} on a connection {age:.0?} old that stopped \
                     answering ({carried}) and was left {ago:.0?} ago"
                )
            }
            None => format!(
                "{what} within {waited:?} on a connection that stopped answering and was left"
            ),
        };
        Error::Agent {
            addr: addr.clone(),
            status,
            hint: Some("the agent is not reading; it may be overloaded or stuck".to_string()),
        }
    }
}

pub(super) fn agent_error(settings: &ChannelSettings, error: &grpcio::Error) -> Error {
    let (addr, server_name) = (settings.addr.as_str(), settings.tls.verified_name());
    let status = match error {
        grpcio::Error::RpcFailure(status) | grpcio::Error::RpcFinished(Some(status)) => {
            let code = format!("{:?}", status.code());
            let code = code.split_once('-').map_or(code.as_str(), |(_, name)| name);
            if status.message().is_empty() {
                code.to_string()
            } else {
                format!("{code}: {}", status.message())
            }
        }
        other => other.to_string(),
    };
    let hint = hint_for(&status, addr, server_name);
    Error::Agent {
        addr: addr.to_string(),
        status,
        hint,
    }
}

/// Recognises the usual causes in gRPC's status text and says what to check.
fn hint_for(status: &str, addr: &str, server_name: &str) -> Option<String> {
    let lower = status.to_ascii_lowercase();
    let hint = if lower.contains("peer name") {
        format!(
            "the agent's certificate is not valid for `{server_name}`, the name the client \
             verified; set TlsConfig::server_name to a name the certificate holds"
        )
    } else if [
        "certificate verify failed",
        "certificate_verify_failed",
        "unable to get local issuer",
        "self-signed certificate",
        "self signed certificate",
        "bad signature",
        "invalid padding",
    ]
    .iter()
    .any(|sign| lower.contains(sign))
    {
        "the agent's certificate is not signed by the CA the client trusts (ca file)".to_string()
    } else if lower.contains("socket closed") || lower.contains("handshake") {
        "the agent closed the connection during the TLS handshake: it probably refused the \
         client certificate (not signed by the agent's CA, or without clientAuth usage)"
            .to_string()
    } else if lower.contains("connection refused") {
        format!("no agent is listening at {addr}")
    } else {
        return None;
    };
    Some(hint)
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::sender::Transport;

    fn status(error: Error) -> String {
        match error {
            Error::Agent { status, .. } => status,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_wait_that_ran_out_on_a_connection_left_since_describes_that_one() {
        let certs = crate::spy::TestCerts::generate().unwrap();
        // Nothing listens here; the channel connects only on a call, and
        // the test makes none.
        let mut transport = GrpcTransport::new(&ChannelSettings {
            addr: "127.0.0.1:9".to_string(),
            tls: certs.client_tls().unwrap(),
            keepalive: None,
            reconnect_initial: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(1),
        });
        transport.abandon_connection();
        let late = Stall::Confirmation(Duration::from_secs(10));
        let on_left = status(transport.stalled(late, 0));
        assert!(on_left.contains("was left"), "{on_left}");
        assert!(on_left.contains("never carried a write"), "{on_left}");
        let on_current = status(transport.stalled(late, 1));
        assert!(
            on_current.contains("made after the one before stopped answering"),
            "{on_current}"
        );
    }
}
