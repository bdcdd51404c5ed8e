//! Arbitrary bytes as the CA, certificate and key PEM at once: a typed error
//! or a config, never a panic (gRPC's C core would abort on some of them).
//! Seeded with a CA, certificate and key in one text, the one input that is
//! valid for all three, mutations reach deep into PEM and DER parsing.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|pem: &[u8]| {
    if let Ok(tls) = loggregator::TlsConfig::from_pem(pem, pem, pem) {
        let _ = format!("{tls:?}");
    }
});
