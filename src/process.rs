//! This process's resource use, read from Linux's /proc.

use std::time::Instant;

use crate::envelope::Envelope;

/// Linux counts CPU time in clock ticks of 1/100 s on every common platform.
const TICKS_PER_SECOND: f64 = 100.0;

/// Reads /proc/self and turns each reading into a gauge envelope.
pub(crate) struct ProcessMeter {
    last_cpu_seconds: f64,
    last_at: Instant,
}

impl ProcessMeter {
    pub(crate) fn new() -> ProcessMeter {
        ProcessMeter {
            last_cpu_seconds: cpu_seconds().unwrap_or(0.0),
            last_at: Instant::now(),
        }
    }

    /// A gauge with resident memory (bytes), CPU since the last reading
    /// (percentage of one core), threads and open file descriptors; `None`
    /// where /proc cannot be read (not Linux).
    pub(crate) fn read(&mut self) -> Option<Envelope> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let field = |name: &str| -> Option<f64> {
            let line = status.lines().find(|line| line.starts_with(name))?;
            line[name.len()..].split_whitespace().next()?.parse().ok()
        };
        let resident_bytes = field("VmRSS:")? * 1024.0;
        let threads = field("Threads:")?;
        let descriptors = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
        let (now, cpu) = (Instant::now(), cpu_seconds()?);
        let elapsed = now.duration_since(self.last_at).as_secs_f64();
        let percentage = if elapsed > 0.0 {
            100.0 * (cpu - self.last_cpu_seconds) / elapsed
        } else {
            0.0
        };
        (self.last_cpu_seconds, self.last_at) = (cpu, now);
        Some(
            Envelope::gauge()
                .metric("memory", resident_bytes, "bytes")
                .metric("cpu", percentage.max(0.0), "percentage")
                .metric("threads", threads, "count")
                .metric("file_descriptors", descriptors, "count")
                .build(),
        )
    }
}

/// User plus system CPU time of the whole process so far.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some((user + system) / TICKS_PER_SECOND)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn reads_memory_cpu_threads_and_descriptors_of_this_process() {
        let mut meter = ProcessMeter::new();
        // Work until the kernel has counted some CPU time (it counts in
        // ticks of 10 ms), so that the reading cannot honestly be 0.
        let before = cpu_seconds().expect("/proc/self/stat is readable");
        let give_up = Instant::now() + std::time::Duration::from_secs(20);
        let mut work = 0u64;
        while cpu_seconds().unwrap() < before + 0.05 {
            assert!(Instant::now() < give_up, "no CPU time counted");
            work = (0..100_000u64).fold(work, |sum, n| sum.wrapping_add(n.wrapping_mul(n)));
        }
        std::hint::black_box(work);
        let envelope = meter.read().expect("/proc is readable");
        let metrics = &envelope.as_proto().gauge().metrics;
        assert!(metrics["memory"].value > 1e6, "{metrics:?}");
        assert!(metrics["threads"].value >= 1.0);
        assert!(metrics["file_descriptors"].value >= 3.0);
        // Some of a core, and no more than every core (other tests' threads
        // share the process), with a tick's rounding.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let cpu = metrics["cpu"].value;
        assert!(cpu > 0.0 && cpu <= 125.0 * cores, "{metrics:?}");
        assert_eq!(metrics["memory"].unit, "bytes");
        assert_eq!(metrics["cpu"].unit, "percentage");
    }
}
