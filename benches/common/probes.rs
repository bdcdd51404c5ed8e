//! Probes: CPU time, resident memory, latency histograms.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use loggregator::Envelope;
use nix::sys::resource::{UsageWho, getrusage};

use super::{Figures, LATENCY_SAMPLES};

/// User + system CPU time of this whole process, all threads.
pub fn cpu_time() -> Duration {
    let usage = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let micros = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
    Duration::from_micros(micros(usage.user_time()) + micros(usage.system_time()))
}

/// User + system CPU time of the children this process has waited for
/// (and of their children they waited for).
pub fn children_cpu() -> Duration {
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).expect("getrusage");
    let micros = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
    Duration::from_micros(micros(usage.user_time()) + micros(usage.system_time()))
}

pub fn peak_rss_bytes() -> f64 {
    getrusage(UsageWho::RUSAGE_SELF)
        .expect("getrusage")
        .max_rss() as f64
        * 1024.0
}

pub fn current_rss_bytes() -> f64 {
    Resident::now().total()
}

/// Resident memory in two parts: pages the process allocated (heap, stacks)
/// and pages of mapped files (the program and its libraries, shared with
/// every process that maps them).
#[derive(Clone, Copy, Default)]
pub struct Resident {
    pub anon: f64,
    pub file: f64,
}

impl Resident {
    pub fn total(&self) -> f64 {
        self.anon + self.file
    }

    pub fn now() -> Resident {
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        let kib = |field: &str| -> f64 {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
        };
        Resident {
            anon: kib("RssAnon:") * 1024.0,
            file: (kib("RssFile:") + kib("RssShmem:")) * 1024.0,
        }
    }

    /// The largest of each part, sampled every 5 ms until `stop` is set.
    pub fn peak_until(stop: Arc<AtomicBool>) -> thread::JoinHandle<Resident> {
        thread::spawn(move || {
            let mut peak = Resident::default();
            while !stop.load(Ordering::Relaxed) {
                let now = Resident::now();
                peak.anon = peak.anon.max(now.anon);
                peak.file = peak.file.max(now.file);
                thread::sleep(Duration::from_millis(5));
            }
            peak
        })
    }
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

pub fn percentiles(figures: &mut Figures, name: &str, histogram: &Histogram<u64>) {
    for (suffix, quantile) in [("p50", 0.5), ("p99", 0.99), ("p999", 0.999)] {
        figures.insert(
            format!("{name}_{suffix}"),
            histogram.value_at_quantile(quantile) as f64,
        );
    }
}

/// Times `op` on each of `LATENCY_SAMPLES` envelopes from `make`, made
/// outside the timing, at `rate` a second.
pub fn time_each(rate: u64, make: impl Fn() -> Envelope, op: impl Fn(Envelope)) -> Histogram<u64> {
    let mut histogram = histogram();
    let started = Instant::now();
    for n in 0..LATENCY_SAMPLES {
        let envelope = make();
        let t0 = Instant::now();
        op(envelope);
        histogram.saturating_record(t0.elapsed().as_nanos() as u64);
        if n % 64 == 63 {
            let due = started + Duration::from_secs_f64(n as f64 / rate as f64);
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
        }
    }
    histogram
}
