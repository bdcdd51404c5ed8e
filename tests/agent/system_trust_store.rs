//! The client trusts the Loggregator CA it is given, alone: building and
//! using it never reads the system's trust store (every public CA, parsed
//! in PEM, most of a short-lived program's CPU), nor gRPC's default roots.
//!
//! Observed, not timed: a child process runs the client with both trust
//! stores pointed at named pipes (`SSL_CERT_FILE`, read by OpenSSL and
//! openssl-probe; `GRPC_DEFAULT_SSL_ROOTS_FILE_PATH`, by gRPC's C core).
//! Opening a pipe to read waits for a writer, so a thread here holds the
//! other end of each and counts the readers it finds: the child goes on
//! either way, and any reader is a read of a trust store.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;

use loggregator::{Envelope, IngressClient, TlsConfig};

use crate::common::{WAIT, setup};

const TEST_NAME: &str = "system_trust_store::the_client_reads_no_trust_store_but_its_ca";
/// Set in the child: the agent's address and the certificates' folder.
const CHILD_ADDR: &str = "LOGGREGATOR_TEST_TRUST_CHILD_ADDR";
const CHILD_CERTS: &str = "LOGGREGATOR_TEST_TRUST_CHILD_CERTS";

#[test]
fn the_client_reads_no_trust_store_but_its_ca() {
    if let (Ok(addr), Ok(certs)) = (std::env::var(CHILD_ADDR), std::env::var(CHILD_CERTS)) {
        return send_one_and_close(&addr, Path::new(&certs));
    }
    let setup = setup();
    let stores = tempfile::tempdir().expect("a folder");
    let system_store = Watched::new(stores.path().join("ssl-cert-file.pem"));
    let grpc_roots = Watched::new(stores.path().join("grpc-roots.pem"));
    let child = Command::new(std::env::current_exe().expect("own path"))
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD_ADDR, setup.agent.addr())
        .env(CHILD_CERTS, setup.certs.dir())
        .env("SSL_CERT_FILE", &system_store.path)
        .env("SSL_CERT_DIR", stores.path().join("no-such-dir"))
        .env("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", &grpc_roots.path)
        .output()
        .expect("run the child");
    let output = String::from_utf8_lossy(&child.stdout);
    assert!(child.status.success(), "the child failed: {output}");
    assert!(
        output.contains("1 passed"),
        "the child ran no test: {output}"
    );
    assert_eq!(
        system_store.opens(),
        0,
        "the client read the system trust store (SSL_CERT_FILE)"
    );
    assert_eq!(
        grpc_roots.opens(),
        0,
        "the client read gRPC's default roots"
    );
    let received = setup.agent.wait_for_envelopes(2, WAIT);
    assert_eq!(received.len(), 2, "the child's envelopes reached the agent");
}

/// What the child does, as a short-lived program would: a client from the
/// certificate files, one envelope emitted and one sent, closed.
fn send_one_and_close(addr: &str, certs: &Path) {
    let tls = TlsConfig::from_files(
        certs.join("ca.crt"),
        certs.join("client.crt"),
        certs.join("client.key"),
    )
    .expect("the agent's certificates");
    let client = IngressClient::builder()
        .addr(addr)
        .tls(tls)
        .build()
        .expect("a client");
    client
        .send(vec![Envelope::log("sent").into()], WAIT)
        .expect("a confirmed send");
    client.emit(Envelope::log("emitted"));
    client.close(WAIT).expect("a clean close");
}

/// A named pipe and a thread that writes to every reader it finds, and
/// counts how often: above zero, someone opened the pipe to read.
struct Watched {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    opens: mpsc::Receiver<usize>,
}

impl Watched {
    fn new(path: PathBuf) -> Watched {
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).expect("a named pipe");
        let stop = Arc::new(AtomicBool::new(false));
        let (report, opens) = mpsc::channel();
        thread::spawn({
            let (path, stop) = (path.clone(), stop.clone());
            move || {
                let mut opens = 0;
                // Each open returns when a reader opens the pipe; the
                // reader then reads text that is no certificate, and ends.
                while let Ok(mut pipe) = OpenOptions::new().write(true).open(&path) {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    opens += 1;
                    let _ = pipe.write_all(b"not a certificate\n");
                }
                let _ = report.send(opens);
            }
        });
        Watched { path, stop, opens }
    }

    /// How often a reader was found, once the child has exited.
    fn opens(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        // Our own reader lets the writer's pending open return.
        let _reader = OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(&self.path)
            .expect("open the pipe");
        self.opens
            .recv_timeout(WAIT)
            .expect("the pipe's writer ends")
    }
}
