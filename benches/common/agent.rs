//! The spy agent in a child process, and `measure`: one scenario in a
//! child process of its own, its count checked against the agent's.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use super::Figures;

pub struct Agent {
    pub child: Child,
    pub stdin: ChildStdin,
    pub stdout: BufReader<ChildStdout>,
    pub addr: String,
    pub certs: PathBuf,
}

impl Agent {
    pub fn start() -> Agent {
        let mut child = Command::new(env!("CARGO_BIN_EXE_loggregator-spy-agent"))
            .arg("--count-only")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start loggregator-spy-agent");
        let stdin = child.stdin.take().expect("agent stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("agent stdout"));
        let mut field = |name: &str| {
            let mut line = String::new();
            stdout.read_line(&mut line).expect("agent output");
            line.trim()
                .strip_prefix(name)
                .unwrap_or_else(|| panic!("agent printed {line:?}, not {name}"))
                .trim()
                .to_string()
        };
        let addr = field("addr");
        let certs = PathBuf::from(field("certs"));
        Agent {
            child,
            stdin,
            stdout,
            addr,
            certs,
        }
    }

    pub fn command(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").expect("agent stdin");
        self.stdin.flush().expect("agent stdin");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("agent output");
        line
    }

    pub fn envelopes(&mut self) -> u64 {
        parse_counts(&self.command("counts"))
    }

    pub fn set_rate(&mut self, per_second: u64) {
        self.command(&format!("rate {per_second}"));
    }

    pub fn set_stream_rate(&mut self, per_second: u64) {
        self.command(&format!("stream-rate {per_second}"));
    }

    /// Whether the agent decodes every envelope it reads, as a real one does.
    pub fn set_decoding(&mut self, on: bool) {
        self.command(if on { "decode on" } else { "decode off" });
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn parse_counts(line: &str) -> u64 {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix("envelopes="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("agent printed {line:?}"))
}

/// Figures written as `key=value` pairs, separated by spaces.
pub fn parse_figures(line: &str) -> Figures {
    line.split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().expect("a number")))
        .collect()
}

/// Runs one scenario in a child process; checks the agent read what the
/// client says it delivered.
pub fn measure(agent: &mut Agent, scenario: &str, extra: &[&str]) -> Figures {
    let before = agent.envelopes();
    let output = Command::new(std::env::current_exe().expect("own path"))
        .args(["--scenario", scenario, "--addr", &agent.addr])
        .arg("--certs")
        .arg(&agent.certs)
        .args(extra)
        .stderr(Stdio::inherit())
        .output()
        .expect("run a scenario");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let Some(line) = stdout.lines().find_map(|l| l.strip_prefix("result ")) else {
        panic!("scenario {scenario:?} {extra:?} failed: {stdout}");
    };
    let mut figures = parse_figures(line);
    if let Some(&delivered) = figures.get("delivered") {
        let read = parse_counts(&agent.command(&format!("wait {} 30", before + delivered as u64)))
            - before;
        assert_eq!(
            read, delivered as u64,
            "{scenario:?} {extra:?}: the agent read {read}, the client delivered {delivered}"
        );
        figures.insert("agent_read".into(), read as f64);
    }
    figures
}
