//! The spy agent's counting mode, in process and as the loggregator-spy-agent program.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use crossbeam_channel::Receiver;

use loggregator::spy::{SpyAgent, TestCerts};
use loggregator::{Envelope, IngressClient, TlsConfig};

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn a_counting_spy_counts_every_envelope_and_message_and_keeps_none() {
    let certs = TestCerts::generate().unwrap();
    let agent = SpyAgent::builder().count_only().start(&certs).unwrap();
    // A read rate far above what the test sends: exercised, never waited on.
    agent.set_read_rate(Some(10_000_000));
    let client = IngressClient::builder()
        .addr(agent.addr())
        .tls(certs.client_tls().unwrap())
        .batch_max_envelopes(100)
        .build()
        .unwrap();
    for n in 0..500 {
        client.emit(Envelope::log(format!("line {n}")).tag("k", "v"));
    }
    client.flush(WAIT).unwrap();
    agent.wait_for_count(500, WAIT);
    // Decoding, as a real agent does, counts what decodes: all of it.
    agent.set_decoding(true);
    for n in 500..1_000 {
        client.emit(Envelope::log(format!("line {n}")).tag("k", "v"));
    }
    client.close(WAIT).unwrap();
    let counts = agent.wait_for_count(1_000, WAIT);
    assert_eq!(counts.envelopes, 1_000);
    let stats = client.stats();
    assert_eq!(counts.messages, stats.batches, "{counts:?} {stats:?}");
    assert!(counts.messages >= 10, "{counts:?}");
    assert!(counts.bytes > 1_000 * 10, "{counts:?}");
    assert!(agent.proto_envelopes().is_empty());
    assert!(agent.batches().is_empty());
}

#[test]
fn a_counting_spy_counts_unary_sends_as_it_counts_streams_decoded_or_not() {
    let certs = TestCerts::generate().unwrap();
    let agent = SpyAgent::builder().count_only().start(&certs).unwrap();
    let client = IngressClient::builder()
        .addr(agent.addr())
        .tls(certs.client_tls().unwrap())
        .build()
        .unwrap();
    let batch = |from: usize| -> Vec<Envelope> {
        (from..from + 300)
            .map(|n| Envelope::log(format!("line {n}")).build())
            .collect()
    };
    // Counted when the call returns: the agent answers after it counts.
    client.send(batch(0), WAIT).unwrap();
    assert_eq!(
        (agent.counts().envelopes, agent.counts().messages),
        (300, 1)
    );
    agent.set_decoding(true);
    client.send(batch(300), WAIT).unwrap();
    let counts = agent.counts();
    assert_eq!((counts.envelopes, counts.messages), (600, 2));
    assert!(counts.bytes > 600 * 8, "{counts:?}");
    client.close(WAIT).unwrap();
    assert!(agent.proto_envelopes().is_empty());
}

#[test]
fn the_spy_agent_program_prints_where_it_listens_and_answers_counts() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_loggregator-spy-agent"))
        .arg("--count-only")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Its lines come through a channel, so that every wait for one is
    // bounded: a program that stops answering fails the test.
    let lines = lines_of(child.stdout.take().unwrap());
    let mut stdout = &lines;
    let line = |lines: &mut &Receiver<String>| {
        lines
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("the program said nothing within {WAIT:?}"))
            .trim()
            .to_string()
    };
    let addr = line(&mut stdout).strip_prefix("addr ").unwrap().to_string();
    let certs = std::path::PathBuf::from(line(&mut stdout).strip_prefix("certs ").unwrap());
    let tls = TlsConfig::from_files(
        certs.join("ca.crt"),
        certs.join("client.crt"),
        certs.join("client.key"),
    )
    .unwrap();
    let client = IngressClient::builder()
        .addr(&addr)
        .tls(tls)
        .build()
        .unwrap();
    for _ in 0..25 {
        client.emit(Envelope::counter("requests"));
    }
    client.close(WAIT).unwrap();
    writeln!(stdin, "wait 25 10").unwrap();
    let counts = line(&mut stdout);
    assert!(
        counts.starts_with("counts envelopes=25 messages="),
        "{counts}"
    );
    writeln!(stdin, "rate 1000").unwrap();
    assert_eq!(line(&mut stdout), "ok");
    writeln!(stdin, "decode on").unwrap();
    assert_eq!(line(&mut stdout), "ok");
    writeln!(stdin, "bogus").unwrap();
    assert!(line(&mut stdout).starts_with("error: unknown command"));
    // A command it cannot read is answered, and the program goes on.
    writeln!(stdin, "wait 25 -1").unwrap();
    assert!(line(&mut stdout).starts_with("error: "));
    writeln!(stdin, "counts").unwrap();
    assert!(line(&mut stdout).starts_with("counts envelopes=25 "));
    // The program ends when its input does.
    drop(stdin);
    let output = crate::common::wait_child(child, WAIT);
    assert!(output.status.success(), "{:?}", output.status);
}

/// The lines `pipe` gives, each as it comes, until it ends.
fn lines_of(pipe: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (line, lines) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        for read in BufReader::new(pipe).lines() {
            let Ok(text) = read else { break };
            if line.send(text).is_err() {
                break;
            }
        }
    });
    lines
}

#[test]
fn a_stream_held_to_a_slow_pace_reads_on_when_the_rate_is_lifted_and_never_holds_up_shutdown() {
    let certs = TestCerts::generate().unwrap();
    let agent = SpyAgent::builder().count_only().start(&certs).unwrap();
    // 10 a second: after its first batch of 100 the stream waits ten
    // seconds before each next one.
    agent.set_stream_read_rate(Some(10));
    let client = IngressClient::builder()
        .addr(agent.addr())
        .tls(certs.client_tls().unwrap())
        .batch_max_envelopes(100)
        .build()
        .unwrap();
    for n in 0..1_000 {
        client.emit(Envelope::log(format!("line {n}")));
    }
    agent.wait_for_count(100, WAIT);
    // 90 more seconds at that pace; lifted, the rest comes within WAIT.
    agent.set_stream_read_rate(None);
    assert_eq!(agent.wait_for_count(1_000, WAIT).envelopes, 1_000);
    client.close(WAIT).unwrap();

    // Held again, the stream waits a hundred seconds per batch: shutting
    // down ends the wait instead of waiting it out.
    agent.set_stream_read_rate(Some(1));
    let client = IngressClient::builder()
        .addr(agent.addr())
        .tls(certs.client_tls().unwrap())
        .batch_max_envelopes(100)
        .build()
        .unwrap();
    for n in 0..300 {
        client.emit(Envelope::log(format!("line {n}")));
    }
    agent.wait_for_count(1_100, WAIT);
    let stopping = std::time::Instant::now();
    agent.shutdown();
    assert!(stopping.elapsed() < WAIT, "{:?}", stopping.elapsed());
    let _ = client.close(Duration::from_millis(200));
}
