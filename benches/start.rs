//! `cargo bench --bench start`: the CPU a short-lived program spends to
//! send one envelope (built from the certificate files, connected, sent,
//! closed), as a command run from cron or a health check pays it each time.
//!
//! Each run is a process of its own, measured whole by the kernel
//! (`getrusage(RUSAGE_CHILDREN)` around it: every thread, from `exec` to
//! exit). The baseline is the same program that only parses its flags and
//! exits, so the program's own loading is not counted; the agent runs in a
//! child of its own and is not counted either.

mod common;

use std::time::Duration;

use common::{Agent, Figures, Flags, children_cpu, client, measure};
use loggregator::Envelope;

/// Runs of each scenario; the median is shown.
const RUNS: usize = 9;

fn main() {
    common::run(scenario, report);
}

fn scenario(name: &str, flags: &Flags) -> Figures {
    match name {
        "baseline" => Figures::new(),
        "emit" => {
            let client = client(flags);
            client.emit(Envelope::log("one line from a short-lived program"));
            client.close(Duration::from_secs(10)).expect("close");
            Figures::from([("delivered".into(), 1.0)])
        }
        "send" => {
            let client = client(flags);
            client
                .send(
                    vec![Envelope::log("one line from a short-lived program").into()],
                    Duration::from_secs(10),
                )
                .expect("send");
            client.close(Duration::from_secs(10)).expect("close");
            Figures::from([("delivered".into(), 1.0)])
        }
        _ => common::unknown(name),
    }
}

/// The median CPU time of `RUNS` processes running `name`, in milliseconds.
fn median_cpu_ms(agent: &mut Agent, name: &str) -> f64 {
    let mut runs: Vec<f64> = (0..RUNS)
        .map(|_| {
            let before = children_cpu();
            measure(agent, name, &[]);
            (children_cpu() - before).as_secs_f64() * 1e3
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[RUNS / 2]
}

fn report(_flags: &Flags, agent: &mut Agent) {
    let baseline = median_cpu_ms(agent, "baseline");
    println!(
        "start: a process that only starts and exits: {baseline:.1} ms CPU (median of {RUNS})"
    );
    for (name, what) in [
        ("emit", "build a client, emit one log, close"),
        ("send", "build a client, send one log (unary), close"),
    ] {
        let cpu = median_cpu_ms(agent, name);
        println!(
            "start: {what}: {:.1} ms CPU beyond the baseline ({cpu:.1} ms in all, median of {RUNS})",
            cpu - baseline
        );
    }
}
