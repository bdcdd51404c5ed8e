//! `cargo bench --bench legacy`: the `loggregator` command against the spy
//! agent (a child process, counting only), each figure beside its anchor
//! in the same run.
//!
//! - `tail` against `pipe`: a file of 100-byte lines (1 GiB unless
//!   `--file-mib` says otherwise) read from its start by `loggregator tail
//!   --from-start` and piped into `loggregator pipe --block`: lines a
//!   second, from start until the agent has counted every line, and CPU
//!   per line (the process measured whole by the kernel).
//! - `run` against the child alone: a child writing `--stream-rate` lines
//!   a second (100,000 unless told) to each of stdout and stderr for
//!   `--seconds`, alone (both to /dev/null) and wrapped by `loggregator
//!   run` (with and without `--tee`): the CPU the wrapper adds, per line
//!   and in cores, whether the child kept its pace, and what arrived.

mod common;

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Agent, Figures, Flags, children_cpu, parse_counts, parse_figures};

/// Runs of each measurement; the median is shown.
const RUNS: usize = 3;
/// A 100-byte line, newline included.
const LINE: &[u8; 100] = b"2026-12-06T10:00:00.000Z INFO legacy-daemon: GET /v2/info 200 0.0042s \
      request=9d7d2b7c-2f4b-4d1a-9b\n";
/// Set in the child's environment: it writes lines, not the bench's report.
const WRITER: &str = "LOGGREGATOR_BENCH_WRITER";

fn main() {
    if let Ok(spec) = std::env::var(WRITER) {
        write_lines(&spec);
        return;
    }
    common::run(|name, _| common::unknown(name), report);
}

fn report(flags: &Flags, agent: &mut Agent) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    tail_and_pipe(flags, agent, dir.path());
    wrapper(flags, agent);
}

/// The connection flags every subcommand takes, for this agent.
fn connection(agent: &Agent) -> Vec<String> {
    let file = |name: &str| agent.certs.join(name).display().to_string();
    [
        "--agent-addr",
        &agent.addr,
        "--ca-file",
        &file("ca.crt"),
        "--cert-file",
        &file("client.crt"),
        "--key-file",
        &file("client.key"),
        "--server-name",
        "metron",
        "--source-id",
        "bench",
    ]
    .map(String::from)
    .to_vec()
}

fn loggregator(agent: &Agent, subcommand: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_loggregator"));
    command.arg(subcommand).args(connection(agent));
    command
}

/// Waits until the agent has counted `total` envelopes since it started.
fn wait_for(agent: &mut Agent, total: u64) {
    let counted = parse_counts(&agent.command(&format!("wait {total} 600")));
    assert!(counted >= total, "the agent counted {counted} of {total}");
}

fn tail_and_pipe(flags: &Flags, agent: &mut Agent, dir: &Path) {
    let file = dir.join("job.log");
    let lines = flags.file_mib * (1 << 20) / LINE.len() as u64;
    {
        let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(&file).unwrap());
        for _ in 0..lines {
            out.write_all(LINE).unwrap();
        }
        out.flush().unwrap();
    }
    let (mut pipes, mut tails) = (Vec::new(), Vec::new());
    for run in 0..RUNS {
        pipes.push(pipe(agent, &file, lines));
        tails.push(tail(agent, &file, &dir.join(format!("state-{run}")), lines));
    }
    let (pipe, tail) = (
        common::median_by(pipes, "rate"),
        common::median_by(tails, "rate"),
    );
    println!(
        "legacy: {lines} lines of 100 bytes ({} MiB), median of {RUNS}:",
        flags.file_mib
    );
    for (name, figures) in [("pipe --block < file", &pipe), ("tail --from-start", &tail)] {
        println!(
            "legacy:   {name:<20} {:>9.0} lines/s, {:.2} µs CPU a line ({:.1} s)",
            figures["rate"], figures["cpu_us"], figures["seconds"]
        );
    }
    println!(
        "legacy:   tail/pipe: {:.2} of the rate, {:.2} of the CPU a line",
        tail["rate"] / pipe["rate"],
        tail["cpu_us"] / pipe["cpu_us"]
    );
}

fn figures(lines: u64, wall: Duration, cpu: Duration) -> Figures {
    Figures::from([
        ("rate".into(), lines as f64 / wall.as_secs_f64()),
        ("cpu_us".into(), cpu.as_secs_f64() * 1e6 / lines as f64),
        ("seconds".into(), wall.as_secs_f64()),
    ])
}

/// `loggregator pipe --block < file`: it exits once all is delivered.
fn pipe(agent: &mut Agent, file: &Path, lines: u64) -> Figures {
    let before = agent.envelopes();
    let cpu = children_cpu();
    let started = Instant::now();
    let output = loggregator(agent, "pipe")
        .arg("--block")
        .stdin(std::fs::File::open(file).unwrap())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run loggregator pipe");
    let wall = started.elapsed();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    wait_for(agent, before + lines);
    figures(lines, wall, children_cpu() - cpu)
}

/// `loggregator tail --from-start file`, until the agent has every line,
/// then SIGTERM.
fn tail(agent: &mut Agent, file: &Path, state: &Path, lines: u64) -> Figures {
    let before = agent.envelopes();
    let cpu = children_cpu();
    let started = Instant::now();
    let mut child = loggregator(agent, "tail")
        .args(["--from-start", "--state-file"])
        .arg(state)
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start loggregator tail");
    wait_for(agent, before + lines);
    let wall = started.elapsed();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("stop loggregator tail");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(child.wait().unwrap().success(), "{stderr}");
    assert!(
        stderr.contains(&format!("confirmed {lines} refused 0")),
        "{stderr}"
    );
    figures(lines, wall, children_cpu() - cpu)
}

/// The child's pace: `LINES_PER_SECOND SECONDS RESULT_FILE`.
struct Writing {
    per_second: u64,
    seconds: f64,
    result: PathBuf,
}

/// Writes `per_second` lines a second to stdout and to stderr, each from
/// a thread of its own, 1 ms's worth at a time, for `seconds`; writes to
/// the result file how many lines each wrote and how far it fell behind
/// its schedule at worst.
fn write_lines(spec: &str) {
    let mut words = spec.split_whitespace();
    let writing = Writing {
        per_second: words.next().unwrap().parse().unwrap(),
        seconds: words.next().unwrap().parse().unwrap(),
        result: PathBuf::from(words.next().unwrap()),
    };
    let write = |mut out: Box<dyn Write + Send>| {
        let per_tick = (writing.per_second / 1000).max(1);
        let chunk = LINE.repeat(per_tick as usize);
        let started = Instant::now();
        let ticks = (writing.seconds * 1000.0) as u64;
        let mut behind = Duration::ZERO;
        for tick in 0..ticks {
            let due = started + Duration::from_millis(tick);
            let now = Instant::now();
            if now < due {
                std::thread::sleep(due - now);
            } else {
                behind = behind.max(now - due);
            }
            out.write_all(&chunk).unwrap();
        }
        out.flush().unwrap();
        (ticks * per_tick, started.elapsed(), behind)
    };
    let (out, err) = std::thread::scope(|scope| {
        let out = scope.spawn(|| write(Box::new(std::io::stdout())));
        let err = scope.spawn(|| write(Box::new(std::io::stderr())));
        (out.join().unwrap(), err.join().unwrap())
    });
    let lines = out.0 + err.0;
    let seconds = out.1.max(err.1).as_secs_f64();
    let behind = out.2.max(err.2).as_secs_f64() * 1e3;
    std::fs::write(
        &writing.result,
        format!("lines={lines} seconds={seconds} behind_ms={behind}"),
    )
    .unwrap();
}

/// The count after `word` in `loggregator run`'s exit line
/// (`...; sent N dropped N queued N; ...`).
fn exit_count(exit: &str, word: &str) -> u64 {
    exit.split([';', ' '])
        .skip_while(|w| *w != word)
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `{word} N` in {exit:?}"))
}

/// One run of the writing child: alone, or wrapped with `wrapper_flags`.
/// Its figures, the CPU of everything it ran, and the envelopes counted.
fn writer_run(agent: &mut Agent, flags: &Flags, wrapped: Option<&[&str]>) -> Figures {
    let result = tempfile::NamedTempFile::new().unwrap();
    let spec = format!(
        "{} {} {}",
        flags.stream_rate,
        flags.seconds.as_secs_f64(),
        result.path().display()
    );
    let before = agent.envelopes();
    let cpu = children_cpu();
    let exe = std::env::current_exe().unwrap();
    let mut command = match wrapped {
        None => Command::new(&exe),
        Some(wrapper_flags) => {
            let mut command = loggregator(agent, "run");
            command.args(wrapper_flags).arg("--").arg(&exe);
            command
        }
    };
    let output = command
        .env(WRITER, spec)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(if wrapped.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .output()
        .expect("run the writing child");
    let cpu = children_cpu() - cpu;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let mut figures = parse_figures(&std::fs::read_to_string(result.path()).unwrap());
    figures.insert("cpu_s".into(), cpu.as_secs_f64());
    if wrapped.is_some() {
        // The exit line: `loggregator run: ... sent N dropped N ...`.
        let exit = BufReader::new(stderr.as_bytes())
            .lines()
            .map_while(Result::ok)
            .last()
            .unwrap_or_default();
        // What the client sent arrives; what it dropped is counted there.
        wait_for(agent, before + exit_count(&exit, "sent"));
        figures.insert("arrived".into(), (agent.envelopes() - before) as f64);
        figures.insert("dropped".into(), exit_count(&exit, "dropped") as f64);
    }
    figures
}

fn wrapper(flags: &Flags, agent: &mut Agent) {
    println!(
        "legacy: a child writing {} lines/s of 100 bytes to each of stdout and stderr for {:?}, median of {RUNS}:",
        flags.stream_rate, flags.seconds
    );
    let mut median = |wrapped: Option<&[&str]>| {
        let runs = (0..RUNS)
            .map(|_| writer_run(agent, flags, wrapped))
            .collect();
        common::median_by(runs, "cpu_s")
    };
    let alone = median(None);
    println!(
        "legacy:   alone: {:.0} lines in {:.2} s, at worst {:.1} ms behind its pace, {:.3} s CPU",
        alone["lines"], alone["seconds"], alone["behind_ms"], alone["cpu_s"]
    );
    for (name, wrapper_flags) in [
        ("run", &[][..]),
        ("run --tee", &["--tee"][..]),
        ("run --block", &["--block"][..]),
    ] {
        let wrapped = median(Some(wrapper_flags));
        let added = wrapped["cpu_s"] - alone["cpu_s"];
        println!(
            "legacy:   {name}: {:.0} lines in {:.2} s, at worst {:.1} ms behind its pace; the wrapper adds {:.3} s CPU: {:.2} µs a line, {:.2} of a core; {:.0} arrived, {:.0} dropped",
            wrapped["lines"],
            wrapped["seconds"],
            wrapped["behind_ms"],
            added,
            added * 1e6 / wrapped["lines"],
            added / wrapped["seconds"],
            wrapped["arrived"],
            wrapped["dropped"],
        );
    }
}
