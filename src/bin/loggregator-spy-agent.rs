//! `loggregator-spy-agent`: the spy agent as a program of its own, for
//! benchmarks (which keep the agent's CPU out of the client's figures) and
//! for trying a program against a real mTLS agent by hand.
//!
//! It makes throwaway certificates, listens on 127.0.0.1, and prints two
//! lines: `addr 127.0.0.1:PORT` and `certs DIR` (`ca.crt`, `client.crt`,
//! `client.key` for the client; the server name is `metron`). Then it
//! answers commands on stdin, one per line, until stdin ends:
//!
//! - `counts`: prints `counts envelopes=N messages=N bytes=N`
//! - `wait N SECONDS`: waits until N envelopes have been read (at most
//!   SECONDS), then prints the counts
//! - `rate N`: reads at most N envelopes a second from now on, in all (0: no
//!   limit)
//! - `stream-rate N`: reads each stream at most N envelopes a second, side by
//!   side, as a real agent does (0: no limit)
//! - `decode on` / `decode off`: with `--count-only`, also decodes every
//!   envelope it reads (and drops it), as a real agent decodes them

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use loggregator::spy::{SpyAgent, SpyCounts, TestCerts};

/// A Loggregator agent for tests: mTLS gRPC on 127.0.0.1, counting or
/// recording what it reads.
#[derive(Parser, Debug)]
#[command(version)]
struct Flags {
    /// Port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Only count envelopes, decoding no more than each batch's framing.
    #[arg(long)]
    count_only: bool,
    /// Refuse gRPC messages larger than this with RESOURCE_EXHAUSTED.
    #[arg(long)]
    max_message_bytes: Option<usize>,
    /// Read at most this many envelopes a second, in all.
    #[arg(long)]
    read_rate: Option<u64>,
    /// Read each stream at most this many envelopes a second, side by side.
    #[arg(long)]
    stream_read_rate: Option<u64>,
    /// Also copy the certificates into this folder, which outlives the agent.
    #[arg(long)]
    certs_dir: Option<PathBuf>,
}

fn main() {
    let flags = Flags::parse();
    if let Err(error) = run(&flags) {
        eprintln!("loggregator-spy-agent: {error}");
        std::process::exit(2);
    }
}

fn run(flags: &Flags) -> Result<(), Box<dyn std::error::Error>> {
    let certs = TestCerts::generate()?;
    let mut builder = SpyAgent::builder().port(flags.port);
    if flags.count_only {
        builder = builder.count_only();
    }
    if let Some(bytes) = flags.max_message_bytes {
        builder = builder.max_message_bytes(bytes);
    }
    let agent = builder.start(&certs)?;
    agent.set_read_rate(flags.read_rate);
    agent.set_stream_read_rate(flags.stream_read_rate);
    let mut certs_dir = certs.dir().to_path_buf();
    if let Some(dir) = &flags.certs_dir {
        std::fs::create_dir_all(dir)?;
        for name in [
            "ca.crt",
            "client.crt",
            "client.key",
            "server.crt",
            "server.key",
        ] {
            std::fs::copy(certs.dir().join(name), dir.join(name))?;
        }
        certs_dir.clone_from(dir);
    }

    let mut out = std::io::stdout().lock();
    writeln!(out, "addr {}", agent.addr())?;
    writeln!(out, "certs {}", certs_dir.display())?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.is_empty() {
            continue;
        }
        // A command it cannot read is answered, not fatal.
        match answer(&agent, &words) {
            Ok(reply) => writeln!(out, "{reply}")?,
            Err(error) => writeln!(out, "error: {error} in {line:?}")?,
        }
        out.flush()?;
    }
    Ok(())
}

/// The reply to one command line.
fn answer(agent: &SpyAgent, words: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
    Ok(match words {
        ["counts"] => counts_line(agent.counts()),
        ["wait", envelopes, seconds] => {
            let timeout = Duration::try_from_secs_f64(seconds.parse()?)?;
            counts_line(agent.wait_for_count(envelopes.parse()?, timeout))
        }
        ["rate", per_second] => {
            agent.set_read_rate(Some(per_second.parse()?));
            "ok".to_string()
        }
        ["stream-rate", per_second] => {
            agent.set_stream_read_rate(Some(per_second.parse()?));
            "ok".to_string()
        }
        ["decode", on @ ("on" | "off")] => {
            agent.set_decoding(*on == "on");
            "ok".to_string()
        }
        _ => return Err("unknown command".into()),
    })
}

fn counts_line(counts: SpyCounts) -> String {
    format!(
        "counts envelopes={} messages={} bytes={}",
        counts.envelopes, counts.messages, counts.bytes
    )
}
