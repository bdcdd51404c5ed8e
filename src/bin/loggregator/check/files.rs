//! The three files: readable, parsed, the key matching the certificate,
//! the certificate valid now with clientAuth usage, and chaining to the CA.

use std::path::Path;

use openssl::asn1::Asn1Time;
use openssl::pkey::{PKey, Private};
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::verify::X509VerifyFlags;
use openssl::x509::{X509, X509ExtendedKeyUsage, X509StoreContext};

use super::{Check, Status};
use crate::connection::ConnectionArgs;

/// A certificate expiring sooner than this is a warning.
const EXPIRY_WARNING_DAYS: i32 = 30;

/// The checks without which no TLS connection can be tried.
pub const NEEDED_TO_CONNECT: [&str; 4] = [
    "CA file",
    "certificate file",
    "key file",
    "key matches certificate",
];

pub fn check_files(connection: &ConnectionArgs) -> Vec<Check> {
    let mut checks = Vec::new();
    let ca = read_pem(&mut checks, "CA file", &connection.ca_file, |pem| {
        let certs = X509::stack_from_pem(pem)?;
        if certs.is_empty() {
            return Err("no certificate in it".into());
        }
        Ok(certs)
    });
    let cert = read_pem(
        &mut checks,
        "certificate file",
        &connection.cert_file,
        |pem| Ok(X509::from_pem(pem)?),
    );
    let key = read_pem(&mut checks, "key file", &connection.key_file, |pem| {
        Ok(PKey::private_key_from_pem(pem)?)
    });
    if let Some(ca) = &ca {
        let names: Vec<String> = ca.iter().map(subject).collect();
        if let Some(last) = checks.iter_mut().find(|check| check.name == "CA file") {
            last.detail = format!("{} ({})", last.detail, names.join("; "));
        }
    }
    let Some(cert) = cert else {
        for name in [
            "key matches certificate",
            "validity",
            "clientAuth usage",
            "chains to CA",
        ] {
            checks.push(Check::skip(name, "the certificate did not load"));
        }
        return checks;
    };
    checks.push(match &key {
        None => Check::skip("key matches certificate", "the key did not load"),
        Some(key) => key_matches(&cert, key),
    });
    checks.push(validity(&cert));
    checks.push(client_auth(&cert));
    checks.push(match &ca {
        None => Check::skip("chains to CA", "the CA file did not load"),
        Some(ca) => chains_to(&cert, ca, &connection.ca_file),
    });
    checks
}

type Parsed<T> = Result<T, Box<dyn std::error::Error>>;

fn read_pem<T>(
    checks: &mut Vec<Check>,
    name: &'static str,
    path: &Path,
    parse: impl FnOnce(&[u8]) -> Parsed<T>,
) -> Option<T> {
    let shown = path.display();
    let pem = match std::fs::read(path) {
        Ok(pem) => pem,
        Err(error) => {
            checks.push(Check::fail(
                name,
                format!("{shown}: {error}"),
                "give the path BOSH rendered for this job (for example \
                 /var/vcap/jobs/<job>/config/certs/...), readable by this user",
            ));
            return None;
        }
    };
    match parse(&pem) {
        Ok(parsed) => {
            checks.push(Check::ok(name, format!("{shown} read")));
            Some(parsed)
        }
        Err(error) => {
            checks.push(Check::fail(
                name,
                format!(
                    "{shown} is not a PEM {name}: {}",
                    first_line(&error.to_string())
                ),
                "check that the flags name the right files (CA, certificate, key) in PEM form",
            ));
            None
        }
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

fn subject(cert: &X509) -> String {
    cert.subject_name()
        .entries()
        .filter_map(|entry| {
            let key = entry.object().nid().short_name().ok()?;
            let value = entry.data().to_string().ok()?;
            Some(format!("{key}={value}"))
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn key_matches(cert: &X509, key: &PKey<Private>) -> Check {
    const NAME: &str = "key matches certificate";
    match cert.public_key() {
        Ok(public) if public.public_eq(key) => Check::ok(NAME, "the key is the certificate's"),
        _ => Check::fail(
            NAME,
            "the key file holds another certificate's key",
            "give the key issued with this certificate",
        ),
    }
}

fn validity(cert: &X509) -> Check {
    const NAME: &str = "validity";
    let Ok(now) = Asn1Time::days_from_now(0) else {
        return Check::skip(NAME, "the clock could not be read");
    };
    let (not_before, not_after) = (cert.not_before(), cert.not_after());
    if not_before.compare(&now).is_ok_and(|order| order.is_gt()) {
        return Check::fail(
            NAME,
            format!("not valid before {not_before}"),
            "check the VM's clock, or wait for the certificate's start",
        );
    }
    if not_after.compare(&now).is_ok_and(|order| order.is_lt()) {
        return Check::fail(
            NAME,
            format!("expired on {not_after}"),
            "rotate the certificate (bosh deploy with a new one from CredHub)",
        );
    }
    let days_left = now.diff(not_after).map(|diff| diff.days).unwrap_or(0);
    if days_left < EXPIRY_WARNING_DAYS {
        return Check::problem(
            NAME,
            Status::Warn,
            format!("expires on {not_after}, in {days_left} days"),
            "rotate the certificate before then",
        );
    }
    Check::ok(NAME, format!("valid until {not_after} ({days_left} days)"))
}

fn client_auth(cert: &X509) -> Check {
    const NAME: &str = "clientAuth usage";
    match cert.extended_key_usage() {
        // No extension: every usage is allowed.
        None => Check::ok(NAME, "no extended key usage limits it"),
        Some(usage) if usage.contains(X509ExtendedKeyUsage::SSL_CLIENT) => {
            Check::ok(NAME, "the certificate allows client authentication")
        }
        Some(_) => Check::fail(
            NAME,
            "the certificate lacks the clientAuth extended key usage; the agent refuses it",
            "issue it with extended_key_usage [client_auth] (a server-only certificate will not do)",
        ),
    }
}

fn chains_to(cert: &X509, ca: &[X509], ca_path: &Path) -> Check {
    const NAME: &str = "chains to CA";
    let verified = (|| -> Result<Result<(), String>, openssl::error::ErrorStack> {
        let mut store = X509StoreBuilder::new()?;
        for ca_cert in ca {
            store.add_cert(ca_cert.clone())?;
        }
        // Time has its own check; this one is about signatures only.
        store.set_flags(X509VerifyFlags::NO_CHECK_TIME)?;
        let store = store.build();
        let mut context = X509StoreContext::new()?;
        let chain: Stack<X509> = Stack::new()?;
        context.init(&store, cert, &chain, |context| {
            Ok(if context.verify_cert()? {
                Ok(())
            } else {
                Err(context.error().error_string().to_string())
            })
        })
    })();
    match verified {
        Ok(Ok(())) => Check::ok(NAME, format!("signed by {}", ca_path.display())),
        Ok(Err(reason)) => Check::fail(
            NAME,
            format!("not signed by the CA in {}: {reason}", ca_path.display()),
            "give the Loggregator CA that signed this certificate (loggregator_ca in CredHub)",
        ),
        Err(error) => Check::fail(NAME, format!("could not verify: {error}"), "see the error"),
    }
}
