//! The panic hook, from child processes that panic: a panic hook is the
//! process's, and a panic on the main thread ends it. This binary is its
//! own child: run with `LOGGREGATOR_PANIC_CHILD` set, it plays that
//! scenario against the agent the parent names, and panics; run without,
//! it runs the tests below (`cargo test --test panic_hook [FILTER]`).
//!
//! Abort, twice. Cargo sets the panic strategy per profile, for every
//! crate, so one test builds this binary again with `cargo rustc --test
//! panic_hook -- -C panic=abort` (only this crate: the dependencies built
//! for unwinding link into it, as the standard library does), in a target
//! directory of its own linked to this build's (no lock to wait for, no
//! dependency built again; bounded in time), and runs its children. And "abort" children of the usual build install, before the
//! hook under test, a hook that aborts the process: as with `panic =
//! "abort"`, nothing runs after the hooks, no unwinding, no destructor, no
//! close.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::panic::PanicHookInfo;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use loggregator::proto::envelope::Envelope as Received;
use loggregator::proto::envelope::log::Type;
use loggregator::spy::{SpyAgent, TestCerts};
use loggregator::{Envelope, IngressClient, PanicHook, SourceInfo, TlsConfig};

const CHILD: &str = "LOGGREGATOR_PANIC_CHILD";
const WAIT: Duration = Duration::from_secs(30);
/// SIGABRT, what `std::process::abort` and `panic = "abort"` end a process with.
const SIGABRT: i32 = 6;

fn main() {
    if let Ok(scenario) = std::env::var(CHILD) {
        return child::run(&scenario);
    }
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    let tests: &[(&str, fn())] = &[
        (
            "a_panic_on_the_main_thread_reaches_the_agent_whole",
            main_thread,
        ),
        (
            "a_panic_on_a_worker_thread_reaches_the_agent_before_exit",
            worker_thread,
        ),
        (
            "built_with_panic_abort_the_agent_has_each_panic_before_the_abort",
            real_abort,
        ),
        (
            "with_abort_after_the_hook_a_main_thread_panic_still_arrives",
            main_thread_abort,
        ),
        (
            "with_abort_after_the_hook_a_worker_panic_still_arrives",
            worker_thread_abort,
        ),
        (
            "a_hook_of_a_closed_client_neither_waits_nor_panics",
            closed_client,
        ),
        (
            "a_previous_hook_that_panics_aborts_after_the_log_arrived",
            previous_hook_panics,
        ),
        (
            "the_hooks_of_several_clients_each_send_once",
            several_clients,
        ),
        (
            "a_panic_larger_than_a_batch_is_cut_to_fit_and_counted",
            oversized,
        ),
        ("panics_caught_in_a_pool_are_each_sent", catch_unwind_pool),
        (
            "an_agent_that_is_away_costs_at_most_the_flush_timeout",
            agent_away,
        ),
    ];
    // The few libtest flags tools pass: the list, exact names, ignored
    // tests (there are none).
    let flag = |name: &str| std::env::args().any(|arg| arg == name);
    let exact = flag("--exact");
    let chosen: Vec<_> = tests
        .iter()
        .filter(|(name, _)| {
            filters.is_empty()
                || filters.iter().any(|f| {
                    if exact {
                        name == f
                    } else {
                        name.contains(f.as_str())
                    }
                })
        })
        .filter(|_| !flag("--ignored"))
        .collect();
    if flag("--list") {
        for (name, _) in &chosen {
            println!("{name}: test");
        }
        return;
    }
    let mut failed = Vec::new();
    println!(
        "running {} test{}",
        chosen.len(),
        if chosen.len() == 1 { "" } else { "s" }
    );
    for (name, test) in chosen {
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(test);
        let verdict = if outcome.is_ok() { "ok" } else { "FAILED" };
        println!("test {name} ... {verdict} ({:?})", started.elapsed());
        if outcome.is_err() {
            failed.push(*name);
        }
    }
    if !failed.is_empty() {
        println!("failures: {failed:?}");
        std::process::exit(101);
    }
    println!("test result: ok");
}

/// A spy agent and the certificates a child reaches it with.
struct Agent {
    certs: TestCerts,
    spy: SpyAgent,
}

impl Agent {
    fn start() -> Agent {
        let certs = TestCerts::generate().unwrap();
        let spy = SpyAgent::start(&certs).unwrap();
        Agent { certs, spy }
    }

    /// Runs `scenario` in a child and waits, bounded, until it is gone.
    fn child(&self, scenario: &str) -> Child {
        self.child_of(&std::env::current_exe().unwrap(), scenario)
    }

    /// Runs `scenario` in a child of the program `exe`.
    fn child_of(&self, exe: &std::path::Path, scenario: &str) -> Child {
        let child = Command::new(exe)
            .env(CHILD, scenario)
            .env("AGENT_ADDR", self.spy.addr())
            .env("AGENT_CA", self.certs.ca_file())
            .env("AGENT_CERT", self.certs.client_cert_file())
            .env("AGENT_KEY", self.certs.client_key_file())
            .env("RUST_BACKTRACE", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (status, stdout, stderr) = wait_bounded(child, WAIT);
        let Some(status) = status else {
            panic!(
                "the child {scenario} did not end within {WAIT:?}: killed\nstdout: {stdout}\nstderr: {stderr}"
            );
        };
        Child {
            status,
            stdout,
            stderr,
            received: self.spy.proto_envelopes(),
        }
    }
}

/// A child that is gone, and what the agent had by then.
struct Child {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    received: Vec<Received>,
}

impl Child {
    fn logs(&self) -> Vec<&Received> {
        self.received.iter().filter(|e| e.has_log()).collect()
    }

    fn panic_counters(&self) -> Vec<&Received> {
        self.received
            .iter()
            .filter(|e| e.has_counter() && e.counter().name == loggregator::PANIC_COUNTER)
            .collect()
    }

    /// The one panic log, checked against what Rust's own hook printed
    /// after it: the same first lines, every frame of Rust's backtrace.
    fn the_panic_log(&self, thread: &str, message: &str) -> String {
        let logs = self.logs();
        assert_eq!(logs.len(), 1, "{}", self.describe());
        let log = logs[0];
        assert_eq!(log.log().type_.enum_value(), Ok(Type::ERR));
        assert_eq!(log.source_id, "panicking-child");
        let payload = String::from_utf8(log.log().payload.clone()).unwrap();
        let first = format!("thread '{thread}' panicked at tests/panic_hook.rs:");
        assert!(payload.starts_with(&first), "{payload}");
        let (head, backtrace) = payload
            .split_once("\nstack backtrace:\n")
            .unwrap_or_else(|| panic!("no backtrace: {payload}"));
        assert!(head.ends_with(&format!(":\n{message}")), "{head}");
        // Rust's own hook names the thread the same, and may add its id.
        let at = head.split_once(" panicked at ").unwrap().1;
        assert!(
            self.stderr.contains(&format!(" panicked at {at}"))
                && self.stderr.contains(&format!("thread '{thread}'")),
            "Rust printed the same: {}",
            self.stderr
        );
        assert!(!payload.contains("backtrace cut"), "{payload}");
        let frames = rust_frames(&self.stderr);
        assert!(frames.len() >= 3, "Rust's backtrace: {}", self.stderr);
        for frame in frames {
            assert!(backtrace.contains(&frame), "{frame} in {backtrace}");
        }
        let counters = self.panic_counters();
        assert_eq!(counters.len(), 1, "{}", self.describe());
        assert_eq!(counters[0].counter().delta, 1);
        assert_eq!(counters[0].counter().total, 0);
        payload
    }

    fn describe(&self) -> String {
        let received: Vec<String> = self
            .received
            .iter()
            .map(|e| Envelope::from_proto(e.clone()).to_string())
            .collect();
        format!(
            "status {:?}\nstdout: {}\nstderr: {}\nreceived: {received:#?}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// The function names of the backtrace Rust's own hook printed
/// (`RUST_BACKTRACE=1`: lines `  N: name`).
fn rust_frames(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|line| {
            let (number, name) = line.trim_start().split_once(": ")?;
            number.parse::<u32>().ok()?;
            Some(name.to_string())
        })
        .collect()
}

fn main_thread() {
    let agent = Agent::start();
    let child = agent.child("main");
    assert_eq!(child.status.code(), Some(101), "{}", child.describe());
    let payload = child.the_panic_log("main", "boom on main: 42");
    assert!(payload.contains("panic_hook::child::on_main"), "{payload}");
}

fn worker_thread() {
    let agent = Agent::start();
    let child = agent.child("worker");
    assert_eq!(child.status.code(), Some(0), "{}", child.describe());
    let payload = child.the_panic_log("worker-7", "boom on a worker");
    assert!(
        payload.contains("panic_hook::child::on_worker"),
        "{payload}"
    );
}

fn real_abort() {
    let exe = built_with_panic_abort();
    let agent = Agent::start();
    let child = agent.child_of(&exe, "main");
    assert_eq!(child.status.signal(), Some(SIGABRT), "{}", child.describe());
    assert!(
        child.stdout.contains("child: panic = abort"),
        "{}",
        child.describe()
    );
    child.the_panic_log("main", "boom on main: 42");

    let agent = Agent::start();
    let child = agent.child_of(&exe, "worker");
    assert_eq!(child.status.signal(), Some(SIGABRT), "{}", child.describe());
    child.the_panic_log("worker-7", "boom on a worker");
}

/// The longest the build of the `-C panic=abort` variant may take: only
/// this crate's test is compiled, a minute on a loaded machine.
const ABORT_BUILD: Duration = Duration::from_secs(300);

/// This test binary, built again with `-C panic=abort`. Cargo would wait
/// for the lock on the target directory, which the `cargo test` running
/// this holds, and a target directory of its own would build every
/// dependency again (gRPC's C core: minutes). So the build gets a target
/// directory of its own that links to what the running build made (its
/// dependencies are fresh there: cargo's records of them name paths
/// relative to the target directory), it takes no lock another cargo
/// holds, and it is bounded: past `ABORT_BUILD` it is killed and the test
/// fails with what cargo said.
fn built_with_panic_abort() -> std::path::PathBuf {
    let this = std::env::current_exe().unwrap();
    // <target>/<profile>/deps/panic_hook-<hash>
    let profile_dir = this.parent().unwrap().parent().unwrap();
    let target_dir = profile_dir.parent().unwrap();
    let profile_name = profile_dir.file_name().unwrap();
    let profile: &[&str] = match profile_name.to_str().unwrap() {
        // What `cargo test` builds with: the test profile, in debug/.
        "debug" => &[],
        "release" => &["--release"],
        other => &["--profile", other],
    };
    // Kept from run to run: the variant is built once while this crate
    // does not change.
    let own_target = target_dir.join("panic-abort");
    let own_profile = own_target.join(profile_name);
    // What the dependencies' freshness is judged by, and their artifacts.
    for kept in ["deps", ".fingerprint", "build"] {
        let from = profile_dir.join(kept);
        if from.is_dir() {
            link_tree(&from, &own_profile.join(kept)).unwrap();
        }
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let build = Command::new(cargo)
        .args([
            "rustc",
            "--offline",
            "--all-features",
            "--test",
            "panic_hook",
        ])
        .args(profile)
        .args(["--message-format", "json"])
        .arg("--manifest-path")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .arg("--target-dir")
        .arg(&own_target)
        .args(["--", "-C", "panic=abort"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (status, messages, errors) = wait_bounded(build, ABORT_BUILD);
    let status = status.unwrap_or_else(|| {
        panic!("building with panic=abort took over {ABORT_BUILD:?}: killed\n{errors}")
    });
    assert!(status.success(), "{errors}");
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["target"]["name"] == "panic_hook")
        .find_map(|message| message["executable"].as_str().map(std::path::PathBuf::from))
        .unwrap_or_else(|| panic!("no executable in {messages}"))
}

/// Makes every file of `from` a hard link in `to` (symbolic links stay
/// symbolic links), replacing what an earlier run linked to a file since
/// rebuilt: nothing is copied, and cargo writes new files rather than
/// into old ones, so `from` is never touched.
fn link_tree(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            link_tree(&source, &target)?;
            continue;
        }
        let linked = std::fs::symlink_metadata(&target);
        if kind.is_symlink() {
            if linked.is_err() {
                std::os::unix::fs::symlink(std::fs::read_link(&source)?, &target)?;
            }
        } else if linked
            .as_ref()
            .map_or(true, |m| m.ino() != entry.metadata().unwrap().ino())
        {
            if linked.is_ok() {
                std::fs::remove_file(&target)?;
            }
            std::fs::hard_link(&source, &target)?;
        }
    }
    Ok(())
}

/// Waits for `child` until `within` is over, reading its output meanwhile;
/// kills it if it overruns (its status is then `None`).
fn wait_bounded(
    mut child: std::process::Child,
    within: Duration,
) -> (Option<ExitStatus>, String, String) {
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = read(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = read(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (status, stdout.join().unwrap(), stderr.join().unwrap())
}

fn main_thread_abort() {
    let agent = Agent::start();
    let child = agent.child("main-abort");
    assert_eq!(child.status.signal(), Some(SIGABRT), "{}", child.describe());
    assert!(
        child.stderr.contains("the previous hook aborts"),
        "{}",
        child.describe()
    );
    child.the_panic_log("main", "boom on main: 42");
}

fn worker_thread_abort() {
    let agent = Agent::start();
    let child = agent.child("worker-abort");
    assert_eq!(child.status.signal(), Some(SIGABRT), "{}", child.describe());
    child.the_panic_log("worker-7", "boom on a worker");
}

fn closed_client() {
    let agent = Agent::start();
    let started = Instant::now();
    let child = agent.child("closed");
    assert_eq!(child.status.code(), Some(101), "{}", child.describe());
    assert!(
        child.stderr.contains("boom after close"),
        "the previous hook still ran: {}",
        child.describe()
    );
    assert!(!child.stderr.contains("panicked while processing panic"));
    assert!(child.logs().is_empty(), "{}", child.describe());
    assert!(started.elapsed() < WAIT / 2);
}

fn previous_hook_panics() {
    let agent = Agent::start();
    let child = agent.child("previous-panics");
    // Rust aborts at a panic inside a panic hook, without calling any hook again.
    assert_eq!(child.status.signal(), Some(SIGABRT), "{}", child.describe());
    assert!(
        child.stderr.contains("panicked while processing panic"),
        "{}",
        child.describe()
    );
    assert_eq!(child.logs().len(), 1, "{}", child.describe());
    assert_eq!(child.panic_counters().len(), 1, "{}", child.describe());
}

fn several_clients() {
    let agent = Agent::start();
    let child = agent.child("two-clients");
    assert_eq!(child.status.code(), Some(101), "{}", child.describe());
    let mut sources: Vec<&str> = child.logs().iter().map(|e| e.source_id.as_str()).collect();
    sources.sort_unstable();
    assert_eq!(sources, ["first", "second"], "{}", child.describe());
    let mut tags: Vec<&str> = child
        .panic_counters()
        .iter()
        .map(|e| e.tags["client"].as_str())
        .collect();
    tags.sort_unstable();
    assert_eq!(tags, ["a", "b"], "{}", child.describe());
    assert_eq!(
        child.stderr.matches("panicked at").count(),
        1,
        "Rust's own hook ran once: {}",
        child.stderr
    );
}

fn oversized() {
    let agent = Agent::start();
    let child = agent.child("oversized");
    assert_eq!(child.status.code(), Some(0), "{}", child.describe());
    let logs = child.logs();
    assert_eq!(logs.len(), 1, "{}", child.describe());
    let payload = String::from_utf8(logs[0].log().payload.clone()).unwrap();
    assert!(payload.starts_with("thread 'worker-7' panicked at tests/panic_hook.rs:"));
    assert!(payload.len() < 2048, "{}", payload.len());
    assert!(
        payload.ends_with(" of 100000 bytes and backtrace left off to fit one envelope]"),
        "{payload}"
    );
    assert!(
        child.stdout.contains("child: values_cut 1 too_large 0"),
        "{}",
        child.describe()
    );
    assert_eq!(child.panic_counters().len(), 1);
}

/// How many panics the pool child catches in each round.
const POOL_PANICS: usize = 20;

fn catch_unwind_pool() {
    let agent = Agent::start();
    let child = agent.child("pool");
    assert_eq!(child.status.code(), Some(0), "{}", child.describe());
    for round in ["queueing", "waiting"] {
        let logs = child
            .logs()
            .iter()
            .filter(|e| e.tags.get("round").map(String::as_str) == Some(round))
            .count();
        let counters = child
            .panic_counters()
            .iter()
            .filter(|e| e.tags.get("round").map(String::as_str) == Some(round))
            .count();
        assert_eq!(
            (logs, counters),
            (POOL_PANICS, POOL_PANICS),
            "{round}: {}",
            child.describe()
        );
    }
    for line in child.stdout.lines().filter(|l| l.contains("per panic")) {
        println!("    {line}");
    }
}

fn agent_away() {
    let agent = Agent::start();
    agent.spy.shutdown();
    let child = agent.child("away");
    assert_eq!(child.status.code(), Some(0), "{}", child.describe());
    let waited: u64 = child
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("child: the panic took ms "))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("{}", child.describe()));
    // The flush timeout of 300 ms; not the default 2 s, not forever.
    assert!(
        (300..1500).contains(&waited),
        "{waited} ms: {}",
        child.describe()
    );
}

/// What the children do.
mod child {
    use super::*;

    fn client() -> IngressClient {
        client_with(|builder| builder)
    }

    fn client_with(
        settings: impl FnOnce(loggregator::IngressClientBuilder) -> loggregator::IngressClientBuilder,
    ) -> IngressClient {
        let var = |name| std::env::var(name).unwrap();
        let tls =
            TlsConfig::from_files(var("AGENT_CA"), var("AGENT_CERT"), var("AGENT_KEY")).unwrap();
        let builder = IngressClient::builder()
            .addr(var("AGENT_ADDR"))
            .tls(tls)
            .source(SourceInfo::new("panicking-child", "0"));
        settings(builder).build().unwrap()
    }

    /// A hook that ends the process as `panic = "abort"` does after the
    /// hooks: at once, nothing unwound or dropped.
    fn install_abort() {
        let rusts_own = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info: &PanicHookInfo<'_>| {
            rusts_own(info);
            eprintln!("the previous hook aborts");
            std::process::abort();
        }));
    }

    pub fn run(scenario: &str) {
        if cfg!(panic = "abort") {
            println!("child: panic = abort");
        }
        match scenario {
            "main" => {
                PanicHook::new(client()).install().unwrap();
                on_main();
            }
            "worker" => {
                PanicHook::new(client()).install().unwrap();
                worker_then_exit();
            }
            "main-abort" => {
                install_abort();
                PanicHook::new(client()).install().unwrap();
                on_main();
            }
            "worker-abort" => {
                install_abort();
                PanicHook::new(client()).install().unwrap();
                worker_then_exit();
            }
            "closed" => {
                let client = client();
                PanicHook::new(client.clone()).install().unwrap();
                client.close(WAIT).unwrap();
                panic!("boom after close");
            }
            "previous-panics" => {
                std::panic::set_hook(Box::new(|_| panic!("the previous hook panics")));
                PanicHook::new(client()).install().unwrap();
                on_main();
            }
            "two-clients" => {
                for (source, tag) in [("first", "a"), ("second", "b")] {
                    let client = client_with(|b| b.tag("client", tag));
                    PanicHook::new(client)
                        .source(SourceInfo::new(source, "0"))
                        .install()
                        .unwrap();
                }
                on_main();
            }
            "oversized" => {
                let client = client_with(|b| b.batch_max_bytes(2048).queue_max_bytes(2048));
                PanicHook::new(client.clone()).install().unwrap();
                let worker = std::thread::Builder::new()
                    .name("worker-7".into())
                    .spawn(|| std::panic::panic_any("x".repeat(100_000)))
                    .unwrap();
                assert!(worker.join().is_err());
                let stats = client.stats();
                println!(
                    "child: values_cut {} too_large {}",
                    stats.values_cut, stats.dropped.too_large
                );
                std::process::exit(0);
            }
            "pool" => pool(),
            "away" => {
                let client = client();
                PanicHook::new(client)
                    .flush_timeout(Duration::from_millis(300))
                    .install()
                    .unwrap();
                // Symbols resolved now, so that the time measured is the wait.
                let _ = std::backtrace::Backtrace::force_capture().to_string();
                let started = Instant::now();
                let _ = std::thread::spawn(|| panic!("nobody listens")).join();
                println!("child: the panic took ms {}", started.elapsed().as_millis());
                std::process::exit(0);
            }
            other => panic!("no scenario {other}"),
        }
    }

    #[inline(never)]
    fn on_main() {
        panic!("boom on main: {}", 42);
    }

    #[inline(never)]
    fn on_worker() {
        panic!("boom on a worker");
    }

    /// A worker panics; the process exits as soon as it is joined, with
    /// no close and no destructor: only the hook can have delivered.
    fn worker_then_exit() {
        let worker = std::thread::Builder::new()
            .name("worker-7".into())
            .spawn(on_worker)
            .unwrap();
        assert!(worker.join().is_err());
        std::process::exit(0);
    }

    /// Panics caught on a worker, as a pool does, with the default flush
    /// timeout (each waits for the agent) and with zero (each only
    /// queues); prints the time each took.
    fn pool() {
        // Rust's own hook would print every panic: the test reads stdout.
        std::panic::set_hook(Box::new(|_| {}));
        // Measured from the second on: the first resolves the symbols of
        // frames not seen before, once per process.
        let per_panic = |work: &(dyn Fn() + Sync)| {
            std::thread::scope(|scope| {
                scope
                    .spawn(|| {
                        work();
                        let started = Instant::now();
                        (1..POOL_PANICS).for_each(|_| work());
                        started.elapsed() / (POOL_PANICS - 1) as u32
                    })
                    .join()
                    .unwrap()
            })
        };
        let caught = per_panic(&|| {
            let _ = std::panic::catch_unwind(|| panic!("no hook"));
        });
        println!("child: no hook of ours: {caught:?} per panic");
        let backtrace = per_panic(&|| {
            let _ = std::backtrace::Backtrace::force_capture().to_string();
        });
        println!("child: a backtrace alone: {backtrace:?} per panic");
        // Queueing first: each later hook also calls the earlier ones.
        for (round, timeout) in [
            ("queueing", Duration::ZERO),
            ("waiting", loggregator::DEFAULT_PANIC_FLUSH_TIMEOUT),
        ] {
            let client = client_with(|b| b.tag("round", round));
            PanicHook::new(client.clone())
                .flush_timeout(timeout)
                .install()
                .unwrap();
            let cost = per_panic(&|| {
                let _ = std::panic::catch_unwind(|| panic!("job failed"));
            });
            println!("child: {round} (flush_timeout {timeout:?}): {cost:?} per panic");
            client.close(WAIT).unwrap();
            // Later rounds' hooks chain to this one, whose client is closed.
        }
        std::process::exit(0);
    }
}
