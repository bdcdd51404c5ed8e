//! Where one envelope's CPU goes, stage by stage: sorts the call stacks of
//! a profile of `cargo bench --bench throughput`'s 1-thread scenario into
//! the stages of an envelope's walk, and prints each stage's share and
//! its cost per envelope. docs/performance.md has the commands that make
//! the profile; run as
//!
//! ```sh
//! perf script -i throughput.perf -F comm,ip,sym | \
//!     cargo bench --bench stages -- - 0.44   # the run's µs of CPU per envelope
//! ```
//!
//! Each sample is charged to the stage of the innermost frame of its stack
//! that names one (a `memcpy` called from the batch builder is batching, one
//! called from gRPC's TLS is the write); samples of gRPC's own threads are
//! the write. What is left on the sender thread is the loop; on an emitting
//! thread, a stack the unwinder could not follow is charged by its leaf:
//! allocation, copies and the wire format to building, the rest to the
//! queue.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};

/// A stage, and the symbols (substrings of them) that are its own.
const STAGES: &[(&str, &[&str])] = &[
    (
        "waiting for room (Block)",
        &["Condvar", "block_for", "wait_for_room"],
    ),
    (
        "building: the message, source, tags (encoding included), clock, buffer",
        &[
            "log_envelope",
            "loggregator::envelope::",
            "spares::buffer",
            "UnixNanos",
            "SystemTime",
            "Timespec",
            "clock_gettime",
            "EnvelopeBuilder",
            "Draft",
            "put_message",
            "protobuf::",
        ],
    ),
    (
        "the queue: emit's checks, byte budget, channel hand-off",
        &[
            "loggregator::queue::",
            "Queue::",
            "IngressClient::emit",
            "Room::",
            "refill_stash",
            "Sender<T>::try_send",
            "array::Channel<T>::try_send",
        ],
    ),
    (
        "batching: taking envelopes, copying them into a batch",
        &[
            "Batcher::",
            "BatchBuilder::",
            "encode_framed",
            "Receiver<T>::try_recv",
            "start_recv",
            "Returns::give",
            "Ledger::taken",
            "loggregator::batch::",
            "loggregator::spares::",
        ],
    ),
    (
        "the gRPC write: HTTP/2 framing, TLS, the socket",
        &[
            "GrpcStream",
            "GrpcTransport",
            "grpc",
            "tsi_",
            "SSL_",
            "ssl3_",
            "tls1",
            "EVP_",
            "CRYPTO",
            "aesni",
            "gcm",
            "absl::",
            "tcp_",
            "sendmsg",
            "GrpcSlice",
        ],
    ),
    (
        "the sender loop's bookkeeping: waking, streams, ledger, flushes",
        &[
            "SenderLoop",
            "Streams<",
            "sender::",
            "Slots",
            "Ends<",
            "Ledger",
            "Outbox",
            "select",
            "crossbeam_channel::context",
            "crossbeam_channel::waker",
            "ChannelWaker",
        ],
    ),
];

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [input, cpu] = args.as_slice() else {
        println!(
            "stages: usage: perf script -F comm,ip,sym | cargo bench --bench stages -- - CPU_US_PER_ENVELOPE"
        );
        println!("(see docs/performance.md; nothing to do without a profile)");
        return;
    };
    let cpu: f64 = cpu.parse().expect("µs of CPU per envelope, a number");
    let reader: Box<dyn Read> = if input == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(input).expect("the perf script output"))
    };
    let mut samples: BTreeMap<&str, u64> = BTreeMap::new();
    let (mut thread, mut stack) = (String::new(), Vec::new());
    for line in BufReader::new(reader).lines() {
        let line = line.expect("perf script output");
        if line.trim().is_empty() {
            if !thread.is_empty() {
                *samples.entry(stage(&thread, &stack)).or_default() += 1;
            }
            (thread, stack) = (String::new(), Vec::new());
        } else if !line.starts_with(char::is_whitespace) {
            thread = line
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
        } else {
            stack.push(line.trim().to_string());
        }
    }
    if !thread.is_empty() {
        *samples.entry(stage(&thread, &stack)).or_default() += 1;
    }
    let total: u64 = samples.values().sum();
    let mut rows: Vec<_> = samples.into_iter().collect();
    rows.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
    println!("{total} samples, {cpu} µs of CPU per envelope in all");
    for (stage, count) in rows {
        let share = count as f64 / total as f64;
        println!("{:>5.1}%  {:.3} µs  {stage}", share * 100.0, share * cpu);
    }
}

/// On an emitting thread, leaf symbols of the builder's own work, for
/// stacks the unwinder could not follow up to a named frame: allocation,
/// copies, the wire format, and the bench's closure that builds.
const BUILDING_LEAVES: &[&str] = &[
    "malloc",
    "free",
    "memcpy",
    "memmove",
    "wire::put_",
    "FnOnce::call_once",
];

/// The stage a sample belongs to: the innermost frame that names one.
fn stage(thread: &str, stack: &[String]) -> &'static str {
    let (building, queue, write, looping) = (STAGES[1].0, STAGES[2].0, STAGES[4].0, STAGES[5].0);
    if thread.starts_with("loggregator-grp") || thread.starts_with("default-exec") {
        return write;
    }
    let named = stack.iter().find_map(|frame| {
        STAGES
            .iter()
            .find(|(_, symbols)| symbols.iter().any(|symbol| frame.contains(symbol)))
            .map(|(stage, _)| *stage)
    });
    if let Some(stage) = named {
        return stage;
    }
    if thread.starts_with("loggregator-sen") {
        return looping;
    }
    let leaf = stack.first().map_or("", String::as_str);
    if BUILDING_LEAVES.iter().any(|symbol| leaf.contains(symbol)) {
        building
    } else {
        queue
    }
}
