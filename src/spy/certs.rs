//! Throwaway certificates shaped like a Loggregator deployment's: a CA, a
//! server certificate for `metron` and a client certificate, all RSA.

use std::io;
use std::path::{Path, PathBuf};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName, SubjectKeyIdentifier,
};
use openssl::x509::{X509, X509Builder, X509NameBuilder};

use crate::tls::TlsConfig;

/// A CA with a server and a client certificate, written as PEM files into a
/// temporary folder that is removed when this is dropped.
///
/// The server certificate names `metron`, `localhost` and `127.0.0.1` and
/// allows server authentication; the client certificate allows client
/// authentication. The client key is written in the PKCS#1 form
/// (`BEGIN RSA PRIVATE KEY`) that Cloud Foundry's tooling produces.
///
/// ```
/// let certs = loggregator::spy::TestCerts::generate()?;
/// assert!(certs.ca_file().exists());
/// let tls = certs.client_tls()?;
/// assert_eq!(tls.verified_name(), "metron");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct TestCerts {
    dir: tempfile::TempDir,
    ca_pem: Vec<u8>,
    server_cert_pem: Vec<u8>,
    server_key_pem: Vec<u8>,
    client_cert_pem: Vec<u8>,
    client_key_pem: Vec<u8>,
}

impl std::fmt::Debug for TestCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCerts")
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl TestCerts {
    /// Generates a new CA and both certificates.
    ///
    /// ```
    /// let certs = loggregator::spy::TestCerts::generate()?;
    /// assert!(certs.client_key_file().exists());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn generate() -> io::Result<TestCerts> {
        Self::generate_with_server_names(&["metron", "localhost"])
    }

    /// Like [`generate`](Self::generate), with other DNS names on the server
    /// certificate (127.0.0.1 is always included).
    ///
    /// ```
    /// let certs = loggregator::spy::TestCerts::generate_with_server_names(&["doppler"])?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn generate_with_server_names(names: &[&str]) -> io::Result<TestCerts> {
        Self::build(names).map_err(io::Error::other)
    }

    fn build(names: &[&str]) -> Result<TestCerts, Box<dyn std::error::Error + Send + Sync>> {
        let ca_key = rsa_key()?;
        let ca = ca_certificate(&ca_key)?;
        let server_key = rsa_key()?;
        let server = leaf_certificate(&ca, &ca_key, &server_key, Role::Server, names)?;
        let client_key = rsa_key()?;
        let client = leaf_certificate(&ca, &ca_key, &client_key, Role::Client, &[])?;
        let certs = TestCerts {
            dir: tempfile::Builder::new()
                .prefix("loggregator-certs")
                .tempdir()?,
            ca_pem: ca.to_pem()?,
            server_cert_pem: server.to_pem()?,
            server_key_pem: server_key.private_key_to_pem_pkcs8()?,
            client_cert_pem: client.to_pem()?,
            client_key_pem: client_key.rsa()?.private_key_to_pem()?,
        };
        for (name, pem) in [
            ("ca.crt", &certs.ca_pem),
            ("server.crt", &certs.server_cert_pem),
            ("server.key", &certs.server_key_pem),
            ("client.crt", &certs.client_cert_pem),
            ("client.key", &certs.client_key_pem),
        ] {
            std::fs::write(certs.dir.path().join(name), pem)?;
        }
        Ok(certs)
    }

    /// The folder holding the files.
    ///
    /// ```
    /// let certs = loggregator::spy::TestCerts::generate()?;
    /// assert!(certs.dir().join("ca.crt").exists());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `ca.crt`: the CA that signed both certificates.
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// assert!(certs.ca_file().ends_with("ca.crt"));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn ca_file(&self) -> PathBuf {
        self.dir().join("ca.crt")
    }

    /// `client.crt`: the client certificate.
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// assert!(certs.client_cert_file().ends_with("client.crt"));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn client_cert_file(&self) -> PathBuf {
        self.dir().join("client.crt")
    }

    /// `client.key`: the client private key (PKCS#1 PEM).
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// assert!(certs.client_key_file().ends_with("client.key"));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn client_key_file(&self) -> PathBuf {
        self.dir().join("client.key")
    }

    /// The CA certificate, PEM.
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// assert!(certs.ca_pem().starts_with(b"-----BEGIN CERTIFICATE-----"));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn ca_pem(&self) -> &[u8] {
        &self.ca_pem
    }

    /// The client certificate, PEM.
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// assert!(certs.client_cert_pem().starts_with(b"-----BEGIN CERTIFICATE-----"));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn client_cert_pem(&self) -> &[u8] {
        &self.client_cert_pem
    }

    /// The client private key, PKCS#1 PEM.
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// assert!(certs.client_key_pem().starts_with(b"-----BEGIN RSA PRIVATE KEY-----"));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn client_key_pem(&self) -> &[u8] {
        &self.client_key_pem
    }

    /// A client [`TlsConfig`] from the files, verifying the name `metron`.
    ///
    /// ```
    /// # let certs = loggregator::spy::TestCerts::generate()?;
    /// let tls = certs.client_tls()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn client_tls(&self) -> crate::Result<TlsConfig> {
        TlsConfig::from_files(
            self.ca_file(),
            self.client_cert_file(),
            self.client_key_file(),
        )
    }

    pub(crate) fn server_cert_pem(&self) -> &[u8] {
        &self.server_cert_pem
    }

    pub(crate) fn server_key_pem(&self) -> &[u8] {
        &self.server_key_pem
    }
}

#[derive(Clone, Copy)]
enum Role {
    Server,
    Client,
}

type CertResult<T> = Result<T, openssl::error::ErrorStack>;

fn rsa_key() -> CertResult<PKey<Private>> {
    PKey::from_rsa(Rsa::generate(2048)?)
}

fn builder(subject: &str, key: &PKey<Private>, days: u32) -> CertResult<X509Builder> {
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_text("CN", subject)?;
    let name = name.build();
    let mut serial = BigNum::new()?;
    serial.rand(127, MsbOption::MAYBE_ZERO, false)?;
    let mut cert = X509Builder::new()?;
    cert.set_version(2)?;
    let serial = serial.to_asn1_integer()?;
    cert.set_serial_number(&serial)?;
    cert.set_subject_name(&name)?;
    cert.set_pubkey(key)?;
    // A day of slack for clocks that disagree.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (not_before, not_after) = (
        Asn1Time::from_unix(now - 86_400)?,
        Asn1Time::days_from_now(days)?,
    );
    cert.set_not_before(&not_before)?;
    cert.set_not_after(&not_after)?;
    Ok(cert)
}

fn ca_certificate(key: &PKey<Private>) -> CertResult<X509> {
    // A name of its own, as two real CAs would have.
    let subject = format!("loggregator test CA {:08x}", fastrand::u32(..));
    let mut cert = builder(&subject, key, 3650)?;
    let name = {
        let mut name = X509NameBuilder::new()?;
        name.append_entry_by_text("CN", &subject)?;
        name.build()
    };
    cert.set_issuer_name(&name)?;
    cert.append_extension(BasicConstraints::new().critical().ca().build()?)?;
    cert.append_extension(
        KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build()?,
    )?;
    let key_id = SubjectKeyIdentifier::new().build(&cert.x509v3_context(None, None))?;
    cert.append_extension(key_id)?;
    cert.sign(key, MessageDigest::sha256())?;
    Ok(cert.build())
}

fn leaf_certificate(
    ca: &X509,
    ca_key: &PKey<Private>,
    key: &PKey<Private>,
    role: Role,
    names: &[&str],
) -> CertResult<X509> {
    let subject = match role {
        Role::Server => names.first().copied().unwrap_or("metron"),
        Role::Client => "loggregator test client",
    };
    let mut cert = builder(subject, key, 365)?;
    cert.set_issuer_name(ca.subject_name())?;
    cert.append_extension(BasicConstraints::new().build()?)?;
    cert.append_extension(
        KeyUsage::new()
            .critical()
            .digital_signature()
            .key_encipherment()
            .build()?,
    )?;
    let usage = match role {
        Role::Server => ExtendedKeyUsage::new().server_auth().build()?,
        Role::Client => ExtendedKeyUsage::new().client_auth().build()?,
    };
    cert.append_extension(usage)?;
    if let Role::Server = role {
        let mut san = SubjectAlternativeName::new();
        for name in names {
            san.dns(name);
        }
        san.ip("127.0.0.1");
        let san = san.build(&cert.x509v3_context(Some(ca), None))?;
        cert.append_extension(san)?;
    }
    cert.sign(ca_key, MessageDigest::sha256())?;
    Ok(cert.build())
}
