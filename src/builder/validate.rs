//! The checks `build()` makes before anything starts; each error names the
//! setting that is wrong and why.

use crate::error::{Error, Result};
use crate::policy::Overflow;
use crate::sender::LONGEST_WAIT;
use crate::tls::TlsConfig;

use super::IngressClientBuilder;
use super::defaults::{AGENT_MAX_MESSAGE_BYTES, MAX_QUEUE_CAPACITY, MAX_STREAMS, MIN_KEEPALIVE};

impl IngressClientBuilder {
    /// Checks every setting and returns the TLS material the channel is
    /// built with; the error names the first setting that is wrong.
    pub(super) fn validate(&self) -> Result<TlsConfig> {
        let Some(tls) = self.tls.clone() else {
            return Err(invalid(
                "tls",
                "is required: the agents accept only mutual TLS (see TlsConfig::from_files)",
            ));
        };
        check_addr(&self.addr).map_err(|problem| invalid("addr", &problem))?;
        let name = tls.verified_name();
        if name.is_empty() || name.contains(|c: char| c == '\0' || c.is_whitespace()) {
            return Err(invalid(
                "server_name",
                &format!("{name:?} is not a host name"),
            ));
        }
        self.check_limits()?;
        Ok(tls)
    }

    /// The checks that need no TLS material: sizes, waits and how the
    /// settings bound one another.
    fn check_limits(&self) -> Result<()> {
        if self.queue_capacity == 0 || self.queue_capacity > MAX_QUEUE_CAPACITY {
            return Err(invalid(
                "queue_capacity",
                &format!("must be from 1 to {MAX_QUEUE_CAPACITY}"),
            ));
        }
        let batch = self.batch_envelopes();
        if batch == 0 {
            return Err(invalid("batch_max_envelopes", "must be at least 1"));
        }
        if batch > self.queue_capacity {
            return Err(invalid(
                "batch_max_envelopes",
                &format!(
                    "{batch} is more than queue_capacity ({}); a batch could never fill",
                    self.queue_capacity
                ),
            ));
        }
        if self.batch_max_bytes < 1024 || self.batch_max_bytes > AGENT_MAX_MESSAGE_BYTES {
            return Err(invalid(
                "batch_max_bytes",
                &format!(
                    "{} is outside 1 KiB to {AGENT_MAX_MESSAGE_BYTES} bytes (the agent's message limit)",
                    self.batch_max_bytes
                ),
            ));
        }
        for (setting, value) in [
            ("flush_interval", self.flush_interval),
            ("write_timeout", self.write_timeout),
            ("close_on_drop_timeout", self.close_on_drop_timeout),
            ("confirm_interval", self.confirm_interval),
            ("pulse_interval", self.pulse_interval),
            ("reconnect_backoff", self.reconnect_initial),
            ("reconnect_backoff", self.reconnect_max),
        ] {
            if value.is_zero() || value > LONGEST_WAIT {
                return Err(invalid(
                    setting,
                    "must be longer than zero and at most a day",
                ));
            }
        }
        if self.reconnect_initial > self.reconnect_max {
            return Err(invalid(
                "reconnect_backoff",
                "the initial wait is longer than the maximum",
            ));
        }
        if self.streams == 0 || self.streams > MAX_STREAMS {
            return Err(invalid(
                "streams",
                &format!("must be from 1 to {MAX_STREAMS}"),
            ));
        }
        if self.queue_max_bytes < self.batch_max_bytes {
            return Err(invalid(
                "queue_max_bytes",
                &format!(
                    "{} is less than batch_max_bytes ({}); an envelope that fits a batch could never be queued",
                    self.queue_max_bytes, self.batch_max_bytes
                ),
            ));
        }
        if self.replay_buffer_bytes < self.batch_max_bytes {
            return Err(invalid(
                "replay_buffer_bytes",
                &format!(
                    "must hold at least one batch ({} bytes)",
                    self.batch_max_bytes
                ),
            ));
        }
        if self
            .keepalive
            .is_some_and(|k| k < MIN_KEEPALIVE || k > LONGEST_WAIT)
        {
            return Err(invalid(
                "keepalive",
                "must be from 10 s (the agents' limit) to a day",
            ));
        }
        if let Overflow::BlockFor(wait) = self.overflow {
            if wait > LONGEST_WAIT {
                return Err(invalid("overflow", "BlockFor waits at most a day"));
            }
        }
        if self.global_tags.iter().any(|(key, _)| key.is_empty()) {
            return Err(invalid("tag", "a tag key must not be empty"));
        }
        Ok(())
    }
}

fn invalid(setting: &'static str, problem: &str) -> Error {
    Error::Config {
        setting,
        problem: problem.to_string(),
    }
}

/// Accepts `host:port` (host a name, an IPv4 address or a bracketed IPv6
/// address) and `unix:/path`.
fn check_addr(addr: &str) -> std::result::Result<(), String> {
    if addr.contains(|c: char| c == '\0' || c.is_whitespace()) {
        return Err(format!("{addr:?} contains a NUL byte or white space"));
    }
    if let Some(path) = addr.strip_prefix("unix:") {
        return if path.is_empty() {
            Err(format!("{addr:?} names no socket path"))
        } else {
            Ok(())
        };
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("{addr:?} is not host:port"));
    };
    if host.is_empty() || (host.contains(':') && !(host.starts_with('[') && host.ends_with(']'))) {
        return Err(format!(
            "{addr:?} is not host:port (write IPv6 as [::1]:3458)"
        ));
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(()),
        _ => Err(format!("{addr:?} has no valid port (1 to 65535)")),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::check_addr;
    use crate::builder::{
        AGENT_MAX_MESSAGE_BYTES, DEFAULT_BATCH_MAX_BYTES, IngressClientBuilder, MAX_QUEUE_CAPACITY,
        MAX_STREAMS, MIN_KEEPALIVE,
    };
    use crate::error::Error;
    use crate::policy::{LONGEST_WAIT, Overflow};

    /// The setting `check_limits` names, or `None` if it accepts them all.
    fn refused(builder: IngressClientBuilder) -> Option<&'static str> {
        match builder.check_limits() {
            Ok(()) => None,
            Err(Error::Config { setting, .. }) => Some(setting),
            Err(other) => panic!("not a config error: {other:?}"),
        }
    }

    #[test]
    fn each_limit_names_its_setting() {
        let builder = IngressClientBuilder::default;
        let too_long = LONGEST_WAIT + Duration::from_secs(1);
        let cases = [
            ("queue_capacity", builder().queue_capacity(0)),
            (
                "queue_capacity",
                builder().queue_capacity(MAX_QUEUE_CAPACITY + 1),
            ),
            ("batch_max_envelopes", builder().batch_max_envelopes(0)),
            (
                "batch_max_envelopes",
                builder().queue_capacity(10).batch_max_envelopes(11),
            ),
            ("batch_max_bytes", builder().batch_max_bytes(1023)),
            (
                "batch_max_bytes",
                builder().batch_max_bytes(AGENT_MAX_MESSAGE_BYTES + 1),
            ),
            ("flush_interval", builder().flush_interval(Duration::ZERO)),
            ("write_timeout", builder().write_timeout(too_long)),
            (
                "close_on_drop_timeout",
                builder().close_on_drop_timeout(Duration::ZERO),
            ),
            ("confirm_interval", builder().confirm_interval(too_long)),
            ("pulse_interval", builder().pulse_interval(Duration::ZERO)),
            (
                "reconnect_backoff",
                builder().reconnect_backoff(Duration::ZERO, Duration::from_secs(1)),
            ),
            (
                "reconnect_backoff",
                builder().reconnect_backoff(Duration::from_secs(2), Duration::from_secs(1)),
            ),
            ("streams", builder().streams(0)),
            ("streams", builder().streams(MAX_STREAMS + 1)),
            (
                "queue_max_bytes",
                builder().queue_max_bytes(DEFAULT_BATCH_MAX_BYTES - 1),
            ),
            (
                "replay_buffer_bytes",
                builder().replay_buffer_bytes(DEFAULT_BATCH_MAX_BYTES - 1),
            ),
            (
                "keepalive",
                builder().keepalive(Some(MIN_KEEPALIVE - Duration::from_secs(1))),
            ),
            ("keepalive", builder().keepalive(Some(too_long))),
            ("overflow", builder().overflow(Overflow::BlockFor(too_long))),
            ("tag", builder().tag("", "value")),
        ];
        for (expected, builder) in cases {
            assert_eq!(refused(builder), Some(expected));
        }
    }

    #[test]
    fn the_limits_themselves_are_accepted() {
        let builder = IngressClientBuilder::default;
        for accepted in [
            builder(),
            // The default batch is shortened to fit a small queue.
            builder().queue_capacity(10),
            builder().queue_capacity(MAX_QUEUE_CAPACITY),
            builder()
                .batch_max_bytes(1024)
                .queue_max_bytes(1024)
                .replay_buffer_bytes(1024),
            builder()
                .batch_max_bytes(AGENT_MAX_MESSAGE_BYTES)
                .queue_max_bytes(usize::MAX)
                .replay_buffer_bytes(usize::MAX),
            builder().flush_interval(LONGEST_WAIT),
            builder().reconnect_backoff(Duration::from_secs(1), Duration::from_secs(1)),
            builder().streams(MAX_STREAMS),
            builder().keepalive(Some(MIN_KEEPALIVE)),
            builder().keepalive(None),
            builder().overflow(Overflow::BlockFor(LONGEST_WAIT)),
        ] {
            assert_eq!(refused(accepted.clone()), None, "{accepted:?}");
        }
    }

    #[test]
    fn tls_is_checked_before_anything_else() {
        let err = IngressClientBuilder::default()
            .queue_capacity(0)
            .validate()
            .unwrap_err();
        assert!(
            matches!(err, Error::Config { setting: "tls", .. }),
            "{err:?}"
        );
    }

    #[test]
    fn addresses() {
        for good in [
            "localhost:3458",
            "127.0.0.1:3459",
            "[::1]:3458",
            "metron:1",
            "unix:/tmp/a.sock",
        ] {
            assert_eq!(check_addr(good), Ok(()), "{good}");
        }
        for bad in [
            "localhost",
            ":3458",
            "localhost:0",
            "localhost:70000",
            "host:port",
            "::1:3458",
            "a b:1",
            "unix:",
            "x\0:1",
        ] {
            assert!(check_addr(bad).is_err(), "{bad}");
        }
    }
}
