//! Arbitrary bytes as CA, certificate and key PEM: a typed error or a config,
//! never a panic (gRPC's C core would abort on some of them).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|parts: (Vec<u8>, Vec<u8>, Vec<u8>)| {
    let (ca, cert, key) = parts;
    if let Ok(tls) = loggregator::TlsConfig::from_pem(ca, cert, key) {
        let _ = format!("{tls:?}");
    }
});
