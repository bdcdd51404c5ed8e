//! `cargo bench --bench throughput`: what the client delivers against the
//! transport ceiling (pre-built batches written straight through grpcio),
//! from 1, 4 and 16 threads, at least once beside at most once, and over
//! several streams, against the spy agent in a child process. Add
//! `-- --sweep` for batch sizes from 100 to 2,000 envelopes, and
//! `-- --replay-sweep` for at least once with replay buffers of 2, 8 and
//! 32 MiB. The other benches measure latency, memory, tracing, idle and the
//! metrics facade; `cargo bench --benches` runs them all.

mod common;

use std::sync::Arc;
use std::time::Instant;

use futures::SinkExt;
use grpcio::{
    CallOption, ChannelBuilder, ChannelCredentialsBuilder, Client, EnvBuilder, GrpcSlice,
    Marshaller, Method, MethodType, WriteFlags,
};
use loggregator::proto::envelope::EnvelopeBatch;
use loggregator::proto::ingress::BatchSenderResponse;
use protobuf::Message;

use common::{Agent, Figures, Flags, ROUNDS, certs_dir, cpu_time, log_envelope, measure, median};

/// What a real agent reads from one stream, about: a Forwarder Agent on 2
/// cores read 342,000 small envelopes a second from one stream.
const STREAM_RATE: u64 = 300_000;
/// Rounds of the CPU-bound streams comparison, whose differences are
/// smaller than one run's noise.
const UNPACED_ROUNDS: usize = 3;

fn main() {
    common::run(scenario, report);
}

fn scenario(name: &str, flags: &Flags) -> Figures {
    match name {
        "throughput" => common::throughput(flags),
        "ceiling" => ceiling(flags),
        _ => common::unknown(name),
    }
}

fn report(flags: &Flags, agent: &mut Agent) {
    let batch = flags.batch.to_string();
    let batch_args = ["--batch", batch.as_str()];
    println!(
        "throughput: logs of a 100-byte payload, source and three tags; batch {} envelopes",
        flags.batch
    );
    println!();

    // Each round measures the ceiling too: every ratio is to a ceiling
    // measured seconds apart.
    let mut ceilings = Vec::new();

    let configurations = [
        ("logs, 1 thread", vec!["--threads", "1"]),
        ("logs, 4 threads", vec!["--threads", "4"]),
        ("logs, 16 threads", vec!["--threads", "16"]),
        (
            "mixed, 4 threads",
            vec!["--threads", "4", "--workload", "mixed"],
        ),
        (
            "logs, 1 thread, at least once",
            vec!["--threads", "1", "--at-least-once"],
        ),
    ];
    let mut rounds: Vec<Vec<Figures>> = configurations.iter().map(|_| Vec::new()).collect();
    for _ in 0..ROUNDS {
        ceilings.push(measure(agent, "ceiling", &batch_args));
        for ((_, args), figures) in configurations.iter().zip(&mut rounds) {
            let mut args = args.clone();
            args.extend(batch_args);
            figures.push(measure(agent, "throughput", &args));
        }
    }
    let ceiling = median(ceilings);
    let ceiling_rate = ceiling["rate"];
    println!("medians of {ROUNDS} alternating rounds, each measuring the ceiling too:");
    println!(
        "transport ceiling (pre-built batches on one BatchSender stream): {:.0} env/s, {:.2} µs CPU/env",
        ceiling_rate, ceiling["cpu_us_per_envelope"]
    );
    let mut runs = Vec::new();
    for ((label, _), figures) in configurations.iter().zip(rounds) {
        let figures = median(figures);
        println!(
            "client {label}: {:.0} env/s ({:.2} of ceiling), {:.2} µs CPU/env ({:.2}x the ceiling's), dropped {}",
            figures["rate"],
            figures["rate"] / ceiling_rate,
            figures["cpu_us_per_envelope"],
            figures["cpu_us_per_envelope"] / ceiling["cpu_us_per_envelope"],
            figures["dropped"]
        );
        runs.push((*label, figures));
    }
    let one_thread = runs[0].1["rate"];
    println!();
    for (label, figures) in &runs[..3] {
        println!(
            "client/ceiling = {:.2} (client {:.0} env/s, ceiling {:.0} env/s) [{label}]",
            figures["rate"] / ceiling_rate,
            figures["rate"],
            ceiling_rate
        );
    }
    println!(
        "at-least-once/at-most-once = {:.2}",
        runs[4].1["rate"] / one_thread
    );
    println!();

    println!(
        "streams, logs, 1 thread, against an agent reading each stream at most {STREAM_RATE} env/s (as a real agent reads each in its own goroutine):"
    );
    agent.set_stream_rate(STREAM_RATE);
    let mut paced = Vec::new();
    for streams in ["1", "2", "4"] {
        let ceiling = measure(agent, "ceiling", &["--streams", streams]);
        let client = measure(
            agent,
            "throughput",
            &["--streams", streams, "--threads", "1"],
        );
        println!(
            "  streams {streams}: ceiling {:>8.0} env/s, client {:>8.0} env/s ({:.2} of ceiling, {:.2} µs CPU/env)",
            ceiling["rate"],
            client["rate"],
            client["rate"] / ceiling["rate"],
            client["cpu_us_per_envelope"]
        );
        paced.push(client["rate"]);
    }
    agent.set_stream_rate(0);
    println!(
        "  streams(2)/streams(1) = {:.2}, streams(4)/streams(1) = {:.2}",
        paced[1] / paced[0],
        paced[2] / paced[0]
    );
    println!(
        "streams, logs, 1 thread, against the unpaced agent (the client's CPU is the limit), means of {UNPACED_ROUNDS} alternating rounds:"
    );
    let settings = ["1", "2", "4"];
    let mut rates = [0.0; 3];
    let mut ceilings = [0.0; 3];
    let mut cpu = [0.0; 3];
    for _ in 0..UNPACED_ROUNDS {
        for (index, streams) in settings.iter().enumerate() {
            let ceiling = measure(agent, "ceiling", &["--streams", streams]);
            let client = measure(
                agent,
                "throughput",
                &["--streams", streams, "--threads", "1"],
            );
            ceilings[index] += ceiling["rate"] / UNPACED_ROUNDS as f64;
            rates[index] += client["rate"] / UNPACED_ROUNDS as f64;
            cpu[index] += client["cpu_us_per_envelope"] / UNPACED_ROUNDS as f64;
        }
    }
    for (index, streams) in settings.iter().enumerate() {
        println!(
            "  streams {streams}: ceiling {:>8.0} env/s, client {:>8.0} env/s ({:.2} of ceiling), {:.2} µs CPU/env",
            ceilings[index],
            rates[index],
            rates[index] / ceilings[index],
            cpu[index]
        );
    }
    println!(
        "  streams(2)/streams(1) = {:.2}, streams(4)/streams(1) = {:.2}",
        rates[1] / rates[0],
        rates[2] / rates[0]
    );
    // A real agent decodes what it reads (and forwards it): with the agent
    // paying that on the same two cores, what the client saves shows as
    // it does beside a real agent.
    agent.set_decoding(true);
    let (mut ceiling_decoded, mut client_decoded) = (0.0, 0.0);
    for _ in 0..UNPACED_ROUNDS {
        let ceiling = measure(agent, "ceiling", &["--streams", "2"]);
        let client = measure(agent, "throughput", &["--streams", "2", "--threads", "1"]);
        ceiling_decoded += ceiling["rate"] / UNPACED_ROUNDS as f64;
        client_decoded += client["rate"] / UNPACED_ROUNDS as f64;
    }
    agent.set_decoding(false);
    println!(
        "  streams 2, the agent decoding every envelope: ceiling {ceiling_decoded:>8.0} env/s, client {client_decoded:>8.0} env/s ({:.2} of ceiling)",
        client_decoded / ceiling_decoded
    );
    println!();

    if flags.sweep {
        println!();
        println!("batch size sweep (logs, 1 thread):");
        for size in ["100", "250", "500", "1000", "2000"] {
            let ceiling = measure(agent, "ceiling", &["--batch", size]);
            let client = measure(agent, "throughput", &["--batch", size, "--threads", "1"]);
            println!(
                "  batch {size:>5}: ceiling {:>8.0} env/s ({:.2} µs CPU/env), client {:>8.0} env/s ({:.2} µs CPU/env), client/ceiling {:.2}",
                ceiling["rate"],
                ceiling["cpu_us_per_envelope"],
                client["rate"],
                client["cpu_us_per_envelope"],
                client["rate"] / ceiling["rate"]
            );
        }
    }
    if flags.replay_sweep {
        replay_sweep(agent);
    }
}

/// At least once beside at most once, with replay buffers of 2, 8 (the
/// default) and 32 MiB: a larger buffer confirms less often (fewer
/// streams), a smaller one holds less.
fn replay_sweep(agent: &mut Agent) {
    println!();
    println!(
        "at least once / at most once by replay_buffer_bytes (logs, 1 thread), medians of {ROUNDS} alternating rounds:"
    );
    let sizes = ["2097152", "8388608", "33554432"];
    let mut at_most_once = Vec::new();
    let mut at_least_once: Vec<Vec<Figures>> = sizes.iter().map(|_| Vec::new()).collect();
    for _ in 0..ROUNDS {
        at_most_once.push(measure(agent, "throughput", &["--threads", "1"]));
        for (size, runs) in sizes.iter().zip(&mut at_least_once) {
            runs.push(measure(
                agent,
                "throughput",
                &[
                    "--threads",
                    "1",
                    "--at-least-once",
                    "--replay-buffer-bytes",
                    size,
                ],
            ));
        }
    }
    let at_most_once = median(at_most_once);
    println!(
        "  at most once: {:.0} env/s, {:.2} µs CPU/env",
        at_most_once["rate"], at_most_once["cpu_us_per_envelope"]
    );
    for (size, runs) in sizes.iter().zip(at_least_once) {
        let figures = median(runs);
        let mib = size.parse::<f64>().expect("a size") / common::MIB;
        println!(
            "  at least once, replay buffer {mib:>2.0} MiB: {:.0} env/s ({:.2} of at most once), {:.2} µs CPU/env, {:.0} streams opened",
            figures["rate"],
            figures["rate"] / at_most_once["rate"],
            figures["cpu_us_per_envelope"],
            figures["streams_opened"]
        );
    }
}

/// Raw requests: the batches are encoded before the clock starts.
const RAW_BATCH_SENDER: Method<GrpcSlice, BatchSenderResponse> = Method {
    ty: MethodType::ClientStreaming,
    name: "/loggregator.v2.Ingress/BatchSender",
    req_mar: Marshaller {
        ser: |message: &GrpcSlice, out: &mut GrpcSlice| {
            *out = message.clone();
            Ok(())
        },
        de: |_| Err(grpcio::Error::Codec("requests are only sent".into())),
    },
    resp_mar: Marshaller {
        ser: grpcio::pb_ser,
        de: grpcio::pb_de,
    },
};

/// Pre-built batches written in a loop on one stream, one write in flight
/// at a time (the most grpcio allows), straight through grpcio.
fn ceiling(flags: &Flags) -> Figures {
    let env = Arc::new(EnvBuilder::new().cq_count(1).build());
    let file = |name| std::fs::read(certs_dir(flags).join(name)).expect("certificate files");
    let credentials = ChannelCredentialsBuilder::new()
        .root_cert(file("ca.crt"))
        .cert(file("client.crt"), file("client.key"))
        .build();
    let channel = ChannelBuilder::new(env)
        .override_ssl_target(loggregator::DEFAULT_SERVER_NAME)
        // As the client's channel: gRPC's own retries off.
        .enable_retry(false)
        .set_credentials(credentials)
        .connect(&flags.addr);
    let client = Client::new(channel);
    let mut batch = EnvelopeBatch::new();
    for _ in 0..flags.batch {
        batch.batch.push(log_envelope().into_proto());
    }
    let message = GrpcSlice::from(batch.write_to_bytes().expect("encode"));
    let batch_len = flags.batch as u64;

    // Warm up: connect and write one batch on each stream.
    let mut streams = Vec::new();
    for _ in 0..flags.streams.max(1) {
        let (mut sink, response) = client
            .client_streaming(&RAW_BATCH_SENDER, CallOption::default())
            .expect("open a stream");
        futures::executor::block_on(sink.send((message.clone(), WriteFlags::default())))
            .expect("first write");
        streams.push((sink, response));
    }
    let warm = batch_len * streams.len() as u64;

    let cpu_before = cpu_time();
    let started = Instant::now();
    // Every stream written back to back, side by side on this one thread.
    let writers = streams.into_iter().map(|(mut sink, response)| {
        let message = message.clone();
        async move {
            let mut written = 0;
            while started.elapsed() < flags.seconds {
                for _ in 0..16 {
                    sink.feed((message.clone(), WriteFlags::default()))
                        .await
                        .expect("write");
                    written += batch_len;
                }
            }
            sink.close().await.expect("half-close");
            // The agent ends the call once it has read everything: UNKNOWN "EOF".
            let _ = response.await;
            written
        }
    });
    let written: u64 = futures::executor::block_on(futures::future::join_all(writers))
        .into_iter()
        .sum::<u64>()
        + warm;
    let elapsed = started.elapsed();
    let cpu = cpu_time() - cpu_before;
    let measured = written - warm;
    Figures::from([
        ("rate".into(), measured as f64 / elapsed.as_secs_f64()),
        ("delivered".into(), written as f64),
        (
            "cpu_us_per_envelope".into(),
            cpu.as_secs_f64() * 1e6 / measured as f64,
        ),
    ])
}
