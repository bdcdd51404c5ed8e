//! Mutual-TLS material for the agent connection, validated before any connection is made.

use std::fmt;
use std::path::Path;

use openssl::error::ErrorStack;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{SslContext, SslMethod};
use openssl::x509::X509;
use openssl::x509::store::X509StoreBuilder;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// The name the Loggregator agents' certificates are issued for.
///
/// The agent listens on 127.0.0.1 but its certificate names `metron`, so the
/// client verifies this name unless told otherwise with
/// [`TlsConfig::server_name`].
pub const DEFAULT_SERVER_NAME: &str = "metron";

/// The CA, client certificate and client key used to reach the agent, plus
/// the name verified on the agent's certificate.
///
/// Everything is checked when the config is made: the files exist, hold PEM,
/// the CA holds at least one certificate, and the key belongs to the
/// certificate. `Debug` never prints the key, and the bytes of every copy
/// of it the client holds are zeroed when dropped.
///
/// ```no_run
/// use loggregator::TlsConfig;
///
/// let tls = TlsConfig::from_files(
///     "/var/vcap/jobs/my-job/config/certs/loggregator_ca.crt",
///     "/var/vcap/jobs/my-job/config/certs/loggregator_agent.crt",
///     "/var/vcap/jobs/my-job/config/certs/loggregator_agent.key",
/// )?
/// .server_name("metron");
/// # Ok::<(), loggregator::Error>(())
/// ```
#[derive(Clone)]
pub struct TlsConfig {
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    /// Zeroed when dropped, like every copy of the key the client makes.
    key_pem: Zeroizing<Vec<u8>>,
    server_name: String,
}

impl TlsConfig {
    /// Reads and validates the CA bundle, the client certificate (chain) and
    /// the client private key (PKCS#1 or PKCS#8 PEM).
    ///
    /// Errors name the file and the problem: [`Error::Io`] for a missing or
    /// unreadable file, [`Error::Pem`] for text that is not a usable
    /// certificate or key, [`Error::KeyMismatch`] for a key that does not
    /// belong to the certificate.
    ///
    /// ```
    /// use loggregator::{Error, TlsConfig};
    ///
    /// let err = TlsConfig::from_files("missing-ca.crt", "client.crt", "client.key").unwrap_err();
    /// assert!(matches!(err, Error::Io { .. }));
    /// assert!(err.to_string().contains("missing-ca.crt"));
    /// ```
    pub fn from_files(
        ca: impl AsRef<Path>,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<TlsConfig> {
        let (ca, cert, key) = (ca.as_ref(), cert.as_ref(), key.as_ref());
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| Error::Io {
                path: path.to_path_buf(),
                source,
            })
        };
        let (ca_pem, cert_pem) = (read(ca)?, read(cert)?);
        let key_pem = read(key)?;
        Self::validated(
            Pem::new(ca_pem, ca.display().to_string()),
            Pem::new(cert_pem, cert.display().to_string()),
            Pem::new(key_pem, key.display().to_string()),
        )
    }

    /// Validates PEM text held in memory, for example from CredHub or the
    /// environment. Errors say which argument is wrong (`CA certificate`,
    /// `client certificate`, `client key`).
    ///
    /// ```
    /// use loggregator::{Error, TlsConfig};
    ///
    /// let err = TlsConfig::from_pem("not pem", "", "").unwrap_err();
    /// assert!(matches!(err, Error::Pem { .. }));
    /// assert!(err.to_string().starts_with("CA certificate"));
    /// ```
    pub fn from_pem(
        ca: impl Into<Vec<u8>>,
        cert: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> Result<TlsConfig> {
        Self::validated(
            Pem::new(ca.into(), "CA certificate"),
            Pem::new(cert.into(), "client certificate"),
            Pem::new(key.into(), "client key"),
        )
    }

    /// Sets the name verified on the agent's certificate (default
    /// [`DEFAULT_SERVER_NAME`], `metron`), whatever address is dialled.
    ///
    /// ```no_run
    /// # let tls = loggregator::TlsConfig::from_files("ca.crt", "c.crt", "c.key")?;
    /// let tls = tls.server_name("doppler");
    /// assert_eq!(tls.verified_name(), "doppler");
    /// # Ok::<(), loggregator::Error>(())
    /// ```
    pub fn server_name(mut self, name: impl Into<String>) -> TlsConfig {
        self.server_name = name.into();
        self
    }

    /// The name that will be verified on the agent's certificate.
    ///
    /// ```no_run
    /// # let tls = loggregator::TlsConfig::from_files("ca.crt", "c.crt", "c.key")?;
    /// assert_eq!(tls.verified_name(), "metron");
    /// # Ok::<(), loggregator::Error>(())
    /// ```
    pub fn verified_name(&self) -> &str {
        &self.server_name
    }

    pub(crate) fn ca_pem(&self) -> &[u8] {
        &self.ca_pem
    }

    pub(crate) fn cert_pem(&self) -> &[u8] {
        &self.cert_pem
    }

    pub(crate) fn key_pem(&self) -> &[u8] {
        &self.key_pem
    }

    fn validated(mut ca: Pem, mut cert: Pem, mut key: Pem) -> Result<TlsConfig> {
        let roots = ca.certificates()?;
        let chain = cert.certificates()?;
        let private_key = key.private_key()?;
        let leaf_key = chain[0].public_key().map_err(|e| cert.problem(e))?;
        if !leaf_key.public_eq(&private_key) {
            return Err(Error::KeyMismatch {
                certificate: cert.origin.clone(),
                key: key.origin.clone(),
            });
        }
        check_with_tls_library(&roots, &chain, &private_key)?;
        Ok(TlsConfig {
            ca_pem: std::mem::take(&mut ca.bytes),
            cert_pem: std::mem::take(&mut cert.bytes),
            key_pem: Zeroizing::new(std::mem::take(&mut key.bytes)),
            server_name: DEFAULT_SERVER_NAME.to_string(),
        })
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca_pem", &format_args!("<{} bytes>", self.ca_pem.len()))
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// PEM text and where it came from, for error messages.
struct Pem {
    bytes: Vec<u8>,
    origin: String,
}

impl Drop for Pem {
    /// A key that failed validation is zeroed too.
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.bytes);
    }
}

impl Pem {
    fn new(bytes: Vec<u8>, origin: impl Into<String>) -> Pem {
        Pem {
            bytes,
            origin: origin.into(),
        }
    }

    fn problem(&self, problem: impl fmt::Display) -> Error {
        Error::Pem {
            origin: self.origin.clone(),
            problem: problem.to_string(),
        }
    }

    /// Checks what gRPC's C core would otherwise trip over: it aborts on an
    /// interior NUL and silently ignores text without PEM markers.
    fn check_text(&self) -> Result<()> {
        if self.bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(self.problem("is empty"));
        }
        if let Some(offset) = self.bytes.iter().position(|&b| b == 0) {
            return Err(self.problem(format!("contains a NUL byte at offset {offset}")));
        }
        if !self.bytes.windows(11).any(|w| w == b"-----BEGIN ") {
            return Err(self.problem("is not PEM (no `-----BEGIN` line)"));
        }
        Ok(())
    }

    fn certificates(&self) -> Result<Vec<X509>> {
        self.check_text()?;
        let certs = X509::stack_from_pem(&self.bytes)
            .map_err(|e| self.problem(format!("is not a valid PEM certificate: {e}")))?;
        if certs.is_empty() {
            return Err(self.problem("holds no certificate"));
        }
        Ok(certs)
    }

    fn private_key(&self) -> Result<PKey<Private>> {
        self.check_text()?;
        PKey::private_key_from_pem(&self.bytes)
            .map_err(|e| self.problem(format!("is not a valid PEM private key: {e}")))
    }
}

/// Asks the TLS library to build a client context from the material, so that
/// anything it would refuse later is refused now.
///
/// The context starts with an empty trust store and gets the CA alone: the
/// system's (every public CA, parsed from PEM) would cost a short-lived
/// program most of its CPU, and the client never trusts it.
fn check_with_tls_library(roots: &[X509], chain: &[X509], key: &PKey<Private>) -> Result<()> {
    let tls_error = |e: ErrorStack| Error::Tls(e.to_string());
    let mut context = SslContext::builder(SslMethod::tls_client()).map_err(tls_error)?;
    let mut trusted = X509StoreBuilder::new().map_err(tls_error)?;
    for root in roots {
        trusted.add_cert(root.clone()).map_err(tls_error)?;
    }
    context.set_cert_store(trusted.build());
    context.set_certificate(&chain[0]).map_err(tls_error)?;
    for intermediate in &chain[1..] {
        context
            .add_extra_chain_cert(intermediate.clone())
            .map_err(tls_error)?;
    }
    context.set_private_key(key).map_err(tls_error)?;
    context.check_private_key().map_err(tls_error)?;
    Ok(())
}
