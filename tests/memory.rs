//! Memory the client holds, measured on the whole process in a test binary
//! of its own, one test at a time (no other test allocates beside it),
//! against the spy agent in a child process (its buffers are not the
//! client's).
//!
//! Each test measures in a child process of this binary run with glibc's
//! mmap threshold fixed (`MALLOC_MMAP_THRESHOLD_`): every buffer of 128 KiB
//! or more is then given back to the system when it is freed, so resident
//! memory shows what the process holds, gRPC's copies and the allocator's
//! rounding included. With glibc's default the threshold rises to the
//! largest buffer freed and freed buffers stay resident in its arenas for
//! reuse: memory the client no longer holds (docs/delivery.md). Run with
//! `MEMORY_TEST_CHILD=1` to measure under the default, printed, not asserted.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use loggregator::{Delivery, Envelope, IngressClient, TlsConfig};

#[allow(dead_code)]
#[path = "agent/fault_proxy.rs"]
mod fault_proxy;

const WAIT: Duration = Duration::from_secs(20);
/// How long a measuring child may take before it counts as hung.
const CHILD_LIMIT: Duration = Duration::from_secs(120);
/// Above the bound, what the assertions allow: sampling catches a peak
/// late, and the process's own small allocations move under it.
const MARGIN_PERCENT: u64 = 10;
/// Marks the measuring child.
const CHILD: &str = "MEMORY_TEST_CHILD";
/// Set in the child: glibc gives back every buffer of this size or more.
const MMAP_THRESHOLD: &str = "MALLOC_MMAP_THRESHOLD_";

/// The tests measure the whole process: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}
const MIB: u64 = 1 << 20;

/// Anonymous memory of this process (what it allocated), in bytes.
fn anonymous_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("RssAnon:"))
        .unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Samples anonymous memory until dropped, keeping the peak.
struct Peak {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    sampler: Option<std::thread::JoinHandle<()>>,
}

impl Peak {
    fn start() -> Peak {
        let peak = Arc::new(AtomicU64::new(anonymous_bytes()));
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (peak, stop) = (peak.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(anonymous_bytes(), Ordering::Relaxed);
                    // A sampling period, not a wait for something to happen.
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        Peak {
            peak,
            stop,
            sampler: Some(sampler),
        }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.sampler.take().unwrap().join().unwrap();
        self.peak.load(Ordering::Relaxed)
    }
}

/// In the parent: runs `test` in a child process with glibc's mmap
/// threshold fixed, fails if it fails or outlives `CHILD_LIMIT`, and
/// returns `false`. In the child: `true`, measure here.
fn measure_in_child(test: &str) -> bool {
    if std::env::var_os(CHILD).is_some() {
        return true;
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env(CHILD, "1")
        .env(MMAP_THRESHOLD, "131072")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read as it comes, so a child that prints much never waits on a full pipe.
    let readers = [
        read_all(child.stdout.take().unwrap()),
        read_all(child.stderr.take().unwrap()),
    ];
    let deadline = std::time::Instant::now() + CHILD_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{test} measured for more than {CHILD_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let printed: String = readers.map(|reader| reader.join().unwrap()).concat();
    println!("{printed}");
    assert!(status.success(), "{test} in its child: {printed}");
    assert!(
        printed.contains("1 passed"),
        "{test} did not run in its child: {printed}"
    );
    false
}

fn read_all(mut pipe: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

/// Checks `growth` against `bound` plus the margin, where the allocator
/// gives large buffers back; prints both either way.
fn check_bound(test: &str, growth: u64, bound: u64, detail: &str) {
    let fixed = std::env::var_os(MMAP_THRESHOLD).is_some();
    eprintln!(
        "{test}: grew {:.2} MiB over an idle client against a bound of {:.2} MiB ({:.2} of it; glibc mmap threshold {}); {detail}",
        growth as f64 / MIB as f64,
        bound as f64 / MIB as f64,
        growth as f64 / bound as f64,
        if fixed { "fixed" } else { "default" },
    );
    if fixed {
        assert!(
            growth <= bound + bound * MARGIN_PERCENT / 100,
            "{test}: grew {} KiB over an idle client, bound {} KiB: {detail}",
            growth >> 10,
            bound >> 10
        );
    }
}

/// The `loggregator-spy-agent` program, counting what it reads.
struct ChildAgent {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    addr: String,
    tls: TlsConfig,
}

impl ChildAgent {
    fn start(read_rate: u64) -> ChildAgent {
        let mut child = Command::new(env!("CARGO_BIN_EXE_loggregator-spy-agent"))
            .args(["--count-only", "--read-rate", &read_rate.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let addr = read_line(&mut stdout)
            .strip_prefix("addr ")
            .unwrap()
            .to_string();
        let certs =
            std::path::PathBuf::from(read_line(&mut stdout).strip_prefix("certs ").unwrap());
        let tls = TlsConfig::from_files(
            certs.join("ca.crt"),
            certs.join("client.crt"),
            certs.join("client.key"),
        )
        .unwrap();
        ChildAgent {
            child,
            stdin,
            stdout,
            addr,
            tls,
        }
    }

    /// Waits until the agent has read `envelopes`; how many it has read.
    fn wait_for(&mut self, envelopes: u64) -> u64 {
        writeln!(self.stdin, "wait {envelopes} {}", WAIT.as_secs()).unwrap();
        let counts = read_line(&mut self.stdout);
        let read: u64 = counts
            .strip_prefix("counts envelopes=")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap()
            .parse()
            .unwrap();
        assert!(read >= envelopes, "{counts}");
        read
    }
}

impl Drop for ChildAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_line(stdout: &mut BufReader<ChildStdout>) -> String {
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    line.trim().to_string()
}

#[test]
fn at_least_once_a_slow_agent_and_large_envelopes_hold_no_more_than_the_queue_and_replay_bounds() {
    const TEST: &str = "at_least_once_a_slow_agent_and_large_envelopes_hold_no_more_than_the_queue_and_replay_bounds";
    if !measure_in_child(TEST) {
        return;
    }
    let _alone = alone();
    // 12 envelopes a second: the replay buffer fills long before a stream
    // can be confirmed, and the queue fills behind it.
    let mut agent = ChildAgent::start(12);
    const QUEUE: u64 = 8 * MIB;
    const REPLAY: u64 = 4 * MIB;
    const BATCH: u64 = MIB;
    let client = IngressClient::builder()
        .addr(&agent.addr)
        .tls(agent.tls.clone())
        .delivery(Delivery::AtLeastOnce)
        .queue_max_bytes(QUEUE as usize)
        .replay_buffer_bytes(REPLAY as usize)
        .batch_max_bytes(BATCH as usize)
        .build()
        .unwrap();
    client.emit(Envelope::log("connect"));
    client.flush(WAIT).unwrap();
    agent.wait_for(1);
    let idle = anonymous_bytes();
    let peak = Peak::start();
    // Payloads just over a quarter of a batch: three to a batch, the
    // fourth left for the next, as sizes fall in real programs.
    let payload = vec![b'x'; 260 << 10];
    for n in 0..200 {
        client.emit(Envelope::log(payload.clone()).timestamp(n));
        if n == 100 {
            // Some of it is written and held for replay by now.
            agent.wait_for(10);
        }
    }
    let _ = client.close(Duration::from_millis(500));
    let peak = peak.stop();
    let stats = client.stats();
    assert_eq!(
        stats.emitted,
        stats.sent + stats.dropped.total(),
        "{stats:?}"
    );
    assert!(
        stats.dropped.queue_full > 0,
        "the queue was full: {stats:?}"
    );
    // The bound of docs/delivery.md: the queue's budget, the replay
    // buffer, gRPC's copy of the write in flight and room reserved for the
    // batch being built; no spare buffers (envelopes this large are not
    // kept). Plus the caller's own: the payload, the copy it hands to
    // `Envelope::log` and the envelope's encoding.
    let bound = QUEUE + REPLAY + 2 * BATCH + 3 * payload.len() as u64;
    check_bound(
        TEST,
        peak.saturating_sub(idle),
        bound,
        &format!("{stats:?}"),
    );
}

#[test]
fn unary_sends_to_a_stalled_agent_hold_no_encoded_batch_beyond_the_byte_budget() {
    const TEST: &str =
        "unary_sends_to_a_stalled_agent_hold_no_encoded_batch_beyond_the_byte_budget";
    if !measure_in_child(TEST) {
        return;
    }
    let _alone = alone();
    const THREADS: usize = 64;
    const PAYLOAD: usize = 900 << 10;
    const BUDGET: u64 = 16 * MIB;
    const CALL_TIMEOUT: Duration = Duration::from_secs(4);
    const STEADY_WINDOW: Duration = Duration::from_millis(300);
    let mut agent = ChildAgent::start(0);
    let proxy = fault_proxy::FaultProxy::start(&agent.addr);
    let client = IngressClient::builder()
        .addr(proxy.addr())
        .tls(agent.tls.clone())
        .queue_max_bytes(BUDGET as usize)
        .build()
        .unwrap();
    client
        .send(vec![Envelope::log("connect").build()], WAIT)
        .unwrap();
    agent.wait_for(1);
    // The agent stops reading: every call waits for its timeout, holding
    // its batch.
    proxy.set_mode(fault_proxy::Mode::Stall);
    // The callers' threads exist before the idle figure (their stacks are
    // theirs); then each builds its envelope, and all send at once.
    let [started, go, built] = [(); 3].map(|_| Arc::new(std::sync::Barrier::new(THREADS + 1)));
    let senders: Vec<_> = (0..THREADS)
        .map(|_| {
            let client = client.clone();
            let (started, go, built) = (started.clone(), go.clone(), built.clone());
            std::thread::spawn(move || {
                started.wait();
                go.wait();
                let envelope = Envelope::log(vec![b's'; PAYLOAD]).build();
                built.wait();
                client.send(vec![envelope], CALL_TIMEOUT)
            })
        })
        .collect();
    started.wait();
    let idle = anonymous_bytes();
    let peak = Peak::start();
    go.wait();
    built.wait();
    let sending = std::time::Instant::now();
    // The budget full: the calls that fit hold their encodings, the rest
    // wait for room holding their envelopes, until the calls time out.
    while client.stats().queued_bytes + 2 * PAYLOAD as u64 <= BUDGET {
        assert!(
            sending.elapsed() < CALL_TIMEOUT / 2,
            "the calls never filled the budget: {:?}",
            client.stats()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // The least over a while, well before the calls time out: a caller
    // copying its envelopes into a batch holds both for that moment only.
    let mut steady = anonymous_bytes();
    let sampled = std::time::Instant::now();
    while sampled.elapsed() < STEADY_WINDOW {
        std::thread::sleep(Duration::from_millis(5));
        steady = steady.min(anonymous_bytes());
    }
    assert!(
        sending.elapsed() < CALL_TIMEOUT,
        "the calls may have ended while sampled"
    );
    let failed = senders
        .into_iter()
        .map(|sender| sender.join().unwrap())
        .filter(Result::is_err)
        .count();
    let peak = peak.stop();
    let _ = client.close(Duration::from_millis(200));
    assert_eq!(failed, THREADS, "the agent read none of them");
    // The bound of docs/delivery.md: each caller holds its envelopes until
    // its batch has room in the budget, then their encoding in their place
    // (within the budget); gRPC carries each batch as it is. So the callers'
    // envelopes while they wait, and at most the budget more at a peak
    // (callers encoding at that moment hold both). The margin also covers
    // the callers' stacks, which grow inside `send` (about 2 MiB for 64
    // threads in a debug build).
    let callers = (THREADS * PAYLOAD) as u64;
    let detail = format!("{THREADS} callers' envelopes {} MiB", callers / MIB);
    check_bound(
        "unary, waiting",
        steady.saturating_sub(idle),
        callers,
        &detail,
    );
    check_bound(TEST, peak.saturating_sub(idle), callers + BUDGET, &detail);
}
