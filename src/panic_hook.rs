//! A panic hook that sends a panic's message, location, thread and
//! backtrace as one log, counts it, and waits for the agent to have it
//! before the process can die.

use std::backtrace::Backtrace;
use std::cell::Cell;
use std::fmt::Write as _;
use std::panic::PanicHookInfo;
use std::time::{Duration, Instant};

use crate::client::IngressClient;
use crate::envelope::{Envelope, EnvelopeBuilder};
use crate::error::{Error, Result};
use crate::policy::Overflow;
use crate::queue::Pushed;
use crate::source::SourceInfo;

/// How long the hook waits, by default, for the agent to confirm a panic's
/// log and for what was queued before it to be written: long enough for a
/// healthy agent on the same VM, short enough that a process whose agent
/// is away still dies promptly.
///
/// ```
/// assert_eq!(loggregator::DEFAULT_PANIC_FLUSH_TIMEOUT, std::time::Duration::from_secs(2));
/// ```
pub const DEFAULT_PANIC_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest payload a panic's log has, in bytes: the size of the largest
/// log envelope Diego sends, which every agent and reader downstream takes.
/// Less when `batch_max_bytes` and the client's tags leave less room. What
/// does not fit is cut, backtrace first, and the cut is said in the payload.
///
/// ```
/// assert_eq!(loggregator::MAX_PANIC_LOG_BYTES, 61_440);
/// ```
pub const MAX_PANIC_LOG_BYTES: usize = 61_440;

/// The name of the counter the hook sends, delta 1, with each panic: a
/// dashboard can alert on it.
///
/// ```
/// assert_eq!(loggregator::PANIC_COUNTER, "panics");
/// ```
pub const PANIC_COUNTER: &str = "panics";

thread_local! {
    /// Set while the hook does its own work on this thread, so that it
    /// never runs inside itself.
    static REPORTING: Cell<bool> = const { Cell::new(false) };
}

/// Sends every panic of the process to Loggregator before the usual panic
/// message is printed: one Log envelope to stderr (`ERR`) whose payload is
/// what Rust's own hook prints (`thread '…' panicked at file:line:column:`
/// and the message) followed by a backtrace, captured whatever
/// `RUST_BACKTRACE` says, and a Counter [`PANIC_COUNTER`] with delta 1.
///
/// On a thread of the program the hook sends both with a unary `Send` and
/// waits, at most [`flush_timeout`](Self::flush_timeout), for the agent to
/// confirm them and for what was emitted before the panic to be written,
/// then calls the hook that was installed before it (Rust's own, which
/// prints the message to stderr, unless another was set). So the last
/// words are at the agent before the process can die, with `panic =
/// "abort"` too: nothing after the hook runs there, no destructor, no
/// close. A send that fails leaves the envelopes in the queue instead.
///
/// It never waits where waiting could hang: with a `flush_timeout` of
/// zero and on the client's own threads (the sender, gRPC's, the pulse:
/// they are what a wait would wait for) it only queues, or drops and
/// counts. After the client is closed both envelopes are counted in
/// [`Stats::emitted`](crate::Stats::emitted) and dropped as
/// [`Dropped::closed`](crate::Dropped::closed): a panic is never lost
/// unseen. It never runs inside itself, and it runs none of your code but
/// the previous hook. A log that would not fit [`MAX_PANIC_LOG_BYTES`] or
/// the client's `batch_max_bytes` (with its tags) is cut, the backtrace
/// first, says so at its end, and, once sent or queued, is counted in
/// [`Stats::values_cut`](crate::Stats::values_cut) (a dropped one is
/// counted dropped only).
///
/// Several hooks, of one client or of several, chain: each sends, then
/// calls the one installed before it. The installed hook keeps a handle to
/// the client for the rest of the process (Rust's panic hooks cannot be
/// taken out of the middle of a chain), so dropping your handles does not
/// close it: call [`IngressClient::close`] before exiting.
///
/// ```no_run
/// use std::time::Duration;
///
/// # let client: loggregator::IngressClient = unimplemented!();
/// loggregator::PanicHook::new(client.clone())
///     .flush_timeout(Duration::from_secs(2)) // the default; ZERO: queue only, never wait
///     .install()?; // chains the hook that was set before
/// # Ok::<(), loggregator::Error>(())
/// ```
#[derive(Debug)]
pub struct PanicHook {
    client: IngressClient,
    flush_timeout: Duration,
    source: Option<SourceInfo>,
}

impl PanicHook {
    /// A hook sending through `client`, waiting at most
    /// [`DEFAULT_PANIC_FLUSH_TIMEOUT`], with the client's default source.
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// let hook = loggregator::PanicHook::new(client);
    /// ```
    pub fn new(client: IngressClient) -> PanicHook {
        PanicHook {
            client,
            flush_timeout: DEFAULT_PANIC_FLUSH_TIMEOUT,
            source: None,
        }
    }

    /// The most a panicking thread waits for the agent (default
    /// [`DEFAULT_PANIC_FLUSH_TIMEOUT`], 2 s). `Duration::ZERO` only queues
    /// the envelopes: for a pool that catches panics and must not slow
    /// down, at the price of losing them if the process dies right after.
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// let hook = loggregator::PanicHook::new(client).flush_timeout(std::time::Duration::ZERO);
    /// ```
    pub fn flush_timeout(mut self, timeout: Duration) -> Self {
        self.flush_timeout = timeout;
        self
    }

    /// The source and instance ids of the envelopes (default: the client's
    /// default source, if any).
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// let hook = loggregator::PanicHook::new(client).source(loggregator::SourceInfo::new("svc", "0"));
    /// ```
    pub fn source(mut self, source: SourceInfo) -> Self {
        self.source = Some(source);
        self
    }

    /// Installs the hook for the rest of the process, in front of the one
    /// set before. Fails with [`Error::Config`] on a thread that is
    /// panicking (a destructor run by unwinding), where Rust cannot change
    /// hooks.
    ///
    /// ```no_run
    /// # let client: loggregator::IngressClient = unimplemented!();
    /// loggregator::PanicHook::new(client).install()?;
    /// # Ok::<(), loggregator::Error>(())
    /// ```
    pub fn install(self) -> Result<()> {
        if std::thread::panicking() {
            return Err(Error::Config {
                setting: "PanicHook::install",
                problem: "called on a thread that is panicking, where the panic hook cannot change"
                    .into(),
            });
        }
        // Taking the previous hook and setting this one are two steps: two
        // hooks of this crate installed at once must not both chain the same
        // previous one and lose each other.
        static INSTALLING: parking_lot::Mutex<()> = parking_lot::Mutex::new(());
        let _one_at_a_time = INSTALLING.lock();
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            self.report(info);
            previous(info);
        }));
        Ok(())
    }

    /// Sends what the panic left.
    fn report(&self, info: &PanicHookInfo<'_>) {
        not_within_itself(|| {
            let thread = std::thread::current();
            let location = info
                .location()
                .map_or_else(|| "an unknown location".to_string(), ToString::to_string);
            self.send(&Panic {
                thread: thread.name().unwrap_or("<unnamed>"),
                location: &location,
                message: message(info),
                backtrace: below_the_panic_machinery(&Backtrace::force_capture().to_string()),
            });
        });
    }

    fn send(&self, panic: &Panic<'_>) {
        let counter = self
            .stamp(Envelope::counter(PANIC_COUNTER).delta(1))
            .build();
        let empty = self.stamp(Envelope::log("").stderr()).build();
        let (counter_bytes, batch_max) = self.client.batch_room(&counter);
        let (log_bytes, _) = self.client.batch_room(&empty);
        // A payload of n bytes adds n, and at most 4 bytes to each of the
        // three lengths around it (the payload's, the log's, the envelope's).
        let room = batch_max.saturating_sub(counter_bytes + log_bytes + 3 * 4);
        let (payload, cut) = panic.payload(room.min(MAX_PANIC_LOG_BYTES));
        let log = self.stamp(Envelope::log(payload).stderr()).build();
        let envelopes = vec![log, counter];
        let log_kept = if self.flush_timeout.is_zero() || crate::on_own_thread() {
            self.queue(envelopes, Duration::ZERO)
        } else {
            self.send_and_flush(envelopes)
        };
        // A cut log that was dropped is counted dropped, not cut.
        if cut && log_kept {
            self.client.count_cut_values(1);
        }
    }

    /// Sends the envelopes and waits for what was queued before them;
    /// true if the log was sent or queued.
    fn send_and_flush(&self, envelopes: Vec<Envelope>) -> bool {
        let started = Instant::now();
        let left = || self.flush_timeout.saturating_sub(started.elapsed());
        let log_kept = match self.client.send(envelopes.clone(), self.flush_timeout) {
            Ok(()) => true,
            // Emitted on a closed client, they are dropped and counted
            // (reason `closed`): a panic is never lost unseen.
            Err(Error::Closed) => return self.queue(envelopes, Duration::ZERO),
            // Queued, it still goes out if the process lives on.
            Err(_) => self.queue(envelopes, left()),
        };
        // What the program said just before it panicked.
        let _ = self.client.flush(left());
        log_kept
    }

    /// Queues, waiting for room at most `wait`; true if the log (the first
    /// envelope) went into the queue.
    fn queue(&self, envelopes: Vec<Envelope>, wait: Duration) -> bool {
        let overflow = if wait.is_zero() {
            Overflow::DropNewest
        } else {
            Overflow::BlockFor(wait)
        };
        let mut log_queued = false;
        for (index, envelope) in envelopes.into_iter().enumerate() {
            let pushed = self.client.emit_as(envelope, overflow);
            if index == 0 {
                log_queued = pushed == Pushed::Queued;
            }
        }
        log_queued
    }

    fn stamp<K>(&self, mut builder: EnvelopeBuilder<K>) -> EnvelopeBuilder<K> {
        if let Some(source) = &self.source {
            builder = builder.source(source.source_id(), source.instance_id());
        }
        builder
    }
}

/// The panic's message, as Rust's own hook prints it.
fn message<'a>(info: &'a PanicHookInfo<'_>) -> &'a str {
    let payload = info.payload();
    match payload.downcast_ref::<&str>() {
        Some(text) => text,
        None => payload
            .downcast_ref::<String>()
            .map_or("Box<dyn Any>", String::as_str),
    }
}

/// Runs `work` unless this thread is already running it; false if it was.
/// Rust today aborts at a panic inside a panic hook rather than call the
/// hook again; the hook's safety does not rest on that.
fn not_within_itself(work: impl FnOnce()) -> bool {
    if REPORTING.with(|reporting| reporting.replace(true)) {
        return false;
    }
    work();
    REPORTING.with(|reporting| reporting.set(false));
    true
}

/// What a panic left, as text.
struct Panic<'a> {
    thread: &'a str,
    location: &'a str,
    message: &'a str,
    backtrace: String,
}

impl Panic<'_> {
    /// The log's payload, at most `max` bytes, and whether it was cut: the
    /// lines Rust's own hook prints, then the backtrace. What is cut is the
    /// end of the backtrace, then, if that is not enough, the end of the
    /// message; a last line says what was cut.
    fn payload(&self, max: usize) -> (String, bool) {
        let head = format!(
            "thread '{}' panicked at {}:\n{}",
            self.thread, self.location, self.message
        );
        let backtrace = self.backtrace.trim_end();
        let whole = format!("{head}\nstack backtrace:\n{backtrace}");
        if whole.len() <= max {
            return (whole, false);
        }
        let total = backtrace.len();
        // The longest the note can be: `kept` has at most the digits of `total`.
        let note = |kept: usize| {
            format!("\n[backtrace cut to {kept} of {total} bytes to fit one envelope]")
        };
        let with_backtrace = head.len() + "\nstack backtrace:\n".len() + note(total).len();
        if with_backtrace < max {
            let mut kept = floor_char_boundary(backtrace, max - with_backtrace);
            // At a frame's line, when one ends before the cut.
            if let Some(line_end) = backtrace[..kept].rfind('\n') {
                kept = line_end;
            }
            let payload = format!(
                "{head}\nstack backtrace:\n{}{}",
                &backtrace[..kept],
                note(kept)
            );
            return (payload, true);
        }
        let length = self.message.len();
        let note = |kept: usize| {
            format!(
                "\n[message cut to {kept} of {length} bytes and backtrace left off to fit one envelope]"
            )
        };
        let prefix = head.len() - length;
        let mut payload = if prefix + note(length).len() < max {
            let kept = floor_char_boundary(self.message, max - prefix - note(length).len());
            format!("{}{}{}", &head[..prefix], &self.message[..kept], note(kept))
        } else {
            head
        };
        // Room for less than the first line (a client whose tags fill its
        // batches): as much as fits.
        let fit = floor_char_boundary(&payload, max);
        payload.truncate(fit);
        (payload, true)
    }
}

/// The frames of a backtrace (as `Backtrace` displays it) below Rust's
/// panic machinery, numbered from 0. Rust marks where that machinery ends
/// with a frame `__rust_end_short_backtrace`; what comes before it (this
/// hook among them) is the same in every panic, and Rust's own hook leaves
/// it out too. Without the marker (no symbols) every frame is kept.
fn below_the_panic_machinery(backtrace: &str) -> String {
    fn frame(line: &str) -> Option<&str> {
        let (number, name) = line.trim_start().split_once(": ")?;
        (!number.is_empty() && number.bytes().all(|b| b.is_ascii_digit())).then_some(name)
    }
    let lines: Vec<&str> = backtrace.lines().collect();
    let marker = lines.iter().position(|line| {
        frame(line).is_some_and(|name| name.contains("__rust_end_short_backtrace"))
    });
    let Some(marker) = marker else {
        return backtrace.to_string();
    };
    let mut kept = String::with_capacity(backtrace.len());
    let mut number = 0;
    for line in &lines[marker + 1..] {
        match frame(line) {
            Some(name) => {
                let _ = writeln!(kept, "{number:>4}: {name}");
                number += 1;
            }
            // The marker's own source lines.
            None if number == 0 => {}
            None => {
                kept.push_str(line);
                kept.push('\n');
            }
        }
    }
    kept
}

/// The largest index at most `index` that is a character boundary of `text`.
fn floor_char_boundary(text: &str, index: usize) -> usize {
    if index >= text.len() {
        return text.len();
    }
    let mut at = index;
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panic(message: &str, frames: usize) -> Panic<'_> {
        let backtrace = (0..frames)
            .map(|n| format!("  {n:>3}: a::frame_{n}\n             at src/a.rs:{n}:5\n"))
            .collect();
        Panic {
            thread: "worker-1",
            location: "src/a.rs:10:5",
            message,
            backtrace,
        }
    }

    #[test]
    fn a_payload_that_fits_is_what_rust_prints_then_the_whole_backtrace() {
        let panic = panic("index out of bounds", 3);
        let (payload, cut) = panic.payload(MAX_PANIC_LOG_BYTES);
        assert!(!cut);
        assert!(
            payload.starts_with(
                "thread 'worker-1' panicked at src/a.rs:10:5:\nindex out of bounds\nstack backtrace:\n    0: a::frame_0\n"
            ),
            "{payload}"
        );
        assert!(payload.ends_with("at src/a.rs:2:5"), "{payload}");
    }

    #[test]
    fn a_long_backtrace_is_cut_at_a_frame_and_says_so() {
        let panic = panic("boom", 10_000);
        let (payload, cut) = panic.payload(4096);
        assert!(cut);
        assert!(payload.len() <= 4096, "{}", payload.len());
        assert!(payload.starts_with("thread 'worker-1' panicked at src/a.rs:10:5:\nboom\n"));
        let backtrace = panic.backtrace.trim_end();
        let note = payload.rsplit_once('\n').unwrap().1;
        let kept: usize = note
            .strip_prefix("[backtrace cut to ")
            .and_then(|rest| rest.split_once(' '))
            .and_then(|(kept, _)| kept.parse().ok())
            .unwrap_or_else(|| panic!("{note}"));
        assert_eq!(
            payload,
            format!(
                "thread 'worker-1' panicked at src/a.rs:10:5:\nboom\nstack backtrace:\n{}\n[backtrace cut to {kept} of {} bytes to fit one envelope]",
                &backtrace[..kept],
                backtrace.len()
            )
        );
        assert_eq!(backtrace.as_bytes()[kept], b'\n', "cut at a line's end");
        assert!(
            payload.len() > 3500,
            "most of the room is used: {}",
            payload.len()
        );
    }

    #[test]
    fn a_message_too_long_for_any_backtrace_is_cut_at_a_character_boundary() {
        let message = "é".repeat(10_000);
        let panic = panic(&message, 5);
        let (payload, cut) = panic.payload(2048);
        assert!(cut);
        assert!(payload.len() <= 2048, "{}", payload.len());
        assert!(payload.starts_with("thread 'worker-1' panicked at src/a.rs:10:5:\néé"));
        assert!(
            payload.ends_with(" of 20000 bytes and backtrace left off to fit one envelope]"),
            "{payload}"
        );
        assert!(!payload.contains("frame_"));
    }

    #[test]
    fn the_backtrace_starts_below_the_panic_machinery_numbered_from_zero() {
        let captured = "   0: loggregator::panic_hook::PanicHook::report
             at ./src/panic_hook.rs:180:28
   1: std::panicking::panic_with_hook
   2: std::sys::backtrace::__rust_end_short_backtrace::<F, !>
             at /rustc/library/std/src/sys/backtrace.rs:176:18
   3: core::panicking::panic_fmt
             at /rustc/library/core/src/panicking.rs:80:14
   4: app::handle
             at ./src/main.rs:7:5
";
        assert_eq!(
            below_the_panic_machinery(captured),
            "   0: core::panicking::panic_fmt
             at /rustc/library/core/src/panicking.rs:80:14
   1: app::handle
             at ./src/main.rs:7:5
"
        );
        let unmarked = "   0: <unknown>\n   1: <unknown>\n";
        assert_eq!(below_the_panic_machinery(unmarked), unmarked);
    }

    #[test]
    fn the_hook_never_runs_inside_itself_and_runs_again_after() {
        let mut inner_ran = false;
        assert!(not_within_itself(|| {
            assert!(!not_within_itself(|| inner_ran = true));
        }));
        assert!(!inner_ran);
        assert!(not_within_itself(|| inner_ran = true));
        assert!(inner_ran);
    }

    /// Where the hook must not wait it only queues: a client whose agent
    /// is not there would keep a waiting hook for its whole flush timeout.
    #[cfg(feature = "testing")]
    #[test]
    fn on_the_clients_own_threads_and_with_a_zero_timeout_it_only_queues() {
        let certs = crate::spy::TestCerts::generate().unwrap();
        let nowhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = IngressClient::builder()
            .addr(nowhere.local_addr().unwrap().to_string())
            .tls(certs.client_tls().unwrap())
            .build()
            .unwrap();
        drop(nowhere);
        let long = Duration::from_secs(60);
        let own_thread = PanicHook::new(client.clone()).flush_timeout(long);
        let zero = PanicHook::new(client.clone()).flush_timeout(Duration::ZERO);
        let started = Instant::now();
        std::thread::spawn(move || {
            crate::mark_own_thread();
            own_thread.send(&panic("on the sender", 3));
        })
        .join()
        .unwrap();
        zero.send(&panic("in a pool", 3));
        assert!(started.elapsed() < long / 4, "{:?}", started.elapsed());
        let stats = client.stats();
        assert_eq!(stats.emitted, 4, "{stats:?}");
        assert_eq!(stats.dropped.total(), 0, "{stats:?}");
        let _ = client.close(Duration::from_millis(10));
    }

    /// After `close` nothing is sent and nothing waits, but the panic is
    /// not lost unseen: both envelopes are emitted and dropped as
    /// `closed`, and a cut log dropped is not counted as cut.
    #[cfg(feature = "testing")]
    #[test]
    fn on_a_closed_client_both_envelopes_are_counted_dropped_as_closed() {
        let certs = crate::spy::TestCerts::generate().unwrap();
        let agent = crate::spy::SpyAgent::start(&certs).unwrap();
        let client = IngressClient::builder()
            .addr(agent.addr())
            .tls(certs.client_tls().unwrap())
            .build()
            .unwrap();
        client.close(Duration::from_secs(20)).unwrap();
        let long = Duration::from_secs(60);
        let waiting = PanicHook::new(client.clone()).flush_timeout(long);
        let zero = PanicHook::new(client.clone()).flush_timeout(Duration::ZERO);
        let too_long = "x".repeat(2 * MAX_PANIC_LOG_BYTES);
        let started = Instant::now();
        waiting.send(&panic(&too_long, 3));
        zero.send(&panic(&too_long, 3));
        assert!(started.elapsed() < long / 4, "{:?}", started.elapsed());
        let stats = client.stats();
        assert_eq!(
            (stats.emitted, stats.dropped.closed, stats.dropped.total()),
            (4, 4, 4),
            "{stats:?}"
        );
        assert_eq!(stats.values_cut, 0, "{stats:?}");
        assert!(agent.envelopes().is_empty());
    }

    #[test]
    fn with_no_room_for_a_note_the_payload_still_fits() {
        let panic = panic("boom", 5);
        for max in [0, 1, 10, 40, 100] {
            let (payload, cut) = panic.payload(max);
            assert!(cut && payload.len() <= max, "{max}: {payload}");
        }
    }
}
