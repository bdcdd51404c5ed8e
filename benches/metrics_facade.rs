//! `cargo bench --bench metrics_facade`: the `metrics` facade's
//! `counter!`, `gauge!` and `histogram!` through `MetricsRecorder`, beside
//! metrics-exporter-prometheus's recorder in the same process and run;
//! and what a pulse of 10,000 live series costs the client's threads.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use loggregator::IngressClient;

use common::{Agent, Figures, Flags, ROUNDS, histogram, measure, median_by, tls, warm_up};

fn main() {
    common::run(scenario, report);
}

fn scenario(name: &str, flags: &Flags) -> Figures {
    match name {
        "calls" => metrics_calls(flags),
        "series" => metrics_series(flags),
        _ => common::unknown(name),
    }
}

/// Calls per timed batch: one call is shorter than the clock's resolution.
const METRICS_BATCH: u64 = 16;
/// Timed batches per thread, per operation and recorder.
const METRICS_BATCHES: u64 = 40_000;
/// Live series in the per-interval figure, and how they divide.
const SERIES_COUNTERS: usize = 6_000;
const SERIES_GAUGES: usize = 3_000;
const SERIES_HISTOGRAMS: usize = 1_000;
/// Values each histogram takes per interval there.
const VALUES_PER_HISTOGRAM: usize = 10;
const SERIES_INTERVAL: Duration = Duration::from_millis(200);
const SERIES_INTERVALS: u32 = 10;

fn report(_flags: &Flags, agent: &mut Agent) {
    let calls = median_by(
        (0..ROUNDS).map(|_| measure(agent, "calls", &[])).collect(),
        "loggregator_counter_1_p50",
    );
    println!(
        "metrics facade: ns per call (batches of {METRICS_BATCH}), loggregator::MetricsRecorder vs metrics-exporter-prometheus's recorder in the same process; the round of median counter p50 of {ROUNDS}:"
    );
    for (name, op) in [
        ("counter! + increment, static label", "counter"),
        ("gauge! + set", "gauge"),
        ("histogram! + record", "histogram"),
    ] {
        for threads in ["1", "4"] {
            let ours = |q: &str| calls[&format!("loggregator_{op}_{threads}_{q}")];
            let prom = |q: &str| calls[&format!("prometheus_{op}_{threads}_{q}")];
            println!(
                "  {name:<36} {threads} thread(s): p50 {:>6.1} vs {:>6.1} ({:.2}x)  p99 {:>7.1} vs {:>7.1} ({:.2}x)",
                ours("p50"),
                prom("p50"),
                ours("p50") / prom("p50"),
                ours("p99"),
                prom("p99"),
                ours("p99") / prom("p99"),
            );
        }
    }
    println!(
        "  increment on a kept handle, 1 thread: p50 {:.1} vs {:.1} ({:.2}x)",
        calls["loggregator_kept_1_p50"],
        calls["prometheus_kept_1_p50"],
        calls["loggregator_kept_1_p50"] / calls["prometheus_kept_1_p50"]
    );
    let series = measure(agent, "series", &[]);
    println!(
        "  {} live series ({SERIES_COUNTERS} counters, {SERIES_GAUGES} gauges, {SERIES_HISTOGRAMS} histograms of {VALUES_PER_HISTOGRAM} values), all moving: per interval {:.2} ms CPU on the pulse thread (building {:.0} envelopes and queueing them, {:.2} µs each), {:.2} ms on the sender thread (batching and gRPC); dropped {}; Prometheus render of the same series {:.2} ms",
        SERIES_COUNTERS + SERIES_GAUGES + SERIES_HISTOGRAMS,
        series["pulse_ms_per_interval"],
        series["envelopes_per_interval"],
        series["pulse_us_per_envelope"],
        series["sender_ms_per_interval"],
        series["dropped"],
        series["prometheus_render_ms"],
    );
}

/// Runs `op` `METRICS_BATCHES` times in batches of `METRICS_BATCH` on
/// `threads` threads, each with `recorder` as its local recorder; the
/// per-call time of each batch, in tenths of a nanosecond.
fn time_calls(
    recorder: &(dyn metrics::Recorder + Sync),
    threads: usize,
    op: &(dyn Fn(u64) + Sync),
) -> Histogram<u64> {
    let mut all = histogram();
    // All at once, or a thread may be done before the next one starts.
    let start = std::sync::Barrier::new(threads);
    thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    metrics::with_local_recorder(recorder, || {
                        let mut histogram = histogram();
                        start.wait();
                        for batch in 0..METRICS_BATCHES {
                            let t0 = Instant::now();
                            for n in 0..METRICS_BATCH {
                                op(batch * METRICS_BATCH + n);
                            }
                            let tenths = t0.elapsed().as_nanos() as u64 * 10 / METRICS_BATCH;
                            histogram.saturating_record(tenths.max(1));
                        }
                        histogram
                    })
                })
            })
            .collect();
        for handle in handles {
            all.add(handle.join().expect("a timing thread"))
                .expect("same bounds");
        }
    });
    all
}

fn metrics_calls(flags: &Flags) -> Figures {
    let client = IngressClient::builder()
        .addr(&flags.addr)
        .tls(tls(flags))
        // No pulse during the timing: the Prometheus recorder is not
        // rendered either.
        .pulse_interval(Duration::from_secs(3600))
        .build()
        .expect("a client");
    warm_up(&client);
    let ours = loggregator::MetricsRecorder::new(client.clone()).max_series(100);
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .idle_timeout(
            metrics_util::MetricKindMask::ALL,
            Some(loggregator::DEFAULT_IDLE_TIMEOUT),
        )
        .build_recorder();
    let counter = |_: u64| metrics::counter!("bench_requests", "route" => "/v2/apps").increment(1);
    let gauge = |n: u64| metrics::gauge!("bench_in_flight", "route" => "/v2/apps").set(n as f64);
    let record = |n: u64| {
        metrics::histogram!("bench_latency_seconds", "route" => "/v2/apps")
            .record((n % 1000) as f64 * 1e-4)
    };
    let ops: [(&str, &(dyn Fn(u64) + Sync)); 3] = [
        ("counter", &counter),
        ("gauge", &gauge),
        ("histogram", &record),
    ];
    let recorders: [(&str, &(dyn metrics::Recorder + Sync)); 2] =
        [("loggregator", &ours), ("prometheus", &prometheus)];
    let mut figures = Figures::new();
    for (op_name, op) in ops {
        for threads in [1, 4] {
            for (name, recorder) in recorders {
                let histogram = time_calls(recorder, threads, op);
                for (suffix, q) in [("p50", 0.5), ("p99", 0.99)] {
                    figures.insert(
                        format!("{name}_{op_name}_{threads}_{suffix}"),
                        histogram.value_at_quantile(q) as f64 / 10.0,
                    );
                }
            }
        }
    }
    for (name, recorder) in recorders {
        let kept = metrics::with_local_recorder(
            recorder,
            || metrics::counter!("bench_kept", "route" => "/v2/apps"),
        );
        let histogram = time_calls(recorder, 1, &|_| kept.increment(1));
        figures.insert(
            format!("{name}_kept_1_p50"),
            histogram.value_at_quantile(0.5) as f64 / 10.0,
        );
    }
    client.close(Duration::from_secs(10)).expect("close");
    figures
}

/// On-CPU time of this process's threads whose names start with `prefix`
/// (names are cut to 15 bytes), from the scheduler's nanosecond counts.
fn threads_cpu(prefix: &str) -> Duration {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let path = task.expect("a task").path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim_end().starts_with(prefix) {
            let stat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
            total += stat
                .split_whitespace()
                .next()
                .and_then(|ns| ns.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(total)
}

fn metrics_series(flags: &Flags) -> Figures {
    let client = IngressClient::builder()
        .addr(&flags.addr)
        .tls(tls(flags))
        .pulse_interval(SERIES_INTERVAL)
        .queue_capacity(100_000)
        .queue_max_bytes(256 * 1024 * 1024)
        .build()
        .expect("a client");
    warm_up(&client);
    let recorder = loggregator::MetricsRecorder::new(client.clone()).max_series(20_000);
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let prometheus_handle = prometheus.handle();
    let make = |recorder: &dyn metrics::Recorder| {
        metrics::with_local_recorder(recorder, || {
            let label = |n: usize| format!("s{n}");
            (
                (0..SERIES_COUNTERS)
                    .map(|n| metrics::counter!("bench_series_total", "series" => label(n)))
                    .collect::<Vec<_>>(),
                (0..SERIES_GAUGES)
                    .map(|n| metrics::gauge!("bench_series_level", "series" => label(n)))
                    .collect::<Vec<_>>(),
                (0..SERIES_HISTOGRAMS)
                    .map(|n| metrics::histogram!("bench_series_seconds", "series" => label(n)))
                    .collect::<Vec<_>>(),
            )
        })
    };
    let touch = |(counters, gauges, histograms): &(
        Vec<metrics::Counter>,
        Vec<metrics::Gauge>,
        Vec<metrics::Histogram>,
    ),
                 round: u32| {
        counters.iter().for_each(|c| c.increment(1));
        gauges.iter().for_each(|g| g.set(f64::from(round)));
        for h in histograms {
            for v in 0..VALUES_PER_HISTOGRAM {
                h.record(v as f64 * 1e-3);
            }
        }
    };
    let ours = make(&recorder);
    touch(&ours, 0);
    // The first pulse has made every series' label sets.
    let emitted = client.stats().emitted;
    while client.stats().emitted == emitted {
        thread::sleep(Duration::from_millis(5));
    }
    let (pulse_before, sender_before) = (
        threads_cpu("loggregator-pul"),
        threads_cpu("loggregator-sen"),
    );
    let emitted_before = client.stats().emitted;
    let started = Instant::now();
    for round in 1..=SERIES_INTERVALS {
        touch(&ours, round);
        let due = started + SERIES_INTERVAL * round;
        thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    let pulse = threads_cpu("loggregator-pul") - pulse_before;
    let sender = threads_cpu("loggregator-sen") - sender_before;
    let envelopes = (client.stats().emitted - emitted_before) as f64;
    // A pulse of every series sends a counter per counter and histogram, a
    // gauge envelope per label set (the histograms' sums share the gauges'),
    // and one per histogram and quantile. Pulses may land mid-touch or be
    // late, so the figure is per pulse's worth of envelopes.
    let per_pulse = (SERIES_COUNTERS
        + SERIES_HISTOGRAMS
        + SERIES_GAUGES.max(SERIES_HISTOGRAMS)
        + SERIES_HISTOGRAMS * loggregator::DEFAULT_QUANTILES.len()) as f64;
    let intervals = envelopes / per_pulse;
    client.close(Duration::from_secs(30)).expect("close");

    let theirs = make(&prometheus);
    let mut render = Duration::ZERO;
    for round in 0..SERIES_INTERVALS {
        touch(&theirs, round);
        let t0 = Instant::now();
        let text = prometheus_handle.render();
        render += t0.elapsed();
        assert!(text.len() > SERIES_COUNTERS * 20);
    }
    Figures::from([
        (
            "pulse_ms_per_interval".into(),
            pulse.as_secs_f64() * 1e3 / intervals,
        ),
        (
            "sender_ms_per_interval".into(),
            sender.as_secs_f64() * 1e3 / intervals,
        ),
        ("envelopes_per_interval".into(), per_pulse),
        (
            "pulse_us_per_envelope".into(),
            pulse.as_secs_f64() * 1e6 / envelopes,
        ),
        ("dropped".into(), client.stats().dropped.total() as f64),
        (
            "prometheus_render_ms".into(),
            render.as_secs_f64() * 1e3 / f64::from(SERIES_INTERVALS),
        ),
    ])
}
