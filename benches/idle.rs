//! `cargo bench --bench idle`: the CPU a connected client spends with
//! nothing to send (its timers, the pulse, keepalive).

mod common;

use std::thread;
use std::time::Duration;

use common::{Agent, Figures, Flags, client, cpu_time, measure, warm_up};

/// How long the client idles.
const IDLE_RUN: Duration = Duration::from_secs(10);

fn main() {
    common::run(scenario, report);
}

fn scenario(name: &str, flags: &Flags) -> Figures {
    match name {
        "idle" => idle(flags),
        _ => common::unknown(name),
    }
}

fn report(_flags: &Flags, agent: &mut Agent) {
    let seconds = format!("{}s", IDLE_RUN.as_secs());
    let idle = measure(agent, "idle", &["--seconds", &seconds]);
    println!(
        "idle: {:.3} ms CPU per second over {IDLE_RUN:?} with nothing to send",
        idle["cpu_ms_per_second"]
    );
}

fn idle(flags: &Flags) -> Figures {
    let client = client(flags);
    warm_up(&client);
    let cpu_before = cpu_time();
    thread::sleep(flags.seconds);
    let cpu = cpu_time() - cpu_before;
    client.close(Duration::from_secs(10)).expect("close");
    Figures::from([(
        "cpu_ms_per_second".into(),
        cpu.as_secs_f64() * 1e3 / flags.seconds.as_secs_f64(),
    )])
}
